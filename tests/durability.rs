//! What a returned call guarantees (issue 10): fsync reaches stable storage per
//! `-o fsync=local|mirror|both`, an answer never lies after a mirror loss, and the
//! emergency flush (`smlogfs flush`, SIGPWR, SIGTERM) makes everything durable at once.
//! docs/operations.md ("Durability") and docs/design.md ("Answers never lie") say why.
//!
//! Real mounts and a real `mirror-agent` over TCP in a network namespace of its own
//! (`common::netns`), as in tests/mirror_failover.rs. Checkpoints are off
//! (`checkpoint_ms=3600000`) so that only fsync and the flush msync the ring: a ring
//! flushed through a seq then proves the fsync did it. Timings are printed, never asserted.
//!
//! Needs root (netns, FUSE), `ip`, fusermount3, and `mirror-agent` next to the smlogfs
//! binary (`cargo build --release --workspace`).

mod common;

use common::netns::{Agent, Host};
use common::*;
use rand::{Rng, SeedableRng};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MKFS: &[&str] = &["--size", "256M", "--ring", "16M", "--disks", "1"];
/// Heartbeats every 200 ms, an agent declared lost after 1 s of silence.
const FAST_DETECT: &[&str] = &["--heartbeat-ms", "200", "--detect-ms", "1000"];
const NO_CHECKPOINTS: &str = "checkpoint_ms=3600000";

/// A volume mounted in the root namespace, mirrored to an agent on host B. Field order is
/// drop order: the mount first, then the agent, then the host.
struct Setup {
    vol: Volume,
    agent: Agent,
    _host: Host,
    _dir: tempfile::TempDir,
    mirror: String,
}

impl Setup {
    fn new(mkfs: &[&str]) -> Setup {
        let vol = Volume::new(mkfs);
        let host = Host::new(1);
        let dir = tempfile::Builder::new()
            .prefix("smlogfs-agent-")
            .tempdir()
            .unwrap();
        let agent = Agent::start(&host, &dir.path().join("agent"), None);
        let mirror = host.mirror_list();
        Setup {
            vol,
            agent,
            _host: host,
            _dir: dir,
            mirror,
        }
    }

    /// Mounts mirrored to the agent with `extra` arguments and checkpoints off.
    fn mount(&mut self, extra: &[&str]) {
        let mirror = self.mirror.clone();
        let mut args = vec!["--mirror", &mirror, "--node", "A", "-o", NO_CHECKPOINTS];
        args.extend_from_slice(extra);
        self.vol.mount(&args);
    }

    fn status(&self) -> serde_json::Value {
        let out = run(Command::new(smlogfs_bin())
            .arg("status")
            .arg(self.vol.mnt())
            .arg("--json"));
        assert!(out.status.success(), "smlogfs status: {}", describe(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", describe(&out)))
    }

    /// The last seq logged so far (every op returned before this call is at or below it).
    fn last_seq(&self) -> u64 {
        self.status()["next_seq"].as_u64().expect("next_seq") - 1
    }

    fn daemon_log(&self) -> String {
        fs::read_to_string(self.vol.voldir().join("daemon.log")).unwrap_or_default()
    }

    fn supervisor_pid(&self) -> i32 {
        fs::read_to_string(self.vol.voldir().join("supervisor.pid"))
            .expect("supervisor.pid")
            .trim()
            .parse()
            .expect("a pid")
    }
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY-free: kill(2) has no memory effects.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill -{sig} {pid}: {}",
        std::io::Error::last_os_error()
    );
}

// ----- fsync policies -----

/// After fsync returns, its entries are on a disk: the local ring's (status `flushed_seq`)
/// and/or the agent's (`mirror_durable_seq`, what the agent reported fdatasync'ed), as the
/// policy says. Nothing but fsync flushes the ring here (checkpoints are off), so
/// `fsync=mirror` leaves the local ring unflushed: that proves the policy is obeyed, not
/// only that something flushed.
fn fsync_reaches(policy: Option<&str>) {
    let mut s = Setup::new(MKFS);
    let opt = policy.map(|p| format!("fsync={p}"));
    let mut extra = vec!["--on-mirror-loss", "wait"];
    if let Some(o) = &opt {
        extra.extend_from_slice(&["-o", o]);
    }
    s.mount(&extra);
    let shown = s.status()["fsync_policy"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(shown, policy.unwrap_or("both"), "status fsync_policy");
    for round in 0..3 {
        let path = s.vol.path(&format!("f{round}"));
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(&pattern(round, 5000)).unwrap();
        let target = s.last_seq();
        let before = s.status();
        let started = Instant::now();
        f.sync_all().unwrap();
        let took = started.elapsed();
        let after = s.status();
        let flushed = after["flushed_seq"].as_u64().unwrap();
        let durable = after["mirror_durable_seq"].as_u64();
        eprintln!(
            "fsync={} round {round}: target seq {target}, ring flushed {flushed}, agent durable {durable:?}, took {took:?}",
            shown
        );
        match shown.as_str() {
            "local" => {
                assert!(
                    flushed >= target,
                    "fsync=local: ring flushed through {flushed} < {target}"
                );
                // The agent acknowledged it (a returned call is in its memory) and syncs in
                // the background; fsync did not wait for its disk.
                assert!(after["mirror"]["acked_through"].as_u64() >= Some(target));
            }
            "mirror" => {
                assert!(
                    durable >= Some(target),
                    "fsync=mirror: the agent reported only {durable:?} durable, wanted {target}"
                );
                assert_eq!(
                    flushed,
                    before["flushed_seq"].as_u64().unwrap(),
                    "fsync=mirror flushed the local ring"
                );
                assert!(
                    flushed < target,
                    "the local ring was flushed through {flushed}"
                );
            }
            "both" => {
                assert!(
                    flushed >= target,
                    "fsync=both: ring flushed through {flushed} < {target}"
                );
                assert!(
                    durable >= Some(target),
                    "fsync=both: the agent reported only {durable:?} durable, wanted {target}"
                );
            }
            other => panic!("unknown policy {other}"),
        }
    }
    // O_SYNC writes reach us as a write and then an fsync (the kernel's write path calls
    // fsync for them): the write returns only once the policy's disk has it.
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open(s.vol.path("osync"))
        .unwrap();
    f.write_all(&pattern(9, 3000)).unwrap();
    let target = s.last_seq();
    let after = s.status();
    let covered = match shown.as_str() {
        "mirror" => after["mirror_durable_seq"].as_u64() >= Some(target),
        _ => after["flushed_seq"].as_u64() >= Some(target),
    };
    assert!(
        covered,
        "an O_SYNC write returned before its entries were durable: {after}"
    );
    drop(f);
    s.vol.umount_clean();
}

#[test]
fn fsync_default_policy_is_both_disks() {
    fsync_reaches(None);
}

#[test]
fn fsync_local_flushes_the_ring() {
    fsync_reaches(Some("local"));
}

#[test]
fn fsync_mirror_waits_for_the_agents_disk_only() {
    fsync_reaches(Some("mirror"));
}

#[test]
fn fsync_mirror_without_a_mirror_is_refused() {
    let vol = Volume::new(MKFS);
    let out = run(Command::new(smlogfs_bin())
        .arg("mount")
        .arg(vol.voldir())
        .arg(vol.mnt())
        .args(["-o", "fsync=mirror"]));
    assert_fails_with(
        &out,
        2,
        "fsync=mirror without --mirror",
        &["fsync=mirror", "--mirror"],
    );
    let out = run(Command::new(smlogfs_bin())
        .arg("mount")
        .arg(vol.voldir())
        .arg(vol.mnt())
        .args(["-o", "fsync=sometimes"]));
    assert_fails_with(&out, 2, "fsync=sometimes", &["fsync=local", "fsync=both"]);
}

// ----- answers never lie -----

/// What a caller was told about one op of `lie_detector_round`.
#[derive(Debug, Default, Clone)]
struct Told {
    created: bool,
    appended: bool,
    renamed: bool,
    unlinked: bool,
}

/// One round: ops on fresh names until `stop`, the agent killed (kill -9) after
/// `kill_after`. Every op's answer is recorded; an error must be EIO (a refusal before the
/// op was logged). Returns what each caller was told.
fn run_ops_and_kill_the_agent(s: &mut Setup, round: usize, kill_after: Duration) -> Vec<Told> {
    let root = s.vol.mnt().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let mut told = Vec::new();
        let log = root.join(format!("log{round}"));
        let check = |what: &str, r: std::io::Result<()>| -> bool {
            match r {
                Ok(()) => true,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}");
                    false
                }
            }
        };
        for i in 0.. {
            if rx.try_recv().is_ok() {
                break;
            }
            let mut t = Told::default();
            let c = root.join(format!("c{round}-{i}"));
            let d = root.join(format!("d{round}-{i}"));
            t.created = check("create", fs::File::create(&c).map(drop));
            t.appended = check(
                "append",
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .and_then(|mut f| f.write_all(format!("{i}\n").as_bytes())),
            );
            if t.created {
                t.renamed = check("rename", fs::rename(&c, &d));
            }
            if t.renamed && i % 2 == 1 {
                t.unlinked = check("unlink", fs::remove_file(&d));
            }
            told.push(t);
        }
        told
    });
    std::thread::sleep(kill_after);
    s.agent.kill();
    // Long enough for ops in flight to outlive --mirror-wait-ms and for later ones to be
    // refused.
    std::thread::sleep(Duration::from_millis(2500));
    tx.send(()).unwrap();
    worker.join().expect("the op thread panicked")
}

/// After recovery, each op is there exactly when its caller was told success.
fn check_told(root: &Path, round: usize, told: &[Told]) {
    let log = fs::read_to_string(root.join(format!("log{round}"))).unwrap_or_default();
    let want: String = told
        .iter()
        .enumerate()
        .filter(|(_, t)| t.appended)
        .map(|(i, _)| format!("{i}\n"))
        .collect();
    assert_eq!(log, want, "round {round}: the appends after recovery");
    for (i, t) in told.iter().enumerate() {
        let c = root.join(format!("c{round}-{i}")).exists();
        let d = root.join(format!("d{round}-{i}")).exists();
        let (want_c, want_d) = match (t.created, t.renamed, t.unlinked) {
            (false, _, _) => (false, false),
            (true, false, _) => (true, false),
            (true, true, false) => (false, true),
            (true, true, true) => (false, false),
        };
        assert_eq!(
            (c, d),
            (want_c, want_d),
            "round {round} op {i}: told {t:?}, found c={c} d={d}"
        );
    }
}

/// The agent dies during create, append (a write at EOF), rename and unlink under
/// `--on-mirror-loss wait`: ops in flight are answered success (unprotected, they are
/// logged), later ones EIO before they are logged. After a crash and recovery from the
/// local ring the tree shows exactly the ops whose callers were told success.
#[test]
fn answers_never_lie_when_the_agent_dies() {
    let mut s = Setup::new(MKFS);
    let args = [
        &["--on-mirror-loss", "wait", "--mirror-wait-ms", "700"][..],
        FAST_DETECT,
    ]
    .concat();
    s.mount(&args);
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    let (mut successes, mut refusals) = (0, 0);
    for round in 0..3 {
        let kill_after = Duration::from_millis(rng.gen_range(100..600));
        let told = run_ops_and_kill_the_agent(&mut s, round, kill_after);
        let ok = told.iter().filter(|t| t.created).count();
        successes += ok;
        refusals += told.len() - ok;
        eprintln!(
            "round {round}: agent killed after {kill_after:?}; {} iterations, {ok} creates succeeded; ops_unprotected {}",
            told.len(),
            s.status()["ops_unprotected"]
        );
        s.vol.kill9();
        s.agent.restart();
        s.vol.remount();
        check_told(s.vol.mnt(), round, &told);
    }
    assert!(
        successes > 0 && refusals > 0,
        "no mix of answers: {successes} ok, {refusals} refused"
    );
    s.vol.umount_clean();
}

// ----- the emergency flush -----

/// Writes in a thread until told to stop; returns how many writes returned.
fn load(root: &Path) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<u64>) {
    let root = root.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        let mut f = fs::File::create(root.join("load")).unwrap();
        let mut n = 0;
        while rx.try_recv().is_err() {
            // Not block-aligned: the data goes through the ring.
            f.write_all(&pattern(n, 3001)).unwrap();
            n += 1;
        }
        n
    });
    (tx, h)
}

/// `smlogfs flush` under load prints the time it took; afterwards the ring and the agent's
/// disk cover every op that returned before it. SIGPWR does the same (to the supervisor,
/// which passes it on).
#[test]
fn flush_and_sigpwr_under_load_cover_every_returned_op() {
    let mut s = Setup::new(MKFS);
    s.mount(&["--on-mirror-loss", "wait"]);
    let (stop, writer) = load(s.vol.mnt());
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let before = s.last_seq();
        let out = run(Command::new(smlogfs_bin()).arg("flush").arg(s.vol.mnt()));
        assert!(out.status.success(), "smlogfs flush: {}", describe(&out));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        eprintln!("{}", text.trim());
        assert!(
            text.contains(" ms: ring through seq "),
            "flush output: {text}"
        );
        let after = s.status();
        assert!(
            after["flushed_seq"].as_u64() >= Some(before),
            "after smlogfs flush, flushed_seq {} < {before}",
            after["flushed_seq"]
        );
        assert!(
            after["mirror_durable_seq"].as_u64() >= Some(before),
            "after smlogfs flush, the agent's disk {} < {before}",
            after["mirror_durable_seq"]
        );
    }
    let before = s.last_seq();
    let log_len = s.daemon_log().len();
    signal(s.supervisor_pid(), libc::SIGPWR);
    let mut line = String::new();
    wait_for(
        Duration::from_secs(10),
        "the SIGPWR flush in daemon.log",
        || {
            line = s.daemon_log()[log_len..]
                .lines()
                .find(|l| l.contains("emergency flush (SIGPWR)"))
                .unwrap_or("")
                .to_string();
            !line.is_empty()
        },
    );
    eprintln!("{line}");
    let flushed: u64 = line
        .split("ring through seq ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seq in {line:?}"));
    assert!(
        flushed >= before,
        "SIGPWR flushed through {flushed} < {before}"
    );
    stop.send(()).unwrap();
    let writes = writer.join().unwrap();
    assert!(writes > 0);
    s.vol.umount_clean();
}

/// SIGTERM (systemd's stop) to the supervisor: flush, then a clean unmount; the daemon and
/// the supervisor exit, fsck is clean, and the next mount replays nothing.
#[test]
fn sigterm_flushes_and_unmounts_cleanly() {
    let mut s = Setup::new(MKFS);
    s.mount(&[]);
    let (stop, writer) = load(s.vol.mnt());
    std::thread::sleep(Duration::from_millis(300));
    stop.send(()).unwrap();
    writer.join().unwrap();
    let supervisor = s.supervisor_pid();
    let daemon = s.vol.daemon_pid().expect("daemon.pid");
    signal(supervisor, libc::SIGTERM);
    wait_for(
        Duration::from_secs(30),
        "the mount to end after SIGTERM",
        || !is_fuse_mount(s.vol.mnt()),
    );
    wait_for(
        Duration::from_secs(30),
        "the daemon and supervisor to exit",
        || !pid_alive(daemon) && !pid_alive(supervisor),
    );
    let log = s.daemon_log();
    assert!(
        log.contains("emergency flush (SIGTERM)"),
        "no flush logged:\n{log}"
    );
    assert!(
        log.contains("unmounted") && log.contains("cleanly"),
        "no clean unmount:\n{log}"
    );
    s.vol.assert_fsck_clean();
    let len = log.len();
    s.vol.remount();
    let log = s.daemon_log();
    let recovered = log[len..]
        .lines()
        .find(|l| l.contains("recovered "))
        .unwrap_or_else(|| panic!("no recovery line:\n{}", &log[len..]))
        .to_string();
    assert!(
        recovered.contains(" 0 ops replayed"),
        "the mount after SIGTERM replayed ops: {recovered}"
    );
    s.vol.umount_clean();
}

// ----- the answer after a fence or a failed acknowledgement, in-process -----

/// What `ScriptedReplica::holds_applied` says after the fence.
#[derive(Clone, Copy, Debug)]
enum Held {
    Yes,
    No,
    Unknown,
}

/// A replica whose acknowledgement fails as the test says: `Fenced` (then the read-back
/// answers `held`), or `Failed`; `refuse` makes `admit` refuse new ops.
struct ScriptedReplica {
    fence: bool,
    held: Held,
    refuse: std::sync::atomic::AtomicBool,
    /// (applied, op_id) of the read-back the core asked for.
    asked: std::sync::Mutex<Option<(u64, u64)>>,
}

impl smlogfs::core::Replica for ScriptedReplica {
    fn submit(&self, _seq: smlogfs::core::Seq, _entry: Vec<u8>) {}

    fn wait(&self, _seq: smlogfs::core::Seq) -> Result<(), smlogfs::core::ReplicaError> {
        Err(if self.fence {
            smlogfs::core::ReplicaError::Fenced("taken over (test)".into())
        } else {
            smlogfs::core::ReplicaError::Failed("no acknowledgement (test)".into())
        })
    }

    fn protected(&self) -> bool {
        false
    }

    fn fenced(&self) -> Option<String> {
        None
    }

    fn acked_through(&self) -> Option<smlogfs::core::Seq> {
        None
    }

    fn checkpoint(&self, _covers: smlogfs::core::Seq) {}

    fn info(&self) -> smlogfs::core::ReplicaInfo {
        common::fake_replica_info("scripted", false, false)
    }

    fn admit(&self) -> Result<(), smlogfs::core::ReplicaError> {
        if self.refuse.load(std::sync::atomic::Ordering::Acquire) {
            return Err(smlogfs::core::ReplicaError::Failed("refused (test)".into()));
        }
        Ok(())
    }

    fn holds_applied(
        &self,
        applied: smlogfs::core::Seq,
        op_id: smlogfs::core::Seq,
    ) -> Result<bool, String> {
        *self.asked.lock().unwrap() = Some((applied.0, op_id.0));
        match self.held {
            Held::Yes => Ok(true),
            Held::No => Ok(false),
            Held::Unknown => Err("agent unreachable (test)".into()),
        }
    }
}

/// An in-process file system on a fresh volume with `replica` attached.
fn in_process(replica: Arc<ScriptedReplica>) -> (Volume, smlogfs::core::Fs, Arc<AtomicBool>) {
    let vol = Volume::new(MKFS);
    let fs = smlogfs::core::Fs::open_volume(
        vol.voldir(),
        smlogfs::core::FsConfig::default(),
        &smlogfs::progress::Progress::hidden,
        None::<smlogfs::mirror::MirrorOptions>,
        false,
    )
    .expect("open the file system");
    let hook = Arc::new(AtomicBool::new(false));
    let flag = hook.clone();
    fs.set_on_fenced(Box::new(move || flag.store(true, Ordering::Release)));
    fs.attach_replica(replica).expect("attach");
    (vol, fs, hook)
}

const ROOT_CALLER: smlogfs::core::Caller = smlogfs::core::Caller { uid: 0, gid: 0 };

/// Creates the regular file `name` in the root directory, as root; the errno on failure.
fn create_in_root(fs: &smlogfs::core::Fs, name: &[u8]) -> Result<(), i32> {
    let root = smlogfs::core::Ino(1);
    fs.mknod(
        None,
        ROOT_CALLER,
        root,
        name,
        libc::S_IFREG | 0o644,
        0,
        None,
    )
    .map(drop)
    .map_err(|e| e.0)
}

/// Fenced while the op waited: success when the agent holds its `Applied` entry (the new
/// owner replays it), EROFS when it provably does not, EIO when nobody can tell. The core
/// asks about this op's own entries, and the node is fenced in every case.
#[test]
fn a_fenced_ops_answer_follows_what_the_agent_holds() {
    for (held, want) in [
        (Held::Yes, None),
        (Held::No, Some(libc::EROFS)),
        (Held::Unknown, Some(libc::EIO)),
    ] {
        let replica = Arc::new(ScriptedReplica {
            fence: true,
            held,
            refuse: AtomicBool::new(false),
            asked: Default::default(),
        });
        let (_vol, fs, hook) = in_process(replica.clone());
        let r = create_in_root(&fs, b"f");
        assert_eq!(r.err(), want, "held {held:?}");
        let last = fs.ring_stats().next_seq - 1;
        assert_eq!(
            *replica.asked.lock().unwrap(),
            Some((last, last - 1)),
            "held {held:?}: the read-back must look for this op's Applied entry"
        );
        assert!(hook.load(Ordering::Acquire), "held {held:?}: not fenced");
        assert_eq!(
            create_in_root(&fs, b"g").err(),
            Some(libc::EROFS),
            "held {held:?}: a change after the fence"
        );
    }
}

/// A failed acknowledgement of a logged op is answered success (counted unprotected); a
/// refusal at admission is EIO and logs nothing.
#[test]
fn a_lost_acknowledgement_is_success_and_a_refusal_logs_nothing() {
    let replica = Arc::new(ScriptedReplica {
        fence: false,
        held: Held::Unknown,
        refuse: AtomicBool::new(false),
        asked: Default::default(),
    });
    let (_vol, fs, hook) = in_process(replica.clone());
    create_in_root(&fs, b"f").expect("a logged op whose acknowledgement failed");
    assert_eq!(fs.status().ops_unprotected, 1);
    replica.refuse.store(true, Ordering::Release);
    let before = fs.ring_stats().next_seq;
    let r = create_in_root(&fs, b"g");
    assert_eq!(r.err(), Some(libc::EIO), "refused at admission");
    assert_eq!(fs.ring_stats().next_seq, before, "a refused op was logged");
    assert!(!hook.load(Ordering::Acquire), "fenced without a fence");
}

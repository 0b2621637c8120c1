//! Mirroring, recovery from the mirror, route failover, takeover and giveback on real
//! processes and real TCP (issue 4, "What proves it"; DESIGN.md guarantees 1, 3 and 4).
//!
//! Each test builds a second "host" from a network namespace of its own (`smlg-<random>`):
//! the `mirror-agent` runs inside it (`ip netns exec`), the smlogfs daemon and its FUSE mount
//! stay in the root namespace and reach the agent over veth pairs with addresses from 10.x
//! that the test creates (one /24 per pair, checked to be unused). Every namespace, link,
//! agent, daemon and mount is removed by a Drop guard, also when the test panics.
//!
//! The shared workload of `common::model` runs in the mount and records each op in its model
//! only once the syscalls returned success. Appends make a replay twice visible (the file
//! grows twice), so "every acknowledged op exactly once" is checked, not only "present".
//! Where the daemon is killed in the middle of the workload, the one op in flight may have
//! happened or not.
//!
//! The decisive check in most tests is the read-back from the agent: `kill -9` the daemon,
//! delete VOLDIR/statelog, mount again with `--mirror`; the tree must equal the model and
//! daemon.log must say the entries came from the agent. Checkpoints are switched off where
//! the agent's copy must carry everything (`-o checkpoint_ms=3600000`).
//!
//! Needs root (netns, FUSE), `ip`, fusermount3, and the `mirror-agent` binary next to the
//! smlogfs one (`cargo build --release --workspace`). `SMLOGFS_TEST_KEEP=1` keeps the volume
//! and agent directories of a failed test.

mod common;

use common::model::{Workload, WORK_DIR};
use common::netns::{Agent, Host, AGENT_PORT};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// mkfs arguments: small enough to be quick, a ring that does not wrap in these workloads.
const MKFS: &[&str] = &["--size", "256M", "--ring", "16M", "--disks", "1"];
/// Heartbeats every 200 ms and an agent declared lost after 1 s of silence: the loss
/// policies act within about a second.
const FAST_DETECT: &[&str] = &["--heartbeat-ms", "200", "--detect-ms", "1000"];
/// Keeps every entry after mount in the ring (and so the agent's copy carries everything).
const NO_CHECKPOINTS: &str = "checkpoint_ms=3600000";

// ----- binaries -----

fn smlogfs(args: &[&str]) -> std::process::Output {
    run(Command::new(smlogfs_bin()).args(args))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Everything one test needs: host B with its agent, and a volume in the root namespace.
/// Field order is drop order: the volume (daemon, mount) first, then the agent, the host.
struct Setup {
    /// The mount point of a takeover by node B, unmounted first.
    peer_mnt: Option<PathBuf>,
    vol: Volume,
    agent: Agent,
    host: Host,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(routes: usize) -> Setup {
        let vol = Volume::new(MKFS);
        let host = Host::new(routes);
        let dir = tempfile::Builder::new()
            .prefix("smlogfs-agent-")
            .tempdir()
            .unwrap();
        let agent = Agent::start(&host, &dir.path().join("agent"), None);
        Setup {
            peer_mnt: None,
            vol,
            agent,
            host,
            dir,
        }
    }

    /// `mount_a`, then `ops` ops of a fresh workload.
    fn mount_a_and_run(&mut self, extra: &[&str], ops: usize) -> Workload {
        self.mount_a(extra);
        let mut w = start_workload(self.vol.mnt());
        w.run(self.vol.mnt(), ops);
        w
    }

    /// Mounts the volume as node A mirrored to the agent over every route, with `extra`
    /// options and checkpoints off (see NO_CHECKPOINTS).
    fn mount_a(&mut self, extra: &[&str]) {
        let mirror = self.host.mirror_list();
        let mut args = mirror_args(&mirror, &["--node", "A"]);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", NO_CHECKPOINTS]);
        self.vol.mount(&args);
    }

    /// Waits until the agent holds every entry the daemon has written so far.
    #[track_caller]
    fn wait_for_the_agent_to_hold_every_entry(&self) {
        let last = self.next_seq() - 1;
        wait_for(
            Duration::from_secs(20),
            &format!("the agent to hold every entry (through seq {last})"),
            || self.agent.last_seq() >= Some(last),
        );
    }

    /// The decisive check: kill -9, the local ring deleted, mount again from the agent; the
    /// tree must hold every acknowledged op; then a clean unmount and fsck.
    #[track_caller]
    fn read_back(&mut self, w: &mut Workload) {
        self.lose_ring_and_remount();
        self.check_and_unmount(w);
    }

    /// Checks the mounted tree against the model, then unmounts the volume cleanly and runs
    /// fsck.
    #[track_caller]
    fn check_and_unmount(&mut self, w: &mut Workload) {
        w.check(self.vol.mnt());
        self.vol.umount_clean();
    }

    /// A mount point for a takeover by node B; lazily unmounted when the Setup is dropped.
    fn peer_mountpoint(&mut self) -> PathBuf {
        let mnt = self.dir.path().join("mnt-b");
        fs::create_dir(&mnt).unwrap();
        self.peer_mnt = Some(mnt.clone());
        mnt
    }

    fn daemon_log(&self) -> String {
        fs::read_to_string(self.vol.voldir().join("daemon.log")).unwrap_or_default()
    }

    /// `kill -9` of the daemon, removal of the local ring, mount again with the same
    /// arguments: the entries must come back from the agent. Returns how long mount took.
    fn lose_ring_and_remount(&mut self) -> Duration {
        self.vol.kill9();
        self.remount_without_ring()
    }

    /// After the daemon was killed: removes the local ring and mounts again from the agent.
    fn remount_without_ring(&mut self) -> Duration {
        let ring = self.vol.voldir().join("statelog");
        fs::remove_file(&ring).unwrap_or_else(|e| panic!("rm {}: {e}", ring.display()));
        let log_before = self.daemon_log().len();
        let took = self.vol.try_remount().unwrap_or_else(|e| panic!("{e}"));
        let log = self.daemon_log();
        assert!(
            log[log_before..].contains("from the mirror agent"),
            "the remount did not say it recovered from the mirror agent:\n{}",
            &log[log_before..]
        );
        took
    }

    /// A live `smlogfs status --json` field of the mirror, as text.
    fn mirror_status(&self, field: &str) -> String {
        let out = smlogfs(&["status", &self.vol.mnt().display().to_string(), "--json"]);
        assert!(out.status.success(), "smlogfs status: {}", describe(&out));
        json_field(&String::from_utf8_lossy(&out.stdout), field)
    }

    fn next_seq(&self) -> u64 {
        let out = smlogfs(&["status", &self.vol.mnt().display().to_string(), "--json"]);
        json_field(&String::from_utf8_lossy(&out.stdout), "next_seq")
            .parse()
            .unwrap()
    }

    fn keep_on_failure(&mut self) {
        if std::thread::panicking() && std::env::var_os("SMLOGFS_TEST_KEEP").is_some() {
            self.vol.keep_on_drop();
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("kept agent dir in {}", kept.display());
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mnt) = &self.peer_mnt {
            lazy_umount(mnt);
        }
        self.keep_on_failure();
    }
}

/// The value of `"field":` in a flat-enough JSON document (the first occurrence).
fn json_field(doc: &str, field: &str) -> String {
    let key = format!("\"{field}\":");
    let Some(i) = doc.find(&key) else {
        return String::new();
    };
    let rest = &doc[i + key.len()..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().trim_matches('"').to_string()
}

fn mirror_args<'a>(mirror: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--mirror", mirror];
    v.extend_from_slice(extra);
    v
}

// ----- the workload (common::model) -----

fn seed() -> u64 {
    std::env::var("FAILOVER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen())
}

/// Runs `w` in a thread, kills the daemon once it has done a few more ops (so the kill
/// lands in the middle of one) and returns the workload, which stopped at its first failing
/// op: the one in flight.
#[track_caller]
fn kill_in_the_middle(vol: &mut Volume, w: Workload) -> Workload {
    let running = w.spawn(vol.mnt().to_path_buf());
    running.wait_for_ops(30, Duration::from_secs(30));
    running.mark_killed();
    vol.kill9();
    let (w, failed) = running.join();
    let failed = failed.expect("the workload stops only at a failing op");
    assert!(
        failed.after_kill,
        "{failed} while the daemon was alive (after {} ops)",
        w.acked
    );
    eprintln!("killed the daemon during {failed} after {} ops", w.acked);
    w
}

/// A workload on `mount` (which must be mounted), its work directory made; prints its seed.
fn start_workload(mount: &Path) -> Workload {
    let seed = seed();
    eprintln!("workload seed {seed} (FAILOVER_SEED)");
    Workload::prepare(mount);
    Workload::new(seed)
}

// ----- 1. the local ring lost: everything comes back from the agent on host B -----

#[test]
fn lost_ring_is_recovered_from_the_agent_on_another_host() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    // Frequent checkpoints: the agent drops covered entries while the workload runs, and
    // recovery must join the checkpoint on the volume with the agent's entries after it.
    s.vol.mount(&mirror_args(
        &mirror,
        &["--node", "A", "-o", "checkpoint_ms=300"],
    ));
    let mut w = start_workload(s.vol.mnt());
    w.run(s.vol.mnt(), 300);
    // And a stretch that the daemon is killed in the middle of.
    let mut w = kill_in_the_middle(&mut s.vol, w);
    let took = s.remount_without_ring();
    eprintln!(
        "{} acknowledged ops; remount with recovery from the agent took {took:?}",
        w.acked
    );
    s.check_and_unmount(&mut w);
    // A clean cycle keeps it all too.
    s.vol.remount();
    s.check_and_unmount(&mut w);
}

// ----- 2. --on-mirror-loss wait -----

#[test]
fn wait_policy_blocks_writes_until_the_agent_returns() {
    let mut s = Setup::new(1);
    let mut w = s.mount_a_and_run(&[&["--on-mirror-loss", "wait"], FAST_DETECT].concat(), 150);
    s.agent.kill();
    // One change in a thread: it must block while the agent is away.
    let (tx, rx) = mpsc::channel();
    let root = s.vol.mnt().to_path_buf();
    let blocked = std::thread::spawn(move || {
        let started = Instant::now();
        let r = w.step_change(&root).map_err(errno_name);
        tx.send((r, started.elapsed())).unwrap();
        w
    });
    // The blocked op is logged and applied in memory but not answered: status counts it
    // Accepted (not Mirrored: the agent never acknowledged it), and its entry unacknowledged.
    let mut waiting = serde_json::Value::Null;
    wait_for(
        Duration::from_secs(20),
        "status to show the op accepted and waiting for the dead agent",
        || {
            waiting = status_json(&s);
            waiting["ops_accepted"].as_u64() >= Some(1)
                && waiting["ops_mirrored"].as_u64() == Some(0)
                && waiting["mirror"]["unacked_entries"].as_u64() >= Some(1)
        },
    );
    assert!(
        matches!(rx.try_recv(), Err(mpsc::TryRecvError::Empty)),
        "the op returned while the mirror agent was down under --on-mirror-loss wait: \
         {waiting}"
    );
    s.agent.restart();
    let (r, took) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the blocked write did not return within 20 s of the agent's restart");
    let mut w = blocked.join().unwrap();
    assert!(
        r.is_ok(),
        "the blocked write failed after the agent returned: {r:?}"
    );
    eprintln!("the op blocked for {took:?} while the agent was down");
    let answered = status_json(&s);
    assert!(
        answered["ops_accepted"].as_u64() == Some(0)
            && answered["ops_mirrored"].as_u64() == Some(0)
            && answered["ops_applied"].as_u64() > waiting["ops_applied"].as_u64(),
        "after the agent acknowledged, the op must count as applied: {answered} (before: {waiting})"
    );
    // Writes go on as before.
    w.run(s.vol.mnt(), 100);
    s.wait_for_the_agent_to_hold_every_entry();
    s.read_back(&mut w);
}

#[test]
fn wait_policy_fails_a_write_with_eio_after_mirror_wait_ms() {
    let mut s = Setup::new(1);
    let mut w = s.mount_a_and_run(
        &[
            &["--on-mirror-loss", "wait", "--mirror-wait-ms", "1500"],
            FAST_DETECT,
        ]
        .concat(),
        80,
    );
    s.agent.kill();
    let victim = s.vol.path("w/eio-victim");
    let started = Instant::now();
    let r = fs::write(&victim, b"never acknowledged");
    let took = started.elapsed();
    let e = r.expect_err("a write succeeded with the agent down under --on-mirror-loss wait");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EIO),
        "expected EIO after --mirror-wait-ms, got {e} after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(10),
        "EIO came after {took:?}, expected about 1.5 s (--mirror-wait-ms 1500)"
    );
    eprintln!("EIO after {took:?}");
    s.agent.restart();
    // Writes work again once the agent is back, and nothing acknowledged is lost.
    w.run(s.vol.mnt(), 50);
    s.wait_for_the_agent_to_hold_every_entry();
    s.lose_ring_and_remount();
    // The EIO'd create was never acknowledged: it may be there or not (POSIX leaves a failed
    // write's effect undefined); the model ignores it.
    if victim.exists() {
        eprintln!("note: the create answered EIO is present after recovery");
        fs::remove_file(&victim).unwrap();
    }
    s.check_and_unmount(&mut w);
}

// ----- 3. --on-mirror-loss degrade -----

#[test]
fn degrade_policy_goes_on_unprotected_and_resyncs_the_agent() {
    let mut s = Setup::new(1);
    let mut w = s.mount_a_and_run(
        &[&["--on-mirror-loss", "degrade"], FAST_DETECT].concat(),
        100,
    );
    assert_eq!(s.mirror_status("protected"), "true");
    s.agent.kill();
    let started = Instant::now();
    w.max_op = Duration::ZERO;
    w.run(s.vol.mnt(), 250);
    eprintln!(
        "250 ops with the agent down in {:?}, longest {:?}",
        started.elapsed(),
        w.max_op
    );
    assert!(
        w.max_op < Duration::from_secs(3),
        "an op took {:?} under degrade (detect 1 s)",
        w.max_op
    );
    assert!(
        s.daemon_log().contains("UNPROTECTED"),
        "daemon.log does not say UNPROTECTED:\n{}",
        s.daemon_log()
    );
    assert_eq!(
        s.mirror_status("protected"),
        "false",
        "status does not show the node unprotected"
    );
    s.agent.restart();
    wait_for(
        Duration::from_secs(20),
        "status to say protected again",
        || s.mirror_status("protected") == "true",
    );
    w.run(s.vol.mnt(), 20);
    assert!(
        s.daemon_log().contains("protected again"),
        "daemon.log does not say protected again"
    );
    // The resync was followed: a start line, and an end line once the agent held it all.
    wait_for(
        Duration::from_secs(10),
        "daemon.log to say the agent is resynchronised",
        || {
            s.daemon_log()
                .contains("mirror: resynchronised: the agent holds every entry")
        },
    );
    assert!(
        s.daemon_log()
            .contains("mirror: resynchronising the agent: seq"),
        "daemon.log does not show the resync starting:\n{}",
        s.daemon_log()
    );
    assert_eq!(
        status_json(&s)["mirror"]["resync_through"],
        serde_json::Value::Null,
        "status still shows a resync after the agent caught up"
    );
    s.wait_for_the_agent_to_hold_every_entry();
    // The read-back: only the agent's copy can bring the degraded stretch back.
    s.read_back(&mut w);
}

// ----- 4. route failover -----

#[test]
fn writes_continue_through_the_second_route_when_the_first_goes_down() {
    let mut s = Setup::new(2);
    let mirror = s.host.mirror_list();
    s.vol.mount(&mirror_args(
        &mirror,
        &[
            "--node",
            "A",
            "--heartbeat-ms",
            "100",
            "--detect-ms",
            "500",
            "-o",
            NO_CHECKPOINTS,
        ],
    ));
    assert_eq!(s.mirror_status("route_in_use"), s.host.addr(0));
    let mut w = start_workload(s.vol.mnt());
    w.run(s.vol.mnt(), 50);
    let running = w.spawn(s.vol.mnt().to_path_buf());
    running.wait_for_ops(20, Duration::from_secs(30));
    s.host.route_down(0);
    let down_at = Instant::now();
    wait_for(
        Duration::from_secs(20),
        "status to show the second route in use",
        || s.mirror_status("route_in_use") == s.host.addr(1),
    );
    let switched = down_at.elapsed();
    // The workload goes on through the second route while it runs.
    running.wait_for_ops(30, Duration::from_secs(30));
    let (w, failed) = running.stop();
    if let Some(e) = failed {
        panic!("{e} during route failover");
    }
    eprintln!(
        "{} ops, longest {:?}; the second route in use {switched:?} after the first went down",
        w.acked, w.max_op,
    );
    assert!(
        w.max_op < Duration::from_millis(3000),
        "an op stalled {:?} during failover (detect 500 ms)",
        w.max_op
    );
    assert_eq!(
        s.mirror_status("route_in_use"),
        s.host.addr(1),
        "the daemon does not use the second route"
    );
    assert_eq!(s.mirror_status("protected"), "true");
    // Progress after the failover: more ops go through the second route.
    let mut w = w;
    let before = w.acked;
    w.run(s.vol.mnt(), 50);
    assert_eq!(w.acked, before + 50);
    s.wait_for_the_agent_to_hold_every_entry();
    eprintln!("agent: {}", s.agent.inspect());
    s.read_back(&mut w);
}

// ----- 5. takeover and giveback -----

fn takeover(voldir: &Path, mnt: &Path, mirror: &str, node: &str) -> std::process::Output {
    smlogfs(&[
        "takeover",
        &voldir.display().to_string(),
        &mnt.display().to_string(),
        "--mirror",
        mirror,
        "--node",
        node,
    ])
}

#[test]
fn peer_takes_over_a_killed_node_and_gives_back() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    let mnt2 = s.peer_mountpoint();
    let w = s.mount_a_and_run(&[], 100);
    let mut w = kill_in_the_middle(&mut s.vol, w);
    let killed_at = Instant::now();
    // B takes over from the agent's copy (the local ring of A is not used).
    let out = takeover(s.vol.voldir(), &mnt2, &mirror, "B");
    assert!(
        out.status.success(),
        "takeover by B failed: {}",
        describe(&out)
    );
    eprintln!(
        "takeover ready {:?} after A's death; {} ops acknowledged by A",
        killed_at.elapsed(),
        w.acked
    );
    assert!(is_fuse_mount(&mnt2));
    w.check(&mnt2);
    // A is fenced while B owns the volume.
    lazy_umount(s.vol.mnt());
    let out = smlogfs(&[
        "mount",
        &s.vol.voldir().display().to_string(),
        &s.vol.mnt().display().to_string(),
        "--mirror",
        &mirror,
        "--node",
        "A",
    ]);
    assert_fails_with(
        &out,
        11,
        "A's mount while B owns the volume",
        &["taken over"],
    );
    assert!(
        !is_fuse_mount(s.vol.mnt()),
        "a fenced mount left something mounted"
    );
    // B writes; gives back; A mounts again and sees B's writes too.
    w.run(&mnt2, 100);
    let out = smlogfs(&["giveback", &mnt2.display().to_string()]);
    assert!(out.status.success(), "giveback: {}", describe(&out));
    assert!(
        !is_fuse_mount(&mnt2),
        "giveback left {} mounted",
        mnt2.display()
    );
    s.vol.remount();
    w.check(s.vol.mnt());
    w.run(s.vol.mnt(), 30);
    // And A's own writes after giveback are mirrored again: the read-back check.
    s.read_back(&mut w);
}

/// The largest writes the daemon takes (1 MiB, FUSE's max_write here) go to the agent like
/// any other entry: they are acknowledged, and they come back from the agent's copy.
#[test]
fn one_mib_writes_are_mirrored_and_recovered_from_the_agent() {
    let mut s = Setup::new(1);
    s.mount_a(&[]);
    let mut data = vec![0u8; 8 << 20];
    let mut rng = StdRng::seed_from_u64(seed());
    rng.fill(&mut data[..]);
    let path = s.vol.path("big.bin");
    // One write(2) of 8 MiB: the kernel hands it to the daemon as writes of max_write bytes.
    let mut f = fs::File::create(&path).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(s.mirror_status("protected"), "true");
    let log = s.daemon_log();
    assert!(
        !log.contains("ERROR"),
        "the daemon logged an error for 1 MiB writes:\n{log}"
    );
    s.wait_for_the_agent_to_hold_every_entry();
    s.lose_ring_and_remount();
    assert!(
        fs::read(s.vol.path("big.bin")).unwrap() == data,
        "big.bin differs after recovery from the agent"
    );
    s.vol.umount_clean();
}

/// A still running when B takes over: A learns of the fence at its next heartbeat, refuses
/// every change (EROFS) and lets go of the volume, and B mounts while A's mount stays up
/// read-only. A's refused write never reaches the volume.
#[test]
fn a_live_old_owner_is_fenced_by_the_takeover() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    let mnt2 = s.peer_mountpoint();
    let mut w = s.mount_a_and_run(&[], 100);
    let out = takeover(s.vol.voldir(), &mnt2, &mirror, "B");
    eprintln!("takeover with A alive: {}", describe(&out));
    assert!(
        out.status.success(),
        "takeover with A alive: {}",
        describe(&out)
    );
    // A is fenced: its next write fails and stays failed.
    let late = s.vol.path("w/late-write-of-a");
    for i in 0..3 {
        let r = fs::write(&late, b"must not survive");
        let e = r.expect_err("the old owner could still write after the takeover");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "write {i} of A: {e}");
    }
    let e = fs::write(s.vol.path("w/another"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert!(
        s.daemon_log().contains("FENCED"),
        "daemon.log does not say FENCED"
    );
    assert!(is_fuse_mount(&mnt2));
    w.check(&mnt2);
    assert!(
        !mnt2.join("w/late-write-of-a").exists(),
        "a write refused to the fenced node reached the peer"
    );
    w.run(&mnt2, 50);
    let out = smlogfs(&["giveback", &mnt2.display().to_string()]);
    assert!(out.status.success(), "giveback: {}", describe(&out));
    lazy_umount(s.vol.mnt());
    s.vol.remount();
    s.check_and_unmount(&mut w);
}

/// A takeover that fails because A's daemon still holds the volume on this machine (here:
/// stopped, so it cannot learn of the fence and let go) must say so and what to do (exit 6,
/// "stop that daemon and run the takeover again"), and leave the volume with a server: A's
/// mount still serves every acknowledged op, and once A is killed as told, the takeover run
/// again serves them from B.
#[test]
fn a_failed_takeover_leaves_the_volume_with_a_server() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    let mnt2 = s.peer_mountpoint();
    let mut w = s.mount_a_and_run(&[], 20);
    let pid = s.vol.daemon_pid().expect("A's daemon pid");
    signal(pid, libc::SIGSTOP);
    let out = takeover(s.vol.voldir(), &mnt2, &mirror, "B");
    signal(pid, libc::SIGCONT);
    eprintln!("takeover while A holds the volume: {}", text(&out).trim());
    assert_fails_with(
        &out,
        6,
        "takeover while A's daemon holds the volume",
        &["did not let go", "run the takeover again"],
    );
    assert!(!is_fuse_mount(&mnt2), "the failed takeover mounted B");
    // A still serves the volume (fenced: reads only).
    assert!(is_fuse_mount(s.vol.mnt()), "A's mount is gone");
    w.check(s.vol.mnt());
    // What the message says to do: stop A, take over again.
    s.vol.kill9();
    let out = takeover(s.vol.voldir(), &mnt2, &mirror, "B");
    assert!(
        out.status.success(),
        "the takeover run again after A was stopped: {}",
        describe(&out)
    );
    w.check(&mnt2);
    w.run(&mnt2, 10);
    let out = smlogfs(&["giveback", &mnt2.display().to_string()]);
    assert!(out.status.success(), "giveback: {}", describe(&out));
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY-free: kill(2) has no memory effects.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill -{sig} {pid}: {}", io::Error::last_os_error());
}

/// A takeover whose command is wrong (here: its mountpoint does not exist) is refused
/// before it raises the epoch: A is not fenced and goes on writing.
#[test]
fn a_mistyped_takeover_fences_nobody() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    let mut w = s.mount_a_and_run(&[], 10);
    let epoch = s.agent.epoch().expect("the agent holds the volume");
    let missing = s.dir.path().join("no-such-mountpoint");
    let out = takeover(s.vol.voldir(), &missing, &mirror, "B");
    assert_fails_with(
        &out,
        5,
        "takeover onto a missing mountpoint",
        &["no-such-mountpoint"],
    );
    // The fence is the epoch at the agent: not raised, so A is not fenced, and writes on.
    assert_eq!(
        s.agent.epoch(),
        Some(epoch),
        "the refused takeover raised the epoch at the agent"
    );
    w.run(s.vol.mnt(), 10);
    s.vol.umount();
    s.vol.remount();
    s.check_and_unmount(&mut w);
}

// ----- 6. bad configuration -----

#[test]
fn an_unreachable_agent_at_mount_is_a_clear_error() {
    let s = Setup::new(1);
    // Nothing listens on this port of host B (refused at once) …
    let refused = format!("{}:{}", s.host.links[0].ns_ip, AGENT_PORT + 1);
    // … and no host answers this address of B's network (no ARP reply).
    let silent = format!("{}.77:{AGENT_PORT}", {
        let ip = &s.host.links[0].ns_ip;
        ip[..ip.rfind('.').unwrap()].to_string()
    });
    for addr in [&refused, &silent] {
        let started = Instant::now();
        let out = smlogfs(&[
            "mount",
            &s.vol.voldir().display().to_string(),
            &s.vol.mnt().display().to_string(),
            "--mirror",
            addr,
            "--on-mirror-loss",
            "wait",
            "--mirror-wait-ms",
            "2000",
            "--detect-ms",
            "2000",
        ]);
        let took = started.elapsed();
        eprintln!("mount with agent {addr}: {took:?}: {}", text(&out).trim());
        assert_fails_with(&out, 12, &format!("mount with agent {addr}"), &[addr]);
        assert!(
            !is_fuse_mount(s.vol.mnt()),
            "a failed mount left {addr} mounted"
        );
        assert!(
            took < Duration::from_secs(30),
            "mount took {took:?} to fail"
        );
    }
}

#[test]
fn a_secret_mismatch_is_a_clear_error() {
    let mut s = Setup::new(1);
    let secret_agent = s.dir.path().join("secret-agent");
    let secret_wrong = s.dir.path().join("secret-wrong");
    fs::write(&secret_agent, "correct horse battery staple\n").unwrap();
    fs::write(&secret_wrong, "wrong horse\n").unwrap();
    s.agent.kill();
    let mut agent = Agent::start(&s.host, &s.dir.path().join("agent2"), Some(&secret_agent));
    let mirror = s.host.addr(0);
    let voldir = s.vol.voldir().display().to_string();
    let mnt = s.vol.mnt().display().to_string();
    for (what, secret) in [("a wrong secret", Some(&secret_wrong)), ("no secret", None)] {
        let mut args = vec![
            "mount",
            &voldir,
            &mnt,
            "--mirror",
            &mirror,
            "--mirror-wait-ms",
            "2000",
        ];
        let p;
        if let Some(f) = secret {
            p = f.display().to_string();
            args.extend(["--secret-file", &p]);
        }
        let out = smlogfs(&args);
        eprintln!("mount with {what}: {}", text(&out).trim());
        assert_eq!(
            out.status.code(),
            Some(12),
            "mount with {what}: {}",
            describe(&out)
        );
        assert!(
            text(&out).to_lowercase().contains("secret"),
            "the error for {what} does not mention the secret: {}",
            text(&out)
        );
        assert!(!is_fuse_mount(s.vol.mnt()));
    }
    // The right secret mounts, and mirrors.
    let p = secret_agent.display().to_string();
    s.vol.mount(&["--mirror", &mirror, "--secret-file", &p]);
    let mut w = start_workload(s.vol.mnt());
    w.run(s.vol.mnt(), 30);
    s.vol.umount();
    agent.kill();
}

// ----- 7. a damaged (not deleted) local ring; `smlogfs recover` -----

use smlogfs::statelog::{format::HEADER_AREA_BYTES, ScanEnd, ScannedEntry, StateLog};

/// How the local ring is damaged after the daemon was killed.
#[derive(Clone, Copy, Debug)]
enum RingDamage {
    /// The file is cut in the middle of the entries written after the last checkpoint.
    Truncate,
    /// Bytes inside an entry in the middle of that stretch are overwritten; valid entries
    /// follow it.
    Overwrite,
}

/// Mounts with the mirror and no periodic checkpoint, runs ops, cycles the mount once (a
/// checkpoint the agent learns of: recovery must join it with the agent's entries after it),
/// runs more ops and kills the daemon in the middle of a workload.
fn run_then_kill_after_a_checkpoint(s: &mut Setup) -> Workload {
    // The ring flushed every 20 ms: the damage can be put below its durable watermark.
    let mut w = s.mount_a_and_run(&["-o", "commit_ms=20"], 80);
    s.vol.cycle();
    w.run(s.vol.mnt(), 150);
    kill_in_the_middle(&mut s.vol, w)
}

/// Damages VOLDIR/statelog at an entry in the middle of those after the volume's last
/// checkpoint; checks with the ring's own scanner that the damage took and cut acknowledged
/// entries off. Returns the seq of the damaged entry.
fn damage_ring(voldir: &Path, how: RingDamage) -> u64 {
    // A checkpoint may have run since the mount (the ring filling up): ask the superblock.
    let covers_seq = smlogfs::cmd::status::read_superblock_offline(voldir)
        .unwrap_or_else(|e| panic!("superblock of {}: {e}", voldir.display()))
        .covers_seq;
    let from_seq = covers_seq + 1;
    let ring = voldir.join("statelog");
    let scan =
        StateLog::scan_file(&ring).unwrap_or_else(|e| panic!("scan {}: {e}", ring.display()));
    let after: Vec<&ScannedEntry> = scan
        .entries
        .iter()
        .filter(|e| e.header.seq >= from_seq)
        .collect();
    assert!(
        after.len() >= 20,
        "only {} ring entries after the checkpoint (seq {from_seq}): the workload did not run",
        after.len()
    );
    // Among the entries the ring's header says are flushed: damage after its durable
    // watermark would read as a torn tail.
    let durable: Vec<&ScannedEntry> = after
        .iter()
        .copied()
        .filter(|e| e.header.seq <= scan.header.durable_seq)
        .collect();
    assert!(
        durable.len() >= 10,
        "only {} of the {} entries after the checkpoint are below the durable watermark (seq {})",
        durable.len(),
        after.len(),
        scan.header.durable_seq
    );
    let victim = durable[durable.len() / 2];
    let at = HEADER_AREA_BYTES + victim.offset;
    let file = fs::OpenOptions::new().write(true).open(&ring).unwrap();
    match how {
        RingDamage::Truncate => file.set_len(at + 8).unwrap(),
        RingDamage::Overwrite => {
            // len, seq, op_id, kind and state of the entry header: its checksum fails.
            file.write_all_at(&[0xA5; 24], at + 4).unwrap();
        }
    }
    file.sync_all().unwrap();
    drop(file);
    let rescan = StateLog::scan_file(&ring).unwrap();
    let last_left = rescan.entries.last().map_or(0, |e| e.header.seq);
    assert!(
        last_left < victim.header.seq,
        "{how:?} at seq {} left the ring readable through seq {last_left}",
        victim.header.seq
    );
    match how {
        RingDamage::Truncate => assert!(rescan.truncated_len.is_some()),
        // Damage to flushed entries (the victim is below the ring's durable watermark) is
        // corruption, not a torn tail.
        RingDamage::Overwrite => assert!(
            matches!(rescan.end, ScanEnd::Corrupt { .. }),
            "the overwrite does not read as damage in the middle: {:?}",
            rescan.end
        ),
    }
    eprintln!(
        "{how:?}: checkpoint covers seq {covers_seq}; ring entries {}..={} after it, damaged at \
         seq {} (byte {at})",
        after[0].header.seq,
        after.last().unwrap().header.seq,
        victim.header.seq
    );
    victim.header.seq
}

/// Remounts with the last mount's arguments (the mirror among them) and checks that
/// daemon.log says `expect`, proof that the damage was seen and the agent's copy used.
fn remount_from_damaged_ring(s: &mut Setup, expect: &str) {
    let log_before = s.daemon_log().len();
    s.vol.try_remount().unwrap_or_else(|e| panic!("{e}"));
    let log = s.daemon_log();
    let new = &log[log_before..];
    assert!(
        new.contains(expect) && new.contains("from the mirror"),
        "the remount did not say {expect:?} and that it recovered from the mirror:\n{new}"
    );
}

/// Damages the local ring after a kill -9, remounts with the mirror (the log must say
/// `expect` and that entries came from the agent), and checks every acknowledged op, more
/// writes, and a clean unmount and mount after.
fn damaged_ring_is_recovered_from_the_agent(damage: RingDamage, expect: &str) {
    let mut s = Setup::new(1);
    let mut w = run_then_kill_after_a_checkpoint(&mut s);
    damage_ring(s.vol.voldir(), damage);
    remount_from_damaged_ring(&mut s, expect);
    w.check(s.vol.mnt());
    w.run(s.vol.mnt(), 20);
    s.vol.umount_clean();
    s.vol.remount();
    s.check_and_unmount(&mut w);
}

#[test]
fn truncated_ring_is_completed_from_the_agent() {
    // The entries before the cut come from the local ring, those after it from the agent.
    damaged_ring_is_recovered_from_the_agent(RingDamage::Truncate, "after the local ring's last");
}

#[test]
fn ring_corrupt_in_the_middle_is_recovered_from_the_agent() {
    damaged_ring_is_recovered_from_the_agent(RingDamage::Overwrite, "local state log unusable");
}

/// Name -> (length, crc32c) of every regular file in VOLDIR (other kinds by name only),
/// except daemon.log, to which every mount attempt appends its story.
fn voldir_digest(voldir: &Path) -> BTreeMap<String, Option<(u64, u32)>> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(voldir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "daemon.log" {
            continue;
        }
        if !e.file_type().unwrap().is_file() {
            out.insert(name, None);
            continue;
        }
        let mut f = fs::File::open(e.path()).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let (mut len, mut crc) = (0u64, 0u32);
        loop {
            let n = io::Read::read(&mut f, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            len += n as u64;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
        }
        out.insert(name, Some((len, crc)));
    }
    out
}

#[track_caller]
fn assert_voldir_unchanged(
    voldir: &Path,
    before: &BTreeMap<String, Option<(u64, u32)>>,
    log_before: &str,
    what: &str,
) {
    let after = voldir_digest(voldir);
    for name in before.keys().chain(after.keys()).collect::<BTreeSet<_>>() {
        assert_eq!(
            before.get(name),
            after.get(name),
            "{what} changed {} in VOLDIR (length, crc32c)",
            name
        );
    }
    let log = fs::read_to_string(voldir.join("daemon.log")).unwrap_or_default();
    assert!(
        log.starts_with(log_before),
        "{what} rewrote daemon.log instead of appending to it"
    );
}

/// The runbook's path for a damaged ring: a plain mount refuses (exit 7, nothing changed),
/// `smlogfs recover VOLDIR --mirror` replays the agent's copy onto the volume, and a mount
/// *without* the mirror then holds every acknowledged op: recover did the work.
#[test]
fn explicit_recover_from_the_agent_then_a_mount_without_the_mirror() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    let mut w = run_then_kill_after_a_checkpoint(&mut s);
    damage_ring(s.vol.voldir(), RingDamage::Overwrite);
    let voldir = s.vol.voldir().display().to_string();
    let mnt = s.vol.mnt().display().to_string();
    let before = voldir_digest(s.vol.voldir());
    let log_before = s.daemon_log();
    let out = smlogfs(&["mount", &voldir, &mnt]);
    assert_fails_with(
        &out,
        7,
        "a mount without the mirror over a ring damaged in the middle",
        &["recover"],
    );
    assert!(
        !s.vol.path(WORK_DIR).exists(),
        "the refused mount serves the volume"
    );
    assert_voldir_unchanged(s.vol.voldir(), &before, &log_before, "the refused mount");

    let out = smlogfs(&["recover", &voldir, "--mirror", &mirror, "--node", "A"]);
    eprintln!("recover: {}", text(&out).trim());
    assert!(out.status.success(), "smlogfs recover: {}", describe(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let replayed: u64 = said
        .split_once(": ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the replayed count from {said:?}"));
    assert!(
        said.contains("ops replayed") && replayed > 0,
        "recover replayed nothing: {said}"
    );
    assert!(
        text(&out).contains("recovering") && text(&out).contains("from the mirror agent"),
        "recover did not say it used the agent's copy: {}",
        text(&out)
    );
    // No --mirror: only what recover put on the volume can be there.
    s.vol.mount(&["-o", NO_CHECKPOINTS]);
    w.check(s.vol.mnt());
    w.run(s.vol.mnt(), 20);
    s.vol.umount_clean();
}

// ----- 8. an agent whose directory for our volume holds another volume -----

/// The `vol-*` directories in the agent's DIR.
fn agent_volume_dirs(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vol-"))
        })
        .collect()
}

fn copy_flat_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        assert!(p.is_file(), "{} is not a plain file", p.display());
        fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// The agent's directory for our volume holds another volume's store (someone restored or
/// copied the wrong directory): the mount must fail with exit 12 naming the conflict and
/// the route, change nothing in VOLDIR (the killed daemon's ops are still to be replayed),
/// and once the right directory is back the mount recovers everything.
#[test]
fn an_agent_dir_holding_another_volume_under_ours_is_a_clear_error() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    let mut w = s.mount_a_and_run(&[], 60);
    let ours: Vec<PathBuf> = agent_volume_dirs(&s.agent.dir).into_iter().collect();
    assert_eq!(ours.len(), 1, "the agent holds {ours:?}");
    let ours = ours[0].clone();
    // Killed: the next mount has ops to replay, so a mount that went ahead would change VOLDIR.
    s.vol.kill9();

    // Another volume mirrored to the same agent.
    let mut other = Volume::new(MKFS);
    other.mount(&["--mirror", &mirror, "--node", "B"]);
    write_file(other.path("from-b"), b"volume b");
    other.umount();
    let theirs: Vec<PathBuf> = agent_volume_dirs(&s.agent.dir)
        .into_iter()
        .filter(|d| *d != ours)
        .collect();
    assert_eq!(theirs.len(), 1, "the second volume's directory: {theirs:?}");

    // Our directory at the agent is replaced by a copy of the other volume's.
    s.agent.kill();
    let saved = s.dir.path().join("saved-ours");
    fs::rename(&ours, &saved).unwrap();
    copy_flat_dir(&theirs[0], &ours);
    s.agent.restart();
    let agent_log = fs::read_to_string(&s.agent.log).unwrap();
    assert!(
        agent_log.contains("belongs to volume"),
        "the agent did not report the foreign volume at start-up:\n{agent_log}"
    );

    let before = voldir_digest(s.vol.voldir());
    let log_before = s.daemon_log();
    let out = smlogfs(&[
        "mount",
        &s.vol.voldir().display().to_string(),
        &s.vol.mnt().display().to_string(),
        "--mirror",
        &mirror,
        "--node",
        "A",
        "--mirror-wait-ms",
        "2000",
    ]);
    eprintln!("mount against the foreign directory: {}", text(&out).trim());
    assert_fails_with(
        &out,
        12,
        "mount with the agent's copy of another volume",
        &["belongs to volume", &mirror],
    );
    assert!(
        text(&out).contains("reachable but refused") && !text(&out).contains("unreachable"),
        "a refusing agent is reported as unreachable: {}",
        text(&out)
    );
    assert!(
        !s.vol.path(WORK_DIR).exists(),
        "the refused mount serves the volume"
    );
    assert_voldir_unchanged(s.vol.voldir(), &before, &log_before, "the refused mount");

    // The right directory back: everything acknowledged is recovered.
    s.agent.kill();
    fs::remove_dir_all(&ours).unwrap();
    fs::rename(&saved, &ours).unwrap();
    s.agent.restart();
    s.vol.remount();
    s.check_and_unmount(&mut w);
    // The other volume was never touched.
    other.remount();
    assert_eq!(read_file(other.path("from-b")), b"volume b");
    other.umount();
}

// ----- 9. --mirror-mode async -----

fn status_json(s: &Setup) -> serde_json::Value {
    let out = smlogfs(&["status", &s.vol.mnt().display().to_string(), "--json"]);
    assert!(out.status.success(), "smlogfs status: {}", describe(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", text(&out)))
}

/// Async mode answers without waiting for the agent: writes go on even while the agent is
/// down (under `wait`, which would fail them with EIO after 2 s in sync mode), and the
/// agent still ends up with every entry, checked by the read-back.
#[test]
fn async_mode_answers_at_once_and_the_agent_catches_up() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    s.vol.mount(&mirror_args(
        &mirror,
        &[
            "--node",
            "A",
            "--mirror-mode",
            "async",
            "--on-mirror-loss",
            "wait",
            "--mirror-wait-ms",
            "2000",
            "--heartbeat-ms",
            "200",
            "--detect-ms",
            "1000",
            "-o",
            NO_CHECKPOINTS,
        ],
    ));
    let st = status_json(&s);
    assert_eq!(st["mirror"]["mode"], "async", "status: {st}");
    let human = smlogfs(&["status", &s.vol.mnt().display().to_string()]);
    assert!(
        text(&human).contains("mode async"),
        "status does not show the mode: {}",
        text(&human)
    );
    let mut w = start_workload(s.vol.mnt());
    w.run(s.vol.mnt(), 200);
    s.wait_for_the_agent_to_hold_every_entry();
    // The agent away: async writes do not wait for it.
    s.agent.kill();
    w.run(s.vol.mnt(), 150);
    s.agent.restart();
    let last = s.next_seq() - 1;
    wait_for(
        Duration::from_secs(20),
        "the agent to catch up with the entries written while it was down",
        || s.agent.last_seq() >= Some(last),
    );
    wait_for(
        Duration::from_secs(20),
        "status to show nothing unacknowledged",
        || {
            let m = &status_json(&s)["mirror"];
            m["unacked_entries"] == 0 && m["acked_through"].as_u64() >= Some(last)
        },
    );
    s.lose_ring_and_remount();
    w.check(s.vol.mnt());
    assert_eq!(status_json(&s)["mirror"]["mode"], "async");
    s.vol.umount_clean();
}

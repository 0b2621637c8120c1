//! Mirroring, recovery from the mirror, route failover, takeover and giveback on real
//! processes and real TCP (issue 4, "What proves it"; DESIGN.md guarantees 1, 3 and 4).
//!
//! Each test builds a second "host" from a network namespace of its own (`smlg-<random>`):
//! the `mirror-agent` runs inside it (`ip netns exec`), the smlogfs daemon and its FUSE mount
//! stay in the root namespace and reach the agent over veth pairs with addresses from 10.x
//! that the test creates (one /24 per pair, checked to be unused). Every namespace, link,
//! agent, daemon and mount is removed by a Drop guard, also when the test panics.
//!
//! A workload of creates, positional writes, appends, renames (also over an existing file),
//! unlinks and `user.` xattrs runs in the mount and records each op in a model only once the
//! syscall returned success. Appends make a replay twice visible (the file grows twice), so
//! "every acknowledged op exactly once" is checked, not only "present". Where the daemon is
//! killed in the middle of the workload, the one op in flight may have happened or not.
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

use common::netns::{Agent, Host, AGENT_PORT};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// mkfs arguments: small enough to be quick, a ring that does not wrap in these workloads.
const MKFS: &[&str] = &["--size", "256M", "--ring", "16M", "--disks", "1"];
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

/// Lazily unmounts a second mountpoint (takeover) and removes nothing else.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if is_fuse_mount(&self.0) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Everything one test needs: host B with its agent, and a volume in the root namespace.
/// Field order is drop order: the volume (daemon, mount) first, then the agent, the host.
struct Setup {
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
            vol,
            agent,
            host,
            dir,
        }
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

// ----- the workload and its model -----

#[derive(Clone, Debug)]
enum Op {
    Mkdir(String),
    Create(String),
    Pwrite(String, u64, Vec<u8>),
    Append(String, Vec<u8>),
    Rename(String, String),
    Unlink(String),
    SetXattr(String, String, Vec<u8>),
}

#[derive(Clone, Debug, Default, PartialEq)]
struct FileState {
    data: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// What the tree under the work directory must hold; paths relative, '/'-separated.
#[derive(Clone, Debug, Default, PartialEq)]
struct Tree {
    dirs: BTreeSet<String>,
    files: BTreeMap<String, FileState>,
}

impl Tree {
    fn apply(&mut self, op: &Op) {
        assert!(
            self.try_apply(op),
            "{} cannot apply to the model",
            op_name(op)
        );
    }

    /// Applies `op`; false (and nothing changed) when its file does not exist.
    fn try_apply(&mut self, op: &Op) -> bool {
        let exists = |p: &String| self.files.contains_key(p);
        match op {
            Op::Pwrite(p, ..)
            | Op::Append(p, _)
            | Op::Rename(p, _)
            | Op::Unlink(p)
            | Op::SetXattr(p, ..)
                if !exists(p) =>
            {
                return false
            }
            _ => {}
        }
        match op {
            Op::Mkdir(p) => {
                self.dirs.insert(p.clone());
            }
            Op::Create(p) => {
                self.files.insert(p.clone(), FileState::default());
            }
            Op::Pwrite(p, off, d) => {
                let f = &mut self.files.get_mut(p).unwrap().data;
                let end = *off as usize + d.len();
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[*off as usize..end].copy_from_slice(d);
            }
            Op::Append(p, d) => self.files.get_mut(p).unwrap().data.extend_from_slice(d),
            Op::Rename(from, to) => {
                let f = self.files.remove(from).unwrap();
                self.files.insert(to.clone(), f);
            }
            Op::Unlink(p) => {
                self.files.remove(p);
            }
            Op::SetXattr(p, n, v) => {
                self.files
                    .get_mut(p)
                    .unwrap()
                    .xattrs
                    .insert(n.clone(), v.clone());
            }
        }
        true
    }

    /// A short description of how `self` (found) differs from `want`.
    fn diff(&self, want: &Tree) -> String {
        let mut out = String::new();
        for d in want.dirs.symmetric_difference(&self.dirs) {
            out += &format!(
                "dir {d}: {}\n",
                if self.dirs.contains(d) {
                    "unexpected"
                } else {
                    "missing"
                }
            );
        }
        let names: BTreeSet<&String> = want.files.keys().chain(self.files.keys()).collect();
        for n in names {
            match (want.files.get(n), self.files.get(n)) {
                (Some(_), None) => out += &format!("file {n}: missing\n"),
                (None, Some(f)) => {
                    out += &format!("file {n}: unexpected ({} bytes)\n", f.data.len())
                }
                (Some(w), Some(f)) if w != f => {
                    let first = w.data.iter().zip(&f.data).position(|(a, b)| a != b);
                    out += &format!(
                        "file {n}: {} bytes, expected {}; first differing byte {:?}; xattrs {:?} expected {:?}\n",
                        f.data.len(),
                        w.data.len(),
                        first,
                        f.xattrs.keys().collect::<Vec<_>>(),
                        w.xattrs.keys().collect::<Vec<_>>()
                    )
                }
                _ => {}
            }
        }
        out
    }
}

const WORK: &str = "w";
const DIRS: &[&str] = &["", "D1", "D2"];
const NAMES: &[&str] = &[
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n",
];
const XATTRS: &[&str] = &["user.one", "user.two", "user.three"];

/// Random ops against a mount, each recorded in `model` once it returned success.
struct Workload {
    model: Tree,
    rng: StdRng,
    /// The op whose syscall failed or was cut short: it may have happened or not.
    pending: Option<Op>,
    done: usize,
    /// Longest time one op took.
    max_op: Duration,
}

impl Workload {
    fn new(seed: u64) -> Workload {
        eprintln!("workload seed {seed}");
        Workload {
            model: Tree::default(),
            rng: StdRng::seed_from_u64(seed),
            pending: None,
            done: 0,
            max_op: Duration::ZERO,
        }
    }

    fn next_op(&mut self) -> Op {
        let rng = &mut self.rng;
        for d in &DIRS[1..] {
            if !self.model.dirs.contains(*d) {
                return Op::Mkdir(d.to_string());
            }
        }
        let files: Vec<String> = self.model.files.keys().cloned().collect();
        let fresh = |rng: &mut StdRng, model: &Tree| loop {
            let dir = DIRS[rng.gen_range(0..DIRS.len())];
            let name = NAMES[rng.gen_range(0..NAMES.len())];
            let p = if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            };
            if !model.files.contains_key(&p) {
                return p;
            }
        };
        let roll = rng.gen_range(0..100);
        if files.len() < 4 || (roll < 12 && files.len() < 30) {
            return Op::Create(fresh(rng, &self.model));
        }
        let pick = files[rng.gen_range(0..files.len())].clone();
        let tag = self.done as u64 * 7919 + 1;
        match roll {
            0..=5 => {
                // Block-aligned 64 KiB: a direct write, whose data the agent must still get.
                let off = rng.gen_range(0..=32u64) * 4096;
                Op::Pwrite(pick, off, pattern(tag, 64 * 1024))
            }
            // 6..=11 too: with 30 files or more those rolls are not creates.
            6..=39 => {
                let len = self.model.files[&pick].data.len() as u64;
                let off = rng.gen_range(0..=len.min(48 * 1024));
                let n = rng.gen_range(1..=16 * 1024);
                Op::Pwrite(pick, off, pattern(tag, n))
            }
            40..=64 => {
                let n = rng.gen_range(1..=2048);
                Op::Append(pick, pattern(tag, n))
            }
            65..=76 => {
                // Half of the renames replace an existing file.
                let to = if rng.gen_bool(0.5) && files.len() > 1 {
                    files[rng.gen_range(0..files.len())].clone()
                } else {
                    fresh(rng, &self.model)
                };
                if to == pick {
                    return Op::Append(pick, pattern(tag, 17));
                }
                Op::Rename(pick, to)
            }
            77..=86 => Op::Unlink(pick),
            _ => {
                let name = XATTRS[rng.gen_range(0..XATTRS.len())];
                let n = rng.gen_range(1..=64);
                Op::SetXattr(pick, name.to_string(), pattern(tag, n))
            }
        }
    }

    /// Runs one op in `root/w`; on success records it, on failure keeps it as `pending`.
    fn step(&mut self, root: &Path) -> io::Result<()> {
        let op = self.next_op();
        let started = Instant::now();
        match exec(&root.join(WORK), &op) {
            Ok(()) => {
                self.max_op = self.max_op.max(started.elapsed());
                self.model.apply(&op);
                self.done += 1;
                Ok(())
            }
            Err(e) => {
                self.pending = Some(op);
                Err(e)
            }
        }
    }

    /// Runs `n` ops; every one must succeed.
    fn run(&mut self, root: &Path, n: usize) {
        for _ in 0..n {
            if let Err(e) = self.step(root) {
                panic!("op {:?} failed: {e}", self.pending);
            }
        }
    }

    /// The tree must be the model, or the model with the pending op applied (in full, or for
    /// a split write a page-aligned prefix of it). What was found becomes the model: an op that
    /// never returned but took effect is then part of it, and later ops are checked against it.
    #[track_caller]
    fn check(&mut self, root: &Path) {
        let found = read_tree(&root.join(WORK));
        if found == self.model {
            return;
        }
        if let Some(op) = &self.pending {
            let mut candidates = Vec::new();
            let mut with = self.model.clone();
            if with.try_apply(op) {
                candidates.push(with);
            }
            // A write(2) that never returned may reach the daemon as several FUSE writes
            // (split at page boundaries) of which the first were acknowledged before the
            // kill: the file then holds a page-aligned prefix of it.
            let split = match op {
                Op::Pwrite(p, off, d) => Some((p, *off as usize, d)),
                Op::Append(p, d) => self.model.files.get(p).map(|f| (p, f.data.len(), d)),
                _ => None,
            };
            if let Some((p, off, d)) = split {
                for k in (1..d.len()).filter(|k| (off + k) % 4096 == 0) {
                    let mut with = self.model.clone();
                    if with.try_apply(&Op::Pwrite(p.clone(), off as u64, d[..k].to_vec())) {
                        candidates.push(with);
                    }
                }
            }
            if let Some(with) = candidates.into_iter().find(|c| *c == found) {
                self.model = with;
                self.pending = None;
                return;
            }
        }
        panic!(
            "{} does not hold the {} acknowledged ops (pending {:?}):\n{}",
            root.display(),
            self.done,
            self.pending.as_ref().map(op_name),
            found.diff(&self.model)
        );
    }
}

fn op_name(op: &Op) -> String {
    match op {
        Op::Pwrite(p, off, d) => format!("Pwrite({p}, {off}, {} bytes)", d.len()),
        Op::Append(p, d) => format!("Append({p}, {} bytes)", d.len()),
        other => format!("{other:?}"),
    }
}

fn exec(w: &Path, op: &Op) -> io::Result<()> {
    match op {
        Op::Mkdir(p) => fs::create_dir_all(w.join(p)),
        Op::Create(p) => fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(w.join(p))
            .map(drop),
        Op::Pwrite(p, off, d) => {
            // Below max_write, so one FUSE write: all or nothing.
            let f = fs::OpenOptions::new().write(true).open(w.join(p))?;
            let n = f.write_at(d, *off)?;
            if n != d.len() {
                return Err(io::Error::other(format!("short write {n} of {}", d.len())));
            }
            Ok(())
        }
        Op::Append(p, d) => {
            let mut f = fs::OpenOptions::new().append(true).open(w.join(p))?;
            let n = f.write(d)?;
            if n != d.len() {
                return Err(io::Error::other(format!("short append {n} of {}", d.len())));
            }
            Ok(())
        }
        Op::Rename(a, b) => fs::rename(w.join(a), w.join(b)),
        Op::Unlink(p) => fs::remove_file(w.join(p)),
        Op::SetXattr(p, n, v) => {
            let c = cpath(w.join(p));
            let cn = cstr(n);
            let rc =
                unsafe { libc::lsetxattr(c.as_ptr(), cn.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
    }
}

fn read_tree(w: &Path) -> Tree {
    let mut t = Tree::default();
    if !w.exists() {
        return t;
    }
    fn walk(base: &Path, rel: &str, t: &mut Tree) {
        let dir = if rel.is_empty() {
            base.to_path_buf()
        } else {
            base.join(rel)
        };
        let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
        for e in rd {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let p = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                t.dirs.insert(p.clone());
                walk(base, &p, t);
            } else {
                let full = base.join(&p);
                t.files.insert(
                    p,
                    FileState {
                        data: read_file(&full),
                        xattrs: user_xattrs(&full),
                    },
                );
            }
        }
    }
    walk(w, "", &mut t);
    t
}

fn user_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = cpath(p);
    let mut buf = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listxattr {}: {}", p.display(), errno_name(errno()));
    let mut out = BTreeMap::new();
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let name = String::from_utf8_lossy(name).into_owned();
        if !name.starts_with("user.") {
            continue;
        }
        let mut val = vec![0u8; 4096];
        let cn = cstr(&name);
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(
            len >= 0,
            "getxattr {} {name}: {}",
            p.display(),
            errno_name(errno())
        );
        val.truncate(len as usize);
        out.insert(name, val);
    }
    out
}

fn seed() -> u64 {
    std::env::var("FAILOVER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen())
}

/// Runs the workload in a thread until `stop` is set or an op fails (then it stops at once).
fn spawn_workload(
    mut w: Workload,
    root: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Workload, Option<String>)> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = w.step(&root) {
                return (w, Some(e.to_string()));
            }
        }
        (w, None)
    })
}

fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let mut w = Workload::new(seed());
    w.run(s.vol.mnt(), 300);
    // And a stretch that the daemon is killed in the middle of.
    let stop = Arc::new(AtomicBool::new(false));
    let t = spawn_workload(w, s.vol.mnt().to_path_buf(), stop.clone());
    std::thread::sleep(Duration::from_millis(700));
    s.vol.kill9();
    stop.store(true, Ordering::Relaxed);
    let (mut w, err) = t.join().unwrap();
    let took = s.remount_without_ring();
    assert!(
        err.is_some(),
        "the workload did not notice the daemon's death"
    );
    eprintln!(
        "{} acknowledged ops; remount with recovery from the agent took {took:?}",
        w.done
    );
    w.check(s.vol.mnt());
    s.vol.umount();
    s.vol.assert_fsck_clean();
    // A clean cycle keeps it all too.
    s.vol.remount();
    w.check(s.vol.mnt());
    s.vol.umount();
    s.vol.assert_fsck_clean();
}

// ----- 2. --on-mirror-loss wait -----

#[test]
fn wait_policy_blocks_writes_until_the_agent_returns() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    s.vol.mount(&mirror_args(
        &mirror,
        &[
            "--node",
            "A",
            "--on-mirror-loss",
            "wait",
            "--heartbeat-ms",
            "200",
            "--detect-ms",
            "1000",
            "-o",
            NO_CHECKPOINTS,
        ],
    ));
    let mut w = Workload::new(seed());
    w.run(s.vol.mnt(), 150);
    s.agent.kill();
    // One write in a thread: it must block while the agent is away.
    let (tx, rx) = mpsc::channel();
    let root = s.vol.mnt().to_path_buf();
    let blocked = std::thread::spawn(move || {
        let started = Instant::now();
        let r = w.step(&root).map_err(|e| e.to_string());
        tx.send((r, started.elapsed())).unwrap();
        w
    });
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        matches!(rx.try_recv(), Err(mpsc::TryRecvError::Empty)),
        "a write returned while the mirror agent was down under --on-mirror-loss wait"
    );
    // The blocked op is logged and applied in memory but not answered: status counts it
    // Accepted (not Mirrored: the agent never acknowledged it), and its entry unacknowledged.
    let waiting = status_json(&s);
    assert!(
        waiting["ops_accepted"].as_u64() >= Some(1)
            && waiting["ops_mirrored"].as_u64() == Some(0)
            && waiting["mirror"]["unacked_entries"].as_u64() >= Some(1),
        "status while a write waits for the dead agent: {waiting}"
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
    eprintln!("the write blocked for {took:?} (agent down ~1.2 s)");
    let answered = status_json(&s);
    assert!(
        answered["ops_accepted"].as_u64() == Some(0)
            && answered["ops_mirrored"].as_u64() == Some(0)
            && answered["ops_applied"].as_u64() > waiting["ops_applied"].as_u64(),
        "after the agent acknowledged, the op must count as applied: {answered} (before: {waiting})"
    );
    // Writes go on as before.
    w.run(s.vol.mnt(), 100);
    let last = s.next_seq() - 1;
    wait_for(
        Duration::from_secs(10),
        "the agent to hold every entry",
        || s.agent.last_seq() >= Some(last),
    );
    s.lose_ring_and_remount();
    w.check(s.vol.mnt());
    s.vol.umount();
    s.vol.assert_fsck_clean();
}

#[test]
fn wait_policy_fails_a_write_with_eio_after_mirror_wait_ms() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    s.vol.mount(&mirror_args(
        &mirror,
        &[
            "--node",
            "A",
            "--on-mirror-loss",
            "wait",
            "--mirror-wait-ms",
            "1500",
            "--heartbeat-ms",
            "200",
            "--detect-ms",
            "1000",
            "-o",
            NO_CHECKPOINTS,
        ],
    ));
    let mut w = Workload::new(seed());
    w.run(s.vol.mnt(), 80);
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
    let last = s.next_seq() - 1;
    wait_for(
        Duration::from_secs(10),
        "the agent to hold every entry",
        || s.agent.last_seq() >= Some(last),
    );
    s.lose_ring_and_remount();
    // The EIO'd create was never acknowledged: it may be there or not (POSIX leaves a failed
    // write's effect undefined); the model ignores it.
    if victim.exists() {
        eprintln!("note: the create answered EIO is present after recovery");
        fs::remove_file(&victim).unwrap();
    }
    w.check(s.vol.mnt());
    s.vol.umount();
    s.vol.assert_fsck_clean();
}

// ----- 3. --on-mirror-loss degrade -----

#[test]
fn degrade_policy_goes_on_unprotected_and_resyncs_the_agent() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    s.vol.mount(&mirror_args(
        &mirror,
        &[
            "--node",
            "A",
            "--on-mirror-loss",
            "degrade",
            "--heartbeat-ms",
            "200",
            "--detect-ms",
            "1000",
            "-o",
            NO_CHECKPOINTS,
        ],
    ));
    let mut w = Workload::new(seed());
    w.run(s.vol.mnt(), 100);
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
    let last = s.next_seq() - 1;
    wait_for(
        Duration::from_secs(10),
        "the agent to hold every entry",
        || s.agent.last_seq() >= Some(last),
    );
    // The read-back: only the agent's copy can bring the degraded stretch back.
    s.lose_ring_and_remount();
    w.check(s.vol.mnt());
    s.vol.umount();
    s.vol.assert_fsck_clean();
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
    let mut w = Workload::new(seed());
    w.run(s.vol.mnt(), 50);
    let stop = Arc::new(AtomicBool::new(false));
    let t = spawn_workload(w, s.vol.mnt().to_path_buf(), stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    s.host.route_down(0);
    let down_at = Instant::now();
    std::thread::sleep(Duration::from_millis(3000));
    stop.store(true, Ordering::Relaxed);
    let (w, err) = t.join().unwrap();
    assert_eq!(err, None, "an op failed during route failover");
    eprintln!(
        "{} ops, longest {:?} (route 1 down {:?} before the end)",
        w.done,
        w.max_op,
        down_at.elapsed()
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
    let before = w.done;
    w.run(s.vol.mnt(), 50);
    assert_eq!(w.done, before + 50);
    let last = s.next_seq() - 1;
    wait_for(
        Duration::from_secs(10),
        "the agent to hold every entry",
        || s.agent.last_seq() >= Some(last),
    );
    eprintln!("agent: {}", s.agent.inspect());
    s.lose_ring_and_remount();
    w.check(s.vol.mnt());
    s.vol.umount();
    s.vol.assert_fsck_clean();
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
    let mnt2 = s.dir.path().join("mnt-b");
    fs::create_dir(&mnt2).unwrap();
    let _guard = MountGuard(mnt2.clone());
    s.vol.mount(&mirror_args(
        &mirror,
        &["--node", "A", "-o", NO_CHECKPOINTS],
    ));
    let mut w = Workload::new(seed());
    w.run(s.vol.mnt(), 100);
    let stop = Arc::new(AtomicBool::new(false));
    let t = spawn_workload(w, s.vol.mnt().to_path_buf(), stop.clone());
    std::thread::sleep(Duration::from_millis(600));
    s.vol.kill9();
    let killed_at = Instant::now();
    let (mut w, err) = t.join().unwrap();
    assert!(err.is_some(), "the workload did not notice A's death");
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
        w.done
    );
    assert!(is_fuse_mount(&mnt2));
    w.check(&mnt2);
    // A is fenced while B owns the volume.
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(s.vol.mnt())
        .status();
    let out = smlogfs(&[
        "mount",
        &s.vol.voldir().display().to_string(),
        &s.vol.mnt().display().to_string(),
        "--mirror",
        &mirror,
        "--node",
        "A",
    ]);
    assert_eq!(
        out.status.code(),
        Some(11),
        "A's mount while B owns the volume: {}",
        describe(&out)
    );
    assert!(
        text(&out).contains("taken over"),
        "the refusal does not say why: {}",
        text(&out)
    );
    assert!(
        !is_fuse_mount(s.vol.mnt()),
        "a fenced mount left something mounted"
    );
    // B writes; gives back; A mounts again and sees B's writes too.
    w.pending = None;
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
    s.lose_ring_and_remount();
    w.check(s.vol.mnt());
    s.vol.umount();
    s.vol.assert_fsck_clean();
}

/// The largest writes the daemon takes (1 MiB, FUSE's max_write here) go to the agent like
/// any other entry: they are acknowledged, and they come back from the agent's copy.
#[test]
fn one_mib_writes_are_mirrored_and_recovered_from_the_agent() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    s.vol.mount(&mirror_args(
        &mirror,
        &["--node", "A", "-o", NO_CHECKPOINTS],
    ));
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
    let last = s.next_seq() - 1;
    wait_for(
        Duration::from_secs(10),
        "the agent to hold every entry",
        || s.agent.last_seq() >= Some(last),
    );
    s.lose_ring_and_remount();
    assert!(
        fs::read(s.vol.path("big.bin")).unwrap() == data,
        "big.bin differs after recovery from the agent"
    );
    s.vol.umount();
    s.vol.assert_fsck_clean();
}

/// A still running when B takes over: A learns of the fence at its next heartbeat, refuses
/// every change (EROFS) and lets go of the volume, and B mounts while A's mount stays up
/// read-only. A's refused write never reaches the volume.
#[test]
fn a_live_old_owner_is_fenced_by_the_takeover() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    let mnt2 = s.dir.path().join("mnt-b");
    fs::create_dir(&mnt2).unwrap();
    let _guard = MountGuard(mnt2.clone());
    s.vol.mount(&mirror_args(
        &mirror,
        &["--node", "A", "-o", NO_CHECKPOINTS],
    ));
    let mut w = Workload::new(seed());
    w.run(s.vol.mnt(), 100);
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
    let e = fs::write(s.vol.path("w/D1/another"), b"x").unwrap_err();
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
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(s.vol.mnt())
        .status();
    s.vol.remount();
    w.check(s.vol.mnt());
    s.vol.umount();
    s.vol.assert_fsck_clean();
}

/// A takeover that fails (here: A's daemon still holds the volume on this machine) must
/// leave nothing half done: either B serves the volume, or A still owns it and writes.
#[test]
fn a_failed_takeover_leaves_the_volume_with_a_server() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    let mnt2 = s.dir.path().join("mnt-b");
    fs::create_dir(&mnt2).unwrap();
    let _guard = MountGuard(mnt2.clone());
    s.vol.mount(&mirror_args(
        &mirror,
        &["--node", "A", "-o", NO_CHECKPOINTS],
    ));
    let mut w = Workload::new(seed());
    w.run(s.vol.mnt(), 20);
    let out = takeover(s.vol.voldir(), &mnt2, &mirror, "B");
    if out.status.success() {
        assert!(is_fuse_mount(&mnt2));
        w.check(&mnt2);
    } else {
        w.run(s.vol.mnt(), 5);
    }
}

/// A takeover whose command is wrong (here: its mountpoint does not exist) is refused
/// before it raises the epoch: A is not fenced and goes on writing.
#[test]
fn a_mistyped_takeover_fences_nobody() {
    let mut s = Setup::new(1);
    let mirror = s.host.addr(0);
    s.vol.mount(&mirror_args(
        &mirror,
        &["--node", "A", "-o", NO_CHECKPOINTS],
    ));
    let mut w = Workload::new(seed());
    w.run(s.vol.mnt(), 10);
    let missing = s.dir.path().join("no-such-mountpoint");
    let out = takeover(s.vol.voldir(), &missing, &mirror, "B");
    assert!(
        !out.status.success(),
        "takeover onto a missing mountpoint succeeded"
    );
    assert!(
        text(&out).contains("no-such-mountpoint"),
        "the error does not name the mountpoint: {}",
        describe(&out)
    );
    // Well past A's heartbeat: had the epoch been raised, A would be fenced by now.
    std::thread::sleep(Duration::from_millis(2500));
    w.run(s.vol.mnt(), 10);
    s.vol.umount();
    s.vol.remount();
    w.check(s.vol.mnt());
    s.vol.umount();
    s.vol.assert_fsck_clean();
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
        assert_eq!(
            out.status.code(),
            Some(12),
            "mount with agent {addr}: {}",
            describe(&out)
        );
        assert!(
            text(&out).contains(addr.as_str()),
            "the error does not name {addr}: {}",
            text(&out)
        );
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
    let mut w = Workload::new(seed());
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
fn run_then_kill_after_a_checkpoint(s: &mut Setup, mirror: &str) -> Workload {
    s.vol
        .mount(&mirror_args(mirror, &["--node", "A", "-o", NO_CHECKPOINTS]));
    let mut w = Workload::new(seed());
    w.run(s.vol.mnt(), 80);
    s.vol.cycle();
    w.run(s.vol.mnt(), 150);
    let stop = Arc::new(AtomicBool::new(false));
    let t = spawn_workload(w, s.vol.mnt().to_path_buf(), stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    s.vol.kill9();
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap().0
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
    let victim = after[after.len() / 2];
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
    let mirror = s.host.addr(0);
    let mut w = run_then_kill_after_a_checkpoint(&mut s, &mirror);
    damage_ring(s.vol.voldir(), damage);
    remount_from_damaged_ring(&mut s, expect);
    w.check(s.vol.mnt());
    w.run(s.vol.mnt(), 20);
    s.vol.umount();
    s.vol.assert_fsck_clean();
    s.vol.remount();
    w.check(s.vol.mnt());
    s.vol.umount();
    s.vol.assert_fsck_clean();
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
    let mut w = run_then_kill_after_a_checkpoint(&mut s, &mirror);
    damage_ring(s.vol.voldir(), RingDamage::Overwrite);
    let voldir = s.vol.voldir().display().to_string();
    let mnt = s.vol.mnt().display().to_string();
    let before = voldir_digest(s.vol.voldir());
    let log_before = s.daemon_log();
    let out = smlogfs(&["mount", &voldir, &mnt]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "a mount without the mirror over a ring damaged in the middle: {}",
        describe(&out)
    );
    assert!(
        text(&out).contains("recover"),
        "the refusal does not point at `smlogfs recover`: {}",
        text(&out)
    );
    assert!(
        !s.vol.path(WORK).exists(),
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
    s.vol.umount();
    s.vol.assert_fsck_clean();
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
    s.vol.mount(&mirror_args(
        &mirror,
        &["--node", "A", "-o", NO_CHECKPOINTS],
    ));
    let mut w = Workload::new(seed());
    w.run(s.vol.mnt(), 60);
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
    assert_eq!(
        out.status.code(),
        Some(12),
        "mount with the agent's copy of another volume: {}",
        describe(&out)
    );
    assert!(
        text(&out).contains("belongs to volume") && text(&out).contains(&mirror),
        "the error does not name the conflict and the route: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("reachable but refused") && !text(&out).contains("unreachable"),
        "a refusing agent is reported as unreachable: {}",
        text(&out)
    );
    assert!(
        !s.vol.path(WORK).exists(),
        "the refused mount serves the volume"
    );
    assert_voldir_unchanged(s.vol.voldir(), &before, &log_before, "the refused mount");

    // The right directory back: everything acknowledged is recovered.
    s.agent.kill();
    fs::remove_dir_all(&ours).unwrap();
    fs::rename(&saved, &ours).unwrap();
    s.agent.restart();
    s.vol.remount();
    w.check(s.vol.mnt());
    s.vol.umount();
    s.vol.assert_fsck_clean();
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
    let mut w = Workload::new(seed());
    w.run(s.vol.mnt(), 200);
    let last = s.next_seq() - 1;
    wait_for(
        Duration::from_secs(20),
        "the agent to hold every entry",
        || s.agent.last_seq() >= Some(last),
    );
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
    s.vol.umount();
    s.vol.assert_fsck_clean();
}

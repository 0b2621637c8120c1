//! Issue 8 (the whole application): what an application sees while the serving daemon is
//! killed again and again (`kill -9`, real mounts) or handed over with `smlogfs restart`.
//! It must see no error at all, and its files must end as its own model says: every call
//! that returned took effect exactly once. Killing the supervisor too is the crash of old,
//! after which `smlogfs mount` at once must work.
//!
//! `SMLOGFS_RESTART_KILLS` lowers the number of kills of the application test (default 50).
//! The pause an application sees from a kill to its next call returning is printed (median
//! and max), never asserted: it depends on the machine's load.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::model::Workload;
use common::*;

/// Kills of the application test: `SMLOGFS_RESTART_KILLS`, else 50.
fn app_kills() -> usize {
    env_number("SMLOGFS_RESTART_KILLS", 50)
}

/// (start, end) of every call the application made.
type Calls = Arc<Mutex<Vec<(Instant, Instant)>>>;

/// The application: two files held open and a directory of short-lived ones, every call
/// checked against its own model as it returns.
struct App {
    dir: PathBuf,
    held: Vec<(fs::File, Vec<u8>)>,
    /// The short-lived files by name, with their contents.
    files: BTreeMap<String, Vec<u8>>,
    calls: Calls,
    iterations: Arc<AtomicU64>,
    seed: u64,
}

const HELD: [&str; 2] = ["held-0", "held-1"];
const HELD_MAX_BYTES: u64 = 256 * 1024;

impl App {
    fn new(dir: PathBuf, calls: Calls, iterations: Arc<AtomicU64>) -> App {
        let held = HELD
            .iter()
            .map(|name| {
                let f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(dir.join(name))
                    .unwrap_or_else(|e| panic!("create {name}: {e}"));
                (f, Vec::new())
            })
            .collect();
        App {
            dir,
            held,
            files: BTreeMap::new(),
            calls,
            iterations,
            seed: 1,
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift: deterministic, no dependency on the rand API.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    /// Runs `f` as one timed call.
    fn call<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let r = f();
        self.calls.lock().unwrap().push((start, Instant::now()));
        r
    }

    /// One round of write, pread, fstat, (fsync), create+rename, unlink, readdir.
    fn round(&mut self, i: u64) -> Result<(), String> {
        let k = (self.next() % 2) as usize;
        let off = self.next() % HELD_MAX_BYTES;
        let len = 1 + (self.next() % 9000) as usize;
        let data = pattern(i, len);
        let wrote = self.call(|| self.held[k].0.write_all_at(&data, off));
        wrote.map_err(|e| format!("round {i}: pwrite {} at {off}: {e}", HELD[k]))?;
        let model = &mut self.held[k].1;
        let end = off as usize + len;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);

        let k = (self.next() % 2) as usize;
        let size = self.held[k].1.len() as u64;
        let from = self.next() % size.max(1);
        let want_len = ((size - from) as usize).min(16384);
        let mut back = vec![0u8; want_len];
        let read = self.call(|| self.held[k].0.read_exact_at(&mut back, from));
        read.map_err(|e| format!("round {i}: pread {} at {from}: {e}", HELD[k]))?;
        if back[..] != self.held[k].1[from as usize..from as usize + want_len] {
            return Err(format!(
                "round {i}: pread {} at {from} ({want_len} bytes) returned other bytes",
                HELD[k]
            ));
        }
        let meta = self.call(|| self.held[k].0.metadata());
        let meta = meta.map_err(|e| format!("round {i}: fstat {}: {e}", HELD[k]))?;
        if meta.len() != size {
            return Err(format!(
                "round {i}: fstat {}: size {} but {size} written",
                HELD[k],
                meta.len()
            ));
        }
        if i.is_multiple_of(4) {
            let synced = self.call(|| self.held[k].0.sync_all());
            synced.map_err(|e| format!("round {i}: fsync {}: {e}", HELD[k]))?;
        }

        let (new, named) = (format!("new-{i}"), format!("file-{i}"));
        let body = pattern(i + 1_000_000, 100 + (i as usize % 3000));
        let created = self.call(|| fs::write(self.dir.join(&new), &body));
        created.map_err(|e| format!("round {i}: create {new}: {e}"))?;
        let renamed = self.call(|| fs::rename(self.dir.join(&new), self.dir.join(&named)));
        renamed.map_err(|e| format!("round {i}: rename {new} -> {named}: {e}"))?;
        self.files.insert(named, body);
        if i >= 3 {
            let old = format!("file-{}", i - 3);
            let gone = self.call(|| fs::remove_file(self.dir.join(&old)));
            gone.map_err(|e| format!("round {i}: unlink {old}: {e}"))?;
            self.files.remove(&old);
        }
        let listed =
            self.call(|| fs::read_dir(&self.dir).and_then(|d| d.collect::<Result<Vec<_>, _>>()));
        let listed = listed.map_err(|e| format!("round {i}: readdir: {e}"))?;
        let mut names: Vec<String> = listed
            .iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        if names != self.names() {
            return Err(format!(
                "round {i}: readdir lists {names:?}, the model {:?}",
                self.names()
            ));
        }
        Ok(())
    }

    /// Every name the directory must hold, sorted.
    fn names(&self) -> Vec<String> {
        let mut all: Vec<String> = HELD.iter().map(|s| s.to_string()).collect();
        all.extend(self.files.keys().cloned());
        all.sort();
        all
    }

    /// Runs rounds until `stop`; the first error ends it.
    fn run(mut self, stop: &AtomicBool) -> (App, Result<u64, String>) {
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = self.round(i) {
                return (self, Err(e));
            }
            i += 1;
            self.iterations.store(i, Ordering::SeqCst);
        }
        (self, Ok(i))
    }

    /// The model: each held file's contents, and the short-lived files.
    fn into_model(self) -> (Vec<Vec<u8>>, BTreeMap<String, Vec<u8>>) {
        (self.held.into_iter().map(|(_, m)| m).collect(), self.files)
    }
}

/// Compares the files under `dir` (read afresh, by path) with the application's model.
fn verify(dir: &Path, held: &[Vec<u8>], files: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    let mut want_names: Vec<String> = HELD.iter().map(|s| s.to_string()).collect();
    want_names.extend(files.keys().cloned());
    want_names.sort();
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| format!("readdir {}: {e}", dir.display()))?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names != want_names {
        return Err(format!("names {names:?}, the model {want_names:?}"));
    }
    let all = HELD
        .iter()
        .copied()
        .zip(held)
        .chain(files.iter().map(|(n, m)| (n.as_str(), m)));
    for (name, want) in all {
        let got = fs::read(dir.join(name)).map_err(|e| format!("read {name}: {e}"))?;
        if &got != want {
            return Err(format!(
                "{name}: {} bytes differ from the model's {} (first difference at byte {:?})",
                got.len(),
                want.len(),
                got.iter().zip(want.iter()).position(|(a, b)| a != b)
            ));
        }
    }
    Ok(())
}

/// The longest any call waited after each kill: for each (kill, new daemon seen) the
/// longest `end - max(start, kill)` of the calls that ended after the kill and started
/// before the new daemon was seen. Kills that no call overlapped are left out.
fn pauses(calls: &[(Instant, Instant)], kills: &[(Instant, Instant)]) -> Vec<Duration> {
    kills
        .iter()
        .filter_map(|&(kill, seen)| {
            calls
                .iter()
                .filter(|(start, end)| *end >= kill && *start <= seen)
                .map(|(start, end)| end.duration_since((*start).max(kill)))
                .max()
        })
        .collect()
}

fn median_and_max(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    let median = d.get(d.len() / 2).copied().unwrap_or_default();
    (median, d.last().copied().unwrap_or_default())
}

#[test]
fn an_application_sees_no_error_across_daemon_kills() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&[]);
    app_through_daemon_kills(&mut v, app_kills());
}

/// The same application on a volume mirrored in sync mode to a `mirror-agent` on another
/// host (a network namespace with a veth pair, real TCP): every restarted daemon reconnects
/// to the agent and resynchronises it before it serves, and the application still sees
/// nothing but a pause. SMLOGFS_RESTART_MIRROR_KILLS (default 20).
#[test]
fn an_application_sees_no_error_across_daemon_kills_with_a_synchronous_mirror() {
    let kills = env_number("SMLOGFS_RESTART_MIRROR_KILLS", 20);
    let host = netns::Host::new(1);
    let dir = tempfile::Builder::new()
        .prefix("smlogfs-agent-")
        .tempdir()
        .expect("create agent temp dir");
    let agent = netns::Agent::start(&host, &dir.path().join("agent"), None);
    let mut v = Volume::new(DEFAULT_MKFS);
    let mirror = host.addr(0);
    v.mount(&["--mirror", &mirror, "--node", "A", "--mirror-mode", "sync"]);
    app_through_daemon_kills(&mut v, kills);
    let log = v.daemon_log();
    assert!(
        log.matches("mounted").count() > kills,
        "every restarted daemon mounted again with the mirror:\n{log}"
    );
    // The agent holds what the daemons acknowledged: it was never restarted, and every
    // acknowledged write waited for it.
    assert!(
        agent.last_seq().is_some_and(|s| s > 0),
        "the agent holds entries"
    );
    drop(v);
    drop(agent);
    drop(host);
}

/// An application holding files open runs through `kills` kill -9s of the serving daemon of
/// the mounted volume `v`: it must see no error, and its files must equal its own model
/// after the kills and after a clean remount; fsck clean. Prints the pauses it saw.
fn app_through_daemon_kills(v: &mut Volume, kills: usize) {
    let dir = v.path("app");
    fs::create_dir(&dir).unwrap();
    let calls: Calls = Arc::default();
    let iterations = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let app = App::new(dir.clone(), calls.clone(), iterations.clone());
    let runner = {
        let stop = stop.clone();
        std::thread::spawn(move || app.run(&stop))
    };
    let mut killed = Vec::new();
    for _ in 0..kills {
        // The application is busy at every kill: a few rounds since the last one.
        let target = iterations.load(Ordering::SeqCst) + 3;
        wait_until(READY_TIMEOUT, || {
            runner.is_finished() || iterations.load(Ordering::SeqCst) >= target
        });
        if runner.is_finished() {
            break;
        }
        let (old, at) = v.kill_daemon();
        v.wait_new_daemon(old);
        killed.push((at, Instant::now()));
    }
    stop.store(true, Ordering::SeqCst);
    let (app, result) = runner.join().expect("the application thread panicked");
    let rounds = result.unwrap_or_else(|e| {
        panic!(
            "the application saw an error after {} kills: {e}\n{}",
            killed.len(),
            v.daemon_log()
        )
    });
    assert_eq!(killed.len(), kills, "every kill was made");
    let (median, max) = median_and_max(pauses(&calls.lock().unwrap(), &killed));
    eprintln!(
        "{kills} kills of the daemon, {rounds} rounds of the application, no error; pause from \
         kill -9 to the next call returning: median {median:?}, max {max:?}"
    );
    // Closing the held files is the application's last call.
    let (held, files) = app.into_model();
    verify(&dir, &held, &files).unwrap_or_else(|e| panic!("after the kills: {e}"));
    v.umount();
    v.assert_fsck_clean();
    v.remount();
    // Read back after a clean remount: the volume, not a cache, holds the model.
    verify(&dir, &held, &files).unwrap_or_else(|e| panic!("after a clean remount: {e}"));
    v.umount();
}

/// fsx checks every read against its own copy of the file: through 20 kills of the daemon
/// it must report no miscompare and no failed call.
#[test]
fn fsx_runs_through_twenty_daemon_kills() {
    let fsx = std::env::var("FSX").ok().unwrap_or_else(|| {
        let home = std::env::var("HOME").unwrap_or_default();
        let installed = format!("{home}/.cargo/bin/fsx");
        if Path::new(&installed).exists() {
            installed
        } else {
            "fsx".into()
        }
    });
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&["-o", "checkpoint_ms=1000"]);
    let artifacts = tempfile::tempdir().unwrap();
    let mut child = Command::new(&fsx)
        .args(["-N", "30000", "-S", "20261202", "-P"])
        .arg(artifacts.path())
        .arg(v.path("fsx.file"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {fsx} ({e}): install it with `cargo install fsx`"));
    for k in 0..20 {
        std::thread::sleep(Duration::from_millis(150));
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "fsx ended ({status}) after {k} of 20 kills: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (old, _) = v.kill_daemon();
        v.wait_new_daemon(old);
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("A-OK"),
        "fsx through 20 kills: {}\n{}",
        out.status,
        text.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    v.umount();
    v.assert_fsck_clean();
}

/// The crash workload of tests/common/model.rs, with kills of the serving daemon only: no
/// call fails, and the tree is exactly the model (nothing in flight to be lenient about).
#[test]
fn the_model_workload_sees_no_failure_across_daemon_kills() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&[]);
    Workload::prepare(v.mnt());
    let running = Workload::new(0x8b).spawn(v.mnt().to_path_buf());
    for _ in 0..10 {
        running.wait_for_ops(25, READY_TIMEOUT);
        let (old, _) = v.kill_daemon();
        v.wait_new_daemon(old);
    }
    running.wait_for_ops(25, READY_TIMEOUT);
    let (mut w, failed) = running.stop();
    if let Some(e) = failed {
        panic!(
            "{e} (after {} acknowledged ops)\n{}",
            w.acked,
            v.daemon_log()
        );
    }
    assert!(w.inflight.is_none(), "no op is left in flight");
    w.check(v.mnt());
    v.umount();
    v.assert_fsck_clean();
    v.remount();
    w.model
        .verify(v.mnt())
        .unwrap_or_else(|m| panic!("after a clean remount: {m}"));
    v.umount();
}

/// `smlogfs restart` under a writer: no error, a new daemon each time, the data all there.
#[test]
fn restart_hands_over_under_a_write_load() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (path, stop, written) = (v.path("log"), stop.clone(), written.clone());
        std::thread::spawn(move || -> Result<u64, String> {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| format!("create: {e}"))?;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                f.write_all_at(&pattern(n, 4096), n * 4096)
                    .map_err(|e| format!("pwrite {n}: {e}"))?;
                if n.is_multiple_of(8) {
                    f.sync_all().map_err(|e| format!("fsync {n}: {e}"))?;
                }
                n += 1;
                written.store(n, Ordering::SeqCst);
            }
            Ok(n)
        })
    };
    let mut pids = vec![v.daemon_pid().unwrap()];
    for r in 1..=3u64 {
        let target = written.load(Ordering::SeqCst) + 20;
        wait_for(READY_TIMEOUT, "the writer to make progress", || {
            writer.is_finished() || written.load(Ordering::SeqCst) >= target
        });
        let out = run(Command::new(smlogfs_bin()).arg("restart").arg(v.mnt()));
        assert!(out.status.success(), "smlogfs restart: {}", describe(&out));
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        let old = *pids.last().unwrap();
        let new = v.daemon_pid().unwrap();
        assert_ne!(new, old, "restart {r}: the daemon pid changes");
        assert!(pid_alive(new), "restart {r}: daemon {new} serves");
        assert!(
            said.contains(&format!("daemon pid {old} -> {new}"))
                && said.contains(&format!("restart {r}")),
            "restart {r}: {said}"
        );
        pids.push(new);
    }
    let target = written.load(Ordering::SeqCst) + 20;
    wait_for(READY_TIMEOUT, "the writer to go on", || {
        writer.is_finished() || written.load(Ordering::SeqCst) >= target
    });
    stop.store(true, Ordering::SeqCst);
    let n = writer
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the writer failed across the restarts: {e}"));
    let status = run(Command::new(smlogfs_bin())
        .args(["status", "--json"])
        .arg(v.mnt()));
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["planned_restarts"], 3, "{doc}");
    assert_eq!(doc["restarts"], 3, "{doc}");
    assert_eq!(
        doc["last_restart_cause"], "planned (smlogfs restart)",
        "{doc}"
    );
    assert!(doc["supervisor_pid"].is_number(), "{doc}");
    v.umount();
    v.assert_fsck_clean();
    v.remount();
    let data = fs::read(v.path("log")).unwrap();
    let want: Vec<u8> = (0..n).flat_map(|i| pattern(i, 4096)).collect();
    assert!(
        data == want,
        "the {n} blocks written across the restarts are not all there"
    );
    v.umount();
}

/// The README's crash flow: `kill -9` of supervisor and daemon, then `smlogfs mount` at
/// once, without waiting for them to finish exiting. Thirty times.
#[test]
fn mount_right_after_killing_supervisor_and_daemon_succeeds() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&[]);
    let mut waited = 0;
    for i in 0..30 {
        let name = format!("kept-{i}");
        fs::write(v.path(&name), name.as_bytes()).unwrap();
        let pids = v.crash_pids();
        assert_eq!(pids.len(), 2, "round {i}: supervisor and daemon: {pids:?}");
        for pid in pids {
            // SAFETY-free: kill(2) has no memory effects.
            assert_eq!(
                unsafe { libc::kill(pid, libc::SIGKILL) },
                0,
                "kill -9 {pid}"
            );
        }
        let out = run(Command::new(smlogfs_bin())
            .arg("mount")
            .arg(v.voldir())
            .arg(v.mnt()));
        assert!(
            out.status.success(),
            "round {i}: smlogfs mount: {}",
            describe(&out)
        );
        v.mark_mounted();
        assert_eq!(
            fs::read(v.path(&name)).unwrap(),
            name.as_bytes(),
            "round {i}"
        );
        if String::from_utf8_lossy(&out.stderr).contains("still exiting") {
            waited += 1;
        }
    }
    eprintln!("30 kill-and-mount rounds; mount waited for a killed owner to exit in {waited}");
    v.umount();
    v.assert_fsck_clean();
}

/// A served volume is refused by `smlogfs mount`, naming the daemon and the supervisor.
#[test]
fn mounting_a_served_volume_names_daemon_and_supervisor() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&[]);
    let daemon = v.daemon_pid().unwrap();
    let sup = fs::read_to_string(v.voldir().join("supervisor.pid")).unwrap();
    let other = tempfile::tempdir().unwrap();
    let out = run(Command::new(smlogfs_bin())
        .arg("mount")
        .arg(v.voldir())
        .arg(other.path()));
    assert_fails_with(
        &out,
        6,
        "mount of a served volume",
        &[
            &format!("daemon pid {daemon}"),
            &format!("supervisor pid {}", sup.trim()),
            "smlogfs restart",
        ],
    );
    v.umount();
}

//! Crash test on a real mount (issue 2, "What proves it").
//!
//! Each iteration: a workload thread runs random file-system operations in the mount and
//! records each one in an in-memory model only after it returned successfully (the shared
//! `common::model`, whose comment lists the ops and what is compared); the daemon is
//! `kill -9`ed after a random delay (50–800 ms); the workload stops at its first error (the dead
//! mount answers ENOTCONN); the volume is mounted again (recovery) and the file tree must equal
//! the model — names, types, sizes, contents, modes, link counts, hard-link groups, symlink
//! targets and `user.` xattrs — where the one operation in flight at the kill may have happened
//! or not. Then a clean unmount and `smlogfs fsck` must exit 0.
//!
//! The volume carries over from one iteration to the next, so later kills hit a fuller file
//! system and a wrapped ring. After a failed iteration the test starts over on a fresh volume.
//!
//! Env: `CRASH_ITERATIONS` (default 50), `CRASH_SEED` (default: from the clock; each iteration
//! prints its seed), `CRASH_MKFS` (mkfs arguments, default `common::DEFAULT_MKFS`),
//! `SMLOGFS_TEST_KEEP=1` (keep the volume of each failed iteration for a post-mortem).
//! Every iteration prints one line starting with `crash-iteration` and `PASS` or `FAIL`;
//! `scripts/crash-test.sh` counts them. A second test does the same with a 4 MiB ring
//! (`CRASH_SMALL_RING_ITERATIONS`, default 10). A third (issue 4) mirrors the volume to a
//! `mirror-agent` in a network namespace and deletes the local ring after every kill, so
//! recovery comes from the agent (`CRASH_MIRROR_ITERATIONS`, default 20; needs the
//! `mirror-agent` binary built next to smlogfs and `ip netns`).

mod common;

use common::model::{Model, Workload, UMASK};
use common::netns::{Agent, Host};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

fn default_mkfs_args() -> Vec<String> {
    match std::env::var("CRASH_MKFS") {
        Ok(s) => s.split_whitespace().map(String::from).collect(),
        Err(_) => DEFAULT_MKFS.iter().map(|s| s.to_string()).collect(),
    }
}

/// How a kill-point run mounts its volume and brings it back after each `kill -9`.
struct Mounting {
    /// Arguments of every `smlogfs mount` of the run: the first, the recovery mount and the
    /// one after the clean unmount and fsck.
    args: Vec<String>,
    /// The recovery mount after the kill; Ok holds how long `smlogfs mount` took.
    recover: fn(&mut Volume) -> Result<Duration, String>,
}

impl Mounting {
    /// No mount options; recovery replays the local ring.
    fn local() -> Mounting {
        Mounting {
            args: Vec::new(),
            recover: Volume::try_remount,
        }
    }
}

fn fresh_volume(mkfs_args: &[String], mounting: &Mounting) -> Volume {
    let args: Vec<&str> = mkfs_args.iter().map(|s| s.as_str()).collect();
    let mut v = Volume::new(&args);
    let mount_args: Vec<&str> = mounting.args.iter().map(|s| s.as_str()).collect();
    v.mount(&mount_args);
    Workload::prepare(v.mnt());
    v
}

/// Runs one kill point. Err describes the failure.
fn iteration(
    v: &mut Volume,
    model: &mut Model,
    seed: u64,
    mounting: &Mounting,
) -> Result<String, String> {
    // The clean unmount and mount since the last kill must have kept everything.
    model
        .verify(v.mnt())
        .map_err(|m| format!("after a clean umount+mount: {m}"))?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    // The kill point itself, not an oracle: how long the workload runs before the kill.
    let delay = Duration::from_millis(rng.gen_range(50..=800));
    let running = Workload::resume(model.clone(), seed).spawn(v.mnt().to_path_buf());
    std::thread::sleep(delay);
    running.mark_killed();
    v.kill9();
    // Native mode has no daemon to kill: the workload is stopped instead; otherwise it runs
    // until the kill fails an op.
    let (mut w, failed) = if native() {
        running.stop()
    } else {
        running.join()
    };
    if let Some(e) = failed.as_ref().filter(|e| !e.after_kill) {
        return Err(format!(
            "{e} while the daemon was alive (after {} ops)",
            w.acked
        ));
    }
    let inflight = match &w.inflight {
        Some(f) => format!("in-flight {} ({})", f.op.short(), errno_name(f.errno)),
        None => "no op in flight".into(),
    };
    let recovery = (mounting.recover)(v)?;
    let how = w.settle(v.mnt()).map_err(|m| m.to_string())?;
    *model = w.model;
    v.umount();
    let (code, text) = v.fsck();
    if code != 0 {
        return Err(format!("fsck exit {code}:\n{text}"));
    }
    v.remount();
    Ok(format!(
        "killed after {} ms, {} ops acknowledged, {inflight}: {how}, {} entries, recovery \
         mount {} ms",
        delay.as_millis(),
        w.acked,
        model.len(),
        recovery.as_millis()
    ))
}

/// Runs `iterations` kill points on one volume made with `mkfs_args` and mounted as
/// `mounting` says; each prints a line starting with `label`. Panics at the end if any failed.
fn run_kill_points(label: &str, iterations: usize, mkfs_args: &[String], mounting: &Mounting) {
    unsafe { libc::umask(UMASK) };
    let base_seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!(
        "{label}: {iterations} iterations, mkfs {mkfs_args:?}, mount {:?}, CRASH_SEED={base_seed}{}",
        mounting.args,
        if native() { " (native mode)" } else { "" }
    );
    let mut v = fresh_volume(mkfs_args, mounting);
    let mut model = Model::default();
    let mut failures = Vec::new();
    let started = Instant::now();
    for i in 1..=iterations {
        let seed = base_seed.wrapping_add(i as u64 * 0x9E37_79B9);
        let t = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            iteration(&mut v, &mut model, seed, mounting)
        }))
        .unwrap_or_else(|p| {
            Err(format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ))
        });
        match result {
            Ok(msg) => eprintln!(
                "{label} {i} seed {seed} PASS ({} ms): {msg}",
                t.elapsed().as_millis()
            ),
            Err(msg) => {
                eprintln!(
                    "{label} {i} seed {seed} FAIL ({} ms): {msg}",
                    t.elapsed().as_millis()
                );
                failures.push(i);
                if std::env::var_os("SMLOGFS_TEST_KEEP").is_some() {
                    v.keep_on_drop();
                }
                // Start over on a fresh volume (the old one is dropped: unmounted, removed).
                drop(std::mem::replace(&mut v, fresh_volume(mkfs_args, mounting)));
                model = Model::default();
            }
        }
    }
    eprintln!(
        "{label}: {} passed, {} failed in {:.1} s",
        iterations - failures.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "crash iterations failed: {failures:?} (base CRASH_SEED={base_seed})"
    );
}

/// The kill points of the issue: CRASH_ITERATIONS (default 50) on the default volume.
/// `scripts/crash-test.sh` runs this test alone and counts its `crash-iteration` lines.
#[test]
fn kill9_at_random_points_keeps_every_acknowledged_op() {
    run_kill_points(
        "crash-iteration",
        env_number("CRASH_ITERATIONS", 50),
        &default_mkfs_args(),
        &Mounting::local(),
    );
}

/// The same with the smallest ring mkfs accepts (4 MiB): the workload wraps it many times per
/// iteration, so kills land during checkpoints, reclaims and writers waiting for space.
#[test]
fn kill9_with_a_small_ring_that_wraps() {
    let args: Vec<String> = ["--size", "1G", "--ring", "4M", "--disks", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    run_kill_points(
        "small-ring-iteration",
        env_number("CRASH_SMALL_RING_ITERATIONS", 10),
        &args,
        &Mounting::local(),
    );
}

/// After the kill -9: deletes the local ring (VOLDIR/statelog) and mounts again with the
/// run's arguments, the mirror among them. daemon.log must say the entries came from the
/// agent, proof that the recovery mount read them back from there.
fn remount_without_the_ring(v: &mut Volume) -> Result<Duration, String> {
    let ring = v.voldir().join("statelog");
    std::fs::remove_file(&ring).map_err(|e| format!("rm {}: {e}", ring.display()))?;
    let log_path = v.voldir().join("daemon.log");
    let log_before = std::fs::read_to_string(&log_path).unwrap_or_default().len();
    let took = v.try_remount()?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let new = log.get(log_before..).unwrap_or_default();
    if !new.contains("from the mirror agent") {
        return Err(format!(
            "the recovery mount without the ring did not say it read the mirror agent's \
             copy; daemon.log of that mount:\n{new}"
        ));
    }
    Ok(took)
}

/// Issue 4's first proof: the same kill points on a volume mirrored in sync mode to a
/// `mirror-agent` on another host (a network namespace of its own, real TCP over veth), and
/// after every kill -9 the local ring file is deleted before the recovery mount, so every
/// acknowledged op must come back from the agent, exactly once. CRASH_MIRROR_ITERATIONS
/// (default 20).
#[test]
fn kill9_with_the_local_ring_deleted_recovers_from_the_agent_on_another_host() {
    if native() {
        eprintln!("mirror-iteration: skipped in native mode (no daemon, no ring)");
        return;
    }
    let host = Host::new(1);
    let dir = tempfile::Builder::new()
        .prefix("smlogfs-agent-")
        .tempdir()
        .expect("create agent temp dir");
    let agent = Agent::start(&host, &dir.path().join("agent"), None);
    let mounting = Mounting {
        args: [
            "--mirror",
            &host.addr(0),
            "--node",
            "A",
            "--mirror-mode",
            "sync",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        recover: remount_without_the_ring,
    };
    let run = std::panic::catch_unwind(|| {
        run_kill_points(
            "mirror-iteration",
            env_number("CRASH_MIRROR_ITERATIONS", 20),
            &default_mkfs_args(),
            &mounting,
        )
    });
    if let Err(panic) = run {
        if std::env::var_os("SMLOGFS_TEST_KEEP").is_some() {
            eprintln!("kept agent dir in {}", dir.keep().display());
        }
        // The agent first, then the namespace (the volumes are gone already).
        drop(agent);
        drop(host);
        std::panic::resume_unwind(panic);
    }
}

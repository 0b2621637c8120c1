//! Issue 8 (transport): the FUSE connection outlives the serving daemon. Real mounts, real
//! `kill -9` of the daemon named in VOLDIR/daemon.pid: its supervisor starts a new daemon on
//! the same connection, so applications see a pause, never an error. Killing the supervisor
//! too is the crash of old, which `smlogfs mount` recovers from.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn supervisor_pid(v: &Volume) -> Option<i32> {
    fs::read_to_string(v.voldir().join("supervisor.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn supervisor_state(v: &Volume) -> serde_json::Value {
    let text = fs::read_to_string(v.voldir().join("supervisor.state")).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

/// `kill -9` of the serving daemon only; returns its pid once it is gone.
fn kill_daemon(v: &Volume) -> i32 {
    let (pid, _) = v.kill_daemon();
    wait_until(READY_TIMEOUT, || !pid_alive(pid))
        .unwrap_or_else(|| panic!("daemon {pid} still alive after kill -9"));
    pid
}

fn chunk(i: usize) -> Vec<u8> {
    (0..4096).map(|b| (b * 7 + i * 13) as u8).collect()
}

#[test]
fn an_open_file_keeps_working_across_ten_daemon_kills() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&[]);
    let sup = supervisor_pid(&v).expect("supervisor.pid after mount");
    assert!(pid_alive(sup), "supervisor {sup} not running");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(v.path("held"))
        .unwrap();
    f.write_all_at(&chunk(0), 0).unwrap();
    f.sync_all().unwrap();

    let mut errors = Vec::new();
    for i in 1..=10 {
        let old = kill_daemon(&v);
        // Right after the kill: these wait for the next daemon instead of failing.
        if let Err(e) = f.write_all_at(&chunk(i), (i * 4096) as u64) {
            errors.push(format!("kill {i}: pwrite: {e}"));
        }
        if let Err(e) = f.sync_all() {
            errors.push(format!("kill {i}: fsync: {e}"));
        }
        match f.metadata() {
            Ok(m) if m.len() == ((i + 1) * 4096) as u64 => {}
            Ok(m) => errors.push(format!("kill {i}: fstat size {}", m.len())),
            Err(e) => errors.push(format!("kill {i}: fstat: {e}")),
        }
        let mut back = vec![0u8; 4096];
        match f.read_exact_at(&mut back, 0) {
            Ok(()) if back == chunk(0) => {}
            Ok(()) => errors.push(format!("kill {i}: pread returned other bytes")),
            Err(e) => errors.push(format!("kill {i}: pread: {e}")),
        }
        let new = v.wait_new_daemon(old);
        assert_eq!(
            parent_of(new),
            Some(sup),
            "daemon {new} is not the supervisor's child"
        );
    }
    assert!(errors.is_empty(), "errors across the kills: {errors:#?}");
    assert_eq!(
        supervisor_pid(&v),
        Some(sup),
        "the supervisor stays the same"
    );
    let log = v.daemon_log();
    assert_eq!(
        log.matches("died (signal 9 (SIGKILL))").count(),
        10,
        "each restart is logged with its cause:\n{log}"
    );
    // The supervisor writes its state once the new daemon reports ready, which can be a
    // moment after daemon.pid names it.
    wait_for(
        READY_TIMEOUT,
        "supervisor.state to count 10 restarts",
        || supervisor_state(&v)["restarts"] == 10,
    );
    let state = supervisor_state(&v);
    assert_eq!(state["last_restart_cause"], "signal 9 (SIGKILL)", "{state}");
    assert!(state["last_pause_ms"].as_u64().is_some(), "{state}");
    drop(f);

    v.umount();
    assert!(!pid_alive(sup), "supervisor {sup} outlived the unmount");
    v.remount();
    let data = fs::read(v.path("held")).unwrap();
    let want: Vec<u8> = (0..=10).flat_map(chunk).collect();
    assert!(
        data == want,
        "the data written across the kills is not all there"
    );
    v.umount();
    v.assert_fsck_clean();
}

#[test]
fn ls_and_stat_right_after_a_kill_wait_for_the_new_daemon() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&[]);
    fs::create_dir(v.path("dir")).unwrap();
    for i in 0..20 {
        fs::write(v.path(&format!("dir/f{i}")), format!("file {i}")).unwrap();
    }
    // Past the attribute and entry timeouts (1 s): the kernel must ask the daemon again.
    std::thread::sleep(Duration::from_millis(1200));
    let old = kill_daemon(&v);
    let mut names = 0;
    for entry in fs::read_dir(v.path("dir")).expect("readdir right after the kill") {
        entry.expect("readdir entry right after the kill");
        names += 1;
    }
    assert_eq!(names, 20);
    let meta = fs::metadata(v.path("dir/f7")).expect("stat right after the kill");
    assert_eq!(meta.len(), "file 7".len() as u64);
    assert_eq!(fs::read_to_string(v.path("dir/f7")).unwrap(), "file 7");
    let out = sh(&format!("ls -la {} >/dev/null", v.path("dir").display()));
    assert!(out.status.success(), "ls: {}", describe(&out));
    let new = v.wait_new_daemon(old);
    assert_ne!(new, old, "daemon.pid names the new daemon");
    v.umount();
}

/// Calls the dead daemon had read but not answered are queued again (FUSE_NOTIFY_RESEND)
/// and answered by the next daemon: two writers running through three kills see no error.
#[test]
fn calls_in_flight_at_a_kill_are_answered_by_the_next_daemon() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let dir = v.mnt().to_path_buf();
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let p = dir.join(format!("w{w}-{}", n % 16));
                    fs::write(&p, chunk(n)).map_err(|e| format!("write {n}: {e}"))?;
                    let m = fs::metadata(&p).map_err(|e| format!("stat {n}: {e}"))?;
                    if m.len() != 4096 {
                        return Err(format!("stat {n}: size {}", m.len()));
                    }
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let old = kill_daemon(&v);
        v.wait_new_daemon(old);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let n = w
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("a writer failed: {e}"));
        assert!(n > 0, "a writer made no progress");
    }
    v.umount();
    v.assert_fsck_clean();
}

#[test]
fn killing_supervisor_and_daemon_is_the_old_crash_and_mount_recovers() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&[]);
    fs::write(v.path("kept"), b"acknowledged before the crash").unwrap();
    let pids = v.crash_pids();
    assert_eq!(pids.len(), 2, "supervisor and daemon: {pids:?}");
    v.kill9();
    let dead = fs::read_dir(v.mnt()).err().and_then(|e| e.raw_os_error());
    assert_eq!(dead, Some(libc::ENOTCONN), "the mount dies with both");
    // The README's flow: `smlogfs mount` at once.
    v.remount();
    assert_eq!(
        fs::read(v.path("kept")).unwrap(),
        b"acknowledged before the crash"
    );
    v.umount();
}

#[test]
fn fusermount_unmount_ends_supervisor_and_daemon() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&[]);
    let sup = supervisor_pid(&v).expect("supervisor.pid");
    let daemon = v.daemon_pid().expect("daemon.pid");
    fs::write(v.path("f"), b"x").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let out = run(Command::new("fusermount3").arg("-u").arg(v.mnt()));
        if out.status.success() {
            break;
        }
        let text = describe(&out);
        assert!(
            text.contains("busy") && std::time::Instant::now() < deadline,
            "fusermount3 -u: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_until(READY_TIMEOUT, || !pid_alive(daemon) && !pid_alive(sup))
        .unwrap_or_else(|| panic!("daemon or supervisor still running:\n{}", v.daemon_log()));
    assert!(!v.voldir().join("supervisor.pid").exists());
    assert!(!v.voldir().join("daemon.pid").exists());
    assert!(
        v.daemon_log().contains("exited cleanly; supervisor exits"),
        "{}",
        v.daemon_log()
    );
    v.assert_fsck_clean();
}

/// A supervisor that ends after its mount was lazily unmounted must leave alone what was
/// mounted at the same mount point meanwhile. It once did not: fuser's unmount-on-drop
/// unmounted the path, which by then held the next mount, whose daemon then failed with
/// "FUSE device disconnected during handshake" (a fenced node's remount after a giveback).
/// The old supervisor is stopped while the next mount is made, so the order is certain.
#[test]
fn an_ending_supervisor_leaves_the_next_mount_at_its_mount_point_alone() {
    let old = Volume::mounted();
    let mnt = old.mnt().to_path_buf();
    let supervisor = supervisor_pid(&old).expect("supervisor.pid");
    let daemon = old.daemon_pid().expect("daemon.pid");
    send_signal(supervisor, libc::SIGSTOP);
    lazy_umount(&mnt);
    wait_for(
        READY_TIMEOUT,
        "the old daemon to end after the lazy unmount",
        || !pid_alive(daemon),
    );
    // Another volume at the same mount point, while the old supervisor still holds its
    // handle of the (now gone) first mount.
    let mut next = Volume::new(DEFAULT_MKFS);
    let out = run(Command::new(smlogfs_bin())
        .arg("mount")
        .arg(next.voldir())
        .arg(&mnt));
    assert!(
        out.status.success(),
        "mount of the next volume: {}",
        describe(&out)
    );
    next.mark_mounted();
    write_file(mnt.join("next"), b"served by the next mount");
    send_signal(supervisor, libc::SIGCONT);
    wait_for(READY_TIMEOUT, "the old supervisor to exit", || {
        !pid_alive(supervisor)
    });
    assert!(
        is_fuse_mount(&mnt),
        "the old supervisor unmounted the next mount at {}:\n{}",
        mnt.display(),
        next.daemon_log()
    );
    assert_eq!(read_file(mnt.join("next")), b"served by the next mount");
    let out = run(Command::new(smlogfs_bin()).arg("umount").arg(&mnt));
    assert!(
        out.status.success(),
        "umount of the next volume: {}",
        describe(&out)
    );
    next.assert_fsck_clean();
    old.assert_fsck_clean();
}

/// `smlogfs mount` on a mount point where another mount is starting (no daemon has answered
/// its FUSE_INIT yet, so every call there waits) must neither hang nor take it for a dead
/// mount and clean it up: it refuses at once, naming the mount point, and leaves it alone.
#[test]
fn mount_where_a_mount_is_starting_refuses_and_leaves_it_alone() {
    use std::os::fd::AsFd;
    let v = Volume::new(DEFAULT_MKFS);
    // A mount whose INIT nobody reads: what a supervisor's mount is until its daemon serves.
    let (fd, starting) = fuser::resume::mount_device(
        v.mnt(),
        &[fuser::MountOption::FSName("starting".into())],
        fuser::SessionACL::Owner,
    )
    .expect("mount a FUSE file system without serving it");
    let mut child = Command::new(smlogfs_bin())
        .arg("mount")
        .arg(v.voldir())
        .arg(v.mnt())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if wait_until(READY_TIMEOUT, || child.try_wait().unwrap().is_some()).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("smlogfs mount hangs on a mount point where a mount is starting");
    }
    let out = child.wait_with_output().unwrap();
    assert_fails_with(
        &out,
        5,
        "mount on a mount point where a mount is starting",
        &["already a mountpoint", "has not answered"],
    );
    assert!(
        fuser::resume::connection_alive(fd.as_fd()),
        "the starting mount was torn down"
    );
    assert!(is_fuse_mount(v.mnt()), "the starting mount was unmounted");
    starting.unmount().expect("unmount the starting mount");
}

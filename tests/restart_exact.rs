//! Issue 8 (core): exactly once across a daemon restart. Real mounts through the
//! supervisor; the daemon kills itself (`SMLOGFS_FAILPOINT`, SIGKILL) at the worst moment
//! of one op: after applying and logging it, before answering (or before applying it, or
//! after a checkpoint reclaimed its entries). The kernel resends the request to the
//! restarted daemon, which must answer it once: success with the right answer, the effect
//! there once. Also: open-but-unlinked files and application locks across a restart.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::Command;

use common::*;

/// Mounts `v` (supervised, in the background) with `SMLOGFS_FAILPOINT=failpoint`.
fn mount_with_failpoint(v: &mut Volume, failpoint: &str) {
    let out = run(Command::new(smlogfs_bin())
        .arg("mount")
        .arg(v.voldir())
        .arg(v.mnt())
        .env("SMLOGFS_FAILPOINT", failpoint));
    assert!(
        out.status.success(),
        "mount with {failpoint}: {}",
        describe(&out)
    );
    v.mark_mounted();
}

fn daemon_log(v: &Volume) -> String {
    fs::read_to_string(v.voldir().join("daemon.log")).unwrap_or_default()
}

/// The live status document (`smlogfs status --json`).
fn status(v: &Volume) -> serde_json::Value {
    let out = run(Command::new(smlogfs_bin())
        .arg("status")
        .arg("--json")
        .arg(v.mnt()));
    assert!(out.status.success(), "status: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().next().unwrap_or("")).expect("status JSON")
}

/// After the op: the failpoint killed the daemon once and the supervisor restarted it.
fn assert_restarted_once(v: &Volume, failpoint: &str) {
    let log = daemon_log(v);
    assert_eq!(
        log.matches("died (signal 9 (SIGKILL))").count(),
        1,
        "{failpoint}: the daemon must have been killed exactly once:\n{log}"
    );
}

fn counter(v: &Volume, name: &str) -> u64 {
    status(v)[name]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no {name}"))
}

fn names(v: &Volume, dir: &str) -> Vec<String> {
    let mut n: Vec<String> = fs::read_dir(v.path(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// One case on a fresh volume mounted with the failpoint armed: `setup` (which does the
/// failpoint's op kind fewer than N times; the directory `d` is made by one mkdir), then
/// `act` makes the call the daemon dies in, then `check` looks at what it returned.
fn case(
    failpoint: &str,
    setup: impl FnOnce(&Volume),
    act: impl FnOnce(&Volume) -> i64,
    check: impl FnOnce(&Volume, i64),
) -> Volume {
    let mut v = Volume::new(DEFAULT_MKFS);
    mount_with_failpoint(&mut v, failpoint);
    fs::create_dir(v.path("d")).unwrap();
    setup(&v);
    let ret = act(&v);
    assert_restarted_once(&v, failpoint);
    check(&v, ret);
    v
}

fn create_excl(p: std::path::PathBuf) -> i64 {
    let c = cpath(p);
    unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            0o644,
        ) as i64
    }
}

/// The ops the kernel resends after the restart are answered from the log: success, the
/// right answer, the effect once (`after` = after-apply, or after-checkpoint: the op's
/// ring entries were reclaimed by a checkpoint before the kill).
fn applied_ops_answered_once(after: &str) {
    let mut done = Vec::new();
    // create with O_EXCL: the fd works, the file is there once.
    let mut v = case(
        &format!("{after}:create"),
        |_| {},
        |v| create_excl(v.path("d/new")),
        |v, fd| {
            let fd = assert_ok("open(O_CREAT|O_EXCL) across the kill", fd) as i32;
            let n = unsafe { libc::pwrite(fd, b"hello".as_ptr().cast(), 5, 0) };
            assert_eq!(n, 5, "write through the fd the resent create answered");
            unsafe { libc::close(fd) };
            assert_eq!(names(v, "d"), vec!["new"]);
            assert_eq!(fs::read(v.path("d/new")).unwrap(), b"hello");
        },
    );
    assert_eq!(counter(&v, "resent_answered"), 1, "{}", daemon_log(&v));
    v.umount_clean();
    done.push("create");

    // mkdir
    let mut v = case(
        &format!("{after}:mkdir:2"),
        |_| {},
        |v| {
            let c = cpath(v.path("d/sub"));
            unsafe { libc::mkdir(c.as_ptr(), 0o755) as i64 }
        },
        |v, r| {
            assert_ok("mkdir across the kill", r);
            assert_eq!(names(v, "d"), vec!["sub"]);
            assert!(fs::metadata(v.path("d/sub")).unwrap().is_dir());
        },
    );
    assert_eq!(counter(&v, "resent_answered"), 1);
    v.umount_clean();
    done.push("mkdir");

    // link: the link count is 2, not an EEXIST.
    let mut v = case(
        &format!("{after}:link"),
        |v| write_file(v.path("d/a"), b"x"),
        |v| {
            let (a, b) = (cpath(v.path("d/a")), cpath(v.path("d/b")));
            unsafe { libc::link(a.as_ptr(), b.as_ptr()) as i64 }
        },
        |v, r| {
            assert_ok("link across the kill", r);
            assert_eq!(names(v, "d"), vec!["a", "b"]);
            assert_eq!(fs::metadata(v.path("d/a")).unwrap().nlink(), 2);
        },
    );
    v.umount_clean();
    done.push("link");

    // rename: not ENOENT.
    let mut v = case(
        &format!("{after}:rename"),
        |v| write_file(v.path("d/from"), b"data"),
        |v| {
            let (a, b) = (cpath(v.path("d/from")), cpath(v.path("d/to")));
            unsafe { libc::rename(a.as_ptr(), b.as_ptr()) as i64 }
        },
        |v, r| {
            assert_ok("rename across the kill", r);
            assert_eq!(names(v, "d"), vec!["to"]);
            assert_eq!(fs::read(v.path("d/to")).unwrap(), b"data");
        },
    );
    v.umount_clean();
    done.push("rename");

    // unlink: not ENOENT.
    let mut v = case(
        &format!("{after}:unlink"),
        |v| write_file(v.path("d/gone"), b"data"),
        |v| {
            let c = cpath(v.path("d/gone"));
            unsafe { libc::unlink(c.as_ptr()) as i64 }
        },
        |v, r| {
            assert_ok("unlink across the kill", r);
            assert!(names(v, "d").is_empty());
        },
    );
    v.umount_clean();
    done.push("unlink");

    // write at EOF (the setup's write is the first write).
    let mut v = case(
        &format!("{after}:write:2"),
        |v| write_file(v.path("d/f"), &pattern(1, 4096)),
        |v| {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(v.path("d/f"))
                .unwrap();
            f.write_at(&pattern(2, 4096), 4096)
                .map(|n| n as i64)
                .unwrap_or(-1)
        },
        |v, n| {
            assert_eq!(n, 4096, "the byte count of the write");
            let mut want = pattern(1, 4096);
            want.extend(pattern(2, 4096));
            assert_eq!(fs::read(v.path("d/f")).unwrap(), want);
        },
    );
    v.umount_clean();
    done.push("write");

    // O_APPEND write: appended once.
    let mut v = case(
        &format!("{after}:write:2"),
        |v| write_file(v.path("d/log"), b"first line\n"),
        |v| {
            use std::io::Write;
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(v.path("d/log"))
                .unwrap();
            f.write(b"second line\n").map(|n| n as i64).unwrap_or(-1)
        },
        |v, n| {
            assert_eq!(n, 12, "the byte count of the append");
            assert_eq!(
                fs::read(v.path("d/log")).unwrap(),
                b"first line\nsecond line\n"
            );
        },
    );
    v.umount_clean();
    done.push("append");
    assert_eq!(done.len(), 7);
}

#[test]
fn ops_applied_before_the_kill_are_answered_once() {
    applied_ops_answered_once("after-apply");
}

#[test]
fn ops_covered_by_a_checkpoint_before_the_kill_are_answered_once() {
    applied_ops_answered_once("after-checkpoint");
}

/// Killed after logging `Accepted`, before applying: the resent request is executed once.
#[test]
fn ops_killed_before_apply_are_executed_once() {
    let mut v = case(
        "before-apply:create",
        |_| {},
        |v| create_excl(v.path("d/new")),
        |v, fd| {
            let fd = assert_ok("open(O_CREAT|O_EXCL) across the kill", fd) as i32;
            unsafe { libc::close(fd) };
            assert_eq!(names(v, "d"), vec!["new"]);
        },
    );
    assert_eq!(counter(&v, "resent_executed"), 1, "{}", daemon_log(&v));
    assert_eq!(counter(&v, "resent_answered"), 0);
    v.umount_clean();

    let mut v = case(
        "before-apply:rename",
        |v| write_file(v.path("d/from"), b"data"),
        |v| {
            let (a, b) = (cpath(v.path("d/from")), cpath(v.path("d/to")));
            unsafe { libc::rename(a.as_ptr(), b.as_ptr()) as i64 }
        },
        |v, r| {
            assert_ok("rename across the kill", r);
            assert_eq!(names(v, "d"), vec!["to"]);
        },
    );
    assert_eq!(counter(&v, "resent_executed"), 1);
    v.umount_clean();
}

/// An open-but-unlinked file survives a restart (readable and writable through its
/// descriptor) and is gone, its space freed, once closed.
#[test]
fn an_open_unlinked_file_survives_a_restart_and_goes_at_close() {
    let mut v = Volume::mounted();
    let free0 = statvfs_free(&v);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(v.path("orphan"))
        .unwrap();
    let data = pattern(7, 1 << 20);
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    fs::remove_file(v.path("orphan")).unwrap();
    let held = statvfs_free(&v);
    assert!(
        held + 200 < free0,
        "the orphan's 256 blocks are in use ({free0} -> {held})"
    );

    let old = v.daemon_pid().unwrap();
    unsafe { libc::kill(old, libc::SIGKILL) };
    wait_for(READY_TIMEOUT, "a new daemon", || {
        v.daemon_pid().is_some_and(|p| p != old && pid_alive(p))
    });
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 0)
        .expect("read the unlinked file after the restart");
    assert!(
        back == data,
        "the unlinked file's data changed across the restart"
    );
    f.write_all_at(b"more", 1 << 20)
        .expect("write to it after the restart");
    f.sync_all().unwrap();
    let mut tail = [0u8; 4];
    f.read_exact_at(&mut tail, 1 << 20).unwrap();
    assert_eq!(&tail, b"more");
    assert!(
        fs::read_dir(v.mnt()).unwrap().next().is_none(),
        "no name for it"
    );

    drop(f);
    wait_for(
        READY_TIMEOUT,
        "the orphan's blocks to be freed after close",
        || statvfs_free(&v) + 8 >= free0,
    );
    v.umount_clean();
}

fn statvfs_free(v: &Volume) -> u64 {
    let c = cpath(v.mnt());
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bfree
}

/// `flock` and POSIX (fcntl) locks: this file system implements neither FUSE_FLOCK nor
/// FUSE_GETLK/SETLK, so the kernel keeps them locally, and a daemon restart cannot drop
/// them: another process is still excluded.
#[test]
fn flock_and_posix_locks_survive_a_restart() {
    let mut v = Volume::mounted();
    write_file(v.path("locked"), b"x");
    write_file(v.path("posix"), b"x");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(v.path("locked"))
        .unwrap();
    let p = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(v.path("posix"))
        .unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let mut lk: libc::flock = unsafe { std::mem::zeroed() };
    lk.l_type = libc::F_WRLCK as i16;
    lk.l_whence = libc::SEEK_SET as i16;
    assert_eq!(unsafe { libc::fcntl(p.as_raw_fd(), libc::F_SETLK, &lk) }, 0);

    let old = v.daemon_pid().unwrap();
    unsafe { libc::kill(old, libc::SIGKILL) };
    wait_for(READY_TIMEOUT, "a new daemon", || {
        v.daemon_pid().is_some_and(|p| p != old && pid_alive(p))
    });
    // Another process: flock(1) from util-linux.
    let out = sh(&format!(
        "flock -n {} true; echo flock=$?",
        v.path("locked").display()
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("flock=1"),
        "flock -n must fail while we hold it: {text}"
    );
    // The POSIX lock, from a child process: F_SETLK fails with EAGAIN/EACCES.
    let path = cpath(v.path("posix"));
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
        let mut lk: libc::flock = unsafe { std::mem::zeroed() };
        lk.l_type = libc::F_WRLCK as i16;
        lk.l_whence = libc::SEEK_SET as i16;
        let r = unsafe { libc::fcntl(fd, libc::F_SETLK, &lk) };
        unsafe { libc::_exit(if r == -1 { 0 } else { 1 }) };
    }
    let mut st = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "another process got the POSIX lock held across the restart"
    );
    drop(f);
    drop(p);
    let out = sh(&format!(
        "flock -n {} true; echo flock=$?",
        v.path("locked").display()
    ));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("flock=0"),
        "free after close"
    );
    v.umount_clean();
}

//! Test harness shared by the real-mount integration tests.
//!
//! A [`Volume`] is a temporary directory holding a volume (`vol/`) made by the real `smlogfs`
//! binary and a mount point (`mnt/`). Dropping it always unmounts, kills the daemon and removes
//! the directories, also when the test panicked.
//!
//! `SMLOGFS_TEST_NATIVE=1` replaces the mount by a plain directory on the host file system
//! (ext4 on the CI machines). The tests then run against the kernel's own file system; this is
//! how their assertions were checked, and it documents that they encode ext4 semantics. In that
//! mode `kill9`, `remount` and `umount` only mark the state (the data is in the page cache) and
//! `fsck` reports clean.
//!
//! [`netns`] makes a second host for the mirror tests: a network namespace and a
//! `mirror-agent` inside it. [`powercut`] mounts the power-cut simulator
//! (examples/passthrough) under a volume directory. No test binary uses all of this module, hence the `dead_code`
//! allow, which covers the submodules too.
#![allow(dead_code)]

pub mod model;
pub mod netns;
pub mod powercut;

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The mkfs arguments used when a test does not care: one backing file, a volume large enough
/// for every test (the backing file is sparse on the host), a ring that wraps in the longer tests.
pub const DEFAULT_MKFS: &[&str] = &["--size", "1G", "--ring", "16M", "--disks", "1"];

/// How long a mount, unmount or daemon exit may take before the harness gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `Volume::umount` tries again a mount that is busy (see there).
const BUSY_UMOUNT_RETRY: Duration = Duration::from_secs(5);

/// An ordinary user and a second one, neither root. Uid 1001 need not exist in /etc/passwd.
pub const USER_A: (u32, u32) = (1000, 1000);
pub const USER_B: (u32, u32) = (1001, 1001);

pub fn smlogfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_smlogfs")
}

/// True when the tests run against the host file system instead of a smlogfs mount.
pub fn native() -> bool {
    std::env::var("SMLOGFS_TEST_NATIVE").is_ok_and(|v| v == "1")
}

pub struct Volume {
    // Declared before `root` so the directory outlives every use in Drop.
    voldir: PathBuf,
    mnt: PathBuf,
    mount_args: Vec<String>,
    mounted: bool,
    native: bool,
    keep: bool,
    root: Option<tempfile::TempDir>,
}

impl Volume {
    /// Creates a volume with `smlogfs mkfs VOLDIR <mkfs_args>`; panics if mkfs fails.
    pub fn new(mkfs_args: &[&str]) -> Volume {
        let root = tempfile::Builder::new()
            .prefix("smlogfs-test-")
            .tempdir()
            .expect("create temp dir");
        // Ordinary users must be able to reach the mount point.
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let voldir = root.path().join("vol");
        let mnt = root.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        fs::set_permissions(&mnt, fs::Permissions::from_mode(0o755)).unwrap();
        let native = native();
        if !native {
            let out = run(Command::new(smlogfs_bin())
                .arg("mkfs")
                .arg(&voldir)
                .args(mkfs_args));
            assert!(
                out.status.success(),
                "smlogfs mkfs {} {:?} failed: {}",
                voldir.display(),
                mkfs_args,
                describe(&out)
            );
        } else {
            fs::create_dir(&voldir).unwrap();
        }
        Volume {
            voldir,
            mnt,
            mount_args: Vec::new(),
            mounted: false,
            native,
            keep: false,
            root: Some(root),
        }
    }

    /// A volume made elsewhere, for example in a directory on a mount of the power-cut
    /// simulator ([`powercut`]): the caller owns VOLDIR and MNT. Dropping it unmounts MNT and
    /// kills the daemon like any volume but removes nothing.
    pub fn at(voldir: PathBuf, mnt: PathBuf) -> Volume {
        Volume {
            voldir,
            mnt,
            mount_args: Vec::new(),
            mounted: false,
            native: false,
            keep: false,
            root: None,
        }
    }

    /// A volume with the default mkfs arguments, mounted with no options.
    pub fn mounted() -> Volume {
        let mut v = Volume::new(DEFAULT_MKFS);
        v.mount(&[]);
        v
    }

    pub fn is_native(&self) -> bool {
        self.native
    }

    pub fn mnt(&self) -> &Path {
        &self.mnt
    }

    pub fn voldir(&self) -> &Path {
        &self.voldir
    }

    /// `mnt()/rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Mounts with `smlogfs mount VOLDIR MNT <args>`, which must return only once the mount
    /// is ready; the harness checks that a FUSE file system is then on MNT.
    pub fn mount(&mut self, args: &[&str]) {
        self.mount_args = args.iter().map(|s| s.to_string()).collect();
        self.mount_now();
    }

    fn mount_now(&mut self) {
        if let Err(e) = self.try_remount() {
            panic!("{e}");
        }
    }

    /// Like `remount` but returns the failure instead of panicking; Ok holds how long
    /// `smlogfs mount` took (recovery included).
    pub fn try_remount(&mut self) -> Result<Duration, String> {
        if self.native {
            self.mounted = true;
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        let out = run(Command::new(smlogfs_bin())
            .arg("mount")
            .arg(&self.voldir)
            .arg(&self.mnt)
            .args(&self.mount_args));
        let took = started.elapsed();
        if !out.status.success() {
            return Err(format!(
                "smlogfs mount {} {} {:?} failed after {:?}: {}",
                self.voldir.display(),
                self.mnt.display(),
                self.mount_args,
                took,
                describe(&out)
            ));
        }
        if !is_fuse_mount(&self.mnt) {
            return Err(format!(
                "smlogfs mount returned success but {} is not a FUSE mount",
                self.mnt.display()
            ));
        }
        // The mount is ready: the root must answer.
        fs::metadata(&self.mnt).map_err(|e| format!("stat of the freshly mounted root: {e}"))?;
        self.mounted = true;
        Ok(took)
    }

    /// Records that the volume was mounted by a command the test ran itself (so that it is
    /// unmounted on drop).
    pub fn mark_mounted(&mut self) {
        self.mounted = true;
    }

    /// Keeps the temporary directory (volume and daemon.log) when the Volume is dropped.
    pub fn keep_on_drop(&mut self) {
        self.keep = true;
    }

    /// The daemon's pid from VOLDIR/daemon.pid.
    pub fn daemon_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.voldir.join("daemon.pid")).ok()?;
        text.trim().parse().ok()
    }

    /// The pids a crash must kill, supervisor first (so that it restarts nothing), then
    /// the daemon: killing the daemon alone is a pause now (tests/restart.rs).
    pub fn crash_pids(&self) -> Vec<i32> {
        let supervisor = fs::read_to_string(self.voldir.join("supervisor.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .filter(|&pid| pid_alive(pid) && is_smlogfs(pid));
        supervisor.into_iter().chain(self.daemon_pid()).collect()
    }

    /// `kill -9` of the supervisor and the daemon; returns once both are gone and the mount
    /// answers ENOTCONN. In native mode it only marks the volume as crashed.
    pub fn kill9(&mut self) {
        if self.native {
            self.mounted = false;
            return;
        }
        let pids = self.crash_pids();
        let daemon = self
            .daemon_pid()
            .unwrap_or_else(|| panic!("no daemon.pid in {}", self.voldir.display()));
        assert!(
            pid_alive(daemon),
            "daemon {daemon} is not running before kill -9"
        );
        for pid in pids {
            // SAFETY-free: kill(2) has no memory effects.
            let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
            assert_eq!(rc, 0, "kill -9 {pid}: {}", io::Error::last_os_error());
            wait_for(
                READY_TIMEOUT,
                &format!("pid {pid} to die after kill -9"),
                || !pid_alive(pid),
            );
        }
        self.mounted = false;
    }

    /// Mounts again with the arguments of the last `mount` (after `kill9` this recovers and
    /// cleans up the dead mount).
    pub fn remount(&mut self) {
        self.mount_now();
    }

    /// `smlogfs umount MNT`; returns once the mount is gone and the daemon has exited (after
    /// its final checkpoint).
    pub fn umount(&mut self) {
        if self.native {
            self.mounted = false;
            return;
        }
        let pid = self.daemon_pid();
        run_while_busy(&format!("smlogfs umount {}", self.mnt.display()), || {
            let mut c = Command::new(smlogfs_bin());
            c.arg("umount").arg(&self.mnt);
            c
        });
        wait_for(
            READY_TIMEOUT,
            &format!("{} to be unmounted after umount", self.mnt.display()),
            || !is_fuse_mount(&self.mnt),
        );
        if let Some(pid) = pid {
            wait_for(
                READY_TIMEOUT,
                &format!("daemon {pid} to exit after umount"),
                || !pid_alive(pid),
            );
        }
        self.mounted = false;
    }

    /// `umount`, then `assert_fsck_clean`: what a test that changed the volume ends with.
    #[track_caller]
    pub fn umount_clean(&mut self) {
        self.umount();
        self.assert_fsck_clean();
    }

    /// Clean unmount then mount again with the same arguments.
    pub fn cycle(&mut self) {
        self.umount();
        self.remount();
    }

    /// `smlogfs fsck VOLDIR`: (exit code, stdout + stderr). Native mode: (0, "").
    pub fn fsck(&self) -> (i32, String) {
        if self.native {
            return (0, String::new());
        }
        let out = run(Command::new(smlogfs_bin()).arg("fsck").arg(&self.voldir));
        (out.status.code().unwrap_or(-1), describe(&out))
    }

    /// Asserts that `fsck` exits 0.
    pub fn assert_fsck_clean(&self) {
        let (code, out) = self.fsck();
        assert_eq!(
            code,
            0,
            "smlogfs fsck {} is not clean: {out}",
            self.voldir.display()
        );
    }

    fn cleanup(&mut self) {
        if self.native {
            return;
        }
        lazy_umount(&self.mnt);
        for pid in self.crash_pids() {
            if pid_alive(pid) && is_smlogfs(pid) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = wait_until(Duration::from_secs(10), || !pid_alive(pid));
            }
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.cleanup();
        if let Some(root) = self.root.take() {
            // Keep the volume for a post-mortem when asked to.
            let keep = self.keep
                || (std::env::var_os("SMLOGFS_TEST_KEEP").is_some() && std::thread::panicking());
            if keep {
                let kept = root.keep();
                eprintln!("kept test volume in {}", kept.display());
            } else {
                let _ = root.close();
            }
        }
    }
}

/// Runs the command `make` builds until it succeeds, again while it fails saying the mount
/// is busy; panics with its output (`what` it was) on any other failure, or when still busy
/// after BUSY_UMOUNT_RETRY.
///
/// EBUSY can be transient for an unmount: a sibling test thread that spawns a process at the
/// moment this one holds a file of the mount open hands the child a copy of that descriptor,
/// which it keeps until its exec closes it (O_CLOEXEC).
#[track_caller]
pub fn run_while_busy(what: &str, mut make: impl FnMut() -> Command) -> Output {
    let deadline = Instant::now() + BUSY_UMOUNT_RETRY;
    loop {
        let out = run(&mut make());
        if out.status.success() {
            return out;
        }
        let text = describe(&out);
        assert!(
            text.contains("busy") && Instant::now() < deadline,
            "{what} failed: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion, capturing its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that a command (`what` it was) exited with `code` and that its output (stdout and
/// stderr) contains each of `needles`: the failure it was run for, said in words.
#[track_caller]
pub fn assert_fails_with(out: &Output, code: i32, what: &str, needles: &[&str]) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(code), "{what}: {}", describe(out));
    for n in needles {
        assert!(
            text.contains(n),
            "{what}: the output does not say {n:?}: {text}"
        );
    }
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> Option<()> {
    poll(timeout, Duration::from_millis(5), cond)
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` (the event waited for) once
/// `timeout` passes. Tests wait for the event itself (a status field, a log line, a process
/// state) instead of sleeping and hoping it happened.
#[track_caller]
pub fn wait_for(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    let started = Instant::now();
    if poll(timeout, Duration::from_millis(20), cond).is_none() {
        panic!("timed out after {:?} waiting for {what}", started.elapsed());
    }
}

fn poll(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> Option<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Some(());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Alive while any thread of the process still runs. A killed multi-threaded process can show
/// its main thread as a zombie while other threads are still exiting and holding its files (and
/// so its flock on VOLDIR/lock); the daemon is not our child, so nobody here reaps it either.
pub fn pid_alive(pid: i32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        match fs::read_to_string(t.path().join("stat")) {
            Ok(stat) => {
                // The state follows the last ')' (the command name may hold spaces or parens).
                let state = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().next())
                    .unwrap_or("X");
                state != "Z" && state != "X"
            }
            Err(_) => false,
        }
    })
}

fn is_smlogfs(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("smlogfs"))
        .unwrap_or(false)
}

/// True when `path` is the mount point of a FUSE file system in this mount namespace.
pub fn is_fuse_mount(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        fields.len() > sep + 1
            && unescape_mountinfo(fields[4]).as_bytes() == want
            && fields[sep + 1].starts_with("fuse")
    })
}

/// `fusermount3 -u -z PATH` when a FUSE file system is mounted there (cleanup: failures are
/// ignored, the lazy unmount detaches even a busy or dead mount).
pub fn lazy_umount(path: &Path) {
    if is_fuse_mount(path) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| c.is_ascii_digit()) {
            let v = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap(), 8).unwrap();
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ----- errno helpers -----

pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// 0 when a libc call returned >= 0, otherwise errno.
pub fn err_of(ret: i64) -> i32 {
    if ret < 0 {
        errno()
    } else {
        0
    }
}

pub fn cpath(p: impl AsRef<Path>) -> CString {
    CString::new(p.as_ref().as_os_str().as_bytes()).expect("path without NUL")
}

pub fn cstr(s: impl AsRef<OsStr>) -> CString {
    CString::new(s.as_ref().as_bytes()).expect("string without NUL")
}

pub fn errno_name(e: i32) -> String {
    let name = match e {
        0 => "OK",
        libc::EPERM => "EPERM",
        libc::EBUSY => "EBUSY",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EFBIG => "EFBIG",
        libc::E2BIG => "E2BIG",
        libc::ETXTBSY => "ETXTBSY",
        _ => "",
    };
    format!("{name}({e})")
}

/// Asserts that `ret` is a failure with errno `want`, naming the call in the message.
#[track_caller]
pub fn assert_errno(what: &str, ret: i64, want: i32) {
    let got = err_of(ret);
    assert_eq!(
        errno_name(got),
        errno_name(want),
        "{what}: got {} expected {}",
        errno_name(got),
        errno_name(want)
    );
}

/// One row of an errno table: what is tried, the call (its libc-style return value, errno
/// set on failure), and the errno it must fail with.
pub type ErrnoCase<'a> = (&'a str, &'a dyn Fn() -> i64, i32);

/// Runs every row in order and then fails once, listing each row that did not fail with its
/// errno (so one run shows every wrong case, not only the first).
#[track_caller]
pub fn assert_errnos(cases: &[ErrnoCase]) {
    let outcomes: Vec<_> = cases
        .iter()
        .map(|(what, call, want)| (*what, err_of(call()), *want))
        .collect();
    assert_outcomes(&outcomes);
}

/// `assert_errnos` with every call made as USER_A, each in a child of its own (see
/// `as_user`: the calls may only make syscalls, so their paths are made before).
#[track_caller]
pub fn assert_errnos_as_user_a(cases: &[ErrnoCase]) {
    let outcomes: Vec<_> = cases
        .iter()
        .map(|(what, call, want)| (*what, as_user_a(|| err_of(call())), *want))
        .collect();
    assert_outcomes(&outcomes);
}

/// (what, errno got, errno expected) rows: fails listing the rows where the two differ.
#[track_caller]
fn assert_outcomes(outcomes: &[(&str, i32, i32)]) {
    let wrong: Vec<String> = outcomes
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| {
            format!(
                "{what}: got {} expected {}",
                errno_name(*got),
                errno_name(*want)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} errno cases wrong:\n  {}",
        wrong.len(),
        outcomes.len(),
        wrong.join("\n  ")
    );
}

/// Asserts that an outcome already taken (an errno, 0 for success: what `as_user` returns)
/// is `want`.
#[track_caller]
pub fn assert_errno_is(what: &str, got: i32, want: i32) {
    assert_outcomes(&[(what, got, want)]);
}

/// Asserts that `ret` is a success, showing errno otherwise.
#[track_caller]
pub fn assert_ok(what: &str, ret: i64) -> i64 {
    assert!(ret >= 0, "{what}: failed with {}", errno_name(errno()));
    ret
}

// ----- running code as an ordinary user -----

/// Runs `f` in a forked child with the given uid, gid and supplementary groups and umask 022;
/// returns what `f` returned (0..=255, typically 0 or an errno). A panic in `f` returns 255.
///
/// Only syscall wrappers should be used inside `f` (the child of a multi-threaded process).
pub fn as_user(uid: u32, gid: u32, groups: &[u32], f: impl FnOnce() -> i32) -> i32 {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: the child only calls async-signal-safe syscalls and `f`, then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        unsafe {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(254);
            }
            libc::umask(0o022);
        }
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(255);
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status),
        "user child died: status {status:#x}"
    );
    let code = libc::WEXITSTATUS(status);
    assert_ne!(code, 254, "could not switch to uid {uid} gid {gid}");
    code
}

/// Runs `f` as USER_A (1000/1000) with no supplementary groups.
pub fn as_user_a(f: impl FnOnce() -> i32) -> i32 {
    as_user(USER_A.0, USER_A.1, &[], f)
}

/// Runs `f` as USER_B (1001/1001) with no supplementary groups.
pub fn as_user_b(f: impl FnOnce() -> i32) -> i32 {
    as_user(USER_B.0, USER_B.1, &[], f)
}

/// Runs `sh -c script` as the given user with umask 022; returns the output.
pub fn sh_as(uid: u32, gid: u32, script: &str) -> Output {
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("umask 022; {script}"))
        .uid(uid)
        .gid(gid))
}

/// Runs `sh -c script` as root; panics with the output when it fails.
pub fn sh(script: &str) -> Output {
    let out = run(Command::new("sh").arg("-c").arg(script));
    assert!(out.status.success(), "sh -c {script:?}: {}", describe(&out));
    out
}

// ----- small syscall wrappers used by several tests -----

pub fn lstat(p: impl AsRef<Path>) -> Result<libc::stat, i32> {
    stat_by(p.as_ref(), libc::lstat)
}

pub fn stat(p: impl AsRef<Path>) -> Result<libc::stat, i32> {
    stat_by(p.as_ref(), libc::stat)
}

type StatFn = unsafe extern "C" fn(*const libc::c_char, *mut libc::stat) -> libc::c_int;

fn stat_by(p: &Path, call: StatFn) -> Result<libc::stat, i32> {
    let c = cpath(p);
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { call(c.as_ptr(), &mut st) };
    if rc == 0 {
        Ok(st)
    } else {
        Err(errno())
    }
}

/// lstat that panics with errno on failure.
#[track_caller]
pub fn st(p: impl AsRef<Path>) -> libc::stat {
    let p = p.as_ref();
    lstat(p).unwrap_or_else(|e| panic!("lstat {}: {}", p.display(), errno_name(e)))
}

pub fn write_file(p: impl AsRef<Path>, data: &[u8]) {
    let p = p.as_ref();
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

pub fn read_file(p: impl AsRef<Path>) -> Vec<u8> {
    let p = p.as_ref();
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Deterministic pseudo-random bytes (xorshift), so content checks need no stored copy.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Byte offset in the ring file `ring` of an entry from the middle of the ring whose
/// payload is over 16 bytes: a byte 40 past it lies inside the payload, so damage there is
/// in the middle of the log, not at its torn tail.
pub fn middle_entry_at(ring: &Path) -> u64 {
    let scan = smlogfs::statelog::StateLog::scan_file(ring).unwrap();
    let with_payload: Vec<_> = scan
        .entries
        .iter()
        .filter(|e| e.payload.len() > 16)
        .collect();
    let victim = with_payload[with_payload.len() / 2];
    smlogfs::statelog::format::HEADER_AREA_BYTES + victim.offset
}

/// What a test double of a replica reports about itself: `routes` names the double; it has
/// no link, so no traffic, ack or error to show.
pub fn fake_replica_info(
    routes: &str,
    connected: bool,
    protected: bool,
) -> smlogfs::core::ReplicaInfo {
    smlogfs::core::ReplicaInfo {
        routes: routes.into(),
        route_in_use: None,
        connected,
        protected,
        mode: "sync".into(),
        on_loss: "wait".into(),
        unacked_entries: 0,
        acked_through: None,
        resync_through: None,
        rtt_us: 0,
        reconnects: 0,
        last_error: None,
    }
}

/// The serving daemon's side of a supervised mount, for the restart tests.
impl Volume {
    /// VOLDIR/daemon.log (the supervisor's and every daemon's), or "" if there is none.
    pub fn daemon_log(&self) -> String {
        fs::read_to_string(self.voldir.join("daemon.log")).unwrap_or_default()
    }

    /// `kill -9` of the serving daemon only (its supervisor starts the next one); returns its
    /// pid and when the signal was sent, without waiting for it to die.
    pub fn kill_daemon(&self) -> (i32, Instant) {
        let pid = self.daemon_pid().expect("daemon.pid");
        assert!(pid_alive(pid), "daemon {pid} is not running before kill -9");
        let at = Instant::now();
        send_signal(pid, libc::SIGKILL);
        (pid, at)
    }

    /// Waits until daemon.pid names a live daemon other than `old`; returns it.
    pub fn wait_new_daemon(&self, old: i32) -> i32 {
        let mut new = None;
        wait_until(READY_TIMEOUT, || {
            new = self.daemon_pid().filter(|&p| p != old && pid_alive(p));
            new.is_some()
        })
        .unwrap_or_else(|| {
            panic!(
                "no new daemon after {old} was killed:\n{}",
                self.daemon_log()
            )
        });
        new.expect("set by the wait")
    }
}

/// kill(2) of `pid` with `sig`; panics if it fails.
pub fn send_signal(pid: i32, sig: libc::c_int) {
    // SAFETY-free: kill(2) has no memory effects.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill -{sig} {pid}: {}", io::Error::last_os_error());
}

/// The number in environment variable `name` (a test's iteration count), else `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

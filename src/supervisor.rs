//! The mount supervisor: a small process that owns a mount's FUSE connection, so that the
//! death of the daemon serving it is a pause for applications, not an error.
//!
//! `smlogfs mount` starts the supervisor (`mount -f` with [`SUPERVISE_ENV`] set). It mounts,
//! clones the connection's descriptor once per serving thread (`FUSE_DEV_IOC_CLONE`), and
//! starts a daemon (`mount -f` again, with [`FDS_ENV`] naming the inherited descriptors).
//! It holds nothing of the file system: no volume, no lock, no ring. When the daemon dies,
//! the supervisor starts a new one on the same descriptors at once; it recovers as any
//! mount does, tells the kernel to queue again what the dead one read and never answered
//! (`FUSE_NOTIFY_RESEND`) and serves.
//!
//! Why the supervisor makes the clones and keeps them: when the last reference to a
//! `/dev/fuse` open file closes, the kernel ends every request read through it and not yet
//! answered with an error (`fuse_dev_release`). Each daemon only ever gets copies of open
//! files the supervisor also holds, so its death closes no last reference.
//!
//! Daemon → supervisor, one line each on the daemon's stdout: `init RECORD` (what the kernel
//! offered at FUSE_INIT, passed to later daemons in [`INIT_ENV`]), `ready`, `error MESSAGE`.
//!
//! A planned hand-over (`smlogfs restart`, `crate::cmd::restart`): the daemon checkpoints and
//! exits with [`RESTART_EXIT_CODE`]; the supervisor starts the binary found at the path it was
//! itself started from (an upgrade installed there meanwhile is what runs) on the same
//! descriptors. Requests that arrive meanwhile wait in the kernel.
//!
//! SIGTERM and SIGPWR to the supervisor go to its daemon, which does what they ask
//! (emergency flush; SIGTERM then unmounts, the daemon exits 0 and the supervisor with it).
//! The supervisor blocks both before it starts a daemon, so that a daemon inherits them
//! blocked and never dies of one before its signal thread takes them.
//!
//! The supervisor's own death is the crash of old: the connection dies with the last
//! descriptor, and `smlogfs mount` cleans the dead mount up and recovers.
//!
//! The supervisor unmounts by path only while its connection is alive (a first daemon that
//! never served): once the connection has ended, the mount point may hold the next mount
//! (a lazy unmount returns at once, and a new `smlogfs mount` may follow before this
//! supervisor has reaped its daemon), and unmounting the path would end that one.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::{exit, CliError};

/// Set (to anything) by `smlogfs mount` for the `mount -f` it starts: supervise.
pub const SUPERVISE_ENV: &str = "SMLOGFS_SUPERVISE";
/// Set by the supervisor for a daemon: the inherited `/dev/fuse` descriptors, comma-separated.
pub const FDS_ENV: &str = "SMLOGFS_FUSE_FDS";
/// Set by the supervisor for a restarted daemon: the `fuser::resume::InitRecord` to resume with.
pub const INIT_ENV: &str = "SMLOGFS_FUSE_INIT";

/// Daemons in a row that die before serving before the supervisor gives up: a daemon that
/// cannot recover will not recover on the sixth try either.
const MAX_FAILED_STARTS: u32 = 5;
/// Wait before starting again after a daemon died before serving (a pause, not a spin).
const FAILED_START_BACKOFF: Duration = Duration::from_millis(500);
/// The first kernel with `FUSE_NOTIFY_RESEND`.
const RESEND_KERNEL: (u32, u32) = (6, 9);
/// A daemon's exit code that asks its supervisor for a successor at once (a planned restart).
/// EX_TEMPFAIL of sysexits.h ("try again"); no `crate::cmd::exit` code uses it.
pub const RESTART_EXIT_CODE: i32 = 75;
/// How `State::last_restart_cause` names a planned restart.
pub const PLANNED_CAUSE: &str = "planned (smlogfs restart)";

/// What the supervisor needs to mount and to start daemons.
pub struct Plan {
    pub voldir: PathBuf,
    pub mnt: PathBuf,
    pub mount_options: Vec<fuser::MountOption>,
    pub acl: fuser::SessionACL,
    /// Descriptors to hand out: one per serving thread.
    pub threads: usize,
    /// The daemon's arguments (after the binary) for its first start and for restarts.
    pub first_args: Vec<OsString>,
    pub restart_args: Vec<OsString>,
    /// The environment variable through which a daemon reports to its parent.
    pub ready_env: &'static str,
}

/// Ok if this kernel can hand unanswered requests to a new daemon; else says why not.
pub fn resend_supported() -> Result<(), String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("cannot read the kernel version (/proc/sys/kernel/osrelease: {e})"))?;
    let release = release.trim();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (nums.next().flatten(), nums.next().flatten()) {
        (Some(major), Some(minor)) if (major, minor) >= RESEND_KERNEL => Ok(()),
        (Some(_), Some(_)) => Err(format!(
            "kernel {release} has no FUSE_NOTIFY_RESEND (Linux {}.{} or later)",
            RESEND_KERNEL.0, RESEND_KERNEL.1
        )),
        _ => Err(format!("cannot parse the kernel version {release:?}")),
    }
}

/// Restart counts for `smlogfs status`, in VOLDIR/supervisor.state (JSON).
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub supervisor_pid: u32,
    pub daemon_pid: Option<u32>,
    /// Daemons started after the first, for any cause (planned ones included).
    pub restarts: u64,
    /// Of `restarts`, those asked for with `smlogfs restart`.
    #[serde(default)]
    pub planned_restarts: u64,
    pub last_restart_cause: Option<String>,
    /// From the old daemon's end (death or planned exit) to the new one reporting ready:
    /// recovered, the kernel asked to resend what the old one left unanswered, reading
    /// requests. The first answer follows within one request's own time.
    pub last_pause_ms: Option<u64>,
}

impl State {
    pub fn path(voldir: &Path) -> PathBuf {
        voldir.join("supervisor.state")
    }

    /// The state a supervisor of `voldir` last wrote, if any.
    pub fn read(voldir: &Path) -> Option<State> {
        serde_json::from_slice(&std::fs::read(Self::path(voldir)).ok()?).ok()
    }

    fn write(&self, voldir: &Path) {
        let tmp = voldir.join("supervisor.state.tmp");
        let text = serde_json::to_vec_pretty(self).expect("plain struct serialises");
        if let Err(e) =
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, Self::path(voldir)))
        {
            log::warn!("cannot write {}: {e}", Self::path(voldir).display());
        }
    }
}

/// How one daemon ended.
struct Run {
    pid: u32,
    /// When it reported `ready`; None if it died before serving.
    ready_at: Option<Instant>,
    init: Option<String>,
    error: Option<String>,
    status: ExitStatus,
    ended_at: Instant,
}

/// "exit code N" or "signal N (NAME)".
fn cause(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGBUS => " (SIGBUS)",
                _ => "",
            };
            format!("signal {sig}{name}")
        }
        (None, None) => format!("{status}"),
    }
}

/// Runs the supervisor until the mount ends. `report` tells the parent `ready` or the error.
pub fn run(plan: &Plan, report: &dyn Fn(&str)) -> Result<(), CliError> {
    // supervisor.pid is written once the first daemon serves (`start_daemon`): a mount
    // refused before that leaves VOLDIR as it was.
    let sup_pid_path = plan.voldir.join("supervisor.pid");
    let result = supervise(plan, report);
    let ours = std::fs::read_to_string(&sup_pid_path)
        .is_ok_and(|t| t.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(&sup_pid_path);
    }
    result
}

/// The daemon now running (0: none), for the signal forwarder.
static DAEMON_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Passes SIGTERM and SIGPWR on to the daemon now running (see the module comment).
fn forward_stop_signals() {
    let Some(set) = crate::cmd::mount::block_stop_signals() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let Ok(sig) = set.wait() else { return };
            let pid = DAEMON_PID.load(std::sync::atomic::Ordering::Acquire);
            if pid == 0 {
                log::warn!("{}: no daemon runs right now; ignored", sig.as_str());
                continue;
            }
            log::info!("{}: passing it on to daemon pid {pid}", sig.as_str());
            if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig) {
                log::warn!("passing {} on to daemon pid {pid}: {e}", sig.as_str());
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the signal thread ({e}): SIGTERM/SIGPWR are ignored");
    }
}

fn supervise(plan: &Plan, report: &dyn Fn(&str)) -> Result<(), CliError> {
    forward_stop_signals();
    let (first, handle) = fuser::resume::mount_device(&plan.mnt, &plan.mount_options, plan.acl)
        .map_err(|e| {
            CliError::new(
                exit::DAEMON,
                format!("mounting {} failed: {e}", plan.mnt.display()),
            )
        })?;
    let mut fds = vec![first];
    for _ in 1..plan.threads.max(1) {
        match fuser::resume::clone_device(fds[0].as_fd()) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                log::warn!("FUSE_DEV_IOC_CLONE failed ({e}): serving with one descriptor");
                break;
            }
        }
    }
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        match store_in_systemd(&socket, &fds) {
            Ok(()) => log::info!(
                "handed the FUSE descriptors to systemd's file-descriptor store (FDSTORE=1)"
            ),
            Err(e) => log::warn!("FDSTORE=1 to $NOTIFY_SOCKET failed: {e}"),
        }
    }
    let mut state = State {
        supervisor_pid: std::process::id(),
        ..State::default()
    };
    // Written once a daemon serves: a mount refused before that leaves VOLDIR unchanged.

    let exe = daemon_binary()?;
    let run = start_daemon(plan, &exe, &fds, None, None, &mut state, report)?;
    let Some(_) = run.ready_at else {
        // Never served: leave nothing mounted, as an unsupervised mount that failed would.
        drop(fds);
        if let Err(e) = handle.unmount() {
            log::warn!(
                "unmounting {} after the failed start: {e}",
                plan.mnt.display()
            );
        }
        let msg = run.error.unwrap_or_else(|| {
            format!(
                "the daemon ended ({}) before the mount was ready; see {}",
                cause(run.status),
                plan.voldir.join("daemon.log").display()
            )
        });
        let code = run
            .status
            .code()
            .filter(|c| *c != 0)
            .unwrap_or(exit::DAEMON);
        return Err(CliError::new(code, msg));
    };
    let Some(init) = run.init.clone() else {
        return Err(CliError::new(
            exit::DAEMON,
            "the daemon served without reporting the kernel's FUSE_INIT; cannot restart it",
        ));
    };
    let mut last = run;
    let mut failed_starts = 0;
    loop {
        if last.status.success() {
            log::info!("daemon pid {} exited cleanly; supervisor exits", last.pid);
            // The connection is gone (unmounted). Never unmount by path here: after a lazy
            // unmount the mount point may already hold the next mount.
            handle.release();
            return Ok(());
        }
        if !fuser::resume::connection_alive(fds[0].as_fd()) {
            log::warn!(
                "daemon pid {} ended ({}) and the FUSE connection is gone; supervisor exits",
                last.pid,
                cause(last.status)
            );
            // As above: what is mounted at the mount point now is not ours.
            handle.release();
            return Ok(());
        }
        let planned = last.status.code() == Some(RESTART_EXIT_CODE) && last.ready_at.is_some();
        if last.ready_at.is_none() {
            failed_starts += 1;
            if failed_starts >= MAX_FAILED_STARTS {
                log::error!(
                    "{failed_starts} daemons in a row died before serving (last: {}); giving \
                     up: the mount is dead, run `smlogfs mount` again once the cause is fixed",
                    cause(last.status)
                );
                // Leave it as a killed daemon would (a dead mount `smlogfs mount` cleans
                // up): unmounting here could fail on open files and hide the cause.
                handle.release();
                return Err(CliError::new(
                    exit::DAEMON,
                    "no daemon could serve the mount",
                ));
            }
            std::thread::sleep(FAILED_START_BACKOFF);
        } else {
            failed_starts = 0;
        }
        state.restarts += 1;
        if planned {
            state.planned_restarts += 1;
            state.last_restart_cause = Some(PLANNED_CAUSE.to_string());
            log::info!(
                "daemon pid {} handed over ({PLANNED_CAUSE}); starting {} on the same FUSE \
                 connection (restart {})",
                last.pid,
                exe.display(),
                state.restarts
            );
        } else {
            let why = cause(last.status);
            state.last_restart_cause = Some(why.clone());
            log::warn!(
                "daemon pid {} died ({why}); starting a new daemon on the same FUSE connection \
                 (restart {})",
                last.pid,
                state.restarts
            );
        }
        let died_at = last.ended_at;
        last = start_daemon(
            plan,
            &exe,
            &fds,
            Some(&init),
            Some(died_at),
            &mut state,
            report,
        )?;
    }
}

/// The path the supervisor was started from, to start every daemon from: an upgrade that
/// replaced the file there is what a restart runs.
fn daemon_binary() -> Result<PathBuf, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(exit::DAEMON, format!("cannot find own binary: {e}")))?;
    // Linux names a binary removed since it started "PATH (deleted)": the path is the one.
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Starts a daemon from `exe` (else from the supervisor's own image, should `exe` be gone)
/// on copies of `fds` and follows it until it exits. Reports `ready` to the parent for the
/// first one; records the pause since `died_at` (the end of the one before) of a restarted
/// one in `state`.
fn start_daemon(
    plan: &Plan,
    exe: &Path,
    fds: &[OwnedFd],
    init: Option<&str>,
    died_at: Option<Instant>,
    state: &mut State,
    report: &dyn Fn(&str),
) -> Result<Run, CliError> {
    // Copies without close-on-exec: the daemon inherits exactly these. No other thread of
    // the supervisor starts processes (the signal thread only sends signals), so no other
    // child can inherit them meanwhile.
    let copies: Vec<OwnedFd> = fds
        .iter()
        .map(nix::unistd::dup)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            CliError::new(
                exit::DAEMON,
                format!("cannot copy the FUSE descriptor: {e}"),
            )
        })?;
    let numbers: Vec<String> = copies.iter().map(|f| f.as_raw_fd().to_string()).collect();
    let command = |exe: &Path| {
        let mut cmd = Command::new(exe);
        cmd.args(if init.is_some() {
            &plan.restart_args
        } else {
            &plan.first_args
        })
        .env_remove(SUPERVISE_ENV)
        .env(FDS_ENV, numbers.join(","))
        .env(plan.ready_env, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
        match init {
            Some(i) => cmd.env(INIT_ENV, i),
            None => cmd.env_remove(INIT_ENV),
        };
        cmd
    };
    let spawned = command(exe).spawn().or_else(|e| {
        // Removed and not replaced: the supervisor's own image still runs the mount.
        log::error!(
            "cannot start {} ({e}); starting the supervisor's own binary instead",
            exe.display()
        );
        command(Path::new("/proc/self/exe")).spawn()
    });
    drop(copies);
    let mut child = spawned
        .map_err(|e| CliError::new(exit::DAEMON, format!("cannot start the daemon: {e}")))?;
    let pid = child.id();
    DAEMON_PID.store(pid, std::sync::atomic::Ordering::Release);
    let mut run = Run {
        pid,
        ready_at: None,
        init: None,
        error: None,
        status: ExitStatus::from_raw(0),
        ended_at: Instant::now(),
    };
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(rec) = line.strip_prefix("init ") {
            run.init = Some(rec.trim().to_string());
        } else if let Some(msg) = line.strip_prefix("error ") {
            run.error = Some(msg.to_string());
        } else if line.trim() == "ready" {
            run.ready_at = Some(Instant::now());
            state.daemon_pid = Some(pid);
            match died_at {
                None => {
                    let path = plan.voldir.join("supervisor.pid");
                    if let Err(e) = std::fs::write(&path, format!("{}\n", std::process::id())) {
                        log::warn!("cannot write {}: {e}", path.display());
                    }
                    report("ready")
                }
                Some(died_at) => {
                    let pause = Instant::now().saturating_duration_since(died_at);
                    state.last_pause_ms = Some(pause.as_millis() as u64);
                    log::info!(
                        "restart {}: daemon pid {pid} serves again {} ms after the last one died",
                        state.restarts,
                        pause.as_millis()
                    );
                }
            }
            state.write(&plan.voldir);
        }
    }
    run.status = child
        .wait()
        .map_err(|e| CliError::new(exit::DAEMON, format!("waiting for daemon pid {pid}: {e}")))?;
    DAEMON_PID.store(0, std::sync::atomic::Ordering::Release);
    run.ended_at = Instant::now();
    Ok(run)
}

/// Hands the descriptors to systemd's file-descriptor store: one datagram to `socket`
/// (`$NOTIFY_SOCKET`; a leading `@` names an abstract socket) saying `FDSTORE=1`, the
/// descriptors attached (SCM_RIGHTS). The unit needs `FileDescriptorStoreMax=` and
/// `NotifyAccess=all` (the supervisor is not the main pid of a forking mount).
pub fn store_in_systemd(socket: &std::ffi::OsStr, fds: &[OwnedFd]) -> std::io::Result<()> {
    use nix::sys::socket::{
        sendmsg, socket as new_socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
        UnixAddr,
    };
    use std::os::unix::ffi::OsStrExt;
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name)?,
        None => UnixAddr::new(bytes)?,
    };
    let sock = new_socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let text = b"FDSTORE=1\nFDNAME=smlogfs-fuse\n";
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(text)],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        Some(&addr),
    )?;
    Ok(())
}

/// Reports one line to the parent (used by the daemon for `init`).
pub fn report_line(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdstore_sends_the_descriptors_with_the_message() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
        use std::io::IoSliceMut;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let (a, b) = std::io::pipe().unwrap();
        let fds = vec![OwnedFd::from(a), OwnedFd::from(b)];
        store_in_systemd(path.as_os_str(), &fds).unwrap();
        let mut buf = [0u8; 128];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let msg = recvmsg::<UnixAddr>(
            rx.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let received: Vec<RawFd> = msg
            .cmsgs()
            .unwrap()
            .flat_map(|c| match c {
                ControlMessageOwned::ScmRights(v) => v,
                _ => Vec::new(),
            })
            .collect();
        let len = msg.bytes;
        assert_eq!(
            received.len(),
            2,
            "both descriptors travel with the message"
        );
        assert!(buf[..len].starts_with(b"FDSTORE=1\n"), "{:?}", &buf[..len]);
        for fd in received {
            // Close what we received: OwnedFd needs unsafe, a /proc check does not.
            assert!(Path::new(&format!("/proc/self/fd/{fd}")).exists());
            let _ = nix::unistd::close(fd);
        }
    }

    #[test]
    fn exit_causes_name_the_signal() {
        assert_eq!(cause(ExitStatus::from_raw(9)), "signal 9 (SIGKILL)");
        assert_eq!(cause(ExitStatus::from_raw(3 << 8)), "exit code 3");
    }
}

//! Command-line entry points of the `smlogfs` binary. Each returns `CliError` with a
//! documented exit code (docs/operations.md) and a one-line message.

pub mod failover;
pub mod flush;
pub mod fsck;
pub mod inspect;
pub mod mkfs;
pub mod mount;
pub mod restart;
pub mod status;

use std::fmt;

/// Exit codes, one per kind of failure (documented in docs/operations.md).
pub mod exit {
    pub const OK: i32 = 0;
    /// fsck found problems.
    pub const PROBLEMS: i32 = 1;
    /// Bad command line (also clap's own usage errors), unparsable size.
    pub const USAGE: i32 = smlog_cli::exit::USAGE as i32;
    /// VOLDIR is not a volume or cannot be read.
    pub const NOT_A_VOLUME: i32 = 3;
    /// mkfs: a volume exists and --force was not given.
    pub const EXISTS: i32 = 4;
    /// The mountpoint is missing, not a directory, not empty, or already mounted.
    pub const MOUNTPOINT: i32 = 5;
    /// The volume is held by a live daemon.
    pub const BUSY: i32 = 6;
    /// Damage found in the ring, superblock or metadata; nothing was changed.
    pub const CORRUPT: i32 = 7;
    /// FUSE is not available (/dev/fuse or fusermount3 missing).
    pub const NO_FUSE: i32 = 8;
    /// An I/O error (disk full, a read-only file system, …); permission denied is PERMISSION.
    pub const IO: i32 = 9;
    /// The daemon failed after starting.
    pub const DAEMON: i32 = 10;
    /// The volume was taken over by another node (fenced), or giveback is needed first.
    pub const FENCED: i32 = 11;
    /// The mirror agent is unreachable, refused us, or its copy is unusable.
    pub const MIRROR: i32 = 12;
    /// Permission denied on a backing file, the ring, the lock or the control socket.
    pub const PERMISSION: i32 = 13;
}

#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub msg: String,
}

impl CliError {
    pub fn new(code: i32, msg: impl Into<String>) -> Self {
        CliError {
            code,
            msg: msg.into(),
        }
    }
}

/// The binary prints it and exits with its code (`smlog_cli::Program`).
impl From<CliError> for smlog_cli::Failure {
    fn from(e: CliError) -> Self {
        smlog_cli::Failure::new(exit_status(e.code), e.msg)
    }
}

/// An exit code of `exit` as the process's exit status.
pub fn exit_status(code: i32) -> u8 {
    u8::try_from(code).unwrap_or_else(|_| panic!("exit code {code} is not one of `exit`"))
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

/// Maps an error from opening a volume to an exit code and message.
pub fn open_error(e: crate::core::FsError) -> CliError {
    use crate::core::FsError;
    if let Some(path) = permission_denied(&e) {
        return permission_error(path);
    }
    match &e {
        FsError::Volume(raid_sim::VolumeError::NotAVolume { .. }) => {
            CliError::new(exit::NOT_A_VOLUME, e.to_string())
        }
        FsError::Volume(raid_sim::VolumeError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            CliError::new(exit::NOT_A_VOLUME, e.to_string())
        }
        FsError::Volume(raid_sim::VolumeError::Io { .. }) => CliError::new(exit::IO, e.to_string()),
        // The agent answered and refused (its directory holds another volume under this
        // id, its storage failed...): reachability is not the problem.
        FsError::Mirror { detail, .. } if detail.contains("mirror agent refused") => CliError::new(
            exit::MIRROR,
            nothing_changed(format!(
                "{e}; the agent is reachable but refused the volume: read the agent's log on the \
                 peer and fix what it names (docs/operations.md, \"The peer or its mirror agent \
                 died\")"
            )),
        ),
        FsError::Mirror { .. } => CliError::new(
            exit::MIRROR,
            nothing_changed(format!(
                "{e}; check that mirror-agent runs on the peer and each route is reachable \
                 (docs/operations.md, \"The peer or its mirror agent died\")"
            )),
        ),
        FsError::Log(crate::statelog::LogError::Io { source, .. })
            if source.kind() != std::io::ErrorKind::NotFound =>
        {
            CliError::new(exit::IO, e.to_string())
        }
        _ => CliError::new(exit::CORRUPT, nothing_changed(e.to_string())),
    }
}

/// What every refusal to open a volume promises.
pub const NOTHING_CHANGED: &str = "nothing was changed";

/// `msg` ending in "nothing was changed", said once: some errors of the layers below (a
/// damaged ring's among them) say it already, with the way out after it.
pub fn nothing_changed(msg: String) -> String {
    if msg.contains(NOTHING_CHANGED) {
        msg
    } else {
        format!("{msg}; {NOTHING_CHANGED}")
    }
}

/// The file an open failed on for lack of permission, if that is why it failed.
fn permission_denied(e: &crate::core::FsError) -> Option<&std::path::Path> {
    use crate::core::FsError;
    match e {
        FsError::Volume(v) => volume_permission_denied(v),
        FsError::Log(l) => log_permission_denied(l),
        _ => None,
    }
}

/// True when `e` is "permission denied".
pub fn denied(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::PermissionDenied
}

/// The backing file a block volume was refused access to, if that is why it failed.
pub fn volume_permission_denied(e: &raid_sim::VolumeError) -> Option<&std::path::Path> {
    match e {
        raid_sim::VolumeError::Io { path, source } if denied(source) => Some(path),
        _ => None,
    }
}

/// The ring file the state log was refused access to, if that is why it failed.
pub fn log_permission_denied(e: &crate::statelog::LogError) -> Option<&std::path::Path> {
    match e {
        crate::statelog::LogError::Io { path, source } if denied(source) => Some(path),
        _ => None,
    }
}

/// "Permission denied on PATH", with what to do about it.
pub fn permission_error(path: &std::path::Path) -> CliError {
    CliError::new(
        exit::PERMISSION,
        format!(
            "permission denied on {}: run as the owner of the volume's files (usually root) or \
             give this user access (ls -l, chown, chmod); nothing was changed",
            path.display()
        ),
    )
}

/// Parses sizes like `4096`, `64K`, `64M`, `1G`, `1T` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let not_a_number = || format!("size {s:?} is not a number with an optional K/M/G/T suffix");
    let (num, mult) = match t.char_indices().last() {
        Some((i, _)) if i > 0 && !t[..i].bytes().all(|b| b.is_ascii_digit()) => {
            return Err(not_a_number())
        }
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => {
                    return Err(format!(
                        "size {s:?}: unknown suffix {c:?} (use K, M, G or T)"
                    ))
                }
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| not_a_number())?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// This node's name: `--node`, else the host name.
pub fn node_name(given: Option<&str>) -> String {
    match given {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into()),
    }
}

/// The pid recorded in `VOLDIR/daemon.pid`, if that process is alive.
pub fn live_daemon(voldir: &std::path::Path) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(voldir.join("daemon.pid")).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    let mnt = std::fs::read_to_string(voldir.join("daemon.mountpoint"))
        .unwrap_or_default()
        .trim()
        .to_string();
    process_alive(pid).then_some((pid, mnt))
}

/// True while any thread of `pid` runs (a zombie waiting to be reaped counts as gone). The
/// main thread of an exiting daemon can be a zombie while its other threads still exit and
/// hold its files, the volume lock among them: only when all are gone is the volume free.
pub fn process_alive(pid: u32) -> bool {
    let running = |stat: &str| {
        // The state follows the parenthesised command name.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z') | Some('X') | None)
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .any(|t| std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| running(&stat)))
}

/// What became of a process that a pid file in VOLDIR names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessState {
    /// Runs (and is a smlogfs process: a reused pid of another program counts as gone).
    Live,
    /// Killed or exiting: its threads may still hold its files, the volume lock among them,
    /// for a moment.
    Exiting,
    /// No thread of it runs any more.
    Gone,
}

/// `PF_EXITING` of the kernel's task flags (the ninth field of /proc/PID/stat): set as a
/// thread starts to exit.
const PF_EXITING: u64 = 0x4;

/// How `pid` stands: a killed process is `Exiting` from the moment the signal is pending
/// until its last thread is gone.
pub fn process_state(pid: u32) -> ProcessState {
    if !process_alive(pid) {
        return ProcessState::Gone;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let mut fields = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace())
        .into_iter()
        .flatten();
    let state = fields.next().unwrap_or("X");
    let flags: u64 = fields.nth(5).and_then(|f| f.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kill_pending = status.lines().any(|l| {
        let Some(mask) = l
            .strip_prefix("SigPnd:")
            .or_else(|| l.strip_prefix("ShdPnd:"))
        else {
            return false;
        };
        u64::from_str_radix(mask.trim(), 16).is_ok_and(|m| m & (1 << (libc::SIGKILL - 1)) != 0)
    });
    if matches!(state, "Z" | "X") || flags & PF_EXITING != 0 || kill_pending {
        return ProcessState::Exiting;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains("smlogfs") {
        ProcessState::Live
    } else {
        ProcessState::Gone
    }
}

/// The processes VOLDIR's pid files name: the serving daemon (first line of `daemon.pid`)
/// and its supervisor (`supervisor.pid`), each with how it stands.
#[derive(Clone, Debug, Default)]
pub struct Owners {
    pub daemon: Option<(u32, ProcessState)>,
    pub supervisor: Option<(u32, ProcessState)>,
    /// From `daemon.mountpoint`; empty if unknown.
    pub mountpoint: String,
}

impl Owners {
    pub fn read(voldir: &std::path::Path) -> Owners {
        let pid = |name: &str| {
            let text = std::fs::read_to_string(voldir.join(name)).ok()?;
            let pid: u32 = text.lines().next()?.trim().parse().ok()?;
            Some((pid, process_state(pid)))
        };
        Owners {
            daemon: pid("daemon.pid"),
            supervisor: pid("supervisor.pid"),
            mountpoint: std::fs::read_to_string(voldir.join("daemon.mountpoint"))
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }

    fn all(&self) -> impl Iterator<Item = (&'static str, u32, ProcessState)> {
        let daemon = self.daemon.map(|(p, s)| ("daemon", p, s));
        let supervisor = self.supervisor.map(|(p, s)| ("supervisor", p, s));
        daemon.into_iter().chain(supervisor)
    }

    pub fn any_live(&self) -> bool {
        self.all().any(|(_, _, s)| s == ProcessState::Live)
    }

    /// "daemon pid 12 (supervisor pid 11)": the live ones.
    pub fn describe_live(&self) -> String {
        let live = |o: Option<(u32, ProcessState)>| o.filter(|(_, s)| *s == ProcessState::Live);
        match (live(self.daemon), live(self.supervisor)) {
            (Some((d, _)), Some((s, _))) => format!("daemon pid {d} (supervisor pid {s})"),
            (Some((d, _)), None) => format!("daemon pid {d}"),
            (None, Some((s, _))) => format!("supervisor pid {s} (its daemon is starting)"),
            (None, None) => "another smlogfs process".into(),
        }
    }

    /// "daemon pid 12, supervisor pid 11": the killed ones still exiting.
    fn describe_exiting(&self) -> Option<String> {
        let who: Vec<String> = self
            .all()
            .filter(|(_, _, s)| *s == ProcessState::Exiting)
            .map(|(what, pid, _)| format!("{what} pid {pid}"))
            .collect();
        (!who.is_empty()).then(|| who.join(", "))
    }
}

/// How long `mount` waits for a killed daemon or supervisor to finish exiting. Normally a
/// few milliseconds; a thread stuck in the kernel (a hung disk) can take longer.
pub const KILLED_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The refusal of a mount whose volume is being served.
pub fn served_error(voldir: &std::path::Path, owners: &Owners) -> CliError {
    let at = if owners.mountpoint.is_empty() {
        String::new()
    } else {
        format!(" at {}", owners.mountpoint)
    };
    let mnt = if owners.mountpoint.is_empty() {
        "MOUNTPOINT"
    } else {
        &owners.mountpoint
    };
    CliError::new(
        exit::BUSY,
        format!(
            "volume {} is mounted{at} and served by {}; unmount it first (smlogfs umount {mnt}), \
             or hand it to a new daemon with `smlogfs restart {mnt}`",
            voldir.display(),
            owners.describe_live()
        ),
    )
}

/// Before a mount: refuses a volume a live daemon serves; waits (up to
/// [`KILLED_EXIT_WAIT`], saying so once) while killed ones are still exiting, since their
/// last thread lets go of the volume lock only as it goes, and while a supervisor has no
/// live daemon (it exits after an unmount, or starts a daemon: then the mount is refused).
pub fn wait_for_killed_owners(voldir: &std::path::Path) -> Result<(), CliError> {
    let deadline = std::time::Instant::now() + KILLED_EXIT_WAIT;
    let mut said = false;
    loop {
        let owners = Owners::read(voldir);
        let daemon_live = owners.daemon.is_some_and(|(_, s)| s == ProcessState::Live);
        let late = std::time::Instant::now() >= deadline;
        if daemon_live || (late && owners.any_live()) {
            return Err(served_error(voldir, &owners));
        }
        // A supervisor without a live daemon follows an unmounted daemon out, or is starting
        // the next one: either is a matter of moments.
        let settling = owners
            .supervisor
            .filter(|(_, s)| *s == ProcessState::Live)
            .map(|(pid, _)| format!("supervisor pid {pid} (no daemon serves)"));
        let Some(exiting) = owners.describe_exiting().or(settling) else {
            return Ok(());
        };
        if late {
            return Err(CliError::new(
                exit::BUSY,
                format!(
                    "{exiting} of volume {} has not exited within {} s (a thread stuck in \
                     the kernel? see /proc/PID/stack); mount again once it is gone",
                    voldir.display(),
                    KILLED_EXIT_WAIT.as_secs()
                ),
            ));
        }
        if !said {
            log::warn!(
                "{exiting} of volume {} is still exiting (killed, or ending after an \
                 unmount); waiting up to {} s for it to let go of the volume",
                voldir.display(),
                KILLED_EXIT_WAIT.as_secs()
            );
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The volume directory of the smlogfs file system mounted at `mnt` (absolute), from
/// /proc/self/mounts: the daemon names its volume directory as the mount's source.
pub fn mounted_volume(mnt: &std::path::Path) -> Option<std::path::PathBuf> {
    let table = smlog_cli::mounts::MountTable::read().ok()?;
    let volume = table
        .at(mnt)
        .rev()
        .find(|m| m.is_fuse() && raid_sim::volume_exists(std::path::Path::new(&m.source)))?;
    Some(std::path::PathBuf::from(&volume.source))
}

/// The smlogfs mount at `mnt`: (its absolute mount point, its volume directory), or the
/// error that `mnt` is none (for the commands given a mount point).
pub fn mounted_at(
    mnt: &std::path::Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf), CliError> {
    let abs = std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    match mounted_volume(&abs) {
        Some(voldir) => Ok((abs, voldir)),
        None => Err(CliError::new(
            exit::MOUNTPOINT,
            format!("{} is not a mounted smlogfs file system", mnt.display()),
        )),
    }
}

/// Holds `VOLDIR/lock` exclusively for as long as the value lives.
pub struct VolumeLock {
    _file: std::fs::File,
}

impl VolumeLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(voldir: &std::path::Path) -> Result<VolumeLock, CliError> {
        let path = voldir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => permission_error(&path),
                _ => CliError::new(exit::IO, format!("cannot open {}: {e}", path.display())),
            })?;
        match file.try_lock() {
            Ok(()) => Ok(VolumeLock { _file: file }),
            Err(_) => Err(Self::busy(voldir)),
        }
    }

    /// Takes the lock, waiting up to `wait` for its holder to let go: a takeover waits for
    /// the fenced old owner's daemon, which releases the lock once it learns of the fence.
    pub fn acquire_within(
        voldir: &std::path::Path,
        wait: std::time::Duration,
    ) -> Result<VolumeLock, CliError> {
        let deadline = std::time::Instant::now() + wait;
        let mut said = false;
        loop {
            match Self::acquire(voldir) {
                Err(e) if e.code == exit::BUSY && std::time::Instant::now() < deadline => {
                    if !said {
                        log::warn!(
                            "{}; waiting up to {} ms for it to let go",
                            e.msg,
                            wait.as_millis()
                        );
                        said = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn busy(voldir: &std::path::Path) -> CliError {
        let owners = Owners::read(voldir);
        if owners.any_live() {
            return served_error(voldir, &owners);
        }
        let who = match live_daemon(voldir) {
            Some((pid, mnt)) => format!("daemon pid {pid} (mounted at {mnt})"),
            None => "another smlogfs process".into(),
        };
        CliError::new(
            exit::BUSY,
            format!(
                "volume {} is in use by {who}; unmount it first (smlogfs umount MOUNTPOINT)",
                voldir.display()
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes_and_reject_garbage() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12Q").unwrap_err().contains("unknown suffix"));
        assert!(parse_size("abc").unwrap_err().contains("not a number"));
        assert!(parse_size("").unwrap_err().contains("not a number"));
        assert!(parse_size("M").unwrap_err().contains("not a number"));
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn refusals_say_nothing_was_changed_once() {
        let corrupt = |detail: &str| crate::core::FsError::Corrupt {
            what: "state log",
            at: "/v/statelog byte 8192".into(),
            detail: detail.into(),
        };
        // The layer below said it already, or did not: either way it is said once, last.
        for detail in ["an entry is damaged; nothing was changed", "another volume"] {
            let e = open_error(corrupt(detail));
            assert_eq!(e.code, exit::CORRUPT);
            assert_eq!(e.msg.matches(NOTHING_CHANGED).count(), 1, "{}", e.msg);
            assert!(e.msg.ends_with(NOTHING_CHANGED), "{}", e.msg);
            assert!(e.msg.contains("/v/statelog byte 8192"), "{}", e.msg);
        }
        let mirror = crate::core::FsError::Mirror {
            routes: "10.0.0.2:7070".into(),
            detail: "connection refused".into(),
        };
        let e = open_error(mirror);
        assert_eq!(e.code, exit::MIRROR);
        assert_eq!(e.msg.matches(NOTHING_CHANGED).count(), 1, "{}", e.msg);
    }
}

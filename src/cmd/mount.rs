//! `smlogfs mount` (the daemon) and `smlogfs umount`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{exit, live_daemon, open_error, process_alive, CliError, VolumeLock};
use crate::core::{Fs, FsConfig, FsyncPolicy};
use crate::fuse_adapter::FuseAdapter;
use crate::progress::Progress;
use crate::supervisor;

/// Environment variable through which a background daemon reports readiness to its parent.
const READY_ENV: &str = "SMLOGFS_REPORT_READY";

#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    pub foreground: bool,
    /// The -o list, comma-separated.
    pub options: Vec<String>,
    pub mirror: super::failover::MirrorArgs,
    /// Recover from the mirror agent's copy only (the peer taking a volume over).
    pub takeover: bool,
}

struct Parsed {
    fs: FsConfig,
    writeback_cache: bool,
    kernel: Vec<fuser::MountOption>,
    threads: usize,
    /// The mount's readahead in KiB (its backing-device setting); 0 keeps the kernel's.
    read_ahead_kb: u64,
}

/// FUSE mounts get the kernel's default readahead of 128 KiB: one synchronous round trip
/// to the daemon per 128 KiB, which halves a cold sequential read here. 4 MiB lets the
/// kernel keep reads in flight (measured: 208 -> 638 MB/s for a cold 512 MiB read).
const DEFAULT_READ_AHEAD_KB: u64 = 4096;

fn parse_options(list: &[String]) -> Result<Parsed, CliError> {
    let mut p = Parsed {
        fs: FsConfig::default(),
        writeback_cache: false,
        kernel: Vec::new(),
        threads: 2,
        read_ahead_kb: DEFAULT_READ_AHEAD_KB,
    };
    for opt in list
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let num = |v: Option<&str>| -> Result<u64, CliError> {
            v.and_then(|v| v.parse().ok()).ok_or_else(|| {
                CliError::new(exit::USAGE, format!("-o {opt}: expected {key}=NUMBER"))
            })
        };
        match key {
            "writeback_cache" => p.writeback_cache = true,
            "fsync" => {
                p.fs.fsync = value.and_then(FsyncPolicy::parse).ok_or_else(|| {
                    CliError::new(
                        exit::USAGE,
                        format!("-o {opt}: expected fsync=local, fsync=mirror or fsync=both"),
                    )
                })?
            }
            "sync_ring" => p.fs.sync_every_op = true,
            "checkpoint_ms" => p.fs.checkpoint_interval_ms = num(value)?,
            "commit_ms" => p.fs.commit_ms = num(value)?,
            "checkpoint_fill" => p.fs.checkpoint_fill_percent = num(value)?.clamp(1, 95),
            "threads" => p.threads = num(value)?.clamp(1, 16) as usize,
            "read_ahead_kb" => p.read_ahead_kb = num(value)?.min(1 << 20),
            "ro" => p.kernel.push(fuser::MountOption::RO),
            "noatime" => p.kernel.push(fuser::MountOption::NoAtime),
            "nosuid" => p.kernel.push(fuser::MountOption::NoSuid),
            "nodev" => p.kernel.push(fuser::MountOption::NoDev),
            "noexec" => p.kernel.push(fuser::MountOption::NoExec),
            "dev" => p.kernel.push(fuser::MountOption::Dev),
            "suid" => p.kernel.push(fuser::MountOption::Suid),
            "allow_other" | "default_permissions" | "rw" | "defaults" | "_netdev" | "auto" | "noauto" | "nofail" => {}
            _ => {
                return Err(CliError::new(
                    exit::USAGE,
                    format!(
                        "-o {opt}: unknown option (known: writeback_cache, sync_ring, fsync=local|mirror|both, checkpoint_ms=N, \
                         commit_ms=N, checkpoint_fill=PERCENT, threads=N, read_ahead_kb=N, ro, noatime, nosuid, nodev, noexec)"
                    ),
                ))
            }
        }
    }
    Ok(p)
}

/// `fsync=mirror` promises the agent's disk: without an agent it could only mean the local
/// disk, which the user did not ask for.
fn check_fsync(parsed: &Parsed, mirrored: bool) -> Result<(), CliError> {
    if parsed.fs.fsync == FsyncPolicy::Mirror && !mirrored {
        return Err(CliError::new(
            exit::USAGE,
            "-o fsync=mirror needs a mirror agent: add --mirror HOST:PORT, or use fsync=local",
        ));
    }
    Ok(())
}

/// Sets the mount's readahead once the kernel has finished its handshake with us (its INIT
/// reply would lower a value set before): a thread waits until the mount answers a stat,
/// served by the session that starts next, then writes the backing-device setting. Failing
/// that (not root, no sysfs) the kernel's default stays, with a warning.
fn set_read_ahead(mnt: &Path, kb: u64) {
    let mnt = mnt.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("read-ahead".into())
        .spawn(move || {
            let meta = match std::fs::metadata(&mnt) {
                Ok(m) => m,
                Err(e) => {
                    log::warn!(
                        "readahead left at the kernel's default: stat of {}: {e}",
                        mnt.display()
                    );
                    return;
                }
            };
            let dev = std::os::unix::fs::MetadataExt::dev(&meta);
            let path = format!(
                "/sys/class/bdi/{}:{}/read_ahead_kb",
                libc::major(dev),
                libc::minor(dev)
            );
            match std::fs::write(&path, kb.to_string()) {
                Ok(()) => log::debug!("{path} = {kb}"),
                Err(e) => log::warn!("readahead left at the kernel's default: {path}: {e}"),
            }
        });
    if let Err(e) = spawned {
        log::warn!("readahead left at the kernel's default: {e}");
    }
}

fn is_mounted(mnt: &Path) -> bool {
    smlog_cli::mounts::MountTable::read().is_ok_and(|t| t.find(mnt).is_some())
}

fn fusermount_unmount(mnt: &Path, lazy: bool) -> Result<(), CliError> {
    let mut cmd = Command::new("fusermount3");
    cmd.arg(if lazy { "-uz" } else { "-u" }).arg(mnt);
    let out = cmd.output().map_err(|e| {
        CliError::new(
            exit::NO_FUSE,
            format!("cannot run fusermount3 ({e}); install it with `apt-get install -y fuse3`"),
        )
    })?;
    if !out.status.success() {
        return Err(CliError::new(
            exit::MOUNTPOINT,
            format!(
                "fusermount3 -u {}: {}",
                mnt.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// Checks the mountpoint; cleans up a dead mount left by a killed daemon.
fn prepare_mountpoint(mnt: &Path) -> Result<PathBuf, CliError> {
    // A dead FUSE mount may still answer stat from cached attributes; opening it does not.
    let abs = std::path::absolute(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    if is_mounted(&abs) {
        if let Err(e) = std::fs::read_dir(&abs) {
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                log::warn!(
                    "{} is a dead mount (its daemon was killed); cleaning it up",
                    abs.display()
                );
                fusermount_unmount(&abs, true)?;
            }
        }
    }
    match std::fs::metadata(mnt) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            log::warn!(
                "{} is a dead mount (its daemon was killed); cleaning it up",
                mnt.display()
            );
            fusermount_unmount(mnt, true)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::new(
                exit::MOUNTPOINT,
                format!(
                    "mountpoint {} does not exist; create it with mkdir",
                    mnt.display()
                ),
            ))
        }
        Err(e) => {
            return Err(CliError::new(
                exit::MOUNTPOINT,
                format!("mountpoint {}: {e}", mnt.display()),
            ))
        }
        Ok(m) if !m.is_dir() => {
            return Err(CliError::new(
                exit::MOUNTPOINT,
                format!("mountpoint {} is not a directory", mnt.display()),
            ))
        }
        Ok(_) => {}
    }
    let mnt = std::fs::canonicalize(mnt).map_err(|e| {
        CliError::new(
            exit::MOUNTPOINT,
            format!("mountpoint {}: {e}", mnt.display()),
        )
    })?;
    if is_mounted(&mnt) {
        return Err(CliError::new(
            exit::MOUNTPOINT,
            format!(
                "{} is already a mountpoint; unmount it first or pick another directory",
                mnt.display()
            ),
        ));
    }
    let mut entries = std::fs::read_dir(&mnt).map_err(|e| {
        CliError::new(
            exit::MOUNTPOINT,
            format!("mountpoint {}: {e}", mnt.display()),
        )
    })?;
    if entries.next().is_some() {
        return Err(CliError::new(
            exit::MOUNTPOINT,
            format!(
                "mountpoint {} is not empty; mount on an empty directory",
                mnt.display()
            ),
        ));
    }
    Ok(mnt)
}

fn check_fuse_available() -> Result<(), CliError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(CliError::new(
            exit::NO_FUSE,
            "/dev/fuse does not exist: load the fuse module (modprobe fuse) or, in a container, pass the device in",
        ));
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").exists()))
        .unwrap_or(false);
    if !found {
        return Err(CliError::new(
            exit::NO_FUSE,
            "fusermount3 not found; install it with `apt-get install -y fuse3`",
        ));
    }
    Ok(())
}

/// The volume directory, checked and made absolute.
fn check_volume(voldir: &Path) -> Result<PathBuf, CliError> {
    if !voldir.is_dir() {
        return Err(CliError::new(
            exit::NOT_A_VOLUME,
            format!(
                "{} is not a directory holding a smlogfs volume",
                voldir.display()
            ),
        ));
    }
    let voldir = std::fs::canonicalize(voldir)
        .map_err(|e| CliError::new(exit::NOT_A_VOLUME, format!("{}: {e}", voldir.display())))?;
    if !raid_sim::volume_exists(&voldir) {
        return Err(CliError::new(
            exit::NOT_A_VOLUME,
            format!(
                "{} is not a smlogfs volume (no backing files); create one with `smlogfs mkfs`",
                voldir.display()
            ),
        ));
    }
    Ok(voldir)
}

/// The checks of a mount that change nothing: options, volume, FUSE, mountpoint. A
/// takeover runs them before it raises the epoch, so that a mistyped command fences nobody.
pub fn preflight(voldir: &Path, mnt: &Path, o: &MountOptions) -> Result<(), CliError> {
    let parsed = parse_options(&o.options)?;
    check_volume(voldir)?;
    check_fuse_available()?;
    check_fsync(&parsed, o.mirror.options()?.is_some())?;
    prepare_mountpoint(mnt)?;
    Ok(())
}

/// How long a takeover waits for the fenced old owner's daemon (if one still runs here) to
/// let go of the volume: it learns of the fence at its next heartbeat to the agent.
fn takeover_wait(mirror: Option<&crate::mirror::MirrorOptions>) -> Duration {
    let (heartbeat_ms, timeout_ms) =
        mirror.map_or((1000, 5000), |m| (m.heartbeat_ms, m.timeout_ms));
    Duration::from_millis(timeout_ms.max(2 * heartbeat_ms) + 1000)
}

fn acquire_lock(
    voldir: &Path,
    takeover: bool,
    mirror: Option<&crate::mirror::MirrorOptions>,
) -> Result<VolumeLock, CliError> {
    if !takeover {
        return VolumeLock::acquire(voldir);
    }
    VolumeLock::acquire_within(voldir, takeover_wait(mirror)).map_err(|e| {
        if e.code != exit::BUSY {
            return e;
        }
        CliError::new(
            exit::BUSY,
            format!(
                "{}. It is fenced (it can no longer write) but did not let go within {} ms; \
                 stop that daemon (kill its pid) and run the takeover again",
                e.msg,
                takeover_wait(mirror).as_millis()
            ),
        )
    })
}

pub fn mount(voldir: &Path, mnt: &Path, o: &MountOptions) -> Result<(), CliError> {
    let parsed = parse_options(&o.options)?;
    check_fsync(&parsed, o.mirror.options()?.is_some())?;
    let voldir = check_volume(voldir)?;
    if let Some(connection) = handed_connection()? {
        // Started by the supervisor: the mount exists; recover and serve it.
        let mirror = o.mirror.options()?;
        return run_daemon(&voldir, mnt, parsed, mirror, o.takeover, connection);
    }
    check_fuse_available()?;
    let mirror = o.mirror.options()?;
    // Refuse early and clearly if another node owns the volume, or a live daemon holds it.
    let node = mirror
        .as_ref()
        .map(|m| m.node.clone())
        .unwrap_or_else(|| super::node_name(o.mirror.node.as_deref()));
    super::failover::check_owner(&voldir, &node)?;
    drop(acquire_lock(&voldir, o.takeover, mirror.as_ref())?);
    let mnt = prepare_mountpoint(mnt)?;
    if o.foreground && std::env::var_os(supervisor::SUPERVISE_ENV).is_some() {
        match supervisor::resend_supported() {
            Ok(()) => return supervise(&voldir, &mnt, &parsed),
            Err(why) => log::warn!(
                "{why}: this mount is not supervised, a daemon crash ends it (run `smlogfs mount` again)"
            ),
        }
        run_daemon(&voldir, &mnt, parsed, mirror, o.takeover, Connection::Mount)
    } else if o.foreground {
        run_daemon(&voldir, &mnt, parsed, mirror, o.takeover, Connection::Mount)
    } else {
        spawn_background(&voldir, &mnt, o)
    }
}

/// Starts `smlogfs mount -f` in the background and returns once it reports readiness.
fn spawn_background(voldir: &Path, mnt: &Path, o: &MountOptions) -> Result<(), CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(exit::DAEMON, format!("cannot find own binary: {e}")))?;
    let log_path = voldir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| CliError::new(exit::IO, format!("cannot open {}: {e}", log_path.display())))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(exe);
    cmd.arg("mount").arg(voldir).arg(mnt).arg("-f");
    for opt in &o.options {
        cmd.arg("-o").arg(opt);
    }
    cmd.args(o.mirror.to_args());
    if o.takeover {
        cmd.arg("--takeover");
    }
    cmd.env(READY_ENV, "1")
        .env(supervisor::SUPERVISE_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .process_group(0);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,fuser=error");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::new(exit::DAEMON, format!("cannot start the daemon: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    if line.trim() == "ready" {
        relay_warnings(&log_path, log_start);
        return Ok(());
    }
    let status = child.wait().ok();
    let code = status.and_then(|s| s.code()).unwrap_or(exit::DAEMON);
    let msg = line
        .trim()
        .strip_prefix("error ")
        .unwrap_or(line.trim())
        .to_string();
    Err(CliError::new(
        if code == 0 { exit::DAEMON } else { code },
        if msg.is_empty() {
            format!(
                "the daemon exited before the mount was ready; see {}",
                log_path.display()
            )
        } else {
            msg
        },
    ))
}

/// Shows on our stderr the warnings and errors the daemon logged while it recovered and
/// mounted (a torn or cut-short ring, direct writes lost, an unprotected mirror...): the
/// user who ran `mount` must see them, not only whoever reads daemon.log later.
fn relay_warnings(log_path: &Path, from: u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log_path) else {
        return;
    };
    let mut text = String::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_string(&mut text).is_err() {
        return;
    }
    for line in text.lines() {
        let level = if line.contains(" WARN ") {
            "warning"
        } else if line.contains(" ERROR ") {
            "error"
        } else {
            continue;
        };
        let message = line.split_once("] ").map_or(line, |(_, m)| m);
        eprintln!("smlogfs: {level}: {message}");
    }
}

/// Reports to a waiting parent (background mode), or does nothing.
fn report(line: &str) {
    if std::env::var_os(READY_ENV).is_some() {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Where the daemon's FUSE connection comes from.
enum Connection {
    /// It mounts (unsupervised: `mount -f`, or a kernel without FUSE_NOTIFY_RESEND).
    Mount,
    /// The supervisor mounted and handed these descriptors over; `resumed` holds what the
    /// kernel offered at FUSE_INIT if an earlier daemon already answered it.
    Handed {
        fds: Vec<std::os::fd::OwnedFd>,
        resumed: Option<fuser::resume::InitRecord>,
    },
}

/// The descriptors a supervisor handed over (its environment variables), if any.
fn handed_connection() -> Result<Option<Connection>, CliError> {
    let Some(list) = std::env::var_os(supervisor::FDS_ENV) else {
        return Ok(None);
    };
    let bad = |what: String| {
        CliError::new(
            exit::USAGE,
            format!(
                "{}={}: {what}; it is set by the smlogfs supervisor only, unset it",
                supervisor::FDS_ENV,
                list.to_string_lossy()
            ),
        )
    };
    let mut fds = Vec::new();
    for n in list.to_string_lossy().split(',') {
        let raw = n
            .parse()
            .map_err(|_| bad(format!("{n:?} is not a descriptor number")))?;
        fds.push(fuser::resume::take_inherited_fd(raw).map_err(|e| bad(e.to_string()))?);
    }
    let resumed = match std::env::var(supervisor::INIT_ENV) {
        Ok(text) => Some(text.parse().map_err(|e: String| {
            CliError::new(
                exit::USAGE,
                format!(
                    "{}: {e}; it is set by the smlogfs supervisor only",
                    supervisor::INIT_ENV
                ),
            )
        })?),
        Err(_) => None,
    };
    Ok(Some(Connection::Handed { fds, resumed }))
}

/// The session's configuration: kernel mount options, threads, who may enter.
fn fuse_config(voldir: &Path, parsed: &Parsed) -> fuser::Config {
    let mut options = vec![
        fuser::MountOption::FSName(voldir.display().to_string()),
        fuser::MountOption::Subtype("smlogfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    options.extend(parsed.kernel.iter().cloned());
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.n_threads = Some(parsed.threads);
    config.clone_fd = parsed.threads > 1;
    // As root, let every user in (the kernel still checks permissions: default_permissions).
    if std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
    {
        config.acl = fuser::SessionACL::All;
    }
    config
}

/// Runs the mount's supervisor (see `crate::supervisor`) until the mount ends.
fn supervise(voldir: &Path, mnt: &Path, parsed: &Parsed) -> Result<(), CliError> {
    let config = fuse_config(voldir, parsed);
    // A daemon gets the supervisor's own arguments; a restart is a plain mount even after a
    // takeover (the epoch is raised, the local ring is the volume's again).
    let first_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let restart_args = first_args
        .iter()
        .filter(|a| a.as_os_str() != "--takeover")
        .cloned()
        .collect();
    let plan = supervisor::Plan {
        voldir: voldir.to_path_buf(),
        mnt: mnt.to_path_buf(),
        mount_options: config.mount_options.clone(),
        acl: config.acl,
        threads: parsed.threads,
        first_args,
        restart_args,
        ready_env: READY_ENV,
    };
    let result = supervisor::run(&plan, &report);
    if let Err(e) = &result {
        report(&format!("error {}", e.msg));
    }
    result
}

fn run_daemon(
    voldir: &Path,
    mnt: &Path,
    parsed: Parsed,
    mirror: Option<crate::mirror::MirrorOptions>,
    takeover: bool,
    connection: Connection,
) -> Result<(), CliError> {
    let result = serve(voldir, mnt, parsed, mirror, takeover, connection);

    if let Err(e) = &result {
        report(&format!("error {}", e.msg));
    }
    result
}

fn serve(
    voldir: &Path,
    mnt: &Path,
    parsed: Parsed,
    mirror: Option<crate::mirror::MirrorOptions>,
    takeover: bool,
    connection: Connection,
) -> Result<(), CliError> {
    // Before any thread starts (they inherit the mask): only `watch_signals` takes them.
    let stop_signals = block_stop_signals();
    let lock = match &connection {
        // A restarted daemon's predecessor is dead and reaped (its lock released), but give
        // a slow exit of its threads a moment.
        Connection::Handed {
            resumed: Some(_), ..
        } => VolumeLock::acquire_within(voldir, Duration::from_secs(5))?,
        _ => acquire_lock(voldir, takeover, mirror.as_ref())?,
    };
    let fs = Fs::open_volume(voldir, parsed.fs.clone(), &Progress::new, mirror, takeover)
        .map_err(open_error)?;
    let fs = Arc::new(fs);
    // Fenced (a peer took the volume over): let go of the volume so that the peer can mount
    // it; this mount stays up, read-only, until it is unmounted.
    let fenced_voldir = voldir.to_path_buf();
    fs.set_on_fenced(Box::new(move || {
        drop(lock);
        log::warn!(
            "released the volume lock of {}: the node that took it over may mount it; this mount answers EROFS to every change",
            fenced_voldir.display()
        );
    }));
    let config = fuse_config(voldir, &parsed);
    let adapter = FuseAdapter::new(fs.clone(), parsed.writeback_cache);
    let resumed = matches!(
        connection,
        Connection::Handed {
            resumed: Some(_),
            ..
        }
    );
    let session = match connection {
        Connection::Mount => fuser::Session::new(adapter, mnt, &config),
        Connection::Handed { fds, resumed: None } => {
            fuser::Session::from_fds(adapter, fds, config.acl, config.clone())
        }
        Connection::Handed {
            fds,
            resumed: Some(record),
        } => fuser::Session::from_fds_resumed(adapter, fds, config.acl, config.clone(), record),
    }
    .map_err(|e| {
        CliError::new(
            exit::DAEMON,
            format!("mounting {} failed: {e}", mnt.display()),
        )
    })?;
    if resumed {
        // What the dead daemon read and never answered is queued again (unique | 1 << 63).
        if let Err(e) = session.notify_resend() {
            log::warn!("FUSE_NOTIFY_RESEND failed ({e}): calls in flight at the crash may fail");
        }
    } else if let Some(record) = session.init_record() {
        if std::env::var_os(supervisor::FDS_ENV).is_some() {
            supervisor::report_line(&format!("init {record}"));
        }
    }
    let pid_path = voldir.join("daemon.pid");
    std::fs::write(
        voldir.join("daemon.mountpoint"),
        format!("{}\n", mnt.display()),
    )
    .and_then(|()| std::fs::write(&pid_path, format!("{}\n", std::process::id())))
    .map_err(|e| {
        CliError::new(
            exit::IO,
            format!("cannot write {}: {e}", pid_path.display()),
        )
    })?;
    let checkpointer = {
        let fs = fs.clone();
        std::thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || fs.run_checkpointer())
            .map_err(|e| {
                CliError::new(exit::DAEMON, format!("cannot start the checkpointer: {e}"))
            })?
    };
    if fs.recovery.replayed > 0 {
        fs.request_checkpoint();
    }
    // Answers `smlogfs status`; dropping it at return removes VOLDIR/control.sock.
    let _control = crate::control::start(fs.clone(), mnt)
        .map_err(|e| {
            log::warn!("control socket not started ({e}); `smlogfs status` reads the files")
        })
        .ok();
    log::info!(
        "mounted {} at {} (pid {})",
        voldir.display(),
        mnt.display(),
        std::process::id()
    );
    report("ready");
    // A restarted daemon serves a connection whose readahead is already set.
    if parsed.read_ahead_kb > 0 && !resumed {
        set_read_ahead(mnt, parsed.read_ahead_kb);
    }
    if let Some(set) = stop_signals {
        watch_signals(set, fs.clone(), mnt.to_path_buf());
    }
    let run = session.run();
    fs.stop_checkpointer();
    let _ = checkpointer.join();
    let shut = fs.shutdown();
    // After a fence the node that took the volume over may have written its own pid here.
    let ours = std::fs::read_to_string(&pid_path)
        .is_ok_and(|t| t.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(&pid_path);
    }
    if let Err(e) = run {
        return Err(CliError::new(
            exit::DAEMON,
            format!("the FUSE session ended with an error: {e}"),
        ));
    }
    shut.map_err(|e| {
        CliError::new(
            exit::IO,
            format!("final checkpoint failed: {e}; the ring still holds everything"),
        )
    })?;
    log::info!(
        "unmounted {} cleanly (final checkpoint written)",
        mnt.display()
    );
    Ok(())
}

/// The signals that ask for an emergency flush: SIGPWR (a UPS says power is failing) and
/// SIGTERM (systemd stopping the service; the mount then ends). Blocked in every thread, so
/// that one thread takes them with `sigwait` and may do anything (a handler could not).
fn stop_signal_set() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGPWR);
    set
}

/// Blocks the stop signals in this thread (and the threads it starts from now on).
pub(crate) fn block_stop_signals() -> Option<nix::sys::signal::SigSet> {
    let set = stop_signal_set();
    match set.thread_block() {
        Ok(()) => Some(set),
        Err(e) => {
            log::warn!("cannot block SIGTERM/SIGPWR ({e}): they end the daemon without a flush");
            None
        }
    }
}

/// Takes SIGPWR and SIGTERM for the daemon: both flush the ring, the volume and the agent
/// at once and log how long it took; SIGTERM then unmounts, which ends the session and with
/// it the daemon (final checkpoint, exit 0, and the supervisor follows).
fn watch_signals(set: nix::sys::signal::SigSet, fs: Arc<Fs>, mnt: PathBuf) {
    use nix::sys::signal::Signal;
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stopping = false;
            loop {
                let sig = match set.wait() {
                    Ok(sig) => sig,
                    Err(e) => {
                        log::error!(
                            "waiting for SIGTERM/SIGPWR failed ({e}); they are ignored from now on"
                        );
                        return;
                    }
                };
                let _ = crate::control::emergency_flush(&fs, sig.as_str());
                if sig != Signal::SIGTERM || stopping {
                    continue;
                }
                stopping = true;
                log::warn!(
                    "SIGTERM: unmounting {} (final checkpoint follows)",
                    mnt.display()
                );
                if let Err(e) = fusermount_unmount(&mnt, false) {
                    // Open files keep it busy: detach it now; the session ends when they close.
                    log::warn!("{}; detaching the mount instead (lazy unmount)", e.msg);
                    if let Err(e) = fusermount_unmount(&mnt, true) {
                        log::error!("SIGTERM: cannot unmount: {}", e.msg);
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the signal thread ({e}): SIGTERM/SIGPWR are ignored");
    }
}

/// `smlogfs umount MOUNTPOINT`: unmounts and waits for the daemon's final checkpoint.
pub fn umount(mnt: &Path) -> Result<(), CliError> {
    umount_volume(mnt).map(|_| ())
}

/// Unmounts and returns the volume directory that was mounted.
pub fn umount_volume(mnt: &Path) -> Result<PathBuf, CliError> {
    let abs = std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    let Some(voldir) = super::mounted_volume(&abs) else {
        return Err(CliError::new(
            exit::MOUNTPOINT,
            format!("{} is not a mounted smlogfs file system", mnt.display()),
        ));
    };
    let daemon = live_daemon(&voldir);
    let supervisor = std::fs::read_to_string(voldir.join("supervisor.pid"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    fusermount_unmount(&abs, false)?;
    if let Some((pid, _)) = daemon {
        let deadline = Instant::now() + Duration::from_secs(120);
        while process_alive(pid) {
            if Instant::now() > deadline {
                return Err(CliError::new(
                    exit::DAEMON,
                    format!("daemon pid {pid} did not exit within 120 s after unmount"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The supervisor follows its daemon out at once.
    if let Some(pid) = supervisor {
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(voldir)
}

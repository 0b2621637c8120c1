//! The hand-offs between the processes of a mount: `smlogfs mount` starts `mount -f` in
//! the background and waits for its `ready` ([`spawn_background`]); a supervised `mount -f`
//! runs the supervisor ([`supervise`]); a daemon the supervisor started takes the FUSE
//! descriptors it was handed ([`handed_connection`]); either reports back with [`report`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::options::{fuse_config, Parsed};
use super::{exit, CliError, MountOptions};
use crate::supervisor;

/// Environment variable through which a background daemon reports readiness to its parent.
const READY_ENV: &str = "SMLOGFS_REPORT_READY";

/// Starts `smlogfs mount -f` in the background and returns once it reports readiness.
pub(super) fn spawn_background(
    voldir: &Path,
    mnt: &Path,
    o: &MountOptions,
) -> Result<(), CliError> {
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
pub(super) fn report(line: &str) {
    if std::env::var_os(READY_ENV).is_some() {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Where the daemon's FUSE connection comes from.
pub(super) enum Connection {
    /// It mounts (unsupervised: `mount -f`, or a kernel without FUSE_NOTIFY_RESEND).
    Mount,
    /// The supervisor mounted and handed these descriptors over; `resumed` holds what the
    /// kernel offered at FUSE_INIT if an earlier daemon already answered it.
    Handed {
        fds: Vec<std::os::fd::OwnedFd>,
        resumed: Option<fuser::resume::InitRecord>,
    },
}

impl Connection {
    /// True for a connection an earlier daemon already served (this one is a restart).
    pub(super) fn is_resumed(&self) -> bool {
        matches!(
            self,
            Connection::Handed {
                resumed: Some(_),
                ..
            }
        )
    }
}

/// The descriptors a supervisor handed over (its environment variables), if any.
pub(super) fn handed_connection() -> Result<Option<Connection>, CliError> {
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

/// Runs the mount's supervisor (see `crate::supervisor`) until the mount ends.
pub(super) fn supervise(voldir: &Path, mnt: &Path, parsed: &Parsed) -> Result<(), CliError> {
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

//! `smlogfs mount` and `smlogfs umount`.
//!
//! A background mount is three processes of this binary: `smlogfs mount` checks what it
//! can, then starts `mount -f` and waits for it to report `ready` ([`handoff`]); that one is
//! the supervisor (`crate::supervisor`): it mounts and starts the daemon on descriptors it
//! hands over; the daemon recovers the volume and serves ([`daemon`]). `mount -f` alone is
//! the daemon, mounting for itself.
//!
//! - `options`: the -o list and the FUSE session's configuration;
//! - `mountpoint`: the checks of volume, FUSE and mount point (cleans up a dead mount);
//! - `handoff`: the background start, readiness reports, the supervisor's plan and the
//!   descriptors it hands to a daemon;
//! - `daemon`: recovery, the FUSE session, the stop signals;
//! - `umount`: `smlogfs umount` and the fusermount3 calls.

mod daemon;
mod handoff;
mod mountpoint;
mod options;
mod umount;

use std::path::Path;
use std::time::Duration;

use super::{exit, CliError, VolumeLock};
use crate::supervisor;
use daemon::run_daemon;
use handoff::{handed_connection, spawn_background, supervise, Connection};
use mountpoint::{check_fuse_available, check_volume, prepare_mountpoint};
use options::{check_fsync, parse_options};

pub(crate) use daemon::block_stop_signals;
pub use umount::{umount, umount_volume};

#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    pub foreground: bool,
    /// The -o list, comma-separated.
    pub options: Vec<String>,
    pub mirror: crate::cmd::failover::MirrorArgs,
    /// Recover from the mirror agent's copy only (the peer taking a volume over).
    pub takeover: bool,
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
        .unwrap_or_else(|| crate::cmd::node_name(o.mirror.node.as_deref()));
    crate::cmd::failover::check_owner(&voldir, &node)?;
    if !o.takeover {
        // `kill -9` then `smlogfs mount` at once: the killed one may still hold the lock.
        crate::cmd::wait_for_killed_owners(&voldir)?;
    }
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

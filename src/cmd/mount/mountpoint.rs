//! The checks before a mount that change nothing but a dead mount: the volume directory,
//! FUSE on this machine, and the mount point (which must exist, be an empty directory and
//! not be mounted; a dead mount left by a killed daemon is cleaned up).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::umount::fusermount_unmount;
use super::{exit, CliError};

fn is_mounted(mnt: &Path) -> bool {
    smlog_cli::mounts::MountTable::read().is_ok_and(|t| t.find(mnt).is_some())
}

/// How long a mount at the mount point may take to answer before it counts as live but
/// not serving yet (a mount still starting: until its daemon answers FUSE_INIT, every call
/// there waits; or a hung daemon).
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// Opens the mount point's directory in a thread and waits up to [`PROBE_WAIT`] for the
/// answer: None if there is none yet. The thread stays blocked in the kernel until the
/// mount answers or dies; the process does not wait for it.
fn probe(mnt: &Path) -> Option<std::io::Result<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = mnt.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || {
            let _ = tx.send(std::fs::read_dir(&path).map(drop));
        });
    if let Err(e) = spawned {
        return Some(Err(e));
    }
    rx.recv_timeout(PROBE_WAIT).ok()
}

/// Checks the mountpoint; cleans up a dead mount left by a killed daemon.
pub(super) fn prepare_mountpoint(mnt: &Path) -> Result<PathBuf, CliError> {
    // A dead FUSE mount may still answer stat from cached attributes; opening it does not.
    // A mount still starting does not answer at all yet: it is live, and not ours to clean.
    let abs = std::path::absolute(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    if is_mounted(&abs) {
        match probe(&abs) {
            None => {
                return Err(CliError::new(
                    exit::MOUNTPOINT,
                    format!(
                        "{} is already a mountpoint whose file system has not answered within                          {} s (a mount still starting, or a hung daemon); wait for it, unmount                          it, or pick another directory",
                        abs.display(),
                        PROBE_WAIT.as_secs()
                    ),
                ))
            }
            Some(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                log::warn!(
                    "{} is a dead mount (its daemon was killed); cleaning it up",
                    abs.display()
                );
                fusermount_unmount(&abs, true)?;
            }
            Some(_) => {}
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

pub(super) fn check_fuse_available() -> Result<(), CliError> {
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
pub(super) fn check_volume(voldir: &Path) -> Result<PathBuf, CliError> {
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

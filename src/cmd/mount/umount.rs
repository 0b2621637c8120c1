//! `smlogfs umount` (unmount, then wait for the daemon's final checkpoint and for the
//! supervisor to follow it out) and the fusermount3 calls every unmount goes through.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{exit, CliError};
use crate::cmd::{live_daemon, process_alive};

pub(super) fn fusermount_unmount(mnt: &Path, lazy: bool) -> Result<(), CliError> {
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

/// `smlogfs umount MOUNTPOINT`: unmounts and waits for the daemon's final checkpoint.
pub fn umount(mnt: &Path) -> Result<(), CliError> {
    umount_volume(mnt).map(|_| ())
}

/// Unmounts and returns the volume directory that was mounted.
pub fn umount_volume(mnt: &Path) -> Result<PathBuf, CliError> {
    let (abs, voldir) = crate::cmd::mounted_at(mnt)?;
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

//! `smlogfs restart MOUNTPOINT`: a planned hand-over of a mount to a new daemon (an upgraded
//! binary, a daemon that should start afresh) without unmounting.
//!
//! The serving daemon is asked through its control socket (`crate::control`, request
//! `restart`): it checkpoints and exits with `supervisor::RESTART_EXIT_CODE`; its supervisor
//! starts the binary at its own path on the same FUSE connection. Applications see a pause:
//! their calls wait in the kernel meanwhile. This command returns once the new daemon
//! serves, and says who serves now and how long requests waited.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{exit, process_alive, CliError};
use crate::control::{self, ClientError};
use crate::supervisor::State;

/// How long the new daemon may take to serve: it recovers what the ring holds after the
/// checkpoint just taken (next to nothing), or, if that checkpoint failed, the whole ring.
const SERVE_WAIT: Duration = Duration::from_secs(120);

/// What a successful restart reports.
pub struct Restarted {
    pub old_pid: u32,
    pub new_pid: u32,
    pub pause_ms: Option<u64>,
    pub restarts: u64,
    pub checkpoint: String,
}

pub fn restart(mnt: &Path) -> Result<Restarted, CliError> {
    let (_, voldir) = super::mounted_at(mnt)?;
    let state = State::read(&voldir)
        .filter(|s| process_alive(s.supervisor_pid))
        .ok_or_else(|| {
            CliError::new(
                exit::DAEMON,
                format!(
                    "{} has no running supervisor (mounted with -f, or on a kernel without \
                     FUSE_NOTIFY_RESEND): a restart would end the mount; run `smlogfs umount {0}` \
                     and `smlogfs mount {} {0}` instead",
                    mnt.display(),
                    voldir.display()
                ),
            )
        })?;
    let answer = control::request(&voldir, "restart").map_err(|e| match e {
        ClientError::NoDaemon(e) => CliError::new(
            exit::DAEMON,
            format!(
                "no daemon answers on {} ({e}): it may be restarting already; see `smlogfs \
                 status {}`",
                voldir.join(control::SOCKET_FILE).display(),
                mnt.display()
            ),
        ),
        ClientError::PermissionDenied(path) => super::permission_error(&path),
        ClientError::BadAnswer(why) => CliError::new(exit::DAEMON, why),
    })?;
    let old_pid = answer
        .get("daemon_pid")
        .and_then(|p| p.as_u64())
        .map(|p| p as u32)
        .ok_or_else(|| {
            CliError::new(
                exit::DAEMON,
                format!("the daemon accepted the restart but did not say its pid: {answer}"),
            )
        })?;
    let checkpoint = answer
        .get("checkpoint")
        .and_then(|c| c.as_str())
        .unwrap_or("-")
        .to_string();
    let deadline = Instant::now() + SERVE_WAIT;
    loop {
        if let Some(now) = State::read(&voldir) {
            let new = now.daemon_pid.filter(|&p| p != old_pid);
            if let (true, Some(new_pid)) = (now.restarts > state.restarts, new) {
                // The supervisor writes its state once the new daemon reports ready.
                return Ok(Restarted {
                    old_pid,
                    new_pid,
                    pause_ms: now.last_pause_ms,
                    restarts: now.restarts,
                    checkpoint,
                });
            }
        }
        if !process_alive(state.supervisor_pid) {
            return Err(CliError::new(
                exit::DAEMON,
                format!(
                    "supervisor pid {} ended during the restart; see {} and run `smlogfs mount {} \
                     {}` to recover",
                    state.supervisor_pid,
                    voldir.join("daemon.log").display(),
                    voldir.display(),
                    mnt.display()
                ),
            ));
        }
        if Instant::now() >= deadline {
            return Err(CliError::new(
                exit::DAEMON,
                format!(
                    "daemon pid {old_pid} handed over, but no new daemon served within {} s; \
                     see {}",
                    SERVE_WAIT.as_secs(),
                    voldir.join("daemon.log").display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

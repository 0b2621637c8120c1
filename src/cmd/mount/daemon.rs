//! The daemon: recovers the volume, serves the FUSE session until it ends (unmount), then
//! writes the final checkpoint. SIGTERM and SIGPWR are taken by one thread that flushes
//! everything at once (SIGTERM then unmounts).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::handoff::{report, Connection};
use super::options::{fuse_config, Parsed};
use super::umount::fusermount_unmount;
use super::{acquire_lock, exit, CliError, VolumeLock};
use crate::cmd::open_error;
use crate::core::Fs;
use crate::fuse_adapter::FuseAdapter;
use crate::progress::Progress;
use crate::supervisor;

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

pub(super) fn run_daemon(
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
    mut parsed: Parsed,
    mirror: Option<crate::mirror::MirrorOptions>,
    takeover: bool,
    connection: Connection,
) -> Result<(), CliError> {
    // Before any thread starts (they inherit the mask): only `watch_signals` takes them.
    let stop_signals = block_stop_signals();
    let resumed = connection.is_resumed();
    let lock = if resumed {
        // A restarted daemon's predecessor is dead and reaped (its lock released), but give
        // a slow exit of its threads a moment.
        VolumeLock::acquire_within(voldir, Duration::from_secs(5))?
    } else {
        acquire_lock(voldir, takeover, mirror.as_ref())?
    };
    // A restart on a resumed connection answers resent requests from the log and keeps
    // unlinked inodes the kernel may hold open.
    parsed.fs.resumed_connection = resumed;
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

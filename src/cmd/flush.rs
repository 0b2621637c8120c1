//! `smlogfs flush MOUNTPOINT`: the emergency flush of a mounted volume, for a UPS daemon's
//! power-fail hook (contrib/ups-flush.sh) or by hand before a risky moment. The daemon
//! msyncs its ring, flushes its volume and has the mirror agent sync, all at once (the
//! control socket's `flush` request, `Fs::flush_everything`); this prints what it did and
//! how long it took.
//!
//! Exit 0: everything acknowledged before the flush is on this host's disk, and on the
//! agent's when there is one. Exit 12 (`exit::MIRROR`): on this host's disk only.

use std::path::Path;

use serde_json::Value;

use super::{exit, CliError};
use crate::control::{self, ClientError};

pub fn flush(mnt: &Path) -> Result<i32, CliError> {
    let abs = std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    let Some(voldir) = super::mounted_volume(&abs) else {
        return Err(CliError::new(
            exit::MOUNTPOINT,
            format!(
                "{} is not a mounted smlogfs file system; give the mountpoint",
                mnt.display()
            ),
        ));
    };
    let report = control::request(&voldir, "flush").map_err(|e| match e {
        ClientError::NoDaemon(e) => CliError::new(
            exit::DAEMON,
            format!(
                "no daemon answers for {} ({e}); is it mounted and running?",
                voldir.display()
            ),
        ),
        ClientError::PermissionDenied(p) => CliError::new(
            exit::PERMISSION,
            format!(
                "{}: permission denied; run as the daemon's user",
                p.display()
            ),
        ),
        ClientError::BadAnswer(why) => CliError::new(exit::IO, why),
    })?;
    let num = |k: &str| report.get(k).and_then(Value::as_u64);
    let elapsed = report
        .get("elapsed_ms")
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN);
    let flushed = num("flushed_seq").unwrap_or(0);
    let mirror_error = report.get("mirror_error").and_then(Value::as_str);
    match num("mirror_durable_seq") {
        Some(d) => println!(
            "flushed {} in {elapsed:.1} ms: ring through seq {flushed}, mirror agent's disk through seq {d}",
            mnt.display()
        ),
        None => println!(
            "flushed {} in {elapsed:.1} ms: ring through seq {flushed}",
            mnt.display()
        ),
    }
    if let Some(why) = mirror_error {
        eprintln!("smlogfs: warning: the mirror agent's disk is not up to date: {why}");
        return Ok(exit::MIRROR);
    }
    Ok(exit::OK)
}

//! The control socket of a running daemon: `VOLDIR/control.sock`, a Unix domain socket that
//! only its owner may use (mode 0600), answered by one thread of the daemon.
//!
//! The protocol is one request line and one response line, both JSON, after which the server
//! closes the connection:
//!
//! ```text
//! → {"request":"status"}
//! ← {"ok":true,"status":{ …the document `smlogfs status --json` prints… }}
//! → {"request":"flush"}
//! ← {"ok":true,"flush":{"flushed_seq":N,"mirror_durable_seq":M|null,"mirror_error":…,"elapsed_ms":T}}
//! ← {"ok":false,"error":"unknown request \"x\" (known: status, flush)"}
//! ```
//!
//! `flush` is the emergency flush (`smlogfs flush`, for a UPS hook): see
//! `Fs::flush_everything`.
//!
//! The status document is described in docs/operations.md ("status --json"); its fields
//! only ever get added, never renamed (`schema` is bumped if one has to change meaning).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::core::Fs;

/// The socket's name inside the volume directory.
pub const SOCKET_FILE: &str = "control.sock";
/// Version of the status document.
pub const SCHEMA: u64 = 1;
/// Longest request line the server reads.
const MAX_REQUEST_BYTES: u64 = 4096;
/// Longest response line the client reads.
const MAX_RESPONSE_BYTES: u64 = 4 << 20;
/// A client that sends nothing for this long is dropped (the server answers one at a time).
const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(2);
const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// `sun_path` holds 108 bytes; longer paths are reached through /proc/self/fd.
const MAX_SOCKET_PATH_BYTES: usize = 100;

/// The listening socket; dropping it removes `VOLDIR/control.sock` (if it is still ours).
pub struct ControlServer {
    path: PathBuf,
    ino: u64,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| m.ino() == self.ino)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `VOLDIR/control.sock` and answers status requests from a thread until the process
/// exits. The caller holds the volume lock, so a socket file found there is stale.
pub fn start(fs: Arc<Fs>, mountpoint: &Path) -> std::io::Result<ControlServer> {
    let voldir = fs.voldir().to_path_buf();
    let path = voldir.join(SOCKET_FILE);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; remove it", path.display()),
            ))
        }
        Err(_) => {}
    }
    // Connecting needs write permission on the socket: with any usual umask only the owner
    // has it from the start, and 0600 takes the rest away before anyone is answered.
    let listener = with_short_path(&path, |p| UnixListener::bind(p))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let ino = std::fs::symlink_metadata(&path)?.ino();
    let mountpoint = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = answer(stream, &fs, &mountpoint) {
                            log::debug!("control socket: a client went away: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("control socket: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    log::info!("control socket at {} (owner only)", path.display());
    Ok(ControlServer { path, ino })
}

fn answer(stream: UnixStream, fs: &Fs, mountpoint: &Path) -> std::io::Result<()> {
    stream.set_read_timeout(Some(SERVER_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(SERVER_IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST_BYTES)).read_line(&mut line)?;
    let response = match parse_request(&line) {
        Ok(name) if name == "status" => json!({"ok": true, "status": live_status(fs, mountpoint)}),
        Ok(name) if name == "flush" => match emergency_flush(fs, "smlogfs flush") {
            Ok(report) => json!({"ok": true, "flush": report}),
            Err(e) => json!({"ok": false, "error": e}),
        },
        Ok(name) => {
            json!({"ok": false, "error": format!("unknown request {name:?} (known: status, flush)")})
        }
        Err(e) => json!({"ok": false, "error": e}),
    };
    let mut out = serde_json::to_string(&response).expect("a JSON value serializes");
    out.push('\n');
    (&stream).write_all(out.as_bytes())
}

/// Runs the emergency flush for `why` (the request or signal) and logs what it did.
pub fn emergency_flush(fs: &Fs, why: &str) -> Result<crate::core::FlushReport, String> {
    match fs.flush_everything() {
        Ok(r) => {
            log::warn!(
                "emergency flush ({why}) in {:.1} ms: ring through seq {}, mirror agent's disk through {}{}",
                r.elapsed_ms,
                r.flushed_seq,
                r.mirror_durable_seq
                    .map_or_else(|| "-".to_string(), |s| format!("seq {s}")),
                r.mirror_error
                    .as_ref()
                    .map_or_else(String::new, |e| format!(" ({e})"))
            );
            Ok(r)
        }
        Err(e) => {
            let msg = format!(
                "the emergency flush failed (errno {}); see the daemon's log",
                e.0
            );
            log::error!("emergency flush ({why}): {msg}");
            Err(msg)
        }
    }
}

/// `{"request":"NAME"}` or a bare `NAME`.
fn parse_request(line: &str) -> Result<String, String> {
    let line = line.trim();
    if line.starts_with('{') {
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("the request is not JSON: {e}"))?;
        v.get("request")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| "the request has no \"request\" field".to_string())
    } else if line.is_empty() {
        Err("empty request (send {\"request\":\"status\"})".into())
    } else {
        Ok(line.to_string())
    }
}

/// The status document of a running daemon.
pub fn live_status(fs: &Fs, mountpoint: &Path) -> Value {
    let mut doc = header("live", fs.voldir());
    doc.insert("mountpoint".into(), json!(mountpoint.display().to_string()));
    doc.insert("daemon_pid".into(), json!(std::process::id()));
    doc.insert("mirror".into(), Value::Null);
    if let Ok(Value::Object(fields)) = serde_json::to_value(fs.status()) {
        // The core's own fields win: a `mirror` object there replaces the null above.
        doc.extend(fields);
    }
    doc.insert("raid".into(), raid_status(fs.voldir()));
    Value::Object(doc)
}

/// The fields every status document starts with.
pub fn header(source: &str, voldir: &Path) -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert("schema".into(), json!(SCHEMA));
    doc.insert("source".into(), json!(source));
    doc.insert("voldir".into(), json!(voldir.display().to_string()));
    doc
}

/// The RAID-5 members as found in their files (null for a single-file volume).
pub fn raid_status(voldir: &Path) -> Value {
    let i = match raid_sim::inspect(voldir) {
        Ok(i) => i,
        Err(raid_sim::VolumeError::NotAVolume { .. }) => return Value::Null,
        Err(e) if !raid_sim::volume_exists(voldir) => {
            log::debug!("no RAID in {}: {e}", voldir.display());
            return Value::Null;
        }
        Err(e) => return json!({"error": e.to_string()}),
    };
    let g = i.geometry;
    let members: Vec<Value> = i
        .members
        .iter()
        .map(|m| {
            json!({
                "index": m.index,
                "path": m.path.display().to_string(),
                "state": m.state,
                "problem": m.problem,
            })
        })
        .collect();
    let rebuild = i.rebuild.map(|(member, next)| {
        json!({
            "member": member,
            "done_stripes": next,
            "stripes": g.stripes,
            "percent": percent(next, g.stripes),
        })
    });
    let scrub = raid_sim::scrub_progress(voldir).map(|(done, total)| {
        json!({"done_stripes": done, "stripes": total, "percent": percent(done, total)})
    });
    json!({
        "disks": g.disks,
        "chunk_bytes": g.chunk_bytes,
        "stripes": g.stripes,
        "degraded": i.degraded(),
        "members": members,
        "spares": i.spares.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "rebuild": rebuild,
        "scrub": scrub,
    })
}

fn percent(done: u64, total: u64) -> f64 {
    (done as f64 * 1000.0 / total.max(1) as f64).round() / 10.0
}

/// Why asking the daemon failed.
#[derive(Debug)]
pub enum ClientError {
    /// No socket, or nobody listening on it (no daemon, or it was killed).
    NoDaemon(std::io::Error),
    /// The socket belongs to another user.
    PermissionDenied(PathBuf),
    /// The daemon answered something else than a status, or too slowly.
    BadAnswer(String),
}

/// Sends one request to the daemon of `voldir` and returns its `status` (or other) result.
pub fn request(voldir: &Path, name: &str) -> Result<Value, ClientError> {
    let path = voldir.join(SOCKET_FILE);
    let stream = match with_short_path(&path, |p| UnixStream::connect(p)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ClientError::PermissionDenied(path))
        }
        Err(e) => return Err(ClientError::NoDaemon(e)),
    };
    let bad = |e: std::io::Error| ClientError::BadAnswer(format!("{}: {e}", path.display()));
    stream
        .set_read_timeout(Some(CLIENT_IO_TIMEOUT))
        .map_err(bad)?;
    stream
        .set_write_timeout(Some(CLIENT_IO_TIMEOUT))
        .map_err(bad)?;
    let req = format!("{}\n", json!({ "request": name }));
    (&stream).write_all(req.as_bytes()).map_err(bad)?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_RESPONSE_BYTES))
        .read_line(&mut line)
        .map_err(bad)?;
    let v: Value = serde_json::from_str(line.trim()).map_err(|e| {
        ClientError::BadAnswer(format!("{}: the answer is not JSON: {e}", path.display()))
    })?;
    if v.get("ok") != Some(&Value::Bool(true)) {
        let why = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        return Err(ClientError::BadAnswer(format!(
            "{}: the daemon refused {name:?}: {why}",
            path.display()
        )));
    }
    Ok(v.get(name).cloned().unwrap_or(Value::Null))
}

/// Runs `f` on `path`, or on `/proc/self/fd/N/NAME` when `path` is too long for `sun_path`.
fn with_short_path<T>(
    path: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() <= MAX_SOCKET_PATH_BYTES {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    let dir = std::fs::File::open(dir)?;
    use std::os::fd::AsRawFd;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    f(&short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_json_or_bare_words() {
        assert_eq!(
            parse_request("{\"request\":\"status\"}\n"),
            Ok("status".into())
        );
        assert_eq!(parse_request("status\n"), Ok("status".into()));
        assert!(parse_request("").is_err());
        assert!(parse_request("{\"x\":1}")
            .unwrap_err()
            .contains("no \"request\""));
        assert!(parse_request("{garbage").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn percentages_round_to_one_decimal() {
        assert_eq!(percent(1, 3), 33.3);
        assert_eq!(percent(0, 0), 0.0);
        assert_eq!(percent(5, 5), 100.0);
    }
}

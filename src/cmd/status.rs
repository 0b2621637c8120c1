//! `smlogfs status MOUNTPOINT|VOLDIR [--json] [--watch]`: the state of a volume, live from
//! its daemon's control socket, or offline from its files when no daemon runs.
//!
//! Both sources produce the same document (`crate::control`); offline, the fields only a
//! running daemon knows (ring flushes, checkpoint age, counts since mount) are null.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::{exit, live_daemon, open_error, CliError};
use crate::control::{self, ClientError};
use crate::core::recovery::{plan, Action, LastState, OpState};
use crate::core::ring_path_of;
use crate::core::superblock::Superblock;
use crate::statelog::{format::HEADER_AREA_BYTES, ScanEnd, StateLog};

#[derive(Clone, Debug)]
pub struct StatusOptions {
    pub json: bool,
    pub watch: bool,
    pub interval: Duration,
    /// With `watch`: stop after this many refreshes.
    pub count: Option<u64>,
}

pub fn status(target: &Path, o: &StatusOptions) -> Result<i32, CliError> {
    let (voldir, mountpoint) = resolve(target)?;
    let mut shown = 0u64;
    let terminal = std::io::stdout().is_terminal();
    loop {
        let doc = collect(&voldir, mountpoint.as_deref())?;
        let code = doc
            .get("exit_code")
            .and_then(Value::as_i64)
            .map_or(exit::OK, |c| c as i32);
        let text = if o.json {
            serde_json::to_string(&doc).expect("a JSON value serializes")
        } else {
            render(&doc)
        };
        let mut out = std::io::stdout().lock();
        if o.watch && terminal && !o.json {
            // Home, clear screen: redraw in place like watch(1).
            let _ = write!(out, "\x1b[H\x1b[2J");
        } else if o.watch && shown > 0 && !o.json {
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "{}", text.trim_end());
        let _ = out.flush();
        drop(out);
        shown += 1;
        if !o.watch || o.count.is_some_and(|n| shown >= n) {
            return Ok(code);
        }
        std::thread::sleep(o.interval);
    }
}

/// The volume directory behind `target` (a volume directory or a smlogfs mountpoint), and
/// the mountpoint when known.
fn resolve(target: &Path) -> Result<(PathBuf, Option<PathBuf>), CliError> {
    if target.is_dir() && raid_sim::volume_exists(target) {
        let voldir = std::fs::canonicalize(target)
            .map_err(|e| CliError::new(exit::NOT_A_VOLUME, format!("{}: {e}", target.display())))?;
        let mnt = live_daemon(&voldir)
            .map(|(_, m)| PathBuf::from(m))
            .filter(|m| !m.as_os_str().is_empty());
        return Ok((voldir, mnt));
    }
    // A mountpoint: canonical if it answers, else as given (a dead mount answers ENOTCONN).
    let abs = std::fs::canonicalize(target)
        .or_else(|_| std::path::absolute(target))
        .unwrap_or_else(|_| target.to_path_buf());
    if let Some(source) = super::mounted_volume(&abs) {
        return Ok((source, Some(abs)));
    }
    let what = match std::fs::metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
        Ok(m) if m.is_dir() => "is neither a smlogfs volume directory nor a smlogfs mountpoint",
        _ => "is not a directory",
    };
    Err(CliError::new(
        exit::NOT_A_VOLUME,
        format!(
            "{} {what}; give the volume directory (made by `smlogfs mkfs`) or where it is mounted",
            target.display()
        ),
    ))
}

/// Asks the daemon; falls back to the files when none answers.
fn collect(voldir: &Path, mountpoint: Option<&Path>) -> Result<Value, CliError> {
    match control::request(voldir, "status") {
        Ok(doc) => Ok(doc),
        Err(ClientError::PermissionDenied(path)) => Err(CliError::new(
            exit::PERMISSION,
            format!(
                "permission denied on {} (owner only): run `smlogfs status` as the user who \
                 mounted the volume (usually root)",
                path.display()
            ),
        )),
        Err(ClientError::BadAnswer(why)) => Err(CliError::new(
            exit::DAEMON,
            format!("the daemon's control socket answered badly: {why}"),
        )),
        Err(ClientError::NoDaemon(_)) => {
            let mut doc = offline(voldir)?;
            if let Some((pid, mnt)) = live_daemon(voldir) {
                doc.insert("daemon_pid".into(), json!(pid));
                doc.insert("mountpoint".into(), json!(mnt));
                doc.insert(
                    "note".into(),
                    json!(format!(
                        "daemon pid {pid} runs but does not answer on {}: figures are from the files",
                        voldir.join(control::SOCKET_FILE).display()
                    )),
                );
            } else if let Some(m) = mountpoint {
                doc.insert("mountpoint".into(), json!(m.display().to_string()));
                doc.insert(
                    "note".into(),
                    json!(format!(
                        "no daemon serves {}: a dead mount? run `smlogfs mount {} {}` to recover",
                        m.display(),
                        voldir.display(),
                        m.display()
                    )),
                );
            }
            Ok(Value::Object(doc))
        }
    }
}

/// The status document from the files alone: superblock, ring scan, RAID member files.
fn offline(voldir: &Path) -> Result<serde_json::Map<String, Value>, CliError> {
    let raid = control::raid_status(voldir);
    let is_raid = raid_sim::is_raid(voldir);
    // Never assemble the array here: assembly writes the member superblocks.
    let vol = match raid_sim::open_read_only(voldir) {
        Ok(vol) => vol,
        Err(e) if is_raid => return Ok(unreadable(voldir, raid, open_error(e.into()))),
        Err(e) => return Err(open_error(e.into())),
    };
    let sb = match Superblock::read(vol.as_ref()) {
        Ok(sb) => sb,
        Err(e) if is_raid => {
            let why = CliError::new(exit::CORRUPT, format!("{}: {e}", voldir.display()));
            return Ok(unreadable(voldir, raid, why));
        }
        Err(e) => {
            return Err(CliError::new(
                exit::CORRUPT,
                format!("{}: {e}; nothing was changed", voldir.display()),
            ))
        }
    };
    let volume = vol.describe();
    drop(vol);
    let ring_path = ring_path_of(voldir, &sb);
    let scan = StateLog::scan_file(&ring_path).map_err(|e| open_error(e.into()))?;
    let ops = plan(&scan.entries, sb.covers_seq).map_err(|detail| {
        CliError::new(
            exit::CORRUPT,
            format!("state log {}: {detail}", ring_path.display()),
        )
    })?;
    let (mut accepted, mut mirrored, mut applied, mut committed) = (0u64, 0u64, 0u64, 0u64);
    let (mut replay, mut discard) = (0u64, 0u64);
    for op in &ops {
        if let LastState::Op(state) = op.last {
            match (op.action, state) {
                (Action::Skip, _) => committed += 1,
                (_, OpState::Accepted) => accepted += 1,
                (_, OpState::Mirrored) => mirrored += 1,
                _ => applied += 1,
            }
        }
        match op.action {
            Action::Replay => replay += 1,
            Action::Discard => discard += 1,
            _ => {}
        }
    }
    let area_bytes = scan.header.ring_bytes.saturating_sub(HEADER_AREA_BYTES);
    let ring_end = match &scan.end {
        ScanEnd::Clean => json!("clean"),
        ScanEnd::TornTail { file_offset } => json!(format!("torn tail at byte {file_offset}")),
        ScanEnd::Corrupt {
            file_offset,
            later_seq,
            later_file_offset,
        } => json!(format!(
            "corrupt at byte {file_offset} (valid seq {later_seq} follows at byte {later_file_offset}): mount refuses"
        )),
    };
    let mut doc = control::header("offline", voldir);
    doc.extend(control::restart_fields(voldir));
    let fields = json!({
        "mountpoint": null,
        "daemon_pid": null,
        "mirror": null,
        "ops_accepted": accepted,
        "ops_mirrored": mirrored,
        "ops_applied": applied,
        "ops_committed": committed,
        "ring_path": ring_path.display().to_string(),
        "ring_used_bytes": scan.used_bytes,
        "ring_area_bytes": area_bytes,
        "ring_fill_percent": scan.used_bytes * 100 / area_bytes.max(1),
        "ring_checkpoint_fill_percent": null,
        "ring_end": ring_end,
        "next_seq": scan.next_seq,
        "flushed_seq": null,
        "checkpoint_seq": sb.covers_seq,
        "checkpoint_generation": sb.generation,
        "checkpoint_age_ms": null,
        "checkpoints_since_mount": null,
        "epoch": sb.epoch,
        "volume": volume,
        "poisoned": null,
        "inodes": null,
        "dirty_blocks": null,
        "recovery_would_replay": replay,
        "recovery_would_discard": discard,
        "resent_answered": null,
        "resent_executed": null,
        "raid": raid,
    });
    if let Value::Object(f) = fields {
        doc.extend(f);
    }
    Ok(doc)
}

/// The document of a RAID-5 volume whose file system cannot be read offline: the members
/// (the reason to look) and why, with the exit code of the failure.
fn unreadable(voldir: &Path, raid: Value, why: CliError) -> serde_json::Map<String, Value> {
    let mut doc = control::header("offline", voldir);
    doc.insert("raid".into(), raid);
    doc.insert(
        "note".into(),
        json!(format!("cannot read the file system: {}", why.msg)),
    );
    doc.insert("exit_code".into(), json!(why.code));
    doc
}

/// The volume's superblock read without assembling (a RAID-5 volume: from its member files)
/// and so without its lock: it works while another process holds the volume, and writes
/// nothing. Mount uses it to check ownership before it takes any lock.
pub fn read_superblock_offline(voldir: &Path) -> Result<Superblock, CliError> {
    let vol = raid_sim::open_read_only(voldir).map_err(|e| open_error(e.into()))?;
    Superblock::read(vol.as_ref()).map_err(|e| no_superblock(voldir, vol.as_ref(), e))
}

/// The error for a volume whose superblocks cannot be read: where, and what to do.
pub fn no_superblock(
    voldir: &Path,
    vol: &dyn raid_sim::BlockVolume,
    e: crate::core::superblock::SuperblockError,
) -> CliError {
    CliError::new(
        exit::CORRUPT,
        format!(
            "{}: {e}, on {}: the backing storage is damaged or was cut short; restore it from a backup or take the volume over from a peer (nothing was changed)",
            voldir.display(),
            vol.describe()
        ),
    )
}

fn get<'a>(doc: &'a Value, key: &str) -> &'a Value {
    doc.get(key).unwrap_or(&Value::Null)
}

/// A field for people: numbers and strings as they are, null as "-".
fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Bytes for people: B, KiB, MiB or GiB with one decimal.
fn bytes(v: &Value) -> String {
    let Some(b) = v.as_u64() else {
        return "-".into();
    };
    let units = [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    match units.iter().find(|(size, _)| b >= *size) {
        Some((size, unit)) => format!("{:.1} {unit}", b as f64 / *size as f64),
        None => format!("{b} B"),
    }
}

/// The document in words, one subject per line.
pub fn render(doc: &Value) -> String {
    let mut s = String::new();
    let source = show(get(doc, "source"));
    let whereabouts = match (get(doc, "mountpoint"), get(doc, "daemon_pid")) {
        (Value::String(m), Value::Number(p)) => format!("mounted at {m}, daemon pid {p}"),
        (_, Value::Number(p)) => format!("daemon pid {p}"),
        _ => "not mounted".into(),
    };
    s += &format!(
        "volume     {} ({whereabouts}; {source})\n",
        show(get(doc, "voldir"))
    );
    if let Value::String(note) = get(doc, "note") {
        s += &format!("note       {note}\n");
    }
    s += &format!(
        "ops        accepted {}  mirrored {}  applied {}  committed {}\n",
        show(get(doc, "ops_accepted")),
        show(get(doc, "ops_mirrored")),
        show(get(doc, "ops_applied")),
        show(get(doc, "ops_committed"))
    );
    let trigger = match get(doc, "ring_checkpoint_fill_percent") {
        Value::Number(n) => format!(", checkpoint at {n}%"),
        _ => String::new(),
    };
    s += &format!(
        "ring       {} used of {} ({}%{trigger}); next seq {}, flushed to seq {}\n",
        bytes(get(doc, "ring_used_bytes")),
        bytes(get(doc, "ring_area_bytes")),
        show(get(doc, "ring_fill_percent")),
        show(get(doc, "next_seq")),
        show(get(doc, "flushed_seq"))
    );
    if let Value::String(end) = get(doc, "ring_end") {
        s += &format!("ring end   {end}\n");
    }
    let age = match get(doc, "checkpoint_age_ms").as_u64() {
        Some(ms) => format!(", {:.1} s ago", ms as f64 / 1000.0),
        None => String::new(),
    };
    s += &format!(
        "checkpoint covers seq {} (generation {}){age}; {} since mount\n",
        show(get(doc, "checkpoint_seq")),
        show(get(doc, "checkpoint_generation")),
        show(get(doc, "checkpoints_since_mount"))
    );
    if doc.get("recovery_would_replay").is_some() {
        s += &format!(
            "recovery   would replay {} op(s), discard {} never answered\n",
            show(get(doc, "recovery_would_replay")),
            show(get(doc, "recovery_would_discard"))
        );
    }
    s += &render_restarts(doc);
    s += &format!("epoch      {}\n", show(get(doc, "epoch")));
    s += &format!("storage    {}\n", show(get(doc, "volume")));
    s += &render_mirror(get(doc, "mirror"));
    s += &render_raid(get(doc, "raid"));
    if let Value::String(p) = get(doc, "poisoned") {
        s += &format!("POISONED   {p} (remount to recover)\n");
    }
    s
}

/// The supervisor's line: restarts of the daemon since the mount, the last one's cause and
/// pause, and what became of the requests the killed daemons left unanswered.
fn render_restarts(doc: &Value) -> String {
    let Some(restarts) = get(doc, "restarts").as_u64() else {
        return String::new();
    };
    let supervisor = match get(doc, "supervisor_pid") {
        Value::Number(p) => format!("supervisor pid {p}"),
        _ => "no supervisor running".into(),
    };
    let planned = match get(doc, "planned_restarts").as_u64() {
        Some(n) if n > 0 => format!(" ({n} planned)"),
        _ => String::new(),
    };
    let mut s = format!("restarts   {restarts}{planned} since mount; {supervisor}\n");
    if let Value::String(cause) = get(doc, "last_restart_cause") {
        s += &format!(
            "           last: {cause}, requests waited {} ms\n",
            show(get(doc, "last_restart_pause_ms"))
        );
    }
    if get(doc, "resent_answered").is_number() || get(doc, "resent_executed").is_number() {
        s += &format!(
            "           resent requests: {} answered from the log, {} executed\n",
            show(get(doc, "resent_answered")),
            show(get(doc, "resent_executed"))
        );
    }
    s
}

fn render_mirror(m: &Value) -> String {
    if m.is_null() {
        return "mirror     not configured\n".into();
    }
    let link = if get(m, "connected") == &Value::Bool(true) {
        format!("connected via {}", show(get(m, "route_in_use")))
    } else {
        "DISCONNECTED".to_string()
    };
    let protected = if get(m, "protected") == &Value::Bool(true) {
        "protected"
    } else {
        "NOT PROTECTED"
    };
    let rtt = match get(m, "rtt_us").as_u64() {
        Some(us) => format!("{:.2} ms", us as f64 / 1000.0),
        None => "-".into(),
    };
    let mut s = format!(
        "mirror     {link}, {protected}; {} unacknowledged entries, acked to seq {}, rtt {rtt}\n\
         \x20          routes {}; mode {}, on loss {}; {} reconnects\n",
        show(get(m, "unacked_entries")),
        show(get(m, "acked_through")),
        show(get(m, "routes")),
        show(get(m, "mode")),
        show(get(m, "on_loss")),
        show(get(m, "reconnects"))
    );
    if let Some(through) = get(m, "resync_through").as_u64() {
        s += &format!(
            "           RESYNCHRONISING the agent: acked to seq {} of {through}\n",
            show(get(m, "acked_through"))
        );
    }
    if let Value::String(e) = get(m, "last_error") {
        s += &format!("           last error: {e}\n");
    }
    s
}

fn render_raid(r: &Value) -> String {
    if r.is_null() {
        return String::new();
    }
    if let Some(e) = r.get("error") {
        return format!("raid       cannot inspect: {}\n", show(e));
    }
    let mut s = format!(
        "raid       RAID-5, {} disks, {}\n",
        show(get(r, "disks")),
        if get(r, "degraded") == &Value::Bool(true) {
            "DEGRADED"
        } else {
            "clean"
        }
    );
    for m in get(r, "members").as_array().into_iter().flatten() {
        let problem = match get(m, "problem") {
            Value::String(p) => format!(" ({p})"),
            _ => String::new(),
        };
        s += &format!(
            "  member {} {}: {}{problem}\n",
            show(get(m, "index")),
            show(get(m, "path")),
            show(get(m, "state"))
        );
    }
    for p in get(r, "spares").as_array().into_iter().flatten() {
        s += &format!("  spare {}\n", show(p));
    }
    for (what, v) in [("rebuild", get(r, "rebuild")), ("scrub", get(r, "scrub"))] {
        if v.is_object() {
            let member = match get(v, "member") {
                Value::Number(n) => format!("member {n}, "),
                _ => String::new(),
            };
            s += &format!(
                "  {what}: {member}{}/{} stripes ({}%)\n",
                show(get(v, "done_stripes")),
                show(get(v, "stripes")),
                show(get(v, "percent"))
            );
        }
    }
    s
}

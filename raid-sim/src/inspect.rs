//! Inspecting the files of a volume directory without writing: which members are usable (a
//! decision table), why an array cannot be assembled, and what its journal holds.
//!
//! Assembly first inspects every `member-K.img` and `spare-J.img` without writing, and
//! decides per member (decision table, first matching row wins):
//!
//! | row | finding                                          | member is            |
//! |-----|--------------------------------------------------|----------------------|
//! | 1   | no `member-K.img`                                | missing              |
//! | 2   | shorter than the layout and no valid superblock  | truncated            |
//! | 3   | cannot open or read it                           | unreadable           |
//! | 4   | neither superblock slot valid                    | corrupt superblock   |
//! | 5   | array id differs from the majority               | from another array   |
//! | 6   | geometry differs from the majority's             | wrong geometry       |
//! | 7   | file shorter than the layout needs               | truncated            |
//! | 8   | superblock says spare                            | a spare, K missing   |
//! | 9   | superblock role is not K                         | misplaced            |
//! | 10  | events + 1 < the array's newest events           | stale                |
//! | 11  | the array's member table says failed             | failed (earlier)     |
//! | 12  | the table says rebuilding                        | rebuilding (partial) |
//! | 13  | otherwise                                        | active               |
//!
//! Then for the array: no unusable member → clean; one (and no rebuild running) → runs
//! degraded, the member is marked failed on the survivors; two or more, or one while a
//! rebuild is unfinished → refuses to start, names each member and why, writes nothing.
//! (`events + 1` tolerates a crash in the middle of updating the superblocks one by one.)

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::files::{list_files, member_name, FileKind};
use crate::format::{MemberState, Superblock, NO_MEMBER, ROLE_SPARE, SB_BYTES};
use crate::journal::{Journal, Recovery, JOURNAL_FILE, RECORDS_FILE};
use crate::layout::Geometry;
use crate::member::{FileMember, MemberIo};
use crate::volume::VolumeError;

pub(crate) struct Found {
    pub(crate) path: PathBuf,
    pub(crate) kind: FileKind,
    pub(crate) file: Option<File>,
    pub(crate) len: u64,
    pub(crate) sb: Result<Superblock, String>,
}

pub(crate) fn scan(dir: &Path, writable: bool) -> Vec<Found> {
    list_files(dir)
        .into_iter()
        .map(|(path, kind)| {
            let opened = OpenOptions::new().read(true).write(writable).open(&path);
            match opened {
                Err(e) => Found {
                    path,
                    kind,
                    file: None,
                    len: 0,
                    sb: Err(format!("cannot open: {e}")),
                },
                Ok(file) => {
                    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                    let mut buf = vec![0u8; (2 * SB_BYTES).min(len) as usize];
                    use std::os::unix::fs::FileExt;
                    let sb = match file.read_exact_at(&mut buf, 0) {
                        Err(e) => Err(format!("cannot read: {e}")),
                        Ok(()) => Superblock::decode_slots(&buf),
                    };
                    Found {
                        path,
                        kind,
                        file: Some(file),
                        len,
                        sb,
                    }
                }
            }
        })
        .collect()
}

/// What assembly found for one member index.
#[derive(Clone, Debug)]
pub struct MemberReport {
    pub index: u32,
    pub path: PathBuf,
    /// active, rebuilding, failed, missing, …
    pub state: String,
    /// Why it cannot be used, if it cannot.
    pub problem: Option<String>,
    pub events: Option<u64>,
}

/// The result of inspecting a volume directory without writing to it.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub dir: PathBuf,
    pub array_id: u128,
    pub geometry: Geometry,
    pub events: u64,
    pub array_active: bool,
    pub rebuild: Option<(u32, u64)>,
    pub rebuild_rate_kib_s: u32,
    pub spares_wanted: u32,
    pub members: Vec<MemberReport>,
    pub spares: Vec<PathBuf>,
    /// Files that belong to no member slot (other arrays, duplicates), with the reason.
    pub ignored: Vec<(PathBuf, String)>,
    /// What the journal holds for the next assembly, or why it cannot be read.
    pub journal: Result<JournalReport, String>,
}

/// The journal as `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalReport {
    /// Records past the checkpoint that the next assembly replays.
    pub pending_records: usize,
    /// Stripes in dirty regions that the next assembly resyncs.
    pub dirty_stripes: usize,
}

impl Inspection {
    pub fn unusable(&self) -> Vec<&MemberReport> {
        self.members
            .iter()
            .filter(|m| m.problem.is_some())
            .collect()
    }

    pub fn degraded(&self) -> bool {
        self.members.iter().any(|m| m.state != "active")
    }

    /// The refusal, if the array cannot start: one sentence, the point first (which
    /// members are unusable and why), then what to do. The directory is named once, by
    /// the error; members by file name.
    pub fn refusal(&self) -> Option<VolumeError> {
        let bad = self.unusable();
        let rebuilding: Vec<&MemberReport> = self
            .members
            .iter()
            .filter(|m| m.state == "rebuilding")
            .collect();
        if bad.len() < 2 && (bad.is_empty() || rebuilding.is_empty()) {
            return None;
        }
        let why = |m: &MemberReport| {
            let name = member_name(m.index);
            format!(
                "{name}: {}",
                m.problem.as_deref().unwrap_or("rebuild unfinished")
            )
        };
        let reasons: Vec<String> = bad.iter().map(|m| why(m)).collect();
        let detail = if bad.len() >= 2 {
            let indices: Vec<String> = bad.iter().map(|m| m.index.to_string()).collect();
            format!(
                "members {} are unusable ({}) and RAID-5 survives the loss of only one: \
                 put back or repair the file of all but one of them, then open the volume again",
                join_and(&indices),
                reasons.join("; ")
            )
        } else {
            format!(
                "member {} is unusable ({}) while member {} is still being rebuilt, and RAID-5 \
                 survives the loss of only one: put back or repair {}, then open the volume \
                 again (the rebuild resumes)",
                bad[0].index,
                reasons.join("; "),
                rebuilding[0].index,
                member_name(bad[0].index)
            )
        };
        Some(VolumeError::Assembly {
            path: self.dir.clone(),
            detail,
        })
    }
}

/// "0 and 2", "0, 1 and 2".
fn join_and(items: &[String]) -> String {
    match items.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => items.join(""),
    }
}

pub(crate) struct Classified {
    pub(crate) inspection: Inspection,
    pub(crate) usable: HashMap<u32, Found>,
    pub(crate) spares: Vec<Found>,
}

pub(crate) fn classify(dir: &Path, found: Vec<Found>) -> Result<Classified, VolumeError> {
    // Majority array id, then majority geometry within it, then the newest superblock.
    let mut ids: HashMap<u128, (usize, u64)> = HashMap::new();
    for f in &found {
        if let Ok(sb) = &f.sb {
            let e = ids.entry(sb.array_id).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(sb.events);
        }
    }
    let Some((&array_id, _)) = ids.iter().max_by_key(|(_, (n, ev))| (*n, *ev)) else {
        let detail = if found.is_empty() {
            "no member-K.img files".to_string()
        } else {
            found
                .iter()
                .map(|f| {
                    format!(
                        "{}: {}",
                        f.path.display(),
                        f.sb.as_ref().err().cloned().unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(VolumeError::NotAVolume {
            path: dir.to_path_buf(),
            detail: format!("no valid RAID superblock: {detail}"),
        });
    };
    let mut geos: HashMap<(u32, u64, u64), usize> = HashMap::new();
    for sb in found.iter().filter_map(|f| f.sb.as_ref().ok()) {
        if sb.array_id == array_id {
            let g = sb.geometry;
            *geos.entry((g.disks, g.chunk_bytes, g.stripes)).or_insert(0) += 1;
        }
    }
    let (&(disks, chunk_bytes, stripes), _) = geos
        .iter()
        .max_by_key(|(k, n)| (**n, **k))
        .expect("at least one superblock of this array");
    let geometry = Geometry {
        disks,
        chunk_bytes,
        stripes,
    };
    let auth = found
        .iter()
        .filter_map(|f| f.sb.as_ref().ok())
        .filter(|sb| sb.array_id == array_id && sb.geometry == geometry)
        .max_by_key(|sb| sb.events)
        .expect("a superblock with the majority geometry")
        .clone();

    let mut usable = HashMap::new();
    let mut spares = Vec::new();
    let mut spare_paths = Vec::new();
    let mut ignored = Vec::new();
    let mut by_role: HashMap<u32, Found> = HashMap::new();
    let mut role_problem: HashMap<u32, (PathBuf, String, Option<u64>)> = HashMap::new();
    for f in found {
        let problem: Option<String> = match (&f.sb, f.kind) {
            (Err(_), _) if f.file.is_some() && f.len < geometry.member_bytes() => Some(format!(
                "truncated: {} bytes, the layout needs {}",
                f.len,
                geometry.member_bytes()
            )),
            (Err(e), _) if f.file.is_none() || e.starts_with("cannot read") => {
                Some(format!("unreadable: {e}"))
            }
            (Err(e), _) => Some(format!("corrupt superblock: {e}")),
            (Ok(sb), _) if sb.array_id != array_id => Some(format!(
                "belongs to another array (id {:032x}, this array is {:032x})",
                sb.array_id, array_id
            )),
            (Ok(sb), _) if sb.geometry != geometry => {
                Some(geometry_mismatch(&sb.geometry, &geometry))
            }
            (Ok(_), _) if f.len < geometry.member_bytes() => Some(format!(
                "truncated: {} bytes, the layout needs {}",
                f.len,
                geometry.member_bytes()
            )),
            _ => None,
        };
        let events = f.sb.as_ref().ok().map(|s| s.events);
        match (f.kind, problem) {
            (FileKind::Member(k), Some(p)) => {
                role_problem.insert(k, (f.path.clone(), p, events));
            }
            (FileKind::Spare(_), Some(p)) => ignored.push((f.path.clone(), p)),
            (kind, None) => {
                let sb = f.sb.as_ref().expect("checked above").clone();
                if sb.role == ROLE_SPARE {
                    if let FileKind::Member(k) = kind {
                        role_problem.insert(
                            k,
                            (
                                f.path.clone(),
                                "holds a spare, not member data".into(),
                                events,
                            ),
                        );
                    }
                    spare_paths.push(f.path.clone());
                    spares.push(f);
                    continue;
                }
                match kind {
                    FileKind::Member(k) if k == sb.role => {
                        by_role.insert(k, f);
                    }
                    FileKind::Member(k) => {
                        role_problem.insert(
                            k,
                            (
                                f.path.clone(),
                                format!("carries the superblock of member {}", sb.role),
                                events,
                            ),
                        );
                    }
                    FileKind::Spare(_) => ignored.push((
                        f.path.clone(),
                        format!(
                            "named as a spare but carries the superblock of member {}",
                            sb.role
                        ),
                    )),
                }
            }
        }
    }

    let rebuild = (auth.rebuild_member != NO_MEMBER)
        .then_some((auth.rebuild_member, auth.rebuild_next_stripe));
    let mut members = Vec::new();
    for k in 0..disks {
        let path = dir.join(member_name(k));
        let table = auth
            .member_states
            .get(k as usize)
            .copied()
            .unwrap_or(MemberState::Failed);
        let (state, problem, events, f) = match (by_role.remove(&k), role_problem.remove(&k)) {
            (_, Some((p, why, ev))) => {
                let _ = p;
                ("failed".to_string(), Some(why), ev, None)
            }
            (None, None) => (
                "missing".to_string(),
                Some("missing".to_string()),
                None,
                None,
            ),
            (Some(f), None) => {
                let sb = f.sb.as_ref().expect("usable").clone();
                if sb.events + 1 < auth.events {
                    (
                        "failed".to_string(),
                        Some(format!(
                            "stale: events {}, the array is at {}",
                            sb.events, auth.events
                        )),
                        Some(sb.events),
                        None,
                    )
                } else {
                    match table {
                        MemberState::Failed => (
                            "failed".to_string(),
                            Some("marked failed in the array's member table".to_string()),
                            Some(sb.events),
                            None,
                        ),
                        MemberState::Rebuilding if rebuild.map(|r| r.0) == Some(k) => {
                            ("rebuilding".to_string(), None, Some(sb.events), Some(f))
                        }
                        MemberState::Rebuilding => (
                            "failed".to_string(),
                            Some("rebuild state without a rebuild position".to_string()),
                            Some(sb.events),
                            None,
                        ),
                        MemberState::Active => {
                            ("active".to_string(), None, Some(sb.events), Some(f))
                        }
                    }
                }
            }
        };
        if let Some(f) = f {
            usable.insert(k, f);
        }
        members.push(MemberReport {
            index: k,
            path,
            state,
            problem,
            events,
        });
    }
    for (_, (path, why, _)) in role_problem.drain() {
        ignored.push((path, why));
    }
    for (k, f) in by_role.drain() {
        ignored.push((
            f.path.clone(),
            format!("member {k} is outside a {disks}-disk array"),
        ));
    }
    Ok(Classified {
        inspection: Inspection {
            dir: dir.to_path_buf(),
            array_id,
            geometry,
            events: auth.events,
            array_active: auth.array_active,
            rebuild,
            rebuild_rate_kib_s: auth.rebuild_rate_kib_s,
            spares_wanted: auth.spares,
            members,
            spares: spare_paths,
            ignored,
            journal: Err("not read".into()),
        },
        usable,
        spares,
    })
}

/// Why a member's geometry is not the array's, naming only the fields that differ.
fn geometry_mismatch(member: &Geometry, array: &Geometry) -> String {
    let mut diffs = Vec::new();
    if member.disks != array.disks {
        diffs.push(format!(
            "{} disks where the array has {}",
            member.disks, array.disks
        ));
    }
    if member.chunk_bytes != array.chunk_bytes {
        diffs.push(format!(
            "{}-byte chunks where the array has {}",
            member.chunk_bytes, array.chunk_bytes
        ));
    }
    if member.stripes != array.stripes {
        diffs.push(format!(
            "{} stripes where the array has {}",
            member.stripes, array.stripes
        ));
    }
    format!("wrong geometry: {}", diffs.join(", "))
}

/// Inspects a volume directory without writing anything (for `status`).
pub fn inspect(dir: &Path) -> Result<Inspection, VolumeError> {
    let mut i = classify(dir, scan(dir, false))?.inspection;
    i.journal = inspect_journal(dir, i.array_id, &i.geometry);
    Ok(i)
}

fn inspect_journal(dir: &Path, array_id: u128, g: &Geometry) -> Result<JournalReport, String> {
    let recovery = read_journal(dir, array_id, g)?;
    Ok(JournalReport {
        pending_records: recovery.records.len(),
        dirty_stripes: recovery.dirty_stripes.len(),
    })
}

/// What the journal holds for the next assembly, read through read-only handles.
pub(crate) fn read_journal(dir: &Path, array_id: u128, g: &Geometry) -> Result<Recovery, String> {
    let open = |name: &str| -> Result<Box<dyn MemberIo>, String> {
        let p = dir.join(name);
        File::open(&p)
            .map(|f| Box::new(FileMember::new(f)) as Box<dyn MemberIo>)
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let (_, recovery) = Journal::open(
        &dir.join(JOURNAL_FILE),
        open(JOURNAL_FILE)?,
        &dir.join(RECORDS_FILE),
        open(RECORDS_FILE)?,
        array_id,
        g,
        false,
    )
    .map_err(|e| e.to_string())?;
    Ok(recovery)
}

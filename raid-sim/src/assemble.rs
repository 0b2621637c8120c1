//! Creating an array, and assembling one from the files in a volume directory.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::format::{
    block_crc, decode_csum_page, encode_csum_page, round_up_page, MemberState, Superblock,
    CSUMS_PER_PAGE, NO_MEMBER, PAGE_BYTES, ROLE_SPARE, SB_BYTES,
};
use crate::journal::{Journal, JOURNAL_FILE, RECORDS_FILE};
use crate::layout::Geometry;
use crate::member::{FileMember, IoWrapper, MemberIo};
use crate::raid::{ArrayState, Inner, Member, RaidOptions, RaidVolume, Spare, Stats, STRIPE_LOCKS};
use crate::{CreateOptions, VolumeError, BLOCK_BYTES};

pub const LOCK_FILE: &str = "raid.lock";
pub const MAX_SPARES: u32 = 16;

pub fn member_name(k: u32) -> String {
    format!("member-{k}.img")
}

pub fn spare_name(j: u32) -> String {
    format!("spare-{j}.img")
}

pub(crate) fn wrap(path: &Path, file: File, wrap: Option<&IoWrapper>) -> Box<dyn MemberIo> {
    let io: Box<dyn MemberIo> = Box::new(FileMember::new(file));
    match wrap {
        Some(w) => w(path, io),
        None => io,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    Member(u32),
    Spare(u32),
}

fn parse_name(name: &str) -> Option<FileKind> {
    let num = |s: &str| -> Option<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 6 {
            None
        } else {
            s.parse().ok()
        }
    };
    if let Some(rest) = name
        .strip_prefix("member-")
        .and_then(|r| r.strip_suffix(".img"))
    {
        return num(rest).map(FileKind::Member);
    }
    if let Some(rest) = name
        .strip_prefix("spare-")
        .and_then(|r| r.strip_suffix(".img"))
    {
        return num(rest).map(FileKind::Spare);
    }
    None
}

fn list_files(dir: &Path) -> Vec<(PathBuf, FileKind)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(k) = parse_name(&name) {
                out.push((e.path(), k));
            }
        }
    }
    out.sort_by_key(|(_, k)| match k {
        FileKind::Member(i) => (0, *i),
        FileKind::Spare(i) => (1, *i),
    });
    out
}

pub(crate) fn raid_files_exist(dir: &Path) -> bool {
    !list_files(dir).is_empty()
}

struct Found {
    path: PathBuf,
    kind: FileKind,
    file: Option<File>,
    len: u64,
    sb: Result<Superblock, String>,
}

fn scan(dir: &Path, writable: bool) -> Vec<Found> {
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

    /// The refusal, if the array cannot start.
    pub fn refusal(&self) -> Option<VolumeError> {
        let bad = self.unusable();
        let rebuilding = self.members.iter().any(|m| m.state == "rebuilding");
        if bad.len() >= 2 || (!bad.is_empty() && rebuilding) {
            let mut list: Vec<String> = self
                .members
                .iter()
                .filter(|m| m.problem.is_some() || m.state == "rebuilding")
                .map(|m| {
                    format!(
                        "{}: {}",
                        m.path.display(),
                        m.problem
                            .clone()
                            .unwrap_or_else(|| "rebuild unfinished".into())
                    )
                })
                .collect();
            list.sort();
            return Some(VolumeError::Assembly {
                path: self.dir.clone(),
                detail: format!(
                    "{} of {} members unusable, RAID-5 survives one: {}",
                    list.len(),
                    self.geometry.disks,
                    list.join("; ")
                ),
            });
        }
        None
    }
}

struct Classified {
    inspection: Inspection,
    usable: HashMap<u32, Found>,
    spares: Vec<Found>,
}

fn classify(dir: &Path, found: Vec<Found>) -> Result<Classified, VolumeError> {
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
            (Err(e), _) if f.file.is_none() || e.starts_with("cannot read") => Some(format!("unreadable: {e}")),
            (Err(e), _) => Some(format!("corrupt superblock: {e}")),
            (Ok(sb), _) if sb.array_id != array_id => Some(format!(
                "belongs to another array (id {:032x}, this array is {:032x})",
                sb.array_id, array_id
            )),
            (Ok(sb), _) if sb.geometry != geometry => Some(format!(
                "wrong geometry: {} disks, chunk {} bytes, {} stripes; the array has {} disks, chunk {} bytes, {} stripes",
                sb.geometry.disks, sb.geometry.chunk_bytes, sb.geometry.stripes, disks, chunk_bytes, stripes
            )),
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

/// Inspects a volume directory without writing anything (for `status`).
pub fn inspect(dir: &Path) -> Result<Inspection, VolumeError> {
    let mut i = classify(dir, scan(dir, false))?.inspection;
    i.journal = inspect_journal(dir, i.array_id, &i.geometry);
    Ok(i)
}

fn inspect_journal(dir: &Path, array_id: u128, g: &Geometry) -> Result<JournalReport, String> {
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
    Ok(JournalReport {
        pending_records: recovery.records.len(),
        dirty_stripes: recovery.dirty_stripes.len(),
    })
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> VolumeError + '_ {
    move |e| VolumeError::io(path, e)
}

pub(crate) fn take_lock(dir: &Path) -> Result<File, VolumeError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(VolumeError::InUse { path }),
        Err(std::fs::TryLockError::Error(e)) => {
            // A file system without flock: go on, unprotected against a second opener.
            log::warn!(
                "{}: cannot lock ({e}); not guarding against a second opener",
                path.display()
            );
            Ok(f)
        }
    }
}

/// True when another process holds the volume open.
pub fn in_use(dir: &Path) -> bool {
    let path = dir.join(LOCK_FILE);
    match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

fn random_id() -> u128 {
    let mut b = [0u8; 16];
    if let Ok(f) = File::open("/dev/urandom") {
        use std::io::Read;
        let _ = (&f).read_exact(&mut b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    u128::from_le_bytes(b) ^ t ^ ((std::process::id() as u128) << 64)
}

/// Creates one member or spare file: sized, checksum area for all-zero blocks, superblock.
pub(crate) fn create_member_file(
    path: &Path,
    geometry: &Geometry,
    sb: &Superblock,
) -> Result<(), VolumeError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    file.set_len(geometry.member_bytes())
        .map_err(io_err(path))?;
    write_zero_csums(
        &FileMember::new(file.try_clone().map_err(io_err(path))?),
        geometry,
    )
    .map_err(io_err(path))?;
    use std::os::unix::fs::FileExt;
    file.write_all_at(&sb.encode(), sb.slot_offset())
        .and_then(|_| file.sync_all())
        .map_err(io_err(path))
}

/// Writes checksum pages describing all-zero blocks (a new, sparse member).
pub(crate) fn write_zero_csums(io: &dyn MemberIo, g: &Geometry) -> std::io::Result<()> {
    let zero = block_crc(&[0u8; BLOCK_BYTES as usize]);
    let start = round_up_page(g.csum_start());
    let pages = g.csum_pages();
    let mut buf = Vec::with_capacity((pages.min(256) * PAGE_BYTES) as usize);
    let mut first_page = 0;
    for page in 0..pages {
        let lo = page * CSUMS_PER_PAGE;
        let hi = (lo + CSUMS_PER_PAGE).min(g.blocks_per_member());
        buf.extend(encode_csum_page(page, &vec![zero; (hi - lo) as usize]));
        if buf.len() as u64 >= 256 * PAGE_BYTES || page + 1 == pages {
            io.write_at(start + first_page * PAGE_BYTES, &buf)?;
            buf.clear();
            first_page = page + 1;
        }
    }
    Ok(())
}

pub fn create(
    dir: &Path,
    opts: &CreateOptions,
    ropts: &RaidOptions,
) -> Result<RaidVolume, VolumeError> {
    let invalid = |detail: String| VolumeError::Invalid {
        path: dir.to_path_buf(),
        detail,
    };
    let geometry = Geometry::for_capacity(opts.disks, opts.chunk_bytes, opts.capacity_bytes)
        .map_err(invalid)?;
    if opts.spares > MAX_SPARES {
        return Err(invalid(format!(
            "{} spares: at most {MAX_SPARES}",
            opts.spares
        )));
    }
    if !ropts.journal_bytes.is_multiple_of(PAGE_BYTES) {
        return Err(invalid(format!(
            "journal size {} is not a multiple of {PAGE_BYTES}",
            ropts.journal_bytes
        )));
    }
    // The ring must take a few full-stripe records; large chunks get a larger ring.
    let ring_bytes = ropts
        .journal_bytes
        .max(crate::journal::min_ring_bytes(&geometry));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Held through the assembly below: a lock released and taken again can be refused, for
    // a child that another thread forks in between keeps the released lock until it execs.
    let lock = take_lock(dir)?;
    {
        for (path, _) in list_files(dir) {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        let array_id = random_id();
        let sb = Superblock {
            array_id,
            events: 1,
            geometry,
            spares: opts.spares,
            role: 0,
            array_active: false,
            rebuild_rate_kib_s: ropts.create_rebuild_rate_kib_s,
            rebuild_member: NO_MEMBER,
            rebuild_next_stripe: 0,
            member_states: vec![MemberState::Active; geometry.disks as usize],
        };
        log::info!(
            "creating RAID-5 in {}: {} disks, chunk {} bytes, {} stripes, {} usable bytes, {} spares",
            dir.display(),
            geometry.disks,
            geometry.chunk_bytes,
            geometry.stripes,
            geometry.capacity_bytes(),
            opts.spares
        );
        for k in 0..geometry.disks {
            let sb = Superblock {
                role: k,
                ..sb.clone()
            };
            create_member_file(&dir.join(member_name(k)), &geometry, &sb)?;
        }
        for j in 0..opts.spares {
            let sb = Superblock {
                role: ROLE_SPARE,
                ..sb.clone()
            };
            create_member_file(&dir.join(spare_name(j)), &geometry, &sb)?;
        }
        create_journal_files(dir, array_id, ring_bytes, &geometry)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    assemble(dir, ropts, lock)
}

fn create_journal_files(
    dir: &Path,
    array_id: u128,
    ring_bytes: u64,
    g: &Geometry,
) -> Result<(), VolumeError> {
    let create = |p: &Path, len: u64| -> Result<File, VolumeError> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .map_err(io_err(p))?;
        f.set_len(len).map_err(io_err(p))?;
        Ok(f)
    };
    let rpath = dir.join(RECORDS_FILE);
    create(&rpath, ring_bytes)?
        .sync_all()
        .map_err(io_err(&rpath))?;
    let jpath = dir.join(JOURNAL_FILE);
    let jfile = create(&jpath, 0)?;
    Journal::create(&jpath, &FileMember::new(jfile), array_id, ring_bytes, g)
}

/// Loads a member's checksum table; pages that fail their own checksum are recomputed
/// from the data (for blocks below `valid_blocks`).
fn load_csums(
    path: &Path,
    io: &dyn MemberIo,
    g: &Geometry,
    valid_blocks: u64,
) -> Result<Vec<u32>, VolumeError> {
    let start = round_up_page(g.csum_start());
    let pages = g.csum_pages();
    let mut area = vec![0u8; (pages * PAGE_BYTES) as usize];
    io.read_at(start, &mut area).map_err(io_err(path))?;
    let mut out = Vec::with_capacity(g.blocks_per_member() as usize);
    let mut block = vec![0u8; BLOCK_BYTES as usize];
    for page in 0..pages {
        let lo = page * CSUMS_PER_PAGE;
        let hi = (lo + CSUMS_PER_PAGE).min(g.blocks_per_member());
        let raw = &area[(page * PAGE_BYTES) as usize..((page + 1) * PAGE_BYTES) as usize];
        match decode_csum_page(page, raw, (hi - lo) as usize) {
            Some(entries) => out.extend(entries),
            None => {
                log::warn!(
                    "{}: checksum page {page} (byte {}) is corrupt; recomputing its {} entries from the data",
                    path.display(),
                    start + page * PAGE_BYTES,
                    hi - lo
                );
                for b in lo..hi {
                    if b >= valid_blocks {
                        out.push(0);
                        continue;
                    }
                    let stripe = b / g.blocks_per_chunk();
                    let off = (b % g.blocks_per_chunk()) * BLOCK_BYTES;
                    io.read_at(g.member_offset(stripe, off), &mut block)
                        .map_err(io_err(path))?;
                    out.push(block_crc(&block));
                }
            }
        }
    }
    Ok(out)
}

pub fn open(dir: &Path, ropts: &RaidOptions) -> Result<RaidVolume, VolumeError> {
    let lock = match take_lock(dir) {
        Err(VolumeError::InUse { path }) if ropts.take_over_lock => {
            log::warn!(
                "{}: held by another process; taking the volume over anyway (the caller fences the old owner)",
                path.display()
            );
            OpenOptions::new()
                .read(true)
                .open(&path)
                .map_err(io_err(&path))?
        }
        other => other?,
    };
    assemble(dir, ropts, lock)
}

/// Assembles the array in `dir` while holding its lock.
fn assemble(dir: &Path, ropts: &RaidOptions, lock: File) -> Result<RaidVolume, VolumeError> {
    let Classified {
        inspection,
        mut usable,
        spares,
    } = classify(dir, scan(dir, true))?;
    if let Some(refusal) = inspection.refusal() {
        return Err(refusal);
    }
    let g = inspection.geometry;
    let mut members: Vec<Option<Arc<Member>>> = Vec::new();
    let mut states = Vec::new();
    let mut reasons = Vec::new();
    for rep in &inspection.members {
        let k = rep.index;
        match usable.remove(&k) {
            Some(f) => {
                let file = f.file.expect("usable members are open");
                let io = wrap(&f.path, file, ropts.wrap_io.as_ref());
                let valid_blocks = match inspection.rebuild {
                    Some((r, next)) if r == k => next * g.blocks_per_chunk(),
                    _ => g.blocks_per_member(),
                };
                let csums = load_csums(&f.path, io.as_ref(), &g, valid_blocks)?;
                members.push(Some(Arc::new(Member::new(f.path.clone(), io, csums))));
                states.push(if rep.state == "rebuilding" {
                    MemberState::Rebuilding
                } else {
                    MemberState::Active
                });
                reasons.push(None);
            }
            None => {
                if let Some(p) = &rep.problem {
                    log::warn!(
                        "{}: {p}; the array runs degraded without it",
                        rep.path.display()
                    );
                }
                members.push(None);
                states.push(MemberState::Failed);
                reasons.push(rep.problem.clone());
            }
        }
    }
    for (p, why) in &inspection.ignored {
        log::warn!("{}: ignored: {why}", p.display());
    }
    let jpath = dir.join(JOURNAL_FILE);
    let rpath = dir.join(RECORDS_FILE);
    let mut resync_all = false;
    if !jpath.exists() || !rpath.exists() {
        log::warn!(
            "{}: journal missing; creating a new one{}",
            jpath.display(),
            if inspection.array_active {
                " and resyncing every stripe (the array was not closed cleanly)"
            } else {
                ""
            }
        );
        resync_all = inspection.array_active;
        let ring_bytes = ropts.journal_bytes.max(crate::journal::min_ring_bytes(&g));
        create_journal_files(dir, inspection.array_id, ring_bytes, &g)?;
    }
    let open_rw = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .map_err(io_err(p))
            .map(|f| wrap(p, f, ropts.wrap_io.as_ref()))
    };
    let (journal, recovery) = Journal::open(
        &jpath,
        open_rw(&jpath)?,
        &rpath,
        open_rw(&rpath)?,
        inspection.array_id,
        &g,
        ropts.journal_sync,
    )?;
    let live_rebuild = inspection
        .rebuild
        .filter(|(k, _)| states.get(*k as usize) == Some(&MemberState::Rebuilding));
    let state = ArrayState {
        members,
        states,
        // A rebuild whose new member is unusable now is over; the member counts as failed.
        rebuild: live_rebuild,
        spares: spares
            .iter()
            .map(|f| Spare {
                path: f.path.clone(),
            })
            .collect(),
        events: inspection.events,
        rebuild_rate_kib_s: inspection.rebuild_rate_kib_s,
        spares_wanted: inspection.spares_wanted,
        reasons,
    };
    drop(spares);
    let inner = Arc::new(Inner {
        dir: dir.to_path_buf(),
        geometry: g,
        array_id: inspection.array_id,
        opts: ropts.clone(),
        state: RwLock::new(state),
        stripe_locks: (0..STRIPE_LOCKS).map(|_| RwLock::new(())).collect(),
        gate: RwLock::new(()),
        journal: Mutex::new(journal),
        poisoned: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        stats: Stats::default(),
        lock_file: lock,
        busy: Mutex::new(None),
        unaligned: Mutex::new(()),
    });
    {
        let mut st = inner.state.write().unwrap_or_else(|e| e.into_inner());
        inner.write_superblocks(&mut st, true)?;
    }
    let records = &recovery.records;
    if !records.is_empty() {
        log::warn!(
            "{}: replaying {} stripe update(s) left open by a crash",
            rpath.display(),
            records.len()
        );
        let view = inner.view();
        for r in records {
            match inner.apply_record(&view, r) {
                Ok(()) => {}
                Err(crate::raid::OpError::Volume(e)) => return Err(e),
                Err(crate::raid::OpError::Member(m, why)) => inner.fail_member(m, &why)?,
            }
            inner.stats.replayed_records.fetch_add(1, Ordering::Relaxed);
        }
    }
    let dirty: Vec<u64> = if resync_all {
        (0..g.stripes).collect()
    } else {
        recovery.dirty_stripes.clone()
    };
    if !dirty.is_empty() {
        log::info!(
            "{}: checking {} stripe(s) of regions dirty at the last shutdown",
            jpath.display(),
            dirty.len()
        );
        let mut unsure = Vec::new();
        for s in dirty {
            if !inner.resync_stripe(s)? {
                unsure.push(s);
            }
        }
        if !unsure.is_empty() {
            log::warn!(
                "{}: {} stripe(s) were being written at the last shutdown and a member is missing; \
                 their parity cannot be checked (first: {:?})",
                dir.display(),
                unsure.len(),
                &unsure[..unsure.len().min(8)]
            );
        }
    }
    inner.checkpoint_journal(true)?;
    log::info!(
        "assembled {}: {} disks, {}{}",
        dir.display(),
        g.disks,
        if inspection.degraded() {
            "degraded"
        } else {
            "clean"
        },
        match inspection.rebuild {
            Some((m, s)) => format!(", rebuild of member {m} resumes at stripe {s}"),
            None => String::new(),
        }
    );
    Ok(RaidVolume::from_inner(inner))
}

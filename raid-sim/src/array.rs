//! The state every RAID-5 operation shares: options, the open members with their block
//! checksums, the member table (written to every superblock), and the `Inner` record the
//! read, write, rebuild and scrub paths work on. Failing a member lives here, for every
//! path can fail one.
//!
//! Locking: one `RwLock` per stripe slot (stripe mod `STRIPE_LOCKS`) orders every access
//! to a stripe; `gate` is held shared by writers between their journal append and the end
//! of their member writes, and exclusively by a journal checkpoint; `state` holds the
//! member table. Order: stripe locks (ascending) → gate → state/journal.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::files::member_name;
use crate::format::{
    encode_csum_page, round_up_page, MemberState, Superblock, CSUMS_PER_PAGE, NO_MEMBER,
    PAGE_BYTES, ROLE_SPARE,
};
use crate::journal::{Journal, DEFAULT_RING_BYTES};
use crate::layout::Geometry;
use crate::member::{IoWrapper, MemberIo};
use crate::volume::VolumeError;

pub const STRIPE_LOCKS: usize = 1024;
const CSUM_PAGE_LOCKS: usize = 64;

/// Knobs of a RAID volume that are not part of its on-disk geometry.
#[derive(Clone)]
pub struct RaidOptions {
    /// Strict mode: sync the journal's record ring before writing members, so that a
    /// power loss together with a member loss still replays every stripe update. Off, a
    /// process crash is fully covered and a power loss falls back to resyncing the
    /// stripes of dirty regions (see `journal`).
    pub journal_sync: bool,
    /// Run the background worker (automatic rebuild onto spares, online requests).
    pub background: bool,
    /// Checksum failures on one member before it is marked failed.
    pub csum_error_limit: u32,
    /// Overrides the rebuild rate stored in the superblock (bytes per second, 0 = no limit).
    pub rebuild_rate_bytes_per_s: Option<u64>,
    /// Stripes rebuilt between two progress checkpoints.
    pub rebuild_checkpoint_stripes: u64,
    /// Size of the journal's record ring for `create`.
    pub journal_bytes: u64,
    /// Rate limit written into the superblock at `create` (KiB/s, 0 = unlimited).
    pub create_rebuild_rate_kib_s: u32,
    /// Wraps every file's I/O (fault injection in tests).
    pub wrap_io: Option<IoWrapper>,
    /// Assemble even while another process holds `raid.lock` (takeover of a node that is
    /// fenced by other means). Never set it for an ordinary open.
    pub take_over_lock: bool,
}

impl Default for RaidOptions {
    fn default() -> Self {
        RaidOptions {
            journal_sync: false,
            background: true,
            csum_error_limit: 256,
            rebuild_rate_bytes_per_s: None,
            rebuild_checkpoint_stripes: 256,
            journal_bytes: DEFAULT_RING_BYTES,
            create_rebuild_rate_kib_s: 0,
            wrap_io: None,
            take_over_lock: false,
        }
    }
}

impl std::fmt::Debug for RaidOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaidOptions")
            .field("journal_sync", &self.journal_sync)
            .field("background", &self.background)
            .finish_non_exhaustive()
    }
}

/// One open member file with its block checksums.
pub(crate) struct Member {
    pub path: PathBuf,
    pub io: Box<dyn MemberIo>,
    /// crc32c of every block of the member, as stored in its checksum area.
    pub csums: Vec<AtomicU32>,
    page_locks: Vec<Mutex<()>>,
    /// Checksum pages changed by journaled writes and not written yet. They are written
    /// at the next member sync (journal checkpoint); until then the journal and the dirty
    /// bitmap let assembly recompute those entries after a crash.
    dirty_pages: Vec<AtomicBool>,
    pub csum_errors: AtomicU32,
}

impl Member {
    pub fn new(path: PathBuf, io: Box<dyn MemberIo>, csums: Vec<u32>) -> Self {
        let pages = (csums.len() as u64).div_ceil(CSUMS_PER_PAGE) as usize;
        Member {
            path,
            io,
            csums: csums.into_iter().map(AtomicU32::new).collect(),
            page_locks: (0..CSUM_PAGE_LOCKS).map(|_| Mutex::new(())).collect(),
            dirty_pages: (0..pages).map(|_| AtomicBool::new(false)).collect(),
            csum_errors: AtomicU32::new(0),
        }
    }

    pub fn mark_csum_pages(&self, first: u64, last: u64) {
        for page in first / CSUMS_PER_PAGE..=last / CSUMS_PER_PAGE {
            self.dirty_pages[page as usize].store(true, Ordering::Release);
        }
    }

    /// Writes every checksum page marked dirty.
    pub fn write_dirty_csum_pages(&self, g: &Geometry) -> std::io::Result<()> {
        for (page, d) in self.dirty_pages.iter().enumerate() {
            if d.swap(false, Ordering::AcqRel) {
                let first = page as u64 * CSUMS_PER_PAGE;
                if let Err(e) = self.write_csum_pages(g, first, first) {
                    d.store(true, Ordering::Release);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Writes the checksum pages covering blocks `[first, last]`.
    pub fn write_csum_pages(&self, g: &Geometry, first: u64, last: u64) -> std::io::Result<()> {
        for page in first / CSUMS_PER_PAGE..=last / CSUMS_PER_PAGE {
            let _l = self.page_locks[(page as usize) % CSUM_PAGE_LOCKS]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let lo = page * CSUMS_PER_PAGE;
            let hi = (lo + CSUMS_PER_PAGE).min(g.blocks_per_member());
            let entries: Vec<u32> = (lo..hi)
                .map(|b| self.csums[b as usize].load(Ordering::Acquire))
                .collect();
            let buf = encode_csum_page(page, &entries);
            self.io
                .write_at(round_up_page(g.csum_start()) + page * PAGE_BYTES, &buf)?;
        }
        Ok(())
    }
}

#[derive(Clone)]
pub(crate) struct Spare {
    pub path: PathBuf,
}

/// The member table; changes are written to every superblock.
pub(crate) struct ArrayState {
    pub members: Vec<Option<Arc<Member>>>,
    pub states: Vec<MemberState>,
    /// (member, next stripe) of a running rebuild.
    pub rebuild: Option<(u32, u64)>,
    pub spares: Vec<Spare>,
    pub events: u64,
    pub rebuild_rate_kib_s: u32,
    pub spares_wanted: u32,
    /// Why each failed member failed (for status).
    pub reasons: Vec<Option<String>>,
}

/// A snapshot of the member table for one stripe operation.
#[derive(Clone)]
pub(crate) struct View {
    pub members: Vec<Option<Arc<Member>>>,
    pub states: Vec<MemberState>,
    pub rebuild: Option<(u32, u64)>,
}

impl View {
    pub fn usable(&self, m: u32, stripe: u64) -> Option<&Arc<Member>> {
        let mem = self.members[m as usize].as_ref()?;
        match self.states[m as usize] {
            MemberState::Active => Some(mem),
            MemberState::Rebuilding => match self.rebuild {
                Some((r, next)) if r == m && stripe < next => Some(mem),
                _ => None,
            },
            MemberState::Failed => None,
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub csum_mismatches: AtomicU64,
    pub repaired_blocks: AtomicU64,
    pub reconstructed_reads: AtomicU64,
    pub rmw_stripes: AtomicU64,
    pub rcw_stripes: AtomicU64,
    pub degraded_writes: AtomicU64,
    pub replayed_records: AtomicU64,
    /// Whole stripes of fresh data written without a journal record.
    pub unlogged_stripes: AtomicU64,
}

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub geometry: Geometry,
    pub array_id: u128,
    pub opts: RaidOptions,
    pub state: RwLock<ArrayState>,
    pub stripe_locks: Vec<RwLock<()>>,
    pub gate: RwLock<()>,
    pub journal: Mutex<Journal>,
    pub poisoned: AtomicBool,
    pub stop: AtomicBool,
    pub stats: Stats,
    pub lock_file: File,
    /// Set while a rebuild or scrub runs, for `status` in this process.
    pub busy: Mutex<Option<String>>,
    /// Serialises unaligned writes (read-modify-write of their edge blocks).
    pub unaligned: Mutex<()>,
}

/// Errors inside one stripe operation: a member to fail, or a final error.
pub(crate) enum OpError {
    Member(u32, String),
    Volume(VolumeError),
}

impl From<VolumeError> for OpError {
    fn from(e: VolumeError) -> Self {
        OpError::Volume(e)
    }
}

pub(crate) fn lock_read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn lock_write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    pub fn view(&self) -> View {
        let st = lock_read(&self.state);
        View {
            members: st.members.clone(),
            states: st.states.clone(),
            rebuild: st.rebuild,
        }
    }

    /// The member if it serves `stripe` (cheaper than a whole `view` on the read path).
    pub(crate) fn usable_member(&self, m: u32, stripe: u64) -> Option<Arc<Member>> {
        let st = lock_read(&self.state);
        let mem = st.members[m as usize].as_ref()?;
        let ok = match st.states[m as usize] {
            MemberState::Active => true,
            MemberState::Rebuilding => {
                matches!(st.rebuild, Some((r, next)) if r == m && stripe < next)
            }
            MemberState::Failed => false,
        };
        ok.then(|| Arc::clone(mem))
    }

    pub fn stripe_lock(&self, stripe: u64) -> &RwLock<()> {
        &self.stripe_locks[(stripe % STRIPE_LOCKS as u64) as usize]
    }

    pub fn check_poisoned(&self) -> Result<(), VolumeError> {
        if self.poisoned.load(Ordering::Acquire) {
            Err(VolumeError::Poisoned)
        } else {
            Ok(())
        }
    }

    pub(crate) fn poison(&self, e: VolumeError) -> VolumeError {
        log::error!("{}: {e}; refusing further writes", self.dir.display());
        self.poisoned.store(true, Ordering::Release);
        e
    }

    /// Writes the member table to every present member (and spare), bumping `events`.
    /// A member whose superblock cannot be written is failed (when the array can spare
    /// it) and the update is written again to the rest.
    pub fn write_superblocks(&self, st: &mut ArrayState, active: bool) -> Result<(), VolumeError> {
        loop {
            let failed = self.write_superblocks_once(st, active);
            let Some((i, e)) = failed.into_iter().next() else {
                return Ok(());
            };
            let others_down = (0..st.states.len())
                .filter(|o| *o != i && st.states[*o] != MemberState::Active)
                .count();
            if others_down > 0 {
                return Err(e);
            }
            log::warn!("member {i}: superblock write failed ({e}); marking it failed");
            st.states[i] = MemberState::Failed;
            st.reasons[i] = Some(format!("superblock write failed: {e}"));
            if matches!(st.rebuild, Some((r, _)) if r as usize == i) {
                st.rebuild = None;
            }
        }
    }

    /// Writes one superblock update; returns the members that failed to take it.
    fn write_superblocks_once(
        &self,
        st: &mut ArrayState,
        active: bool,
    ) -> Vec<(usize, VolumeError)> {
        st.events += 1;
        let (rebuild_member, rebuild_next_stripe) = st.rebuild.unwrap_or((NO_MEMBER, 0));
        let base = Superblock {
            array_id: self.array_id,
            events: st.events,
            geometry: self.geometry,
            spares: st.spares_wanted,
            role: 0,
            array_active: active,
            rebuild_rate_kib_s: st.rebuild_rate_kib_s,
            rebuild_member,
            rebuild_next_stripe,
            member_states: st.states.clone(),
        };
        let mut failed = Vec::new();
        for (i, m) in st.members.iter().enumerate() {
            let Some(m) = m else { continue };
            if st.states[i] == MemberState::Failed {
                continue;
            }
            let sb = Superblock {
                role: i as u32,
                ..base.clone()
            };
            if let Err(e) =
                m.io.write_at(sb.slot_offset(), &sb.encode())
                    .and_then(|_| m.io.sync())
            {
                failed.push((i, VolumeError::io(&m.path, e)));
            }
        }
        for s in &st.spares {
            let sb = Superblock {
                role: ROLE_SPARE,
                ..base.clone()
            };
            if let Err(e) = write_sb_to_path(&s.path, &sb, self.opts.wrap_io.as_ref()) {
                log::warn!("spare {}: {e}", s.path.display());
            }
        }
        failed
    }

    /// An operator's request to fail `m`: refused (without harm) when another member is
    /// already down, since the array would not survive it.
    pub fn fail_member_on_request(&self, m: u32, reason: &str) -> Result<(), VolumeError> {
        {
            let st = lock_read(&self.state);
            if let Some(o) = (0..st.states.len())
                .find(|o| *o != m as usize && st.states[*o] != MemberState::Active)
            {
                if st.states[m as usize] != MemberState::Failed {
                    return Err(VolumeError::Invalid {
                        path: self.dir.join(member_name(m)),
                        detail: format!(
                            "member {o} is already {}; failing member {m} too would lose the array",
                            st.states[o].name()
                        ),
                    });
                }
            }
        }
        self.fail_member(m, reason)
    }

    /// Marks `m` failed and records it on the survivors. A second failure poisons the volume.
    pub fn fail_member(&self, m: u32, reason: &str) -> Result<(), VolumeError> {
        let mut st = lock_write(&self.state);
        if st.states[m as usize] == MemberState::Failed {
            return Ok(());
        }
        let path = st.members[m as usize]
            .as_ref()
            .map(|x| x.path.clone())
            .unwrap_or_else(|| self.dir.join(member_name(m)));
        let others_down = st
            .states
            .iter()
            .enumerate()
            .filter(|(i, s)| *i as u32 != m && **s != MemberState::Active)
            .count();
        if others_down > 0 {
            let e = VolumeError::Invalid {
                path: path.clone(),
                detail: format!(
                    "member {m} failed ({reason}) while another member is already down; the array cannot continue"
                ),
            };
            return Err(self.poison(e));
        }
        log::warn!(
            "{}: member {m} marked failed: {reason}; running degraded",
            path.display()
        );
        st.states[m as usize] = MemberState::Failed;
        st.reasons[m as usize] = Some(reason.to_string());
        if matches!(st.rebuild, Some((r, _)) if r == m) {
            st.rebuild = None;
        }
        if let Err(e) = self.write_superblocks(&mut st, true) {
            return Err(self.poison(e));
        }
        Ok(())
    }

    /// Runs a stripe operation, failing members it reports and retrying.
    pub(crate) fn with_retries<T>(
        &self,
        mut f: impl FnMut() -> Result<T, OpError>,
    ) -> Result<T, VolumeError> {
        for _ in 0..4 {
            match f() {
                Ok(v) => return Ok(v),
                Err(OpError::Volume(e)) => return Err(e),
                Err(OpError::Member(m, why)) => self.fail_member(m, &why)?,
            }
        }
        Err(VolumeError::Invalid {
            path: self.dir.clone(),
            detail: "too many member failures in one operation".into(),
        })
    }

    pub fn member_path(&self, view: &View, m: u32) -> PathBuf {
        view.members[m as usize]
            .as_ref()
            .map(|x| x.path.clone())
            .unwrap_or_else(|| self.dir.join(member_name(m)))
    }

    /// Fails a member whose file was removed, replaced or truncated under the running
    /// volume (the open descriptor would otherwise keep serving an unlinked file).
    pub fn check_member_files(&self) {
        let view = self.view();
        for (i, m) in view.members.iter().enumerate() {
            let Some(m) = m else { continue };
            if view.states[i] == MemberState::Failed {
                continue;
            }
            let problem = match (std::fs::metadata(&m.path), m.io.identity()) {
                (Err(e), _) => Some(format!("member file is gone: {e}")),
                (Ok(meta), Some(id)) => {
                    use std::os::unix::fs::MetadataExt;
                    if (meta.dev(), meta.ino()) != id {
                        Some("member file was replaced by another file".to_string())
                    } else if meta.len() < self.geometry.member_bytes() {
                        Some(format!(
                            "member file was truncated to {} bytes (needs {})",
                            meta.len(),
                            self.geometry.member_bytes()
                        ))
                    } else {
                        None
                    }
                }
                (Ok(_), None) => None,
            };
            if let Some(why) = problem {
                if let Err(e) = self.fail_member(i as u32, &why) {
                    log::error!("{}: {e}", m.path.display());
                }
            }
        }
    }
}

pub(crate) fn write_sb_to_path(
    path: &Path,
    sb: &Superblock,
    wrap: Option<&IoWrapper>,
) -> Result<(), VolumeError> {
    let io = crate::files::wrap(path, crate::files::open_rw(path)?, wrap);
    io.write_at(sb.slot_offset(), &sb.encode())
        .and_then(|_| io.sync())
        .map_err(|e| VolumeError::io(path, e))
}

//! The RAID-5 volume: reads with checksum verification and repair, journaled stripe
//! writes (read-modify-write or reconstruct-write, whichever reads less), degraded mode.
//!
//! Locking: one `RwLock` per stripe slot (stripe mod `STRIPE_LOCKS`) orders every access
//! to a stripe; `gate` is held shared by writers between their journal append and the end
//! of their member writes, and exclusively by a journal checkpoint; `state` holds the
//! member table. Order: stripe locks (ascending) → gate → state/journal.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use crate::format::{
    block_crc, encode_csum_page, MemberState, Record, RecordRange, Superblock, CSUMS_PER_PAGE,
    NO_MEMBER, PAGE_BYTES, ROLE_SPARE,
};
use crate::journal::{Journal, DEFAULT_RING_BYTES};
use crate::layout::Geometry;
use crate::member::{IoWrapper, MemberIo};
use crate::parity::{xor_into, xor_many};
use crate::{BlockVolume, VolumeError, BLOCK_BYTES};

pub const STRIPE_LOCKS: usize = 1024;
/// Stripes per journal batch (one journal sync covers them all).
const BATCH_STRIPES: u64 = 32;
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
            self.io.write_at(
                crate::format::round_up_page(g.csum_start()) + page * PAGE_BYTES,
                &buf,
            )?;
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

pub struct RaidVolume {
    pub(crate) inner: Arc<Inner>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

fn lock_read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn lock_write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl RaidVolume {
    pub(crate) fn from_inner(inner: Arc<Inner>) -> RaidVolume {
        let vol = RaidVolume {
            inner,
            worker: Mutex::new(None),
        };
        if vol.inner.opts.background {
            let inner = Arc::clone(&vol.inner);
            let h = std::thread::Builder::new()
                .name("raid-worker".into())
                .spawn(move || crate::rebuild::worker_loop(inner))
                .ok();
            *vol.worker.lock().unwrap_or_else(|e| e.into_inner()) = h;
        }
        vol
    }

    pub fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn is_degraded(&self) -> bool {
        let st = lock_read(&self.inner.state);
        st.states.iter().any(|s| *s != MemberState::Active)
    }

    pub fn member_states(&self) -> Vec<MemberState> {
        lock_read(&self.inner.state).states.clone()
    }

    pub fn rebuild_progress(&self) -> Option<(u32, u64)> {
        lock_read(&self.inner.state).rebuild
    }

    pub fn events(&self) -> u64 {
        lock_read(&self.inner.state).events
    }

    /// Stops the worker and drops every handle without the clean-shutdown superblock
    /// update, as a crashed process would leave the files. For crash tests.
    pub fn abandon(self) {
        self.stop_worker();
        self.inner.poisoned.store(true, Ordering::SeqCst);
        // Drop sees `poisoned` and skips the clean shutdown.
    }

    fn stop_worker(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }

    /// Marks a member failed (as `raid-sim fail` does).
    pub fn fail_member(&self, member: u32, reason: &str) -> Result<(), VolumeError> {
        if member >= self.inner.geometry.disks {
            return Err(VolumeError::Invalid {
                path: self.inner.dir.clone(),
                detail: format!(
                    "no member {member} in a {}-disk array",
                    self.inner.geometry.disks
                ),
            });
        }
        self.inner.fail_member_on_request(member, reason)
    }
}

impl Drop for RaidVolume {
    fn drop(&mut self) {
        self.stop_worker();
        if self.inner.poisoned.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.inner.flush_all() {
            log::warn!("closing {}: {e}", self.inner.dir.display());
            return;
        }
        let mut st = lock_write(&self.inner.state);
        if let Err(e) = self.inner.write_superblocks(&mut st, false) {
            log::warn!("closing {}: {e}", self.inner.dir.display());
        }
    }
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
    fn usable_member(&self, m: u32, stripe: u64) -> Option<Arc<Member>> {
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

    fn poison(&self, e: VolumeError) -> VolumeError {
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
                        path: self.dir.join(crate::assemble::member_name(m)),
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
            .unwrap_or_else(|| self.dir.join(crate::assemble::member_name(m)));
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
    fn with_retries<T>(&self, mut f: impl FnMut() -> Result<T, OpError>) -> Result<T, VolumeError> {
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

    pub fn flush_all(&self) -> Result<(), VolumeError> {
        // Syncing an unlinked member file would promise durability that is not there.
        self.check_member_files();
        loop {
            let view = self.view();
            let mut failed = None;
            for (i, m) in view.members.iter().enumerate() {
                let Some(m) = m else { continue };
                if view.states[i] == MemberState::Failed {
                    continue;
                }
                if let Err(e) = m.io.sync() {
                    failed = Some((i as u32, e));
                    break;
                }
            }
            match failed {
                Some((i, e)) => self.fail_member(i, &format!("sync failed: {e}"))?,
                None => break,
            }
        }
        self.checkpoint_journal(true)
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), VolumeError> {
        let cap = self.geometry.capacity_bytes();
        match offset.checked_add(len as u64) {
            Some(end) if end <= cap => {}
            _ => {
                return Err(VolumeError::OutOfRange {
                    offset,
                    len: len as u64,
                    capacity_bytes: cap,
                })
            }
        }
        if !offset.is_multiple_of(BLOCK_BYTES) || !(len as u64).is_multiple_of(BLOCK_BYTES) {
            return Err(VolumeError::Invalid {
                path: self.dir.clone(),
                detail: format!(
                    "access at {offset}+{len} is not aligned to {BLOCK_BYTES}-byte blocks"
                ),
            });
        }
        Ok(())
    }

    /// For an access that is not block aligned, the aligned range enclosing it.
    pub fn enclosing_blocks(
        &self,
        offset: u64,
        len: usize,
    ) -> Result<Option<(u64, usize)>, VolumeError> {
        let cap = self.geometry.capacity_bytes();
        let end = match offset.checked_add(len as u64) {
            Some(end) if end <= cap => end,
            _ => {
                return Err(VolumeError::OutOfRange {
                    offset,
                    len: len as u64,
                    capacity_bytes: cap,
                })
            }
        };
        if offset.is_multiple_of(BLOCK_BYTES) && (len as u64).is_multiple_of(BLOCK_BYTES) {
            return Ok(None);
        }
        let start = offset / BLOCK_BYTES * BLOCK_BYTES;
        let end = end.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        Ok(Some((start, (end - start) as usize)))
    }

    // ---------------------------------------------------------------------------------
    // Reads
    // ---------------------------------------------------------------------------------

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.check_range(offset, buf.len())?;
        let g = self.geometry;
        let mut done = 0usize;
        while done < buf.len() {
            let loc = g.locate(offset + done as u64);
            let n = ((g.chunk_bytes - loc.chunk_offset) as usize).min(buf.len() - done);
            let piece = &mut buf[done..done + n];
            let fast = {
                let _l = lock_read(self.stripe_lock(loc.stripe));
                self.read_fast(loc.stripe, loc.member, loc.chunk_offset, piece)
            };
            if !fast {
                let _l = lock_write(self.stripe_lock(loc.stripe));
                self.with_retries(|| {
                    self.read_careful(loc.stripe, loc.member, loc.chunk_offset, piece, true)
                })?;
            }
            done += n;
        }
        Ok(())
    }

    /// Plain read of a healthy member whose blocks all match their checksums.
    fn read_fast(&self, stripe: u64, member: u32, chunk_offset: u64, buf: &mut [u8]) -> bool {
        let Some(m) = self.usable_member(member, stripe) else {
            return false;
        };
        let at = self.geometry.member_offset(stripe, chunk_offset);
        if m.io.read_at(at, buf).is_err() {
            return false;
        }
        let first = self.geometry.member_block(stripe, chunk_offset);
        buf.chunks_exact(BLOCK_BYTES as usize)
            .enumerate()
            .all(|(i, b)| block_crc(b) == m.csums[first as usize + i].load(Ordering::Acquire))
    }

    /// Reads `buf.len()` bytes of `member` at `chunk_offset` in `stripe`, verifying every
    /// block, reconstructing from the other members what is missing or bad, and (when
    /// `repair`) writing repaired blocks back. The stripe lock is held exclusively.
    ///
    /// Decision table for one block of a usable member whose checksum fails (the others
    /// all verify, R = xor of the others):
    /// | crc(R) = stored | D = R | action                                              |
    /// |-----------------|-------|-----------------------------------------------------|
    /// | yes             | –     | D is corrupt: return R, write R back, log           |
    /// | no              | yes   | the checksum entry is stale: rewrite it, return D   |
    /// | no              | no    | unrecoverable: Corrupt error                        |
    /// A second member failing its checksum in the same block row is unrecoverable.
    pub fn read_careful(
        &self,
        stripe: u64,
        member: u32,
        chunk_offset: u64,
        buf: &mut [u8],
        repair: bool,
    ) -> Result<(), OpError> {
        let g = self.geometry;
        let view = self.view();
        let at = g.member_offset(stripe, chunk_offset);
        let first = g.member_block(stripe, chunk_offset) as usize;
        let blocks = buf.len() / BLOCK_BYTES as usize;
        let bs = BLOCK_BYTES as usize;
        let target = view.usable(member, stripe).cloned();
        let mut bad: Vec<usize> = Vec::new();
        match &target {
            Some(m) => {
                if let Err(e) = m.io.read_at(at, buf) {
                    return Err(OpError::Member(member, format!("read error: {e}")));
                }
                for i in 0..blocks {
                    let want = m.csums[first + i].load(Ordering::Acquire);
                    if block_crc(&buf[i * bs..(i + 1) * bs]) != want {
                        bad.push(i);
                    }
                }
                if bad.is_empty() {
                    return Ok(());
                }
            }
            None => bad.extend(0..blocks),
        }
        // Reconstruct the bad blocks from every other member.
        let mut others: Vec<(u32, Vec<u8>)> = Vec::new();
        for o in 0..g.disks {
            if o == member {
                continue;
            }
            let Some(om) = view.usable(o, stripe) else {
                let path = self.member_path(&view, member);
                return Err(OpError::Volume(VolumeError::Corrupt {
                    what: "stripe",
                    path,
                    at,
                    detail: format!(
                        "stripe {stripe}: member {member} needs reconstruction but member {o} is also unavailable"
                    ),
                }));
            };
            let mut ob = vec![0u8; buf.len()];
            if let Err(e) = om.io.read_at(at, &mut ob) {
                return Err(OpError::Member(o, format!("read error: {e}")));
            }
            for &i in &bad {
                let want = om.csums[first + i].load(Ordering::Acquire);
                if block_crc(&ob[i * bs..(i + 1) * bs]) != want {
                    self.stats.csum_mismatches.fetch_add(1, Ordering::Relaxed);
                    return Err(OpError::Volume(VolumeError::Corrupt {
                        what: "block",
                        path: om.path.clone(),
                        at: at + (i * bs) as u64,
                        detail: format!(
                            "stripe {stripe}: blocks of member {member} and member {o} both fail their checksums; cannot reconstruct"
                        ),
                    }));
                }
            }
            others.push((o, ob));
        }
        for &i in &bad {
            let range = i * bs..(i + 1) * bs;
            let srcs: Vec<&[u8]> = others.iter().map(|(_, b)| &b[range.clone()]).collect();
            let mut r = vec![0u8; bs];
            xor_many(&mut r, &srcs);
            let Some(m) = &target else {
                buf[range].copy_from_slice(&r);
                self.stats
                    .reconstructed_reads
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let block_at = at + (i * bs) as u64;
            let stored = m.csums[first + i].load(Ordering::Acquire);
            self.stats.csum_mismatches.fetch_add(1, Ordering::Relaxed);
            let errors = m.csum_errors.fetch_add(1, Ordering::Relaxed) + 1;
            if block_crc(&r) == stored {
                log::warn!(
                    "{}: block at byte {block_at} (stripe {stripe}) failed its checksum; repaired from parity",
                    m.path.display()
                );
                buf[range].copy_from_slice(&r);
                if repair {
                    if let Err(e) = m.io.write_at(block_at, &r) {
                        return Err(OpError::Member(
                            member,
                            format!("write error during repair: {e}"),
                        ));
                    }
                    self.stats.repaired_blocks.fetch_add(1, Ordering::Relaxed);
                }
            } else if buf[range.clone()] == r[..] {
                log::warn!(
                    "{}: checksum entry of block at byte {block_at} was stale; rewritten",
                    m.path.display()
                );
                m.csums[first + i].store(block_crc(&r), Ordering::Release);
                let b = (first + i) as u64;
                if repair {
                    if let Err(e) = m.write_csum_pages(&g, b, b) {
                        return Err(OpError::Member(member, format!("write error: {e}")));
                    }
                    self.stats.repaired_blocks.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                return Err(OpError::Volume(VolumeError::Corrupt {
                    what: "block",
                    path: m.path.clone(),
                    at: block_at,
                    detail: format!(
                        "stripe {stripe}: block fails its checksum and the parity reconstruction does not match either"
                    ),
                }));
            }
            if errors > self.opts.csum_error_limit {
                return Err(OpError::Member(
                    member,
                    format!(
                        "{errors} checksum failures (limit {})",
                        self.opts.csum_error_limit
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn member_path(&self, view: &View, m: u32) -> PathBuf {
        view.members[m as usize]
            .as_ref()
            .map(|x| x.path.clone())
            .unwrap_or_else(|| self.dir.join(crate::assemble::member_name(m)))
    }

    /// Reads a member range for a stripe update and verifies it, repairing bad blocks
    /// through `read_careful` first.
    fn read_verified(
        &self,
        view: &View,
        stripe: u64,
        member: u32,
        chunk_offset: u64,
        buf: &mut [u8],
    ) -> Result<(), OpError> {
        let Some(m) = view.usable(member, stripe) else {
            return Err(OpError::Member(member, "became unavailable".into()));
        };
        let at = self.geometry.member_offset(stripe, chunk_offset);
        if let Err(e) = m.io.read_at(at, buf) {
            return Err(OpError::Member(member, format!("read error: {e}")));
        }
        let first = self.geometry.member_block(stripe, chunk_offset) as usize;
        let ok = buf
            .chunks_exact(BLOCK_BYTES as usize)
            .enumerate()
            .all(|(i, b)| block_crc(b) == m.csums[first + i].load(Ordering::Acquire));
        if ok {
            Ok(())
        } else {
            self.read_careful(stripe, member, chunk_offset, buf, true)
        }
    }

    // ---------------------------------------------------------------------------------
    // Writes
    // ---------------------------------------------------------------------------------

    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        self.write_as(offset, data, false)
    }

    /// `write`; with `fresh`, the caller vouches that nothing lives in the range, so that
    /// stripes the write covers whole skip the journal (see `BlockVolume::write_fresh_at`).
    pub fn write_as(&self, offset: u64, data: &[u8], fresh: bool) -> Result<(), VolumeError> {
        self.check_poisoned()?;
        self.check_range(offset, data.len())?;
        let g = self.geometry;
        // One batch: stripes whose records fit a quarter of the journal, one journal sync.
        let record_bytes = g.disks as u64 * g.chunk_bytes + PAGE_BYTES;
        let max_batch = self
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .max_batch_bytes();
        let batch_stripes = (max_batch / record_bytes).clamp(1, BATCH_STRIPES);
        let mut done = 0usize;
        while done < data.len() {
            let first_stripe = g.locate(offset + done as u64).stripe;
            let last_stripe = (first_stripe + batch_stripes - 1).min(g.stripes - 1);
            let batch_end_logical =
                ((last_stripe + 1) * g.stripe_data_bytes()).min(offset + data.len() as u64);
            let batch_len = (batch_end_logical - offset) as usize - done;
            let batch = &data[done..done + batch_len];
            self.write_batch(offset + done as u64, batch, fresh)?;
            done += batch_len;
        }
        Ok(())
    }

    fn write_batch(&self, offset: u64, data: &[u8], fresh: bool) -> Result<(), VolumeError> {
        let g = self.geometry;
        // Split into per-stripe pieces: (stripe, [(data_index, chunk_offset, bytes)]).
        let mut stripes: Vec<(u64, Vec<Piece>)> = Vec::new();
        let mut done = 0usize;
        while done < data.len() {
            let loc = g.locate(offset + done as u64);
            let n = ((g.chunk_bytes - loc.chunk_offset) as usize).min(data.len() - done);
            let piece = (loc.data_index, loc.chunk_offset, &data[done..done + n]);
            match stripes.last_mut() {
                Some((s, v)) if *s == loc.stripe => v.push(piece),
                _ => stripes.push((loc.stripe, vec![piece])),
            }
            done += n;
        }
        let _locks: Vec<_> = stripes
            .iter()
            .map(|(s, _)| lock_write(self.stripe_lock(*s)))
            .collect();
        self.with_retries(|| {
            self.check_poisoned()?;
            let view = self.view();
            let mut logged = Vec::with_capacity(stripes.len());
            let mut unlogged = Vec::new();
            for (s, pieces) in &stripes {
                let record = self.plan_stripe(&view, *s, pieces)?;
                let whole =
                    pieces.iter().map(|p| p.2.len() as u64).sum::<u64>() == g.stripe_data_bytes();
                if fresh && whole {
                    unlogged.push(record);
                } else {
                    logged.push(record);
                }
            }
            self.journal_and_apply(&view, logged, unlogged)
        })
    }

    /// Computes the ranges a stripe update writes (the journal record), reading what the
    /// chosen method needs.
    fn plan_stripe(
        &self,
        view: &View,
        stripe: u64,
        pieces: &[(u32, u64, &[u8])],
    ) -> Result<Record, OpError> {
        let g = self.geometry;
        let p = g.parity_member(stripe);
        let u0 = pieces.iter().map(|x| x.1).min().unwrap_or(0);
        let u1 = pieces
            .iter()
            .map(|x| x.1 + x.2.len() as u64)
            .max()
            .unwrap_or(0);
        let ulen = (u1 - u0) as usize;
        let down: Vec<u32> = (0..g.disks)
            .filter(|m| view.usable(*m, stripe).is_none())
            .collect();
        if down.len() > 1 {
            return Err(OpError::Volume(VolumeError::Invalid {
                path: self.dir.clone(),
                detail: format!("stripe {stripe}: members {down:?} unavailable; cannot write"),
            }));
        }
        let piece_of = |i: u32| pieces.iter().find(|x| x.0 == i);
        let mut ranges = Vec::new();
        for (i, off, bytes) in pieces {
            let m = g.data_member(stripe, *i);
            if view.usable(m, stripe).is_some() {
                ranges.push(RecordRange {
                    member: m,
                    chunk_offset: *off as u32,
                    data: bytes.to_vec(),
                });
            }
        }
        if down.first() == Some(&p) {
            // Parity member down: data alone.
            self.stats.degraded_writes.fetch_add(1, Ordering::Relaxed);
            return Ok(Record {
                seq: 0,
                stripe,
                ranges,
            });
        }
        let covers =
            |i: u32| matches!(piece_of(i), Some((_, off, b)) if *off == u0 && b.len() == ulen);
        let parity = if let Some(&f) = down.first() {
            // Degraded: rebuild the missing member's image over [u0, u1), then recompute.
            self.stats.degraded_writes.fetch_add(1, Ordering::Relaxed);
            let mut images: Vec<Vec<u8>> = Vec::new();
            let mut missing = vec![0u8; ulen];
            self.read_verified(view, stripe, p, u0, &mut missing)?;
            for i in 0..g.data_disks() {
                let m = g.data_member(stripe, i);
                if m == f {
                    continue;
                }
                let mut img = vec![0u8; ulen];
                self.read_verified(view, stripe, m, u0, &mut img)?;
                xor_into(&mut missing, &img);
                overlay(&mut img, u0, piece_of(i));
                images.push(img);
            }
            let fi = g.data_index(stripe, f).expect("f is a data member");
            overlay(&mut missing, u0, piece_of(fi));
            images.push(missing);
            let refs: Vec<&[u8]> = images.iter().map(|v| v.as_slice()).collect();
            let mut par = vec![0u8; ulen];
            xor_many(&mut par, &refs);
            par
        } else {
            let rmw_reads = pieces.len() + 1;
            let rcw_reads = (0..g.data_disks()).filter(|i| !covers(*i)).count();
            if rcw_reads <= rmw_reads {
                self.stats.rcw_stripes.fetch_add(1, Ordering::Relaxed);
                // Covering pieces are used in place; only partly covered chunks are read.
                let mut read: Vec<Option<Vec<u8>>> = Vec::new();
                for i in 0..g.data_disks() {
                    if covers(i) {
                        read.push(None);
                        continue;
                    }
                    let mut img = vec![0u8; ulen];
                    self.read_verified(view, stripe, g.data_member(stripe, i), u0, &mut img)?;
                    overlay(&mut img, u0, piece_of(i));
                    read.push(Some(img));
                }
                let refs: Vec<&[u8]> = (0..g.data_disks())
                    .map(|i| match (&read[i as usize], piece_of(i)) {
                        (Some(img), _) => img.as_slice(),
                        (None, Some(piece)) => piece.2,
                        (None, None) => unreachable!("a covered chunk has a piece"),
                    })
                    .collect();
                let mut par = vec![0u8; ulen];
                xor_many(&mut par, &refs);
                par
            } else {
                self.stats.rmw_stripes.fetch_add(1, Ordering::Relaxed);
                let mut par = vec![0u8; ulen];
                self.read_verified(view, stripe, p, u0, &mut par)?;
                for (i, off, bytes) in pieces {
                    let mut old = vec![0u8; bytes.len()];
                    self.read_verified(view, stripe, g.data_member(stripe, *i), *off, &mut old)?;
                    let at = (*off - u0) as usize;
                    let dst = &mut par[at..at + bytes.len()];
                    xor_into(dst, &old);
                    xor_into(dst, bytes);
                }
                par
            }
        };
        ranges.push(RecordRange {
            member: p,
            chunk_offset: u0 as u32,
            data: parity,
        });
        Ok(Record {
            seq: 0,
            stripe,
            ranges,
        })
    }

    /// Logs `records` in the journal, then writes them and `unlogged` (whole stripes of
    /// fresh data, whose loss in a crash harms nobody) to the members. Every stripe's region
    /// is marked dirty first, so that assembly after a crash resyncs the parity of an
    /// unlogged stripe that was cut short.
    fn journal_and_apply(
        &self,
        view: &View,
        mut records: Vec<Record>,
        unlogged: Vec<Record>,
    ) -> Result<(), OpError> {
        let stripes: Vec<u64> = records.iter().chain(&unlogged).map(|r| r.stripe).collect();
        loop {
            let gate = lock_read(&self.gate);
            let (appended, strict) = {
                let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
                j.mark_dirty(&stripes).map_err(|e| self.poison(e))?;
                let a = if records.is_empty() {
                    Ok(())
                } else {
                    j.append(&mut records).map_err(|e| self.poison(e))?
                };
                (a, j.strict())
            };
            if appended.is_err() {
                drop(gate);
                // Strict mode keeps a record until its stripe is durable; otherwise the
                // dirty bitmap covers power loss and the ring only has to outlive a
                // process crash, which it does once the records are applied.
                self.checkpoint_journal(strict)?;
                continue;
            }
            for r in records.iter().chain(&unlogged) {
                self.apply_record(view, r)?;
            }
            self.stats
                .unlogged_stripes
                .fetch_add(unlogged.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
    }

    /// Frees the journal (every appended record has been applied: writers hold the gate
    /// from append to the end of their member writes). With `sync_members`, the members
    /// are synced first and the dirty bitmap is cleared.
    pub fn checkpoint_journal(&self, sync_members: bool) -> Result<(), VolumeError> {
        let _g = lock_write(&self.gate);
        if sync_members {
            let view = self.view();
            for (i, m) in view.members.iter().enumerate() {
                if let (Some(m), false) = (m, view.states[i] == MemberState::Failed) {
                    m.write_dirty_csum_pages(&self.geometry)
                        .and_then(|_| m.io.sync())
                        .map_err(|e| self.poison(VolumeError::io(&m.path, e)))?;
                }
            }
        }
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.checkpoint(sync_members).map_err(|e| self.poison(e))
    }

    /// After a crash: makes a stripe of a dirty region consistent when no journal record
    /// covered it (records lost with a power failure). The data is taken as truth: block
    /// checksums that disagree are recomputed, then the parity. Returns false when the
    /// stripe is degraded and its parity cannot be vouched for.
    pub fn resync_stripe(&self, stripe: u64) -> Result<bool, VolumeError> {
        let g = self.geometry;
        let _l = lock_write(self.stripe_lock(stripe));
        let view = self.view();
        let p = g.parity_member(stripe);
        let at = g.member_offset(stripe, 0);
        let first = g.member_block(stripe, 0);
        let nblocks = g.blocks_per_chunk();
        let bs = BLOCK_BYTES as usize;
        let mut chunks: Vec<Option<Vec<u8>>> = Vec::new();
        for m in 0..g.disks {
            match view.usable(m, stripe) {
                Some(mem) => {
                    let mut b = vec![0u8; g.chunk_bytes as usize];
                    mem.io
                        .read_at(at, &mut b)
                        .map_err(|e| VolumeError::io(&mem.path, e))?;
                    chunks.push(Some(b));
                }
                None => chunks.push(None),
            }
        }
        let missing: Vec<u32> = (0..g.disks)
            .filter(|m| chunks[*m as usize].is_none())
            .collect();
        let fix_csums = |m: u32, data: &[u8]| -> Result<(), VolumeError> {
            let mem = view.members[m as usize].as_ref().expect("usable");
            let mut changed = false;
            for (i, b) in data.chunks_exact(bs).enumerate() {
                let c = block_crc(b);
                if mem.csums[first as usize + i].swap(c, Ordering::AcqRel) != c {
                    changed = true;
                }
            }
            if changed {
                mem.write_csum_pages(&g, first, first + nblocks - 1)
                    .map_err(|e| VolumeError::io(&mem.path, e))?;
            }
            Ok(())
        };
        for m in 0..g.disks {
            if m != p {
                if let Some(d) = &chunks[m as usize] {
                    fix_csums(m, d)?;
                }
            }
        }
        if !missing.is_empty() {
            if let Some(par) = &chunks[p as usize] {
                fix_csums(p, par)?;
            }
            return Ok(missing == [p]);
        }
        let data: Vec<&[u8]> = (0..g.disks)
            .filter(|m| *m != p)
            .map(|m| chunks[m as usize].as_deref().expect("present"))
            .collect();
        let mut par = vec![0u8; g.chunk_bytes as usize];
        xor_many(&mut par, &data);
        if chunks[p as usize].as_deref() != Some(&par[..]) {
            let mem = view.members[p as usize].as_ref().expect("usable");
            mem.io
                .write_at(at, &par)
                .map_err(|e| VolumeError::io(&mem.path, e))?;
            log::info!("stripe {stripe}: parity resynced after an unclean shutdown");
        }
        fix_csums(p, &par)?;
        Ok(true)
    }

    /// Writes a record's ranges to the members it names and updates their checksums.
    /// A member that fails to take its write is failed; the rest goes on, since the
    /// parity already reflects the new data.
    pub fn apply_record(&self, view: &View, r: &Record) -> Result<(), OpError> {
        let g = self.geometry;
        let mut failed: Vec<(u32, String)> = Vec::new();
        for range in &r.ranges {
            let Some(m) = view.usable(range.member, r.stripe) else {
                continue;
            };
            let chunk_offset = range.chunk_offset as u64;
            let at = g.member_offset(r.stripe, chunk_offset);
            let first = g.member_block(r.stripe, chunk_offset);
            for (i, b) in range.data.chunks_exact(BLOCK_BYTES as usize).enumerate() {
                m.csums[first as usize + i].store(block_crc(b), Ordering::Release);
            }
            let nblocks = range.data.len() as u64 / BLOCK_BYTES;
            m.mark_csum_pages(first, first + nblocks.max(1) - 1);
            if let Err(e) = m.io.write_at(at, &range.data) {
                failed.push((range.member, format!("write error: {e}")));
            }
        }
        // Fail them now, then carry on: the record is complete without one member (a
        // second failure poisons the volume and ends here).
        for (m, why) in failed {
            self.fail_member(m, &why)?;
        }
        Ok(())
    }
}

/// New bytes for one chunk of a stripe: (data index, offset in the chunk, bytes).
type Piece<'a> = (u32, u64, &'a [u8]);

fn overlay(img: &mut [u8], u0: u64, piece: Option<&Piece>) {
    if let Some((_, off, bytes)) = piece {
        let at = (*off - u0) as usize;
        img[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

pub(crate) fn write_sb_to_path(
    path: &Path,
    sb: &Superblock,
    wrap: Option<&IoWrapper>,
) -> Result<(), VolumeError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| VolumeError::io(path, e))?;
    let io = crate::assemble::wrap(path, file, wrap);
    io.write_at(sb.slot_offset(), &sb.encode())
        .and_then(|_| io.sync())
        .map_err(|e| VolumeError::io(path, e))
}

impl BlockVolume for RaidVolume {
    fn fence(&self) {
        // Poisoned first, so that no write starts after this point and Drop skips the
        // clean-shutdown superblock update; then no rebuild or scrub, then the lock.
        self.inner.poisoned.store(true, Ordering::SeqCst);
        self.stop_worker();
        if let Err(e) = self.inner.lock_file.unlock() {
            log::warn!("{}: releasing raid.lock: {e}", self.inner.dir.display());
        }
        log::warn!(
            "{}: fenced: no more writes from this process; raid.lock released",
            self.inner.dir.display()
        );
    }

    fn capacity_bytes(&self) -> u64 {
        self.inner.geometry.capacity_bytes()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        match self.inner.enclosing_blocks(offset, buf.len())? {
            None => self.inner.read(offset, buf),
            Some((start, len)) => {
                let mut whole = vec![0u8; len];
                self.inner.read(start, &mut whole)?;
                let at = (offset - start) as usize;
                buf.copy_from_slice(&whole[at..at + buf.len()]);
                Ok(())
            }
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        match self.inner.enclosing_blocks(offset, data.len())? {
            None => self.inner.write(offset, data),
            Some((start, len)) => {
                // Unaligned writes read and rewrite their edge blocks; they are serialised
                // among themselves so that two of them never lose each other's bytes.
                let _one = self
                    .inner
                    .unaligned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let mut whole = vec![0u8; len];
                self.inner.read(start, &mut whole)?;
                let at = (offset - start) as usize;
                whole[at..at + data.len()].copy_from_slice(data);
                self.inner.write(start, &whole)
            }
        }
    }

    fn write_fresh_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        match self.inner.enclosing_blocks(offset, data.len())? {
            None => self.inner.write_as(offset, data, true),
            Some(_) => self.write_at(offset, data),
        }
    }

    fn flush(&self) -> Result<(), VolumeError> {
        self.inner.check_poisoned()?;
        self.inner.flush_all()
    }

    fn describe(&self) -> String {
        let g = self.inner.geometry;
        let st = lock_read(&self.inner.state);
        let states: Vec<String> = st
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| match (s, &st.reasons[i]) {
                (MemberState::Failed, Some(why)) => format!("{i}:failed ({why})"),
                _ => format!("{i}:{}", s.name()),
            })
            .collect();
        let degraded = st.states.iter().any(|s| *s != MemberState::Active);
        format!(
            "raid5 {} ({} disks, chunk {} KiB, {} bytes, {}{}; members {}; spares {})",
            self.inner.dir.display(),
            g.disks,
            g.chunk_bytes / 1024,
            g.capacity_bytes(),
            if degraded { "degraded" } else { "clean" },
            match st.rebuild {
                Some((m, s)) => format!(", rebuilding member {m} at stripe {s}/{}", g.stripes),
                None => String::new(),
            },
            states.join(" "),
            st.spares.len()
        )
    }
}

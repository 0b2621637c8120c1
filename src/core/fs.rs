//! `Fs`: the running file system. Executes ops (log, apply, answer), serves reads, takes
//! checkpoints, and recovers a volume on open.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use raid_sim::BlockVolume;

use super::alloc::Allocator;
use super::direct;
use super::meta::{self, MetaRecord, BLOB_DELTA, BLOB_SNAPSHOT};
use super::ops::FsOp;
use super::recovery::{self, Action, CheckpointState, OpState};
use super::state::{FsState, FIRST_COOKIE};
use super::superblock::{BlobRef, Superblock, MAX_BLOBS};
use super::types::*;
use super::FsError;
use crate::progress::Progress;
use crate::statelog::{EntryKind, ScanEnd, StateLog};

/// Bytes kept free in the ring for the entries a checkpoint logs (Begun, Done), wrap
/// filler included, so that a checkpoint can always start when the ring is full.
const CHECKPOINT_RESERVE_BYTES: u64 = 1024;
/// Bytes an `Applied` entry needs (wrap filler included).
const APPLIED_RESERVE_BYTES: u64 = 128;

/// Tunables of a mounted file system.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// A checkpoint runs at least this often while something changed.
    pub checkpoint_interval_ms: u64,
    /// …and as soon as the ring is this full (percent).
    pub checkpoint_fill_percent: u64,
    /// msync the ring after every op, not only on fsync.
    pub sync_every_op: bool,
    /// Large block-aligned writes go straight to fresh volume blocks (see `direct`).
    pub direct_writes: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            checkpoint_interval_ms: 5000,
            checkpoint_fill_percent: 50,
            sync_every_op: false,
            direct_writes: true,
        }
    }
}

/// Who is asking (from the FUSE request).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What `open` found and did, for logs and tests.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub entries_scanned: usize,
    pub replayed: usize,
    pub discarded: usize,
    pub skipped: usize,
    pub replay_failures: usize,
    pub orphans_purged: usize,
    pub torn_tail_at: Option<u64>,
    pub covers_seq: u64,
    pub elapsed_ms: u128,
    /// Direct writes replayed whose data was read back and checked, and those whose data
    /// the volume did not hold.
    pub direct_checked: usize,
    pub direct_lost: usize,
}

/// One directory entry for readdir.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub offset: u64,
    pub ino: u64,
    pub kind: Kind,
    pub name: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// Figures of what the last checkpoint did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckpointReport {
    pub covers_seq: u64,
    pub data_blocks: u64,
    pub meta_bytes: u64,
    pub compacted: bool,
    pub elapsed_ms: u128,
}

pub struct Core {
    pub state: FsState,
    pub alloc: Allocator,
    pub sb: Superblock,
    /// Bytes of the newest snapshot and of the deltas written after it.
    snapshot_bytes: u64,
    delta_bytes: u64,
    /// Set after a volume write failed: the file system refuses changes until remounted.
    poisoned: Option<String>,
}

/// How a poison reason starts when the node was fenced (as opposed to an I/O failure).
const FENCED_PREFIX: &str = "fenced: ";

pub struct Fs {
    core: Mutex<Core>,
    log: StateLog,
    vol: Arc<dyn BlockVolume>,
    /// Readers hold it shared while reading volume blocks they looked up; a checkpoint
    /// takes it exclusively before blocks freed by its ops become reusable.
    reuse: RwLock<()>,
    one_checkpoint: Mutex<()>,
    wake: (Mutex<bool>, Condvar),
    stopping: AtomicBool,
    config: FsConfig,
    voldir: PathBuf,
    pub recovery: RecoveryReport,
    pub checkpoints: AtomicU64,
    counters: OpCounters,
    last_checkpoint_at: Mutex<Instant>,
    mirror: std::sync::OnceLock<Arc<crate::mirror::Mirror>>,
    /// Run once when this node learns it was fenced (the daemon releases its volume lock).
    on_fenced: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Direct writes: how many landed on the volume, how many of those a volume flush
    /// made durable, and bytes of them since the last checkpoint.
    direct_landed: AtomicU64,
    direct_flushed: AtomicU64,
    direct_bytes: AtomicU64,
}

/// Running totals of ops by the state they reached (for `status`).
#[derive(Default)]
struct OpCounters {
    accepted: AtomicU64,
    applied: AtomicU64,
    /// Accepted but failed (never applied, discarded by recovery).
    failed: AtomicU64,
    /// Applied ops covered by a completed checkpoint.
    committed: AtomicU64,
    /// Seqs of the `Applied` entries of ops applied in memory whose caller waits for the
    /// mirror agent's acknowledgement (sync mode): the ones at or below the agent's
    /// acknowledged seq are *Mirrored*, the others still *Accepted* as far as the caller
    /// knows. Bounded by the number of FUSE worker threads.
    awaiting_mirror: Mutex<std::collections::BTreeSet<u64>>,
}

/// A point-in-time view of the running file system (`smlogfs status`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct FsStatus {
    /// Ops now in each state: logged but not applied, applied (answered) but not yet on the
    /// volume, and on the volume (since mount).
    pub ops_accepted: u64,
    pub ops_mirrored: u64,
    pub ops_applied: u64,
    pub ops_committed: u64,
    pub ring_used_bytes: u64,
    pub ring_area_bytes: u64,
    pub ring_fill_percent: u64,
    pub ring_checkpoint_fill_percent: u64,
    pub next_seq: u64,
    pub flushed_seq: u64,
    pub checkpoint_seq: u64,
    pub checkpoint_generation: u64,
    pub checkpoint_age_ms: u64,
    pub checkpoints_since_mount: u64,
    pub epoch: u64,
    pub volume: String,
    pub poisoned: Option<String>,
    pub inodes: u64,
    pub dirty_blocks: u64,
    /// None without a mirror.
    pub mirror: Option<MirrorInfo>,
}

/// The mirror link as `status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MirrorInfo {
    pub routes: String,
    pub route_in_use: Option<String>,
    pub connected: bool,
    pub protected: bool,
    pub mode: String,
    pub on_loss: String,
    pub unacked_entries: u64,
    pub acked_through: Option<u64>,
    /// Resynchronising the agent: it must acknowledge through this seq to be protected.
    pub resync_through: Option<u64>,
    pub rtt_us: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

impl Fs {
    /// Opens the volume in `voldir`: loads the last checkpoint, replays the ring after it
    /// (completed or replaced by the mirror agent's copy when `mirror` is given; `takeover`
    /// uses the agent's copy only), and connects the mirror.
    pub fn open_volume(
        voldir: &Path,
        config: FsConfig,
        progress: &dyn Fn(&str, u64) -> Progress,
        mirror: Option<crate::mirror::MirrorOptions>,
        takeover: bool,
    ) -> Result<Fs, FsError> {
        let source = mirror.as_ref().map(|options| MirrorSource {
            options,
            force: takeover,
        });
        let r = recover(voldir, progress, source)?;
        let rebuilt = r.scan.is_none();
        let scan = match &r.scan {
            Some(scan) => scan.clone(),
            None => {
                // The entries came (partly) from the mirror: start a fresh local ring after
                // them, keeping the old file aside.
                if r.ring_path.exists() {
                    let aside = r
                        .ring_path
                        .with_extension(format!("replaced-{}", Ts::now().sec));
                    std::fs::rename(&r.ring_path, &aside)
                        .map_err(|e| crate::statelog::LogError::io(&r.ring_path, e))?;
                    log::warn!("kept the previous local state log as {}", aside.display());
                }
                StateLog::create_from(
                    &r.ring_path,
                    r.sb.ring_bytes,
                    r.sb.volume_id,
                    r.next_seq,
                    |_| {},
                )?;
                StateLog::scan_file(&r.ring_path)?
            }
        };
        let log = StateLog::open(&r.ring_path, &scan)?;
        let rep = &r.report;
        log::info!(
            "recovered {}: checkpoint covers seq {}, {} entries scanned, {} ops replayed, {} discarded \
             (never answered), {} skipped, {} orphans purged, in {} ms",
            voldir.display(),
            rep.covers_seq,
            rep.entries_scanned,
            rep.replayed,
            rep.discarded,
            rep.skipped,
            rep.orphans_purged,
            rep.elapsed_ms
        );
        if rep.direct_checked > 0 {
            log::info!(
                "recovery read back {} direct writes from the volume: {} intact, {} lost (read as zeroes)",
                rep.direct_checked,
                rep.direct_checked - rep.direct_lost,
                rep.direct_lost
            );
        }
        let snapshot_bytes = r.sb.blobs.first().map_or(0, |b| b.payload_bytes);
        let delta_bytes = r.meta_bytes - snapshot_bytes;
        Ok(Fs {
            core: Mutex::new(Core {
                state: r.state,
                alloc: r.alloc,
                sb: r.sb,
                snapshot_bytes,
                delta_bytes,
                poisoned: None,
            }),
            log,
            vol: r.vol,
            reuse: RwLock::new(()),
            one_checkpoint: Mutex::new(()),
            wake: (Mutex::new(false), Condvar::new()),
            stopping: AtomicBool::new(false),
            config,
            voldir: voldir.to_path_buf(),
            recovery: r.report,
            checkpoints: AtomicU64::new(0),
            counters: OpCounters::default(),
            last_checkpoint_at: Mutex::new(Instant::now()),
            mirror: std::sync::OnceLock::new(),
            on_fenced: Mutex::new(None),
            direct_landed: AtomicU64::new(0),
            direct_flushed: AtomicU64::new(0),
            direct_bytes: AtomicU64::new(0),
        })
        .and_then(|fs| {
            if rebuilt {
                // Put what was recovered from the mirror on the volume before serving.
                fs.checkpoint()?;
            }
            if let Some(options) = mirror {
                fs.attach_mirror(options)?;
            }
            Ok(fs)
        })
    }

    /// Connects the mirror agent, resends the local entries it lacks, and from then on
    /// forwards every appended entry.
    /// Runs before the file system serves anything, so nothing appends meanwhile.
    fn attach_mirror(&self, options: crate::mirror::MirrorOptions) -> Result<(), FsError> {
        // What the ring holds now (a checkpoint may have run since recovery's scan).
        let scan = StateLog::scan_file(self.log.path())?;
        let (volume_id, epoch, covers) = {
            let core = self.lock();
            (core.sb.volume_id, core.sb.epoch, core.sb.covers_seq)
        };
        let routes = options.routes_text();
        let mirror = crate::mirror::Mirror::connect(options, volume_id, epoch).map_err(|e| {
            FsError::Mirror {
                routes: routes.clone(),
                detail: e.to_string(),
            }
        })?;
        let mirror = Arc::new(mirror);
        // The agent may drop what the volume's checkpoint holds, and accepts entries after it.
        mirror.checkpoint(covers);
        let mut resent = 0;
        for e in scan.entries.iter().filter(|e| e.header.seq > covers) {
            mirror.submit(e.header.seq, self.self_contained(e)?);
            resent += 1;
        }
        if resent > 0 {
            log::info!(
                "mirror: resynchronising the agent with {resent} local entries after seq {covers}"
            );
        }
        crate::mirror::Mirror::watch_resync(&mirror);
        let sink = mirror.clone();
        self.log
            .set_sink(Box::new(move |seq, bytes| sink.submit(seq, bytes)));
        let _ = self.mirror.set(mirror);
        Ok(())
    }

    /// A ring entry as the mirror agent must hold it: a direct write's `Accepted` entry
    /// carries its data, read back from the volume.
    fn self_contained(&self, e: &crate::statelog::ScannedEntry) -> Result<Vec<u8>, FsError> {
        let is_accepted_op =
            e.header.kind == EntryKind::Op && e.header.state == OpState::Accepted as u8;
        let op = is_accepted_op
            .then(|| FsOp::decode(&e.payload).ok())
            .flatten()
            .filter(|op| matches!(op, FsOp::WriteDirect { .. }));
        let Some(FsOp::WriteDirect { len, phys, crc, .. }) = &op else {
            return Ok(e.to_bytes());
        };
        let data = match direct::read_back(&self.vol, *phys, *len, *crc)? {
            direct::ReadBack::Intact(data) => data,
            // Recovery replaced it by zeroes and the checkpoint after it covers it; a live
            // entry whose data is gone cannot happen (it landed before `Applied`).
            direct::ReadBack::Lost => vec![0u8; *len as usize],
        };
        let op = op.as_ref().expect("matched above");
        let inline = direct::inline_form(op, data)
            .expect("a direct write")
            .encode();
        let mut entry = e.clone();
        entry.header.len = (crate::statelog::ENTRY_HEADER_BYTES + inline.len()) as u32;
        entry.payload = inline;
        Ok(entry.to_bytes())
    }

    pub fn mirror(&self) -> Option<&Arc<crate::mirror::Mirror>> {
        self.mirror.get()
    }

    pub fn voldir(&self) -> &Path {
        &self.voldir
    }

    pub fn statelog(&self) -> &StateLog {
        &self.log
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs and applies one op built from the current state: Accepted (with the op), apply,
    /// Applied. Waits for a checkpoint when the ring is full. The caller answers after.
    fn execute<T>(
        &self,
        build: impl Fn(&FsState) -> FsResult<FsOp>,
        answer: impl FnOnce(&FsState, &FsOp) -> FsResult<T>,
    ) -> FsResult<T> {
        self.execute_with(|core| build(&core.state), None, answer)
    }

    /// Runs one mutating op through its states: `build` makes it (under the core lock, with
    /// the allocator at hand for a direct write), it is logged `Accepted`, applied in
    /// memory, for a direct write `direct_data` lands in its volume blocks, it is logged
    /// `Applied`, the mirror acknowledges it, and `answer` makes the reply.
    fn execute_with<T>(
        &self,
        mut build: impl FnMut(&mut Core) -> FsResult<FsOp>,
        direct_data: Option<&[u8]>,
        answer: impl FnOnce(&FsState, &FsOp) -> FsResult<T>,
    ) -> FsResult<T> {
        let mut checkpoints_forced = 0;
        loop {
            let mut core = self.lock();
            if let Some(why) = &core.poisoned {
                // A fenced node is read-only for good; any other poison is an I/O failure.
                return Err(if why.starts_with(FENCED_PREFIX) {
                    Errno::EROFS
                } else {
                    Errno::EIO
                });
            }
            let op = build(&mut core)?;
            let payload = op.encode();
            // The mirror agent gets a direct write with its data: it cannot read our volume.
            let mirror_entry = match (&op, direct_data, self.mirror.get()) {
                (
                    FsOp::WriteDirect {
                        ino, offset, now, ..
                    },
                    Some(data),
                    Some(_),
                ) => {
                    let mut entry = vec![0u8; crate::statelog::ENTRY_HEADER_BYTES];
                    super::ops::encode_write_into(&mut entry, *ino, *offset, data, *now);
                    Some(entry)
                }
                _ => None,
            };
            let mirror_bytes = mirror_entry.as_ref().map_or(0, |m| m.len());
            let accepted = self
                .log
                .try_append_as(
                    EntryKind::Op,
                    None,
                    OpState::Accepted as u8,
                    &[&payload],
                    APPLIED_RESERVE_BYTES + CHECKPOINT_RESERVE_BYTES,
                    mirror_entry,
                )
                .map_err(|e| {
                    release_direct_blocks(&mut core, &op);
                    log::error!("{e}");
                    Errno::EIO
                })?;
            let Some(accepted) = accepted else {
                release_direct_blocks(&mut core, &op);
                drop(core);
                let need = self.log.worst_case_bytes(payload.len().max(mirror_bytes))
                    + APPLIED_RESERVE_BYTES
                    + CHECKPOINT_RESERVE_BYTES;
                self.request_checkpoint();
                self.log.wait_for_space(need, Duration::from_millis(200));
                continue;
            };
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = core.state.apply(&op) {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                release_direct_blocks(&mut core, &op);
                if e == Errno::NEED_CHECKPOINT {
                    drop(core);
                    checkpoints_forced += 1;
                    if checkpoints_forced > 2 || self.checkpoint().is_err() {
                        return Err(Errno::ENOSPC);
                    }
                    continue;
                }
                if e == Errno::EIO {
                    core.poisoned = Some("a volume read failed while applying an op".into());
                }
                // Accepted but never Applied: recovery discards it, like the caller did.
                return Err(e);
            }
            if let (Some(blocks), Some(data)) = (direct::blocks(&op), direct_data) {
                // Still under the core lock: no reader can look the new blocks up, and no
                // checkpoint can cover the op, before its data is in them.
                if let Err(e) = self.vol.write_fresh_at(blocks.start * BLOCK_BYTES, data) {
                    log::error!(
                        "direct write of {} bytes at volume block {}: {e}",
                        data.len(),
                        blocks.start
                    );
                    core.poisoned = Some(format!("a direct write to the volume failed: {e}"));
                    return Err(Errno::EIO);
                }
                self.direct_landed.fetch_add(1, Ordering::Release);
                let since = self
                    .direct_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if since + data.len() as u64 >= direct::DIRECT_CHECKPOINT_BYTES {
                    self.request_checkpoint();
                }
            }
            let applied = self
                .log
                .try_append(
                    EntryKind::Op,
                    Some(accepted.seq),
                    OpState::Applied as u8,
                    &[],
                    CHECKPOINT_RESERVE_BYTES,
                )
                .ok()
                .flatten();
            debug_assert!(
                applied.is_some(),
                "the Accepted entry reserved room for Applied"
            );
            self.counters.applied.fetch_add(1, Ordering::Relaxed);
            let result = answer(&core.state, &op);
            let fill = self.fill_percent();
            drop(core);
            if let (Some(m), Some(applied)) = (self.mirror.get(), applied) {
                let waiting = &self.counters.awaiting_mirror;
                lock_ignoring_poison(waiting).insert(applied.seq);
                let acked = m.wait(applied.seq);
                lock_ignoring_poison(waiting).remove(&applied.seq);
                if let Err(e) = acked {
                    return Err(self.mirror_failed(e));
                }
            }
            if fill >= self.config.checkpoint_fill_percent {
                self.request_checkpoint();
            }
            if self.config.sync_every_op {
                self.fsync()?;
            }
            return result;
        }
    }

    fn fill_percent(&self) -> u64 {
        let s = self.log.stats();
        s.used_bytes * 100 / s.area_bytes.max(1)
    }

    // ---- queries -------------------------------------------------------------------

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        Ok(self.lock().state.get(ino)?.attr())
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let core = self.lock();
        let ino = core.state.lookup(parent, name)?;
        Ok(core.state.get(ino)?.attr())
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let core = self.lock();
        core.state.get(ino)?.rec.target.clone().ok_or(Errno::EINVAL)
    }

    /// Entries after `offset`, at most `limit`, with offsets to resume from.
    /// Lists directory `ino` from after `offset`, handing each entry (with its attributes
    /// when `with_attr`) to `emit` until it returns true (its reply buffer is full): the
    /// work per call is what the caller takes, not the whole directory.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        with_attr: bool,
        mut emit: impl FnMut(DirEntry, Option<Attr>) -> bool,
    ) -> FsResult<()> {
        let core = self.lock();
        let node = core.state.get(ino)?;
        let dir = node.dir.as_ref().ok_or(Errno::ENOTDIR)?;
        let attr_of = |i: u64| {
            if with_attr {
                core.state.get(i).ok().map(|n| n.attr())
            } else {
                None
            }
        };
        let dots = [(1, ino, &b"."[..]), (2, node.rec.parent, &b".."[..])];
        for (cookie, child, name) in dots {
            if offset < cookie {
                let entry = DirEntry {
                    offset: cookie,
                    ino: child,
                    kind: Kind::Dir,
                    name: name.to_vec(),
                };
                if emit(entry, attr_of(child)) {
                    return Ok(());
                }
            }
        }
        for (cookie, name) in dir.by_cookie.range(offset.max(FIRST_COOKIE - 1) + 1..) {
            let child = dir.entries[name].0;
            let kind = core.state.get(child).map_or(Kind::File, |n| n.rec.kind);
            let entry = DirEntry {
                offset: *cookie,
                ino: child,
                kind,
                name: name.clone(),
            };
            if emit(entry, attr_of(child)) {
                break;
            }
        }
        Ok(())
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        enum Piece {
            Mem(Arc<Vec<u8>>, usize, usize),
            Vol(u64, usize, usize),
            Zero(usize),
        }
        let core = self.lock();
        let node = core.state.get(ino)?;
        if node.rec.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        let file_size = node.rec.size;
        if offset >= file_size || size == 0 {
            return Ok(Vec::new());
        }
        let end = file_size.min(offset + size as u64);
        let mut pieces = Vec::new();
        let mut pos = offset;
        while pos < end {
            let blk = pos / BLOCK_BYTES;
            let within = (pos % BLOCK_BYTES) as usize;
            let take = ((BLOCK_BYTES as usize) - within).min((end - pos) as usize);
            pieces.push(match node.blocks.get(&blk) {
                Some(Slot { data: Some(d), .. }) => Piece::Mem(d.clone(), within, take),
                Some(Slot { phys: Some(p), .. }) => Piece::Vol(*p, within, take),
                _ => Piece::Zero(take),
            });
            pos += take as u64;
        }
        // Keep the looked-up volume blocks from being reused until they are read.
        let _reuse = self.reuse.read().unwrap_or_else(|p| p.into_inner());
        drop(core);
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut i = 0;
        while i < pieces.len() {
            match &pieces[i] {
                Piece::Mem(d, from, n) => out.extend_from_slice(&d[*from..*from + *n]),
                Piece::Zero(n) => out.resize(out.len() + n, 0),
                Piece::Vol(first, from, _) => {
                    // Coalesce a run of consecutive volume blocks into one read.
                    let mut run = 1;
                    while let Some(Piece::Vol(p, 0, _)) = pieces.get(i + run) {
                        if *p != first + run as u64 {
                            break;
                        }
                        run += 1;
                    }
                    let mut buf = vec![0u8; run * BLOCK_BYTES as usize];
                    self.vol
                        .read_at(first * BLOCK_BYTES, &mut buf)
                        .map_err(|e| {
                            log::error!("read of inode {ino}: {e}");
                            Errno::EIO
                        })?;
                    for k in 0..run {
                        if let Piece::Vol(_, from_k, n) = &pieces[i + k] {
                            let base = k * BLOCK_BYTES as usize;
                            out.extend_from_slice(&buf[base + from_k..base + from_k + n]);
                        }
                    }
                    let _ = from;
                    i += run;
                    continue;
                }
            }
            i += 1;
        }
        Ok(out)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let core = self.lock();
        let node = core.state.get(ino)?;
        node.rec.xattrs.get(name).cloned().ok_or(Errno::ENODATA)
    }

    /// Names of the xattrs, NUL-terminated; `trusted.` names only for root, as on ext4.
    pub fn listxattr(&self, caller: Caller, ino: u64) -> FsResult<Vec<u8>> {
        let core = self.lock();
        let node = core.state.get(ino)?;
        let mut out = Vec::new();
        for k in node.rec.xattrs.keys() {
            if caller.uid != 0 && k.starts_with(b"trusted.") {
                continue;
            }
            out.extend_from_slice(k);
            out.push(0);
        }
        Ok(out)
    }

    pub fn access(&self, caller: Caller, ino: u64, mask: i32) -> FsResult<()> {
        let core = self.lock();
        let rec = &core.state.get(ino)?.rec;
        if mask == libc::F_OK {
            return Ok(());
        }
        let allowed = if caller.uid == 0 {
            // Root may read and write anything, and execute when any x bit is set.
            let x_ok = rec.kind == Kind::Dir || rec.perm & 0o111 != 0;
            if mask & libc::X_OK != 0 && !x_ok {
                0
            } else {
                7
            }
        } else if caller.uid == rec.uid {
            (rec.perm >> 6) & 7
        } else if caller.gid == rec.gid {
            (rec.perm >> 3) & 7
        } else {
            rec.perm & 7
        };
        if (mask as u32) & !allowed & 7 != 0 {
            return Err(Errno::EACCES);
        }
        Ok(())
    }

    pub fn statfs(&self) -> StatFs {
        let core = self.lock();
        let s = &core.state;
        // Blocks freed since the last checkpoint count as free, as on ext4: the next
        // checkpoint releases them (writers that need them wait for it).
        let held = s.used_blocks;
        StatFs {
            blocks: s.capacity_blocks,
            bfree: s.capacity_blocks.saturating_sub(held),
            files: (s.capacity_blocks / 4).max(s.inodes.len() as u64 + 1024),
            ffree: (s.capacity_blocks / 4)
                .saturating_sub(s.inodes.len() as u64)
                .max(1024),
            bsize: BLOCK_BYTES as u32,
            namelen: NAME_MAX as u32,
        }
    }

    // ---- changes -------------------------------------------------------------------

    /// create, mknod, mkdir, symlink: owner is the caller; group and setgid follow ext4.
    pub fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: Option<Vec<u8>>,
    ) -> FsResult<Attr> {
        let kind = if target.is_some() {
            Kind::Symlink
        } else {
            Kind::from_mode(mode).ok_or(Errno::EINVAL)?
        };
        let now = Ts::now();
        self.execute(
            |s| {
                let p = s.get(parent)?;
                if p.dir.is_none() {
                    return Err(Errno::ENOTDIR);
                }
                let setgid_dir = p.rec.perm & libc::S_ISGID != 0;
                let gid = if setgid_dir { p.rec.gid } else { caller.gid };
                let mut perm = if kind == Kind::Symlink {
                    0o777
                } else {
                    mode & 0o7777
                };
                if kind == Kind::Dir && setgid_dir {
                    perm |= libc::S_ISGID;
                }
                if kind != Kind::Dir
                    && perm & libc::S_ISGID != 0
                    && caller.uid != 0
                    && gid != caller.gid
                {
                    perm &= !libc::S_ISGID;
                }
                Ok(FsOp::Mknod {
                    parent,
                    name: name.to_vec(),
                    ino: s.next_ino,
                    kind,
                    perm,
                    uid: caller.uid,
                    gid,
                    rdev,
                    target: target.clone(),
                    now,
                })
            },
            |s, op| match op {
                FsOp::Mknod { ino, .. } => Ok(s.get(*ino)?.attr()),
                _ => unreachable!("built above"),
            },
        )
    }

    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> FsResult<Attr> {
        let now = Ts::now();
        self.execute(
            |_| {
                Ok(FsOp::Link {
                    ino,
                    parent,
                    name: name.to_vec(),
                    now,
                })
            },
            |s, _| Ok(s.get(ino)?.attr()),
        )
    }

    pub fn unlink(&self, parent: u64, name: &[u8], dir: bool) -> FsResult<()> {
        let now = Ts::now();
        self.execute(
            |_| {
                Ok(FsOp::Unlink {
                    parent,
                    name: name.to_vec(),
                    dir,
                    now,
                })
            },
            |_, _| Ok(()),
        )
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let now = Ts::now();
        self.execute(
            |_| {
                Ok(FsOp::Rename {
                    parent,
                    name: name.to_vec(),
                    new_parent,
                    new_name: new_name.to_vec(),
                    flags,
                    now,
                })
            },
            |_, _| Ok(()),
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Ts>,
        mtime: Option<Ts>,
    ) -> FsResult<Attr> {
        let now = Ts::now();
        self.execute(
            |_| {
                Ok(FsOp::SetAttr {
                    ino,
                    perm: mode.map(|m| m & 0o7777),
                    uid,
                    gid,
                    size,
                    atime,
                    mtime,
                    now,
                })
            },
            |s, _| Ok(s.get(ino)?.attr()),
        )
    }

    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let now = Ts::now();
        let len = data.len() as u32;
        let inline = || FsOp::Write {
            ino,
            offset,
            data: data.to_vec(),
            now,
        };
        if !(self.config.direct_writes && direct::eligible(offset, data.len() as u64)) {
            return self.execute(|_| Ok(inline()), |_, _| Ok(len));
        }
        let crc = crc32c::crc32c(data);
        let count = data.len() as u64 / BLOCK_BYTES;
        self.execute_with(
            |core| {
                // Fresh contiguous blocks, or the ordinary path when there is no such run.
                Ok(match core.alloc.alloc_run(count) {
                    Some(phys) => FsOp::WriteDirect {
                        ino,
                        offset,
                        len: data.len() as u64,
                        phys,
                        crc,
                        now,
                    },
                    None => inline(),
                })
            },
            Some(data),
            |_, _| Ok(len),
        )
    }

    pub fn fallocate(&self, ino: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let now = Ts::now();
        self.execute(
            |_| {
                Ok(FsOp::Fallocate {
                    ino,
                    offset,
                    len,
                    mode,
                    now,
                })
            },
            |_, _| Ok(()),
        )
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        let now = Ts::now();
        self.execute(
            |s| {
                s.get(ino)?;
                super::state::check_xattr_name(name)?;
                Ok(FsOp::SetXattr {
                    ino,
                    name: name.to_vec(),
                    value: value.to_vec(),
                    flags,
                    now,
                })
            },
            |_, _| Ok(()),
        )
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        let now = Ts::now();
        self.execute(
            |_| {
                Ok(FsOp::RemoveXattr {
                    ino,
                    name: name.to_vec(),
                    now,
                })
            },
            |_, _| Ok(()),
        )
    }

    pub fn open(&self, ino: u64) -> FsResult<()> {
        self.lock().state.open(ino)
    }

    pub fn release(&self, ino: u64) {
        self.lock().state.release(ino);
    }

    /// A mirror failure while answering an op: fencing stops all writes for good.
    fn mirror_failed(&self, e: crate::mirror::MirrorWaitError) -> Errno {
        match e {
            crate::mirror::MirrorWaitError::Fenced(why) => {
                self.fence(&why);
                Errno::EROFS
            }
            crate::mirror::MirrorWaitError::Failed(why) => {
                log::error!("mirror: {why}; answering EIO");
                Errno::EIO
            }
        }
    }

    /// Makes every logged entry durable: on the mirror agent when a synchronous mirror
    /// protects the node, else on local media (msync of the ring).
    pub fn fsync(&self) -> FsResult<()> {
        if let Some(m) = self.mirror.get() {
            let seq = self.log.stats().next_seq - 1;
            if m.protected() && m.wait(seq).is_ok() {
                return Ok(());
            }
        }
        // Direct writes' data before the ring entries that point at it.
        let landed = self.direct_landed.load(Ordering::Acquire);
        if landed > self.direct_flushed.load(Ordering::Acquire) {
            self.vol.flush().map_err(|e| {
                log::error!("fsync: flushing the volume: {e}");
                Errno::EIO
            })?;
            self.direct_flushed.fetch_max(landed, Ordering::AcqRel);
        }
        self.log.flush().map(|_| ()).map_err(|e| {
            log::error!("fsync: {e}");
            Errno::EIO
        })
    }

    // ---- checkpoints ---------------------------------------------------------------

    pub fn request_checkpoint(&self) {
        let (m, c) = &self.wake;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        c.notify_all();
    }

    /// What to do once this node learns it was fenced (called at most once).
    pub fn set_on_fenced(&self, hook: Box<dyn FnOnce() + Send>) {
        *self.on_fenced.lock().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// The volume was taken over by a peer: this node never writes again. Changes are refused
    /// (EROFS), the block volume refuses writes and lets go of its locks, and the daemon's
    /// hook releases the volume lock, so that the peer can mount while this mount stays up
    /// read-only. Unacknowledged work is the peer's to recover from the mirror.
    fn fence(&self, why: &str) {
        {
            let mut core = self.lock();
            if core
                .poisoned
                .as_deref()
                .is_some_and(|p| p.starts_with(FENCED_PREFIX))
            {
                return;
            }
            log::error!("FENCED: {why}; this node stops writing (remount after giveback)");
            core.poisoned = Some(format!("{FENCED_PREFIX}{why}"));
        }
        // Waits for a checkpoint in flight, so that none of its writes lands after the fence.
        drop(
            self.one_checkpoint
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        self.vol.fence();
        let hook = self
            .on_fenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(hook) = hook {
            hook();
        }
    }

    /// The checkpointer's loop: runs until `stop`.
    pub fn run_checkpointer(&self) {
        let interval = Duration::from_millis(self.config.checkpoint_interval_ms.max(10));
        let mut last = Instant::now();
        while !self.stopping.load(Ordering::Acquire) {
            let (m, c) = &self.wake;
            let mut requested = m.lock().unwrap_or_else(|p| p.into_inner());
            if !*requested {
                requested = c
                    .wait_timeout(requested, interval.min(Duration::from_millis(500)))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let asked = std::mem::take(&mut *requested);
            drop(requested);
            if self.stopping.load(Ordering::Acquire) {
                break;
            }
            // The agent tells a fenced node at its next heartbeat, even when it is idle.
            if let Some(why) = self.mirror.get().and_then(|m| m.fenced()) {
                self.fence(&why);
            }
            if asked
                || last.elapsed() >= interval
                || self.fill_percent() >= self.config.checkpoint_fill_percent
            {
                match self.checkpoint() {
                    Err(FsError::Poisoned(why)) if why.starts_with(FENCED_PREFIX) => {
                        self.fence(&why[FENCED_PREFIX.len()..])
                    }
                    Err(e) => log::error!(
                        "checkpoint failed: {e}; the file system refuses changes until remounted"
                    ),
                    Ok(_) => {}
                }
                last = Instant::now();
            }
        }
    }

    pub fn stop_checkpointer(&self) {
        self.stopping.store(true, Ordering::Release);
        self.request_checkpoint();
    }

    /// Writes everything changed since the last checkpoint to the volume, then reclaims
    /// the ring behind it. Cost grows with what changed, not with the file system's size.
    pub fn checkpoint(&self) -> Result<CheckpointReport, FsError> {
        let _one = self
            .one_checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        // Phase 1, under the core lock: a consistent snapshot of what changed.
        let mut guard = self.lock();
        if let Some(why) = &guard.poisoned {
            return Err(FsError::Poisoned(why.clone()));
        }
        let covers = self.log.stats().next_seq - 1;
        // Exactly two entries after the last checkpoint are its own Begun and Done (both come
        // after the seq it covers): covering them changes nothing, and would only log two
        // more, so that an idle volume checkpointed (and fsync'ed) at every interval forever.
        let only_own_entries = covers == guard.sb.covers_seq + 2;
        if guard.state.dirty.is_empty()
            && guard.state.pending_free.is_empty()
            && (covers == guard.sb.covers_seq || only_own_entries)
        {
            return Ok(CheckpointReport {
                covers_seq: covers,
                ..Default::default()
            });
        }
        let generation = guard.sb.generation + 1;
        let first_seq = guard.sb.covers_seq + 1;
        let applied_at_snapshot = self.counters.applied.load(Ordering::Relaxed);
        let dirty = guard.state.take_dirty();
        self.direct_bytes.store(0, Ordering::Relaxed);
        let core = &mut *guard;
        let mut records = Vec::new();
        let mut jobs: Vec<BlockJob> = Vec::new();
        // A full snapshot once the deltas outgrow it: its cost is then paid for by at least as
        // many bytes of changes. When only the superblock's blob list is full, the newer half
        // of the deltas is merged into this checkpoint's delta instead (their records in
        // order, which loads the same): cost in changes, not in the size of the file system.
        let compact = core.delta_bytes > core.snapshot_bytes.max(4 << 20);
        let merge_from = (!compact && core.sb.blobs.len() + 1 >= MAX_BLOBS)
            .then(|| 1 + (core.sb.blobs.len() - 1) / 2);
        let mut blocks: Vec<(u64, u64)> = dirty.blocks.into_iter().collect();
        blocks.sort_unstable();
        let mut prev_phys: Option<u64> = None;
        for (ino, blk) in blocks {
            let Some(node) = core.state.inodes.get_mut(&ino) else {
                continue;
            };
            match node.blocks.get_mut(&blk) {
                Some(slot) => {
                    let unrecorded = std::mem::take(&mut slot.unrecorded);
                    if slot.dirty_gen == 0 {
                        // A direct write placed it and nothing changed it since: record where.
                        if let (true, Some(phys)) = (unrecorded, slot.phys) {
                            records.push(MetaRecord::Extent { ino, blk, phys });
                        }
                        continue;
                    }
                    // A block a direct write placed is left as it is until a checkpoint covers
                    // that write: recovery checks the write's data there. Changed since, it
                    // moves to a new block (the old one is released after this checkpoint).
                    if unrecorded {
                        if let Some(old) = slot.phys.take() {
                            core.state.pending_free.push(old);
                        }
                    }
                    let fresh = slot.phys.is_none();
                    let phys = match slot.phys {
                        Some(p) => p,
                        None => {
                            let hint = prev_phys.map(|p| p + 1);
                            let p = core.alloc.alloc_near(hint).ok_or_else(|| {
                                FsError::Poisoned(
                                    "the volume is full: no block for checkpoint data".into(),
                                )
                            })?;
                            slot.phys = Some(p);
                            records.push(MetaRecord::Extent { ino, blk, phys: p });
                            p
                        }
                    };
                    prev_phys = Some(phys);
                    jobs.push(BlockJob {
                        phys,
                        data: slot.data.clone(),
                        ino,
                        blk,
                        gen: slot.dirty_gen,
                        fresh,
                    });
                }
                None => records.push(MetaRecord::ExtentGone { ino, blk }),
            }
        }
        for ino in dirty.inodes {
            match core.state.inodes.get(&ino) {
                Some(n) => records.push(MetaRecord::Inode(n.rec.clone())),
                None => records.push(MetaRecord::InodeGone(ino)),
            }
        }
        for (parent, name) in dirty.dirents {
            // A removed directory's entries were removed before it: record those too.
            let entry = core
                .state
                .inodes
                .get(&parent)
                .and_then(|p| p.dir.as_ref())
                .and_then(|d| d.entries.get(&name));
            match entry {
                Some(&(ino, cookie)) => records.push(MetaRecord::Dirent {
                    parent,
                    name,
                    ino,
                    cookie,
                }),
                None => records.push(MetaRecord::DirentGone { parent, name }),
            }
        }
        records.push(MetaRecord::NextIno(core.state.next_ino));
        // Gone records must come before puts for the same keys: sort by record kind.
        records.sort_by_key(|r| match r {
            MetaRecord::InodeGone(_) => 0,
            MetaRecord::Inode(_) => 1,
            MetaRecord::DirentGone { .. } => 2,
            MetaRecord::Dirent { .. } => 3,
            MetaRecord::ExtentGone { .. } => 4,
            MetaRecord::Extent { .. } => 5,
            MetaRecord::NextIno(_) => 6,
        });
        let (kind, records) = if compact {
            (BLOB_SNAPSHOT, meta::snapshot_records(&core.state))
        } else if let Some(from) = merge_from {
            let mut merged = Vec::new();
            for blob in &core.sb.blobs[from..] {
                merged.extend(
                    meta::read_blob(self.vol.as_ref(), blob)
                        .map_err(|e| FsError::Poisoned(format!("merging metadata deltas: {e}")))?,
                );
            }
            merged.extend(records);
            (BLOB_DELTA, merged)
        } else {
            (BLOB_DELTA, records)
        };
        let (blob_bytes, payload_bytes, crc) = meta::encode_blob(kind, generation, &records);
        let blob_blocks = blob_bytes.len() as u64 / BLOCK_BYTES;
        let blob_start = core.alloc.alloc_run(blob_blocks).ok_or_else(|| {
            FsError::Poisoned("the volume is full: no room for checkpoint metadata".into())
        })?;
        // The blobs this checkpoint's blob replaces are freed once its superblock is written.
        let kept = match (compact, merge_from) {
            (true, _) => 0,
            (false, Some(from)) => from,
            (false, None) => core.sb.blobs.len(),
        };
        let mut blobs = core.sb.blobs[..kept].to_vec();
        let old_blobs = core.sb.blobs[kept..].to_vec();
        blobs.push(BlobRef {
            start_block: blob_start,
            blocks: blob_blocks as u32,
            payload_bytes,
            crc,
        });
        let frees = std::mem::take(&mut core.state.pending_free);
        let begun = self
            .log
            .try_append(
                EntryKind::Checkpoint,
                None,
                CheckpointState::Begun as u8,
                &[&covers.to_le_bytes(), &generation.to_le_bytes()],
                0,
            )?
            .expect("the checkpoint reserve keeps room for its entries");
        let mut new_sb = core.sb.clone();
        new_sb.generation = generation;
        new_sb.covers_seq = covers;
        new_sb.blobs = blobs;
        new_sb.next_ino = core.state.next_ino;
        drop(guard);
        // Phase 2, without the lock: data, metadata, superblock.
        let result = self.write_checkpoint(&mut jobs.clone(), &blob_bytes, blob_start, &new_sb);
        let mut core = self.lock();
        if let Err(e) = result {
            core.poisoned = Some(e.to_string());
            return Err(e);
        }
        drop(core);
        // Blocks freed by the checkpointed ops become reusable once no reader holds one.
        drop(self.reuse.write().unwrap_or_else(|p| p.into_inner()));
        let mut core = self.lock();
        for BlockJob { ino, blk, gen, .. } in &jobs {
            if let Some(slot) = core
                .state
                .inodes
                .get_mut(ino)
                .and_then(|n| n.blocks.get_mut(blk))
            {
                if slot.dirty_gen == *gen {
                    slot.dirty_gen = 0;
                    slot.data = None;
                }
            }
        }
        for b in frees {
            core.alloc.free(b);
        }
        for blob in &old_blobs {
            for b in blob.start_block..blob.start_block + blob.blocks as u64 {
                core.alloc.free(b);
            }
        }
        if compact {
            core.snapshot_bytes = payload_bytes;
            core.delta_bytes = 0;
        } else {
            let replaced: u64 = old_blobs.iter().map(|b| b.payload_bytes).sum();
            core.delta_bytes = core.delta_bytes.saturating_sub(replaced) + payload_bytes;
        }
        core.sb = new_sb;
        let _ = self.log.try_append(
            EntryKind::Checkpoint,
            Some(begun.seq),
            CheckpointState::Done as u8,
            &[&covers.to_le_bytes(), &generation.to_le_bytes()],
            0,
        )?;
        drop(core);
        self.log.reclaim(begun)?;
        if let Some(m) = self.mirror.get() {
            m.checkpoint(covers);
        }
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.counters
            .committed
            .store(applied_at_snapshot, Ordering::Relaxed);
        *self
            .last_checkpoint_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let report = CheckpointReport {
            covers_seq: covers,
            data_blocks: jobs.len() as u64,
            meta_bytes: payload_bytes,
            compacted: compact,
            elapsed_ms: started.elapsed().as_millis(),
        };
        log::info!(
            "checkpoint {generation}: covers seq {first_seq}..={covers}; wrote {} data blocks and {} bytes of metadata ({}) in {} ms",
            report.data_blocks,
            report.meta_bytes,
            match (compact, merge_from) {
                (true, _) => "a compacted snapshot".to_string(),
                (false, Some(_)) => format!("a delta merged with the {} newest ones", old_blobs.len()),
                (false, None) => "a delta".to_string(),
            },
            report.elapsed_ms
        );
        Ok(report)
    }

    fn write_checkpoint(
        &self,
        jobs: &mut [BlockJob],
        blob: &[u8],
        blob_start: u64,
        sb: &Superblock,
    ) -> Result<(), FsError> {
        // Before the first block and again before the superblock: a node fenced on the
        // volume must not write into blocks the new owner may be using.
        self.check_epoch(sb)?;
        jobs.sort_unstable_by_key(|j| j.phys);
        let zeros = vec![0u8; BLOCK_BYTES as usize];
        let mut i = 0;
        let mut buf = Vec::with_capacity(1 << 20);
        while i < jobs.len() {
            // Coalesce consecutive volume blocks of the same kind into writes of up to 1 MiB.
            let (first, fresh) = (jobs[i].phys, jobs[i].fresh);
            buf.clear();
            let mut n = 0;
            while i + n < jobs.len()
                && jobs[i + n].phys == first + n as u64
                && jobs[i + n].fresh == fresh
                && n < 256
            {
                match &jobs[i + n].data {
                    Some(d) => buf.extend_from_slice(d),
                    None => buf.extend_from_slice(&zeros),
                }
                n += 1;
            }
            // Blocks taken from the allocator for this checkpoint hold nothing the volume's
            // checkpoint references until the new superblock is written: a RAID-5 writes
            // their whole stripes without a journal record (a crash leaves them unreferenced,
            // and assembly resyncs a stripe cut short).
            if fresh {
                self.vol.write_fresh_at(first * BLOCK_BYTES, &buf)?;
            } else {
                self.vol.write_at(first * BLOCK_BYTES, &buf)?;
            }
            i += n;
        }
        // The metadata blob goes to blocks allocated for it: fresh as well.
        self.vol.write_fresh_at(blob_start * BLOCK_BYTES, blob)?;
        self.vol.flush()?;
        self.check_epoch(sb)?;
        sb.write(self.vol.as_ref())?;
        Ok(())
    }

    /// Fencing on the volume: a peer that took the volume over wrote a newer epoch.
    fn check_epoch(&self, sb: &Superblock) -> Result<(), FsError> {
        if let Ok(on_disk) = Superblock::read(self.vol.as_ref()) {
            if on_disk.epoch > sb.epoch {
                return Err(FsError::Poisoned(format!(
                    "{FENCED_PREFIX}the volume was taken over (epoch {} on the volume, ours {}); not writing to it",
                    on_disk.epoch, sb.epoch
                )));
            }
        }
        Ok(())
    }

    /// Final checkpoint and stop (clean unmount).
    pub fn shutdown(&self) -> Result<(), FsError> {
        self.stop_checkpointer();
        self.checkpoint()?;
        self.log.flush()?;
        Ok(())
    }

    pub fn ring_stats(&self) -> crate::statelog::RingStats {
        self.log.stats()
    }

    /// What `smlogfs status` shows.
    pub fn status(&self) -> FsStatus {
        let ring = self.log.stats();
        let core = self.lock();
        let accepted = self.counters.accepted.load(Ordering::Relaxed);
        let applied = self.counters.applied.load(Ordering::Relaxed);
        let failed = self.counters.failed.load(Ordering::Relaxed);
        let committed = self.counters.committed.load(Ordering::Relaxed);
        // Ops applied in memory but waiting for the agent are not answered yet: Mirrored
        // once the agent acknowledged their entry, else still Accepted.
        let (waiting, mirrored) = {
            let set = lock_ignoring_poison(&self.counters.awaiting_mirror);
            let acked = self
                .mirror
                .get()
                .and_then(|m| m.acked_through())
                .unwrap_or(0);
            (set.len() as u64, set.range(..=acked).count() as u64)
        };
        FsStatus {
            ops_accepted: accepted.saturating_sub(applied + failed) + (waiting - mirrored),
            ops_mirrored: mirrored,
            ops_applied: applied.saturating_sub(committed).saturating_sub(waiting),
            ops_committed: committed,
            ring_used_bytes: ring.used_bytes,
            ring_area_bytes: ring.area_bytes,
            ring_fill_percent: ring.used_bytes * 100 / ring.area_bytes.max(1),
            ring_checkpoint_fill_percent: self.config.checkpoint_fill_percent,
            next_seq: ring.next_seq,
            flushed_seq: ring.flushed_seq,
            checkpoint_seq: core.sb.covers_seq,
            checkpoint_generation: core.sb.generation,
            checkpoint_age_ms: self
                .last_checkpoint_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                .as_millis() as u64,
            checkpoints_since_mount: self.checkpoints.load(Ordering::Relaxed),
            epoch: core.sb.epoch,
            volume: self.vol.describe(),
            poisoned: core.poisoned.clone(),
            inodes: core.state.inodes.len() as u64,
            dirty_blocks: core.state.dirty.blocks.len() as u64,
            mirror: self.mirror.get().map(|m| {
                let st = m.client.status();
                MirrorInfo {
                    routes: m.options.routes_text(),
                    route_in_use: st.route_in_use.map(|r| r.to_string()),
                    connected: st.connected,
                    protected: st.protected,
                    mode: format!("{:?}", m.options.mode).to_lowercase(),
                    on_loss: format!("{:?}", m.options.on_loss).to_lowercase(),
                    unacked_entries: st.unacked_entries as u64,
                    acked_through: st.acked_through,
                    resync_through: st.resync_through,
                    rtt_us: st.rtt_us,
                    reconnects: st.reconnects,
                    last_error: st.last_error,
                }
            }),
        }
    }

    pub fn is_poisoned(&self) -> bool {
        self.lock().poisoned.is_some()
    }

    pub fn superblock(&self) -> Superblock {
        self.lock().sb.clone()
    }
}

/// Gives a direct write's blocks back when the op will not be applied (they hold nothing
/// anybody references).
fn release_direct_blocks(core: &mut Core, op: &FsOp) {
    if let Some(blocks) = direct::blocks(op) {
        for b in blocks {
            core.alloc.free(b);
        }
    }
}

/// A volume's state after loading its checkpoint and replaying its ring, in memory only.
pub struct Recovered {
    pub vol: Arc<dyn BlockVolume>,
    pub state: FsState,
    pub alloc: Allocator,
    pub sb: Superblock,
    /// The local ring's scan, when the ring can be continued as it is (None: rebuild it).
    pub scan: Option<crate::statelog::ScanResult>,
    pub plan: Vec<recovery::OpSummary>,
    pub report: RecoveryReport,
    pub ring_path: PathBuf,
    pub meta_bytes: u64,
    /// Seq of the first entry after everything recovered.
    pub next_seq: u64,
    /// Entries recovered from the mirror agent.
    pub from_mirror: usize,
}

/// Loads the last checkpoint of `voldir` and replays the ring after it, in memory. Writes
/// nothing (fsck and inspect use it as is; mount continues from it).
pub fn recover(
    voldir: &Path,
    progress: &dyn Fn(&str, u64) -> Progress,
    mirror: Option<MirrorSource<'_>>,
) -> Result<Recovered, FsError> {
    let started = Instant::now();
    let vol: Arc<dyn BlockVolume> = Arc::from(raid_sim::open_volume(voldir)?);
    let sb = Superblock::read(vol.as_ref()).map_err(|e| FsError::Superblock {
        path: voldir.to_path_buf(),
        detail: format!("{e} ({})", vol.describe()),
    })?;
    if vol.capacity_bytes() < sb.capacity_bytes {
        return Err(FsError::Corrupt {
            what: "backing volume",
            at: format!("{} ({})", voldir.display(), vol.describe()),
            detail: format!(
                "it holds {} bytes but the superblock says {}: the backing file was truncated",
                vol.capacity_bytes(),
                sb.capacity_bytes
            ),
        });
    }
    let loaded = meta::load(vol.clone(), &sb).map_err(|detail| FsError::Corrupt {
        what: "metadata",
        at: voldir.display().to_string(),
        detail,
    })?;
    if let Some(p) = loaded.problems.first() {
        return Err(FsError::Corrupt {
            what: "metadata",
            at: voldir.display().to_string(),
            detail: format!(
                "{p} ({} problem(s) in all; run `smlogfs fsck`)",
                loaded.problems.len()
            ),
        });
    }
    let ring_path = ring_path_of(voldir, &sb);
    let mut report = RecoveryReport {
        covers_seq: sb.covers_seq,
        ..Default::default()
    };
    let gathered = gather_entries(&ring_path, &sb, mirror, &mut report)?;
    report.entries_scanned = gathered.entries.len();
    let plan =
        recovery::plan(&gathered.entries, sb.covers_seq).map_err(|detail| FsError::Corrupt {
            what: "state log",
            at: ring_path.display().to_string(),
            detail,
        })?;
    let mut state = loaded.state;
    let mut alloc = loaded.alloc;
    state.replaying = true;
    let to_replay = plan.iter().filter(|o| o.action == Action::Replay).count() as u64;
    let bar = progress("replaying the state log", to_replay);
    for op in &plan {
        match op.action {
            Action::Replay => {
                match FsOp::decode(&op.payload) {
                    Ok(fsop) => {
                        let fsop =
                            replayable_direct(&vol, &mut alloc, op.op_id, fsop, &mut report)?;
                        if let Err(e) = state.apply(&fsop) {
                            log::error!(
                                "replaying op {} ({}) failed with errno {}: the volume and the ring disagree",
                                op.op_id,
                                fsop.kind_name(),
                                e.0
                            );
                            report.replay_failures += 1;
                        }
                    }
                    Err(e) => {
                        return Err(FsError::Corrupt {
                            what: "state log",
                            at: format!("{} op {}", ring_path.display(), op.op_id),
                            detail: format!("undecodable op: {e}"),
                        })
                    }
                }
                report.replayed += 1;
                bar.inc(1);
            }
            Action::Discard => report.discarded += 1,
            _ => report.skipped += 1,
        }
    }
    bar.finish();
    state.replaying = false;
    report.orphans_purged = state.purge_orphans();
    report.elapsed_ms = started.elapsed().as_millis();
    let next_seq = gathered
        .entries
        .last()
        .map_or(sb.covers_seq + 1, |e| e.header.seq + 1)
        .max(sb.covers_seq + 1);
    Ok(Recovered {
        vol,
        state,
        alloc,
        meta_bytes: loaded.meta_bytes,
        sb,
        scan: gathered.scan,
        plan,
        report,
        ring_path,
        next_seq,
        from_mirror: gathered.from_mirror,
    })
}

/// A direct write as replay applies it: its blocks taken from the allocator when they hold
/// its data; when they do not (the volume lost writes the ring kept, after a power or kernel
/// failure before fsync), a write of zeroes, so that the file keeps its size and never shows
/// what those blocks held before.
fn replayable_direct(
    vol: &Arc<dyn BlockVolume>,
    alloc: &mut Allocator,
    op_id: u64,
    op: FsOp,
    report: &mut RecoveryReport,
) -> Result<FsOp, FsError> {
    let FsOp::WriteDirect {
        ino,
        offset,
        len,
        phys,
        crc,
        now,
    } = op
    else {
        return Ok(op);
    };
    let intact = match direct::read_back(vol, phys, len, crc)? {
        direct::ReadBack::Intact(_) => true,
        direct::ReadBack::Lost => false,
    };
    report.direct_checked += 1;
    if intact {
        let mut taken = true;
        for b in phys..phys + len / BLOCK_BYTES {
            taken &= alloc.mark_used(b);
        }
        if taken {
            return Ok(op);
        }
        return Err(FsError::Corrupt {
            what: "state log",
            at: format!("op {op_id}"),
            detail: format!(
                "a direct write names volume blocks {phys}..{} that the checkpoint already uses",
                phys + len / BLOCK_BYTES
            ),
        });
    }
    log::warn!(
        "op {op_id}: the data of a write of {len} bytes at offset {offset} of inode {ino} is not on \
         the volume (lost with the page cache before an fsync); that range reads as zeroes"
    );
    report.direct_lost += 1;
    Ok(FsOp::Write {
        ino,
        offset,
        data: vec![0u8; len as usize],
        now,
    })
}

/// Where recovery's entries came from.
struct Gathered {
    entries: Vec<crate::statelog::ScannedEntry>,
    /// The local scan when the local ring can be appended to as it is.
    scan: Option<crate::statelog::ScanResult>,
    /// Entries taken from the mirror agent.
    from_mirror: usize,
}

/// Where recovery gets the mirror from, and whether it must use it (takeover).
pub struct MirrorSource<'a> {
    pub options: &'a crate::mirror::MirrorOptions,
    pub force: bool,
}

/// The entries after the checkpoint: from the local ring, completed (or replaced, when the
/// ring is missing or damaged) by the mirror agent's copy when a mirror is configured.
fn gather_entries(
    ring_path: &Path,
    sb: &Superblock,
    mirror: Option<MirrorSource<'_>>,
    report: &mut RecoveryReport,
) -> Result<Gathered, FsError> {
    let local = match StateLog::scan_file(ring_path) {
        Ok(scan) if scan.header.volume_id != sb.volume_id => Err(FsError::Corrupt {
            what: "state log",
            at: ring_path.display().to_string(),
            detail: "it belongs to another volume (volume id mismatch)".into(),
        }),
        Ok(scan) => match scan.end {
            ScanEnd::Corrupt {
                file_offset,
                later_seq,
                later_file_offset,
            } => Err(FsError::Corrupt {
                what: "state log",
                at: format!("{} byte {}", ring_path.display(), file_offset),
                detail: format!(
                    "an entry is damaged but valid entries follow it (seq {later_seq} at byte \
                     {later_file_offset}); acknowledged operations after the damage would be lost. \
                     Recover from the mirror (smlogfs recover VOLDIR --mirror HOST:PORT) or restore \
                     the ring from a copy; nothing was changed"
                ),
            }),
            _ => Ok(scan),
        },
        Err(e) => Err(e.into()),
    };
    if let Ok(scan) = &local {
        if let ScanEnd::TornTail { file_offset } = scan.end {
            log::warn!(
                "state log {}: torn entry at byte {} (a write cut short by the crash); recovering \
                 the {} entries before it",
                ring_path.display(),
                file_offset,
                scan.entries.len()
            );
            report.torn_tail_at = Some(file_offset);
        }
        if let Some(len) = scan.truncated_len {
            log::warn!(
                "state log {} is {} bytes, shorter than its {} bytes: recovered the entries before the cut",
                ring_path.display(),
                len,
                scan.header.ring_bytes
            );
        }
    }
    let Some(mirror) = mirror else {
        let scan = local?;
        return Ok(Gathered {
            entries: scan.entries.clone(),
            scan: Some(scan),
            from_mirror: 0,
        });
    };
    let cfg = mirror.options.client_config(sb.volume_id, sb.epoch);
    let remote =
        smlog_wire::MirrorClient::read_back(&cfg, sb.covers_seq).map_err(|e| FsError::Mirror {
            routes: mirror.options.routes_text(),
            detail: format!("reading the entries after seq {} back: {e}", sb.covers_seq),
        })?;
    let mut remote_entries = Vec::with_capacity(remote.len());
    for (seq, bytes) in remote {
        match crate::statelog::ScannedEntry::from_bytes(&bytes) {
            Some(e) if e.header.seq == seq => remote_entries.push(e),
            _ => {
                return Err(FsError::Corrupt {
                    what: "mirrored entry",
                    at: format!("seq {seq} at the agent {}", mirror.options.routes_text()),
                    detail: "it fails its checksum or names another seq".into(),
                })
            }
        }
    }
    if let Some(first) = remote_entries.first() {
        if first.header.seq != sb.covers_seq + 1 {
            return Err(FsError::Mirror {
                routes: mirror.options.routes_text(),
                detail: format!(
                    "the agent's copy starts at seq {} but the volume's checkpoint covers only through {}: \
                     entries in between are missing",
                    first.header.seq, sb.covers_seq
                ),
            });
        }
    }
    match local {
        Ok(scan) if !mirror.force => {
            let last_local = scan.next_seq - 1;
            let extra: Vec<_> = remote_entries
                .into_iter()
                .filter(|e| e.header.seq > last_local)
                .collect();
            if extra.is_empty() {
                return Ok(Gathered {
                    entries: scan.entries.clone(),
                    scan: Some(scan),
                    from_mirror: 0,
                });
            }
            log::warn!(
                "the mirror agent holds {} entries after the local ring's last (seq {}): recovering them from the mirror",
                extra.len(),
                last_local
            );
            let from_mirror = extra.len();
            let mut entries: Vec<_> = scan
                .entries
                .into_iter()
                .filter(|e| e.header.seq > sb.covers_seq)
                .collect();
            entries.extend(extra);
            Ok(Gathered {
                entries,
                scan: None,
                from_mirror,
            })
        }
        other => {
            match other {
                Err(e) => log::warn!(
                    "local state log unusable ({e}); recovering {} entries from the mirror agent",
                    remote_entries.len()
                ),
                Ok(_) => log::info!(
                    "takeover: recovering {} entries from the mirror agent",
                    remote_entries.len()
                ),
            }
            Ok(Gathered {
                from_mirror: remote_entries.len(),
                entries: remote_entries,
                scan: None,
            })
        }
    }
}

/// The ring file of a volume: absolute as stored, or relative to the volume directory.
pub fn ring_path_of(voldir: &Path, sb: &Superblock) -> PathBuf {
    let p = Path::new(&sb.ring_path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        voldir.join(p)
    }
}

/// Locks `m`; a panic elsewhere while it was held leaves data that is still consistent here
/// (sets and counters), so the poison is ignored.
fn lock_ignoring_poison<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One data block a checkpoint writes: volume block `phys` gets `data` (zeroes when None),
/// the contents of file `ino`'s block `blk` at dirty generation `gen`. `fresh`: the block was
/// allocated by this checkpoint (nothing on the volume references it yet).
#[derive(Clone)]
struct BlockJob {
    phys: u64,
    data: Option<Arc<Vec<u8>>>,
    ino: u64,
    blk: u64,
    gen: u64,
    fresh: bool,
}

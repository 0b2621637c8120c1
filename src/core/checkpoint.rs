//! Checkpoints: everything changed since the last one goes to the volume, then the ring
//! behind it is reclaimed. Cost grows with what changed, not with the file system's size.
//!
//! Three phases: `plan` under the core lock (a consistent snapshot of what changed, blocks
//! placed, metadata encoded, `Begun` logged), `write` without it (data, metadata, superblock,
//! with the epoch checked before the first and the last write), `finish` under the lock
//! again (cached copies dropped, blocks released, `Done` logged, ring reclaimed). The
//! `Checkpointer` owns the background thread's wake-up, the one-at-a-time lock and the
//! figures `status` shows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::error::{FsError, Poison};
use super::meta::{self, MetaRecord, BLOB_DELTA, BLOB_SNAPSHOT};
use super::replica::ReplicaError;
use super::resend;
use super::shared::{lock_ignoring_poison, Shared};
use super::state::BlockJob;
use super::superblock::{BlobRef, Superblock, MAX_BLOBS};
use super::types::{Seq, BLOCK_BYTES};
use super::Fs;
use crate::statelog::{Appended, CheckpointState, EntryState};

/// Figures of what the last checkpoint did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckpointReport {
    pub covers_seq: u64,
    pub data_blocks: u64,
    pub meta_bytes: u64,
    pub compacted: bool,
    pub elapsed_ms: u128,
}

pub(super) struct Checkpointer {
    /// Held for a whole checkpoint: one at a time, and a fence waits for the one in flight.
    one: Mutex<()>,
    wake: (Mutex<bool>, Condvar),
    stopping: AtomicBool,
    taken: AtomicU64,
    last_at: Mutex<Instant>,
    /// Bytes of direct writes since the last checkpoint (recovery reads them back).
    pub direct_bytes: AtomicU64,
}

/// What phase 1 decided, for phases 2 and 3.
struct Plan {
    started: Instant,
    covers: u64,
    generation: u64,
    first_seq: u64,
    applied_at_snapshot: u64,
    jobs: Vec<BlockJob>,
    blob: Vec<u8>,
    blob_start: u64,
    payload_bytes: u64,
    compact: bool,
    merge_from: Option<usize>,
    old_blobs: Vec<BlobRef>,
    frees: Vec<u64>,
    begun: Appended,
    sb: Superblock,
}

impl Checkpointer {
    pub fn new() -> Checkpointer {
        Checkpointer {
            one: Mutex::new(()),
            wake: (Mutex::new(false), Condvar::new()),
            stopping: AtomicBool::new(false),
            taken: AtomicU64::new(0),
            last_at: Mutex::new(Instant::now()),
            direct_bytes: AtomicU64::new(0),
        }
    }

    pub fn request(&self) {
        let (m, c) = &self.wake;
        *lock_ignoring_poison(m) = true;
        c.notify_all();
    }

    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    pub fn age_ms(&self) -> u64 {
        lock_ignoring_poison(&self.last_at).elapsed().as_millis() as u64
    }

    /// Returns once no checkpoint is in flight (none of its writes can land after this).
    pub fn wait_idle(&self) {
        drop(lock_ignoring_poison(&self.one));
    }

    /// Sleeps until asked, or at most `step`; true when asked.
    fn wait_for_request(&self, step: Duration) -> bool {
        let (m, c) = &self.wake;
        let mut requested = lock_ignoring_poison(m);
        if !*requested {
            requested = c
                .wait_timeout(requested, step)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        std::mem::take(&mut *requested)
    }

    /// Takes one checkpoint. On a failure the file system is poisoned (fenced, when the
    /// volume was taken over); the caller runs the fence.
    pub fn take(&self, sh: &Shared) -> Result<CheckpointReport, FsError> {
        let _one = lock_ignoring_poison(&self.one);
        let Some(plan) = self.plan(sh)? else {
            return Ok(CheckpointReport {
                covers_seq: sh.log.stats().next_seq - 1,
                ..Default::default()
            });
        };
        if let Err(e) = write(sh, &plan) {
            sh.lock().set_poison(e.poison());
            return Err(e);
        }
        self.finish(sh, plan)
    }

    /// Phase 1, under the core lock: a consistent snapshot of what changed. None when
    /// nothing did.
    fn plan(&self, sh: &Shared) -> Result<Option<Plan>, FsError> {
        let started = Instant::now();
        let mut guard = sh.lock();
        if let Some(poison) = &guard.poison {
            return Err(FsError::Poisoned(poison.clone()));
        }
        let covers = sh.log.stats().next_seq - 1;
        // Exactly two entries after the last checkpoint are its own Begun and Done (both come
        // after the seq it covers): covering them changes nothing, and would only log two
        // more, so that an idle volume checkpointed (and fsync'ed) at every interval forever.
        let only_own_entries = covers == guard.sb.covers_seq + 2;
        if guard.state.is_clean() && (covers == guard.sb.covers_seq || only_own_entries) {
            return Ok(None);
        }
        let generation = guard.sb.generation + 1;
        let first_seq = guard.sb.covers_seq + 1;
        let applied_at_snapshot = sh.counters.applied.load(Ordering::Relaxed);
        let dirty = guard.state.take_dirty();
        self.direct_bytes.store(0, Ordering::Relaxed);
        let core = &mut *guard;
        let mut records = Vec::new();
        // A full snapshot once the deltas outgrow it: its cost is then paid for by at least as
        // many bytes of changes. When only the superblock's blob list is full, the newer half
        // of the deltas is merged into this checkpoint's delta instead (their records in
        // order, which loads the same): cost in changes, not in the size of the file system.
        let compact = core.delta_bytes > core.snapshot_bytes.max(4 << 20);
        let merge_from = (!compact && core.sb.blobs.len() + 1 >= MAX_BLOBS)
            .then(|| 1 + (core.sb.blobs.len() - 1) / 2);
        let mut blocks: Vec<(u64, u64)> = dirty.blocks.into_iter().collect();
        blocks.sort_unstable();
        let jobs = core
            .state
            .place_dirty_blocks(blocks, &mut core.alloc, &mut records)?;
        for ino in dirty.inodes {
            match core.state.get(ino) {
                Ok(n) => records.push(MetaRecord::Inode(n.rec.clone())),
                Err(_) => records.push(MetaRecord::InodeGone(ino)),
            }
        }
        for (parent, name) in dirty.dirents {
            // A removed directory's entries were removed before it: record those too.
            let entry = core
                .state
                .get(parent)
                .ok()
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
        records.push(MetaRecord::NextIno(core.state.next_ino()));
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
                merged.extend(meta::read_blob(sh.vol.as_ref(), blob).map_err(|e| {
                    FsError::Poisoned(Poison::io(format!("merging metadata deltas: {e}")))
                })?);
            }
            merged.extend(records);
            (BLOB_DELTA, merged)
        } else {
            (BLOB_DELTA, records)
        };
        let (blob, payload_bytes, crc) = meta::encode_blob(kind, generation, &records);
        let blob_blocks = blob.len() as u64 / BLOCK_BYTES;
        let blob_start = core.alloc.alloc_run(blob_blocks).ok_or_else(|| {
            FsError::Poisoned(Poison::io(
                "the volume is full: no room for checkpoint metadata",
            ))
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
        let frees = core.state.take_pending_free();
        // The ops this checkpoint covers may not be answered yet: their requests must be
        // recognised after a restart although their ring entries are reclaimed.
        let carried = resend::encode_carried(&lock_ignoring_poison(&sh.answers).carried());
        let begun = sh
            .log
            .try_append(
                EntryState::Checkpoint(CheckpointState::Begun),
                None,
                &[&covers.to_le_bytes(), &generation.to_le_bytes(), &carried],
                0,
            )?
            .expect("the checkpoint reserve keeps room for its entries");
        let mut sb = core.sb.clone();
        sb.generation = generation;
        sb.covers_seq = covers;
        sb.blobs = blobs;
        sb.next_ino = core.state.next_ino();
        Ok(Some(Plan {
            started,
            covers,
            generation,
            first_seq,
            applied_at_snapshot,
            jobs,
            blob,
            blob_start,
            payload_bytes,
            compact,
            merge_from,
            old_blobs,
            frees,
            begun,
            sb,
        }))
    }

    /// Phase 3: the superblock is on the volume.
    fn finish(&self, sh: &Shared, plan: Plan) -> Result<CheckpointReport, FsError> {
        // Blocks freed by the checkpointed ops become reusable once no reader holds one.
        drop(sh.reuse.write().unwrap_or_else(|p| p.into_inner()));
        let mut core = sh.lock();
        core.state.finish_block_writes(&plan.jobs);
        for &b in &plan.frees {
            core.alloc.free(b);
        }
        for blob in &plan.old_blobs {
            for b in blob.start_block..blob.start_block + blob.blocks as u64 {
                core.alloc.free(b);
            }
        }
        if plan.compact {
            core.snapshot_bytes = plan.payload_bytes;
            core.delta_bytes = 0;
        } else {
            let replaced: u64 = plan.old_blobs.iter().map(|b| b.payload_bytes).sum();
            core.delta_bytes = core.delta_bytes.saturating_sub(replaced) + plan.payload_bytes;
        }
        core.sb = plan.sb;
        let covers = plan.covers;
        let _ = sh.log.try_append(
            EntryState::Checkpoint(CheckpointState::Done),
            Some(plan.begun.seq),
            &[&covers.to_le_bytes(), &plan.generation.to_le_bytes()],
            0,
        )?;
        drop(core);
        sh.log.reclaim(plan.begun)?;
        if let Some(r) = sh.replica.get() {
            r.checkpoint(Seq(covers));
        }
        self.taken.fetch_add(1, Ordering::Relaxed);
        sh.counters
            .committed
            .store(plan.applied_at_snapshot, Ordering::Relaxed);
        *lock_ignoring_poison(&self.last_at) = Instant::now();
        let report = CheckpointReport {
            covers_seq: covers,
            data_blocks: plan.jobs.len() as u64,
            meta_bytes: plan.payload_bytes,
            compacted: plan.compact,
            elapsed_ms: plan.started.elapsed().as_millis(),
        };
        log::info!(
            "checkpoint {}: covers seq {}..={covers}; wrote {} data blocks and {} bytes of metadata ({}) in {} ms",
            plan.generation,
            plan.first_seq,
            report.data_blocks,
            report.meta_bytes,
            match (plan.compact, plan.merge_from) {
                (true, _) => "a compacted snapshot".to_string(),
                (false, Some(_)) =>
                    format!("a delta merged with the {} newest ones", plan.old_blobs.len()),
                (false, None) => "a delta".to_string(),
            },
            report.elapsed_ms
        );
        Ok(report)
    }
}

/// Phase 2, without the core lock: data, metadata, superblock.
fn write(sh: &Shared, plan: &Plan) -> Result<(), FsError> {
    // Before the first block and again before the superblock: a node fenced on the volume
    // must not write into blocks the new owner may be using.
    check_epoch(sh, &plan.sb)?;
    let mut jobs = plan.jobs.clone();
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
            && jobs[i + n].phys.0 == first.0 + n as u64
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
        // checkpoint references until the new superblock is written: a RAID-5 writes their
        // whole stripes without a journal record (a crash leaves them unreferenced, and
        // assembly resyncs a stripe cut short).
        if fresh {
            sh.vol.write_fresh_at(first.offset(), &buf)?;
        } else {
            sh.vol.write_at(first.offset(), &buf)?;
        }
        i += n;
    }
    // The metadata blob goes to blocks allocated for it: fresh as well.
    sh.vol
        .write_fresh_at(plan.blob_start * BLOCK_BYTES, &plan.blob)?;
    sh.vol.flush()?;
    check_epoch(sh, &plan.sb)?;
    plan.sb.write(sh.vol.as_ref())?;
    Ok(())
}

/// Fencing on the volume: a peer that took the volume over wrote a newer epoch.
fn check_epoch(sh: &Shared, sb: &Superblock) -> Result<(), FsError> {
    if let Ok(on_disk) = Superblock::read(sh.vol.as_ref()) {
        if on_disk.epoch > sb.epoch {
            return Err(FsError::Poisoned(Poison::fenced(format!(
                "the volume was taken over (epoch {} on the volume, ours {}); not writing to it",
                on_disk.epoch, sb.epoch
            ))));
        }
    }
    Ok(())
}

impl Fs {
    /// Takes a checkpoint now. A fence found on the volume fences this node (the hook runs).
    pub fn checkpoint(&self) -> Result<CheckpointReport, FsError> {
        let result = self.ckpt.take(&self.sh);
        if let Err(FsError::Poisoned(Poison::Fenced { detail })) = &result {
            self.fence(detail);
        }
        result
    }

    pub fn request_checkpoint(&self) {
        self.ckpt.request();
    }

    /// The checkpointer's loop: runs until `stop_checkpointer`.
    pub fn run_checkpointer(&self) {
        let interval = Duration::from_millis(self.config.checkpoint_interval_ms.max(10));
        let mut last = Instant::now();
        while !self.ckpt.stopping.load(Ordering::Acquire) {
            let asked = self
                .ckpt
                .wait_for_request(interval.min(Duration::from_millis(500)));
            if self.ckpt.stopping.load(Ordering::Acquire) {
                break;
            }
            // The replica tells a fenced node at its next heartbeat, even when it is idle.
            if let Some(why) = self.sh.replica.get().and_then(|r| r.fenced()) {
                self.replica_failed(ReplicaError::Fenced(why));
            }
            if asked
                || last.elapsed() >= interval
                || self.sh.fill_percent() >= self.config.checkpoint_fill_percent
            {
                match self.checkpoint() {
                    Err(FsError::Poisoned(Poison::Fenced { .. })) | Ok(_) => {}
                    Err(e) => log::error!(
                        "checkpoint failed: {e}; the file system refuses changes until remounted"
                    ),
                }
                last = Instant::now();
            }
        }
    }

    pub fn stop_checkpointer(&self) {
        self.ckpt.stopping.store(true, Ordering::Release);
        self.ckpt.request();
    }
}

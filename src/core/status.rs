//! The status view: a point-in-time picture of the running file system for
//! `smlogfs status` (through the control socket).

use std::sync::atomic::Ordering;

use super::replica::ReplicaInfo;
use super::shared::lock_ignoring_poison;
use super::Fs;

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
    pub mirror: Option<ReplicaInfo>,
    /// What an fsync waits for (`-o fsync=`): local, mirror or both.
    pub fsync_policy: &'static str,
    /// The highest seq the mirror agent reported on its disk (None: no mirror, or nothing
    /// reported yet).
    pub mirror_durable_seq: Option<u64>,
    /// Ops answered success without the synchronous mirror's acknowledgement (the agent
    /// was lost while they waited), since mount.
    pub ops_unprotected: u64,
}

impl Fs {
    /// What `smlogfs status` shows.
    pub fn status(&self) -> FsStatus {
        let sh = &self.sh;
        let ring = sh.log.stats();
        let core = sh.lock();
        let counters = &sh.counters;
        let accepted = counters.accepted.load(Ordering::Relaxed);
        let applied = counters.applied.load(Ordering::Relaxed);
        let failed = counters.failed.load(Ordering::Relaxed);
        let committed = counters.committed.load(Ordering::Relaxed);
        // Ops applied in memory but waiting for the replica are not answered yet: Mirrored
        // once the replica acknowledged their entry, else still Accepted.
        let (waiting, mirrored) = {
            let set = lock_ignoring_poison(&counters.awaiting_mirror);
            let acked = sh
                .replica
                .get()
                .and_then(|r| r.acked_through())
                .map_or(0, |s| s.0);
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
            checkpoint_age_ms: self.ckpt.age_ms(),
            checkpoints_since_mount: self.ckpt.taken(),
            epoch: core.sb.epoch,
            volume: sh.vol.describe(),
            poisoned: core.poison.as_ref().map(|p| p.to_string()),
            inodes: core.state.inode_count() as u64,
            dirty_blocks: core.state.dirty_block_count() as u64,
            mirror: sh.replica.get().map(|r| r.info()),
            fsync_policy: self.config.fsync.name(),
            mirror_durable_seq: sh
                .replica
                .get()
                .and_then(|r| r.durable_through())
                .map(|s| s.0),
            ops_unprotected: counters.unprotected.load(Ordering::Relaxed),
        }
    }
}

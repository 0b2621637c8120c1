//! What the parts of a running file system share: the in-memory state under one lock, the
//! state log, the block volume, the replica, and the op counters. The op pipeline, the read
//! path and the checkpointer each reach the others' data only through `Shared`, which
//! depends on none of them, so splitting them into modules creates no cycles.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use raid_sim::BlockVolume;

use super::alloc::Allocator;
use super::error::Poison;
use super::replica::Replica;
use super::state::FsState;
use super::superblock::Superblock;
use crate::statelog::StateLog;

/// The mutable core, under `Shared::core`.
pub(super) struct Core {
    pub state: FsState,
    pub alloc: Allocator,
    pub sb: Superblock,
    /// Bytes of the newest snapshot and of the deltas written after it.
    pub snapshot_bytes: u64,
    pub delta_bytes: u64,
    /// Set after a failure: the file system refuses changes until remounted.
    pub poison: Option<Poison>,
}

impl Core {
    /// Records why the file system refuses changes. A fence replaces an I/O poison (the node
    /// must answer EROFS and let go of the volume), never the other way round.
    pub fn set_poison(&mut self, poison: Poison) {
        match (&self.poison, &poison) {
            (Some(Poison::Fenced { .. }), _) => {}
            (Some(Poison::Io { .. }), Poison::Io { .. }) => {}
            _ => self.poison = Some(poison),
        }
    }

    pub fn is_fenced(&self) -> bool {
        self.poison.as_ref().is_some_and(Poison::is_fenced)
    }
}

pub(super) struct Shared {
    pub core: Mutex<Core>,
    pub log: StateLog,
    pub vol: Arc<dyn BlockVolume>,
    /// Readers hold it shared while reading volume blocks they looked up; a checkpoint
    /// takes it exclusively before blocks freed by its ops become reusable.
    pub reuse: RwLock<()>,
    pub replica: OnceLock<Arc<dyn Replica>>,
    pub counters: OpCounters,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        lock_ignoring_poison(&self.core)
    }

    /// How full the ring is, in percent.
    pub fn fill_percent(&self) -> u64 {
        let s = self.log.stats();
        s.used_bytes * 100 / s.area_bytes.max(1)
    }
}

/// Running totals of ops by the state they reached (for `status`).
#[derive(Default)]
pub(super) struct OpCounters {
    pub accepted: AtomicU64,
    pub applied: AtomicU64,
    /// Accepted but failed (never applied, discarded by recovery).
    pub failed: AtomicU64,
    /// Ops answered success without the synchronous replica's acknowledgement (it was lost
    /// while they waited; see `Fs::unacknowledged`).
    pub unprotected: AtomicU64,
    /// Applied ops covered by a completed checkpoint.
    pub committed: AtomicU64,
    /// Seqs of the `Applied` entries of ops applied in memory whose caller waits for the
    /// replica's acknowledgement (sync mode): the ones at or below the replica's
    /// acknowledged seq are *Mirrored*, the others still *Accepted* as far as the caller
    /// knows. Bounded by the number of FUSE worker threads.
    pub awaiting_mirror: Mutex<std::collections::BTreeSet<u64>>,
}

/// Locks `m`; a panic elsewhere while it was held is not a reason to stop serving, so the
/// poison is ignored (as the code before this split did for every lock).
pub(super) fn lock_ignoring_poison<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

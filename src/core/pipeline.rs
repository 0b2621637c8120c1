//! The op pipeline: every changing op goes through the same states. Built under the core
//! lock, logged `Accepted` (with the op), applied in memory, for a direct write its data
//! lands in its volume blocks, logged `Applied`, acknowledged by the replica in sync mode,
//! then answered. What a replica failure means for the caller is decided here, once:
//! before the op is logged (`Replica::admit`, `replica_failed`), and after it was applied
//! (`unacknowledged`), where an error is only answered if the op's effect cannot survive
//! ("Answers never lie" in docs/design.md).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::direct;
use super::error::{ApplyError, Poison};
use super::ops::FsOp;
use super::replica::ReplicaError;
use super::shared::{lock_ignoring_poison, Core};
use super::state::FsState;
use super::types::*;
use super::Fs;
use crate::statelog::{EntryState, OpState, ENTRY_HEADER_BYTES, MAX_PAYLOAD_BYTES};

/// Bytes kept free in the ring for the entries a checkpoint logs (Begun, Done), wrap
/// filler included, so that a checkpoint can always start when the ring is full.
pub(super) const CHECKPOINT_RESERVE_BYTES: u64 = 1024;
/// Bytes an `Applied` entry needs (wrap filler included).
const APPLIED_RESERVE_BYTES: u64 = 128;
/// Checkpoints one op may force to find room for its blocks before it gives up (ENOSPC).
const MAX_FORCED_CHECKPOINTS: u32 = 2;
/// An upper bound of what the self-contained form of a direct write adds to its data (entry
/// header and the write's other fields).
const INLINE_OVERHEAD_BYTES: usize = ENTRY_HEADER_BYTES + 64;

impl Fs {
    /// `execute_with` for an op built from the state alone.
    pub(super) fn execute<T>(
        &self,
        build: impl Fn(&FsState) -> FsResult<FsOp>,
        answer: impl FnOnce(&FsState, &FsOp) -> FsResult<T>,
    ) -> FsResult<T> {
        self.execute_with(|core| build(&core.state), None, answer)
    }

    /// Runs one mutating op through its states: `build` makes it (under the core lock, with
    /// the allocator at hand for a direct write), it is logged `Accepted`, applied in
    /// memory, for a direct write `direct_data` lands in its volume blocks, it is logged
    /// `Applied`, the replica acknowledges it, and `answer` makes the reply. Waits for a
    /// checkpoint when the ring is full.
    pub(super) fn execute_with<T>(
        &self,
        mut build: impl FnMut(&mut Core) -> FsResult<FsOp>,
        direct_data: Option<&[u8]>,
        answer: impl FnOnce(&FsState, &FsOp) -> FsResult<T>,
    ) -> FsResult<T> {
        let sh = &self.sh;
        if let Some(replica) = sh.replica.get() {
            // Nothing is logged yet: a refusal here has no effect to lie about.
            replica.admit().map_err(|e| self.replica_failed(e))?;
        }
        let mut checkpoints_forced = 0;
        loop {
            let mut core = sh.lock();
            if let Some(poison) = &core.poison {
                return Err(poison.errno());
            }
            let op = build(&mut core)?;
            let payload = op.encode();
            // The replica gets a direct write with its data: it cannot read our volume. The
            // data goes to the append hook as side bytes (see `replica::forward`).
            let side_data = match (&op, direct_data, sh.replica.get()) {
                (FsOp::WriteDirect(_), Some(data), Some(_)) => Some(data),
                _ => None,
            };
            let side_bytes = side_data.map_or(0, |d| d.len() + INLINE_OVERHEAD_BYTES);
            if side_bytes > MAX_PAYLOAD_BYTES {
                release_direct_blocks(&mut core, &op);
                log::error!(
                    "a direct write of {side_bytes} bytes exceeds the entry limit of \
                     {MAX_PAYLOAD_BYTES} bytes in its self-contained form"
                );
                return Err(Errno::EIO);
            }
            let side_parts;
            let side: &[&[u8]] = match side_data {
                Some(data) => {
                    side_parts = [data];
                    &side_parts
                }
                None => &[],
            };
            let accepted = sh
                .log
                .try_append_noting(
                    EntryState::Op(OpState::Accepted),
                    None,
                    &[&payload],
                    APPLIED_RESERVE_BYTES + CHECKPOINT_RESERVE_BYTES,
                    side,
                )
                .map_err(|e| {
                    release_direct_blocks(&mut core, &op);
                    log::error!("{e}");
                    Errno::EIO
                })?;
            let Some(accepted) = accepted else {
                release_direct_blocks(&mut core, &op);
                drop(core);
                let need = sh.log.worst_case_bytes(payload.len().max(side_bytes))
                    + APPLIED_RESERVE_BYTES
                    + CHECKPOINT_RESERVE_BYTES;
                self.request_checkpoint();
                sh.log.wait_for_space(need, Duration::from_millis(200));
                continue;
            };
            sh.counters.accepted.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = core.state.apply(&op) {
                // Accepted but never Applied: recovery discards it, like the caller did.
                sh.counters.failed.fetch_add(1, Ordering::Relaxed);
                release_direct_blocks(&mut core, &op);
                match e {
                    ApplyError::Refused(errno) => return Err(errno),
                    ApplyError::VolumeRead { block, detail } => {
                        log::error!("reading volume block {block}: {detail}");
                        core.set_poison(Poison::io("a volume read failed while applying an op"));
                        return Err(Errno::EIO);
                    }
                    ApplyError::NeedCheckpoint => {
                        drop(core);
                        checkpoints_forced += 1;
                        if checkpoints_forced > MAX_FORCED_CHECKPOINTS {
                            return Err(Errno::ENOSPC);
                        }
                        match self.checkpoint() {
                            Ok(_) => continue,
                            Err(e) if e.poison().is_fenced() => return Err(Errno::EROFS),
                            Err(_) => return Err(Errno::ENOSPC),
                        }
                    }
                }
            }
            if let (Some(blocks), Some(data)) = (direct::blocks(&op), direct_data) {
                // Still under the core lock: no reader can look the new blocks up, and no
                // checkpoint can cover the op, before its data is in them.
                if let Err(e) = sh.vol.write_fresh_at(blocks.start * BLOCK_BYTES, data) {
                    log::error!(
                        "direct write of {} bytes at volume block {}: {e}",
                        data.len(),
                        blocks.start
                    );
                    core.set_poison(Poison::io(format!(
                        "a direct write to the volume failed: {e}"
                    )));
                    return Err(Errno::EIO);
                }
                self.direct_landed.fetch_add(1, Ordering::Release);
                let since = self
                    .ckpt
                    .direct_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if since + data.len() as u64 >= direct::DIRECT_CHECKPOINT_BYTES {
                    self.request_checkpoint();
                }
            }
            let applied = sh.log.try_append(
                EntryState::Op(OpState::Applied),
                Some(accepted.seq),
                &[],
                CHECKPOINT_RESERVE_BYTES,
            );
            // An op is answered only after its Applied entry: recovery discards an op
            // without one, which would undo a change its caller was told about.
            let Ok(Some(applied)) = applied else {
                panic!(
                    "op {}: no room for its Applied entry, which its Accepted entry reserved",
                    accepted.seq
                );
            };
            sh.counters.applied.fetch_add(1, Ordering::Relaxed);
            let result = answer(&core.state, &op);
            let fill = sh.fill_percent();
            drop(core);
            if let Some(replica) = sh.replica.get() {
                let waiting = &sh.counters.awaiting_mirror;
                lock_ignoring_poison(waiting).insert(applied.seq.0);
                let acked = replica.wait(applied.seq);
                lock_ignoring_poison(waiting).remove(&applied.seq.0);
                if let Err(e) = acked {
                    self.unacknowledged(e, accepted.seq, applied.seq)?;
                }
            }
            if fill >= self.config.checkpoint_fill_percent {
                self.request_checkpoint();
            }
            if self.config.sync_every_op {
                // The op is applied: a failed msync poisons nothing here, and the caller
                // learns of it at its fsync; answering EIO would hide an op that survives.
                if let Err(e) = self.flush_local("sync_ring") {
                    log::error!(
                        "sync_ring: op {} answered, not msync'ed: errno {}",
                        accepted.seq,
                        e.0
                    );
                }
            }
            return result;
        }
    }

    /// What a replica failure before an op is logged means: a fence stops all writes for
    /// good (EROFS, and the node lets go of the volume); any other failure fails the caller
    /// with EIO. Only for refusals that leave no trace (and fsync, which has no effect).
    pub(super) fn replica_failed(&self, e: ReplicaError) -> Errno {
        match e {
            ReplicaError::Fenced(why) => {
                self.fence(&why);
                Errno::EROFS
            }
            ReplicaError::Failed(why) => {
                log::error!("mirror: {why}; answering EIO");
                Errno::EIO
            }
        }
    }
}

impl Fs {
    /// The replica did not acknowledge an op that is logged and applied (`accepted`,
    /// `applied` its entries). Its effect is in the local ring, so recovery here replays it:
    /// the caller is told success unless the effect provably cannot survive.
    ///
    /// * The link failed or the policy's wait ran out: success, unprotected (counted and
    ///   logged); the entry is resent when the agent returns. Under `wait`, the replica
    ///   refuses new changes from now on, before they are logged (`Replica::admit`).
    /// * Fenced: the node that took the volume over recovers from the agent's copy only, so
    ///   the op survives exactly when the agent stored its `Applied` entry before the epoch
    ///   was raised. Read back (before the fence releases the volume lock, so that the new
    ///   owner cannot have moved the agent's checkpoint past it): held → success; not held →
    ///   EROFS; cannot tell → EIO, the one answer that says "unknown", logged with the seq.
    fn unacknowledged(&self, e: ReplicaError, accepted: Seq, applied: Seq) -> FsResult<()> {
        let replica = self
            .sh
            .replica
            .get()
            .expect("only a replica fails to acknowledge");
        match e {
            ReplicaError::Failed(why) => {
                self.sh.counters.unprotected.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "op {}: answered success UNPROTECTED (it is applied and in the local ring; \
                     the agent gets it when it returns): {why}",
                    accepted.0
                );
                Ok(())
            }
            ReplicaError::Fenced(why) => {
                let held = replica.holds_applied(applied, accepted);
                self.fence(&why);
                match held {
                    Ok(true) => {
                        log::warn!(
                            "op {}: the agent holds it although the node was fenced: the new owner \
                             replays it, answered success",
                            accepted.0
                        );
                        Ok(())
                    }
                    Ok(false) => Err(Errno::EROFS),
                    Err(detail) => {
                        log::error!(
                            "op {} (Applied seq {}): fenced, and the agent could not be read back \
                             ({detail}): whether the new owner has it is unknown; answering EIO",
                            accepted.0,
                            applied.0
                        );
                        Err(Errno::EIO)
                    }
                }
            }
        }
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

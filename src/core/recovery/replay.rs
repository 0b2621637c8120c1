//! Replaying the ops the decision table says to replay, on top of the loaded checkpoint.

use std::path::Path;
use std::sync::Arc;

use raid_sim::BlockVolume;

use super::{Action, OpSummary, RecoveryReport};
use crate::core::alloc::Allocator;
use crate::core::direct;
use crate::core::ops::{FsOp, Write, WriteDirect};
use crate::core::state::FsState;
use crate::core::types::{VolBlock, BLOCK_BYTES};
use crate::core::FsError;
use crate::progress::Progress;

/// A direct write as replay applies it: its blocks taken from the allocator when they hold
/// its data; when they do not (the volume lost writes the ring kept, after a power or kernel
/// failure before fsync), a write of zeroes, so that the file keeps its size and never shows
/// what those blocks held before.
pub(super) fn replayable_direct(
    vol: &Arc<dyn BlockVolume>,
    alloc: &mut Allocator,
    op_id: u64,
    op: FsOp,
    report: &mut RecoveryReport,
) -> Result<FsOp, FsError> {
    let FsOp::WriteDirect(WriteDirect {
        ino,
        offset,
        len,
        phys,
        crc,
        now,
    }) = op
    else {
        return Ok(op);
    };
    let intact = match direct::read_back(vol, VolBlock(phys), len, crc)? {
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
    Ok(FsOp::Write(Write {
        ino,
        offset,
        data: vec![0u8; len as usize],
        now,
    }))
}

/// Applies, in op order, every op `plan` says to replay, counting what it did in `report`.
/// An op that fails to apply is logged and counted (the volume and the ring disagree); an op
/// that cannot be decoded stops recovery (the ring is corrupt).
pub(super) fn replay(
    plan: &[OpSummary],
    vol: &Arc<dyn BlockVolume>,
    state: &mut FsState,
    alloc: &mut Allocator,
    report: &mut RecoveryReport,
    progress: &dyn Fn(&str, u64) -> Progress,
    ring_path: &Path,
) -> Result<(), FsError> {
    state.set_replaying(true);
    let to_replay = plan.iter().filter(|o| o.action == Action::Replay).count() as u64;
    let bar = progress("replaying the state log", to_replay);
    for op in plan {
        match op.action {
            Action::Replay => {
                let fsop = FsOp::decode(&op.payload).map_err(|e| FsError::Corrupt {
                    what: "state log",
                    at: format!("{} op {}", ring_path.display(), op.op_id),
                    detail: format!("undecodable op: {e}"),
                })?;
                let fsop = replayable_direct(vol, alloc, op.op_id, fsop, report)?;
                if let Err(e) = state.apply(&fsop) {
                    log::error!(
                        "replaying op {} ({}) failed ({}): the volume and the ring disagree",
                        op.op_id,
                        fsop.kind_name(),
                        e
                    );
                    report.replay_failures += 1;
                }
                report.replayed += 1;
                bar.inc(1);
            }
            Action::Discard => report.discarded += 1,
            _ => report.skipped += 1,
        }
    }
    bar.finish();
    state.set_replaying(false);
    Ok(())
}

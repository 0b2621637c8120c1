//! What recovery does with each op found in the ring: a decision table.
//!
//! An op's *last valid state* is the newest of its entries that passed the checksum and
//! chain checks. Rows are (kind of op, last valid state, covered by the volume's
//! checkpoint?) → action, each with its reason. `decide` is the only code path; the test at
//! the bottom enumerates every row. The states themselves (`OpState`, `CheckpointState`)
//! belong to the state log's format.

use crate::statelog::{CheckpointState, EntryKind, OpState, ScannedEntry};

/// What recovery does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Apply the op again on top of the checkpoint.
    Replay,
    /// The checkpoint already contains the op.
    Skip,
    /// The op never reached the point where its caller was answered: drop it.
    Discard,
    /// The checkpoint's superblock is on the volume: finish it (reclaim the ring behind it).
    FinishCheckpoint,
    /// The checkpoint never reached the volume: the previous one stands, later ops replay.
    AbandonCheckpoint,
}

/// The last valid state of one op found in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastState {
    Op(OpState),
    Checkpoint(CheckpointState),
}

/// How the op's seq relates to the checkpoint the volume holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// seq <= the superblock's covers_seq (for a checkpoint: it is the volume's checkpoint
    /// or an older one).
    Covered,
    /// Newer than the volume's checkpoint.
    After,
}

/// The decision table. Every (last state, coverage) pair has exactly one row.
pub fn decide(last: LastState, coverage: Coverage) -> (Action, &'static str) {
    use Action::*;
    use CheckpointState as C;
    use Coverage::*;
    use OpState as O;
    match (last, coverage) {
        (LastState::Op(_), Covered) => (Skip, "the volume's checkpoint already contains it"),
        (LastState::Op(O::Accepted), After) => (Discard, "logged but never applied: its caller was not answered"),
        (LastState::Op(O::Mirrored), After) => (Discard, "mirrored but never applied: its caller was not answered"),
        (LastState::Op(O::Applied), After) => (Replay, "applied and possibly answered: apply it again"),
        (LastState::Op(O::Committed), After) => (Replay, "committed state is implied, never logged: treat as applied"),
        (LastState::Checkpoint(C::Begun), Covered) => {
            (FinishCheckpoint, "its superblock is on the volume: reclaim the ring behind it")
        }
        (LastState::Checkpoint(C::Done), Covered) => (Skip, "complete"),
        (LastState::Checkpoint(C::Begun), After) => {
            (AbandonCheckpoint, "it never reached the volume: the previous checkpoint stands")
        }
        (LastState::Checkpoint(C::Done), After) => (
            AbandonCheckpoint,
            "logged as done but the volume holds an older checkpoint (the superblock write was lost)",
        ),
    }
}

/// One op as recovery sees it.
#[derive(Clone, Debug)]
pub struct OpSummary {
    pub op_id: u64,
    pub last: LastState,
    /// Payload of the op's first entry (the FsOp for Accepted; the checkpoint's covers_seq).
    pub payload: Vec<u8>,
    pub action: Action,
    pub reason: &'static str,
}

/// Groups the scanned entries by op and decides each, in op order.
pub fn plan(entries: &[ScannedEntry], covers_seq: u64) -> Result<Vec<OpSummary>, String> {
    let mut ops: Vec<OpSummary> = Vec::new();
    let mut index: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for e in entries {
        let h = &e.header;
        let last =
            match h.kind {
                EntryKind::Wrap => continue,
                EntryKind::Op => LastState::Op(OpState::from_u8(h.state).ok_or_else(|| {
                    format!("entry seq {} has unknown op state {}", h.seq, h.state)
                })?),
                EntryKind::Checkpoint => {
                    LastState::Checkpoint(CheckpointState::from_u8(h.state).ok_or_else(|| {
                        format!(
                            "entry seq {} has unknown checkpoint state {}",
                            h.seq, h.state
                        )
                    })?)
                }
            };
        match index.get(&h.op_id) {
            Some(&i) => {
                let newer = match (ops[i].last, last) {
                    (LastState::Op(a), LastState::Op(b)) => b > a,
                    (LastState::Checkpoint(a), LastState::Checkpoint(b)) => b > a,
                    _ => {
                        return Err(format!(
                            "entry seq {} changes the kind of op {}",
                            h.seq, h.op_id
                        ))
                    }
                };
                if newer {
                    ops[i].last = last;
                }
            }
            None => {
                if h.op_id != h.seq {
                    // The op's first entry was reclaimed or lost: only its later states
                    // remain, which happens for ops covered by the checkpoint.
                    if h.op_id > covers_seq {
                        return Err(format!(
                            "entry seq {} belongs to op {} whose first entry is missing",
                            h.seq, h.op_id
                        ));
                    }
                }
                index.insert(h.op_id, ops.len());
                ops.push(OpSummary {
                    op_id: h.op_id,
                    last,
                    payload: e.payload.clone(),
                    action: Action::Skip,
                    reason: "",
                });
            }
        }
    }
    for op in &mut ops {
        let coverage = match op.last {
            LastState::Op(_) => {
                if op.op_id <= covers_seq {
                    Coverage::Covered
                } else {
                    Coverage::After
                }
            }
            LastState::Checkpoint(_) => {
                let their_covers = checkpoint_covers(&op.payload).unwrap_or(u64::MAX);
                if their_covers <= covers_seq {
                    Coverage::Covered
                } else {
                    Coverage::After
                }
            }
        };
        let (action, reason) = decide(op.last, coverage);
        op.action = action;
        op.reason = reason;
    }
    Ok(ops)
}

/// The covers_seq a checkpoint entry's payload names.
pub fn checkpoint_covers(payload: &[u8]) -> Option<u64> {
    payload
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the table, with the action it must give.
    #[test]
    fn decision_table_every_row() {
        use Action::*;
        let rows: Vec<(LastState, Coverage, Action)> = vec![
            (LastState::Op(OpState::Accepted), Coverage::Covered, Skip),
            (LastState::Op(OpState::Mirrored), Coverage::Covered, Skip),
            (LastState::Op(OpState::Applied), Coverage::Covered, Skip),
            (LastState::Op(OpState::Committed), Coverage::Covered, Skip),
            (LastState::Op(OpState::Accepted), Coverage::After, Discard),
            (LastState::Op(OpState::Mirrored), Coverage::After, Discard),
            (LastState::Op(OpState::Applied), Coverage::After, Replay),
            (LastState::Op(OpState::Committed), Coverage::After, Replay),
            (
                LastState::Checkpoint(CheckpointState::Begun),
                Coverage::Covered,
                FinishCheckpoint,
            ),
            (
                LastState::Checkpoint(CheckpointState::Done),
                Coverage::Covered,
                Skip,
            ),
            (
                LastState::Checkpoint(CheckpointState::Begun),
                Coverage::After,
                AbandonCheckpoint,
            ),
            (
                LastState::Checkpoint(CheckpointState::Done),
                Coverage::After,
                AbandonCheckpoint,
            ),
        ];
        // The rows cover every combination exactly once.
        let mut all = Vec::new();
        for s in OpState::ALL {
            for c in [Coverage::Covered, Coverage::After] {
                all.push((LastState::Op(s), c));
            }
        }
        for s in CheckpointState::ALL {
            for c in [Coverage::Covered, Coverage::After] {
                all.push((LastState::Checkpoint(s), c));
            }
        }
        assert_eq!(all.len(), rows.len());
        for (last, cov) in all {
            let row = rows
                .iter()
                .find(|r| r.0 == last && r.1 == cov)
                .expect("row exists");
            let (action, reason) = decide(last, cov);
            assert_eq!(action, row.2, "{last:?} {cov:?}");
            assert!(!reason.is_empty());
        }
    }
}

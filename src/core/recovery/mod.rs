//! Recovery: loads a volume's last checkpoint and replays the ring after it, in memory.
//!
//! `table` is the decision table (an op's last valid state × coverage by the checkpoint →
//! action); `gather` collects the entries after the checkpoint from the local ring and the
//! replica; `replay` applies the ops the table says to replay. `recover` runs the three and
//! writes nothing: fsck and inspect use its result as is, mount continues from it.

mod gather;
mod replay;
mod table;

/// The entry states the table reads, defined by the state log's format.
pub use crate::statelog::{CheckpointState, OpState};
pub use gather::ReplicaSource;
pub use table::{checkpoint_covers, decide, plan, Action, Coverage, LastState, OpSummary};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use raid_sim::BlockVolume;

use std::collections::HashMap;

use super::alloc::Allocator;
use super::meta;
use super::ops::{FsOp, RequestId};
use super::resend::{self, Applied};
use super::state::FsState;
use super::superblock::Superblock;
use super::FsError;
use crate::progress::Progress;

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

/// A volume's state after loading its checkpoint and replaying its ring, in memory only.
pub struct Recovered {
    pub vol: Arc<dyn BlockVolume>,
    pub state: FsState,
    pub alloc: Allocator,
    pub sb: Superblock,
    /// The local ring's scan, when the ring can be continued as it is (None: rebuild it).
    pub scan: Option<crate::statelog::ScanResult>,
    pub plan: Vec<OpSummary>,
    pub report: RecoveryReport,
    pub ring_path: PathBuf,
    pub meta_bytes: u64,
    /// Seq of the first entry after everything recovered.
    pub next_seq: u64,
    /// Entries recovered from the mirror agent.
    pub from_mirror: usize,
}

/// Loads the last checkpoint of `voldir` and replays the ring after it, in memory, and
/// purges the unlinked inodes nothing holds open. Writes nothing (fsck and inspect use it
/// as is).
pub fn recover(
    voldir: &Path,
    progress: &dyn Fn(&str, u64) -> Progress,
    replica: Option<ReplicaSource<'_>>,
) -> Result<Recovered, FsError> {
    let vol: Arc<dyn BlockVolume> = Arc::from(raid_sim::open_volume(voldir)?);
    let mut r = recover_on(vol, voldir, progress, replica)?;
    r.report.orphans_purged = r.state.purge_orphans();
    Ok(r)
}

/// The requests whose ops the ring shows applied, and those the checkpoints found in it
/// carried (applied before them, maybe never answered): what a daemon restarted on the
/// same FUSE connection answers resent requests from. Entries that do not decode are
/// skipped (replay reports a bad op; a carried list only saves a re-execution).
pub fn applied_requests(plan: &[OpSummary]) -> HashMap<RequestId, Applied> {
    let mut found = HashMap::new();
    for op in plan {
        match op.last {
            LastState::Op(OpState::Applied) | LastState::Op(OpState::Committed) => {
                if let Ok((fsop, Some(id))) = FsOp::decode_logged(&op.payload) {
                    found.insert(
                        id,
                        Applied {
                            seq: op.op_id,
                            ino: fsop.outcome_ino(),
                        },
                    );
                }
            }
            LastState::Op(_) => {}
            LastState::Checkpoint(_) => {
                match resend::decode_carried(op.payload.get(16..).unwrap_or(&[])) {
                    Ok(list) => found.extend(list),
                    Err(e) => log::warn!("checkpoint entry {}: {e}; ignored", op.op_id),
                }
            }
        }
    }
    found
}

/// `recover` on a volume already open (tests hand in a fault-injecting one), keeping the
/// unlinked inodes: the caller purges them (`FsState::purge_orphans`) unless the kernel may
/// still hold them open (a daemon restarted on the same FUSE connection).
pub fn recover_on(
    vol: Arc<dyn BlockVolume>,
    voldir: &Path,
    progress: &dyn Fn(&str, u64) -> Progress,
    replica: Option<ReplicaSource<'_>>,
) -> Result<Recovered, FsError> {
    let started = Instant::now();
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
    let gathered = gather::gather_entries(&ring_path, &sb, replica, &mut report)?;
    report.entries_scanned = gathered.entries.len();
    let plan = plan(&gathered.entries, sb.covers_seq).map_err(|detail| FsError::Corrupt {
        what: "state log",
        at: ring_path.display().to_string(),
        detail,
    })?;
    let mut state = loaded.state;
    let mut alloc = loaded.alloc;
    replay::replay(
        &plan,
        &vol,
        &mut state,
        &mut alloc,
        &mut report,
        progress,
        &ring_path,
    )?;
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

/// The ring file of a volume: absolute as stored, or relative to the volume directory.
pub fn ring_path_of(voldir: &Path, sb: &Superblock) -> PathBuf {
    let p = Path::new(&sb.ring_path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        voldir.join(p)
    }
}

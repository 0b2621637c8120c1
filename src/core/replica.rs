//! The core's view of a replica of its state log (the mirror agent, implemented in
//! `crate::mirror`): every appended entry is submitted to it in seq order, and an op whose
//! caller must not be answered before the replica holds it waits for it.
//!
//! The core never names the wire protocol; what a replica failure means for the caller
//! (EROFS when fenced, EIO otherwise) is decided in one place, `Fs::replica_failed`.

use std::sync::Arc;

use super::direct;
use super::ops::FsOp;
use super::types::{Epoch, Seq, VolBlock};
use crate::statelog::{EntryHeader, EntryKind, HookedEntry, OpState, ScannedEntry};

/// A live replica of the state log.
pub trait Replica: Send + Sync {
    /// Queues one entry (called under the ring lock, in seq order).
    fn submit(&self, seq: Seq, entry: Vec<u8>);
    /// Waits, as the replica's policy says, until it holds everything through `seq`.
    fn wait(&self, seq: Seq) -> Result<(), ReplicaError>;
    /// True when the replica holds everything submitted (fsync may skip the local flush).
    fn protected(&self) -> bool;
    /// Why the replica fenced this node, once it did (the volume was taken over).
    fn fenced(&self) -> Option<String>;
    /// The highest seq the replica acknowledged.
    fn acked_through(&self) -> Option<Seq>;
    /// The volume's checkpoint covers everything through `covers`: the replica may drop it.
    fn checkpoint(&self, covers: Seq);
    /// The link as `status` shows it.
    fn info(&self) -> ReplicaInfo;
    /// Called before a new op is logged: refuses it (the caller gets EIO, and nothing was
    /// logged, so nothing survives) while the replica's policy says changes must not go on
    /// without it. Refusing here is the only way a mirror loss may fail a change: once
    /// logged, an op's effect can survive (see "Answers never lie" in docs/design.md).
    fn admit(&self) -> Result<(), ReplicaError> {
        Ok(())
    }
    /// Asks the replica to put everything through `seq` on its disk; returns at once (an
    /// fsync starts the replica's sync before the local flush, so that both run together).
    fn request_durable(&self, _seq: Seq) {}
    /// Waits, as the replica's policy says, until everything through `seq` is on the
    /// replica's disk (not only in its memory).
    fn wait_durable(&self, _seq: Seq) -> Result<(), ReplicaError> {
        Err(ReplicaError::Failed(
            "this replica does not report what is on its disk".into(),
        ))
    }
    /// The highest seq the replica reported on its disk.
    fn durable_through(&self) -> Option<Seq> {
        None
    }
    /// After a fence: whether the replica holds the `Applied` entry `applied` of op
    /// `op_id` (then the node that took the volume over replays the op). Err when it cannot
    /// tell.
    fn holds_applied(&self, _applied: Seq, _op_id: Seq) -> Result<bool, String> {
        Err("this replica cannot be read back".into())
    }
}

/// How to reach a replica: read its copy back (recovery) and connect to it (mount).
pub trait ReplicaLink {
    /// Where it is, for messages.
    fn describe(&self) -> String;
    /// The entries the replica holds after seq `after`, in seq order.
    fn read_back(
        &self,
        volume_id: [u8; 16],
        epoch: Epoch,
        after: Seq,
    ) -> Result<Vec<(Seq, Vec<u8>)>, String>;
    fn connect(&self, volume_id: [u8; 16], epoch: Epoch) -> Result<Arc<dyn Replica>, String>;
}

/// Why an op could not be protected by the replica.
#[derive(Debug)]
pub enum ReplicaError {
    /// The volume was taken over by a newer epoch: this node must stop writing.
    Fenced(String),
    /// The replica's policy gave up (a timeout, or the link failed for good).
    Failed(String),
}

/// The replica link as `status` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicaInfo {
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

/// Forwards one appended entry to `replica`. A direct write's `Accepted` entry comes with
/// its data as side bytes (the replica cannot read our volume): the replica gets the
/// self-contained form instead.
pub(super) fn forward(replica: &dyn Replica, entry: HookedEntry<'_>) {
    if let [data] = entry.side {
        let header = EntryHeader::decode_checked(entry.bytes);
        let op = header.and_then(|h| {
            FsOp::decode(&entry.bytes[crate::statelog::ENTRY_HEADER_BYTES..h.len as usize]).ok()
        });
        if let (Some(header), Some(FsOp::WriteDirect(op))) = (header, op) {
            replica.submit(entry.seq, direct::inline_entry(&header, &op, data));
            return;
        }
        // Side bytes only ever come with a direct write's entry, which the ring just wrote.
        unreachable!("side data with an entry that is not a direct write");
    }
    replica.submit(entry.seq, entry.bytes.to_vec());
}

/// A ring entry as the replica must hold it, for the resend at attach: a direct write's
/// `Accepted` entry carries its data, read back from the volume.
pub(super) fn self_contained(
    vol: &Arc<dyn raid_sim::BlockVolume>,
    e: &ScannedEntry,
) -> Result<Vec<u8>, raid_sim::VolumeError> {
    let is_accepted_op =
        e.header.kind == EntryKind::Op && e.header.state == OpState::Accepted as u8;
    let op = is_accepted_op
        .then(|| FsOp::decode(&e.payload).ok())
        .flatten();
    let Some(FsOp::WriteDirect(op)) = op else {
        return Ok(e.to_bytes());
    };
    let data = match direct::read_back(vol, VolBlock(op.phys), op.len, op.crc)? {
        direct::ReadBack::Intact(data) => data,
        // Recovery replaced it by zeroes and the checkpoint after it covers it; a live entry
        // whose data is gone cannot happen (it landed before `Applied`).
        direct::ReadBack::Lost => vec![0u8; op.len as usize],
    };
    Ok(direct::inline_entry(&e.header, &op, &data))
}

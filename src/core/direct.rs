//! Direct writes: large block-aligned writes whose data goes straight to fresh volume blocks
//! instead of through the ring (the ring's `Accepted` entry then names the blocks and the
//! data's checksum). The data is written once, not twice, and the checkpoint only records
//! where it is.
//!
//! The blocks are always fresh (never referenced by the volume's checkpoint or by another
//! file), so a direct write that never completes changes nothing anybody can see. The data
//! lands on the volume before the op's `Applied` entry; like the ring itself it survives
//! `kill -9` in the page cache, and `fsync` flushes the volume before the ring. The mirror
//! agent gets the op in its self-contained form (an ordinary write carrying the data), so
//! that a peer can recover it without this node's page cache.

use std::sync::Arc;

use raid_sim::BlockVolume;

use super::ops::{encode_write_into, FsOp, WriteDirect};
use super::types::{VolBlock, BLOCK_BYTES};
use crate::statelog::{EntryHeader, ENTRY_HEADER_BYTES};

/// Writes at least this large (and block-aligned) go direct.
pub const DIRECT_WRITE_MIN_BYTES: u64 = 64 << 10;

/// A checkpoint is asked for once this much direct data is not yet covered by one, which
/// bounds what recovery reads back to check.
pub const DIRECT_CHECKPOINT_BYTES: u64 = 256 << 20;

/// Whether a write of `len` bytes at `offset` can go direct.
pub fn eligible(offset: u64, len: u64) -> bool {
    len >= DIRECT_WRITE_MIN_BYTES
        && offset.is_multiple_of(BLOCK_BYTES)
        && len.is_multiple_of(BLOCK_BYTES)
}

/// The volume blocks a direct write placed its data in.
pub fn blocks(op: &FsOp) -> Option<std::ops::Range<u64>> {
    match op {
        FsOp::WriteDirect(w) => Some(w.phys..w.phys + w.len / BLOCK_BYTES),
        _ => None,
    }
}

/// The self-contained form of a direct write's `Accepted` entry (`header` as the ring holds
/// it): the same seq, op and state, with an ordinary write carrying `data` as its payload.
/// What a replica stores, since it cannot read this node's volume. The only encoder of that
/// form: the live forwarding and the resend at attach both use it.
pub fn inline_entry(header: &EntryHeader, op: &WriteDirect, data: &[u8]) -> Vec<u8> {
    let mut entry = vec![0u8; ENTRY_HEADER_BYTES];
    encode_write_into(&mut entry, op.ino, op.offset, data, op.now);
    let header = EntryHeader {
        len: entry.len() as u32,
        ..*header
    };
    let encoded = header.encode(&[&entry[ENTRY_HEADER_BYTES..]]);
    entry[..ENTRY_HEADER_BYTES].copy_from_slice(&encoded);
    entry
}

/// What a read-back of a direct write's blocks found.
pub enum ReadBack {
    /// The data is there, as written.
    Intact(Vec<u8>),
    /// The blocks do not hold it: the volume lost writes the ring kept (a power or kernel
    /// failure before fsync).
    Lost,
}

/// Reads the `len` bytes a direct write placed from volume block `first` on and checks them
/// against the write's checksum.
pub fn read_back(
    vol: &Arc<dyn BlockVolume>,
    first: VolBlock,
    len: u64,
    crc: u32,
) -> Result<ReadBack, raid_sim::VolumeError> {
    let mut data = vec![0u8; len as usize];
    vol.read_at(first.offset(), &mut data)?;
    Ok(if crc32c::crc32c(&data) == crc {
        ReadBack::Intact(data)
    } else {
        ReadBack::Lost
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ops::Write;
    use crate::core::types::Ts;
    use crate::statelog::{EntryKind, OpState, ScannedEntry};

    #[test]
    fn inline_entry_is_a_valid_entry_holding_the_write() {
        let now = Ts { sec: 1, nsec: 2 };
        let op = WriteDirect {
            ino: 5,
            offset: 8192,
            len: 8192,
            phys: 77,
            crc: 0,
            now,
        };
        let header = EntryHeader {
            len: 0,
            seq: 41,
            op_id: 41,
            pass: 3,
            volume_tag: 9,
            kind: EntryKind::Op,
            state: OpState::Accepted as u8,
        };
        let data = vec![0xa5u8; 8192];
        let bytes = inline_entry(&header, &op, &data);
        let e = ScannedEntry::from_bytes(&bytes).expect("a valid entry");
        assert_eq!((e.header.seq, e.header.op_id), (41, 41));
        assert_eq!(e.header.state, OpState::Accepted as u8);
        let want = FsOp::Write(Write {
            ino: 5,
            offset: 8192,
            data,
            now,
        });
        assert_eq!(FsOp::decode(&e.payload).unwrap(), want);
    }
}

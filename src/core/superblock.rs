//! The volume superblock: where the last checkpoint's metadata lives and which ring belongs
//! to the volume. Two slots, written alternately; the valid slot with the higher generation
//! wins, so a torn superblock write falls back to the previous checkpoint.
//!
//! ```text
//! volume block 0: slot 0      volume block 1: slot 1
//!  off size field
//!    0    8 magic        "SMLOGFS\0"
//!    8    4 version      1
//!   12    4 body_bytes   length of the body
//!   16    4 crc32c       over the body
//!   20    4 reserved     0
//!   24    … body         bincode v1 (little-endian, fixed-width integers) of `Superblock`
//! ```

use raid_sim::BlockVolume;
use serde::{Deserialize, Serialize};

use super::types::{Ts, BLOCK_BYTES};

pub const SB_MAGIC: [u8; 8] = *b"SMLOGFS\0";
pub const SB_VERSION: u32 = 1;
const SB_FRAME_BYTES: usize = 24;
pub const SB_SLOTS: u64 = 2;
/// Volume blocks before the first one the allocator hands out.
pub const FIRST_DATA_BLOCK: u64 = 16;
/// Most metadata blobs a superblock can name before a checkpoint compacts them.
pub const MAX_BLOBS: usize = 32;

/// One run of volume blocks holding a metadata blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub start_block: u64,
    pub blocks: u32,
    pub payload_bytes: u64,
    pub crc: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    pub volume_id: [u8; 16],
    /// Volume bytes the file system uses.
    pub capacity_bytes: u64,
    pub generation: u64,
    /// Every entry with seq <= covers_seq is in this checkpoint.
    pub covers_seq: u64,
    /// Ownership epoch (raised by takeover).
    pub epoch: u64,
    pub next_ino: u64,
    /// The state log ring file: absolute, or relative to the volume directory.
    pub ring_path: String,
    pub ring_bytes: u64,
    /// The metadata: a full snapshot first, then deltas in checkpoint order.
    pub blobs: Vec<BlobRef>,
    pub created: Ts,
    /// The node that took the volume over (empty: no takeover in force; any node mounts).
    pub owner: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SuperblockError {
    #[error("no valid superblock (block 0, byte 0: {slot0}; block 1, byte 4096: {slot1})")]
    NoneValid { slot0: String, slot1: String },
    #[error("volume I/O: {0}")]
    Volume(#[from] raid_sim::VolumeError),
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let body = bincode::serialize(self).expect("a superblock always serialises");
        assert!(
            SB_FRAME_BYTES + body.len() <= BLOCK_BYTES as usize,
            "superblock body too large"
        );
        let mut b = vec![0u8; BLOCK_BYTES as usize];
        b[0..8].copy_from_slice(&SB_MAGIC);
        b[8..12].copy_from_slice(&SB_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(body.len() as u32).to_le_bytes());
        b[16..20].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        b[SB_FRAME_BYTES..SB_FRAME_BYTES + body.len()].copy_from_slice(&body);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Superblock, String> {
        if b.len() < SB_FRAME_BYTES || b[0..8] != SB_MAGIC {
            return Err("bad magic (not a smlogfs superblock)".into());
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4"));
        if version != SB_VERSION {
            return Err(format!("unsupported superblock version {version}"));
        }
        let len = u32::from_le_bytes(b[12..16].try_into().expect("4")) as usize;
        if SB_FRAME_BYTES + len > b.len() {
            return Err(format!("body length {len} exceeds the block"));
        }
        let body = &b[SB_FRAME_BYTES..SB_FRAME_BYTES + len];
        let crc = u32::from_le_bytes(b[16..20].try_into().expect("4"));
        if crc != crc32c::crc32c(body) {
            return Err("checksum mismatch".into());
        }
        bincode::deserialize(body).map_err(|e| format!("undecodable body: {e}"))
    }

    /// Reads both slots and returns the newest valid one.
    pub fn read(vol: &dyn BlockVolume) -> Result<Superblock, SuperblockError> {
        let mut found: Vec<Result<Superblock, String>> = Vec::new();
        for slot in 0..SB_SLOTS {
            let mut b = vec![0u8; BLOCK_BYTES as usize];
            found.push(match vol.read_at(slot * BLOCK_BYTES, &mut b) {
                Ok(()) => Superblock::decode(&b),
                Err(e) => Err(e.to_string()),
            });
        }
        let slot1 = found.pop().expect("two slots");
        let slot0 = found.pop().expect("two slots");
        match (slot0, slot1) {
            (Ok(a), Ok(b)) => Ok(if b.generation > a.generation { b } else { a }),
            (Ok(a), Err(_)) => Ok(a),
            (Err(_), Ok(b)) => Ok(b),
            (Err(slot0), Err(slot1)) => Err(SuperblockError::NoneValid { slot0, slot1 }),
        }
    }

    /// Writes this superblock into the slot its generation selects, then flushes.
    pub fn write(&self, vol: &dyn BlockVolume) -> Result<(), raid_sim::VolumeError> {
        let slot = self.generation % SB_SLOTS;
        vol.write_at(slot * BLOCK_BYTES, &self.encode())?;
        vol.flush()
    }
}

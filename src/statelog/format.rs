//! Byte layout of the state log ring file. Little-endian throughout.
//!
//! ```text
//! ring file
//! ┌──────────────┬──────────────┬────────────────────────────────────────────┐
//! │ header slot 0│ header slot 1│ entry area (ring_bytes - HEADER_AREA_BYTES) │
//! └──────────────┴──────────────┴────────────────────────────────────────────┘
//!   4096 bytes     4096 bytes     entries, each ENTRY_ALIGN-aligned, wrapping
//!
//! header slot (the valid slot with the higher generation wins)
//!  off size field
//!    0    8 magic            "SMLGRING"
//!    8    4 version          1
//!   12    4 reserved         0
//!   16    8 ring_bytes       total file size
//!   24   16 volume_id        the volume this ring belongs to
//!   40    8 generation       bumped on every header write
//!   48    8 tail_offset      entry-area offset of the oldest live entry
//!   56    8 tail_seq         seq expected at tail_offset
//!   64    4 crc32c           over bytes [0, 64)
//!
//! entry
//!  off size field
//!    0    4 magic            0x474F4C53 ("SLOG")
//!    4    4 len              header + payload bytes (padding excluded)
//!    8    8 seq              exactly previous seq + 1
//!   16    8 op_id            seq of the op's Accepted entry
//!   24    1 kind             EntryKind
//!   25    1 state            op state (see core::state)
//!   26    2 reserved         0
//!   28    4 crc32c           over bytes [0, 28) and the payload
//!   32    … payload
//! ```
//! An entry that would cross the end of the area is preceded by a `Wrap` entry (or, when
//! fewer than ENTRY_HEADER_BYTES remain, by nothing) and written at area offset 0.

pub const RING_MAGIC: [u8; 8] = *b"SMLGRING";
pub const ENTRY_MAGIC: u32 = 0x474F_4C53;

/// On-disk version of the ring. Version 1 is the only one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingVersion {
    V1 = 1,
}

impl RingVersion {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(RingVersion::V1),
            _ => None,
        }
    }
}

pub const HEADER_SLOT_BYTES: u64 = 4096;
pub const HEADER_AREA_BYTES: u64 = 2 * HEADER_SLOT_BYTES;

pub const HDR_MAGIC: usize = 0;
pub const HDR_VERSION: usize = HDR_MAGIC + 8;
pub const HDR_RESERVED: usize = HDR_VERSION + 4;
pub const HDR_RING_BYTES: usize = HDR_RESERVED + 4;
pub const HDR_VOLUME_ID: usize = HDR_RING_BYTES + 8;
pub const HDR_GENERATION: usize = HDR_VOLUME_ID + 16;
pub const HDR_TAIL_OFFSET: usize = HDR_GENERATION + 8;
pub const HDR_TAIL_SEQ: usize = HDR_TAIL_OFFSET + 8;
pub const HDR_CRC: usize = HDR_TAIL_SEQ + 8;
pub const HDR_BYTES: usize = HDR_CRC + 4;

pub const ENT_MAGIC: usize = 0;
pub const ENT_LEN: usize = ENT_MAGIC + 4;
pub const ENT_SEQ: usize = ENT_LEN + 4;
pub const ENT_OP_ID: usize = ENT_SEQ + 8;
pub const ENT_KIND: usize = ENT_OP_ID + 8;
pub const ENT_STATE: usize = ENT_KIND + 1;
pub const ENT_RESERVED: usize = ENT_STATE + 1;
pub const ENT_CRC: usize = ENT_RESERVED + 2;
pub const ENTRY_HEADER_BYTES: usize = ENT_CRC + 4;
pub const ENTRY_ALIGN: u64 = 8;

/// Smallest ring accepted by mkfs: two header slots and room for a few large entries.
pub const MIN_RING_BYTES: u64 = 4 << 20;
/// Largest payload of one entry (a 1 MiB write plus its arguments).
pub const MAX_PAYLOAD_BYTES: usize = (1 << 20) + 4096;

const _: () = assert!(HDR_BYTES as u64 <= HEADER_SLOT_BYTES);
const _: () = assert!(ENTRY_HEADER_BYTES == 32);
const _: () = assert!((ENTRY_HEADER_BYTES as u64).is_multiple_of(ENTRY_ALIGN));
const _: () = assert!(MIN_RING_BYTES > HEADER_AREA_BYTES + 2 * MAX_PAYLOAD_BYTES as u64);

/// What an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A state of a file-system op; payload is the op for `Accepted`, empty otherwise.
    Op = 1,
    /// A state of a checkpoint; payload is `CheckpointPayload`.
    Checkpoint = 2,
    /// Filler: the next entry starts at area offset 0.
    Wrap = 3,
}

impl EntryKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(EntryKind::Op),
            2 => Some(EntryKind::Checkpoint),
            3 => Some(EntryKind::Wrap),
            _ => None,
        }
    }
}

/// A sequence number: every entry gets the next one, in append order, across wraps and
/// restarts. An op's entries share the seq of its first entry as their op id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl Seq {
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// States of a file-system op, as logged (`state` byte of an `Op` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpState {
    /// Logged locally with its full arguments; not yet applied, caller not answered.
    Accepted = 1,
    /// The mirror agent acknowledged the Accepted entry (mirror configured).
    Mirrored = 2,
    /// Applied in memory; the caller is answered after this entry.
    Applied = 3,
    /// On the volume (implied by a checkpoint covering the op; never logged per op).
    Committed = 4,
}

impl OpState {
    pub const ALL: [OpState; 4] = [
        OpState::Accepted,
        OpState::Mirrored,
        OpState::Applied,
        OpState::Committed,
    ];

    pub fn from_u8(v: u8) -> Option<OpState> {
        OpState::ALL.into_iter().find(|s| *s as u8 == v)
    }
}

/// States of a checkpoint (`state` byte of a `Checkpoint` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CheckpointState {
    /// Snapshot taken; data and metadata are being written to the volume.
    Begun = 1,
    /// The superblock naming it is on the volume; the ring behind it may be reclaimed.
    Done = 2,
}

impl CheckpointState {
    pub const ALL: [CheckpointState; 2] = [CheckpointState::Begun, CheckpointState::Done];

    pub fn from_u8(v: u8) -> Option<CheckpointState> {
        CheckpointState::ALL.into_iter().find(|s| *s as u8 == v)
    }
}

/// What an appended entry records: its kind and state byte come from here (a `Wrap` filler
/// is the ring's own business and never appended by a caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    Op(OpState),
    Checkpoint(CheckpointState),
}

impl EntryState {
    pub fn kind(self) -> EntryKind {
        match self {
            EntryState::Op(_) => EntryKind::Op,
            EntryState::Checkpoint(_) => EntryKind::Checkpoint,
        }
    }

    /// The `state` byte of the entry header.
    pub fn byte(self) -> u8 {
        match self {
            EntryState::Op(s) => s as u8,
            EntryState::Checkpoint(s) => s as u8,
        }
    }
}

pub fn align_up(n: u64) -> u64 {
    n.div_ceil(ENTRY_ALIGN) * ENTRY_ALIGN
}

pub fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A decoded ring header slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingHeader {
    pub ring_bytes: u64,
    pub volume_id: [u8; 16],
    pub generation: u64,
    pub tail_offset: u64,
    pub tail_seq: u64,
}

impl RingHeader {
    pub fn encode(&self) -> [u8; HDR_BYTES] {
        let mut b = [0u8; HDR_BYTES];
        b[HDR_MAGIC..HDR_MAGIC + 8].copy_from_slice(&RING_MAGIC);
        b[HDR_VERSION..HDR_VERSION + 4].copy_from_slice(&(RingVersion::V1 as u32).to_le_bytes());
        b[HDR_RING_BYTES..HDR_RING_BYTES + 8].copy_from_slice(&self.ring_bytes.to_le_bytes());
        b[HDR_VOLUME_ID..HDR_VOLUME_ID + 16].copy_from_slice(&self.volume_id);
        b[HDR_GENERATION..HDR_GENERATION + 8].copy_from_slice(&self.generation.to_le_bytes());
        b[HDR_TAIL_OFFSET..HDR_TAIL_OFFSET + 8].copy_from_slice(&self.tail_offset.to_le_bytes());
        b[HDR_TAIL_SEQ..HDR_TAIL_SEQ + 8].copy_from_slice(&self.tail_seq.to_le_bytes());
        let crc = crc32c::crc32c(&b[..HDR_CRC]);
        b[HDR_CRC..HDR_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes one slot; `Err` says why it is not valid.
    pub fn decode(b: &[u8]) -> Result<RingHeader, String> {
        if b.len() < HDR_BYTES {
            return Err("slot shorter than a header".into());
        }
        if b[HDR_MAGIC..HDR_MAGIC + 8] != RING_MAGIC {
            return Err("bad magic (not a smlogfs state log)".into());
        }
        let crc = get_u32(b, HDR_CRC);
        if crc != crc32c::crc32c(&b[..HDR_CRC]) {
            return Err("header checksum mismatch".into());
        }
        let version = get_u32(b, HDR_VERSION);
        if RingVersion::from_u32(version).is_none() {
            return Err(format!("unsupported ring version {version}"));
        }
        Ok(RingHeader {
            ring_bytes: get_u64(b, HDR_RING_BYTES),
            volume_id: b[HDR_VOLUME_ID..HDR_VOLUME_ID + 16].try_into().expect("16"),
            generation: get_u64(b, HDR_GENERATION),
            tail_offset: get_u64(b, HDR_TAIL_OFFSET),
            tail_seq: get_u64(b, HDR_TAIL_SEQ),
        })
    }
}

/// The fixed part of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub len: u32,
    pub seq: u64,
    pub op_id: u64,
    pub kind: EntryKind,
    pub state: u8,
}

impl EntryHeader {
    /// Encodes the header with the checksum of header and `payload`.
    pub fn encode(&self, payload_parts: &[&[u8]]) -> [u8; ENTRY_HEADER_BYTES] {
        let mut b = [0u8; ENTRY_HEADER_BYTES];
        b[ENT_MAGIC..ENT_MAGIC + 4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
        b[ENT_LEN..ENT_LEN + 4].copy_from_slice(&self.len.to_le_bytes());
        b[ENT_SEQ..ENT_SEQ + 8].copy_from_slice(&self.seq.to_le_bytes());
        b[ENT_OP_ID..ENT_OP_ID + 8].copy_from_slice(&self.op_id.to_le_bytes());
        b[ENT_KIND] = self.kind as u8;
        b[ENT_STATE] = self.state;
        let mut crc = crc32c::crc32c(&b[..ENT_CRC]);
        for part in payload_parts {
            crc = crc32c::crc32c_append(crc, part);
        }
        b[ENT_CRC..ENT_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks the entry starting at `b[0]`; `b` extends at least to the end of
    /// the entry area. Returns None when no valid entry starts here.
    pub fn decode_checked(b: &[u8]) -> Option<EntryHeader> {
        if b.len() < ENTRY_HEADER_BYTES || get_u32(b, ENT_MAGIC) != ENTRY_MAGIC {
            return None;
        }
        let len = get_u32(b, ENT_LEN);
        if (len as usize) < ENTRY_HEADER_BYTES
            || len as usize > ENTRY_HEADER_BYTES + MAX_PAYLOAD_BYTES
            || len as usize > b.len()
        {
            return None;
        }
        let kind = EntryKind::from_u8(b[ENT_KIND])?;
        let stored = get_u32(b, ENT_CRC);
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&b[..ENT_CRC]),
            &b[ENTRY_HEADER_BYTES..len as usize],
        );
        if crc != stored {
            return None;
        }
        Some(EntryHeader {
            len,
            seq: get_u64(b, ENT_SEQ),
            op_id: get_u64(b, ENT_OP_ID),
            kind,
            state: b[ENT_STATE],
        })
    }
}

//! Byte layout of the state log ring file. Little-endian throughout.
//!
//! ```text
//! ring file
//! ┌──────────────┬──────────────┬────────────────────────────────────────────┐
//! │ header slot 0│ header slot 1│ entry area (ring_bytes - HEADER_AREA_BYTES) │
//! └──────────────┴──────────────┴────────────────────────────────────────────┘
//!   4096 bytes     4096 bytes     entries, each ENTRY_ALIGN-aligned, wrapping
//!
//! header slot, version 2 (the valid slot with the higher generation wins)
//!  off size field
//!    0    8 magic            "SMLGRING"
//!    8    4 version          2 (1: see below)
//!   12    4 reserved         0
//!   16    8 ring_bytes       total file size
//!   24   16 volume_id        the volume this ring belongs to
//!   40    8 generation       bumped on every header write
//!   48    8 tail_offset      entry-area offset of the oldest live entry
//!   56    8 tail_seq         seq expected at tail_offset
//!   64    8 tail_pass        pass of the entry at tail_offset
//!   72    8 pass_floor       every pass below it is used up: a writer takes a higher one
//!   80    8 durable_seq      watermark: entries through this seq are on the media
//!   88    8 durable_offset   watermark: area offset just after entry durable_seq
//!   96    4 crc32c           over bytes [0, 96)
//!
//! entry, version 2
//!  off size field
//!    0    4 magic            0x32474C53 ("SLG2")
//!    4    4 len              header + payload bytes (padding excluded)
//!    8    8 seq              exactly previous seq + 1
//!   16    8 op_id            seq of the op's Accepted entry
//!   24    8 pass             the ring pass (lap or mount session) that wrote it
//!   32    8 volume_tag       two crc32c of the volume id (see `volume_tag`)
//!   40    1 kind             EntryKind
//!   41    1 state            op state (see core::state)
//!   42    2 reserved         0
//!   44    4 crc32c           over bytes [0, 44) and the payload
//!   48    … payload
//! ```
//! An entry that would cross the end of the area is preceded by a `Wrap` entry (or, when
//! fewer than ENTRY_HEADER_BYTES remain, by nothing) and written at area offset 0.
//!
//! Version 1 (read once, for recovery, then replaced by a version 2 ring): the header ends
//! with its crc32c at byte 64 over [0, 64); entries have a 32-byte header (magic
//! 0x474F4C53, len, seq, op_id, kind, state, reserved, crc32c at 28) and no pass or tag.

pub const RING_MAGIC: [u8; 8] = *b"SMLGRING";
pub const ENTRY_MAGIC: u32 = 0x3247_4C53;
pub const ENTRY_MAGIC_V1: u32 = 0x474F_4C53;

/// On-disk version of the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingVersion {
    /// Entries bound to nothing; no watermark. Read for recovery only.
    V1 = 1,
    /// Entries bound to their volume and pass; a durable watermark in the header.
    V2 = 2,
}

impl RingVersion {
    /// The version `create` writes.
    pub const CURRENT: RingVersion = RingVersion::V2;

    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(RingVersion::V1),
            2 => Some(RingVersion::V2),
            _ => None,
        }
    }

    /// Entries carry a pass and a volume tag, and the header a durable watermark: damage
    /// after the watermark is a torn tail, damage before it corruption.
    pub fn has_watermark(self) -> bool {
        self == RingVersion::V2
    }

    /// A daemon appends to a ring of this version (older ones are recovered and replaced).
    pub fn is_writable(self) -> bool {
        self == RingVersion::CURRENT
    }

    /// Bytes of an entry header.
    pub fn entry_header_bytes(self) -> usize {
        match self {
            RingVersion::V1 => V1_ENTRY_HEADER_BYTES,
            RingVersion::V2 => ENTRY_HEADER_BYTES,
        }
    }

    /// Offset of the header checksum, which covers everything before it.
    fn header_crc_at(self) -> usize {
        match self {
            RingVersion::V1 => V1_HDR_CRC,
            RingVersion::V2 => HDR_CRC,
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
/// Version 1 ends here, with its checksum.
pub const V1_HDR_CRC: usize = HDR_TAIL_SEQ + 8;
pub const HDR_TAIL_PASS: usize = HDR_TAIL_SEQ + 8;
pub const HDR_PASS_FLOOR: usize = HDR_TAIL_PASS + 8;
pub const HDR_DURABLE_SEQ: usize = HDR_PASS_FLOOR + 8;
pub const HDR_DURABLE_OFFSET: usize = HDR_DURABLE_SEQ + 8;
pub const HDR_CRC: usize = HDR_DURABLE_OFFSET + 8;
pub const HDR_BYTES: usize = HDR_CRC + 4;

pub const ENT_MAGIC: usize = 0;
pub const ENT_LEN: usize = ENT_MAGIC + 4;
pub const ENT_SEQ: usize = ENT_LEN + 4;
pub const ENT_OP_ID: usize = ENT_SEQ + 8;
pub const ENT_PASS: usize = ENT_OP_ID + 8;
pub const ENT_VOLUME_TAG: usize = ENT_PASS + 8;
pub const ENT_KIND: usize = ENT_VOLUME_TAG + 8;
pub const ENT_STATE: usize = ENT_KIND + 1;
pub const ENT_RESERVED: usize = ENT_STATE + 1;
pub const ENT_CRC: usize = ENT_RESERVED + 2;
pub const ENTRY_HEADER_BYTES: usize = ENT_CRC + 4;
pub const ENTRY_ALIGN: u64 = 8;

/// Version 1 entry header: magic, len, seq and op_id as in version 2, then these.
const V1_ENT_KIND: usize = ENT_OP_ID + 8;
const V1_ENT_STATE: usize = V1_ENT_KIND + 1;
const V1_ENT_CRC: usize = V1_ENT_STATE + 1 + 2;
pub const V1_ENTRY_HEADER_BYTES: usize = V1_ENT_CRC + 4;

/// Smallest ring accepted by mkfs: two header slots and room for a few large entries.
pub const MIN_RING_BYTES: u64 = 4 << 20;
/// Largest payload of one entry (a 1 MiB write plus its arguments).
pub const MAX_PAYLOAD_BYTES: usize = (1 << 20) + 4096;

const _: () = assert!(HDR_BYTES as u64 <= HEADER_SLOT_BYTES);
const _: () = assert!(V1_HDR_CRC == 64);
const _: () = assert!(ENTRY_HEADER_BYTES == 48);
const _: () = assert!(V1_ENTRY_HEADER_BYTES == 32);
const _: () = assert!((ENTRY_HEADER_BYTES as u64).is_multiple_of(ENTRY_ALIGN));
const _: () = assert!((V1_ENTRY_HEADER_BYTES as u64).is_multiple_of(ENTRY_ALIGN));
const _: () = assert!(MIN_RING_BYTES > HEADER_AREA_BYTES + 2 * MAX_PAYLOAD_BYTES as u64);

/// What binds an entry to its volume: crc32c of the volume id (high half) and crc32c of
/// "smlogfs ring" followed by the volume id (low half). Another volume's entries (a copy of
/// its ring inside a file) carry another tag.
pub fn volume_tag(volume_id: &[u8; 16]) -> u64 {
    let high = crc32c::crc32c(volume_id) as u64;
    let low = crc32c::crc32c_append(crc32c::crc32c(b"smlogfs ring"), volume_id) as u64;
    high << 32 | low
}

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

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A decoded ring header slot. Version 1 headers read with zero pass and watermark fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingHeader {
    pub version: RingVersion,
    pub ring_bytes: u64,
    pub volume_id: [u8; 16],
    pub generation: u64,
    pub tail_offset: u64,
    pub tail_seq: u64,
    pub tail_pass: u64,
    pub pass_floor: u64,
    /// Entries through this seq are durable (flushed before the header was written).
    pub durable_seq: u64,
    /// Area offset just after the entry `durable_seq`.
    pub durable_offset: u64,
}

impl RingHeader {
    /// Encodes a header of the current version (the only one written).
    pub fn encode(&self) -> [u8; HDR_BYTES] {
        assert!(
            self.version.is_writable(),
            "only the current ring version is written"
        );
        let mut b = [0u8; HDR_BYTES];
        b[HDR_MAGIC..HDR_MAGIC + 8].copy_from_slice(&RING_MAGIC);
        b[HDR_VERSION..HDR_VERSION + 4].copy_from_slice(&(self.version as u32).to_le_bytes());
        put_u64(&mut b, HDR_RING_BYTES, self.ring_bytes);
        b[HDR_VOLUME_ID..HDR_VOLUME_ID + 16].copy_from_slice(&self.volume_id);
        put_u64(&mut b, HDR_GENERATION, self.generation);
        put_u64(&mut b, HDR_TAIL_OFFSET, self.tail_offset);
        put_u64(&mut b, HDR_TAIL_SEQ, self.tail_seq);
        put_u64(&mut b, HDR_TAIL_PASS, self.tail_pass);
        put_u64(&mut b, HDR_PASS_FLOOR, self.pass_floor);
        put_u64(&mut b, HDR_DURABLE_SEQ, self.durable_seq);
        put_u64(&mut b, HDR_DURABLE_OFFSET, self.durable_offset);
        let crc = crc32c::crc32c(&b[..HDR_CRC]);
        b[HDR_CRC..HDR_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes one slot; `Err` says why it is not valid.
    pub fn decode(b: &[u8]) -> Result<RingHeader, String> {
        if b.len() < V1_HDR_CRC + 4 {
            return Err("slot shorter than a header".into());
        }
        if b[HDR_MAGIC..HDR_MAGIC + 8] != RING_MAGIC {
            return Err("bad magic (not a smlogfs state log)".into());
        }
        let raw = get_u32(b, HDR_VERSION);
        let Some(version) = RingVersion::from_u32(raw) else {
            // A damaged version field fails the checksum too; say what can be acted on.
            return Err(format!(
                "unsupported ring version {raw} (this smlogfs reads versions 1 and 2)"
            ));
        };
        let crc_at = version.header_crc_at();
        if b.len() < crc_at + 4 {
            return Err("slot shorter than a header".into());
        }
        if get_u32(b, crc_at) != crc32c::crc32c(&b[..crc_at]) {
            return Err("header checksum mismatch".into());
        }
        let v2 = |at: usize| {
            if version.has_watermark() {
                get_u64(b, at)
            } else {
                0
            }
        };
        Ok(RingHeader {
            version,
            ring_bytes: get_u64(b, HDR_RING_BYTES),
            volume_id: b[HDR_VOLUME_ID..HDR_VOLUME_ID + 16].try_into().expect("16"),
            generation: get_u64(b, HDR_GENERATION),
            tail_offset: get_u64(b, HDR_TAIL_OFFSET),
            tail_seq: get_u64(b, HDR_TAIL_SEQ),
            tail_pass: v2(HDR_TAIL_PASS),
            pass_floor: v2(HDR_PASS_FLOOR),
            durable_seq: v2(HDR_DURABLE_SEQ),
            durable_offset: v2(HDR_DURABLE_OFFSET),
        })
    }
}

/// The fixed part of an entry. Version 1 entries decode with zero `pass` and `volume_tag`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub len: u32,
    pub seq: u64,
    pub op_id: u64,
    pub pass: u64,
    pub volume_tag: u64,
    pub kind: EntryKind,
    pub state: u8,
}

impl EntryHeader {
    /// Encodes a version 2 header with the checksum of header and `payload_parts`.
    pub fn encode(&self, payload_parts: &[&[u8]]) -> [u8; ENTRY_HEADER_BYTES] {
        let mut b = [0u8; ENTRY_HEADER_BYTES];
        b[ENT_MAGIC..ENT_MAGIC + 4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
        b[ENT_LEN..ENT_LEN + 4].copy_from_slice(&self.len.to_le_bytes());
        put_u64(&mut b, ENT_SEQ, self.seq);
        put_u64(&mut b, ENT_OP_ID, self.op_id);
        put_u64(&mut b, ENT_PASS, self.pass);
        put_u64(&mut b, ENT_VOLUME_TAG, self.volume_tag);
        b[ENT_KIND] = self.kind as u8;
        b[ENT_STATE] = self.state;
        let mut crc = crc32c::crc32c(&b[..ENT_CRC]);
        for part in payload_parts {
            crc = crc32c::crc32c_append(crc, part);
        }
        b[ENT_CRC..ENT_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks the version 2 entry starting at `b[0]`; `b` extends at least to
    /// the end of the entry area. Returns None when no valid entry starts here. Whether it
    /// belongs to this ring (volume tag, pass, seq) is the scanner's business.
    pub fn decode_checked(b: &[u8]) -> Option<EntryHeader> {
        if b.len() < ENTRY_HEADER_BYTES || get_u32(b, ENT_MAGIC) != ENTRY_MAGIC {
            return None;
        }
        let len = checked_len(b, ENTRY_HEADER_BYTES)?;
        let kind = EntryKind::from_u8(b[ENT_KIND])?;
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&b[..ENT_CRC]),
            &b[ENTRY_HEADER_BYTES..len as usize],
        );
        if crc != get_u32(b, ENT_CRC) {
            return None;
        }
        Some(EntryHeader {
            len,
            seq: get_u64(b, ENT_SEQ),
            op_id: get_u64(b, ENT_OP_ID),
            pass: get_u64(b, ENT_PASS),
            volume_tag: get_u64(b, ENT_VOLUME_TAG),
            kind,
            state: b[ENT_STATE],
        })
    }

    /// `decode_checked` for a version 1 entry (32-byte header, no pass, no tag).
    pub fn decode_checked_v1(b: &[u8]) -> Option<EntryHeader> {
        if b.len() < V1_ENTRY_HEADER_BYTES || get_u32(b, ENT_MAGIC) != ENTRY_MAGIC_V1 {
            return None;
        }
        let len = checked_len(b, V1_ENTRY_HEADER_BYTES)?;
        let kind = EntryKind::from_u8(b[V1_ENT_KIND])?;
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&b[..V1_ENT_CRC]),
            &b[V1_ENTRY_HEADER_BYTES..len as usize],
        );
        if crc != get_u32(b, V1_ENT_CRC) {
            return None;
        }
        Some(EntryHeader {
            len,
            seq: get_u64(b, ENT_SEQ),
            op_id: get_u64(b, ENT_OP_ID),
            pass: 0,
            volume_tag: 0,
            kind,
            state: b[V1_ENT_STATE],
        })
    }
}

/// The `len` field of an entry whose header is `header_bytes` long, if it is in bounds.
fn checked_len(b: &[u8], header_bytes: usize) -> Option<u32> {
    let len = get_u32(b, ENT_LEN);
    let ok = (len as usize) >= header_bytes
        && len as usize <= header_bytes + MAX_PAYLOAD_BYTES
        && len as usize <= b.len();
    ok.then_some(len)
}

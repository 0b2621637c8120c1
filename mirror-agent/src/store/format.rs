//! The agent's on-disk format, written down once. All integers little-endian.
//!
//! Per volume, a directory `DIR/vol-<32 hex digits of the volume id>/` holds:
//!
//! `volume.meta` — 64 bytes, replaced atomically (write temp, fsync, rename, fsync dir):
//!
//! ```text
//! offset  size  field               meaning
//!      0     4  magic               b"SMLM"
//!      4     2  version             1
//!      6     2  flags               bit0: checkpoint_through is set; others 0
//!      8    16  volume_id           must equal the directory's name
//!     24     8  epoch               ownership epoch; only ever raised
//!     32     8  checkpoint_through  entries <= this may be (and are) dropped
//!     40    20  reserved            0
//!     60     4  crc                 crc32c of bytes 0..60
//! ```
//!
//! `seg-<first seq, 20 decimal digits>.log` — append-only segments. A segment header:
//!
//! ```text
//!      0     4  magic               b"SMLS"
//!      4     2  version             1
//!      6     2  reserved            0
//!      8    16  volume_id
//!     24     8  first_seq           seq of the segment's first record (= file name)
//!     32     4  crc                 crc32c of bytes 0..32
//! ```
//!
//! then records, back to back, with consecutive seqs starting at `first_seq`:
//!
//! ```text
//!      0     4  magic               b"SMLE"
//!      4     8  seq
//!     12     4  len                 <= MAX_ENTRY_BYTES
//!     16     4  crc                 crc32c of record bytes 4..16 followed by the entry
//!     20   len  entry               opaque bytes from the node
//! ```
//!
//! A record that fails its checks at the end of the *last* segment is a torn write (the
//! agent died while writing it, before acknowledging it) and is cut off at start-up.
//! Anywhere else it is corruption and the volume is refused, naming file and offset.

use smlog_wire::format::{VolumeId, MAX_ENTRY_BYTES, VOLUME_ID_BYTES};

pub const META_MAGIC: [u8; 4] = *b"SMLM";
pub const SEGMENT_MAGIC: [u8; 4] = *b"SMLS";
pub const RECORD_MAGIC: [u8; 4] = *b"SMLE";
pub const FORMAT_VERSION: u16 = 1;

const MAGIC_BYTES: usize = 4;
const VERSION_BYTES: usize = 2;
const META_FLAGS_BYTES: usize = 2;
const EPOCH_BYTES: usize = 8;
const SEQ_BYTES: usize = 8;
const META_RESERVED_BYTES: usize = 20;
const CRC_BYTES: usize = 4;
const SEGMENT_RESERVED_BYTES: usize = 2;
const LEN_BYTES: usize = 4;

pub const META_VERSION_AT: usize = MAGIC_BYTES;
pub const META_FLAGS_AT: usize = META_VERSION_AT + VERSION_BYTES;
pub const META_VOLUME_AT: usize = META_FLAGS_AT + META_FLAGS_BYTES;
pub const META_EPOCH_AT: usize = META_VOLUME_AT + VOLUME_ID_BYTES;
pub const META_CHECKPOINT_AT: usize = META_EPOCH_AT + EPOCH_BYTES;
pub const META_RESERVED_AT: usize = META_CHECKPOINT_AT + SEQ_BYTES;
pub const META_CRC_AT: usize = META_RESERVED_AT + META_RESERVED_BYTES;
pub const META_BYTES: usize = META_CRC_AT + CRC_BYTES;

pub const SEGMENT_VERSION_AT: usize = MAGIC_BYTES;
pub const SEGMENT_RESERVED_AT: usize = SEGMENT_VERSION_AT + VERSION_BYTES;
pub const SEGMENT_VOLUME_AT: usize = SEGMENT_RESERVED_AT + SEGMENT_RESERVED_BYTES;
pub const SEGMENT_FIRST_AT: usize = SEGMENT_VOLUME_AT + VOLUME_ID_BYTES;
pub const SEGMENT_CRC_AT: usize = SEGMENT_FIRST_AT + SEQ_BYTES;
pub const SEGMENT_HEADER_BYTES: usize = SEGMENT_CRC_AT + CRC_BYTES;

pub const RECORD_SEQ_AT: usize = MAGIC_BYTES;
pub const RECORD_LEN_AT: usize = RECORD_SEQ_AT + SEQ_BYTES;
pub const RECORD_CRC_AT: usize = RECORD_LEN_AT + LEN_BYTES;
pub const RECORD_HEAD_BYTES: usize = RECORD_CRC_AT + CRC_BYTES;

/// A new segment is started once the active one reaches this size.
pub const SEGMENT_TARGET_BYTES: u64 = 8 * 1024 * 1024;
/// A segment still waiting for its background sync is closed anyway at this size.
pub const SEGMENT_MAX_BYTES: u64 = 128 * 1024 * 1024;

const _: () = assert!(META_BYTES == 64);
const _: () = assert!(SEGMENT_HEADER_BYTES == 36);
const _: () = assert!(RECORD_HEAD_BYTES == 20);
const _: () = assert!(MAX_ENTRY_BYTES <= u32::MAX as usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub volume_id: VolumeId,
    pub epoch: u64,
    pub checkpoint_through: Option<u64>,
}

fn le_u64(raw: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[at..at + 8]);
    u64::from_le_bytes(b)
}

fn le_u32(raw: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&raw[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le_u16(raw: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([raw[at], raw[at + 1]])
}

fn volume_at(raw: &[u8], at: usize) -> VolumeId {
    let mut v = [0u8; VOLUME_ID_BYTES];
    v.copy_from_slice(&raw[at..at + VOLUME_ID_BYTES]);
    v
}

impl Meta {
    pub fn encode(&self) -> [u8; META_BYTES] {
        let mut out = [0u8; META_BYTES];
        out[..META_VERSION_AT].copy_from_slice(&META_MAGIC);
        out[META_VERSION_AT..META_FLAGS_AT].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = self.checkpoint_through.is_some() as u16;
        out[META_FLAGS_AT..META_VOLUME_AT].copy_from_slice(&flags.to_le_bytes());
        out[META_VOLUME_AT..META_EPOCH_AT].copy_from_slice(&self.volume_id);
        out[META_EPOCH_AT..META_CHECKPOINT_AT].copy_from_slice(&self.epoch.to_le_bytes());
        let checkpoint = self.checkpoint_through.unwrap_or(0);
        out[META_CHECKPOINT_AT..META_RESERVED_AT].copy_from_slice(&checkpoint.to_le_bytes());
        let crc = crc32c::crc32c(&out[..META_CRC_AT]);
        out[META_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Returns what is wrong, for a `Corrupt` error naming the file.
    pub fn decode(raw: &[u8]) -> Result<Meta, (&'static str, usize)> {
        if raw.len() != META_BYTES {
            return Err(("volume.meta has the wrong size", raw.len().min(META_BYTES)));
        }
        if raw[..META_VERSION_AT] != META_MAGIC {
            return Err(("bad magic", 0));
        }
        if le_u16(raw, META_VERSION_AT) != FORMAT_VERSION {
            return Err(("unsupported version", META_VERSION_AT));
        }
        if le_u32(raw, META_CRC_AT) != crc32c::crc32c(&raw[..META_CRC_AT]) {
            return Err(("checksum mismatch", META_CRC_AT));
        }
        let flags = le_u16(raw, META_FLAGS_AT);
        if flags & !1 != 0 {
            return Err(("unknown flags", META_FLAGS_AT));
        }
        Ok(Meta {
            volume_id: volume_at(raw, META_VOLUME_AT),
            epoch: le_u64(raw, META_EPOCH_AT),
            checkpoint_through: (flags & 1 != 0).then(|| le_u64(raw, META_CHECKPOINT_AT)),
        })
    }
}

pub fn encode_segment_header(volume_id: &VolumeId, first_seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut out = [0u8; SEGMENT_HEADER_BYTES];
    out[..SEGMENT_VERSION_AT].copy_from_slice(&SEGMENT_MAGIC);
    out[SEGMENT_VERSION_AT..SEGMENT_RESERVED_AT].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[SEGMENT_VOLUME_AT..SEGMENT_FIRST_AT].copy_from_slice(volume_id);
    out[SEGMENT_FIRST_AT..SEGMENT_CRC_AT].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&out[..SEGMENT_CRC_AT]);
    out[SEGMENT_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a segment header; returns (volume id, first seq) or what is wrong and where.
pub fn decode_segment_header(raw: &[u8]) -> Result<(VolumeId, u64), (&'static str, usize)> {
    if raw.len() < SEGMENT_HEADER_BYTES {
        return Err(("segment header truncated", raw.len()));
    }
    if raw[..SEGMENT_VERSION_AT] != SEGMENT_MAGIC {
        return Err(("bad segment magic", 0));
    }
    if le_u16(raw, SEGMENT_VERSION_AT) != FORMAT_VERSION {
        return Err(("unsupported segment version", SEGMENT_VERSION_AT));
    }
    if le_u32(raw, SEGMENT_CRC_AT) != crc32c::crc32c(&raw[..SEGMENT_CRC_AT]) {
        return Err(("segment header checksum mismatch", SEGMENT_CRC_AT));
    }
    Ok((
        volume_at(raw, SEGMENT_VOLUME_AT),
        le_u64(raw, SEGMENT_FIRST_AT),
    ))
}

/// Appends one record to `out` (the tests' way to build segments).
#[cfg(test)]
pub fn encode_record(seq: u64, entry: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&record_head(seq, entry));
    out.extend_from_slice(entry);
}

/// The head of the record holding `entry` (the entry's bytes follow it), so that a batch
/// can be written with one vectored write instead of being copied together first.
pub fn record_head(seq: u64, entry: &[u8]) -> [u8; RECORD_HEAD_BYTES] {
    assert!(
        entry.len() <= MAX_ENTRY_BYTES,
        "entry over the limit reached the store"
    );
    let mut head = [0u8; RECORD_HEAD_BYTES];
    head[..RECORD_SEQ_AT].copy_from_slice(&RECORD_MAGIC);
    head[RECORD_SEQ_AT..RECORD_LEN_AT].copy_from_slice(&seq.to_le_bytes());
    head[RECORD_LEN_AT..RECORD_CRC_AT].copy_from_slice(&(entry.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head[RECORD_SEQ_AT..RECORD_CRC_AT]), entry);
    head[RECORD_CRC_AT..RECORD_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    head
}

/// A record head: (seq, entry length, stored crc), or what is wrong with it.
pub fn decode_record_head(
    raw: &[u8; RECORD_HEAD_BYTES],
) -> Result<(u64, usize, u32), &'static str> {
    if raw[..RECORD_SEQ_AT] != RECORD_MAGIC {
        return Err("bad record magic");
    }
    let len = le_u32(raw, RECORD_LEN_AT) as usize;
    if len > MAX_ENTRY_BYTES {
        return Err("record length over the entry limit");
    }
    Ok((le_u64(raw, RECORD_SEQ_AT), len, le_u32(raw, RECORD_CRC_AT)))
}

/// True when `entry` matches the crc stored in the record head.
pub fn record_crc_ok(head: &[u8; RECORD_HEAD_BYTES], entry: &[u8], stored: u32) -> bool {
    let crc = crc32c::crc32c(&head[RECORD_SEQ_AT..RECORD_CRC_AT]);
    crc32c::crc32c_append(crc, entry) == stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_detects_a_flipped_bit() {
        let meta = Meta {
            volume_id: [4; 16],
            epoch: 7,
            checkpoint_through: Some(99),
        };
        let mut raw = meta.encode();
        assert_eq!(Meta::decode(&raw), Ok(meta));
        raw[META_EPOCH_AT] ^= 1;
        assert!(Meta::decode(&raw).is_err());
    }

    #[test]
    fn record_checksum_covers_seq_and_entry() {
        let mut out = Vec::new();
        encode_record(5, b"hello", &mut out);
        let head: [u8; RECORD_HEAD_BYTES] = out[..RECORD_HEAD_BYTES].try_into().unwrap();
        let (seq, len, crc) = decode_record_head(&head).unwrap();
        assert_eq!((seq, len), (5, 5));
        assert!(record_crc_ok(&head, b"hello", crc));
        assert!(!record_crc_ok(&head, b"hellp", crc));
        let mut other = head;
        other[RECORD_SEQ_AT] ^= 1;
        assert!(!record_crc_ok(&other, b"hello", crc));
    }
}

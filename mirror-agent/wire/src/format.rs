//! The mirror wire format, written down once.
//!
//! Every frame is a fixed 36-byte header followed by a body of `body_len` bytes.
//! All integers are little-endian.
//!
//! ```text
//! offset  size  field        meaning
//! ------  ----  -----------  ------------------------------------------------------------
//!      0     4  magic        b"SMLW"
//!      4     2  version      wire version (see `Version`): 1 or 2
//!      6     1  kind         `FrameKind` (what the body holds)
//!      7     1  flags        reserved, must be 0
//!      8    16  volume_id    the volume the frame is about; fixed per connection
//!     24     4  body_len     bytes of body that follow the header, <= MAX_BODY_BYTES
//!     28     4  body_crc     crc32c of the body bytes
//!     32     4  header_crc   crc32c of header bytes 0..32
//!     36     -  body         `body_len` bytes, layout per kind (see `message/mod.rs`)
//! ```
//!
//! The header checksum is checked before `body_len` is trusted, so a garbage length
//! never makes a reader allocate or wait for a body that does not exist.
//! Offsets below are derived from the sizes; none is typed in.

use crate::error::WireError;

pub const MAGIC: [u8; 4] = *b"SMLW";

const MAGIC_BYTES: usize = 4;
const VERSION_BYTES: usize = 2;
const KIND_BYTES: usize = 1;
const FLAGS_BYTES: usize = 1;
pub const VOLUME_ID_BYTES: usize = 16;
const BODY_LEN_BYTES: usize = 4;
const BODY_CRC_BYTES: usize = 4;
const HEADER_CRC_BYTES: usize = 4;

pub const MAGIC_AT: usize = 0;
pub const VERSION_AT: usize = MAGIC_AT + MAGIC_BYTES;
pub const KIND_AT: usize = VERSION_AT + VERSION_BYTES;
pub const FLAGS_AT: usize = KIND_AT + KIND_BYTES;
pub const VOLUME_ID_AT: usize = FLAGS_AT + FLAGS_BYTES;
pub const BODY_LEN_AT: usize = VOLUME_ID_AT + VOLUME_ID_BYTES;
pub const BODY_CRC_AT: usize = BODY_LEN_AT + BODY_LEN_BYTES;
pub const HEADER_CRC_AT: usize = BODY_CRC_AT + BODY_CRC_BYTES;
pub const HEADER_BYTES: usize = HEADER_CRC_AT + HEADER_CRC_BYTES;

/// Largest body a frame may carry. A reader rejects a larger `body_len` before reading it.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Largest single entry the mirror stores (entries are opaque bytes to the mirror). The
/// daemon's largest entry is a 1 MiB write with its op header and entry frame: the 64 KiB
/// above 1 MiB leave room for those (the daemon asserts that it fits at compile time).
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024 + 64 * 1024;
/// Most entries one Append or Entries frame may carry.
pub const MAX_BATCH_ENTRIES: usize = 8192;
/// Longest node name, in bytes of UTF-8.
pub const MAX_NODE_BYTES: usize = 64;
/// Longest reason text in an Error frame.
pub const MAX_REASON_BYTES: usize = 1024;
/// Bytes of an HMAC-SHA256 proof and of each nonce.
pub const PROOF_BYTES: usize = 32;
pub const NONCE_BYTES: usize = 32;
/// Per-entry overhead inside an Append or Entries body: seq u64 + len u32.
pub const ENTRY_HEAD_BYTES: usize = 8 + 4;
/// Batch count field at the start of an Append or Entries body.
pub const BATCH_HEAD_BYTES: usize = 4;
pub const MAX_FRAME_BYTES: usize = HEADER_BYTES + MAX_BODY_BYTES;

const _: () = assert!(HEADER_BYTES == 36);
const _: () = assert!(BATCH_HEAD_BYTES + ENTRY_HEAD_BYTES + MAX_ENTRY_BYTES <= MAX_BODY_BYTES);
const _: () = assert!(MAX_BODY_BYTES <= u32::MAX as usize);

pub type VolumeId = [u8; VOLUME_ID_BYTES];

/// A wire version. New versions add capabilities; a reader accepts only the versions it knows.
///
/// A connection speaks the version of its `Hello` throughout: the agent answers a version-1
/// client in version 1 (no durable acks, no `Sync`), and a version-1 agent refuses a
/// version-2 `Hello` with a version-1 Error frame, which the client reports as an agent too
/// old for it (see `client::handshake`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1,
    /// Acks carry `durable_seq`; the client may ask for durability with `Sync`.
    V2,
}

impl Version {
    pub const CURRENT: Version = Version::V2;
    /// The version a peer uses before it knows the other's (an agent's Error frame sent
    /// before a Hello arrived): every build reads it.
    pub const OLDEST: Version = Version::V1;

    pub fn from_u16(raw: u16) -> Option<Version> {
        match raw {
            1 => Some(Version::V1),
            2 => Some(Version::V2),
            _ => None,
        }
    }

    pub fn as_u16(self) -> u16 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }

    /// Both versions authenticate with HMAC-SHA256 challenge–response in both directions.
    pub fn has_mutual_hmac(self) -> bool {
        matches!(self, Version::V1 | Version::V2)
    }

    /// Acks say what is on the agent's disk (`durable_seq`), and `Sync` asks for it.
    pub fn has_durable_acks(self) -> bool {
        self >= Version::V2
    }

    /// Whether frames of `kind` exist in this version.
    pub fn has_kind(self, kind: FrameKind) -> bool {
        match kind {
            FrameKind::Sync => self.has_durable_acks(),
            _ => true,
        }
    }
}

/// What a frame's body holds. The numbers are part of the format; never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    Challenge = 2,
    Proof = 3,
    Welcome = 4,
    Append = 5,
    Ack = 6,
    ReadBack = 7,
    Entries = 8,
    ReadEnd = 9,
    Checkpoint = 10,
    Heartbeat = 11,
    RaiseEpoch = 12,
    EpochRaised = 13,
    Error = 14,
    /// Version 2 on.
    Sync = 15,
}

impl FrameKind {
    pub fn from_u8(raw: u8) -> Option<FrameKind> {
        use FrameKind::*;
        Some(match raw {
            1 => Hello,
            2 => Challenge,
            3 => Proof,
            4 => Welcome,
            5 => Append,
            6 => Ack,
            7 => ReadBack,
            8 => Entries,
            9 => ReadEnd,
            10 => Checkpoint,
            11 => Heartbeat,
            12 => RaiseEpoch,
            13 => EpochRaised,
            14 => Error,
            15 => Sync,
            _ => return None,
        })
    }
}

/// A decoded and checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: Version,
    pub kind: FrameKind,
    pub volume_id: VolumeId,
    pub body_len: u32,
    pub body_crc: u32,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[MAGIC_AT..VERSION_AT].copy_from_slice(&MAGIC);
        out[VERSION_AT..KIND_AT].copy_from_slice(&self.version.as_u16().to_le_bytes());
        out[KIND_AT] = self.kind as u8;
        out[FLAGS_AT] = 0;
        out[VOLUME_ID_AT..BODY_LEN_AT].copy_from_slice(&self.volume_id);
        out[BODY_LEN_AT..BODY_CRC_AT].copy_from_slice(&self.body_len.to_le_bytes());
        out[BODY_CRC_AT..HEADER_CRC_AT].copy_from_slice(&self.body_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&out[..HEADER_CRC_AT]);
        out[HEADER_CRC_AT..HEADER_BYTES].copy_from_slice(&header_crc.to_le_bytes());
        out
    }

    /// Checks, in order: magic, version, header checksum, kind (known, and part of the
    /// frame's version), flags, length limit.
    /// The version is checked before the checksum so that a peer speaking another
    /// version gets a precise error rather than "bad checksum".
    pub fn decode(raw: &[u8; HEADER_BYTES]) -> Result<FrameHeader, WireError> {
        let magic: [u8; 4] = take(raw, MAGIC_AT);
        if magic != MAGIC {
            return Err(WireError::BadMagic { got: magic });
        }
        let version_raw = u16::from_le_bytes(take(raw, VERSION_AT));
        let version = Version::from_u16(version_raw)
            .ok_or(WireError::UnsupportedVersion { got: version_raw })?;
        let stored = u32::from_le_bytes(take(raw, HEADER_CRC_AT));
        let computed = crc32c::crc32c(&raw[..HEADER_CRC_AT]);
        if stored != computed {
            return Err(WireError::HeaderChecksum { stored, computed });
        }
        let kind =
            FrameKind::from_u8(raw[KIND_AT]).ok_or(WireError::UnknownKind { got: raw[KIND_AT] })?;
        if !version.has_kind(kind) {
            return Err(WireError::KindNotInVersion {
                kind: raw[KIND_AT],
                version: version_raw,
            });
        }
        if raw[FLAGS_AT] != 0 {
            return Err(WireError::BadFlags { got: raw[FLAGS_AT] });
        }
        let body_len = u32::from_le_bytes(take(raw, BODY_LEN_AT));
        if body_len as usize > MAX_BODY_BYTES {
            return Err(WireError::TooLarge {
                len: body_len as u64,
                max: MAX_BODY_BYTES as u64,
            });
        }
        Ok(FrameHeader {
            version,
            kind,
            volume_id: take(raw, VOLUME_ID_AT),
            body_len,
            body_crc: u32::from_le_bytes(take(raw, BODY_CRC_AT)),
        })
    }
}

/// Copies `N` bytes at `at`; callers pass offsets derived from the table above.
fn take<const N: usize>(raw: &[u8; HEADER_BYTES], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&raw[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> FrameHeader {
        FrameHeader {
            version: Version::V1,
            kind: FrameKind::Ack,
            volume_id: [7; 16],
            body_len: 8,
            body_crc: 0xdead_beef,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = header();
        assert_eq!(FrameHeader::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn header_rejects_each_bad_field() {
        let good = header().encode();
        let mut raw = good;
        raw[MAGIC_AT] ^= 1;
        assert!(matches!(
            FrameHeader::decode(&raw),
            Err(WireError::BadMagic { .. })
        ));
        let mut raw = good;
        raw[VERSION_AT] = 9;
        assert_eq!(
            FrameHeader::decode(&raw),
            Err(WireError::UnsupportedVersion { got: 9 })
        );
        let mut raw = good;
        raw[BODY_LEN_AT] ^= 1;
        assert!(matches!(
            FrameHeader::decode(&raw),
            Err(WireError::HeaderChecksum { .. })
        ));
    }

    #[test]
    fn a_kind_of_a_later_version_is_refused_in_an_earlier_one() {
        let mut h = header();
        h.kind = FrameKind::Sync;
        h.version = Version::V2;
        assert!(FrameHeader::decode(&h.encode()).is_ok());
        h.version = Version::V1;
        assert_eq!(
            FrameHeader::decode(&h.encode()),
            Err(WireError::KindNotInVersion {
                kind: 15,
                version: 1
            })
        );
    }

    #[test]
    fn every_version_round_trips_and_others_are_unknown() {
        for raw in 0..=u16::MAX {
            match Version::from_u16(raw) {
                Some(v) => assert_eq!(v.as_u16(), raw),
                None => assert!(raw == 0 || raw > 2, "version {raw}"),
            }
        }
        assert!(!Version::V1.has_durable_acks() && Version::CURRENT.has_durable_acks());
    }

    #[test]
    fn oversized_length_is_rejected_even_with_valid_checksum() {
        let mut h = header();
        h.body_len = MAX_BODY_BYTES as u32 + 1;
        assert!(matches!(
            FrameHeader::decode(&h.encode()),
            Err(WireError::TooLarge { .. })
        ));
    }
}

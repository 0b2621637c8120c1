//! Errors of the wire layer: what a decoder says about bytes it was given.

use thiserror::Error;

/// Why a frame or body could not be decoded. Every variant comes from outside data;
/// none is a programmer error, so decoders return these and never panic.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("bad magic {got:02x?} (not an smlog mirror frame)")]
    BadMagic { got: [u8; 4] },
    #[error("unsupported wire version {got} (this build speaks version 1)")]
    UnsupportedVersion { got: u16 },
    #[error("frame header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("unknown frame kind {got}")]
    UnknownKind { got: u8 },
    #[error("reserved header flags set: {got:#04x}")]
    BadFlags { got: u8 },
    #[error("frame too large: {len} bytes, limit {max}")]
    TooLarge { len: u64, max: u64 },
    #[error("frame body checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BodyChecksum { stored: u32, computed: u32 },
    #[error("malformed {kind} body: {what} at byte {at}")]
    Malformed {
        kind: &'static str,
        what: &'static str,
        at: usize,
    },
    #[error("{kind} body has {extra} trailing bytes")]
    TrailingBytes { kind: &'static str, extra: usize },
}

/// The reason code carried by an Error frame. The numbers are part of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// A frame that is not allowed at this point of the conversation.
    Protocol = 1,
    /// The peer's HMAC proof did not verify.
    AuthFailed = 2,
    /// The agent needs a shared secret and the client gave none, or the reverse.
    AuthRequired = 3,
    /// The sender's epoch is older than the volume's ownership epoch (`a` = current epoch).
    Fenced = 4,
    /// An append skipped seqs (`a` = expected seq, `b` = seq received).
    Gap = 5,
    /// A frame named a volume other than the connection's.
    WrongVolume = 6,
    /// The agent is at its connection limit.
    Busy = 7,
    /// The agent could not store or read entries (I/O error).
    Storage = 8,
    /// Stored entries failed their checks.
    Corrupt = 9,
    /// A frame could not be decoded.
    BadFrame = 10,
    /// Anything else; the reason text says what.
    Other = 11,
}

impl ErrorCode {
    pub fn from_u16(raw: u16) -> ErrorCode {
        use ErrorCode::*;
        match raw {
            1 => Protocol,
            2 => AuthFailed,
            3 => AuthRequired,
            4 => Fenced,
            5 => Gap,
            6 => WrongVolume,
            7 => Busy,
            8 => Storage,
            9 => Corrupt,
            10 => BadFrame,
            _ => Other,
        }
    }
}

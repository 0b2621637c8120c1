//! Errors of the wire layer: what a decoder says about bytes it was given.

use thiserror::Error;

/// Why a frame or body could not be decoded. Every variant comes from outside data;
/// none is a programmer error, so decoders return these and never panic.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("bad magic {got:02x?} (not an smlog mirror frame)")]
    BadMagic { got: [u8; 4] },
    #[error("unsupported wire version {got} (this build speaks versions 1 and 2)")]
    UnsupportedVersion { got: u16 },
    #[error("frame header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("unknown frame kind {got}")]
    UnknownKind { got: u8 },
    #[error("frame kind {kind} does not exist in wire version {version}")]
    KindNotInVersion { kind: u8, version: u16 },
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
///
/// A code this build does not name is kept as `Unknown(raw)` rather than refused, so a
/// later build can add codes to version 1 and an older peer still gets the frame's reason
/// text (it treats the code like `Other`). Keeping the raw number also keeps decoding
/// exact: an accepted Error frame re-encodes to the bytes it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A frame that is not allowed at this point of the conversation.
    Protocol,
    /// The peer's HMAC proof did not verify.
    AuthFailed,
    /// The agent needs a shared secret and the client gave none, or the reverse.
    AuthRequired,
    /// The sender's epoch is older than the volume's ownership epoch (`a` = current epoch).
    Fenced,
    /// An append skipped seqs (`a` = expected seq, `b` = seq received).
    Gap,
    /// A frame named a volume other than the connection's.
    WrongVolume,
    /// The agent is at its connection limit.
    Busy,
    /// The agent could not store or read entries (I/O error).
    Storage,
    /// Stored entries failed their checks.
    Corrupt,
    /// A frame could not be decoded.
    BadFrame,
    /// Anything else; the reason text says what.
    Other,
    /// A code no variant above names (a newer peer's). Invariant: never one of their
    /// numbers; `Message::encode_body` asserts it.
    Unknown(u16),
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
            11 => Other,
            _ => Unknown(raw),
        }
    }

    pub fn as_u16(self) -> u16 {
        use ErrorCode::*;
        match self {
            Protocol => 1,
            AuthFailed => 2,
            AuthRequired => 3,
            Fenced => 4,
            Gap => 5,
            WrongVolume => 6,
            Busy => 7,
            Storage => 8,
            Corrupt => 9,
            BadFrame => 10,
            Other => 11,
            Unknown(raw) => raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_number_round_trips() {
        for raw in 0..=u16::MAX {
            let code = ErrorCode::from_u16(raw);
            assert_eq!(code.as_u16(), raw);
            let named = (1..=11).contains(&raw);
            assert_eq!(matches!(code, ErrorCode::Unknown(_)), !named, "code {raw}");
        }
    }
}

//! Whole frames: a header (`format::FrameHeader`) sealed over an encoded body, and the
//! decoder that checks header and body checksum before it decodes the body.

use super::Message;
use crate::error::WireError;
use crate::format::*;

/// A whole frame: its version, the volume it names and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub version: Version,
    pub volume_id: VolumeId,
    pub message: Message,
}

/// Appends one complete frame (header and body) of the current version to `out`.
pub fn encode_frame(volume_id: &VolumeId, message: &Message, out: &mut Vec<u8>) {
    encode_frame_as(Version::CURRENT, volume_id, message, out)
}

/// Appends one complete frame of `version` to `out` (the agent answers each client in the
/// version of its Hello).
pub fn encode_frame_as(
    version: Version,
    volume_id: &VolumeId,
    message: &Message,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    message.encode_body_as(version, out);
    seal_frame_as(version, volume_id, message.kind(), out, start);
}

/// Fills in the header of a current-version frame whose body was written at
/// `out[start + HEADER_BYTES..]`.
pub fn seal_frame(volume_id: &VolumeId, kind: FrameKind, out: &mut [u8], start: usize) {
    seal_frame_as(Version::CURRENT, volume_id, kind, out, start)
}

/// `seal_frame` for a frame of `version`.
pub fn seal_frame_as(
    version: Version,
    volume_id: &VolumeId,
    kind: FrameKind,
    out: &mut [u8],
    start: usize,
) {
    let body = &out[start + HEADER_BYTES..];
    assert!(body.len() <= MAX_BODY_BYTES, "frame body over the limit");
    assert!(version.has_kind(kind), "{kind:?} not in this wire version");
    let header = FrameHeader {
        version,
        kind,
        volume_id: *volume_id,
        body_len: body.len() as u32,
        body_crc: crc32c::crc32c(body),
    };
    out[start..start + HEADER_BYTES].copy_from_slice(&header.encode());
}

/// Decodes one frame from the front of `bytes`.
/// `Ok(None)` means more bytes are needed (the header, if complete, has been checked);
/// `Ok(Some((frame, used)))` gives the frame and how many bytes it took.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(header) = peek_header(bytes)? else {
        return Ok(None);
    };
    let total = HEADER_BYTES + header.body_len as usize;
    if bytes.len() < total {
        return Ok(None);
    }
    let body = &bytes[HEADER_BYTES..total];
    let computed = crc32c::crc32c(body);
    if computed != header.body_crc {
        return Err(WireError::BodyChecksum {
            stored: header.body_crc,
            computed,
        });
    }
    let message = Message::decode_body_as(header.version, header.kind, body)?;
    Ok(Some((
        Frame {
            version: header.version,
            volume_id: header.volume_id,
            message,
        },
        total,
    )))
}

/// Checks the header at the front of `bytes`, if all of it is there.
/// Also rejects a partial header whose magic is already wrong, so garbage is refused at
/// its first bytes instead of after a wait.
pub fn peek_header(bytes: &[u8]) -> Result<Option<FrameHeader>, WireError> {
    let seen = bytes.len().min(MAGIC.len());
    if bytes[..seen] != MAGIC[..seen] {
        let mut got = [0u8; 4];
        got[..seen].copy_from_slice(&bytes[..seen]);
        return Err(WireError::BadMagic { got });
    }
    if bytes.len() < HEADER_BYTES {
        return Ok(None);
    }
    let mut raw = [0u8; HEADER_BYTES];
    raw.copy_from_slice(&bytes[..HEADER_BYTES]);
    FrameHeader::decode(&raw).map(Some)
}

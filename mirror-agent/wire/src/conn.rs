//! Buffered frame reading over any byte stream, shared by the client and the agent.
//!
//! The reader never trusts a length before the header checksum has passed, and it never
//! holds more than one maximal frame plus one read chunk, so a hostile peer cannot make
//! it grow without bound.

use crate::error::WireError;
use crate::format::{FrameHeader, Version, VolumeId, HEADER_BYTES, MAX_FRAME_BYTES};
use crate::message::{decode_frame, encode_frame_as, peek_header, Frame, Message};
use std::io::{self, Read, Write};

const READ_CHUNK_BYTES: usize = 64 * 1024;

#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The next complete frame already in the buffer, if any.
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, WireError> {
        if self.start == self.end {
            return Ok(None);
        }
        match decode_frame(self.pending())? {
            Some((frame, used)) => {
                self.start += used;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }

    /// True when some bytes of a frame have arrived but not all of it.
    pub fn mid_frame(&self) -> bool {
        self.start != self.end
    }

    /// True when a whole frame is waiting in the buffer (it may still fail to decode).
    pub fn has_complete_frame(&self) -> bool {
        match peek_header(self.pending()) {
            Ok(Some(h)) => self.end - self.start >= frame_bytes(&h),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Performs one `read` from `source` into the buffer. `Ok(0)` means end of stream.
    /// Call it only when `next_buffered` returned `Ok(None)`.
    pub fn fill(&mut self, source: &mut impl Read) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Read at most up to the end of the frame in progress plus one chunk; the
        // header was checked by next_buffered, so its length is within the limit.
        let wanted = match peek_header(self.pending()) {
            Ok(Some(h)) => frame_bytes(&h).max(self.end) + READ_CHUNK_BYTES,
            _ => HEADER_BYTES.max(self.end) + READ_CHUNK_BYTES,
        };
        debug_assert!(wanted <= MAX_FRAME_BYTES + 2 * READ_CHUNK_BYTES);
        if self.buf.len() < wanted {
            self.buf.resize(wanted, 0);
        }
        let n = source.read(&mut self.buf[self.end..wanted])?;
        self.end += n;
        Ok(n)
    }
}

fn frame_bytes(header: &FrameHeader) -> usize {
    HEADER_BYTES + header.body_len as usize
}

/// Encodes and writes one frame of the current version.
pub fn write_frame(
    sink: &mut impl Write,
    volume_id: &VolumeId,
    message: &Message,
) -> io::Result<()> {
    write_frame_as(sink, Version::CURRENT, volume_id, message)
}

/// Encodes and writes one frame of `version`.
pub fn write_frame_as(
    sink: &mut impl Write,
    version: Version,
    volume_id: &VolumeId,
    message: &Message,
) -> io::Result<()> {
    let mut out = Vec::new();
    encode_frame_as(version, volume_id, message, &mut out);
    sink.write_all(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that hands out its bytes a few at a time.
    struct Trickle(Vec<u8>, usize);

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(3).min(self.0.len() - self.1);
            out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn frames_arriving_in_pieces_are_reassembled() {
        let mut bytes = Vec::new();
        let msgs: Vec<Message> = (0..20u64)
            .map(|s| Message::Ack {
                through_seq: s,
                durable_seq: s.checked_sub(2),
            })
            .collect();
        for m in &msgs {
            write_frame(&mut bytes, &[1; 16], m).unwrap();
        }
        let mut source = Trickle(bytes, 0);
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        loop {
            while let Some(f) = reader.next_buffered().unwrap() {
                got.push(f.message);
            }
            if reader.fill(&mut source).unwrap() == 0 {
                break;
            }
        }
        assert_eq!(got, msgs);
        assert!(!reader.mid_frame());
    }
}

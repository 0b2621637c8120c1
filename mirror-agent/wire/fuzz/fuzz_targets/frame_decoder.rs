//! The frame decoder on arbitrary bytes: it never panics, never asks for more than one
//! maximal frame, and whatever it accepts re-encodes to exactly the bytes it consumed (the
//! decoder accepts one encoding per message: unknown Error codes keep their number, and a
//! Welcome value flagged absent must be zero).
//!
//! Each input is tried three ways:
//! 1. as raw bytes at the front of a connection (`decode_frame`);
//! 2. as the kind byte, flags byte and body of a frame whose header and checksums are made
//!    right here — random bytes almost never pass two crc32c checks, and this is what lets
//!    the fuzzer reach every body decoder (of either version: the flags byte's top bit picks
//!    version 1, whose Ack has another layout and which has no Sync);
//! 3. as a byte stream fed to `FrameReader` in reads of a size the input picks, the way the
//!    agent and the client read a socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smlog_wire::conn::FrameReader;
use smlog_wire::format::{
    BODY_CRC_AT, BODY_LEN_AT, FLAGS_AT, HEADER_BYTES, HEADER_CRC_AT, KIND_AT, MAGIC, MAGIC_AT,
    MAX_BODY_BYTES, MAX_FRAME_BYTES, VERSION_AT, VOLUME_ID_AT,
};
use smlog_wire::message::{decode_frame, encode_frame_as, Frame};
use smlog_wire::Version;

fuzz_target!(|data: &[u8]| {
    check_decode(data);
    if data.len() >= 2 {
        check_decode(&sealed_frame(data[0], data[1], &data[2..]));
    }
    check_stream(data);
});

/// Decodes `bytes` once and checks what came out.
fn check_decode(bytes: &[u8]) {
    match decode_frame(bytes) {
        Ok(Some((frame, used))) => {
            assert!(
                (HEADER_BYTES..=bytes.len()).contains(&used),
                "used {used} of {} bytes",
                bytes.len()
            );
            assert_eq!(reencode(&frame), &bytes[..used], "re-encoding differs");
        }
        // "Need more" is only allowed while less than one maximal frame is there: a hostile
        // length must be refused, not waited for.
        Ok(None) => assert!(bytes.len() < MAX_FRAME_BYTES),
        Err(_) => {}
    }
}

fn reencode(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_as(frame.version, &frame.volume_id, &frame.message, &mut out);
    out
}

/// A frame of any kind byte and flags byte around `body`, with a valid version and both
/// checksums right. `flags` is kept 0 most of the time (anything else is refused at once);
/// its top bit picks version 1 instead of the current one.
fn sealed_frame(kind: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let body = &body[..body.len().min(MAX_BODY_BYTES)];
    let version = if flags & 0x80 != 0 {
        Version::V1
    } else {
        Version::CURRENT
    };
    let mut out = vec![0u8; HEADER_BYTES];
    out[MAGIC_AT..VERSION_AT].copy_from_slice(&MAGIC);
    out[VERSION_AT..KIND_AT].copy_from_slice(&version.as_u16().to_le_bytes());
    out[KIND_AT] = kind;
    out[FLAGS_AT] = if flags >= 0xf0 { flags & 0x0f } else { 0 };
    out[VOLUME_ID_AT..BODY_LEN_AT].copy_from_slice(&[0x5a; 16]);
    out[BODY_LEN_AT..BODY_CRC_AT].copy_from_slice(&(body.len() as u32).to_le_bytes());
    out[BODY_CRC_AT..HEADER_CRC_AT].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let header_crc = crc32c::crc32c(&out[..HEADER_CRC_AT]);
    out[HEADER_CRC_AT..HEADER_BYTES].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// A reader that hands out at most `chunk` bytes per `read`.
struct Trickle<'a> {
    rest: &'a [u8],
    chunk: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.rest.len().min(self.chunk).min(buf.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

/// Feeds `data` (after its first byte, which picks the read size) to a `FrameReader`: the
/// frames it yields, re-encoded one after the other, must be exactly the front of the stream.
fn check_stream(data: &[u8]) {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let mut source = Trickle {
        rest: stream,
        chunk: usize::from(pick % 64) + 1,
    };
    let mut reader = FrameReader::new();
    let mut accepted = Vec::new();
    let mut reads = 0;
    loop {
        match reader.next_buffered() {
            Ok(Some(frame)) => {
                accepted.extend_from_slice(&reencode(&frame));
                continue;
            }
            Ok(None) => {}
            Err(_) => break,
        }
        match reader.fill(&mut source) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // Every read that returned bytes took at least one of the stream's.
        reads += 1;
        assert!(reads <= stream.len(), "the reader does not make progress");
    }
    assert!(
        stream.starts_with(&accepted),
        "the frames read from the stream do not re-encode to its first {} bytes",
        accepted.len()
    );
}

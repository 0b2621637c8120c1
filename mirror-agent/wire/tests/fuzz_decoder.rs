//! Fuzz-style property tests: the frame decoder never panics on hostile bytes, and
//! whatever it accepts re-encodes to exactly the bytes it consumed.

use proptest::prelude::*;
use smlog_wire::conn::FrameReader;
use smlog_wire::format::{HEADER_BYTES, MAX_BODY_BYTES};
use smlog_wire::message::{decode_frame, encode_frame, Message};

fn valid_frames() -> Vec<Vec<u8>> {
    let messages = [
        Message::Append {
            entries: vec![(41, b"entry-41".to_vec()), (42, vec![7; 100])],
        },
        Message::Ack { through_seq: 42 },
        Message::Hello {
            epoch: 1,
            mode: smlog_wire::Mode::Writer,
            heartbeat_ms: 1000,
            client_nonce: [5; 32],
            node: "node-a".into(),
        },
        Message::Error {
            code: smlog_wire::ErrorCode::Gap,
            a: 1,
            b: 2,
            reason: "gap".into(),
        },
    ];
    messages
        .iter()
        .map(|m| {
            let mut out = Vec::new();
            encode_frame(&[3; 16], m, &mut out);
            out
        })
        .collect()
}

/// Decodes `bytes` and, if a frame came out, checks it re-encodes to the bytes consumed.
fn check(bytes: &[u8]) {
    if let Ok(Some((frame, used))) = decode_frame(bytes) {
        assert!(used <= bytes.len() && used >= HEADER_BYTES);
        let mut again = Vec::new();
        encode_frame(&frame.volume_id, &frame.message, &mut again);
        assert_eq!(&again[..], &bytes[..used]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
        // With a valid magic in front the decoder goes past the first check.
        let mut with_magic = b"SMLW".to_vec();
        with_magic.extend_from_slice(&bytes);
        check(&with_magic);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let mut frame = valid_frames()[which].clone();
        for (at, xor) in flips {
            let i = at % frame.len();
            frame[i] ^= xor;
        }
        let len = frame.len();
        check(&frame[..cut % (len + 1)]);
        check(&frame);
    }

    #[test]
    fn body_bytes_after_a_valid_header_never_panic(
        kind in 0u8..20,
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        // A header with correct checksums around an arbitrary body reaches the body decoders.
        let mut frame = vec![0u8; HEADER_BYTES];
        frame.extend_from_slice(&body);
        let header = smlog_wire::format::FrameHeader {
            version: smlog_wire::Version::V1,
            kind: smlog_wire::FrameKind::from_u8(kind).unwrap_or(smlog_wire::FrameKind::Append),
            volume_id: [1; 16],
            body_len: body.len() as u32,
            body_crc: crc32c_of(&body),
        };
        frame[..HEADER_BYTES].copy_from_slice(&header.encode());
        let reached_body = !matches!(
            decode_frame(&frame),
            Err(smlog_wire::WireError::BodyChecksum { .. } | smlog_wire::WireError::HeaderChecksum { .. })
        );
        prop_assert!(reached_body);
        check(&frame);
    }

    #[test]
    fn frame_reader_survives_any_stream(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut source = &bytes[..];
        let mut reader = FrameReader::new();
        let mut rounds = 0;
        loop {
            match reader.next_buffered() {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => break,
            }
            match reader.fill(&mut source) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            rounds += 1;
            prop_assert!(rounds < 10_000);
        }
    }
}

fn crc32c_of(bytes: &[u8]) -> u32 {
    // Same checksum as the format; recomputed here so the test does not trust the encoder.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn oversized_length_is_refused_before_the_body_arrives() {
    let mut frame = valid_frames()[1].clone();
    let mut header =
        smlog_wire::format::FrameHeader::decode(frame[..HEADER_BYTES].try_into().unwrap()).unwrap();
    header.body_len = (MAX_BODY_BYTES + 1) as u32;
    frame[..HEADER_BYTES].copy_from_slice(&header.encode());
    // Only the header is present: the decoder must refuse rather than ask for more.
    assert!(decode_frame(&frame[..HEADER_BYTES]).is_err());
}

//! Round trips of every message, and the decoder's refusals of non-canonical bodies.

use super::*;
use crate::error::{ErrorCode, WireError};
use crate::format::*;

fn all_messages() -> Vec<Message> {
    vec![
        Message::Hello {
            epoch: 3,
            mode: Mode::Writer,
            heartbeat_ms: 1000,
            client_nonce: [1; 32],
            node: "node-a".into(),
        },
        Message::Challenge {
            agent_nonce: [2; 32],
            agent_proof: [3; 32],
        },
        Message::Proof {
            client_proof: [4; 32],
        },
        Message::Welcome {
            epoch: 9,
            next_seq: Some(17),
            checkpoint_through: None,
        },
        Message::Append {
            entries: vec![(5, b"abc".to_vec()), (6, vec![]), (7, vec![0; 300])],
        },
        Message::Entries { entries: vec![] },
        Message::Ack {
            through_seq: 7,
            durable_seq: Some(5),
        },
        Message::Ack {
            through_seq: 0,
            durable_seq: None,
        },
        Message::Sync { through_seq: 7 },
        Message::ReadBack { after_seq: 4 },
        Message::ReadEnd {
            entries_sent: 3,
            through_seq: 7,
        },
        Message::Checkpoint { through_seq: 6 },
        Message::Heartbeat {
            stamp_us: 123,
            reply: true,
        },
        Message::RaiseEpoch { epoch: 10 },
        Message::EpochRaised { epoch: 10 },
        Message::Error {
            code: ErrorCode::Fenced,
            a: 10,
            b: 0,
            reason: "fenced".into(),
        },
        Message::Welcome {
            epoch: 2,
            next_seq: None,
            checkpoint_through: Some(40),
        },
        Message::Error {
            code: ErrorCode::Unknown(0x1234),
            a: 0,
            b: 0,
            reason: "a newer peer's code".into(),
        },
    ]
}

#[test]
fn every_message_round_trips_through_a_frame() {
    for message in all_messages() {
        let mut out = Vec::new();
        encode_frame(&[9; 16], &message, &mut out);
        let (frame, used) = decode_frame(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(frame.volume_id, [9; 16]);
        assert_eq!(frame.version, Version::CURRENT);
        assert_eq!(frame.message, message);
        // Every strict prefix is "need more", never an error or a wrong frame.
        for cut in 0..out.len() {
            assert_eq!(decode_frame(&out[..cut]), Ok(None), "cut at {cut}");
        }
    }
}

#[test]
fn body_corruption_is_caught_by_the_checksum() {
    let mut out = Vec::new();
    encode_frame(
        &[0; 16],
        &Message::Ack {
            through_seq: 1,
            durable_seq: None,
        },
        &mut out,
    );
    let last = out.len() - 1;
    out[last] ^= 0x80;
    assert!(matches!(
        decode_frame(&out),
        Err(WireError::BodyChecksum { .. })
    ));
}

#[test]
fn batch_with_impossible_count_is_refused() {
    let mut body = Vec::new();
    body.extend_from_slice(&(MAX_BATCH_ENTRIES as u32).to_le_bytes());
    let err = Message::decode_body(FrameKind::Append, &body).unwrap_err();
    assert!(matches!(err, WireError::Malformed { .. }), "{err}");
}

#[test]
fn non_consecutive_batch_is_refused() {
    let mut body = Vec::new();
    encode_batch([(1u64, &b"a"[..]), (3, &b"b"[..])].into_iter(), &mut body);
    assert!(Message::decode_body(FrameKind::Append, &body).is_err());
}

#[test]
fn welcome_value_flagged_absent_must_be_zero() {
    for (flags, at, what) in [
        (0b10u8, 16, "next_seq not zero while flagged absent"),
        (0b01, 24, "checkpoint_through not zero while flagged absent"),
    ] {
        let mut body = vec![0u8; 32];
        body[8] = flags;
        assert!(Message::decode_body(FrameKind::Welcome, &body).is_ok());
        body[at] = 1;
        let err = Message::decode_body(FrameKind::Welcome, &body).unwrap_err();
        assert!(
            matches!(err, WireError::Malformed { what: w, .. } if w == what),
            "{err}"
        );
    }
}

#[test]
fn every_version_1_message_round_trips_as_version_1() {
    for message in all_messages() {
        if message.kind() == FrameKind::Sync
            || matches!(
                message,
                Message::Ack {
                    durable_seq: Some(_),
                    ..
                }
            )
        {
            continue;
        }
        let mut out = Vec::new();
        encode_frame_as(Version::V1, &[9; 16], &message, &mut out);
        let (frame, used) = decode_frame(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(frame.version, Version::V1);
        assert_eq!(frame.message, message);
    }
    // A version 1 Ack is just its received seq.
    let mut body = Vec::new();
    Message::Ack {
        through_seq: 3,
        durable_seq: None,
    }
    .encode_body_as(Version::V1, &mut body);
    assert_eq!(body, 3u64.to_le_bytes());
}

#[test]
fn ack_durable_seq_is_canonical_and_never_beyond_through_seq() {
    let body = |flags: u8, durable: u64| {
        let mut b = 10u64.to_le_bytes().to_vec();
        b.push(flags);
        b.extend_from_slice(&[0; 7]);
        b.extend_from_slice(&durable.to_le_bytes());
        b
    };
    let decode = |b: &[u8]| Message::decode_body_as(Version::V2, FrameKind::Ack, b);
    assert_eq!(
        decode(&body(1, 10)),
        Ok(Message::Ack {
            through_seq: 10,
            durable_seq: Some(10)
        })
    );
    assert_eq!(
        decode(&body(0, 0)),
        Ok(Message::Ack {
            through_seq: 10,
            durable_seq: None
        })
    );
    for (flags, durable, what) in [
        (1u8, 11u64, "durable_seq beyond through_seq"),
        (0, 4, "durable_seq not zero while flagged absent"),
        (2, 0, "unknown Ack flags"),
    ] {
        let err = decode(&body(flags, durable)).unwrap_err();
        assert!(
            matches!(err, WireError::Malformed { what: w, .. } if w == what),
            "{err}"
        );
    }
    assert!(matches!(
        Message::decode_body_as(Version::V1, FrameKind::Sync, &[0; 8]),
        Err(WireError::KindNotInVersion { .. })
    ));
}

#[test]
#[should_panic(expected = "a version 1 Ack has no durable_seq")]
fn a_durable_seq_in_a_version_1_ack_is_a_programmer_error() {
    Message::Ack {
        through_seq: 2,
        durable_seq: Some(1),
    }
    .encode_body_as(Version::V1, &mut Vec::new());
}

#[test]
fn unknown_error_code_keeps_its_number() {
    let mut body = Vec::new();
    Message::Error {
        code: ErrorCode::Other,
        a: 1,
        b: 2,
        reason: "x".into(),
    }
    .encode_body(&mut body);
    body[..2].copy_from_slice(&500u16.to_le_bytes());
    let message = Message::decode_body(FrameKind::Error, &body).unwrap();
    assert!(matches!(
        message,
        Message::Error {
            code: ErrorCode::Unknown(500),
            ..
        }
    ));
    let mut again = Vec::new();
    message.encode_body(&mut again);
    assert_eq!(again, body);
}

#[test]
#[should_panic(expected = "ErrorCode::Unknown holds a code that has a name")]
fn unknown_error_code_with_a_named_number_is_a_programmer_error() {
    Message::Error {
        code: ErrorCode::Unknown(4),
        a: 0,
        b: 0,
        reason: String::new(),
    }
    .encode_body(&mut Vec::new());
}

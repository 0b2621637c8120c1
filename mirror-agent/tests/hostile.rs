//! Hostile input on the mirror port. Each case: a well-behaved client has stored entries
//! 1..=100; a hostile connection does one bad thing; the agent must drop that connection
//! with a logged reason, keep serving the good client on its existing connection, and keep
//! the stored entries exactly as they were.

mod common;

use common::*;
use smlog_wire::format::{FrameHeader, HEADER_BYTES, HEADER_CRC_AT, MAX_BODY_BYTES, VERSION_AT};
use smlog_wire::{encode_frame, ErrorCode, Message, MirrorClient, MirrorConfig, Version};
use std::io::Write;
use std::time::{Duration, Instant};

const STALL_MS: u64 = 400;

struct Bed {
    _tmp: tempfile::TempDir,
    agent: AgentProc,
    cfg: MirrorConfig,
    client: MirrorClient,
}

const GOOD: u8 = 1;

fn bed(extra: &[&str], secret: Option<&[u8]>) -> Bed {
    let tmp = tempfile::tempdir().unwrap();
    let stall = STALL_MS.to_string();
    let mut args = vec!["--stall-timeout-ms", stall.as_str()];
    args.extend_from_slice(extra);
    let secret_path = tmp.path().join("secret");
    if let Some(s) = secret {
        std::fs::write(&secret_path, s).unwrap();
        args.push("--secret-file");
        args.push(secret_path.to_str().unwrap());
    }
    let agent = AgentProc::start(&tmp.path().join("agent"), &args);
    let mut cfg = config(vec![agent.addr], volume(GOOD), 1);
    cfg.secret = secret.map(|s| s.to_vec());
    let client = MirrorClient::connect(cfg.clone()).unwrap();
    for (seq, bytes) in entries("good", 1..=100) {
        client.submit(seq, bytes).unwrap();
    }
    client.wait_acked(100, WAIT).unwrap();
    Bed {
        _tmp: tmp,
        agent,
        cfg,
        client,
    }
}

impl Bed {
    /// The agent logged `reason`, still runs, still serves the good client on the same
    /// connection, and holds exactly the good entries.
    fn assert_survived(mut self, reason: &str) {
        assert!(
            self.agent.wait_log(reason, WAIT),
            "log lacks {reason:?}:\n{}",
            self.agent.log_text()
        );
        assert!(self.agent.is_running());
        for (seq, bytes) in entries("good", 101..=200) {
            self.client.submit(seq, bytes).unwrap();
        }
        self.client.wait_acked(200, WAIT).unwrap();
        assert_eq!(
            self.client.status().reconnects,
            0,
            "the good connection was disturbed"
        );
        assert_eq!(
            MirrorClient::read_back(&self.cfg, 0).unwrap(),
            entries("good", 1..=200)
        );
    }
}

/// A deterministic byte soup (xorshift), never starting with the frame magic.
fn garbage(len: usize, mut state: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push(state as u8);
    }
    out[0] = 0;
    out
}

fn evil_append(vol: &smlog_wire::VolumeId) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(
        vol,
        &Message::Append {
            entries: vec![(101, b"EVIL".to_vec())],
        },
        &mut out,
    );
    out
}

fn got_error(seen: &[Message], code: ErrorCode) -> bool {
    seen.iter()
        .any(|m| matches!(m, Message::Error { code: c, .. } if *c == code))
}

/// How a hostile connection opens before it does its bad thing.
#[derive(Clone, Copy)]
enum Opening {
    /// Not even a hello.
    Nothing,
    /// Hello as the writer of volume `.0`, welcomed.
    Writer(u8),
    /// Hello as a reader of volume `.0`, welcomed.
    Reader(u8),
    /// Hello as the writer of the good volume to an agent with a secret: challenged.
    Challenged,
}

impl Bed {
    /// A raw connection to the agent, opened as `opening` says (the answer checked).
    fn raw(&self, opening: Opening) -> RawConn {
        let mut raw = RawConn::connect(self.agent.addr);
        let answer = match opening {
            Opening::Nothing => return raw,
            Opening::Writer(vol) => raw.hello(&volume(vol), 1, true),
            Opening::Reader(vol) => raw.hello(&volume(vol), 0, false),
            Opening::Challenged => raw.hello(&volume(GOOD), 1, true),
        };
        let expected = match opening {
            Opening::Challenged => matches!(answer, Some(Message::Challenge { .. })),
            _ => matches!(answer, Some(Message::Welcome { .. })),
        };
        assert!(expected, "unexpected answer to hello: {answer:?}");
        raw
    }

    /// A connection opened as `opening` sends `bytes`: the agent answers error `code`,
    /// drops it, logs `reason` and serves on (`assert_survived`).
    fn assert_refuses(self, opening: Opening, bytes: &[u8], code: ErrorCode, reason: &str) {
        let mut raw = self.raw(opening);
        assert_dropped_with(&mut raw, bytes, code);
        self.assert_survived(reason);
    }
}

/// `raw` sends `bytes`; the agent answers error `code` and closes the connection.
fn assert_dropped_with(raw: &mut RawConn, bytes: &[u8], code: ErrorCode) {
    raw.send_bytes(bytes);
    let seen = raw.wait_closed(WAIT).expect("connection dropped");
    assert!(got_error(&seen, code), "{seen:?}");
}

#[test]
fn random_bytes() {
    bed(&[], None).assert_refuses(
        Opening::Nothing,
        &garbage(4096, 0x9e37_79b9_7f4a_7c15),
        ErrorCode::BadFrame,
        "bad magic",
    );
}

#[test]
fn random_bytes_behind_a_valid_magic() {
    let bed = bed(&[], None);
    for seed in 1..20u64 {
        let mut raw = RawConn::connect(bed.agent.addr);
        let mut bytes = b"SMLW".to_vec();
        bytes.extend(garbage(200, seed));
        raw.send_bytes(&bytes);
        assert!(raw.wait_closed(WAIT).is_some(), "seed {seed}: not dropped");
    }
    bed.assert_survived("bad frame");
}

#[test]
fn oversized_length() {
    let bed = bed(&[], None);
    let header = FrameHeader {
        version: Version::V1,
        kind: smlog_wire::FrameKind::Append,
        volume_id: volume(GOOD),
        body_len: MAX_BODY_BYTES as u32 + 1,
        body_crc: 0,
    };
    // Only the header is sent: the agent must refuse it without waiting for the body (had
    // it waited, it would have logged a stall instead).
    bed.assert_refuses(
        Opening::Nothing,
        &header.encode(),
        ErrorCode::BadFrame,
        "frame too large",
    );
}

#[test]
fn wrong_version() {
    let bed = bed(&[], None);
    let mut raw = RawConn::connect(bed.agent.addr);
    let mut frame = Vec::new();
    encode_frame(
        &volume(GOOD),
        &Message::ReadBack { after_seq: 0 },
        &mut frame,
    );
    frame[VERSION_AT..VERSION_AT + 2].copy_from_slice(&3u16.to_le_bytes());
    let crc = crc32c::crc32c(&frame[..HEADER_CRC_AT]);
    frame[HEADER_CRC_AT..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    raw.send_bytes(&frame);
    let seen = raw.wait_closed(WAIT).expect("connection dropped");
    let reason = seen.iter().find_map(|m| match m {
        Message::Error { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        reason
            .as_deref()
            .unwrap_or("")
            .contains("unsupported wire version 3"),
        "{seen:?}"
    );
    bed.assert_survived("unsupported wire version 3");
}

#[test]
fn wrong_secret() {
    let mut proof = Vec::new();
    let wrong = Message::Proof {
        client_proof: [0x42; 32],
    };
    encode_frame(&volume(GOOD), &wrong, &mut proof);
    bed(&[], Some(b"the secret")).assert_refuses(
        Opening::Challenged,
        &proof,
        ErrorCode::AuthFailed,
        "secret mismatch",
    );
}

#[test]
fn skipping_the_proof_gets_nothing_stored() {
    bed(&[], Some(b"the secret")).assert_refuses(
        Opening::Challenged,
        &evil_append(&volume(GOOD)),
        ErrorCode::AuthFailed,
        "expected Proof, got Append",
    );
}

#[test]
fn frame_for_another_volume_on_an_authenticated_connection() {
    let bed = bed(&[], None);
    let mut raw = bed.raw(Opening::Writer(77));
    // Authenticated for volume 77, the peer sends an append naming the good volume.
    assert_dropped_with(
        &mut raw,
        &evil_append(&volume(GOOD)),
        ErrorCode::WrongVolume,
    );
    let other_cfg = config(vec![bed.agent.addr], volume(77), 1);
    assert!(read_all(&other_cfg).is_empty());
    bed.assert_survived("frame for another volume");
}

#[test]
fn stall_mid_frame() {
    let bed = bed(&[], None);
    let mut raw = bed.raw(Opening::Writer(50));
    let frame = evil_append(&volume(50));
    raw.send_bytes(&frame[..20]);
    let t = Instant::now();
    // While that connection hangs, the good client goes on.
    bed.client.submit(101, entry("good", 101)).unwrap();
    bed.client.wait_acked(101, WAIT).unwrap();
    let seen = raw.wait_closed(WAIT).expect("connection dropped");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(STALL_MS - 100),
        "dropped after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(STALL_MS * 10),
        "dropped after {waited:?}"
    );
    assert!(got_error(&seen, ErrorCode::Protocol), "{seen:?}");
    // The half frame never became an entry.
    assert!(
        MirrorClient::read_back(&config(vec![bed.agent.addr], volume(50), 1), 0)
            .unwrap()
            .is_empty()
    );
    // assert_survived resubmits from 101: the client only accepts consecutive seqs,
    // so continue from 102 here instead.
    assert!(bed.agent.wait_log("stalled mid-frame", WAIT));
    for (seq, bytes) in entries("good", 102..=200) {
        bed.client.submit(seq, bytes).unwrap();
    }
    bed.client.wait_acked(200, WAIT).unwrap();
    assert_eq!(
        MirrorClient::read_back(&bed.cfg, 0).unwrap(),
        entries("good", 1..=200)
    );
}

#[test]
fn silent_connection_never_says_hello() {
    let bed = bed(&[], None);
    let mut raw = RawConn::connect(bed.agent.addr);
    assert!(raw.wait_closed(WAIT).is_some(), "silent connection kept");
    bed.assert_survived("no complete handshake within");
}

#[test]
fn idle_authenticated_connection() {
    let bed = bed(&["--idle-timeout-ms", "600"], None);
    let mut raw = bed.raw(Opening::Writer(51));
    // The agent sends heartbeats; a peer that never answers anything is dropped.
    let seen = raw.wait_closed(WAIT).expect("idle connection dropped");
    assert!(
        seen.iter()
            .any(|m| matches!(m, Message::Heartbeat { reply: false, .. })),
        "{seen:?}"
    );
    bed.assert_survived("idle for more than 600 ms");
}

#[test]
fn frame_before_hello() {
    bed(&[], None).assert_refuses(
        Opening::Nothing,
        &evil_append(&volume(GOOD)),
        ErrorCode::Protocol,
        "expected Hello, got Append",
    );
}

#[test]
fn append_on_a_read_only_connection() {
    bed(&[], None).assert_refuses(
        Opening::Reader(GOOD),
        &evil_append(&volume(GOOD)),
        ErrorCode::Protocol,
        "Append on a read-only connection",
    );
}

#[test]
fn corrupted_body_checksum() {
    let mut frame = evil_append(&volume(GOOD));
    let last = frame.len() - 1;
    frame[last] ^= 0x01;
    bed(&[], None).assert_refuses(
        Opening::Writer(GOOD),
        &frame,
        ErrorCode::BadFrame,
        "body checksum mismatch",
    );
}

/// A fake agent that answers every connection with `reply` and then holds it open.
fn fake_agent(reply: Vec<u8>) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let reply = reply.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let _ = stream.write_all(&reply);
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[test]
fn the_client_survives_a_hostile_agent() {
    let mut welcome_for_another_volume = Vec::new();
    encode_frame(
        &volume(99),
        &Message::Welcome {
            epoch: 1,
            next_seq: None,
            checkpoint_through: None,
        },
        &mut welcome_for_another_volume,
    );
    let mut oversized = FrameHeader {
        version: Version::V1,
        kind: smlog_wire::FrameKind::Welcome,
        volume_id: volume(GOOD),
        body_len: MAX_BODY_BYTES as u32 + 1,
        body_crc: 0,
    }
    .encode()
    .to_vec();
    oversized.extend_from_slice(&[0; 64]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", garbage(1000, 7), "bad magic"),
        ("oversized", oversized, "frame too large"),
        ("other volume", welcome_for_another_volume, "another volume"),
        ("silence", Vec::new(), "timed out"),
    ];
    for (name, reply, expected) in cases {
        let addr = fake_agent(reply);
        let mut cfg = config(vec![addr], volume(GOOD), 1);
        cfg.heartbeat_ms = 100;
        cfg.timeout_ms = 500;
        let err = MirrorClient::connect(cfg.clone()).expect_err(name);
        assert!(err.to_string().contains(expected), "{name}: {err}");
        let err = MirrorClient::read_back(&cfg, 0).expect_err(name);
        assert!(err.to_string().contains(expected), "{name}: {err}");
    }
}

#[test]
fn a_frame_trickled_byte_by_byte() {
    let bed = bed(&[], None);
    let mut raw = bed.raw(Opening::Writer(52));
    // Each byte comes well within the stall limit, but the frame as a whole takes
    // longer than the 4 stall periods (1600 ms) a frame is given.
    let frame = evil_append(&volume(52));
    let t = Instant::now();
    for byte in &frame {
        if raw.stream.write_all(std::slice::from_ref(byte)).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(60));
        if t.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    assert!(raw.wait_closed(WAIT).is_some(), "trickling peer kept");
    assert!(t.elapsed() >= Duration::from_millis(STALL_MS * 4));
    assert!(
        MirrorClient::read_back(&config(vec![bed.agent.addr], volume(52), 1), 0)
            .unwrap()
            .is_empty()
    );
    bed.assert_survived("a frame took more than 1600 ms to arrive");
}

//! What the agent reports durable (wire version 2): the real agent binary over real TCP on
//! 127.0.0.1, driven by the client or by hand.
//!
//! Most agents here run with a background sync interval of ten minutes, so that nothing but
//! a client's `Sync` can make entries durable while a test runs: a durable seq that moves
//! proves the agent synced on request, with no assertion on how long it took.

mod common;

use common::*;
use smlog_wire::{ErrorCode, Message, MirrorClient, MirrorError, Version};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

/// Long enough that the background sync never runs during a test.
const NO_BACKGROUND_SYNC: [&str; 2] = ["--sync-interval-ms", "600000"];

fn ack(through_seq: u64, durable_seq: Option<u64>) -> Option<Message> {
    Some(Message::Ack {
        through_seq,
        durable_seq,
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn durable_lags_received_until_a_sync_request_and_a_sync_waits_for_its_entries() {
    let (_tmp, agent) = AgentProc::in_tempdir(&NO_BACKGROUND_SYNC);
    let dir = &agent.dir;
    let vol = volume(1);
    let mut raw = RawConn::connect(agent.addr);
    assert!(matches!(
        raw.hello(&vol, 1, true),
        Some(Message::Welcome { next_seq: None, .. })
    ));
    raw.send_entries(&vol, entries("d", 1..=10));
    assert_eq!(
        raw.recv_no_heartbeat(WAIT),
        ack(10, None),
        "received, not durable"
    );

    raw.send(&vol, &Message::Sync { through_seq: 10 });
    assert_eq!(raw.recv_no_heartbeat(WAIT), ack(10, Some(10)));
    assert!(contains(&segment_bytes(dir, &vol), &entry("d", 10)));

    // Durable lags again behind what is received next.
    raw.send_entries(&vol, entries("d", 11..=12));
    assert_eq!(raw.recv_no_heartbeat(WAIT), ack(12, Some(10)));

    // A Sync beyond what the agent holds is answered once the entries come, not before.
    raw.send(&vol, &Message::Sync { through_seq: 15 });
    assert_eq!(
        raw.recv_no_heartbeat(Duration::from_millis(500)),
        None,
        "answered a Sync for seqs the agent does not hold"
    );
    raw.send_entries(&vol, entries("d", 13..=15));
    assert_eq!(raw.recv_no_heartbeat(WAIT), ack(15, Some(15)));
    assert!(contains(&segment_bytes(dir, &vol), &entry("d", 15)));
}

#[test]
fn the_background_sync_catches_durable_up_without_being_asked() {
    let (_tmp, agent) = AgentProc::in_tempdir(&["--sync-interval-ms", "200"]);
    let client = MirrorClient::connect(config(vec![agent.addr], volume(2), 1)).unwrap();
    submit_acked(&client, &entries("bg", 1..=50));
    // No wait_durable: the agent reports the background sync in an Ack of its own.
    wait_until(
        || {
            format!(
                "durable through {:?}, never caught up with 50",
                client.durable_through()
            )
        },
        || client.durable_through() == Some(50),
    );
    let status = client.status();
    assert_eq!(status.durable_through, Some(50));
    assert_eq!(status.acked_through, Some(50));
}

#[test]
fn wait_durable_makes_the_agent_sync_now_and_waits_for_entries_not_sent_yet() {
    let (_tmp, agent) = AgentProc::in_tempdir(&NO_BACKGROUND_SYNC);
    let dir = &agent.dir;
    let vol = volume(3);
    let client = MirrorClient::connect(config(vec![agent.addr], vol, 1)).unwrap();
    submit_acked(&client, &entries("w", 1..=200));
    assert_eq!(client.durable_through(), None, "synced without being asked");

    client.wait_durable(200, WAIT).unwrap();
    assert_eq!(client.durable_through(), Some(200));
    assert_eq!(client.status().durable_through, Some(200));
    assert!(contains(&segment_bytes(dir, &vol), &entry("w", 200)));
    // Already durable: no round trip needed, and it still says yes.
    client.wait_durable(150, Duration::ZERO).unwrap();

    // A seq not submitted yet is waited for.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| client.wait_durable(210, WAIT));
        std::thread::sleep(Duration::from_millis(100));
        submit_all(&client, &entries("w", 201..=210));
        waiter.join().unwrap().unwrap();
    });
    assert!(client.durable_through() >= Some(210));
    assert!(contains(&segment_bytes(dir, &vol), &entry("w", 210)));

    // One that never comes times out, saying how far the agent is.
    match client.wait_durable(300, Duration::from_millis(300)) {
        Err(MirrorError::DurableTimeout {
            seq: 300,
            durable_through: Some(210),
            acked_through: Some(210),
        }) => {}
        other => panic!("expected a durable timeout, got {other:?}"),
    }
}

#[test]
fn with_fsync_every_ack_is_durable_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(
        &tmp.path().join("agent"),
        &["--fsync", NO_BACKGROUND_SYNC[0], NO_BACKGROUND_SYNC[1]],
    );
    let vol = volume(4);
    let mut raw = RawConn::connect(agent.addr);
    assert!(matches!(
        raw.hello(&vol, 1, true),
        Some(Message::Welcome { .. })
    ));
    raw.send_entries(&vol, entries("f", 1..=5));
    assert_eq!(raw.recv_no_heartbeat(WAIT), ack(5, Some(5)));
    raw.send_entries(&vol, entries("f", 6..=9));
    assert_eq!(raw.recv_no_heartbeat(WAIT), ack(9, Some(9)));
    drop(raw);

    let client = MirrorClient::connect(config(vec![agent.addr], vol, 1)).unwrap();
    submit_acked(&client, &entries("f", 10..=40));
    assert_eq!(client.durable_through(), Some(40));
}

#[test]
fn a_fenced_client_cannot_wait_for_durability() {
    let (_tmp, agent) = AgentProc::in_tempdir(&NO_BACKGROUND_SYNC);
    let old = config(vec![agent.addr], volume(5), 1);
    let mut new = config(vec![agent.addr], volume(5), 2);
    new.node = "node-b".into();
    let owner = MirrorClient::connect(old).unwrap();
    submit_acked(&owner, &entries("o", 1..=20));
    assert_eq!(MirrorClient::raise_epoch(&new, 2).unwrap(), 2);
    match owner.wait_durable(20, WAIT) {
        Err(MirrorError::Fenced {
            ours: 1,
            current: 2,
        }) => {}
        other => panic!("expected fenced, got {other:?}"),
    }
    assert_eq!(owner.durable_through(), None);
}

/// A version-1 agent refuses a version-2 Hello as soon as its header is in: one Error frame
/// of version 1, code bad frame, reason "bad frame: unsupported wire version 2 (this build
/// speaks version 1)", then it closes (what this repository's agent did before version 2;
/// its test `wrong_version` sent exactly this). This stands in for that old binary.
#[test]
fn an_agent_that_only_speaks_version_1_is_refused_at_connect() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let old_agent = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut header = [0u8; smlog_wire::format::HEADER_BYTES];
        stream.read_exact(&mut header).unwrap();
        let version = u16::from_le_bytes([header[4], header[5]]);
        let mut reply = Vec::new();
        smlog_wire::encode_frame_as(
            Version::V1,
            &[0; 16],
            &Message::Error {
                code: ErrorCode::BadFrame,
                a: 0,
                b: 0,
                reason: format!(
                    "bad frame: unsupported wire version {version} (this build speaks version 1)"
                ),
            },
            &mut reply,
        );
        stream.write_all(&reply).unwrap();
        version
    });
    let err = MirrorClient::connect(config(vec![addr], volume(6), 1)).unwrap_err();
    assert_eq!(
        old_agent.join().unwrap(),
        2,
        "the client's Hello is version 2"
    );
    match &err {
        MirrorError::AgentTooOld { route, reason } => {
            assert_eq!(*route, addr);
            assert!(reason.contains("unsupported wire version 2"), "{reason}");
        }
        other => panic!("expected AgentTooOld, got {other:?}"),
    }
    assert!(err.is_fatal(), "another attempt cannot cure an old agent");
    assert!(err.to_string().contains("upgrade mirror-agent"), "{err}");
}

#[test]
fn a_version_1_client_is_served_in_version_1() {
    let (_tmp, agent) = AgentProc::in_tempdir(&NO_BACKGROUND_SYNC);
    let vol = volume(7);
    let mut raw = RawConn::connect(agent.addr);
    raw.send_as(
        Version::V1,
        &vol,
        &Message::Hello {
            epoch: 1,
            mode: smlog_wire::Mode::Writer,
            heartbeat_ms: 5000,
            client_nonce: [9; 32],
            node: "old-node".into(),
        },
    );
    let welcome = raw.recv_frame(WAIT).expect("a Welcome");
    assert_eq!(welcome.version, Version::V1);
    assert!(matches!(welcome.message, Message::Welcome { .. }));
    raw.send_as(
        Version::V1,
        &vol,
        &Message::Append {
            entries: entries("v1", 1..=3),
        },
    );
    let acked = raw.recv_frame(WAIT).expect("an Ack");
    assert_eq!(acked.version, Version::V1);
    assert_eq!(Some(acked.message), ack(3, None));
    // A connection keeps its Hello's version.
    raw.send(&vol, &Message::Sync { through_seq: 3 });
    let closing = raw.wait_closed(WAIT).expect("dropped");
    assert!(
        closing.iter().any(|m| matches!(
            m,
            Message::Error { code: ErrorCode::Protocol, reason, .. }
                if reason.contains("wire version 2 frame on a version 1 connection")
        )),
        "{closing:?}"
    );
}

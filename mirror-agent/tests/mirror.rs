//! The mirror end to end: the real agent binary, the real client, real TCP on 127.0.0.1.

mod common;

use common::*;
use smlog_wire::{MirrorClient, MirrorError};
use std::time::{Duration, Instant};

#[test]
fn append_ack_read_back_round_trip() {
    let (_tmp, agent) = AgentProc::in_tempdir(&[]);
    let (cfg, client) = agent.writer(volume(1));
    // Seqs start anywhere; sizes vary from a few bytes to ~700.
    let items = entries("a", 1_000_000..=1_001_999);
    submit_all(&client, &items);
    client.wait_acked(1_001_999, WAIT).unwrap();
    assert_eq!(client.acked_through(), Some(1_001_999));
    let status = client.status();
    assert!(status.connected && status.protected, "{status:?}");
    assert_eq!(status.unacked_entries, 0);
    assert_eq!(status.route_in_use, Some(agent.addr));

    assert_eq!(MirrorClient::read_back(&cfg, 999_999).unwrap(), items);
    assert_eq!(
        MirrorClient::read_back(&cfg, 1_001_500).unwrap(),
        items[1501..].to_vec()
    );
    assert!(MirrorClient::read_back(&cfg, 1_001_999).unwrap().is_empty());
}

#[test]
fn heartbeats_measure_a_round_trip() {
    let (_tmp, agent) = AgentProc::in_tempdir(&[]);
    let client = MirrorClient::connect(config(vec![agent.addr], volume(1), 1)).unwrap();
    wait_until(
        || "no heartbeat echo measured".into(),
        || client.status().rtt_us != 0,
    );
    assert!(client.status().rtt_us < 1_000_000);
}

#[test]
fn entries_survive_an_agent_kill_and_restart_on_the_same_dir() {
    let (_tmp, mut agent) = AgentProc::in_tempdir(&[]);
    let cfg = config(vec![agent.addr], volume(2), 1);
    let items = entries("r", 1..=500);
    {
        let client = MirrorClient::connect(cfg.clone()).unwrap();
        submit_all(&client, &items);
        client.wait_acked(500, WAIT).unwrap();
    }
    agent.restart(); // SIGKILL, then start again on the same port and DIR
    assert_eq!(read_all(&cfg), items);
    // A new connection learns what the agent holds and continues after it.
    let client = MirrorClient::connect(cfg.clone()).unwrap();
    assert_eq!(client.acked_through(), Some(500));
    submit_acked(&client, &entries("r", 501..=600));
    assert_eq!(read_all(&cfg), entries("r", 1..=600));
}

#[test]
fn a_live_client_rides_out_an_agent_restart() {
    let (_tmp, mut agent) = AgentProc::in_tempdir(&[]);
    let (cfg, client) = agent.writer(volume(3));
    submit_acked(&client, &entries("w", 1..=100));
    agent.kill();
    // While the agent is down, entries queue and are not acknowledged.
    submit_all(&client, &entries("w", 101..=200));
    assert!(matches!(
        client.wait_acked(200, Duration::from_millis(2500)),
        Err(MirrorError::Timeout { .. })
    ));
    assert!(!client.status().protected);
    agent.restart();
    client.wait_acked(200, WAIT).unwrap();
    assert!(client.status().reconnects >= 1);
    assert_eq!(read_all(&cfg), entries("w", 1..=200));
}

#[test]
fn two_volumes_are_never_mixed() {
    let (_tmp, mut agent) = AgentProc::in_tempdir(&[]);
    let cfg_a = config(vec![agent.addr], volume(10), 1);
    let cfg_b = config(vec![agent.addr], volume(11), 1);
    // Same seqs, different bytes, written at the same time.
    let writers: Vec<_> = [(cfg_a.clone(), "vol-a"), (cfg_b.clone(), "vol-b")]
        .into_iter()
        .map(|(cfg, tag)| {
            std::thread::spawn(move || {
                let client = MirrorClient::connect(cfg).unwrap();
                for seq in 1..=1000 {
                    client.submit(seq, entry(tag, seq)).unwrap();
                }
                client.wait_acked(1000, WAIT).unwrap();
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(read_all(&cfg_a), entries("vol-a", 1..=1000));
    assert_eq!(read_all(&cfg_b), entries("vol-b", 1..=1000));
    agent.restart();
    assert_eq!(read_all(&cfg_a), entries("vol-a", 1..=1000));
    assert_eq!(read_all(&cfg_b), entries("vol-b", 1..=1000));
    // A third volume that never wrote reads back nothing.
    assert!(
        MirrorClient::read_back(&config(vec![agent.addr], volume(12), 1), 0)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn resent_entries_are_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    // No background sync while the test runs: it would send an Ack of its own.
    let agent = AgentProc::start(&tmp.path().join("agent"), &["--sync-interval-ms", "600000"]);
    let vol = volume(4);
    let mut raw = RawConn::connect(agent.addr);
    assert!(matches!(
        raw.hello(&vol, 1, true),
        Some(smlog_wire::Message::Welcome { next_seq: None, .. })
    ));
    let ack = |through_seq| {
        Some(smlog_wire::Message::Ack {
            through_seq,
            durable_seq: None,
        })
    };
    assert_eq!(raw.append(&vol, entries("first", 1..=10)), ack(10));
    // A resend overlapping what is stored, with different bytes for the overlap: the
    // stored copies stay, only 11..=15 are new.
    assert_eq!(raw.append(&vol, entries("again", 5..=15)), ack(15));
    // A resend of nothing new is acknowledged too.
    assert_eq!(raw.append(&vol, entries("again", 1..=3)), ack(15));
    let mut expected = entries("first", 1..=10);
    expected.extend(entries("again", 11..=15));
    let cfg = config(vec![agent.addr], vol, 1);
    assert_eq!(read_all(&cfg), expected);
    // A gap is refused with a reason, and nothing is stored.
    raw.send_entries(&vol, entries("gap", 17..=18));
    let closing = raw.wait_closed(WAIT).expect("agent closes after a gap");
    assert!(
        closing.iter().any(|m| matches!(
            m,
            smlog_wire::Message::Error {
                code: smlog_wire::ErrorCode::Gap,
                a: 16,
                b: 17,
                ..
            }
        )),
        "{closing:?}"
    );
    assert_eq!(read_all(&cfg), expected);
}

#[test]
fn route_failover_resends_without_loss_or_duplicates() {
    let (_tmp, agent) = AgentProc::in_tempdir(&[]);
    let proxy = Proxy::start(agent.addr);
    let cfg = config(vec![proxy.addr, agent.addr], volume(5), 1);
    let client = MirrorClient::connect(cfg.clone()).unwrap();
    assert_eq!(client.status().route_in_use, Some(proxy.addr));
    submit_all(&client, &entries("f", 1..=2000));
    client.wait_acked(1000, WAIT).unwrap();
    // The first route fails while entries are in flight.
    proxy.cut();
    submit_acked(&client, &entries("f", 2001..=4000));
    let status = client.status();
    assert_eq!(status.route_in_use, Some(agent.addr));
    assert!(status.reconnects >= 1 && status.protected, "{status:?}");
    assert_eq!(read_all(&cfg), entries("f", 1..=4000));
}

#[test]
fn a_dead_first_route_is_skipped_at_connect() {
    let (_tmp, agent) = AgentProc::in_tempdir(&[]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = config(vec![dead, agent.addr], volume(6), 1);
    let client = MirrorClient::connect(cfg.clone()).unwrap();
    assert_eq!(client.status().route_in_use, Some(agent.addr));
    client.submit(7, b"x".to_vec()).unwrap();
    client.wait_acked(7, WAIT).unwrap();
    // With no route at all answering, connect says so and names the routes.
    drop(client);
    drop(agent);
    let err = MirrorClient::connect(cfg).expect_err("no agent");
    assert!(matches!(err, MirrorError::Unreachable(_)), "{err}");
    assert!(err.to_string().contains(&dead.to_string()), "{err}");
}

#[test]
fn checkpoint_drops_covered_entries_for_good() {
    let (_tmp, mut agent) = AgentProc::in_tempdir(&[]);
    let (cfg, client) = agent.writer(volume(7));
    submit_acked(&client, &entries("c", 1..=100));
    client.checkpoint(60);
    wait_until(
        || {
            format!(
                "checkpoint not applied: first {:?}",
                read_all(&cfg).first().map(|e| e.0)
            )
        },
        || read_all(&cfg) == entries("c", 61..=100),
    );
    drop(client);
    agent.restart();
    assert_eq!(read_all(&cfg), entries("c", 61..=100));
    // A checkpoint past everything held empties the volume; appends go on after it.
    let client = MirrorClient::connect(cfg.clone()).unwrap();
    submit_all(&client, &entries("c", 101..=120));
    client.checkpoint(120);
    client.submit(121, entry("c", 121)).unwrap();
    client.wait_acked(121, WAIT).unwrap();
    wait_until(
        || "checkpoint 120 not applied".into(),
        || read_all(&cfg) == entries("c", 121..=121),
    );
}

#[test]
fn a_raised_epoch_fences_the_old_owner_and_persists() {
    let (_tmp, mut agent) = AgentProc::in_tempdir(&[]);
    let old = config(vec![agent.addr], volume(8), 1);
    let mut new = config(vec![agent.addr], volume(8), 2);
    new.node = "node-b".into();
    let owner = MirrorClient::connect(old.clone()).unwrap();
    submit_acked(&owner, &entries("old", 1..=50));

    // Takeover: the peer raises the epoch and reads the entries back.
    assert_eq!(MirrorClient::raise_epoch(&new, 2).unwrap(), 2);
    assert_eq!(read_all(&new), entries("old", 1..=50));

    // The old owner's next append is refused, and it says why.
    owner.submit(51, entry("old", 51)).unwrap();
    let err = owner.wait_acked(51, WAIT).unwrap_err();
    assert_eq!(
        err,
        MirrorError::Fenced {
            ours: 1,
            current: 2
        }
    );
    assert!(matches!(
        owner.submit(52, entry("old", 52)),
        Err(MirrorError::Fenced { .. })
    ));
    assert!(!owner.status().protected);
    assert_eq!(
        MirrorClient::connect(old.clone()).err(),
        Some(MirrorError::Fenced {
            ours: 1,
            current: 2
        })
    );
    // The epoch never goes back.
    assert!(matches!(
        MirrorClient::raise_epoch(&old, 1),
        Err(MirrorError::Fenced {
            ours: 1,
            current: 2
        })
    ));

    // Fencing survives an agent restart.
    agent.restart();
    assert_eq!(
        MirrorClient::connect(old.clone()).err(),
        Some(MirrorError::Fenced {
            ours: 1,
            current: 2
        })
    );
    // The new owner continues the log; the old owner's seq 51 never got in.
    let peer = MirrorClient::connect(new.clone()).unwrap();
    assert_eq!(peer.acked_through(), Some(50));
    submit_acked(&peer, &entries("new", 51..=60));
    let mut expected = entries("old", 1..=50);
    expected.extend(entries("new", 51..=60));
    assert_eq!(read_all(&new), expected);
}

#[test]
fn shared_secret_both_ways_and_clear_mismatch_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let secret_file = tmp.path().join("secret");
    std::fs::write(&secret_file, "correct horse\n").unwrap();
    let agent = AgentProc::start(
        &tmp.path().join("agent"),
        &["--secret-file", secret_file.to_str().unwrap()],
    );
    let mut cfg = config(vec![agent.addr], volume(9), 1);

    cfg.secret = Some(b"correct horse".to_vec());
    let client = MirrorClient::connect(cfg.clone()).unwrap();
    client.submit(1, b"one".to_vec()).unwrap();
    client.wait_acked(1, WAIT).unwrap();
    assert_eq!(read_all(&cfg), vec![(1, b"one".to_vec())]);

    cfg.secret = Some(b"wrong horse".to_vec());
    let err = MirrorClient::connect(cfg.clone()).expect_err("wrong secret refused");
    assert!(matches!(err, MirrorError::AuthFailed { .. }), "{err}");
    assert!(err.to_string().contains("secret mismatch"), "{err}");
    assert!(
        agent.wait_log("client refused our proof", WAIT),
        "{}",
        agent.log_text()
    );
    assert!(MirrorClient::read_back(&cfg, 0).is_err());

    cfg.secret = None;
    let err = MirrorClient::connect(cfg.clone()).expect_err("missing secret refused");
    assert!(
        err.to_string().contains("requires a shared secret"),
        "{err}"
    );

    // A client with a secret refuses an agent that cannot prove one.
    let open_agent = AgentProc::start(&tmp.path().join("open-agent"), &[]);
    let mut cfg = config(vec![open_agent.addr], volume(9), 1);
    cfg.secret = Some(b"correct horse".to_vec());
    let err = MirrorClient::connect(cfg).expect_err("unauthenticated agent refused");
    assert!(
        err.to_string().contains("did not prove the shared secret"),
        "{err}"
    );
    // The good client is still served.
    client.submit(2, b"two".to_vec()).unwrap();
    client.wait_acked(2, WAIT).unwrap();
}

#[test]
fn connections_over_the_limit_are_refused_as_busy() {
    let (_tmp, agent) = AgentProc::in_tempdir(&["--max-connections", "1"]);
    let (cfg, client) = agent.writer(volume(13));
    let err = MirrorClient::read_back(&cfg, 0).expect_err("second connection refused");
    assert!(err.to_string().contains("busy"), "{err}");
    assert!(agent.wait_log("at the limit of 1 connections", WAIT));
    client.submit(1, b"still served".to_vec()).unwrap();
    client.wait_acked(1, WAIT).unwrap();
}

#[test]
fn client_refuses_bad_submissions() {
    let (_tmp, agent) = AgentProc::in_tempdir(&[]);
    let client = MirrorClient::connect(config(vec![agent.addr], volume(14), 1)).unwrap();
    client.submit(10, vec![]).unwrap();
    assert_eq!(
        client.submit(12, vec![]),
        Err(MirrorError::OutOfOrder {
            expected: 11,
            got: 12
        })
    );
    let huge = vec![0u8; smlog_wire::format::MAX_ENTRY_BYTES + 1];
    assert!(matches!(
        client.submit(11, huge),
        Err(MirrorError::EntryTooLarge { .. })
    ));
    // The largest entry allowed goes through.
    client
        .submit(11, vec![7u8; smlog_wire::format::MAX_ENTRY_BYTES])
        .unwrap();
    client.wait_acked(11, WAIT).unwrap();
}

/// Measured figures (printed with --nocapture); the assertions are loose floors.
#[test]
fn throughput_and_latency_on_loopback() {
    let (_tmp, agent) = AgentProc::in_tempdir(&[]);
    let (cfg, client) = agent.writer(volume(15));
    let n = 20_000u64;
    let payload = vec![0x5au8; 256];
    let start = Instant::now();
    for seq in 1..=n {
        client.submit(seq, payload.clone()).unwrap();
    }
    client.wait_acked(n, Duration::from_secs(60)).unwrap();
    let pipelined = start.elapsed();
    let rate = n as f64 / pipelined.as_secs_f64();

    let mut latencies = Vec::new();
    for seq in n + 1..=n + 1000 {
        let t = Instant::now();
        client.submit(seq, payload.clone()).unwrap();
        client.wait_acked(seq, WAIT).unwrap();
        latencies.push(t.elapsed().as_micros() as u64);
    }
    latencies.sort_unstable();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];

    // Read-back of a ring's worth of entries: 8 MiB here, MIRROR_BENCH_MIB=64 for the
    // full-ring figure.
    let mib: u64 = std::env::var("MIRROR_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let count = mib * 16;
    let big = vec![0xc3u8; 64 * 1024];
    let base = n + 1000;
    let t = Instant::now();
    for seq in base + 1..=base + count {
        client.submit(seq, big.clone()).unwrap();
    }
    client
        .wait_acked(base + count, Duration::from_secs(60))
        .unwrap();
    let mirrored = t.elapsed();
    let t = Instant::now();
    let back = MirrorClient::read_back(&cfg, base).unwrap();
    let read_back = t.elapsed();
    assert_eq!(back.len() as u64, count);
    println!(
        "mirror loopback: {rate:.0} acked entries/s pipelined (256 B, {n} entries in {pipelined:?}); \
         one-at-a-time submit->ack p50 {p50} us, p99 {p99} us; \
         {mib} MiB of 64 KiB entries mirrored in {mirrored:?}, read back in {read_back:?}"
    );
    assert!(rate > 1000.0, "{rate} entries/s");
}

#[test]
fn a_black_holed_route_is_detected_by_heartbeat_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    // Two routes into the same agent: a proxy (which will swallow traffic) and a second
    // listening address of the agent itself.
    let agent = AgentProc::start(&tmp.path().join("agent"), &["--listen", "127.0.0.1:0"]);
    assert_eq!(agent.addrs.len(), 2);
    let proxy = Proxy::start(agent.addrs[0]);
    let cfg = config(vec![proxy.addr, agent.addrs[1]], volume(16), 1);
    let client = MirrorClient::connect(cfg.clone()).unwrap();
    submit_acked(&client, &entries("h", 1..=100));
    proxy.freeze();
    let frozen_at = Instant::now();
    submit_acked(&client, &entries("h", 101..=200));
    let took = frozen_at.elapsed();
    // Nothing can be acknowledged before the silence exceeds timeout_ms (1500 ms).
    assert!(
        took >= Duration::from_millis(1400),
        "acked after {took:?} through a dead route?"
    );
    assert_eq!(client.status().route_in_use, Some(agent.addrs[1]));
    assert_eq!(read_all(&cfg), entries("h", 1..=200));
    println!("black-holed route: fail-over complete {took:?} after the route went silent");
}

#[test]
fn acknowledged_entries_survive_kill_9_of_the_agent_mid_stream() {
    for (round, delay_ms) in [0u64, 5, 20].into_iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let mut agent = AgentProc::start(&tmp.path().join("agent"), &[]);
        let cfg = config(vec![agent.addr], volume(17), 1);
        let client = MirrorClient::connect(cfg.clone()).unwrap();
        let n = 30_000u64;
        let tag = format!("k{round}");
        // SIGKILL from another thread while the stream is in full flow: once the first
        // acks are in, after a varying delay.
        let pid = agent.pid().to_string();
        std::thread::scope(|scope| {
            let client = &client;
            scope.spawn(move || {
                let deadline = Instant::now() + WAIT;
                while client.acked_through().unwrap_or(0) < 100 && Instant::now() < deadline {
                    std::thread::yield_now();
                }
                std::thread::sleep(Duration::from_millis(delay_ms));
                let status = std::process::Command::new("kill")
                    .args(["-9", &pid])
                    .status();
                assert!(status.unwrap().success());
            });
            for seq in 1..=n {
                client.submit(seq, entry(&tag, seq)).unwrap();
            }
        });
        agent.kill(); // reap
                      // Every ack the client has seen was sent before the kill.
        let acked = client.acked_through().unwrap_or(0);
        agent.restart();
        let back = read_all(&cfg);
        println!(
            "kill -9 round {round}: client saw acks through {acked}, agent kept {}",
            back.len()
        );
        assert!(
            acked > 0,
            "round {round}: killed before any ack; the test proves nothing"
        );
        assert!(
            back.len() as u64 >= acked,
            "round {round}: acked {acked}, agent kept {}",
            back.len()
        );
        assert_eq!(back, entries(&tag, 1..=back.len() as u64), "round {round}");
        // The client reconnects by itself and completes the log, each entry once.
        client.wait_acked(n, Duration::from_secs(30)).unwrap();
        assert_eq!(read_all(&cfg), entries(&tag, 1..=n));
    }
}

#[test]
fn fsync_mode_round_trip_and_restart() {
    let (_tmp, mut agent) = AgentProc::in_tempdir(&["--fsync"]);
    let (cfg, client) = agent.writer(volume(18));
    submit_acked(&client, &entries("s", 1..=300));
    assert!(agent.log_text().contains("fdatasync'ed"));
    agent.restart();
    assert_eq!(read_all(&cfg), entries("s", 1..=300));
}

#[test]
fn an_agent_that_lost_acknowledged_entries_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let mut agent = AgentProc::start(&dir, &[]);
    let (cfg, client) = agent.writer(volume(19));
    submit_acked(&client, &entries("l", 1..=50));
    // The agent's copy disappears (a wiped DIR) while the node is connected.
    agent.kill();
    std::fs::remove_dir_all(&dir).unwrap();
    agent.restart();
    client.submit(51, entry("l", 51)).unwrap();
    let err = client.wait_acked(51, WAIT).unwrap_err();
    assert_eq!(
        err,
        MirrorError::AgentLost {
            held: None,
            acked: 50
        }
    );
    assert!(err.to_string().contains("resynchronise"), "{err}");
    assert!(!client.status().protected);
    // Nothing half-written was left at the agent by the refused connection.
    assert!(read_all(&cfg).is_empty());
}

#[test]
fn volume_limit_and_readers_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let agent = AgentProc::start(&dir, &["--max-volumes", "2"]);
    let volume_dirs = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count()
    };
    // Reading an unknown volume finds nothing and creates nothing.
    assert!(
        MirrorClient::read_back(&config(vec![agent.addr], volume(40), 1), 0)
            .unwrap()
            .is_empty()
    );
    assert_eq!(volume_dirs(), 0);
    let a = MirrorClient::connect(config(vec![agent.addr], volume(41), 1)).unwrap();
    let b = MirrorClient::connect(config(vec![agent.addr], volume(42), 1)).unwrap();
    let err = MirrorClient::connect(config(vec![agent.addr], volume(43), 1)).unwrap_err();
    assert!(err.to_string().contains("limit of 2 volumes"), "{err}");
    assert_eq!(volume_dirs(), 2);
    for client in [&a, &b] {
        client.submit(1, b"x".to_vec()).unwrap();
        client.wait_acked(1, WAIT).unwrap();
    }
}

#[test]
fn giveback_the_original_owner_returns_under_a_newer_epoch() {
    let (_tmp, agent) = AgentProc::in_tempdir(&[]);
    let a1 = config(vec![agent.addr], volume(20), 1);
    let b2 = config(vec![agent.addr], volume(20), 2);
    let a3 = config(vec![agent.addr], volume(20), 3);
    {
        let a = MirrorClient::connect(a1.clone()).unwrap();
        submit_acked(&a, &entries("a", 1..=10));
    } // node A dies
    MirrorClient::raise_epoch(&b2, 2).unwrap();
    let b = MirrorClient::connect(b2.clone()).unwrap();
    assert_eq!(b.acked_through(), Some(10));
    submit_acked(&b, &entries("b", 11..=20));
    // Giveback: B checkpoints everything; A comes back under epoch 3.
    b.checkpoint(20);
    wait_until(
        || "giveback checkpoint not applied".into(),
        || read_all(&b2).is_empty(),
    );
    let a = MirrorClient::connect(a3.clone()).unwrap();
    assert_eq!(a.acked_through(), Some(20));
    submit_acked(&a, &entries("a", 21..=25));
    // B, still connected under epoch 2, can no longer write.
    b.submit(21, entry("b", 21)).unwrap();
    assert_eq!(
        b.wait_acked(21, WAIT),
        Err(MirrorError::Fenced {
            ours: 2,
            current: 3
        })
    );
    assert_eq!(read_all(&a3), entries("a", 21..=25));
}

#[test]
fn a_checkpoint_while_the_agent_is_away_shrinks_the_resend() {
    let (_tmp, mut agent) = AgentProc::in_tempdir(&[]);
    let (cfg, client) = agent.writer(volume(21));
    submit_acked(&client, &entries("d", 1..=10));
    agent.kill();
    // Degraded: the node goes on and checkpoints while the agent is away.
    submit_all(&client, &entries("d", 11..=100));
    client.checkpoint(80);
    assert_eq!(client.status().unacked_entries, 20);
    agent.restart();
    client.wait_acked(100, WAIT).unwrap();
    wait_until(
        || format!("{:?}", client.status()),
        || client.status().protected,
    );
    // The agent holds exactly what the checkpoint does not cover.
    assert_eq!(read_all(&cfg), entries("d", 81..=100));
}

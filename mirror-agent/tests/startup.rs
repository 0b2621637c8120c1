//! Bad configuration at start-up: a clear message on stderr and a non-zero exit.

mod common;

use std::process::{Command, Output};

fn run_agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mirror-agent"))
        .args(args)
        .output()
        .expect("run mirror-agent")
}

fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exited 0; stderr: {stderr}");
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn dir_that_cannot_be_created() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let dir = file.join("sub");
    let out = run_agent(&["--listen", "127.0.0.1:0", "--dir", dir.to_str().unwrap()]);
    assert_fails_with(&out, "cannot create --dir");
}

#[test]
fn dir_that_is_not_writable() {
    // Root ignores permission bits, so use a directory on a read-only mount when one
    // exists; /proc/self is one everywhere on Linux and refuses new files.
    let out = run_agent(&["--listen", "127.0.0.1:0", "--dir", "/proc/self"]);
    assert_fails_with(&out, "is not writable");
}

#[test]
fn address_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tmp.path().join("agent");
    let out = run_agent(&["--listen", &addr, "--dir", dir.to_str().unwrap()]);
    assert_fails_with(&out, &format!("cannot listen on {addr}"));
}

#[test]
fn secret_file_unreadable_or_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let missing = tmp.path().join("no-such-secret");
    let out = run_agent(&[
        "--listen",
        "127.0.0.1:0",
        "--dir",
        dir.to_str().unwrap(),
        "--secret-file",
        missing.to_str().unwrap(),
    ]);
    assert_fails_with(&out, "cannot read secret file");
    let empty = tmp.path().join("empty-secret");
    std::fs::write(&empty, "\n").unwrap();
    let out = run_agent(&[
        "--listen",
        "127.0.0.1:0",
        "--dir",
        dir.to_str().unwrap(),
        "--secret-file",
        empty.to_str().unwrap(),
    ]);
    assert_fails_with(&out, "is empty");
}

#[test]
fn dir_already_served_by_another_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let _first = common::AgentProc::start(&dir, &[]);
    let out = run_agent(&["--listen", "127.0.0.1:0", "--dir", dir.to_str().unwrap()]);
    assert_fails_with(&out, "another mirror-agent is already using");
}

#[test]
fn corrupt_volume_is_reported_and_others_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let good = common::volume(1);
    let bad = common::volume(2);
    {
        let agent = common::AgentProc::start(&dir, &[]);
        for vol in [good, bad] {
            let client =
                smlog_wire::MirrorClient::connect(common::config(vec![agent.addr], vol, 1))
                    .unwrap();
            for seq in 1..=10 {
                client.submit(seq, common::entry("x", seq)).unwrap();
            }
            client
                .wait_acked(10, std::time::Duration::from_secs(10))
                .unwrap();
        }
    }
    // Damage the bad volume's metadata.
    let hex: String = bad.iter().map(|b| format!("{b:02x}")).collect();
    let meta = dir.join(format!("vol-{hex}")).join("volume.meta");
    let mut raw = std::fs::read(&meta).unwrap();
    raw[30] ^= 0xff;
    std::fs::write(&meta, &raw).unwrap();
    let damaged = raw;
    let agent = common::AgentProc::start(&dir, &[]);
    assert!(
        agent.wait_log("not served", std::time::Duration::from_secs(10)),
        "{}",
        agent.log_text()
    );
    assert!(
        agent.log_text().contains("volume.meta"),
        "{}",
        agent.log_text()
    );
    let err = smlog_wire::MirrorClient::read_back(&common::config(vec![agent.addr], bad, 1), 0)
        .expect_err("corrupt volume refused");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    let back =
        smlog_wire::MirrorClient::read_back(&common::config(vec![agent.addr], good, 1), 0).unwrap();
    assert_eq!(back, common::entries("x", 1..=10));
    // The damaged file was left as it was: nothing overwritten.
    assert_eq!(std::fs::read(&meta).unwrap(), damaged);
}

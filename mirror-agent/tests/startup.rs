//! Bad configuration at start-up: one line on stderr saying what is wrong, where and what to
//! do, and the exit code docs/operations.md documents for it.

mod common;

use std::process::{Command, Output};

fn run_agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mirror-agent"))
        .args(args)
        .output()
        .expect("run mirror-agent")
}

/// The agent started to serve `dir` on a free port of 127.0.0.1, with `extra` arguments.
fn serve(dir: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec!["--listen", "127.0.0.1:0", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_agent(&args)
}

/// Exit codes as documented in docs/operations.md (mirror-agent/src/main.rs `exit`).
const DAMAGED: i32 = 1;
const USAGE: i32 = 2;
const BUSY: i32 = 6;
const PERMISSION: i32 = 13;
const ADDRESS: i32 = 16;
const SECRET: i32 = 17;
const DIR: i32 = 18;

/// Asserts exit `code` and one line of error (log lines, which start with '[', aside)
/// containing `needle`; returns that line.
#[track_caller]
fn assert_fails_with(out: &Output, code: i32, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('['))
        .collect();
    assert_eq!(lines.len(), 1, "one line of error expected: {stderr}");
    assert!(lines[0].starts_with("mirror-agent: error: "), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "stderr lacks {needle:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0].to_string()
}

#[test]
fn dir_that_cannot_be_created() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let dir = file.join("sub");
    let out = serve(&dir, &[]);
    let e = assert_fails_with(&out, DIR, "cannot create --dir");
    assert!(
        e.contains(dir.to_str().unwrap()) && e.contains("another --dir"),
        "{e}"
    );
}

#[test]
fn dir_that_is_not_writable() {
    // Root ignores permission bits, so use a directory on a read-only mount when one
    // exists; /proc/self is one everywhere on Linux and refuses new files.
    let out = run_agent(&["--listen", "127.0.0.1:0", "--dir", "/proc/self"]);
    assert_fails_with(&out, DIR, "--dir /proc/self is not writable");
}

#[test]
fn address_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tmp.path().join("agent");
    let out = run_agent(&["--listen", &addr, "--dir", dir.to_str().unwrap()]);
    let e = assert_fails_with(&out, ADDRESS, &format!("cannot listen on {addr}"));
    assert!(e.contains("another --listen port"), "{e}");
}

#[test]
fn secret_file_unreadable_or_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let missing = tmp.path().join("no-such-secret");
    let out = serve(&dir, &["--secret-file", missing.to_str().unwrap()]);
    let e = assert_fails_with(&out, SECRET, "cannot read secret file");
    assert!(e.contains(missing.to_str().unwrap()), "{e}");
    let empty = tmp.path().join("empty-secret");
    std::fs::write(&empty, "\n").unwrap();
    let out = serve(&dir, &["--secret-file", empty.to_str().unwrap()]);
    assert_fails_with(&out, SECRET, "is empty");
}

#[test]
fn dir_already_served_by_another_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let _first = common::AgentProc::start(&dir, &[]);
    let out = serve(&dir, &[]);
    let e = assert_fails_with(&out, BUSY, "another mirror-agent is already using");
    assert!(e.contains(dir.to_str().unwrap()), "{e}");
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

fn fill(dir: &std::path::Path, vols: &[smlog_wire::VolumeId], through: u64) {
    let agent = common::AgentProc::start(dir, &[]);
    for vol in vols {
        let cfg = common::config(vec![agent.addr], *vol, 3);
        let client = smlog_wire::MirrorClient::connect(cfg).unwrap();
        for seq in 1..=through {
            client.submit(seq, common::entry("i", seq)).unwrap();
        }
        client
            .wait_acked(through, std::time::Duration::from_secs(10))
            .unwrap();
    }
}

fn vol_dir(dir: &std::path::Path, vol: &smlog_wire::VolumeId) -> std::path::PathBuf {
    let hex: String = vol.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("vol-{hex}"))
}

fn tree_bytes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    for vol in std::fs::read_dir(dir).unwrap() {
        let vol = vol.unwrap().path();
        if vol.is_dir() {
            for f in std::fs::read_dir(&vol).unwrap() {
                let f = f.unwrap().path();
                all.push((f.clone(), std::fs::read(&f).unwrap()));
            }
        }
    }
    all.sort();
    all
}

#[test]
fn inspect_reports_volumes_and_damage_without_changing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let (a, b) = (common::volume(1), common::volume(2));
    fill(&dir, &[a, b], 20);
    // A torn tail on volume a: half a record at the end of its last segment.
    let seg_a = std::fs::read_dir(vol_dir(&dir, &a))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".log"))
        .unwrap();
    let mut raw = std::fs::read(&seg_a).unwrap();
    raw.extend_from_slice(b"SMLE\x15\x00");
    std::fs::write(&seg_a, &raw).unwrap();
    let before = tree_bytes(&dir);

    let out = run_agent(&["--inspect", "--dir", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("epoch 3, no checkpoint, entries 1..=20 (20), next seq 21"),
        "{stdout}"
    );
    assert!(stdout.contains("torn tail"), "{stdout}");
    assert!(stdout.contains("2 volume(s)"), "{stdout}");
    assert_eq!(tree_bytes(&dir), before, "inspect changed files");

    // Damage volume b's metadata: reported, exit status 1, still nothing changed.
    let meta = vol_dir(&dir, &b).join("volume.meta");
    let mut raw = std::fs::read(&meta).unwrap();
    raw[24] ^= 0x40;
    std::fs::write(&meta, &raw).unwrap();
    let before = tree_bytes(&dir);
    let out = run_agent(&["--inspect", "--dir", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(DAMAGED), "{stdout}");
    assert!(
        stdout.contains("DAMAGED") && stdout.contains("volume.meta"),
        "{stdout}"
    );
    assert_eq!(tree_bytes(&dir), before, "inspect changed files");
}

#[test]
fn a_volume_directory_holding_another_volume_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let (a, b) = (common::volume(1), common::volume(2));
    fill(&dir, &[a], 5);
    // Someone copies volume a's directory in under volume b's name.
    std::fs::create_dir_all(vol_dir(&dir, &b)).unwrap();
    for f in std::fs::read_dir(vol_dir(&dir, &a)).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, vol_dir(&dir, &b).join(f.file_name().unwrap())).unwrap();
    }
    let agent = common::AgentProc::start(&dir, &[]);
    let err = smlog_wire::MirrorClient::connect(common::config(vec![agent.addr], b, 3))
        .expect_err("volume b's directory holds volume a");
    assert!(err.to_string().contains("belongs to volume"), "{err}");
    assert!(agent.log_text().contains("belongs to volume"));
    let back =
        smlog_wire::MirrorClient::read_back(&common::config(vec![agent.addr], a, 3), 0).unwrap();
    assert_eq!(back, common::entries("i", 1..=5));
}

#[test]
fn usage_errors_are_one_line_and_help_still_works() {
    let e = assert_fails_with(
        &serve("/tmp".as_ref(), &["--bogus"]),
        USAGE,
        "unexpected argument '--bogus'",
    );
    assert!(e.ends_with("; see 'mirror-agent --help'"), "{e}");
    let e = assert_fails_with(
        &serve("/tmp".as_ref(), &["--fsycn"]),
        USAGE,
        "did you mean '--fsync'",
    );
    assert!(e.contains("'--fsycn'"), "{e}");
    assert_fails_with(
        &run_agent(&["--listen", "127.0.0.1:0"]),
        USAGE,
        "--dir <DIR>",
    );
    assert_fails_with(
        &run_agent(&["--listen", "127.0.0.1", "--dir", "/tmp"]),
        USAGE,
        "invalid value '127.0.0.1' for '--listen <LISTEN>'",
    );
    assert_fails_with(
        &run_agent(&[
            "--listen",
            "127.0.0.1:0",
            "--dir",
            "/tmp",
            "--max-connections",
            "0",
        ]),
        USAGE,
        "--max-connections",
    );
    for args in [&["--help"][..], &["--version"]] {
        let out = run_agent(args);
        assert_eq!(out.status.code(), Some(0), "mirror-agent {args:?}");
        assert!(
            !out.stdout.is_empty(),
            "mirror-agent {args:?} printed nothing"
        );
    }
}

#[test]
fn an_address_not_of_this_host_or_a_dir_not_there_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    // 192.0.2.0/24 is reserved for documentation: no host has it.
    let out = run_agent(&["--listen", "192.0.2.1:7410", "--dir", dir.to_str().unwrap()]);
    let e = assert_fails_with(&out, ADDRESS, "cannot listen on 192.0.2.1:7410");
    assert!(e.contains("an address of this host"), "{e}");
    let missing = tmp.path().join("missing");
    let out = run_agent(&["--inspect", "--dir", missing.to_str().unwrap()]);
    assert_fails_with(
        &out,
        DIR,
        &format!("cannot list --dir {}", missing.display()),
    );
}

/// Permission denied: on DIR, on the secret file, on a port below 1024. Needs root (to run
/// the agent as another user); skipped otherwise.
#[test]
fn permission_denied_is_named_with_its_own_code() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = tmp.path().join("mirror-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_mirror-agent"), &bin).unwrap();
    let as_user = |args: &[&str]| {
        Command::new(&bin)
            .args(args)
            .uid(1000)
            .gid(1000)
            .output()
            .unwrap()
    };
    let root_dir = tmp.path().join("roots").join("agent");
    let out = as_user(&[
        "--listen",
        "127.0.0.1:0",
        "--dir",
        root_dir.to_str().unwrap(),
    ]);
    let e = assert_fails_with(&out, PERMISSION, root_dir.to_str().unwrap());
    assert!(e.contains("chown"), "{e}");
    assert!(!root_dir.exists());

    let user_dir = tmp.path().join("user");
    std::fs::create_dir(&user_dir).unwrap();
    std::os::unix::fs::chown(&user_dir, Some(1000), Some(1000)).unwrap();
    let dir = user_dir.join("agent");
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = as_user(&[
        "--listen",
        "127.0.0.1:0",
        "--dir",
        dir.to_str().unwrap(),
        "--secret-file",
        secret.to_str().unwrap(),
    ]);
    assert_fails_with(&out, PERMISSION, secret.to_str().unwrap());

    let out = as_user(&["--listen", "127.0.0.1:1", "--dir", dir.to_str().unwrap()]);
    let e = assert_fails_with(&out, PERMISSION, "cannot listen on 127.0.0.1:1");
    assert!(e.contains("1024"), "{e}");
}

//! The `raid-sim` command line: create, status --json, corrupt, scrub, fail, replace,
//! bench, and one-line errors with non-zero exits on bad input.
mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use raid_sim::RaidOptions;

fn raid_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raid-sim"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = raid_sim(args);
    assert!(
        out.status.success(),
        "raid-sim {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = raid_sim(args);
    assert!(!out.status.success(), "raid-sim {args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    let line = err.lines().find(|l| l.contains("error:")).unwrap_or("");
    assert!(!line.is_empty(), "no error line: {err}");
    line.to_string()
}

#[test]
fn command_line_lifecycle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    let d = dir.to_str().unwrap();
    ok(&[
        "create", d, "--disks", "4", "--chunk", "16K", "--size", "3M", "--spares", "1",
    ]);
    let json = ok(&["status", d, "--json"]);
    assert!(json.contains("\"degraded\":false"), "{json}");
    assert_eq!(json.matches("\"state\":\"active\"").count(), 4, "{json}");
    assert!(
        json.contains("\"rebuild\":null") && json.contains("\"scrub\":null"),
        "{json}"
    );
    assert!(
        json.contains("\"journal\":{\"pending_records\":0,\"dirty_stripes\":0}"),
        "{json}"
    );
    assert!(
        json.contains("\"index\":3") && json.contains("member-3.img"),
        "{json}"
    );

    // Silent corruption in member 1's first chunk: scrub names member and offset, repairs.
    ok(&[
        "corrupt", d, "--member", "1", "--offset", "8292", "--len", "10",
    ]);
    let rep = ok(&["scrub", d]);
    assert!(rep.contains("1 finding(s), 1 repaired"), "{rep}");
    assert!(
        rep.contains("member 1 (") && rep.contains("byte 8192"),
        "{rep}"
    );
    let rep = ok(&["scrub", d]);
    assert!(rep.contains("0 finding(s)"), "{rep}");

    ok(&["fail", d, "--member", "2"]);
    let json = ok(&["status", d, "--json"]);
    assert!(json.contains("\"degraded\":true"), "{json}");
    assert!(json.contains("\"state\":\"failed\""), "{json}");
    let text = ok(&["status", d]);
    assert!(
        text.contains("DEGRADED") && text.contains("member 2"),
        "{text}"
    );

    let out = ok(&["replace", d, "--member", "2"]);
    assert!(out.contains("rebuilt"), "{out}");
    let json = ok(&["status", d, "--json"]);
    assert!(
        json.contains("\"degraded\":false") && json.contains("\"spares\":[]"),
        "{json}"
    );
    let rep = ok(&["scrub", d, "--no-repair"]);
    assert!(rep.contains("0 finding(s)"), "{rep}");
}

#[test]
fn bad_input_gives_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    let d = dir.to_str().unwrap();
    let e = fails(&["status", d]);
    assert!(e.contains("vol"), "{e}");
    fails(&["create", d, "--disks", "2"]);
    fails(&["create", d, "--chunk", "3000"]);
    fails(&["create", d, "--size", "12Q"]);
    ok(&["create", d, "--disks", "3", "--size", "1M", "--chunk", "4K"]);
    let e = fails(&["corrupt", d, "--member", "7", "--offset", "0"]);
    assert!(e.contains("member-7.img"), "{e}");
    let e = fails(&["corrupt", d, "--member", "0", "--offset", "999999999"]);
    assert!(e.contains("outside"), "{e}");
    let e = fails(&["fail", d, "--member", "5"]);
    assert!(e.contains("no member 5"), "{e}");
    std::fs::remove_file(dir.join("member-0.img")).unwrap();
    std::fs::remove_file(dir.join("member-1.img")).unwrap();
    let e = fails(&["scrub", d]);
    assert!(
        e.contains("member-0.img") && e.contains("member-1.img"),
        "{e}"
    );
}

#[test]
fn bench_reports_throughput() {
    let out = ok(&["bench", "--bytes", "64M"]);
    assert!(out.contains("GB/s"), "{out}");
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// While a process has the volume open (as smlogfs would), `fail`, `scrub` and `replace`
/// from the command line are handed to it and carried out online.
#[test]
fn commands_reach_a_running_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    let d = dir.to_str().unwrap();
    let o = RaidOptions {
        background: true,
        ..quiet()
    };
    let vol = create(&dir, 4, 16 << 10, 2 << 20, 1, &o);
    let model = fill(&vol, &mut Rng(31));
    let out = ok(&["fail", d, "--member", "1"]);
    assert!(out.contains("handed to it"), "{out}");
    // The spare takes over by itself.
    wait_for("the spare rebuild", || {
        dir.join("member-1.img.failed").exists() && !vol.is_degraded()
    });
    assert!(!dir.join("spare-0.img").exists());
    ok(&[
        "corrupt", d, "--member", "2", "--offset", "20000", "--len", "3",
    ]);
    let rep = ok(&["scrub", d]);
    assert!(
        rep.contains("1 finding(s), 1 repaired") && rep.contains("member 2"),
        "{rep}"
    );
    ok(&["replace", d, "--member", "0"]);
    wait_for("the replacement rebuild", || {
        dir.join("member-0.img.failed").exists() && !vol.is_degraded()
    });
    assert_reads(&vol, &model);
    let rep = vol.scrub(false, |_, _| {}).unwrap();
    assert!(rep.findings.is_empty(), "{}", rep.to_text());
}

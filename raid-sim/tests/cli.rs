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

/// Exit codes as documented in docs/operations.md (raid-sim/src/main.rs `exit`).
const UNREPAIRED: i32 = 1;
const USAGE: i32 = 2;
const NOT_A_VOLUME: i32 = 3;
const PERMISSION: i32 = 13;
const MEMBER: i32 = 14;
const ARRAY: i32 = 15;

/// Asserts that `raid-sim ARGS` fails with `code` and one line of error (log lines, which
/// start with '[', aside); returns that line.
#[track_caller]
fn fails(args: &[&str], code: i32) -> String {
    check_failure(&raid_sim(args), code, &format!("raid-sim {args:?}"))
}

#[track_caller]
fn check_failure(out: &Output, code: i32, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('['))
        .collect();
    assert_eq!(lines.len(), 1, "{what}: one line of error expected: {err}");
    assert!(lines[0].starts_with("raid-sim: error: "), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    lines[0].to_string()
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
    let e = fails(&["status", d], NOT_A_VOLUME);
    assert!(e.contains("vol") && e.contains("raid-sim create"), "{e}");
    let e = fails(&["create", d, "--disks", "2"], USAGE);
    assert!(e.contains("--disks 2"), "{e}");
    let e = fails(&["create", d, "--chunk", "3000"], USAGE);
    assert!(e.contains("chunk size 3000"), "{e}");
    let e = fails(&["create", d, "--size", "12Q"], USAGE);
    assert!(e.contains("--size") && e.contains("12Q"), "{e}");
    ok(&["create", d, "--disks", "3", "--size", "1M", "--chunk", "4K"]);
    let e = fails(&["corrupt", d, "--member", "7", "--offset", "0"], MEMBER);
    assert!(
        e.contains("member-7.img") && e.contains("--member 7"),
        "{e}"
    );
    let e = fails(
        &["corrupt", d, "--member", "0", "--offset", "999999999"],
        USAGE,
    );
    assert!(e.contains("outside") && e.contains("member-0.img"), "{e}");
    let e = fails(&["fail", d, "--member", "5"], USAGE);
    assert!(
        e.contains("no member 5") && e.contains("--member 0 to 2"),
        "{e}"
    );
    let e = fails(&["replace", d, "--member", "5"], USAGE);
    assert!(e.contains("no member 5"), "{e}");
    std::fs::remove_file(dir.join("member-0.img")).unwrap();
    std::fs::remove_file(dir.join("member-1.img")).unwrap();
    let e = fails(&["scrub", d], ARRAY);
    assert!(
        e.contains("member-0.img")
            && e.contains("member-1.img")
            && e.contains("put back or repair"),
        "{e}"
    );
    let e = fails(&["replace", d, "--member", "0"], ARRAY);
    assert!(e.contains("member-1.img"), "{e}");
}

/// clap's errors are one line naming the argument and where the help is; help and version
/// still print normally and exit 0.
#[test]
fn usage_errors_are_one_line_and_help_still_works() {
    let e = fails(&["create", "/nonexistent/v", "--bogus"], USAGE);
    assert_eq!(
        e,
        "raid-sim: error: unexpected argument '--bogus' for 'create'; see 'raid-sim create --help'"
    );
    let e = fails(&["scrub", "/nonexistent/v", "--no-repiar"], USAGE);
    assert!(
        e.contains("'--no-repiar'") && e.contains("did you mean '--no-repair'"),
        "{e}"
    );
    let e = fails(&["fail", "/nonexistent/v"], USAGE);
    assert!(
        e.contains("--member") && e.contains("raid-sim fail --help"),
        "{e}"
    );
    let e = fails(&["fail", "/nonexistent/v", "--member", "one"], USAGE);
    assert!(e.contains("'one'") && e.contains("--member"), "{e}");
    let e = fails(&["rebuild"], USAGE);
    assert!(
        e.contains("'rebuild'") && e.contains("'raid-sim --help'"),
        "{e}"
    );
    let e = fails(&[], USAGE);
    assert!(
        e.contains("no command given") && e.contains("replace"),
        "{e}"
    );
    for args in [
        &["--help"][..],
        &["--version"],
        &["scrub", "--help"],
        &["help", "create"],
    ] {
        let out = raid_sim(args);
        assert_eq!(out.status.code(), Some(0), "raid-sim {args:?}");
        assert!(!out.stdout.is_empty(), "raid-sim {args:?} printed nothing");
    }
}

/// Damage that scrub is told not to repair: reported by member and byte, exit 1.
#[test]
fn unrepaired_findings_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    let d = dir.to_str().unwrap();
    ok(&["create", d, "--disks", "3", "--size", "1M", "--chunk", "4K"]);
    ok(&[
        "corrupt", d, "--member", "1", "--offset", "8192", "--len", "8",
    ]);
    let out = raid_sim(&["scrub", d, "--no-repair"]);
    let e = check_failure(&out, UNREPAIRED, "raid-sim scrub --no-repair");
    assert!(
        e.contains("1 finding(s) not repaired") && e.contains("without --no-repair"),
        "{e}"
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("member 1"), "{report}");
    ok(&["scrub", d]);
}

/// Permission denied on the array's files: exit 13, the file named. Needs root (to hand the
/// command to another user); skipped otherwise.
#[test]
fn permission_denied_names_the_file() {
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
    let dir = tmp.path().join("vol");
    let d = dir.to_str().unwrap();
    ok(&["create", d, "--disks", "3", "--size", "1M", "--chunk", "4K"]);
    let before = snapshot(&dir);
    let bin = tmp.path().join("raid-sim");
    std::fs::copy(env!("CARGO_BIN_EXE_raid-sim"), &bin).unwrap();
    let as_user = |args: &[&str]| {
        Command::new(&bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .uid(1000)
            .gid(1000)
            .output()
            .unwrap()
    };
    // Reading works for anybody; changing needs write access.
    let out = as_user(&["status", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = check_failure(&as_user(&["fail", d, "--member", "1"]), PERMISSION, "fail");
    assert!(e.contains(d) && e.contains("chown"), "{e}");
    let e = check_failure(
        &as_user(&["corrupt", d, "--member", "1", "--offset", "8192"]),
        PERMISSION,
        "corrupt",
    );
    assert!(
        e.contains("member-1.img") && e.contains("Permission denied"),
        "{e}"
    );
    assert_eq!(
        snapshot(&dir),
        before,
        "a refused command changed the array"
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
    assert_scrub_clean(&vol, "after the test");
}

/// The `{"index":K,...}` object of member K in `status --json` output.
#[track_caller]
fn member_json(json: &str, k: u32) -> &str {
    let key = format!("{{\"index\":{k},");
    let at = json
        .find(&key)
        .unwrap_or_else(|| panic!("no member {k}: {json}"));
    let end = json[at..].find('}').expect("object end") + at;
    &json[at..=end]
}

/// `replace --member K --with PATH` from the command line: member K's data lands in PATH,
/// the array comes back clean, and the failed member's file takes no further part.
#[test]
fn replace_with_a_path_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    let d = dir.to_str().unwrap();
    let new_disk = tmp.path().join("elsewhere").join("new-disk.img");
    std::fs::create_dir(new_disk.parent().unwrap()).unwrap();
    ok(&[
        "create", d, "--disks", "4", "--chunk", "16K", "--size", "2M",
    ]);
    let model = {
        let vol = raid_sim::open_raid(&dir, &quiet()).unwrap();
        fill(&vol, &mut Rng(41))
    };
    ok(&["fail", d, "--member", "2"]);
    let old = dir.join("member-2.img");
    let old_bytes = std::fs::read(&old).unwrap();
    let json = ok(&["status", d, "--json"]);
    assert!(json.contains("\"degraded\":true"), "{json}");
    assert!(
        member_json(&json, 2).contains("\"state\":\"failed\""),
        "{json}"
    );

    let out = ok(&[
        "replace",
        d,
        "--member",
        "2",
        "--with",
        new_disk.to_str().unwrap(),
    ]);
    assert!(out.contains("member 2 rebuilt"), "{out}");

    let new_abs = std::fs::canonicalize(&new_disk).unwrap();
    let json = ok(&["status", d, "--json"]);
    let m2 = member_json(&json, 2);
    assert!(
        m2.contains(&format!("\"path\":\"{}\"", new_abs.display())),
        "member 2 should be shown at {}: {json}",
        new_abs.display()
    );
    assert!(m2.contains("\"state\":\"active\""), "{json}");
    assert!(
        json.contains("\"degraded\":false") && json.contains("\"rebuild\":null"),
        "{json}"
    );
    assert_eq!(json.matches("\"state\":\"active\"").count(), 4, "{json}");
    let text = ok(&["status", d]);
    assert!(
        text.contains(&format!("member-2.img -> {}: active", new_abs.display())),
        "{text}"
    );

    // member-2.img is now a link to the new file; the old file was set aside, unchanged.
    assert_eq!(std::fs::read_link(&old).unwrap(), new_abs);
    let aside = dir.join("member-2.img.failed");
    assert!(
        std::fs::read(&aside).unwrap() == old_bytes,
        "the failed member's file was written to after it failed"
    );
    assert!(std::fs::metadata(&new_disk).unwrap().len() >= old_bytes.len() as u64);

    let rep = ok(&["scrub", d, "--no-repair"]);
    assert!(rep.contains(": 0 finding(s)"), "{rep}");
    // The old file takes no part: with it gone the array assembles clean and reads the same.
    std::fs::remove_file(&aside).unwrap();
    let vol = raid_sim::open_raid(&dir, &quiet()).unwrap();
    assert!(!vol.is_degraded());
    assert_reads(&vol, &model);
    drop(vol);
    // Member 2's data lives in the new file: damage there is found on member 2.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&new_disk)
            .unwrap();
        f.write_all_at(&[0x5a; 4], 8192).unwrap();
    }
    let out = raid_sim(&["scrub", d, "--no-repair"]);
    assert_eq!(out.status.code(), Some(UNREPAIRED));
    let rep = String::from_utf8_lossy(&out.stdout);
    assert!(
        rep.contains("1 finding(s)") && rep.contains("member 2 ("),
        "{rep}"
    );
    ok(&["scrub", d]);
    let json = ok(&["status", d, "--json"]);
    assert!(json.contains("\"degraded\":false"), "{json}");
}

//! smlogfs on its default volume, a RAID-5 over backing files, on a real mount: a member
//! lost while mounted and serving, the spare rebuilt online, everything identical after.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

fn raid_sim_bin() -> PathBuf {
    let p = std::path::Path::new(smlogfs_bin()).with_file_name("raid-sim");
    assert!(
        p.exists(),
        "{} missing: build the workspace first (cargo build --release --workspace)",
        p.display()
    );
    p
}

fn status_json(v: &Volume) -> serde_json::Value {
    let out = run(Command::new(raid_sim_bin())
        .arg("status")
        .arg(v.voldir())
        .arg("--json"));
    assert!(out.status.success(), "raid-sim status: {}", describe(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", describe(&out)))
}

fn drop_caches() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Files of varied sizes whose contents are derived from their index.
fn contents(i: usize) -> Vec<u8> {
    let len = 1000 + i * 97_003 % (3 << 20);
    (0..len).map(|k| ((k * 31 + i * 7) % 251) as u8).collect()
}

#[test]
fn default_mkfs_builds_a_four_member_raid5() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol");
    let out = run(Command::new(smlogfs_bin())
        .arg("mkfs")
        .arg(&vol)
        .args(["--size", "256M", "--ring", "8M"]));
    assert!(out.status.success(), "{}", describe(&out));
    for k in 0..4 {
        assert!(
            vol.join(format!("member-{k}.img")).exists(),
            "member {k} missing"
        );
    }
    assert!(!vol.join("disk.img").exists());
}

#[test]
fn losing_a_member_while_mounted_loses_nothing_and_the_spare_rebuilds() {
    let mut v = Volume::new(&[
        "--size", "512M", "--ring", "16M", "--disks", "4", "--spares", "1",
    ]);
    v.mount(&[]);
    for i in 0..24 {
        fs::write(v.path(&format!("f{i}")), contents(i)).unwrap();
    }
    // Put the files on the RAID volume (final checkpoint), then serve again.
    v.cycle();
    let victim = v.voldir().join("member-1.img");
    fs::remove_file(&victim).unwrap();
    drop_caches();
    for i in 0..24 {
        assert!(
            fs::read(v.path(&format!("f{i}"))).unwrap() == contents(i),
            "f{i} differs with a member gone"
        );
    }
    // New writes go on.
    for i in 24..32 {
        fs::write(v.path(&format!("f{i}")), contents(i)).unwrap();
    }
    // The spare takes over and is rebuilt online.
    let rebuilt = wait_until(Duration::from_secs(90), || {
        let s = status_json(&v);
        s["degraded"] == false && s["rebuild"].is_null()
    });
    let s = status_json(&v);
    assert!(rebuilt.is_some(), "rebuild did not finish: {s}");
    assert!(
        s["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "active"),
        "{s}"
    );
    drop_caches();
    for i in 0..32 {
        assert!(
            fs::read(v.path(&format!("f{i}"))).unwrap() == contents(i),
            "f{i} differs after rebuild"
        );
    }
    v.umount();
    // Every member's chunks and parity are consistent.
    let out = run(Command::new(raid_sim_bin()).arg("scrub").arg(v.voldir()));
    let text = describe(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("0 finding(s)") && text.contains("0 unrepaired"),
        "{text}"
    );
    v.assert_fsck_clean();
    v.remount();
    for i in 0..32 {
        assert!(
            fs::read(v.path(&format!("f{i}"))).unwrap() == contents(i),
            "f{i} differs after remount"
        );
    }
}

#[test]
fn kill9_on_a_raid_volume_recovers_every_acknowledged_write() {
    let mut v = Volume::new(&["--size", "256M", "--ring", "16M", "--disks", "3"]);
    v.mount(&[]);
    for i in 0..16 {
        fs::write(v.path(&format!("g{i}")), contents(i)).unwrap();
    }
    v.kill9();
    v.remount();
    for i in 0..16 {
        assert!(
            fs::read(v.path(&format!("g{i}"))).unwrap() == contents(i),
            "g{i} differs"
        );
    }
    v.umount();
    v.assert_fsck_clean();
}

/// Bytes the daemon has written (`wchar` of /proc/PID/io): the volume's member files and
/// its logs (the ring is a shared mapping and does not count).
fn daemon_written_bytes(v: &Volume) -> u64 {
    let pid = v.daemon_pid().expect("daemon.pid");
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no wchar in /proc/{pid}/io: {io}"))
}

/// A checkpoint writes file data into blocks it allocates, which nothing on the volume
/// references yet: on a RAID-5 their whole stripes go without a journal record. So writing
/// 128 MiB in writes too small to go direct costs the member files about the data plus
/// parity (4/3 on four members), not that plus a journal copy (before: ~2.8x the data).
#[test]
fn checkpoints_write_fresh_stripes_without_a_journal_copy() {
    const DATA: u64 = 128 << 20;
    let mut v = Volume::new(&["--size", "1G", "--ring", "64M"]);
    v.mount(&["-o", "checkpoint_ms=500"]);
    let before = daemon_written_bytes(&v);
    {
        use std::io::Write;
        let mut f = fs::File::create(v.path("f")).unwrap();
        let chunk: Vec<u8> = (0..16 << 10).map(|k| (k % 251) as u8).collect();
        for _ in 0..DATA / chunk.len() as u64 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    // Wait until a checkpoint covers everything (the daemon's status says so).
    let covered = wait_until(Duration::from_secs(60), || {
        let out = run(Command::new(smlogfs_bin())
            .arg("status")
            .arg(v.mnt())
            .arg("--json"));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["dirty_blocks"].as_u64() == Some(0)
            && doc["checkpoint_seq"].as_u64().map(|c| c + 1)
                >= doc["next_seq"].as_u64().map(|n| n.saturating_sub(2))
    });
    assert!(
        covered.is_some(),
        "no checkpoint covered the writes within 60 s"
    );
    let written = daemon_written_bytes(&v) - before;
    eprintln!(
        "{} MiB written to the members for {} MiB of data ({:.2}x)",
        written >> 20,
        DATA >> 20,
        written as f64 / DATA as f64
    );
    assert!(
        written >= DATA,
        "only {written} bytes written for {DATA} bytes of data: the counter misses volume writes"
    );
    assert!(
        written < DATA * 2,
        "{written} bytes written to the members for {DATA} bytes of data: fresh stripes took the journal"
    );
    v.umount();
    v.assert_fsck_clean();
    v.remount();
    let back = fs::read(v.path("f")).unwrap();
    assert_eq!(back.len() as u64, DATA);
    assert!(back
        .chunks(16 << 10)
        .all(|c| c.iter().enumerate().all(|(k, b)| *b == (k % 251) as u8)));
    v.umount();
}

/// Two lost members: mount refuses in one sentence that starts with the point (which
/// members, why) and says what to do, naming the array's geometry at most once.
#[test]
fn mount_with_two_lost_members_says_so_in_one_sentence() {
    let mut v = Volume::new(&["--size", "64M", "--ring", "8M"]);
    if v.is_native() {
        return;
    }
    for k in [0, 2] {
        fs::remove_file(v.voldir().join(format!("member-{k}.img"))).unwrap();
    }
    let err = v.try_remount().expect_err("mounted with two members gone");
    assert!(
        !is_fuse_mount(v.mnt()),
        "a refused mount left a mount behind"
    );
    let out = run(Command::new(smlogfs_bin())
        .arg("mount")
        .arg(v.voldir())
        .arg(v.mnt()));
    assert!(!out.status.success(), "{err}");
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let point = msg
        .find("members 0 and 2 are unusable (member-0.img: missing; member-2.img: missing)")
        .unwrap_or_else(|| panic!("the point is missing: {msg}"));
    let todo = msg
        .find("put back or repair")
        .unwrap_or_else(|| panic!("what to do is missing: {msg}"));
    assert!(point < todo, "what to do comes before the point: {msg}");
    for geometry_word in ["disks", "chunk", "stripes", "bytes"] {
        assert!(
            msg.matches(geometry_word).count() <= 1,
            "{geometry_word:?} repeated: {msg}"
        );
    }
    assert_eq!(
        msg.matches(&v.voldir().display().to_string()).count(),
        1,
        "the directory named more than once: {msg}"
    );
    assert_eq!(msg.lines().count(), 1, "not one line: {msg}");
}

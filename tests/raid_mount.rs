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

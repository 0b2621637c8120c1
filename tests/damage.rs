//! Damaged volumes on a real mount: a torn or corrupt ring, a truncated ring or backing file,
//! corrupt superblocks, a foreign ring. Mount either recovers everything before the damage
//! (with a warning) or refuses with an error naming the file and byte offset, changing
//! nothing on disk. Never a panic.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use smlogfs::statelog::{format::HEADER_AREA_BYTES, StateLog};

/// Mount options that keep every entry in the ring (no checkpoint during the test) and
/// flush it only on fsync (so that the tests decide what the durable watermark covers).
const NO_CHECKPOINT: &[&str] = &["-o", "checkpoint_ms=600000,checkpoint_fill=95,commit_ms=0"];

/// A crashed volume whose ring holds the creation of files f0..f{n-1}, none of it flushed:
/// damage to these entries reads as a torn tail.
fn crashed_volume(n: usize) -> Volume {
    crashed_volume_flushed(n, false)
}

/// `crashed_volume`, with an fsync before the crash when `flushed` (the durable watermark
/// then covers every entry: damage to them is corruption).
fn crashed_volume_flushed(n: usize, flushed: bool) -> Volume {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(NO_CHECKPOINT);
    for i in 0..n {
        fs::write(v.path(&format!("f{i}")), format!("content of file {i}")).unwrap();
    }
    if flushed {
        fs::File::open(v.path(&format!("f{}", n - 1)))
            .unwrap()
            .sync_all()
            .unwrap();
    }
    v.kill9();
    v
}

/// crc32c of every file in VOLDIR that the volume consists of (logs and the lock excluded).
fn volume_checksums(voldir: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(voldir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name == "daemon.log" || name == "lock" || !e.file_type().unwrap().is_file() {
            continue;
        }
        out.insert(name, crc32c::crc32c(&fs::read(e.path()).unwrap()));
    }
    out
}

fn mount_output(v: &Volume) -> std::process::Output {
    run(Command::new(smlogfs_bin())
        .arg("mount")
        .arg(v.voldir())
        .arg(v.mnt())
        .args(NO_CHECKPOINT))
}

fn flip(path: &Path, at: u64) {
    let mut b = fs::read(path).unwrap();
    b[at as usize] ^= 0x5a;
    fs::write(path, b).unwrap();
}

#[test]
fn torn_last_entry_recovers_the_prefix_with_a_warning() {
    let mut v = crashed_volume(20);
    let ring = v.voldir().join("statelog");
    let scan = StateLog::scan_file(&ring).unwrap();
    let last = scan.entries.last().unwrap();
    // Damage the checksum field of the last entry: a write cut short.
    flip(&ring, HEADER_AREA_BYTES + last.offset + 28);
    v.remount();
    let log = fs::read_to_string(v.voldir().join("daemon.log")).unwrap();
    assert!(
        log.contains("torn entry at byte"),
        "no torn-tail warning in the log:\n{log}"
    );
    // Everything before the torn entry is there: f0..f18 for sure.
    for i in 0..19 {
        assert_eq!(
            fs::read_to_string(v.path(&format!("f{i}"))).unwrap(),
            format!("content of file {i}")
        );
    }
    v.umount_clean();
}

#[test]
fn damage_in_the_middle_of_the_ring_refuses_and_changes_nothing() {
    let v = crashed_volume_flushed(30, true);
    let ring = v.voldir().join("statelog");
    let entry_at = middle_entry_at(&ring);
    flip(&ring, entry_at + 40);
    let before = volume_checksums(v.voldir());
    let out = mount_output(&v);
    let text = describe(&out);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit code for corruption: {text}"
    );
    assert!(
        text.contains(&ring.display().to_string()),
        "message names the ring file: {text}"
    );
    assert!(
        text.contains(&format!("byte {entry_at}")),
        "message names byte {entry_at}: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert_eq!(
        before,
        volume_checksums(v.voldir()),
        "nothing on disk may change"
    );
    assert!(!is_fuse_mount(v.mnt()));
    // fsck reports the damage as a problem it cannot read past.
    let (code, out) = v.fsck();
    assert_eq!(code, 2, "{out}");
}

#[test]
fn ring_file_cut_short_keeps_the_entries_before_the_cut() {
    let mut v = crashed_volume(10);
    let ring = v.voldir().join("statelog");
    let scan = StateLog::scan_file(&ring).unwrap();
    let last = scan.entries.last().unwrap();
    let cut = HEADER_AREA_BYTES + last.offset + 8;
    fs::OpenOptions::new()
        .write(true)
        .open(&ring)
        .unwrap()
        .set_len(cut)
        .unwrap();
    // The user who ran mount sees the warning, not only daemon.log.
    let out = mount_output(&v);
    v.mark_mounted();
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        said.contains("warning:") && said.contains("shorter than"),
        "mount did not show the cut-short warning: {said}"
    );
    for i in 0..9 {
        assert_eq!(
            fs::read_to_string(v.path(&format!("f{i}"))).unwrap(),
            format!("content of file {i}"),
            "f{i} lost or changed"
        );
    }
    let log = fs::read_to_string(v.voldir().join("daemon.log")).unwrap();
    assert!(
        log.contains("shorter than"),
        "no warning about the cut:\n{log}"
    );
    v.umount();
    assert_eq!(
        fs::metadata(&ring).unwrap().len(),
        scan.header.ring_bytes,
        "ring restored to full size"
    );
    v.assert_fsck_clean();
}

#[test]
fn truncated_backing_file_refuses_naming_it() {
    let v = crashed_volume(3);
    let disk = v.voldir().join("disk.img");
    let len = fs::metadata(&disk).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let before = volume_checksums(v.voldir());
    let out = mount_output(&v);
    let text = describe(&out);
    assert_eq!(out.status.code(), Some(7), "{text}");
    assert!(
        text.contains("disk.img") && text.contains("truncated"),
        "{text}"
    );
    assert_eq!(before, volume_checksums(v.voldir()));
}

#[test]
fn one_corrupt_superblock_slot_falls_back_to_the_other() {
    let mut v = crashed_volume(5);
    let disk = v.voldir().join("disk.img");
    // mkfs wrote generation 1 into slot 1; no checkpoint ran since. Damage slot 0 (generation 0).
    flip(&disk, 100);
    v.remount();
    assert!(v.path("f4").exists());
    v.umount_clean();
}

#[test]
fn both_superblocks_corrupt_refuses_naming_the_offsets() {
    let v = crashed_volume(2);
    let disk = v.voldir().join("disk.img");
    flip(&disk, 30);
    flip(&disk, 4096 + 30);
    let before = volume_checksums(v.voldir());
    let out = mount_output(&v);
    let text = describe(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("superblock") && text.contains("byte 4096"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert_eq!(before, volume_checksums(v.voldir()));
    let (code, _) = v.fsck();
    assert_eq!(code, 2);
}

#[test]
fn a_ring_from_another_volume_is_refused() {
    let a = crashed_volume(2);
    let b = Volume::new(DEFAULT_MKFS);
    fs::copy(b.voldir().join("statelog"), a.voldir().join("statelog")).unwrap();
    let before = volume_checksums(a.voldir());
    let out = mount_output(&a);
    let text = describe(&out);
    assert_eq!(out.status.code(), Some(7), "{text}");
    assert!(text.contains("another volume"), "{text}");
    assert_eq!(before, volume_checksums(a.voldir()));
}

#[test]
fn not_a_volume_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let out = run(Command::new(smlogfs_bin())
        .arg("mount")
        .arg(dir.path())
        .arg(mnt.path()));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(describe(&out).contains("not a smlogfs volume"));
    let out = run(Command::new(smlogfs_bin()).arg("fsck").arg(dir.path()));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = run(Command::new(smlogfs_bin())
        .args(["mkfs", "--size", "12Q"])
        .arg(dir.path()));
    assert_eq!(out.status.code(), Some(2));
    assert!(describe(&out).contains("unknown suffix"));
}

#[test]
fn mkfs_refuses_to_overwrite_without_force() {
    let v = Volume::new(DEFAULT_MKFS);
    let before = volume_checksums(v.voldir());
    let out = run(Command::new(smlogfs_bin())
        .arg("mkfs")
        .arg(v.voldir())
        .args(DEFAULT_MKFS));
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(describe(&out).contains("--force"));
    assert_eq!(before, volume_checksums(v.voldir()));
    let out = run(Command::new(smlogfs_bin())
        .arg("mkfs")
        .arg(v.voldir())
        .args(DEFAULT_MKFS)
        .arg("--force"));
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn ring_file_elsewhere_is_remembered() {
    let ringdir = tempfile::tempdir().unwrap();
    let ring = ringdir.path().join("fast.ring");
    let ring_s = ring.to_str().unwrap();
    let mut v = Volume::new(&[
        "--size",
        "256M",
        "--ring",
        "8M",
        "--disks",
        "1",
        "--ring-file",
        ring_s,
    ]);
    assert!(!v.voldir().join("statelog").exists());
    v.mount(&[]);
    fs::write(v.path("x"), b"on the other ring").unwrap();
    v.kill9();
    assert!(StateLog::scan_file(&ring).unwrap().entries.len() >= 2);
    v.remount();
    assert_eq!(fs::read(v.path("x")).unwrap(), b"on the other ring");
}

/// A backing file cut inside its superblocks (slot 1 cut in half, or nothing left at all):
/// refused with the file named, exit 7 or 4, no panic, and nothing in VOLDIR changed.
#[test]
fn backing_file_cut_inside_the_superblocks_refuses_naming_it() {
    for keep in [6000u64, 0] {
        let v = crashed_volume(3);
        let disk = v.voldir().join("disk.img");
        fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .unwrap()
            .set_len(keep)
            .unwrap();
        let before = volume_checksums(v.voldir());
        let out = mount_output(&v);
        let text = describe(&out);
        assert!(
            matches!(out.status.code(), Some(4) | Some(7)),
            "cut to {keep} bytes: {text}"
        );
        assert!(text.contains("disk.img"), "cut to {keep} bytes: {text}");
        assert!(!text.contains("panicked"), "cut to {keep} bytes: {text}");
        assert_eq!(before, volume_checksums(v.voldir()), "cut to {keep} bytes");
        let (code, fsck) = v.fsck();
        assert_eq!(code, 2, "fsck of a volume cut to {keep} bytes: {fsck}");
    }
}

/// A ring file cut inside its first header slot (no valid header left): refused with the
/// ring file named, nothing changed. (A cut after a valid header is the cut-short case above.)
#[test]
fn ring_file_cut_inside_its_header_refuses_naming_it() {
    let v = crashed_volume(3);
    let ring = v.voldir().join("statelog");
    fs::OpenOptions::new()
        .write(true)
        .open(&ring)
        .unwrap()
        .set_len(40)
        .unwrap();
    let before = volume_checksums(v.voldir());
    let out = mount_output(&v);
    let text = describe(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("statelog"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert_eq!(before, volume_checksums(v.voldir()));
}

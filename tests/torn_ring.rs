//! The ring after crashes and power cuts, on real mounts: a tail torn after the durable
//! watermark mounts with a warning; files holding copies of state logs are never read as
//! log entries; the background commit moves the watermark without fsync.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use smlogfs::statelog::{format::HEADER_AREA_BYTES, read_header, StateLog};

/// No checkpoint during the test (the entries stay in the ring).
const KEEP_ENTRIES: &str = "checkpoint_ms=600000,checkpoint_fill=95";

/// A fresh volume mounted with `KEEP_ENTRIES` and then `extra` options, and its ring file.
fn mounted_keeping_entries(extra: &str) -> (Volume, PathBuf) {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&["-o", &format!("{KEEP_ENTRIES}{extra}")]);
    let ring = v.voldir().join("statelog");
    (v, ring)
}

/// Writes `data` to `path` in 4 KiB writes (small writes go through the ring).
fn write_small(path: &Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap();
    for chunk in data.chunks(4096) {
        f.write_all(chunk).unwrap();
    }
}

/// The ring header's durable watermark seq and the seq of the ring's last entry.
fn watermark_and_last(ring: &Path) -> (u64, u64) {
    let scan = StateLog::scan_file(ring).unwrap();
    let header = read_header(&fs::read(ring).unwrap()).unwrap();
    (header.durable_seq, scan.next_seq - 1)
}

/// Bytes of `ring` around its newest entries (which carry its highest seqs), from `align`
/// bytes before the entry `back` entries from the end.
fn window_of(ring: &Path, back: usize, align: u64, len: usize) -> Vec<u8> {
    let scan = StateLog::scan_file(ring).unwrap();
    let e = &scan.entries[scan.entries.len().saturating_sub(back)];
    let bytes = fs::read(ring).unwrap();
    let from = (HEADER_AREA_BYTES + e.offset - align) as usize;
    bytes[from..(from + len).min(bytes.len())].to_vec()
}

#[test]
fn files_holding_copies_of_state_logs_change_nothing() {
    // Another volume with many entries: its seqs run past everything the first one logs.
    let (mut other, other_ring) = mounted_keeping_entries("");
    for i in 0..1500 {
        fs::write(other.path(&format!("o{i}")), b"x").unwrap();
    }
    other.kill9();

    let (mut v, ring) = mounted_keeping_entries("");
    fs::write(v.path("seed"), b"some entries of our own").unwrap();
    let mut written = Vec::new();
    let aligns: Vec<u64> = (0..64).chain([100, 1000, 4095, 4097]).collect();
    for &align in &aligns {
        for (tag, source) in [("own", &ring), ("other", &other_ring)] {
            let data = window_of(source, 40, align, 12 << 10);
            let name = format!("{tag}-{align}");
            write_small(&v.path(&name), &data);
            written.push((name, data));
        }
    }
    v.kill9();
    v.remount();
    for (name, data) in &written {
        assert!(
            fs::read(v.path(name)).unwrap() == *data,
            "{name} reads back different after the crash"
        );
    }
    v.umount_clean();
    v.assert_fsck_clean();
}

#[test]
fn a_ring_torn_after_its_watermark_mounts_with_a_warning() {
    let (mut v, ring) = mounted_keeping_entries(",commit_ms=0");
    write_small(&v.path("durable"), &[7u8; 10_000]);
    fs::File::open(v.path("durable"))
        .unwrap()
        .sync_all()
        .unwrap();
    for i in 0..20 {
        write_small(&v.path(&format!("late{i}")), &[i as u8; 9000]);
    }
    let (durable_seq, last) = watermark_and_last(&ring);
    assert!(
        last > durable_seq + 50,
        "an unflushed tail: {durable_seq}..{last}"
    );
    v.kill9();
    // A power cut that kept a later page of the unflushed tail but not an earlier one.
    let scan = StateLog::scan_file(&ring).unwrap();
    let header = read_header(&fs::read(&ring).unwrap()).unwrap();
    let first_page = (HEADER_AREA_BYTES + header.durable_offset) / 4096 + 1;
    let victim = first_page + 2;
    let last_entry = scan.entries.last().unwrap();
    assert!(
        (HEADER_AREA_BYTES + last_entry.offset) / 4096 > victim + 2,
        "entries on pages after the zeroed one"
    );
    let file = fs::OpenOptions::new().write(true).open(&ring).unwrap();
    file.write_all_at(&[0u8; 4096], victim * 4096).unwrap();
    file.sync_all().unwrap();
    drop(file);
    v.remount();
    let log = fs::read_to_string(v.voldir().join("daemon.log")).unwrap();
    assert!(
        log.contains("torn entry at byte") && log.contains("later entries"),
        "no torn-tail warning naming what was dropped:\n{log}"
    );
    assert_eq!(fs::read(v.path("durable")).unwrap(), vec![7u8; 10_000]);
    v.umount_clean();
    v.assert_fsck_clean();
}

#[test]
fn the_background_commit_moves_the_watermark_without_fsync() {
    // Only on fsync: the watermark stays behind (the control for the check below).
    let (mut v, ring) = mounted_keeping_entries(",commit_ms=0");
    fs::write(v.path("a"), b"not flushed").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let (durable, last) = watermark_and_last(&ring);
    assert!(
        durable < last,
        "commit_ms=0 flushed anyway ({durable} of {last})"
    );
    v.umount_clean();
    v.mount(&["-o", &format!("{KEEP_ENTRIES},commit_ms=200")]);
    fs::write(v.path("b"), b"flushed in the background").unwrap();
    let (_, last) = watermark_and_last(&ring);
    wait_for(
        Duration::from_secs(10),
        &format!("the watermark to reach seq {last} with commit_ms=200"),
        || watermark_and_last(&ring).0 >= last,
    );
    v.umount_clean();
}

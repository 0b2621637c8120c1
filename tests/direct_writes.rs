//! Direct writes on a real mount: large block-aligned writes go straight to fresh volume
//! blocks (the ring only names them), survive `kill -9`, and when the volume lost their
//! data (what a power failure before fsync does) recovery shows zeroes, never old blocks.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::process::Command;

const MIB: usize = 1 << 20;
/// No checkpoint before the kill: everything comes back from the ring's entries.
const NO_CHECKPOINTS: &str = "checkpoint_ms=3600000";

/// A default volume mounted with NO_CHECKPOINTS.
fn mounted_without_checkpoints() -> Volume {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&["-o", NO_CHECKPOINTS]);
    v
}

/// `smlogfs inspect VOLDIR` as text.
fn inspect(v: &Volume) -> String {
    let out = run(Command::new(smlogfs_bin()).arg("inspect").arg(v.voldir()));
    assert!(out.status.success(), "inspect: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The direct writes the ring names, in seq order: (first volume block, bytes).
fn direct_blocks(inspect: &str) -> Vec<(u64, u64)> {
    let number = |s: &str| -> u64 {
        s.trim_end_matches(')')
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {s:?}"))
    };
    inspect
        .lines()
        .filter(|l| l.contains("(data on the volume at block "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let len = words.iter().position(|w| *w == "len").expect("len") + 1;
            (number(words[words.len() - 1]), number(words[len]))
        })
        .collect()
}

/// `smlogfs status MNT --json` field, as text.
fn status_field(v: &Volume, field: &str) -> u64 {
    let out = run(Command::new(smlogfs_bin())
        .arg("status")
        .arg(v.mnt())
        .arg("--json"));
    assert!(out.status.success(), "status: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let key = format!("\"{field}\":");
    let at = text
        .find(&key)
        .unwrap_or_else(|| panic!("no {field} in {text}"))
        + key.len();
    text[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{field} is not a number in {text}"))
}

/// Writes `data` with pwrite calls of `chunk` bytes.
fn pwrite_in(path: &std::path::Path, data: &[u8], at: u64, chunk: usize) {
    let f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .unwrap();
    for (i, part) in data.chunks(chunk).enumerate() {
        f.write_all_at(part, at + (i * chunk) as u64).unwrap();
    }
}

#[test]
fn large_aligned_writes_bypass_the_ring_and_survive_kill9() {
    let mut v = mounted_without_checkpoints();
    let big = pattern(1, 40 * MIB);
    pwrite_in(&v.path("big"), &big, 0, MIB);
    // Overwrite the middle (the old blocks are replaced, not written over) and add a file
    // written in 64 KiB pieces, the smallest that go direct.
    let mid = pattern(2, 8 * MIB);
    pwrite_in(&v.path("big"), &mid, 16 * MIB as u64, MIB);
    let small = pattern(3, 3 * MIB);
    pwrite_in(&v.path("pieces"), &small, 0, 64 << 10);
    let mut want = big.clone();
    want[16 * MIB..24 * MIB].copy_from_slice(&mid);
    // The ring holds references, not 51 MiB of data: far less than one ring's worth.
    let used = status_field(&v, "ring_used_bytes");
    assert!(
        used < 2 * MIB as u64,
        "51 MiB of aligned writes used {used} bytes of the ring"
    );
    v.kill9();
    let text = inspect(&v);
    let direct: u64 = direct_blocks(&text).iter().map(|(_, len)| len).sum();
    assert_eq!(
        direct,
        51 << 20,
        "the ring does not name every aligned write as a direct write:\n{text}"
    );
    v.remount();
    assert!(
        read_file(v.path("big")) == want,
        "big differs after kill -9"
    );
    assert!(
        read_file(v.path("pieces")) == small,
        "pieces differs after kill -9"
    );
    // Writes after recovery use blocks of their own (the allocator knows the replayed ones).
    let more = pattern(4, 4 * MIB);
    pwrite_in(&v.path("more"), &more, 0, MIB);
    v.umount_clean();
    v.remount();
    assert!(
        read_file(v.path("big")) == want,
        "big differs after a clean remount"
    );
    assert!(read_file(v.path("pieces")) == small);
    assert!(read_file(v.path("more")) == more);
    v.umount();
}

#[test]
fn unaligned_and_small_writes_still_go_through_the_ring() {
    let mut v = mounted_without_checkpoints();
    let data = pattern(5, 2 * MIB);
    // Offset 100: not block-aligned; 32 KiB: below the direct threshold.
    pwrite_in(&v.path("odd"), &data, 100, MIB);
    pwrite_in(&v.path("small"), &data, 0, 32 << 10);
    v.kill9();
    let text = inspect(&v);
    assert!(
        direct_blocks(&text).is_empty(),
        "unaligned or small writes went direct:\n{text}"
    );
    v.remount();
    let mut want = vec![0u8; 100];
    want.extend_from_slice(&data);
    assert!(read_file(v.path("odd")) == want);
    assert!(read_file(v.path("small")) == data);
    v.umount_clean();
}

#[test]
fn a_direct_write_whose_data_the_volume_lost_reads_as_zeroes() {
    let mut v = mounted_without_checkpoints();
    let keep = pattern(7, MIB);
    let lost = pattern(8, MIB);
    pwrite_in(&v.path("f"), &keep, 0, MIB);
    pwrite_in(&v.path("f"), &lost, MIB as u64, MIB);
    v.kill9();
    // What a power failure would leave: the ring's entries reached the disk, the second
    // write's blocks did not (they hold what they held before: here, some other data).
    let blocks = direct_blocks(&inspect(&v));
    assert_eq!(blocks.len(), 2, "expected two direct writes: {blocks:?}");
    let disk = fs::OpenOptions::new()
        .write(true)
        .open(v.voldir().join("disk.img"))
        .unwrap();
    disk.write_all_at(&pattern(6, MIB), blocks[1].0 * 4096)
        .unwrap();
    disk.sync_all().unwrap();
    drop(disk);
    v.remount();
    let got = read_file(v.path("f"));
    assert_eq!(got.len(), 2 * MIB, "the file lost its size");
    assert!(got[..MIB] == keep[..], "the intact direct write changed");
    assert!(
        got[MIB..].iter().all(|&b| b == 0),
        "the lost write's range shows old data instead of zeroes"
    );
    let log = fs::read_to_string(v.voldir().join("daemon.log")).unwrap();
    assert!(
        log.contains("is not on the volume") && log.contains("reads as zeroes"),
        "recovery did not say the data was lost:\n{log}"
    );
    v.umount_clean();
}

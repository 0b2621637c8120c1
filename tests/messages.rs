//! The refusals a user reads are one sentence each: a damaged or foreign ring is named, and
//! "nothing was changed" is said once, whether the layer below said it already (damage in the
//! middle of the ring) or the command line adds it (a ring of another volume).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// Exit status of a refusal for damage (docs/operations.md, "Exit codes").
const CORRUPT: i32 = 7;

/// A crashed volume whose ring holds the creation of files f0..f{n-1}, all of it flushed
/// (an fsync before the crash moves the durable watermark past every entry, so that damage
/// to them is corruption, not a torn tail; no background commit decides it instead).
fn crashed_volume(n: usize) -> Volume {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&["-o", "checkpoint_ms=600000,checkpoint_fill=95,commit_ms=0"]);
    for i in 0..n {
        fs::write(v.path(&format!("f{i}")), format!("content of file {i}")).unwrap();
    }
    fs::File::open(v.path(&format!("f{}", n - 1)))
        .unwrap()
        .sync_all()
        .unwrap();
    v.kill9();
    v
}

/// `smlogfs mount VOLDIR MNT [extra]`: in the background (the parent relays the daemon's
/// error) or, with `-f`, in the foreground (the daemon prints it itself).
fn mount(v: &Volume, extra: &[&str]) -> Output {
    run(Command::new(smlogfs_bin())
        .arg("mount")
        .arg(v.voldir())
        .arg(v.mnt())
        .args(extra))
}

/// The refusal is one `smlogfs:` line on stderr, exit status 7, naming `ring` and saying
/// "nothing was changed" exactly once; returns that line.
fn assert_one_sentence_refusal(out: &Output, ring: &Path) -> String {
    let text = describe(out);
    assert_eq!(out.status.code(), Some(CORRUPT), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("smlogfs:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {text}");
    let line = lines[0].to_string();
    assert_eq!(
        line.matches("nothing was changed").count(),
        1,
        "said once: {line}"
    );
    assert!(
        line.contains(&ring.display().to_string()),
        "names the ring file {}: {line}",
        ring.display()
    );
    line
}

#[test]
fn damage_in_the_ring_is_refused_saying_nothing_was_changed_once() {
    let v = crashed_volume(30);
    let ring = v.voldir().join("statelog");
    let at = (middle_entry_at(&ring) + 40) as usize;
    let mut bytes = fs::read(&ring).unwrap();
    bytes[at] ^= 0x5a;
    fs::write(&ring, bytes).unwrap();

    for extra in [&[][..], &["-f"][..]] {
        let line = assert_one_sentence_refusal(&mount(&v, extra), &ring);
        // The way out is still there, and the promise ends the sentence it belongs to.
        assert!(line.contains("smlogfs recover"), "{line}");
        assert!(!is_fuse_mount(v.mnt()), "{line}");
    }
}

#[test]
fn a_ring_of_another_volume_is_refused_saying_nothing_was_changed_once() {
    let a = crashed_volume(2);
    let b = Volume::new(DEFAULT_MKFS);
    let ring = a.voldir().join("statelog");
    fs::copy(b.voldir().join("statelog"), &ring).unwrap();
    let line = assert_one_sentence_refusal(&mount(&a, &[]), &ring);
    assert!(line.ends_with("; nothing was changed"), "{line}");
    assert!(line.contains("another volume"), "{line}");
}

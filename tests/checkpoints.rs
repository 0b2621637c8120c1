//! Checkpoints, the offline tools and the foreground daemon on a real mount.
//!
//! * a checkpoint starts when the ring passes its fill level, and periodically, and an idle
//!   volume stops checkpointing;
//! * a checkpoint's cost grows with what changed, not with the size of the file system
//!   (measured as the bytes the daemon passed to write(2)-family calls, an upper bound of
//!   what it wrote to the block volume: the ring is a shared mapping and counts nothing);
//! * `fsck` exits 1 and names the problem on consistent-looking but contradictory metadata,
//!   2 on a volume it cannot read;
//! * `inspect` after `kill -9` says what the next mount then does;
//! * `mount -f` serves until `fusermount3 -u`, then exits 0 leaving a clean volume.
//!
//! No assertion here is about speed; waits only bound how long a test may hang.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use raid_sim::BlockVolume;
use serde_json::Value;
use smlogfs::core::meta::{self, MetaRecord, BLOB_DELTA, BLOB_HEADER_BYTES};
use smlogfs::core::superblock::{BlobRef, Superblock, FIRST_DATA_BLOCK};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;

/// `smlogfs status TARGET --json` (TARGET: the mountpoint for live figures, the volume
/// directory of an unmounted volume for offline ones).
fn status_of(target: &Path) -> Value {
    let out = run(Command::new(smlogfs_bin())
        .arg("status")
        .arg(target)
        .arg("--json"));
    assert!(
        out.status.success(),
        "smlogfs status {} --json: {}",
        target.display(),
        describe(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("status JSON {line:?}: {e}"))
}

#[track_caller]
fn field(s: &Value, key: &str) -> u64 {
    s[key]
        .as_u64()
        .unwrap_or_else(|| panic!("status field {key} is missing or not a number in {s}"))
}

/// Polls live status every 50 ms until `done` holds; panics naming `what` after 60 s.
fn wait_status(v: &Volume, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(45));
        last = status_of(v.mnt());
        done(&last)
    });
    assert!(
        ok.is_some(),
        "timed out waiting for {what}; last status: {last}"
    );
    last
}

/// Waits until a checkpoint covers every entry logged so far (all returned ops).
fn wait_covered(v: &Volume) -> Value {
    let logged = field(&status_of(v.mnt()), "next_seq") - 1;
    wait_status(v, &format!("a checkpoint covering seq {logged}"), |s| {
        field(s, "checkpoint_seq") >= logged
    })
}

/// Bytes the process passed to write-like system calls so far (`wchar` of /proc/PID/io).
fn written_bytes(pid: i32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/io: {e}"));
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no wchar in /proc/{pid}/io: {io}"))
}

fn daemon_pid(v: &Volume) -> i32 {
    v.daemon_pid()
        .unwrap_or_else(|| panic!("no daemon.pid in {}", v.voldir().display()))
}

/// Writes `total` bytes to `rel` in 4 KiB writes (small writes go through the ring).
fn write_through_ring(v: &Volume, rel: &str, total: u64) {
    let f = fs::File::create(v.path(rel)).unwrap();
    let chunk = pattern(7, BLOCK as usize);
    for i in 0..total / BLOCK {
        f.write_all_at(&chunk, i * BLOCK).unwrap();
    }
}

#[test]
fn checkpoint_starts_when_the_ring_passes_its_fill_level() {
    let mut v = Volume::new(&["--size", "1G", "--ring", "4M", "--disks", "1"]);
    // The periodic checkpoint is ten minutes away: only the fill level can start one.
    v.mount(&["-o", "checkpoint_ms=600000,checkpoint_fill=25"]);
    let s0 = status_of(v.mnt());
    assert_eq!(field(&s0, "ring_checkpoint_fill_percent"), 25, "{s0}");
    assert_eq!(field(&s0, "checkpoints_since_mount"), 0, "{s0}");
    let area = field(&s0, "ring_area_bytes");

    // Below the level: logged, and no checkpoint however long we wait (the checkpointer
    // looks at the fill at least every 500 ms, so three looks by the daemon's own clock).
    write_through_ring(&v, "below", 64 << 10);
    let s1 = wait_without_checkpoint(&v, 1500);
    assert!(field(&s1, "ring_used_bytes") >= 64 << 10, "{s1}");
    assert!(field(&s1, "ring_fill_percent") < 25, "{s1}");
    assert_eq!(field(&s1, "checkpoints_since_mount"), 0, "{s1}");
    assert_eq!(
        field(&s1, "checkpoint_generation"),
        field(&s0, "checkpoint_generation"),
        "{s1}"
    );

    // Past the level (60% of the ring, so a full ring cannot be what starts it).
    let total = area * 60 / 100 / BLOCK * BLOCK;
    write_through_ring(&v, "past", total);
    let s2 = wait_status(&v, "a checkpoint started by the fill level", |s| {
        field(s, "checkpoints_since_mount") >= 1 && field(s, "ring_fill_percent") < 25
    });
    assert!(
        field(&s2, "checkpoint_generation") > field(&s0, "checkpoint_generation"),
        "{s2}"
    );
    assert!(
        field(&s2, "checkpoint_seq") > field(&s1, "checkpoint_seq"),
        "{s2}"
    );
    // The checkpoint reclaimed the ring behind it: less is held than was written.
    assert!(field(&s2, "ring_fill_percent") < 25, "{s2}");
    assert!(field(&s2, "ring_used_bytes") < total, "{s2}");

    assert_eq!(read_file(v.path("past")).len() as u64, total);
    v.umount_clean();
}

#[test]
fn periodic_checkpoints_fire_while_something_changed_and_stop_when_idle() {
    let mut v = Volume::new(DEFAULT_MKFS);
    // The fill level is out of reach of these few ops: only the interval starts checkpoints.
    v.mount(&["-o", "checkpoint_ms=200,checkpoint_fill=95"]);
    let s0 = status_of(v.mnt());
    write_file(v.path("a"), b"first change");
    let s1 = wait_covered(&v);
    assert!(field(&s1, "ring_fill_percent") < 95, "{s1}");
    assert!(field(&s1, "checkpoints_since_mount") >= 1, "{s1}");
    assert!(
        field(&s1, "checkpoint_generation") > field(&s0, "checkpoint_generation"),
        "{s1}"
    );

    write_file(v.path("b"), b"second change");
    let s2 = wait_covered(&v);
    assert!(
        field(&s2, "checkpoint_generation") > field(&s1, "checkpoint_generation"),
        "a second change got no checkpoint of its own: {s2}"
    );

    // Idle: nothing changed, so seven intervals later there is still no new checkpoint (each
    // would write and fsync a superblock, and every 31st rewrite all the metadata).
    let s3 = wait_without_checkpoint(&v, 1500);
    assert_eq!(
        field(&s3, "checkpoint_generation"),
        field(&s2, "checkpoint_generation"),
        "an idle volume kept checkpointing: {s3}"
    );
    v.umount_clean();
    assert_eq!(read_file_after_mount(&mut v, "b"), b"second change");
}

/// Waits until status says `ms` more have passed since the last checkpoint than it says now
/// (a checkpoint meanwhile resets that age, so the wait goes on): the daemon's own clock, not
/// a sleep of the test's. Returns that status; the caller asserts what did not happen.
fn wait_without_checkpoint(v: &Volume, ms: u64) -> Value {
    let age = field(&status_of(v.mnt()), "checkpoint_age_ms");
    wait_status(v, &format!("{ms} ms more without a checkpoint"), |s| {
        field(s, "checkpoint_age_ms") >= age + ms
    })
}

fn read_file_after_mount(v: &mut Volume, rel: &str) -> Vec<u8> {
    v.remount();
    let data = read_file(v.path(rel));
    v.umount();
    data
}

#[test]
fn checkpoint_cost_grows_with_what_changed_not_with_the_file_system() {
    const DIRS: usize = 20;
    const FILES_PER_DIR: usize = 1000;
    const LARGE: u64 = 200 * MIB;
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&["-o", "checkpoint_ms=200"]);
    let pid = daemon_pid(&v);

    // 20,000 small files and one file of 200 MiB.
    let before = written_bytes(pid);
    for d in 0..DIRS {
        fs::create_dir(v.path(&format!("d{d}"))).unwrap();
        for f in 0..FILES_PER_DIR {
            let data = pattern((d * FILES_PER_DIR + f) as u64, 1000);
            fs::write(v.path(&format!("d{d}/f{f}")), data).unwrap();
        }
    }
    {
        let large = fs::File::create(v.path("large")).unwrap();
        let chunk = pattern(99, MIB as usize);
        for i in 0..LARGE / MIB {
            large.write_all_at(&chunk, i * MIB).unwrap();
        }
    }
    let full = wait_covered(&v);
    let populated = written_bytes(pid) - before;
    assert!(
        field(&full, "inodes") > (DIRS * FILES_PER_DIR) as u64,
        "{full}"
    );
    // The counter sees the volume writes: the large file's data went to the volume.
    assert!(
        populated >= LARGE,
        "only {populated} bytes written for {LARGE} bytes of data"
    );

    // The population's deltas may outgrow a snapshot of the whole file system, and the
    // checkpoint that finds them so writes that snapshot (its cost paid for by the changes it
    // compacts). Whether that one comes before `full` or after depends on where the interval
    // fell during the population: one more change and checkpoint settle it before measuring.
    fs::write(v.path("settle"), b"one change before measuring").unwrap();
    let full = wait_covered(&v);

    // Now one small file changes before each checkpoint, for more checkpoints than the
    // superblock can name metadata blobs (32): when its list is full, a checkpoint merges
    // the newer deltas instead of writing a snapshot of the whole file system, so every one
    // of them stays small.
    const CHANGES: usize = 40;
    let mut costs = Vec::new();
    for i in 0..CHANGES {
        let start = written_bytes(pid);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(v.path(&format!("d{}/f{i}", i % DIRS)))
            .unwrap();
        f.write_all_at(b"one small change", 100).unwrap();
        drop(f);
        let s = wait_covered(&v);
        costs.push(written_bytes(pid) - start);
        assert!(field(&s, "checkpoint_generation") > field(&full, "checkpoint_generation"));
    }
    eprintln!(
        "population wrote {populated} bytes; checkpoints after one small change wrote {costs:?} bytes"
    );
    assert!(
        costs.iter().all(|&c| c < MIB),
        "checkpoints of one small change wrote {costs:?} bytes (the file system holds \
         {populated} bytes): each must stay under 1 MiB"
    );

    v.umount_clean();
    v.remount();
    for i in 0..CHANGES {
        let d = i % DIRS;
        let mut want = pattern((d * FILES_PER_DIR + i) as u64, 1000);
        want[100..116].copy_from_slice(b"one small change");
        assert_eq!(read_file(v.path(&format!("d{d}/f{i}"))), want, "d{d}/f{i}");
    }
    v.umount();
}

// ----- fsck on damaged metadata -----

/// Appends a delta blob holding `records` to the volume's last checkpoint, as a checkpoint
/// would (a free block, a correct checksum, a newer superblock): metadata that reads fine.
fn append_delta(voldir: &Path, records: &[MetaRecord]) -> BlobRef {
    let vol: Arc<dyn BlockVolume> = Arc::from(raid_sim::open_volume(voldir).unwrap());
    let mut sb = Superblock::read(vol.as_ref()).unwrap();
    let loaded = meta::load(vol.clone(), &sb).unwrap();
    let mut used: std::collections::HashSet<u64> = (0..FIRST_DATA_BLOCK).collect();
    for b in &sb.blobs {
        used.extend(b.start_block..b.start_block + b.blocks as u64);
    }
    for node in loaded.state.inodes.values() {
        used.extend(node.blocks.values().filter_map(|s| s.phys));
    }
    let generation = sb.generation + 1;
    let (bytes, payload_bytes, crc) = meta::encode_blob(BLOB_DELTA, generation, records);
    let blocks = bytes.len() as u64 / BLOCK;
    let total = sb.capacity_bytes / BLOCK;
    let start = (FIRST_DATA_BLOCK..total - blocks)
        .rev()
        .find(|s| (*s..*s + blocks).all(|b| !used.contains(&b)))
        .expect("a free run of blocks");
    vol.write_at(start * BLOCK, &bytes).unwrap();
    let blob = BlobRef {
        start_block: start,
        blocks: blocks as u32,
        payload_bytes,
        crc,
    };
    sb.blobs.push(blob.clone());
    sb.generation = generation;
    sb.write(vol.as_ref()).unwrap();
    blob
}

/// The inode `name` in the root directory names, as the volume's checkpoint has it.
fn root_entry(voldir: &Path, name: &str) -> smlogfs::core::types::InodeRec {
    let vol: Arc<dyn BlockVolume> = Arc::from(raid_sim::open_volume(voldir).unwrap());
    let sb = Superblock::read(vol.as_ref()).unwrap();
    let state = meta::load(vol, &sb).unwrap().state;
    let (ino, _) = state.inodes[&1].dir.as_ref().unwrap().entries[name.as_bytes()];
    state.inodes[&ino].rec.clone()
}

#[test]
fn fsck_reports_inconsistent_metadata_and_refuses_an_unreadable_volume() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&[]);
    write_file(v.path("f"), b"data");
    fs::create_dir(v.path("d")).unwrap();
    write_file(v.path("d/g"), b"more");
    v.umount_clean();

    // 1. A checkpoint record that says "f" has 5 links while one entry names it.
    let mut rec = root_entry(v.voldir(), "f");
    assert_eq!(rec.nlink, 1);
    rec.nlink = 5;
    let ino = rec.ino;
    append_delta(v.voldir(), &[MetaRecord::Inode(rec)]);
    let (code, out) = v.fsck();
    assert_eq!(code, 1, "fsck of a wrong link count: {out}");
    let want = format!("problem: inode {ino}: link count 5 but 1 directory entries name it");
    assert!(out.contains(&want), "fsck does not say {want:?}: {out}");

    // 2. An entry naming an inode that does not exist: the load itself finds it, mount
    //    refuses, and fsck (which the mount's message points to) lists it.
    append_delta(
        v.voldir(),
        &[MetaRecord::Dirent {
            parent: 1,
            name: b"ghost".to_vec(),
            ino: 999_999,
            cookie: 999_999,
        }],
    );
    let refused = v
        .try_remount()
        .expect_err("mount of contradictory metadata");
    assert!(refused.contains("smlogfs fsck"), "{refused}");
    let (code, out) = v.fsck();
    assert_eq!(code, 1, "fsck of a dangling entry: {out}");
    let want = "entry \"ghost\" in directory 1 names inode 999999, which does not exist";
    assert!(out.contains(want), "fsck does not say {want:?}: {out}");

    // 3. A byte of the last metadata blob flipped: its checksum fails, the volume is
    //    unreadable (exit 2), and fsck says so.
    let blob = append_delta(v.voldir(), &[MetaRecord::NextIno(1 << 20)]);
    let disk = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(v.voldir().join("disk.img"))
        .unwrap();
    let at = blob.start_block * BLOCK + BLOB_HEADER_BYTES as u64;
    let mut b = [0u8; 1];
    disk.read_exact_at(&mut b, at).unwrap();
    disk.write_all_at(&[b[0] ^ 0xff], at).unwrap();
    drop(disk);
    let (code, out) = v.fsck();
    assert_eq!(code, 2, "fsck of a blob with a bad checksum: {out}");
    assert!(
        out.contains("cannot read the volume") && out.contains("checksum mismatch"),
        "{out}"
    );
}

// ----- inspect after kill -9 -----

/// Parses `recovery would: 3 Replay, 1 Discard` into counts by action.
fn recovery_counts(inspect: &str) -> std::collections::BTreeMap<String, u64> {
    let line = inspect
        .lines()
        .find_map(|l| l.strip_prefix("recovery would: "))
        .unwrap_or_else(|| panic!("no 'recovery would:' line in {inspect}"));
    line.split(", ")
        .filter(|p| *p != "nothing")
        .map(|p| {
            let (n, action) = p.split_once(' ').unwrap();
            (action.to_string(), n.parse().unwrap())
        })
        .collect()
}

/// The last `recovered …` line of VOLDIR/daemon.log: (ops replayed, discarded).
fn logged_recovery(voldir: &Path) -> (u64, u64) {
    let log = fs::read_to_string(voldir.join("daemon.log")).unwrap();
    let line = log
        .lines()
        .rfind(|l| l.contains("recovered ") && l.contains("ops replayed"))
        .unwrap_or_else(|| panic!("no recovery line in daemon.log: {log}"));
    let count_before = |word: &str| -> u64 {
        let head = &line[..line.find(word).unwrap()];
        head.split_whitespace().last().unwrap().parse().unwrap()
    };
    (count_before(" ops replayed"), count_before(" discarded"))
}

#[test]
fn inspect_after_kill9_says_what_the_next_mount_replays() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&["-o", "checkpoint_ms=600000"]);
    write_file(v.path("old"), b"checkpointed");
    // The unmount's final checkpoint is the last one; what follows stays in the ring.
    v.cycle();
    fs::create_dir(v.path("d")).unwrap();
    write_file(v.path("d/f"), b"after the checkpoint");
    fs::rename(v.path("d/f"), v.path("d/g")).unwrap();
    std::os::unix::fs::symlink("d/g", v.path("link")).unwrap();
    let rc = unsafe {
        libc::setxattr(
            cpath(v.path("d/g")).as_ptr(),
            cstr("user.k").as_ptr(),
            b"v".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_ok("setxattr", rc as i64);
    v.kill9();

    let out = run(Command::new(smlogfs_bin()).arg("inspect").arg(v.voldir()));
    assert!(out.status.success(), "inspect: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();

    // The last checkpoint, as the offline status sees it too.
    let offline = status_of(v.voldir());
    let want = format!(
        "last checkpoint: generation {}, covers seq {}",
        field(&offline, "checkpoint_generation"),
        field(&offline, "checkpoint_seq")
    );
    assert!(
        text.contains(&want),
        "inspect does not say {want:?}:\n{text}"
    );
    let covers = field(&offline, "checkpoint_seq");

    // Entries: seq, op id, kind and state, with what each op was.
    let mut applied_ops = std::collections::BTreeSet::new();
    let mut kinds = String::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with("seq ")) {
        let w: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((w[0], w[2]), ("seq", "op"), "{line}");
        let seq: u64 = w[1].parse().unwrap();
        let op: u64 = w[3].parse().unwrap();
        if w[4] == "op" && seq > covers {
            assert!(["Accepted", "Applied"].contains(&w[5]), "{line}");
            if w[5] == "Applied" {
                applied_ops.insert(op);
            }
            kinds.push_str(line);
        }
    }
    for kind in ["mkdir", "create", "write", "rename", "symlink", "setxattr"] {
        assert!(
            kinds.contains(&format!(" {kind} ")),
            "no {kind} entry after the checkpoint:\n{text}"
        );
    }

    // The per-op summary and the plan agree with each other and with the entries.
    assert!(
        text.contains("ops (last valid state -> what recovery would do):"),
        "{text}"
    );
    let replay_lines = text
        .lines()
        .filter(|l| l.trim_start().starts_with("op ") && l.contains(" Replay: "))
        .count() as u64;
    let plan = recovery_counts(&text);
    let replay = plan.get("Replay").copied().unwrap_or(0);
    let discard = plan.get("Discard").copied().unwrap_or(0);
    assert!(replay >= 6, "fewer replays than returned ops:\n{text}");
    assert_eq!(replay, replay_lines, "{text}");
    assert_eq!(replay, applied_ops.len() as u64, "{text}");
    assert_eq!(
        field(&offline, "recovery_would_replay"),
        replay,
        "{offline}"
    );

    // The next mount does exactly that.
    v.remount();
    assert_eq!(logged_recovery(v.voldir()), (replay, discard));
    assert_eq!(read_file(v.path("d/g")), b"after the checkpoint");
    assert_eq!(fs::read_link(v.path("link")).unwrap(), Path::new("d/g"));
    assert!(!v.path("d/f").exists());
    v.umount_clean();
}

// ----- foreground daemon -----

#[test]
fn foreground_mount_serves_until_fusermount_unmounts_it() {
    let mut v = Volume::new(DEFAULT_MKFS);
    let log = fs::File::create(v.voldir().with_file_name("foreground.log")).unwrap();
    let mut child = Command::new(smlogfs_bin())
        .arg("mount")
        .arg(v.voldir())
        .arg(v.mnt())
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let log_text =
        |v: &Volume| fs::read_to_string(v.voldir().with_file_name("foreground.log")).unwrap();
    let ready = wait_until(READY_TIMEOUT, || {
        is_fuse_mount(v.mnt()) && v.daemon_pid().is_some()
    });
    assert!(ready.is_some(), "mount -f never served: {}", log_text(&v));
    // The foreground process is the daemon itself.
    assert_eq!(v.daemon_pid(), Some(child.id() as i32));
    write_file(v.path("fg"), b"served in the foreground");
    assert_eq!(read_file(v.path("fg")), b"served in the foreground");

    // fusermount3 -u, tried again while a sibling test's child briefly holds our files.
    run_while_busy("fusermount3 -u", || {
        let mut c = Command::new("fusermount3");
        c.arg("-u").arg(v.mnt());
        c
    });
    let mut status = None;
    wait_until(READY_TIMEOUT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let status = status.unwrap_or_else(|| panic!("mount -f still running after fusermount3 -u"));
    assert_eq!(status.code(), Some(0), "mount -f: {}", log_text(&v));
    assert!(!is_fuse_mount(v.mnt()));
    assert!(
        !v.voldir().join("daemon.pid").exists(),
        "daemon.pid left behind"
    );
    v.assert_fsck_clean();
    v.mount(&[]);
    assert_eq!(read_file(v.path("fg")), b"served in the foreground");
    v.umount();
}

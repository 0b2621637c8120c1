//! Operating smlogfs on real mounts: `status` (live and offline), mounting through mount(8)
//! and /etc/fstab, and one test per operator error (the message names the right thing, the
//! exit code is the one docs/operations.md documents, and nothing in VOLDIR changed).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Exit codes as documented in docs/operations.md (src/cmd/mod.rs `exit`).
const USAGE: i32 = 2;
const NOT_A_VOLUME: i32 = 3;
const MOUNTPOINT: i32 = 5;
const BUSY: i32 = 6;
const NO_FUSE: i32 = 8;
const MIRROR: i32 = 12;
const PERMISSION: i32 = 13;

/// No periodic checkpoint during a test (the ring holds everything until unmount).
const NO_CHECKPOINT: &[&str] = &["-o", "checkpoint_ms=600000"];

fn smlogfs(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(smlogfs_bin());
    for a in args {
        cmd.arg(a);
    }
    run(&mut cmd)
}

/// crc32c of every regular file in `dir` except the daemon's log and the lock file.
fn checksums(dir: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name == "daemon.log" || name == "lock" || !e.file_type().unwrap().is_file() {
            continue;
        }
        out.insert(name, crc32c::crc32c(&fs::read(e.path()).unwrap()));
    }
    out
}

/// Asserts a failure with exit code `code` whose stderr names every one of `needles`.
#[track_caller]
fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}: {}",
        describe(out)
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "the message should name {n:?}: {}",
            describe(out)
        );
    }
    let lines = stderr.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(lines, 1, "one line of error expected: {}", describe(out));
    assert!(!stderr.contains("panicked"), "{}", describe(out));
}

fn status_json(target: &Path) -> Value {
    let out = smlogfs(&[&"status", &target, &"--json"]);
    assert!(out.status.success(), "status --json: {}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("status --json: {e}: {text}"))
}

fn num(doc: &Value, key: &str) -> u64 {
    doc.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("status has no number {key:?}: {doc}"))
}

/// The binary, copied where an ordinary user can run it.
fn user_copy_of_binary(dir: &Path) -> PathBuf {
    let to = dir.join("smlogfs-user");
    fs::copy(smlogfs_bin(), &to).unwrap();
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).unwrap();
    to
}

fn as_uid_1000(bin: &Path, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(bin);
    for a in args {
        cmd.arg(a);
    }
    // std drops the supplementary groups when a root process switches uid.
    cmd.uid(USER_A.0).gid(USER_A.1);
    run(&mut cmd)
}

// ----- status -------------------------------------------------------------------------

#[test]
fn live_status_under_load_moves_ops_through_states_and_counts_add_up() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&["-o", "checkpoint_ms=1500"]);
    let before = status_json(v.mnt());
    assert_eq!(before["source"], "live", "{before}");
    assert_eq!(
        before["daemon_pid"].as_i64().map(|p| p as i32),
        v.daemon_pid(),
        "{before}"
    );
    assert_eq!(
        before["voldir"].as_str(),
        Some(fs::canonicalize(v.voldir()).unwrap().to_str().unwrap())
    );

    const FILES: usize = 150;
    let mnt = v.mnt().to_path_buf();
    let writer = std::thread::spawn(move || {
        for i in 0..FILES {
            fs::write(mnt.join(format!("f{i}")), pattern(i as u64, 24 << 10)).unwrap();
        }
    });
    let mut samples = Vec::new();
    while !writer.is_finished() {
        samples.push(status_json(v.voldir()));
        std::thread::sleep(Duration::from_millis(30));
    }
    writer.join().unwrap();
    let after_writes = status_json(v.mnt());
    samples.push(after_writes.clone());

    let total = |d: &Value| {
        num(d, "ops_accepted")
            + num(d, "ops_mirrored")
            + num(d, "ops_applied")
            + num(d, "ops_committed")
    };
    for pair in samples.windows(2) {
        assert!(
            total(&pair[1]) >= total(&pair[0]),
            "ops since mount went down: {} then {}",
            pair[0],
            pair[1]
        );
        assert!(num(&pair[1], "ops_committed") >= num(&pair[0], "ops_committed"));
        assert!(num(&pair[1], "next_seq") >= num(&pair[0], "next_seq"));
    }
    assert!(
        samples
            .iter()
            .any(|s| num(s, "ring_used_bytes") > 0 && num(s, "ring_fill_percent") > 0),
        "the ring never showed any fill while {FILES} files were written: {samples:?}"
    );
    // Each file is at least a create and a write.
    assert!(
        total(&after_writes) >= 2 * FILES as u64,
        "{} ops counted for {FILES} files written: {after_writes}",
        total(&after_writes)
    );
    assert_eq!(
        num(&after_writes, "ops_accepted"),
        0,
        "nothing is in flight: {after_writes}"
    );

    // The next checkpoint commits every applied op: the counts move, their sum stays.
    wait_until(Duration::from_secs(20), || {
        num(&status_json(v.mnt()), "ops_applied") == 0
    })
    .unwrap_or_else(|| {
        panic!(
            "no checkpoint committed the applied ops: {}",
            status_json(v.mnt())
        )
    });
    let committed = status_json(v.mnt());
    assert_eq!(
        total(&committed),
        total(&after_writes),
        "{after_writes} then {committed}"
    );
    assert_eq!(
        num(&committed, "ops_committed"),
        total(&after_writes),
        "{committed}"
    );
    assert!(num(&committed, "checkpoint_seq") > num(&before, "checkpoint_seq"));
    assert!(num(&committed, "checkpoints_since_mount") >= 1);
    assert!(
        num(&committed, "ring_used_bytes") < num(&after_writes, "ring_used_bytes")
            || num(&after_writes, "ops_applied") == 0,
        "the checkpoint reclaimed nothing: {after_writes} then {committed}"
    );
    assert!(committed["mirror"].is_null() || committed["mirror"].is_object());
    assert!(
        committed["raid"].is_null(),
        "a single-file volume: {committed}"
    );

    // The words say the same.
    let out = smlogfs(&[&"status", &v.mnt()]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("committed {}", num(&committed, "ops_committed"))),
        "{text}"
    );
    assert!(text.contains("live"), "{text}");
    v.umount_clean();
}

#[test]
fn status_watch_refreshes_and_the_socket_is_owner_only() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(NO_CHECKPOINT);
    let sock = v.voldir().join("control.sock");
    let meta = fs::symlink_metadata(&sock).expect("the daemon serves VOLDIR/control.sock");
    assert_eq!(
        meta.mode() & 0o777,
        0o600,
        "control.sock must be owner-only"
    );

    let out = smlogfs(&[
        &"status",
        &v.mnt(),
        &"--json",
        &"--watch",
        &"--count",
        &"3",
        &"--interval",
        &"0.2",
    ]);
    assert!(out.status.success(), "{}", describe(&out));
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 3, "three refreshes: {docs:?}");
    assert!(docs.iter().all(|d| d["source"] == "live"));
    assert!(
        num(&docs[2], "checkpoint_age_ms") > num(&docs[0], "checkpoint_age_ms"),
        "refreshes must be fresh figures: {docs:?}"
    );

    // Another user may not ask the daemon.
    let bin = user_copy_of_binary(v.voldir().parent().unwrap());
    let out = as_uid_1000(&bin, &[&"status", &v.voldir()]);
    assert_fails(&out, PERMISSION, &["control.sock", "permission denied"]);

    // A clean unmount removes the socket.
    v.umount();
    assert!(!sock.exists(), "control.sock left behind after unmount");
}

#[test]
fn offline_status_reads_the_files_after_a_crash_and_after_a_clean_unmount() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(NO_CHECKPOINT);
    for i in 0..12 {
        write_file(v.path(&format!("f{i}")), b"offline status");
    }
    v.kill9();

    let sums = checksums(v.voldir());
    let crashed = status_json(v.voldir());
    assert_eq!(crashed["source"], "offline", "{crashed}");
    assert!(crashed["daemon_pid"].is_null(), "{crashed}");
    assert!(num(&crashed, "ring_used_bytes") > 0, "{crashed}");
    assert!(
        num(&crashed, "ops_applied") >= 24 && num(&crashed, "recovery_would_replay") >= 24,
        "12 creates and 12 writes were answered: {crashed}"
    );
    assert_eq!(crashed["ring_end"], "clean", "{crashed}");
    // Through the dead mountpoint too, with a hint to remount.
    let out = smlogfs(&[&"status", &v.mnt()]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("offline") && text.contains("smlogfs mount"),
        "{text}"
    );
    assert_eq!(checksums(v.voldir()), sums, "status changed VOLDIR");

    v.remount();
    assert_eq!(read_file(v.path("f11")), b"offline status");
    v.umount();
    let clean = status_json(v.voldir());
    assert_eq!(clean["source"], "offline");
    assert_eq!(num(&clean, "ops_applied"), 0, "{clean}");
    assert_eq!(num(&clean, "recovery_would_replay"), 0, "{clean}");
    assert!(
        num(&clean, "checkpoint_seq") >= num(&crashed, "next_seq") - 1,
        "{clean}"
    );
}

#[test]
fn status_during_a_raid_rebuild_shows_progress_that_increases() {
    let mut v = Volume::new(&[
        "--size", "1G", "--ring", "16M", "--disks", "3", "--spares", "1",
    ]);
    v.mount(&[]);
    write_file(v.path("kept"), &pattern(7, 3 << 20));
    let start = status_json(v.mnt());
    let raid = &start["raid"];
    assert_eq!(raid["disks"], 3, "{start}");
    assert_eq!(raid["degraded"], false, "{start}");
    assert_eq!(raid["spares"].as_array().map(Vec::len), Some(1), "{start}");

    // What `raid-sim replace VOLDIR --member 1` does while the daemon holds the volume.
    let request = v.voldir().join(raid_sim::REQUEST_FILE);
    let tmp = v.voldir().join("raid.request.tmp");
    fs::write(&tmp, "replace 1\n").unwrap();
    fs::rename(&tmp, &request).unwrap();

    let mut percents: Vec<f64> = Vec::new();
    let mut text_during = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        assert!(
            Instant::now() < deadline,
            "the rebuild did not finish: {percents:?}"
        );
        let doc = status_json(v.mnt());
        let raid = &doc["raid"];
        match raid["rebuild"].get("percent").and_then(Value::as_f64) {
            Some(p) => {
                assert_eq!(raid["rebuild"]["member"], 1, "{doc}");
                assert_eq!(raid["degraded"], true, "{doc}");
                assert_eq!(raid["members"][1]["state"], "rebuilding", "{doc}");
                percents.push(p);
                if text_during.is_none() {
                    let out = smlogfs(&[&"status", &v.voldir()]);
                    text_during = Some(String::from_utf8_lossy(&out.stdout).to_string());
                }
            }
            None if !percents.is_empty() || raid["spares"].as_array().map(Vec::len) == Some(0) => {
                break doc
            }
            None => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        percents.windows(2).all(|w| w[1] >= w[0]),
        "rebuild progress went back: {percents:?}"
    );
    let distinct = percents.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        distinct >= 1,
        "no increasing progress seen during the rebuild: {percents:?}"
    );
    let text = text_during.unwrap();
    assert!(
        text.contains("rebuild: member 1") && text.contains("DEGRADED"),
        "{text}"
    );
    assert_eq!(done["raid"]["degraded"], false, "{done}");
    assert!(done["raid"]["rebuild"].is_null(), "{done}");
    assert_eq!(read_file(v.path("kept")), pattern(7, 3 << 20));
    v.umount_clean();
}

#[test]
fn offline_status_of_a_degraded_raid_reads_through_parity_and_changes_nothing() {
    let mut v = Volume::new(&["--size", "256M", "--ring", "16M", "--disks", "3"]);
    v.mount(&[]);
    write_file(v.path("kept"), b"on three members");
    v.umount();
    let clean = status_json(v.voldir());
    let sums = checksums(v.voldir());

    // Member 0 holds the superblock's chunk: without it, status rebuilds it from parity.
    let member0 = v.voldir().join("member-0.img");
    let aside = v.voldir().parent().unwrap().join("member-0.aside");
    fs::rename(&member0, &aside).unwrap();
    let degraded = status_json(v.voldir());
    assert_eq!(degraded["raid"]["degraded"], true, "{degraded}");
    assert_eq!(
        degraded["raid"]["members"][0]["state"], "missing",
        "{degraded}"
    );
    assert_eq!(
        degraded["checkpoint_seq"], clean["checkpoint_seq"],
        "{degraded}"
    );
    assert_eq!(degraded["next_seq"], clean["next_seq"], "{degraded}");
    let text = String::from_utf8_lossy(&smlogfs(&[&"status", &v.voldir()]).stdout).to_string();
    assert!(
        text.contains("DEGRADED") && text.contains("member 0"),
        "{text}"
    );

    // Two members gone: the members are still shown, with a failure exit.
    let member1 = v.voldir().join("member-1.img");
    let aside1 = v.voldir().parent().unwrap().join("member-1.aside");
    fs::rename(&member1, &aside1).unwrap();
    let out = smlogfs(&[&"status", &v.voldir(), &"--json"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["raid"]["members"][1]["state"], "missing", "{doc}");
    assert!(doc["note"].as_str().unwrap().contains("unusable"), "{doc}");

    // Status wrote nothing: with the members back the array is clean and mounts as before.
    fs::rename(&aside, &member0).unwrap();
    fs::rename(&aside1, &member1).unwrap();
    assert_eq!(
        checksums(v.voldir()),
        sums,
        "offline status changed the member files"
    );
    assert_eq!(status_json(v.voldir())["raid"]["degraded"], false);
    v.remount();
    assert_eq!(read_file(v.path("kept")), b"on three members");
    v.umount();
}

// ----- mount(8) and /etc/fstab ----------------------------------------------------------

fn helper_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/mount.fuse.smlogfs")
}

/// Installs the helper as /sbin/mount.fuse.smlogfs for the life of the value (unless an
/// identical one is there already, which is left alone).
struct InstalledHelper {
    path: PathBuf,
    ours: bool,
}

impl InstalledHelper {
    fn install() -> InstalledHelper {
        let path = PathBuf::from("/sbin/mount.fuse.smlogfs");
        let want = fs::read(helper_path()).unwrap();
        if fs::read(&path).ok().as_deref() == Some(&want[..]) {
            return InstalledHelper { path, ours: false };
        }
        assert!(
            !path.exists(),
            "{} exists with other contents; not replacing it",
            path.display()
        );
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, &want).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, &path).unwrap();
        InstalledHelper { path, ours: true }
    }
}

impl Drop for InstalledHelper {
    fn drop(&mut self) {
        if self.ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn wait_for_daemon_exit(pid: Option<i32>) {
    if let Some(pid) = pid {
        wait_until(READY_TIMEOUT, || !pid_alive(pid))
            .unwrap_or_else(|| panic!("daemon {pid} did not exit after umount"));
    }
}

fn mount_source_of(mnt: &Path) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mounts").unwrap();
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(1) == Some(&mnt.to_str().unwrap())).then(|| PathBuf::from(f[0]))
    })
}

#[test]
fn mount_t_fuse_smlogfs_and_an_fstab_line_mount_and_umount() {
    let v = Volume::new(DEFAULT_MKFS);
    let _helper = InstalledHelper::install();
    let voldir = v.voldir().to_path_buf();
    let mnt = v.mnt().to_path_buf();

    // mount -t fuse.smlogfs VOLDIR MNT -o …, as an administrator types it.
    let out = run(Command::new("mount")
        .args(["-t", "fuse.smlogfs"])
        .arg(&voldir)
        .arg(&mnt)
        .args(["-o", "checkpoint_ms=60000,noatime,nofail,_netdev"])
        .env("SMLOGFS_BIN", smlogfs_bin()));
    assert!(
        out.status.success(),
        "mount -t fuse.smlogfs: {}",
        describe(&out)
    );
    assert!(is_fuse_mount(&mnt));
    assert_eq!(
        mount_source_of(&mnt),
        Some(fs::canonicalize(&voldir).unwrap()),
        "the mount's source is the volume directory"
    );
    write_file(mnt.join("via-mount"), b"mount(8)");
    let pid = v.daemon_pid();
    let out = run(Command::new("umount").arg(&mnt));
    assert!(out.status.success(), "umount: {}", describe(&out));
    wait_for_daemon_exit(pid);
    assert!(!is_fuse_mount(&mnt));

    // An /etc/fstab line (mount -T reads it like /etc/fstab; systemd generates the same).
    let fstab = voldir.parent().unwrap().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# smlogfs test\n{}  {}  fuse.smlogfs  defaults,noauto,_netdev,x-systemd.automount,checkpoint_ms=60000  0  0\n",
            voldir.display(),
            mnt.display()
        ),
    )
    .unwrap();
    let out = run(Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&mnt)
        .env("SMLOGFS_BIN", smlogfs_bin()));
    assert!(
        out.status.success(),
        "mount -T fstab MNT: {}",
        describe(&out)
    );
    assert!(is_fuse_mount(&mnt));
    assert_eq!(read_file(mnt.join("via-mount")), b"mount(8)");
    let live = status_json(&mnt);
    assert_eq!(live["source"], "live", "{live}");
    let pid = v.daemon_pid();
    let out = smlogfs(&[&"umount", &mnt]);
    assert!(out.status.success(), "{}", describe(&out));
    wait_for_daemon_exit(pid);
    v.assert_fsck_clean();
}

#[test]
fn the_mount_helper_passes_daemon_options_and_refuses_unknown_ones() {
    let v = Volume::new(DEFAULT_MKFS);
    let voldir = v.voldir().to_path_buf();
    let mnt = v.mnt().to_path_buf();
    let helper = |opts: &str| {
        run(Command::new(helper_path())
            .arg(&voldir)
            .arg(&mnt)
            .args(["-o", opts])
            .env("SMLOGFS_BIN", smlogfs_bin()))
    };
    let sums = checksums(&voldir);
    let out = helper("rw,checkpoint_ms=60000,bogus_option");
    assert_fails(&out, USAGE, &["bogus_option", "unknown option"]);
    assert!(!is_fuse_mount(&mnt));
    assert_eq!(checksums(&voldir), sums);

    let out = helper("rw,nofail,x-systemd.requires=foo,comment=bar,checkpoint_ms=60000");
    assert!(out.status.success(), "{}", describe(&out));
    assert!(is_fuse_mount(&mnt));
    assert_eq!(status_json(&mnt)["source"], "live");
    let pid = v.daemon_pid();
    let out = smlogfs(&[&"umount", &mnt]);
    assert!(out.status.success(), "{}", describe(&out));
    wait_for_daemon_exit(pid);
}

#[test]
fn an_unreachable_mirror_given_as_a_mount_option_is_named() {
    let v = Volume::new(DEFAULT_MKFS);
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let route = format!("127.0.0.1:{port}");
    let sums = checksums(v.voldir());
    let out = run(Command::new(helper_path())
        .arg(v.voldir())
        .arg(v.mnt())
        .args(["-o", &format!("rw,mirror={route},_netdev")])
        .env("SMLOGFS_BIN", smlogfs_bin()));
    assert_fails(&out, MIRROR, &[&route, "mirror-agent"]);
    assert!(!is_fuse_mount(v.mnt()));
    assert_eq!(
        checksums(v.voldir()),
        sums,
        "a refused mount changed VOLDIR"
    );
}

// ----- errors -----------------------------------------------------------------------------

#[test]
fn a_directory_that_is_not_a_volume_is_named_and_left_alone() {
    let v = Volume::new(DEFAULT_MKFS);
    let empty = v.voldir().parent().unwrap().join("empty");
    fs::create_dir(&empty).unwrap();
    fs::write(empty.join("notes.txt"), b"not a volume").unwrap();
    let sums = checksums(&empty);
    let names = || {
        let mut n: Vec<_> = fs::read_dir(&empty)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        n.sort();
        n
    };
    let before = names();
    let out = smlogfs(&[&"mount", &empty, &v.mnt()]);
    assert_fails(
        &out,
        NOT_A_VOLUME,
        &[empty.to_str().unwrap(), "not a smlogfs volume", "mkfs"],
    );
    let out = smlogfs(&[&"status", &empty]);
    assert_fails(&out, NOT_A_VOLUME, &[empty.to_str().unwrap()]);
    let out = smlogfs(&[&"inspect", &empty]);
    assert_fails(&out, NOT_A_VOLUME, &["not a smlogfs volume"]);
    assert_eq!(checksums(&empty), sums);
    assert_eq!(
        names(),
        before,
        "nothing may be created in a directory that is not a volume"
    );
    assert!(!is_fuse_mount(v.mnt()));
}

#[test]
fn mountpoint_not_a_directory_not_empty_or_already_mounted_is_refused() {
    let mut other = Volume::new(DEFAULT_MKFS);
    let v = Volume::new(DEFAULT_MKFS);
    let sums = checksums(v.voldir());
    let root = v.voldir().parent().unwrap().to_path_buf();

    let file = root.join("a-file");
    fs::write(&file, b"x").unwrap();
    let out = smlogfs(&[&"mount", &v.voldir(), &file]);
    assert_fails(
        &out,
        MOUNTPOINT,
        &[file.to_str().unwrap(), "not a directory"],
    );

    let full = root.join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("inside"), b"x").unwrap();
    let out = smlogfs(&[&"mount", &v.voldir(), &full]);
    assert_fails(&out, MOUNTPOINT, &[full.to_str().unwrap(), "not empty"]);

    let missing = root.join("missing");
    let out = smlogfs(&[&"mount", &v.voldir(), &missing]);
    assert_fails(
        &out,
        MOUNTPOINT,
        &[missing.to_str().unwrap(), "does not exist"],
    );

    // Another volume is mounted there.
    other.mount(NO_CHECKPOINT);
    let out = smlogfs(&[&"mount", &v.voldir(), &other.mnt()]);
    assert_fails(
        &out,
        MOUNTPOINT,
        &[other.mnt().to_str().unwrap(), "already a mountpoint"],
    );
    assert_eq!(
        status_json(other.mnt())["voldir"].as_str(),
        Some(fs::canonicalize(other.voldir()).unwrap().to_str().unwrap())
    );

    assert_eq!(
        checksums(v.voldir()),
        sums,
        "a refused mount changed VOLDIR"
    );
    assert!(v.daemon_pid().is_none(), "no daemon may have started");
    other.umount();
}

#[test]
fn a_second_mount_of_a_volume_held_by_a_live_daemon_is_refused_and_the_first_keeps_serving() {
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(NO_CHECKPOINT);
    write_file(v.path("before"), b"first daemon");
    let pid = v.daemon_pid().expect("daemon.pid");
    let second = v.voldir().parent().unwrap().join("second");
    fs::create_dir(&second).unwrap();
    let sums = checksums(v.voldir());

    let out = smlogfs(&[&"mount", &v.voldir(), &second]);
    assert_fails(
        &out,
        BUSY,
        &[&format!("pid {pid}"), v.mnt().to_str().unwrap(), "umount"],
    );
    assert!(!is_fuse_mount(&second));

    // The first daemon is untouched and keeps serving.
    assert!(pid_alive(pid));
    assert_eq!(v.daemon_pid(), Some(pid));
    assert_eq!(
        checksums(v.voldir()),
        sums,
        "the refused mount changed VOLDIR"
    );
    assert_eq!(read_file(v.path("before")), b"first daemon");
    write_file(v.path("after"), b"still serving");
    assert_eq!(read_file(v.path("after")), b"still serving");
    assert_eq!(
        status_json(v.mnt())["daemon_pid"].as_i64(),
        Some(pid as i64)
    );
    v.umount_clean();
}

#[test]
fn a_ring_too_small_for_the_largest_op_is_refused_by_mkfs() {
    let v = Volume::new(DEFAULT_MKFS);
    let sums = checksums(v.voldir());
    let fresh = v.voldir().parent().unwrap().join("fresh");
    let out = smlogfs(&[&"mkfs", &fresh, &"--ring", &"64K"]);
    assert_fails(&out, USAGE, &["--ring", "65536", "4 MiB", "largest op"]);
    assert!(
        !fresh.exists(),
        "a refused mkfs created {}",
        fresh.display()
    );
    // Over an existing volume, even with --force: refused before anything is written.
    let out = smlogfs(&[&"mkfs", &v.voldir(), &"--ring", &"1M", &"--force"]);
    assert_fails(&out, USAGE, &["--ring", "4 MiB"]);
    assert_eq!(checksums(v.voldir()), sums);
}

#[test]
fn sizes_and_numbers_that_do_not_parse_are_named() {
    let v = Volume::new(DEFAULT_MKFS);
    let sums = checksums(v.voldir());
    for (flag, value) in [
        ("--size", "12Q"),
        ("--ring", "abc"),
        ("--chunk", "1.5M"),
        ("--size", ""),
    ] {
        let out = smlogfs(&[&"mkfs", &v.voldir(), &flag, &value, &"--force"]);
        assert_fails(&out, USAGE, &[flag, &format!("{value:?}")]);
    }
    let out = smlogfs(&[
        &"mount",
        &v.voldir(),
        &v.mnt(),
        &"-o",
        &"checkpoint_ms=soon",
    ]);
    assert_fails(&out, USAGE, &["checkpoint_ms=soon", "NUMBER"]);
    let out = smlogfs(&[&"status", &v.voldir(), &"--watch", &"--interval", &"0"]);
    assert_fails(&out, USAGE, &["--interval"]);
    assert_eq!(checksums(v.voldir()), sums);
    assert!(!is_fuse_mount(v.mnt()));
}

#[test]
fn permission_denied_on_a_backing_file_names_the_file() {
    let v = Volume::new(DEFAULT_MKFS);
    let backing = v.voldir().join("disk.img");
    fs::set_permissions(&backing, fs::Permissions::from_mode(0o600)).unwrap();
    let bin = user_copy_of_binary(v.voldir().parent().unwrap());
    let sums = checksums(v.voldir());

    // Reading commands reach the backing file and name it.
    let out = as_uid_1000(&bin, &[&"status", &v.voldir()]);
    assert_fails(
        &out,
        PERMISSION,
        &[backing.to_str().unwrap(), "permission denied", "owner"],
    );
    let out = as_uid_1000(&bin, &[&"inspect", &v.voldir()]);
    assert_fails(
        &out,
        PERMISSION,
        &[backing.to_str().unwrap(), "permission denied"],
    );
    // mount stops at the first file it cannot open (the lock, root's), and says so.
    let out = as_uid_1000(&bin, &[&"mount", &v.voldir(), &v.mnt()]);
    assert_fails(
        &out,
        PERMISSION,
        &[v.voldir().to_str().unwrap(), "permission denied"],
    );
    assert!(!is_fuse_mount(v.mnt()));
    assert_eq!(checksums(v.voldir()), sums);

    // With VOLDIR handed to the user but the backing file still root's: the backing file.
    let own = |p: &Path| std::os::unix::fs::chown(p, Some(USER_A.0), Some(USER_A.1)).unwrap();
    own(v.voldir());
    for e in fs::read_dir(v.voldir()).unwrap() {
        let p = e.unwrap().path();
        if p != backing {
            own(&p);
        }
    }
    let out = as_uid_1000(&bin, &[&"mount", &v.voldir(), &v.mnt()]);
    assert_fails(
        &out,
        PERMISSION,
        &[backing.to_str().unwrap(), "permission denied"],
    );
    assert!(!is_fuse_mount(v.mnt()));
    assert_eq!(checksums(v.voldir()), sums);
}

#[test]
fn missing_fusermount3_or_dev_fuse_says_how_to_install_it() {
    let v = Volume::new(DEFAULT_MKFS);
    let sums = checksums(v.voldir());
    let out = run(Command::new(smlogfs_bin())
        .arg("mount")
        .arg(v.voldir())
        .arg(v.mnt())
        .env("PATH", "/nonexistent"));
    assert_fails(&out, NO_FUSE, &["fusermount3", "apt-get install -y fuse3"]);

    // No /dev/fuse: a private mount namespace with an empty /dev (the host is untouched).
    let started = Instant::now();
    let out = run(Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /dev && exec \"$0\" mount \"$1\" \"$2\"")
        .arg(smlogfs_bin())
        .arg(v.voldir())
        .arg(v.mnt()));
    assert_fails(&out, NO_FUSE, &["/dev/fuse", "modprobe fuse"]);
    assert!(started.elapsed() < READY_TIMEOUT);
    assert!(!is_fuse_mount(v.mnt()));
    assert_eq!(checksums(v.voldir()), sums);
}

#[test]
fn usage_errors_are_one_line_and_name_the_help_while_help_and_version_still_print() {
    let root = tempfile::tempdir().unwrap();
    let voldir = root.path().join("vol");
    let out = smlogfs(&[&"mkfs", &voldir, &"--bogus"]);
    assert_fails(&out, USAGE, &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "smlogfs: unexpected argument '--bogus' for 'mkfs'; see 'smlogfs mkfs --help'"
    );
    assert!(
        !voldir.exists(),
        "a refused mkfs created {}",
        voldir.display()
    );
    let out = smlogfs(&[&"mkfs", &voldir, &"--forc"]);
    assert_fails(&out, USAGE, &["'--forc'", "did you mean '--force'"]);
    let out = smlogfs(&[&"mount", &voldir]);
    assert_fails(&out, USAGE, &["<MOUNTPOINT>", "'smlogfs mount --help'"]);
    let out = smlogfs(&[&"status", &voldir, &"--interval", &"soon"]);
    assert_fails(
        &out,
        USAGE,
        &["'soon'", "--interval", "'smlogfs status --help'"],
    );
    let out = smlogfs(&[&"mkfs", &voldir, &"--disks", &"four"]);
    assert_fails(&out, USAGE, &["'four'", "--disks"]);
    let out = smlogfs(&[&"format", &voldir]);
    assert_fails(&out, USAGE, &["'format'", "'smlogfs --help'"]);
    let out = smlogfs(&[]);
    assert_fails(
        &out,
        USAGE,
        &["no command given", "mkfs", "'smlogfs --help'"],
    );
    assert!(!voldir.exists());
    for args in [
        &[&"--help" as &dyn AsRef<std::ffi::OsStr>][..],
        &[&"--version"],
        &[&"mkfs", &"--help"],
        &[&"help", &"mount"],
    ] {
        let out = smlogfs(args);
        assert!(out.status.success(), "{}", describe(&out));
        assert!(!out.stdout.is_empty(), "{}", describe(&out));
    }
}

#[test]
fn mkfs_permission_denied_on_the_volume_directory_or_a_backing_file_exits_13() {
    let root = tempfile::tempdir().unwrap();
    fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = user_copy_of_binary(root.path());
    let small = ["--size", "8M", "--ring", "4M", "--disks", "1"];
    let mkfs = |voldir: &Path, extra: &[&str]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"mkfs", &voldir];
        args.extend(small.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
        args.extend(extra.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
        as_uid_1000(&bin, &args)
    };

    // VOLDIR in a directory of root's: nothing is created.
    let roots = root.path().join("roots");
    fs::create_dir(&roots).unwrap();
    let voldir = roots.join("vol");
    let out = mkfs(&voldir, &[]);
    assert_fails(
        &out,
        PERMISSION,
        &[
            voldir.to_str().unwrap(),
            "permission denied",
            "chown",
            "nothing was changed",
        ],
    );
    assert!(!voldir.exists());

    // VOLDIR the user's, but the backing file in it root's: named, and left as it was.
    let voldir = root.path().join("users");
    fs::create_dir(&voldir).unwrap();
    std::os::unix::fs::chown(&voldir, Some(USER_A.0), Some(USER_A.1)).unwrap();
    let backing = voldir.join("disk.img");
    fs::write(&backing, b"root's data").unwrap();
    let sums = checksums(&voldir);
    let out = mkfs(&voldir, &["--force"]);
    assert_fails(
        &out,
        PERMISSION,
        &[
            backing.to_str().unwrap(),
            "permission denied",
            "no volume was created",
        ],
    );
    assert_eq!(checksums(&voldir), sums);

    // A ring file in a directory of root's: named, with what to do next.
    fs::remove_file(&backing).unwrap();
    let ring = roots.join("ring");
    let out = mkfs(&voldir, &["--ring-file", ring.to_str().unwrap()]);
    assert_fails(
        &out,
        PERMISSION,
        &[ring.to_str().unwrap(), "permission denied", "--force"],
    );
    assert!(!ring.exists());
}

/// The mount's readahead (its backing-device setting in sysfs): 4 MiB by default, the
/// `read_ahead_kb=N` option's value when given, and the kernel's own with `read_ahead_kb=0`.
#[test]
fn readahead_is_set_on_the_mount_as_the_option_says() {
    let read_ahead_kb = |mnt: &Path| -> u64 {
        let dev = fs::metadata(mnt).unwrap().dev();
        let path = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            libc::major(dev),
            libc::minor(dev)
        );
        fs::read_to_string(&path).unwrap().trim().parse().unwrap()
    };
    // A daemon thread sets it once the mount answers: wait for that.
    let wait_for_read_ahead = |mnt: &Path, kb: u64| {
        wait_for(
            Duration::from_secs(5),
            &format!("the mount's readahead to be {kb} KiB"),
            || read_ahead_kb(mnt) == kb,
        );
    };
    let mut v = Volume::new(DEFAULT_MKFS);
    v.mount(&[]);
    wait_for_read_ahead(v.mnt(), 4096);
    v.umount();
    v.mount(&["-o", "read_ahead_kb=1024"]);
    wait_for_read_ahead(v.mnt(), 1024);
    v.umount();
    // With 0 the daemon starts no thread to set it: there is no later change to wait for.
    v.mount(&["-o", "read_ahead_kb=0"]);
    assert_eq!(
        read_ahead_kb(v.mnt()),
        128,
        "-o read_ahead_kb=0 keeps the kernel's"
    );
    v.umount();
}

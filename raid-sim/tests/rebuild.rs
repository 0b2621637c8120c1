//! Rebuild: automatic onto a hot spare while serving I/O, onto a replacement path, and
//! resumed from its checkpoint after the rebuilding process is killed.
mod common;

use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use raid_sim::format::{MemberState, Superblock, SB_BYTES};
use raid_sim::{inspect, member_name, spare_name, BlockVolume, RaidOptions};

#[test]
fn spare_takes_over_automatically_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let o = RaidOptions {
        background: true,
        rebuild_checkpoint_stripes: 4,
        rebuild_rate_bytes_per_s: Some(4 << 20),
        ..quiet()
    };
    let vol = create(dir.path(), 4, 16 << 10, 4 << 20, 1, &o);
    let mut rng = Rng(11);
    let mut model = fill(&vol, &mut rng);
    vol.fail_member(1, "test").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut writes_during_rebuild = 0;
    while vol.is_degraded() {
        assert!(Instant::now() < deadline, "rebuild did not finish");
        let at = rng.below(vol.capacity_bytes() / 4096 - 4) * 4096;
        let data = rng.bytes(16384);
        vol.write_at(at, &data).unwrap();
        model[at as usize..at as usize + data.len()].copy_from_slice(&data);
        if vol.rebuild_progress().is_some() {
            writes_during_rebuild += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        writes_during_rebuild > 0,
        "no foreground write overlapped the rebuild"
    );
    assert_reads(&vol, &model);
    assert_scrub_clean(&vol, "after the test");
    drop(vol);
    assert!(!dir.path().join(spare_name(0)).exists());
    let b = std::fs::read(dir.path().join(member_name(1))).unwrap();
    assert_eq!(
        Superblock::decode_slots(&b[..2 * SB_BYTES as usize])
            .unwrap()
            .role,
        1
    );
    let i = inspect(dir.path()).unwrap();
    assert!(!i.degraded() && i.spares.is_empty() && i.rebuild.is_none());
    let vol = raid_sim::open_volume(dir.path()).unwrap();
    assert_reads(vol.as_ref(), &model);
}

#[test]
fn replace_onto_a_path_outside_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("new-disk.img");
    let vol = create(dir.path(), 3, 8 << 10, 1 << 20, 0, &quiet());
    let model = fill(&vol, &mut Rng(12));
    vol.fail_member(2, "test").unwrap();
    vol.start_rebuild(2, Some(&target)).unwrap();
    let mut last = 0;
    vol.run_rebuild(|d, _| last = d).unwrap();
    assert_eq!(last, vol.geometry().stripes);
    assert!(!vol.is_degraded());
    drop(vol);
    let link = std::fs::read_link(dir.path().join(member_name(2))).unwrap();
    assert_eq!(link, std::fs::canonicalize(&target).unwrap());
    // The old member was set aside, and the array assembles clean from the new one.
    assert!(dir
        .path()
        .join(format!("{}.failed", member_name(2)))
        .exists());
    std::fs::remove_file(dir.path().join(member_name(0))).unwrap();
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert_reads(&vol, &model);
}

/// Kill -9 the `raid-sim replace` process mid-rebuild; the next assembly resumes at the
/// checkpointed stripe (not at 0) and completes with identical data.
#[test]
fn rebuild_resumes_after_the_process_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let model;
    let stripes;
    {
        let vol = create(dir.path(), 4, 64 << 10, 24 << 20, 0, &quiet());
        stripes = vol.geometry().stripes;
        model = fill(&vol, &mut Rng(13));
    }
    std::fs::remove_file(dir.path().join(member_name(3))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_raid-sim"))
        .args([
            "replace",
            dir.path().to_str().unwrap(),
            "--member",
            "3",
            "--rate",
            "1M",
        ])
        .args(["--checkpoint-stripes", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed_at = loop {
        assert!(Instant::now() < deadline, "rebuild made no progress");
        if let Ok(i) = inspect(dir.path()) {
            if let Some((3, next)) = i.rebuild {
                if next >= 12 {
                    break next;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let i = inspect(dir.path()).unwrap();
    let (m, resume_at) = i.rebuild.expect("rebuild position survives the kill");
    assert_eq!(m, 3);
    assert!(
        resume_at >= killed_at && resume_at < stripes,
        "{resume_at} of {stripes}"
    );
    assert_eq!(i.members[3].state, "rebuilding");

    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert_eq!(vol.rebuild_progress(), Some((3, resume_at)));
    assert_eq!(vol.member_states()[3], MemberState::Rebuilding);
    // Readable while the rebuild is unfinished.
    assert_reads(&vol, &model);
    let mut first_report = None;
    vol.run_rebuild(|d, _| {
        first_report.get_or_insert(d);
    })
    .unwrap();
    assert!(first_report.unwrap() > resume_at);
    assert!(!vol.is_degraded());
    assert_reads(&vol, &model);
    assert_scrub_clean(&vol, "after the test");
}

/// Kills the child on drop, so that a failed test leaves no process behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn raid_sim(args: &[&str], log: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_raid-sim"))
        .args(args)
        .env("RUST_LOG", log)
        .output()
        .unwrap()
}

/// The number after `"key":` in `json` (the first occurrence).
#[track_caller]
fn json_u64(json: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key}: {json}"))
        + pat.len();
    let digits: String = json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {json}"))
}

/// Kill -9 the `raid-sim replace` process mid-rebuild; a second `raid-sim replace` resumes
/// at the checkpointed stripe, not at 0, and completes. Besides its log, the proof that it
/// did not start over: a chunk of the new member already rebuilt before the kill is
/// damaged in between, and a restart from 0 would have overwritten it; scrub finds it.
#[test]
fn rebuild_killed_under_the_binary_resumes_under_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (model, g) = {
        let vol = create(dir.path(), 4, 64 << 10, 24 << 20, 0, &quiet());
        (fill(&vol, &mut Rng(14)), vol.geometry())
    };
    let out = raid_sim(&["fail", d, "--member", "3"], "warn");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = Command::new(env!("CARGO_BIN_EXE_raid-sim"))
        .args(["replace", d, "--member", "3", "--rate", "1M"])
        .args(["--checkpoint-stripes", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed_at = loop {
        assert!(Instant::now() < deadline, "rebuild made no progress");
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "raid-sim replace ended before it was killed"
        );
        if let Ok(i) = inspect(dir.path()) {
            if let Some((3, next)) = i.rebuild {
                if next >= 12 {
                    break next;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();

    let out = raid_sim(&["status", d, "--json"], "warn");
    assert!(out.status.success());
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(json.contains("\"rebuild\":{\"member\":3,"), "{json}");
    let resume_at = json_u64(&json, "next_stripe");
    assert!(
        resume_at >= killed_at && resume_at < g.stripes,
        "{resume_at} of {}: {json}",
        g.stripes
    );
    assert!(json.contains("\"state\":\"rebuilding\""), "{json}");

    // Damage one block of member 3 that the killed run had already rebuilt.
    let damaged_at = g.member_offset(0, 4096);
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join(member_name(3)))
            .unwrap();
        let mut b = [0u8; 8];
        f.read_exact_at(&mut b, damaged_at + 100).unwrap();
        for x in &mut b {
            *x ^= 0xA5;
        }
        f.write_all_at(&b, damaged_at + 100).unwrap();
    }

    let out = raid_sim(
        &["replace", d, "--member", "3", "--checkpoint-stripes", "4"],
        "info",
    );
    let stdout = stdout_of_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("member 3 rebuilt; the array is clean"),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!(
            "resuming the rebuild of member 3 at stripe {resume_at}/{}",
            g.stripes
        )),
        "{stderr}"
    );
    // Its first progress line is past the checkpoint (a restart would show 4/N).
    let first = stderr
        .lines()
        .find_map(|l| l.split_once("rebuild: ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no progress line: {stderr}"));
    let done: u64 = first.split('/').next().unwrap().parse().expect(first);
    assert!(
        done > resume_at,
        "first progress {first:?}, resumed at {resume_at}"
    );

    let out = raid_sim(&["status", d, "--json"], "warn");
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        json.contains("\"degraded\":false") && json.contains("\"rebuild\":null"),
        "{json}"
    );
    assert_eq!(json.matches("\"state\":\"active\"").count(), 4, "{json}");

    // The block damaged before the resume was left alone: scrub finds it (and only it).
    let out = raid_sim(&["scrub", d], "warn");
    let report = stdout_of_success(&out);
    assert!(
        report.contains(": 1 finding(s), 1 repaired, 0 unrepaired")
            && report.contains("member 3 (")
            && report.contains(&format!("byte {damaged_at} stripe 0:")),
        "a resumed rebuild leaves stripe 0 as the killed run wrote it: {report}"
    );
    let out = raid_sim(&["scrub", d], "warn");
    let report = stdout_of_success(&out);
    assert!(report.contains(": 0 finding(s)"), "{report}");
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert!(!vol.is_degraded());
    assert_reads(&vol, &model);
}

/// A member file deleted, or truncated, under the running volume is noticed: the member
/// is failed, the spare takes over, and the data stays identical.
#[test]
fn member_file_deleted_or_truncated_while_open_triggers_spare_rebuild() {
    for truncate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let o = RaidOptions {
            background: true,
            ..quiet()
        };
        let vol = create(dir.path(), 4, 16 << 10, 2 << 20, 1, &o);
        let model = fill(&vol, &mut Rng(61));
        let victim = dir.path().join(member_name(2));
        if truncate {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&victim)
                .unwrap();
            f.set_len(4096).unwrap();
        } else {
            std::fs::remove_file(&victim).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while dir.path().join(spare_name(0)).exists() || vol.is_degraded() {
            assert!(
                Instant::now() < deadline,
                "spare did not take over (truncate={truncate})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_reads(&vol, &model);
        assert_scrub_clean(&vol, "after the test");
        drop(vol);
        let i = inspect(dir.path()).unwrap();
        assert!(!i.degraded(), "truncate={truncate}");
        let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
        assert_reads(&vol, &model);
    }
}

/// The new member of an unfinished rebuild goes missing: the array assembles degraded
/// without it (nothing else is lost) and a later replace rebuilds from scratch.
#[test]
fn unfinished_rebuild_whose_target_vanished_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let vol = create(dir.path(), 4, 8 << 10, 1 << 20, 0, &quiet());
    let model = fill(&vol, &mut Rng(71));
    vol.fail_member(1, "test").unwrap();
    vol.start_rebuild(1, None).unwrap();
    assert_eq!(vol.rebuild_progress(), Some((1, 0)));
    vol.abandon();
    std::fs::remove_file(dir.path().join(member_name(1))).unwrap();
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert_eq!(vol.rebuild_progress(), None);
    assert!(vol.is_degraded());
    assert_reads(&vol, &model);
    vol.start_rebuild(1, None).unwrap();
    vol.run_rebuild(|_, _| {}).unwrap();
    assert!(!vol.is_degraded());
    assert_reads(&vol, &model);
}

/// The rebuild rate limit bounds how fast a rebuild goes.
#[test]
fn rebuild_rate_limit_is_respected() {
    let dir = tempfile::tempdir().unwrap();
    let rate = 4u64 << 20;
    let o = RaidOptions {
        rebuild_rate_bytes_per_s: Some(rate),
        rebuild_checkpoint_stripes: 16,
        ..quiet()
    };
    let vol = create(dir.path(), 4, 16 << 10, 3 << 20, 0, &o);
    let model = fill(&vol, &mut Rng(81));
    vol.fail_member(0, "test").unwrap();
    vol.start_rebuild(0, None).unwrap();
    let member_data = vol.geometry().stripes * vol.geometry().chunk_bytes;
    let t = Instant::now();
    vol.run_rebuild(|_, _| {}).unwrap();
    let floor = Duration::from_secs_f64(member_data as f64 / rate as f64 * 0.9);
    assert!(t.elapsed() >= floor, "{:?} < {floor:?}", t.elapsed());
    assert!(!vol.is_degraded());
    assert_reads(&vol, &model);
}

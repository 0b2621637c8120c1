//! Rebuild: automatic onto a hot spare while serving I/O, onto a replacement path, and
//! resumed from its checkpoint after the rebuilding process is killed.
mod common;

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
    let rep = vol.scrub(false, |_, _| {}).unwrap();
    assert!(rep.findings.is_empty(), "{}", rep.to_text());
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
    let rep = vol.scrub(false, |_, _| {}).unwrap();
    assert!(rep.findings.is_empty(), "{}", rep.to_text());
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
        let rep = vol.scrub(false, |_, _| {}).unwrap();
        assert!(rep.findings.is_empty(), "{}", rep.to_text());
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

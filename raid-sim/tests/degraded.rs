//! Degraded mode and assembly: missing, failing and bad members.
mod common;

use std::path::Path;

use common::*;
use raid_sim::format::{MemberState, Superblock, SB_BYTES};
use raid_sim::member::{FaultAction, FaultOp, FaultPlan, FaultRule};
use raid_sim::{inspect, member_name, BlockVolume, RaidOptions, VolumeError};

/// The start of each fault test: a fresh array filled from seed 0xfeed, opened over a
/// fault plan. Gives the directory (keep it alive), the model of its contents, the plan and
/// the volume.
fn fresh_faulty_array() -> (
    tempfile::TempDir,
    Vec<u8>,
    std::sync::Arc<FaultPlan>,
    raid_sim::RaidVolume,
) {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_array(dir.path(), 0xfeed);
    let (plan, vol) = open_faulty(dir.path());
    (dir, model, plan, vol)
}

/// A deleted member: reads reconstruct, writes go on, the state survives a reopen.
#[test]
fn missing_member_reads_and_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = fresh_array(dir.path(), 0xfeed);
    std::fs::remove_file(dir.path().join(member_name(1))).unwrap();
    {
        let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
        assert!(vol.is_degraded());
        assert_eq!(vol.member_states()[1], MemberState::Failed);
        assert_reads(&vol, &model);
        let mut rng = Rng(77);
        for _ in 0..100 {
            let at = rng.below(CAP / 4096 - 8) * 4096;
            let n = 4096 * (1 + rng.below(8) as usize);
            let data = rng.bytes(n);
            vol.write_at(at, &data).unwrap();
            model[at as usize..at as usize + data.len()].copy_from_slice(&data);
        }
        assert_reads(&vol, &model);
    }
    let i = inspect(dir.path()).unwrap();
    assert!(i.degraded());
    assert_eq!(i.members[1].problem.as_deref(), Some("missing"));
    let vol = raid_sim::open_volume(dir.path()).unwrap();
    assert!(vol.describe().contains("degraded"));
    assert_reads(vol.as_ref(), &model);
}

/// EIO on reads of one member: the read still returns the data, the member is marked
/// failed and the survivors' superblocks carry a higher event counter.
#[test]
fn read_errors_fail_the_member_and_bump_events() {
    let (dir, model, plan, vol) = fresh_faulty_array();
    let before = vol.events();
    plan.add(FaultRule::new(
        &member_name(2),
        FaultOp::Read,
        FaultAction::Eio,
    ));
    assert_reads(&vol, &model);
    assert_eq!(vol.member_states()[2], MemberState::Failed);
    assert!(vol.events() > before);
    // Writes go on without member 2.
    vol.write_at(0, &[9u8; 65536]).unwrap();
    let mut back = vec![0u8; 65536];
    vol.read_at(0, &mut back).unwrap();
    assert!(back.iter().all(|b| *b == 9));
    drop(vol);
    let i = inspect(dir.path()).unwrap();
    assert_eq!(i.members[2].state, "failed");
    assert!(i.members[0].events.unwrap() > i.members[2].events.unwrap());
}

/// EIO on writes of one member: the write succeeds through parity, the member fails.
#[test]
fn write_errors_fail_the_member_and_data_stays_readable() {
    let (dir, mut model, plan, vol) = fresh_faulty_array();
    plan.add(FaultRule::new(
        &member_name(0),
        FaultOp::Write,
        FaultAction::Eio,
    ));
    let data = Rng(3).bytes(CAP as usize / 2);
    vol.write_at(0, &data).unwrap();
    model[..data.len()].copy_from_slice(&data);
    assert_eq!(vol.member_states()[0], MemberState::Failed);
    assert_reads(&vol, &model);
    drop(vol);
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert_reads(&vol, &model);
}

/// Every kind of damage, for tests that try each.
const ALL_DAMAGE: [Damage; 5] = [
    Damage::ForeignArray,
    Damage::Stale,
    Damage::Truncated,
    Damage::CorruptSuperblock,
    Damage::WrongGeometry,
];

enum Damage {
    ForeignArray,
    Stale,
    Truncated,
    CorruptSuperblock,
    WrongGeometry,
}

fn damage(dir: &Path, k: u32, how: &Damage) -> &'static str {
    let path = dir.join(member_name(k));
    match how {
        Damage::ForeignArray => {
            let other = tempfile::tempdir().unwrap();
            drop(create(other.path(), 4, CHUNK, CAP, 0, &quiet()));
            std::fs::copy(other.path().join(member_name(k)), &path).unwrap();
            "another array"
        }
        Damage::Stale => {
            let old = std::fs::read(&path).unwrap();
            for _ in 0..2 {
                let vol = raid_sim::open_raid(dir, &quiet()).unwrap();
                vol.write_at(0, &[0xAB; 8192]).unwrap();
            }
            std::fs::write(&path, old).unwrap();
            "stale"
        }
        Damage::Truncated => {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len / 2).unwrap();
            "truncated"
        }
        Damage::CorruptSuperblock => {
            let mut b = std::fs::read(&path).unwrap();
            b[100] ^= 0xFF;
            b[SB_BYTES as usize + 100] ^= 0xFF;
            std::fs::write(&path, b).unwrap();
            "corrupt superblock"
        }
        Damage::WrongGeometry => {
            let mut b = std::fs::read(&path).unwrap();
            let mut sb = Superblock::decode_slots(&b[..2 * SB_BYTES as usize]).unwrap();
            sb.geometry.stripes += 1;
            sb.events += 2;
            let slot = sb.slot_offset() as usize;
            b[slot..slot + SB_BYTES as usize].copy_from_slice(&sb.encode());
            std::fs::write(&path, b).unwrap();
            "wrong geometry"
        }
    }
}

/// Each kind of bad member alone: the array assembles degraded without it, names it
/// and why, returns the right data, and never writes the bad file.
#[test]
fn one_bad_member_runs_degraded_and_is_named() {
    for how in ALL_DAMAGE {
        let dir = tempfile::tempdir().unwrap();
        let mut model = fresh_array(dir.path(), 0xfeed);
        let word = damage(dir.path(), 2, &how);
        if matches!(how, Damage::Stale) {
            model[..8192].fill(0xAB);
        }
        let bad_path = dir.path().join(member_name(2));
        let i = inspect(dir.path()).unwrap();
        let problem = i.members[2].problem.clone().unwrap_or_default();
        assert!(problem.contains(word), "{word}: problem was {problem:?}");
        assert_eq!(i.members[2].path, bad_path);
        let bad_before = file_bytes(&bad_path);
        let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
        assert!(vol.is_degraded(), "{word}");
        assert_reads(&vol, &model);
        vol.write_at(0, &[1u8; 4096]).unwrap();
        drop(vol);
        assert_eq!(
            file_bytes(&bad_path),
            bad_before,
            "{word}: the bad member was written"
        );
    }
}

/// Two unusable members: assembly refuses, names both files and reasons, writes nothing.
#[test]
fn two_bad_members_refuse_and_write_nothing() {
    for how in ALL_DAMAGE {
        let dir = tempfile::tempdir().unwrap();
        fresh_array(dir.path(), 0xfeed);
        let word = damage(dir.path(), 1, &how);
        std::fs::remove_file(dir.path().join(member_name(3))).unwrap();
        let before = snapshot(dir.path());
        let err = match raid_sim::open_volume(dir.path()) {
            Ok(_) => panic!("{word}: assembled with two bad members"),
            Err(e) => e,
        };
        assert!(matches!(err, VolumeError::Assembly { .. }), "{word}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&member_name(1)) && msg.contains(word),
            "{word}: {msg}"
        );
        assert!(
            msg.contains(&member_name(3)) && msg.contains("missing"),
            "{msg}"
        );
        assert_eq!(
            snapshot(dir.path()),
            before,
            "{word}: a refused assembly wrote"
        );
    }
}

#[test]
fn empty_or_garbage_directory_is_not_a_volume() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!raid_sim::volume_exists(dir.path()));
    assert!(matches!(
        raid_sim::open_volume(dir.path()),
        Err(VolumeError::NotAVolume { .. })
    ));
    std::fs::write(dir.path().join("member-0.img"), b"garbage").unwrap();
    let msg = raid_sim::open_volume(dir.path()).err().unwrap().to_string();
    assert!(msg.contains("member-0.img"), "{msg}");
}

/// A second process cannot assemble a volume that is open.
#[test]
fn open_volume_is_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let _vol = create(dir.path(), 3, CHUNK, CAP, 0, &quiet());
    assert!(raid_sim::in_use(dir.path()));
    assert!(matches!(
        raid_sim::open_raid(dir.path(), &quiet()),
        Err(VolumeError::InUse { .. })
    ));
    let o = RaidOptions {
        take_over_lock: true,
        ..quiet()
    };
    assert!(raid_sim::open_raid(dir.path(), &o).is_ok());
}

/// A fenced volume (its owner lost the volume to a peer) refuses writes, still reads, and
/// lets go of raid.lock so that the new owner assembles it without forcing the lock.
#[test]
fn fenced_volume_refuses_writes_and_releases_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let vol = create(dir.path(), 3, CHUNK, CAP, 0, &quiet());
    let block = vec![0x5au8; 4096];
    vol.write_at(0, &block).unwrap();
    vol.flush().unwrap();
    vol.fence();
    assert!(matches!(
        vol.write_at(4096, &block),
        Err(VolumeError::Poisoned)
    ));
    assert!(vol.flush().is_err());
    let mut back = vec![0u8; 4096];
    vol.read_at(0, &mut back).unwrap();
    assert_eq!(back, block);
    assert!(
        !raid_sim::in_use(dir.path()),
        "raid.lock still held after fence"
    );
    let peer = raid_sim::open_raid(dir.path(), &quiet()).expect("the peer assembles the volume");
    peer.read_at(0, &mut back).unwrap();
    assert_eq!(back, block);
    drop(vol);
    // The fenced owner's drop wrote nothing: the peer's view is still clean and writable.
    peer.write_at(4096, &block).unwrap();
    peer.flush().unwrap();
}

/// A member that tears a write (part written, then EIO) is failed; the stripe stays
/// readable through parity, and after a reopen the member stays out.
#[test]
fn torn_member_write_fails_the_member_not_the_data() {
    let (dir, mut model, plan, vol) = fresh_faulty_array();
    let g = vol.geometry();
    let stripe = 7;
    let m = g.data_member(stripe, 1);
    let at = g.member_offset(stripe, 0);
    plan.add(
        FaultRule::new(
            &member_name(m),
            FaultOp::Write,
            FaultAction::Tear { keep: 1000 },
        )
        .range(at, at + g.chunk_bytes)
        .times(1),
    );
    let logical = g.logical(stripe, 1, 0);
    let data = Rng(8).bytes(8192);
    vol.write_at(logical, &data).unwrap();
    model[logical as usize..logical as usize + data.len()].copy_from_slice(&data);
    assert_eq!(plan.fired(), 1);
    assert_eq!(vol.member_states()[m as usize], MemberState::Failed);
    assert_reads(&vol, &model);
    drop(vol);
    let i = inspect(dir.path()).unwrap();
    assert_eq!(i.members[m as usize].state, "failed");
    assert!(i.members[m as usize].problem.is_some());
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert_reads(&vol, &model);
}

/// Checksum failures past the limit mark the member failed; every read stays correct.
#[test]
fn checksum_failures_past_the_limit_fail_the_member() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_array(dir.path(), 0xfeed);
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    let g = vol.geometry();
    drop(vol);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(member_name(1)))
        .unwrap();
    let mut damaged = 0;
    for s in 0..g.stripes {
        if g.data_index(s, 1).is_some() && damaged < 6 {
            f.write_all_at(&[0x55; 64], g.member_offset(s, 4096))
                .unwrap();
            damaged += 1;
        }
    }
    let o = RaidOptions {
        csum_error_limit: 3,
        ..quiet()
    };
    let vol = raid_sim::open_raid(dir.path(), &o).unwrap();
    assert_reads(&vol, &model);
    assert_eq!(vol.member_states()[1], MemberState::Failed);
    assert!(
        vol.stats()
            .csum_mismatches
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 4
    );
}

/// An operator failing a second member is refused without harm: the volume keeps serving.
#[test]
fn failing_a_second_member_on_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_array(dir.path(), 0xfeed);
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    vol.fail_member(0, "test").unwrap();
    let err = vol.fail_member(3, "test").unwrap_err();
    assert!(
        err.to_string().contains("member 0 is already failed"),
        "{err}"
    );
    assert_eq!(vol.member_states()[3], MemberState::Active);
    vol.write_at(0, &[5u8; 4096]).unwrap();
    let mut m = model.clone();
    m[..4096].fill(5);
    assert_reads(&vol, &m);
}

/// A member that cannot take a superblock update is failed; the others carry on.
#[test]
fn superblock_write_failure_fails_that_member_only() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_array(dir.path(), 0xfeed);
    let plan = FaultPlan::new();
    plan.add(FaultRule::new(&member_name(3), FaultOp::Write, FaultAction::Eio).range(0, 8192));
    let o = RaidOptions {
        wrap_io: Some(plan.wrapper()),
        ..quiet()
    };
    // Assembly's superblock update hits the fault.
    let vol = raid_sim::open_raid(dir.path(), &o).unwrap();
    assert!(plan.fired() >= 1);
    assert_eq!(vol.member_states()[3], MemberState::Failed);
    assert_reads(&vol, &model);
    vol.write_at(4096, &[7u8; 4096]).unwrap();
    drop(vol);
    let i = inspect(dir.path()).unwrap();
    assert_eq!(i.members[3].state, "failed");
}

/// A corrupt journal header stops assembly with an error naming the journal, writes
/// nothing; removing the journal files lets the next assembly resync and go on.
#[test]
fn corrupt_journal_is_named_and_removing_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_array(dir.path(), 0xfeed);
    let jpath = dir.path().join(raid_sim::JOURNAL_FILE);
    let mut j = std::fs::read(&jpath).unwrap();
    j[40] ^= 1;
    j[4096 + 40] ^= 1;
    std::fs::write(&jpath, &j).unwrap();
    let before = snapshot(dir.path());
    let msg = raid_sim::open_volume(dir.path()).err().unwrap().to_string();
    assert!(
        msg.contains("raid.journal") && msg.contains("checksum"),
        "{msg}"
    );
    assert_eq!(snapshot(dir.path()), before);
    std::fs::remove_file(&jpath).unwrap();
    std::fs::remove_file(dir.path().join(raid_sim::RECORDS_FILE)).unwrap();
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert_reads(&vol, &model);
}

/// Random damage to superblock slots, sizes and names of members never panics assembly:
/// it either assembles (and then returns the right data or an error) or refuses.
#[test]
fn random_damage_never_panics_assembly() {
    use std::os::unix::fs::FileExt;
    for seed in 0..24u64 {
        let dir = tempfile::tempdir().unwrap();
        let model = fresh_array(dir.path(), 0xfeed);
        let mut rng = Rng(900 + seed);
        for _ in 0..1 + rng.below(3) {
            let m = rng.below(4) as u32;
            let path = dir.path().join(member_name(m));
            if !path.exists() {
                continue;
            }
            match rng.below(5) {
                0 => {
                    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    let at = rng.below(2 * SB_BYTES);
                    let n = 1 + rng.below(64) as usize;
                    let junk = rng.bytes(n);
                    f.write_all_at(&junk, at).unwrap();
                }
                1 => {
                    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    f.set_len(rng.below(3 * SB_BYTES)).unwrap();
                }
                2 => {
                    let _ = std::fs::remove_file(&path);
                }
                3 => {
                    let other = dir.path().join(member_name((m + 1) % 4));
                    if other.exists() && path.exists() {
                        std::fs::rename(&path, dir.path().join("tmp.img")).unwrap();
                        std::fs::rename(&other, &path).unwrap();
                        std::fs::rename(dir.path().join("tmp.img"), &other).unwrap();
                    }
                }
                _ => {
                    std::fs::write(&path, rng.bytes(3 * SB_BYTES as usize)).unwrap();
                }
            }
        }
        let _ = inspect(dir.path());
        if let Ok(vol) = raid_sim::open_raid(dir.path(), &quiet()) {
            let mut buf = vec![0u8; 65536];
            for at in (0..CAP).step_by(65536) {
                if vol.read_at(at, &mut buf).is_ok() {
                    assert!(
                        buf[..] == model[at as usize..at as usize + 65536],
                        "seed {seed}: wrong data at {at}"
                    );
                }
            }
        }
    }
}

/// A read that comes back with flipped bits (a transient fault on the path, not on the
/// disk) is caught by its checksum and answered from parity.
#[test]
fn bit_flips_on_the_read_path_are_caught() {
    let (_dir, model, plan, vol) = fresh_faulty_array();
    let g = vol.geometry();
    let at = g.member_offset(4, 0);
    let m = g.data_member(4, 0);
    plan.add(
        FaultRule::new(
            &member_name(m),
            FaultOp::Read,
            FaultAction::FlipBits {
                at: 100,
                mask: 0x10,
            },
        )
        .range(at, at + 4096)
        .times(2),
    );
    // The fast path sees the flip and falls back to the careful path, whose re-read is
    // flipped too: the block is then reconstructed from parity.
    assert_reads(&vol, &model);
    assert_eq!(plan.fired(), 2);
    assert_eq!(
        vol.stats()
            .csum_mismatches
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(!vol.is_degraded());
}

/// A slow member slows reads down but changes nothing else.
#[test]
fn slow_member_is_slow_but_correct() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_array(dir.path(), 0xfeed);
    let plan = FaultPlan::new();
    plan.add(
        FaultRule::new(
            &member_name(1),
            FaultOp::Read,
            FaultAction::Delay(std::time::Duration::from_millis(3)),
        )
        .range(8192, u64::MAX),
    );
    let o = RaidOptions {
        wrap_io: Some(plan.wrapper()),
        ..quiet()
    };
    let vol = raid_sim::open_raid(dir.path(), &o).unwrap();
    let t = std::time::Instant::now();
    assert_reads(&vol, &model);
    let slow_reads = plan.fired();
    assert!(slow_reads > 0);
    assert!(t.elapsed() >= std::time::Duration::from_millis(3 * slow_reads));
    assert!(!vol.is_degraded());
}

//! The write hole: a crash between the data and the parity write of a stripe, then the
//! loss of another member, must not corrupt that member's (untouched) data.
mod common;

use common::*;
use raid_sim::format::DATA_START;
use raid_sim::member::{FaultAction, FaultOp, FaultPlan, FaultRule};
use raid_sim::{member_name, BlockVolume, RaidOptions};
use std::os::unix::fs::FileExt;

fn raw_block(dir: &std::path::Path, member: u32, at: u64) -> Vec<u8> {
    let f = std::fs::File::open(dir.join(member_name(member))).unwrap();
    let mut b = vec![0u8; 4096];
    f.read_exact_at(&mut b, at).unwrap();
    b
}

#[test]
fn crash_between_data_and_parity_then_member_loss_reads_back_correct() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let o = RaidOptions {
        wrap_io: Some(plan.wrapper()),
        journal_sync: true,
        ..quiet()
    };
    let vol = create(dir.path(), 4, 16 << 10, 2 << 20, 0, &o);
    let g = vol.geometry();
    let mut rng = Rng(0xdead);
    let mut model = fill(&vol, &mut rng);
    vol.flush().unwrap();

    let stripe = 5;
    let written = g.data_member(stripe, 0);
    let lost = g.data_member(stripe, 1);
    let at = g.member_offset(stripe, 0);
    // The "process" dies right before the parity write of this stripe.
    halt_before_parity(&plan, &g, stripe);
    let logical = g.logical(stripe, 0, 0);
    let new = rng.bytes(4096);
    let _ = vol.write_at(logical, &new);
    assert!(plan.halted(), "the failpoint did not fire");
    vol.abandon();
    model[logical as usize..logical as usize + 4096].copy_from_slice(&new);

    // The journal holds the interrupted update (what `raid-sim status` shows).
    let j = raid_sim::inspect(dir.path()).unwrap().journal.unwrap();
    assert!(j.pending_records >= 1 && j.dirty_stripes >= 1, "{j:?}");
    // On disk now: new data, old parity — the hole is open.
    assert_eq!(raw_block(dir.path(), written, at), new);
    let mut naive = vec![0u8; 4096];
    for m in (0..g.disks).filter(|m| *m != lost) {
        raid_sim::parity::xor_into(&mut naive, &raw_block(dir.path(), m, at));
    }
    let lost_logical = g.logical(stripe, 1, 0) as usize;
    assert_ne!(
        naive,
        model[lost_logical..lost_logical + 4096],
        "without the journal the lost member would reconstruct wrongly (else the test proves nothing)"
    );

    std::fs::remove_file(dir.path().join(member_name(lost))).unwrap();
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert!(vol.is_degraded());
    assert!(replayed(&vol) >= 1);
    assert_reads(&vol, &model);
    assert!(DATA_START <= at);
}

/// A torn journal record (crash while the journal is written) is ignored at replay; the
/// members were never touched, so the old content stays.
#[test]
fn torn_journal_record_is_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, vol) = create_faulty(dir.path(), 3, 8 << 10, 1 << 20);
    let mut rng = Rng(4);
    let model = fill(&vol, &mut rng);
    vol.flush().unwrap();
    plan.add(FaultRule::new(
        "raid.records",
        FaultOp::Write,
        FaultAction::Tear { keep: 4096 + 100 },
    ));
    plan.add(FaultRule::new("raid.records", FaultOp::Write, FaultAction::HaltBefore).skip(1));
    assert!(vol.write_at(8192, &rng.bytes(8192)).is_err());
    vol.abandon();
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert_eq!(replayed(&vol), 0);
    assert_reads(&vol, &model);
    assert_scrub_clean(&vol, "after the test");
}

/// Power loss that loses the journal's records (the ring is not synced outside strict
/// mode) while member writes reached the disk: the dirty-region bitmap makes assembly
/// resync those stripes, so parity matches the data again.
#[test]
fn lost_records_fall_back_to_dirty_region_resync() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, vol) = create_faulty(dir.path(), 4, 8 << 10, 1 << 20);
    let g = vol.geometry();
    let mut rng = Rng(21);
    let model = fill(&vol, &mut rng);
    vol.flush().unwrap();
    let stripe = 9;
    halt_before_parity(&plan, &g, stripe);
    let logical = g.logical(stripe, 1, 4096);
    let new = rng.bytes(4096);
    let _ = vol.write_at(logical, &new);
    assert!(plan.halted());
    vol.abandon();
    // The records never reached the disk.
    let ring = dir.path().join(raid_sim::RECORDS_FILE);
    let len = std::fs::metadata(&ring).unwrap().len();
    std::fs::write(&ring, vec![0u8; len as usize]).unwrap();

    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert_eq!(replayed(&vol), 0);
    let rep = vol.scrub(false, |_, _| {}).unwrap();
    assert!(
        rep.findings.is_empty(),
        "parity left stale: {}",
        rep.to_text()
    );
    let mut expect = model.clone();
    expect[logical as usize..logical as usize + 4096].copy_from_slice(&new);
    assert_reads(&vol, &expect);
}

/// Crash after a random number of member writes during random writes, optionally lose a
/// member, assemble: blocks of completed writes are new, blocks of the interrupted write
/// are old or new, everything else is untouched, and parity is consistent.
#[test]
fn crash_at_random_points_leaves_every_block_old_or_new() {
    for seed in 0..12u64 {
        let dir = tempfile::tempdir().unwrap();
        let (plan, vol) = create_faulty(dir.path(), 4, 8 << 10, 1 << 20);
        let g = vol.geometry();
        let mut rng = Rng(1000 + seed);
        let mut model = fill(&vol, &mut rng);
        vol.flush().unwrap();
        let skip = rng.below(60);
        plan.add(FaultRule::new(".img", FaultOp::Write, FaultAction::HaltAfter).skip(skip));
        let blocks = vol.capacity_bytes() / 4096;
        let mut interrupted = None;
        for _ in 0..200 {
            let n = 1 + rng.below(12);
            let at = rng.below(blocks - n) * 4096;
            let data = rng.bytes((n * 4096) as usize);
            if vol.write_at(at, &data).is_err() || plan.halted() {
                interrupted = Some((at as usize, data));
                break;
            }
            model[at as usize..at as usize + data.len()].copy_from_slice(&data);
        }
        let (iat, idata) = interrupted.expect("the failpoint fired");
        vol.abandon();
        let lose = (seed % 2 == 1).then(|| rng.below(g.disks as u64) as u32);
        if let Some(m) = lose {
            std::fs::remove_file(dir.path().join(member_name(m))).unwrap();
        }
        let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
        let mut back = vec![0u8; model.len()];
        vol.read_at(0, &mut back).unwrap();
        for b in 0..blocks as usize {
            let r = b * 4096..(b + 1) * 4096;
            let got = &back[r.clone()];
            if r.start >= iat && r.end <= iat + idata.len() {
                let new = &idata[r.start - iat..r.end - iat];
                assert!(
                    got == &model[r.clone()] || got == new,
                    "seed {seed}: block {b} is neither old nor new"
                );
            } else {
                assert_eq!(
                    got,
                    &model[r.clone()],
                    "seed {seed}: untouched block {b} changed (lost {lose:?})"
                );
            }
        }
        assert_scrub_clean(&vol, &format!("seed {seed}"));
    }
}

/// Fresh data (space nobody reads, as smlogfs's direct writes use): stripes the write
/// covers whole skip the journal, the partial stripes at its edges do not. A crash inside a
/// whole stripe leaves its parity resynced at assembly, and the data around the write —
/// in the edge stripes, which share them with it — survives even the loss of a member.
#[test]
fn fresh_whole_stripes_skip_the_journal_and_a_crash_in_them_is_resynced() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, o) = faulty();
    let vol = create(dir.path(), 4, 16 << 10, 2 << 20, 0, &o);
    let g = vol.geometry();
    let mut rng = Rng(77);
    let mut model = fill(&vol, &mut rng);
    vol.flush().unwrap();
    let sb = g.stripe_data_bytes();
    // From the middle of stripe 2 to the middle of stripe 8: stripes 3..=7 whole.
    let start = 2 * sb + sb / 2;
    let end = 8 * sb + sb / 4;
    let new = rng.bytes((end - start) as usize);
    vol.write_fresh_at(start, &new).unwrap();
    model[start as usize..end as usize].copy_from_slice(&new);
    let unlogged = vol
        .stats()
        .unlogged_stripes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(unlogged, 5, "whole stripes written without a record");
    vol.abandon();
    let j = raid_sim::inspect(dir.path()).unwrap().journal.unwrap();
    assert_eq!(
        j.pending_records, 2,
        "only the two edge stripes are journaled: {j:?}"
    );
    assert!(
        j.dirty_stripes >= 7,
        "every stripe written is in a dirty region: {j:?}"
    );
    let vol = raid_sim::open_raid(dir.path(), &o).unwrap();
    assert_reads(&vol, &model);

    // Now a crash right before the parity write of whole stripe 5.
    let stripe = 5;
    halt_before_parity(&plan, &g, stripe);
    let newer = rng.bytes((end - start) as usize);
    let _ = vol.write_fresh_at(start, &newer);
    assert!(plan.halted(), "the failpoint did not fire");
    vol.abandon();
    // Before the fresh range the edge stripe's update was journaled and is replayed; the
    // whole stripes hold anything (nobody reads them); the stripes after 5 never started.
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    let rep = vol.scrub(false, |_, _| {}).unwrap();
    assert!(
        rep.findings.is_empty(),
        "parity and checksums were not resynced: {}",
        rep.to_text()
    );
    let check_outside = |vol: &dyn BlockVolume, what: &str| {
        let mut before = vec![0u8; start as usize];
        vol.read_at(0, &mut before).unwrap();
        assert!(
            before[..] == model[..start as usize],
            "{what}: data before the write"
        );
        let tail = g.capacity_bytes() - end;
        let mut after = vec![0u8; tail as usize];
        vol.read_at(end, &mut after).unwrap();
        assert!(
            after[..] == model[end as usize..],
            "{what}: data after the write"
        );
    };
    check_outside(&vol, "after the crash");
    drop(vol);
    // Lose a member: what lives around the fresh range still reads back.
    std::fs::remove_file(dir.path().join(member_name(g.data_member(2, 0)))).unwrap();
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert!(vol.is_degraded());
    check_outside(&vol, "after the crash and a member loss");
}

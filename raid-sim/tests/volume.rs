//! The RAID-5 volume on healthy members: content, write methods, concurrency, reopen.
mod common;

use std::sync::Arc;

use common::*;
use raid_sim::member::{FaultAction, FaultOp, FaultRule};
use raid_sim::{BlockVolume, BLOCK_BYTES};

/// Random writes of every size and alignment class read back identically, before and after
/// a reopen through the public `open_volume`, and scrub finds parity consistent.
#[test]
fn random_writes_read_back_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x5eed);
    let mut model;
    {
        let vol = create(dir.path(), 5, 16 << 10, 4 << 20, 0, &quiet());
        model = vec![0u8; vol.capacity_bytes() as usize];
        let blocks = vol.capacity_bytes() / BLOCK_BYTES;
        for _ in 0..300 {
            let len_blocks = 1 + rng.below(40);
            let start = rng.below(blocks - len_blocks);
            let data = rng.bytes((len_blocks * BLOCK_BYTES) as usize);
            let at = (start * BLOCK_BYTES) as usize;
            vol.write_at(at as u64, &data).unwrap();
            model[at..at + data.len()].copy_from_slice(&data);
        }
        assert_reads(&vol, &model);
        let s = vol.stats();
        assert!(s.rmw_stripes.load(std::sync::atomic::Ordering::Relaxed) > 0);
        assert!(s.rcw_stripes.load(std::sync::atomic::Ordering::Relaxed) > 0);
        assert_scrub_clean(&vol, "after the test");
    }
    assert!(raid_sim::volume_exists(dir.path()));
    let vol = raid_sim::open_volume(dir.path()).unwrap();
    assert_reads(vol.as_ref(), &model);
    assert!(vol.describe().contains("clean"), "{}", vol.describe());
}

/// A full-stripe write reads nothing: with every data-area read failing, it still
/// succeeds and no member is failed.
#[test]
fn full_stripe_write_needs_no_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, vol) = create_faulty(dir.path(), 5, 8 << 10, 1 << 20);
    let g = vol.geometry();
    plan.add(FaultRule::new(".img", FaultOp::Read, FaultAction::Eio).range(8192, g.csum_start()));
    let mut rng = Rng(7);
    let stripe_bytes = g.stripe_data_bytes() as usize;
    let data = rng.bytes(stripe_bytes * 3);
    vol.write_at(g.stripe_data_bytes() * 2, &data).unwrap();
    assert_eq!(plan.fired(), 0, "a full-stripe write issued a read");
    assert!(!vol.is_degraded());
    plan.clear();
    let mut back = vec![0u8; data.len()];
    vol.read_at(g.stripe_data_bytes() * 2, &mut back).unwrap();
    assert_eq!(back, data);
}

/// Partial-stripe writes pick the method with fewer reads: one block of a 6-disk stripe
/// is read-modify-write (2 reads), four of five chunks is reconstruct-write (1 read).
#[test]
fn partial_writes_choose_fewer_reads() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let vol = create(dir.path(), 6, 8 << 10, 1 << 20, 0, &quiet());
    let g = vol.geometry();
    let mut rng = Rng(9);
    vol.write_at(0, &rng.bytes(4096)).unwrap();
    assert_eq!(vol.stats().rmw_stripes.load(Relaxed), 1);
    assert_eq!(vol.stats().rcw_stripes.load(Relaxed), 0);
    vol.write_at(
        g.stripe_data_bytes(),
        &rng.bytes(4 * g.chunk_bytes as usize),
    )
    .unwrap();
    assert_eq!(vol.stats().rmw_stripes.load(Relaxed), 1);
    assert_eq!(vol.stats().rcw_stripes.load(Relaxed), 1);
    assert_scrub_clean(&vol, "after the test");
}

/// Threads writing interleaved blocks of the same stripes and reading concurrently
/// leave exactly their data and consistent parity.
#[test]
fn concurrent_writers_share_stripes_safely() {
    let dir = tempfile::tempdir().unwrap();
    let vol = Arc::new(create(dir.path(), 4, 16 << 10, 2 << 20, 0, &quiet()));
    let blocks = vol.capacity_bytes() / BLOCK_BYTES;
    let threads = 4u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let vol = Arc::clone(&vol);
            std::thread::spawn(move || {
                let mut rng = Rng(100 + t);
                for round in 0..3u8 {
                    for b in (t..blocks).step_by(threads as usize) {
                        let block = vec![(b as u8) ^ round ^ (t as u8 * 17); BLOCK_BYTES as usize];
                        vol.write_at(b * BLOCK_BYTES, &block).unwrap();
                        if rng.below(4) == 0 {
                            let mut back = vec![0u8; BLOCK_BYTES as usize];
                            vol.read_at(b * BLOCK_BYTES, &mut back).unwrap();
                            assert_eq!(back, block);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for b in 0..blocks {
        let t = b % threads;
        let mut back = vec![0u8; BLOCK_BYTES as usize];
        vol.read_at(b * BLOCK_BYTES, &mut back).unwrap();
        assert!(
            back.iter().all(|x| *x == (b as u8) ^ 2 ^ (t as u8 * 17)),
            "block {b}"
        );
    }
    assert_scrub_clean(&vol, "after the test");
}

/// Out-of-range requests are errors, not panics; unaligned ones work (edge blocks are
/// read and rewritten) though smlogfs never issues them.
#[test]
fn out_of_range_is_an_error_and_unaligned_access_works() {
    let dir = tempfile::tempdir().unwrap();
    let vol = create(dir.path(), 3, 4096, 1 << 20, 0, &quiet());
    let cap = vol.capacity_bytes();
    let mut buf = vec![0u8; 4096];
    assert!(vol.read_at(cap, &mut buf).is_err());
    assert!(vol.read_at(cap - 100, &mut buf[..200]).is_err());
    assert!(vol.write_at(u64::MAX - 10, &buf).is_err());
    assert!(raid_sim::create_volume(
        dir.path(),
        &raid_sim::CreateOptions {
            disks: 2,
            ..Default::default()
        }
    )
    .is_err());
    let mut rng = Rng(2);
    let mut model = fill(&vol, &mut rng);
    for _ in 0..200 {
        let len = 1 + rng.below(10000) as usize;
        let at = rng.below(cap - len as u64) as usize;
        let data = rng.bytes(len);
        vol.write_at(at as u64, &data).unwrap();
        model[at..at + len].copy_from_slice(&data);
        let rlen = 1 + rng.below(9000) as usize;
        let rat = rng.below(cap - rlen as u64) as usize;
        let mut back = vec![0u8; rlen];
        vol.read_at(rat as u64, &mut back).unwrap();
        assert!(
            back[..] == model[rat..rat + rlen],
            "unaligned read at {rat}+{rlen}"
        );
    }
    assert_reads(&vol, &model);
    vol.write_at(7, &[]).unwrap();
}

/// The single-file volume stays what `--disks 1` makes.
#[test]
fn disks_one_is_a_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let vol = raid_sim::create_volume(
        dir.path(),
        &raid_sim::CreateOptions {
            capacity_bytes: 1 << 20,
            disks: 1,
            ..Default::default()
        },
    )
    .unwrap();
    vol.write_at(4096, &[3u8; 4096]).unwrap();
    drop(vol);
    assert!(dir.path().join("disk.img").exists());
    assert!(!dir.path().join("member-0.img").exists());
    let vol = raid_sim::open_volume(dir.path()).unwrap();
    assert!(vol.describe().starts_with("single file"));
}

//! Silent corruption: bytes flipped in 100 random chunks (one member per stripe at most)
//! are detected by their checksums, returned correct and repaired, 100 of 100.
mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering::Relaxed;

use common::*;
use raid_sim::{member_name, BlockVolume, Geometry};

/// Flips 1..=16 bytes inside one random block of (member, stripe)'s chunk.
fn flip(dir: &std::path::Path, g: &Geometry, member: u32, stripe: u64, rng: &mut Rng) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(member_name(member)))
        .unwrap();
    let block = rng.below(g.chunk_bytes / 4096);
    let len = 1 + rng.below(16);
    let off = rng.below(4096 - len);
    let at = g.member_offset(stripe, block * 4096 + off);
    let mut b = vec![0u8; len as usize];
    f.read_exact_at(&mut b, at).unwrap();
    for x in &mut b {
        *x ^= 1 + rng.below(255) as u8;
    }
    f.write_all_at(&b, at).unwrap();
}

fn pick_stripes(rng: &mut Rng, stripes: u64, n: usize) -> BTreeSet<u64> {
    let mut set = BTreeSet::new();
    while set.len() < n {
        set.insert(rng.below(stripes));
    }
    set
}

#[test]
fn hundred_flipped_chunks_are_all_detected_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0xc0ffee);
    let (g, model) = {
        let vol = create(dir.path(), 4, 16 << 10, 6 << 20, 0, &quiet());
        (vol.geometry(), fill(&vol, &mut rng))
    };
    assert!(g.stripes >= 100);

    // Phase 1: data chunks; normal reads find and repair every one.
    for s in pick_stripes(&mut rng, g.stripes, 100) {
        let i = rng.below(g.data_disks() as u64) as u32;
        flip(dir.path(), &g, g.data_member(s, i), s, &mut rng);
    }
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert_reads(&vol, &model);
    let detected = vol.stats().csum_mismatches.load(Relaxed);
    let repaired = vol.stats().repaired_blocks.load(Relaxed);
    assert_eq!((detected, repaired), (100, 100), "detected/repaired of 100");
    assert!(!vol.is_degraded());
    let rep = vol.scrub(true, |_, _| {}).unwrap();
    assert!(
        rep.findings.is_empty(),
        "damage left after reads: {}",
        rep.to_text()
    );

    // Phase 2: any member, parity included; scrub finds and repairs every one.
    drop(vol);
    let mut damaged = BTreeSet::new();
    for s in pick_stripes(&mut rng, g.stripes, 100) {
        let m = rng.below(g.disks as u64) as u32;
        flip(dir.path(), &g, m, s, &mut rng);
        damaged.insert((m, s));
    }
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    let rep = vol.scrub(true, |_, _| {}).unwrap();
    let found: BTreeSet<(u32, u64)> = rep.findings.iter().map(|f| (f.member, f.stripe)).collect();
    assert_eq!(
        found, damaged,
        "scrub must name exactly the damaged member of each stripe"
    );
    assert_eq!(rep.findings.iter().filter(|f| f.repaired).count(), 100);
    let again = vol.scrub(true, |_, _| {}).unwrap();
    assert!(again.findings.is_empty(), "{}", again.to_text());
    assert_reads(&vol, &model);
}

/// Two members damaged in the same block row cannot be repaired: the read is an error
/// naming the member, never wrong data.
#[test]
fn double_damage_in_one_stripe_is_an_error_not_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(5);
    let g = {
        let vol = create(dir.path(), 3, 4096, 1 << 20, 0, &quiet());
        fill(&vol, &mut rng);
        vol.geometry()
    };
    let s = 3;
    flip(dir.path(), &g, g.data_member(s, 0), s, &mut rng);
    flip(dir.path(), &g, g.parity_member(s), s, &mut rng);
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = vol.read_at(g.logical(s, 0, 0), &mut buf).unwrap_err();
    assert!(err.to_string().contains("member-"), "{err}");
    let rep = vol.scrub(true, |_, _| {}).unwrap();
    assert!(rep.unrepaired() >= 1);
}

/// A source block that fails its checksum while another member is rebuilt: that row is
/// lost, and reading it gives an error naming a member — never the garbage rebuilt there.
#[test]
fn damage_found_during_rebuild_is_reported_not_blessed() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(77);
    let (g, model) = {
        let vol = create(dir.path(), 4, 4096, 1 << 20, 0, &quiet());
        (vol.geometry(), fill(&vol, &mut rng))
    };
    let s = 10;
    let lost = g.data_member(s, 0);
    let bad = g.data_member(s, 1);
    flip(dir.path(), &g, bad, s, &mut rng);
    std::fs::remove_file(dir.path().join(member_name(lost))).unwrap();
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    vol.start_rebuild(lost, None).unwrap();
    vol.run_rebuild(|_, _| {}).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = vol.read_at(g.logical(s, 0, 0), &mut buf).unwrap_err();
    assert!(err.to_string().contains("member-"), "{err}");
    // Every other block is intact.
    for b in 0..vol.capacity_bytes() / 4096 {
        let at = b * 4096;
        if g.locate(at).stripe == s && g.locate(at).data_index <= 1 {
            continue;
        }
        vol.read_at(at, &mut buf).unwrap();
        assert!(
            buf[..] == model[at as usize..at as usize + 4096],
            "block {b}"
        );
    }
}

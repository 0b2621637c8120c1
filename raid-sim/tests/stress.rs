//! Everything at once: writers and readers on shared stripes while a member fails, the
//! spare rebuilds in the background and a scrub runs.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use raid_sim::{BlockVolume, RaidOptions};

#[test]
fn writers_readers_rebuild_and_scrub_together() {
    let dir = tempfile::tempdir().unwrap();
    let o = RaidOptions {
        background: true,
        rebuild_rate_bytes_per_s: Some(4 << 20),
        rebuild_checkpoint_stripes: 8,
        ..quiet()
    };
    let vol = Arc::new(create(dir.path(), 4, 8 << 10, 3 << 20, 1, &o));
    let mut initial = fill(vol.as_ref(), &mut Rng(41));
    let blocks = vol.capacity_bytes() / 4096;
    let threads = 3u64;
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let vol = Arc::clone(&vol);
            let stop = Arc::clone(&stop);
            let mut model = initial.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(500 + t);
                let mine: Vec<u64> = (t..blocks).step_by(threads as usize).collect();
                let mut writes = 0u64;
                while !stop.load(Ordering::Relaxed) || writes < 50 {
                    let b = mine[rng.below(mine.len() as u64) as usize];
                    let data = rng.bytes(4096);
                    vol.write_at(b * 4096, &data).unwrap();
                    model[(b * 4096) as usize..(b * 4096 + 4096) as usize].copy_from_slice(&data);
                    writes += 1;
                    let c = mine[rng.below(mine.len() as u64) as usize];
                    let mut back = vec![0u8; 4096];
                    vol.read_at(c * 4096, &mut back).unwrap();
                    assert!(
                        back[..] == model[(c * 4096) as usize..(c * 4096 + 4096) as usize],
                        "thread {t}: block {c} reads back wrong"
                    );
                }
                (mine, model)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    vol.fail_member(2, "stress test").unwrap();
    let rep = vol.scrub(true, |_, _| {}).unwrap();
    assert!(rep.findings.is_empty(), "{}", rep.to_text());
    let deadline = Instant::now() + Duration::from_secs(90);
    while vol.is_degraded() {
        assert!(Instant::now() < deadline, "rebuild did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let (mine, model) = h.join().unwrap();
        for b in mine {
            let r = (b * 4096) as usize..(b * 4096 + 4096) as usize;
            initial[r.clone()].copy_from_slice(&model[r]);
        }
    }
    assert_reads(vol.as_ref(), &initial);
    assert_scrub_clean(&vol, "after the test");
}

//! Helpers shared by the raid-sim integration tests.
#![allow(dead_code)]

use std::path::Path;

use raid_sim::{BlockVolume, CreateOptions, RaidOptions, RaidVolume};

/// xorshift64*: deterministic test data without extra dependencies.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Asserts that a `raid-sim` command exited 0 (showing its output when not); its stdout.
#[track_caller]
pub fn stdout_of_success(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    stdout
}

pub fn quiet() -> RaidOptions {
    RaidOptions {
        background: false,
        journal_sync: false,
        journal_bytes: 8 << 20,
        ..RaidOptions::default()
    }
}

pub fn create(
    dir: &Path,
    disks: u32,
    chunk: u64,
    capacity: u64,
    spares: u32,
    o: &RaidOptions,
) -> RaidVolume {
    let opts = CreateOptions {
        capacity_bytes: capacity,
        disks,
        chunk_bytes: chunk,
        spares,
    };
    raid_sim::create_raid(dir, &opts, o).expect("create")
}

/// Fills the whole volume with random data and returns the model of its content.
pub fn fill(vol: &dyn BlockVolume, rng: &mut Rng) -> Vec<u8> {
    let cap = vol.capacity_bytes() as usize;
    let model = rng.bytes(cap);
    for (i, c) in model.chunks(1 << 20).enumerate() {
        vol.write_at((i << 20) as u64, c).expect("fill write");
    }
    model
}

pub fn assert_reads(vol: &dyn BlockVolume, model: &[u8]) {
    let mut buf = vec![0u8; model.len()];
    for (i, c) in buf.chunks_mut(1 << 20).enumerate() {
        vol.read_at((i << 20) as u64, c).expect("read back");
    }
    let first_bad = buf.iter().zip(model).position(|(a, b)| a != b);
    assert!(
        first_bad.is_none(),
        "content differs first at byte {first_bad:?}"
    );
}

pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// Every regular file of the directory with its content (to prove nothing was written).
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// RaidOptions whose every file's I/O goes through a new, empty fault plan.
pub fn faulty() -> (std::sync::Arc<raid_sim::member::FaultPlan>, RaidOptions) {
    let plan = raid_sim::member::FaultPlan::new();
    let o = RaidOptions {
        wrap_io: Some(plan.wrapper()),
        ..quiet()
    };
    (plan, o)
}

/// A new array in `dir` (`disks` members, no spare) whose I/O goes through the returned
/// fault plan.
pub fn create_faulty(
    dir: &Path,
    disks: u32,
    chunk: u64,
    size: u64,
) -> (std::sync::Arc<raid_sim::member::FaultPlan>, RaidVolume) {
    let (plan, o) = faulty();
    let vol = create(dir, disks, chunk, size, 0, &o);
    (plan, vol)
}

/// The array in `dir` opened with its I/O going through the returned fault plan.
pub fn open_faulty(dir: &Path) -> (std::sync::Arc<raid_sim::member::FaultPlan>, RaidVolume) {
    let (plan, o) = faulty();
    let vol = raid_sim::open_raid(dir, &o).unwrap();
    (plan, vol)
}

/// Scrubs without repairing and asserts that nothing was found; `what` names the case.
pub fn assert_scrub_clean(vol: &RaidVolume, what: &str) {
    let rep = vol.scrub(false, |_, _| {}).expect("scrub");
    assert!(rep.findings.is_empty(), "{what}: {}", rep.to_text());
}

/// Journal records the last assembly replayed.
pub fn replayed(vol: &RaidVolume) -> u64 {
    vol.stats()
        .replayed_records
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Chunk and capacity of the small four-member array most tests start from.
pub const CHUNK: u64 = 16 << 10;
pub const CAP: u64 = 2 << 20;

/// Creates that array in `dir`, fills it with data from `seed`, closes it cleanly and
/// returns the data.
pub fn fresh_array(dir: &Path, seed: u64) -> Vec<u8> {
    let vol = create(dir, 4, CHUNK, CAP, 0, &quiet());
    fill(&vol, &mut Rng(seed))
}

/// The "process" stops writing right before the parity write of `stripe`.
pub fn halt_before_parity(plan: &raid_sim::member::FaultPlan, g: &raid_sim::Geometry, stripe: u64) {
    use raid_sim::member::{FaultAction, FaultOp, FaultRule};
    let at = g.member_offset(stripe, 0);
    plan.add(
        FaultRule::new(
            &raid_sim::member_name(g.parity_member(stripe)),
            FaultOp::Write,
            FaultAction::HaltBefore,
        )
        .range(at, at + g.chunk_bytes),
    );
}

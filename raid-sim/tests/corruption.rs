//! Silent corruption: bytes flipped in 100 random chunks (one member per stripe at most)
//! are detected by their checksums, returned correct, repaired and logged, 100 of 100.
mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use common::*;
use raid_sim::{member_name, BlockVolume, Geometry};

/// Keeps every warning the library logs in this test process (tests run in parallel:
/// each picks its own lines out by its volume directory).
struct Captured(Mutex<Vec<String>>);

impl log::Log for Captured {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
            v.push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

static LOGGED: Captured = Captured(Mutex::new(Vec::new()));

fn capture_log() {
    // Only the first call installs it; the others find it there.
    if log::set_logger(&LOGGED).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

/// The logged warnings that name a file of `dir`.
fn logged_about(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let v = LOGGED.0.lock().unwrap_or_else(|e| e.into_inner());
    v.iter()
        .filter(|l| l.starts_with(&prefix))
        .cloned()
        .collect()
}

/// `(member file, byte)` out of `PATH: block at byte N …` log lines that contain `what`.
fn repairs_in(lines: &[String], what: &str) -> BTreeSet<(String, u64)> {
    lines
        .iter()
        .filter(|l| l.contains(what))
        .map(|l| {
            let (path, rest) = l.split_once(": block at byte ").expect(l);
            let byte = rest.split(|c: char| !c.is_ascii_digit()).next().unwrap();
            (path.to_string(), byte.parse().expect(l))
        })
        .collect()
}

fn raid_sim_scrub(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raid-sim"))
        .args(["scrub", dir.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Flips 1..=16 bytes inside one random block of (member, stripe)'s chunk; returns the
/// member file's byte offset of that block.
fn flip(dir: &Path, g: &Geometry, member: u32, stripe: u64, rng: &mut Rng) -> u64 {
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
    g.member_offset(stripe, block * 4096)
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
    capture_log();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0xc0ffee);
    let (g, model) = {
        let vol = create(dir.path(), 4, 16 << 10, 6 << 20, 0, &quiet());
        (vol.geometry(), fill(&vol, &mut rng))
    };
    assert!(g.stripes >= 100);
    let file_of = |m: u32| dir.path().join(member_name(m)).display().to_string();

    // Phase 1: data chunks; normal reads find, repair and log every one.
    let mut damaged = BTreeSet::new();
    for s in pick_stripes(&mut rng, g.stripes, 100) {
        let i = rng.below(g.data_disks() as u64) as u32;
        let m = g.data_member(s, i);
        damaged.insert((file_of(m), flip(dir.path(), &g, m, s, &mut rng)));
    }
    assert!(logged_about(dir.path()).is_empty());
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    assert_reads(&vol, &model);
    let detected = vol.stats().csum_mismatches.load(Relaxed);
    let repaired = vol.stats().repaired_blocks.load(Relaxed);
    assert_eq!((detected, repaired), (100, 100), "detected/repaired of 100");
    assert!(!vol.is_degraded());
    let lines = logged_about(dir.path());
    let what = "failed its checksum; repaired from parity";
    assert_eq!(
        lines.iter().filter(|l| l.contains(what)).count(),
        100,
        "one repair line per damaged chunk: {lines:#?}"
    );
    assert_eq!(
        repairs_in(&lines, what),
        damaged,
        "the log must name each damaged member file and block offset"
    );

    // `raid-sim scrub` finds no damage left.
    drop(vol);
    let out = raid_sim_scrub(dir.path());
    let report = stdout_of_success(&out);
    assert!(
        report.contains(": 0 finding(s), 0 repaired, 0 unrepaired"),
        "damage left after reads: {report}"
    );

    // Phase 2: any member, parity included; scrub finds and repairs every one.
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
    drop(vol);

    // Phase 3: the same through `raid-sim scrub`: its report names each damaged member
    // and byte, repaired, and its log says so too.
    let mut damaged = BTreeSet::new();
    for s in pick_stripes(&mut rng, g.stripes, 100) {
        let m = rng.below(g.disks as u64) as u32;
        let at = flip(dir.path(), &g, m, s, &mut rng);
        damaged.insert((m, file_of(m), at));
    }
    let out = raid_sim_scrub(dir.path());
    let report = stdout_of_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains(": 100 finding(s), 100 repaired, 0 unrepaired"),
        "{report}"
    );
    let mut reported = BTreeSet::new();
    for l in report.lines().filter(|l| l.starts_with("member ")) {
        assert!(l.ends_with(", repaired"), "{l}");
        let (m, rest) = l["member ".len()..].split_once(" (").expect(l);
        let (path, rest) = rest.split_once(") byte ").expect(l);
        let byte = rest.split(' ').next().unwrap();
        reported.insert((
            m.parse::<u32>().expect(l),
            path.to_string(),
            byte.parse::<u64>().expect(l),
        ));
    }
    assert_eq!(
        reported, damaged,
        "the report must name each damaged member and byte"
    );
    let logged: Vec<String> = stderr.lines().map(|l| l.to_string()).collect();
    let in_log = repairs_in(&logged, "repaired by scrub");
    let want: BTreeSet<(String, u64)> = damaged.iter().map(|(_, p, at)| (p.clone(), *at)).collect();
    // Log lines carry a "[time LEVEL target] " prefix before the member file.
    let in_log: BTreeSet<(String, u64)> = in_log
        .into_iter()
        .map(|(p, at)| (p.rsplit("] ").next().unwrap().to_string(), at))
        .collect();
    assert_eq!(
        in_log, want,
        "the scrub's log must name each repair: {stderr}"
    );
    let out = raid_sim_scrub(dir.path());
    let report = stdout_of_success(&out);
    assert!(report.contains(": 0 finding(s)"), "{report}");
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
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

//! Property tests of the ring: random appends, wraps, reclaims and torn tails.

use super::format::*;
use super::*;
use proptest::prelude::*;

fn new_ring(dir: &std::path::Path, ring_bytes: u64) -> (std::path::PathBuf, StateLog) {
    let path = dir.join("ring");
    StateLog::create(&path, ring_bytes, [7; 16], |_| {}).unwrap();
    let scanned = StateLog::scan_file(&path).unwrap();
    assert!(scanned.entries.is_empty());
    let log = StateLog::open(&path, &scanned).unwrap();
    (path, log)
}

/// Appends one `Accepted` op entry of `data` with no reserve.
fn append(log: &StateLog, data: &[u8]) -> Option<Appended> {
    log.try_append(EntryState::Op(OpState::Accepted), None, &[data], 0)
        .unwrap()
}

fn payload(seq_hint: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64 ^ seq_hint) as u8).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever the sequence of appends and reclaims, a scan finds exactly the entries from
    /// the last reclaim point to the head, in order, with their payloads.
    #[test]
    fn scan_finds_exactly_the_live_entries(
        ops in proptest::collection::vec((0usize..200_000, any::<bool>()), 1..120)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (path, log) = new_ring(dir.path(), MIN_RING_BYTES);
        let mut live: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut appended: Vec<Appended> = Vec::new();
        for (len, reclaim) in ops {
            let data = payload(live.len() as u64, len);
            let a = match append(&log, &data) {
                Some(a) => a,
                None => {
                    // Full: reclaim everything but the newest entry, then it must fit.
                    let keep = *appended.last().unwrap();
                    log.reclaim(keep).unwrap();
                    live.retain(|(s, _)| *s >= keep.seq.0);
                    append(&log, &data).expect("fits after reclaim")
                }
            };
            live.push((a.seq.0, data));
            appended.push(a);
            if reclaim && appended.len() > 2 {
                let to = appended[appended.len() - 2];
                log.reclaim(to).unwrap();
                live.retain(|(s, _)| *s >= to.seq.0);
            }
        }
        let scanned = StateLog::scan_file(&path).unwrap();
        prop_assert_eq!(&scanned.end, &ScanEnd::Clean);
        let found: Vec<(u64, Vec<u8>)> = scanned
            .entries
            .iter()
            .filter(|e| e.header.kind == EntryKind::Op)
            .map(|e| (e.header.seq, e.payload.clone()))
            .collect();
        prop_assert_eq!(found, live);
        prop_assert_eq!(scanned.next_seq, log.stats().next_seq);
        prop_assert_eq!(scanned.used_bytes, log.stats().used_bytes);
    }

    /// A power cut after a flush: every 4 KiB page written since is kept, reverted to what the
    /// media held at the flush (zeroes or an older lap), zeroed, or torn at 512-byte sectors,
    /// independently. The scan recovers exactly the entries before the first one not intact,
    /// never one after a gap, and never calls it corruption.
    #[test]
    fn power_cut_after_the_watermark_recovers_exactly_the_prefix(
        lap in proptest::collection::vec(20_000usize..200_000, 20..40),
        tail in proptest::collection::vec(0usize..20_000, 1..40),
        fate in proptest::collection::vec(0u8..4, 64),
        sectors in any::<u64>(),
        flush_early in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (path, log) = new_ring(dir.path(), MIN_RING_BYTES);
        // An earlier lap or two, reclaimed as it goes, leaves older entries behind the head.
        for (i, len) in lap.iter().enumerate() {
            let a = append(&log, &payload(i as u64, *len)).expect("fits");
            log.reclaim(a).unwrap();
        }
        if flush_early { log.flush().unwrap(); }
        let flushed_seq = log.flush().unwrap();
        let durable = std::fs::read(&path).unwrap();
        let mut fresh = Vec::new();
        for (i, len) in tail.iter().enumerate() {
            let data = payload(1000 + i as u64, *len);
            fresh.push((append(&log, &data).expect("fits"), data));
        }
        drop(log);
        let written = std::fs::read(&path).unwrap();
        let mut cut = written.clone();
        let area = HEADER_AREA_BYTES as usize;
        let pages: std::collections::BTreeSet<usize> = fresh
            .iter()
            .flat_map(|(a, d)| {
                let from = area + a.offset as usize;
                let to = from + ENTRY_HEADER_BYTES + d.len();
                (from / 4096)..to.div_ceil(4096)
            })
            .filter(|p| *p >= 2)
            .collect();
        for (n, page) in pages.iter().enumerate() {
            let r = page * 4096..(page + 1) * 4096;
            match fate[n % fate.len()] {
                0 => {}
                1 => cut[r.clone()].copy_from_slice(&durable[r]),
                2 if durable[r.clone()] == written[r.clone()] || r.start > area => {
                    // Zeroed (a page never written reads as zeroes); a page that also holds
                    // flushed bytes is reverted instead, as the media keeps those.
                    let keeps_flushed = durable[r.clone()].iter().zip(&written[r.clone()]).any(|(a, b)| a == b && *a != 0);
                    if keeps_flushed { cut[r.clone()].copy_from_slice(&durable[r]); } else { cut[r].fill(0); }
                }
                _ => for s in 0..8 {
                    if (sectors >> ((n * 8 + s) % 64)) & 1 == 1 {
                        let r = r.start + s * 512..r.start + (s + 1) * 512;
                        cut[r.clone()].copy_from_slice(&durable[r]);
                    }
                },
            }
        }
        std::fs::write(&path, &cut).unwrap();
        let intact = |a: &Appended, d: &Vec<u8>| {
            let from = area + a.offset as usize;
            let to = from + ENTRY_HEADER_BYTES + d.len();
            cut[from..to] == written[from..to]
        };
        let survivors: Vec<u64> = fresh
            .iter()
            .take_while(|(a, d)| intact(a, d))
            .map(|(a, _)| a.seq.0)
            .collect();
        let scanned = StateLog::scan_file(&path).unwrap();
        prop_assert!(!matches!(scanned.end, ScanEnd::Corrupt { .. }), "{:?}", scanned.end);
        let found: Vec<u64> = scanned
            .entries
            .iter()
            .filter(|e| e.header.seq > flushed_seq && e.header.kind == EntryKind::Op)
            .map(|e| e.header.seq)
            .collect();
        prop_assert_eq!(found, survivors);
        prop_assert!(scanned.entries.iter().any(|e| e.header.seq == flushed_seq), "the flushed tail entry");
    }

    /// Damage to any flushed entry is corruption, at the entry's byte offset.
    #[test]
    fn damage_before_the_watermark_is_refused_at_its_offset(
        n in 3usize..30, victim in 0usize..30, at in 0usize..300,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (path, log) = new_ring(dir.path(), MIN_RING_BYTES);
        let all: Vec<Appended> = (0..n).map(|i| append(&log, &payload(i as u64, 300)).unwrap()).collect();
        log.flush().unwrap();
        drop(log);
        let victim = all[victim % n];
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(HEADER_AREA_BYTES + victim.offset) as usize + at.min(ENTRY_HEADER_BYTES + 299)] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let scanned = StateLog::scan_file(&path).unwrap();
        prop_assert_eq!(scanned.entries.len() as u64, victim.seq.0 - 1);
        match scanned.end {
            ScanEnd::Corrupt { file_offset, .. } => {
                prop_assert_eq!(file_offset, HEADER_AREA_BYTES + victim.offset)
            }
            other => prop_assert!(false, "expected corruption, got {:?}", other),
        }
    }

    /// Cutting the last entry short is a torn tail: the prefix survives, nothing is corrupt.
    #[test]
    fn torn_last_entry_is_a_torn_tail(n in 2usize..40, cut in 1usize..100) {
        let dir = tempfile::tempdir().unwrap();
        let (path, log) = new_ring(dir.path(), MIN_RING_BYTES);
        let mut last = None;
        for i in 0..n {
            last = append(&log, &payload(i as u64, 300));
        }
        drop(log);
        let last = last.unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let at = (HEADER_AREA_BYTES + last.offset) as usize + ENTRY_HEADER_BYTES + cut.min(299);
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let scanned = StateLog::scan_file(&path).unwrap();
        prop_assert_eq!(scanned.entries.len(), n - 1);
        prop_assert_eq!(scanned.end, ScanEnd::TornTail { file_offset: HEADER_AREA_BYTES + last.offset });
    }
}

#[test]
fn damage_in_the_middle_is_corruption_with_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = new_ring(dir.path(), MIN_RING_BYTES);
    let mut all = Vec::new();
    for i in 0..20 {
        all.push(append(&log, &payload(i, 500)).unwrap());
    }
    // Flushed: the watermark covers every entry, so the damage is not a torn tail.
    log.flush().unwrap();
    drop(log);
    let mut bytes = std::fs::read(&path).unwrap();
    let victim = all[7];
    bytes[(HEADER_AREA_BYTES + victim.offset) as usize + 40] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let scanned = StateLog::scan_file(&path).unwrap();
    assert_eq!(scanned.entries.len(), 7);
    match scanned.end {
        ScanEnd::Corrupt {
            file_offset,
            later_seq,
            ..
        } => {
            assert_eq!(file_offset, HEADER_AREA_BYTES + victim.offset);
            assert_eq!(later_seq, all[19].seq.0, "the watermark's seq");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// The append hook sees every entry in seq order (wrap fillers included) exactly as the ring
/// holds it, and the side bytes only with the entry they were appended with.
#[test]
fn the_append_hook_sees_every_entry_and_its_side_bytes() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let (_path, log) = new_ring(dir.path(), MIN_RING_BYTES);
    /// (seq, entry bytes, side bytes) of each entry the hook saw.
    type Seen = Vec<(u64, Vec<u8>, Vec<Vec<u8>>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = seen.clone();
    log.set_append_hook(Box::new(move |e: HookedEntry<'_>| {
        let side = e.side.iter().map(|s| s.to_vec()).collect();
        sink.lock().unwrap().push((e.seq.0, e.bytes.to_vec(), side));
    }));
    let state = EntryState::Op(OpState::Accepted);
    let mut noted = Vec::new();
    // Enough 300 KiB entries, with reclaims, to wrap the area at least once.
    for i in 0..40u64 {
        let data = payload(i, 300_000);
        let a = if i % 3 == 0 {
            let a = log
                .try_append_noting(state, None, &[&data], 0, &[b"side", &i.to_le_bytes()])
                .unwrap()
                .expect("fits");
            noted.push(a.seq.0);
            a
        } else {
            append(&log, &data).expect("fits")
        };
        log.reclaim(a).unwrap();
    }
    let seen = seen.lock().unwrap();
    let seqs: Vec<u64> = seen.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "in seq order, none missing"
    );
    assert!(
        seen.len() > 40,
        "no wrap filler was seen: {} entries",
        seen.len()
    );
    for (seq, bytes, side) in seen.iter() {
        let e = ScannedEntry::from_bytes(bytes).expect("a valid entry as the ring holds it");
        assert_eq!(e.header.seq, *seq);
        if noted.contains(seq) {
            assert_eq!(side.len(), 2, "seq {seq}");
            assert_eq!(side[0], b"side");
        } else {
            assert!(
                side.is_empty(),
                "seq {seq} got side bytes it was not appended with"
            );
        }
    }
}

#[test]
fn truncated_file_keeps_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = new_ring(dir.path(), MIN_RING_BYTES);
    let mut all = Vec::new();
    for i in 0..10 {
        all.push(append(&log, &payload(i, 1000)).unwrap());
    }
    drop(log);
    let cut = HEADER_AREA_BYTES + all[9].offset + 100;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(cut).unwrap();
    let scanned = StateLog::scan_file(&path).unwrap();
    assert_eq!(scanned.entries.len(), 9);
    assert_eq!(scanned.truncated_len, Some(cut));
    assert!(matches!(scanned.end, ScanEnd::TornTail { .. }));
}

#[test]
fn full_ring_refuses_until_reclaimed_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = new_ring(dir.path(), MIN_RING_BYTES);
    let data = payload(1, 64 * 1024);
    let mut all = Vec::new();
    while let Some(a) = append(&log, &data) {
        all.push(a);
    }
    assert!(all.len() > 10);
    // Everything written is still there: nothing was overwritten to make room.
    let scanned = StateLog::scan_file(&path).unwrap();
    assert_eq!(scanned.entries.len(), all.len());
    log.reclaim(all[all.len() / 2]).unwrap();
    assert!(append(&log, &data).is_some());
}

/// Entries whose payloads are copies of ring files (this ring's own, and another volume's),
/// at every alignment: the walk never takes them for entries, even where it stops in the
/// middle of stale bytes holding them.
#[test]
fn ring_copies_inside_payloads_are_never_entries() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other");
    StateLog::create(&other, MIN_RING_BYTES, [9; 16], |_| {}).unwrap();
    let other_log = StateLog::open(&other, &StateLog::scan_file(&other).unwrap()).unwrap();
    for i in 0..50 {
        append(&other_log, &payload(i, 700)).unwrap();
    }
    drop(other_log);
    let foreign = std::fs::read(&other).unwrap();
    let (path, log) = new_ring(dir.path(), MIN_RING_BYTES);
    for i in 0..30 {
        append(&log, &payload(i, 500)).unwrap();
    }
    let own = std::fs::read(&path).unwrap();
    let area = HEADER_AREA_BYTES as usize;
    let mut copies = Vec::new();
    for align in (0..64).chain([100, 1000, 4095, 4096, 4097]) {
        for src in [&own, &foreign] {
            copies.push(append(&log, &src[area - align..area - align + 20_000]).unwrap());
        }
    }
    let clean = StateLog::scan_file(&path).unwrap();
    assert_eq!(clean.end, ScanEnd::Clean);
    assert_eq!(clean.next_seq, log.stats().next_seq);
    // Every copy's entry header lost (its page reverted to zeroes): the walk stops at each
    // one, right before payload bytes full of entries, and keeps none of them.
    drop(log);
    let full = std::fs::read(&path).unwrap();
    for c in copies.iter().step_by(7) {
        let mut cut = full.clone();
        let at = area + c.offset as usize;
        cut[at..at + ENTRY_HEADER_BYTES].fill(0);
        std::fs::write(&path, &cut).unwrap();
        let scanned = StateLog::scan_file(&path).unwrap();
        assert_eq!(scanned.next_seq, c.seq.0, "walk stops at the copy's entry");
        assert_ne!(
            scanned.end,
            ScanEnd::Clean,
            "the later entries are counted as dropped"
        );
        // The same position holding an entry with the expected seq and a later pass, but
        // another volume's (as a copy of that volume's ring could hold): not taken either.
        let foreign = EntryHeader {
            len: ENTRY_HEADER_BYTES as u32,
            seq: c.seq.0,
            op_id: c.seq.0,
            pass: c.pass + 1,
            volume_tag: volume_tag(&[9; 16]),
            kind: EntryKind::Op,
            state: OpState::Applied as u8,
        };
        cut[at..at + ENTRY_HEADER_BYTES].copy_from_slice(&foreign.encode(&[]));
        std::fs::write(&path, &cut).unwrap();
        assert_eq!(StateLog::scan_file(&path).unwrap().next_seq, c.seq.0);
    }
}

/// A torn tail's leftovers (valid entries after the gap) never continue a later walk: the
/// next session writes the same seqs at the same offsets in a new pass, and when its own
/// writes are lost, the older pass's entries there are not taken for them.
#[test]
fn a_dropped_tail_is_never_resurrected_by_the_next_session() {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = new_ring(dir.path(), MIN_RING_BYTES);
    for i in 0..5 {
        append(&log, &payload(i, 100)).unwrap();
    }
    log.flush().unwrap();
    let ghosts: Vec<Appended> = (0..10)
        .map(|i| append(&log, &payload(50 + i, 5000)).unwrap())
        .collect();
    drop(log);
    // Power cut: the first unflushed entry's header is lost, the rest persisted.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (HEADER_AREA_BYTES + ghosts[0].offset) as usize;
    bytes[at..at + ENTRY_HEADER_BYTES].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let scanned = StateLog::scan_file(&path).unwrap();
    assert_eq!(scanned.next_seq, ghosts[0].seq.0);
    let dropped = scanned
        .dropped
        .expect("the entries after the gap are counted");
    assert_eq!((dropped.entries, dropped.first_seq), (9, ghosts[1].seq.0));
    // Next session: the same sizes land at the same offsets with the same seqs; only the
    // first reaches the media.
    let log = StateLog::open(&path, &scanned).unwrap();
    let again: Vec<Appended> = (0..10)
        .map(|i| append(&log, &payload(90 + i, 5000)).unwrap())
        .collect();
    assert_eq!(again[3].offset, ghosts[3].offset);
    assert_eq!(again[3].seq, ghosts[3].seq);
    assert!(again[0].pass > ghosts[0].pass);
    drop(log);
    // Power cut again, nothing flushed: everything after the new first entry reverts to the
    // old session's leftovers, which hold valid entries with exactly the seqs expected there.
    let mut cut = std::fs::read(&path).unwrap();
    let lost = (HEADER_AREA_BYTES + again[1].offset) as usize;
    cut[lost..].copy_from_slice(&bytes[lost..]);
    std::fs::write(&path, &cut).unwrap();
    let scanned = StateLog::scan_file(&path).unwrap();
    assert_eq!(
        scanned.next_seq, again[1].seq.0,
        "no leftover of the old pass resurrected"
    );
    assert!(
        matches!(scanned.end, ScanEnd::TornTail { .. } | ScanEnd::Clean),
        "{:?}",
        scanned.end
    );
}

/// The watermark advances on flush, and only then.
#[test]
fn flush_records_the_watermark_in_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = new_ring(dir.path(), MIN_RING_BYTES);
    let a = append(&log, b"one").unwrap();
    let header = read_header(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(header.durable_seq, 0);
    assert_eq!(log.flush().unwrap(), a.seq.0);
    let header = read_header(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(header.durable_seq, a.seq.0);
    assert_eq!(
        header.durable_offset,
        align_up((ENTRY_HEADER_BYTES + 3) as u64)
    );
}

/// The background committer flushes within its interval, with no flush call.
#[test]
fn the_committer_advances_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = new_ring(dir.path(), MIN_RING_BYTES);
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = calls.clone();
    log.start_committer(
        std::time::Duration::from_millis(20),
        Box::new(move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }),
    )
    .unwrap();
    let a = append(&log, b"later").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while read_header(&std::fs::read(&path).unwrap())
        .unwrap()
        .durable_seq
        < a.seq.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no background commit in 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(log.stats().flushed_seq, a.seq.0);
    assert!(
        calls.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the before-commit work ran"
    );
    drop(log); // joins the thread
}

/// A version 1 ring (written here byte by byte, as the old code did) is scanned with the
/// old rules, and refused for appending.
#[test]
fn a_version_1_ring_is_read_but_not_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1");
    let mut file = vec![0u8; MIN_RING_BYTES as usize];
    let mut h = vec![0u8; 68];
    h[..8].copy_from_slice(b"SMLGRING");
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[16..24].copy_from_slice(&MIN_RING_BYTES.to_le_bytes());
    h[24..40].copy_from_slice(&[7; 16]);
    h[40..48].copy_from_slice(&1u64.to_le_bytes());
    h[56..64].copy_from_slice(&1u64.to_le_bytes());
    let crc = crc32c::crc32c(&h[..64]);
    h[64..68].copy_from_slice(&crc.to_le_bytes());
    file[..68].copy_from_slice(&h);
    let mut at = HEADER_AREA_BYTES as usize;
    for seq in 1..=3u64 {
        let data = payload(seq, 10);
        let mut e = vec![0u8; 32];
        e[..4].copy_from_slice(&0x474F_4C53u32.to_le_bytes());
        e[4..8].copy_from_slice(&(42u32).to_le_bytes());
        e[8..16].copy_from_slice(&seq.to_le_bytes());
        e[16..24].copy_from_slice(&seq.to_le_bytes());
        e[24] = EntryKind::Op as u8;
        e[25] = OpState::Accepted as u8;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&e[..28]), &data);
        e[28..32].copy_from_slice(&crc.to_le_bytes());
        e.extend_from_slice(&data);
        file[at..at + 42].copy_from_slice(&e);
        at += 48;
    }
    std::fs::write(&path, &file).unwrap();
    let scanned = StateLog::scan_file(&path).unwrap();
    assert_eq!(scanned.header.version, RingVersion::V1);
    assert_eq!(scanned.entries.len(), 3);
    assert_eq!(scanned.entries[2].payload, payload(3, 10));
    assert_eq!(scanned.end, ScanEnd::Clean);
    assert!(matches!(
        StateLog::open(&path, &scanned),
        Err(LogError::OldVersion { version: 1, .. })
    ));
}

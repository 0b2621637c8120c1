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
            assert_eq!(later_seq, all[8].seq.0);
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

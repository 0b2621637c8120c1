//! The store's unit tests: appends, resends and gaps, checkpoints, reopening, torn tails,
//! corruption, segment rotation, epochs.

use super::format::*;
use super::*;
use std::fs::{self, OpenOptions};
use std::io::Write;

fn entries(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
    range
        .map(|s| (s, format!("entry {s}").into_bytes()))
        .collect()
}

fn read_all(store: &VolumeStore, after: u64) -> Vec<(u64, Vec<u8>)> {
    let mut cursor = ReadCursor::after(after);
    let mut all = Vec::new();
    loop {
        let chunk = store.read_chunk(&mut cursor, 200, 3).unwrap();
        if chunk.is_empty() {
            return all;
        }
        all.extend(chunk);
    }
}

#[test]
fn append_dedupe_gap_checkpoint_and_reopen() {
    let root = tempfile::tempdir().unwrap();
    let mut store = VolumeStore::open(root.path(), [1; 16], false).unwrap();
    assert_eq!(store.append(&entries(10..20)).unwrap(), Some(19));
    assert_eq!(
        store.append(&entries(15..25)).unwrap(),
        Some(24),
        "duplicates skipped"
    );
    assert!(matches!(
        store.append(&entries(30..31)),
        Err(StoreError::Gap {
            expected: 25,
            got: 30
        })
    ));
    assert_eq!(read_all(&store, 0), entries(10..25));
    assert_eq!(read_all(&store, 21), entries(22..25));
    store.checkpoint(17).unwrap();
    assert_eq!(read_all(&store, 0), entries(18..25));
    drop(store);
    let store = VolumeStore::open(root.path(), [1; 16], false).unwrap();
    assert_eq!(store.next_seq(), Some(25));
    assert_eq!(read_all(&store, 0), entries(18..25));
}

#[test]
fn torn_tail_is_cut_and_mid_corruption_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut store = VolumeStore::open(root.path(), [2; 16], false).unwrap();
    store.append(&entries(1..6)).unwrap();
    let path = store.segments[0].path.clone();
    drop(store);
    // Half a record at the end: a torn write.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&RECORD_MAGIC).unwrap();
    drop(f);
    let store = VolumeStore::open(root.path(), [2; 16], false).unwrap();
    assert_eq!(read_all(&store, 0), entries(1..6));
    drop(store);
    // A flipped byte inside the second record of the only (so last) segment cuts there;
    let mut raw = fs::read(&path).unwrap();
    let second = SEGMENT_HEADER_BYTES + RECORD_HEAD_BYTES + "entry 1".len() + RECORD_HEAD_BYTES;
    raw[second] ^= 0xff;
    fs::write(&path, &raw).unwrap();
    let store = VolumeStore::open(root.path(), [2; 16], false).unwrap();
    assert_eq!(read_all(&store, 0), entries(1..2));
}

#[test]
fn a_full_segment_is_closed_once_synced_or_at_the_maximum() {
    let root = tempfile::tempdir().unwrap();
    let mut store = VolumeStore::open(root.path(), [5; 16], false).unwrap();
    let entry = vec![9u8; 1 << 20];
    let mut seq = 1u64;
    let mut append = |store: &mut VolumeStore, n: usize| {
        for _ in 0..n {
            store.append(&[(seq, entry.clone())]).unwrap();
            seq += 1;
        }
    };
    // Past the target but never synced: the burst stays in one segment, no sync waited.
    append(&mut store, 20);
    assert_eq!(store.segments.len(), 1);
    assert!(store.wants_sync(), "20 MiB unsynced must ask for a sync");
    // Synced: the next append closes it and starts another.
    store.sync().unwrap();
    assert!(!store.wants_sync());
    append(&mut store, 1);
    assert_eq!(store.segments.len(), 2);
    // Without syncs a segment still ends at the maximum.
    append(&mut store, (SEGMENT_MAX_BYTES >> 20) as usize + 2);
    assert_eq!(store.segments.len(), 3);
    assert!(store.segments[1].bytes >= SEGMENT_MAX_BYTES);
}

#[test]
fn several_segments_checkpoint_and_corruption_in_an_earlier_one() {
    let root = tempfile::tempdir().unwrap();
    let mut store = VolumeStore::open(root.path(), [4; 16], false).unwrap();
    let big: Vec<(u64, Vec<u8>)> = (1..=200u64)
        .map(|s| (s, vec![s as u8; 64 * 1024]))
        .collect();
    for batch in big.chunks(10) {
        store.append(batch).unwrap();
        // The background sync between batches: full segments are closed once clean.
        store.sync().unwrap();
    }
    assert!(
        store.segments.len() >= 2,
        "{} segments",
        store.segments.len()
    );
    let first_path = store.segments[0].path.clone();
    let first_last = store.segments[0].last_seq.unwrap();
    drop(store);
    let store = VolumeStore::open(root.path(), [4; 16], false).unwrap();
    let mut cursor = ReadCursor::after(0);
    let mut seqs = Vec::new();
    loop {
        let chunk = store.read_chunk(&mut cursor, 1024 * 1024, 100).unwrap();
        if chunk.is_empty() {
            break;
        }
        seqs.extend(chunk.iter().map(|e| e.0));
    }
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    drop(store);
    // Damage inside the first (not last) segment is corruption, not a torn tail.
    let mut raw = fs::read(&first_path).unwrap();
    raw[SEGMENT_HEADER_BYTES + RECORD_HEAD_BYTES + 5] ^= 1;
    fs::write(&first_path, &raw).unwrap();
    match VolumeStore::open(root.path(), [4; 16], false) {
        Err(StoreError::Corrupt { path, at, .. }) => {
            assert_eq!(path, first_path);
            assert_eq!(at, SEGMENT_HEADER_BYTES as u64);
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
    assert_eq!(fs::read(&first_path).unwrap(), raw, "nothing rewritten");
    // Repair it, then a checkpoint past the first segment deletes that file.
    raw[SEGMENT_HEADER_BYTES + RECORD_HEAD_BYTES + 5] ^= 1;
    fs::write(&first_path, &raw).unwrap();
    let mut store = VolumeStore::open(root.path(), [4; 16], false).unwrap();
    store.checkpoint(first_last + 1).unwrap();
    assert!(!first_path.exists());
    let mut cursor = ReadCursor::after(0);
    let chunk = store.read_chunk(&mut cursor, 1024 * 1024, 1).unwrap();
    assert_eq!(chunk[0].0, first_last + 2);
}

#[test]
fn epoch_only_rises_and_survives_reopen() {
    let root = tempfile::tempdir().unwrap();
    let mut store = VolumeStore::open(root.path(), [3; 16], false).unwrap();
    store.raise_epoch(5).unwrap();
    assert!(matches!(
        store.raise_epoch(4),
        Err(StoreError::Fenced { current: 5, .. })
    ));
    drop(store);
    assert_eq!(
        VolumeStore::open(root.path(), [3; 16], false)
            .unwrap()
            .epoch(),
        5
    );
}

#[test]
fn durable_follows_syncs_checkpoints_and_reopening() {
    let root = tempfile::tempdir().unwrap();
    let mut store = VolumeStore::open(root.path(), [6; 16], false).unwrap();
    store.append(&entries(1..11)).unwrap();
    assert_eq!(store.durable_through(), None, "written, not synced");
    // A sync outside the lock covers what was held when its handle was taken, even when
    // more came meanwhile (then the store stays dirty).
    let handle = store.sync_handle().expect("dirty");
    store.append(&entries(11..16)).unwrap();
    handle.file.sync_data().unwrap();
    store.synced(&handle);
    assert_eq!(store.durable_through(), Some(10));
    assert!(store.sync_handle().is_some(), "11..=15 still unsynced");
    store.sync().unwrap();
    assert_eq!(store.durable_through(), Some(15));
    // A checkpoint beyond what is held covers it: the node's volume has those entries.
    store.append(&entries(16..18)).unwrap();
    store.checkpoint(20).unwrap();
    assert_eq!(store.durable_through(), Some(20));
    assert_eq!(store.held_through(), Some(20));
    store.append(&entries(21..25)).unwrap();
    assert_eq!(store.durable_through(), Some(20));
    drop(store);
    // Reopening syncs the last segment first (an agent crash leaves it in the page cache).
    let store = VolumeStore::open(root.path(), [6; 16], false).unwrap();
    assert_eq!(store.durable_through(), Some(24));
    let mut fsynced = VolumeStore::open(root.path(), [6; 16], true).unwrap();
    fsynced.append(&entries(25..27)).unwrap();
    assert_eq!(
        fsynced.durable_through(),
        Some(26),
        "--fsync: durable at once"
    );
}

//! The read-only view (`open_read_only`): reads what a mount would read, reconstructing a
//! missing member or a corrupt block and replaying pending journal records in memory,
//! while writing nothing and taking no lock.
mod common;

use std::os::unix::fs::FileExt;

use common::*;
use raid_sim::{member_name, BlockVolume, VolumeError};

#[test]
fn a_missing_member_is_reconstructed_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_array(dir.path(), 0xbead);
    std::fs::remove_file(dir.path().join(member_name(2))).unwrap();
    let before = snapshot(dir.path());
    let view = raid_sim::open_read_only(dir.path()).unwrap();
    assert!(view.describe().contains("degraded"), "{}", view.describe());
    assert_reads(view.as_ref(), &model);
    assert!(
        view.write_at(0, &[0u8; 4096]).is_err(),
        "a read-only view wrote"
    );
    drop(view);
    assert_eq!(snapshot(dir.path()), before, "the read-only view wrote");
}

#[test]
fn it_reads_while_the_array_is_held_and_repairs_a_corrupt_block_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_array(dir.path(), 0xbead);
    let g = raid_sim::inspect(dir.path()).unwrap().geometry;
    let loc = g.locate(5 * 4096);
    let path = dir.path().join(member_name(loc.member));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(
        &[0x5a; 16],
        g.member_offset(loc.stripe, loc.chunk_offset) + 100,
    )
    .unwrap();
    let held = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    let view = raid_sim::open_read_only(dir.path()).unwrap();
    assert_reads(view.as_ref(), &model);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        on_disk,
        "the view repaired on disk"
    );
    drop(held);
}

/// A crash after the journal record and before the member write: the view replays the
/// record in memory, as the next assembly would on disk.
#[test]
fn pending_journal_records_are_laid_over_the_members() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = fresh_array(dir.path(), 0xbead);
    let vol = raid_sim::open_raid(dir.path(), &quiet()).unwrap();
    let g = vol.geometry();
    let data = Rng(9).bytes(8192);
    vol.write_at(0, &data).unwrap();
    model[..data.len()].copy_from_slice(&data);
    vol.abandon();
    let pending = raid_sim::inspect(dir.path()).unwrap().journal.unwrap();
    assert!(pending.pending_records > 0, "{pending:?}");
    // Undo the member write the record describes.
    let loc = g.locate(0);
    let path = dir.path().join(member_name(loc.member));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0u8; 8192], g.member_offset(loc.stripe, 0))
        .unwrap();
    let view = raid_sim::open_read_only(dir.path()).unwrap();
    assert_reads(view.as_ref(), &model);
}

#[test]
fn two_lost_members_are_refused_with_the_point_first() {
    let dir = tempfile::tempdir().unwrap();
    fresh_array(dir.path(), 0xbead);
    for k in [0, 3] {
        std::fs::remove_file(dir.path().join(member_name(k))).unwrap();
    }
    let err = match raid_sim::open_read_only(dir.path()) {
        Ok(_) => panic!("a view of an array missing two members"),
        Err(e) => e,
    };
    assert!(matches!(err, VolumeError::Assembly { .. }), "{err}");
    let msg = err.to_string();
    let detail = msg.split_once(": ").map(|x| x.1).unwrap_or("");
    assert!(
        detail.starts_with(
            "members 0 and 3 are unusable (member-0.img: missing; member-3.img: missing)"
        ),
        "{msg}"
    );
    assert!(msg.contains("put back or repair"), "{msg}");
    assert!(!msg.contains("disks") && !msg.contains("chunk"), "{msg}");
    assert!(raid_sim::is_raid(dir.path()));
}

//! The block volume layer of smlogfs: a small trait (`BlockVolume`) with a single-file
//! implementation and a userspace RAID-5 over backing files.
//!
//! Callers address the volume in bytes; smlogfs only ever issues reads and writes whose
//! offset and length are multiples of `BLOCK_BYTES`.
#![deny(unsafe_code)]

mod array;
mod assemble;
mod codec;
mod files;
pub mod format;
mod inspect;
mod journal;
mod journal_format;
pub mod layout;
pub mod member;
pub mod parity;
mod raid;
mod read;
mod reader;
mod rebuild;
mod scrub;
mod single;
mod volume;
mod worker;
mod write;

pub use array::{RaidOptions, Stats};
pub use files::{in_use, member_name, spare_name};
pub use inspect::{inspect, Inspection, JournalReport, MemberReport};
pub use journal::{JOURNAL_FILE, RECORDS_FILE};
pub use layout::Geometry;
pub use raid::RaidVolume;
pub use reader::{is_raid, open_read_only, RaidReader};
pub use scrub::{
    scrub_progress, ScrubFinding, ScrubReport, SCRUB_PROGRESS_FILE, SCRUB_REPORT_FILE,
};
pub use single::SingleFileVolume;
pub use volume::{BlockVolume, CreateOptions, VolumeError, BLOCK_BYTES};
pub use worker::REQUEST_FILE;

use std::path::Path;

/// True when `dir` already holds the backing files of a volume.
pub fn volume_exists(dir: &Path) -> bool {
    single::SingleFileVolume::exists(dir) || files::raid_files_exist(dir)
}

/// Creates the backing files of a new volume in `dir`: one file for `disks == 1`, a RAID-5
/// over `disks` members (plus `spares`) for `disks >= 3`.
pub fn create_volume(
    dir: &Path,
    opts: &CreateOptions,
) -> Result<Box<dyn BlockVolume>, VolumeError> {
    match opts.disks {
        1 => Ok(Box::new(SingleFileVolume::create(
            dir,
            opts.capacity_bytes,
        )?)),
        n if n >= layout::MIN_DISKS => {
            Ok(Box::new(create_raid(dir, opts, &RaidOptions::default())?))
        }
        n => Err(VolumeError::Invalid {
            path: dir.to_path_buf(),
            detail: format!("--disks {n}: use 1 (a single backing file) or 3 or more (RAID-5)"),
        }),
    }
}

/// Opens (assembles) the volume whose backing files are in `dir`.
pub fn open_volume(dir: &Path) -> Result<Box<dyn BlockVolume>, VolumeError> {
    if SingleFileVolume::exists(dir) {
        return Ok(Box::new(SingleFileVolume::open(dir)?));
    }
    if files::raid_files_exist(dir) {
        return Ok(Box::new(open_raid(dir, &RaidOptions::default())?));
    }
    Err(VolumeError::NotAVolume {
        path: dir.to_path_buf(),
        detail: format!(
            "no backing file ({} or member-K.img) found",
            single::FILE_NAME
        ),
    })
}

/// Creates a RAID-5 volume with explicit options.
pub fn create_raid(
    dir: &Path,
    opts: &CreateOptions,
    raid: &RaidOptions,
) -> Result<RaidVolume, VolumeError> {
    assemble::create(dir, opts, raid)
}

/// Assembles the RAID-5 volume in `dir` with explicit options.
pub fn open_raid(dir: &Path, raid: &RaidOptions) -> Result<RaidVolume, VolumeError> {
    assemble::open(dir, raid)
}

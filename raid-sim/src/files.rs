//! The files of a RAID volume directory: member and spare names, the lock, and the
//! creation and checksum table of one member file.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::format::{
    block_crc, decode_csum_page, encode_csum_page, round_up_page, Superblock, CSUMS_PER_PAGE,
    PAGE_BYTES,
};
use crate::layout::Geometry;
use crate::member::{FileMember, IoWrapper, MemberIo};
use crate::volume::{VolumeError, BLOCK_BYTES};

pub const LOCK_FILE: &str = "raid.lock";

pub fn member_name(k: u32) -> String {
    format!("member-{k}.img")
}

pub fn spare_name(j: u32) -> String {
    format!("spare-{j}.img")
}

pub(crate) fn wrap(path: &Path, file: File, wrap: Option<&IoWrapper>) -> Box<dyn MemberIo> {
    let io: Box<dyn MemberIo> = Box::new(FileMember::new(file));
    match wrap {
        Some(w) => w(path, io),
        None => io,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    Member(u32),
    Spare(u32),
}

fn parse_name(name: &str) -> Option<FileKind> {
    let num = |s: &str| -> Option<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 6 {
            None
        } else {
            s.parse().ok()
        }
    };
    if let Some(rest) = name
        .strip_prefix("member-")
        .and_then(|r| r.strip_suffix(".img"))
    {
        return num(rest).map(FileKind::Member);
    }
    if let Some(rest) = name
        .strip_prefix("spare-")
        .and_then(|r| r.strip_suffix(".img"))
    {
        return num(rest).map(FileKind::Spare);
    }
    None
}

pub(crate) fn list_files(dir: &Path) -> Vec<(PathBuf, FileKind)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(k) = parse_name(&name) {
                out.push((e.path(), k));
            }
        }
    }
    out.sort_by_key(|(_, k)| match k {
        FileKind::Member(i) => (0, *i),
        FileKind::Spare(i) => (1, *i),
    });
    out
}

pub(crate) fn raid_files_exist(dir: &Path) -> bool {
    !list_files(dir).is_empty()
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> VolumeError + '_ {
    move |e| VolumeError::io(path, e)
}

/// Opens an existing file for reading and writing (a member, a spare, a single-file volume).
pub(crate) fn open_rw(path: &Path) -> Result<File, VolumeError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))
}

/// Creates a file for reading and writing, or empties an existing one, and sizes it to `len`.
pub(crate) fn create_sized(path: &Path, len: u64) -> Result<File, VolumeError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    file.set_len(len).map_err(io_err(path))?;
    Ok(file)
}

/// The length in bytes of `file`, opened from `path`.
pub(crate) fn file_len(file: &File, path: &Path) -> Result<u64, VolumeError> {
    Ok(file.metadata().map_err(io_err(path))?.len())
}

pub(crate) fn take_lock(dir: &Path) -> Result<File, VolumeError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(VolumeError::InUse { path }),
        Err(std::fs::TryLockError::Error(e)) => {
            // A file system without flock: go on, unprotected against a second opener.
            log::warn!(
                "{}: cannot lock ({e}); not guarding against a second opener",
                path.display()
            );
            Ok(f)
        }
    }
}

/// True when another process holds the volume open.
pub fn in_use(dir: &Path) -> bool {
    let path = dir.join(LOCK_FILE);
    match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Creates one member or spare file: sized, checksum area for all-zero blocks, superblock.
pub(crate) fn create_member_file(
    path: &Path,
    geometry: &Geometry,
    sb: &Superblock,
) -> Result<(), VolumeError> {
    let file = create_sized(path, geometry.member_bytes())?;
    write_zero_csums(
        &FileMember::new(file.try_clone().map_err(io_err(path))?),
        geometry,
    )
    .map_err(io_err(path))?;
    use std::os::unix::fs::FileExt;
    file.write_all_at(&sb.encode(), sb.slot_offset())
        .and_then(|_| file.sync_all())
        .map_err(io_err(path))
}

/// Writes checksum pages describing all-zero blocks (a new, sparse member).
pub(crate) fn write_zero_csums(io: &dyn MemberIo, g: &Geometry) -> std::io::Result<()> {
    let zero = block_crc(&[0u8; BLOCK_BYTES as usize]);
    let start = round_up_page(g.csum_start());
    let pages = g.csum_pages();
    let mut buf = Vec::with_capacity((pages.min(256) * PAGE_BYTES) as usize);
    let mut first_page = 0;
    for page in 0..pages {
        let lo = page * CSUMS_PER_PAGE;
        let hi = (lo + CSUMS_PER_PAGE).min(g.blocks_per_member());
        buf.extend(encode_csum_page(page, &vec![zero; (hi - lo) as usize]));
        if buf.len() as u64 >= 256 * PAGE_BYTES || page + 1 == pages {
            io.write_at(start + first_page * PAGE_BYTES, &buf)?;
            buf.clear();
            first_page = page + 1;
        }
    }
    Ok(())
}

/// Loads a member's checksum table; pages that fail their own checksum are recomputed
/// from the data (for blocks below `valid_blocks`).
pub(crate) fn load_csums(
    path: &Path,
    io: &dyn MemberIo,
    g: &Geometry,
    valid_blocks: u64,
) -> Result<Vec<u32>, VolumeError> {
    let start = round_up_page(g.csum_start());
    let pages = g.csum_pages();
    let mut area = vec![0u8; (pages * PAGE_BYTES) as usize];
    io.read_at(start, &mut area).map_err(io_err(path))?;
    let mut out = Vec::with_capacity(g.blocks_per_member() as usize);
    let mut block = vec![0u8; BLOCK_BYTES as usize];
    for page in 0..pages {
        let lo = page * CSUMS_PER_PAGE;
        let hi = (lo + CSUMS_PER_PAGE).min(g.blocks_per_member());
        let raw = &area[(page * PAGE_BYTES) as usize..((page + 1) * PAGE_BYTES) as usize];
        match decode_csum_page(page, raw, (hi - lo) as usize) {
            Some(entries) => out.extend(entries),
            None => {
                log::warn!(
                    "{}: checksum page {page} (byte {}) is corrupt; recomputing its {} entries from the data",
                    path.display(),
                    start + page * PAGE_BYTES,
                    hi - lo
                );
                for b in lo..hi {
                    if b >= valid_blocks {
                        out.push(0);
                        continue;
                    }
                    let stripe = b / g.blocks_per_chunk();
                    let off = (b % g.blocks_per_chunk()) * BLOCK_BYTES;
                    io.read_at(g.member_offset(stripe, off), &mut block)
                        .map_err(io_err(path))?;
                    out.push(block_crc(&block));
                }
            }
        }
    }
    Ok(out)
}

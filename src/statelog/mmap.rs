//! The only unsafe code of smlogfs: the shared, writable mapping of the ring file.
//!
//! Hazards, written down once:
//! * Another process truncating the ring file while it is mapped makes our next access to
//!   the lost pages raise SIGBUS. smlogfs holds the volume lock for the daemon's lifetime and
//!   documents that the ring file must not be touched while mounted; recovery scans with
//!   plain reads, never through a mapping, so a short file found at mount is an error, not
//!   a crash.
//! * The mapping is shared (MAP_SHARED): stores land in the page cache and survive `kill -9`
//!   of this process; they reach the disk on `msync` (flush) or kernel writeback.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use memmap2::MmapMut;

pub struct RingMap {
    map: MmapMut,
}

impl RingMap {
    /// Maps all of `file`, which the caller has sized to the ring's full length.
    pub fn map(file: &File) -> io::Result<RingMap> {
        // SAFETY: the file is opened read-write by this process, is not truncated while
        // mapped (the volume lock keeps other smlogfs processes away; see the module
        // comment for outside processes), and every access goes through the bounds-checked
        // slice returned by `bytes`/`bytes_mut`.
        let map = unsafe { MmapMut::map_mut(file)? };
        Ok(RingMap { map })
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map[..]
    }

    /// msync(MS_SYNC) of `[offset, offset + len)`.
    pub fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.map.flush_range(offset, len)
    }
}

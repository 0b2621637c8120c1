//! A volume made of one backing file: the simplest `BlockVolume`, used by tests and by
//! `smlogfs mkfs --disks 1`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::files::{create_sized, file_len, open_rw};
use crate::volume::{BlockVolume, VolumeError, BLOCK_BYTES};

pub(crate) const FILE_NAME: &str = "disk.img";

pub struct SingleFileVolume {
    path: PathBuf,
    file: File,
    capacity_bytes: u64,
    /// Set after a failed write or flush: the volume refuses further writes (fail stop).
    poisoned: AtomicBool,
}

impl SingleFileVolume {
    pub(crate) fn exists(dir: &Path) -> bool {
        dir.join(FILE_NAME).exists()
    }

    pub fn create(dir: &Path, capacity_bytes: u64) -> Result<Self, VolumeError> {
        let path = dir.join(FILE_NAME);
        if capacity_bytes == 0 || !capacity_bytes.is_multiple_of(BLOCK_BYTES) {
            return Err(VolumeError::Invalid {
                path,
                detail: format!(
                    "size {capacity_bytes} is not a positive multiple of {BLOCK_BYTES}"
                ),
            });
        }
        let file = create_sized(&path, capacity_bytes)?;
        Ok(SingleFileVolume {
            path,
            file,
            capacity_bytes,
            poisoned: AtomicBool::new(false),
        })
    }

    pub fn open(dir: &Path) -> Result<Self, VolumeError> {
        let path = dir.join(FILE_NAME);
        let file = open_rw(&path)?;
        let len = file_len(&file, &path)?;
        let capacity_bytes = len - len % BLOCK_BYTES;
        Ok(SingleFileVolume {
            path,
            file,
            capacity_bytes,
            poisoned: AtomicBool::new(false),
        })
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), VolumeError> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(end) if end <= self.capacity_bytes => Ok(()),
            _ => Err(VolumeError::OutOfRange {
                offset,
                len: len as u64,
                capacity_bytes: self.capacity_bytes,
            }),
        }
    }
}

impl BlockVolume for SingleFileVolume {
    fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.check_range(offset, buf.len())?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| VolumeError::io(&self.path, e))
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(VolumeError::Poisoned);
        }
        self.check_range(offset, data.len())?;
        self.file.write_all_at(data, offset).map_err(|e| {
            self.poisoned.store(true, Ordering::Release);
            VolumeError::io(&self.path, e)
        })
    }

    fn flush(&self) -> Result<(), VolumeError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(VolumeError::Poisoned);
        }
        self.file.sync_data().map_err(|e| {
            self.poisoned.store(true, Ordering::Release);
            VolumeError::io(&self.path, e)
        })
    }

    fn fence(&self) {
        // No lock file of its own (the caller's volume lock guards it): refusing writes is all.
        self.poisoned.store(true, Ordering::Release);
    }

    fn describe(&self) -> String {
        format!(
            "single file {} ({} bytes)",
            self.path.display(),
            self.capacity_bytes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let vol = SingleFileVolume::create(dir.path(), 1 << 20).unwrap();
        vol.write_at(8192, &[7u8; 4096]).unwrap();
        let mut buf = [0u8; 4096];
        vol.read_at(8192, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 4096]);
        assert!(matches!(
            vol.read_at(1 << 20, &mut buf),
            Err(VolumeError::OutOfRange { .. })
        ));
    }
}

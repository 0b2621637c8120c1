//! What every layer of the crate shares: the block unit, the one error enum, the
//! `BlockVolume` trait smlogfs stores its blocks on, and the options of a new volume.

use std::path::{Path, PathBuf};

/// The unit smlogfs reads and writes in.
pub const BLOCK_BYTES: u64 = 4096;

/// Errors of the block volume layer. Corruption is kept apart from I/O errors.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt {what} in {path} at byte {at}: {detail}")]
    Corrupt {
        what: &'static str,
        path: PathBuf,
        at: u64,
        detail: String,
    },
    #[error("{path} is not a smlogfs volume directory: {detail}")]
    NotAVolume { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("access beyond the end of the volume: offset {offset} + {len} > {capacity_bytes}")]
    OutOfRange {
        offset: u64,
        len: u64,
        capacity_bytes: u64,
    },
    #[error("volume is poisoned after an earlier write or flush failure; remount it")]
    Poisoned,
    #[error("cannot assemble the RAID volume in {path}: {detail}")]
    Assembly { path: PathBuf, detail: String },
    #[error("{path} is held by another process: the volume is in use")]
    InUse { path: PathBuf },
}

impl VolumeError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        VolumeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A byte-addressed block device. Implementations are safe to share between threads.
pub trait BlockVolume: Send + Sync {
    /// Usable bytes (for RAID-5: data bytes, parity excluded).
    fn capacity_bytes(&self) -> u64;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError>;
    /// Writes all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError>;
    /// Writes `data` at `offset` into space that holds nothing anybody reads: if the call
    /// never returns (a crash), the range may afterwards hold anything, and that is all it
    /// may affect. A RAID-5 then writes the stripes the range covers whole without
    /// journaling them. The default is `write_at`.
    fn write_fresh_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        self.write_at(offset, data)
    }
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), VolumeError>;
    /// A one-line description for logs and `status` (kind, members, state).
    fn describe(&self) -> String;
    /// This process lost ownership of the volume (a peer took it over): refuse every later
    /// write and flush, stop background work, and let go of the volume's lock files so that
    /// the new owner can open it. Reads keep working. Cannot be undone; reopen to write again.
    /// The default suits read-only views that never write.
    fn fence(&self) {}
}

/// How `create_volume` lays out a new volume.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Usable bytes wanted.
    pub capacity_bytes: u64,
    /// 1 = a single backing file; ≥ 3 = RAID-5 over that many members.
    pub disks: u32,
    pub chunk_bytes: u64,
    pub spares: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            capacity_bytes: 256 << 20,
            disks: 1,
            chunk_bytes: 64 << 10,
            spares: 0,
        }
    }
}

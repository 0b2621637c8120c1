//! The state log: a memory-mapped ring of checksummed entries chained by seq.
//!
//! Exports: `StateLog` (append, flush, reclaim, and an append hook that sees every entry in
//! seq order), `scan` of a ring file after a crash, and the entry format with the states an
//! entry records (`OpState`, `CheckpointState`). The log does not know what payloads mean.

pub mod format;
mod mmap;
mod ring;
mod scan;

pub use format::{
    CheckpointState, EntryHeader, EntryKind, EntryState, OpState, Seq, ENTRY_HEADER_BYTES,
    MAX_PAYLOAD_BYTES, MIN_RING_BYTES,
};
pub use ring::{AppendHook, Appended, HookedEntry, RingStats, StateLog};
pub use scan::{read_header, scan, ScanEnd, ScanError, ScanResult, ScannedEntry};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("state log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state log {path}: {source}")]
    Scan {
        path: PathBuf,
        #[source]
        source: ScanError,
    },
    #[error("an entry of {payload_bytes} payload bytes exceeds the limit of {MAX_PAYLOAD_BYTES}")]
    TooLarge { payload_bytes: usize },
}

impl LogError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;

//! The state log: a memory-mapped ring of checksummed entries chained by seq.
//!
//! Exports: `StateLog` (append, flush with a durable watermark, a background committer,
//! reclaim, and an append hook that sees every entry in seq order), `scan` of a ring file
//! after a crash (a torn tail after the watermark is recovered up to the gap; damage before
//! it is corruption), and the entry format with the states an entry records (`OpState`,
//! `CheckpointState`). The log does not know what payloads mean.

pub mod format;
mod mmap;
mod ring;
mod scan;

pub use format::{
    CheckpointState, EntryHeader, EntryKind, EntryState, OpState, RingVersion, Seq,
    ENTRY_HEADER_BYTES, MAX_PAYLOAD_BYTES, MIN_RING_BYTES,
};
pub use ring::{AppendHook, Appended, BeforeCommit, HookedEntry, RingStats, StateLog};
pub use scan::{read_header, scan, Dropped, ScanEnd, ScanError, ScanResult, ScannedEntry};

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
    #[error(
        "state log {path} is ring version {version}, which this smlogfs recovers but does not \
         append to (mount replaces it with a new ring; fsck and inspect read it as it is)"
    )]
    OldVersion { path: PathBuf, version: u32 },
    #[error("state log {path}: {detail}; the ring refuses further flushes until remounted")]
    Failed { path: PathBuf, detail: String },
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

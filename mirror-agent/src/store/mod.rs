//! The agent's copy of each volume's state log: append-only segment files plus a small
//! metadata file (epoch, checkpoint), one directory per volume. See `format.rs`.
//!
//! Durability: entries are written to the segment file (`write(2)`, so they are in the
//! page cache and survive a crash of the agent process) before they are acknowledged.
//! With `sync_each_batch` they are also `fdatasync`ed before the acknowledgement; without
//! it a background thread syncs every volume once per sync interval, or at once when a
//! client asks (`Volumes::make_durable`; requests that meet coalesce into one round). The
//! metadata (epoch, checkpoint) is always synced before it is acted upon or acknowledged.
//!
//! Each store knows how far it is durable (`durable_through`: every seq up to it is
//! fdatasync'ed, or covered by the synced checkpoint). Invariants: it never exceeds
//! `held_through`, never moves back, and equals it whenever the store is not dirty.
//!
//! After a failed write or sync the store is *poisoned*: it refuses every further append
//! until the agent restarts and rescans it, rather than guessing what reached the disk.
//!
//! One [`VolumeStore`] per volume, its work split by job:
//!
//! * `format` — the bytes on disk, written down once;
//! * `open` — opening a store: the metadata, every segment checked, a torn tail cut (or,
//!   read-only for `--inspect`, noted), and the report of what is there;
//! * `write` — appends, segment rotation, syncs, checkpoints and epochs, and the poisoning
//!   after a failure;
//! * `read` — read-back in chunks from a [`ReadCursor`];
//! * `volumes` — [`Volumes`]: every store the agent serves, and the background sync.
//!
//! Exports: [`VolumeStore`], [`ReadCursor`], [`Volumes`], [`StoreError`], [`lock`],
//! [`hex`], [`parse_hex`].

mod format;
mod open;
mod read;
mod volumes;
mod write;

pub use read::ReadCursor;
pub use volumes::{lock, Volumes};

use format::Meta;
use smlog_wire::format::VolumeId;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("corrupt {path} at byte {at}: {what}")]
    Corrupt {
        what: String,
        path: PathBuf,
        at: u64,
    },
    #[error("gap: expected seq {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("fenced: epoch {ours} is older than the volume's epoch {current}")]
    Fenced { ours: u64, current: u64 },
    #[error("store refuses writes after an earlier I/O failure: {0}")]
    Poisoned(String),
    #[error("the agent already holds its limit of {max} volumes")]
    TooManyVolumes { max: usize },
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> StoreError + 'p {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

pub fn hex(volume_id: &VolumeId) -> String {
    volume_id.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex(text: &str) -> Option<VolumeId> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    last_seq: Option<u64>,
    path: PathBuf,
    /// Bytes of the file that hold the header and valid records.
    bytes: u64,
}

pub struct VolumeStore {
    dir: PathBuf,
    volume_id: VolumeId,
    meta: Meta,
    /// Seq the next new entry must have; `None` while the volume has never held one.
    next_seq: Option<u64>,
    segments: Vec<Segment>,
    /// The last segment, open for appending.
    active: Option<File>,
    dirty: bool,
    /// Every seq up to it is on the disk (see the invariants above).
    durable: Option<u64>,
    /// Counts appends; the background sync marks the store clean only if none came in while
    /// it synced.
    appends: u64,
    /// Bytes appended to the active segment since it was last synced.
    unsynced_bytes: u64,
    poisoned: Option<String>,
    sync_each_batch: bool,
    /// Opened by `inspect`: nothing is created, cut, deleted or written.
    read_only: bool,
    /// What a read-only scan would have repaired.
    notes: Vec<String>,
}

impl VolumeStore {
    pub fn epoch(&self) -> u64 {
        self.meta.epoch
    }

    pub fn next_seq(&self) -> Option<u64> {
        self.next_seq
    }

    /// The highest seq the agent holds (every seq up to it is stored or checkpointed).
    pub fn held_through(&self) -> Option<u64> {
        self.next_seq.and_then(|n| n.checked_sub(1))
    }

    pub fn checkpoint_through(&self) -> Option<u64> {
        self.meta.checkpoint_through
    }

    /// The highest seq such that every seq up to it is on the disk.
    pub fn durable_through(&self) -> Option<u64> {
        self.durable
    }

    /// Why the store refuses writes, once a write or sync failed.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Records that every seq up to `seq` is on the disk.
    fn durable_up_to(&mut self, seq: Option<u64>) {
        if seq > self.durable {
            debug_assert!(seq <= self.held_through(), "durable beyond held");
            self.durable = seq;
        }
    }
}

#[cfg(test)]
mod tests;

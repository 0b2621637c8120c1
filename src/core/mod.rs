//! The fs core: the in-memory file system, the ops that change it, checkpoints to the
//! block volume, and recovery. Knows nothing about FUSE.

mod alloc;
pub mod check;
pub mod direct;
mod fs;
pub mod meta;
pub mod ops;
pub mod recovery;
pub mod state;
pub mod superblock;
pub mod types;

pub use fs::{
    recover, ring_path_of, Caller, CheckpointReport, DirEntry, Fs, FsConfig, Recovered,
    RecoveryReport, StatFs,
};
pub use types::{Attr, Errno, FsResult, Kind, Ts};

use std::path::PathBuf;

/// Errors of the fs core that are not an errno for one caller: opening, checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{0}")]
    Volume(#[from] raid_sim::VolumeError),
    #[error("{0}")]
    Log(#[from] crate::statelog::LogError),
    #[error("{path}: {detail}")]
    Superblock { path: PathBuf, detail: String },
    #[error("corrupt {what} at {at}: {detail}")]
    Corrupt {
        what: &'static str,
        at: String,
        detail: String,
    },
    #[error("mirror agent {routes}: {detail}")]
    Mirror { routes: String, detail: String },
    #[error("the file system stopped accepting changes after an earlier failure: {0}")]
    Poisoned(String),
}

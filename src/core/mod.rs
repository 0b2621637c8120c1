//! The fs core: the in-memory file system, the ops that change it, checkpoints to the
//! block volume, and recovery. Knows nothing about FUSE, nor about the mirror's wire
//! protocol (a replica is a `Replica`).
//!
//! Exports: `Fs` (the running file system) with `FsConfig`, `Caller`, the read path's
//! `DirEntry`/`StatFs`, `FsStatus`; `recover` (also used offline by fsck and inspect); the
//! `Replica`/`ReplicaLink` traits the mirror implements; the error types; and the on-disk
//! modules (`ops`, `meta`, `superblock`, `types`) the commands read.

mod alloc;
mod changes;
pub mod check;
mod checkpoint;
pub mod direct;
mod error;
mod fs;
pub mod meta;
pub mod ops;
mod pipeline;
mod read;
pub mod recovery;
pub mod replica;
mod shared;
pub mod state;
mod status;
pub mod superblock;
pub mod types;

pub use checkpoint::CheckpointReport;
pub use error::{ApplyError, FsError, Poison};
pub use fs::{FlushReport, Fs, FsConfig, FsyncPolicy};
pub use read::{Caller, DirEntry, StatFs};
pub use recovery::{recover, recover_on, ring_path_of, Recovered, RecoveryReport};
pub use replica::{Replica, ReplicaError, ReplicaInfo, ReplicaLink};
pub use status::FsStatus;
pub use types::{Attr, Epoch, Errno, FsResult, Ino, Kind, Seq, Ts, VolBlock};

//! The fs core's errors: `FsError` for opening and checkpointing, `Poison` for why a running
//! file system refuses changes, `ApplyError` for why an op could not be applied in memory.

use std::path::PathBuf;

use super::types::Errno;

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
    Poisoned(Poison),
}

/// Why a running file system refuses changes until it is remounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Poison {
    /// The volume was taken over by a peer (a newer epoch): this node never writes again and
    /// answers changes with EROFS.
    Fenced { detail: String },
    /// A volume write or read failed, or a checkpoint could not be taken: changes get EIO.
    Io { detail: String },
}

impl Poison {
    pub fn fenced(detail: impl Into<String>) -> Poison {
        Poison::Fenced {
            detail: detail.into(),
        }
    }

    pub fn io(detail: impl Into<String>) -> Poison {
        Poison::Io {
            detail: detail.into(),
        }
    }

    /// What a change gets while the file system is poisoned.
    pub fn errno(&self) -> Errno {
        match self {
            Poison::Fenced { .. } => Errno::EROFS,
            Poison::Io { .. } => Errno::EIO,
        }
    }

    pub fn is_fenced(&self) -> bool {
        matches!(self, Poison::Fenced { .. })
    }
}

impl std::fmt::Display for Poison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Poison::Fenced { detail } => write!(f, "fenced: {detail}"),
            Poison::Io { detail } => f.write_str(detail),
        }
    }
}

impl FsError {
    /// The poison a failed checkpoint leaves: a fence stays a fence, anything else is I/O.
    pub fn poison(&self) -> Poison {
        match self {
            FsError::Poisoned(p) => p.clone(),
            other => Poison::io(other.to_string()),
        }
    }
}

/// Why `FsState::apply` did not apply an op. On any of these nothing has changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// The op is refused as POSIX says (the caller gets this errno).
    Refused(Errno),
    /// There is room once the next checkpoint releases the blocks freed since the last one.
    NeedCheckpoint,
    /// Reading a block the op needed from the volume failed.
    VolumeRead { block: u64, detail: String },
}

impl From<Errno> for ApplyError {
    fn from(e: Errno) -> ApplyError {
        ApplyError::Refused(e)
    }
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Refused(e) => write!(f, "errno {}", e.0),
            ApplyError::NeedCheckpoint => f.write_str("no room until the next checkpoint"),
            ApplyError::VolumeRead { block, detail } => {
                write!(f, "reading volume block {block}: {detail}")
            }
        }
    }
}

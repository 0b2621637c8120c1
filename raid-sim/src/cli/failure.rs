//! How raid-sim fails: one exit code per kind of failure, and a one-line message that
//! says what to do.

use std::path::Path;

use raid_sim::VolumeError;

/// Exit codes, one per kind of failure (docs/operations.md, "Exit codes"). A number means
/// the same in smlogfs, raid-sim and mirror-agent; 14 and 15 are raid-sim's own.
pub mod exit {
    /// `scrub` found damage it could not repair (the report names member and byte offset).
    pub const UNREPAIRED: u8 = 1;
    /// Bad command line (clap's errors too), a size that does not parse, a geometry that
    /// does not fit, a member index beyond the array, a byte range outside the member file.
    pub const USAGE: u8 = 2;
    /// VOLDIR holds no RAID-5 array (no member file with a valid superblock).
    pub const NOT_A_VOLUME: u8 = 3;
    /// Another process holds the array's lock and the command could not be handed to it.
    pub const BUSY: u8 = 6;
    /// A superblock, the journal or a block is damaged (file and byte offset named).
    pub const CORRUPT: u8 = 7;
    /// An I/O error on the named file.
    pub const IO: u8 = 9;
    /// The process holding the array took the request but did not report back.
    pub const DAEMON: u8 = 10;
    /// Permission denied on the named file.
    pub const PERMISSION: u8 = 13;
    /// The member file named by `--member` is missing or cannot be opened.
    pub const MEMBER: u8 = 14;
    /// The array refuses to start or to do what was asked: it would not survive it (two
    /// members down, nothing to rebuild from), a rebuild is unfinished, or it stopped after
    /// a failure.
    pub const ARRAY: u8 = 15;
}

/// A failed command: its exit code and its one-line message.
pub struct Failure {
    pub code: u8,
    pub msg: String,
}

impl Failure {
    pub fn new(code: u8, msg: impl Into<String>) -> Self {
        Failure {
            code,
            msg: msg.into(),
        }
    }

    /// An I/O error on `path` outside the volume layer.
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        VolumeError::io(path, e).into()
    }
}

/// The one place where the volume layer's errors get their exit code and what to do.
impl From<VolumeError> for Failure {
    fn from(e: VolumeError) -> Self {
        use std::io::ErrorKind;
        let (code, hint) = match &e {
            VolumeError::Io { source, .. } if source.kind() == ErrorKind::PermissionDenied => (
                exit::PERMISSION,
                "run as the owner of the array's files (usually root) or give this user \
                 access (ls -l, chown, chmod)",
            ),
            VolumeError::Io { .. } => (
                exit::IO,
                "check the disk holding that file (dmesg, df) and run the command again",
            ),
            VolumeError::Corrupt { .. } => (
                exit::CORRUPT,
                "keep a copy of VOLDIR before anything else (docs/format-raid.md)",
            ),
            VolumeError::NotAVolume { .. } => (
                exit::NOT_A_VOLUME,
                "check the path; `raid-sim create VOLDIR` makes an array",
            ),
            VolumeError::InUse { .. } => (
                exit::BUSY,
                "run the command again: while another process holds the array, raid-sim \
                 hands fail, scrub and replace to it",
            ),
            VolumeError::Assembly { .. } => (
                exit::ARRAY,
                "do not force it (docs/operations.md, \"A RAID member failed\")",
            ),
            VolumeError::Invalid { .. } | VolumeError::Poisoned => (
                exit::ARRAY,
                "see `raid-sim status VOLDIR` and docs/operations.md, \"A RAID member failed\"",
            ),
            VolumeError::OutOfRange { .. } => (exit::USAGE, "stay within the volume"),
        };
        Failure::new(code, format!("{e}; {hint}"))
    }
}

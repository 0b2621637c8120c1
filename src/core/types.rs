//! Small value types shared by the fs core: timestamps, file kinds, errno, inode records.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub const ROOT_INO: u64 = 1;
pub const BLOCK_BYTES: u64 = 4096;
pub const NAME_MAX: usize = 255;
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_VALUE_MAX: usize = 65536;
/// Largest file offset accepted (ext4's limit for 4 KiB blocks is 16 TiB).
pub const MAX_FILE_BYTES: u64 = 16 << 40;

/// An errno value returned to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EMLINK: Errno = Errno(libc::EMLINK);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
}

pub type FsResult<T> = Result<T, Errno>;

pub use crate::statelog::Seq;

/// An inode number, as the core's API takes it (the FUSE adapter converts; the on-disk
/// records keep plain integers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ino(pub u64);

impl std::fmt::Display for Ino {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A block number on the block volume (units of `BLOCK_BYTES`), as opposed to a block
/// index inside a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolBlock(pub u64);

impl VolBlock {
    /// The byte offset on the volume where this block starts.
    pub fn offset(self) -> u64 {
        self.0 * BLOCK_BYTES
    }
}

/// An ownership epoch of the volume: a takeover raises it, and a node whose epoch is older
/// than the volume's (or the agent's) is fenced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A point in time with nanoseconds, as stored in inodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ts {
    pub sec: i64,
    pub nsec: u32,
}

impl Ts {
    pub fn now() -> Ts {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ts {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }

    pub fn to_system_time(self) -> std::time::SystemTime {
        if self.sec >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::new(self.sec as u64, self.nsec)
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::new((-self.sec) as u64, 0)
                + std::time::Duration::new(0, self.nsec)
        }
    }

    pub fn from_system_time(t: std::time::SystemTime) -> Ts {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Ts {
                sec: d.as_secs() as i64,
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), d.subsec_nanos());
                if nsec > 0 {
                    sec -= 1;
                    nsec = 1_000_000_000 - nsec;
                }
                Ts { sec, nsec }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    /// The S_IFMT bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
        }
    }

    pub fn from_mode(mode: u32) -> Option<Kind> {
        match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Some(Kind::File),
            libc::S_IFDIR => Some(Kind::Dir),
            libc::S_IFLNK => Some(Kind::Symlink),
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            libc::S_IFCHR => Some(Kind::CharDev),
            libc::S_IFBLK => Some(Kind::BlockDev),
            _ => None,
        }
    }
}

/// The persistent attributes of an inode (everything but its data blocks and entries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRec {
    pub ino: u64,
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (mode & 0o7777).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub rdev: u32,
    pub atime: Ts,
    pub mtime: Ts,
    pub ctime: Ts,
    pub crtime: Ts,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// For directories: the parent directory ("..").
    pub parent: u64,
}

/// One file block in memory: where it lives on the volume and, while it differs from the
/// volume copy, its data.
#[derive(Clone, Debug, Default)]
pub struct Slot {
    /// Volume block number once a checkpoint placed it.
    pub phys: Option<u64>,
    /// Data not yet on the volume (None with phys None: an allocated block of zeroes).
    pub data: Option<Arc<Vec<u8>>>,
    /// 0 when the volume copy is current; otherwise the write generation of `data`.
    pub dirty_gen: u64,
    /// `phys` was set by a direct write and no checkpoint has recorded it yet.
    pub unrecorded: bool,
}

/// What `getattr` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub rec: InodeRec,
    pub blocks: u64,
}

/// The maps of the in-memory file system: ahash is several times faster than SipHash on the
/// mount path (millions of inserts) and is keyed per process, so names chosen by users cannot
/// force collisions.
pub type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
/// The set kept the same way (the dirty sets: one insert per changed block).
pub type FastSet<K> = std::collections::HashSet<K, ahash::RandomState>;

//! `FsOp`: one mutating file-system operation, exactly as logged in its `Accepted` entry.
//!
//! An op carries every decision that depends on the caller or the clock (new inode number,
//! owner, final mode, timestamps), so that applying it again during recovery gives the same
//! result as the first time.

use serde::{Deserialize, Serialize};

use super::types::{Kind, Ts};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    /// create, mknod, mkdir, symlink.
    Mknod {
        parent: u64,
        name: Vec<u8>,
        ino: u64,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: Option<Vec<u8>>,
        now: Ts,
    },
    Link {
        ino: u64,
        parent: u64,
        name: Vec<u8>,
        now: Ts,
    },
    /// unlink (dir = false) and rmdir (dir = true).
    Unlink {
        parent: u64,
        name: Vec<u8>,
        dir: bool,
        now: Ts,
    },
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        /// RENAME_NOREPLACE / RENAME_EXCHANGE bits.
        flags: u32,
        now: Ts,
    },
    SetAttr {
        ino: u64,
        perm: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Ts>,
        mtime: Option<Ts>,
        now: Ts,
    },
    Write {
        ino: u64,
        offset: u64,
        #[serde(with = "serde_bytes_vec")]
        data: Vec<u8>,
        now: Ts,
    },
    Fallocate {
        ino: u64,
        offset: u64,
        len: u64,
        mode: i32,
        now: Ts,
    },
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: i32,
        now: Ts,
    },
    RemoveXattr {
        ino: u64,
        name: Vec<u8>,
        now: Ts,
    },
    /// A block-aligned write whose data went straight to fresh volume blocks
    /// `phys .. phys + len / BLOCK_BYTES` instead of into the ring. `crc` (crc32c of the data)
    /// lets recovery tell whether the data reached the volume.
    WriteDirect {
        ino: u64,
        offset: u64,
        len: u64,
        phys: u64,
        crc: u32,
        now: Ts,
    },
}

impl FsOp {
    /// A short name for `inspect` and logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            FsOp::Mknod {
                kind: Kind::Dir, ..
            } => "mkdir",
            FsOp::Mknod {
                kind: Kind::Symlink,
                ..
            } => "symlink",
            FsOp::Mknod {
                kind: Kind::File, ..
            } => "create",
            FsOp::Mknod { .. } => "mknod",
            FsOp::Link { .. } => "link",
            FsOp::Unlink { dir: true, .. } => "rmdir",
            FsOp::Unlink { .. } => "unlink",
            FsOp::Rename { .. } => "rename",
            FsOp::SetAttr { .. } => "setattr",
            FsOp::Write { .. } => "write",
            FsOp::Fallocate { .. } => "fallocate",
            FsOp::SetXattr { .. } => "setxattr",
            FsOp::RemoveXattr { .. } => "removexattr",
            FsOp::WriteDirect { .. } => "write (direct)",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("an FsOp always serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<FsOp, String> {
        bincode::deserialize(bytes).map_err(|e| e.to_string())
    }
}

/// Serialises write data as one length-prefixed byte run (bincode's default for Vec<u8>
/// is element-wise, which is slow for large writes).
mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V)
    }
}

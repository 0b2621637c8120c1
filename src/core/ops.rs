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

/// `FsOp::Write { ino, offset, data, now }` encoded (exactly as `FsOp::encode` would) and
/// appended to `out`, without first copying `data` into an `FsOp`: the mirror form of a
/// direct write is built this way, straight into the entry that goes to the agent.
pub fn encode_write_into(out: &mut Vec<u8>, ino: u64, offset: u64, data: &[u8], now: Ts) {
    struct WriteRef<'a> {
        ino: u64,
        offset: u64,
        data: &'a [u8],
        now: Ts,
    }
    impl Serialize for WriteRef<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeStructVariant;
            // Variant 5 of FsOp (the test below holds the two encodings equal).
            let mut v = s.serialize_struct_variant("FsOp", 5, "Write", 4)?;
            v.serialize_field("ino", &self.ino)?;
            v.serialize_field("offset", &self.offset)?;
            v.serialize_field("data", &BytesRef(self.data))?;
            v.serialize_field("now", &self.now)?;
            v.end()
        }
    }
    let w = WriteRef {
        ino,
        offset,
        data,
        now,
    };
    out.reserve(data.len() + 64);
    bincode::serialize_into(out, &w).expect("a write always serialises");
}

/// `data` serialised as one byte run, the way `serde_bytes_vec` does.
struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_write_into_matches_the_derived_encoding() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let now = Ts {
            sec: -3,
            nsec: 999_999_999,
        };
        let op = FsOp::Write {
            ino: 42,
            offset: 1 << 33,
            data: data.clone(),
            now,
        };
        let mut out = vec![7u8; 5];
        encode_write_into(&mut out, 42, 1 << 33, &data, now);
        assert_eq!(&out[..5], &[7u8; 5]);
        assert_eq!(out[5..], op.encode()[..]);
        assert_eq!(FsOp::decode(&out[5..]).unwrap(), op);
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

//! `FsOp`: one mutating file-system operation, exactly as logged in its `Accepted` entry.
//!
//! An op carries every decision that depends on the caller or the clock (new inode number,
//! owner, final mode, timestamps), so that applying it again during recovery gives the same
//! result as the first time.

use serde::{Deserialize, Serialize};

use super::types::{Kind, Ts};

/// One logged op. Each variant wraps a struct of the same name; the on-disk (bincode)
/// encoding of a newtype variant is the variant index followed by the struct's fields, byte
/// for byte what the struct variants of earlier versions wrote (the tests below hold it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    /// create, mknod, mkdir, symlink.
    Mknod(Mknod),
    Link(Link),
    /// unlink (dir = false) and rmdir (dir = true).
    Unlink(Unlink),
    Rename(Rename),
    SetAttr(SetAttr),
    Write(Write),
    Fallocate(Fallocate),
    SetXattr(SetXattr),
    RemoveXattr(RemoveXattr),
    /// A block-aligned write whose data went straight to fresh volume blocks.
    WriteDirect(WriteDirect),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mknod {
    pub parent: u64,
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub target: Option<Vec<u8>>,
    pub now: Ts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub ino: u64,
    pub parent: u64,
    pub name: Vec<u8>,
    pub now: Ts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlink {
    pub parent: u64,
    pub name: Vec<u8>,
    pub dir: bool,
    pub now: Ts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    pub parent: u64,
    pub name: Vec<u8>,
    pub new_parent: u64,
    pub new_name: Vec<u8>,
    /// RENAME_NOREPLACE / RENAME_EXCHANGE bits.
    pub flags: u32,
    pub now: Ts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub ino: u64,
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Ts>,
    pub mtime: Option<Ts>,
    pub now: Ts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub ino: u64,
    pub offset: u64,
    #[serde(with = "serde_bytes_vec")]
    pub data: Vec<u8>,
    pub now: Ts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallocate {
    pub ino: u64,
    pub offset: u64,
    pub len: u64,
    pub mode: i32,
    pub now: Ts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetXattr {
    pub ino: u64,
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    pub flags: i32,
    pub now: Ts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveXattr {
    pub ino: u64,
    pub name: Vec<u8>,
    pub now: Ts,
}

/// A block-aligned write whose data went straight to fresh volume blocks
/// `phys .. phys + len / BLOCK_BYTES` instead of into the ring. `crc` (crc32c of the data)
/// lets recovery tell whether the data reached the volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteDirect {
    pub ino: u64,
    pub offset: u64,
    pub len: u64,
    pub phys: u64,
    pub crc: u32,
    pub now: Ts,
}

impl FsOp {
    /// A short name for `inspect` and logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            FsOp::Mknod(Mknod {
                kind: Kind::Dir, ..
            }) => "mkdir",
            FsOp::Mknod(Mknod {
                kind: Kind::Symlink,
                ..
            }) => "symlink",
            FsOp::Mknod(Mknod {
                kind: Kind::File, ..
            }) => "create",
            FsOp::Mknod(_) => "mknod",
            FsOp::Link(_) => "link",
            FsOp::Unlink(Unlink { dir: true, .. }) => "rmdir",
            FsOp::Unlink(_) => "unlink",
            FsOp::Rename(_) => "rename",
            FsOp::SetAttr(_) => "setattr",
            FsOp::Write(_) => "write",
            FsOp::Fallocate(_) => "fallocate",
            FsOp::SetXattr(_) => "setxattr",
            FsOp::RemoveXattr(_) => "removexattr",
            FsOp::WriteDirect(_) => "write (direct)",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("an FsOp always serialises")
    }

    /// The op alone; a request trailer after it (see `encode_logged`) is ignored.
    pub fn decode(bytes: &[u8]) -> Result<FsOp, String> {
        bincode::deserialize(bytes).map_err(|e| e.to_string())
    }

    /// The payload of the op's `Accepted` entry: the op, then, for an op made for a FUSE
    /// request, the request trailer (`REQUEST_TRAILER_BYTES`: version 1, the kernel's
    /// `unique` without the resend bit). Rings written before the trailer existed hold the
    /// op alone, and `decode` of older versions ignores trailing bytes.
    pub fn encode_logged(&self, request: Option<RequestId>) -> Vec<u8> {
        let mut out = self.encode();
        if let Some(id) = request {
            out.push(REQUEST_TRAILER_V1);
            out.extend_from_slice(&id.0.to_le_bytes());
        }
        out
    }

    /// An `Accepted` entry's payload: the op and the request it was made for, if logged.
    pub fn decode_logged(bytes: &[u8]) -> Result<(FsOp, Option<RequestId>), String> {
        let mut rest = bytes;
        let op: FsOp = bincode::deserialize_from(&mut rest).map_err(|e| e.to_string())?;
        let request = match rest {
            [] => None,
            [REQUEST_TRAILER_V1, unique @ ..] if unique.len() == 8 => Some(RequestId(
                u64::from_le_bytes(unique.try_into().expect("8 bytes")),
            )),
            _ => {
                return Err(format!(
                    "{} bytes after the op are not a request trailer (version {REQUEST_TRAILER_V1}, 8-byte unique)",
                    rest.len()
                ))
            }
        };
        Ok((op, request))
    }

    /// The inode an applied op created or changed: what its answer reads back besides the
    /// request's own arguments (0 for ops whose answer names no inode).
    pub fn outcome_ino(&self) -> u64 {
        match self {
            FsOp::Mknod(op) => op.ino,
            FsOp::Link(op) => op.ino,
            FsOp::SetAttr(op) => op.ino,
            FsOp::Write(op) => op.ino,
            FsOp::WriteDirect(op) => op.ino,
            FsOp::Fallocate(op) => op.ino,
            FsOp::SetXattr(op) => op.ino,
            FsOp::RemoveXattr(op) => op.ino,
            FsOp::Unlink(_) | FsOp::Rename(_) => 0,
        }
    }
}

/// The kernel's id of a FUSE request (`unique`), without the resend bit: the same for the
/// first delivery and every resend of one request, never reused on one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// Version byte of the request trailer of an `Accepted` payload.
pub const REQUEST_TRAILER_V1: u8 = 1;
/// Bytes the request trailer adds: its version, then the unique (u64 LE).
pub const REQUEST_TRAILER_BYTES: usize = 1 + std::mem::size_of::<u64>();

/// `FsOp::Write(Write { ino, offset, data, now })` encoded (exactly as `FsOp::encode` would)
/// and appended to `out`, without first copying `data` into an `FsOp`: the self-contained
/// form of a direct write is built this way (`direct::inline_entry`), straight into the
/// entry that goes to the replica.
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
        let op = FsOp::Write(Write {
            ino: 42,
            offset: 1 << 33,
            data: data.clone(),
            now,
        });
        let mut out = vec![7u8; 5];
        encode_write_into(&mut out, 42, 1 << 33, &data, now);
        assert_eq!(&out[..5], &[7u8; 5]);
        assert_eq!(out[5..], op.encode()[..]);
        assert_eq!(FsOp::decode(&out[5..]).unwrap(), op);
    }

    /// The bytes earlier versions (struct variants) wrote for these ops, taken from their
    /// encoder: rings and mirror copies written by them must still decode the same.
    #[test]
    fn encoding_is_unchanged_from_struct_variants() {
        let now = Ts { sec: 5, nsec: 6 };
        let link = FsOp::Link(Link {
            ino: 7,
            parent: 1,
            name: b"ab".to_vec(),
            now,
        });
        let mut want = vec![1, 0, 0, 0]; // variant index 1, u32 LE
        want.extend(7u64.to_le_bytes());
        want.extend(1u64.to_le_bytes());
        want.extend(2u64.to_le_bytes()); // name length, then its bytes
        want.extend(b"ab");
        want.extend(5i64.to_le_bytes());
        want.extend(6u32.to_le_bytes());
        assert_eq!(link.encode(), want);
        let direct = FsOp::WriteDirect(WriteDirect {
            ino: 2,
            offset: 4096,
            len: 8192,
            phys: 99,
            crc: 0xdead_beef,
            now,
        });
        let mut want = vec![9, 0, 0, 0];
        for v in [2u64, 4096, 8192, 99] {
            want.extend(v.to_le_bytes());
        }
        want.extend(0xdead_beefu32.to_le_bytes());
        want.extend(5i64.to_le_bytes());
        want.extend(6u32.to_le_bytes());
        assert_eq!(direct.encode(), want);
        assert_eq!(FsOp::decode(&want).unwrap(), direct);
        // An op without a request logs exactly its old bytes.
        assert_eq!(direct.encode_logged(None), want);
        assert_eq!(FsOp::decode_logged(&want).unwrap(), (direct, None));
    }

    /// The request trailer: version 1, then the unique, after the op's own bytes; readers
    /// of the op alone (older versions, `decode`) skip it.
    #[test]
    fn request_trailer_golden_bytes() {
        let op = FsOp::Unlink(Unlink {
            parent: 1,
            name: b"x".to_vec(),
            dir: false,
            now: Ts { sec: 5, nsec: 6 },
        });
        let logged = op.encode_logged(Some(RequestId(0x0102_0304_0506_0708)));
        let plain = op.encode();
        assert_eq!(logged.len(), plain.len() + REQUEST_TRAILER_BYTES);
        assert_eq!(&logged[..plain.len()], &plain[..]);
        assert_eq!(
            &logged[plain.len()..],
            &[1, 8, 7, 6, 5, 4, 3, 2, 1],
            "version 1, unique little-endian"
        );
        assert_eq!(FsOp::decode(&logged).unwrap(), op);
        assert_eq!(
            FsOp::decode_logged(&logged).unwrap(),
            (op.clone(), Some(RequestId(0x0102_0304_0506_0708)))
        );
        let mut bad = logged.clone();
        bad[plain.len()] = 2;
        let err = FsOp::decode_logged(&bad).unwrap_err();
        assert!(err.contains("request trailer"), "{err}");
        assert!(FsOp::decode_logged(&logged[..logged.len() - 1]).is_err());
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

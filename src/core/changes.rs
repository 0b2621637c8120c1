//! The changing ops: each builds its `FsOp` from the current state and the caller (owner,
//! mode, new inode number, timestamps are decided here, once, so that replay gives the same
//! result) and runs it through the op pipeline.

use super::direct;
use super::ops::*;
use super::read::Caller;
use super::resend::Request;
use super::types::*;
use super::Fs;

impl Fs {
    /// create, mknod, mkdir, symlink: owner is the caller; group and setgid follow ext4.
    pub fn mknod(
        &self,
        req: Option<Request>,
        caller: Caller,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u32,
        target: Option<Vec<u8>>,
    ) -> FsResult<Attr> {
        let parent = parent.0;
        let kind = if target.is_some() {
            Kind::Symlink
        } else {
            Kind::from_mode(mode).ok_or(Errno::EINVAL)?
        };
        let now = Ts::now();
        self.execute(
            req,
            |s| {
                let p = s.get(parent)?;
                if p.dir.is_none() {
                    return Err(Errno::ENOTDIR);
                }
                let setgid_dir = p.rec.perm & libc::S_ISGID != 0;
                let gid = if setgid_dir { p.rec.gid } else { caller.gid };
                let mut perm = if kind == Kind::Symlink {
                    0o777
                } else {
                    mode & 0o7777
                };
                if kind == Kind::Dir && setgid_dir {
                    perm |= libc::S_ISGID;
                }
                if kind != Kind::Dir
                    && perm & libc::S_ISGID != 0
                    && caller.uid != 0
                    && gid != caller.gid
                {
                    perm &= !libc::S_ISGID;
                }
                Ok(FsOp::Mknod(Mknod {
                    parent,
                    name: name.to_vec(),
                    ino: s.next_ino(),
                    kind,
                    perm,
                    uid: caller.uid,
                    gid,
                    rdev,
                    target: target.clone(),
                    now,
                }))
            },
            // The new inode's attributes (also when answering a resent request).
            |s, ino| Ok(s.get(ino)?.attr()),
        )
    }

    pub fn link(&self, req: Option<Request>, ino: Ino, parent: Ino, name: &[u8]) -> FsResult<Attr> {
        let (ino, parent) = (ino.0, parent.0);
        let now = Ts::now();
        self.execute(
            req,
            |_| {
                Ok(FsOp::Link(Link {
                    ino,
                    parent,
                    name: name.to_vec(),
                    now,
                }))
            },
            |s, _| Ok(s.get(ino)?.attr()),
        )
    }

    pub fn unlink(
        &self,
        req: Option<Request>,
        parent: Ino,
        name: &[u8],
        dir: bool,
    ) -> FsResult<()> {
        let parent = parent.0;
        let now = Ts::now();
        self.execute(
            req,
            |_| {
                Ok(FsOp::Unlink(Unlink {
                    parent,
                    name: name.to_vec(),
                    dir,
                    now,
                }))
            },
            |_, _| Ok(()),
        )
    }

    pub fn rename(
        &self,
        req: Option<Request>,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let (parent, new_parent) = (parent.0, new_parent.0);
        let now = Ts::now();
        self.execute(
            req,
            |_| {
                Ok(FsOp::Rename(Rename {
                    parent,
                    name: name.to_vec(),
                    new_parent,
                    new_name: new_name.to_vec(),
                    flags,
                    now,
                }))
            },
            |_, _| Ok(()),
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        req: Option<Request>,
        ino: Ino,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Ts>,
        mtime: Option<Ts>,
    ) -> FsResult<Attr> {
        let ino = ino.0;
        let now = Ts::now();
        self.execute(
            req,
            |_| {
                Ok(FsOp::SetAttr(SetAttr {
                    ino,
                    perm: mode.map(|m| m & 0o7777),
                    uid,
                    gid,
                    size,
                    atime,
                    mtime,
                    now,
                }))
            },
            |s, _| Ok(s.get(ino)?.attr()),
        )
    }

    pub fn write(&self, req: Option<Request>, ino: Ino, offset: u64, data: &[u8]) -> FsResult<u32> {
        let ino = ino.0;
        let now = Ts::now();
        let len = data.len() as u32;
        let inline = || {
            FsOp::Write(Write {
                ino,
                offset,
                data: data.to_vec(),
                now,
            })
        };
        if !(self.config.direct_writes && direct::eligible(offset, data.len() as u64)) {
            return self.execute(req, |_| Ok(inline()), |_, _| Ok(len));
        }
        let crc = crc32c::crc32c(data);
        let count = data.len() as u64 / BLOCK_BYTES;
        self.execute_with(
            req,
            |core| {
                // Fresh contiguous blocks, or the ordinary path when there is no such run.
                Ok(match core.alloc.alloc_run(count) {
                    Some(phys) => FsOp::WriteDirect(WriteDirect {
                        ino,
                        offset,
                        len: data.len() as u64,
                        phys,
                        crc,
                        now,
                    }),
                    None => inline(),
                })
            },
            Some(data),
            |_, _| Ok(len),
        )
    }

    pub fn fallocate(
        &self,
        req: Option<Request>,
        ino: Ino,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> FsResult<()> {
        let ino = ino.0;
        let now = Ts::now();
        self.execute(
            req,
            |_| {
                Ok(FsOp::Fallocate(Fallocate {
                    ino,
                    offset,
                    len,
                    mode,
                    now,
                }))
            },
            |_, _| Ok(()),
        )
    }

    pub fn setxattr(
        &self,
        req: Option<Request>,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        let ino = ino.0;
        let now = Ts::now();
        self.execute(
            req,
            |s| {
                s.get(ino)?;
                super::state::check_xattr_name(name)?;
                Ok(FsOp::SetXattr(SetXattr {
                    ino,
                    name: name.to_vec(),
                    value: value.to_vec(),
                    flags,
                    now,
                }))
            },
            |_, _| Ok(()),
        )
    }

    pub fn removexattr(&self, req: Option<Request>, ino: Ino, name: &[u8]) -> FsResult<()> {
        let ino = ino.0;
        let now = Ts::now();
        self.execute(
            req,
            |_| {
                Ok(FsOp::RemoveXattr(RemoveXattr {
                    ino,
                    name: name.to_vec(),
                    now,
                }))
            },
            |_, _| Ok(()),
        )
    }

    pub fn open(&self, ino: Ino) -> FsResult<()> {
        let ino = ino.0;
        self.sh.lock().state.open(ino)
    }

    pub fn release(&self, ino: Ino) {
        let ino = ino.0;
        self.sh.lock().state.release(ino);
    }

    /// The kernel forgot `ino` (FUSE_FORGET): an unlinked inode kept for it goes.
    pub fn forget(&self, ino: Ino) {
        self.sh.lock().state.forget(ino.0);
    }
}

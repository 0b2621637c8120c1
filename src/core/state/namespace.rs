//! The namespace part of `FsState`: inodes, directories with stable readdir cookies,
//! links, renames, attributes and xattrs.

use std::collections::BTreeMap;

use super::FsState;
use crate::core::error::ApplyError;
use crate::core::ops::{Link, Mknod, RemoveXattr, Rename, SetAttr, SetXattr, Unlink};
use crate::core::types::*;

/// A directory's entries. Cookies (readdir offsets) are handed out in increasing order and
/// never reused within a directory, so offsets stay stable while entries come and go.
#[derive(Clone, Debug, Default)]
pub struct Dir {
    pub entries: FastMap<Vec<u8>, (u64, u64)>,
    pub by_cookie: BTreeMap<u64, Vec<u8>>,
    pub next_cookie: u64,
}

/// Readdir offsets 1 and 2 are "." and ".."; entries start at this cookie.
pub const FIRST_COOKIE: u64 = 3;

impl Dir {
    pub fn new() -> Dir {
        Dir {
            next_cookie: FIRST_COOKIE,
            ..Default::default()
        }
    }

    pub fn insert_with_cookie(&mut self, name: Vec<u8>, ino: u64, cookie: u64) {
        if let Some((_, old)) = self.entries.insert(name.clone(), (ino, cookie)) {
            self.by_cookie.remove(&old);
        }
        self.by_cookie.insert(cookie, name);
        self.next_cookie = self.next_cookie.max(cookie + 1);
    }

    fn insert(&mut self, name: Vec<u8>, ino: u64) {
        let cookie = self.next_cookie;
        self.insert_with_cookie(name, ino, cookie);
    }

    pub(in crate::core) fn remove(&mut self, name: &[u8]) -> Option<u64> {
        let (ino, cookie) = self.entries.remove(name)?;
        self.by_cookie.remove(&cookie);
        Some(ino)
    }
}

#[derive(Clone, Debug)]
pub struct Inode {
    pub rec: InodeRec,
    pub blocks: BTreeMap<u64, Slot>,
    pub dir: Option<Dir>,
    /// Open handles; an unlinked inode lives on (an orphan) until the last one closes.
    pub open_count: u32,
}

impl Inode {
    pub fn new(rec: InodeRec) -> Inode {
        let dir = (rec.kind == Kind::Dir).then(Dir::new);
        Inode {
            rec,
            blocks: BTreeMap::new(),
            dir,
            open_count: 0,
        }
    }

    pub fn attr(&self) -> Attr {
        Attr {
            rec: self.rec.clone(),
            blocks: self.blocks.len() as u64 * (BLOCK_BYTES / 512),
        }
    }
}

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

impl FsState {
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<u64> {
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let dir = self.dir(parent)?;
        if name == b"." {
            return Ok(parent);
        }
        if name == b".." {
            return Ok(self.get(parent)?.rec.parent);
        }
        dir.entries.get(name).map(|e| e.0).ok_or(Errno::ENOENT)
    }

    fn touch_dir(&mut self, ino: u64, now: Ts) {
        if let Some(d) = self.inodes.get_mut(&ino) {
            d.rec.mtime = now;
            d.rec.ctime = now;
        }
        self.dirty.inodes.insert(ino);
    }

    pub(super) fn apply_mknod(&mut self, op: &Mknod) -> FsResult<()> {
        let Mknod {
            parent,
            ref name,
            ino,
            kind,
            perm,
            uid,
            gid,
            rdev,
            ref target,
            now,
        } = *op;
        check_name(name)?;
        let dir = self.dir(parent)?;
        if dir.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        if self.inodes.contains_key(&ino) {
            return Err(Errno::EEXIST);
        }
        let rec = InodeRec {
            ino,
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: target.as_ref().map_or(0, |t| t.len() as u64),
            rdev,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            xattrs: BTreeMap::new(),
            target: target.clone(),
            parent,
        };
        self.inodes.insert(ino, Inode::new(rec));
        let p = self.get_mut(parent)?;
        p.dir
            .as_mut()
            .expect("checked above")
            .insert(name.to_vec(), ino);
        if kind == Kind::Dir {
            p.rec.nlink += 1;
        }
        self.touch_dir(parent, now);
        self.next_ino = self.next_ino.max(ino + 1);
        self.dirty.inodes.insert(ino);
        self.dirty.dirents.insert((parent, name.to_vec()));
        Ok(())
    }

    pub(super) fn apply_link(&mut self, op: &Link) -> FsResult<()> {
        let Link {
            ino,
            parent,
            ref name,
            now,
        } = *op;
        check_name(name)?;
        let node = self.get(ino)?;
        if node.rec.kind == Kind::Dir {
            return Err(Errno::EPERM);
        }
        if node.rec.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if node.rec.nlink >= 65000 {
            return Err(Errno::EMLINK);
        }
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let node = self.get_mut(ino)?;
        node.rec.nlink += 1;
        node.rec.ctime = now;
        self.dirty.inodes.insert(ino);
        let p = self.get_mut(parent)?;
        p.dir
            .as_mut()
            .expect("checked above")
            .insert(name.to_vec(), ino);
        self.touch_dir(parent, now);
        self.dirty.dirents.insert((parent, name.to_vec()));
        Ok(())
    }

    pub(super) fn apply_unlink(&mut self, op: &Unlink) -> FsResult<()> {
        let Unlink {
            parent,
            ref name,
            dir: want_dir,
            now,
        } = *op;
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let child = self.lookup(parent, name)?;
        if name == b"." || name == b".." {
            return Err(if want_dir {
                Errno::EINVAL
            } else {
                Errno::EISDIR
            });
        }
        let node = self.get(child)?;
        let is_dir = node.rec.kind == Kind::Dir;
        if want_dir && !is_dir {
            return Err(Errno::ENOTDIR);
        }
        if !want_dir && is_dir {
            return Err(Errno::EISDIR);
        }
        if is_dir && !node.dir.as_ref().expect("dir").entries.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let p = self.get_mut(parent)?;
        p.dir.as_mut().expect("looked up").remove(name);
        if is_dir {
            p.rec.nlink -= 1;
        }
        self.touch_dir(parent, now);
        self.dirty.dirents.insert((parent, name.to_vec()));
        self.drop_link(child, now);
        Ok(())
    }

    /// Removes one link of `ino`; purges it when none is left and nothing holds it open.
    fn drop_link(&mut self, ino: u64, now: Ts) {
        let Some(node) = self.inodes.get_mut(&ino) else {
            return;
        };
        if node.rec.kind == Kind::Dir {
            node.rec.nlink = 0;
        } else {
            node.rec.nlink = node.rec.nlink.saturating_sub(1);
        }
        node.rec.ctime = now;
        self.dirty.inodes.insert(ino);
        if self.may_purge(ino) {
            self.purge(ino);
        }
    }

    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        for _ in 0..100_000 {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT_INO {
                return false;
            }
            match self.inodes.get(&ino) {
                Some(n) => ino = n.rec.parent,
                None => return false,
            }
        }
        false
    }

    pub(super) fn apply_rename(&mut self, op: &Rename) -> FsResult<()> {
        let Rename {
            parent,
            ref name,
            new_parent,
            ref new_name,
            flags,
            now,
        } = *op;
        check_name(new_name)?;
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        if flags & !(libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE) != 0 || (exchange && noreplace)
        {
            return Err(Errno::EINVAL);
        }
        let src = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        let dst = self.dir(new_parent)?.entries.get(new_name).map(|e| e.0);
        let src_is_dir = self.get(src)?.rec.kind == Kind::Dir;
        if src_is_dir && new_parent != parent && self.is_ancestor(src, new_parent) {
            return Err(Errno::EINVAL);
        }
        if exchange {
            let dst = dst.ok_or(Errno::ENOENT)?;
            let dst_is_dir = self.get(dst)?.rec.kind == Kind::Dir;
            if dst_is_dir && new_parent != parent && self.is_ancestor(dst, parent) {
                return Err(Errno::EINVAL);
            }
            // Swap the two entries' inodes in place; cookies stay where they were.
            self.get_mut(parent)?
                .dir
                .as_mut()
                .expect("dir")
                .entries
                .get_mut(name)
                .expect("looked up")
                .0 = dst;
            self.get_mut(new_parent)?
                .dir
                .as_mut()
                .expect("dir")
                .entries
                .get_mut(new_name)
                .expect("found")
                .0 = src;
            if parent != new_parent && src_is_dir != dst_is_dir {
                let (to_new, to_old) = if src_is_dir { (1i64, -1i64) } else { (-1, 1) };
                let np = self.get_mut(new_parent)?;
                np.rec.nlink = (np.rec.nlink as i64 + to_new) as u32;
                let op = self.get_mut(parent)?;
                op.rec.nlink = (op.rec.nlink as i64 + to_old) as u32;
            }
            if src_is_dir {
                self.get_mut(src)?.rec.parent = new_parent;
            }
            if dst_is_dir {
                self.get_mut(dst)?.rec.parent = parent;
            }
            for ino in [src, dst] {
                self.get_mut(ino)?.rec.ctime = now;
                self.dirty.inodes.insert(ino);
            }
            self.touch_dir(parent, now);
            self.touch_dir(new_parent, now);
            self.dirty.dirents.insert((parent, name.to_vec()));
            self.dirty.dirents.insert((new_parent, new_name.to_vec()));
            return Ok(());
        }
        if let Some(dst) = dst {
            if noreplace {
                return Err(Errno::EEXIST);
            }
            if dst == src {
                return Ok(());
            }
            let d = self.get(dst)?;
            let dst_is_dir = d.rec.kind == Kind::Dir;
            if src_is_dir && !dst_is_dir {
                return Err(Errno::ENOTDIR);
            }
            if !src_is_dir && dst_is_dir {
                return Err(Errno::EISDIR);
            }
            if dst_is_dir && !d.dir.as_ref().expect("dir").entries.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            if dst_is_dir && self.is_ancestor(dst, parent) {
                return Err(Errno::ENOTEMPTY);
            }
            // Replace: the target entry goes, its inode loses a link.
            let np = self.get_mut(new_parent)?;
            np.dir.as_mut().expect("dir").remove(new_name);
            if dst_is_dir {
                np.rec.nlink -= 1;
            }
            self.drop_link(dst, now);
        }
        let p = self.get_mut(parent)?;
        p.dir.as_mut().expect("dir").remove(name);
        if src_is_dir {
            p.rec.nlink -= 1;
        }
        let np = self.get_mut(new_parent)?;
        np.dir.as_mut().expect("dir").insert(new_name.to_vec(), src);
        if src_is_dir {
            np.rec.nlink += 1;
        }
        let s = self.get_mut(src)?;
        s.rec.ctime = now;
        if src_is_dir {
            s.rec.parent = new_parent;
        }
        self.dirty.inodes.insert(src);
        self.touch_dir(parent, now);
        self.touch_dir(new_parent, now);
        self.dirty.dirents.insert((parent, name.to_vec()));
        self.dirty.dirents.insert((new_parent, new_name.to_vec()));
        Ok(())
    }

    pub(super) fn apply_setattr(&mut self, op: &SetAttr) -> Result<(), ApplyError> {
        let (ino, now) = (op.ino, op.now);
        let node = self.get(ino)?;
        if let Some(size) = op.size {
            match node.rec.kind {
                Kind::File => {}
                Kind::Dir => return Err(Errno::EISDIR.into()),
                _ => return Err(Errno::EINVAL.into()),
            }
            if size > MAX_FILE_BYTES {
                return Err(Errno::EFBIG.into());
            }
            if size != node.rec.size {
                self.truncate(ino, size)?;
                let n = self.get_mut(ino)?;
                n.rec.mtime = now;
            }
        }
        let rec = &mut self.get_mut(ino)?.rec;
        if let Some(p) = op.perm {
            rec.perm = p & 0o7777;
        }
        rec.uid = op.uid.unwrap_or(rec.uid);
        rec.gid = op.gid.unwrap_or(rec.gid);
        rec.atime = op.atime.unwrap_or(rec.atime);
        rec.mtime = op.mtime.unwrap_or(rec.mtime);
        rec.ctime = now;
        self.dirty.inodes.insert(ino);
        Ok(())
    }

    pub(super) fn apply_setxattr(&mut self, op: &SetXattr) -> FsResult<()> {
        let SetXattr {
            ino,
            ref name,
            ref value,
            flags,
            now,
        } = *op;
        check_xattr_name(name)?;
        if value.len() > XATTR_VALUE_MAX {
            return Err(Errno::E2BIG);
        }
        let n = self.get(ino)?;
        let exists = n.rec.xattrs.contains_key(name);
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(Errno::EEXIST);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(Errno::ENODATA);
        }
        let n = self.get_mut(ino)?;
        n.rec.xattrs.insert(name.to_vec(), value.to_vec());
        n.rec.ctime = now;
        self.dirty.inodes.insert(ino);
        Ok(())
    }

    pub(super) fn apply_removexattr(&mut self, op: &RemoveXattr) -> FsResult<()> {
        let RemoveXattr { ino, ref name, now } = *op;
        check_xattr_name(name)?;
        let n = self.get_mut(ino)?;
        if n.rec.xattrs.remove(name).is_none() {
            return Err(Errno::ENODATA);
        }
        n.rec.ctime = now;
        self.dirty.inodes.insert(ino);
        Ok(())
    }
}

pub fn check_xattr_name(name: &[u8]) -> FsResult<()> {
    if name.len() > XATTR_NAME_MAX {
        return Err(Errno::ERANGE);
    }
    if name.is_empty() {
        return Err(Errno::EINVAL);
    }
    let known = [&b"user."[..], b"trusted.", b"security."];
    if !known
        .iter()
        .any(|p| name.starts_with(p) && name.len() > p.len())
    {
        return Err(Errno::EOPNOTSUPP);
    }
    Ok(())
}

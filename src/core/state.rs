//! The in-memory file system and the application of `FsOp`s to it.
//!
//! Every `apply_*` function checks everything it needs first and changes nothing when it
//! returns an error, so an op that fails leaves no trace and an op that succeeds can be
//! logged and later replayed with the same result.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use raid_sim::BlockVolume;

use super::ops::FsOp;
use super::types::*;

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

    pub(super) fn remove(&mut self, name: &[u8]) -> Option<u64> {
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

/// What changed since the last checkpoint, at the granularity the metadata delta records.
#[derive(Debug, Default)]
pub struct Dirty {
    pub inodes: FastSet<u64>,
    pub dirents: FastSet<(u64, Vec<u8>)>,
    pub blocks: FastSet<(u64, u64)>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty() && self.dirents.is_empty() && self.blocks.is_empty()
    }
}

pub struct FsState {
    pub inodes: FastMap<u64, Inode>,
    pub next_ino: u64,
    write_gen: u64,
    pub dirty: Dirty,
    /// Volume blocks released since the last checkpoint; reusable once it completes.
    pub pending_free: Vec<u64>,
    /// During replay unlinked inodes are kept as orphans (a later logged op may still
    /// write to an open-but-unlinked file) and purged at the end.
    pub replaying: bool,
    /// Blocks the volume can hold for file data, and blocks counted against it.
    pub capacity_blocks: u64,
    pub used_blocks: u64,
    vol: Arc<dyn BlockVolume>,
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
    pub fn new(vol: Arc<dyn BlockVolume>, capacity_blocks: u64) -> FsState {
        FsState {
            inodes: FastMap::default(),
            next_ino: ROOT_INO + 1,
            write_gen: 0,
            dirty: Dirty::default(),
            pending_free: Vec::new(),
            replaying: false,
            capacity_blocks,
            used_blocks: 0,
            vol,
        }
    }

    pub fn volume(&self) -> &Arc<dyn BlockVolume> {
        &self.vol
    }

    pub fn get(&self, ino: u64) -> FsResult<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn get_mut(&mut self, ino: u64) -> FsResult<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> FsResult<&Dir> {
        self.get(ino)?.dir.as_ref().ok_or(Errno::ENOTDIR)
    }

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

    /// Applies one op. Checks first; on error nothing has changed.
    pub fn apply(&mut self, op: &FsOp) -> FsResult<()> {
        match op {
            FsOp::Mknod {
                parent,
                name,
                ino,
                kind,
                perm,
                uid,
                gid,
                rdev,
                target,
                now,
            } => self.apply_mknod(
                *parent, name, *ino, *kind, *perm, *uid, *gid, *rdev, target, *now,
            ),
            FsOp::Link {
                ino,
                parent,
                name,
                now,
            } => self.apply_link(*ino, *parent, name, *now),
            FsOp::Unlink {
                parent,
                name,
                dir,
                now,
            } => self.apply_unlink(*parent, name, *dir, *now),
            FsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
                now,
            } => self.apply_rename(*parent, name, *new_parent, new_name, *flags, *now),
            FsOp::SetAttr {
                ino,
                perm,
                uid,
                gid,
                size,
                atime,
                mtime,
                now,
            } => self.apply_setattr(*ino, *perm, *uid, *gid, *size, *atime, *mtime, *now),
            FsOp::Write {
                ino,
                offset,
                data,
                now,
            } => self.apply_write(*ino, *offset, data, *now),
            FsOp::Fallocate {
                ino,
                offset,
                len,
                mode,
                now,
            } => self.apply_fallocate(*ino, *offset, *len, *mode, *now),
            FsOp::SetXattr {
                ino,
                name,
                value,
                flags,
                now,
            } => self.apply_setxattr(*ino, name, value, *flags, *now),
            FsOp::RemoveXattr { ino, name, now } => self.apply_removexattr(*ino, name, *now),
            FsOp::WriteDirect {
                ino,
                offset,
                len,
                phys,
                now,
                ..
            } => self.apply_write_direct(*ino, *offset, *len, *phys, *now),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_mknod(
        &mut self,
        parent: u64,
        name: &[u8],
        ino: u64,
        kind: Kind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: &Option<Vec<u8>>,
        now: Ts,
    ) -> FsResult<()> {
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

    fn apply_link(&mut self, ino: u64, parent: u64, name: &[u8], now: Ts) -> FsResult<()> {
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

    fn apply_unlink(&mut self, parent: u64, name: &[u8], want_dir: bool, now: Ts) -> FsResult<()> {
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
        let replaying = self.replaying;
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
        if node.rec.nlink == 0 && node.open_count == 0 && !replaying {
            self.purge(ino);
        }
    }

    /// Deletes an inode and releases its blocks (at the next checkpoint).
    pub fn purge(&mut self, ino: u64) {
        if let Some(node) = self.inodes.remove(&ino) {
            for slot in node.blocks.into_values() {
                self.used_blocks -= 1;
                if let Some(p) = slot.phys {
                    self.pending_free.push(p);
                }
            }
            self.dirty.inodes.insert(ino);
        }
    }

    /// Purges every unlinked inode that nothing holds open (after replay, after remount).
    pub fn purge_orphans(&mut self) -> usize {
        let orphans: Vec<u64> = self
            .inodes
            .values()
            .filter(|n| n.rec.nlink == 0 && n.open_count == 0 && n.rec.ino != ROOT_INO)
            .map(|n| n.rec.ino)
            .collect();
        for &ino in &orphans {
            self.purge(ino);
        }
        orphans.len()
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

    fn apply_rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
        now: Ts,
    ) -> FsResult<()> {
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

    #[allow(clippy::too_many_arguments)]
    fn apply_setattr(
        &mut self,
        ino: u64,
        perm: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Ts>,
        mtime: Option<Ts>,
        now: Ts,
    ) -> FsResult<()> {
        let node = self.get(ino)?;
        if let Some(size) = size {
            match node.rec.kind {
                Kind::File => {}
                Kind::Dir => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
            if size > MAX_FILE_BYTES {
                return Err(Errno::EFBIG);
            }
            if size != node.rec.size {
                self.truncate(ino, size)?;
                let n = self.get_mut(ino)?;
                n.rec.mtime = now;
            }
        }
        let n = self.get_mut(ino)?;
        if let Some(p) = perm {
            n.rec.perm = p & 0o7777;
        }
        if let Some(u) = uid {
            n.rec.uid = u;
        }
        if let Some(g) = gid {
            n.rec.gid = g;
        }
        if let Some(a) = atime {
            n.rec.atime = a;
        }
        if let Some(m) = mtime {
            n.rec.mtime = m;
        }
        n.rec.ctime = now;
        self.dirty.inodes.insert(ino);
        Ok(())
    }

    /// Reads one block's current contents (cache, volume, or zeroes).
    fn load_block(&self, slot: Option<&Slot>) -> FsResult<Vec<u8>> {
        match slot {
            Some(Slot { data: Some(d), .. }) => Ok(d.as_ref().clone()),
            Some(Slot { phys: Some(p), .. }) => {
                let mut buf = vec![0u8; BLOCK_BYTES as usize];
                self.vol.read_at(p * BLOCK_BYTES, &mut buf).map_err(|e| {
                    log::error!("reading volume block {p}: {e}");
                    Errno::EIO
                })?;
                Ok(buf)
            }
            _ => Ok(vec![0u8; BLOCK_BYTES as usize]),
        }
    }

    /// Replaces the data of block `blk` of `ino`, creating the slot when needed.
    fn store_block(&mut self, ino: u64, blk: u64, data: Vec<u8>) {
        self.write_gen += 1;
        let gen = self.write_gen;
        let node = self.inodes.get_mut(&ino).expect("caller checked");
        let slot = node.blocks.entry(blk).or_insert_with(|| {
            self.used_blocks += 1;
            Slot::default()
        });
        slot.data = Some(Arc::new(data));
        slot.dirty_gen = gen;
        self.dirty.blocks.insert((ino, blk));
    }

    fn remove_block(&mut self, ino: u64, blk: u64) {
        let node = self.inodes.get_mut(&ino).expect("caller checked");
        if let Some(slot) = node.blocks.remove(&blk) {
            self.used_blocks -= 1;
            if let Some(p) = slot.phys {
                self.pending_free.push(p);
            }
            self.dirty.blocks.insert((ino, blk));
        }
    }

    /// Zeroes bytes [from, to) inside block `blk` (no-op for a hole).
    fn zero_in_block(&mut self, ino: u64, blk: u64, from: usize, to: usize) -> FsResult<()> {
        let slot = self.get(ino)?.blocks.get(&blk);
        if slot.is_none() || from >= to {
            return Ok(());
        }
        let mut data = self.load_block(slot)?;
        data[from..to].fill(0);
        self.store_block(ino, blk, data);
        Ok(())
    }

    fn truncate(&mut self, ino: u64, size: u64) -> FsResult<()> {
        let old = self.get(ino)?.rec.size;
        if size < old {
            let first_gone = size.div_ceil(BLOCK_BYTES);
            let tail = (size % BLOCK_BYTES) as usize;
            if tail != 0 {
                self.zero_in_block(ino, size / BLOCK_BYTES, tail, BLOCK_BYTES as usize)?;
            }
            let gone: Vec<u64> = self
                .get(ino)?
                .blocks
                .range(first_gone..)
                .map(|(b, _)| *b)
                .collect();
            for blk in gone {
                self.remove_block(ino, blk);
            }
        }
        self.get_mut(ino)?.rec.size = size;
        self.dirty.inodes.insert(ino);
        Ok(())
    }

    fn file_for_data(&self, ino: u64) -> FsResult<&Inode> {
        let n = self.get(ino)?;
        match n.rec.kind {
            Kind::File => Ok(n),
            Kind::Dir => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Blocks `[first, last]` not yet present in `ino`.
    fn new_blocks_needed(&self, ino: u64, first: u64, last: u64) -> FsResult<u64> {
        let n = self.get(ino)?;
        let present = n.blocks.range(first..=last).count() as u64;
        Ok(last - first + 1 - present)
    }

    fn check_space(&self, new_blocks: u64) -> FsResult<()> {
        self.check_space_replacing(new_blocks, 0)
    }

    /// Room for `new_blocks` more file blocks, and for `replaced` placed blocks to wait in
    /// `pending_free` until the next checkpoint.
    fn check_space_replacing(&self, new_blocks: u64, replaced: u64) -> FsResult<()> {
        if self.replaying {
            return Ok(());
        }
        if self.used_blocks + new_blocks > self.capacity_blocks {
            return Err(Errno::ENOSPC);
        }
        if self.used_blocks + self.pending_free.len() as u64 + new_blocks + replaced
            > self.capacity_blocks
        {
            // There is room once the next checkpoint releases the blocks freed since the last.
            return Err(Errno::NEED_CHECKPOINT);
        }
        Ok(())
    }

    fn apply_write(&mut self, ino: u64, offset: u64, data: &[u8], now: Ts) -> FsResult<()> {
        self.file_for_data(ino)?;
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_BYTES {
            return Err(Errno::EFBIG);
        }
        if !data.is_empty() {
            let first = offset / BLOCK_BYTES;
            let last = (end - 1) / BLOCK_BYTES;
            self.check_space(self.new_blocks_needed(ino, first, last)?)?;
            // Read the partial edge blocks before changing anything, so an I/O error
            // leaves the file untouched.
            let mut edges: HashMap<u64, Vec<u8>> = HashMap::new();
            for blk in [first, last] {
                let start = blk * BLOCK_BYTES;
                let covers_all = offset <= start && end >= start + BLOCK_BYTES;
                if !covers_all && !edges.contains_key(&blk) {
                    let node = self.get(ino)?;
                    edges.insert(blk, self.load_block(node.blocks.get(&blk))?);
                }
            }
            for blk in first..=last {
                let start = blk * BLOCK_BYTES;
                let from = offset.max(start);
                let to = end.min(start + BLOCK_BYTES);
                let src = &data[(from - offset) as usize..(to - offset) as usize];
                let block = match edges.remove(&blk) {
                    Some(mut b) => {
                        b[(from - start) as usize..(to - start) as usize].copy_from_slice(src);
                        b
                    }
                    None => src.to_vec(),
                };
                self.store_block(ino, blk, block);
            }
        }
        let n = self.get_mut(ino)?;
        n.rec.size = n.rec.size.max(end);
        n.rec.mtime = now;
        n.rec.ctime = now;
        self.dirty.inodes.insert(ino);
        Ok(())
    }

    /// Maps blocks `[offset, offset + len)` of `ino` (block-aligned) to the volume blocks
    /// starting at `phys`, which already hold the data. The blocks they replace are released
    /// at the next checkpoint.
    fn apply_write_direct(
        &mut self,
        ino: u64,
        offset: u64,
        len: u64,
        phys: u64,
        now: Ts,
    ) -> FsResult<()> {
        self.file_for_data(ino)?;
        if !offset.is_multiple_of(BLOCK_BYTES) || !len.is_multiple_of(BLOCK_BYTES) || len == 0 {
            return Err(Errno::EINVAL);
        }
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_BYTES {
            return Err(Errno::EFBIG);
        }
        let first = offset / BLOCK_BYTES;
        let count = len / BLOCK_BYTES;
        // Every block either is new or hands its old volume block to pending_free.
        let placed = {
            let n = self.get(ino)?;
            n.blocks
                .range(first..first + count)
                .filter(|(_, s)| s.phys.is_some())
                .count() as u64
        };
        let absent = self.new_blocks_needed(ino, first, first + count - 1)?;
        self.check_space_replacing(absent, placed)?;
        let node = self.inodes.get_mut(&ino).expect("checked above");
        for i in 0..count {
            let slot = node.blocks.entry(first + i).or_insert_with(|| {
                self.used_blocks += 1;
                Slot::default()
            });
            if let Some(old) = slot.phys.replace(phys + i) {
                self.pending_free.push(old);
            }
            slot.data = None;
            slot.dirty_gen = 0;
            slot.unrecorded = true;
            self.dirty.blocks.insert((ino, first + i));
        }
        node.rec.size = node.rec.size.max(end);
        node.rec.mtime = now;
        node.rec.ctime = now;
        self.dirty.inodes.insert(ino);
        Ok(())
    }

    fn apply_fallocate(
        &mut self,
        ino: u64,
        offset: u64,
        len: u64,
        mode: i32,
        now: Ts,
    ) -> FsResult<()> {
        self.file_for_data(ino)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_BYTES {
            return Err(Errno::EFBIG);
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE) != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if punch {
            if !keep_size {
                return Err(Errno::EOPNOTSUPP);
            }
            let first = offset / BLOCK_BYTES;
            let last = (end - 1) / BLOCK_BYTES;
            let present: Vec<u64> = self
                .get(ino)?
                .blocks
                .range(first..=last)
                .map(|(b, _)| *b)
                .collect();
            for blk in present {
                let bs = blk * BLOCK_BYTES;
                let from = offset.max(bs);
                let to = end.min(bs + BLOCK_BYTES);
                if from == bs && to == bs + BLOCK_BYTES {
                    self.remove_block(ino, blk);
                } else {
                    self.zero_in_block(ino, blk, (from - bs) as usize, (to - bs) as usize)?;
                }
            }
        } else {
            let first = offset / BLOCK_BYTES;
            let last = (end - 1) / BLOCK_BYTES;
            self.check_space(self.new_blocks_needed(ino, first, last)?)?;
            let node = self.inodes.get_mut(&ino).expect("checked");
            for blk in first..=last {
                if let std::collections::btree_map::Entry::Vacant(v) = node.blocks.entry(blk) {
                    // An allocated block of zeroes: placed and zero-filled at checkpoint.
                    v.insert(Slot {
                        phys: None,
                        data: None,
                        dirty_gen: 1,
                        unrecorded: false,
                    });
                    self.used_blocks += 1;
                    self.dirty.blocks.insert((ino, blk));
                }
            }
            if !keep_size {
                let n = self.get_mut(ino)?;
                n.rec.size = n.rec.size.max(end);
            }
        }
        let n = self.get_mut(ino)?;
        n.rec.mtime = now;
        n.rec.ctime = now;
        self.dirty.inodes.insert(ino);
        Ok(())
    }

    fn apply_setxattr(
        &mut self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
        now: Ts,
    ) -> FsResult<()> {
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

    fn apply_removexattr(&mut self, ino: u64, name: &[u8], now: Ts) -> FsResult<()> {
        check_xattr_name(name)?;
        let n = self.get_mut(ino)?;
        if n.rec.xattrs.remove(name).is_none() {
            return Err(Errno::ENODATA);
        }
        n.rec.ctime = now;
        self.dirty.inodes.insert(ino);
        Ok(())
    }

    /// Takes the dirty sets, leaving them empty (used by checkpoints).
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    pub fn open(&mut self, ino: u64) -> FsResult<()> {
        self.get_mut(ino)?.open_count += 1;
        Ok(())
    }

    /// Closes a handle; purges the inode if it was the last handle of an unlinked inode.
    pub fn release(&mut self, ino: u64) {
        if let Some(n) = self.inodes.get_mut(&ino) {
            n.open_count = n.open_count.saturating_sub(1);
            if n.open_count == 0 && n.rec.nlink == 0 && !self.replaying {
                self.purge(ino);
            }
        }
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

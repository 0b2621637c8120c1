//! The read path: lookups, attributes, directory listings, file reads, xattrs, access
//! checks and statfs. Nothing here is logged; file reads look blocks up under the core lock
//! and read the volume after releasing it (the `reuse` lock keeps those blocks from being
//! reused meanwhile).

use std::sync::Arc;

use super::state::FIRST_COOKIE;
use super::types::*;
use super::Fs;

/// Who is asking (from the FUSE request).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// One directory entry for readdir.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub offset: u64,
    pub ino: Ino,
    pub kind: Kind,
    pub name: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

impl Fs {
    pub fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        let ino = ino.0;
        Ok(self.sh.lock().state.get(ino)?.attr())
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Attr> {
        let parent = parent.0;
        let core = self.sh.lock();
        let ino = core.state.lookup(parent, name)?;
        Ok(core.state.get(ino)?.attr())
    }

    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let ino = ino.0;
        let core = self.sh.lock();
        core.state.get(ino)?.rec.target.clone().ok_or(Errno::EINVAL)
    }

    /// Entries after `offset`, at most `limit`, with offsets to resume from.
    /// Lists directory `ino` from after `offset`, handing each entry (with its attributes
    /// when `with_attr`) to `emit` until it returns true (its reply buffer is full): the
    /// work per call is what the caller takes, not the whole directory.
    pub fn readdir(
        &self,
        ino: Ino,
        offset: u64,
        with_attr: bool,
        mut emit: impl FnMut(DirEntry, Option<Attr>) -> bool,
    ) -> FsResult<()> {
        let ino = ino.0;
        let core = self.sh.lock();
        let node = core.state.get(ino)?;
        let dir = node.dir.as_ref().ok_or(Errno::ENOTDIR)?;
        let attr_of = |i: u64| {
            if with_attr {
                core.state.get(i).ok().map(|n| n.attr())
            } else {
                None
            }
        };
        let dots = [(1, ino, &b"."[..]), (2, node.rec.parent, &b".."[..])];
        for (cookie, child, name) in dots {
            if offset < cookie {
                let entry = DirEntry {
                    offset: cookie,
                    ino: Ino(child),
                    kind: Kind::Dir,
                    name: name.to_vec(),
                };
                if emit(entry, attr_of(child)) {
                    return Ok(());
                }
            }
        }
        for (cookie, name) in dir.by_cookie.range(offset.max(FIRST_COOKIE - 1) + 1..) {
            let child = dir.entries[name].0;
            let kind = core.state.get(child).map_or(Kind::File, |n| n.rec.kind);
            let entry = DirEntry {
                offset: *cookie,
                ino: Ino(child),
                kind,
                name: name.clone(),
            };
            if emit(entry, attr_of(child)) {
                break;
            }
        }
        Ok(())
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let ino = ino.0;
        enum Piece {
            Mem(Arc<Vec<u8>>, usize, usize),
            Vol(u64, usize, usize),
            Zero(usize),
        }
        let core = self.sh.lock();
        let node = core.state.get(ino)?;
        if node.rec.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        let file_size = node.rec.size;
        if offset >= file_size || size == 0 {
            return Ok(Vec::new());
        }
        let end = file_size.min(offset + size as u64);
        let mut pieces = Vec::new();
        let mut pos = offset;
        while pos < end {
            let blk = pos / BLOCK_BYTES;
            let within = (pos % BLOCK_BYTES) as usize;
            let take = ((BLOCK_BYTES as usize) - within).min((end - pos) as usize);
            pieces.push(match node.blocks.get(&blk) {
                Some(Slot { data: Some(d), .. }) => Piece::Mem(d.clone(), within, take),
                Some(Slot { phys: Some(p), .. }) => Piece::Vol(*p, within, take),
                _ => Piece::Zero(take),
            });
            pos += take as u64;
        }
        // Keep the looked-up volume blocks from being reused until they are read.
        let _reuse = self.sh.reuse.read().unwrap_or_else(|p| p.into_inner());
        drop(core);
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut i = 0;
        while i < pieces.len() {
            match &pieces[i] {
                Piece::Mem(d, from, n) => out.extend_from_slice(&d[*from..*from + *n]),
                Piece::Zero(n) => out.resize(out.len() + n, 0),
                Piece::Vol(first, from, _) => {
                    // Coalesce a run of consecutive volume blocks into one read.
                    let mut run = 1;
                    while let Some(Piece::Vol(p, 0, _)) = pieces.get(i + run) {
                        if *p != first + run as u64 {
                            break;
                        }
                        run += 1;
                    }
                    let mut buf = vec![0u8; run * BLOCK_BYTES as usize];
                    self.sh
                        .vol
                        .read_at(first * BLOCK_BYTES, &mut buf)
                        .map_err(|e| {
                            log::error!("read of inode {ino}: {e}");
                            Errno::EIO
                        })?;
                    for k in 0..run {
                        if let Piece::Vol(_, from_k, n) = &pieces[i + k] {
                            let base = k * BLOCK_BYTES as usize;
                            out.extend_from_slice(&buf[base + from_k..base + from_k + n]);
                        }
                    }
                    let _ = from;
                    i += run;
                    continue;
                }
            }
            i += 1;
        }
        Ok(out)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        let ino = ino.0;
        let core = self.sh.lock();
        let node = core.state.get(ino)?;
        node.rec.xattrs.get(name).cloned().ok_or(Errno::ENODATA)
    }

    /// Names of the xattrs, NUL-terminated; `trusted.` names only for root, as on ext4.
    pub fn listxattr(&self, caller: Caller, ino: Ino) -> FsResult<Vec<u8>> {
        let ino = ino.0;
        let core = self.sh.lock();
        let node = core.state.get(ino)?;
        let mut out = Vec::new();
        for k in node.rec.xattrs.keys() {
            if caller.uid != 0 && k.starts_with(b"trusted.") {
                continue;
            }
            out.extend_from_slice(k);
            out.push(0);
        }
        Ok(out)
    }

    pub fn access(&self, caller: Caller, ino: Ino, mask: i32) -> FsResult<()> {
        let ino = ino.0;
        let core = self.sh.lock();
        let rec = &core.state.get(ino)?.rec;
        if mask == libc::F_OK {
            return Ok(());
        }
        let allowed = if caller.uid == 0 {
            // Root may read and write anything, and execute when any x bit is set.
            let x_ok = rec.kind == Kind::Dir || rec.perm & 0o111 != 0;
            if mask & libc::X_OK != 0 && !x_ok {
                0
            } else {
                7
            }
        } else if caller.uid == rec.uid {
            (rec.perm >> 6) & 7
        } else if caller.gid == rec.gid {
            (rec.perm >> 3) & 7
        } else {
            rec.perm & 7
        };
        if (mask as u32) & !allowed & 7 != 0 {
            return Err(Errno::EACCES);
        }
        Ok(())
    }

    pub fn statfs(&self) -> StatFs {
        let core = self.sh.lock();
        let s = &core.state;
        // Blocks freed since the last checkpoint count as free, as on ext4: the next
        // checkpoint releases them (writers that need them wait for it).
        let held = s.used_blocks();
        let (capacity, inodes) = (s.capacity_blocks(), s.inode_count() as u64);
        StatFs {
            blocks: capacity,
            bfree: capacity.saturating_sub(held),
            files: (capacity / 4).max(inodes + 1024),
            ffree: (capacity / 4).saturating_sub(inodes).max(1024),
            bsize: BLOCK_BYTES as u32,
            namelen: NAME_MAX as u32,
        }
    }
}

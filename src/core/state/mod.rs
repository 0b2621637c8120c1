//! The in-memory file system and the application of `FsOp`s to it: the namespace
//! (`namespace`: inodes, directories, xattrs) and the file data (`data`: blocks, their cache
//! and their lifecycle up to a checkpoint, space accounting).
//!
//! Every `apply_*` function checks everything it needs first and changes nothing when it
//! returns an error, so an op that fails leaves no trace and an op that succeeds can be
//! logged and later replayed with the same result.

mod data;
mod namespace;

pub use data::BlockJob;
pub use namespace::{check_xattr_name, Dir, Inode, FIRST_COOKIE};

use std::sync::Arc;

use raid_sim::BlockVolume;

use super::error::ApplyError;
use super::ops::FsOp;
use super::types::*;

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

/// The file system in memory. The inode map is readable by anyone (fsck, inspect and the
/// checkpoint tests walk it); the core's loader and checker (`meta`, `check`) also reach
/// `next_ino` and `used_blocks`; everything else goes through methods.
pub struct FsState {
    pub inodes: FastMap<u64, Inode>,
    pub(in crate::core) next_ino: u64,
    write_gen: u64,
    dirty: Dirty,
    /// Volume blocks released since the last checkpoint; reusable once it completes.
    pending_free: Vec<u64>,
    /// During replay unlinked inodes are kept as orphans (a later logged op may still
    /// write to an open-but-unlinked file) and purged at the end.
    replaying: bool,
    /// On a connection resumed after a daemon restart, the kernel may hold open files of
    /// inodes that existed before it, which this daemon never counted: inodes numbered
    /// below this keep their last link's removal as an orphan until the kernel forgets
    /// them (`forget`). 0 on a fresh mount: every open is counted.
    counts_unknown_below: u64,
    /// Orphans of uncounted inodes the kernel forgot while this daemon counted opens of
    /// them: purged at the last release.
    forgotten: FastSet<u64>,
    /// Blocks the volume can hold for file data, and blocks counted against it.
    capacity_blocks: u64,
    pub(in crate::core) used_blocks: u64,
    vol: Arc<dyn BlockVolume>,
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
            counts_unknown_below: 0,
            forgotten: FastSet::default(),
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

    /// Applies one op. Checks first; on error nothing has changed.
    pub fn apply(&mut self, op: &FsOp) -> Result<(), ApplyError> {
        match op {
            FsOp::Mknod(op) => Ok(self.apply_mknod(op)?),
            FsOp::Link(op) => Ok(self.apply_link(op)?),
            FsOp::Unlink(op) => Ok(self.apply_unlink(op)?),
            FsOp::Rename(op) => Ok(self.apply_rename(op)?),
            FsOp::SetAttr(op) => self.apply_setattr(op),
            FsOp::Write(op) => self.apply_write(op.ino, op.offset, &op.data, op.now),
            FsOp::Fallocate(op) => self.apply_fallocate(op),
            FsOp::SetXattr(op) => Ok(self.apply_setxattr(op)?),
            FsOp::RemoveXattr(op) => Ok(self.apply_removexattr(op)?),
            FsOp::WriteDirect(op) => self.apply_write_direct(op),
        }
    }

    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// The inode number the next created file gets.
    pub fn next_ino(&self) -> u64 {
        self.next_ino
    }

    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_blocks
    }

    /// File blocks counted against the capacity (blocks freed since the last checkpoint not
    /// included).
    pub fn used_blocks(&self) -> u64 {
        self.used_blocks
    }

    pub fn dirty_block_count(&self) -> usize {
        self.dirty.blocks.len()
    }

    /// Nothing changed since the last checkpoint and no block waits to be released.
    pub fn is_clean(&self) -> bool {
        self.dirty.is_empty() && self.pending_free.is_empty()
    }

    /// Replay keeps unlinked inodes as orphans and does not check for space (the ops were
    /// checked when they first ran).
    pub fn set_replaying(&mut self, replaying: bool) {
        self.replaying = replaying;
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
            if self.may_purge(ino) {
                self.purge(ino);
            }
        }
    }

    /// True when `ino` is unlinked and nothing can reach it any more: no counted open
    /// handle, and its opens are counted (or the kernel forgot it).
    pub(super) fn may_purge(&self, ino: u64) -> bool {
        let Some(n) = self.inodes.get(&ino) else {
            return false;
        };
        n.rec.nlink == 0
            && n.open_count == 0
            && !self.replaying
            && ino != ROOT_INO
            && (ino >= self.counts_unknown_below || self.forgotten.contains(&ino))
    }

    /// The kernel dropped every reference to `ino` (FUSE_FORGET): an unlinked inode that no
    /// handle counted here holds open is purged. Harmless for any other inode, and for
    /// lookups this daemon never counted (it counts none).
    pub fn forget(&mut self, ino: u64) {
        if self.inodes.get(&ino).is_some_and(|n| n.rec.nlink == 0) {
            if ino < self.counts_unknown_below {
                self.forgotten.insert(ino);
            }
            if self.may_purge(ino) {
                self.purge(ino);
            }
        }
    }

    /// On a connection resumed after a restart: the opens of every inode that exists now
    /// are unknown (the kernel may hold files of the dead daemon open), so orphans are kept
    /// and unlinking a last link keeps the inode until the kernel forgets it.
    pub fn keep_orphans_until_forgotten(&mut self) {
        self.counts_unknown_below = self.next_ino;
    }

    /// Unlinked inodes kept because the kernel may hold them (for status and tests).
    pub fn orphan_count(&self) -> usize {
        self.inodes
            .values()
            .filter(|n| n.rec.nlink == 0 && n.rec.ino != ROOT_INO)
            .count()
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
}

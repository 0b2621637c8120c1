//! The file-data part of `FsState`: blocks, their in-memory cache, space accounting, and
//! the block lifecycle a checkpoint drives (place dirty blocks, then drop the cached copies
//! the volume now holds).

use std::collections::HashMap;
use std::sync::Arc;

use super::namespace::Inode;
use super::FsState;
use crate::core::error::ApplyError;
use crate::core::ops::{Fallocate, WriteDirect};
use crate::core::types::*;

impl FsState {
    /// Reads one block's current contents (cache, volume, or zeroes).
    fn load_block(&self, slot: Option<&Slot>) -> Result<Vec<u8>, ApplyError> {
        match slot {
            Some(Slot { data: Some(d), .. }) => Ok(d.as_ref().clone()),
            Some(Slot { phys: Some(p), .. }) => {
                let mut buf = vec![0u8; BLOCK_BYTES as usize];
                self.vol.read_at(p * BLOCK_BYTES, &mut buf).map_err(|e| {
                    ApplyError::VolumeRead {
                        block: *p,
                        detail: e.to_string(),
                    }
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

    pub(super) fn remove_block(&mut self, ino: u64, blk: u64) {
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
    fn zero_in_block(
        &mut self,
        ino: u64,
        blk: u64,
        from: usize,
        to: usize,
    ) -> Result<(), ApplyError> {
        let slot = self.get(ino)?.blocks.get(&blk);
        if slot.is_none() || from >= to {
            return Ok(());
        }
        let mut data = self.load_block(slot)?;
        data[from..to].fill(0);
        self.store_block(ino, blk, data);
        Ok(())
    }

    pub(super) fn truncate(&mut self, ino: u64, size: u64) -> Result<(), ApplyError> {
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

    fn check_space(&self, new_blocks: u64) -> Result<(), ApplyError> {
        self.check_space_replacing(new_blocks, 0)
    }

    /// Room for `new_blocks` more file blocks, and for `replaced` placed blocks to wait in
    /// `pending_free` until the next checkpoint.
    fn check_space_replacing(&self, new_blocks: u64, replaced: u64) -> Result<(), ApplyError> {
        if self.replaying {
            return Ok(());
        }
        if self.used_blocks + new_blocks > self.capacity_blocks {
            return Err(Errno::ENOSPC.into());
        }
        if self.used_blocks + self.pending_free.len() as u64 + new_blocks + replaced
            > self.capacity_blocks
        {
            // There is room once the next checkpoint releases the blocks freed since the last.
            return Err(ApplyError::NeedCheckpoint);
        }
        Ok(())
    }

    pub(super) fn apply_write(
        &mut self,
        ino: u64,
        offset: u64,
        data: &[u8],
        now: Ts,
    ) -> Result<(), ApplyError> {
        self.file_for_data(ino)?;
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_BYTES {
            return Err(Errno::EFBIG.into());
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
        self.note_write(ino, end, now)
    }

    /// A write that reached byte `end` of `ino`: the file grows to cover it (never
    /// shrinks) and both its times move to `now`.
    fn note_write(&mut self, ino: u64, end: u64, now: Ts) -> Result<(), ApplyError> {
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
    pub(super) fn apply_write_direct(&mut self, op: &WriteDirect) -> Result<(), ApplyError> {
        let WriteDirect {
            ino,
            offset,
            len,
            phys,
            now,
            ..
        } = *op;
        self.file_for_data(ino)?;
        if !offset.is_multiple_of(BLOCK_BYTES) || !len.is_multiple_of(BLOCK_BYTES) || len == 0 {
            return Err(Errno::EINVAL.into());
        }
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_BYTES {
            return Err(Errno::EFBIG.into());
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
        self.note_write(ino, end, now)
    }

    pub(super) fn apply_fallocate(&mut self, op: &Fallocate) -> Result<(), ApplyError> {
        let Fallocate {
            ino,
            offset,
            len,
            mode,
            now,
        } = *op;
        self.file_for_data(ino)?;
        if len == 0 {
            return Err(Errno::EINVAL.into());
        }
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_BYTES {
            return Err(Errno::EFBIG.into());
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE) != 0 {
            return Err(Errno::EOPNOTSUPP.into());
        }
        if punch {
            if !keep_size {
                return Err(Errno::EOPNOTSUPP.into());
            }
            self.punch_hole(ino, offset, end)?;
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

    /// Deallocates bytes `[offset, end)` of `ino`: whole blocks go, partial edge blocks get
    /// zeroes. The (at most two) partial blocks are read and zeroed before anything changes,
    /// so that a failed read leaves the file as it was.
    fn punch_hole(&mut self, ino: u64, offset: u64, end: u64) -> Result<(), ApplyError> {
        let first = offset / BLOCK_BYTES;
        let last = (end - 1) / BLOCK_BYTES;
        let present: Vec<u64> = self
            .get(ino)?
            .blocks
            .range(first..=last)
            .map(|(b, _)| *b)
            .collect();
        let mut whole = Vec::new();
        let mut edges = Vec::new();
        for blk in present {
            let bs = blk * BLOCK_BYTES;
            let (from, to) = (offset.max(bs), end.min(bs + BLOCK_BYTES));
            if from == bs && to == bs + BLOCK_BYTES {
                whole.push(blk);
            } else {
                let mut data = self.load_block(self.get(ino)?.blocks.get(&blk))?;
                data[(from - bs) as usize..(to - bs) as usize].fill(0);
                edges.push((blk, data));
            }
        }
        for blk in whole {
            self.remove_block(ino, blk);
        }
        for (blk, data) in edges {
            self.store_block(ino, blk, data);
        }
        Ok(())
    }

    /// Places the dirty blocks `blocks` (sorted) for a checkpoint: each block changed since
    /// the last one gets a volume block (its own, or a fresh one near the previous) and a job
    /// to write it; blocks a direct write placed get their extent recorded. Extent records go
    /// to `records`. Fails only when the volume has no free block left.
    pub(in crate::core) fn place_dirty_blocks(
        &mut self,
        blocks: Vec<(u64, u64)>,
        alloc: &mut crate::core::alloc::Allocator,
        records: &mut Vec<crate::core::meta::MetaRecord>,
    ) -> Result<Vec<BlockJob>, crate::core::error::FsError> {
        use crate::core::meta::MetaRecord;
        let mut jobs = Vec::new();
        let mut prev_phys: Option<u64> = None;
        let mut in_place = 0u64;
        for (ino, blk) in blocks {
            let Some(node) = self.inodes.get_mut(&ino) else {
                continue;
            };
            let Some(slot) = node.blocks.get_mut(&blk) else {
                records.push(MetaRecord::ExtentGone { ino, blk });
                continue;
            };
            let unrecorded = std::mem::take(&mut slot.unrecorded);
            if slot.dirty_gen == 0 {
                // A direct write placed it and nothing changed it since: record where.
                if let (true, Some(phys)) = (unrecorded, slot.phys) {
                    records.push(MetaRecord::Extent { ino, blk, phys });
                }
                continue;
            }
            // Copy on write: a block the last durable checkpoint references is never written
            // over. A power cut can tear an in-place write, and the ring's later writes to
            // part of the block would then be replayed onto torn bytes (a single-file volume
            // has no journal under it; seen in the power-cut test). The data goes to a fresh
            // block; the old one waits in `pending_free` until this checkpoint's superblock
            // is durable. A block a direct write placed moves for the same reason (recovery
            // checks that write's data there until a checkpoint covers it).
            let old = slot.phys.take();
            let (phys, fresh) = match alloc.alloc_near(prev_phys.map(|p| p + 1)) {
                Some(p) => {
                    if let Some(old) = old {
                        self.pending_free.push(old);
                    }
                    records.push(MetaRecord::Extent { ino, blk, phys: p });
                    (p, true)
                }
                // The volume is full: write over the old block, as before copy on write
                // (the RAID-5's stripe journal still protects it; a single file is exposed
                // to a torn write until the next checkpoint).
                None if old.is_some() && !unrecorded => {
                    in_place += 1;
                    (old.expect("matched is_some"), false)
                }
                None => {
                    return Err(crate::core::error::FsError::Poisoned(
                        crate::core::error::Poison::io(
                            "the volume is full: no block for checkpoint data",
                        ),
                    ))
                }
            };
            slot.phys = Some(phys);
            prev_phys = Some(phys);
            jobs.push(BlockJob {
                phys: VolBlock(phys),
                data: slot.data.clone(),
                ino,
                blk,
                gen: slot.dirty_gen,
                fresh,
            });
        }
        if in_place > 0 {
            log::warn!(
                "checkpoint: the volume has no free block to copy {in_place} changed blocks to; \
                 they are written in place (free space lets checkpoints copy on write)"
            );
        }
        Ok(jobs)
    }

    /// After the checkpoint's superblock is on the volume: the blocks it wrote are clean
    /// unless an op changed them meanwhile (a newer generation), and their cached copies go.
    pub(in crate::core) fn finish_block_writes(&mut self, jobs: &[BlockJob]) {
        for BlockJob { ino, blk, gen, .. } in jobs {
            let slot = self.inodes.get_mut(ino).and_then(|n| n.blocks.get_mut(blk));
            if let Some(slot) = slot {
                if slot.dirty_gen == *gen {
                    slot.dirty_gen = 0;
                    slot.data = None;
                }
            }
        }
    }

    /// The blocks released since the last checkpoint, which the checkpoint being taken
    /// makes reusable once its superblock is on the volume.
    pub(in crate::core) fn take_pending_free(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.pending_free)
    }
}

/// One data block a checkpoint writes: volume block `phys` gets `data` (zeroes when None),
/// the contents of file `ino`'s block `blk` at dirty generation `gen`. `fresh`: the block was
/// allocated by this checkpoint (nothing on the volume references it yet).
#[derive(Clone)]
pub struct BlockJob {
    pub phys: VolBlock,
    pub data: Option<Arc<Vec<u8>>>,
    pub ino: u64,
    pub blk: u64,
    pub gen: u64,
    pub fresh: bool,
}

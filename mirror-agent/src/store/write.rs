//! What changes a store after it is open: appends (a resend's duplicates skipped, a gap
//! refused), segment rotation, syncs, checkpoints that drop covered segments, and epoch
//! raises. Every write or sync that fails poisons the store (see `mod.rs`).

use super::format::*;
use super::{hex, io_err, Segment, StoreError, VolumeStore};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

impl VolumeStore {
    pub(super) fn poison(&mut self, e: StoreError) -> StoreError {
        log::error!(
            "volume {}: {e}; refusing further writes until restart",
            hex(&self.volume_id)
        );
        self.poisoned = Some(e.to_string());
        e
    }

    /// Stores the entries the volume does not hold yet (a resend's duplicates are skipped)
    /// and returns the highest seq now held.
    pub fn append(&mut self, entries: &[(u64, Vec<u8>)]) -> Result<Option<u64>, StoreError> {
        let fresh: Vec<&(u64, Vec<u8>)> = entries
            .iter()
            .filter(|(seq, _)| self.next_seq.is_none_or(|n| *seq >= n))
            .collect();
        let Some(&&(first, _)) = fresh.first() else {
            return Ok(self.held_through());
        };
        if let Some(next) = self.next_seq {
            if first != next {
                return Err(StoreError::Gap {
                    expected: next,
                    got: first,
                });
            }
        }
        if let Some(reason) = &self.poisoned {
            return Err(StoreError::Poisoned(reason.clone()));
        }
        // Append to the active segment unless it is full, or it is empty and named after
        // another seq (left by a failed start or a checkpoint): records must start at the
        // seq in the segment's name.
        // A full segment is closed once the background sync has made it durable (closing
        // syncs it, and must: a later segment may only exist on disk after the earlier ones),
        // so that a burst of writes never waits for a sync in here, unless the segment grew
        // to SEGMENT_MAX_BYTES first.
        let reuse = match self.segments.last() {
            Some(s) => {
                self.active.is_some()
                    && (s.bytes < SEGMENT_TARGET_BYTES
                        || (self.dirty && s.bytes < SEGMENT_MAX_BYTES))
                    && (s.last_seq.is_some() || s.first_seq == first)
            }
            None => false,
        };
        if !reuse {
            if let Err(e) = self.start_segment(first) {
                return Err(self.poison(e));
            }
        }
        // One vectored write of every record head and entry, without copying them together.
        let heads: Vec<[u8; RECORD_HEAD_BYTES]> = fresh
            .iter()
            .map(|(seq, entry)| record_head(*seq, entry))
            .collect();
        let mut slices: Vec<std::io::IoSlice<'_>> = Vec::with_capacity(2 * fresh.len());
        for (head, (_, entry)) in heads.iter().zip(&fresh) {
            slices.push(std::io::IoSlice::new(head));
            slices.push(std::io::IoSlice::new(entry));
        }
        let written: usize = slices.iter().map(|s| s.len()).sum();
        let last = fresh.last().map(|e| e.0).expect("fresh is not empty");
        let segment = self.segments.last_mut().expect("a segment was started");
        let path = segment.path.clone();
        let file = self.active.as_mut().expect("the active segment is open");
        if let Err(e) = write_all_vectored(file, &mut slices) {
            return Err(self.poison(io_err("write", &path)(e)));
        }
        segment.bytes += written as u64;
        self.appends += 1;
        self.unsynced_bytes += written as u64;
        segment.last_seq = Some(last);
        self.next_seq = Some(last + 1);
        self.dirty = true;
        if self.sync_each_batch {
            self.sync()?;
        }
        Ok(Some(last))
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), StoreError> {
        if let Some(file) = self.active.take() {
            let seg = self.segments.last().expect("an open file has a segment");
            if seg.last_seq.is_none() {
                // Empty and named after another seq: nothing to keep.
                let path = seg.path.clone();
                self.segments.pop();
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            } else {
                file.sync_data().map_err(io_err("sync", &seg.path))?;
                let last = seg.last_seq;
                self.durable_up_to(last);
            }
        }
        let path = self.dir.join(format!("seg-{first_seq:020}.log"));
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err("create segment", &path))?;
        file.write_all(&encode_segment_header(&self.volume_id, first_seq))
            .map_err(io_err("write segment header", &path))?;
        file.sync_all().map_err(io_err("sync", &path))?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            first_seq,
            last_seq: None,
            path,
            bytes: SEGMENT_HEADER_BYTES as u64,
        });
        self.active = Some(file);
        Ok(())
    }

    /// Flushes written entries to the disk.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if !self.dirty {
            return Ok(());
        }
        if let (Some(file), Some(seg)) = (&self.active, self.segments.last()) {
            if let Err(e) = file.sync_data() {
                let path = seg.path.clone();
                return Err(self.poison(io_err("sync", &path)(e)));
            }
        }
        self.dirty = false;
        self.unsynced_bytes = 0;
        self.durable_up_to(self.held_through());
        Ok(())
    }

    /// Whether enough is unsynced that the background sync should not wait for its timer.
    pub fn wants_sync(&self) -> bool {
        self.dirty && self.unsynced_bytes >= SEGMENT_TARGET_BYTES
    }

    /// For a sync outside the store's lock: what the sync of the active segment will
    /// cover; None when there is nothing to sync.
    pub(super) fn sync_handle(&self) -> Option<SyncHandle> {
        if !self.dirty || self.poisoned.is_some() {
            return None;
        }
        let file = self.active.as_ref()?.try_clone().ok()?;
        let path = self.segments.last()?.path.clone();
        Some(SyncHandle {
            file,
            path,
            appends: self.appends,
            held: self.held_through(),
        })
    }

    /// After a sync outside the lock: everything held when the handle was taken is on the
    /// disk (earlier segments were synced when they were closed); clean unless more came.
    pub(super) fn synced(&mut self, handle: &SyncHandle) {
        self.durable_up_to(handle.held);
        if self.appends == handle.appends {
            self.dirty = false;
            self.unsynced_bytes = 0;
        }
    }

    /// Records that the node's volume holds everything up to `through_seq`, then drops the
    /// segments that hold nothing newer. A checkpoint never moves backwards.
    pub fn checkpoint(&mut self, through_seq: u64) -> Result<(), StoreError> {
        if self
            .meta
            .checkpoint_through
            .is_some_and(|c| c >= through_seq)
        {
            return Ok(());
        }
        if let Some(reason) = &self.poisoned {
            return Err(StoreError::Poisoned(reason.clone()));
        }
        let mut meta = self.meta;
        meta.checkpoint_through = Some(through_seq);
        write_meta(&self.dir, &meta).map_err(|e| self.poison(e))?;
        self.meta = meta;
        if self.next_seq.is_none_or(|n| n <= through_seq) {
            self.next_seq = Some(through_seq + 1);
        }
        // The node's volume holds what the checkpoint covers, and the checkpoint is synced.
        self.durable_up_to(Some(through_seq));
        // Keep the active segment unless it is wholly covered; keep anything newer.
        let mut kept = Vec::new();
        let count = self.segments.len();
        for (i, seg) in std::mem::take(&mut self.segments).into_iter().enumerate() {
            let covered = seg.last_seq.unwrap_or(seg.first_seq) <= through_seq;
            if covered {
                if i + 1 == count {
                    self.active = None;
                }
                fs::remove_file(&seg.path).map_err(io_err("remove", &seg.path))?;
            } else {
                kept.push(seg);
            }
        }
        self.segments = kept;
        sync_dir(&self.dir)
    }

    /// Raises the ownership epoch (persisted before returning). Raising to the current
    /// epoch is a no-op; lowering it is refused.
    pub fn raise_epoch(&mut self, epoch: u64) -> Result<(), StoreError> {
        if epoch < self.meta.epoch {
            return Err(StoreError::Fenced {
                ours: epoch,
                current: self.meta.epoch,
            });
        }
        if epoch == self.meta.epoch {
            return Ok(());
        }
        let mut meta = self.meta;
        meta.epoch = epoch;
        write_meta(&self.dir, &meta)?;
        log::info!(
            "volume {}: ownership epoch raised to {epoch}",
            hex(&self.volume_id)
        );
        self.meta = meta;
        Ok(())
    }
}

/// A sync of the active segment taken under the store's lock and done outside it.
pub(super) struct SyncHandle {
    pub(super) file: File,
    pub(super) path: PathBuf,
    /// The store's append count and held seq when the handle was taken.
    appends: u64,
    held: Option<u64>,
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

pub(super) fn write_meta(dir: &Path, meta: &Meta) -> Result<(), StoreError> {
    let tmp = dir.join("volume.meta.tmp");
    let path = dir.join("volume.meta");
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(&meta.encode())
        .map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename into", &path))?;
    sync_dir(dir)
}

/// `write_all` for several buffers: retries short writes until every byte is written.
fn write_all_vectored(
    file: &mut std::fs::File,
    mut slices: &mut [std::io::IoSlice<'_>],
) -> std::io::Result<()> {
    use std::io::Write;
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "wrote nothing",
                ))
            }
            Ok(n) => std::io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

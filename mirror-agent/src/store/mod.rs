//! The agent's copy of each volume's state log: append-only segment files plus a small
//! metadata file (epoch, checkpoint), one directory per volume. See `format.rs`.
//!
//! Durability: entries are written to the segment file (`write(2)`, so they are in the
//! page cache and survive a crash of the agent process) before they are acknowledged.
//! With `sync_each_batch` they are also `fdatasync`ed before the acknowledgement; without
//! it a background thread syncs every volume once per sync interval. The metadata (epoch,
//! checkpoint) is always synced before it is acted upon or acknowledged.
//!
//! After a failed write or sync the store is *poisoned*: it refuses every further append
//! until the agent restarts and rescans it, rather than guessing what reached the disk.

mod format;

use format::*;
use smlog_wire::format::VolumeId;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("corrupt {path} at byte {at}: {what}")]
    Corrupt {
        what: String,
        path: PathBuf,
        at: u64,
    },
    #[error("gap: expected seq {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("fenced: epoch {ours} is older than the volume's epoch {current}")]
    Fenced { ours: u64, current: u64 },
    #[error("store refuses writes after an earlier I/O failure: {0}")]
    Poisoned(String),
    #[error("the agent already holds its limit of {max} volumes")]
    TooManyVolumes { max: usize },
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> StoreError + 'p {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

pub fn hex(volume_id: &VolumeId) -> String {
    volume_id.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    last_seq: Option<u64>,
    path: PathBuf,
    /// Bytes of the file that hold the header and valid records.
    bytes: u64,
}

/// Where a read-back stands between chunks.
#[derive(Debug, Clone, Copy)]
pub struct ReadCursor {
    /// Every seq up to this one has been returned (or was not wanted).
    after: u64,
    /// Resume point inside the segment starting at `.0`, if still valid.
    at: Option<(u64, u64)>,
}

impl ReadCursor {
    pub fn after(after_seq: u64) -> ReadCursor {
        ReadCursor {
            after: after_seq,
            at: None,
        }
    }
}

pub struct VolumeStore {
    dir: PathBuf,
    volume_id: VolumeId,
    meta: Meta,
    /// Seq the next new entry must have; `None` while the volume has never held one.
    next_seq: Option<u64>,
    segments: Vec<Segment>,
    /// The last segment, open for appending.
    active: Option<File>,
    dirty: bool,
    /// Counts appends; the background sync marks the store clean only if none came in while
    /// it synced.
    appends: u64,
    /// Bytes appended to the active segment since it was last synced.
    unsynced_bytes: u64,
    poisoned: Option<String>,
    sync_each_batch: bool,
    /// Opened by `inspect`: nothing is created, cut, deleted or written.
    read_only: bool,
    /// What a read-only scan would have repaired.
    notes: Vec<String>,
}

impl VolumeStore {
    /// Opens (creating if absent) the store of `volume_id` under `root`, scanning and
    /// checking every segment.
    pub fn open(
        root: &Path,
        volume_id: VolumeId,
        sync_each_batch: bool,
    ) -> Result<VolumeStore, StoreError> {
        Self::open_with(root, volume_id, sync_each_batch, false)
    }

    /// Opens an existing store without changing anything on disk, for `--inspect`.
    pub fn inspect(root: &Path, volume_id: VolumeId) -> Result<VolumeStore, StoreError> {
        Self::open_with(root, volume_id, false, true)
    }

    fn open_with(
        root: &Path,
        volume_id: VolumeId,
        sync_each_batch: bool,
        read_only: bool,
    ) -> Result<VolumeStore, StoreError> {
        let dir = root.join(format!("vol-{}", hex(&volume_id)));
        if !read_only {
            fs::create_dir_all(&dir).map_err(io_err("create volume directory", &dir))?;
        }
        let meta_path = dir.join("volume.meta");
        let meta = match fs::read(&meta_path) {
            Ok(raw) => {
                let meta = Meta::decode(&raw).map_err(|(what, at)| StoreError::Corrupt {
                    what: what.to_string(),
                    path: meta_path.clone(),
                    at: at as u64,
                })?;
                if meta.volume_id != volume_id {
                    return Err(StoreError::Corrupt {
                        what: format!(
                            "belongs to volume {}, not {}",
                            hex(&meta.volume_id),
                            hex(&volume_id)
                        ),
                        path: meta_path,
                        at: 0,
                    });
                }
                meta
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && read_only => {
                return Err(StoreError::Corrupt {
                    what: "volume.meta is missing".into(),
                    path: meta_path,
                    at: 0,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let meta = Meta {
                    volume_id,
                    epoch: 0,
                    checkpoint_through: None,
                };
                write_meta(&dir, &meta)?;
                meta
            }
            Err(e) => return Err(io_err("read", &meta_path)(e)),
        };
        let mut store = VolumeStore {
            dir,
            volume_id,
            meta,
            next_seq: None,
            segments: Vec::new(),
            active: None,
            dirty: false,
            appends: 0,
            unsynced_bytes: 0,
            poisoned: None,
            sync_each_batch,
            read_only,
            notes: Vec::new(),
        };
        store.scan()?;
        Ok(store)
    }

    pub fn epoch(&self) -> u64 {
        self.meta.epoch
    }

    pub fn next_seq(&self) -> Option<u64> {
        self.next_seq
    }

    /// The highest seq the agent holds (every seq up to it is stored or checkpointed).
    pub fn held_through(&self) -> Option<u64> {
        self.next_seq.and_then(|n| n.checked_sub(1))
    }

    pub fn checkpoint_through(&self) -> Option<u64> {
        self.meta.checkpoint_through
    }

    fn scan(&mut self) -> Result<(), StoreError> {
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        let listing = fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))?;
        for item in listing {
            let item = item.map_err(io_err("list", &self.dir))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_prefix("seg-")
                .and_then(|r| r.strip_suffix(".log"))
            {
                match first.parse::<u64>() {
                    Ok(first) if first.to_string().len() <= 20 => found.push((first, item.path())),
                    _ => {
                        return Err(StoreError::Corrupt {
                            what: "segment file name is not seg-<seq>.log".into(),
                            path: item.path(),
                            at: 0,
                        })
                    }
                }
            }
        }
        found.sort();
        let checkpoint = self.meta.checkpoint_through;
        let count = found.len();
        let mut expected: Option<u64> = None;
        for (index, (first_seq, path)) in found.into_iter().enumerate() {
            let last_file = index + 1 == count;
            let segment = self.scan_segment(first_seq, path, last_file)?;
            let Some(segment) = segment else { continue };
            if let (Some(e), Some(_)) = (expected, segment.last_seq) {
                let covered =
                    checkpoint.is_some_and(|c| c.checked_add(1) >= Some(segment.first_seq));
                if segment.first_seq != e && !covered {
                    return Err(StoreError::Corrupt {
                        what: format!(
                            "segment starts at seq {} but the previous one ended before {e}",
                            segment.first_seq
                        ),
                        path: segment.path,
                        at: 0,
                    });
                }
            }
            if let Some(last) = segment.last_seq {
                expected = Some(last + 1);
            }
            // Wholly behind the checkpoint: a checkpoint whose deletions did not finish.
            let behind =
                checkpoint.is_some_and(|c| segment.last_seq.unwrap_or(segment.first_seq) <= c);
            if behind && !last_file && self.read_only {
                self.notes.push(format!(
                    "{}: wholly behind the checkpoint; would be deleted",
                    segment.path.display()
                ));
                continue;
            }
            if behind && !last_file {
                fs::remove_file(&segment.path).map_err(io_err("remove", &segment.path))?;
                continue;
            }
            self.segments.push(segment);
        }
        let from_entries = expected;
        let from_checkpoint = checkpoint.map(|c| c + 1);
        self.next_seq = match (from_entries, from_checkpoint) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(last) = self.segments.last().filter(|_| !self.read_only) {
            let file = OpenOptions::new()
                .append(true)
                .open(&last.path)
                .map_err(io_err("open for append", &last.path))?;
            self.active = Some(file);
        }
        Ok(())
    }

    /// Checks one segment; cuts a torn tail off the last one. `None`: an empty last
    /// segment whose header never made it to disk, now removed.
    fn scan_segment(
        &mut self,
        first_seq: u64,
        path: PathBuf,
        last_file: bool,
    ) -> Result<Option<Segment>, StoreError> {
        let raw = fs::read(&path).map_err(io_err("read", &path))?;
        let corrupt = |what: String, at: usize| StoreError::Corrupt {
            what,
            path: path.clone(),
            at: at as u64,
        };
        match decode_segment_header(&raw) {
            Ok((volume_id, first)) => {
                if volume_id != self.volume_id {
                    return Err(corrupt(
                        format!("segment belongs to volume {}", hex(&volume_id)),
                        0,
                    ));
                }
                if first != first_seq {
                    return Err(corrupt(
                        format!("header says first seq {first}, name says {first_seq}"),
                        0,
                    ));
                }
            }
            Err(_) if last_file && raw.len() < SEGMENT_HEADER_BYTES && self.read_only => {
                self.notes.push(format!(
                    "{}: header never completed; would be removed",
                    path.display()
                ));
                return Ok(None);
            }
            Err(_) if last_file && raw.len() < SEGMENT_HEADER_BYTES => {
                log::warn!(
                    "{}: removing a segment whose header was never completed",
                    path.display()
                );
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                return Ok(None);
            }
            Err((what, at)) => return Err(corrupt(what.to_string(), at)),
        }
        let mut at = SEGMENT_HEADER_BYTES;
        let mut last_seq = None;
        let mut expected = first_seq;
        let bad: Option<(String, usize)> = loop {
            if at == raw.len() {
                break None;
            }
            if raw.len() - at < RECORD_HEAD_BYTES {
                break Some(("truncated record head".into(), at));
            }
            let head: [u8; RECORD_HEAD_BYTES] = raw[at..at + RECORD_HEAD_BYTES]
                .try_into()
                .expect("length checked");
            let (seq, len, crc) = match decode_record_head(&head) {
                Ok(h) => h,
                Err(what) => break Some((what.into(), at)),
            };
            if seq != expected {
                break Some((format!("record seq {seq}, expected {expected}"), at));
            }
            let body_at = at + RECORD_HEAD_BYTES;
            if raw.len() - body_at < len {
                break Some(("truncated record".into(), at));
            }
            if !record_crc_ok(&head, &raw[body_at..body_at + len], crc) {
                break Some(("record checksum mismatch".into(), at));
            }
            last_seq = Some(seq);
            expected = seq + 1;
            at = body_at + len;
        };
        if let Some((what, bad_at)) = bad {
            if !last_file {
                return Err(corrupt(what, bad_at));
            }
            if self.read_only {
                self.notes.push(format!(
                    "{}: torn tail at byte {bad_at} ({what}); {} bytes would be cut",
                    path.display(),
                    raw.len() - bad_at
                ));
                return Ok(Some(Segment {
                    first_seq,
                    last_seq,
                    path,
                    bytes: bad_at as u64,
                }));
            }
            log::warn!(
                "{}: cutting a torn tail at byte {bad_at} ({what}); {} bytes dropped, none of them acknowledged",
                path.display(),
                raw.len() - bad_at
            );
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err("open", &path))?;
            file.set_len(bad_at as u64)
                .map_err(io_err("truncate", &path))?;
            file.sync_all().map_err(io_err("sync", &path))?;
            at = bad_at;
        }
        Ok(Some(Segment {
            first_seq,
            last_seq,
            path,
            bytes: at as u64,
        }))
    }

    /// A report for a person: the volume's epoch, checkpoint, entries and segments, and
    /// what a read-only scan found to repair.
    pub fn describe(&self) -> String {
        let mut out = format!("volume {}: epoch {}", hex(&self.volume_id), self.meta.epoch);
        match self.meta.checkpoint_through {
            Some(c) => out.push_str(&format!(", checkpoint through {c}")),
            None => out.push_str(", no checkpoint"),
        }
        let first = self.segments.iter().find(|s| s.last_seq.is_some());
        let last = self.segments.iter().rev().find_map(|s| s.last_seq);
        match (first, last) {
            (Some(f), Some(l)) => {
                let from = f
                    .first_seq
                    .max(self.meta.checkpoint_through.map_or(0, |c| c + 1));
                out.push_str(&format!(", entries {from}..={l} ({})", l + 1 - from));
            }
            _ => out.push_str(", no entries"),
        }
        match self.next_seq {
            Some(n) => out.push_str(&format!(", next seq {n}\n")),
            None => out.push_str(", accepts any first seq\n"),
        }
        for seg in &self.segments {
            let seqs = match seg.last_seq {
                Some(l) => format!("seqs {}..={l}", seg.first_seq),
                None => "empty".to_string(),
            };
            let name = seg
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            out.push_str(&format!(
                "  {}  {seqs}  {} bytes\n",
                name.unwrap_or_default(),
                seg.bytes
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("  note: {note}\n"));
        }
        out
    }

    fn poison(&mut self, e: StoreError) -> StoreError {
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
        Ok(())
    }

    /// Whether enough is unsynced that the background sync should not wait for its timer.
    pub fn wants_sync(&self) -> bool {
        self.dirty && self.unsynced_bytes >= SEGMENT_TARGET_BYTES
    }

    /// For a sync outside the store's lock: a handle on the active segment and the append
    /// count it covers; None when there is nothing to sync.
    fn sync_handle(&self) -> Option<(File, u64, PathBuf)> {
        if !self.dirty || self.poisoned.is_some() {
            return None;
        }
        let file = self.active.as_ref()?.try_clone().ok()?;
        let path = self.segments.last()?.path.clone();
        Some((file, self.appends, path))
    }

    /// After a sync outside the lock covered `appends` appends: clean unless more came.
    fn synced(&mut self, appends: u64) {
        if self.appends == appends {
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

    /// Reads the next entries after the cursor (and after the checkpoint), at most
    /// `max_entries` and stopping before the batch body would exceed `max_body_bytes`.
    /// An empty result means the end.
    pub fn read_chunk(
        &self,
        cursor: &mut ReadCursor,
        max_body_bytes: usize,
        max_entries: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        use smlog_wire::format::{BATCH_HEAD_BYTES, ENTRY_HEAD_BYTES};
        let after = cursor.after.max(self.meta.checkpoint_through.unwrap_or(0));
        let mut out = Vec::new();
        let mut body = BATCH_HEAD_BYTES;
        for seg in &self.segments {
            if seg.last_seq.is_none_or(|l| l <= after) {
                continue;
            }
            let start = match cursor.at {
                Some((first, offset)) if first == seg.first_seq => offset,
                _ => SEGMENT_HEADER_BYTES as u64,
            };
            let mut file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
            file.seek(SeekFrom::Start(start))
                .map_err(io_err("seek", &seg.path))?;
            let mut input = BufReader::with_capacity(256 * 1024, file).take(seg.bytes - start);
            let mut at = start;
            while at < seg.bytes {
                let corrupt = |what: &str| StoreError::Corrupt {
                    what: what.to_string(),
                    path: seg.path.clone(),
                    at,
                };
                let mut head = [0u8; RECORD_HEAD_BYTES];
                input
                    .read_exact(&mut head)
                    .map_err(|_| corrupt("record head unreadable"))?;
                let (seq, len, crc) = decode_record_head(&head).map_err(corrupt)?;
                if body + ENTRY_HEAD_BYTES + len > max_body_bytes || out.len() == max_entries {
                    cursor.at = Some((seg.first_seq, at));
                    return Ok(out);
                }
                let mut entry = vec![0u8; len];
                input
                    .read_exact(&mut entry)
                    .map_err(|_| corrupt("record unreadable"))?;
                if !record_crc_ok(&head, &entry, crc) {
                    return Err(corrupt("record checksum mismatch on read-back"));
                }
                at += (RECORD_HEAD_BYTES + len) as u64;
                cursor.at = Some((seg.first_seq, at));
                if seq > after {
                    body += ENTRY_HEAD_BYTES + len;
                    cursor.after = seq;
                    out.push((seq, entry));
                }
            }
        }
        Ok(out)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<(), StoreError> {
    let tmp = dir.join("volume.meta.tmp");
    let path = dir.join("volume.meta");
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(&meta.encode())
        .map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename into", &path))?;
    sync_dir(dir)
}

/// Every volume the agent serves, opened on first use and kept open.
pub struct Volumes {
    root: PathBuf,
    sync_each_batch: bool,
    max_volumes: usize,
    open: Mutex<HashMap<VolumeId, Arc<Mutex<VolumeStore>>>>,
    /// Wakes the background sync early.
    kick: (Mutex<bool>, std::sync::Condvar),
}

/// Locks a store; a panic elsewhere while holding it is a bug, the data is still on disk.
pub fn lock(store: &Mutex<VolumeStore>) -> MutexGuard<'_, VolumeStore> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

impl Volumes {
    pub fn new(root: PathBuf, sync_each_batch: bool, max_volumes: usize) -> Volumes {
        Volumes {
            root,
            sync_each_batch,
            max_volumes,
            open: Mutex::new(HashMap::new()),
            kick: (Mutex::new(false), std::sync::Condvar::new()),
        }
    }

    /// The store of `volume_id`, opened if needed. A volume the agent has never seen is
    /// created only when `create` (a writer, an epoch raise) and while under the volume
    /// limit; otherwise `None`, so that readers and strangers leave nothing on disk.
    pub fn get(
        &self,
        volume_id: VolumeId,
        create: bool,
    ) -> Result<Option<Arc<Mutex<VolumeStore>>>, StoreError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = open.get(&volume_id) {
            return Ok(Some(Arc::clone(store)));
        }
        let exists = self.root.join(format!("vol-{}", hex(&volume_id))).exists();
        if !exists && !create {
            return Ok(None);
        }
        if !exists && open.len() >= self.max_volumes {
            return Err(StoreError::TooManyVolumes {
                max: self.max_volumes,
            });
        }
        let store = Arc::new(Mutex::new(VolumeStore::open(
            &self.root,
            volume_id,
            self.sync_each_batch,
        )?));
        log::info!("volume {}: opened", hex(&volume_id));
        open.insert(volume_id, Arc::clone(&store));
        Ok(Some(store))
    }

    /// Opens every volume directory found under the root, so that damage is reported at
    /// start-up. A damaged volume is logged and left closed; the others are served.
    pub fn open_existing(&self) -> io::Result<usize> {
        let mut opened = 0;
        for item in fs::read_dir(&self.root)? {
            let item = item?;
            let name = item.file_name().to_string_lossy().into_owned();
            let Some(hex_id) = name.strip_prefix("vol-") else {
                continue;
            };
            let Some(volume_id) = parse_hex(hex_id) else {
                log::warn!(
                    "{}: not a volume directory name, ignored",
                    item.path().display()
                );
                continue;
            };
            match self.get(volume_id, true) {
                Ok(_) => opened += 1,
                Err(e) => log::error!("volume {hex_id}: not served: {e}"),
            }
        }
        Ok(opened)
    }

    /// Syncs every volume with unsynced writes (the background flush). The fdatasync runs
    /// without the store's lock, so that appends (and their acks) go on meanwhile.
    pub fn sync_all(&self) {
        let stores: Vec<_> = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for store in stores {
            let Some((file, appends, path)) = lock(&store).sync_handle() else {
                continue;
            };
            match file.sync_data() {
                Ok(()) => lock(&store).synced(appends),
                Err(e) => {
                    let mut st = lock(&store);
                    let e = st.poison(io_err("sync", &path)(e));
                    log::error!("background sync: {e}");
                }
            }
        }
    }

    /// Asks the background sync to run now (a store has a segment's worth unsynced).
    pub fn kick_sync(&self) {
        let (m, c) = &self.kick;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        c.notify_one();
    }

    /// Waits until `kick_sync` or `timeout`, whichever comes first.
    pub fn wait_for_kick(&self, timeout: std::time::Duration) {
        let (m, c) = &self.kick;
        let mut kicked = m.lock().unwrap_or_else(|p| p.into_inner());
        if !*kicked {
            kicked = c
                .wait_timeout(kicked, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *kicked = false;
    }
}

pub fn parse_hex(text: &str) -> Option<VolumeId> {
    if text.len() != 32 || !text.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        range
            .map(|s| (s, format!("entry {s}").into_bytes()))
            .collect()
    }

    fn read_all(store: &VolumeStore, after: u64) -> Vec<(u64, Vec<u8>)> {
        let mut cursor = ReadCursor::after(after);
        let mut all = Vec::new();
        loop {
            let chunk = store.read_chunk(&mut cursor, 200, 3).unwrap();
            if chunk.is_empty() {
                return all;
            }
            all.extend(chunk);
        }
    }

    #[test]
    fn append_dedupe_gap_checkpoint_and_reopen() {
        let root = tempfile::tempdir().unwrap();
        let mut store = VolumeStore::open(root.path(), [1; 16], false).unwrap();
        assert_eq!(store.append(&entries(10..20)).unwrap(), Some(19));
        assert_eq!(
            store.append(&entries(15..25)).unwrap(),
            Some(24),
            "duplicates skipped"
        );
        assert!(matches!(
            store.append(&entries(30..31)),
            Err(StoreError::Gap {
                expected: 25,
                got: 30
            })
        ));
        assert_eq!(read_all(&store, 0), entries(10..25));
        assert_eq!(read_all(&store, 21), entries(22..25));
        store.checkpoint(17).unwrap();
        assert_eq!(read_all(&store, 0), entries(18..25));
        drop(store);
        let store = VolumeStore::open(root.path(), [1; 16], false).unwrap();
        assert_eq!(store.next_seq(), Some(25));
        assert_eq!(read_all(&store, 0), entries(18..25));
    }

    #[test]
    fn torn_tail_is_cut_and_mid_corruption_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let mut store = VolumeStore::open(root.path(), [2; 16], false).unwrap();
        store.append(&entries(1..6)).unwrap();
        let path = store.segments[0].path.clone();
        drop(store);
        // Half a record at the end: a torn write.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&RECORD_MAGIC).unwrap();
        drop(f);
        let store = VolumeStore::open(root.path(), [2; 16], false).unwrap();
        assert_eq!(read_all(&store, 0), entries(1..6));
        drop(store);
        // A flipped byte inside the second record of the only (so last) segment cuts there;
        let mut raw = fs::read(&path).unwrap();
        let second = SEGMENT_HEADER_BYTES + RECORD_HEAD_BYTES + "entry 1".len() + RECORD_HEAD_BYTES;
        raw[second] ^= 0xff;
        fs::write(&path, &raw).unwrap();
        let store = VolumeStore::open(root.path(), [2; 16], false).unwrap();
        assert_eq!(read_all(&store, 0), entries(1..2));
    }

    #[test]
    fn a_full_segment_is_closed_once_synced_or_at_the_maximum() {
        let root = tempfile::tempdir().unwrap();
        let mut store = VolumeStore::open(root.path(), [5; 16], false).unwrap();
        let entry = vec![9u8; 1 << 20];
        let mut seq = 1u64;
        let mut append = |store: &mut VolumeStore, n: usize| {
            for _ in 0..n {
                store.append(&[(seq, entry.clone())]).unwrap();
                seq += 1;
            }
        };
        // Past the target but never synced: the burst stays in one segment, no sync waited.
        append(&mut store, 20);
        assert_eq!(store.segments.len(), 1);
        assert!(store.wants_sync(), "20 MiB unsynced must ask for a sync");
        // Synced: the next append closes it and starts another.
        store.sync().unwrap();
        assert!(!store.wants_sync());
        append(&mut store, 1);
        assert_eq!(store.segments.len(), 2);
        // Without syncs a segment still ends at the maximum.
        append(&mut store, (SEGMENT_MAX_BYTES >> 20) as usize + 2);
        assert_eq!(store.segments.len(), 3);
        assert!(store.segments[1].bytes >= SEGMENT_MAX_BYTES);
    }

    #[test]
    fn several_segments_checkpoint_and_corruption_in_an_earlier_one() {
        let root = tempfile::tempdir().unwrap();
        let mut store = VolumeStore::open(root.path(), [4; 16], false).unwrap();
        let big: Vec<(u64, Vec<u8>)> = (1..=200u64)
            .map(|s| (s, vec![s as u8; 64 * 1024]))
            .collect();
        for batch in big.chunks(10) {
            store.append(batch).unwrap();
            // The background sync between batches: full segments are closed once clean.
            store.sync().unwrap();
        }
        assert!(
            store.segments.len() >= 2,
            "{} segments",
            store.segments.len()
        );
        let first_path = store.segments[0].path.clone();
        let first_last = store.segments[0].last_seq.unwrap();
        drop(store);
        let store = VolumeStore::open(root.path(), [4; 16], false).unwrap();
        let mut cursor = ReadCursor::after(0);
        let mut seqs = Vec::new();
        loop {
            let chunk = store.read_chunk(&mut cursor, 1024 * 1024, 100).unwrap();
            if chunk.is_empty() {
                break;
            }
            seqs.extend(chunk.iter().map(|e| e.0));
        }
        assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
        drop(store);
        // Damage inside the first (not last) segment is corruption, not a torn tail.
        let mut raw = fs::read(&first_path).unwrap();
        raw[SEGMENT_HEADER_BYTES + RECORD_HEAD_BYTES + 5] ^= 1;
        fs::write(&first_path, &raw).unwrap();
        match VolumeStore::open(root.path(), [4; 16], false) {
            Err(StoreError::Corrupt { path, at, .. }) => {
                assert_eq!(path, first_path);
                assert_eq!(at, SEGMENT_HEADER_BYTES as u64);
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
        }
        assert_eq!(fs::read(&first_path).unwrap(), raw, "nothing rewritten");
        // Repair it, then a checkpoint past the first segment deletes that file.
        raw[SEGMENT_HEADER_BYTES + RECORD_HEAD_BYTES + 5] ^= 1;
        fs::write(&first_path, &raw).unwrap();
        let mut store = VolumeStore::open(root.path(), [4; 16], false).unwrap();
        store.checkpoint(first_last + 1).unwrap();
        assert!(!first_path.exists());
        let mut cursor = ReadCursor::after(0);
        let chunk = store.read_chunk(&mut cursor, 1024 * 1024, 1).unwrap();
        assert_eq!(chunk[0].0, first_last + 2);
    }

    #[test]
    fn epoch_only_rises_and_survives_reopen() {
        let root = tempfile::tempdir().unwrap();
        let mut store = VolumeStore::open(root.path(), [3; 16], false).unwrap();
        store.raise_epoch(5).unwrap();
        assert!(matches!(
            store.raise_epoch(4),
            Err(StoreError::Fenced { current: 5, .. })
        ));
        drop(store);
        assert_eq!(
            VolumeStore::open(root.path(), [3; 16], false)
                .unwrap()
                .epoch(),
            5
        );
    }
}

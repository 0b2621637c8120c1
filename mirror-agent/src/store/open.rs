//! Opening a volume's store: its metadata (created for a new volume), then every segment
//! checked record by record. A torn tail at the end of the last segment (a write the agent
//! died in, never acknowledged) is cut; damage anywhere else refuses the volume, naming
//! file and byte. Opened read-only (`--inspect`) nothing on disk changes: what would be
//! repaired is noted for the report instead.

use super::format::*;
use super::write::write_meta;
use super::{hex, io_err, Segment, StoreError, VolumeStore};
use smlog_wire::format::VolumeId;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

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
            durable: None,
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
            // After a crash of the agent process (not of its host) the last records may
            // still be only in the page cache: sync them before calling them durable.
            file.sync_data().map_err(io_err("sync", &last.path))?;
            self.active = Some(file);
        }
        if !self.read_only {
            self.durable = self.held_through();
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
}

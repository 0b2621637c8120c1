//! The stripe journal (`VOLDIR/raid.journal`): a redo log that closes the write hole.
//!
//! Before any member of a stripe is written, the new bytes of every range the update will
//! write (data and parity) go into one record, and the journal is synced. After a crash,
//! assembly replays every record past the last checkpoint in sequence order, so each
//! stripe ends either as it was before its last update or as it is after it — never with
//! data and parity out of step, even if a member is missing by then (the parity in the
//! record carries the missing member's share).
//!
//! A checkpoint (after all members are synced) moves the tail to the head; records behind
//! the tail are free space of the ring.

use std::path::{Path, PathBuf};

use crate::format::{JournalHeader, Record, JOURNAL_START, PAGE_BYTES};
use crate::layout::Geometry;
use crate::member::MemberIo;
use crate::VolumeError;

pub const JOURNAL_FILE: &str = "raid.journal";
pub const DEFAULT_JOURNAL_BYTES: u64 = 32 << 20;

pub(crate) struct Journal {
    path: PathBuf,
    io: Box<dyn MemberIo>,
    array_id: u128,
    journal_bytes: u64,
    generation: u64,
    applied_seq: u64,
    tail: u64,
    head: u64,
    next_seq: u64,
    sync: bool,
}

/// Outcome of `append` when the ring has no room: the caller checkpoints and retries.
pub(crate) struct Full;

impl Journal {
    pub fn create(
        path: &Path,
        io: Box<dyn MemberIo>,
        array_id: u128,
        journal_bytes: u64,
    ) -> Result<(), VolumeError> {
        let h = JournalHeader {
            array_id,
            generation: 0,
            journal_bytes,
            applied_seq: 0,
            tail_offset: JOURNAL_START,
        };
        let mut both = h.encode();
        both.extend(h.encode());
        io.write_at(0, &both)
            .and_then(|_| io.sync())
            .map_err(|e| VolumeError::io(path, e))
    }

    /// Opens the journal and returns it with the records to replay, oldest first.
    pub fn open(
        path: &Path,
        io: Box<dyn MemberIo>,
        array_id: u128,
        geometry: &Geometry,
        sync: bool,
    ) -> Result<(Journal, Vec<Record>), VolumeError> {
        let corrupt = |at: u64, detail: String| VolumeError::Corrupt {
            what: "journal",
            path: path.to_path_buf(),
            at,
            detail,
        };
        let len = io.len().map_err(|e| VolumeError::io(path, e))?;
        let mut two = vec![0u8; (2 * PAGE_BYTES) as usize];
        if len < 2 * PAGE_BYTES {
            return Err(corrupt(len, "journal file is truncated".into()));
        }
        io.read_at(0, &mut two)
            .map_err(|e| VolumeError::io(path, e))?;
        let h = JournalHeader::decode_slots(&two).map_err(|d| corrupt(0, d))?;
        if h.array_id != array_id {
            return Err(corrupt(
                0,
                format!("journal belongs to array {:032x}", h.array_id),
            ));
        }
        if len < h.journal_bytes {
            return Err(corrupt(
                len,
                format!("journal is {len} bytes, header says {}", h.journal_bytes),
            ));
        }
        let one_stripe = geometry.disks as u64 * geometry.chunk_bytes + PAGE_BYTES;
        if (h.journal_bytes - JOURNAL_START) / 4 < one_stripe {
            return Err(corrupt(
                0,
                format!(
                    "journal of {} bytes is too small for stripes of {one_stripe} bytes",
                    h.journal_bytes
                ),
            ));
        }
        let mut j = Journal {
            path: path.to_path_buf(),
            io,
            array_id,
            journal_bytes: h.journal_bytes,
            generation: h.generation,
            applied_seq: h.applied_seq,
            tail: h.tail_offset,
            head: h.tail_offset,
            next_seq: h.applied_seq + 1,
            sync,
        };
        let records = j.scan(geometry)?;
        Ok((j, records))
    }

    fn scan(&mut self, geometry: &Geometry) -> Result<Vec<Record>, VolumeError> {
        let mut out = Vec::new();
        let mut pos = self.tail;
        let mut page = vec![0u8; PAGE_BYTES as usize];
        loop {
            let mut tried_wrap = false;
            let found = loop {
                if pos + PAGE_BYTES > self.journal_bytes {
                    pos = JOURNAL_START;
                    tried_wrap = true;
                }
                let rec = self.read_record(pos, &mut page, geometry)?;
                match rec {
                    Some(r) => break Some(r),
                    None if !tried_wrap && pos != JOURNAL_START => {
                        pos = JOURNAL_START;
                        tried_wrap = true;
                    }
                    None => break None,
                }
            };
            match found {
                Some(r) => {
                    pos += r.encoded_bytes();
                    self.next_seq += 1;
                    out.push(r);
                }
                None => break,
            }
        }
        self.head = pos;
        Ok(out)
    }

    fn read_record(
        &self,
        pos: u64,
        page: &mut [u8],
        geometry: &Geometry,
    ) -> Result<Option<Record>, VolumeError> {
        self.io
            .read_at(pos, page)
            .map_err(|e| VolumeError::io(&self.path, e))?;
        let Some((seq, total)) = Record::peek(page, self.array_id) else {
            return Ok(None);
        };
        if seq != self.next_seq || pos + total > self.journal_bytes {
            return Ok(None);
        }
        let mut buf = vec![0u8; total as usize];
        self.io
            .read_at(pos, &mut buf)
            .map_err(|e| VolumeError::io(&self.path, e))?;
        Ok(Record::decode(&buf, geometry))
    }

    /// Where a record of `bytes` fits without overwriting unapplied records.
    fn place(&self, head: u64, bytes: u64) -> Option<u64> {
        if head >= self.tail {
            if head + bytes <= self.journal_bytes {
                return Some(head);
            }
            if JOURNAL_START + bytes < self.tail {
                return Some(JOURNAL_START);
            }
            None
        } else if head + bytes < self.tail {
            Some(head)
        } else {
            None
        }
    }

    /// Largest record the ring can ever take; callers split their batches below it.
    pub fn max_batch_bytes(&self) -> u64 {
        (self.journal_bytes - JOURNAL_START) / 4
    }

    /// Writes the records (assigning their seq) and syncs the journal.
    pub fn append(&mut self, records: &mut [Record]) -> Result<Result<(), Full>, VolumeError> {
        let mut head = self.head;
        let mut placed = Vec::with_capacity(records.len());
        for r in records.iter() {
            let bytes = r.encoded_bytes();
            let was_wrapped = head < self.tail;
            match self.place(head, bytes) {
                Some(at) => {
                    // Once wrapped, a placement must stay below the tail.
                    if was_wrapped && at + bytes >= self.tail {
                        return Ok(Err(Full));
                    }
                    placed.push(at);
                    head = at + bytes;
                }
                None => return Ok(Err(Full)),
            }
        }
        let mut buf = Vec::new();
        for (r, at) in records.iter_mut().zip(&placed) {
            r.seq = self.next_seq;
            self.next_seq += 1;
            buf.clear();
            r.encode_into(self.array_id, &mut buf);
            self.io
                .write_at(*at, &buf)
                .map_err(|e| VolumeError::io(&self.path, e))?;
        }
        if self.sync {
            self.io.sync().map_err(|e| VolumeError::io(&self.path, e))?;
        }
        self.head = head;
        Ok(Ok(()))
    }

    /// Declares every appended record applied and durable on the members (the caller has
    /// synced them), freeing the ring.
    pub fn checkpoint(&mut self) -> Result<(), VolumeError> {
        if self.applied_seq + 1 == self.next_seq && self.tail == self.head {
            return Ok(());
        }
        let h = JournalHeader {
            array_id: self.array_id,
            generation: self.generation + 1,
            journal_bytes: self.journal_bytes,
            applied_seq: self.next_seq - 1,
            tail_offset: if self.head + PAGE_BYTES > self.journal_bytes {
                JOURNAL_START
            } else {
                self.head
            },
        };
        self.io
            .write_at(h.slot_offset(), &h.encode())
            .and_then(|_| self.io.sync())
            .map_err(|e| VolumeError::io(&self.path, e))?;
        self.generation = h.generation;
        self.applied_seq = h.applied_seq;
        self.tail = h.tail_offset;
        self.head = h.tail_offset;
        Ok(())
    }
}

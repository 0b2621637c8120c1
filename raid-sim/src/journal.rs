//! The stripe journal: what closes the write hole.
//!
//! Two files in the volume directory:
//!
//! * `raid.records` — a ring of redo records. Before any member of a stripe is written,
//!   the new bytes of every range the update will write (data and parity) go into one
//!   record. After a crash, assembly replays every record past the checkpointed tail in
//!   sequence order, so each stripe ends as it was before or after its last update —
//!   never with data and parity out of step, even when a member is missing by then (the
//!   parity in the record carries the missing member's share).
//! * `raid.journal` — header (tail, applied seq) and a dirty-region bitmap. A region's bit
//!   is set and synced before its first stripe update after a checkpoint; bits are cleared
//!   by the checkpoint of `flush`, once the members are synced.
//!
//! Durability: a process crash (`kill -9`) keeps every record (page cache), so replay alone
//! restores every stripe. The ring is synced per batch only in strict mode
//! (`RaidOptions::journal_sync`); otherwise a power loss may lose records, and assembly
//! resyncs the parity of every stripe in a dirty region from its data instead. Only power
//! loss together with the loss of a member, outside strict mode, leaves a stripe of a dirty
//! region unprotected; assembly then names the stripes it cannot vouch for.

use std::path::{Path, PathBuf};

use crate::journal_format::{JournalHeader, Record, BITMAP_START, BITS_PER_PAGE, MAX_BITMAP_PAGES};
use crate::layout::{Geometry, PAGE_BYTES};
use crate::member::MemberIo;
use crate::volume::VolumeError;

pub const JOURNAL_FILE: &str = "raid.journal";
pub const RECORDS_FILE: &str = "raid.records";
pub const DEFAULT_RING_BYTES: u64 = 64 << 20;

/// Member bytes one bitmap bit covers at least: sequential writes then set (and sync) a
/// new bit once per this many bytes of each member, while a crash resyncs little.
pub const MIN_REGION_MEMBER_BYTES: u64 = 4 << 20;

/// Stripes per bitmap bit and bitmap pages for an array.
pub fn bitmap_geometry(g: &Geometry) -> (u64, u32) {
    let mut region = (MIN_REGION_MEMBER_BYTES / g.chunk_bytes).max(1);
    while g.stripes.div_ceil(region) > MAX_BITMAP_PAGES * BITS_PER_PAGE {
        region *= 2;
    }
    let pages = g.stripes.div_ceil(region).div_ceil(BITS_PER_PAGE).max(1);
    (region, pages as u32)
}

/// The smallest ring that takes four full-stripe records.
pub fn min_ring_bytes(g: &Geometry) -> u64 {
    4 * (g.disks as u64 * g.chunk_bytes + PAGE_BYTES)
}

pub(crate) struct Journal {
    path: PathBuf,
    io: Box<dyn MemberIo>,
    ring_path: PathBuf,
    ring: Box<dyn MemberIo>,
    array_id: u128,
    ring_bytes: u64,
    generation: u64,
    applied_seq: u64,
    tail: u64,
    head: u64,
    next_seq: u64,
    region_stripes: u64,
    bitmap: Vec<u8>,
    dirty_regions: u64,
    strict: bool,
    /// Encoding buffer kept between appends (no fresh, page-faulting allocation per write).
    scratch: Vec<u8>,
}

/// Outcome of `append` when the ring has no room: the caller checkpoints and retries.
pub(crate) struct Full;

/// What assembly must redo: records to replay, and stripes whose regions were dirty.
pub(crate) struct Recovery {
    pub records: Vec<Record>,
    pub dirty_stripes: Vec<u64>,
}

impl Journal {
    pub fn create(
        path: &Path,
        io: &dyn MemberIo,
        array_id: u128,
        ring_bytes: u64,
        g: &Geometry,
    ) -> Result<(), VolumeError> {
        let (region_stripes, bitmap_pages) = bitmap_geometry(g);
        let h = JournalHeader {
            array_id,
            generation: 0,
            ring_bytes,
            applied_seq: 0,
            tail_offset: 0,
            region_stripes,
            bitmap_pages,
        };
        let mut buf = h.encode();
        buf.extend(h.encode());
        buf.resize(h.journal_file_bytes() as usize, 0);
        io.write_at(0, &buf)
            .and_then(|_| io.sync())
            .map_err(|e| VolumeError::io(path, e))
    }

    /// Opens the journal and returns it with what assembly must redo.
    pub fn open(
        path: &Path,
        io: Box<dyn MemberIo>,
        ring_path: &Path,
        ring: Box<dyn MemberIo>,
        array_id: u128,
        g: &Geometry,
        strict: bool,
    ) -> Result<(Journal, Recovery), VolumeError> {
        let corrupt = |at: u64, detail: String| VolumeError::Corrupt {
            what: "journal",
            path: path.to_path_buf(),
            at,
            detail: format!(
                "{detail} (removing {JOURNAL_FILE} and {RECORDS_FILE} makes the next assembly \
                 start a new journal and resync every stripe)"
            ),
        };
        let len = io.len().map_err(|e| VolumeError::io(path, e))?;
        if len < BITMAP_START {
            return Err(corrupt(len, "journal file is truncated".into()));
        }
        let mut two = vec![0u8; BITMAP_START as usize];
        io.read_at(0, &mut two)
            .map_err(|e| VolumeError::io(path, e))?;
        let h = JournalHeader::decode_slots(&two).map_err(|d| corrupt(0, d))?;
        if h.array_id != array_id {
            return Err(corrupt(
                0,
                format!("journal belongs to array {:032x}", h.array_id),
            ));
        }
        if (h.region_stripes, h.bitmap_pages) != bitmap_geometry(g) {
            return Err(corrupt(
                0,
                format!(
                    "dirty bitmap of {} pages × {} stripes does not fit {} stripes",
                    h.bitmap_pages, h.region_stripes, g.stripes
                ),
            ));
        }
        if len < h.journal_file_bytes() {
            return Err(corrupt(len, "journal file is truncated".into()));
        }
        if h.ring_bytes < min_ring_bytes(g) {
            return Err(corrupt(
                0,
                format!(
                    "record ring of {} bytes is too small for stripes of this geometry",
                    h.ring_bytes
                ),
            ));
        }
        let ring_len = ring.len().map_err(|e| VolumeError::io(ring_path, e))?;
        if ring_len < h.ring_bytes {
            return Err(VolumeError::Corrupt {
                what: "journal records",
                path: ring_path.to_path_buf(),
                at: ring_len,
                detail: format!("file is {ring_len} bytes, the ring is {}", h.ring_bytes),
            });
        }
        let mut bitmap = vec![0u8; h.bitmap_pages as usize * PAGE_BYTES as usize];
        io.read_at(BITMAP_START, &mut bitmap)
            .map_err(|e| VolumeError::io(path, e))?;
        let dirty_regions = bitmap.iter().map(|b| b.count_ones() as u64).sum();
        let mut dirty_stripes = Vec::new();
        for (i, byte) in bitmap.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    let r = i as u64 * 8 + bit;
                    let lo = r * h.region_stripes;
                    dirty_stripes.extend(lo.min(g.stripes)..(lo + h.region_stripes).min(g.stripes));
                }
            }
        }
        let mut j = Journal {
            path: path.to_path_buf(),
            io,
            ring_path: ring_path.to_path_buf(),
            ring,
            array_id,
            ring_bytes: h.ring_bytes,
            generation: h.generation,
            applied_seq: h.applied_seq,
            tail: h.tail_offset,
            head: h.tail_offset,
            next_seq: h.applied_seq + 1,
            region_stripes: h.region_stripes,
            bitmap,
            dirty_regions,
            strict,
            scratch: Vec::new(),
        };
        let records = j.scan(g)?;
        Ok((
            j,
            Recovery {
                records,
                dirty_stripes,
            },
        ))
    }

    fn scan(&mut self, g: &Geometry) -> Result<Vec<Record>, VolumeError> {
        let mut out = Vec::new();
        let mut pos = self.tail;
        let mut page = vec![0u8; PAGE_BYTES as usize];
        loop {
            if pos + PAGE_BYTES > self.ring_bytes {
                pos = 0;
            }
            let mut rec = self.read_record(pos, &mut page, g)?;
            if rec.is_none() && pos != 0 {
                // A record that did not fit before the end of the ring starts at 0.
                if let Some(r) = self.read_record(0, &mut page, g)? {
                    pos = 0;
                    rec = Some(r);
                }
            }
            match rec {
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
        g: &Geometry,
    ) -> Result<Option<Record>, VolumeError> {
        let err = |e| VolumeError::io(&self.ring_path, e);
        self.ring.read_at(pos, page).map_err(err)?;
        let Some((seq, total)) = Record::peek(page, self.array_id) else {
            return Ok(None);
        };
        if seq != self.next_seq || pos + total > self.ring_bytes {
            return Ok(None);
        }
        let mut buf = vec![0u8; total as usize];
        self.ring.read_at(pos, &mut buf).map_err(err)?;
        Ok(Record::decode(&buf, g))
    }

    /// Where a record of `bytes` fits without overwriting unapplied records.
    fn place(&self, head: u64, bytes: u64) -> Option<u64> {
        if head >= self.tail {
            if head + bytes <= self.ring_bytes {
                Some(head)
            } else if bytes < self.tail {
                Some(0)
            } else {
                None
            }
        } else if head + bytes < self.tail {
            Some(head)
        } else {
            None
        }
    }

    /// Largest batch of records the ring always takes after a checkpoint.
    pub fn max_batch_bytes(&self) -> u64 {
        self.ring_bytes / 4
    }

    pub fn strict(&self) -> bool {
        self.strict
    }

    /// Sets the dirty bits of the regions of `stripes`; newly set bits are synced before
    /// returning, so no member write of those stripes can precede them on the media.
    pub fn mark_dirty(&mut self, stripes: &[u64]) -> Result<(), VolumeError> {
        let mut pages = Vec::new();
        for s in stripes {
            let r = s / self.region_stripes;
            let (byte, bit) = ((r / 8) as usize, r % 8);
            if self.bitmap[byte] & (1 << bit) == 0 {
                self.bitmap[byte] |= 1 << bit;
                self.dirty_regions += 1;
                let page = byte / PAGE_BYTES as usize;
                if !pages.contains(&page) {
                    pages.push(page);
                }
            }
        }
        if pages.is_empty() {
            return Ok(());
        }
        for page in pages {
            let lo = page * PAGE_BYTES as usize;
            self.io
                .write_at(
                    BITMAP_START + lo as u64,
                    &self.bitmap[lo..lo + PAGE_BYTES as usize],
                )
                .map_err(|e| VolumeError::io(&self.path, e))?;
        }
        self.io.sync().map_err(|e| VolumeError::io(&self.path, e))
    }

    /// Writes the records (assigning their seq); in strict mode syncs the ring.
    pub fn append(&mut self, records: &mut [Record]) -> Result<Result<(), Full>, VolumeError> {
        let mut head = self.head;
        let mut placed = Vec::with_capacity(records.len());
        for r in records.iter() {
            let bytes = r.encoded_bytes();
            match self.place(head, bytes) {
                Some(at) => {
                    placed.push(at);
                    head = at + bytes;
                }
                None => return Ok(Err(Full)),
            }
        }
        let mut buf = std::mem::take(&mut self.scratch);
        // Records placed back to back go out in one write.
        let mut run_at = None;
        for (r, at) in records.iter_mut().zip(&placed) {
            r.seq = self.next_seq;
            self.next_seq += 1;
            match run_at {
                Some(start) if start + buf.len() as u64 == *at => {}
                Some(start) => {
                    self.ring
                        .write_at(start, &buf)
                        .map_err(|e| VolumeError::io(&self.ring_path, e))?;
                    buf.clear();
                    run_at = Some(*at);
                }
                None => run_at = Some(*at),
            }
            r.encode_into(self.array_id, &mut buf);
        }
        if let Some(start) = run_at {
            self.ring
                .write_at(start, &buf)
                .map_err(|e| VolumeError::io(&self.ring_path, e))?;
        }
        buf.clear();
        if buf.capacity() > 64 << 20 {
            buf = Vec::new();
        }
        self.scratch = buf;
        if self.strict {
            self.ring
                .sync()
                .map_err(|e| VolumeError::io(&self.ring_path, e))?;
        }
        self.head = head;
        Ok(Ok(()))
    }

    /// Frees the ring: every appended record has been applied to the members. With
    /// `members_synced` the members are durable too, and the dirty bitmap is cleared.
    pub fn checkpoint(&mut self, members_synced: bool) -> Result<(), VolumeError> {
        let ring_moves = !(self.applied_seq + 1 == self.next_seq && self.tail == self.head);
        let clear = members_synced && self.dirty_regions > 0;
        if !ring_moves && !clear {
            return Ok(());
        }
        let err = |e| VolumeError::io(&self.path, e);
        if clear {
            self.bitmap.fill(0);
            self.dirty_regions = 0;
            self.io.write_at(BITMAP_START, &self.bitmap).map_err(err)?;
        }
        let tail = if self.head + PAGE_BYTES > self.ring_bytes {
            0
        } else {
            self.head
        };
        let (region_stripes, bitmap_pages) = (
            self.region_stripes,
            (self.bitmap.len() / PAGE_BYTES as usize) as u32,
        );
        let h = JournalHeader {
            array_id: self.array_id,
            generation: self.generation + 1,
            ring_bytes: self.ring_bytes,
            applied_seq: self.next_seq - 1,
            tail_offset: tail,
            region_stripes,
            bitmap_pages,
        };
        self.io
            .write_at(h.slot_offset(), &h.encode())
            .and_then(|_| self.io.sync())
            .map_err(err)?;
        self.generation = h.generation;
        self.applied_seq = h.applied_seq;
        self.tail = tail;
        self.head = tail;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{create_sized, open_rw};
    use crate::journal_format::RecordRange;
    use crate::member::FileMember;
    use proptest::prelude::*;

    fn files(dir: &Path, ring_bytes: u64, g: &Geometry) {
        let j = create_sized(&dir.join(JOURNAL_FILE), 0).unwrap();
        create_sized(&dir.join(RECORDS_FILE), ring_bytes).unwrap();
        Journal::create(
            &dir.join(JOURNAL_FILE),
            &FileMember::new(j),
            7,
            ring_bytes,
            g,
        )
        .unwrap();
    }

    fn open(dir: &Path, g: &Geometry) -> (Journal, Recovery) {
        let o = |n: &str| {
            Box::new(FileMember::new(open_rw(&dir.join(n)).unwrap())) as Box<dyn MemberIo>
        };
        Journal::open(
            &dir.join(JOURNAL_FILE),
            o(JOURNAL_FILE),
            &dir.join(RECORDS_FILE),
            o(RECORDS_FILE),
            7,
            g,
            false,
        )
        .unwrap()
    }

    fn record(stripe: u64, blocks: usize, tag: u8) -> Record {
        Record {
            seq: 0,
            stripe,
            ranges: vec![RecordRange {
                member: (stripe % 4) as u32,
                chunk_offset: 0,
                data: vec![tag; blocks * 4096],
            }],
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Whatever the record sizes, checkpoints and wrap-arounds, a reopen (after a
        /// crash: no checkpoint) returns exactly the records appended since the last
        /// checkpoint, in order, and the bitmap names their stripes.
        #[test]
        fn reopen_returns_exactly_the_records_since_the_checkpoint(
            ops in proptest::collection::vec((0u64..64, 1usize..5, 0u8..10), 1..80))
        {
            let dir = tempfile::tempdir().unwrap();
            let g = Geometry { disks: 4, chunk_bytes: 16384, stripes: 64 };
            let ring = min_ring_bytes(&g);
            files(dir.path(), ring, &g);
            let (mut j, rec) = open(dir.path(), &g);
            prop_assert!(rec.records.is_empty() && rec.dirty_stripes.is_empty());
            let mut since: Vec<(u64, u8)> = Vec::new();
            let mut cleared = true;
            for (i, (stripe, blocks, action)) in ops.iter().enumerate() {
                let tag = i as u8;
                let mut batch = vec![record(*stripe, *blocks, tag)];
                j.mark_dirty(&[*stripe]).unwrap();
                cleared = false;
                if j.append(&mut batch).unwrap().is_err() {
                    j.checkpoint(false).unwrap();
                    since.clear();
                    prop_assert!(j.append(&mut batch).unwrap().is_ok(), "empty ring refused a record");
                }
                since.push((*stripe, tag));
                if *action == 0 {
                    j.checkpoint(true).unwrap();
                    since.clear();
                    cleared = true;
                }
            }
            drop(j);
            let (_, rec) = open(dir.path(), &g);
            let got: Vec<(u64, u8)> = rec.records.iter().map(|r| (r.stripe, r.ranges[0].data[0])).collect();
            prop_assert_eq!(&got, &since);
            for w in rec.records.windows(2) {
                prop_assert_eq!(w[0].seq + 1, w[1].seq);
            }
            for (s, _) in &since {
                prop_assert!(rec.dirty_stripes.contains(s));
            }
            if cleared {
                prop_assert!(rec.dirty_stripes.is_empty());
            }
        }
    }
}

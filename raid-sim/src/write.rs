//! The RAID-5 write path: stripe updates planned as read-modify-write or reconstruct-write
//! (whichever reads less), logged in the journal, then applied to the members; flush,
//! journal checkpoints and the resync of stripes a crash left dirty.

use std::sync::atomic::Ordering;

use crate::array::{lock_read, lock_write, Inner, OpError, View};
use crate::format::{block_crc, MemberState};
use crate::journal_format::{Record, RecordRange};
use crate::layout::PAGE_BYTES;
use crate::parity::{xor_into, xor_many};
use crate::volume::{VolumeError, BLOCK_BYTES};

/// Stripes per journal batch (one journal sync covers them all).
const BATCH_STRIPES: u64 = 32;

impl Inner {
    pub fn flush_all(&self) -> Result<(), VolumeError> {
        // Syncing an unlinked member file would promise durability that is not there.
        self.check_member_files();
        loop {
            let view = self.view();
            let mut failed = None;
            for (i, m) in view.members.iter().enumerate() {
                let Some(m) = m else { continue };
                if view.states[i] == MemberState::Failed {
                    continue;
                }
                if let Err(e) = m.io.sync() {
                    failed = Some((i as u32, e));
                    break;
                }
            }
            match failed {
                Some((i, e)) => self.fail_member(i, &format!("sync failed: {e}"))?,
                None => break,
            }
        }
        self.checkpoint_journal(true)
    }

    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        self.write_as(offset, data, false)
    }

    /// `write`; with `fresh`, the caller vouches that nothing lives in the range, so that
    /// stripes the write covers whole skip the journal (see `BlockVolume::write_fresh_at`).
    pub fn write_as(&self, offset: u64, data: &[u8], fresh: bool) -> Result<(), VolumeError> {
        self.check_poisoned()?;
        self.check_range(offset, data.len())?;
        let g = self.geometry;
        // One batch: stripes whose records fit a quarter of the journal, one journal sync.
        let record_bytes = g.disks as u64 * g.chunk_bytes + PAGE_BYTES;
        let max_batch = self
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .max_batch_bytes();
        let batch_stripes = (max_batch / record_bytes).clamp(1, BATCH_STRIPES);
        let mut done = 0usize;
        while done < data.len() {
            let first_stripe = g.locate(offset + done as u64).stripe;
            let last_stripe = (first_stripe + batch_stripes - 1).min(g.stripes - 1);
            let batch_end_logical =
                ((last_stripe + 1) * g.stripe_data_bytes()).min(offset + data.len() as u64);
            let batch_len = (batch_end_logical - offset) as usize - done;
            let batch = &data[done..done + batch_len];
            self.write_batch(offset + done as u64, batch, fresh)?;
            done += batch_len;
        }
        Ok(())
    }

    fn write_batch(&self, offset: u64, data: &[u8], fresh: bool) -> Result<(), VolumeError> {
        let g = self.geometry;
        // Split into per-stripe pieces: (stripe, [(data_index, chunk_offset, bytes)]).
        let mut stripes: Vec<(u64, Vec<Piece>)> = Vec::new();
        let mut done = 0usize;
        while done < data.len() {
            let loc = g.locate(offset + done as u64);
            let n = ((g.chunk_bytes - loc.chunk_offset) as usize).min(data.len() - done);
            let piece = (loc.data_index, loc.chunk_offset, &data[done..done + n]);
            match stripes.last_mut() {
                Some((s, v)) if *s == loc.stripe => v.push(piece),
                _ => stripes.push((loc.stripe, vec![piece])),
            }
            done += n;
        }
        let _locks: Vec<_> = stripes
            .iter()
            .map(|(s, _)| lock_write(self.stripe_lock(*s)))
            .collect();
        self.with_retries(|| {
            self.check_poisoned()?;
            let view = self.view();
            let mut logged = Vec::with_capacity(stripes.len());
            let mut unlogged = Vec::new();
            for (s, pieces) in &stripes {
                let record = self.plan_stripe(&view, *s, pieces)?;
                let whole =
                    pieces.iter().map(|p| p.2.len() as u64).sum::<u64>() == g.stripe_data_bytes();
                if fresh && whole {
                    unlogged.push(record);
                } else {
                    logged.push(record);
                }
            }
            self.journal_and_apply(&view, logged, unlogged)
        })
    }

    /// Computes the ranges a stripe update writes (the journal record), reading what the
    /// chosen method needs.
    fn plan_stripe(
        &self,
        view: &View,
        stripe: u64,
        pieces: &[(u32, u64, &[u8])],
    ) -> Result<Record, OpError> {
        let g = self.geometry;
        let p = g.parity_member(stripe);
        let u0 = pieces.iter().map(|x| x.1).min().unwrap_or(0);
        let u1 = pieces
            .iter()
            .map(|x| x.1 + x.2.len() as u64)
            .max()
            .unwrap_or(0);
        let ulen = (u1 - u0) as usize;
        let down: Vec<u32> = (0..g.disks)
            .filter(|m| view.usable(*m, stripe).is_none())
            .collect();
        if down.len() > 1 {
            return Err(OpError::Volume(VolumeError::Invalid {
                path: self.dir.clone(),
                detail: format!("stripe {stripe}: members {down:?} unavailable; cannot write"),
            }));
        }
        let piece_of = |i: u32| pieces.iter().find(|x| x.0 == i);
        let mut ranges = Vec::new();
        for (i, off, bytes) in pieces {
            let m = g.data_member(stripe, *i);
            if view.usable(m, stripe).is_some() {
                ranges.push(RecordRange {
                    member: m,
                    chunk_offset: *off as u32,
                    data: bytes.to_vec(),
                });
            }
        }
        if down.first() == Some(&p) {
            // Parity member down: data alone.
            self.stats.degraded_writes.fetch_add(1, Ordering::Relaxed);
            return Ok(Record {
                seq: 0,
                stripe,
                ranges,
            });
        }
        let covers =
            |i: u32| matches!(piece_of(i), Some((_, off, b)) if *off == u0 && b.len() == ulen);
        let parity = if let Some(&f) = down.first() {
            // Degraded: rebuild the missing member's image over [u0, u1), then recompute.
            self.stats.degraded_writes.fetch_add(1, Ordering::Relaxed);
            let mut images: Vec<Vec<u8>> = Vec::new();
            let mut missing = vec![0u8; ulen];
            self.read_verified(view, stripe, p, u0, &mut missing)?;
            for i in 0..g.data_disks() {
                let m = g.data_member(stripe, i);
                if m == f {
                    continue;
                }
                let mut img = vec![0u8; ulen];
                self.read_verified(view, stripe, m, u0, &mut img)?;
                xor_into(&mut missing, &img);
                overlay(&mut img, u0, piece_of(i));
                images.push(img);
            }
            let fi = g.data_index(stripe, f).expect("f is a data member");
            overlay(&mut missing, u0, piece_of(fi));
            images.push(missing);
            let refs: Vec<&[u8]> = images.iter().map(|v| v.as_slice()).collect();
            let mut par = vec![0u8; ulen];
            xor_many(&mut par, &refs);
            par
        } else {
            let rmw_reads = pieces.len() + 1;
            let rcw_reads = (0..g.data_disks()).filter(|i| !covers(*i)).count();
            if rcw_reads <= rmw_reads {
                self.stats.rcw_stripes.fetch_add(1, Ordering::Relaxed);
                // Covering pieces are used in place; only partly covered chunks are read.
                let mut read: Vec<Option<Vec<u8>>> = Vec::new();
                for i in 0..g.data_disks() {
                    if covers(i) {
                        read.push(None);
                        continue;
                    }
                    let mut img = vec![0u8; ulen];
                    self.read_verified(view, stripe, g.data_member(stripe, i), u0, &mut img)?;
                    overlay(&mut img, u0, piece_of(i));
                    read.push(Some(img));
                }
                let refs: Vec<&[u8]> = (0..g.data_disks())
                    .map(|i| match (&read[i as usize], piece_of(i)) {
                        (Some(img), _) => img.as_slice(),
                        (None, Some(piece)) => piece.2,
                        (None, None) => unreachable!("a covered chunk has a piece"),
                    })
                    .collect();
                let mut par = vec![0u8; ulen];
                xor_many(&mut par, &refs);
                par
            } else {
                self.stats.rmw_stripes.fetch_add(1, Ordering::Relaxed);
                let mut par = vec![0u8; ulen];
                self.read_verified(view, stripe, p, u0, &mut par)?;
                for (i, off, bytes) in pieces {
                    let mut old = vec![0u8; bytes.len()];
                    self.read_verified(view, stripe, g.data_member(stripe, *i), *off, &mut old)?;
                    let at = (*off - u0) as usize;
                    let dst = &mut par[at..at + bytes.len()];
                    xor_into(dst, &old);
                    xor_into(dst, bytes);
                }
                par
            }
        };
        ranges.push(RecordRange {
            member: p,
            chunk_offset: u0 as u32,
            data: parity,
        });
        Ok(Record {
            seq: 0,
            stripe,
            ranges,
        })
    }

    /// Logs `records` in the journal, then writes them and `unlogged` (whole stripes of
    /// fresh data, whose loss in a crash harms nobody) to the members. Every stripe's region
    /// is marked dirty first, so that assembly after a crash resyncs the parity of an
    /// unlogged stripe that was cut short.
    fn journal_and_apply(
        &self,
        view: &View,
        mut records: Vec<Record>,
        unlogged: Vec<Record>,
    ) -> Result<(), OpError> {
        let stripes: Vec<u64> = records.iter().chain(&unlogged).map(|r| r.stripe).collect();
        loop {
            let gate = lock_read(&self.gate);
            let (appended, strict) = {
                let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
                j.mark_dirty(&stripes).map_err(|e| self.poison(e))?;
                let a = if records.is_empty() {
                    Ok(())
                } else {
                    j.append(&mut records).map_err(|e| self.poison(e))?
                };
                (a, j.strict())
            };
            if appended.is_err() {
                drop(gate);
                // Strict mode keeps a record until its stripe is durable; otherwise the
                // dirty bitmap covers power loss and the ring only has to outlive a
                // process crash, which it does once the records are applied.
                self.checkpoint_journal(strict)?;
                continue;
            }
            for r in records.iter().chain(&unlogged) {
                self.apply_record(view, r)?;
            }
            self.stats
                .unlogged_stripes
                .fetch_add(unlogged.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
    }

    /// Frees the journal (every appended record has been applied: writers hold the gate
    /// from append to the end of their member writes). With `sync_members`, the members
    /// are synced first and the dirty bitmap is cleared.
    pub fn checkpoint_journal(&self, sync_members: bool) -> Result<(), VolumeError> {
        let _g = lock_write(&self.gate);
        if sync_members {
            let view = self.view();
            for (i, m) in view.members.iter().enumerate() {
                if let (Some(m), false) = (m, view.states[i] == MemberState::Failed) {
                    m.write_dirty_csum_pages(&self.geometry)
                        .and_then(|_| m.io.sync())
                        .map_err(|e| self.poison(VolumeError::io(&m.path, e)))?;
                }
            }
        }
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.checkpoint(sync_members).map_err(|e| self.poison(e))
    }

    /// After a crash: makes a stripe of a dirty region consistent when no journal record
    /// covered it (records lost with a power failure). The data is taken as truth: block
    /// checksums that disagree are recomputed, then the parity. Returns false when the
    /// stripe is degraded and its parity cannot be vouched for.
    pub fn resync_stripe(&self, stripe: u64) -> Result<bool, VolumeError> {
        let g = self.geometry;
        let _l = lock_write(self.stripe_lock(stripe));
        let view = self.view();
        let p = g.parity_member(stripe);
        let at = g.member_offset(stripe, 0);
        let first = g.member_block(stripe, 0);
        let nblocks = g.blocks_per_chunk();
        let bs = BLOCK_BYTES as usize;
        let mut chunks: Vec<Option<Vec<u8>>> = Vec::new();
        for m in 0..g.disks {
            match view.usable(m, stripe) {
                Some(mem) => {
                    let mut b = vec![0u8; g.chunk_bytes as usize];
                    mem.io
                        .read_at(at, &mut b)
                        .map_err(|e| VolumeError::io(&mem.path, e))?;
                    chunks.push(Some(b));
                }
                None => chunks.push(None),
            }
        }
        let missing: Vec<u32> = (0..g.disks)
            .filter(|m| chunks[*m as usize].is_none())
            .collect();
        let fix_csums = |m: u32, data: &[u8]| -> Result<(), VolumeError> {
            let mem = view.members[m as usize].as_ref().expect("usable");
            let mut changed = false;
            for (i, b) in data.chunks_exact(bs).enumerate() {
                let c = block_crc(b);
                if mem.csums[first as usize + i].swap(c, Ordering::AcqRel) != c {
                    changed = true;
                }
            }
            if changed {
                mem.write_csum_pages(&g, first, first + nblocks - 1)
                    .map_err(|e| VolumeError::io(&mem.path, e))?;
            }
            Ok(())
        };
        for m in 0..g.disks {
            if m != p {
                if let Some(d) = &chunks[m as usize] {
                    fix_csums(m, d)?;
                }
            }
        }
        if !missing.is_empty() {
            if let Some(par) = &chunks[p as usize] {
                fix_csums(p, par)?;
            }
            return Ok(missing == [p]);
        }
        let data: Vec<&[u8]> = (0..g.disks)
            .filter(|m| *m != p)
            .map(|m| chunks[m as usize].as_deref().expect("present"))
            .collect();
        let mut par = vec![0u8; g.chunk_bytes as usize];
        xor_many(&mut par, &data);
        if chunks[p as usize].as_deref() != Some(&par[..]) {
            let mem = view.members[p as usize].as_ref().expect("usable");
            mem.io
                .write_at(at, &par)
                .map_err(|e| VolumeError::io(&mem.path, e))?;
            log::info!("stripe {stripe}: parity resynced after an unclean shutdown");
        }
        fix_csums(p, &par)?;
        Ok(true)
    }

    /// Writes a record's ranges to the members it names and updates their checksums.
    /// A member that fails to take its write is failed; the rest goes on, since the
    /// parity already reflects the new data.
    pub fn apply_record(&self, view: &View, r: &Record) -> Result<(), OpError> {
        let g = self.geometry;
        let mut failed: Vec<(u32, String)> = Vec::new();
        for range in &r.ranges {
            let Some(m) = view.usable(range.member, r.stripe) else {
                continue;
            };
            let chunk_offset = range.chunk_offset as u64;
            let at = g.member_offset(r.stripe, chunk_offset);
            let first = g.member_block(r.stripe, chunk_offset);
            for (i, b) in range.data.chunks_exact(BLOCK_BYTES as usize).enumerate() {
                m.csums[first as usize + i].store(block_crc(b), Ordering::Release);
            }
            let nblocks = range.data.len() as u64 / BLOCK_BYTES;
            m.mark_csum_pages(first, first + nblocks.max(1) - 1);
            if let Err(e) = m.io.write_at(at, &range.data) {
                failed.push((range.member, format!("write error: {e}")));
            }
        }
        // Fail them now, then carry on: the record is complete without one member (a
        // second failure poisons the volume and ends here).
        for (m, why) in failed {
            self.fail_member(m, &why)?;
        }
        Ok(())
    }
}

/// New bytes for one chunk of a stripe: (data index, offset in the chunk, bytes).
type Piece<'a> = (u32, u64, &'a [u8]);

fn overlay(img: &mut [u8], u0: u64, piece: Option<&Piece>) {
    if let Some((_, off, bytes)) = piece {
        let at = (*off - u0) as usize;
        img[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

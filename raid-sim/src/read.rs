//! The RAID-5 read path: block-checksum verification, reconstruction from parity of a
//! missing or corrupt block, and repair in place.

use std::sync::atomic::Ordering;

use crate::array::{lock_read, lock_write, Inner, OpError, View};
use crate::format::block_crc;
use crate::parity::xor_many;
use crate::volume::{VolumeError, BLOCK_BYTES};

impl Inner {
    pub(crate) fn check_range(&self, offset: u64, len: usize) -> Result<(), VolumeError> {
        let cap = self.geometry.capacity_bytes();
        match offset.checked_add(len as u64) {
            Some(end) if end <= cap => {}
            _ => {
                return Err(VolumeError::OutOfRange {
                    offset,
                    len: len as u64,
                    capacity_bytes: cap,
                })
            }
        }
        if !offset.is_multiple_of(BLOCK_BYTES) || !(len as u64).is_multiple_of(BLOCK_BYTES) {
            return Err(VolumeError::Invalid {
                path: self.dir.clone(),
                detail: format!(
                    "access at {offset}+{len} is not aligned to {BLOCK_BYTES}-byte blocks"
                ),
            });
        }
        Ok(())
    }

    /// For an access that is not block aligned, the aligned range enclosing it.
    pub fn enclosing_blocks(
        &self,
        offset: u64,
        len: usize,
    ) -> Result<Option<(u64, usize)>, VolumeError> {
        let cap = self.geometry.capacity_bytes();
        let end = match offset.checked_add(len as u64) {
            Some(end) if end <= cap => end,
            _ => {
                return Err(VolumeError::OutOfRange {
                    offset,
                    len: len as u64,
                    capacity_bytes: cap,
                })
            }
        };
        if offset.is_multiple_of(BLOCK_BYTES) && (len as u64).is_multiple_of(BLOCK_BYTES) {
            return Ok(None);
        }
        let start = offset / BLOCK_BYTES * BLOCK_BYTES;
        let end = end.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        Ok(Some((start, (end - start) as usize)))
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.check_range(offset, buf.len())?;
        let g = self.geometry;
        let mut done = 0usize;
        while done < buf.len() {
            let loc = g.locate(offset + done as u64);
            let n = ((g.chunk_bytes - loc.chunk_offset) as usize).min(buf.len() - done);
            let piece = &mut buf[done..done + n];
            let fast = {
                let _l = lock_read(self.stripe_lock(loc.stripe));
                self.read_fast(loc.stripe, loc.member, loc.chunk_offset, piece)
            };
            if !fast {
                let _l = lock_write(self.stripe_lock(loc.stripe));
                self.with_retries(|| {
                    self.read_careful(loc.stripe, loc.member, loc.chunk_offset, piece, true)
                })?;
            }
            done += n;
        }
        Ok(())
    }

    /// Plain read of a healthy member whose blocks all match their checksums.
    fn read_fast(&self, stripe: u64, member: u32, chunk_offset: u64, buf: &mut [u8]) -> bool {
        let Some(m) = self.usable_member(member, stripe) else {
            return false;
        };
        let at = self.geometry.member_offset(stripe, chunk_offset);
        if m.io.read_at(at, buf).is_err() {
            return false;
        }
        let first = self.geometry.member_block(stripe, chunk_offset);
        buf.chunks_exact(BLOCK_BYTES as usize)
            .enumerate()
            .all(|(i, b)| block_crc(b) == m.csums[first as usize + i].load(Ordering::Acquire))
    }

    /// Reads `buf.len()` bytes of `member` at `chunk_offset` in `stripe`, verifying every
    /// block, reconstructing from the other members what is missing or bad, and (when
    /// `repair`) writing repaired blocks back. The stripe lock is held exclusively.
    ///
    /// Decision table for one block of a usable member whose checksum fails (the others
    /// all verify, R = xor of the others):
    /// | crc(R) = stored | D = R | action                                              |
    /// |-----------------|-------|-----------------------------------------------------|
    /// | yes             | –     | D is corrupt: return R, write R back, log           |
    /// | no              | yes   | the checksum entry is stale: rewrite it, return D   |
    /// | no              | no    | unrecoverable: Corrupt error                        |
    /// A second member failing its checksum in the same block row is unrecoverable.
    pub fn read_careful(
        &self,
        stripe: u64,
        member: u32,
        chunk_offset: u64,
        buf: &mut [u8],
        repair: bool,
    ) -> Result<(), OpError> {
        let g = self.geometry;
        let view = self.view();
        let at = g.member_offset(stripe, chunk_offset);
        let first = g.member_block(stripe, chunk_offset) as usize;
        let blocks = buf.len() / BLOCK_BYTES as usize;
        let bs = BLOCK_BYTES as usize;
        let target = view.usable(member, stripe).cloned();
        let mut bad: Vec<usize> = Vec::new();
        match &target {
            Some(m) => {
                if let Err(e) = m.io.read_at(at, buf) {
                    return Err(OpError::Member(member, format!("read error: {e}")));
                }
                for i in 0..blocks {
                    let want = m.csums[first + i].load(Ordering::Acquire);
                    if block_crc(&buf[i * bs..(i + 1) * bs]) != want {
                        bad.push(i);
                    }
                }
                if bad.is_empty() {
                    return Ok(());
                }
            }
            None => bad.extend(0..blocks),
        }
        // Reconstruct the bad blocks from every other member.
        let mut others: Vec<(u32, Vec<u8>)> = Vec::new();
        for o in 0..g.disks {
            if o == member {
                continue;
            }
            let Some(om) = view.usable(o, stripe) else {
                let path = self.member_path(&view, member);
                return Err(OpError::Volume(VolumeError::Corrupt {
                    what: "stripe",
                    path,
                    at,
                    detail: format!(
                        "stripe {stripe}: member {member} needs reconstruction but member {o} is also unavailable"
                    ),
                }));
            };
            let mut ob = vec![0u8; buf.len()];
            if let Err(e) = om.io.read_at(at, &mut ob) {
                return Err(OpError::Member(o, format!("read error: {e}")));
            }
            for &i in &bad {
                let want = om.csums[first + i].load(Ordering::Acquire);
                if block_crc(&ob[i * bs..(i + 1) * bs]) != want {
                    self.stats.csum_mismatches.fetch_add(1, Ordering::Relaxed);
                    return Err(OpError::Volume(VolumeError::Corrupt {
                        what: "block",
                        path: om.path.clone(),
                        at: at + (i * bs) as u64,
                        detail: format!(
                            "stripe {stripe}: blocks of member {member} and member {o} both fail their checksums; cannot reconstruct"
                        ),
                    }));
                }
            }
            others.push((o, ob));
        }
        for &i in &bad {
            let range = i * bs..(i + 1) * bs;
            let srcs: Vec<&[u8]> = others.iter().map(|(_, b)| &b[range.clone()]).collect();
            let mut r = vec![0u8; bs];
            xor_many(&mut r, &srcs);
            let Some(m) = &target else {
                buf[range].copy_from_slice(&r);
                self.stats
                    .reconstructed_reads
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let block_at = at + (i * bs) as u64;
            let stored = m.csums[first + i].load(Ordering::Acquire);
            self.stats.csum_mismatches.fetch_add(1, Ordering::Relaxed);
            let errors = m.csum_errors.fetch_add(1, Ordering::Relaxed) + 1;
            if block_crc(&r) == stored {
                log::warn!(
                    "{}: block at byte {block_at} (stripe {stripe}) failed its checksum; repaired from parity",
                    m.path.display()
                );
                buf[range].copy_from_slice(&r);
                if repair {
                    if let Err(e) = m.io.write_at(block_at, &r) {
                        return Err(OpError::Member(
                            member,
                            format!("write error during repair: {e}"),
                        ));
                    }
                    self.stats.repaired_blocks.fetch_add(1, Ordering::Relaxed);
                }
            } else if buf[range.clone()] == r[..] {
                log::warn!(
                    "{}: checksum entry of block at byte {block_at} was stale; rewritten",
                    m.path.display()
                );
                m.csums[first + i].store(block_crc(&r), Ordering::Release);
                let b = (first + i) as u64;
                if repair {
                    if let Err(e) = m.write_csum_pages(&g, b, b) {
                        return Err(OpError::Member(member, format!("write error: {e}")));
                    }
                    self.stats.repaired_blocks.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                return Err(OpError::Volume(VolumeError::Corrupt {
                    what: "block",
                    path: m.path.clone(),
                    at: block_at,
                    detail: format!(
                        "stripe {stripe}: block fails its checksum and the parity reconstruction does not match either"
                    ),
                }));
            }
            if errors > self.opts.csum_error_limit {
                return Err(OpError::Member(
                    member,
                    format!(
                        "{errors} checksum failures (limit {})",
                        self.opts.csum_error_limit
                    ),
                ));
            }
        }
        Ok(())
    }
    /// Reads a member range for a stripe update and verifies it, repairing bad blocks
    /// through `read_careful` first.
    pub(crate) fn read_verified(
        &self,
        view: &View,
        stripe: u64,
        member: u32,
        chunk_offset: u64,
        buf: &mut [u8],
    ) -> Result<(), OpError> {
        let Some(m) = view.usable(member, stripe) else {
            return Err(OpError::Member(member, "became unavailable".into()));
        };
        let at = self.geometry.member_offset(stripe, chunk_offset);
        if let Err(e) = m.io.read_at(at, buf) {
            return Err(OpError::Member(member, format!("read error: {e}")));
        }
        let first = self.geometry.member_block(stripe, chunk_offset) as usize;
        let ok = buf
            .chunks_exact(BLOCK_BYTES as usize)
            .enumerate()
            .all(|(i, b)| block_crc(b) == m.csums[first + i].load(Ordering::Acquire));
        if ok {
            Ok(())
        } else {
            self.read_careful(stripe, member, chunk_offset, buf, true)
        }
    }
}

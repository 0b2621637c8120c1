//! A read-only view of a RAID-5 volume, for inspection (`smlogfs status`, mount's
//! ownership check) while another process may hold the array: no lock is taken and
//! nothing is written. What assembly would write back is done in memory instead: the
//! journal's pending records are laid over the member data, and a missing member's
//! chunks (or a block that fails its checksum) are reconstructed from parity.
//! Stripes a power loss left dirty without a record are not resynced: their data is read
//! as it is, and only a reconstruction through their parity can be wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::files::{load_csums, member_name, raid_files_exist};
use crate::format::block_crc;
use crate::inspect::{classify, read_journal, scan, Inspection};
use crate::layout::Geometry;
use crate::member::{FileMember, MemberIo};
use crate::parity::xor_into;
use crate::volume::{BlockVolume, VolumeError, BLOCK_BYTES};

/// True when `dir` holds the files of a RAID-5 volume (whether or not they assemble).
pub fn is_raid(dir: &Path) -> bool {
    raid_files_exist(dir)
}

/// Opens the volume in `dir` read-only: a RAID-5 as a `RaidReader`, a single file as
/// itself. Refuses (as assembly would) an array with two unusable members.
pub fn open_read_only(dir: &Path) -> Result<Box<dyn BlockVolume>, VolumeError> {
    if is_raid(dir) {
        Ok(Box::new(RaidReader::open(dir)?))
    } else {
        crate::open_volume(dir)
    }
}

struct ReadMember {
    path: PathBuf,
    io: Box<dyn MemberIo>,
    /// Block checksums as the next assembly would see them (journal records applied).
    csums: Vec<u32>,
}

/// New bytes of one member chunk from a pending journal record: (offset in the chunk, bytes).
type Patch = (u64, Vec<u8>);

pub struct RaidReader {
    dir: PathBuf,
    geometry: Geometry,
    /// Indexed by member; None when the member cannot be used.
    members: Vec<Option<ReadMember>>,
    /// (member, first stripe not yet rebuilt) of an unfinished rebuild.
    rebuild: Option<(u32, u64)>,
    /// Pending journal records by (member, stripe), in sequence order.
    patches: HashMap<(u32, u64), Vec<Patch>>,
    describe: String,
}

impl RaidReader {
    pub fn open(dir: &Path) -> Result<RaidReader, VolumeError> {
        let classified = classify(dir, scan(dir, false))?;
        let inspection = classified.inspection;
        if let Some(refusal) = inspection.refusal() {
            return Err(refusal);
        }
        let mut usable = classified.usable;
        let g = inspection.geometry;
        let mut members = Vec::new();
        for rep in &inspection.members {
            let Some(found) = usable.remove(&rep.index) else {
                members.push(None);
                continue;
            };
            let file = found.file.expect("usable members are open");
            let io: Box<dyn MemberIo> = Box::new(FileMember::new(file));
            let valid_blocks = match inspection.rebuild {
                Some((r, next)) if r == rep.index => next * g.blocks_per_chunk(),
                _ => g.blocks_per_member(),
            };
            let csums = load_csums(&found.path, io.as_ref(), &g, valid_blocks)?;
            members.push(Some(ReadMember {
                path: found.path,
                io,
                csums,
            }));
        }
        let mut reader = RaidReader {
            dir: dir.to_path_buf(),
            geometry: g,
            members,
            rebuild: inspection.rebuild,
            patches: HashMap::new(),
            describe: describe(&inspection),
        };
        match read_journal(dir, inspection.array_id, &g) {
            Ok(recovery) => reader.lay_over(recovery.records),
            Err(e) => log::warn!(
                "{}: journal unreadable ({e}); reading the members as they are",
                dir.display()
            ),
        }
        Ok(reader)
    }

    /// Takes the journal's pending records as assembly would replay them, in memory.
    fn lay_over(&mut self, records: Vec<crate::journal_format::Record>) {
        let g = self.geometry;
        for r in records {
            for range in r.ranges {
                let off = range.chunk_offset as u64;
                if let Some(m) = self
                    .members
                    .get_mut(range.member as usize)
                    .and_then(|m| m.as_mut())
                {
                    let first = g.member_block(r.stripe, off) as usize;
                    for (i, b) in range.data.chunks_exact(BLOCK_BYTES as usize).enumerate() {
                        m.csums[first + i] = block_crc(b);
                    }
                }
                self.patches
                    .entry((range.member, r.stripe))
                    .or_default()
                    .push((off, range.data));
            }
        }
    }

    /// The member if it holds valid data for `stripe`.
    fn usable(&self, m: u32, stripe: u64) -> Option<&ReadMember> {
        let mem = self.members[m as usize].as_ref()?;
        match self.rebuild {
            Some((r, next)) if r == m && stripe >= next => None,
            _ => Some(mem),
        }
    }

    /// Reads member `m`'s bytes at `chunk_offset` of `stripe` with the journal laid over.
    fn read_raw(
        &self,
        mem: &ReadMember,
        m: u32,
        stripe: u64,
        chunk_offset: u64,
        out: &mut [u8],
    ) -> Result<(), VolumeError> {
        let at = self.geometry.member_offset(stripe, chunk_offset);
        mem.io
            .read_at(at, out)
            .map_err(|e| VolumeError::io(&mem.path, e))?;
        let end = chunk_offset + out.len() as u64;
        for (off, data) in self.patches.get(&(m, stripe)).into_iter().flatten() {
            let (lo, hi) = ((*off).max(chunk_offset), (off + data.len() as u64).min(end));
            if lo < hi {
                out[(lo - chunk_offset) as usize..(hi - chunk_offset) as usize]
                    .copy_from_slice(&data[(lo - off) as usize..(hi - off) as usize]);
            }
        }
        Ok(())
    }

    /// Which blocks of `buf` (read from `mem` at `chunk_offset` of `stripe`) fail their checksums.
    fn bad_blocks(
        &self,
        mem: &ReadMember,
        stripe: u64,
        chunk_offset: u64,
        buf: &[u8],
    ) -> Vec<usize> {
        let first = self.geometry.member_block(stripe, chunk_offset) as usize;
        buf.chunks_exact(BLOCK_BYTES as usize)
            .enumerate()
            .filter(|(i, b)| block_crc(b) != mem.csums[first + i])
            .map(|(i, _)| i)
            .collect()
    }

    /// Member `m`'s bytes at `chunk_offset` of `stripe`, verified, with whatever is
    /// missing or corrupt reconstructed from the other members.
    fn read_part(
        &self,
        m: u32,
        stripe: u64,
        chunk_offset: u64,
        out: &mut [u8],
    ) -> Result<(), VolumeError> {
        let bs = BLOCK_BYTES as usize;
        let target = self.usable(m, stripe);
        let bad: Vec<usize> = match target {
            Some(mem) => {
                self.read_raw(mem, m, stripe, chunk_offset, out)?;
                self.bad_blocks(mem, stripe, chunk_offset, out)
            }
            None => (0..out.len() / bs).collect(),
        };
        if bad.is_empty() {
            return Ok(());
        }
        let at = self.geometry.member_offset(stripe, chunk_offset);
        let unrecoverable = |other: u32, why: &str| VolumeError::Corrupt {
            what: "stripe",
            path: self.dir.join(member_name(m)),
            at,
            detail: format!(
                "stripe {stripe}: {} cannot be reconstructed because {} {why}",
                member_name(m),
                member_name(other)
            ),
        };
        let mut rebuilt = vec![0u8; out.len()];
        let mut other = vec![0u8; out.len()];
        for o in (0..self.geometry.disks).filter(|o| *o != m) {
            let mem = self
                .usable(o, stripe)
                .ok_or_else(|| unrecoverable(o, "is unusable too"))?;
            self.read_raw(mem, o, stripe, chunk_offset, &mut other)?;
            if self
                .bad_blocks(mem, stripe, chunk_offset, &other)
                .iter()
                .any(|i| bad.contains(i))
            {
                return Err(unrecoverable(o, "fails its block checksums too"));
            }
            xor_into(&mut rebuilt, &other);
        }
        for i in bad {
            let block = i * bs..(i + 1) * bs;
            let Some(mem) = target else {
                out[block.clone()].copy_from_slice(&rebuilt[block]);
                continue;
            };
            let stored = mem.csums[self.geometry.member_block(stripe, chunk_offset) as usize + i];
            if block_crc(&rebuilt[block.clone()]) == stored {
                out[block.clone()].copy_from_slice(&rebuilt[block]);
            } else if out[block.clone()] != rebuilt[block.clone()] {
                return Err(VolumeError::Corrupt {
                    what: "block",
                    path: mem.path.clone(),
                    at: at + (i * bs) as u64,
                    detail: format!("stripe {stripe}: the block fails its checksum and its reconstruction from parity does not match either"),
                });
            }
            // Otherwise the data matches its reconstruction: the checksum entry is stale.
        }
        Ok(())
    }
}

/// One line for `status`: like `RaidVolume::describe`, marked read-only.
fn describe(i: &Inspection) -> String {
    let g = i.geometry;
    let states: Vec<String> = i
        .members
        .iter()
        .map(|m| format!("{}:{}", m.index, m.state))
        .collect();
    format!(
        "raid5 {} ({} disks, chunk {} KiB, {} bytes, {}; members {}; read-only view)",
        i.dir.display(),
        g.disks,
        g.chunk_bytes >> 10,
        g.capacity_bytes(),
        if i.degraded() { "degraded" } else { "clean" },
        states.join(" ")
    )
}

impl BlockVolume for RaidReader {
    fn capacity_bytes(&self) -> u64 {
        self.geometry.capacity_bytes()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        let g = &self.geometry;
        let cap = g.capacity_bytes();
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > cap)
        {
            return Err(VolumeError::OutOfRange {
                offset,
                len: buf.len() as u64,
                capacity_bytes: cap,
            });
        }
        // Whole blocks are verified; an unaligned request reads the blocks around it.
        let start = offset / BLOCK_BYTES * BLOCK_BYTES;
        let end = (offset + buf.len() as u64).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        let mut whole = vec![0u8; (end - start) as usize];
        let mut done = 0usize;
        while done < whole.len() {
            let loc = g.locate(start + done as u64);
            let n = (whole.len() - done).min((g.chunk_bytes - loc.chunk_offset) as usize);
            self.read_part(
                loc.member,
                loc.stripe,
                loc.chunk_offset,
                &mut whole[done..done + n],
            )?;
            done += n;
        }
        let at = (offset - start) as usize;
        buf.copy_from_slice(&whole[at..at + buf.len()]);
        Ok(())
    }

    fn write_at(&self, _offset: u64, _data: &[u8]) -> Result<(), VolumeError> {
        Err(VolumeError::Invalid {
            path: self.dir.clone(),
            detail: "this is a read-only view of the RAID members (for inspection); mount the volume to write".into(),
        })
    }

    fn flush(&self) -> Result<(), VolumeError> {
        Ok(())
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

//! Metadata on the volume: records written at checkpoints, as a full snapshot followed by
//! deltas (only what changed), and the load that rebuilds the in-memory file system.
//!
//! ```text
//! blob (a run of volume blocks)
//!  off size field
//!    0    8 magic          "SMLGMETA"
//!    8    4 version        1
//!   12    4 kind           1 = snapshot, 2 = delta
//!   16    8 generation     the checkpoint that wrote it
//!   24    8 payload_bytes
//!   32    4 crc32c         over the payload
//!   36    4 reserved       0
//!   40    … payload        bincode v1 of Vec<MetaRecord>
//! ```

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

use raid_sim::BlockVolume;
use serde::{Deserialize, Serialize};

use super::alloc::Allocator;
use super::state::{FsState, Inode};
use super::superblock::{BlobRef, Superblock, FIRST_DATA_BLOCK};
use super::types::*;

pub const BLOB_MAGIC: [u8; 8] = *b"SMLGMETA";
pub const BLOB_HEADER_BYTES: usize = 40;
pub const BLOB_SNAPSHOT: u32 = 1;
pub const BLOB_DELTA: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRecord {
    Inode(InodeRec),
    InodeGone(u64),
    Dirent {
        parent: u64,
        name: Vec<u8>,
        ino: u64,
        cookie: u64,
    },
    DirentGone {
        parent: u64,
        name: Vec<u8>,
    },
    Extent {
        ino: u64,
        blk: u64,
        phys: u64,
    },
    ExtentGone {
        ino: u64,
        blk: u64,
    },
    NextIno(u64),
}

/// A metadata blob's bytes, ready to be written at `start_block`.
pub fn encode_blob(kind: u32, generation: u64, records: &[MetaRecord]) -> (Vec<u8>, u64, u32) {
    let payload = bincode::serialize(records).expect("records always serialise");
    let crc = crc32c::crc32c(&payload);
    let total = BLOB_HEADER_BYTES + payload.len();
    let padded = (total as u64).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    let mut b = Vec::with_capacity(padded as usize);
    b.extend_from_slice(&BLOB_MAGIC);
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&payload);
    b.resize(padded as usize, 0);
    (b, payload.len() as u64, crc)
}

/// Reads and checks one blob.
pub fn read_blob(vol: &dyn BlockVolume, blob: &BlobRef) -> Result<Vec<MetaRecord>, String> {
    let mut b = vec![0u8; blob.blocks as usize * BLOCK_BYTES as usize];
    let at = blob.start_block * BLOCK_BYTES;
    vol.read_at(at, &mut b)
        .map_err(|e| format!("metadata blob at volume byte {at}: {e}"))?;
    if b[0..8] != BLOB_MAGIC {
        return Err(format!("metadata blob at volume byte {at}: bad magic"));
    }
    let len = u64::from_le_bytes(b[24..32].try_into().expect("8"));
    if len != blob.payload_bytes || BLOB_HEADER_BYTES as u64 + len > b.len() as u64 {
        return Err(format!(
            "metadata blob at volume byte {at}: length {len} does not match the superblock"
        ));
    }
    let payload = &b[BLOB_HEADER_BYTES..BLOB_HEADER_BYTES + len as usize];
    let crc = u32::from_le_bytes(b[32..36].try_into().expect("4"));
    if crc != crc32c::crc32c(payload) || crc != blob.crc {
        return Err(format!(
            "metadata blob at volume byte {at}: checksum mismatch"
        ));
    }
    bincode::deserialize(payload).map_err(|e| format!("metadata blob at volume byte {at}: {e}"))
}

/// Every record describing `state` in full (a snapshot).
pub fn snapshot_records(state: &FsState) -> Vec<MetaRecord> {
    let mut out = Vec::with_capacity(state.inodes.len() * 2);
    for node in state.inodes.values() {
        out.push(MetaRecord::Inode(node.rec.clone()));
        if let Some(dir) = &node.dir {
            for (name, (ino, cookie)) in &dir.entries {
                out.push(MetaRecord::Dirent {
                    parent: node.rec.ino,
                    name: name.clone(),
                    ino: *ino,
                    cookie: *cookie,
                });
            }
        }
        for (blk, slot) in &node.blocks {
            if let Some(phys) = slot.phys {
                out.push(MetaRecord::Extent {
                    ino: node.rec.ino,
                    blk: *blk,
                    phys,
                });
            }
        }
    }
    out.push(MetaRecord::NextIno(state.next_ino));
    out
}

/// The file system as loaded from a checkpoint, with the problems found on the way.
pub struct Loaded {
    pub state: FsState,
    pub alloc: Allocator,
    pub problems: Vec<String>,
    pub meta_bytes: u64,
}

/// Rebuilds the file system of checkpoint `sb`.
pub fn load(vol: Arc<dyn BlockVolume>, sb: &Superblock) -> Result<Loaded, String> {
    // Sized up front from the blobs (a record is some 50 bytes): growing maps of a million
    // entries rehashes and copies them again and again.
    let records = (sb.blobs.iter().map(|b| b.payload_bytes).sum::<u64>() / 50) as usize;
    let total_blocks = sb.capacity_bytes / BLOCK_BYTES;
    let mut state = FsState::new(
        vol.clone(),
        total_blocks.saturating_sub(meta_reserve_blocks(total_blocks)),
    );
    // Inodes go straight into the file system (a later record of an inode replaces its
    // attributes; inode numbers are never reused, so its kind stays what it was).
    state.inodes.reserve(records / 2);
    // Entries go straight into their directory once it is loaded (a snapshot writes each
    // directory before its entries); the others wait here, latest record per name winning.
    let mut pending: FastMap<(u64, Vec<u8>), (u64, u64)> = FastMap::default();
    let mut extents: FastMap<u64, BTreeMap<u64, u64>> = FastMap::default();
    let mut next_ino = ROOT_INO + 1;
    let mut meta_bytes = 0;
    for blob in &sb.blobs {
        meta_bytes += blob.payload_bytes;
        for rec in read_blob(vol.as_ref(), blob)? {
            match rec {
                MetaRecord::Inode(r) => match state.inodes.entry(r.ino) {
                    Entry::Occupied(mut e) => e.get_mut().rec = r,
                    Entry::Vacant(e) => {
                        e.insert(Inode::new(r));
                    }
                },
                MetaRecord::InodeGone(ino) => {
                    // Entries still in a removed directory are reported at the end.
                    if let Some(dir) = state.inodes.remove(&ino).and_then(|n| n.dir) {
                        for (name, entry) in dir.entries {
                            pending.insert((ino, name), entry);
                        }
                    }
                    extents.remove(&ino);
                }
                MetaRecord::Dirent {
                    parent,
                    name,
                    ino,
                    cookie,
                } => match state.inodes.get_mut(&parent).and_then(|p| p.dir.as_mut()) {
                    Some(dir) => {
                        if !pending.is_empty() {
                            pending.remove(&(parent, name.clone()));
                        }
                        dir.insert_with_cookie(name, ino, cookie);
                    }
                    None => {
                        pending.insert((parent, name), (ino, cookie));
                    }
                },
                MetaRecord::DirentGone { parent, name } => {
                    if let Some(dir) = state.inodes.get_mut(&parent).and_then(|p| p.dir.as_mut()) {
                        dir.remove(&name);
                    }
                    if !pending.is_empty() {
                        pending.remove(&(parent, name));
                    }
                }
                MetaRecord::Extent { ino, blk, phys } => {
                    extents.entry(ino).or_default().insert(blk, phys);
                }
                MetaRecord::ExtentGone { ino, blk } => {
                    if let Some(e) = extents.get_mut(&ino) {
                        e.remove(&blk);
                    }
                }
                MetaRecord::NextIno(n) => next_ino = n,
            }
        }
    }
    let mut alloc = Allocator::new(FIRST_DATA_BLOCK, total_blocks);
    for blob in &sb.blobs {
        for b in blob.start_block..blob.start_block + blob.blocks as u64 {
            alloc.mark_used(b);
        }
    }
    let mut problems = Vec::new();
    state.next_ino = next_ino;
    for &ino in state.inodes.keys() {
        if ino >= next_ino {
            problems.push(format!(
                "inode {ino} is not below the next inode number {next_ino}"
            ));
        }
    }
    // Entries naming an inode that does not exist are problems, and left out.
    let mut dangling = Vec::new();
    for node in state.inodes.values() {
        if let Some(dir) = &node.dir {
            for (name, (ino, _)) in &dir.entries {
                if !state.inodes.contains_key(ino) {
                    dangling.push((node.rec.ino, name.clone(), *ino));
                }
            }
        }
    }
    for (parent, name, ino) in dangling {
        problems.push(format!(
            "entry {:?} in directory {parent} names inode {ino}, which does not exist",
            String::from_utf8_lossy(&name)
        ));
        if let Some(dir) = state.inodes.get_mut(&parent).and_then(|p| p.dir.as_mut()) {
            dir.remove(&name);
        }
    }
    for ((parent, name), (ino, cookie)) in pending {
        if !state.inodes.contains_key(&ino) {
            problems.push(format!(
                "entry {:?} in directory {parent} names inode {ino}, which does not exist",
                String::from_utf8_lossy(&name)
            ));
            continue;
        }
        match state.inodes.get_mut(&parent).and_then(|p| p.dir.as_mut()) {
            Some(dir) => dir.insert_with_cookie(name, ino, cookie),
            None => problems.push(format!(
                "entry {:?} names directory {parent}, which does not exist",
                String::from_utf8_lossy(&name)
            )),
        }
    }
    for (ino, map) in extents {
        let Some(node) = state.inodes.get_mut(&ino) else {
            problems.push(format!("extents of inode {ino}, which does not exist"));
            continue;
        };
        for (blk, phys) in map {
            if !alloc.mark_used(phys) {
                problems.push(format!(
                    "block {blk} of inode {ino} is at volume block {phys}, which is out of range or used twice"
                ));
                continue;
            }
            node.blocks.insert(
                blk,
                Slot {
                    phys: Some(phys),
                    data: None,
                    dirty_gen: 0,
                    unrecorded: false,
                },
            );
            state.used_blocks += 1;
        }
    }
    if !state.inodes.contains_key(&ROOT_INO) {
        problems.push("the root directory (inode 1) is missing".into());
    }
    Ok(Loaded {
        state,
        alloc,
        problems,
        meta_bytes,
    })
}

/// Blocks kept back from file data so that checkpoints can always write their metadata.
pub fn meta_reserve_blocks(total_blocks: u64) -> u64 {
    (total_blocks / 32).max(64).min(total_blocks / 2) + super::superblock::FIRST_DATA_BLOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ino: u64, kind: Kind, size: u64) -> InodeRec {
        InodeRec {
            ino,
            kind,
            perm: 0o755,
            uid: 0,
            gid: 0,
            nlink: 1,
            size,
            rdev: 0,
            atime: Ts::default(),
            mtime: Ts::default(),
            ctime: Ts::default(),
            crtime: Ts::default(),
            xattrs: BTreeMap::new(),
            target: None,
            parent: ROOT_INO,
        }
    }

    fn dirent(parent: u64, name: &str, ino: u64, cookie: u64) -> MetaRecord {
        MetaRecord::Dirent {
            parent,
            name: name.as_bytes().to_vec(),
            ino,
            cookie,
        }
    }

    /// Writes `blobs` (a snapshot, then deltas) to a fresh volume and loads them.
    fn load_blobs(blobs: &[Vec<MetaRecord>]) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        let vol: Arc<dyn BlockVolume> =
            Arc::new(raid_sim::SingleFileVolume::create(dir.path(), 8 << 20).unwrap());
        let mut refs = Vec::new();
        let mut at = FIRST_DATA_BLOCK;
        for (i, records) in blobs.iter().enumerate() {
            let kind = if i == 0 { BLOB_SNAPSHOT } else { BLOB_DELTA };
            let (bytes, payload_bytes, crc) = encode_blob(kind, i as u64 + 1, records);
            vol.write_at(at * BLOCK_BYTES, &bytes).unwrap();
            let blocks = (bytes.len() as u64 / BLOCK_BYTES) as u32;
            refs.push(BlobRef {
                start_block: at,
                blocks,
                payload_bytes,
                crc,
            });
            at += blocks as u64;
        }
        let sb = Superblock {
            volume_id: [7; 16],
            capacity_bytes: 8 << 20,
            generation: blobs.len() as u64,
            covers_seq: 0,
            epoch: 1,
            next_ino: 100,
            ring_path: String::new(),
            ring_bytes: 0,
            blobs: refs,
            created: Ts::default(),
            owner: String::new(),
        };
        load(vol, &sb).unwrap()
    }

    fn names(l: &Loaded, dir: u64) -> Vec<String> {
        let mut v: Vec<String> = l.state.inodes[&dir]
            .dir
            .as_ref()
            .unwrap()
            .entries
            .keys()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        v.sort();
        v
    }

    /// The latest record of each inode and entry wins, whichever blob it is in and whether
    /// an entry comes before or after its directory.
    #[test]
    fn later_records_win_and_entries_may_precede_their_directory() {
        let l = load_blobs(&[
            vec![
                MetaRecord::Inode(rec(ROOT_INO, Kind::Dir, 0)),
                dirent(ROOT_INO, "d", 2, 3),
                // An entry of directory 2 before directory 2's own record.
                dirent(2, "early", 3, 3),
                MetaRecord::Inode(rec(2, Kind::Dir, 0)),
                MetaRecord::Inode(rec(3, Kind::File, 10)),
                dirent(2, "gone", 3, 4),
                MetaRecord::NextIno(10),
            ],
            vec![
                MetaRecord::Inode(rec(3, Kind::File, 99)),
                MetaRecord::DirentGone {
                    parent: 2,
                    name: b"gone".to_vec(),
                },
                dirent(2, "late", 3, 5),
                // Replaced: the entry now carries a new cookie.
                dirent(2, "early", 3, 6),
            ],
        ]);
        assert!(l.problems.is_empty(), "{:?}", l.problems);
        assert_eq!(names(&l, ROOT_INO), ["d"]);
        assert_eq!(names(&l, 2), ["early", "late"]);
        let d = l.state.inodes[&2].dir.as_ref().unwrap();
        assert_eq!(d.entries[b"early".as_slice()], (3, 6));
        assert_eq!(d.by_cookie.len(), 2, "a replaced entry keeps one cookie");
        assert_eq!(l.state.inodes[&3].rec.size, 99);
        assert_eq!(l.state.next_ino, 10);
    }

    /// Entries naming a missing inode, or left in a removed directory, are problems.
    #[test]
    fn dangling_entries_are_reported_and_left_out() {
        let l = load_blobs(&[
            vec![
                MetaRecord::Inode(rec(ROOT_INO, Kind::Dir, 0)),
                dirent(ROOT_INO, "ghost", 42, 3),
                dirent(ROOT_INO, "d", 2, 4),
                MetaRecord::Inode(rec(2, Kind::Dir, 0)),
                MetaRecord::Inode(rec(3, Kind::File, 0)),
                dirent(2, "f", 3, 3),
                MetaRecord::NextIno(10),
            ],
            vec![MetaRecord::InodeGone(2)],
        ]);
        // "d" names the removed directory 2 now: left out as well.
        assert!(names(&l, ROOT_INO).is_empty(), "{:?}", names(&l, ROOT_INO));
        let text = l.problems.join("\n");
        assert!(
            text.contains("\"ghost\"") && text.contains("inode 42"),
            "{text}"
        );
        assert!(text.contains("\"d\"") && text.contains("inode 2"), "{text}");
        assert!(
            text.contains("\"f\"") && text.contains("directory 2, which does not exist"),
            "{text}"
        );
    }
}

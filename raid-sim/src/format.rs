//! On-disk formats of the RAID-5 volume: the member superblock, the per-member checksum
//! pages and the stripe journal. `docs/format-raid.md` has the same tables with the
//! version history; this file is the single place the code encodes and decodes them.
//!
//! Member file (`member-K.img`, `spare-J.img`), all integers little-endian:
//!
//! | offset                      | bytes                    | content                         |
//! |-----------------------------|--------------------------|---------------------------------|
//! | 0                           | `SB_BYTES`               | superblock slot 0 (even events) |
//! | `SB_BYTES`                  | `SB_BYTES`               | superblock slot 1 (odd events)  |
//! | `DATA_START`                | `stripes * chunk_bytes`  | chunks, one per stripe          |
//! | `DATA_START + stripes*chunk`| `csum_pages * PAGE_BYTES`| block checksum pages            |
//!
//! Superblock (one slot, `SB_BYTES` long):
//!
//! | field               | bytes | meaning                                               |
//! |---------------------|-------|-------------------------------------------------------|
//! | magic               | 8     | `SB_MAGIC`                                            |
//! | version             | 4     | `Version::V1`                                         |
//! | sb_bytes            | 4     | `SB_BYTES`                                            |
//! | array_id            | 16    | random id shared by every member of one array         |
//! | events              | 8     | bumped on every superblock update of the array        |
//! | disks               | 4     | members holding data and parity (N ≥ 3)               |
//! | chunk_bytes         | 4     | bytes of one chunk                                    |
//! | stripes             | 8     | stripes (chunks per member)                           |
//! | spares              | 4     | hot spares asked for at creation                      |
//! | role                | 4     | member index, or `ROLE_SPARE`                         |
//! | array_state         | 4     | 0 clean (closed), 1 active (open)                     |
//! | rebuild_rate_kib_s  | 4     | rebuild rate limit, 0 = unlimited                     |
//! | rebuild_member      | 4     | member being rebuilt, or `NO_MEMBER`                  |
//! | rebuild_next_stripe | 8     | first stripe not yet rebuilt (checkpoint)             |
//! | member_states       | 64    | one `MemberState` byte per member index               |
//! | zero padding        | …     |                                                       |
//! | crc32c              | 4     | over every byte before it                             |

use crate::codec::{Get, Put};
use crate::layout::Geometry;
pub use crate::layout::{
    round_up_page, CSUMS_PER_PAGE, DATA_START, MAX_DISKS, PAGE_BYTES, SB_BYTES,
};

pub const SB_MAGIC: [u8; 8] = *b"SMLRAID5";
pub const ROLE_SPARE: u32 = u32::MAX;
pub const NO_MEMBER: u32 = u32::MAX;

/// Format versions; capability methods keep version checks in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
}

impl Version {
    pub fn from_u32(v: u32) -> Option<Version> {
        match v {
            1 => Some(Version::V1),
            _ => None,
        }
    }
    pub fn as_u32(self) -> u32 {
        match self {
            Version::V1 => 1,
        }
    }
    /// V1 keeps one crc32c per 4 KiB block of every member, parity included.
    pub fn has_block_checksums(self) -> bool {
        true
    }
}

/// One member's state as the array sees it (the `member_states` table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Active,
    Failed,
    Rebuilding,
}

impl MemberState {
    pub fn from_u8(b: u8) -> Option<MemberState> {
        match b {
            0 => Some(MemberState::Active),
            1 => Some(MemberState::Failed),
            2 => Some(MemberState::Rebuilding),
            _ => None,
        }
    }
    pub fn as_u8(self) -> u8 {
        match self {
            MemberState::Active => 0,
            MemberState::Failed => 1,
            MemberState::Rebuilding => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Failed => "failed",
            MemberState::Rebuilding => "rebuilding",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub array_id: u128,
    pub events: u64,
    pub geometry: Geometry,
    pub spares: u32,
    pub role: u32,
    pub array_active: bool,
    pub rebuild_rate_kib_s: u32,
    pub rebuild_member: u32,
    pub rebuild_next_stripe: u64,
    pub member_states: Vec<MemberState>,
}

/// Byte offset of the superblock crc inside a slot.
pub const SB_CRC_AT: usize = SB_BYTES as usize - 4;

impl Superblock {
    /// The slot this superblock goes to: alternating slots survive a torn write.
    pub fn slot_offset(&self) -> u64 {
        (self.events % 2) * SB_BYTES
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; SB_BYTES as usize];
        let mut p = Put {
            buf: &mut buf,
            at: 0,
        };
        p.bytes(&SB_MAGIC);
        p.u32(Version::V1.as_u32());
        p.u32(SB_BYTES as u32);
        p.bytes(&self.array_id.to_le_bytes());
        p.u64(self.events);
        p.u32(self.geometry.disks);
        p.u32(self.geometry.chunk_bytes as u32);
        p.u64(self.geometry.stripes);
        p.u32(self.spares);
        p.u32(self.role);
        p.u32(self.array_active as u32);
        p.u32(self.rebuild_rate_kib_s);
        p.u32(self.rebuild_member);
        p.u64(self.rebuild_next_stripe);
        let mut states = [0u8; MAX_DISKS];
        for (i, s) in self.member_states.iter().enumerate() {
            states[i] = s.as_u8();
        }
        p.bytes(&states);
        let crc = crc32c::crc32c(&buf[..SB_CRC_AT]);
        buf[SB_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Decodes one slot. The error is a short reason for the assembly report.
    pub fn decode(buf: &[u8]) -> Result<Superblock, String> {
        if buf.len() < SB_BYTES as usize {
            return Err(format!("superblock slot is {} bytes, short", buf.len()));
        }
        let buf = &buf[..SB_BYTES as usize];
        if buf[..8] != SB_MAGIC {
            return Err("no superblock magic".into());
        }
        let mut crc_bytes = [0u8; 4];
        crc_bytes.copy_from_slice(&buf[SB_CRC_AT..]);
        let stored = u32::from_le_bytes(crc_bytes);
        let actual = crc32c::crc32c(&buf[..SB_CRC_AT]);
        if stored != actual {
            return Err(format!(
                "superblock checksum mismatch (stored {stored:08x}, computed {actual:08x})"
            ));
        }
        let mut g = Get { buf, at: 8 };
        let version = g.u32();
        if Version::from_u32(version).is_none() {
            return Err(format!("unknown superblock version {version}"));
        }
        let sb_bytes = g.u32();
        if sb_bytes as u64 != SB_BYTES {
            return Err(format!("superblock size {sb_bytes} is not {SB_BYTES}"));
        }
        let array_id = g.u128();
        let events = g.u64();
        let disks = g.u32();
        let chunk_bytes = g.u32() as u64;
        let stripes = g.u64();
        let geometry = Geometry {
            disks,
            chunk_bytes,
            stripes,
        };
        geometry.validate()?;
        let spares = g.u32();
        let role = g.u32();
        let array_active = g.u32() != 0;
        let rebuild_rate_kib_s = g.u32();
        let rebuild_member = g.u32();
        let rebuild_next_stripe = g.u64();
        let raw_states = g.bytes(MAX_DISKS).to_vec();
        let mut member_states = Vec::with_capacity(disks as usize);
        for (i, b) in raw_states.iter().take(disks as usize).enumerate() {
            match MemberState::from_u8(*b) {
                Some(s) => member_states.push(s),
                None => return Err(format!("member {i} has unknown state byte {b}")),
            }
        }
        if role != ROLE_SPARE && role >= disks {
            return Err(format!("role {role} out of range for {disks} disks"));
        }
        if rebuild_member != NO_MEMBER && (rebuild_member >= disks || rebuild_next_stripe > stripes)
        {
            return Err(format!(
                "rebuild of member {rebuild_member} at stripe {rebuild_next_stripe} is out of range"
            ));
        }
        Ok(Superblock {
            array_id,
            events,
            geometry,
            spares,
            role,
            array_active,
            rebuild_rate_kib_s,
            rebuild_member,
            rebuild_next_stripe,
            member_states,
        })
    }

    /// Picks the newer valid slot of the two read from the start of a member file.
    pub fn decode_slots(two_slots: &[u8]) -> Result<Superblock, String> {
        let half = SB_BYTES as usize;
        if two_slots.len() < 2 * half {
            return Err(format!(
                "file is {} bytes, shorter than its two superblock slots",
                two_slots.len()
            ));
        }
        let a = Superblock::decode(&two_slots[..half]);
        let b = Superblock::decode(&two_slots[half..2 * half]);
        match (a, b) {
            (Ok(a), Ok(b)) => Ok(if b.events > a.events { b } else { a }),
            (Ok(a), Err(_)) => Ok(a),
            (Err(_), Ok(b)) => Ok(b),
            (Err(ea), Err(eb)) => Err(format!("slot 0: {ea}; slot 1: {eb}")),
        }
    }
}

/// Checksum page: `CSUMS_PER_PAGE` crc32c entries, then the crc of (page index ‖ entries).
pub fn encode_csum_page(page_index: u64, entries: &[u32]) -> Vec<u8> {
    debug_assert!(entries.len() as u64 <= CSUMS_PER_PAGE);
    let mut buf = vec![0u8; PAGE_BYTES as usize];
    for (i, e) in entries.iter().enumerate() {
        buf[i * 4..i * 4 + 4].copy_from_slice(&e.to_le_bytes());
    }
    let crc = csum_page_crc(page_index, &buf[..PAGE_BYTES as usize - 4]);
    buf[PAGE_BYTES as usize - 4..].copy_from_slice(&crc.to_le_bytes());
    buf
}

fn csum_page_crc(page_index: u64, body: &[u8]) -> u32 {
    let seed = crc32c::crc32c(&page_index.to_le_bytes());
    crc32c::crc32c_append(seed, body)
}

/// Returns the page's entries, or None when the page fails its checksum.
pub fn decode_csum_page(page_index: u64, buf: &[u8], count: usize) -> Option<Vec<u32>> {
    let body_len = PAGE_BYTES as usize - 4;
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(&buf[body_len..PAGE_BYTES as usize]);
    if u32::from_le_bytes(crc_bytes) != csum_page_crc(page_index, &buf[..body_len]) {
        return None;
    }
    Some(
        (0..count)
            .map(|i| {
                let mut a = [0u8; 4];
                a.copy_from_slice(&buf[i * 4..i * 4 + 4]);
                u32::from_le_bytes(a)
            })
            .collect(),
    )
}

/// Checksum of one data or parity block.
pub fn block_crc(block: &[u8]) -> u32 {
    crc32c::crc32c(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            array_id: 0x1234_5678_9abc_def0_1122_3344_5566_7788,
            events: 7,
            geometry: Geometry {
                disks: 4,
                chunk_bytes: 65536,
                stripes: 100,
            },
            spares: 1,
            role: 2,
            array_active: true,
            rebuild_rate_kib_s: 1024,
            rebuild_member: 1,
            rebuild_next_stripe: 40,
            member_states: vec![
                MemberState::Active,
                MemberState::Rebuilding,
                MemberState::Active,
                MemberState::Failed,
            ],
        }
    }

    #[test]
    fn superblock_round_trips_and_detects_flips() {
        let sb = sample();
        let buf = sb.encode();
        assert_eq!(Superblock::decode(&buf).unwrap(), sb);
        for at in [0usize, 20, 100, SB_CRC_AT] {
            let mut bad = buf.clone();
            bad[at] ^= 0x10;
            assert!(
                Superblock::decode(&bad).is_err(),
                "flip at {at} not detected"
            );
        }
    }

    /// The byte table in docs/format-raid.md.
    #[test]
    fn superblock_field_offsets_match_the_doc() {
        let b = sample().encode();
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        assert_eq!(&b[0..8], b"SMLRAID5");
        assert_eq!(u32_at(8), 1);
        assert_eq!(u32_at(12), 4096);
        assert_eq!(u64_at(32), 7); // events
        assert_eq!(u32_at(40), 4); // disks
        assert_eq!(u32_at(44), 65536); // chunk_bytes
        assert_eq!(u64_at(48), 100); // stripes
        assert_eq!(u32_at(60), 2); // role
        assert_eq!(u32_at(72), 1); // rebuild_member
        assert_eq!(u64_at(76), 40); // rebuild_next_stripe
        assert_eq!(&b[84..88], &[0, 2, 0, 1]); // member_states
        assert!(b[148..SB_CRC_AT].iter().all(|x| *x == 0));
        assert_eq!(u32_at(SB_CRC_AT), crc32c::crc32c(&b[..SB_CRC_AT]));
    }

    #[test]
    fn newer_slot_wins_and_torn_slot_is_skipped() {
        let mut a = sample();
        let mut b = sample();
        b.events = 8;
        let mut two = a.encode();
        two.extend(b.encode());
        assert_eq!(Superblock::decode_slots(&two).unwrap().events, 8);
        two[SB_BYTES as usize + 50] ^= 1;
        assert_eq!(Superblock::decode_slots(&two).unwrap().events, 7);
        a.events = 9;
        assert_eq!(a.slot_offset(), SB_BYTES);
    }

    #[test]
    fn csum_page_detects_misplacement() {
        let entries: Vec<u32> = (0..CSUMS_PER_PAGE as u32).collect();
        let page = encode_csum_page(5, &entries);
        assert_eq!(decode_csum_page(5, &page, entries.len()), Some(entries));
        assert_eq!(decode_csum_page(6, &page, 3), None);
    }
}

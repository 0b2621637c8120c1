//! Where each logical byte lives: left-symmetric RAID-5 (md's default layout).
//!
//! Stripe `s` over `N` members puts its parity on member `N - 1 - (s mod N)`; its data
//! chunks `i = 0 .. N-2` follow the parity member cyclically: member `(p + 1 + i) mod N`.
//! Logical chunk `c` is data chunk `c mod (N-1)` of stripe `c div (N-1)`.

//!
//! Inside a member file (the byte table is in `format`): two superblock slots, then one
//! chunk per stripe from `DATA_START`, then the block checksum pages. The sizes those
//! offsets derive from live here, so that `format` depends on `layout` and not back.

use crate::volume::BLOCK_BYTES;

pub const PAGE_BYTES: u64 = 4096;
pub const SB_BYTES: u64 = 4096;
/// Two superblock slots precede the data so that a torn superblock write leaves the other.
pub const DATA_START: u64 = 2 * SB_BYTES;
pub const MAX_DISKS: usize = 64;
/// Checksum entries in one checksum page; the last 4 bytes hold the page's own crc.
pub const CSUMS_PER_PAGE: u64 = (PAGE_BYTES - 4) / 4;

const _: () = assert!(DATA_START.is_multiple_of(PAGE_BYTES));
const _: () = assert!(CSUMS_PER_PAGE * 4 + 4 == PAGE_BYTES);

pub fn round_up_page(n: u64) -> u64 {
    n.div_ceil(PAGE_BYTES) * PAGE_BYTES
}

pub const MIN_DISKS: u32 = 3;
pub const MIN_CHUNK_BYTES: u64 = BLOCK_BYTES;
pub const MAX_CHUNK_BYTES: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub disks: u32,
    pub chunk_bytes: u64,
    pub stripes: u64,
}

/// Where one logical byte lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub stripe: u64,
    pub data_index: u32,
    pub member: u32,
    pub chunk_offset: u64,
}

impl Geometry {
    /// Checks what outside data could get wrong; the reason is for error messages.
    pub fn validate(&self) -> Result<(), String> {
        if self.disks < MIN_DISKS || self.disks as usize > MAX_DISKS {
            return Err(format!(
                "{} disks: RAID-5 needs {MIN_DISKS} to {MAX_DISKS}",
                self.disks
            ));
        }
        if self.chunk_bytes < MIN_CHUNK_BYTES
            || self.chunk_bytes > MAX_CHUNK_BYTES
            || !self.chunk_bytes.is_power_of_two()
        {
            return Err(format!(
                "chunk size {} is not a power of two between {MIN_CHUNK_BYTES} and {MAX_CHUNK_BYTES}",
                self.chunk_bytes
            ));
        }
        if self.stripes == 0 || self.stripes > (1u64 << 40) / self.chunk_bytes {
            return Err(format!("{} stripes is out of range", self.stripes));
        }
        Ok(())
    }

    /// The smallest geometry holding at least `capacity_bytes`.
    pub fn for_capacity(disks: u32, chunk_bytes: u64, capacity_bytes: u64) -> Result<Self, String> {
        let probe = Geometry {
            disks,
            chunk_bytes,
            stripes: 1,
        };
        probe.validate()?;
        let stripes = capacity_bytes.div_ceil(probe.stripe_data_bytes()).max(1);
        let g = Geometry { stripes, ..probe };
        g.validate()?;
        Ok(g)
    }

    pub fn data_disks(&self) -> u32 {
        self.disks - 1
    }

    pub fn stripe_data_bytes(&self) -> u64 {
        self.chunk_bytes * self.data_disks() as u64
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.stripes * self.stripe_data_bytes()
    }

    pub fn parity_member(&self, stripe: u64) -> u32 {
        let n = self.disks as u64;
        (n - 1 - stripe % n) as u32
    }

    pub fn data_member(&self, stripe: u64, data_index: u32) -> u32 {
        debug_assert!(data_index < self.data_disks());
        (self.parity_member(stripe) + 1 + data_index) % self.disks
    }

    /// Which data chunk of `stripe` member holds, or None for its parity member.
    pub fn data_index(&self, stripe: u64, member: u32) -> Option<u32> {
        let p = self.parity_member(stripe);
        if member == p {
            None
        } else {
            Some((member + self.disks - p - 1) % self.disks)
        }
    }

    pub fn locate(&self, logical: u64) -> Location {
        let chunk = logical / self.chunk_bytes;
        let stripe = chunk / self.data_disks() as u64;
        let data_index = (chunk % self.data_disks() as u64) as u32;
        Location {
            stripe,
            data_index,
            member: self.data_member(stripe, data_index),
            chunk_offset: logical % self.chunk_bytes,
        }
    }

    pub fn logical(&self, stripe: u64, data_index: u32, chunk_offset: u64) -> u64 {
        (stripe * self.data_disks() as u64 + data_index as u64) * self.chunk_bytes + chunk_offset
    }

    /// Byte offset inside a member file of the given stripe's chunk.
    pub fn member_offset(&self, stripe: u64, chunk_offset: u64) -> u64 {
        DATA_START + stripe * self.chunk_bytes + chunk_offset
    }

    pub fn blocks_per_chunk(&self) -> u64 {
        self.chunk_bytes / BLOCK_BYTES
    }

    /// Index of the block (within one member) at `chunk_offset` of `stripe`.
    pub fn member_block(&self, stripe: u64, chunk_offset: u64) -> u64 {
        stripe * self.blocks_per_chunk() + chunk_offset / BLOCK_BYTES
    }

    pub fn blocks_per_member(&self) -> u64 {
        self.stripes * self.blocks_per_chunk()
    }

    pub fn csum_start(&self) -> u64 {
        DATA_START + self.stripes * self.chunk_bytes
    }

    pub fn csum_pages(&self) -> u64 {
        self.blocks_per_member().div_ceil(CSUMS_PER_PAGE)
    }

    /// Length every member file must have.
    pub fn member_bytes(&self) -> u64 {
        round_up_page(self.csum_start()) + self.csum_pages() * PAGE_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn geometry() -> impl Strategy<Value = Geometry> {
        (3u32..=9, 0u32..4, 1u64..40).prop_map(|(disks, shift, stripes)| Geometry {
            disks,
            chunk_bytes: BLOCK_BYTES << shift,
            stripes,
        })
    }

    proptest! {
        /// Every logical block maps to exactly one (member, member block), never a parity
        /// position, and maps back to itself.
        #[test]
        fn layout_is_a_bijection_onto_data_positions(g in geometry()) {
            let mut seen = HashSet::new();
            for block in 0..g.capacity_bytes() / BLOCK_BYTES {
                let logical = block * BLOCK_BYTES;
                let loc = g.locate(logical);
                prop_assert!(loc.member < g.disks);
                prop_assert_ne!(loc.member, g.parity_member(loc.stripe));
                prop_assert_eq!(g.data_index(loc.stripe, loc.member), Some(loc.data_index));
                prop_assert_eq!(g.logical(loc.stripe, loc.data_index, loc.chunk_offset), logical);
                prop_assert!(seen.insert((loc.member, g.member_block(loc.stripe, loc.chunk_offset))));
            }
            // Data positions plus one parity chunk per stripe fill every member exactly.
            prop_assert_eq!(seen.len() as u64 + g.stripes * g.blocks_per_chunk(),
                            g.disks as u64 * g.blocks_per_member());
        }

        /// Parity visits every member once in each run of N stripes, moving down by one.
        #[test]
        fn parity_rotates(g in geometry(), s in 0u64..1000) {
            let n = g.disks as u64;
            let members: HashSet<u32> = (s..s + n).map(|t| g.parity_member(t)).collect();
            prop_assert_eq!(members.len() as u64, n);
            prop_assert_eq!((g.parity_member(s + 1) + 1) % g.disks, g.parity_member(s));
        }

        #[test]
        fn member_layout_regions_do_not_overlap(g in geometry()) {
            prop_assert!(g.csum_start() >= DATA_START + g.stripes * g.chunk_bytes);
            prop_assert!(g.csum_pages() * CSUMS_PER_PAGE >= g.blocks_per_member());
            prop_assert!(g.member_bytes() >= g.csum_start() + g.csum_pages() * PAGE_BYTES);
        }
    }

    #[test]
    fn left_symmetric_matches_md_for_four_disks() {
        // md's left-symmetric, 4 disks: stripe 0 = D0 D1 D2 P, stripe 1 = D1 D2 P D0 …
        let g = Geometry {
            disks: 4,
            chunk_bytes: 65536,
            stripes: 8,
        };
        let row = |s: u64| -> Vec<String> {
            (0..4)
                .map(|m| match g.data_index(s, m) {
                    None => "P".to_string(),
                    Some(i) => format!("D{}", s * 3 + i as u64),
                })
                .collect()
        };
        assert_eq!(row(0), ["D0", "D1", "D2", "P"]);
        assert_eq!(row(1), ["D4", "D5", "P", "D3"]);
        assert_eq!(row(2), ["D8", "P", "D6", "D7"]);
        assert_eq!(row(3), ["P", "D9", "D10", "D11"]);
    }

    #[test]
    fn bad_geometry_is_rejected() {
        assert!(Geometry::for_capacity(2, 65536, 1 << 20).is_err());
        assert!(Geometry::for_capacity(4, 65535, 1 << 20).is_err());
        assert!(Geometry::for_capacity(4, 1024, 1 << 20).is_err());
        let g = Geometry::for_capacity(4, 65536, 1 << 20).unwrap();
        assert!(g.capacity_bytes() >= 1 << 20);
    }
}

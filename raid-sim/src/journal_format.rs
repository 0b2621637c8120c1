//! On-disk format of the stripe journal (`raid.journal` and `raid.records`): the journal
//! header with its dirty-stripe bitmap, and the redo record. `journal` reads and writes them.

use crate::codec::{Get, Put};
use crate::format::Version;
use crate::layout::{round_up_page, Geometry, MAX_DISKS, PAGE_BYTES};

// ---------------------------------------------------------------------------------------
// Journal: two files. `raid.journal` is small and synced: two header slots and the dirty
// stripe bitmap. `raid.records` is the ring of redo records; it is synced only in strict
// mode (`journal_sync`), so that its pages rarely reach the disk.
//
// raid.journal:
// | offset      | bytes                     | content                                  |
// |-------------|---------------------------|------------------------------------------|
// | 0           | PAGE_BYTES                | journal header slot 0 (even generation)  |
// | PAGE_BYTES  | PAGE_BYTES                | journal header slot 1 (odd generation)   |
// | BITMAP_START| bitmap_pages * PAGE_BYTES | one bit per region of `region_stripes`   |
//
// Journal header: magic 8 | version 4 | pad 4 | array_id 16 | generation 8 |
// ring_bytes 8 | applied_seq 8 | tail_offset 8 | region_stripes 8 | bitmap_pages 4 |
// zero … | crc32c 4 (last 4 bytes).
//
// raid.records: records back to back from offset 0, wrapping at `ring_bytes`. A record
// is a multiple of PAGE_BYTES, its first page the record header:
// magic 4 | crc32c 4 (over every byte of the record after this field) | seq 8 |
// array_id_low 8 | stripe 8 | record_bytes 4 | range_count 4 |
// range_count × (member 4 | chunk_offset 4 | len 4) | zero … |
// then the payload: the ranges' new bytes, concatenated in order.
// ---------------------------------------------------------------------------------------

pub const JOURNAL_MAGIC: [u8; 8] = *b"SMLRJRNL";
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RJRC");
pub const BITMAP_START: u64 = 2 * PAGE_BYTES;
pub const BITS_PER_PAGE: u64 = PAGE_BYTES * 8;
pub const MAX_BITMAP_PAGES: u64 = 8;
pub const RECORD_HEADER_FIXED: usize = 40;
pub const RANGE_ENTRY_BYTES: usize = 12;
pub const MAX_RECORD_RANGES: usize =
    (PAGE_BYTES as usize - RECORD_HEADER_FIXED) / RANGE_ENTRY_BYTES;
const _: () = assert!(MAX_RECORD_RANGES >= MAX_DISKS);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalHeader {
    pub array_id: u128,
    pub generation: u64,
    pub ring_bytes: u64,
    pub applied_seq: u64,
    pub tail_offset: u64,
    pub region_stripes: u64,
    pub bitmap_pages: u32,
}

impl JournalHeader {
    pub fn slot_offset(&self) -> u64 {
        (self.generation % 2) * PAGE_BYTES
    }

    pub fn journal_file_bytes(&self) -> u64 {
        BITMAP_START + self.bitmap_pages as u64 * PAGE_BYTES
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut buf = vec![0u8; PAGE_BYTES as usize];
        let mut p = Put {
            buf: &mut buf,
            at: 0,
        };
        p.bytes(&JOURNAL_MAGIC);
        p.u32(Version::V1.as_u32());
        p.u32(0);
        p.bytes(&self.array_id.to_le_bytes());
        p.u64(self.generation);
        p.u64(self.ring_bytes);
        p.u64(self.applied_seq);
        p.u64(self.tail_offset);
        p.u64(self.region_stripes);
        p.u32(self.bitmap_pages);
        let end = PAGE_BYTES as usize - 4;
        let crc = crc32c::crc32c(&buf[..end]);
        buf[end..].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    pub fn decode(buf: &[u8]) -> Result<JournalHeader, String> {
        let end = PAGE_BYTES as usize - 4;
        if buf.len() < PAGE_BYTES as usize {
            return Err("journal header short".into());
        }
        if buf[..8] != JOURNAL_MAGIC {
            return Err("no journal magic".into());
        }
        let mut c = [0u8; 4];
        c.copy_from_slice(&buf[end..end + 4]);
        if u32::from_le_bytes(c) != crc32c::crc32c(&buf[..end]) {
            return Err("journal header checksum mismatch".into());
        }
        let mut g = Get { buf, at: 8 };
        let version = g.u32();
        if Version::from_u32(version).is_none() {
            return Err(format!("unknown journal version {version}"));
        }
        g.u32();
        let h = JournalHeader {
            array_id: g.u128(),
            generation: g.u64(),
            ring_bytes: g.u64(),
            applied_seq: g.u64(),
            tail_offset: g.u64(),
            region_stripes: g.u64(),
            bitmap_pages: g.u32(),
        };
        if h.ring_bytes < 4 * PAGE_BYTES
            || !h.ring_bytes.is_multiple_of(PAGE_BYTES)
            || h.tail_offset >= h.ring_bytes
            || !h.tail_offset.is_multiple_of(PAGE_BYTES)
            || h.region_stripes == 0
            || h.bitmap_pages == 0
            || h.bitmap_pages as u64 > MAX_BITMAP_PAGES
        {
            return Err(format!(
                "journal header fields out of range (ring {}, tail {}, region {}, bitmap pages {})",
                h.ring_bytes, h.tail_offset, h.region_stripes, h.bitmap_pages
            ));
        }
        Ok(h)
    }

    pub fn decode_slots(buf: &[u8]) -> Result<JournalHeader, String> {
        let half = PAGE_BYTES as usize;
        if buf.len() < 2 * half {
            return Err("journal file shorter than its two header slots".into());
        }
        match (
            JournalHeader::decode(&buf[..half]),
            JournalHeader::decode(&buf[half..2 * half]),
        ) {
            (Ok(a), Ok(b)) => Ok(if b.generation > a.generation { b } else { a }),
            (Ok(a), Err(_)) => Ok(a),
            (Err(_), Ok(b)) => Ok(b),
            (Err(ea), Err(eb)) => Err(format!("slot 0: {ea}; slot 1: {eb}")),
        }
    }
}

/// One range of a stripe update: the new bytes of `member` at `chunk_offset` in the stripe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRange {
    pub member: u32,
    pub chunk_offset: u32,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub stripe: u64,
    pub ranges: Vec<RecordRange>,
}

impl Record {
    pub fn encoded_bytes(&self) -> u64 {
        PAGE_BYTES + round_up_page(self.ranges.iter().map(|r| r.data.len() as u64).sum())
    }

    pub fn encode_into(&self, array_id: u128, out: &mut Vec<u8>) {
        assert!(self.ranges.len() <= MAX_RECORD_RANGES);
        let total = self.encoded_bytes() as usize;
        let start = out.len();
        out.resize(start + total, 0);
        let buf = &mut out[start..];
        {
            let mut p = Put { buf, at: 0 };
            p.u32(RECORD_MAGIC);
            p.u32(0);
            p.u64(self.seq);
            p.u64(array_id as u64);
            p.u64(self.stripe);
            p.u32(total as u32);
            p.u32(self.ranges.len() as u32);
            for r in &self.ranges {
                p.u32(r.member);
                p.u32(r.chunk_offset);
                p.u32(r.data.len() as u32);
            }
            p.at = PAGE_BYTES as usize;
            for r in &self.ranges {
                p.bytes(&r.data);
            }
        }
        let crc = crc32c::crc32c(&buf[8..total]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads the header page of a record: returns (seq, record_bytes) when it looks valid
    /// for this array; the payload is checked by `decode`.
    pub fn peek(page: &[u8], array_id: u128) -> Option<(u64, u64)> {
        let mut g = Get { buf: page, at: 0 };
        if g.u32() != RECORD_MAGIC {
            return None;
        }
        g.u32();
        let seq = g.u64();
        if g.u64() != array_id as u64 {
            return None;
        }
        g.u64();
        let total = g.u32() as u64;
        if total < PAGE_BYTES || !total.is_multiple_of(PAGE_BYTES) {
            return None;
        }
        Some((seq, total))
    }

    pub fn decode(buf: &[u8], geometry: &Geometry) -> Option<Record> {
        if buf.len() < PAGE_BYTES as usize {
            return None;
        }
        let mut g = Get { buf, at: 0 };
        if g.u32() != RECORD_MAGIC {
            return None;
        }
        let crc = g.u32();
        let seq = g.u64();
        g.u64();
        let stripe = g.u64();
        let total = g.u32() as usize;
        let count = g.u32() as usize;
        if total != buf.len() || count > MAX_RECORD_RANGES || crc != crc32c::crc32c(&buf[8..]) {
            return None;
        }
        if stripe >= geometry.stripes {
            return None;
        }
        let mut heads = Vec::with_capacity(count);
        for _ in 0..count {
            heads.push((g.u32(), g.u32(), g.u32() as usize));
        }
        let mut at = PAGE_BYTES as usize;
        let mut ranges = Vec::with_capacity(count);
        for (member, chunk_offset, len) in heads {
            if member >= geometry.disks
                || chunk_offset as u64 + len as u64 > geometry.chunk_bytes
                || at + len > buf.len()
            {
                return None;
            }
            ranges.push(RecordRange {
                member,
                chunk_offset,
                data: buf[at..at + len].to_vec(),
            });
            at += len;
        }
        Some(Record {
            seq,
            stripe,
            ranges,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{decode_csum_page, Superblock, CSUMS_PER_PAGE, SB_MAGIC};

    #[test]
    fn record_round_trips() {
        let g = Geometry {
            disks: 4,
            chunk_bytes: 65536,
            stripes: 10,
        };
        let rec = Record {
            seq: 42,
            stripe: 3,
            ranges: vec![
                RecordRange {
                    member: 1,
                    chunk_offset: 4096,
                    data: vec![5u8; 8192],
                },
                RecordRange {
                    member: 3,
                    chunk_offset: 4096,
                    data: vec![9u8; 8192],
                },
            ],
        };
        let mut out = Vec::new();
        rec.encode_into(77, &mut out);
        assert_eq!(out.len() as u64, rec.encoded_bytes());
        assert_eq!(Record::peek(&out, 77), Some((42, out.len() as u64)));
        assert_eq!(Record::peek(&out, 78), None);
        assert_eq!(Record::decode(&out, &g), Some(rec));
        out[PAGE_BYTES as usize + 3] ^= 1;
        assert_eq!(Record::decode(&out, &g), None);
    }

    proptest::proptest! {
        /// Decoders return errors on any input, never panic.
        #[test]
        fn decoders_survive_garbage(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9000),
                                    patch in 0usize..9000, magic in 0u8..4) {
            let mut b = bytes;
            // Steer some inputs past the magic checks.
            if b.len() >= 8 && magic == 1 { b[..8].copy_from_slice(&SB_MAGIC); }
            if b.len() >= 8 && magic == 2 { b[..8].copy_from_slice(&JOURNAL_MAGIC); }
            if b.len() >= 4 && magic == 3 { b[..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes()); }
            if !b.is_empty() { let i = patch % b.len(); b[i] = b[i].wrapping_add(1); }
            let _ = Superblock::decode(&b);
            let _ = Superblock::decode_slots(&b);
            let _ = JournalHeader::decode(&b);
            let _ = JournalHeader::decode_slots(&b);
            let g = Geometry { disks: 4, chunk_bytes: 65536, stripes: 10 };
            let _ = Record::decode(&b, &g);
            if b.len() >= PAGE_BYTES as usize {
                let _ = Record::peek(&b, 1);
                let _ = decode_csum_page(0, &b, CSUMS_PER_PAGE as usize);
            }
        }

        /// A valid record with any content round-trips; a flipped payload byte is caught.
        #[test]
        fn records_round_trip(stripe in 0u64..10, member in 0u32..4, off in 0u32..13,
                              len in 1usize..4, seed in proptest::prelude::any::<u8>(), flip in 0usize..1000) {
            let g = Geometry { disks: 4, chunk_bytes: 65536, stripes: 10 };
            let data: Vec<u8> = (0..len * 4096).map(|i| (i as u8).wrapping_mul(seed)).collect();
            let rec = Record { seq: 9, stripe, ranges: vec![RecordRange { member, chunk_offset: off * 4096, data }] };
            let mut out = Vec::new();
            rec.encode_into(5, &mut out);
            proptest::prop_assert!(Record::decode(&out, &g) == Some(rec), "round trip failed");
            let at = 8 + flip % (out.len() - 8);
            out[at] ^= 0x40;
            proptest::prop_assert!(Record::decode(&out, &g).is_none(), "flip at {} not detected", at);
        }
    }
}

//! Finding the valid prefix of the ring after a crash, with plain reads (never a mapping).
//!
//! Version 2 walks entry by entry from the header's tail and accepts an entry only when it
//! checks out, carries this volume's tag, the expected seq and a pass no older than the
//! walk's (a later lap or mount session may only raise it). It never searches the area for
//! entries: bytes inside a payload are only ever looked at as stale bytes at a position the
//! walk reached, and those were written by an older pass. Where the walk stops, the header's
//! durable watermark decides: before it, the media lost what was flushed (corruption); after
//! it, the crash cut an unflushed tail short (torn tail, recovered up to the gap).
//!
//! Version 1 is scanned with its old rules, for the recovery that replaces it.

use super::format::*;

/// One valid entry found by a scan.
#[derive(Clone, Debug)]
pub struct ScannedEntry {
    pub header: EntryHeader,
    /// Offset of the entry inside the entry area.
    pub offset: u64,
    pub payload: Vec<u8>,
}

impl ScannedEntry {
    /// The entry's bytes in the current format (header and payload), as mirrored.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = EntryHeader {
            len: (ENTRY_HEADER_BYTES + self.payload.len()) as u32,
            ..self.header
        };
        let mut b = header.encode(&[&self.payload]).to_vec();
        b.extend_from_slice(&self.payload);
        b
    }

    /// Decodes an entry received from the mirror (current format, or version 1 as an older
    /// daemon mirrored it); None when it is not a valid entry.
    pub fn from_bytes(bytes: &[u8]) -> Option<ScannedEntry> {
        let (header, header_bytes) = match EntryHeader::decode_checked(bytes) {
            Some(h) => (h, ENTRY_HEADER_BYTES),
            None => (
                EntryHeader::decode_checked_v1(bytes)?,
                V1_ENTRY_HEADER_BYTES,
            ),
        };
        if header.len as usize != bytes.len() {
            return None;
        }
        Some(ScannedEntry {
            header,
            offset: 0,
            payload: bytes[header_bytes..].to_vec(),
        })
    }
}

/// How the valid prefix ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// The next position holds nothing of this ring's (zeroes or an older pass's bytes).
    Clean,
    /// The walk stopped after the durable watermark where this ring's writes were cut short
    /// (a torn entry, or entries after a gap; `ScanResult::dropped` counts them). Recovery
    /// keeps the prefix and warns.
    TornTail { file_offset: u64 },
    /// The walk stopped before the durable watermark: the media lost or damaged entries that
    /// were flushed. `later_seq` is the watermark's seq (version 1: a valid later entry's),
    /// `later_file_offset` where the durable entries end (version 1: where that entry is).
    Corrupt {
        file_offset: u64,
        later_seq: u64,
        later_file_offset: u64,
    },
}

/// Entries of this ring found after the gap a torn tail ends at: written, never made
/// durable in order, and not recovered. For the warning only; never replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub entries: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Bytes from the gap to the end of the last such entry.
    pub bytes: u64,
}

#[derive(Clone, Debug)]
pub struct ScanResult {
    pub header: RingHeader,
    pub entries: Vec<ScannedEntry>,
    pub end: ScanEnd,
    /// Area offset where the next entry goes.
    pub head_offset: u64,
    /// Bytes from the tail to the head, wrap filler included.
    pub used_bytes: u64,
    pub next_seq: u64,
    /// The lowest pass an entry at the head may carry (a writer continuing the ring takes a
    /// higher one, and above the header's pass floor).
    pub head_pass: u64,
    /// What a torn tail dropped, when the walk found it.
    pub dropped: Option<Dropped>,
    /// Set when the file is shorter than the header says (its actual length).
    pub truncated_len: Option<u64>,
}

/// Problems that stop a scan before it starts.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(
        "both header slots are invalid (slot 0 at byte 0: {slot0}; slot 1 at byte 4096: {slot1})"
    )]
    NoValidHeader { slot0: String, slot1: String },
    #[error("the header is inconsistent: {0}")]
    BadHeader(String),
}

/// Picks the valid header slot with the higher generation.
pub fn read_header(file: &[u8]) -> Result<RingHeader, ScanError> {
    let slot = |i: u64| {
        let start = (i * HEADER_SLOT_BYTES) as usize;
        let end = (start + HDR_BYTES).min(file.len());
        if start >= file.len() {
            return Err("file too short".to_string());
        }
        RingHeader::decode(&file[start..end])
    };
    match (slot(0), slot(1)) {
        (Ok(a), Ok(b)) => Ok(if b.generation > a.generation { b } else { a }),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(slot0), Err(slot1)) => Err(ScanError::NoValidHeader { slot0, slot1 }),
    }
}

/// Scans `file` (the whole ring file's bytes) from the header's tail.
pub fn scan(file: &[u8]) -> Result<ScanResult, ScanError> {
    let header = read_header(file)?;
    if header.ring_bytes <= HEADER_AREA_BYTES || header.ring_bytes > (64u64 << 30) {
        return Err(ScanError::BadHeader(format!(
            "ring_bytes {} is out of range",
            header.ring_bytes
        )));
    }
    // A file cut short is scanned as if the missing bytes were zero: the entries before the
    // cut are kept and the watermark says whether the cut lost durable ones.
    let truncated_len = ((file.len() as u64) < header.ring_bytes).then_some(file.len() as u64);
    let padded;
    let file = if truncated_len.is_some() {
        let mut v = file.to_vec();
        v.resize(header.ring_bytes as usize, 0);
        padded = v;
        &padded[..]
    } else {
        file
    };
    let area = &file[HEADER_AREA_BYTES as usize..header.ring_bytes as usize];
    let area_len = area.len() as u64;
    if header.tail_offset >= area_len || header.tail_offset % ENTRY_ALIGN != 0 {
        return Err(ScanError::BadHeader(format!(
            "tail offset {} outside the entry area of {} bytes",
            header.tail_offset, area_len
        )));
    }
    // (The watermark may lag behind the tail: a reclaim does not flush.)
    if header.version.has_watermark() && header.durable_offset >= area_len {
        return Err(ScanError::BadHeader(format!(
            "durable watermark (seq {} at area offset {}) outside the entry area of {area_len} bytes",
            header.durable_seq, header.durable_offset
        )));
    }
    let mut result = match header.version {
        RingVersion::V1 => scan_v1(&header, area),
        RingVersion::V2 => scan_v2(&header, area),
    };
    result.truncated_len = truncated_len;
    Ok(result)
}

/// The walk's position.
struct Walk {
    pos: u64,
    used: u64,
    expected: u64,
    /// Lowest pass the next entry may carry.
    base_pass: u64,
}

impl Walk {
    /// Moves to area offset 0 for the next lap, which a higher pass writes.
    fn wrap(&mut self, area_len: u64) {
        self.used += area_len - self.pos;
        self.pos = 0;
        self.base_pass += 1;
    }
}

/// The entry at `pos` when it belongs to this ring's walk: valid, this volume's, the
/// expected seq, a pass no older than the walk's, and inside the area.
fn entry_at(area: &[u8], pos: u64, tag: u64, seq: u64, base_pass: u64) -> Option<EntryHeader> {
    EntryHeader::decode_checked(&area[pos as usize..])
        .filter(|h| h.volume_tag == tag && h.seq == seq && h.pass >= base_pass)
}

fn scan_v2(header: &RingHeader, area: &[u8]) -> ScanResult {
    let area_len = area.len() as u64;
    let tag = volume_tag(&header.volume_id);
    let mut w = Walk {
        pos: header.tail_offset,
        used: 0,
        expected: header.tail_seq,
        base_pass: header.tail_pass,
    };
    let mut entries = Vec::new();
    let stopped = loop {
        if area_len - w.pos < ENTRY_HEADER_BYTES as u64 {
            w.wrap(area_len);
        }
        if w.used >= area_len {
            break false;
        }
        let Some(h) = entry_at(area, w.pos, tag, w.expected, w.base_pass) else {
            break true;
        };
        let len = align_up(h.len as u64);
        if w.used + len > area_len {
            // It would overlap the tail: an older lap's entry, not ours.
            break true;
        }
        let at = w.pos as usize;
        entries.push(ScannedEntry {
            header: h,
            offset: w.pos,
            payload: area[at + ENTRY_HEADER_BYTES..at + h.len as usize].to_vec(),
        });
        w.expected += 1;
        w.base_pass = h.pass;
        if h.kind == EntryKind::Wrap {
            w.wrap(area_len);
        } else {
            w.used += len;
            w.pos += len;
            if w.pos == area_len {
                w.pos = 0;
                w.base_pass += 1;
            }
        }
    };
    let mut dropped = None;
    let end = if !stopped {
        ScanEnd::Clean
    } else if w.expected <= header.durable_seq {
        ScanEnd::Corrupt {
            file_offset: HEADER_AREA_BYTES + w.pos,
            later_seq: header.durable_seq,
            later_file_offset: HEADER_AREA_BYTES + header.durable_offset,
        }
    } else {
        dropped = find_dropped(area, &w, tag);
        let torn_here = torn_header_at(&area[w.pos as usize..], tag, w.expected, w.base_pass);
        if torn_here || dropped.is_some() {
            ScanEnd::TornTail {
                file_offset: HEADER_AREA_BYTES + w.pos,
            }
        } else {
            ScanEnd::Clean
        }
    };
    ScanResult {
        header: header.clone(),
        entries,
        end,
        head_offset: w.pos,
        used_bytes: w.used,
        next_seq: w.expected,
        head_pass: w.base_pass,
        dropped,
        truncated_len: None,
    }
}

/// True when `b` starts with this ring's header for the expected entry whose checksum
/// failed: the header is written first, so a write cut short leaves exactly this.
fn torn_header_at(b: &[u8], tag: u64, expected: u64, base_pass: u64) -> bool {
    b.len() >= ENTRY_HEADER_BYTES
        && get_u32(b, ENT_MAGIC) == ENTRY_MAGIC
        && get_u64(b, ENT_SEQ) == expected
        && get_u64(b, ENT_VOLUME_TAG) == tag
        && get_u64(b, ENT_PASS) >= base_pass
}

/// For the torn-tail warning only (nothing found here is ever recovered): the first entry of
/// this ring's current passes after the gap, within the free part of the area, and the chain
/// that follows it.
fn find_dropped(area: &[u8], gap: &Walk, tag: u64) -> Option<Dropped> {
    let area_len = area.len() as u64;
    let free = area_len - gap.used;
    let mut skipped = ENTRY_ALIGN;
    while skipped < free {
        let pos = (gap.pos + skipped) % area_len;
        if area_len - pos >= ENTRY_HEADER_BYTES as u64 {
            if let Some(h) = EntryHeader::decode_checked(&area[pos as usize..])
                .filter(|h| h.volume_tag == tag && h.seq > gap.expected && h.pass >= gap.base_pass)
            {
                return Some(follow_dropped(area, pos, skipped, free, h, tag));
            }
        }
        skipped += ENTRY_ALIGN;
    }
    None
}

/// Counts the chain of entries from `first` (at `pos`, `skipped` bytes after the gap).
fn follow_dropped(
    area: &[u8],
    mut pos: u64,
    mut skipped: u64,
    free: u64,
    first: EntryHeader,
    tag: u64,
) -> Dropped {
    let area_len = area.len() as u64;
    let mut d = Dropped {
        entries: 0,
        first_seq: first.seq,
        last_seq: first.seq,
        bytes: 0,
    };
    let mut h = first;
    loop {
        let len = align_up(h.len as u64);
        d.entries += 1;
        d.last_seq = h.seq;
        d.bytes = skipped + len;
        let advance = if h.kind == EntryKind::Wrap || pos + len >= area_len {
            area_len - pos
        } else {
            len
        };
        skipped += advance;
        pos = (pos + advance) % area_len;
        if area_len - pos < ENTRY_HEADER_BYTES as u64 {
            skipped += area_len - pos;
            pos = 0;
        }
        if skipped >= free {
            return d;
        }
        match entry_at(area, pos, tag, h.seq + 1, h.pass) {
            Some(next) => h = next,
            None => return d,
        }
    }
}

/// The version 1 scan, unchanged: entries bound to nothing, so damage is told from a torn
/// tail by looking for any valid later entry in the area.
fn scan_v1(header: &RingHeader, area: &[u8]) -> ScanResult {
    let area_len = area.len() as u64;
    let header_bytes = V1_ENTRY_HEADER_BYTES;
    let mut entries = Vec::new();
    let mut pos = header.tail_offset;
    let mut expected = header.tail_seq;
    let mut used: u64 = 0;
    let stop_at;
    loop {
        if area_len - pos < header_bytes as u64 {
            used += area_len - pos;
            pos = 0;
        }
        if used >= area_len {
            stop_at = None;
            break;
        }
        match EntryHeader::decode_checked_v1(&area[pos as usize..]) {
            Some(h) if h.seq == expected => {
                let len = align_up(h.len as u64);
                if used + len > area_len {
                    stop_at = None;
                    break;
                }
                let payload =
                    area[pos as usize + header_bytes..pos as usize + h.len as usize].to_vec();
                entries.push(ScannedEntry {
                    header: h,
                    offset: pos,
                    payload,
                });
                expected += 1;
                if h.kind == EntryKind::Wrap {
                    used += area_len - pos;
                    pos = 0;
                } else {
                    used += len;
                    pos += len;
                    if pos == area_len {
                        pos = 0;
                    }
                }
            }
            Some(_) => {
                stop_at = None;
                break;
            }
            None => {
                stop_at = Some(pos);
                break;
            }
        }
    }
    let end = match stop_at {
        Some(at) => match find_later_v1(area, expected) {
            Some((later_seq, later_at)) => ScanEnd::Corrupt {
                file_offset: HEADER_AREA_BYTES + at,
                later_seq,
                later_file_offset: HEADER_AREA_BYTES + later_at,
            },
            None if looks_like_v1_entry_start(&area[at as usize..], expected) => {
                ScanEnd::TornTail {
                    file_offset: HEADER_AREA_BYTES + at,
                }
            }
            // Zeroes, or the middle of an older lap's entry: the log simply ends here.
            None => ScanEnd::Clean,
        },
        None => ScanEnd::Clean,
    };
    ScanResult {
        header: header.clone(),
        entries,
        end,
        head_offset: pos,
        used_bytes: used,
        next_seq: expected,
        head_pass: 0,
        dropped: None,
        truncated_len: None,
    }
}

fn looks_like_v1_entry_start(b: &[u8], expected: u64) -> bool {
    b.len() >= V1_ENTRY_HEADER_BYTES
        && get_u32(b, ENT_MAGIC) == ENTRY_MAGIC_V1
        && get_u64(b, ENT_SEQ) == expected
}

/// Looks anywhere in a version 1 area for a valid entry with seq >= `expected`.
fn find_later_v1(area: &[u8], expected: u64) -> Option<(u64, u64)> {
    let mut pos = 0usize;
    let magic = ENTRY_MAGIC_V1.to_le_bytes();
    while pos + V1_ENTRY_HEADER_BYTES <= area.len() {
        if area[pos..pos + 4] == magic {
            if let Some(h) = EntryHeader::decode_checked_v1(&area[pos..]) {
                if h.seq >= expected {
                    return Some((h.seq, pos as u64));
                }
            }
        }
        pos += ENTRY_ALIGN as usize;
    }
    None
}

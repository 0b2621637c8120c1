//! Finding the valid prefix of the ring after a crash, with plain reads (never a mapping).

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
    /// The entry's bytes as they are in the ring (header and payload), as mirrored.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.header.encode(&[&self.payload]).to_vec();
        b.extend_from_slice(&self.payload);
        b
    }

    /// Decodes an entry received from the mirror; None when it is not a valid entry.
    pub fn from_bytes(bytes: &[u8]) -> Option<ScannedEntry> {
        let header = EntryHeader::decode_checked(bytes)?;
        if header.len as usize != bytes.len() {
            return None;
        }
        Some(ScannedEntry {
            header,
            offset: 0,
            payload: bytes[ENTRY_HEADER_BYTES..].to_vec(),
        })
    }
}

/// How the valid prefix ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// The next position holds nothing (zeroes or an older lap's entry).
    Clean,
    /// The next position holds a damaged entry and nothing valid follows it: a write that
    /// was cut short. Recovery keeps the prefix and warns.
    TornTail { file_offset: u64 },
    /// Damage with valid later entries beyond it: the middle of the log is corrupt.
    Corrupt {
        file_offset: u64,
        later_seq: u64,
        later_file_offset: u64,
    },
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
    // cut are kept and the entry crossing it is a torn tail.
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
    let mut entries = Vec::new();
    let mut pos = header.tail_offset;
    let mut expected = header.tail_seq;
    let mut used: u64 = 0;
    let stop_at;
    loop {
        if area_len - pos < ENTRY_HEADER_BYTES as u64 {
            used += area_len - pos;
            pos = 0;
        }
        if used >= area_len {
            stop_at = None;
            break;
        }
        match EntryHeader::decode_checked(&area[pos as usize..]) {
            Some(h) if h.seq == expected => {
                let len = align_up(h.len as u64);
                if used + len > area_len {
                    stop_at = None;
                    break;
                }
                let payload =
                    area[pos as usize + ENTRY_HEADER_BYTES..pos as usize + h.len as usize].to_vec();
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
        Some(at) => match find_later(area, expected) {
            Some((later_seq, later_at)) => ScanEnd::Corrupt {
                file_offset: HEADER_AREA_BYTES + at,
                later_seq,
                later_file_offset: HEADER_AREA_BYTES + later_at,
            },
            None if looks_like_entry_start(&area[at as usize..], expected) => ScanEnd::TornTail {
                file_offset: HEADER_AREA_BYTES + at,
            },
            // Zeroes, or the middle of an older lap's entry: the log simply ends here.
            None => ScanEnd::Clean,
        },
        None => ScanEnd::Clean,
    };
    Ok(ScanResult {
        header,
        entries,
        end,
        head_offset: pos,
        used_bytes: used,
        next_seq: expected,
        truncated_len,
    })
}

/// True when `b` starts with an entry header for `expected` whose checksum failed: the
/// header is written first, so a write cut short leaves exactly this.
fn looks_like_entry_start(b: &[u8], expected: u64) -> bool {
    b.len() >= ENTRY_HEADER_BYTES
        && get_u32(b, ENT_MAGIC) == ENTRY_MAGIC
        && get_u64(b, ENT_SEQ) == expected
}

/// Looks anywhere in the area for a valid entry with seq >= `expected`.
fn find_later(area: &[u8], expected: u64) -> Option<(u64, u64)> {
    let mut pos = 0usize;
    let magic = ENTRY_MAGIC.to_le_bytes();
    while pos + ENTRY_HEADER_BYTES <= area.len() {
        if area[pos..pos + 4] == magic {
            if let Some(h) = EntryHeader::decode_checked(&area[pos..]) {
                if h.seq >= expected {
                    return Some((h.seq, pos as u64));
                }
            }
        }
        pos += ENTRY_ALIGN as usize;
    }
    None
}

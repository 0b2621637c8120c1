//! Read-back of a volume's entries in chunks that fit a batch frame, resumable from a
//! [`ReadCursor`] without rescanning the segments already read.

use super::format::*;
use super::{io_err, StoreError, VolumeStore};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

/// Where a read-back stands between chunks.
#[derive(Debug, Clone, Copy)]
pub struct ReadCursor {
    /// Every seq up to this one has been returned (or was not wanted).
    after: u64,
    /// Resume point inside the segment starting at `.0`, if still valid.
    at: Option<(u64, u64)>,
}

impl ReadCursor {
    pub fn after(after_seq: u64) -> ReadCursor {
        ReadCursor {
            after: after_seq,
            at: None,
        }
    }
}

impl VolumeStore {
    /// Reads the next entries after the cursor (and after the checkpoint), at most
    /// `max_entries` and stopping before the batch body would exceed `max_body_bytes`.
    /// An empty result means the end.
    pub fn read_chunk(
        &self,
        cursor: &mut ReadCursor,
        max_body_bytes: usize,
        max_entries: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        use smlog_wire::format::{BATCH_HEAD_BYTES, ENTRY_HEAD_BYTES};
        let after = cursor.after.max(self.meta.checkpoint_through.unwrap_or(0));
        let mut out = Vec::new();
        let mut body = BATCH_HEAD_BYTES;
        for seg in &self.segments {
            if seg.last_seq.is_none_or(|l| l <= after) {
                continue;
            }
            let start = match cursor.at {
                Some((first, offset)) if first == seg.first_seq => offset,
                _ => SEGMENT_HEADER_BYTES as u64,
            };
            let mut file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
            file.seek(SeekFrom::Start(start))
                .map_err(io_err("seek", &seg.path))?;
            let mut input = BufReader::with_capacity(256 * 1024, file).take(seg.bytes - start);
            let mut at = start;
            while at < seg.bytes {
                let corrupt = |what: &str| StoreError::Corrupt {
                    what: what.to_string(),
                    path: seg.path.clone(),
                    at,
                };
                let mut head = [0u8; RECORD_HEAD_BYTES];
                input
                    .read_exact(&mut head)
                    .map_err(|_| corrupt("record head unreadable"))?;
                let (seq, len, crc) = decode_record_head(&head).map_err(corrupt)?;
                if body + ENTRY_HEAD_BYTES + len > max_body_bytes || out.len() == max_entries {
                    cursor.at = Some((seg.first_seq, at));
                    return Ok(out);
                }
                let mut entry = vec![0u8; len];
                input
                    .read_exact(&mut entry)
                    .map_err(|_| corrupt("record unreadable"))?;
                if !record_crc_ok(&head, &entry, crc) {
                    return Err(corrupt("record checksum mismatch on read-back"));
                }
                at += (RECORD_HEAD_BYTES + len) as u64;
                cursor.at = Some((seg.first_seq, at));
                if seq > after {
                    body += ENTRY_HEAD_BYTES + len;
                    cursor.after = seq;
                    out.push((seq, entry));
                }
            }
        }
        Ok(out)
    }
}

//! The live ring: appends, flushes, reclaims. One writer at a time (internally locked).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::format::*;
use super::mmap::RingMap;
use super::scan::{scan, ScanResult};
use super::LogError;

/// Where an appended entry landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub seq: Seq,
    /// Area offset of the entry (what a reclaim moves the tail to).
    pub offset: u64,
    /// Ring position before the entry (monotonic byte count, wrap filler included).
    pub position: u64,
}

/// Figures for `status` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    pub area_bytes: u64,
    pub used_bytes: u64,
    pub next_seq: u64,
    pub tail_seq: u64,
    pub flushed_seq: u64,
}

struct Ring {
    map: RingMap,
    area_len: u64,
    volume_id: [u8; 16],
    generation: u64,
    /// Area offset of the next entry.
    head: u64,
    /// Monotonic positions: used bytes = head_pos - tail_pos.
    head_pos: u64,
    tail_pos: u64,
    tail_offset: u64,
    tail_seq: u64,
    next_seq: u64,
    /// Entries written by the current append (seq, file offset, length), for the hook.
    written: Vec<(u64, usize, usize)>,
    /// Position and seq up to which the area has been msync'ed.
    flushed_pos: u64,
    flushed_head: u64,
    flushed_seq: u64,
}

/// One entry as the append hook sees it.
pub struct HookedEntry<'a> {
    pub seq: Seq,
    /// The entry exactly as written to the ring (header and payload).
    pub bytes: &'a [u8],
    /// What the appender passed along with it (`try_append_noting`); empty otherwise.
    pub side: &'a [&'a [u8]],
}

/// Sees every entry appended, in seq order, while the ring is locked (the fs core forwards
/// them to its replica).
pub type AppendHook = Box<dyn Fn(HookedEntry<'_>) + Send + Sync>;

/// The state log: a memory-mapped ring of checksummed, seq-chained entries.
pub struct StateLog {
    path: PathBuf,
    ring: Mutex<Ring>,
    /// Signalled when a reclaim frees space.
    space: Condvar,
    hook: std::sync::OnceLock<AppendHook>,
}

impl StateLog {
    /// Creates a new ring file of `ring_bytes`, zero-filled, with a fresh header.
    /// `progress` is called with bytes written so far.
    pub fn create(
        path: &Path,
        ring_bytes: u64,
        volume_id: [u8; 16],
        progress: impl FnMut(u64),
    ) -> Result<(), LogError> {
        Self::create_from(path, ring_bytes, volume_id, 1, progress)
    }

    /// Like `create`, with the first entry to carry `first_seq` (a ring rebuilt after its
    /// entries were recovered from the mirror continues their numbering).
    pub fn create_from(
        path: &Path,
        ring_bytes: u64,
        volume_id: [u8; 16],
        first_seq: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<(), LogError> {
        let io = |e| LogError::io(path, e);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io)?;
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0u64;
        while done < ring_bytes {
            let n = (ring_bytes - done).min(zeros.len() as u64);
            f.write_all(&zeros[..n as usize]).map_err(io)?;
            done += n;
            progress(done);
        }
        let header = RingHeader {
            ring_bytes,
            volume_id,
            generation: 1,
            tail_offset: 0,
            tail_seq: first_seq,
        };
        use std::os::unix::fs::FileExt;
        f.write_all_at(&header.encode(), 0).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(())
    }

    /// Reads the whole ring file with plain reads and scans it.
    pub fn scan_file(path: &Path) -> Result<ScanResult, LogError> {
        let mut f = File::open(path).map_err(|e| LogError::io(path, e))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)
            .map_err(|e| LogError::io(path, e))?;
        scan(&bytes).map_err(|e| LogError::Scan {
            path: path.to_path_buf(),
            source: e,
        })
    }

    /// Opens the ring for appending after `scanned` (the caller has decided the scan is
    /// acceptable). A file found short is extended back to its full size with zeroes.
    pub fn open(path: &Path, scanned: &ScanResult) -> Result<StateLog, LogError> {
        let io = |e| LogError::io(path, e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let ring_bytes = scanned.header.ring_bytes;
        if len < ring_bytes {
            file.set_len(ring_bytes).map_err(io)?;
        }
        let map = RingMap::map(&file).map_err(io)?;
        let area_len = ring_bytes - HEADER_AREA_BYTES;
        let ring = Ring {
            map,
            area_len,
            volume_id: scanned.header.volume_id,
            generation: scanned.header.generation,
            head: scanned.head_offset,
            head_pos: scanned.used_bytes,
            tail_pos: 0,
            tail_offset: scanned.header.tail_offset,
            tail_seq: scanned.header.tail_seq,
            next_seq: scanned.next_seq,
            written: Vec::new(),
            flushed_pos: scanned.used_bytes,
            flushed_head: scanned.head_offset,
            flushed_seq: scanned.next_seq - 1,
        };
        Ok(StateLog {
            path: path.to_path_buf(),
            ring: Mutex::new(ring),
            space: Condvar::new(),
            hook: std::sync::OnceLock::new(),
        })
    }

    /// Installs the hook that sees every later entry (once; a second call is a programmer
    /// error).
    pub fn set_append_hook(&self, hook: AppendHook) {
        assert!(
            self.hook.set(hook).is_ok(),
            "the state log's append hook is installed once"
        );
    }

    /// Hands the entries of the last append to the hook, still under the ring lock so that
    /// they arrive in seq order. `side` goes with the entry the caller appended (`seq`), not
    /// with the filler written before it.
    fn run_hook(&self, ring: &mut Ring, seq: Option<u64>, side: &[&[u8]]) {
        let written = std::mem::take(&mut ring.written);
        if let Some(hook) = self.hook.get() {
            for (at, start, len) in written {
                hook(HookedEntry {
                    seq: Seq(at),
                    bytes: &ring.map.bytes_mut()[start..start + len],
                    side: if Some(at) == seq { side } else { &[] },
                });
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes an entry with `payload_bytes` of payload needs, worst case (wrap filler included).
    pub fn worst_case_bytes(&self, payload_bytes: usize) -> u64 {
        let ring = self.lock();
        align_up((ENTRY_HEADER_BYTES + payload_bytes) as u64) + ring.wrap_cost_bound()
    }

    /// Appends one entry if it fits while leaving `reserve_bytes` free; None when it does not.
    pub fn try_append(
        &self,
        state: EntryState,
        op_id: Option<Seq>,
        parts: &[&[u8]],
        reserve_bytes: u64,
    ) -> Result<Option<Appended>, LogError> {
        self.try_append_noting(state, op_id, parts, reserve_bytes, &[])
    }

    /// `try_append`, handing `side` to the append hook along with the entry: bytes the ring
    /// does not store but the hook needs (the data a direct write's entry only points at).
    /// The log gives them no meaning; the hook's owner does.
    pub fn try_append_noting(
        &self,
        state: EntryState,
        op_id: Option<Seq>,
        parts: &[&[u8]],
        reserve_bytes: u64,
        side: &[&[u8]],
    ) -> Result<Option<Appended>, LogError> {
        let payload_bytes: usize = parts.iter().map(|p| p.len()).sum();
        if payload_bytes > MAX_PAYLOAD_BYTES {
            return Err(LogError::TooLarge { payload_bytes });
        }
        let mut ring = self.lock();
        let appended = ring.append(
            state.kind(),
            op_id.map(|s| s.0),
            state.byte(),
            parts,
            reserve_bytes,
        );
        self.run_hook(&mut ring, appended.map(|a| a.seq.0), side);
        Ok(appended)
    }

    /// Blocks until at least `bytes` are free or `timeout` passes.
    pub fn wait_for_space(&self, bytes: u64, timeout: Duration) {
        let ring = self.lock();
        let _unused = self
            .space
            .wait_timeout_while(ring, timeout, |r| r.free_bytes() < bytes)
            .unwrap_or_else(|p| p.into_inner());
    }

    /// msyncs everything appended so far. Returns the seq now durable on local media.
    pub fn flush(&self) -> Result<u64, LogError> {
        let mut ring = self.lock();
        ring.flush().map_err(|e| LogError::io(&self.path, e))
    }

    /// Releases every entry before `to` (an earlier append's position): the tail moves there.
    pub fn reclaim(&self, to: Appended) -> Result<(), LogError> {
        let mut ring = self.lock();
        if to.position < ring.tail_pos {
            return Ok(());
        }
        ring.tail_pos = to.position;
        ring.tail_offset = to.offset;
        ring.tail_seq = to.seq.0;
        ring.write_header()
            .map_err(|e| LogError::io(&self.path, e))?;
        drop(ring);
        self.space.notify_all();
        Ok(())
    }

    pub fn stats(&self) -> RingStats {
        let ring = self.lock();
        RingStats {
            area_bytes: ring.area_len,
            used_bytes: ring.head_pos - ring.tail_pos,
            next_seq: ring.next_seq,
            tail_seq: ring.tail_seq,
            flushed_seq: ring.flushed_seq,
        }
    }

    pub fn volume_id(&self) -> [u8; 16] {
        self.lock().volume_id
    }
}

impl Ring {
    fn free_bytes(&self) -> u64 {
        self.area_len - (self.head_pos - self.tail_pos)
    }

    /// Upper bound of filler a wrap can waste: the largest entry that may not fit at the end.
    fn wrap_cost_bound(&self) -> u64 {
        align_up((ENTRY_HEADER_BYTES + MAX_PAYLOAD_BYTES) as u64)
    }

    fn append(
        &mut self,
        kind: EntryKind,
        op_id: Option<u64>,
        state: u8,
        parts: &[&[u8]],
        reserve_bytes: u64,
    ) -> Option<Appended> {
        let payload_bytes: usize = parts.iter().map(|p| p.len()).sum();
        let len = ENTRY_HEADER_BYTES + payload_bytes;
        let need = align_up(len as u64);
        let to_end = self.area_len - self.head;
        // Filler needed before this entry when it does not fit at the end of the area.
        let filler = if need <= to_end { 0 } else { to_end };
        if filler + need + reserve_bytes > self.free_bytes() {
            return None;
        }
        if filler > 0 {
            if filler >= ENTRY_HEADER_BYTES as u64 {
                let seq = self.next_seq;
                self.write_entry(EntryKind::Wrap, seq, seq, 0, &[]);
                self.next_seq += 1;
            }
            self.head_pos += filler;
            self.head = 0;
        }
        let seq = self.next_seq;
        let appended = Appended {
            seq: Seq(seq),
            offset: self.head,
            position: self.head_pos,
        };
        self.write_entry(kind, seq, op_id.unwrap_or(seq), state, parts);
        self.next_seq += 1;
        self.head_pos += need;
        self.head += need;
        if self.head == self.area_len {
            self.head = 0;
        }
        Some(appended)
    }

    fn write_entry(&mut self, kind: EntryKind, seq: u64, op_id: u64, state: u8, parts: &[&[u8]]) {
        let payload_bytes: usize = parts.iter().map(|p| p.len()).sum();
        let header = EntryHeader {
            len: (ENTRY_HEADER_BYTES + payload_bytes) as u32,
            seq,
            op_id,
            kind,
            state,
        };
        let encoded = header.encode(parts);
        let start = (HEADER_AREA_BYTES + self.head) as usize;
        self.written
            .push((seq, start, ENTRY_HEADER_BYTES + payload_bytes));
        let bytes = self.map.bytes_mut();
        // The header goes first so that a write cut short is recognisable as a torn entry.
        bytes[start..start + ENTRY_HEADER_BYTES].copy_from_slice(&encoded);
        let mut at = start + ENTRY_HEADER_BYTES;
        for part in parts {
            bytes[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
    }

    fn flush(&mut self) -> std::io::Result<u64> {
        let base = HEADER_AREA_BYTES as usize;
        let pending = self.head_pos - self.flushed_pos;
        if pending >= self.area_len {
            self.map.flush_range(base, self.area_len as usize)?;
        } else if pending > 0 {
            let from = self.flushed_head;
            if from + pending <= self.area_len {
                self.map
                    .flush_range(base + from as usize, pending as usize)?;
            } else {
                let first = self.area_len - from;
                self.map.flush_range(base + from as usize, first as usize)?;
                self.map.flush_range(base, (pending - first) as usize)?;
            }
        }
        self.flushed_pos = self.head_pos;
        self.flushed_head = self.head;
        self.flushed_seq = self.next_seq - 1;
        Ok(self.flushed_seq)
    }

    /// Writes the header into the slot not holding the newest one, then msyncs it.
    fn write_header(&mut self) -> std::io::Result<()> {
        self.generation += 1;
        let header = RingHeader {
            ring_bytes: self.area_len + HEADER_AREA_BYTES,
            volume_id: self.volume_id,
            generation: self.generation,
            tail_offset: self.tail_offset,
            tail_seq: self.tail_seq,
        };
        let slot = (self.generation % 2) * HEADER_SLOT_BYTES;
        let encoded = header.encode();
        let start = slot as usize;
        self.map.bytes_mut()[start..start + encoded.len()].copy_from_slice(&encoded);
        self.map.flush_range(start, HEADER_SLOT_BYTES as usize)
    }
}

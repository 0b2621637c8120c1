//! The live ring: appends, flushes, reclaims. One writer at a time (internally locked).
//!
//! Durability protocol: a flush makes the data pages durable (fdatasync, outside the ring
//! lock), then writes the durable watermark into the header and msyncs the header page.
//! Every entry is written with the ring's current pass: one above everything the ring has
//! used (the header's pass floor) at open, and one more at every wrap. The floor is made
//! durable before any entry of a new pass is written, so a pass is never used twice and
//! leftovers of an earlier pass never continue a later walk (see `scan`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
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
    /// The pass the entry was written in (what a reclaim records for the tail).
    pub pass: u64,
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
    volume_tag: u64,
    generation: u64,
    /// Pass of the entries written now; the header's pass floor is kept equal to it.
    pass: u64,
    tail_pass: u64,
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
    /// Position, area offset and seq up to which the area is durable (the watermark).
    flushed_pos: u64,
    flushed_head: u64,
    flushed_seq: u64,
    /// Set by a failed flush or header write: the ring refuses to flush again (fail stop).
    failed: Option<String>,
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
    inner: Arc<Inner>,
    /// The background commit thread, when started; stopped and joined on drop.
    committer: Mutex<Option<Committer>>,
}

/// What the committer thread shares with the log.
struct Inner {
    path: PathBuf,
    /// The ring file, for fdatasync outside the ring lock.
    file: File,
    ring: Mutex<Ring>,
    /// Signalled when a reclaim frees space.
    space: Condvar,
    hook: std::sync::OnceLock<AppendHook>,
}

struct Committer {
    /// Dropping it tells the thread to stop.
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

/// Work the committer does before each flush of the ring (the core flushes the direct
/// writes' volume blocks, which ring entries point at). An error skips that flush.
pub type BeforeCommit = Box<dyn Fn() -> Result<(), String> + Send>;

impl Drop for StateLog {
    fn drop(&mut self) {
        let committer = self
            .committer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(c) = committer {
            drop(c.stop);
            let _ = c.thread.join();
        }
    }
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
            version: RingVersion::CURRENT,
            ring_bytes,
            volume_id,
            generation: 1,
            tail_offset: 0,
            tail_seq: first_seq,
            tail_pass: 0,
            pass_floor: 0,
            durable_seq: first_seq - 1,
            durable_offset: 0,
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
    /// acceptable). A file found short is extended back to its full size with zeroes. What
    /// the scan accepted is made durable and becomes the watermark before anything is
    /// appended, and the writer takes a pass above every pass the ring has used.
    pub fn open(path: &Path, scanned: &ScanResult) -> Result<StateLog, LogError> {
        let io = |e| LogError::io(path, e);
        let version = scanned.header.version;
        if !version.is_writable() {
            return Err(LogError::OldVersion {
                path: path.to_path_buf(),
                version: version as u32,
            });
        }
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
        // The scan read the page cache: entries a kill -9 left unflushed are recovered and
        // must not be lost to a power cut once later entries are appended after them.
        file.sync_data().map_err(io)?;
        let map = RingMap::map(&file).map_err(io)?;
        let area_len = ring_bytes - HEADER_AREA_BYTES;
        let h = &scanned.header;
        let mut ring = Ring {
            map,
            area_len,
            volume_id: h.volume_id,
            volume_tag: volume_tag(&h.volume_id),
            generation: h.generation,
            pass: scanned.head_pass.max(h.pass_floor) + 1,
            tail_pass: h.tail_pass,
            head: scanned.head_offset,
            head_pos: scanned.used_bytes,
            tail_pos: 0,
            tail_offset: h.tail_offset,
            tail_seq: h.tail_seq,
            next_seq: scanned.next_seq,
            written: Vec::new(),
            flushed_pos: scanned.used_bytes,
            flushed_head: scanned.head_offset,
            flushed_seq: scanned.next_seq - 1,
            failed: None,
        };
        ring.write_header().map_err(io)?;
        Ok(StateLog {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                file,
                ring: Mutex::new(ring),
                space: Condvar::new(),
                hook: std::sync::OnceLock::new(),
            }),
            committer: Mutex::new(None),
        })
    }

    /// Starts the background commit: every `interval`, when something was appended since
    /// the last flush, `before` runs and then the ring is flushed (as `flush`). Bounds what
    /// a power cut can take from a workload that never calls fsync. Once per log.
    pub fn start_committer(
        &self,
        interval: Duration,
        before: BeforeCommit,
    ) -> Result<(), LogError> {
        let mut slot = self.committer.lock().unwrap_or_else(|p| p.into_inner());
        assert!(slot.is_none(), "the committer is started once");
        let (stop, stopped) = mpsc::channel::<()>();
        let inner = self.inner.clone();
        let thread = std::thread::Builder::new()
            .name("ring-commit".into())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                if !inner.has_unflushed() {
                    continue;
                }
                if let Err(why) = before() {
                    log::error!("background commit: {why}; the ring is not flushed this time");
                    continue;
                }
                if let Err(e) = inner.flush() {
                    log::error!("background commit stopped: {e}");
                    return;
                }
            })
            .map_err(|e| LogError::io(&self.inner.path, e))?;
        *slot = Some(Committer { stop, thread });
        Ok(())
    }

    /// Installs the hook that sees every later entry (once; a second call is a programmer
    /// error).
    pub fn set_append_hook(&self, hook: AppendHook) {
        assert!(
            self.inner.hook.set(hook).is_ok(),
            "the state log's append hook is installed once"
        );
    }

    /// Hands the entries of the last append to the hook, still under the ring lock so that
    /// they arrive in seq order. `side` goes with the entry the caller appended (`seq`), not
    /// with the filler written before it.
    fn run_hook(&self, ring: &mut Ring, seq: Option<u64>, side: &[&[u8]]) {
        let written = std::mem::take(&mut ring.written);
        if let Some(hook) = self.inner.hook.get() {
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
        &self.inner.path
    }

    /// Bytes an entry with `payload_bytes` of payload needs, worst case (wrap filler included).
    pub fn worst_case_bytes(&self, payload_bytes: usize) -> u64 {
        let ring = self.inner.lock();
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
        let mut ring = self.inner.lock();
        let appended = ring
            .append(
                state.kind(),
                op_id.map(|s| s.0),
                state.byte(),
                parts,
                reserve_bytes,
            )
            .map_err(|e| LogError::io(&self.inner.path, e))?;
        self.run_hook(&mut ring, appended.map(|a| a.seq.0), side);
        Ok(appended)
    }

    /// Blocks until at least `bytes` are free or `timeout` passes.
    pub fn wait_for_space(&self, bytes: u64, timeout: Duration) {
        let ring = self.inner.lock();
        let _unused = self
            .inner
            .space
            .wait_timeout_while(ring, timeout, |r| r.free_bytes() < bytes)
            .unwrap_or_else(|p| p.into_inner());
    }

    /// Makes everything appended so far durable and records it as the watermark. Returns
    /// the seq now durable on local media.
    pub fn flush(&self) -> Result<u64, LogError> {
        self.inner.flush()
    }

    /// Releases every entry before `to` (an earlier append's position): the tail moves there.
    pub fn reclaim(&self, to: Appended) -> Result<(), LogError> {
        let mut ring = self.inner.lock();
        if to.position < ring.tail_pos {
            return Ok(());
        }
        ring.tail_pos = to.position;
        ring.tail_offset = to.offset;
        ring.tail_seq = to.seq.0;
        ring.tail_pass = to.pass;
        ring.write_header()
            .map_err(|e| LogError::io(&self.inner.path, e))?;
        drop(ring);
        self.inner.space.notify_all();
        Ok(())
    }

    pub fn stats(&self) -> RingStats {
        let ring = self.inner.lock();
        RingStats {
            area_bytes: ring.area_len,
            used_bytes: ring.head_pos - ring.tail_pos,
            next_seq: ring.next_seq,
            tail_seq: ring.tail_seq,
            flushed_seq: ring.flushed_seq,
        }
    }

    pub fn volume_id(&self) -> [u8; 16] {
        self.inner.lock().volume_id
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn has_unflushed(&self) -> bool {
        let ring = self.lock();
        ring.head_pos > ring.flushed_pos
    }

    /// The data pages first, without the ring lock (appends go on meanwhile; fdatasync of
    /// the file covers the pages stored through the mapping), then the watermark for what
    /// was appended before it started.
    fn flush(&self) -> Result<u64, LogError> {
        let (pos, head, seq) = {
            let ring = self.lock();
            if let Some(why) = &ring.failed {
                return Err(LogError::Failed {
                    path: self.path.clone(),
                    detail: why.clone(),
                });
            }
            if ring.head_pos == ring.flushed_pos {
                return Ok(ring.flushed_seq);
            }
            (ring.head_pos, ring.head, ring.next_seq - 1)
        };
        let synced = self.file.sync_data();
        let mut ring = self.lock();
        if let Err(e) = synced {
            ring.failed = Some(format!("flushing the ring failed: {e}"));
            return Err(LogError::io(&self.path, e));
        }
        if pos > ring.flushed_pos {
            ring.flushed_pos = pos;
            ring.flushed_head = head;
            ring.flushed_seq = seq;
            ring.write_header()
                .map_err(|e| LogError::io(&self.path, e))?;
        }
        Ok(ring.flushed_seq)
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
    ) -> std::io::Result<Option<Appended>> {
        let payload_bytes: usize = parts.iter().map(|p| p.len()).sum();
        let len = ENTRY_HEADER_BYTES + payload_bytes;
        let need = align_up(len as u64);
        let to_end = self.area_len - self.head;
        // Filler needed before this entry when it does not fit at the end of the area.
        let filler = if need <= to_end { 0 } else { to_end };
        if filler + need + reserve_bytes > self.free_bytes() {
            return Ok(None);
        }
        if filler > 0 {
            if filler >= ENTRY_HEADER_BYTES as u64 {
                let seq = self.next_seq;
                self.write_entry(EntryKind::Wrap, seq, seq, 0, &[]);
                self.next_seq += 1;
            }
            self.head_pos += filler;
            self.head = 0;
            self.next_pass()?;
        }
        let seq = self.next_seq;
        let appended = Appended {
            seq: Seq(seq),
            offset: self.head,
            position: self.head_pos,
            pass: self.pass,
        };
        self.write_entry(kind, seq, op_id.unwrap_or(seq), state, parts);
        self.next_seq += 1;
        self.head_pos += need;
        self.head += need;
        if self.head == self.area_len {
            self.head = 0;
            self.next_pass()?;
        }
        Ok(Some(appended))
    }

    /// A new lap starts at area offset 0: a new pass, recorded as the floor before any entry
    /// of it is written.
    fn next_pass(&mut self) -> std::io::Result<()> {
        self.pass += 1;
        self.write_header()
    }

    fn write_entry(&mut self, kind: EntryKind, seq: u64, op_id: u64, state: u8, parts: &[&[u8]]) {
        let payload_bytes: usize = parts.iter().map(|p| p.len()).sum();
        let header = EntryHeader {
            len: (ENTRY_HEADER_BYTES + payload_bytes) as u32,
            seq,
            op_id,
            pass: self.pass,
            volume_tag: self.volume_tag,
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

    /// Writes the header into the slot not holding the newest one, then msyncs it. A
    /// failure is sticky: what the header says on the media is no longer known.
    fn write_header(&mut self) -> std::io::Result<()> {
        if let Some(why) = &self.failed {
            return Err(std::io::Error::other(why.clone()));
        }
        self.generation += 1;
        let header = RingHeader {
            version: RingVersion::CURRENT,
            ring_bytes: self.area_len + HEADER_AREA_BYTES,
            volume_id: self.volume_id,
            generation: self.generation,
            tail_offset: self.tail_offset,
            tail_seq: self.tail_seq,
            tail_pass: self.tail_pass,
            pass_floor: self.pass,
            durable_seq: self.flushed_seq,
            durable_offset: self.flushed_head,
        };
        let slot = (self.generation % 2) * HEADER_SLOT_BYTES;
        let encoded = header.encode();
        let start = slot as usize;
        self.map.bytes_mut()[start..start + encoded.len()].copy_from_slice(&encoded);
        let synced = self.map.flush_range(start, HEADER_SLOT_BYTES as usize);
        if let Err(e) = &synced {
            self.failed = Some(format!("writing the ring header failed: {e}"));
        }
        synced
    }
}

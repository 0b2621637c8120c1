//! Power-cut mode: what a write-back disk cache would lose at a power failure.
//!
//! Every write is kept here, in memory, as pending 4 KiB pages (the newest content of each
//! page; reads see it) and reaches the backing file only when that file is fsync'ed. A cut
//! refuses every further request, then writes a seeded random subset of the pending pages in
//! random order, one page possibly torn (only a prefix of its 512-byte sectors written).
//!
//! Exports: [`PowerCut`] (the pending pages and the cut), [`PAGE_BYTES`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::Errno;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The unit the cache keeps and a cut keeps or loses: the kernel's page.
pub const PAGE_BYTES: u64 = 4096;
/// The unit a torn page is torn at: a disk writes whole sectors.
const SECTOR_BYTES: u64 = 512;
const SECTORS_PER_PAGE: u64 = PAGE_BYTES / SECTOR_BYTES;
const _: () = assert!(PAGE_BYTES.is_multiple_of(SECTOR_BYTES) && SECTORS_PER_PAGE >= 2);
/// Past this many pending bytes the file being written is written back early, as a disk
/// cache would (data may always become durable before an fsync, never the other way).
const PENDING_LIMIT_BYTES: u64 = 1 << 30;

/// The writes of one file since its last fsync.
struct PendingFile {
    /// A descriptor of the file open for reading and writing: pages reach the right file
    /// even after it was renamed (or unlinked) since.
    file: Arc<File>,
    /// Its name at the first pending write, relative to the backing root: orders the files
    /// at a cut (inode numbers differ from run to run, names do not) and names the torn one.
    name: PathBuf,
    /// The file's size as the mount shows it (the backing file may still be shorter).
    size: u64,
    /// Page number -> the page's newest content, PAGE_BYTES long.
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl PendingFile {
    /// Writes `len` bytes of page `no` (trimmed to the file's size) to the backing file.
    fn persist(&self, no: u64, len: u64) -> std::io::Result<()> {
        let at = no * PAGE_BYTES;
        let len = len.min(self.size.saturating_sub(at)) as usize;
        self.file.write_all_at(&self.pages[&no][..len], at)
    }
}

#[derive(Default)]
struct State {
    /// Keyed by the mount's inode number.
    files: HashMap<u64, PendingFile>,
    pending_bytes: u64,
}

pub struct PowerCut {
    seed: u64,
    /// Set at the cut, before anything is persisted: every request after it gets EIO.
    cut: AtomicBool,
    state: Mutex<State>,
}

impl PowerCut {
    pub fn new(seed: u64) -> PowerCut {
        PowerCut {
            seed,
            cut: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Err(EIO) once the power is cut.
    pub fn alive(&self) -> Result<(), Errno> {
        if self.cut.load(Ordering::Acquire) {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// The state, checked under its lock: a request that raced with the cut gets EIO.
    fn state(&self) -> Result<MutexGuard<'_, State>, Errno> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.alive()?;
        Ok(state)
    }

    /// The size the mount shows for `ino`, if it has pending writes.
    pub fn size(&self, ino: u64) -> Option<u64> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.files.get(&ino).map(|f| f.size)
    }

    pub fn write(
        &self,
        ino: u64,
        name: PathBuf,
        file: &Arc<File>,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        let mut state = self.state()?;
        let state = &mut *state;
        let pf = match state.files.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(PendingFile {
                size: file.metadata()?.len(),
                file: file.clone(),
                name,
                pages: BTreeMap::new(),
            }),
        };
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let no = at / PAGE_BYTES;
            let in_page = (at % PAGE_BYTES) as usize;
            let n = (end - at).min(PAGE_BYTES - in_page as u64) as usize;
            if !pf.pages.contains_key(&no) {
                let mut page = vec![0u8; PAGE_BYTES as usize].into_boxed_slice();
                // What the file holds there now; past its end, zeros.
                let have = pf.size.saturating_sub(no * PAGE_BYTES).min(PAGE_BYTES) as usize;
                read_full(&pf.file, &mut page[..have], no * PAGE_BYTES)?;
                pf.pages.insert(no, page);
                state.pending_bytes += PAGE_BYTES;
            }
            let page = pf.pages.get_mut(&no).expect("inserted above");
            let from = (at - offset) as usize;
            page[in_page..in_page + n].copy_from_slice(&data[from..from + n]);
            at += n as u64;
        }
        pf.size = pf.size.max(end);
        if state.pending_bytes > PENDING_LIMIT_BYTES {
            log::warn!(
                "more than {PENDING_LIMIT_BYTES} bytes pending: writing inode {ino} back early"
            );
            Self::flush_locked(state, ino)?;
        }
        Ok(())
    }

    /// `size` bytes at `offset` as the mount shows them: the backing file's bytes with the
    /// pending pages over them. None if `ino` has nothing pending (read the file directly).
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Option<Vec<u8>>, Errno> {
        let state = self.state()?;
        let Some(pf) = state.files.get(&ino) else {
            return Ok(None);
        };
        let end = (offset + u64::from(size)).min(pf.size);
        let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
        read_full(&pf.file, &mut buf, offset)?;
        for (&no, page) in pf
            .pages
            .range(offset / PAGE_BYTES..end.div_ceil(PAGE_BYTES))
        {
            let page_at = no * PAGE_BYTES;
            let from = page_at.max(offset);
            let to = (page_at + PAGE_BYTES).min(end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&page[(from - page_at) as usize..(to - page_at) as usize]);
        }
        Ok(Some(buf))
    }

    /// After the backing file was truncated (truncation is applied directly): pages past the
    /// new end are dropped, the part of the last page past it is zeroed.
    pub fn truncate(&self, ino: u64, size: u64) -> Result<(), Errno> {
        let mut state = self.state()?;
        let state = &mut *state;
        let Some(pf) = state.files.get_mut(&ino) else {
            return Ok(());
        };
        let dropped = pf.pages.split_off(&size.div_ceil(PAGE_BYTES));
        state.pending_bytes -= dropped.len() as u64 * PAGE_BYTES;
        if let Some(page) = pf.pages.get_mut(&(size / PAGE_BYTES)) {
            page[(size % PAGE_BYTES) as usize..].fill(0);
        }
        pf.size = size;
        Ok(())
    }

    /// fsync: every pending page of `ino` reaches the backing file.
    pub fn flush(&self, ino: u64) -> Result<(), Errno> {
        let mut state = self.state()?;
        Self::flush_locked(&mut state, ino)
    }

    fn flush_locked(state: &mut State, ino: u64) -> Result<(), Errno> {
        let Some(pf) = state.files.remove(&ino) else {
            return Ok(());
        };
        state.pending_bytes -= pf.pages.len() as u64 * PAGE_BYTES;
        for &no in pf.pages.keys() {
            pf.persist(no, PAGE_BYTES)?;
        }
        Ok(())
    }

    /// A clean unmount: like a clean shutdown, everything pending reaches the files.
    pub fn flush_all(&self) -> Result<(), Errno> {
        let mut state = self.state()?;
        let inos: Vec<u64> = state.files.keys().copied().collect();
        for ino in inos {
            Self::flush_locked(&mut state, ino)?;
        }
        Ok(())
    }

    /// The file is gone (its last name unlinked): its pending pages no longer matter.
    pub fn forget(&self, ino: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pf) = state.files.remove(&ino) {
            state.pending_bytes -= pf.pages.len() as u64 * PAGE_BYTES;
        }
    }

    /// The power cut: from now on every request fails; a random subset of the pending pages
    /// is written in random order, one page perhaps torn. Returns the one-line report.
    pub fn cut(&self) -> String {
        self.cut.store(true, Ordering::Release);
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        // A deterministic order of the draws, so that a seed replays the same cut.
        let mut files: Vec<&PendingFile> = state.files.values().collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let all: Vec<(usize, u64)> = files
            .iter()
            .enumerate()
            .flat_map(|(i, f)| f.pages.keys().map(move |&no| (i, no)))
            .collect();
        // (file, page, bytes to write)
        let mut writes: Vec<(usize, u64, u64)> = all
            .iter()
            .filter(|_| rng.gen_bool(0.5))
            .map(|&(i, no)| (i, no, PAGE_BYTES))
            .collect();
        let mut torn = "none".to_string();
        if !all.is_empty() && rng.gen_bool(0.5) {
            let (i, no) = all[rng.gen_range(0..all.len())];
            let sectors = rng.gen_range(1..SECTORS_PER_PAGE);
            writes.retain(|&(wi, wno, _)| (wi, wno) != (i, no));
            writes.push((i, no, sectors * SECTOR_BYTES));
            torn = format!(
                "{} page {no} ({sectors} of {SECTORS_PER_PAGE} sectors written)",
                files[i].name.display()
            );
        }
        let kept = writes.iter().filter(|w| w.2 == PAGE_BYTES).count();
        writes.shuffle(&mut rng);
        let mut failed = 0;
        for &(i, no, len) in &writes {
            if let Err(e) = files[i].persist(no, len) {
                failed += 1;
                eprintln!(
                    "powercut: writing {} page {no}: {e}",
                    files[i].name.display()
                );
            }
        }
        let failed = if failed > 0 {
            format!(", {failed} write(s) failed")
        } else {
            String::new()
        };
        format!(
            "powercut seed {}: {} page(s) pending in {} file(s), {kept} kept, torn: {torn}{failed}",
            self.seed,
            all.len(),
            files.len()
        )
    }
}

/// Fills `buf` from `offset`, leaving zeros past the end of the file.
pub fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

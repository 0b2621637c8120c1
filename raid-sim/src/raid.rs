//! The RAID-5 volume handle: what callers hold (`RaidVolume`), its `BlockVolume`
//! implementation over the read and write paths, its background worker, and the clean
//! shutdown on drop. Assembly (`assemble`) builds one.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::array::{lock_read, lock_write, Inner, Stats};
use crate::format::MemberState;
use crate::layout::Geometry;
use crate::scrub::ScrubReport;
use crate::volume::{BlockVolume, VolumeError};
use crate::worker::worker_loop;

pub struct RaidVolume {
    pub(crate) inner: Arc<Inner>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl RaidVolume {
    pub(crate) fn from_inner(inner: Arc<Inner>) -> RaidVolume {
        let vol = RaidVolume {
            inner,
            worker: Mutex::new(None),
        };
        if vol.inner.opts.background {
            let inner = Arc::clone(&vol.inner);
            let h = std::thread::Builder::new()
                .name("raid-worker".into())
                .spawn(move || worker_loop(inner))
                .ok();
            *vol.worker.lock().unwrap_or_else(|e| e.into_inner()) = h;
        }
        vol
    }

    pub fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    pub fn is_degraded(&self) -> bool {
        let st = lock_read(&self.inner.state);
        st.states.iter().any(|s| *s != MemberState::Active)
    }

    pub fn member_states(&self) -> Vec<MemberState> {
        lock_read(&self.inner.state).states.clone()
    }

    pub fn rebuild_progress(&self) -> Option<(u32, u64)> {
        lock_read(&self.inner.state).rebuild
    }

    pub fn events(&self) -> u64 {
        lock_read(&self.inner.state).events
    }

    /// Stops the worker and drops every handle without the clean-shutdown superblock
    /// update, as a crashed process would leave the files. For crash tests.
    pub fn abandon(self) {
        self.stop_worker();
        self.inner.poisoned.store(true, Ordering::SeqCst);
        // Drop sees `poisoned` and skips the clean shutdown.
    }

    fn stop_worker(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }

    /// Marks a member failed (as `raid-sim fail` does).
    pub fn fail_member(&self, member: u32, reason: &str) -> Result<(), VolumeError> {
        if member >= self.inner.geometry.disks {
            return Err(VolumeError::Invalid {
                path: self.inner.dir.clone(),
                detail: format!(
                    "no member {member} in a {}-disk array",
                    self.inner.geometry.disks
                ),
            });
        }
        self.inner.fail_member_on_request(member, reason)
    }
}

impl Drop for RaidVolume {
    fn drop(&mut self) {
        self.stop_worker();
        if self.inner.poisoned.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.inner.flush_all() {
            log::warn!("closing {}: {e}", self.inner.dir.display());
            return;
        }
        let mut st = lock_write(&self.inner.state);
        if let Err(e) = self.inner.write_superblocks(&mut st, false) {
            log::warn!("closing {}: {e}", self.inner.dir.display());
        }
    }
}

impl RaidVolume {
    /// Starts a rebuild of failed member `k` (see `Inner::start_rebuild`).
    pub fn start_rebuild(&self, k: u32, with: Option<&Path>) -> Result<(), VolumeError> {
        self.inner.start_rebuild(k, with)
    }

    /// Runs the current rebuild to its end in this thread.
    pub fn run_rebuild(&self, progress: impl FnMut(u64, u64)) -> Result<(), VolumeError> {
        self.inner.run_rebuild(progress)
    }

    pub fn scrub(
        &self,
        repair: bool,
        progress: impl FnMut(u64, u64),
    ) -> Result<ScrubReport, VolumeError> {
        self.inner.scrub(repair, progress)
    }

    /// Member file paths by index (None for a missing member).
    pub fn member_paths(&self) -> Vec<Option<PathBuf>> {
        self.inner
            .view()
            .members
            .iter()
            .map(|m| m.as_ref().map(|m| m.path.clone()))
            .collect()
    }
}

impl BlockVolume for RaidVolume {
    fn fence(&self) {
        // Poisoned first, so that no write starts after this point and Drop skips the
        // clean-shutdown superblock update; then no rebuild or scrub, then the lock.
        self.inner.poisoned.store(true, Ordering::SeqCst);
        self.stop_worker();
        if let Err(e) = self.inner.lock_file.unlock() {
            log::warn!("{}: releasing raid.lock: {e}", self.inner.dir.display());
        }
        log::warn!(
            "{}: fenced: no more writes from this process; raid.lock released",
            self.inner.dir.display()
        );
    }

    fn capacity_bytes(&self) -> u64 {
        self.inner.geometry.capacity_bytes()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        match self.inner.enclosing_blocks(offset, buf.len())? {
            None => self.inner.read(offset, buf),
            Some((start, len)) => {
                let mut whole = vec![0u8; len];
                self.inner.read(start, &mut whole)?;
                let at = (offset - start) as usize;
                buf.copy_from_slice(&whole[at..at + buf.len()]);
                Ok(())
            }
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        match self.inner.enclosing_blocks(offset, data.len())? {
            None => self.inner.write(offset, data),
            Some((start, len)) => {
                // Unaligned writes read and rewrite their edge blocks; they are serialised
                // among themselves so that two of them never lose each other's bytes.
                let _one = self
                    .inner
                    .unaligned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let mut whole = vec![0u8; len];
                self.inner.read(start, &mut whole)?;
                let at = (offset - start) as usize;
                whole[at..at + data.len()].copy_from_slice(data);
                self.inner.write(start, &whole)
            }
        }
    }

    fn write_fresh_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        match self.inner.enclosing_blocks(offset, data.len())? {
            None => self.inner.write_as(offset, data, true),
            Some(_) => self.write_at(offset, data),
        }
    }

    fn flush(&self) -> Result<(), VolumeError> {
        self.inner.check_poisoned()?;
        self.inner.flush_all()
    }

    fn describe(&self) -> String {
        let g = self.inner.geometry;
        let st = lock_read(&self.inner.state);
        let states: Vec<String> = st
            .states
            .iter()
            .enumerate()
            .map(|(i, s)| match (s, &st.reasons[i]) {
                (MemberState::Failed, Some(why)) => format!("{i}:failed ({why})"),
                _ => format!("{i}:{}", s.name()),
            })
            .collect();
        let degraded = st.states.iter().any(|s| *s != MemberState::Active);
        format!(
            "raid5 {} ({} disks, chunk {} KiB, {} bytes, {}{}; members {}; spares {})",
            self.inner.dir.display(),
            g.disks,
            g.chunk_bytes / 1024,
            g.capacity_bytes(),
            if degraded { "degraded" } else { "clean" },
            match st.rebuild {
                Some((m, s)) => format!(", rebuilding member {m} at stripe {s}/{}", g.stripes),
                None => String::new(),
            },
            states.join(" "),
            st.spares.len()
        )
    }
}

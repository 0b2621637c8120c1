//! `Fs`: the running file system, a thin facade over its parts. Opening (recovery, then the
//! replica), fsync, fencing and shutdown are here; the changing ops are in `changes` (run
//! through `pipeline`), the read path in `read`, checkpoints in `checkpoint`, the status
//! view in `status`. The parts share one `Shared`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use raid_sim::BlockVolume;

use super::checkpoint::Checkpointer;
use super::error::{FsError, Poison};
use super::recovery::{recover_on, RecoveryReport, ReplicaSource};
use super::replica::{self, Replica, ReplicaError, ReplicaLink};
use super::shared::{lock_ignoring_poison, Core, OpCounters, Shared};
use super::superblock::Superblock;
use super::types::*;
use crate::progress::Progress;
use crate::statelog::StateLog;

/// Tunables of a mounted file system.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// A checkpoint runs at least this often while something changed.
    pub checkpoint_interval_ms: u64,
    /// …and as soon as the ring is this full (percent).
    pub checkpoint_fill_percent: u64,
    /// msync the ring after every op, not only on fsync.
    pub sync_every_op: bool,
    /// Large block-aligned writes go straight to fresh volume blocks (see `direct`).
    pub direct_writes: bool,
    /// The ring is flushed in the background at least this often (0: only on fsync), which
    /// bounds what a power cut takes from a workload that never calls fsync.
    pub commit_ms: u64,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            checkpoint_interval_ms: 5000,
            checkpoint_fill_percent: 50,
            sync_every_op: false,
            direct_writes: true,
            commit_ms: 1000,
        }
    }
}

pub struct Fs {
    pub(super) sh: Shared,
    pub(super) ckpt: Checkpointer,
    pub(super) config: FsConfig,
    voldir: PathBuf,
    pub recovery: RecoveryReport,
    /// Run once when this node learns it was fenced (the daemon releases its volume lock).
    on_fenced: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Set by the first fence: the volume and the hook are dealt with once.
    fence_done: AtomicBool,
    /// Direct writes: how many landed on the volume, and how many of those a volume flush
    /// made durable.
    pub(super) direct_landed: Arc<AtomicU64>,
    direct_flushed: Arc<AtomicU64>,
}

impl Fs {
    /// Opens the volume in `voldir`: loads the last checkpoint, replays the ring after it
    /// (completed or replaced by the replica's copy when `mirror` is given; `takeover` uses
    /// the replica's copy only), and connects the replica.
    pub fn open_volume(
        voldir: &Path,
        config: FsConfig,
        progress: &dyn Fn(&str, u64) -> Progress,
        mirror: Option<impl ReplicaLink>,
        takeover: bool,
    ) -> Result<Fs, FsError> {
        let vol: Arc<dyn BlockVolume> = Arc::from(raid_sim::open_volume(voldir)?);
        let link = mirror.as_ref().map(|l| l as &dyn ReplicaLink);
        Fs::open_on(vol, voldir, config, progress, link, takeover)
    }

    /// `open_volume` on a volume already open (tests hand in a fault-injecting one).
    pub fn open_on(
        vol: Arc<dyn BlockVolume>,
        voldir: &Path,
        config: FsConfig,
        progress: &dyn Fn(&str, u64) -> Progress,
        link: Option<&dyn ReplicaLink>,
        takeover: bool,
    ) -> Result<Fs, FsError> {
        let source = link.map(|link| ReplicaSource {
            link,
            force: takeover,
        });
        let r = recover_on(vol, voldir, progress, source)?;
        let rebuilt = r.scan.is_none();
        let scan = match &r.scan {
            Some(scan) => scan.clone(),
            None => {
                // The entries came (partly) from the replica: start a fresh local ring after
                // them, keeping the old file aside.
                if r.ring_path.exists() {
                    let aside = r
                        .ring_path
                        .with_extension(format!("replaced-{}", Ts::now().sec));
                    std::fs::rename(&r.ring_path, &aside)
                        .map_err(|e| crate::statelog::LogError::io(&r.ring_path, e))?;
                    log::warn!("kept the previous local state log as {}", aside.display());
                }
                StateLog::create_from(
                    &r.ring_path,
                    r.sb.ring_bytes,
                    r.sb.volume_id,
                    r.next_seq,
                    |_| {},
                )?;
                StateLog::scan_file(&r.ring_path)?
            }
        };
        let log = StateLog::open(&r.ring_path, &scan)?;
        let rep = &r.report;
        log::info!(
            "recovered {}: checkpoint covers seq {}, {} entries scanned, {} ops replayed, {} discarded \
             (never answered), {} skipped, {} orphans purged, in {} ms",
            voldir.display(),
            rep.covers_seq,
            rep.entries_scanned,
            rep.replayed,
            rep.discarded,
            rep.skipped,
            rep.orphans_purged,
            rep.elapsed_ms
        );
        if rep.direct_checked > 0 {
            log::info!(
                "recovery read back {} direct writes from the volume: {} intact, {} lost (read as zeroes)",
                rep.direct_checked,
                rep.direct_checked - rep.direct_lost,
                rep.direct_lost
            );
        }
        let snapshot_bytes = r.sb.blobs.first().map_or(0, |b| b.payload_bytes);
        let delta_bytes = r.meta_bytes - snapshot_bytes;
        let fs = Fs {
            sh: Shared {
                core: Mutex::new(Core {
                    state: r.state,
                    alloc: r.alloc,
                    sb: r.sb,
                    snapshot_bytes,
                    delta_bytes,
                    poison: None,
                }),
                log,
                vol: r.vol,
                reuse: RwLock::new(()),
                replica: OnceLock::new(),
                counters: OpCounters::default(),
            },
            ckpt: Checkpointer::new(),
            config,
            voldir: voldir.to_path_buf(),
            recovery: r.report,
            on_fenced: Mutex::new(None),
            fence_done: AtomicBool::new(false),
            direct_landed: Arc::default(),
            direct_flushed: Arc::default(),
        };
        if fs.config.commit_ms > 0 {
            fs.start_background_commit()?;
        }
        if rebuilt {
            // Put what was recovered from the replica on the volume before serving.
            fs.checkpoint()?;
        }
        if let Some(link) = link {
            let (volume_id, epoch) = {
                let core = fs.sh.lock();
                (core.sb.volume_id, Epoch(core.sb.epoch))
            };
            let replica = link
                .connect(volume_id, epoch)
                .map_err(|detail| FsError::Mirror {
                    routes: link.describe(),
                    detail,
                })?;
            fs.attach_replica(replica)?;
        }
        Ok(fs)
    }

    /// Resends the local entries the replica lacks, and from then on forwards every
    /// appended entry to it. Runs before the file system serves anything, so nothing
    /// appends meanwhile; at most one replica is ever attached.
    pub fn attach_replica(&self, replica: Arc<dyn Replica>) -> Result<(), FsError> {
        // What the ring holds now (a checkpoint may have run since recovery's scan).
        let scan = StateLog::scan_file(self.sh.log.path())?;
        let covers = self.sh.lock().sb.covers_seq;
        // The replica may drop what the volume's checkpoint holds, and accepts entries after it.
        replica.checkpoint(Seq(covers));
        let mut resent = 0;
        for e in scan.entries.iter().filter(|e| e.header.seq > covers) {
            replica.submit(Seq(e.header.seq), replica::self_contained(&self.sh.vol, e)?);
            resent += 1;
        }
        if resent > 0 {
            log::info!(
                "mirror: resynchronising the agent with {resent} local entries after seq {covers}"
            );
        }
        let forward_to = replica.clone();
        self.sh
            .log
            .set_append_hook(Box::new(move |entry| replica::forward(&*forward_to, entry)));
        assert!(
            self.sh.replica.set(replica).is_ok(),
            "one replica per mounted file system"
        );
        Ok(())
    }

    /// Flushes the ring every `commit_ms` from the state log's own thread (no core lock
    /// held), direct writes' volume blocks first as `fsync` does.
    fn start_background_commit(&self) -> Result<(), FsError> {
        let (vol, landed, flushed) = (
            self.sh.vol.clone(),
            self.direct_landed.clone(),
            self.direct_flushed.clone(),
        );
        let before = Box::new(move || {
            let now = landed.load(Ordering::Acquire);
            if now > flushed.load(Ordering::Acquire) {
                vol.flush()
                    .map_err(|e| format!("flushing the volume: {e}"))?;
                flushed.fetch_max(now, Ordering::AcqRel);
            }
            Ok(())
        });
        let interval = std::time::Duration::from_millis(self.config.commit_ms);
        self.sh.log.start_committer(interval, before)?;
        Ok(())
    }

    pub fn voldir(&self) -> &Path {
        &self.voldir
    }

    pub fn statelog(&self) -> &StateLog {
        &self.sh.log
    }

    /// Makes every logged entry durable: on the replica when a synchronous one protects the
    /// node, else on local media (msync of the ring). A fenced node's fsync fails (EROFS):
    /// what it holds is no longer the volume's.
    pub fn fsync(&self) -> FsResult<()> {
        if self.sh.lock().is_fenced() {
            return Err(Errno::EROFS);
        }
        if let Some(replica) = self.sh.replica.get() {
            if let Some(why) = replica.fenced() {
                return Err(self.replica_failed(ReplicaError::Fenced(why)));
            }
            if replica.protected() {
                let seq = Seq(self.sh.log.stats().next_seq - 1);
                match replica.wait(seq) {
                    Ok(()) => return Ok(()),
                    Err(e @ ReplicaError::Fenced(_)) => return Err(self.replica_failed(e)),
                    // Not protected after all: the local flush below makes it durable here.
                    Err(ReplicaError::Failed(_)) => {}
                }
            }
        }
        // Direct writes' data before the ring entries that point at it.
        let landed = self.direct_landed.load(Ordering::Acquire);
        if landed > self.direct_flushed.load(Ordering::Acquire) {
            self.sh.vol.flush().map_err(|e| {
                log::error!("fsync: flushing the volume: {e}");
                Errno::EIO
            })?;
            self.direct_flushed.fetch_max(landed, Ordering::AcqRel);
        }
        self.sh.log.flush().map(|_| ()).map_err(|e| {
            log::error!("fsync: {e}");
            Errno::EIO
        })
    }

    /// What to do once this node learns it was fenced (called at most once).
    pub fn set_on_fenced(&self, hook: Box<dyn FnOnce() + Send>) {
        *lock_ignoring_poison(&self.on_fenced) = Some(hook);
    }

    /// The volume was taken over by a peer: this node never writes again. Changes are refused
    /// (EROFS), the block volume refuses writes and lets go of its locks, and the daemon's
    /// hook releases the volume lock, so that the peer can mount while this mount stays up
    /// read-only. Unacknowledged work is the peer's to recover from the replica.
    pub(super) fn fence(&self, why: &str) {
        self.sh.lock().set_poison(Poison::fenced(why));
        if self.fence_done.swap(true, Ordering::AcqRel) {
            return;
        }
        log::error!("FENCED: {why}; this node stops writing (remount after giveback)");
        // Waits for a checkpoint in flight, so that none of its writes lands after the fence.
        self.ckpt.wait_idle();
        self.sh.vol.fence();
        let hook = lock_ignoring_poison(&self.on_fenced).take();
        if let Some(hook) = hook {
            hook();
        }
    }

    /// Final checkpoint and stop (clean unmount).
    pub fn shutdown(&self) -> Result<(), FsError> {
        self.stop_checkpointer();
        self.checkpoint()?;
        self.sh.log.flush()?;
        Ok(())
    }

    pub fn ring_stats(&self) -> crate::statelog::RingStats {
        self.sh.log.stats()
    }

    pub fn is_poisoned(&self) -> bool {
        self.sh.lock().poison.is_some()
    }

    /// Why the file system refuses changes, if it does.
    pub fn poison(&self) -> Option<Poison> {
        self.sh.lock().poison.clone()
    }

    pub fn superblock(&self) -> Superblock {
        self.sh.lock().sb.clone()
    }
}

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
    /// Where an fsync puts what it covers (`-o fsync=`).
    pub fsync: FsyncPolicy,
    /// The ring is flushed in the background at least this often (0: only on fsync), which
    /// bounds what a power cut takes from a workload that never calls fsync.
    pub commit_ms: u64,
}

/// Which stable storage an fsync waits for (`-o fsync=local|mirror|both`; see
/// docs/operations.md, "Durability"). Without a mirror every policy means the local disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// The ring msync'ed (and the volume flushed for direct writes) on this host.
    Local,
    /// The agent reports the entries on its disk (durable, not only received); the local
    /// flush only when the agent cannot answer in time.
    Mirror,
    /// Both, run together: the default, the one that survives the loss of either disk and a
    /// power cut of both hosts.
    Both,
}

impl FsyncPolicy {
    pub fn parse(s: &str) -> Option<FsyncPolicy> {
        match s {
            "local" => Some(FsyncPolicy::Local),
            "mirror" => Some(FsyncPolicy::Mirror),
            "both" => Some(FsyncPolicy::Both),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FsyncPolicy::Local => "local",
            FsyncPolicy::Mirror => "mirror",
            FsyncPolicy::Both => "both",
        }
    }
}

/// What an emergency flush (`smlogfs flush`, SIGPWR, SIGTERM) did, for its report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FlushReport {
    /// Every entry through this seq is msync'ed in the local ring.
    pub flushed_seq: u64,
    /// The agent reported every entry through this seq on its disk (None: no mirror, or it
    /// did not answer within `EMERGENCY_MIRROR_WAIT`; `mirror_error` says why).
    pub mirror_durable_seq: Option<u64>,
    pub mirror_error: Option<String>,
    pub elapsed_ms: f64,
}

/// How long an emergency flush waits for the agent's disk: a UPS gives minutes, but a
/// stop must not hang on an unreachable agent.
const EMERGENCY_MIRROR_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            checkpoint_interval_ms: 5000,
            checkpoint_fill_percent: 50,
            sync_every_op: false,
            direct_writes: true,
            fsync: FsyncPolicy::Both,
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

    /// Makes every entry logged so far durable, where the fsync policy says: the local
    /// ring (msync, after the volume flush that direct writes' data needs), the agent's
    /// disk (it reports the seqs durable), or both at once. A fenced node's fsync fails
    /// (EROFS): what it holds is no longer the volume's.
    pub fn fsync(&self) -> FsResult<()> {
        if self.sh.lock().is_fenced() {
            return Err(Errno::EROFS);
        }
        let seq = Seq(self.sh.log.stats().next_seq - 1);
        let replica = self.sh.replica.get();
        if let Some(replica) = replica {
            if let Some(why) = replica.fenced() {
                return Err(self.replica_failed(ReplicaError::Fenced(why)));
            }
        }
        let remote = replica.filter(|_| self.config.fsync != FsyncPolicy::Local);
        let mut local_done = false;
        if let Some(replica) = remote {
            // The agent syncs while we flush here.
            replica.request_durable(seq);
        }
        if remote.is_none() || self.config.fsync == FsyncPolicy::Both {
            self.flush_local("fsync")?;
            local_done = true;
        }
        if let Some(replica) = remote {
            match replica.wait_durable(seq) {
                Ok(()) => {}
                Err(e @ ReplicaError::Fenced(_)) => return Err(self.replica_failed(e)),
                Err(ReplicaError::Failed(why)) if local_done => {
                    log::warn!(
                        "fsync through seq {}: on the local disk only, the agent did not report it on its disk: {why}",
                        seq.0
                    );
                }
                Err(ReplicaError::Failed(why)) => {
                    // Still stable storage, here: fsync keeps its promise with the local disk.
                    log::warn!(
                        "fsync through seq {}: the agent did not report it on its disk ({why}); flushing locally instead",
                        seq.0
                    );
                    self.flush_local("fsync")?;
                }
            }
        }
        Ok(())
    }

    /// The local half of an fsync: the volume (direct writes' data, before the ring entries
    /// that point at it), then the ring. Returns the seq now durable in the ring.
    pub(super) fn flush_local(&self, what: &str) -> FsResult<u64> {
        let landed = self.direct_landed.load(Ordering::Acquire);
        if landed > self.direct_flushed.load(Ordering::Acquire) {
            self.sh.vol.flush().map_err(|e| {
                log::error!("{what}: flushing the volume: {e}");
                Errno::EIO
            })?;
            self.direct_flushed.fetch_max(landed, Ordering::AcqRel);
        }
        self.sh.log.flush().map_err(|e| {
            log::error!("{what}: {e}");
            Errno::EIO
        })
    }

    /// The emergency flush (power failing, or the service stopping): the ring, the volume
    /// and the agent at once, whatever the fsync policy, and how long it took. The agent
    /// is waited for at most `EMERGENCY_MIRROR_WAIT`.
    pub fn flush_everything(&self) -> FsResult<FlushReport> {
        let started = std::time::Instant::now();
        let seq = Seq(self.sh.log.stats().next_seq - 1);
        let replica = self.sh.replica.get();
        if let Some(replica) = replica {
            replica.request_durable(seq);
        }
        // The volume always: a checkpoint's writes in the page cache count too.
        self.sh.vol.flush().map_err(|e| {
            log::error!("emergency flush: flushing the volume: {e}");
            Errno::EIO
        })?;
        self.direct_flushed
            .fetch_max(self.direct_landed.load(Ordering::Acquire), Ordering::AcqRel);
        let flushed_seq = self.flush_local("emergency flush")?;
        let (mut mirror_durable_seq, mut mirror_error) = (None, None);
        if let Some(replica) = replica {
            let deadline = started + EMERGENCY_MIRROR_WAIT;
            loop {
                let durable = replica.durable_through();
                if durable.is_some_and(|d| d >= seq) {
                    break;
                }
                if let Some(why) = replica.fenced() {
                    mirror_error = Some(format!("fenced: {why}"));
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    mirror_error = Some(format!(
                        "the agent reported seq {} on its disk within {} ms, wanted {}",
                        durable.map_or("none".into(), |d| d.0.to_string()),
                        EMERGENCY_MIRROR_WAIT.as_millis(),
                        seq.0
                    ));
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            mirror_durable_seq = replica.durable_through().map(|d| d.0);
        }
        Ok(FlushReport {
            flushed_seq,
            mirror_durable_seq,
            mirror_error,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
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

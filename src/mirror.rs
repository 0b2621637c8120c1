//! The daemon's side of mirroring: the fs core's `Replica` and `ReplicaLink`, implemented
//! over the mirror agent's wire protocol (`smlog_wire`). Every ring entry goes to the agent;
//! in `sync` mode an op is answered only once the agent acknowledged its entries. How long
//! to wait for an unreachable agent is the user's policy (`wait` or `degrade`), applied in
//! `Mirror::wait`; what a failure means for the caller is the core's (`ReplicaError`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smlog_wire::{MirrorClient, MirrorConfig, MirrorError};

use crate::core::{Epoch, Replica, ReplicaError, ReplicaInfo, ReplicaLink, Seq};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorMode {
    /// Answer only after the agent acknowledged.
    Sync,
    /// Send in the background; answer at once.
    Async,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnLoss {
    /// Writes block until the agent is back. An op still unacknowledged after
    /// `loss_timeout_ms` is answered success, unprotected (it is logged and applied: failing
    /// it would lie), and from then on new changes wait up to `loss_timeout_ms` for the
    /// agent before they are logged, then fail with EIO (nothing logged, no effect).
    Wait,
    /// Writes go on unprotected; the agent is resynchronised when it returns.
    Degrade,
}

/// Everything `--mirror …` options say.
#[derive(Clone, Debug)]
pub struct MirrorOptions {
    pub routes: Vec<SocketAddr>,
    pub mode: MirrorMode,
    pub on_loss: OnLoss,
    pub loss_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub timeout_ms: u64,
    pub secret: Option<Vec<u8>>,
    pub node: String,
}

impl MirrorOptions {
    /// Parses `HOST:PORT[,HOST:PORT…]`; every name must resolve.
    pub fn parse_routes(list: &str) -> Result<Vec<SocketAddr>, String> {
        let mut out = Vec::new();
        for r in list.split(',').filter(|r| !r.is_empty()) {
            let addr = r
                .to_socket_addrs()
                .map_err(|e| format!("--mirror {r}: {e} (expected HOST:PORT)"))?
                .next()
                .ok_or_else(|| format!("--mirror {r}: the name resolves to no address"))?;
            out.push(addr);
        }
        if out.is_empty() {
            return Err("--mirror: no HOST:PORT given".into());
        }
        Ok(out)
    }

    pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
        let s =
            std::fs::read(path).map_err(|e| format!("--secret-file {}: {e}", path.display()))?;
        let trimmed: Vec<u8> = s.trim_ascii().to_vec();
        if trimmed.is_empty() {
            return Err(format!("--secret-file {} is empty", path.display()));
        }
        Ok(trimmed)
    }

    pub fn client_config(&self, volume_id: [u8; 16], epoch: u64) -> MirrorConfig {
        let mut c = MirrorConfig::new(self.routes.clone(), volume_id, &self.node, epoch);
        c.secret = self.secret.clone();
        c.heartbeat_ms = self.heartbeat_ms;
        c.timeout_ms = self.timeout_ms;
        c
    }

    pub fn routes_text(&self) -> String {
        self.routes
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A live mirror link of one mounted volume.
pub struct Mirror {
    pub client: MirrorClient,
    pub options: MirrorOptions,
    /// Set once the link failed for good (fenced, auth, gap): the node stops writing.
    fatal: AtomicBool,
    warned_unprotected: AtomicBool,
    /// `wait` policy: an op outlived `loss_timeout_ms` without an acknowledgement; new
    /// changes are refused before they are logged until the agent protects the node again.
    refusing: AtomicBool,
    /// What the link was opened for, to read back from the agent after a fence.
    volume_id: [u8; 16],
    epoch: u64,
}

/// How often `admit` looks whether the agent is back.
const ADMIT_POLL: Duration = Duration::from_millis(20);

impl Mirror {
    pub fn connect(
        options: MirrorOptions,
        volume_id: [u8; 16],
        epoch: u64,
    ) -> Result<Mirror, MirrorError> {
        let client = MirrorClient::connect(options.client_config(volume_id, epoch))?;
        log::info!(
            "mirror: connected to the agent via {:?} (routes {}), mode {:?}, on loss {:?}",
            client.status().route_in_use,
            options.routes_text(),
            options.mode,
            options.on_loss
        );
        Ok(Mirror {
            client,
            options,
            fatal: AtomicBool::new(false),
            warned_unprotected: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            volume_id,
            epoch,
        })
    }

    /// Queues one entry (called under the ring lock, in seq order).
    fn submit_entry(&self, seq: u64, entry: Vec<u8>) {
        if let Err(e) = self.client.submit(seq, entry) {
            if !self.fatal.swap(true, Ordering::AcqRel) {
                log::error!("mirror: cannot queue seq {seq}: {e}");
            }
        }
    }

    /// Waits as the policy says until `seq` is acknowledged by the agent.
    fn wait_acked(&self, seq: u64) -> Result<(), ReplicaError> {
        if self.options.mode == MirrorMode::Async {
            return Ok(());
        }
        if let Some(why) = self.fenced_why() {
            return Err(ReplicaError::Fenced(why));
        }
        if self.fatal.load(Ordering::Acquire) {
            // An entry could not be queued: the agent's copy has a hole from here on, and no
            // later entry can be acknowledged. Say so at once instead of timing out every op.
            return match self.options.on_loss {
                OnLoss::Degrade => Ok(()),
                OnLoss::Wait => Err(self.start_refusing(
                    "the mirror link failed for good (see the error above); remount to resynchronise the agent"
                        .into(),
                )),
            };
        }
        if self.options.on_loss == OnLoss::Degrade
            && self.warned_unprotected.load(Ordering::Acquire)
            && !self.client.status().protected
        {
            // Already running unprotected: the entry is queued and will be resent when the
            // agent is back. Waiting out the detection timeout again would turn every op into
            // a one-op-per-timeout crawl.
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_millis(self.options.loss_timeout_ms);
        loop {
            let step = match self.options.on_loss {
                OnLoss::Wait => deadline.saturating_duration_since(Instant::now()),
                OnLoss::Degrade => Duration::from_millis(self.options.timeout_ms),
            };
            match self
                .client
                .wait_acked(seq, step.max(Duration::from_millis(1)))
            {
                Ok(()) => {
                    if self.warned_unprotected.swap(false, Ordering::AcqRel) {
                        log::warn!("mirror: the agent is back and acknowledged through seq {seq}: protected again");
                    }
                    return Ok(());
                }
                Err(MirrorError::Fenced { ours, current }) => {
                    return Err(ReplicaError::Fenced(format!(
                        "the volume was taken over (our epoch {ours}, current {current})"
                    )))
                }
                Err(e) if e.is_fatal() => return Err(self.start_refusing(e.to_string())),
                Err(e) => match self.options.on_loss {
                    OnLoss::Wait => {
                        if Instant::now() >= deadline {
                            return Err(self.start_refusing(format!(
                                "no acknowledgement from the mirror agent within {} ms: {e}",
                                self.options.loss_timeout_ms
                            )));
                        }
                    }
                    OnLoss::Degrade => {
                        if !self.warned_unprotected.swap(true, Ordering::AcqRel) {
                            log::warn!(
                                "mirror: UNPROTECTED — the agent ({}) is unreachable; writes go on and will be resent when it returns: {e}",
                                self.options.routes_text()
                            );
                        }
                        return Ok(());
                    }
                },
            }
        }
    }

    /// An op gave up waiting for its acknowledgement (`why`): under `wait`, later changes
    /// are refused before they are logged until the agent is back (`admit`).
    fn start_refusing(&self, why: String) -> ReplicaError {
        if self.options.on_loss == OnLoss::Wait && !self.refusing.swap(true, Ordering::AcqRel) {
            log::error!(
                "mirror: {why}; new changes wait up to {} ms for the agent ({}) before they are \
                 logged, then fail with EIO",
                self.options.loss_timeout_ms,
                self.options.routes_text()
            );
        }
        ReplicaError::Failed(why)
    }

    /// `Replica::admit`: while refusing (`wait` policy, an op outlived the timeout), a new
    /// change waits up to `loss_timeout_ms` for the agent to protect the node again.
    fn admit_op(&self) -> Result<(), ReplicaError> {
        if self.options.mode == MirrorMode::Async || self.options.on_loss == OnLoss::Degrade {
            return Ok(());
        }
        if let Some(why) = self.fenced_why() {
            return Err(ReplicaError::Fenced(why));
        }
        if !self.refusing.load(Ordering::Acquire) {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_millis(self.options.loss_timeout_ms);
        loop {
            if !self.fatal.load(Ordering::Acquire) && self.client.status().protected {
                if self.refusing.swap(false, Ordering::AcqRel) {
                    log::warn!("mirror: the agent is back: changes are accepted again");
                }
                return Ok(());
            }
            if let Some(why) = self.fenced_why() {
                return Err(ReplicaError::Fenced(why));
            }
            if Instant::now() >= deadline {
                return Err(ReplicaError::Failed(format!(
                    "the mirror agent ({}) has been unreachable for more than {} ms \
                     (--on-mirror-loss wait): the change was refused before it was logged",
                    self.options.routes_text(),
                    self.options.loss_timeout_ms
                )));
            }
            std::thread::sleep(ADMIT_POLL);
        }
    }

    /// `Replica::wait_durable`: as long as the policy waits for an acknowledgement.
    fn wait_on_disk(&self, seq: u64) -> Result<(), ReplicaError> {
        if let Some(why) = self.fenced_why() {
            return Err(ReplicaError::Fenced(why));
        }
        let protected = !self.fatal.load(Ordering::Acquire) && self.client.status().protected;
        let wait_ms = match self.options.on_loss {
            // Known to be away: do not wait out the detection timeout on every fsync.
            OnLoss::Degrade if !protected => {
                return Err(ReplicaError::Failed(
                    "the mirror agent is unreachable".into(),
                ))
            }
            OnLoss::Degrade => self.options.timeout_ms,
            OnLoss::Wait => self.options.loss_timeout_ms,
        };
        match self
            .client
            .wait_durable(seq, Duration::from_millis(wait_ms))
        {
            Ok(()) => Ok(()),
            Err(MirrorError::Fenced { ours, current }) => Err(ReplicaError::Fenced(format!(
                "the volume was taken over (our epoch {ours}, current {current})"
            ))),
            Err(e) => Err(ReplicaError::Failed(e.to_string())),
        }
    }

    /// `Replica::holds_applied`: reads the agent's copy from `applied` on (a reader may
    /// read a volume whose epoch moved on) and looks for our `Applied` entry there.
    fn read_back_applied(&self, applied: u64, op_id: u64) -> Result<bool, String> {
        if self.client.acked_through().is_some_and(|a| a >= applied) {
            return Ok(true);
        }
        let cfg = self.options.client_config(self.volume_id, self.epoch);
        let entries = MirrorClient::read_back(&cfg, applied - 1).map_err(|e| e.to_string())?;
        let Some((_, bytes)) = entries.iter().find(|(s, _)| *s == applied) else {
            return Ok(false);
        };
        // Another node's entry may carry the same seq (the new owner numbers on from what
        // the agent held): only an `Applied` entry of our op counts.
        Ok(
            crate::statelog::EntryHeader::decode_checked(bytes).is_some_and(|h| {
                h.kind == crate::statelog::EntryKind::Op
                    && h.op_id == op_id
                    && h.state == crate::statelog::OpState::Applied as u8
            }),
        )
    }

    /// Why the agent fenced this node, once it did (the volume was taken over).
    fn fenced_why(&self) -> Option<String> {
        self.client.fenced().map(|(ours, current)| {
            format!("the volume was taken over (our epoch {ours}, current {current})")
        })
    }

    /// Shows the progress of a resynchronisation of the agent (at mount, and after each
    /// reconnect while entries were outstanding) as `Progress` does: plain log lines every
    /// few seconds in the daemon, whose stderr is its log. (Its start and end are logged by
    /// the client itself, exactly; this thread samples, so a resync that ends between two
    /// samples shows no progress lines.) Runs for as long as the mirror exists.
    pub fn watch_resync(mirror: &std::sync::Arc<Mirror>) {
        let weak = std::sync::Arc::downgrade(mirror);
        let spawned = std::thread::Builder::new()
            .name("mirror-resync".into())
            .spawn(move || {
                // (progress, the seq it started from, when it started)
                let mut running: Option<(crate::progress::Progress, u64, Instant)> = None;
                loop {
                    let Some(m) = weak.upgrade() else { return };
                    let st = m.client.status();
                    drop(m);
                    let acked = st.acked_through.unwrap_or(0);
                    match (st.connected, st.resync_through, running.as_ref()) {
                        (true, Some(target), None) if target > acked => {
                            let p = crate::progress::Progress::new(
                                "mirror resync (entries acknowledged)",
                                target - acked,
                            );
                            running = Some((p, acked, Instant::now()));
                        }
                        (_, Some(_), Some((p, from, _))) => p.set(acked.saturating_sub(*from)),
                        (_, None, Some((p, from, _))) => {
                            p.set(acked.saturating_sub(*from));
                            p.finish();
                            running = None;
                        }
                        _ => {}
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        if let Err(e) = spawned {
            log::warn!("mirror: cannot start the resync progress thread: {e}");
        }
    }
}

impl Replica for Mirror {
    fn submit(&self, seq: Seq, entry: Vec<u8>) {
        self.submit_entry(seq.0, entry);
    }

    fn wait(&self, seq: Seq) -> Result<(), ReplicaError> {
        self.wait_acked(seq.0)
    }

    fn protected(&self) -> bool {
        self.options.mode == MirrorMode::Sync && self.client.status().protected
    }

    fn fenced(&self) -> Option<String> {
        self.fenced_why()
    }

    fn acked_through(&self) -> Option<Seq> {
        self.client.acked_through().map(Seq)
    }

    fn checkpoint(&self, covers: Seq) {
        self.client.checkpoint(covers.0);
    }

    fn admit(&self) -> Result<(), ReplicaError> {
        self.admit_op()
    }

    fn request_durable(&self, seq: Seq) {
        // A zero timeout only records the wish and wakes the driver, which sends `Sync`.
        let _ = self.client.wait_durable(seq.0, Duration::ZERO);
    }

    fn wait_durable(&self, seq: Seq) -> Result<(), ReplicaError> {
        self.wait_on_disk(seq.0)
    }

    fn durable_through(&self) -> Option<Seq> {
        self.client.durable_through().map(Seq)
    }

    fn holds_applied(&self, applied: Seq, op_id: Seq) -> Result<bool, String> {
        self.read_back_applied(applied.0, op_id.0)
    }

    fn info(&self) -> ReplicaInfo {
        let st = self.client.status();
        ReplicaInfo {
            routes: self.options.routes_text(),
            route_in_use: st.route_in_use.map(|r| r.to_string()),
            connected: st.connected,
            protected: st.protected,
            mode: format!("{:?}", self.options.mode).to_lowercase(),
            on_loss: format!("{:?}", self.options.on_loss).to_lowercase(),
            unacked_entries: st.unacked_entries as u64,
            acked_through: st.acked_through,
            resync_through: st.resync_through,
            rtt_us: st.rtt_us,
            reconnects: st.reconnects,
            last_error: st.last_error,
        }
    }
}

impl ReplicaLink for MirrorOptions {
    fn describe(&self) -> String {
        self.routes_text()
    }

    fn read_back(
        &self,
        volume_id: [u8; 16],
        epoch: Epoch,
        after: Seq,
    ) -> Result<Vec<(Seq, Vec<u8>)>, String> {
        let cfg = self.client_config(volume_id, epoch.0);
        let entries = MirrorClient::read_back(&cfg, after.0).map_err(|e| e.to_string())?;
        Ok(entries.into_iter().map(|(s, b)| (Seq(s), b)).collect())
    }

    fn connect(&self, volume_id: [u8; 16], epoch: Epoch) -> Result<Arc<dyn Replica>, String> {
        let mirror =
            Arc::new(Mirror::connect(self.clone(), volume_id, epoch.0).map_err(|e| e.to_string())?);
        Mirror::watch_resync(&mirror);
        Ok(mirror)
    }
}

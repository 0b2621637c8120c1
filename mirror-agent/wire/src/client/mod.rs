//! The daemon's side of the mirror: pipelined appends, cumulative acks, heartbeats,
//! route fail-over with resend, read-back and epoch raising.
//!
//! Threads: `connect` starts one *driver* thread that owns the write half of the
//! connection (it sends batches, checkpoints, heartbeats and echoes, and reconnects), and
//! per connection one *reader* thread that takes acks, heartbeats and errors. Both meet in
//! `State` under one mutex; a condvar wakes the driver for new work and waiters for acks.
//!
//! Invariants: `State::queue` holds every submitted entry not yet acknowledged, in seq
//! order with consecutive seqs; on every new connection it is resent from its front (the
//! agent drops seqs it already holds). The queue is bounded by the caller, whose ring
//! holds the same entries until they are acknowledged.
//!
//! * `handshake` — connecting to one route, authentication, the agent's Welcome;
//! * `driver` — the driver and reader threads and the state they share.
//!
//! This file holds the API: configuration, errors, status and `MirrorClient`.

mod driver;
mod handshake;

use crate::conn::write_frame;
use crate::error::{ErrorCode, WireError};
use crate::format::*;
use crate::message::{Message, Mode};
use driver::{drive, install, Shared, State};
use handshake::{io_error, open_any, read_frame, refusal, unexpected, Session};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Addresses of the same agent, tried in order.
    pub routes: Vec<SocketAddr>,
    pub volume_id: VolumeId,
    /// This node's name, at most `MAX_NODE_BYTES` bytes.
    pub node: String,
    /// Our ownership epoch of the volume.
    pub epoch: u64,
    /// Shared secret; when set, both ends must prove it before anything else.
    pub secret: Option<Vec<u8>>,
    /// How often to send a heartbeat when idle.
    pub heartbeat_ms: u64,
    /// Failure detection: a connect, a write, or silence from the agent longer than this
    /// fails the route.
    pub timeout_ms: u64,
}

impl MirrorConfig {
    pub fn new(routes: Vec<SocketAddr>, volume_id: VolumeId, node: &str, epoch: u64) -> Self {
        MirrorConfig {
            routes,
            volume_id,
            node: node.to_string(),
            epoch,
            secret: None,
            heartbeat_ms: 1000,
            timeout_ms: 5000,
        }
    }

    fn check(&self) -> Result<(), MirrorError> {
        if self.routes.is_empty() {
            return Err(MirrorError::Config("no routes to the mirror agent".into()));
        }
        if self.node.is_empty() || self.node.len() > MAX_NODE_BYTES {
            return Err(MirrorError::Config(format!(
                "node name must be 1..={MAX_NODE_BYTES} bytes"
            )));
        }
        if self.heartbeat_ms == 0 || self.timeout_ms <= self.heartbeat_ms {
            return Err(MirrorError::Config(
                "need 0 < heartbeat_ms < timeout_ms".into(),
            ));
        }
        if self.secret.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(MirrorError::Config("the shared secret is empty".into()));
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MirrorError {
    #[error("bad mirror configuration: {0}")]
    Config(String),
    #[error("mirror agent unreachable on every route: {0}")]
    Unreachable(String),
    #[error("the mirror agent at {route} is too old: it does not speak wire version 2 (durable acknowledgements), it said: {reason}; upgrade mirror-agent on that host")]
    AgentTooOld { route: SocketAddr, reason: String },
    #[error("mirror authentication failed at {route}: {reason}")]
    AuthFailed { route: SocketAddr, reason: String },
    #[error("fenced: our ownership epoch {ours} is older than the volume's epoch {current} at the mirror agent (the volume was taken over)")]
    Fenced { ours: u64, current: u64 },
    #[error(
        "the mirror agent is missing entries: it expects seq {expected} but was sent seq {got}"
    )]
    Gap { expected: u64, got: u64 },
    #[error("the mirror agent lost acknowledged entries: it holds through {held:?} but had acknowledged through {acked}; resynchronise it from the local ring")]
    AgentLost { held: Option<u64>, acked: u64 },
    #[error("mirror agent refused ({code:?}): {reason}")]
    Refused { code: ErrorCode, reason: String },
    #[error("bad frame from the mirror agent: {0}")]
    Wire(#[from] WireError),
    #[error("mirror connection to {route}: {reason}")]
    Io { route: SocketAddr, reason: String },
    #[error("mirror protocol violation by the agent: {0}")]
    Protocol(String),
    #[error("timed out waiting for seq {seq} to be acknowledged (acknowledged through {acked_through:?})")]
    Timeout {
        seq: u64,
        acked_through: Option<u64>,
    },
    #[error("timed out waiting for seq {seq} to be on the mirror agent's disk (durable through {durable_through:?}, acknowledged through {acked_through:?})")]
    DurableTimeout {
        seq: u64,
        durable_through: Option<u64>,
        acked_through: Option<u64>,
    },
    #[error("entry of {len} bytes exceeds the mirror limit of {max} bytes")]
    EntryTooLarge { len: usize, max: usize },
    #[error("seq {got} submitted out of order, expected {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("the mirror client is closed")]
    Closed,
}

impl MirrorError {
    /// Errors that another route or another attempt cannot cure.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            MirrorError::Config(_)
                | MirrorError::AgentTooOld { .. }
                | MirrorError::AuthFailed { .. }
                | MirrorError::Fenced { .. }
                | MirrorError::Gap { .. }
                | MirrorError::AgentLost { .. }
        )
    }
}

/// A snapshot for `smlogfs status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorStatus {
    pub route_in_use: Option<SocketAddr>,
    pub connected: bool,
    pub unacked_entries: usize,
    pub unacked_bytes: usize,
    /// Last measured heartbeat round trip; 0 until one was measured.
    pub rtt_us: u64,
    /// Connected, not failed, and every entry submitted before the last (re)connect has
    /// been acknowledged since: only then does the agent hold all it should.
    pub protected: bool,
    pub acked_through: Option<u64>,
    /// The highest seq the agent reported on its disk (every seq up to it is fdatasync'ed
    /// there, or covered by a checkpoint); at most `acked_through`.
    pub durable_through: Option<u64>,
    /// While the agent is being resynchronised after a (re)connect: the seq it must
    /// acknowledge before the node is protected again; None when it holds everything.
    pub resync_through: Option<u64>,
    pub reconnects: u64,
    /// Why the last connection or attempt failed, or the fatal error.
    pub last_error: Option<String>,
}

/// A connection to the mirror agent for one volume, with automatic reconnection.
pub struct MirrorClient {
    shared: Arc<Shared>,
    driver: Option<JoinHandle<()>>,
}

impl MirrorClient {
    /// Connects through the first route that answers and runs the handshake.
    /// Fails when no route answers, on a secret mismatch, or when the agent knows a newer
    /// ownership epoch of the volume (`Fenced`).
    pub fn connect(cfg: MirrorConfig) -> Result<MirrorClient, MirrorError> {
        let (route_index, session) = open_any(&cfg, Mode::Writer, 0)?;
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            work: Condvar::new(),
            clock: Instant::now(),
        });
        let (writer, reader_thread) = install(&shared, session).map_err(|e| MirrorError::Io {
            route: shared.cfg.routes[route_index],
            reason: format!("socket clone: {e}"),
        })?;
        let driver_shared = Arc::clone(&shared);
        let driver = std::thread::Builder::new()
            .name("mirror-driver".into())
            .spawn(move || drive(driver_shared, route_index, writer, reader_thread))
            .map_err(|e| MirrorError::Config(format!("cannot start the mirror thread: {e}")))?;
        Ok(MirrorClient {
            shared,
            driver: Some(driver),
        })
    }

    /// Queues one entry for the agent; returns at once. Seqs must be consecutive.
    /// An entry the agent already holds (seq at or below the acknowledged seq) is dropped.
    pub fn submit(&self, seq: u64, entry: Vec<u8>) -> Result<(), MirrorError> {
        if entry.len() > MAX_ENTRY_BYTES {
            return Err(MirrorError::EntryTooLarge {
                len: entry.len(),
                max: MAX_ENTRY_BYTES,
            });
        }
        let mut st = self.shared.lock();
        if let Some(e) = &st.fatal {
            return Err(e.clone());
        }
        if st.closing {
            return Err(MirrorError::Closed);
        }
        if let Some(last) = st.last_submitted {
            if last.checked_add(1) != Some(seq) {
                return Err(MirrorError::OutOfOrder {
                    expected: last.wrapping_add(1),
                    got: seq,
                });
            }
        }
        st.last_submitted = Some(seq);
        if st.acked.is_some_and(|a| seq <= a) {
            return Ok(());
        }
        st.queue_bytes += entry.len();
        st.queue.push_back((seq, entry));
        self.shared.work.notify_one();
        Ok(())
    }

    /// The highest seq the agent has acknowledged (it holds every seq up to it).
    pub fn acked_through(&self) -> Option<u64> {
        self.shared.lock().acked
    }

    /// Waits until `seq` is acknowledged, the client fails for good, or `timeout` passes.
    pub fn wait_acked(&self, seq: u64, timeout: Duration) -> Result<(), MirrorError> {
        self.wait_state(
            timeout,
            |st| st.acked.is_some_and(|a| a >= seq),
            |_| {},
            |st| MirrorError::Timeout {
                seq,
                acked_through: st.acked,
            },
        )
    }

    /// The highest seq the agent reported durable: every seq up to it is on the agent's
    /// disk. The agent reports it in every acknowledgement, and again after each background
    /// sync; `wait_durable` asks for it at once.
    pub fn durable_through(&self) -> Option<u64> {
        self.shared.lock().durable
    }

    /// Waits until every seq up to `seq` is on the agent's disk: asks the agent to sync
    /// now (`Sync`, resent after a reconnect) rather than waiting for its background sync.
    /// Fails like `wait_acked`: on a final error (fenced, …), when the client is closed, or
    /// with `DurableTimeout` after `timeout`. A seq not submitted yet is waited for.
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> Result<(), MirrorError> {
        self.wait_state(
            timeout,
            |st| st.durable.is_some_and(|d| d >= seq),
            |st| {
                if st.sync_wanted.is_none_or(|w| w < seq) {
                    st.sync_wanted = Some(seq);
                    self.shared.work.notify_one();
                }
            },
            |st| MirrorError::DurableTimeout {
                seq,
                durable_through: st.durable,
                acked_through: st.acked,
            },
        )
    }

    /// The wait both `wait_acked` and `wait_durable` do: until `reached`, a final error,
    /// `close`, or `timeout` (then the error `timed_out` makes). `ask` runs under the lock
    /// after the failure checks and before each sleep, to request what is waited for.
    fn wait_state(
        &self,
        timeout: Duration,
        reached: impl Fn(&State) -> bool,
        mut ask: impl FnMut(&mut State),
        timed_out: impl FnOnce(&State) -> MirrorError,
    ) -> Result<(), MirrorError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if reached(&st) {
                return Ok(());
            }
            if let Some(e) = &st.fatal {
                return Err(e.clone());
            }
            if st.closing {
                return Err(MirrorError::Closed);
            }
            ask(&mut st);
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out(&st));
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Tells the agent it may drop entries up to `through_seq` (they are on the volume).
    /// Queued entries it covers are dropped here too: they need no mirroring any more,
    /// and the driver always sends the checkpoint before any later append, so the agent
    /// (which then expects `through_seq + 1`) sees no gap.
    pub fn checkpoint(&self, through_seq: u64) {
        let mut st = self.shared.lock();
        if st.checkpoint_wanted.is_none_or(|c| c < through_seq) {
            st.checkpoint_wanted = Some(through_seq);
            while let Some((seq, bytes)) = st.queue.front() {
                if *seq > through_seq {
                    break;
                }
                let len = bytes.len();
                st.queue_bytes -= len;
                st.queue.pop_front();
            }
            self.shared.wake_all();
        }
    }

    /// `(ours, current)` once the agent refused this node's epoch: the volume was taken over
    /// by a peer, and this node must not write again.
    pub fn fenced(&self) -> Option<(u64, u64)> {
        match &self.shared.lock().fatal {
            Some(MirrorError::Fenced { ours, current }) => Some((*ours, *current)),
            _ => None,
        }
    }

    pub fn status(&self) -> MirrorStatus {
        let st = self.shared.lock();
        let resynced = match (st.resync_through, st.acked) {
            (None, _) => true,
            (Some(r), Some(a)) => a >= r,
            (Some(_), None) => false,
        };
        MirrorStatus {
            route_in_use: if st.connected { st.route } else { None },
            connected: st.connected,
            unacked_entries: st.queue.len(),
            unacked_bytes: st.queue_bytes,
            rtt_us: st.rtt_us,
            protected: st.connected && st.fatal.is_none() && resynced,
            acked_through: st.acked,
            durable_through: st.durable,
            resync_through: if resynced { None } else { st.resync_through },
            reconnects: st.reconnects,
            last_error: st
                .fatal
                .as_ref()
                .map(|e| e.to_string())
                .or_else(|| st.last_error.clone()),
        }
    }

    /// Reads back every entry after `after_seq` (and after the agent's checkpoint).
    /// Checks that the seqs are consecutive and that the agent's end marker agrees.
    pub fn read_back(
        cfg: &MirrorConfig,
        after_seq: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, MirrorError> {
        let Session {
            stream,
            mut reader,
            route,
            ..
        } = open_and_send(cfg, &Message::ReadBack { after_seq })?;
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        loop {
            let frame = read_frame(&stream, &mut reader, route)?;
            match frame.message {
                Message::Entries { entries } => {
                    for (seq, bytes) in entries {
                        let fits = match out.last() {
                            Some((prev, _)) => prev.checked_add(1) == Some(seq),
                            None => seq > after_seq,
                        };
                        if !fits {
                            return Err(MirrorError::Protocol(format!(
                                "read-back seq {seq} out of order after {:?}",
                                out.last().map(|e| e.0)
                            )));
                        }
                        out.push((seq, bytes));
                    }
                }
                Message::ReadEnd {
                    entries_sent,
                    through_seq,
                } => {
                    let last = out.last().map(|e| e.0);
                    if entries_sent != out.len() as u64
                        || (last.is_some() && last != Some(through_seq))
                    {
                        return Err(MirrorError::Protocol(format!(
                            "read-back end marker says {entries_sent} entries through {through_seq}, got {} through {last:?}",
                            out.len()
                        )));
                    }
                    let _ = stream.shutdown(Shutdown::Both);
                    return Ok(out);
                }
                Message::Heartbeat {
                    reply: false,
                    stamp_us,
                } => {
                    write_frame(
                        &mut &stream,
                        &cfg.volume_id,
                        &Message::Heartbeat {
                            stamp_us,
                            reply: true,
                        },
                    )
                    .map_err(|e| io_error(route, "heartbeat echo", e))?;
                }
                Message::Heartbeat { reply: true, .. } => {}
                Message::Error { code, a, b, reason } => {
                    return Err(refusal(cfg, route, code, a, b, reason))
                }
                other => return Err(unexpected(&other, "during read-back")),
            }
        }
    }

    /// Raises the volume's ownership epoch at the agent to `new_epoch` (for takeover).
    /// From then on the agent refuses appends from connections of lower epochs.
    /// Returns the agent's epoch afterwards; `Fenced` if the agent already has a higher one.
    pub fn raise_epoch(cfg: &MirrorConfig, new_epoch: u64) -> Result<u64, MirrorError> {
        let Session {
            stream,
            mut reader,
            route,
            ..
        } = open_and_send(cfg, &Message::RaiseEpoch { epoch: new_epoch })?;
        loop {
            match read_frame(&stream, &mut reader, route)?.message {
                Message::EpochRaised { epoch } => {
                    let _ = stream.shutdown(Shutdown::Both);
                    return Ok(epoch);
                }
                Message::Heartbeat { .. } => {}
                Message::Error { code, a, b, reason } => {
                    // The agent reports a refused raise as Fenced with its current epoch.
                    return Err(match refusal(cfg, route, code, a, b, reason) {
                        MirrorError::Fenced { current, .. } => MirrorError::Fenced {
                            ours: new_epoch,
                            current,
                        },
                        e => e,
                    });
                }
                other => return Err(unexpected(&other, "after RaiseEpoch")),
            }
        }
    }
}

/// Opens a reader connection on the first route that answers and sends it `request`: how
/// `read_back` and `raise_epoch` begin, before each reads its own answer.
fn open_and_send(cfg: &MirrorConfig, request: &Message) -> Result<Session, MirrorError> {
    let (_, session) = open_any(cfg, Mode::Reader, 0)?;
    write_frame(&mut &session.stream, &cfg.volume_id, request)
        .map_err(|e| io_error(session.route, &format!("send {:?}", request.kind()), e))?;
    Ok(session)
}

impl std::fmt::Debug for MirrorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorClient")
            .field("volume_id", &self.shared.cfg.volume_id)
            .field("status", &self.status())
            .finish()
    }
}

impl Drop for MirrorClient {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.closing = true;
            if let Some(stream) = st.stream.take() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            self.shared.wake_all();
        }
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }
}

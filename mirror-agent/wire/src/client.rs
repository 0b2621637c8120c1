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

use crate::auth::{fresh_nonce, Transcript};
use crate::conn::{write_frame, FrameReader};
use crate::error::{ErrorCode, WireError};
use crate::format::*;
use crate::message::{batch_entry_bytes, encode_batch, seal_frame, Frame, Message, Mode};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Bytes the driver writes in one go before it looks at its state again.
const SEND_BURST_BYTES: usize = 4 * 1024 * 1024;
/// Pause between rounds of reconnect attempts: doubles from the first to the last.
const RECONNECT_FIRST_MS: u64 = 50;
const RECONNECT_LAST_MS: u64 = 1000;

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
    pub reconnects: u64,
    /// Why the last connection or attempt failed, or the fatal error.
    pub last_error: Option<String>,
}

/// The agent's state of the volume, from its Welcome.
#[derive(Debug, Clone, Copy)]
struct Welcome {
    next_seq: Option<u64>,
}

struct Session {
    stream: TcpStream,
    reader: FrameReader,
    route: SocketAddr,
    welcome: Welcome,
}

fn io_error(route: SocketAddr, what: &str, e: io::Error) -> MirrorError {
    let reason = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("{what}: timed out"),
        _ => format!("{what}: {e}"),
    };
    MirrorError::Io { route, reason }
}

/// Reads one whole frame, waiting at most the stream's read timeout for each piece.
fn read_frame(
    stream: &TcpStream,
    reader: &mut FrameReader,
    route: SocketAddr,
) -> Result<Frame, MirrorError> {
    loop {
        if let Some(frame) = reader.next_buffered()? {
            return Ok(frame);
        }
        let mut source = stream;
        match reader.fill(&mut source) {
            Ok(0) => {
                return Err(MirrorError::Io {
                    route,
                    reason: "the agent closed the connection".into(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(route, "no frame from the agent", e)),
        }
    }
}

/// Turns an agent's Error frame into our error.
fn refusal(
    cfg: &MirrorConfig,
    route: SocketAddr,
    code: ErrorCode,
    a: u64,
    b: u64,
    reason: String,
) -> MirrorError {
    match code {
        ErrorCode::Fenced => MirrorError::Fenced {
            ours: cfg.epoch,
            current: a,
        },
        ErrorCode::AuthFailed | ErrorCode::AuthRequired => {
            MirrorError::AuthFailed { route, reason }
        }
        ErrorCode::Gap => MirrorError::Gap {
            expected: a,
            got: b,
        },
        _ => MirrorError::Refused { code, reason },
    }
}

/// Connects to one route and runs the handshake.
fn open_session(cfg: &MirrorConfig, route: SocketAddr, mode: Mode) -> Result<Session, MirrorError> {
    let timeout = cfg.timeout();
    let stream =
        TcpStream::connect_timeout(&route, timeout).map_err(|e| io_error(route, "connect", e))?;
    let setup = |s: &TcpStream| -> io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))
    };
    setup(&stream).map_err(|e| io_error(route, "socket setup", e))?;
    let client_nonce = fresh_nonce().map_err(|e| io_error(route, "nonce from /dev/urandom", e))?;
    let hello = Message::Hello {
        epoch: cfg.epoch,
        mode,
        heartbeat_ms: cfg.heartbeat_ms.min(u32::MAX as u64) as u32,
        client_nonce,
        node: cfg.node.clone(),
    };
    write_frame(&mut &stream, &cfg.volume_id, &hello)
        .map_err(|e| io_error(route, "send Hello", e))?;
    let mut reader = FrameReader::new();
    let mut agent_proved = false;
    loop {
        let frame = read_frame(&stream, &mut reader, route)?;
        // An Error may come before the agent knows our volume (busy, bad Hello); it names
        // none, so only other frames must name ours.
        let is_error = matches!(frame.message, Message::Error { .. });
        if frame.volume_id != cfg.volume_id && !is_error {
            return Err(MirrorError::Protocol(
                "the agent answered for another volume".into(),
            ));
        }
        match frame.message {
            Message::Challenge {
                agent_nonce,
                agent_proof,
            } if !agent_proved => {
                let Some(secret) = cfg.secret.as_deref() else {
                    return Err(MirrorError::AuthFailed {
                        route,
                        reason:
                            "the agent requires a shared secret and none was given (--secret-file)"
                                .into(),
                    });
                };
                let transcript = Transcript {
                    volume_id: &cfg.volume_id,
                    node: &cfg.node,
                    epoch: cfg.epoch,
                    mode,
                    client_nonce: &client_nonce,
                    agent_nonce: &agent_nonce,
                };
                if !transcript.verify_agent(secret, &agent_proof) {
                    let _ = write_frame(
                        &mut &stream,
                        &cfg.volume_id,
                        &Message::Error {
                            code: ErrorCode::AuthFailed,
                            a: 0,
                            b: 0,
                            reason: "agent proof does not match the client's secret".into(),
                        },
                    );
                    return Err(MirrorError::AuthFailed {
                        route,
                        reason:
                            "secret mismatch: the agent's proof does not match our shared secret"
                                .into(),
                    });
                }
                agent_proved = true;
                let proof = Message::Proof {
                    client_proof: transcript.client_proof(secret),
                };
                write_frame(&mut &stream, &cfg.volume_id, &proof)
                    .map_err(|e| io_error(route, "send Proof", e))?;
            }
            Message::Welcome { next_seq, .. } => {
                if cfg.secret.is_some() && !agent_proved {
                    return Err(MirrorError::AuthFailed {
                        route,
                        reason: "the agent did not prove the shared secret (is it running without --secret-file?)".into(),
                    });
                }
                return Ok(Session {
                    stream,
                    reader,
                    route,
                    welcome: Welcome { next_seq },
                });
            }
            Message::Error { code, a, b, reason } => {
                return Err(refusal(cfg, route, code, a, b, reason))
            }
            other => {
                return Err(MirrorError::Protocol(format!(
                    "unexpected {:?} frame during the handshake",
                    other.kind()
                )))
            }
        }
    }
}

/// Tries every route once, starting at `first`; returns the index of the route that worked.
fn open_any(cfg: &MirrorConfig, mode: Mode, first: usize) -> Result<(usize, Session), MirrorError> {
    cfg.check()?;
    let n = cfg.routes.len();
    let mut failures = Vec::new();
    for k in 0..n {
        let i = (first + k) % n;
        match open_session(cfg, cfg.routes[i], mode) {
            Ok(session) => return Ok((i, session)),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(MirrorError::Unreachable(failures.join("; ")))
}

#[derive(Default)]
struct State {
    queue: VecDeque<(u64, Vec<u8>)>,
    queue_bytes: usize,
    last_submitted: Option<u64>,
    acked: Option<u64>,
    /// Highest seq written on the current connection.
    sent_through: Option<u64>,
    checkpoint_wanted: Option<u64>,
    checkpoint_sent: Option<u64>,
    echo_pending: Option<u64>,
    connected: bool,
    /// Counts connections; a reader thread acts only on the generation it was started for.
    generation: u64,
    stream: Option<TcpStream>,
    route: Option<SocketAddr>,
    rtt_us: u64,
    /// `last_submitted` when the current connection was made.
    resync_through: Option<u64>,
    reconnects: u64,
    fatal: Option<MirrorError>,
    last_error: Option<String>,
    closing: bool,
}

impl State {
    fn ack_through(&mut self, through: u64) {
        if self.acked.is_some_and(|a| a >= through) {
            return;
        }
        self.acked = Some(through);
        while let Some((seq, bytes)) = self.queue.front() {
            if *seq > through {
                break;
            }
            self.queue_bytes -= bytes.len();
            self.queue.pop_front();
        }
    }
}

struct Shared {
    cfg: MirrorConfig,
    state: Mutex<State>,
    changed: Condvar,
    clock: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in another thread holding the lock is a bug; the state is still
        // consistent enough to report, so take it rather than panic again.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    /// Marks connection `generation` as lost, once; the driver then reconnects.
    fn lose(&self, generation: u64, reason: String) {
        let mut st = self.lock();
        if st.generation == generation && st.connected {
            log::warn!("mirror: connection via {:?} lost: {reason}", st.route);
            st.connected = false;
            st.reconnects += 1;
            st.last_error = Some(reason);
            if let Some(stream) = st.stream.take() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        self.changed.notify_all();
    }
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
        self.shared.changed.notify_all();
        Ok(())
    }

    /// The highest seq the agent has acknowledged (it holds every seq up to it).
    pub fn acked_through(&self) -> Option<u64> {
        self.shared.lock().acked
    }

    /// Waits until `seq` is acknowledged, the client fails for good, or `timeout` passes.
    pub fn wait_acked(&self, seq: u64, timeout: Duration) -> Result<(), MirrorError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.acked.is_some_and(|a| a >= seq) {
                return Ok(());
            }
            if let Some(e) = &st.fatal {
                return Err(e.clone());
            }
            if st.closing {
                return Err(MirrorError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(MirrorError::Timeout {
                    seq,
                    acked_through: st.acked,
                });
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
            self.shared.changed.notify_all();
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
        let (_, session) = open_any(cfg, Mode::Reader, 0)?;
        let Session {
            stream,
            mut reader,
            route,
            ..
        } = session;
        write_frame(
            &mut &stream,
            &cfg.volume_id,
            &Message::ReadBack { after_seq },
        )
        .map_err(|e| io_error(route, "send ReadBack", e))?;
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
                other => {
                    return Err(MirrorError::Protocol(format!(
                        "unexpected {:?} frame during read-back",
                        other.kind()
                    )))
                }
            }
        }
    }

    /// Raises the volume's ownership epoch at the agent to `new_epoch` (for takeover).
    /// From then on the agent refuses appends from connections of lower epochs.
    /// Returns the agent's epoch afterwards; `Fenced` if the agent already has a higher one.
    pub fn raise_epoch(cfg: &MirrorConfig, new_epoch: u64) -> Result<u64, MirrorError> {
        let (_, session) = open_any(cfg, Mode::Reader, 0)?;
        let Session {
            stream,
            mut reader,
            route,
            ..
        } = session;
        write_frame(
            &mut &stream,
            &cfg.volume_id,
            &Message::RaiseEpoch { epoch: new_epoch },
        )
        .map_err(|e| io_error(route, "send RaiseEpoch", e))?;
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
                other => {
                    return Err(MirrorError::Protocol(format!(
                        "unexpected {:?} frame after RaiseEpoch",
                        other.kind()
                    )))
                }
            }
        }
    }
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
            self.shared.changed.notify_all();
        }
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }
}

/// Records a new connection in the state and starts its reader thread.
/// Returns the driver's write handle and the reader thread.
fn install(shared: &Arc<Shared>, session: Session) -> io::Result<(TcpStream, JoinHandle<()>)> {
    let Session {
        stream,
        reader,
        route,
        welcome,
    } = session;
    let writer = stream.try_clone()?;
    let control = stream.try_clone()?;
    let generation = {
        let mut st = shared.lock();
        st.generation += 1;
        st.connected = true;
        st.stream = Some(control);
        st.route = Some(route);
        st.sent_through = None;
        st.checkpoint_sent = None;
        st.echo_pending = None;
        st.resync_through = st.last_submitted;
        if let Some(next) = welcome.next_seq {
            if let Some(held) = next.checked_sub(1) {
                st.ack_through(held);
            }
        }
        shared.changed.notify_all();
        st.generation
    };
    log::info!("mirror: connected via {route}");
    let reader_shared = Arc::clone(shared);
    let handle = std::thread::Builder::new()
        .name("mirror-reader".into())
        .spawn(move || read_loop(reader_shared, generation, stream, reader, route))?;
    Ok((writer, handle))
}

fn read_loop(
    shared: Arc<Shared>,
    generation: u64,
    stream: TcpStream,
    mut reader: FrameReader,
    route: SocketAddr,
) {
    let cfg = &shared.cfg;
    loop {
        let frame = match read_frame(&stream, &mut reader, route) {
            Ok(frame) => frame,
            Err(e) => return shared.lose(generation, e.to_string()),
        };
        if frame.volume_id != cfg.volume_id {
            return shared.lose(
                generation,
                "the agent sent a frame for another volume".into(),
            );
        }
        match frame.message {
            Message::Ack { through_seq } => {
                let mut st = shared.lock();
                if st.generation == generation {
                    st.ack_through(through_seq);
                    shared.changed.notify_all();
                }
            }
            Message::Heartbeat {
                stamp_us,
                reply: false,
            } => {
                let mut st = shared.lock();
                st.echo_pending = Some(stamp_us);
                shared.changed.notify_all();
            }
            Message::Heartbeat {
                stamp_us,
                reply: true,
            } => {
                let rtt = shared.now_us().saturating_sub(stamp_us);
                shared.lock().rtt_us = rtt;
            }
            Message::Error { code, a, b, reason } => {
                let e = refusal(cfg, route, code, a, b, reason);
                if e.is_fatal() {
                    log::error!("mirror: {e}");
                    let mut st = shared.lock();
                    st.fatal.get_or_insert(e.clone());
                }
                return shared.lose(generation, e.to_string());
            }
            other => {
                return shared.lose(
                    generation,
                    format!("unexpected {:?} frame from the agent", other.kind()),
                )
            }
        }
    }
}

/// The driver thread: sends what is due on the current connection, and reconnects —
/// through the next route first — when it is lost.
fn drive(
    shared: Arc<Shared>,
    mut route_index: usize,
    writer: TcpStream,
    reader_thread: JoinHandle<()>,
) {
    let cfg = &shared.cfg;
    let heartbeat = Duration::from_millis(cfg.heartbeat_ms);
    let mut writer = Some(writer);
    let mut reader_thread = Some(reader_thread);
    let mut last_ping = Instant::now();
    let mut pause_ms = RECONNECT_FIRST_MS;
    let mut out = Vec::new();
    loop {
        let mut st = shared.lock();
        if st.closing || st.fatal.is_some() {
            break;
        }
        if !st.connected {
            drop(st);
            writer = None;
            if let Some(t) = reader_thread.take() {
                let _ = t.join();
            }
            let first = (route_index + 1) % cfg.routes.len();
            match open_any(cfg, Mode::Writer, first) {
                Ok((i, session)) => {
                    let mut st = shared.lock();
                    if st.closing {
                        break;
                    }
                    // The agent's log only grows; holding less than it acknowledged means
                    // it lost entries (a wiped DIR, a host that lost unsynced writes).
                    let held = session.welcome.next_seq.and_then(|n| n.checked_sub(1));
                    if let Some(acked) = st.acked {
                        if held.is_none_or(|h| h < acked) {
                            let e = MirrorError::AgentLost { held, acked };
                            log::error!("mirror: {e}");
                            let _ = session.stream.shutdown(Shutdown::Both);
                            st.fatal = Some(e);
                            shared.changed.notify_all();
                            break;
                        }
                    }
                    drop(st);
                    match install(&shared, session) {
                        Ok((w, t)) => {
                            route_index = i;
                            writer = Some(w);
                            reader_thread = Some(t);
                            pause_ms = RECONNECT_FIRST_MS;
                            last_ping = Instant::now()
                                .checked_sub(heartbeat)
                                .unwrap_or_else(Instant::now);
                        }
                        Err(e) => shared.lock().last_error = Some(format!("socket clone: {e}")),
                    }
                }
                Err(e) if e.is_fatal() => {
                    log::error!("mirror: {e}");
                    let mut st = shared.lock();
                    st.fatal = Some(e);
                    shared.changed.notify_all();
                    break;
                }
                Err(e) => {
                    // Sleep out the pause; only closing cuts it short.
                    let deadline = Instant::now() + Duration::from_millis(pause_ms);
                    let mut st = shared.lock();
                    st.last_error = Some(e.to_string());
                    while !st.closing {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        st = shared
                            .changed
                            .wait_timeout(st, deadline - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    pause_ms = (pause_ms * 2).min(RECONNECT_LAST_MS);
                }
            }
            continue;
        }

        out.clear();
        let volume_id = &cfg.volume_id;
        if let Some(stamp_us) = st.echo_pending.take() {
            crate::message::encode_frame(
                volume_id,
                &Message::Heartbeat {
                    stamp_us,
                    reply: true,
                },
                &mut out,
            );
        }
        if let Some(c) = st.checkpoint_wanted {
            if st.checkpoint_sent.is_none_or(|s| s < c) {
                crate::message::encode_frame(
                    volume_id,
                    &Message::Checkpoint { through_seq: c },
                    &mut out,
                );
                st.checkpoint_sent = Some(c);
            }
        }
        let front = st.queue.front().map(|e| e.0);
        let mut next = match (front, st.sent_through) {
            (Some(f), Some(s)) if s >= f => (s - f + 1) as usize,
            _ => 0,
        };
        while next < st.queue.len() && out.len() < SEND_BURST_BYTES {
            let start = out.len();
            let mut body = BATCH_HEAD_BYTES;
            let mut end = next;
            while end < st.queue.len()
                && end - next < MAX_BATCH_ENTRIES
                && body + batch_entry_bytes(st.queue[end].1.len()) <= MAX_BODY_BYTES
            {
                body += batch_entry_bytes(st.queue[end].1.len());
                end += 1;
            }
            out.extend_from_slice(&[0u8; HEADER_BYTES]);
            encode_batch(
                st.queue.range(next..end).map(|(s, b)| (*s, b.as_slice())),
                &mut out,
            );
            seal_frame(volume_id, FrameKind::Append, &mut out, start);
            st.sent_through = Some(st.queue[end - 1].0);
            next = end;
        }
        let since_ping = last_ping.elapsed();
        if since_ping >= heartbeat {
            let stamp_us = shared.now_us();
            crate::message::encode_frame(
                volume_id,
                &Message::Heartbeat {
                    stamp_us,
                    reply: false,
                },
                &mut out,
            );
            last_ping = Instant::now();
        }
        if out.is_empty() {
            let wait = heartbeat.saturating_sub(since_ping);
            let _unused = shared
                .changed
                .wait_timeout(st, wait)
                .unwrap_or_else(|p| p.into_inner());
            continue;
        }
        let generation = st.generation;
        drop(st);
        if let Some(w) = writer.as_mut() {
            if let Err(e) = w.write_all(&out) {
                shared.lose(
                    generation,
                    io_error(shared.cfg.routes[route_index], "send", e).to_string(),
                );
            }
        }
    }
    if let Some(w) = writer {
        let _ = w.shutdown(Shutdown::Both);
    }
    if let Some(t) = reader_thread {
        let _ = t.join();
    }
}

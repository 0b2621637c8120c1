//! One connection: the handshake, then appends, read-backs, checkpoints, syncs, heartbeats
//! and epoch raises for the one volume the handshake named.
//!
//! The connection speaks the wire version of its Hello. In version 2 every Ack also says how
//! far the volume is durable, an Ack is sent on its own when a background sync moved that,
//! and a `Sync` is answered (with an Ack) once the volume is durable through its seq; a
//! `Sync` beyond what the agent holds waits for the appends that bring it.
//!
//! Every way a connection can go wrong ends in a `Hangup` with a reason that is logged and,
//! where the peer can use it, sent as an Error frame before the connection is closed.
//! Nothing a peer sends can touch another volume or entries already stored: frames are
//! fully checked (header and body checksums, limits, volume, epoch) before the store sees
//! them.

use crate::store::{self, hex, ReadCursor, StoreError, Volumes};
use smlog_wire::auth::{fresh_nonce, Transcript};
use smlog_wire::conn::FrameReader;
use smlog_wire::format::{Version, VolumeId, MAX_BATCH_ENTRIES, MAX_BODY_BYTES};
use smlog_wire::message::{encode_frame_as, Frame, Message, Mode};
use smlog_wire::{ErrorCode, WireError};
use std::fmt;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A volume's store, shared by the connections that serve it.
type SharedStore = Arc<Mutex<store::VolumeStore>>;

/// A whole frame must arrive within this many stall periods.
const FRAME_STALLS: u32 = 4;

/// Limits on one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// An authenticated connection with no traffic for this long is dropped.
    pub idle_ms: u64,
    /// A frame that makes no progress for this long, a handshake not done in this time,
    /// or a peer that does not take our bytes for this long: the connection is dropped.
    pub stall_ms: u64,
}

/// Shared by all connections.
pub struct Agent {
    pub secret: Option<Vec<u8>>,
    pub volumes: Volumes,
    pub limits: Limits,
}

/// Why a connection ended.
#[derive(Debug)]
pub enum Hangup {
    PeerClosed,
    PeerError(String),
    Io(String),
    BadFrame(WireError),
    Idle(u64),
    Stalled(u64),
    SlowFrame(u64),
    HandshakeTimeout(u64),
    Protocol(String),
    AuthFailed(String),
    WrongVolume { expected: VolumeId, got: VolumeId },
    Fenced { ours: u64, current: u64 },
    Gap { expected: u64, got: u64 },
    Storage(String),
    Corrupt(String),
}

impl fmt::Display for Hangup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hangup::PeerClosed => write!(f, "peer closed the connection"),
            Hangup::PeerError(r) => write!(f, "peer reported an error: {r}"),
            Hangup::Io(r) => write!(f, "I/O error: {r}"),
            Hangup::BadFrame(e) => write!(f, "bad frame: {e}"),
            Hangup::Idle(ms) => write!(f, "idle for more than {ms} ms"),
            Hangup::Stalled(ms) => write!(f, "stalled mid-frame for more than {ms} ms"),
            Hangup::SlowFrame(ms) => write!(f, "a frame took more than {ms} ms to arrive"),
            Hangup::HandshakeTimeout(ms) => write!(f, "no complete handshake within {ms} ms"),
            Hangup::Protocol(r) => write!(f, "protocol violation: {r}"),
            Hangup::AuthFailed(r) => write!(f, "authentication failed: {r}"),
            Hangup::WrongVolume { expected, got } => write!(
                f,
                "frame for another volume {} on a connection for volume {}",
                hex(got),
                hex(expected)
            ),
            Hangup::Fenced { ours, current } => write!(
                f,
                "fenced: connection epoch {ours} is older than the volume's epoch {current}"
            ),
            Hangup::Gap { expected, got } => write!(f, "gap: expected seq {expected}, got {got}"),
            Hangup::Storage(r) => write!(f, "storage error: {r}"),
            Hangup::Corrupt(r) => write!(f, "stored entries corrupt: {r}"),
        }
    }
}

impl Hangup {
    /// The Error frame to send the peer, if one is useful.
    fn error_frame(&self) -> Option<Message> {
        let (code, a, b) = match self {
            Hangup::PeerClosed | Hangup::PeerError(_) | Hangup::Io(_) => return None,
            Hangup::BadFrame(_) => (ErrorCode::BadFrame, 0, 0),
            Hangup::Idle(_)
            | Hangup::Stalled(_)
            | Hangup::SlowFrame(_)
            | Hangup::HandshakeTimeout(_) => (ErrorCode::Protocol, 0, 0),
            Hangup::Protocol(_) => (ErrorCode::Protocol, 0, 0),
            Hangup::AuthFailed(_) => (ErrorCode::AuthFailed, 0, 0),
            Hangup::WrongVolume { .. } => (ErrorCode::WrongVolume, 0, 0),
            Hangup::Fenced { current, ours } => (ErrorCode::Fenced, *current, *ours),
            Hangup::Gap { expected, got } => (ErrorCode::Gap, *expected, *got),
            Hangup::Storage(_) => (ErrorCode::Storage, 0, 0),
            Hangup::Corrupt(_) => (ErrorCode::Corrupt, 0, 0),
        };
        Some(Message::Error {
            code,
            a,
            b,
            reason: self.to_string(),
        })
    }

    fn is_normal(&self) -> bool {
        matches!(self, Hangup::PeerClosed)
    }
}

fn from_store(e: StoreError) -> Hangup {
    match e {
        StoreError::Gap { expected, got } => Hangup::Gap { expected, got },
        StoreError::Fenced { ours, current } => Hangup::Fenced { ours, current },
        StoreError::Corrupt { .. } => Hangup::Corrupt(e.to_string()),
        StoreError::Io { .. } | StoreError::Poisoned(_) | StoreError::TooManyVolumes { .. } => {
            Hangup::Storage(e.to_string())
        }
    }
}

/// Serves one connection to its end and logs why it ended.
pub fn serve(agent: &Agent, stream: TcpStream, peer: SocketAddr) {
    let mut session = Session::new(agent, stream, peer);
    let result = session.run();
    let who = session.describe();
    match result {
        Ok(()) => log::info!("{who}: closed"),
        Err(h) if h.is_normal() => log::info!("{who}: {h}"),
        Err(h) => {
            log::warn!("{who}: dropping connection: {h}");
            if let Some(frame) = h.error_frame() {
                let volume = session.volume_id.unwrap_or([0; 16]);
                let _ = session.send(&volume, &frame);
            }
        }
    }
    let _ = session.stream.shutdown(Shutdown::Both);
}

struct Session<'a> {
    agent: &'a Agent,
    stream: TcpStream,
    peer: SocketAddr,
    reader: FrameReader,
    out: Vec<u8>,
    volume_id: Option<VolumeId>,
    node: Option<String>,
    epoch: u64,
    mode: Mode,
    authenticated: bool,
    heartbeat: Duration,
    started: Instant,
    last_rx: Instant,
    last_tx: Instant,
    /// When the partial frame now buffered began to arrive.
    frame_started: Option<Instant>,
    /// The wire version of the Hello; every frame after it must have the same.
    version: Version,
    pending_ack: Option<u64>,
    /// The last Ack sent: its through and durable seqs (an Ack goes out on its own when the
    /// volume became durable beyond it).
    acked: Option<(u64, Option<u64>)>,
    /// The highest seq a `Sync` asked for and not answered yet.
    sync_wanted: Option<u64>,
}

impl<'a> Session<'a> {
    fn new(agent: &'a Agent, stream: TcpStream, peer: SocketAddr) -> Session<'a> {
        let now = Instant::now();
        Session {
            agent,
            stream,
            peer,
            reader: FrameReader::new(),
            out: Vec::new(),
            volume_id: None,
            node: None,
            epoch: 0,
            mode: Mode::Reader,
            authenticated: false,
            heartbeat: Duration::from_millis(1000),
            started: now,
            last_rx: now,
            last_tx: now,
            frame_started: None,
            // Until the Hello says otherwise, errors go out in the version every peer reads.
            version: Version::OLDEST,
            pending_ack: None,
            acked: None,
            sync_wanted: None,
        }
    }

    fn describe(&self) -> String {
        match (&self.node, &self.volume_id) {
            // The node name comes from the peer: escaped, so it cannot forge log lines.
            (Some(node), Some(v)) => format!(
                "{} (node {}, volume {})",
                self.peer,
                node.escape_debug(),
                hex(v)
            ),
            _ => format!("{}", self.peer),
        }
    }

    fn limits(&self) -> Limits {
        self.agent.limits
    }

    fn send(&mut self, volume_id: &VolumeId, message: &Message) -> Result<(), Hangup> {
        self.out.clear();
        encode_frame_as(self.version, volume_id, message, &mut self.out);
        match (&self.stream).write_all(&self.out) {
            Ok(()) => {
                self.last_tx = Instant::now();
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(Hangup::Io(format!(
                    "peer took no bytes for {} ms",
                    self.limits().stall_ms
                )))
            }
            Err(e) => Err(Hangup::Io(format!("write: {e}"))),
        }
    }

    /// The Ack for `through`, with how far the volume is durable where the version says it.
    fn send_ack(
        &mut self,
        volume: &VolumeId,
        through: u64,
        store: Option<&Mutex<store::VolumeStore>>,
    ) -> Result<(), Hangup> {
        let durable = match store {
            Some(st) if self.version.has_durable_acks() => {
                // Another writer of the volume may have taken it beyond this connection's.
                store::lock(st).durable_through().map(|d| d.min(through))
            }
            _ => None,
        };
        self.send(
            volume,
            &Message::Ack {
                through_seq: through,
                durable_seq: durable,
            },
        )?;
        self.acked = Some((through, durable));
        Ok(())
    }

    /// Sends an Ack when the volume became durable beyond the last Ack's durable seq, so
    /// that a client learns of a background sync without asking.
    fn report_durable(
        &mut self,
        volume: &VolumeId,
        store: Option<&Mutex<store::VolumeStore>>,
    ) -> Result<(), Hangup> {
        let (Some(st), Some((through, reported))) = (store, self.acked) else {
            return Ok(());
        };
        if !self.version.has_durable_acks() || reported >= Some(through) {
            return Ok(());
        }
        let durable = store::lock(st).durable_through().map(|d| d.min(through));
        if durable > reported {
            self.send_ack(volume, through, store)?;
        }
        Ok(())
    }

    /// The next frame, sending due acks and heartbeats while waiting, and enforcing the
    /// idle, stall and handshake limits. `store` is the volume's, once the handshake found it.
    fn next_frame(&mut self, store: Option<&Mutex<store::VolumeStore>>) -> Result<Frame, Hangup> {
        let limits = self.limits();
        let stall = Duration::from_millis(limits.stall_ms);
        let idle = Duration::from_millis(limits.idle_ms);
        let waiting_since = Instant::now();
        loop {
            if let Some(frame) = self.reader.next_buffered().map_err(Hangup::BadFrame)? {
                if let Some(expected) = self.volume_id {
                    if frame.volume_id != expected {
                        return Err(Hangup::WrongVolume {
                            expected,
                            got: frame.volume_id,
                        });
                    }
                    if frame.version != self.version {
                        return Err(Hangup::Protocol(format!(
                            "a wire version {} frame on a version {} connection",
                            frame.version.as_u16(),
                            self.version.as_u16()
                        )));
                    }
                }
                self.frame_started = self.reader.mid_frame().then(Instant::now);
                return Ok(frame);
            }
            // Nothing complete is buffered: acknowledge before waiting, so that acks
            // cover every frame that arrived together.
            if let (Some(through), Some(volume)) = (self.pending_ack.take(), self.volume_id) {
                self.send_ack(&volume, through, store)?;
            } else if let Some(volume) = self.volume_id {
                self.report_durable(&volume, store)?;
            }
            let now = Instant::now();
            if !self.authenticated && now - self.started > stall {
                return Err(Hangup::HandshakeTimeout(limits.stall_ms));
            }
            // A peer trickling a frame a byte at a time makes progress but must not hold
            // a connection forever: a whole frame gets FRAME_STALLS stall periods.
            let frame_limit = stall * FRAME_STALLS;
            if self.frame_started.is_some_and(|t| now - t > frame_limit) {
                return Err(Hangup::SlowFrame(frame_limit.as_millis() as u64));
            }
            if let (true, Some(volume)) = (self.authenticated, self.volume_id) {
                if now - self.last_tx >= self.heartbeat {
                    let stamp_us = self.started.elapsed().as_micros() as u64;
                    self.send(
                        &volume,
                        &Message::Heartbeat {
                            stamp_us,
                            reply: false,
                        },
                    )?;
                }
            }
            match self.reader.fill(&mut &self.stream) {
                Ok(0) if self.reader.mid_frame() => {
                    return Err(Hangup::Protocol(
                        "peer closed the connection mid-frame".into(),
                    ))
                }
                Ok(0) => return Err(Hangup::PeerClosed),
                Ok(_) => {
                    self.last_rx = Instant::now();
                    if self.frame_started.is_none() && self.reader.mid_frame() {
                        self.frame_started = Some(self.last_rx);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    // Silence is measured only while we wait: time spent serving the
                    // previous frame (a long read-back) is not the peer's silence.
                    let now = Instant::now();
                    let silent = now - self.last_rx.max(waiting_since);
                    if self.reader.mid_frame() && silent > stall {
                        return Err(Hangup::Stalled(limits.stall_ms));
                    }
                    if silent > idle {
                        return Err(Hangup::Idle(limits.idle_ms));
                    }
                }
                Err(e) => return Err(Hangup::Io(format!("read: {e}"))),
            }
        }
    }

    fn run(&mut self) -> Result<(), Hangup> {
        let limits = self.limits();
        // Reads wake up at least this often to check limits and send heartbeats.
        let tick_ms = (limits.stall_ms.min(limits.idle_ms) / 4).clamp(10, 250);
        let setup = |s: &TcpStream| -> io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_millis(tick_ms)))?;
            s.set_write_timeout(Some(Duration::from_millis(limits.stall_ms)))
        };
        setup(&self.stream).map_err(|e| Hangup::Io(format!("socket setup: {e}")))?;
        let (volume_id, mut store) = self.handshake()?;
        loop {
            let frame = self.next_frame(store.as_deref())?;
            match frame.message {
                Message::Append { entries } => {
                    let store = self.writer_only("Append", &store)?;
                    let mut s = store::lock(store);
                    self.not_fenced(s.epoch())?;
                    if let Some(held) = s.append(&entries).map_err(from_store)? {
                        self.pending_ack = Some(held);
                    }
                    if s.wants_sync() {
                        self.agent.volumes.kick_sync();
                    }
                }
                Message::Checkpoint { through_seq } => {
                    let store = self.writer_only("Checkpoint", &store)?;
                    let mut s = store::lock(store);
                    self.not_fenced(s.epoch())?;
                    s.checkpoint(through_seq).map_err(from_store)?;
                    self.pending_ack = s.held_through();
                }
                Message::Sync { through_seq } => {
                    let store = self.writer_only("Sync", &store)?;
                    self.not_fenced(store::lock(store).epoch())?;
                    self.sync_wanted = self.sync_wanted.max(Some(through_seq));
                }
                Message::ReadBack { after_seq } => {
                    self.read_back(&volume_id, store.as_deref(), after_seq)?
                }
                Message::Heartbeat {
                    stamp_us,
                    reply: false,
                } => {
                    // A writer whose volume was taken over learns it at its next heartbeat,
                    // not only at its next write: it stops writing and lets the peer mount.
                    if let (Mode::Writer, Some(st)) = (self.mode, store.as_deref()) {
                        self.not_fenced(store::lock(st).epoch())?;
                    }
                    self.send(
                        &volume_id,
                        &Message::Heartbeat {
                            stamp_us,
                            reply: true,
                        },
                    )?
                }
                Message::Heartbeat { reply: true, .. } => {}
                Message::RaiseEpoch { epoch } => {
                    if store.is_none() {
                        store = self
                            .agent
                            .volumes
                            .get(volume_id, true)
                            .map_err(from_store)?;
                    }
                    let Some(raised) = store.as_deref() else {
                        return Err(Hangup::Storage("volume could not be created".into()));
                    };
                    let current = {
                        let mut s = store::lock(raised);
                        s.raise_epoch(epoch).map_err(from_store)?;
                        s.epoch()
                    };
                    log::info!("{}: epoch raised to {current}", self.describe());
                    self.send(&volume_id, &Message::EpochRaised { epoch: current })?;
                }
                Message::Error { reason, .. } => return Err(Hangup::PeerError(reason)),
                other => {
                    return Err(Hangup::Protocol(format!(
                        "{:?} frame not expected from a client",
                        other.kind()
                    )))
                }
            }
            if let (Some(wanted), Some(st)) = (self.sync_wanted, store.as_deref()) {
                self.serve_sync(st, wanted)?;
            }
        }
    }

    /// Answers a `Sync` once the volume holds `wanted` (until then it waits for the appends
    /// that bring it): waits for the volume to be durable through it, then acknowledges.
    fn serve_sync(&mut self, st: &Mutex<store::VolumeStore>, wanted: u64) -> Result<(), Hangup> {
        let held = store::lock(st).held_through();
        if held.is_none_or(|h| h < wanted) {
            return Ok(());
        }
        let limit = Duration::from_millis(self.limits().stall_ms) * FRAME_STALLS;
        let durable = self
            .agent
            .volumes
            .make_durable(st, wanted, limit)
            .map_err(from_store)?;
        if !durable {
            return Err(Hangup::Storage(format!(
                "the disk did not finish a sync within {} ms",
                limit.as_millis()
            )));
        }
        self.sync_wanted = None;
        self.pending_ack = store::lock(st).held_through();
        Ok(())
    }

    /// Refuses to go on for a connection whose epoch is below the volume's `current` one:
    /// its node was fenced by a takeover.
    fn not_fenced(&self, current: u64) -> Result<(), Hangup> {
        if self.epoch < current {
            return Err(Hangup::Fenced {
                ours: self.epoch,
                current,
            });
        }
        Ok(())
    }

    /// The store, for a frame only a writer may send (a writer's store always exists).
    fn writer_only<'s>(
        &self,
        what: &str,
        store: &'s Option<SharedStore>,
    ) -> Result<&'s Mutex<store::VolumeStore>, Hangup> {
        match (self.mode, store.as_deref()) {
            (Mode::Writer, Some(store)) => Ok(store),
            (Mode::Writer, None) => Err(Hangup::Storage("writer without a store".into())),
            (Mode::Reader, _) => Err(Hangup::Protocol(format!(
                "{what} on a read-only connection"
            ))),
        }
    }

    fn handshake(&mut self) -> Result<(VolumeId, Option<SharedStore>), Hangup> {
        let hello = self.next_frame(None)?;
        let volume_id = hello.volume_id;
        self.version = hello.version;
        let Message::Hello {
            epoch,
            mode,
            heartbeat_ms,
            client_nonce,
            node,
        } = hello.message
        else {
            return Err(Hangup::Protocol(format!(
                "expected Hello, got {:?}",
                hello.message.kind()
            )));
        };
        if node.is_empty() {
            return Err(Hangup::Protocol("empty node name".into()));
        }
        self.volume_id = Some(volume_id);
        self.node = Some(node.clone());
        self.epoch = epoch;
        self.mode = mode;
        self.heartbeat = Duration::from_millis(u64::from(heartbeat_ms).clamp(50, 60_000));
        if let Some(secret) = self.agent.secret.clone() {
            let agent_nonce = fresh_nonce().map_err(|e| Hangup::Io(format!("nonce: {e}")))?;
            let transcript = Transcript {
                volume_id: &volume_id,
                node: &node,
                epoch,
                mode,
                client_nonce: &client_nonce,
                agent_nonce: &agent_nonce,
            };
            let challenge = Message::Challenge {
                agent_nonce,
                agent_proof: transcript.agent_proof(&secret),
            };
            self.send(&volume_id, &challenge)?;
            match self.next_frame(None)?.message {
                Message::Proof { client_proof } => {
                    if !transcript.verify_client(&secret, &client_proof) {
                        return Err(Hangup::AuthFailed(
                            "client proof does not match the agent's secret (secret mismatch)"
                                .into(),
                        ));
                    }
                }
                Message::Error { reason, .. } => {
                    return Err(Hangup::AuthFailed(format!(
                        "client refused our proof: {reason}"
                    )))
                }
                other => {
                    return Err(Hangup::AuthFailed(format!(
                        "expected Proof, got {:?}",
                        other.kind()
                    )))
                }
            }
        }
        self.authenticated = true;
        let store = self
            .agent
            .volumes
            .get(volume_id, mode == Mode::Writer)
            .map_err(from_store)?;
        let welcome = match store.as_deref() {
            // A reader of a volume never seen: nothing stored, nothing created.
            None => Message::Welcome {
                epoch: 0,
                next_seq: None,
                checkpoint_through: None,
            },
            Some(store) => {
                let mut s = store::lock(store);
                if mode == Mode::Writer {
                    if epoch < s.epoch() {
                        return Err(Hangup::Fenced {
                            ours: epoch,
                            current: s.epoch(),
                        });
                    }
                    s.raise_epoch(epoch).map_err(from_store)?;
                }
                Message::Welcome {
                    epoch: s.epoch(),
                    next_seq: s.next_seq(),
                    checkpoint_through: s.checkpoint_through(),
                }
            }
        };
        log::info!("{}: {mode:?} connected, epoch {epoch}", self.describe());
        self.send(&volume_id, &welcome)?;
        Ok((volume_id, store))
    }

    /// Streams every entry after `after_seq` in Entries frames, then the end marker. The
    /// store is locked per chunk only, so appends from other connections go on.
    fn read_back(
        &mut self,
        volume_id: &VolumeId,
        store: Option<&Mutex<store::VolumeStore>>,
        after_seq: u64,
    ) -> Result<(), Hangup> {
        let mut cursor = ReadCursor::after(after_seq);
        let mut sent = 0u64;
        let mut through = after_seq;
        while let Some(store) = store {
            let chunk = store::lock(store)
                .read_chunk(&mut cursor, MAX_BODY_BYTES, MAX_BATCH_ENTRIES)
                .map_err(from_store)?;
            let Some(last) = chunk.last() else { break };
            through = last.0;
            sent += chunk.len() as u64;
            self.send(volume_id, &Message::Entries { entries: chunk })?;
        }
        log::info!(
            "{}: read back {sent} entries after seq {after_seq}",
            self.describe()
        );
        self.send(
            volume_id,
            &Message::ReadEnd {
                entries_sent: sent,
                through_seq: through,
            },
        )
    }
}

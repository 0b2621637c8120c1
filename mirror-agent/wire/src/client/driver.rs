//! The client's threads: the driver (sends, reconnects) and one reader per connection
//! (acks, heartbeats, errors), meeting in `State`.

use super::handshake::{io_error, open_any, read_frame, refusal, Session};
use super::{MirrorConfig, MirrorError};
use crate::conn::FrameReader;
use crate::format::*;
use crate::message::{batch_entry_bytes, encode_batch, seal_frame, Message, Mode};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes the driver writes in one go before it looks at its state again.
const SEND_BURST_BYTES: usize = 4 * 1024 * 1024;
/// Pause between rounds of reconnect attempts: doubles from the first to the last.
const RECONNECT_FIRST_MS: u64 = 50;
const RECONNECT_LAST_MS: u64 = 1000;

#[derive(Default)]
pub(super) struct State {
    pub(super) queue: VecDeque<(u64, Vec<u8>)>,
    pub(super) queue_bytes: usize,
    pub(super) last_submitted: Option<u64>,
    pub(super) acked: Option<u64>,
    /// Highest seq the agent reported on its disk; never above `acked`.
    pub(super) durable: Option<u64>,
    /// Highest seq a `wait_durable` asked for, and the highest Sync sent on the current
    /// connection (the agent forgets a Sync with its connection, so it is sent again).
    pub(super) sync_wanted: Option<u64>,
    pub(super) sync_sent: Option<u64>,
    /// Highest seq written on the current connection.
    pub(super) sent_through: Option<u64>,
    pub(super) checkpoint_wanted: Option<u64>,
    pub(super) checkpoint_sent: Option<u64>,
    pub(super) echo_pending: Option<u64>,
    pub(super) connected: bool,
    /// Counts connections; a reader thread acts only on the generation it was started for.
    pub(super) generation: u64,
    pub(super) stream: Option<TcpStream>,
    pub(super) route: Option<SocketAddr>,
    pub(super) rtt_us: u64,
    /// `last_submitted` when the current connection was made.
    pub(super) resync_through: Option<u64>,
    /// A resynchronisation in progress: its first seq and when it started (logged when it
    /// starts and when the agent acknowledged `resync_through`).
    pub(super) resync_started: Option<(u64, Instant)>,
    pub(super) reconnects: u64,
    pub(super) fatal: Option<MirrorError>,
    pub(super) last_error: Option<String>,
    pub(super) closing: bool,
}

impl State {
    /// Takes an acknowledgement: the agent holds every seq up to `through`, and has every
    /// seq up to `durable` on its disk.
    pub(super) fn ack_through(&mut self, through: u64, durable: Option<u64>) {
        if let Some(d) = durable {
            if self.durable.is_none_or(|old| old < d) {
                self.durable = Some(d);
            }
        }
        if self.acked.is_some_and(|a| a >= through) {
            return;
        }
        self.acked = Some(through);
        if let (Some((first, started)), Some(target)) = (self.resync_started, self.resync_through) {
            if through >= target {
                self.resync_started = None;
                log::info!(
                    "mirror: resynchronised: the agent holds every entry through seq {target} ({} entries resent in {} ms)",
                    target + 1 - first,
                    started.elapsed().as_millis()
                );
            }
        }
        while let Some((seq, bytes)) = self.queue.front() {
            if *seq > through {
                break;
            }
            self.queue_bytes -= bytes.len();
            self.queue.pop_front();
        }
    }
}

pub(super) struct Shared {
    pub(super) cfg: MirrorConfig,
    pub(super) state: Mutex<State>,
    /// Waiters for acknowledgements (and for failures) wait on this one…
    pub(super) changed: Condvar,
    /// …the driver on this one (something to send), so that neither wakes the other for
    /// nothing: with several writers waiting, an ack used to wake the driver and every
    /// submit every waiter.
    pub(super) work: Condvar,
    pub(super) clock: Instant,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in another thread holding the lock is a bug; the state is still
        // consistent enough to report, so take it rather than panic again.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the driver and every waiter (connection or failure news).
    pub(super) fn wake_all(&self) {
        self.changed.notify_all();
        self.work.notify_all();
    }

    pub(super) fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    /// Marks connection `generation` as lost, once; the driver then reconnects.
    pub(super) fn lose(&self, generation: u64, reason: String) {
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
        self.wake_all();
    }
}

/// Records a new connection in the state and starts its reader thread.
/// Returns the driver's write handle and the reader thread.
pub(super) fn install(
    shared: &Arc<Shared>,
    session: Session,
) -> io::Result<(TcpStream, JoinHandle<()>)> {
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
        st.sync_sent = None;
        st.echo_pending = None;
        st.resync_through = st.last_submitted;
        st.resync_started = None;
        if let Some(next) = welcome.next_seq {
            if let Some(held) = next.checked_sub(1) {
                st.ack_through(held, None);
            }
        }
        let acked = st.acked.unwrap_or(0);
        if let Some(target) = st.resync_through.filter(|&t| t > acked) {
            st.resync_started = Some((acked + 1, Instant::now()));
            log::info!(
                "mirror: resynchronising the agent: seq {}..={target} to send again",
                acked + 1
            );
        }
        shared.wake_all();
        st.generation
    };
    log::info!("mirror: connected via {route}");
    let reader_shared = Arc::clone(shared);
    let handle = std::thread::Builder::new()
        .name("mirror-reader".into())
        .spawn(move || read_loop(reader_shared, generation, stream, reader, route))?;
    Ok((writer, handle))
}

pub(super) fn read_loop(
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
            Message::Ack {
                through_seq,
                durable_seq,
            } => {
                let mut st = shared.lock();
                if st.generation == generation {
                    st.ack_through(through_seq, durable_seq);
                    shared.changed.notify_all();
                }
            }
            Message::Heartbeat {
                stamp_us,
                reply: false,
            } => {
                let mut st = shared.lock();
                st.echo_pending = Some(stamp_us);
                shared.work.notify_one();
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
pub(super) fn drive(
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
                            shared.wake_all();
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
                    shared.wake_all();
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
                            .work
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
        // After the appends it covers, so that the agent has them when it reads it (it
        // waits for any it has not received).
        if let Some(w) = st.sync_wanted {
            if st.durable.is_none_or(|d| d < w) && st.sync_sent.is_none_or(|s| s < w) {
                crate::message::encode_frame(
                    volume_id,
                    &Message::Sync { through_seq: w },
                    &mut out,
                );
                st.sync_sent = Some(w);
            }
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
                .work
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

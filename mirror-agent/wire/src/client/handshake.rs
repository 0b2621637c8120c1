//! Connecting to one route and the handshake, shared by the driver, read-back and
//! epoch raising.

use super::{MirrorConfig, MirrorError};
use crate::auth::{fresh_nonce, Transcript};
use crate::conn::{write_frame, FrameReader};
use crate::error::ErrorCode;
use crate::format::Version;
use crate::message::{Frame, Message, Mode};
use std::io;
use std::net::{SocketAddr, TcpStream};

/// The agent's state of the volume, from its Welcome.
#[derive(Debug, Clone, Copy)]
pub(super) struct Welcome {
    pub(super) next_seq: Option<u64>,
}

pub(super) struct Session {
    pub(super) stream: TcpStream,
    pub(super) reader: FrameReader,
    pub(super) route: SocketAddr,
    pub(super) welcome: Welcome,
}

pub(super) fn io_error(route: SocketAddr, what: &str, e: io::Error) -> MirrorError {
    let reason = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("{what}: timed out"),
        _ => format!("{what}: {e}"),
    };
    MirrorError::Io { route, reason }
}

/// Reads one whole frame, waiting at most the stream's read timeout for each piece.
pub(super) fn read_frame(
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

/// A frame the agent had no business sending at this point of the exchange (`during`).
pub(super) fn unexpected(message: &Message, during: &str) -> MirrorError {
    MirrorError::Protocol(format!("unexpected {:?} frame {during}", message.kind()))
}

/// Turns an agent's Error frame into our error.
pub(super) fn refusal(
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
pub(super) fn open_session(
    cfg: &MirrorConfig,
    route: SocketAddr,
    mode: Mode,
) -> Result<Session, MirrorError> {
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
            // An agent that does not know our version refuses our Hello as a bad frame, in
            // the version it speaks; an agent that knows it never calls our Hello bad.
            Message::Error {
                code: ErrorCode::BadFrame,
                reason,
                ..
            } if frame.version < Version::CURRENT => {
                return Err(MirrorError::AgentTooOld { route, reason })
            }
            Message::Error { code, a, b, reason } => {
                return Err(refusal(cfg, route, code, a, b, reason))
            }
            other => return Err(unexpected(&other, "during the handshake")),
        }
    }
}

/// Tries every route once, starting at `first`; returns the index of the route that worked.
pub(super) fn open_any(
    cfg: &MirrorConfig,
    mode: Mode,
    first: usize,
) -> Result<(usize, Session), MirrorError> {
    cfg.check()?;
    let n = cfg.routes.len();
    let mut failures = Vec::new();
    // An agent that answered and refused is reachable: say that, not "unreachable".
    let mut refused = None;
    for k in 0..n {
        let i = (first + k) % n;
        match open_session(cfg, cfg.routes[i], mode) {
            Ok(session) => return Ok((i, session)),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                if let MirrorError::Refused { code, .. } = &e {
                    refused.get_or_insert(*code);
                    failures.push(format!("{}: {e}", cfg.routes[i]));
                } else {
                    failures.push(e.to_string());
                }
            }
        }
    }
    match refused {
        Some(code) => Err(MirrorError::Refused {
            code,
            reason: failures.join("; "),
        }),
        None => Err(MirrorError::Unreachable(failures.join("; "))),
    }
}

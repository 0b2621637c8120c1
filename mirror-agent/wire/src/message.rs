//! Frame bodies: one `Message` per `FrameKind`, and the frame codec around them.
//!
//! Body layouts (little-endian; sizes in bytes):
//!
//! ```text
//! Hello       epoch 8 | mode 1 | reserved 1 (=0) | node_len 2 | heartbeat_ms 4
//!             | client_nonce 32 | node node_len (UTF-8, <= MAX_NODE_BYTES)
//! Challenge   agent_nonce 32 | agent_proof 32
//! Proof       client_proof 32
//! Welcome     epoch 8 | flags 1 (bit0 next_seq set, bit1 checkpoint set) | reserved 7 (=0)
//!             | next_seq 8 | checkpoint_through 8        (a value flagged absent is 0)
//! Append      count 4 | count x (seq 8 | len 4 | bytes len)      (count >= 1)
//! Entries     same as Append (count may be 0)
//! Ack   (v1)  through_seq 8
//! Ack   (v2)  through_seq 8 | flags 1 (bit0 durable_seq set) | reserved 7 (=0) | durable_seq 8
//!             (durable_seq <= through_seq; 0 when flagged absent)
//! ReadBack    after_seq 8
//! ReadEnd     entries_sent 8 | through_seq 8
//! Checkpoint  through_seq 8
//! Heartbeat   stamp_us 8 | reply 1 (0 = ping, 1 = echo)
//! RaiseEpoch  epoch 8
//! EpochRaised epoch 8
//! Error       code 2 | reason_len 2 | a 8 | b 8 | reason reason_len (UTF-8)
//!             (a code this build does not name is kept as `ErrorCode::Unknown`)
//! Sync  (v2)  through_seq 8
//! ```
//!
//! Only the Ack's layout differs between versions; a frame carries its version
//! (`Frame::version`) so that it re-encodes to the bytes it came from.
//!
//! The decoder accepts exactly one encoding of each message: every frame it accepts
//! re-encodes to the bytes it came from (`tests/fuzz_decoder.rs` and the cargo-fuzz target
//! check this).

use crate::error::{ErrorCode, WireError};
use crate::format::*;

/// What a connection is for. A writer is fenced at the handshake when its epoch is older
/// than the volume's; a reader (read-back, epoch raise) is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Writer = 0,
    Reader = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello {
        epoch: u64,
        mode: Mode,
        heartbeat_ms: u32,
        client_nonce: [u8; NONCE_BYTES],
        node: String,
    },
    Challenge {
        agent_nonce: [u8; NONCE_BYTES],
        agent_proof: [u8; PROOF_BYTES],
    },
    Proof {
        client_proof: [u8; PROOF_BYTES],
    },
    Welcome {
        epoch: u64,
        /// The seq the agent expects next; `None` when it holds nothing for the volume yet
        /// (then any first seq is accepted).
        next_seq: Option<u64>,
        checkpoint_through: Option<u64>,
    },
    Append {
        entries: Vec<(u64, Vec<u8>)>,
    },
    Entries {
        entries: Vec<(u64, Vec<u8>)>,
    },
    /// `through_seq`: the agent holds every seq up to it (received, cumulative).
    /// `durable_seq`: every seq up to it is on the agent's disk; `None` while nothing is
    /// (and always in version 1, whose Ack cannot say it).
    Ack {
        through_seq: u64,
        durable_seq: Option<u64>,
    },
    /// Asks the agent to make every seq up to `through_seq` durable and to answer with an
    /// Ack once it is (version 2 on).
    Sync {
        through_seq: u64,
    },
    ReadBack {
        after_seq: u64,
    },
    ReadEnd {
        entries_sent: u64,
        through_seq: u64,
    },
    Checkpoint {
        through_seq: u64,
    },
    Heartbeat {
        stamp_us: u64,
        reply: bool,
    },
    RaiseEpoch {
        epoch: u64,
    },
    EpochRaised {
        epoch: u64,
    },
    Error {
        code: ErrorCode,
        a: u64,
        b: u64,
        reason: String,
    },
}

impl Message {
    pub fn kind(&self) -> FrameKind {
        match self {
            Message::Hello { .. } => FrameKind::Hello,
            Message::Challenge { .. } => FrameKind::Challenge,
            Message::Proof { .. } => FrameKind::Proof,
            Message::Welcome { .. } => FrameKind::Welcome,
            Message::Append { .. } => FrameKind::Append,
            Message::Entries { .. } => FrameKind::Entries,
            Message::Ack { .. } => FrameKind::Ack,
            Message::ReadBack { .. } => FrameKind::ReadBack,
            Message::ReadEnd { .. } => FrameKind::ReadEnd,
            Message::Checkpoint { .. } => FrameKind::Checkpoint,
            Message::Heartbeat { .. } => FrameKind::Heartbeat,
            Message::RaiseEpoch { .. } => FrameKind::RaiseEpoch,
            Message::EpochRaised { .. } => FrameKind::EpochRaised,
            Message::Error { .. } => FrameKind::Error,
            Message::Sync { .. } => FrameKind::Sync,
        }
    }

    /// Appends this message's body, in the current version, to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        self.encode_body_as(Version::CURRENT, out)
    }

    /// Appends this message's body, as `version` lays it out, to `out`. Sizes beyond the
    /// limits, a message the version lacks and an Ack whose durable seq is beyond its
    /// received one are programmer errors on the sending side, so they are asserted.
    pub fn encode_body_as(&self, version: Version, out: &mut Vec<u8>) {
        assert!(
            version.has_kind(self.kind()),
            "{:?} does not exist in wire version {}",
            self.kind(),
            version.as_u16()
        );
        match self {
            Message::Hello {
                epoch,
                mode,
                heartbeat_ms,
                client_nonce,
                node,
            } => {
                assert!(node.len() <= MAX_NODE_BYTES, "node name too long");
                out.extend_from_slice(&epoch.to_le_bytes());
                out.push(*mode as u8);
                out.push(0);
                out.extend_from_slice(&(node.len() as u16).to_le_bytes());
                out.extend_from_slice(&heartbeat_ms.to_le_bytes());
                out.extend_from_slice(client_nonce);
                out.extend_from_slice(node.as_bytes());
            }
            Message::Challenge {
                agent_nonce,
                agent_proof,
            } => {
                out.extend_from_slice(agent_nonce);
                out.extend_from_slice(agent_proof);
            }
            Message::Proof { client_proof } => out.extend_from_slice(client_proof),
            Message::Welcome {
                epoch,
                next_seq,
                checkpoint_through,
            } => {
                out.extend_from_slice(&epoch.to_le_bytes());
                let flags = next_seq.is_some() as u8 | (checkpoint_through.is_some() as u8) << 1;
                encode_flags(flags, out);
                out.extend_from_slice(&next_seq.unwrap_or(0).to_le_bytes());
                out.extend_from_slice(&checkpoint_through.unwrap_or(0).to_le_bytes());
            }
            Message::Append { entries } | Message::Entries { entries } => {
                encode_batch(entries.iter().map(|(s, b)| (*s, b.as_slice())), out)
            }
            Message::Ack {
                through_seq,
                durable_seq,
            } => {
                out.extend_from_slice(&through_seq.to_le_bytes());
                if version.has_durable_acks() {
                    assert!(
                        durable_seq.is_none_or(|d| d <= *through_seq),
                        "durable_seq beyond through_seq"
                    );
                    encode_flags(durable_seq.is_some() as u8, out);
                    out.extend_from_slice(&durable_seq.unwrap_or(0).to_le_bytes());
                } else {
                    assert!(durable_seq.is_none(), "a version 1 Ack has no durable_seq");
                }
            }
            Message::Checkpoint { through_seq }
            | Message::Sync { through_seq }
            | Message::ReadBack {
                after_seq: through_seq,
            }
            | Message::RaiseEpoch { epoch: through_seq }
            | Message::EpochRaised { epoch: through_seq } => {
                out.extend_from_slice(&through_seq.to_le_bytes())
            }
            Message::ReadEnd {
                entries_sent,
                through_seq,
            } => {
                out.extend_from_slice(&entries_sent.to_le_bytes());
                out.extend_from_slice(&through_seq.to_le_bytes());
            }
            Message::Heartbeat { stamp_us, reply } => {
                out.extend_from_slice(&stamp_us.to_le_bytes());
                out.push(*reply as u8);
            }
            Message::Error { code, a, b, reason } => {
                let reason = truncate_utf8(reason, MAX_REASON_BYTES);
                let raw = code.as_u16();
                assert_eq!(
                    ErrorCode::from_u16(raw),
                    *code,
                    "ErrorCode::Unknown holds a code that has a name"
                );
                out.extend_from_slice(&raw.to_le_bytes());
                out.extend_from_slice(&(reason.len() as u16).to_le_bytes());
                out.extend_from_slice(&a.to_le_bytes());
                out.extend_from_slice(&b.to_le_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
        }
    }

    /// Decodes a body of the current version.
    pub fn decode_body(kind: FrameKind, body: &[u8]) -> Result<Message, WireError> {
        Self::decode_body_as(Version::CURRENT, kind, body)
    }

    /// Decodes a body as `version` lays it out. The header decoder has already refused a
    /// kind the version lacks; this refuses it too, for callers that skip the header.
    pub fn decode_body_as(
        version: Version,
        kind: FrameKind,
        body: &[u8],
    ) -> Result<Message, WireError> {
        if !version.has_kind(kind) {
            return Err(WireError::KindNotInVersion {
                kind: kind as u8,
                version: version.as_u16(),
            });
        }
        let mut r = BodyReader {
            kind: kind_name(kind),
            body,
            at: 0,
        };
        let msg = match kind {
            FrameKind::Hello => {
                let epoch = r.u64("epoch")?;
                let mode = match r.u8("mode")? {
                    0 => Mode::Writer,
                    1 => Mode::Reader,
                    _ => return Err(r.malformed("unknown mode")),
                };
                if r.u8("reserved")? != 0 {
                    return Err(r.malformed("reserved byte set"));
                }
                let node_len = r.u16("node_len")? as usize;
                if node_len > MAX_NODE_BYTES {
                    return Err(r.malformed("node name longer than MAX_NODE_BYTES"));
                }
                let heartbeat_ms = r.u32("heartbeat_ms")?;
                let client_nonce = r.array("client_nonce")?;
                let node = r.utf8(node_len, "node name")?;
                Message::Hello {
                    epoch,
                    mode,
                    heartbeat_ms,
                    client_nonce,
                    node,
                }
            }
            FrameKind::Challenge => Message::Challenge {
                agent_nonce: r.array("agent_nonce")?,
                agent_proof: r.array("agent_proof")?,
            },
            FrameKind::Proof => Message::Proof {
                client_proof: r.array("client_proof")?,
            },
            FrameKind::Welcome => {
                let epoch = r.u64("epoch")?;
                let flags = r.flags(0b11, "unknown Welcome flags")?;
                let next_seq = r.optional_u64(
                    "next_seq",
                    flags & 1 != 0,
                    "next_seq not zero while flagged absent",
                )?;
                let checkpoint_through = r.optional_u64(
                    "checkpoint_through",
                    flags & 2 != 0,
                    "checkpoint_through not zero while flagged absent",
                )?;
                Message::Welcome {
                    epoch,
                    next_seq,
                    checkpoint_through,
                }
            }
            FrameKind::Append => {
                let entries = decode_batch(&mut r)?;
                if entries.is_empty() {
                    return Err(r.malformed("Append with no entries"));
                }
                Message::Append { entries }
            }
            FrameKind::Entries => Message::Entries {
                entries: decode_batch(&mut r)?,
            },
            FrameKind::Ack => {
                let through_seq = r.u64("through_seq")?;
                let durable_seq = if version.has_durable_acks() {
                    let flags = r.flags(1, "unknown Ack flags")?;
                    let durable = r.optional_u64(
                        "durable_seq",
                        flags & 1 != 0,
                        "durable_seq not zero while flagged absent",
                    )?;
                    if durable.is_some_and(|d| d > through_seq) {
                        return Err(r.malformed("durable_seq beyond through_seq"));
                    }
                    durable
                } else {
                    None
                };
                Message::Ack {
                    through_seq,
                    durable_seq,
                }
            }
            FrameKind::Sync => Message::Sync {
                through_seq: r.u64("through_seq")?,
            },
            FrameKind::ReadBack => Message::ReadBack {
                after_seq: r.u64("after_seq")?,
            },
            FrameKind::ReadEnd => Message::ReadEnd {
                entries_sent: r.u64("entries_sent")?,
                through_seq: r.u64("through_seq")?,
            },
            FrameKind::Checkpoint => Message::Checkpoint {
                through_seq: r.u64("through_seq")?,
            },
            FrameKind::Heartbeat => {
                let stamp_us = r.u64("stamp_us")?;
                let reply = match r.u8("reply")? {
                    0 => false,
                    1 => true,
                    _ => return Err(r.malformed("reply flag not 0 or 1")),
                };
                Message::Heartbeat { stamp_us, reply }
            }
            FrameKind::RaiseEpoch => Message::RaiseEpoch {
                epoch: r.u64("epoch")?,
            },
            FrameKind::EpochRaised => Message::EpochRaised {
                epoch: r.u64("epoch")?,
            },
            FrameKind::Error => {
                let code = ErrorCode::from_u16(r.u16("code")?);
                let reason_len = r.u16("reason_len")? as usize;
                if reason_len > MAX_REASON_BYTES {
                    return Err(r.malformed("reason longer than MAX_REASON_BYTES"));
                }
                let a = r.u64("a")?;
                let b = r.u64("b")?;
                let reason = r.utf8(reason_len, "reason")?;
                Message::Error { code, a, b, reason }
            }
        };
        let extra = body.len() - r.at;
        if extra != 0 {
            return Err(WireError::TrailingBytes {
                kind: r.kind,
                extra,
            });
        }
        Ok(msg)
    }
}

/// Writes a batch body (Append or Entries) straight from borrowed entries, so a sender
/// need not copy its queue into a `Message` first.
pub fn encode_batch<'a>(
    entries: impl ExactSizeIterator<Item = (u64, &'a [u8])>,
    out: &mut Vec<u8>,
) {
    assert!(entries.len() <= MAX_BATCH_ENTRIES, "batch too long");
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (seq, bytes) in entries {
        assert!(bytes.len() <= MAX_ENTRY_BYTES, "entry too large");
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
}

/// Bytes a batch entry adds to a body; senders use it to stay under MAX_BODY_BYTES.
pub fn batch_entry_bytes(entry_len: usize) -> usize {
    ENTRY_HEAD_BYTES + entry_len
}

fn decode_batch(r: &mut BodyReader) -> Result<Vec<(u64, Vec<u8>)>, WireError> {
    let count = r.u32("count")? as usize;
    if count > MAX_BATCH_ENTRIES {
        return Err(r.malformed("more than MAX_BATCH_ENTRIES entries"));
    }
    // Every entry needs at least its head, so a count the body cannot hold is refused
    // before anything is allocated for it.
    if count * ENTRY_HEAD_BYTES > r.remaining() {
        return Err(r.malformed("count larger than the body can hold"));
    }
    let mut entries = Vec::with_capacity(count);
    let mut previous: Option<u64> = None;
    for _ in 0..count {
        let seq = r.u64("entry seq")?;
        if let Some(p) = previous {
            if p.checked_add(1) != Some(seq) {
                return Err(r.malformed("entry seqs not consecutive"));
            }
        }
        previous = Some(seq);
        let len = r.u32("entry len")? as usize;
        if len > MAX_ENTRY_BYTES {
            return Err(r.malformed("entry longer than MAX_ENTRY_BYTES"));
        }
        entries.push((seq, r.bytes(len, "entry bytes")?.to_vec()));
    }
    Ok(entries)
}

/// A whole frame: its version, the volume it names and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub version: Version,
    pub volume_id: VolumeId,
    pub message: Message,
}

/// Appends one complete frame (header and body) of the current version to `out`.
pub fn encode_frame(volume_id: &VolumeId, message: &Message, out: &mut Vec<u8>) {
    encode_frame_as(Version::CURRENT, volume_id, message, out)
}

/// Appends one complete frame of `version` to `out` (the agent answers each client in the
/// version of its Hello).
pub fn encode_frame_as(
    version: Version,
    volume_id: &VolumeId,
    message: &Message,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    message.encode_body_as(version, out);
    seal_frame_as(version, volume_id, message.kind(), out, start);
}

/// Fills in the header of a current-version frame whose body was written at
/// `out[start + HEADER_BYTES..]`.
pub fn seal_frame(volume_id: &VolumeId, kind: FrameKind, out: &mut [u8], start: usize) {
    seal_frame_as(Version::CURRENT, volume_id, kind, out, start)
}

/// `seal_frame` for a frame of `version`.
pub fn seal_frame_as(
    version: Version,
    volume_id: &VolumeId,
    kind: FrameKind,
    out: &mut [u8],
    start: usize,
) {
    let body = &out[start + HEADER_BYTES..];
    assert!(body.len() <= MAX_BODY_BYTES, "frame body over the limit");
    assert!(version.has_kind(kind), "{kind:?} not in this wire version");
    let header = FrameHeader {
        version,
        kind,
        volume_id: *volume_id,
        body_len: body.len() as u32,
        body_crc: crc32c::crc32c(body),
    };
    out[start..start + HEADER_BYTES].copy_from_slice(&header.encode());
}

/// Decodes one frame from the front of `bytes`.
/// `Ok(None)` means more bytes are needed (the header, if complete, has been checked);
/// `Ok(Some((frame, used)))` gives the frame and how many bytes it took.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(header) = peek_header(bytes)? else {
        return Ok(None);
    };
    let total = HEADER_BYTES + header.body_len as usize;
    if bytes.len() < total {
        return Ok(None);
    }
    let body = &bytes[HEADER_BYTES..total];
    let computed = crc32c::crc32c(body);
    if computed != header.body_crc {
        return Err(WireError::BodyChecksum {
            stored: header.body_crc,
            computed,
        });
    }
    let message = Message::decode_body_as(header.version, header.kind, body)?;
    Ok(Some((
        Frame {
            version: header.version,
            volume_id: header.volume_id,
            message,
        },
        total,
    )))
}

/// Checks the header at the front of `bytes`, if all of it is there.
/// Also rejects a partial header whose magic is already wrong, so garbage is refused at
/// its first bytes instead of after a wait.
pub fn peek_header(bytes: &[u8]) -> Result<Option<FrameHeader>, WireError> {
    let seen = bytes.len().min(MAGIC.len());
    if bytes[..seen] != MAGIC[..seen] {
        let mut got = [0u8; 4];
        got[..seen].copy_from_slice(&bytes[..seen]);
        return Err(WireError::BadMagic { got });
    }
    if bytes.len() < HEADER_BYTES {
        return Ok(None);
    }
    let mut raw = [0u8; HEADER_BYTES];
    raw.copy_from_slice(&bytes[..HEADER_BYTES]);
    FrameHeader::decode(&raw).map(Some)
}

fn kind_name(kind: FrameKind) -> &'static str {
    match kind {
        FrameKind::Hello => "Hello",
        FrameKind::Challenge => "Challenge",
        FrameKind::Proof => "Proof",
        FrameKind::Welcome => "Welcome",
        FrameKind::Append => "Append",
        FrameKind::Ack => "Ack",
        FrameKind::ReadBack => "ReadBack",
        FrameKind::Entries => "Entries",
        FrameKind::ReadEnd => "ReadEnd",
        FrameKind::Checkpoint => "Checkpoint",
        FrameKind::Heartbeat => "Heartbeat",
        FrameKind::RaiseEpoch => "RaiseEpoch",
        FrameKind::EpochRaised => "EpochRaised",
        FrameKind::Error => "Error",
        FrameKind::Sync => "Sync",
    }
}

fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A flags byte and the seven reserved (zero) bytes after it, as Welcome and Ack have them.
fn encode_flags(flags: u8, out: &mut Vec<u8>) {
    out.push(flags);
    out.extend_from_slice(&[0u8; 7]);
}

/// A bounds-checked cursor over a body; every read returns `Malformed` instead of panicking.
struct BodyReader<'a> {
    kind: &'static str,
    body: &'a [u8],
    at: usize,
}

impl<'a> BodyReader<'a> {
    fn remaining(&self) -> usize {
        self.body.len() - self.at
    }

    fn malformed(&self, what: &'static str) -> WireError {
        WireError::Malformed {
            kind: self.kind,
            what,
            at: self.at,
        }
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(self.malformed(what));
        }
        let out = &self.body[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A flags byte and the seven reserved bytes after it (Welcome, Ack): refuses a flag
    /// outside `known`, saying `unknown`, and a reserved byte that is set.
    fn flags(&mut self, known: u8, unknown: &'static str) -> Result<u8, WireError> {
        let flags = self.u8("flags")?;
        if flags & !known != 0 {
            return Err(self.malformed(unknown));
        }
        let reserved: [u8; 7] = self.array("reserved")?;
        if reserved != [0; 7] {
            return Err(self.malformed("reserved bytes set"));
        }
        Ok(flags)
    }

    /// A u64 that counts only when `present`. Flagged absent it must be zero (else
    /// `nonzero`), like reserved bytes: then every body the decoder accepts is the one
    /// encoding of its message.
    fn optional_u64(
        &mut self,
        what: &'static str,
        present: bool,
        nonzero: &'static str,
    ) -> Result<Option<u64>, WireError> {
        let value = self.u64(what)?;
        if !present && value != 0 {
            return Err(self.malformed(nonzero));
        }
        Ok(present.then_some(value))
    }

    fn utf8(&mut self, n: usize, what: &'static str) -> Result<String, WireError> {
        let at = self.at;
        let raw = self.bytes(n, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| WireError::Malformed {
            kind: self.kind,
            what: "invalid UTF-8",
            at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello {
                epoch: 3,
                mode: Mode::Writer,
                heartbeat_ms: 1000,
                client_nonce: [1; 32],
                node: "node-a".into(),
            },
            Message::Challenge {
                agent_nonce: [2; 32],
                agent_proof: [3; 32],
            },
            Message::Proof {
                client_proof: [4; 32],
            },
            Message::Welcome {
                epoch: 9,
                next_seq: Some(17),
                checkpoint_through: None,
            },
            Message::Append {
                entries: vec![(5, b"abc".to_vec()), (6, vec![]), (7, vec![0; 300])],
            },
            Message::Entries { entries: vec![] },
            Message::Ack {
                through_seq: 7,
                durable_seq: Some(5),
            },
            Message::Ack {
                through_seq: 0,
                durable_seq: None,
            },
            Message::Sync { through_seq: 7 },
            Message::ReadBack { after_seq: 4 },
            Message::ReadEnd {
                entries_sent: 3,
                through_seq: 7,
            },
            Message::Checkpoint { through_seq: 6 },
            Message::Heartbeat {
                stamp_us: 123,
                reply: true,
            },
            Message::RaiseEpoch { epoch: 10 },
            Message::EpochRaised { epoch: 10 },
            Message::Error {
                code: ErrorCode::Fenced,
                a: 10,
                b: 0,
                reason: "fenced".into(),
            },
            Message::Welcome {
                epoch: 2,
                next_seq: None,
                checkpoint_through: Some(40),
            },
            Message::Error {
                code: ErrorCode::Unknown(0x1234),
                a: 0,
                b: 0,
                reason: "a newer peer's code".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_frame() {
        for message in all_messages() {
            let mut out = Vec::new();
            encode_frame(&[9; 16], &message, &mut out);
            let (frame, used) = decode_frame(&out).unwrap().unwrap();
            assert_eq!(used, out.len());
            assert_eq!(frame.volume_id, [9; 16]);
            assert_eq!(frame.version, Version::CURRENT);
            assert_eq!(frame.message, message);
            // Every strict prefix is "need more", never an error or a wrong frame.
            for cut in 0..out.len() {
                assert_eq!(decode_frame(&out[..cut]), Ok(None), "cut at {cut}");
            }
        }
    }

    #[test]
    fn body_corruption_is_caught_by_the_checksum() {
        let mut out = Vec::new();
        encode_frame(
            &[0; 16],
            &Message::Ack {
                through_seq: 1,
                durable_seq: None,
            },
            &mut out,
        );
        let last = out.len() - 1;
        out[last] ^= 0x80;
        assert!(matches!(
            decode_frame(&out),
            Err(WireError::BodyChecksum { .. })
        ));
    }

    #[test]
    fn batch_with_impossible_count_is_refused() {
        let mut body = Vec::new();
        body.extend_from_slice(&(MAX_BATCH_ENTRIES as u32).to_le_bytes());
        let err = Message::decode_body(FrameKind::Append, &body).unwrap_err();
        assert!(matches!(err, WireError::Malformed { .. }), "{err}");
    }

    #[test]
    fn non_consecutive_batch_is_refused() {
        let mut body = Vec::new();
        encode_batch([(1u64, &b"a"[..]), (3, &b"b"[..])].into_iter(), &mut body);
        assert!(Message::decode_body(FrameKind::Append, &body).is_err());
    }

    #[test]
    fn welcome_value_flagged_absent_must_be_zero() {
        for (flags, at, what) in [
            (0b10u8, 16, "next_seq not zero while flagged absent"),
            (0b01, 24, "checkpoint_through not zero while flagged absent"),
        ] {
            let mut body = vec![0u8; 32];
            body[8] = flags;
            assert!(Message::decode_body(FrameKind::Welcome, &body).is_ok());
            body[at] = 1;
            let err = Message::decode_body(FrameKind::Welcome, &body).unwrap_err();
            assert!(
                matches!(err, WireError::Malformed { what: w, .. } if w == what),
                "{err}"
            );
        }
    }

    #[test]
    fn every_version_1_message_round_trips_as_version_1() {
        for message in all_messages() {
            if message.kind() == FrameKind::Sync
                || matches!(
                    message,
                    Message::Ack {
                        durable_seq: Some(_),
                        ..
                    }
                )
            {
                continue;
            }
            let mut out = Vec::new();
            encode_frame_as(Version::V1, &[9; 16], &message, &mut out);
            let (frame, used) = decode_frame(&out).unwrap().unwrap();
            assert_eq!(used, out.len());
            assert_eq!(frame.version, Version::V1);
            assert_eq!(frame.message, message);
        }
        // A version 1 Ack is just its received seq.
        let mut body = Vec::new();
        Message::Ack {
            through_seq: 3,
            durable_seq: None,
        }
        .encode_body_as(Version::V1, &mut body);
        assert_eq!(body, 3u64.to_le_bytes());
    }

    #[test]
    fn ack_durable_seq_is_canonical_and_never_beyond_through_seq() {
        let body = |flags: u8, durable: u64| {
            let mut b = 10u64.to_le_bytes().to_vec();
            b.push(flags);
            b.extend_from_slice(&[0; 7]);
            b.extend_from_slice(&durable.to_le_bytes());
            b
        };
        let decode = |b: &[u8]| Message::decode_body_as(Version::V2, FrameKind::Ack, b);
        assert_eq!(
            decode(&body(1, 10)),
            Ok(Message::Ack {
                through_seq: 10,
                durable_seq: Some(10)
            })
        );
        assert_eq!(
            decode(&body(0, 0)),
            Ok(Message::Ack {
                through_seq: 10,
                durable_seq: None
            })
        );
        for (flags, durable, what) in [
            (1u8, 11u64, "durable_seq beyond through_seq"),
            (0, 4, "durable_seq not zero while flagged absent"),
            (2, 0, "unknown Ack flags"),
        ] {
            let err = decode(&body(flags, durable)).unwrap_err();
            assert!(
                matches!(err, WireError::Malformed { what: w, .. } if w == what),
                "{err}"
            );
        }
        assert!(matches!(
            Message::decode_body_as(Version::V1, FrameKind::Sync, &[0; 8]),
            Err(WireError::KindNotInVersion { .. })
        ));
    }

    #[test]
    #[should_panic(expected = "a version 1 Ack has no durable_seq")]
    fn a_durable_seq_in_a_version_1_ack_is_a_programmer_error() {
        Message::Ack {
            through_seq: 2,
            durable_seq: Some(1),
        }
        .encode_body_as(Version::V1, &mut Vec::new());
    }

    #[test]
    fn unknown_error_code_keeps_its_number() {
        let mut body = Vec::new();
        Message::Error {
            code: ErrorCode::Other,
            a: 1,
            b: 2,
            reason: "x".into(),
        }
        .encode_body(&mut body);
        body[..2].copy_from_slice(&500u16.to_le_bytes());
        let message = Message::decode_body(FrameKind::Error, &body).unwrap();
        assert!(matches!(
            message,
            Message::Error {
                code: ErrorCode::Unknown(500),
                ..
            }
        ));
        let mut again = Vec::new();
        message.encode_body(&mut again);
        assert_eq!(again, body);
    }

    #[test]
    #[should_panic(expected = "ErrorCode::Unknown holds a code that has a name")]
    fn unknown_error_code_with_a_named_number_is_a_programmer_error() {
        Message::Error {
            code: ErrorCode::Unknown(4),
            a: 0,
            b: 0,
            reason: String::new(),
        }
        .encode_body(&mut Vec::new());
    }
}

//! Decoding a message's body. Everything here is outside data, so every flaw is a
//! returned `WireError`; and each message has exactly one encoding the decoder accepts.

use super::reader::BodyReader;
use super::{Message, Mode};
use crate::error::{ErrorCode, WireError};
use crate::format::*;

impl Message {
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
                // Fields are read in the order written, which is the body's order.
                Message::Hello {
                    epoch,
                    mode,
                    heartbeat_ms: r.u32("heartbeat_ms")?,
                    client_nonce: r.array("client_nonce")?,
                    node: r.utf8(node_len, "node name")?,
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

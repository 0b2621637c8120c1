//! Encoding a message's body. Limits and version rules are the sender's to keep, so
//! breaking one is a programmer error and is asserted, not returned.

use super::Message;
use crate::error::ErrorCode;
use crate::format::*;

impl Message {
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

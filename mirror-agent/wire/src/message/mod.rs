//! Frame bodies: one `Message` per `FrameKind`, and the frame codec around them.
//!
//! * `encode` — a message's body as a version lays it out (asserts the sender's limits);
//! * `decode` — a body back to its message, refusing every other encoding;
//! * `reader` — the bounds-checked cursor the decoder reads with;
//! * `frame` — header plus body: `encode_frame`, `seal_frame`, `decode_frame`.
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

mod decode;
mod encode;
mod frame;
mod reader;
#[cfg(test)]
mod tests;

pub use encode::{batch_entry_bytes, encode_batch};
pub use frame::{
    decode_frame, encode_frame, encode_frame_as, peek_header, seal_frame, seal_frame_as, Frame,
};

use crate::error::ErrorCode;
use crate::format::{FrameKind, NONCE_BYTES, PROOF_BYTES};

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
}

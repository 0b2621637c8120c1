//! Wire format shared by the smlogfs daemon and the mirror agent.
//!
//! * `format` — the frame header, its byte table, limits and versions;
//! * `message` — frame bodies and the frame codec;
//! * `auth` — the shared-secret challenge–response;
//! * `conn` — buffered frame reading over a byte stream;
//! * `client` — the daemon's side: pipelined appends, acks, route fail-over, read-back.
//!
//! The agent never links `fuser`; this crate is all it shares with the daemon.
#![deny(unsafe_code)]

pub mod auth;
pub mod client;
pub mod conn;
mod error;
pub mod format;
pub mod message;

pub use client::{MirrorClient, MirrorConfig, MirrorError, MirrorStatus};
pub use error::{ErrorCode, WireError};
pub use format::{FrameKind, Version, VolumeId};
pub use message::{decode_frame, encode_frame, encode_frame_as, Frame, Message, Mode};

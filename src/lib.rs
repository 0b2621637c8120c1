//! smlogfs: a FUSE file system that logs the state machine of every operation to a
//! memory-mapped ring before answering, and keeps its blocks on a block volume.
//!
//! Layers, top to bottom (dependencies point down only):
//!
//! - `cmd`: the command-line entry points; the only place that wires the layers together.
//! - `fuse_adapter` (FUSE requests → `core::Fs`) and `control` (the status socket).
//! - `mirror`: implements the core's `Replica` and `ReplicaLink` traits over the mirror
//!   agent's wire crate (`smlog_wire`); the core never names that crate.
//! - `core`: the file system, its op pipeline, checkpoints and recovery.
//! - `statelog` (the ring, payload-agnostic) and `raid_sim::BlockVolume` (the blocks).
//!
//! `progress` is a utility any layer may use.
#![deny(unsafe_code)]

pub mod cmd;
pub mod control;
pub mod core;
pub mod fuse_adapter;
pub mod mirror;
pub mod progress;
pub mod statelog;
pub mod supervisor;

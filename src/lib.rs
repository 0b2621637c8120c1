//! smlogfs: a FUSE file system that logs the state machine of every operation to a
//! memory-mapped ring before answering, and keeps its blocks on a block volume.
//!
//! Layers, top to bottom (dependencies point down only): `fuse_adapter` → `core` →
//! `statelog` and `raid_sim::BlockVolume`. `cmd` holds the command-line entry points.
#![deny(unsafe_code)]

pub mod cmd;
pub mod control;
pub mod core;
pub mod fuse_adapter;
pub mod mirror;
pub mod progress;
pub mod statelog;
pub mod supervisor;

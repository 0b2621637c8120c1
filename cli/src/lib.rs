//! What the three binaries (smlogfs, raid-sim, mirror-agent) share on their command line, so
//! that each is written once:
//!
//! * [`usage_line`] — a clap error as one line that names the help to read;
//! * [`Program`] and [`Failure`] — parse the arguments, run, print a failure as one line on
//!   stderr and exit with its code;
//! * [`mounts`] — `/proc/self/mounts` read into entries, octal escapes decoded.
//!
//! It depends on clap only: raid-sim and mirror-agent use it without linking smlogfs.
#![deny(unsafe_code)]

pub mod mounts;
mod program;
mod usage;

pub use program::{exit, Failure, Program};
pub use usage::usage_line;

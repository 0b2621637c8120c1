//! The parts of the `raid-sim` command line apart from parsing and dispatch (`main.rs`):
//! failures and exit codes, the status report, progress display, the benchmark.

pub mod bench;
pub mod failure;
pub mod progress;
pub mod report;

use raid_sim::RaidOptions;

/// Options of an array opened by this command itself (no one else holds it).
pub fn offline_opts() -> RaidOptions {
    RaidOptions {
        background: false,
        ..RaidOptions::default()
    }
}

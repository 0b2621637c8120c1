//! `smlogfs fsck VOLDIR`: offline consistency check. Exit 0 clean, 1 problems, 2 unreadable.

use std::path::Path;

use crate::core::{check, meta, recover};
use crate::progress::Progress;

pub fn fsck(voldir: &Path) -> i32 {
    if let Some((pid, mnt)) = super::live_daemon(voldir) {
        println!(
            "note: volume is mounted at {mnt} by daemon pid {pid}; checking its last checkpoint plus the ring"
        );
    }
    let r = match recover(voldir, &Progress::new, None) {
        Ok(r) => r,
        // Readable metadata that contradicts itself is a problem to report, not an unreadable
        // volume: recovery refuses to build on it, so list what the load found.
        Err(e) => {
            let problems = checkpoint_problems(voldir);
            if !problems.is_empty() {
                eprintln!("smlogfs fsck: {e}");
                for p in &problems {
                    println!("problem: {p}");
                }
                println!(
                    "{} problem(s) found in the checkpoint's metadata",
                    problems.len()
                );
                return 1;
            }
            eprintln!(
                "smlogfs fsck: cannot read the volume in {}: {e}",
                voldir.display()
            );
            return 2;
        }
    };
    let mut problems = check::check_state(&r.state);
    if r.report.replay_failures > 0 {
        problems.push(format!(
            "{} op(s) in the ring could not be replayed on the checkpoint (see the log above)",
            r.report.replay_failures
        ));
    }
    // Every volume block is referenced at most once and lies inside the volume: the load
    // checked that while rebuilding the allocator; count what it found.
    let files = r.state.inodes.len();
    let blocks: usize = r.state.inodes.values().map(|n| n.blocks.len()).sum();
    println!(
        "{}: {} inodes, {} data blocks, checkpoint generation {} covers seq {}, {} ring entries ({} to replay{})",
        voldir.display(),
        files,
        blocks,
        r.sb.generation,
        r.sb.covers_seq,
        r.report.entries_scanned,
        r.report.replayed,
        match r.report.torn_tail_at {
            Some(at) => format!(", torn tail at byte {at}"),
            None => String::new(),
        }
    );
    if problems.is_empty() {
        println!("clean");
        0
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        println!("{} problem(s) found", problems.len());
        1
    }
}

/// The inconsistencies the load of the last checkpoint's metadata finds (none when it
/// cannot be read at all).
fn checkpoint_problems(voldir: &Path) -> Vec<String> {
    let Ok(vol) = raid_sim::open_volume(voldir) else {
        return Vec::new();
    };
    let Ok(sb) = crate::core::superblock::Superblock::read(vol.as_ref()) else {
        return Vec::new();
    };
    meta::load(std::sync::Arc::from(vol), &sb).map_or(Vec::new(), |l| l.problems)
}

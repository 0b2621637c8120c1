//! `smlogfs inspect VOLDIR`: the ring in words.

use std::path::Path;

use super::{exit, open_error, CliError};
use crate::core::ops::{self, FsOp};
use crate::core::recovery::{checkpoint_covers, Action, CheckpointState, LastState, OpState};
use crate::core::superblock::Superblock;
use crate::core::{recover, ring_path_of};
use crate::progress::Progress;
use crate::statelog::{EntryKind, ScanEnd, StateLog};

fn describe_op(op: &FsOp) -> String {
    let n = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match op {
        FsOp::Mknod(ops::Mknod {
            parent, name, ino, ..
        }) => format!(
            "{} {:?} in dir {parent} -> inode {ino}",
            op.kind_name(),
            n(name)
        ),
        FsOp::Link(ops::Link {
            ino, parent, name, ..
        }) => format!("link inode {ino} as {:?} in dir {parent}", n(name)),
        FsOp::Unlink(ops::Unlink { parent, name, .. }) => {
            format!("{} {:?} in dir {parent}", op.kind_name(), n(name))
        }
        FsOp::Rename(ops::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
            ..
        }) => {
            format!(
                "rename {:?} in dir {parent} to {:?} in dir {new_parent} (flags {flags})",
                n(name),
                n(new_name)
            )
        }
        FsOp::SetAttr(ops::SetAttr {
            ino,
            perm,
            uid,
            gid,
            size,
            ..
        }) => {
            format!("setattr inode {ino} mode {perm:?} uid {uid:?} gid {gid:?} size {size:?}")
        }
        FsOp::Write(ops::Write {
            ino, offset, data, ..
        }) => format!("write inode {ino} offset {offset} len {}", data.len()),
        FsOp::Fallocate(ops::Fallocate {
            ino,
            offset,
            len,
            mode,
            ..
        }) => format!("fallocate inode {ino} offset {offset} len {len} mode {mode}"),
        FsOp::SetXattr(ops::SetXattr {
            ino, name, value, ..
        }) => format!("setxattr inode {ino} {:?} ({} bytes)", n(name), value.len()),
        FsOp::RemoveXattr(ops::RemoveXattr { ino, name, .. }) => {
            format!("removexattr inode {ino} {:?}", n(name))
        }
        FsOp::WriteDirect(ops::WriteDirect {
            ino,
            offset,
            len,
            phys,
            ..
        }) => format!(
            "write inode {ino} offset {offset} len {len} (data on the volume at block {phys})"
        ),
    }
}

pub fn inspect(voldir: &Path) -> Result<(), CliError> {
    let vol = raid_sim::open_volume(voldir).map_err(|e| open_error(e.into()))?;
    let sb = Superblock::read(vol.as_ref())
        .map_err(|e| CliError::new(exit::CORRUPT, format!("{}: {e}", voldir.display())))?;
    drop(vol);
    let ring_path = ring_path_of(voldir, &sb);
    let scan =
        StateLog::scan_file(&ring_path).map_err(|e| CliError::new(exit::CORRUPT, e.to_string()))?;
    println!(
        "state log {} ({} bytes), tail at area offset {} (seq {})",
        ring_path.display(),
        scan.header.ring_bytes,
        scan.header.tail_offset,
        scan.header.tail_seq
    );
    println!("entries:");
    for e in &scan.entries {
        let h = &e.header;
        let (kind, state, what) = match h.kind {
            EntryKind::Op => {
                let state = OpState::from_u8(h.state)
                    .map_or(format!("state {}", h.state), |s| format!("{s:?}"));
                let what = if h.op_id == h.seq {
                    FsOp::decode(&e.payload)
                        .map(|op| describe_op(&op))
                        .unwrap_or_else(|err| format!("undecodable: {err}"))
                } else {
                    String::new()
                };
                ("op", state, what)
            }
            EntryKind::Checkpoint => {
                let state = CheckpointState::from_u8(h.state)
                    .map_or(format!("state {}", h.state), |s| format!("{s:?}"));
                (
                    "checkpoint",
                    state,
                    format!("covers seq {}", checkpoint_covers(&e.payload).unwrap_or(0)),
                )
            }
            EntryKind::Wrap => (
                "wrap",
                String::new(),
                "next entry at area offset 0".to_string(),
            ),
        };
        println!(
            "  seq {:>8}  op {:>8}  {:<10} {:<9} {}",
            h.seq, h.op_id, kind, state, what
        );
    }
    match &scan.end {
        ScanEnd::Clean => println!("end: clean (next seq {})", scan.next_seq),
        ScanEnd::TornTail { file_offset } => println!("end: torn tail at byte {file_offset} (a write cut short; recovery keeps everything before it)"),
        ScanEnd::Corrupt { file_offset, later_seq, later_file_offset } => println!(
            "end: CORRUPT at byte {file_offset}: valid entry seq {later_seq} follows at byte {later_file_offset}; mount refuses"
        ),
    }
    println!(
        "last checkpoint: generation {}, covers seq {}, epoch {}",
        sb.generation, sb.covers_seq, sb.epoch
    );
    let plan = crate::core::recovery::plan(&scan.entries, sb.covers_seq)
        .map_err(|e| CliError::new(exit::CORRUPT, e))?;
    println!("ops (last valid state -> what recovery would do):");
    let mut counts = std::collections::BTreeMap::new();
    for op in &plan {
        let last = match op.last {
            LastState::Op(s) => format!("{s:?}"),
            LastState::Checkpoint(s) => format!("checkpoint {s:?}"),
        };
        println!(
            "  op {:>8}  {:<20} {:?}: {}",
            op.op_id, last, op.action, op.reason
        );
        *counts.entry(format!("{:?}", op.action)).or_insert(0) += 1;
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "recovery would: {}",
        if summary.is_empty() {
            "nothing".to_string()
        } else {
            summary.join(", ")
        }
    );
    if plan.iter().any(|o| o.action == Action::Replay) {
        if let Ok(r) = recover(voldir, &Progress::hidden, None) {
            println!("after replay: {} inodes", r.state.inodes.len());
        }
    }
    Ok(())
}

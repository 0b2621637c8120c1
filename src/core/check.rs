//! Consistency checks of a file system state (what `smlogfs fsck` verifies).

use std::collections::HashMap;

use super::state::FsState;
use super::types::{Kind, ROOT_INO};

/// Every inconsistency found, in words.
pub fn check_state(state: &FsState) -> Vec<String> {
    let mut problems = Vec::new();
    match state.inodes.get(&ROOT_INO) {
        None => problems.push("the root directory (inode 1) is missing".to_string()),
        Some(r) if r.rec.kind != Kind::Dir => {
            problems.push("inode 1 is not a directory".to_string())
        }
        _ => {}
    }
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    // Volume block -> the file block it holds.
    let mut placed: HashMap<u64, (u64, u64)> = HashMap::new();
    for node in state.inodes.values() {
        let ino = node.rec.ino;
        if ino >= state.next_ino {
            problems.push(format!(
                "inode {ino} is not below the next inode number {}",
                state.next_ino
            ));
        }
        if let Some(dir) = &node.dir {
            if dir.entries.len() != dir.by_cookie.len() {
                problems.push(format!("directory {ino}: name and offset indexes disagree"));
            }
            for (name, (child, cookie)) in &dir.entries {
                let shown = String::from_utf8_lossy(name);
                if dir.by_cookie.get(cookie) != Some(name) {
                    problems.push(format!(
                        "directory {ino}: entry {shown:?} has offset {cookie} not indexed"
                    ));
                }
                match state.inodes.get(child) {
                    None => problems.push(format!(
                        "directory {ino}: entry {shown:?} names missing inode {child}"
                    )),
                    Some(c) => {
                        *links.entry(*child).or_default() += 1;
                        if c.rec.kind == Kind::Dir {
                            *subdirs.entry(ino).or_default() += 1;
                            if c.rec.parent != ino {
                                problems.push(format!(
                                    "directory {child} ({shown:?}) is in directory {ino} but its parent says {}",
                                    c.rec.parent
                                ));
                            }
                        }
                    }
                }
            }
        }
        if node.rec.kind == Kind::Symlink {
            match &node.rec.target {
                Some(t) if t.len() as u64 == node.rec.size => {}
                _ => problems.push(format!("symlink {ino}: target missing or size mismatch")),
            }
        }
        for (blk, slot) in &node.blocks {
            if let Some(p) = slot.phys {
                if let Some((other, other_blk)) = placed.insert(p, (ino, *blk)) {
                    problems.push(format!(
                        "volume block {p} holds both block {blk} of inode {ino} and block \
                         {other_blk} of inode {other}"
                    ));
                }
            }
        }
        if node.rec.kind != Kind::File && !node.blocks.is_empty() {
            problems.push(format!(
                "inode {ino} is not a regular file but has data blocks"
            ));
        }
    }
    for node in state.inodes.values() {
        let ino = node.rec.ino;
        let found = links.get(&ino).copied().unwrap_or(0);
        if node.rec.kind == Kind::Dir {
            let expected = 2 + subdirs.get(&ino).copied().unwrap_or(0);
            if ino != ROOT_INO && found != 1 {
                problems.push(format!(
                    "directory {ino} is named by {found} entries (expected 1)"
                ));
            }
            if node.rec.nlink != expected {
                problems.push(format!(
                    "directory {ino}: link count {} but expected {expected}",
                    node.rec.nlink
                ));
            }
        } else if node.rec.nlink != found {
            if found == 0 && node.rec.nlink == 0 && node.open_count > 0 {
                continue;
            }
            problems.push(format!(
                "inode {ino}: link count {} but {found} directory entries name it{}",
                node.rec.nlink,
                if found == 0 { " (unreachable)" } else { "" }
            ));
        }
    }
    problems
}

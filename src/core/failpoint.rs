//! A test hook that kills the daemon at the worst moment of one op:
//! `SMLOGFS_FAILPOINT=STAGE:OPNAME[:N]` makes the process SIGKILL itself at STAGE of the
//! N-th (default 1st) op named OPNAME (`FsOp::kind_name`: create, mkdir, link, rename,
//! unlink, write, ...). Stages: `before-apply` (logged `Accepted`, not applied),
//! `after-apply` (applied and logged `Applied`, not answered), `after-checkpoint` (applied,
//! then a checkpoint covered it and reclaimed its entries, not answered).
//!
//! Read once when the file system opens; inert when unset and in a daemon restarted on a
//! resumed connection (so that the restart it causes serves normally).

use std::sync::atomic::{AtomicU64, Ordering};

pub const FAILPOINT_ENV: &str = "SMLOGFS_FAILPOINT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    BeforeApply,
    AfterApply,
    AfterCheckpoint,
}

#[derive(Debug)]
pub struct Failpoint {
    stage: Stage,
    op: String,
    nth: u64,
    seen: AtomicU64,
}

impl Failpoint {
    /// The failpoint `SMLOGFS_FAILPOINT` names, if any; a malformed value is logged and
    /// ignored (a test hook must never stop a mount).
    pub fn from_env(resumed: bool) -> Option<Failpoint> {
        let text = std::env::var(FAILPOINT_ENV).ok()?;
        if resumed {
            return None;
        }
        match Failpoint::parse(&text) {
            Ok(f) => {
                log::warn!(
                    "{FAILPOINT_ENV}={text}: this daemon kills itself at that point (a test hook)"
                );
                Some(f)
            }
            Err(e) => {
                log::error!("{FAILPOINT_ENV}={text}: {e}; ignored");
                None
            }
        }
    }

    pub fn parse(text: &str) -> Result<Failpoint, String> {
        let mut parts = text.split(':');
        let stage = match parts.next() {
            Some("before-apply") => Stage::BeforeApply,
            Some("after-apply") => Stage::AfterApply,
            Some("after-checkpoint") => Stage::AfterCheckpoint,
            other => {
                return Err(format!(
                "unknown stage {other:?} (expected before-apply, after-apply or after-checkpoint)"
            ))
            }
        };
        let op = parts
            .next()
            .filter(|s| !s.is_empty())
            .ok_or("no op name after the stage (e.g. after-apply:create)")?
            .to_string();
        let nth = match parts.next() {
            None => 1,
            Some(n) => n
                .parse()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("{n:?} is not a count of 1 or more"))?,
        };
        if parts.next().is_some() {
            return Err("expected STAGE:OPNAME[:N]".into());
        }
        Ok(Failpoint {
            stage,
            op,
            nth,
            seen: AtomicU64::new(0),
        })
    }

    /// Counts an op named `op` reaching the failpoint's stage; true for the N-th.
    pub fn hit(&self, stage: Stage, op: &str) -> bool {
        stage == self.stage
            && op == self.op
            && self.seen.fetch_add(1, Ordering::AcqRel) + 1 == self.nth
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    pub fn op(&self) -> &str {
        &self.op
    }
}

/// Ends the process the way `kill -9` does: no destructor, no flush, no reply.
pub fn kill_self(why: &str) -> ! {
    log::warn!("{FAILPOINT_ENV}: killing this daemon {why}");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    unreachable!("SIGKILL cannot be caught");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_counts() {
        let f = Failpoint::parse("after-apply:write:2").unwrap();
        assert!(!f.hit(Stage::AfterApply, "create"));
        assert!(!f.hit(Stage::BeforeApply, "write"));
        assert!(!f.hit(Stage::AfterApply, "write"));
        assert!(f.hit(Stage::AfterApply, "write"));
        assert!(!f.hit(Stage::AfterApply, "write"));
        assert_eq!(Failpoint::parse("before-apply:mkdir").unwrap().nth, 1);
        for bad in [
            "",
            "later:create",
            "after-apply",
            "after-apply:x:0",
            "after-apply:x:1:2",
        ] {
            assert!(Failpoint::parse(bad).is_err(), "{bad}");
        }
    }
}

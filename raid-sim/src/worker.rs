//! The background worker of a RAID volume: requests from `raid-sim` in another process
//! (through `VOLDIR/raid.request`), automatic rebuild onto a spare, rebuild steps, and the
//! watch over member files removed or replaced under the running volume.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::array::Inner;
use crate::format::MemberState;
use crate::scrub::SCRUB_REPORT_FILE;
use crate::volume::VolumeError;

pub const REQUEST_FILE: &str = "raid.request";

impl Inner {
    fn handle_requests(&self) {
        let path = self.dir.join(REQUEST_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        let _ = std::fs::remove_file(&path);
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let member = |i: usize| words.get(i).and_then(|w| w.parse::<u32>().ok());
            let res = match words.first().copied() {
                Some("fail") => match member(1) {
                    Some(k) if k < self.geometry.disks => {
                        self.fail_member_on_request(k, "failed on request (raid-sim fail)")
                    }
                    _ => Err(VolumeError::Invalid {
                        path: path.clone(),
                        detail: format!("bad request {line:?}"),
                    }),
                },
                Some("replace") => match member(1) {
                    Some(k) => {
                        let with = words.get(2).map(PathBuf::from);
                        let failed = self
                            .state
                            .read()
                            .map(|s| s.states.get(k as usize) == Some(&MemberState::Failed))
                            .unwrap_or(false);
                        let r = if failed {
                            Ok(())
                        } else {
                            self.fail_member_on_request(k, "replaced on request (raid-sim replace)")
                        };
                        r.and_then(|_| self.start_rebuild(k, with.as_deref()))
                    }
                    None => Err(VolumeError::Invalid {
                        path: path.clone(),
                        detail: format!("bad request {line:?}"),
                    }),
                },
                Some("scrub") => {
                    set_busy(self, Some("scrub".into()));
                    let r = self.scrub(true, |_, _| {});
                    set_busy(self, None);
                    r.and_then(|rep| {
                        let p = self.dir.join(SCRUB_REPORT_FILE);
                        log::info!("{}", rep.to_text().lines().next().unwrap_or(""));
                        std::fs::write(&p, rep.to_text()).map_err(|e| VolumeError::io(&p, e))
                    })
                }
                _ => Err(VolumeError::Invalid {
                    path: path.clone(),
                    detail: format!("unknown request {line:?}"),
                }),
            };
            match res {
                Ok(()) => log::info!("request {line:?} done"),
                Err(e) => log::error!("request {line:?}: {e}"),
            }
        }
    }
}

fn set_busy(inner: &Inner, what: Option<String>) {
    *inner.busy.lock().unwrap_or_else(|e| e.into_inner()) = what;
}

/// The background worker: requests, automatic rebuild onto a spare, rebuild steps.
pub(crate) fn worker_loop(inner: Arc<Inner>) {
    let mut last_error: Option<Instant> = None;
    let mut last_check = Instant::now();
    while !inner.stop.load(Ordering::Relaxed) {
        inner.handle_requests();
        if last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            inner.check_member_files();
        }
        if inner.poisoned.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let (rebuilding, auto) = {
            let st = inner.state.read().unwrap_or_else(|e| e.into_inner());
            let failed: Vec<u32> = (0..st.states.len() as u32)
                .filter(|i| st.states[*i as usize] == MemberState::Failed)
                .collect();
            let auto = (st.rebuild.is_none() && failed.len() == 1 && !st.spares.is_empty())
                .then(|| failed[0]);
            (st.rebuild.is_some(), auto)
        };
        let backoff = last_error.is_some_and(|t| t.elapsed() < Duration::from_secs(5));
        if rebuilding && !backoff {
            set_busy(&inner, Some("rebuild".into()));
            if let Err(e) = inner.rebuild_step(inner.opts.rebuild_checkpoint_stripes.max(1)) {
                log::error!("rebuild: {e}");
                last_error = Some(Instant::now());
            }
            set_busy(&inner, None);
        } else if let (Some(k), false) = (auto, backoff) {
            log::warn!("member {k} is failed and a spare is available: starting rebuild");
            if let Err(e) = inner.start_rebuild(k, None) {
                log::error!("automatic rebuild of member {k}: {e}");
                last_error = Some(Instant::now());
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

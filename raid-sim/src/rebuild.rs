//! Rebuild onto a spare or a replacement, scrub, and the background worker that runs them
//! while the volume serves I/O (and picks up requests from `raid-sim` in another process
//! through `VOLDIR/raid.request`).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::assemble::{create_member_file, member_name, wrap};
use crate::format::{block_crc, MemberState, Superblock};
use crate::parity::xor_many;
use crate::raid::{Inner, Member, RaidVolume};
use crate::{VolumeError, BLOCK_BYTES};

pub const REQUEST_FILE: &str = "raid.request";
pub const SCRUB_REPORT_FILE: &str = "raid.scrub-report";
/// "DONE TOTAL" stripes of a running scrub.
pub const SCRUB_PROGRESS_FILE: &str = "raid.scrub-progress";

/// Progress (done, total stripes) of a scrub running in the process holding the volume.
pub fn scrub_progress(dir: &Path) -> Option<(u64, u64)> {
    if !crate::assemble::in_use(dir) {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(SCRUB_PROGRESS_FILE)).ok()?;
    let mut it = text.split_whitespace().map(|w| w.parse::<u64>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(d), Some(t)) if d <= t => Some((d, t)),
        _ => None,
    }
}

/// One finding of a scrub, by member and byte offset in the member file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrubFinding {
    pub member: u32,
    pub path: PathBuf,
    pub member_offset: u64,
    pub stripe: u64,
    pub kind: &'static str,
    pub repaired: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ScrubReport {
    pub stripes: u64,
    pub blocks_checked: u64,
    pub findings: Vec<ScrubFinding>,
}

impl ScrubReport {
    pub fn unrepaired(&self) -> usize {
        self.findings.iter().filter(|f| !f.repaired).count()
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "scrubbed {} stripes, {} blocks: {} finding(s), {} repaired, {} unrepaired\n",
            self.stripes,
            self.blocks_checked,
            self.findings.len(),
            self.findings.len() - self.unrepaired(),
            self.unrepaired()
        );
        for f in &self.findings {
            s.push_str(&format!(
                "member {} ({}) byte {} stripe {}: {}{}\n",
                f.member,
                f.path.display(),
                f.member_offset,
                f.stripe,
                f.kind,
                if f.repaired {
                    ", repaired"
                } else {
                    ", NOT repaired"
                }
            ));
        }
        s
    }
}

fn lockw<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// Starts rebuilding member `k` (which must be failed) onto `with`, a spare of the
    /// array, or a fresh `member-K.img`, in that order of preference.
    pub fn start_rebuild(&self, k: u32, with: Option<&Path>) -> Result<(), VolumeError> {
        let g = self.geometry;
        let invalid = |detail: String| VolumeError::Invalid {
            path: self.dir.join(member_name(k)),
            detail,
        };
        if k >= g.disks {
            return Err(invalid(format!(
                "no member {k} in a {}-disk array",
                g.disks
            )));
        }
        let mut st = lockw(&self.state);
        if st.states[k as usize] != MemberState::Failed {
            return Err(invalid(format!(
                "member {k} is {}, not failed; fail it first",
                st.states[k as usize].name()
            )));
        }
        if let Some(o) =
            (0..g.disks).find(|o| *o != k && st.states[*o as usize] != MemberState::Active)
        {
            return Err(invalid(format!(
                "member {o} is also down; nothing to rebuild from"
            )));
        }
        let slot = self.dir.join(member_name(k));
        let spare = match with {
            Some(p) => st.spares.iter().position(|s| same_file(&s.path, p)),
            None => (!st.spares.is_empty()).then_some(0),
        };
        // Move the failed member's file aside (kept for inspection, never assembled).
        let keep_aside = |slot: &Path| -> Result<(), VolumeError> {
            if slot.symlink_metadata().is_ok() {
                let aside = self.dir.join(format!("{}.failed", member_name(k)));
                std::fs::rename(slot, &aside).map_err(|e| VolumeError::io(slot, e))?;
                log::info!("{} moved aside to {}", slot.display(), aside.display());
            }
            Ok(())
        };
        let target_sb = Superblock {
            array_id: self.array_id,
            events: st.events,
            geometry: g,
            spares: st.spares_wanted,
            role: k,
            array_active: true,
            rebuild_rate_kib_s: st.rebuild_rate_kib_s,
            rebuild_member: k,
            rebuild_next_stripe: 0,
            member_states: st.states.clone(),
        };
        let target_path = match (spare, with) {
            (Some(i), _) => {
                let sp = st.spares.remove(i);
                if !same_file(&sp.path, &slot) {
                    keep_aside(&slot)?;
                    std::fs::rename(&sp.path, &slot).map_err(|e| VolumeError::io(&sp.path, e))?;
                }
                log::info!("rebuilding member {k} onto spare {}", sp.path.display());
                slot.clone()
            }
            (None, Some(p)) => {
                if same_file(p, &slot) {
                    return Err(invalid(
                        "the replacement is the failed member's own file".into(),
                    ));
                }
                create_member_file(p, &g, &target_sb)?;
                keep_aside(&slot)?;
                let abs = std::fs::canonicalize(p).map_err(|e| VolumeError::io(p, e))?;
                std::os::unix::fs::symlink(&abs, &slot).map_err(|e| VolumeError::io(&slot, e))?;
                log::info!(
                    "rebuilding member {k} onto {} (linked as {})",
                    abs.display(),
                    slot.display()
                );
                slot.clone()
            }
            (None, None) => {
                keep_aside(&slot)?;
                create_member_file(&slot, &g, &target_sb)?;
                log::info!("rebuilding member {k} onto a new {}", slot.display());
                slot.clone()
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&target_path)
            .map_err(|e| VolumeError::io(&target_path, e))?;
        let len = file
            .metadata()
            .map_err(|e| VolumeError::io(&target_path, e))?
            .len();
        if len < g.member_bytes() {
            file.set_len(g.member_bytes())
                .map_err(|e| VolumeError::io(&target_path, e))?;
        }
        let io = wrap(&target_path, file, self.opts.wrap_io.as_ref());
        let csums = vec![0u32; g.blocks_per_member() as usize];
        st.members[k as usize] = Some(Arc::new(Member::new(target_path, io, csums)));
        st.states[k as usize] = MemberState::Rebuilding;
        st.reasons[k as usize] = None;
        st.rebuild = Some((k, 0));
        self.write_superblocks(&mut st, true)
    }

    fn rebuild_rate_bytes_per_s(&self) -> u64 {
        match self.opts.rebuild_rate_bytes_per_s {
            Some(r) => r,
            None => {
                self.state
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .rebuild_rate_kib_s as u64
                    * 1024
            }
        }
    }

    /// Rebuilds up to `max_stripes` stripes, then checkpoints the position in the
    /// superblocks. Returns true when the rebuild has finished (or none runs).
    pub fn rebuild_step(&self, max_stripes: u64) -> Result<bool, VolumeError> {
        let g = self.geometry;
        let (k, next) = {
            let mut st = lockw(&self.state);
            let Some((k, next)) = st.rebuild else {
                return Ok(true);
            };
            if st.members[k as usize].is_none() || st.states[k as usize] != MemberState::Rebuilding
            {
                // Nothing to rebuild onto any more.
                st.rebuild = None;
                return Ok(true);
            }
            (k, next)
        };
        let end = (next + max_stripes).min(g.stripes);
        let rate = self.rebuild_rate_bytes_per_s();
        let started = Instant::now();
        let mut done_bytes = 0u64;
        let mut s = next;
        let bs = BLOCK_BYTES as usize;
        // Stripes per group: about 1 MiB per member and read call.
        let group_stripes = ((1u64 << 20) / g.chunk_bytes).clamp(1, 16);
        // Buffers reused by every group (fresh large allocations cost page faults).
        let cap = (group_stripes * g.chunk_bytes) as usize;
        let mut pool: Vec<Vec<u8>> = (0..g.disks).map(|_| vec![0u8; cap]).collect();
        while s < end {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let n = group_stripes.min(end - s);
            let bytes = (n * g.chunk_bytes) as usize;
            {
                // Ascending stripe order, like writers (groups are far shorter than the
                // lock table, so no two of a group's stripes share a lock).
                let _l: Vec<_> = (s..s + n).map(|t| lockw(self.stripe_lock(t))).collect();
                let view = self.view();
                let Some(target) = view.members[k as usize].clone() else {
                    return Ok(true);
                };
                if view.rebuild.map(|r| r.0) != Some(k) {
                    return Ok(true);
                }
                let at = g.member_offset(s, 0);
                let first = g.member_block(s, 0) as usize;
                let (out_buf, src_bufs) = pool.split_first_mut().expect("disks >= 3");
                let mut srcs: Vec<&[u8]> = Vec::new();
                let mut src_bufs = src_bufs.iter_mut();
                // Block rows whose sources fail their checksums cannot be rebuilt.
                let mut lost_rows: Vec<usize> = Vec::new();
                for o in (0..g.disks).filter(|o| *o != k) {
                    let Some(m) = view.usable(o, s) else {
                        return Err(VolumeError::Invalid {
                            path: self.member_path(&view, o),
                            detail: format!(
                                "member {o} is unavailable; rebuild of member {k} cannot go on"
                            ),
                        });
                    };
                    let buf = &mut src_bufs.next().expect("one buffer per source")[..bytes];
                    if let Err(e) = m.io.read_at(at, buf) {
                        self.fail_member(o, &format!("read error during rebuild: {e}"))?;
                        return Err(VolumeError::io(&m.path, e));
                    }
                    for (i, b) in buf.chunks_exact(bs).enumerate() {
                        if block_crc(b) != m.csums[first + i].load(Ordering::Acquire) {
                            log::error!(
                                "{}: block at byte {} fails its checksum during rebuild of member {k}; \
                                 that block of member {k} cannot be rebuilt and will read as an error",
                                m.path.display(),
                                at + (i * bs) as u64
                            );
                            lost_rows.push(i);
                        }
                    }
                    srcs.push(buf);
                }
                let out = &mut out_buf[..bytes];
                xor_many(out, &srcs);
                for (i, b) in out.chunks_exact(bs).enumerate() {
                    // A lost row gets an entry that can never match, so the garbage
                    // rebuilt there is reported on read instead of returned as data.
                    let c = block_crc(b) ^ if lost_rows.contains(&i) { u32::MAX } else { 0 };
                    target.csums[first + i].store(c, Ordering::Release);
                }
                if let Err(e) = target.io.write_at(at, out) {
                    self.fail_member(k, &format!("write error during rebuild: {e}"))?;
                    return Ok(true);
                }
                let mut st = lockw(&self.state);
                st.rebuild = Some((k, s + n));
            }
            s += n;
            done_bytes += bytes as u64;
            if rate > 0 {
                let due = Duration::from_secs_f64(done_bytes as f64 / rate as f64);
                // Short sleeps, so that closing the volume never waits long.
                while started.elapsed() < due && !self.stop.load(Ordering::Relaxed) {
                    std::thread::sleep((due - started.elapsed()).min(Duration::from_millis(50)));
                }
            }
        }
        self.checkpoint_rebuild(k, next, s)
    }

    /// Makes the rebuilt range durable, then records the new position in every superblock.
    fn checkpoint_rebuild(&self, k: u32, from: u64, to: u64) -> Result<bool, VolumeError> {
        let g = self.geometry;
        let view = self.view();
        let Some(target) = view.members[k as usize].clone() else {
            return Ok(true);
        };
        if to > from {
            let res = target
                .write_csum_pages(
                    &g,
                    from * g.blocks_per_chunk(),
                    to * g.blocks_per_chunk() - 1,
                )
                .and_then(|_| target.io.sync());
            if let Err(e) = res {
                self.fail_member(k, &format!("write error during rebuild: {e}"))?;
                return Ok(true);
            }
        }
        let mut st = lockw(&self.state);
        if st.rebuild.map(|r| r.0) != Some(k) {
            return Ok(true);
        }
        let finished = to >= g.stripes;
        if finished {
            st.states[k as usize] = MemberState::Active;
            st.rebuild = None;
            log::info!("rebuild of member {k} ({}) complete", target.path.display());
        } else {
            st.rebuild = Some((k, to));
        }
        self.write_superblocks(&mut st, true)?;
        Ok(finished)
    }

    /// Checks every stripe: block checksums of every member and parity; repairs what one
    /// member's damage explains. Decision table per block row (bad = members whose block
    /// fails its checksum, R = xor of the other members' blocks):
    /// | bad      | parity | action                                                   |
    /// |----------|--------|----------------------------------------------------------|
    /// | none     | ok     | nothing                                                  |
    /// | none     | wrong  | rewrite parity from the (verified) data                  |
    /// | {m}      | –      | crc(R) matches: write R to m; else block = R: fix entry; |
    /// |          |        | else unrecoverable                                       |
    /// | ≥ 2      | –      | unrecoverable, each reported                             |
    /// On a degraded stripe only the checksums of present members can be checked.
    pub fn scrub(
        &self,
        repair: bool,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<ScrubReport, VolumeError> {
        let g = self.geometry;
        let mut report = ScrubReport::default();
        let bs = BLOCK_BYTES as usize;
        for s in 0..g.stripes {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let _l = lockw(self.stripe_lock(s));
            let view = self.view();
            let mut bufs: Vec<Option<(Arc<Member>, Vec<u8>)>> = Vec::new();
            for m in 0..g.disks {
                match view.usable(m, s) {
                    Some(mem) => {
                        let mut b = vec![0u8; g.chunk_bytes as usize];
                        if let Err(e) = mem.io.read_at(g.member_offset(s, 0), &mut b) {
                            drop(_l);
                            self.fail_member(m, &format!("read error during scrub: {e}"))?;
                            return self.scrub(repair, progress);
                        }
                        bufs.push(Some((Arc::clone(mem), b)));
                    }
                    None => bufs.push(None),
                }
            }
            let first = g.member_block(s, 0) as usize;
            let degraded = bufs.iter().any(|b| b.is_none());
            for blk in 0..g.blocks_per_chunk() as usize {
                report.blocks_checked += 1;
                let range = blk * bs..(blk + 1) * bs;
                let bad: Vec<u32> = bufs
                    .iter()
                    .enumerate()
                    .filter_map(|(m, b)| {
                        let (mem, data) = b.as_ref()?;
                        (block_crc(&data[range.clone()])
                            != mem.csums[first + blk].load(Ordering::Acquire))
                        .then_some(m as u32)
                    })
                    .collect();
                let at = g.member_offset(s, range.start as u64);
                let finding = |m: u32, kind: &'static str, repaired: bool| ScrubFinding {
                    member: m,
                    path: self.member_path(&view, m),
                    member_offset: at,
                    stripe: s,
                    kind,
                    repaired,
                };
                if degraded {
                    for m in bad {
                        report.findings.push(finding(
                            m,
                            "checksum mismatch on a degraded stripe",
                            false,
                        ));
                    }
                    continue;
                }
                let rows: Vec<&[u8]> = bufs
                    .iter()
                    .map(|b| &b.as_ref().expect("not degraded").1[range.clone()])
                    .collect();
                match bad.len() {
                    0 => {
                        let mut z = vec![0u8; bs];
                        xor_many(&mut z, &rows);
                        if z.iter().all(|b| *b == 0) {
                            continue;
                        }
                        let p = g.parity_member(s);
                        let data_rows: Vec<&[u8]> = rows
                            .iter()
                            .enumerate()
                            .filter(|(m, _)| *m as u32 != p)
                            .map(|(_, r)| *r)
                            .collect();
                        let mut par = vec![0u8; bs];
                        xor_many(&mut par, &data_rows);
                        let mem = &bufs[p as usize].as_ref().expect("not degraded").0;
                        let ok =
                            repair && self.rewrite_block(mem, s, range.start as u64, &par).is_ok();
                        report
                            .findings
                            .push(finding(p, "parity does not match the data", ok));
                    }
                    1 => {
                        let m = bad[0];
                        let others: Vec<&[u8]> = rows
                            .iter()
                            .enumerate()
                            .filter(|(o, _)| *o as u32 != m)
                            .map(|(_, r)| *r)
                            .collect();
                        let mut r = vec![0u8; bs];
                        xor_many(&mut r, &others);
                        let mem = &bufs[m as usize].as_ref().expect("not degraded").0;
                        self.stats.csum_mismatches.fetch_add(1, Ordering::Relaxed);
                        if block_crc(&r) == mem.csums[first + blk].load(Ordering::Acquire) {
                            let ok = repair
                                && self.rewrite_block(mem, s, range.start as u64, &r).is_ok();
                            if ok {
                                self.stats.repaired_blocks.fetch_add(1, Ordering::Relaxed);
                                log::warn!(
                                    "{}: block at byte {at} repaired by scrub",
                                    mem.path.display()
                                );
                            }
                            report.findings.push(finding(
                                m,
                                "checksum mismatch, rebuilt from parity",
                                ok,
                            ));
                        } else if r == rows[m as usize] {
                            let ok = repair
                                && self.rewrite_block(mem, s, range.start as u64, &r).is_ok();
                            report.findings.push(finding(m, "stale checksum entry", ok));
                        } else {
                            report.findings.push(finding(
                                m,
                                "checksum mismatch, parity cannot explain it",
                                false,
                            ));
                        }
                    }
                    _ => {
                        for m in bad {
                            report.findings.push(finding(
                                m,
                                "checksum mismatch on two or more members",
                                false,
                            ));
                        }
                    }
                }
            }
            report.stripes += 1;
            progress(s + 1, g.stripes);
            if s % 64 == 0 {
                // For `raid-sim status` in another process; best effort.
                let _ = std::fs::write(
                    self.dir.join(SCRUB_PROGRESS_FILE),
                    format!("{} {}\n", s + 1, g.stripes),
                );
            }
        }
        let _ = std::fs::remove_file(self.dir.join(SCRUB_PROGRESS_FILE));
        Ok(report)
    }

    /// Writes one block of a member and its checksum entry (stripe lock held).
    fn rewrite_block(
        &self,
        mem: &Member,
        stripe: u64,
        chunk_offset: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        let g = self.geometry;
        let b = g.member_block(stripe, chunk_offset);
        mem.csums[b as usize].store(block_crc(data), Ordering::Release);
        mem.io
            .write_at(g.member_offset(stripe, chunk_offset), data)?;
        mem.write_csum_pages(&g, b, b)
    }

    /// Runs a rebuild to its end, reporting (done, total) stripes.
    pub fn run_rebuild(&self, mut progress: impl FnMut(u64, u64)) -> Result<(), VolumeError> {
        loop {
            let done = self.rebuild_step(self.opts.rebuild_checkpoint_stripes.max(1))?;
            let pos = self.state.read().unwrap_or_else(|e| e.into_inner()).rebuild;
            progress(
                pos.map(|p| p.1).unwrap_or(self.geometry.stripes),
                self.geometry.stripes,
            );
            if done || self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
    }

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

impl Inner {
    /// Fails a member whose file was removed, replaced or truncated under the running
    /// volume (the open descriptor would otherwise keep serving an unlinked file).
    pub fn check_member_files(&self) {
        let view = self.view();
        for (i, m) in view.members.iter().enumerate() {
            let Some(m) = m else { continue };
            if view.states[i] == MemberState::Failed {
                continue;
            }
            let problem = match (std::fs::metadata(&m.path), m.io.identity()) {
                (Err(e), _) => Some(format!("member file is gone: {e}")),
                (Ok(meta), Some(id)) => {
                    use std::os::unix::fs::MetadataExt;
                    if (meta.dev(), meta.ino()) != id {
                        Some("member file was replaced by another file".to_string())
                    } else if meta.len() < self.geometry.member_bytes() {
                        Some(format!(
                            "member file was truncated to {} bytes (needs {})",
                            meta.len(),
                            self.geometry.member_bytes()
                        ))
                    } else {
                        None
                    }
                }
                (Ok(_), None) => None,
            };
            if let Some(why) = problem {
                if let Err(e) = self.fail_member(i as u32, &why) {
                    log::error!("{}: {e}", m.path.display());
                }
            }
        }
    }
}

fn set_busy(inner: &Inner, what: Option<String>) {
    *inner.busy.lock().unwrap_or_else(|e| e.into_inner()) = what;
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
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

impl RaidVolume {
    /// Starts a rebuild of failed member `k` (see `Inner::start_rebuild`).
    pub fn start_rebuild(&self, k: u32, with: Option<&Path>) -> Result<(), VolumeError> {
        self.inner.start_rebuild(k, with)
    }

    /// Runs the current rebuild to its end in this thread.
    pub fn run_rebuild(&self, progress: impl FnMut(u64, u64)) -> Result<(), VolumeError> {
        self.inner.run_rebuild(progress)
    }

    pub fn scrub(
        &self,
        repair: bool,
        progress: impl FnMut(u64, u64),
    ) -> Result<ScrubReport, VolumeError> {
        self.inner.scrub(repair, progress)
    }

    /// Member file paths by index (None for a missing member).
    pub fn member_paths(&self) -> Vec<Option<PathBuf>> {
        self.inner
            .view()
            .members
            .iter()
            .map(|m| m.as_ref().map(|m| m.path.clone()))
            .collect()
    }
}

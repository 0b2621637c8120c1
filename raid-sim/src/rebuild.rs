//! Rebuild of a failed member onto a spare or a replacement, stripe by stripe with
//! checkpoints in the superblocks, while the volume serves I/O.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::array::{lock_write, Inner, Member};
use crate::files::{create_member_file, file_len, member_name, open_rw, wrap};
use crate::format::{block_crc, MemberState, Superblock};
use crate::parity::xor_many;
use crate::volume::{VolumeError, BLOCK_BYTES};

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
        let mut st = lock_write(&self.state);
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
        let file = open_rw(&target_path)?;
        if file_len(&file, &target_path)? < g.member_bytes() {
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
            let mut st = lock_write(&self.state);
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
                let _l: Vec<_> = (s..s + n)
                    .map(|t| lock_write(self.stripe_lock(t)))
                    .collect();
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
                let mut st = lock_write(&self.state);
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
        let mut st = lock_write(&self.state);
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
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

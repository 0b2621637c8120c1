//! Scrub: reads every stripe, checks block checksums and parity, repairs what it can, and
//! reports the rest (also to `VOLDIR/raid.scrub-report` for `raid-sim` in another process).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::array::{lock_write, Inner, Member};
use crate::files::in_use;
use crate::format::block_crc;
use crate::parity::{xor_except, xor_many};
use crate::volume::{VolumeError, BLOCK_BYTES};

pub const SCRUB_REPORT_FILE: &str = "raid.scrub-report";
/// "DONE TOTAL" stripes of a running scrub.
pub const SCRUB_PROGRESS_FILE: &str = "raid.scrub-progress";

/// Progress (done, total stripes) of a scrub running in the process holding the volume.
pub fn scrub_progress(dir: &Path) -> Option<(u64, u64)> {
    if !in_use(dir) {
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

impl Inner {
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
            let _l = lock_write(self.stripe_lock(s));
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
                        let par = xor_except(&rows, p as usize);
                        let mem = &bufs[p as usize].as_ref().expect("not degraded").0;
                        let ok =
                            repair && self.rewrite_block(mem, s, range.start as u64, &par).is_ok();
                        report
                            .findings
                            .push(finding(p, "parity does not match the data", ok));
                    }
                    1 => {
                        let m = bad[0];
                        let r = xor_except(&rows, m as usize);
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
}

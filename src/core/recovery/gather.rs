//! Gathering the entries recovery replays: the local ring's, completed (or replaced, when the
//! ring is missing or damaged, or on takeover) by the replica's copy.

use std::path::Path;

use super::RecoveryReport;
use crate::core::replica::ReplicaLink;
use crate::core::superblock::Superblock;
use crate::core::types::Epoch;
use crate::core::FsError;
use crate::statelog::{RingVersion, ScanEnd, ScanResult, ScannedEntry, Seq, StateLog};

/// Where recovery's entries came from.
pub(super) struct Gathered {
    pub entries: Vec<ScannedEntry>,
    /// The local scan when the local ring can be appended to as it is.
    pub scan: Option<ScanResult>,
    /// Entries taken from the replica.
    pub from_mirror: usize,
}

/// Where recovery gets the replica's copy from, and whether it must use it (takeover).
pub struct ReplicaSource<'a> {
    pub link: &'a dyn ReplicaLink,
    pub force: bool,
}

/// The entries after the checkpoint: from the local ring, completed (or replaced, when the
/// ring is missing or damaged) by the mirror agent's copy when a mirror is configured.
pub(super) fn gather_entries(
    ring_path: &Path,
    sb: &Superblock,
    mirror: Option<ReplicaSource<'_>>,
    report: &mut RecoveryReport,
) -> Result<Gathered, FsError> {
    let local = match StateLog::scan_file(ring_path) {
        Ok(scan) if scan.header.volume_id != sb.volume_id => Err(FsError::Corrupt {
            what: "state log",
            at: ring_path.display().to_string(),
            detail: "it belongs to another volume (volume id mismatch)".into(),
        }),
        Ok(scan) => match scan.end {
            ScanEnd::Corrupt {
                file_offset,
                later_seq,
                later_file_offset,
            } => Err(FsError::Corrupt {
                what: "state log",
                at: format!("{} byte {}", ring_path.display(), file_offset),
                detail: corrupt_detail(&scan, later_seq, later_file_offset),
            }),
            _ => Ok(scan),
        },
        Err(e) => Err(e.into()),
    };
    if let Ok(scan) = &local {
        warn_about_the_end(ring_path, scan, report);
    }
    let Some(mirror) = mirror else {
        let scan = local?;
        return Ok(Gathered {
            entries: scan.entries.clone(),
            scan: continued(ring_path, scan.clone()),
            from_mirror: 0,
        });
    };
    let link = mirror.link;
    let remote = link
        .read_back(sb.volume_id, Epoch(sb.epoch), Seq(sb.covers_seq))
        .map_err(|e| FsError::Mirror {
            routes: link.describe(),
            detail: format!("reading the entries after seq {} back: {e}", sb.covers_seq),
        })?;
    let mut remote_entries = Vec::with_capacity(remote.len());
    for (seq, bytes) in remote {
        match ScannedEntry::from_bytes(&bytes) {
            Some(e) if e.header.seq == seq.0 => remote_entries.push(e),
            _ => {
                return Err(FsError::Corrupt {
                    what: "mirrored entry",
                    at: format!("seq {seq} at the agent {}", link.describe()),
                    detail: "it fails its checksum or names another seq".into(),
                })
            }
        }
    }
    if let Some(first) = remote_entries.first() {
        if first.header.seq != sb.covers_seq + 1 {
            return Err(FsError::Mirror {
                routes: link.describe(),
                detail: format!(
                    "the agent's copy starts at seq {} but the volume's checkpoint covers only through {}: \
                     entries in between are missing",
                    first.header.seq, sb.covers_seq
                ),
            });
        }
    }
    match local {
        Ok(scan) if !mirror.force => {
            let last_local = scan.next_seq - 1;
            let extra: Vec<_> = remote_entries
                .into_iter()
                .filter(|e| e.header.seq > last_local)
                .collect();
            if extra.is_empty() {
                return Ok(Gathered {
                    entries: scan.entries.clone(),
                    scan: continued(ring_path, scan.clone()),
                    from_mirror: 0,
                });
            }
            log::warn!(
                "the mirror agent holds {} entries after the local ring's last (seq {}): recovering them from the mirror",
                extra.len(),
                last_local
            );
            let from_mirror = extra.len();
            let mut entries: Vec<_> = scan
                .entries
                .into_iter()
                .filter(|e| e.header.seq > sb.covers_seq)
                .collect();
            entries.extend(extra);
            Ok(Gathered {
                entries,
                scan: None,
                from_mirror,
            })
        }
        other => {
            match other {
                Err(e) => log::warn!(
                    "local state log unusable ({e}); recovering {} entries from the mirror agent",
                    remote_entries.len()
                ),
                Ok(_) => log::info!(
                    "takeover: recovering {} entries from the mirror agent",
                    remote_entries.len()
                ),
            }
            Ok(Gathered {
                from_mirror: remote_entries.len(),
                entries: remote_entries,
                scan: None,
            })
        }
    }
}

/// The scan, when the ring can be appended to as it is; None (rebuild it after the recovered
/// entries) for a ring of an older version, which is read once and then replaced.
fn continued(ring_path: &Path, scan: ScanResult) -> Option<ScanResult> {
    if scan.header.version.is_writable() {
        return Some(scan);
    }
    log::warn!(
        "state log {} is ring version {}: its {} entries are recovered with the old rules and \
         the ring is replaced by a version {} ring",
        ring_path.display(),
        scan.header.version as u32,
        scan.entries.len(),
        RingVersion::CURRENT as u32
    );
    None
}

/// Why a scan that stopped at damage refuses the mount: what was lost, how we know.
fn corrupt_detail(scan: &ScanResult, later_seq: u64, later_file_offset: u64) -> String {
    let cut = scan
        .truncated_len
        .map(|len| format!(" (the file is cut short at {len} bytes)"))
        .unwrap_or_default();
    let how = if scan.header.version.has_watermark() {
        format!(
            "entry seq {} is damaged or missing{cut}, but the ring header says entries through \
             seq {later_seq} (up to byte {later_file_offset}) were flushed to the media",
            scan.next_seq
        )
    } else {
        format!(
            "an entry is damaged{cut} but valid entries follow it (seq {later_seq} at byte \
             {later_file_offset})"
        )
    };
    format!(
        "{how}; acknowledged operations after the damage would be lost. Recover from the mirror \
         (smlogfs recover VOLDIR --mirror HOST:PORT) or restore the ring from a copy; nothing \
         was changed"
    )
}

/// Warns about a torn tail (what it dropped) and a ring file found short.
fn warn_about_the_end(ring_path: &Path, scan: &ScanResult, report: &mut RecoveryReport) {
    if let ScanEnd::TornTail { file_offset } = scan.end {
        let dropped = match scan.dropped {
            Some(d) => format!(
                "; {} later entries (seq {}..={}, {} bytes after the gap) never reached the media \
                 in order and are dropped",
                d.entries, d.first_seq, d.last_seq, d.bytes
            ),
            None => String::new(),
        };
        log::warn!(
            "state log {}: torn entry at byte {} after the durable watermark (seq {}): writes cut \
             short by the crash; recovering the {} entries before it{dropped}",
            ring_path.display(),
            file_offset,
            scan.header.durable_seq,
            scan.entries.len()
        );
        report.torn_tail_at = Some(file_offset);
    }
    if let Some(len) = scan.truncated_len {
        log::warn!(
            "state log {} is {} bytes, shorter than its {} bytes: recovered the entries before the cut",
            ring_path.display(),
            len,
            scan.header.ring_bytes
        );
    }
}

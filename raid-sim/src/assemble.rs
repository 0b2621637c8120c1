//! Creating an array, and assembling one from the files in a volume directory: the
//! decisions of `inspect`, then the journal's replay and the resync of dirty stripes.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::array::{ArrayState, Inner, Member, OpError, RaidOptions, Spare, Stats, STRIPE_LOCKS};
use crate::files::{
    create_member_file, create_sized, io_err, list_files, load_csums, member_name, open_rw,
    spare_name, take_lock, wrap,
};
use crate::format::{MemberState, Superblock, NO_MEMBER, PAGE_BYTES, ROLE_SPARE};
use crate::inspect::{classify, scan, Classified};
use crate::journal::{min_ring_bytes, Journal, JOURNAL_FILE, RECORDS_FILE};
use crate::layout::Geometry;
use crate::member::FileMember;
use crate::raid::RaidVolume;
use crate::volume::{CreateOptions, VolumeError};

pub const MAX_SPARES: u32 = 16;

fn random_id() -> u128 {
    let mut b = [0u8; 16];
    if let Ok(f) = File::open("/dev/urandom") {
        use std::io::Read;
        let _ = (&f).read_exact(&mut b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    u128::from_le_bytes(b) ^ t ^ ((std::process::id() as u128) << 64)
}

pub fn create(
    dir: &Path,
    opts: &CreateOptions,
    ropts: &RaidOptions,
) -> Result<RaidVolume, VolumeError> {
    let invalid = |detail: String| VolumeError::Invalid {
        path: dir.to_path_buf(),
        detail,
    };
    let geometry = Geometry::for_capacity(opts.disks, opts.chunk_bytes, opts.capacity_bytes)
        .map_err(invalid)?;
    if opts.spares > MAX_SPARES {
        return Err(invalid(format!(
            "{} spares: at most {MAX_SPARES}",
            opts.spares
        )));
    }
    if !ropts.journal_bytes.is_multiple_of(PAGE_BYTES) {
        return Err(invalid(format!(
            "journal size {} is not a multiple of {PAGE_BYTES}",
            ropts.journal_bytes
        )));
    }
    // The ring must take a few full-stripe records; large chunks get a larger ring.
    let ring_bytes = ropts.journal_bytes.max(min_ring_bytes(&geometry));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Held through the assembly below: a lock released and taken again can be refused, for
    // a child that another thread forks in between keeps the released lock until it execs.
    let lock = take_lock(dir)?;
    {
        for (path, _) in list_files(dir) {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        let array_id = random_id();
        let sb = Superblock {
            array_id,
            events: 1,
            geometry,
            spares: opts.spares,
            role: 0,
            array_active: false,
            rebuild_rate_kib_s: ropts.create_rebuild_rate_kib_s,
            rebuild_member: NO_MEMBER,
            rebuild_next_stripe: 0,
            member_states: vec![MemberState::Active; geometry.disks as usize],
        };
        log::info!(
            "creating RAID-5 in {}: {} disks, chunk {} bytes, {} stripes, {} usable bytes, {} spares",
            dir.display(),
            geometry.disks,
            geometry.chunk_bytes,
            geometry.stripes,
            geometry.capacity_bytes(),
            opts.spares
        );
        for k in 0..geometry.disks {
            let sb = Superblock {
                role: k,
                ..sb.clone()
            };
            create_member_file(&dir.join(member_name(k)), &geometry, &sb)?;
        }
        for j in 0..opts.spares {
            let sb = Superblock {
                role: ROLE_SPARE,
                ..sb.clone()
            };
            create_member_file(&dir.join(spare_name(j)), &geometry, &sb)?;
        }
        create_journal_files(dir, array_id, ring_bytes, &geometry)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    assemble(dir, ropts, lock)
}

fn create_journal_files(
    dir: &Path,
    array_id: u128,
    ring_bytes: u64,
    g: &Geometry,
) -> Result<(), VolumeError> {
    let rpath = dir.join(RECORDS_FILE);
    create_sized(&rpath, ring_bytes)?
        .sync_all()
        .map_err(io_err(&rpath))?;
    let jpath = dir.join(JOURNAL_FILE);
    let jfile = create_sized(&jpath, 0)?;
    Journal::create(&jpath, &FileMember::new(jfile), array_id, ring_bytes, g)
}

pub fn open(dir: &Path, ropts: &RaidOptions) -> Result<RaidVolume, VolumeError> {
    let lock = match take_lock(dir) {
        Err(VolumeError::InUse { path }) if ropts.take_over_lock => {
            log::warn!(
                "{}: held by another process; taking the volume over anyway (the caller fences the old owner)",
                path.display()
            );
            OpenOptions::new()
                .read(true)
                .open(&path)
                .map_err(io_err(&path))?
        }
        other => other?,
    };
    assemble(dir, ropts, lock)
}

/// Assembles the array in `dir` while holding its lock.
fn assemble(dir: &Path, ropts: &RaidOptions, lock: File) -> Result<RaidVolume, VolumeError> {
    let Classified {
        inspection,
        mut usable,
        spares,
    } = classify(dir, scan(dir, true))?;
    if let Some(refusal) = inspection.refusal() {
        return Err(refusal);
    }
    let g = inspection.geometry;
    let mut members: Vec<Option<Arc<Member>>> = Vec::new();
    let mut states = Vec::new();
    let mut reasons = Vec::new();
    for rep in &inspection.members {
        let k = rep.index;
        match usable.remove(&k) {
            Some(f) => {
                let file = f.file.expect("usable members are open");
                let io = wrap(&f.path, file, ropts.wrap_io.as_ref());
                let valid_blocks = match inspection.rebuild {
                    Some((r, next)) if r == k => next * g.blocks_per_chunk(),
                    _ => g.blocks_per_member(),
                };
                let csums = load_csums(&f.path, io.as_ref(), &g, valid_blocks)?;
                members.push(Some(Arc::new(Member::new(f.path.clone(), io, csums))));
                states.push(if rep.state == "rebuilding" {
                    MemberState::Rebuilding
                } else {
                    MemberState::Active
                });
                reasons.push(None);
            }
            None => {
                if let Some(p) = &rep.problem {
                    log::warn!(
                        "{}: {p}; the array runs degraded without it",
                        rep.path.display()
                    );
                }
                members.push(None);
                states.push(MemberState::Failed);
                reasons.push(rep.problem.clone());
            }
        }
    }
    for (p, why) in &inspection.ignored {
        log::warn!("{}: ignored: {why}", p.display());
    }
    let jpath = dir.join(JOURNAL_FILE);
    let rpath = dir.join(RECORDS_FILE);
    let mut resync_all = false;
    if !jpath.exists() || !rpath.exists() {
        log::warn!(
            "{}: journal missing; creating a new one{}",
            jpath.display(),
            if inspection.array_active {
                " and resyncing every stripe (the array was not closed cleanly)"
            } else {
                ""
            }
        );
        resync_all = inspection.array_active;
        let ring_bytes = ropts.journal_bytes.max(min_ring_bytes(&g));
        create_journal_files(dir, inspection.array_id, ring_bytes, &g)?;
    }
    let open_wrapped = |p: &Path| open_rw(p).map(|f| wrap(p, f, ropts.wrap_io.as_ref()));
    let (journal, recovery) = Journal::open(
        &jpath,
        open_wrapped(&jpath)?,
        &rpath,
        open_wrapped(&rpath)?,
        inspection.array_id,
        &g,
        ropts.journal_sync,
    )?;
    let live_rebuild = inspection
        .rebuild
        .filter(|(k, _)| states.get(*k as usize) == Some(&MemberState::Rebuilding));
    let state = ArrayState {
        members,
        states,
        // A rebuild whose new member is unusable now is over; the member counts as failed.
        rebuild: live_rebuild,
        spares: spares
            .iter()
            .map(|f| Spare {
                path: f.path.clone(),
            })
            .collect(),
        events: inspection.events,
        rebuild_rate_kib_s: inspection.rebuild_rate_kib_s,
        spares_wanted: inspection.spares_wanted,
        reasons,
    };
    drop(spares);
    let inner = Arc::new(Inner {
        dir: dir.to_path_buf(),
        geometry: g,
        array_id: inspection.array_id,
        opts: ropts.clone(),
        state: RwLock::new(state),
        stripe_locks: (0..STRIPE_LOCKS).map(|_| RwLock::new(())).collect(),
        gate: RwLock::new(()),
        journal: Mutex::new(journal),
        poisoned: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        stats: Stats::default(),
        lock_file: lock,
        busy: Mutex::new(None),
        unaligned: Mutex::new(()),
    });
    {
        let mut st = inner.state.write().unwrap_or_else(|e| e.into_inner());
        inner.write_superblocks(&mut st, true)?;
    }
    let records = &recovery.records;
    if !records.is_empty() {
        log::warn!(
            "{}: replaying {} stripe update(s) left open by a crash",
            rpath.display(),
            records.len()
        );
        let view = inner.view();
        for r in records {
            match inner.apply_record(&view, r) {
                Ok(()) => {}
                Err(OpError::Volume(e)) => return Err(e),
                Err(OpError::Member(m, why)) => inner.fail_member(m, &why)?,
            }
            inner.stats.replayed_records.fetch_add(1, Ordering::Relaxed);
        }
    }
    let dirty: Vec<u64> = if resync_all {
        (0..g.stripes).collect()
    } else {
        recovery.dirty_stripes.clone()
    };
    if !dirty.is_empty() {
        log::info!(
            "{}: checking {} stripe(s) of regions dirty at the last shutdown",
            jpath.display(),
            dirty.len()
        );
        let mut unsure = Vec::new();
        for s in dirty {
            if !inner.resync_stripe(s)? {
                unsure.push(s);
            }
        }
        if !unsure.is_empty() {
            log::warn!(
                "{}: {} stripe(s) were being written at the last shutdown and a member is missing; \
                 their parity cannot be checked (first: {:?})",
                dir.display(),
                unsure.len(),
                &unsure[..unsure.len().min(8)]
            );
        }
    }
    inner.checkpoint_journal(true)?;
    log::info!(
        "assembled {}: {} disks, {}{}",
        dir.display(),
        g.disks,
        if inspection.degraded() {
            "degraded"
        } else {
            "clean"
        },
        match inspection.rebuild {
            Some((m, s)) => format!(", rebuild of member {m} resumes at stripe {s}"),
            None => String::new(),
        }
    );
    Ok(RaidVolume::from_inner(inner))
}

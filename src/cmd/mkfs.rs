//! `smlogfs mkfs VOLDIR`: backing files, superblock, empty root, state log ring.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{denied, exit, CliError, VolumeLock};
use crate::core::meta::{encode_blob, MetaRecord, BLOB_SNAPSHOT};
use crate::core::superblock::{BlobRef, Superblock, FIRST_DATA_BLOCK};
use crate::core::types::{InodeRec, Kind, Ts, BLOCK_BYTES, ROOT_INO};
use crate::progress::Progress;
use crate::statelog::{StateLog, MIN_RING_BYTES};

pub struct MkfsOptions {
    pub size_bytes: u64,
    pub ring_bytes: u64,
    pub ring_file: Option<PathBuf>,
    pub force: bool,
    pub disks: u32,
    pub chunk_bytes: u64,
    pub spares: u32,
}

fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut id);
    }
    if id == [0; 16] {
        let t = Ts::now();
        id[..8].copy_from_slice(&t.sec.to_le_bytes());
        id[8..12].copy_from_slice(&t.nsec.to_le_bytes());
        id[12..].copy_from_slice(&std::process::id().to_le_bytes());
    }
    id
}

pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// mkfs was refused permission to write `path`; `outcome` says what that left behind.
fn refused(path: &Path, outcome: &str) -> CliError {
    CliError::new(
        exit::PERMISSION,
        format!(
            "permission denied on {}: run mkfs as a user that may write there (usually root) \
             or give this user access (ls -ld, chown, chmod); {outcome}",
            path.display()
        ),
    )
}

pub fn mkfs(voldir: &Path, o: &MkfsOptions) -> Result<String, CliError> {
    if o.size_bytes < 4 << 20 || !o.size_bytes.is_multiple_of(BLOCK_BYTES) {
        return Err(CliError::new(
            exit::USAGE,
            format!(
                "--size {}: must be at least 4M and a multiple of 4096",
                o.size_bytes
            ),
        ));
    }
    if o.ring_bytes < MIN_RING_BYTES || !o.ring_bytes.is_multiple_of(4096) {
        return Err(CliError::new(
            exit::USAGE,
            format!(
                "--ring {}: must be at least {} bytes ({} MiB) and a multiple of 4096, so the largest op (a 1 MiB write) fits",
                o.ring_bytes,
                MIN_RING_BYTES,
                MIN_RING_BYTES >> 20
            ),
        ));
    }
    // Geometry and paths are checked before anything is created.
    if o.disks != 1 {
        raid_sim::Geometry::for_capacity(o.disks, o.chunk_bytes, o.size_bytes).map_err(|e| {
            CliError::new(
                exit::USAGE,
                format!(
                    "--disks {} --chunk {}: {e} (use --disks 1 for a single backing file)",
                    o.disks, o.chunk_bytes
                ),
            )
        })?;
    }
    if let Some(dir) = o.ring_file.as_deref().and_then(Path::parent) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            return Err(CliError::new(
                exit::USAGE,
                format!(
                    "--ring-file: directory {} does not exist; create it first",
                    dir.display()
                ),
            ));
        }
    }
    if voldir.exists() && !voldir.is_dir() {
        return Err(CliError::new(
            exit::USAGE,
            format!("{} exists and is not a directory", voldir.display()),
        ));
    }
    std::fs::create_dir_all(voldir).map_err(|e| {
        if denied(&e) {
            refused(voldir, "nothing was changed")
        } else {
            CliError::new(exit::IO, format!("cannot create {}: {e}", voldir.display()))
        }
    })?;
    let _lock = VolumeLock::acquire(voldir)?;
    let ring_path = match &o.ring_file {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.clone()),
        None => voldir.join("statelog"),
    };
    let exists = raid_sim::volume_exists(voldir) || voldir.join("statelog").exists();
    if exists && !o.force {
        return Err(CliError::new(
            exit::EXISTS,
            format!(
                "{} already holds a volume; nothing was changed. Use --force to overwrite it (its data is lost)",
                voldir.display()
            ),
        ));
    }
    if ring_path.exists() && !o.force && o.ring_file.is_some() {
        return Err(CliError::new(
            exit::EXISTS,
            format!(
                "ring file {} already exists; nothing was changed. Use --force to overwrite it",
                ring_path.display()
            ),
        ));
    }
    let opts = raid_sim::CreateOptions {
        capacity_bytes: o.size_bytes,
        disks: o.disks,
        chunk_bytes: o.chunk_bytes,
        spares: o.spares,
    };
    let not_created = |e: raid_sim::VolumeError| match super::volume_permission_denied(&e) {
        Some(path) => refused(path, "no volume was created"),
        None => CliError::new(exit::IO, format!("creating the backing files: {e}")),
    };
    let vol = raid_sim::create_volume(voldir, &opts).map_err(not_created)?;
    let capacity_bytes = vol.capacity_bytes() / BLOCK_BYTES * BLOCK_BYTES;
    let volume_id = random_id();
    let now = Ts::now();
    let (uid, gid) = std::fs::metadata(voldir)
        .map(|m| (m.uid(), m.gid()))
        .unwrap_or((0, 0));
    let root = InodeRec {
        ino: ROOT_INO,
        kind: Kind::Dir,
        perm: 0o755,
        uid,
        gid,
        nlink: 2,
        size: 0,
        rdev: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        xattrs: BTreeMap::new(),
        target: None,
        parent: ROOT_INO,
    };
    let (blob, payload_bytes, crc) = encode_blob(
        BLOB_SNAPSHOT,
        1,
        &[MetaRecord::Inode(root), MetaRecord::NextIno(ROOT_INO + 1)],
    );
    let io = |e: raid_sim::VolumeError| CliError::new(exit::IO, format!("writing the volume: {e}"));
    vol.write_at(FIRST_DATA_BLOCK * BLOCK_BYTES, &blob)
        .map_err(io)?;
    let stored_ring = if o.ring_file.is_some() {
        ring_path.display().to_string()
    } else {
        "statelog".to_string()
    };
    let sb = Superblock {
        volume_id,
        capacity_bytes,
        generation: 1,
        covers_seq: 0,
        epoch: 1,
        next_ino: ROOT_INO + 1,
        ring_path: stored_ring,
        ring_bytes: o.ring_bytes,
        blobs: vec![BlobRef {
            start_block: FIRST_DATA_BLOCK,
            blocks: (blob.len() as u64 / BLOCK_BYTES) as u32,
            payload_bytes,
            crc,
        }],
        created: now,
        owner: String::new(),
    };
    // Both slots, so that no older superblock can win over this one.
    let mut other = sb.clone();
    other.generation = 0;
    other.write(vol.as_ref()).map_err(io)?;
    sb.write(vol.as_ref()).map_err(io)?;
    let bar = Progress::new("creating the state log", o.ring_bytes);
    StateLog::create(&ring_path, o.ring_bytes, volume_id, |done| bar.set(done)).map_err(|e| {
        match super::log_permission_denied(&e) {
            Some(path) => refused(
                path,
                "the backing files were written but the volume has no ring: run mkfs again \
                 with --force once this is fixed",
            ),
            None => CliError::new(exit::IO, e.to_string()),
        }
    })?;
    bar.finish();
    let _ = std::fs::remove_file(voldir.join("daemon.pid"));
    Ok(format!(
        "created volume {} in {}: {} bytes ({}), state log {} ({} bytes)",
        hex(&volume_id),
        voldir.display(),
        capacity_bytes,
        vol.describe(),
        ring_path.display(),
        o.ring_bytes
    ))
}

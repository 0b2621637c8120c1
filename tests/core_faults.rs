//! Faults the fs core must survive without breaking its promises, driven in-process through
//! the library on a volume made by the real `smlogfs mkfs`: a takeover found by a forced
//! checkpoint, a fenced node's fsync, and a failed read in the middle of a hole punch.
//!
//! Fault injection goes through test doubles of the core's outside effects: a `BlockVolume`
//! whose reads can be made to fail, and a `Replica` that can be told it was fenced. The
//! fenced fsync is also checked end to end: a real mount with a mirror agent on a second
//! host (a network namespace, as in tests/mirror_failover.rs) and a real takeover.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::netns::{Agent, Host};

use raid_sim::{BlockVolume, VolumeError};
use smlogfs::core::superblock::Superblock;
use smlogfs::core::{
    Caller, Errno, Fs, FsConfig, Ino, Poison, Replica, ReplicaError, ReplicaInfo, Seq,
};
use smlogfs::progress::Progress;

const ROOT: Ino = Ino(1);
const BLOCK: usize = 4096;
const ROOT_CALLER: Caller = Caller { uid: 0, gid: 0 };

/// A volume whose reads fail while `fail_reads` is set (writes and flushes pass through);
/// it keeps the (offset, length) of every write.
struct FaultyVolume {
    inner: Arc<dyn BlockVolume>,
    fail_reads: AtomicBool,
    writes: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl BlockVolume for FaultyVolume {
    fn capacity_bytes(&self) -> u64 {
        self.inner.capacity_bytes()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        if self.fail_reads.load(Ordering::Acquire) {
            return Err(VolumeError::io(
                Path::new("faulty-volume"),
                std::io::Error::other("injected read failure"),
            ));
        }
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        self.writes
            .lock()
            .unwrap()
            .push((offset, data.len() as u64));
        self.inner.write_at(offset, data)
    }

    fn flush(&self) -> Result<(), VolumeError> {
        self.inner.flush()
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    fn fence(&self) {
        self.inner.fence()
    }
}

/// A replica that acknowledges everything until `fence` is set, then reports the fence the
/// way the mirror agent does after a takeover (and is no longer protecting anything).
#[derive(Default)]
struct FakeReplica {
    fenced: AtomicBool,
}

impl Replica for FakeReplica {
    fn submit(&self, _seq: Seq, _entry: Vec<u8>) {}

    fn wait(&self, _seq: Seq) -> Result<(), ReplicaError> {
        match self.fenced() {
            Some(why) => Err(ReplicaError::Fenced(why)),
            None => Ok(()),
        }
    }

    fn protected(&self) -> bool {
        !self.fenced.load(Ordering::Acquire)
    }

    fn fenced(&self) -> Option<String> {
        self.fenced
            .load(Ordering::Acquire)
            .then(|| "the volume was taken over (test)".to_string())
    }

    fn acked_through(&self) -> Option<Seq> {
        None
    }

    fn checkpoint(&self, _covers: Seq) {}

    fn info(&self) -> ReplicaInfo {
        common::fake_replica_info("fake", true, self.protected())
    }
}

/// An in-process file system on a fresh volume, over a `FaultyVolume`.
struct Setup {
    // Keeps the temporary directory (and the volume in it) alive.
    _vol: common::Volume,
    faulty: Arc<FaultyVolume>,
    fs: Fs,
    fenced_hook_ran: Arc<AtomicBool>,
}

impl Setup {
    fn new(mkfs: &[&str]) -> Setup {
        let vol = common::Volume::new(mkfs);
        let inner: Arc<dyn BlockVolume> =
            Arc::from(raid_sim::open_volume(vol.voldir()).expect("open the volume"));
        let faulty = Arc::new(FaultyVolume {
            inner,
            fail_reads: AtomicBool::new(false),
            writes: Default::default(),
        });
        let config = FsConfig {
            // Data goes through the ring and the block cache, so that a checkpoint puts it
            // on the volume and later reads of it go to the volume.
            direct_writes: false,
            ..FsConfig::default()
        };
        let fs = Fs::open_on(
            faulty.clone(),
            vol.voldir(),
            config,
            &Progress::hidden,
            None,
            false,
        )
        .expect("open the file system");
        let fenced_hook_ran = Arc::new(AtomicBool::new(false));
        let flag = fenced_hook_ran.clone();
        fs.set_on_fenced(Box::new(move || flag.store(true, Ordering::Release)));
        Setup {
            _vol: vol,
            faulty,
            fs,
            fenced_hook_ran,
        }
    }

    fn create(&self, name: &str) -> Ino {
        let attr = self
            .fs
            .mknod(
                None,
                ROOT_CALLER,
                ROOT,
                name.as_bytes(),
                libc::S_IFREG | 0o644,
                0,
                None,
            )
            .unwrap_or_else(|e| panic!("create {name}: errno {}", e.0));
        Ino(attr.rec.ino)
    }

    /// Writes `blocks` blocks of `byte` to `ino` from offset 0, in 256 KiB writes.
    fn fill(&self, ino: Ino, blocks: usize, byte: u8) -> Result<(), Errno> {
        let chunk = vec![byte; 64 * BLOCK];
        let mut done = 0;
        while done < blocks {
            let n = (blocks - done).min(64);
            self.fs
                .write(None, ino, (done * BLOCK) as u64, &chunk[..n * BLOCK])?;
            done += n;
        }
        Ok(())
    }

    /// What a takeover does to the volume: a newer epoch in its superblock.
    fn raise_epoch_on_the_volume(&self) {
        let mut sb = Superblock::read(self.faulty.inner.as_ref()).expect("read the superblock");
        sb.epoch += 1;
        sb.owner = "peer".into();
        sb.write(self.faulty.inner.as_ref())
            .expect("write the superblock");
    }
}

/// A write that needs the blocks freed since the last checkpoint forces a checkpoint; when
/// that checkpoint finds the volume taken over, the node is fenced: the write and every later
/// change answer EROFS (not EIO or ENOSPC), and the fence hook runs (the daemon releases its
/// volume lock there).
#[test]
fn a_fence_found_by_a_forced_checkpoint_fences_the_node() {
    let s = Setup::new(&["--size", "8M", "--ring", "16M", "--disks", "1"]);
    let free = s.fs.statfs().bfree as usize;
    let big = free * 6 / 10;
    let a = s.create("a");
    s.fill(a, big, 0xaa).expect("fill a");
    s.fs.checkpoint().expect("checkpoint a onto the volume");
    s.fs.unlink(None, ROOT, b"a", false).expect("unlink a");
    // a's blocks are released only by the next checkpoint: b's writes need it.
    s.raise_epoch_on_the_volume();
    let b = s.create("b");
    let e = s
        .fill(b, big, 0xbb)
        .expect_err("a write needing a checkpoint succeeded on a taken-over volume");
    assert_eq!(e, Errno::EROFS, "the write that found the fence");
    let later =
        s.fs.mknod(
            None,
            ROOT_CALLER,
            ROOT,
            b"c",
            libc::S_IFREG | 0o644,
            0,
            None,
        )
        .expect_err("a fenced node created a file");
    assert_eq!(later, Errno::EROFS, "a change after the fence");
    assert!(
        matches!(s.fs.poison(), Some(Poison::Fenced { .. })),
        "poison after the fence: {:?}",
        s.fs.poison()
    );
    assert!(
        s.fenced_hook_ran.load(Ordering::Acquire),
        "the fence hook did not run: the daemon would keep the volume lock"
    );
}

/// A fenced node's fsync must fail: the changes it holds are no longer the volume's, and
/// telling the caller they are durable would be a lie.
#[test]
fn a_fenced_nodes_fsync_fails() {
    let s = Setup::new(&["--size", "64M", "--ring", "8M", "--disks", "1"]);
    let replica = Arc::new(FakeReplica::default());
    s.fs.attach_replica(replica.clone()).expect("attach");
    let f = s.create("f");
    s.fs.write(None, f, 0, b"before the takeover")
        .expect("write");
    s.fs.fsync().expect("fsync while protected");
    replica.fenced.store(true, Ordering::Release);
    assert_eq!(s.fs.fsync(), Err(Errno::EROFS), "fsync of a fenced node");
    assert_eq!(
        s.fs.write(None, f, 0, b"after"),
        Err(Errno::EROFS),
        "a write after the fence"
    );
    assert!(s.fenced_hook_ran.load(Ordering::Acquire), "fence hook");
    // Still refused once the fence is known (the poison, not the replica, answers).
    assert_eq!(s.fs.fsync(), Err(Errno::EROFS), "a second fsync");
}

/// A hole punch whose last partial block cannot be read fails with EIO and leaves the file
/// exactly as it was: the whole blocks before that block are not removed first.
#[test]
fn a_failed_hole_punch_leaves_the_file_unchanged() {
    let s = Setup::new(&["--size", "64M", "--ring", "8M", "--disks", "1"]);
    let f = s.create("f");
    let data: Vec<u8> = (0..3 * BLOCK).map(|i| (i % 251) as u8 + 1).collect();
    s.fs.write(None, f, 0, &data).expect("write");
    // On the volume, and no longer cached: the punch must read the partial block there.
    s.fs.checkpoint().expect("checkpoint");
    s.faulty.fail_reads.store(true, Ordering::Release);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let r =
        s.fs.fallocate(None, f, 0, (BLOCK + BLOCK / 2) as u64, punch);
    assert_eq!(r, Err(Errno::EIO), "the punch whose edge block read fails");
    s.faulty.fail_reads.store(false, Ordering::Release);
    let back = s.fs.read(f, 0, data.len() as u32).expect("read back");
    assert_eq!(back.len(), data.len());
    let first_diff = back.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "the file changed although the punch failed (first difference at byte {first_diff:?})"
    );
    assert_eq!(
        s.fs.getattr(f).expect("getattr").blocks,
        3 * 8,
        "blocks held"
    );
}

/// Unmounts a mount point made by a takeover (the peer's daemon then exits).
struct PeerMount(PathBuf);

impl Drop for PeerMount {
    fn drop(&mut self) {
        if common::is_fuse_mount(&self.0) {
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.0).status();
        }
    }
}

/// Node A mounted with a mirror agent; node B takes the volume over while A runs. Once A
/// knows (its changes get EROFS), an fsync on a file A holds open must fail too: before the
/// fix it flushed A's own ring and reported success.
#[test]
fn a_mount_fenced_by_a_takeover_fails_fsync() {
    // Declared before the volume: dropped after it (A's daemon goes first).
    let host = Host::new(1);
    let dir = tempfile::Builder::new()
        .prefix("smlogfs-agent-")
        .tempdir()
        .unwrap();
    let _agent = Agent::start(&host, &dir.path().join("agent"), None);
    let mirror = host.addr(0);
    let mut vol = common::Volume::new(&["--size", "64M", "--ring", "8M", "--disks", "1"]);
    vol.mount(&["--mirror", &mirror, "--node", "A", "--heartbeat-ms", "200"]);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(vol.path("f"))
        .expect("create f on A");
    f.write_all(b"written by A").expect("write on A");
    f.sync_all().expect("fsync on A before the takeover");

    let mnt_b = dir.path().join("mnt-b");
    std::fs::create_dir(&mnt_b).unwrap();
    let _peer = PeerMount(mnt_b.clone());
    let out = common::run(
        Command::new(common::smlogfs_bin())
            .arg("takeover")
            .arg(vol.voldir())
            .arg(&mnt_b)
            .args(["--mirror", &mirror, "--node", "B"]),
    );
    assert!(
        out.status.success(),
        "takeover by B: {}",
        common::describe(&out)
    );
    let fenced = common::wait_until(Duration::from_secs(20), || {
        let r = std::fs::write(vol.path("probe"), b"p");
        r.err().and_then(|e| e.raw_os_error()) == Some(libc::EROFS)
    });
    assert!(
        fenced.is_some(),
        "A never learned of the takeover (no EROFS)"
    );
    let e = f
        .sync_all()
        .expect_err("fsync on the fenced node A reported success");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "fsync on A: {e}");
}

/// Volume bytes below this are the superblock slots, which every checkpoint rewrites by
/// design (two slots, the older one overwritten); everything above belongs to one checkpoint.
const RESERVED_BYTES: u64 = 16 * BLOCK as u64;

/// A checkpoint copies changed blocks on write: it never writes over a block (data or
/// metadata) that the last durable checkpoint references. Before, a changed block was
/// rewritten in place; a power cut could tear it, and on a single-file volume the ring's
/// later partial writes were then replayed onto torn bytes (found by the power-cut test).
#[test]
fn a_checkpoint_never_writes_over_what_the_last_checkpoint_references() {
    let s = Setup::new(&["--size", "64M", "--ring", "8M", "--disks", "1"]);
    let f = s.create("f");
    let data: Vec<u8> = (0..4 * BLOCK).map(|i| (i % 253) as u8).collect();
    s.fs.write(None, f, 0, &data).expect("write");
    let taken = |s: &Setup| -> Vec<(u64, u64)> {
        std::mem::take(&mut *s.faulty.writes.lock().unwrap())
            .into_iter()
            .filter(|&(off, _)| off >= RESERVED_BYTES)
            .collect()
    };
    taken(&s);
    s.fs.checkpoint().expect("first checkpoint");
    let first = taken(&s);
    assert!(
        !first.is_empty(),
        "the first checkpoint wrote the file's blocks"
    );
    // A small change inside block 0 and one inside block 3: both blocks change.
    s.fs.write(None, f, 100, b"changed").expect("write");
    s.fs.write(None, f, (3 * BLOCK + 7) as u64, b"again")
        .expect("write");
    s.fs.checkpoint().expect("second checkpoint");
    let second = taken(&s);
    assert!(!second.is_empty(), "the second checkpoint wrote something");
    for &(off, len) in &second {
        for &(old, old_len) in &first {
            assert!(
                off + len <= old || old + old_len <= off,
                "the second checkpoint wrote bytes {off}..{} over the first checkpoint's \
                 {old}..{}",
                off + len,
                old + old_len
            );
        }
    }
    let mut want = data.clone();
    want[100..107].copy_from_slice(b"changed");
    want[3 * BLOCK + 7..3 * BLOCK + 12].copy_from_slice(b"again");
    assert_eq!(s.fs.read(f, 0, want.len() as u32).expect("read"), want);
}

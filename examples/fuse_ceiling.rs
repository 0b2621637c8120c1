//! The ceiling any FUSE file system has on this machine: a mount with one regular file whose
//! writes go straight to a backing file (`pwrite`, `fdatasync` on fsync) and do nothing else
//! — no log, no metadata, no checks. `scripts/bench.sh` runs the same fio workloads on it as
//! on the native directory and on smlogfs, so that its figures show how much of smlogfs's
//! gap to native is the FUSE round trip itself.
//!
//!     cargo run --release --example fuse_ceiling -- BACKING_FILE MOUNTPOINT
//!
//! The mount holds `MOUNTPOINT/data` (every name looked up in the root is that one file);
//! it runs in the foreground until unmounted (`fusermount3 -u MOUNTPOINT`).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;
const FILE: u64 = 2;

struct Ceiling {
    backing: File,
    size: AtomicU64,
}

impl Ceiling {
    fn attr(&self, ino: u64) -> FileAttr {
        let dir = ino == ROOT;
        FileAttr {
            ino: INodeNo(ino),
            size: if dir {
                4096
            } else {
                self.size.load(Ordering::Acquire)
            },
            blocks: 0,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o755 } else { 0o644 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for Ceiling {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The same request size smlogfs asks for.
        let _ = config.set_max_write(1 << 20);
        let _ = config.add_capabilities(InitFlags::FUSE_BIG_WRITES);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT {
            reply.entry(&TTL, &self.attr(FILE), Generation(0));
        } else {
            reply.error(fuser::Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&TTL, &self.attr(ino.0));
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Some(size) = size {
            if let Err(e) = self.backing.set_len(size) {
                eprintln!("truncate: {e}");
                return reply.error(fuser::Errno::EIO);
            }
            self.size.store(size, Ordering::Release);
        }
        reply.attr(&TTL, &self.attr(ino.0));
    }

    /// Removing the file empties it (it is the only one, and always exists).
    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        match self.backing.set_len(0) {
            Ok(()) => {
                self.size.store(0, Ordering::Release);
                reply.ok()
            }
            Err(_) => reply.error(fuser::Errno::EIO),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.created(
            &TTL,
            &self.attr(FILE),
            Generation(0),
            FileHandle(0),
            FopenFlags::empty(),
        );
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut buf = vec![0u8; size as usize];
        match self.backing.read_at(&mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(_) => reply.error(fuser::Errno::EIO),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.backing.write_all_at(data, offset) {
            Ok(()) => {
                self.size
                    .fetch_max(offset + data.len() as u64, Ordering::AcqRel);
                reply.written(data.len() as u32)
            }
            Err(_) => reply.error(fuser::Errno::EIO),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.backing.sync_data() {
            Ok(()) => reply.ok(),
            Err(_) => reply.error(fuser::Errno::EIO),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if offset == 0 {
            let _ = reply.add(INodeNo(FILE), 1, FileType::RegularFile, "data");
        }
        reply.ok();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: fuse_ceiling BACKING_FILE MOUNTPOINT");
        std::process::exit(2);
    }
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&args[1])
        .unwrap_or_else(|e| {
            eprintln!("{}: {e}", args[1]);
            std::process::exit(1)
        });
    let fs = Ceiling {
        backing,
        size: AtomicU64::new(0),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("fuse-ceiling".into())];
    let session =
        fuser::Session::new(fs, std::path::Path::new(&args[2]), &config).unwrap_or_else(|e| {
            eprintln!("mounting {}: {e}", args[2]);
            std::process::exit(1)
        });
    if let Err(e) = session.run() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

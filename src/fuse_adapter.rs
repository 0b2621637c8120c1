//! The FUSE adapter: one short function per FUSE call. Converts arguments, calls the fs
//! core, replies. Errors map to errno in exactly one place (`errno`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::core::{Attr, Caller, Errno, Fs, Ino, Kind, Request as OpRequest, RequestId, Ts};

const TTL: Duration = Duration::from_secs(1);
/// Largest write the kernel sends in one request (also bounds one ring entry).
pub const MAX_WRITE_BYTES: u32 = 1 << 20;
// One write becomes one ring entry (op header and frame: well under 4 KiB on top of the data),
// and every entry must fit in one mirror entry.
const _: () = assert!(MAX_WRITE_BYTES as usize + 4096 <= smlog_wire::format::MAX_ENTRY_BYTES);

pub struct FuseAdapter {
    fs: Arc<Fs>,
    writeback_cache: bool,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, writeback_cache: bool) -> Self {
        FuseAdapter {
            fs,
            writeback_cache,
        }
    }
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The request an op is made for: its `unique` without the resend bit, and whether the
/// kernel sent it again after a daemon restart (see `core::resend`).
fn op_request(req: &Request) -> Option<OpRequest> {
    Some(OpRequest {
        id: RequestId(req.unique().0 & !fuser::resume::FUSE_UNIQUE_RESEND),
        resent: req.is_resend(),
    })
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let r = &a.rec;
    FileAttr {
        ino: INodeNo(r.ino),
        // Directories report one block's size, as ext4 does for small ones.
        size: if r.kind == Kind::Dir { 4096 } else { r.size },
        blocks: a.blocks,
        atime: r.atime.to_system_time(),
        mtime: r.mtime.to_system_time(),
        ctime: r.ctime.to_system_time(),
        crtime: r.crtime.to_system_time(),
        kind: file_type(r.kind),
        perm: r.perm as u16,
        nlink: r.nlink,
        uid: r.uid,
        gid: r.gid,
        rdev: r.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn time_arg(t: Option<TimeOrNow>) -> Option<Ts> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(st) => match st.duration_since(std::time::UNIX_EPOCH) {
            Ok(_) => Ts::from_system_time(st),
            // fuser 0.18 turns the kernel's (sec < 0, nsec) into EPOCH - (|sec|, nsec);
            // undo that so times before 1970 keep their exact nanoseconds.
            Err(e) => Ts {
                sec: -(e.duration().as_secs() as i64),
                nsec: e.duration().subsec_nanos(),
            },
        },
        TimeOrNow::Now => Ts::now(),
    })
}

fn entry(reply: ReplyEntry, r: Result<Attr, Errno>) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

impl FuseAdapter {
    /// After the reply to a changing request is sent: its op need not be recognised any more.
    fn replied(&self, req: &Request) {
        if let Some(r) = op_request(req) {
            self.fs.replied(r.id);
        }
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, Errno>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(fuser::Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(e)),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE_BYTES);
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        if self.writeback_cache {
            let _ = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(reply, self.fs.lookup(Ino(parent.0), name.as_bytes()));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(Ino(ino.0)) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.fs.setattr(
            op_request(req),
            Ino(ino.0),
            mode,
            uid,
            gid,
            size,
            time_arg(atime),
            time_arg(mtime),
        );
        match r {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
        self.replied(req);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(Ino(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.fs.mknod(
                op_request(req),
                caller(req),
                Ino(parent.0),
                name.as_bytes(),
                mode,
                rdev,
                None,
            ),
        );
        self.replied(req);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mode = libc::S_IFDIR | (mode & 0o7777);
        entry(
            reply,
            self.fs.mknod(
                op_request(req),
                caller(req),
                Ino(parent.0),
                name.as_bytes(),
                mode,
                0,
                None,
            ),
        );
        self.replied(req);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .fs
            .unlink(op_request(req), Ino(parent.0), name.as_bytes(), false);
        empty(reply, r);
        self.replied(req);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .fs
            .unlink(op_request(req), Ino(parent.0), name.as_bytes(), true);
        empty(reply, r);
        self.replied(req);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes().to_vec();
        entry(
            reply,
            self.fs.mknod(
                op_request(req),
                caller(req),
                Ino(parent.0),
                link_name.as_bytes(),
                libc::S_IFLNK | 0o777,
                0,
                Some(target),
            ),
        );
        self.replied(req);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.fs.rename(
                op_request(req),
                Ino(parent.0),
                name.as_bytes(),
                Ino(newparent.0),
                newname.as_bytes(),
                flags.bits(),
            ),
        );
        self.replied(req);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.fs.link(
                op_request(req),
                Ino(ino.0),
                Ino(newparent.0),
                newname.as_bytes(),
            ),
        );
        self.replied(req);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(Ino(ino.0)) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(Ino(ino.0), offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(op_request(req), Ino(ino.0), offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
        self.replied(req);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(Ino(ino.0));
        reply.ok();
    }

    /// Also how `O_SYNC`/`O_DSYNC` writes reach us (the kernel fsyncs after the write).
    /// `datasync` changes nothing: one ring holds data and metadata alike. `sync(1)` and
    /// `syncfs(2)` never get here (docs/operations.md, "Durability").
    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.fsync());
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.getattr(Ino(ino.0)) {
            // The kernel may keep what readdir returned and reuse it across opens: every
            // change to a directory goes through this mount, which invalidates the cache.
            Ok(a) if a.rec.kind == Kind::Dir => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Ok(_) => reply.error(fuser::Errno::ENOTDIR),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.fs.readdir(Ino(ino.0), offset, false, |e, _| {
            reply.add(
                INodeNo(e.ino.0),
                e.offset,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            )
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listed = self.fs.readdir(Ino(ino.0), offset, true, |e, attr| {
            // An entry whose inode vanished meanwhile is left out.
            let Some(attr) = attr else { return false };
            reply.add(
                INodeNo(e.ino.0),
                e.offset,
                OsStr::from_bytes(&e.name),
                &TTL,
                &file_attr(&attr),
                Generation(0),
            )
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.fsync());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.fs
                .setxattr(op_request(req), Ino(ino.0), name.as_bytes(), value, flags),
        );
        self.replied(req);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, self.fs.getxattr(Ino(ino.0), name.as_bytes()));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, self.fs.listxattr(caller(req), Ino(ino.0)));
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .fs
            .removexattr(op_request(req), Ino(ino.0), name.as_bytes());
        empty(reply, r);
        self.replied(req);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        empty(reply, self.fs.access(caller(req), Ino(ino.0), mask.bits()));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mode = if mode & libc::S_IFMT == 0 {
            mode | libc::S_IFREG
        } else {
            mode
        };
        let r = self
            .fs
            .mknod(
                op_request(req),
                caller(req),
                Ino(parent.0),
                name.as_bytes(),
                mode,
                0,
                None,
            )
            .and_then(|a| self.fs.open(Ino(a.rec.ino)).map(|()| a));
        match r {
            Ok(a) => reply.created(
                &TTL,
                &file_attr(&a),
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
        self.replied(req);
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self
            .fs
            .fallocate(op_request(req), Ino(ino.0), offset, length, mode);
        empty(reply, r);
        self.replied(req);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        // Lookups are not counted; the kernel dropping an inode only matters for an
        // unlinked one kept because a restart could not know its open handles.
        self.fs.forget(Ino(ino.0));
    }
}

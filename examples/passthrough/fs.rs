//! The passthrough itself: every request becomes the same call on the backing directory.
//!
//! Inodes are the backing files' inode numbers (the root's and 1 swapped), each remembered
//! with one path relative to the backing root; a rename moves the paths under it. A file
//! handle keeps its backing file open, so data goes through pread/pwrite on that descriptor.
//! In power-cut mode data writes go to [`PowerCut`] instead, and reach the file on fsync.
//!
//! Exports: [`Passthrough`] and its [`fuser::Filesystem`] implementation.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use crate::powercut::{read_full, PowerCut};
use crate::sys;

/// The attribute and entry lifetime smlogfs answers with (src/fuse_adapter.rs).
const TTL: Duration = Duration::from_secs(1);
/// The request size smlogfs asks for.
const MAX_WRITE_BYTES: u32 = 1 << 20;
const ROOT: u64 = 1;
/// Creating this name in the root of a power-cut mount cuts the power.
pub const CUT_NAME: &str = ".powercut";

type Res<T> = Result<T, Errno>;

struct Node {
    /// Relative to the backing root; empty for the root.
    path: PathBuf,
    lookups: u64,
}

enum Handle {
    File(Arc<File>),
    /// The listing taken at opendir: (inode, kind, name).
    Dir(Vec<(u64, FileType, OsString)>),
}

pub struct Passthrough {
    root: PathBuf,
    /// The backing root's own inode number, which the mount calls 1 (and vice versa).
    root_ino: u64,
    nodes: Mutex<HashMap<u64, Node>>,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    powercut: Option<PowerCut>,
}

fn kind_of(t: fs::FileType) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let t = Duration::new(secs.unsigned_abs(), nsecs as u32);
    if secs >= 0 {
        UNIX_EPOCH + t
    } else {
        UNIX_EPOCH - t
    }
}

fn to_time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Passthrough {
    pub fn new(root: PathBuf, powercut: Option<PowerCut>) -> std::io::Result<Passthrough> {
        let root_ino = fs::metadata(&root)?.ino();
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                path: PathBuf::new(),
                lookups: 1,
            },
        );
        Ok(Passthrough {
            root,
            root_ino,
            nodes: Mutex::new(nodes),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            powercut,
        })
    }

    fn ino_of(&self, backing_ino: u64) -> u64 {
        if backing_ino == self.root_ino {
            ROOT
        } else if backing_ino == ROOT {
            self.root_ino
        } else {
            backing_ino
        }
    }

    /// Err(EIO) after a power cut; Ok otherwise (and always in plain mode).
    fn alive(&self) -> Res<()> {
        self.powercut.as_ref().map_or(Ok(()), PowerCut::alive)
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Node>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rel_path(&self, ino: u64) -> Res<PathBuf> {
        self.nodes()
            .get(&ino)
            .map(|n| n.path.clone())
            .ok_or(Errno::ESTALE)
    }

    fn path(&self, ino: u64) -> Res<PathBuf> {
        Ok(self.root.join(self.rel_path(ino)?))
    }

    fn child(&self, parent: u64, name: &OsStr) -> Res<(PathBuf, PathBuf)> {
        let rel = self.rel_path(parent)?.join(name);
        Ok((self.root.join(&rel), rel))
    }

    fn attr(&self, m: &fs::Metadata) -> FileAttr {
        let ino = self.ino_of(m.ino());
        let pending = self.powercut.as_ref().and_then(|p| p.size(ino));
        FileAttr {
            ino: INodeNo(ino),
            size: pending.unwrap_or(m.size()),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind_of(m.file_type()),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: m.blksize() as u32,
            flags: 0,
        }
    }

    /// A name the kernel now holds a reference to: remembered (the newest name of a hard
    /// link wins) and counted, until forget.
    fn remember(&self, rel: PathBuf) -> Res<FileAttr> {
        let m = fs::symlink_metadata(self.root.join(&rel))?;
        let attr = self.attr(&m);
        let mut nodes = self.nodes();
        let node = nodes.entry(attr.ino.0).or_insert(Node {
            path: PathBuf::new(),
            lookups: 0,
        });
        node.lookups += 1;
        if attr.ino.0 != ROOT {
            node.path = rel;
        }
        Ok(attr)
    }

    fn handle(&self, fh: FileHandle) -> Res<Arc<Handle>> {
        let handles = self.handles.read().unwrap_or_else(|p| p.into_inner());
        handles.get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn file(&self, fh: FileHandle) -> Res<Arc<File>> {
        match &*self.handle(fh)? {
            Handle::File(f) => Ok(f.clone()),
            Handle::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn add_handle(&self, h: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut handles = self.handles.write().unwrap_or_else(|p| p.into_inner());
        handles.insert(fh, Arc::new(h));
        FileHandle(fh)
    }

    fn open_file(&self, path: &Path, flags: i32, create: Option<u32>) -> Res<File> {
        let mut o = OpenOptions::new();
        let access = flags & libc::O_ACCMODE;
        // Power-cut mode reads the old content of every page it keeps.
        let read = access != libc::O_WRONLY || self.powercut.is_some();
        o.read(read).write(access != libc::O_RDONLY);
        if let Some(mode) = create {
            o.mode(mode);
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
        }
        // O_APPEND: the kernel sends the offset; O_SYNC, O_DSYNC: it follows each write
        // with an fsync; O_DIRECT would need aligned buffers. O_TRUNC comes as a setattr.
        Ok(o.open(path)?)
    }

    fn do_setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        (uid, gid): (Option<u32>, Option<u32>),
        size: Option<u64>,
        times: (Option<TimeOrNow>, Option<TimeOrNow>),
        fh: Option<FileHandle>,
    ) -> Res<FileAttr> {
        self.alive()?;
        let path = self.path(ino)?;
        if let Some(mode) = mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&path, uid, gid)?;
        }
        let file = match fh.map(|fh| self.file(fh)) {
            Some(Ok(f)) => Some(f),
            _ => None,
        };
        if let Some(size) = size {
            match &file {
                Some(f) => f.set_len(size)?,
                None => OpenOptions::new().write(true).open(&path)?.set_len(size)?,
            }
            if let Some(pc) = &self.powercut {
                pc.truncate(ino, size)?;
            }
        }
        if times.0.is_some() || times.1.is_some() {
            let mut t = fs::FileTimes::new();
            if let Some(a) = times.0 {
                t = t.set_accessed(to_time(a));
            }
            if let Some(m) = times.1 {
                t = t.set_modified(to_time(m));
            }
            match &file {
                Some(f) => f.set_times(t)?,
                None => File::open(&path)?.set_times(t)?,
            }
        }
        Ok(self.attr(&fs::symlink_metadata(&path)?))
    }

    fn do_create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Res<(FileAttr, FileHandle)> {
        self.alive()?;
        if parent == ROOT && name == CUT_NAME {
            if let Some(pc) = &self.powercut {
                // The line the test (or crash harness) waits for, then the daemon is gone.
                println!("{}", pc.cut());
                let _ = std::io::Write::flush(&mut std::io::stdout());
                std::process::exit(0);
            }
        }
        let (path, rel) = self.child(parent, name)?;
        let mode = mode & !umask & 0o7777;
        let file = self.open_file(&path, flags, Some(mode))?;
        // The daemon's own umask applies too: correct the mode if it took bits away.
        if file.metadata()?.mode() & 0o7777 != mode {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        let attr = self.remember(rel)?;
        Ok((attr, self.add_handle(Handle::File(Arc::new(file)))))
    }

    fn do_read(&self, ino: u64, fh: FileHandle, offset: u64, size: u32) -> Res<Vec<u8>> {
        self.alive()?;
        if let Some(pc) = &self.powercut {
            if let Some(data) = pc.read(ino, offset, size)? {
                return Ok(data);
            }
        }
        let file = self.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let n = read_full(&file, &mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn do_write(&self, ino: u64, fh: FileHandle, offset: u64, data: &[u8]) -> Res<()> {
        self.alive()?;
        let file = self.file(fh)?;
        match &self.powercut {
            Some(pc) => pc.write(ino, self.rel_path(ino)?, &file, offset, data),
            None => Ok(file.write_all_at(data, offset)?),
        }
    }

    fn do_opendir(&self, ino: u64) -> Res<FileHandle> {
        self.alive()?;
        let mut list = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (ino, FileType::Directory, OsString::from("..")),
        ];
        for e in fs::read_dir(self.path(ino)?)? {
            let e = e?;
            let kind = e.file_type().map_or(FileType::RegularFile, kind_of);
            let backing_ino = std::os::unix::fs::DirEntryExt::ino(&e);
            list.push((self.ino_of(backing_ino), kind, e.file_name()));
        }
        Ok(self.add_handle(Handle::Dir(list)))
    }

    fn do_rename(&self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr) -> Res<()> {
        self.alive()?;
        let (from, from_rel) = self.child(parent, name)?;
        let (to, to_rel) = self.child(newparent, newname)?;
        fs::rename(&from, &to)?;
        // The paths of the renamed node and of everything under it move along.
        for node in self.nodes().values_mut() {
            if let Ok(rest) = node.path.strip_prefix(&from_rel) {
                node.path = if rest.as_os_str().is_empty() {
                    to_rel.clone()
                } else {
                    to_rel.join(rest)
                };
            }
        }
        Ok(())
    }

    fn do_unlink(&self, parent: u64, name: &OsStr) -> Res<()> {
        self.alive()?;
        let (path, _) = self.child(parent, name)?;
        let m = fs::symlink_metadata(&path)?;
        fs::remove_file(&path)?;
        if let (Some(pc), 1) = (&self.powercut, m.nlink()) {
            pc.forget(self.ino_of(m.ino()));
        }
        Ok(())
    }

    fn do_fsync(&self, ino: u64, fh: FileHandle, datasync: bool) -> Res<()> {
        self.alive()?;
        if let Some(pc) = &self.powercut {
            // The backing file system is not the one losing power: no need to sync it.
            return pc.flush(ino);
        }
        let file = self.file(fh)?;
        if datasync {
            file.sync_data()?;
        } else {
            file.sync_all()?;
        }
        Ok(())
    }
}

fn entry(reply: ReplyEntry, r: Res<FileAttr>) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: Res<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Passthrough {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE_BYTES);
        let _ = config.add_capabilities(InitFlags::FUSE_BIG_WRITES);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.alive().and_then(|()| {
            if parent.0 == ROOT && name == CUT_NAME && self.powercut.is_some() {
                return Err(Errno::ENOENT);
            }
            self.remember(self.child(parent.0, name)?.1)
        });
        entry(reply, r);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut nodes = self.nodes();
        if let Some(node) = nodes.get_mut(&ino.0) {
            node.lookups = node.lookups.saturating_sub(nlookup);
            if node.lookups == 0 && ino.0 != ROOT {
                nodes.remove(&ino.0);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self.alive().and_then(|()| {
            let m = match fh.map(|fh| self.file(fh)) {
                // Also answers for a file unlinked while open.
                Some(Ok(f)) => f.metadata()?,
                _ => fs::symlink_metadata(self.path(ino.0)?)?,
            };
            Ok(self.attr(&m))
        });
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino.0, mode, (uid, gid), size, (atime, mtime), fh) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self
            .alive()
            .and_then(|()| Ok(fs::read_link(self.path(ino.0)?)?));
        match r {
            Ok(t) => reply.data(t.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self.alive().and_then(|()| {
            let (path, rel) = self.child(parent.0, name)?;
            sys::mknod(&path, mode & !umask, rdev)?;
            self.remember(rel)
        });
        entry(reply, r);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.alive().and_then(|()| {
            let (path, rel) = self.child(parent.0, name)?;
            let mode = mode & !umask & 0o7777;
            fs::DirBuilder::new().mode(mode).create(&path)?;
            if fs::metadata(&path)?.mode() & 0o7777 != mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            }
            self.remember(rel)
        });
        entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.do_unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .alive()
            .and_then(|()| Ok(fs::remove_dir(self.child(parent.0, name)?.0)?));
        empty(reply, r);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.alive().and_then(|()| {
            let (path, rel) = self.child(parent.0, link_name)?;
            std::os::unix::fs::symlink(target, &path)?;
            self.remember(rel)
        });
        entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // RENAME_NOREPLACE and RENAME_EXCHANGE would need renameat2, which std lacks.
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        empty(reply, self.do_rename(parent.0, name, newparent.0, newname));
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.alive().and_then(|()| {
            let (path, rel) = self.child(newparent.0, newname)?;
            fs::hard_link(self.path(ino.0)?, &path)?;
            self.remember(rel)
        });
        entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self
            .alive()
            .and_then(|()| self.open_file(&self.path(ino.0)?, flags.0, None));
        match r {
            // Only this mount changes the files: the kernel may keep their cached pages.
            Ok(f) => reply.opened(
                self.add_handle(Handle::File(Arc::new(f))),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(ino.0, fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(ino.0, fh, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    /// close() is not a flush: nothing is persisted here.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.alive());
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut handles = self.handles.write().unwrap_or_else(|p| p.into_inner());
        handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.do_fsync(ino.0, fh, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir(ino.0) {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if let Err(e) = self.alive() {
            return reply.error(e);
        }
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Handle::Dir(list) = &*h else {
            return reply.error(Errno::ENOTDIR);
        };
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let mut handles = self.handles.write().unwrap_or_else(|p| p.into_inner());
        handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.alive().and_then(|()| {
            // Directory entries are applied directly in power-cut mode (see docs/testing.md).
            if self.powercut.is_none() {
                File::open(self.path(ino.0)?)?.sync_all()?;
            }
            Ok(())
        });
        empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.alive().and_then(|()| Ok(sys::statvfs(&self.root)?)) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(parent.0, name, mode, umask, flags) {
            Ok((attr, fh)) => {
                reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::FOPEN_KEEP_CACHE)
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Power-cut mode would have to track the size change as pending: not simulated.
        if self.powercut.is_some() {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let r = self
            .file(fh)
            .and_then(|f| Ok(sys::fallocate(&f, mode, offset, length)?));
        empty(reply, r);
    }

    /// Extended attributes are not passed through (ENOSYS: the kernel stops asking).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }
}

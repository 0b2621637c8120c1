//! The passthrough itself: every request becomes the same call on the backing directory.
//!
//! Inodes are the backing files' inode numbers (the root's and 1 swapped), each remembered
//! with one path relative to the backing root; a rename moves the paths under it. A file
//! handle keeps its backing file open, so data goes through pread/pwrite on that descriptor.
//! In power-cut mode data writes go to [`PowerCut`] instead, and reach the file on fsync.
//!
//! Exports: [`Passthrough`]; its [`fuser::Filesystem`] implementation, the replies, is in
//! `adapter`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo, TimeOrNow};

use crate::powercut::{read_full, PowerCut};

mod adapter;

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

    /// The power-cut simulator, if `name` in `parent` is the request to cut the power.
    fn cut_requested(&self, parent: u64, name: &OsStr) -> Option<&PowerCut> {
        (parent == ROOT && name == CUT_NAME)
            .then_some(self.powercut.as_ref())
            .flatten()
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

    /// Creates the entry `name` in `parent` by running `make` on its backing path, then
    /// remembers it and returns its attributes (mknod, mkdir, symlink).
    fn new_child(
        &self,
        parent: INodeNo,
        name: &OsStr,
        make: impl FnOnce(&Path) -> Res<()>,
    ) -> Res<FileAttr> {
        self.alive()?;
        let (path, rel) = self.child(parent.0, name)?;
        make(&path)?;
        self.remember(rel)
    }

    /// Forgets `fh` (release, releasedir); its file closes once no request holds it.
    fn drop_handle(&self, fh: FileHandle) {
        let mut handles = self.handles.write().unwrap_or_else(|p| p.into_inner());
        handles.remove(&fh.0);
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

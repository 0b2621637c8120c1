//! The random workload and the model of what the file system acknowledged, shared by every
//! test that kills, fails over or restarts a daemon and then checks the tree.
//!
//! A [`Workload`] draws operations that are valid in its [`Model`] (creates, writes, appends,
//! truncates, renames — also over a file and of whole directories —, links, symlinks, unlinks,
//! mkdir, rmdir, chmod, `user.` xattrs, fsync) on a tree under `MOUNT/w`, runs each one as
//! real syscalls and records it in the model only once every call returned success. The one op
//! that failed or never returned stays [`InFlight`]: it may have happened or not.
//! [`Workload::settle`] compares a mounted tree with the model, accepting the in-flight op
//! applied, not applied, or (a write) torn at its first page boundary, and adopts what it
//! found; [`Model::verify`] is the strict comparison. A [`Mismatch`] says, per path, what
//! differs (names, types, sizes, contents, modes, link counts, hard-link groups, symlink
//! targets and `user.` xattrs).
//!
//! Everything runs as the calling process: the tests set umask [`UMASK`] (creates and mkdirs
//! are masked by it) and run as root (chmod 0444 files are written to).

use super::{cpath, cstr, errno, errno_name, lstat, pattern};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The directory under the mount point that the workload owns; model paths are relative to it.
pub const WORK_DIR: &str = "w";
/// The umask the tests set before they run a workload.
pub const UMASK: u32 = 0o022;

const MAX_ENTRIES: usize = 120;
const MAX_FILE_BYTES: u64 = 384 * 1024;
/// Writes stay below the kernel's max_write (128 KiB) so the kernel sends each write() as at
/// most two FUSE requests: one when it starts at a page boundary, and when it starts inside a
/// page that is not in the page cache, the rest of that page first and the remainder second
/// (fuse_fill_write_pages stops a request after a partly written page that is not uptodate).
/// So an in-flight write is all, nothing, or that first part (see `torn_at_first_page`).
const MAX_WRITE_BYTES: usize = 64 * 1024;
const PAGE_BYTES: u64 = 4096;
/// smlogfs writes block-aligned writes at least this large straight to the volume.
const DIRECT_WRITE_MIN_BYTES: u64 = 64 * 1024;
/// How many ways of losing direct writes' data a power-cut check tries at most.
const MAX_DIRECT_LOSS_VARIANTS: usize = 64;
const FILE_NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];
const DIR_NAMES: &[&str] = &["D1", "D2", "D3", "D4"];
const XATTR_NAMES: &[&str] = &["user.one", "user.two", "user.three"];
const FILE_MODES: &[u32] = &[0o644, 0o600, 0o640, 0o755, 0o444, 0o700];
const DIR_MODES: &[u32] = &[0o755, 0o700, 0o750, 0o1777];

// ----- the model -----

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

#[derive(Clone, Debug)]
pub struct Inode {
    pub kind: Kind,
    pub mode: u32,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// The acknowledged state of the work directory. Paths are '/'-separated, without a leading
/// slash; several paths naming one inode id are hard links.
#[derive(Clone, Debug, Default)]
pub struct Model {
    next_id: u64,
    inodes: HashMap<u64, Inode>,
    entries: BTreeMap<String, u64>,
}

fn parent_of(p: &str) -> &str {
    p.rfind('/').map_or("", |i| &p[..i])
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

impl Model {
    /// How many names the tree holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn kind_of(&self, p: &str) -> Option<&Kind> {
        self.entries.get(p).map(|id| &self.inodes[id].kind)
    }

    fn is_dir(&self, p: &str) -> bool {
        p.is_empty() || matches!(self.kind_of(p), Some(Kind::Dir))
    }

    fn children(&self, dir: &str) -> Vec<String> {
        self.entries
            .keys()
            .filter(|p| parent_of(p) == dir && !p.is_empty())
            .cloned()
            .collect()
    }

    fn paths_where(&self, f: impl Fn(&Kind) -> bool) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, id)| f(&self.inodes[id].kind))
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn dirs(&self) -> Vec<String> {
        let mut d = vec![String::new()];
        d.extend(self.paths_where(|k| *k == Kind::Dir));
        d
    }

    fn files(&self) -> Vec<String> {
        self.paths_where(|k| matches!(k, Kind::File(_)))
    }

    fn file_len(&self, p: &str) -> u64 {
        match self.kind_of(p) {
            Some(Kind::File(d)) => d.len() as u64,
            _ => 0,
        }
    }

    fn add(&mut self, p: &str, kind: Kind, mode: u32) {
        let id = self.next_id;
        self.next_id += 1;
        self.inodes.insert(
            id,
            Inode {
                kind,
                mode,
                xattrs: BTreeMap::new(),
            },
        );
        self.entries.insert(p.to_string(), id);
    }

    fn drop_entry(&mut self, p: &str) {
        let id = self.entries.remove(p).expect("entry in model");
        if !self.entries.values().any(|v| *v == id) {
            self.inodes.remove(&id);
        }
    }

    fn inode_mut(&mut self, p: &str) -> &mut Inode {
        let id = self.entries[p];
        self.inodes.get_mut(&id).unwrap()
    }

    fn file_mut(&mut self, p: &str) -> &mut Vec<u8> {
        match &mut self.inode_mut(p).kind {
            Kind::File(d) => d,
            k => panic!("{p} is {k:?}, not a file"),
        }
    }

    /// Records `op` as done. The op must be valid in this state (the generator draws only
    /// such ops); an invalid one is a bug of the test and panics.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Create { path, mode } => self.add(path, Kind::File(Vec::new()), *mode & !UMASK),
            Op::Mkdir { path, mode } => self.add(path, Kind::Dir, *mode & !UMASK),
            Op::Symlink { path, target } => self.add(path, Kind::Symlink(target.clone()), 0o777),
            Op::Write { .. } | Op::Append { .. } => {
                let (path, off, data) = self.placed(op).expect("a write");
                let f = self.file_mut(&path);
                let end = off as usize + data.len();
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[off as usize..end].copy_from_slice(&data);
            }
            Op::Truncate { path, len } => self.file_mut(path).resize(*len as usize, 0),
            Op::Rename { from, to } => {
                if self.entries.get(from) == self.entries.get(to) {
                    return; // two names of one inode: rename does nothing
                }
                if self.entries.contains_key(to) {
                    self.drop_entry(to);
                }
                let moved: Vec<String> = self
                    .entries
                    .keys()
                    .filter(|p| *p == from || p.starts_with(&format!("{from}/")))
                    .cloned()
                    .collect();
                for p in moved {
                    let id = self.entries.remove(&p).unwrap();
                    self.entries.insert(format!("{to}{}", &p[from.len()..]), id);
                }
            }
            Op::Link { from, to } => {
                let id = self.entries[from];
                self.entries.insert(to.clone(), id);
            }
            Op::Unlink { path } | Op::Rmdir { path } => self.drop_entry(path),
            Op::Chmod { path, mode } => self.inode_mut(path).mode = *mode,
            Op::SetXattr { path, name, value } => {
                self.inode_mut(path)
                    .xattrs
                    .insert(name.clone(), value.clone());
            }
            Op::RemoveXattr { path, name } => {
                self.inode_mut(path).xattrs.remove(name);
            }
            Op::Fsync { .. } => {}
        }
    }

    /// A write or append as (path, offset, bytes) in this state (an append lands at the end).
    fn placed(&self, op: &Op) -> Option<(String, u64, Vec<u8>)> {
        match op {
            Op::Write { path, off, data } => Some((path.clone(), *off, data.bytes())),
            Op::Append { path, data } => Some((path.clone(), self.file_len(path), data.bytes())),
            _ => None,
        }
    }

    /// `op` as recovery replays a direct write whose data the volume lost: a block-aligned
    /// write of at least 64 KiB (which smlogfs writes straight to fresh volume blocks and
    /// flushes only at an fsync) whose range reads as zeroes, the file's size as written
    /// (docs/design.md, "Direct writes"). None for any other op.
    fn with_direct_data_lost(&self, op: &Op) -> Option<Model> {
        let Op::Write { path, off, data } = op else {
            return None;
        };
        let len = data.len as u64;
        if len < DIRECT_WRITE_MIN_BYTES
            || !off.is_multiple_of(PAGE_BYTES)
            || !len.is_multiple_of(PAGE_BYTES)
        {
            return None;
        }
        let mut lost = self.clone();
        let f = lost.file_mut(path);
        let end = (off + len) as usize;
        if f.len() < end {
            f.resize(end, 0);
        }
        f[*off as usize..end].fill(0);
        Some(lost)
    }

    /// The first of the two FUSE requests the kernel makes of a write that starts inside a
    /// page and goes past it: the rest of that page. The daemon may apply it and die before
    /// the kernel has its answer; write() then fails although that part happened (and stays).
    fn torn_at_first_page(&self, op: &Op) -> Option<Model> {
        let (path, off, data) = self.placed(op)?;
        let first = (PAGE_BYTES - off % PAGE_BYTES) as usize;
        if off % PAGE_BYTES == 0 || first >= data.len() {
            return None;
        }
        let mut torn = self.clone();
        let f = torn.file_mut(&path);
        let end = off as usize + first;
        if f.len() < end {
            f.resize(end, 0);
        }
        f[off as usize..end].copy_from_slice(&data[..first]);
        Some(torn)
    }

    /// Compares the tree under `mount`/w with the model, strictly.
    pub fn verify(&self, mount: &Path) -> Result<(), Mismatch> {
        let got = scan(&mount.join(WORK_DIR)).map_err(|e| Mismatch::unreadable(mount, e))?;
        let lines = diff(&self.snapshot(), &got);
        if lines.is_empty() {
            Ok(())
        } else {
            Err(Mismatch::new(
                mount,
                "differs from the acknowledged ops",
                lines,
            ))
        }
    }

    /// What the file tree must look like.
    fn snapshot(&self) -> Snapshot {
        let mut groups: HashMap<u64, Vec<String>> = HashMap::new();
        for (p, id) in &self.entries {
            groups.entry(*id).or_default().push(p.clone());
        }
        let mut out = Snapshot::new();
        for (p, id) in &self.entries {
            let ino = &self.inodes[id];
            let (kind, nlink, links) = match &ino.kind {
                Kind::Dir => {
                    let subdirs = self.children(p).iter().filter(|c| self.is_dir(c)).count();
                    ('d', 2 + subdirs as u64, Vec::new())
                }
                Kind::File(_) => ('f', groups[id].len() as u64, groups[id].clone()),
                Kind::Symlink(_) => ('l', groups[id].len() as u64, groups[id].clone()),
            };
            out.insert(
                p.clone(),
                Entry {
                    kind,
                    mode: if kind == 'l' { 0o777 } else { ino.mode },
                    nlink,
                    links,
                    content: match &ino.kind {
                        Kind::File(d) => d.clone(),
                        Kind::Symlink(t) => t.as_bytes().to_vec(),
                        Kind::Dir => Vec::new(),
                    },
                    xattrs: ino.xattrs.clone(),
                },
            );
        }
        out
    }
}

/// How a tree differs from the model: one line per differing path, found minus expected.
#[derive(Debug)]
pub struct Mismatch {
    what: String,
    lines: Vec<String>,
}

impl Mismatch {
    fn new(mount: &Path, what: &str, lines: Vec<String>) -> Mismatch {
        Mismatch {
            what: format!("the tree under {} {what}", mount.join(WORK_DIR).display()),
            lines,
        }
    }

    fn unreadable(mount: &Path, error: String) -> Mismatch {
        Mismatch {
            what: format!(
                "the tree under {} cannot be read",
                mount.join(WORK_DIR).display()
            ),
            lines: vec![error],
        }
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.what)?;
        for l in self.lines.iter().take(20) {
            write!(f, "\n    {l}")?;
        }
        if self.lines.len() > 20 {
            write!(f, "\n    ... and {} more", self.lines.len() - 20)?;
        }
        Ok(())
    }
}

// ----- operations -----

#[derive(Clone, Debug)]
pub enum Op {
    Create {
        path: String,
        mode: u32,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// Writes `data` at `off`.
    Write {
        path: String,
        off: u64,
        data: Data,
    },
    /// Like `Write`, through an O_APPEND descriptor at the file's end: a replayed append
    /// would make the file grow twice.
    Append {
        path: String,
        data: Data,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Rename {
        from: String,
        to: String,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    SetXattr {
        path: String,
        name: String,
        value: Vec<u8>,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
    Fsync {
        path: String,
    },
}

impl Op {
    /// A one-line description (without the bytes of writes and xattrs).
    pub fn short(&self) -> String {
        match self {
            Op::Write { path, off, data } => format!("Write {path} @{off} +{}", data.len),
            Op::Append { path, data } => format!("Append {path} +{}", data.len),
            Op::SetXattr { path, name, value } => {
                format!("SetXattr {path} {name} ({} bytes)", value.len())
            }
            other => format!("{other:?}"),
        }
    }

    /// True for the ops that change the file system (all but fsync).
    pub fn changes(&self) -> bool {
        !matches!(self, Op::Fsync { .. })
    }

    /// For a write cut short after `n` bytes: (the acknowledged first n bytes, the rest).
    fn split_at(&self, n: usize) -> Option<(Op, Op)> {
        match self {
            Op::Write { path, off, data } => {
                let (done, rest) = data.split_at(n);
                let path = path.clone();
                let rest_at = off + n as u64;
                Some((
                    Op::Write {
                        path: path.clone(),
                        off: *off,
                        data: done,
                    },
                    Op::Write {
                        path,
                        off: rest_at,
                        data: rest,
                    },
                ))
            }
            Op::Append { path, data } => {
                let (done, rest) = data.split_at(n);
                let path = path.clone();
                Some((
                    Op::Append {
                        path: path.clone(),
                        data: done,
                    },
                    Op::Append { path, data: rest },
                ))
            }
            _ => None,
        }
    }
}

/// Bytes `skip..skip + len` of `pattern(seed, ..)`: what a write puts, without storing it
/// (skip > 0 only for the unacknowledged rest of a short write).
#[derive(Clone, Copy, Debug)]
pub struct Data {
    pub seed: u64,
    pub skip: usize,
    pub len: usize,
}

impl Data {
    fn new(seed: u64, len: usize) -> Data {
        Data { seed, skip: 0, len }
    }

    fn bytes(&self) -> Vec<u8> {
        pattern(self.seed, self.skip + self.len)[self.skip..].to_vec()
    }

    /// (the first `n` bytes, the rest).
    fn split_at(&self, n: usize) -> (Data, Data) {
        assert!(n <= self.len, "split at {n} of {} bytes", self.len);
        let first = Data { len: n, ..*self };
        let rest = Data {
            skip: self.skip + n,
            len: self.len - n,
            ..*self
        };
        (first, rest)
    }
}

fn pick<'a, T>(rng: &mut StdRng, v: &'a [T]) -> Option<&'a T> {
    if v.is_empty() {
        None
    } else {
        Some(&v[rng.gen_range(0..v.len())])
    }
}

/// A free name in a random directory.
fn free_path(m: &Model, rng: &mut StdRng, names: &[&str]) -> Option<String> {
    let dirs = m.dirs();
    for _ in 0..8 {
        let p = join(pick(rng, &dirs)?, pick(rng, names)?);
        if !m.entries.contains_key(&p) {
            return Some(p);
        }
    }
    None
}

/// Draws an operation that is valid in the model's current state.
fn gen_op(m: &Model, rng: &mut StdRng) -> Op {
    let full = m.entries.len() >= MAX_ENTRIES;
    loop {
        let files = m.files();
        let r = rng.gen_range(0..100);
        let op = match r {
            0..=11 if !full => free_path(m, rng, FILE_NAMES).map(|path| Op::Create {
                path,
                mode: *pick(rng, FILE_MODES).unwrap(),
            }),
            12..=15 if !full => free_path(m, rng, DIR_NAMES).and_then(|path| {
                // Keep the tree at most three levels deep.
                (path.matches('/').count() < 3).then(|| Op::Mkdir {
                    path,
                    mode: *pick(rng, DIR_MODES).unwrap(),
                })
            }),
            16..=17 if !full => free_path(m, rng, FILE_NAMES).map(|path| Op::Symlink {
                path,
                target: format!("target-{}", rng.gen_range(0..1000)),
            }),
            18..=37 => pick(rng, &files).map(|path| gen_write(m, rng, path)),
            38..=45 => pick(rng, &files).map(|path| {
                let len = rng.gen_range(1..=4096);
                Op::Append {
                    path: path.clone(),
                    data: Data::new(rng.gen(), len),
                }
            }),
            46..=51 => pick(rng, &files).map(|path| Op::Truncate {
                path: path.clone(),
                len: rng.gen_range(0..MAX_FILE_BYTES / 2),
            }),
            52..=61 => gen_rename(m, rng, &files),
            62..=66 if !full => pick(rng, &files).and_then(|from| {
                Some(Op::Link {
                    from: from.clone(),
                    to: free_path(m, rng, FILE_NAMES)?,
                })
            }),
            67..=74 => {
                let non_dirs = m.paths_where(|k| *k != Kind::Dir);
                pick(rng, &non_dirs).map(|path| Op::Unlink { path: path.clone() })
            }
            75..=77 => {
                let empty: Vec<String> = m
                    .paths_where(|k| *k == Kind::Dir)
                    .into_iter()
                    .filter(|d| m.children(d).is_empty())
                    .collect();
                pick(rng, &empty).map(|path| Op::Rmdir { path: path.clone() })
            }
            78..=83 => {
                let targets = m.paths_where(|k| !matches!(k, Kind::Symlink(_)));
                pick(rng, &targets).map(|path| Op::Chmod {
                    path: path.clone(),
                    mode: if m.is_dir(path) {
                        *pick(rng, DIR_MODES).unwrap()
                    } else {
                        *pick(rng, FILE_MODES).unwrap()
                    },
                })
            }
            84..=90 => {
                let targets = m.paths_where(|k| !matches!(k, Kind::Symlink(_)));
                pick(rng, &targets).map(|path| {
                    let len = rng.gen_range(0..200);
                    Op::SetXattr {
                        path: path.clone(),
                        name: pick(rng, XATTR_NAMES).unwrap().to_string(),
                        value: pattern(rng.gen(), len),
                    }
                })
            }
            91..=93 => {
                let with: Vec<(String, String)> = m
                    .entries
                    .iter()
                    .flat_map(|(p, id)| {
                        m.inodes[id]
                            .xattrs
                            .keys()
                            .map(move |n| (p.clone(), n.clone()))
                    })
                    .collect();
                pick(rng, &with).map(|(path, name)| Op::RemoveXattr {
                    path: path.clone(),
                    name: name.clone(),
                })
            }
            94..=99 => {
                let mut targets = files.clone();
                targets.extend(m.dirs());
                pick(rng, &targets).map(|path| Op::Fsync { path: path.clone() })
            }
            _ => None,
        };
        if let Some(op) = op {
            return op;
        }
    }
}

fn gen_write(m: &Model, rng: &mut StdRng, path: &str) -> Op {
    let size = m.file_len(path);
    // A fifth are block-aligned 64 KiB writes, which the daemon writes straight to fresh
    // volume blocks (direct writes) instead of through the ring.
    let aligned = rng.gen_bool(0.2);
    let len = if aligned {
        MAX_WRITE_BYTES
    } else if rng.gen_bool(0.3) {
        rng.gen_range(1..64)
    } else {
        rng.gen_range(1..=MAX_WRITE_BYTES)
    };
    // Overwrites inside, appends at the end, and writes past the end.
    let off = match rng.gen_range(0..3) {
        0 if size > 0 => rng.gen_range(0..size),
        1 => size,
        _ => rng.gen_range(0..=size + 64 * 1024),
    };
    let off = off.min(MAX_FILE_BYTES.saturating_sub(len as u64));
    let off = if aligned { off / 4096 * 4096 } else { off };
    Op::Write {
        path: path.to_string(),
        off,
        data: Data::new(rng.gen(), len),
    }
}

/// A file or symlink to a free name or over another file; a directory to a free name
/// outside its own subtree.
fn gen_rename(m: &Model, rng: &mut StdRng, files: &[String]) -> Option<Op> {
    let all: Vec<String> = m.entries.keys().cloned().collect();
    let from = pick(rng, &all)?.clone();
    let to = if m.is_dir(&from) {
        let to = free_path(m, rng, DIR_NAMES)?;
        let inside = to.starts_with(&format!("{from}/"));
        if inside || to.matches('/').count() >= 3 {
            return None;
        }
        to
    } else if rng.gen_bool(0.4) && !files.is_empty() {
        let to = pick(rng, files)?.clone();
        if to == from {
            return None;
        }
        to
    } else {
        free_path(m, rng, FILE_NAMES)?
    };
    Some(Op::Rename { from, to })
}

/// How one op ended when not every call it made succeeded.
enum Failed {
    /// The first call to fail set this errno; nothing of the op was acknowledged.
    Errno(i32),
    /// write() returned n < len: the first n bytes were acknowledged, the rest is in flight.
    Short(usize),
}

fn neg(rc: i64) -> Result<(), Failed> {
    if rc < 0 {
        Err(Failed::Errno(errno()))
    } else {
        Ok(())
    }
}

/// Writes `data` at `off` (or at the end with `off` None) through a fresh descriptor.
unsafe fn write_through(
    path: &std::ffi::CStr,
    off: Option<u64>,
    data: &[u8],
) -> Result<(), Failed> {
    let flags = libc::O_WRONLY | libc::O_CLOEXEC | if off.is_none() { libc::O_APPEND } else { 0 };
    let fd = libc::open(path.as_ptr(), flags);
    neg(fd as i64)?;
    let n = match off {
        Some(off) => libc::pwrite(fd, data.as_ptr().cast(), data.len(), off as i64),
        None => libc::write(fd, data.as_ptr().cast(), data.len()),
    };
    let e = errno();
    libc::close(fd);
    if n < 0 {
        return Err(Failed::Errno(e));
    }
    if (n as usize) < data.len() {
        // The kernel split the write into several requests and a later one failed.
        return Err(Failed::Short(n as usize));
    }
    Ok(())
}

/// Executes one op in `work`; Ok only when every call it made succeeded.
fn exec(work: &Path, op: &Op) -> Result<(), Failed> {
    let p = |rel: &str| cpath(work.join(rel));
    // SAFETY-free: plain syscalls on NUL-terminated paths and buffers that outlive them.
    unsafe {
        match op {
            Op::Create { path, mode } => {
                let fd = libc::open(
                    p(path).as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    *mode,
                );
                neg(fd as i64)?;
                neg(libc::close(fd) as i64)
            }
            Op::Mkdir { path, mode } => neg(libc::mkdir(p(path).as_ptr(), *mode) as i64),
            Op::Symlink { path, target } => {
                neg(libc::symlink(cstr(target).as_ptr(), p(path).as_ptr()) as i64)
            }
            Op::Write { path, off, data } => write_through(&p(path), Some(*off), &data.bytes()),
            Op::Append { path, data } => write_through(&p(path), None, &data.bytes()),
            Op::Truncate { path, len } => neg(libc::truncate(p(path).as_ptr(), *len as i64) as i64),
            Op::Rename { from, to } => neg(libc::rename(p(from).as_ptr(), p(to).as_ptr()) as i64),
            Op::Link { from, to } => neg(libc::link(p(from).as_ptr(), p(to).as_ptr()) as i64),
            Op::Unlink { path } => neg(libc::unlink(p(path).as_ptr()) as i64),
            Op::Rmdir { path } => neg(libc::rmdir(p(path).as_ptr()) as i64),
            Op::Chmod { path, mode } => neg(libc::chmod(p(path).as_ptr(), *mode) as i64),
            Op::SetXattr { path, name, value } => neg(libc::setxattr(
                p(path).as_ptr(),
                cstr(name).as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            ) as i64),
            Op::RemoveXattr { path, name } => {
                neg(libc::removexattr(p(path).as_ptr(), cstr(name).as_ptr()) as i64)
            }
            Op::Fsync { path } => {
                let fd = libc::open(p(path).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                neg(fd as i64)?;
                let rc = libc::fsync(fd);
                let e = errno();
                libc::close(fd);
                if rc < 0 {
                    Err(Failed::Errno(e))
                } else {
                    Ok(())
                }
            }
        }
    }
}

// ----- the workload -----

/// The op whose syscall failed or never returned: it may have happened or not.
#[derive(Clone, Debug)]
pub struct InFlight {
    pub op: Op,
    pub errno: i32,
}

/// An op that failed, as a running workload reports it.
#[derive(Clone, Debug)]
pub struct StepError {
    pub op: String,
    pub errno: i32,
    /// Whether `Running::mark_killed` had been called when the op failed: before that, a
    /// failure is a bug of the file system, not the crash.
    pub after_kill: bool,
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed with {}", self.op, errno_name(self.errno))
    }
}

/// Random ops against a mount, each recorded in `model` once it returned success.
pub struct Workload {
    pub model: Model,
    rng: StdRng,
    pub inflight: Option<InFlight>,
    /// Ops acknowledged since the workload was made (a short write's first part counts).
    pub acked: usize,
    /// Longest time one acknowledged op took.
    pub max_op: Duration,
}

impl Workload {
    /// A workload on an empty work directory.
    pub fn new(seed: u64) -> Workload {
        Workload::resume(Model::default(), seed)
    }

    /// A workload that continues from `model` (a tree already checked against it).
    pub fn resume(model: Model, seed: u64) -> Workload {
        Workload {
            model,
            rng: StdRng::seed_from_u64(seed),
            inflight: None,
            acked: 0,
            max_op: Duration::ZERO,
        }
    }

    /// Makes `mount`/w, where the workload runs; panics if that fails.
    pub fn prepare(mount: &Path) {
        let work = mount.join(WORK_DIR);
        std::fs::create_dir(&work).unwrap_or_else(|e| panic!("mkdir {}: {e}", work.display()));
    }

    /// The next op the workload would run (drawn from the model; not run).
    pub fn next_op(&mut self) -> Op {
        gen_op(&self.model, &mut self.rng)
    }

    /// Runs `op` in `mount`/w: on success records it in the model; on failure keeps it (or
    /// the unacknowledged rest of a short write) as in flight and returns the errno (EIO for
    /// a short write).
    pub fn execute(&mut self, mount: &Path, op: Op) -> Result<(), i32> {
        self.execute_recorded(mount, op).0
    }

    /// `execute`, also returning what it recorded in the model: the op, the acknowledged
    /// first part of a short write, or nothing. A test that must know the order of the
    /// acknowledged ops (which prefix of them a power cut kept) keeps these.
    pub fn execute_recorded(&mut self, mount: &Path, op: Op) -> (Result<(), i32>, Option<Op>) {
        let started = Instant::now();
        match exec(&mount.join(WORK_DIR), &op) {
            Ok(()) => {
                self.max_op = self.max_op.max(started.elapsed());
                self.model.apply(&op);
                self.acked += 1;
                (Ok(()), Some(op))
            }
            Err(Failed::Errno(errno)) => {
                self.inflight = Some(InFlight { op, errno });
                (Err(errno), None)
            }
            Err(Failed::Short(n)) => {
                let (done, rest) = op.split_at(n).expect("only writes are short");
                self.model.apply(&done);
                self.acked += 1;
                self.inflight = Some(InFlight {
                    op: rest,
                    errno: libc::EIO,
                });
                (Err(libc::EIO), Some(done))
            }
        }
    }

    /// Draws and runs one op (see `execute`).
    pub fn step(&mut self, mount: &Path) -> Result<(), i32> {
        let op = self.next_op();
        self.execute(mount, op)
    }

    /// Draws ops until one changes the file system (not fsync) and runs it.
    pub fn step_change(&mut self, mount: &Path) -> Result<(), i32> {
        let op = loop {
            let op = self.next_op();
            if op.changes() {
                break op;
            }
        };
        self.execute(mount, op)
    }

    /// Runs `n` ops; every one must succeed.
    #[track_caller]
    pub fn run(&mut self, mount: &Path, n: usize) {
        for _ in 0..n {
            if let Err(e) = self.step(mount) {
                let op = self.inflight.as_ref().map(|f| f.op.short());
                panic!(
                    "{} failed with {} after {} acknowledged ops",
                    op.unwrap_or_default(),
                    errno_name(e),
                    self.acked
                );
            }
        }
    }

    /// Runs the workload in a thread until `Running::stop` or the first failing op.
    pub fn spawn(self, mount: PathBuf) -> Running {
        let flags = Arc::new(Flags::default());
        let handle = {
            let flags = flags.clone();
            std::thread::spawn(move || {
                let mut w = self;
                while !flags.stop.load(Ordering::SeqCst) {
                    if let Err(errno) = w.step(&mount) {
                        let op = w.inflight.as_ref().map(|f| f.op.short());
                        let error = StepError {
                            op: op.unwrap_or_default(),
                            errno,
                            after_kill: flags.killed.load(Ordering::SeqCst),
                        };
                        return (w, Some(error));
                    }
                    flags.acked.fetch_add(1, Ordering::SeqCst);
                }
                (w, None)
            })
        };
        Running { flags, handle }
    }

    /// Compares the tree under `mount`/w with the model, accepting the in-flight op applied,
    /// not applied, or torn after its first page; what matched becomes the model (an op that
    /// never returned but took effect is then part of it) and nothing is in flight any more.
    /// Ok says which it was.
    pub fn settle(&mut self, mount: &Path) -> Result<&'static str, Mismatch> {
        let got = scan(&mount.join(WORK_DIR)).map_err(|e| Mismatch::unreadable(mount, e))?;
        let without = diff(&self.model.snapshot(), &got);
        let Some(inflight) = self.inflight.take() else {
            if without.is_empty() {
                return Ok("no op in flight");
            }
            let what = format!("differs from the {} acknowledged ops", self.acked);
            return Err(Mismatch::new(mount, &what, without));
        };
        if without.is_empty() {
            return Ok("in-flight op not applied");
        }
        let mut applied = self.model.clone();
        applied.apply(&inflight.op);
        let with = diff(&applied.snapshot(), &got);
        if with.is_empty() {
            self.model = applied;
            return Ok("in-flight op applied");
        }
        if let Some(torn) = self.model.torn_at_first_page(&inflight.op) {
            if diff(&torn.snapshot(), &got).is_empty() {
                self.model = torn;
                return Ok("in-flight op applied up to its first page boundary");
            }
        }
        let mut lines = vec!["without the in-flight op:".to_string()];
        lines.extend(without.into_iter().take(10).map(|l| format!("  {l}")));
        lines.push("with it:".to_string());
        lines.extend(with.into_iter().take(10).map(|l| format!("  {l}")));
        self.inflight = Some(inflight.clone());
        let what = format!(
            "matches neither the {} acknowledged ops nor them plus the in-flight {} ({})",
            self.acked,
            inflight.op.short(),
            errno_name(inflight.errno)
        );
        Err(Mismatch::new(mount, &what, lines))
    }

    /// `settle`, panicking with the mismatch.
    #[track_caller]
    pub fn check(&mut self, mount: &Path) {
        if let Err(m) = self.settle(mount) {
            panic!("{m}");
        }
    }
}

#[derive(Default)]
struct Flags {
    stop: AtomicBool,
    killed: AtomicBool,
    acked: AtomicUsize,
}

/// A workload running in a thread of its own.
pub struct Running {
    flags: Arc<Flags>,
    handle: JoinHandle<(Workload, Option<StepError>)>,
}

impl Running {
    /// Ops acknowledged since the workload was spawned.
    pub fn acked(&self) -> usize {
        self.flags.acked.load(Ordering::SeqCst)
    }

    /// Waits until `n` more ops than now were acknowledged; panics after `timeout`, or if the
    /// workload stopped at a failing op.
    #[track_caller]
    pub fn wait_for_ops(&self, n: usize, timeout: Duration) {
        let target = self.acked() + n;
        super::wait_for(
            timeout,
            &format!("the workload to run {n} more ops"),
            || {
                assert!(
                    !self.handle.is_finished(),
                    "the workload stopped after {} ops, before {target}",
                    self.acked()
                );
                self.acked() >= target
            },
        );
    }

    /// Notes that the daemon is about to be killed: failures from now on are expected.
    pub fn mark_killed(&self) {
        self.flags.killed.store(true, Ordering::SeqCst);
    }

    /// Stops at the next op boundary (or takes the failure that stopped it already).
    pub fn stop(self) -> (Workload, Option<StepError>) {
        self.flags.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    /// Waits until the workload stops by itself, at its first failing op.
    pub fn join(self) -> (Workload, Option<StepError>) {
        self.handle.join().expect("the workload thread panicked")
    }
}

// ----- what is on disk -----

#[derive(Debug, PartialEq)]
struct Entry {
    kind: char,
    mode: u32,
    nlink: u64,
    /// For files and symlinks: every path of the same inode, sorted (hard-link groups).
    links: Vec<String>,
    /// File content or symlink target.
    content: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

type Snapshot = BTreeMap<String, Entry>;

/// Calls a listxattr/getxattr-style function with a buffer that grows until the answer fits.
fn xattr_call(what: &str, mut call: impl FnMut(&mut [u8]) -> isize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = call(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = errno();
        if e != libc::ERANGE || buf.len() >= 1 << 20 {
            return Err(format!("{what}: {}", errno_name(e)));
        }
        buf.resize(buf.len() * 4, 0);
    }
}

fn user_xattrs(p: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let c = cpath(p);
    let names = xattr_call(&format!("listxattr {}", p.display()), |b| unsafe {
        libc::llistxattr(c.as_ptr(), b.as_mut_ptr().cast(), b.len())
    })?;
    let mut out = BTreeMap::new();
    for name in names.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if !name.starts_with("user.") {
            continue;
        }
        let cn = cstr(&name);
        let value = xattr_call(&format!("getxattr {} {name}", p.display()), |b| unsafe {
            libc::lgetxattr(c.as_ptr(), cn.as_ptr(), b.as_mut_ptr().cast(), b.len())
        })?;
        out.insert(name, value);
    }
    Ok(out)
}

/// Reads the tree under `root` into a snapshot; Err on any failing call.
fn scan(root: &Path) -> Result<Snapshot, String> {
    let mut raw: Vec<(String, libc::stat)> = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(root.join(&dir))
            .map_err(|e| format!("readdir {}: {e}", root.join(&dir).display()))?;
        for e in rd {
            let e = e.map_err(|e| format!("readdir {dir}: {e}"))?;
            let rel = join(&dir, &e.file_name().to_string_lossy());
            let s =
                lstat(root.join(&rel)).map_err(|er| format!("lstat {rel}: {}", errno_name(er)))?;
            if s.st_mode & libc::S_IFMT == libc::S_IFDIR {
                stack.push(rel.clone());
            }
            raw.push((rel, s));
        }
    }
    let mut by_ino: HashMap<u64, Vec<String>> = HashMap::new();
    for (p, s) in &raw {
        by_ino.entry(s.st_ino).or_default().push(p.clone());
    }
    let mut out = Snapshot::new();
    for (p, s) in &raw {
        let full = root.join(p);
        let links = || {
            let mut l = by_ino[&s.st_ino].clone();
            l.sort();
            l
        };
        let (kind, content, links) = match s.st_mode & libc::S_IFMT {
            libc::S_IFDIR => ('d', Vec::new(), Vec::new()),
            libc::S_IFREG => {
                let data = std::fs::read(&full).map_err(|e| format!("read {p}: {e}"))?;
                if data.len() as i64 != s.st_size {
                    return Err(format!(
                        "{p}: st_size {} but read {} bytes",
                        s.st_size,
                        data.len()
                    ));
                }
                ('f', data, links())
            }
            libc::S_IFLNK => {
                let t = std::fs::read_link(&full).map_err(|e| format!("readlink {p}: {e}"))?;
                ('l', t.to_string_lossy().as_bytes().to_vec(), links())
            }
            other => ('?', format!("{other:o}").into_bytes(), Vec::new()),
        };
        let xattrs = if kind == 'l' {
            BTreeMap::new()
        } else {
            user_xattrs(&full)?
        };
        out.insert(
            p.clone(),
            Entry {
                kind,
                mode: s.st_mode & 0o7777,
                nlink: s.st_nlink,
                links,
                content,
                xattrs,
            },
        );
    }
    Ok(out)
}

/// One line per path that differs: what was found, then what the model expected.
fn diff(want: &Snapshot, got: &Snapshot) -> Vec<String> {
    let mut d = Vec::new();
    let names: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    for n in names {
        match (want.get(n), got.get(n)) {
            (Some(_), None) => d.push(format!("{n}: missing")),
            (None, Some(g)) => d.push(format!("{n}: unexpected {} entry", g.kind)),
            (Some(w), Some(g)) if w != g => d.push(format!("{n}: {}", entry_diff(w, g))),
            _ => {}
        }
    }
    d
}

fn entry_diff(w: &Entry, g: &Entry) -> String {
    let mut what = Vec::new();
    if w.kind != g.kind {
        what.push(format!("kind {} != {}", g.kind, w.kind));
    }
    if w.mode != g.mode {
        what.push(format!("mode {:o} != {:o}", g.mode, w.mode));
    }
    if w.nlink != g.nlink {
        what.push(format!("nlink {} != {}", g.nlink, w.nlink));
    }
    if w.links != g.links {
        what.push(format!("links {:?} != {:?}", g.links, w.links));
    }
    if w.content != g.content {
        let first = w
            .content
            .iter()
            .zip(&g.content)
            .position(|(a, b)| a != b)
            .unwrap_or(w.content.len().min(g.content.len()));
        what.push(format!(
            "content: {} bytes, expected {}, first difference at {first}",
            g.content.len(),
            w.content.len()
        ));
    }
    if w.xattrs != g.xattrs {
        what.push(format!(
            "xattrs {:?} != {:?}",
            g.xattrs.keys().collect::<Vec<_>>(),
            w.xattrs.keys().collect::<Vec<_>>()
        ));
    }
    what.join("; ")
}

// ----- power cuts: which prefix of the acknowledged ops survived -----

/// What a power cut kept of the ops acknowledged after the last durability point: the tree
/// equals the model at that point followed by the first `kept` of them, then perhaps the next
/// one's first FUSE request (`torn`), and then perhaps the op that was in flight (`inflight`
/// says how it was found); `direct_lost` of the direct writes among them read as zeroes.
#[derive(Clone, Debug)]
pub struct Survived {
    pub kept: usize,
    /// The acknowledged write after the `kept` ops is there up to its first page boundary:
    /// the kernel sent it as two requests and the cut kept the first one's log entries only.
    pub torn: bool,
    /// Direct writes (block-aligned, 64 KiB or more) after the durability point whose data
    /// the cut lost from the volume while their log entries survived: replayed as zeroes.
    pub direct_lost: usize,
    pub inflight: &'static str,
}

impl Model {
    /// Compares the tree under `mount`/w with this model (the state every op acknowledged
    /// before the last durability point — a returned fsync — must have left) followed by each
    /// prefix of `after`, the ops acknowledged since, in order, each prefix also with the next
    /// op torn at its first page (an acknowledged write is one or two FUSE requests, each
    /// logged on its own, so a prefix of the log may end between them); after all of them,
    /// also with the op in flight applied or torn at its first page. A direct write among
    /// them may read as zeroes (its data goes to the volume, which only an fsync flushes, so
    /// a cut may keep its log entries and lose its data; recovery then replays zeroes: see
    /// `with_direct_data_lost`); before the durability point it may not. Ok holds the longest
    /// prefix that matches and the model it gives; the acknowledged ops lost are
    /// `after.len() - kept` (a torn one counts as lost).
    /// A tree that matches no prefix lost a durable op, holds one twice or holds something
    /// no op wrote: the mismatch shows the differences from this model and from the last
    /// state.
    pub fn verify_prefix(
        &self,
        mount: &Path,
        after: &[Op],
        inflight: Option<&Op>,
    ) -> Result<(Model, Survived), Mismatch> {
        let got = scan(&mount.join(WORK_DIR)).map_err(|e| Mismatch::unreadable(mount, e))?;
        let matches = |m: &Model| diff(&m.snapshot(), &got).is_empty();
        // Every state the kept prefix may have left: (model, direct writes read as zeroes).
        let mut states: Vec<(Model, usize)> = vec![(self.clone(), 0)];
        let mut found: Option<(Model, Survived)> = None;
        let lines_at_base = diff(&self.snapshot(), &got);
        for kept in 0..=after.len() {
            if kept > 0 {
                let op = &after[kept - 1];
                let mut next = Vec::with_capacity(states.len());
                for (state, lost) in states {
                    if next.len() + 1 < MAX_DIRECT_LOSS_VARIANTS {
                        if let Some(zeroed) = state.with_direct_data_lost(op) {
                            next.push((zeroed, lost + 1));
                        }
                    }
                    let mut state = state;
                    state.apply(op);
                    next.push((state, lost));
                }
                states = next;
            }
            for (state, lost) in &states {
                let survived = |torn| Survived {
                    kept,
                    torn,
                    direct_lost: *lost,
                    inflight: "",
                };
                if matches(state) {
                    found = Some((state.clone(), survived(false)));
                }
                if let Some(torn) = after.get(kept).and_then(|op| state.torn_at_first_page(op)) {
                    if matches(&torn) {
                        found = Some((torn, survived(true)));
                    }
                }
            }
        }
        if let Some(op) = inflight {
            for (state, lost) in &states {
                let survived = |inflight| Survived {
                    kept: after.len(),
                    torn: false,
                    direct_lost: *lost,
                    inflight,
                };
                let mut applied = state.clone();
                applied.apply(op);
                if matches(&applied) {
                    return Ok((applied, survived("in-flight op applied")));
                }
                if let Some(zeroed) = state.with_direct_data_lost(op) {
                    if matches(&zeroed) {
                        return Ok((
                            zeroed,
                            survived("in-flight direct write applied, its data lost"),
                        ));
                    }
                }
                if let Some(torn) = state.torn_at_first_page(op) {
                    if matches(&torn) {
                        return Ok((
                            torn,
                            survived("in-flight op applied up to its first page boundary"),
                        ));
                    }
                }
            }
        }
        if let Some((model, mut survived)) = found {
            survived.inflight = if inflight.is_some() {
                "in-flight op not applied"
            } else {
                "no op in flight"
            };
            return Ok((model, survived));
        }
        let state = states
            .last()
            .map(|(m, _)| m.clone())
            .unwrap_or_else(|| self.clone());
        let mut lines = vec!["compared with the state at the last durability point:".to_string()];
        lines.extend(lines_at_base.into_iter().take(10).map(|l| format!("  {l}")));
        lines.push(format!(
            "compared with the state after all {} ops acknowledged since:",
            after.len()
        ));
        let at_end = diff(&state.snapshot(), &got);
        lines.extend(at_end.into_iter().take(10).map(|l| format!("  {l}")));
        let what = format!(
            "matches no prefix of the {} ops acknowledged after the last durability point \
             (a durable op lost, an op applied twice, or bytes no op wrote)",
            after.len()
        );
        Err(Mismatch::new(mount, &what, lines))
    }
}

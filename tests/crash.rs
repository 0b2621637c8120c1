//! Crash test on a real mount (issue 2, "What proves it").
//!
//! Each iteration: a workload thread runs random file-system operations in the mount and
//! records each one in an in-memory model only after it returned successfully; the daemon is
//! `kill -9`ed after a random delay (50–800 ms); the workload stops at its first error (the dead
//! mount answers ENOTCONN); the volume is mounted again (recovery) and the file tree must equal
//! the model — names, types, sizes, contents, modes, link counts, hard-link groups, symlink
//! targets and `user.` xattrs — where the one operation in flight at the kill may have happened
//! or not. Then a clean unmount and `smlogfs fsck` must exit 0.
//!
//! The volume carries over from one iteration to the next, so later kills hit a fuller file
//! system and a wrapped ring. After a failed iteration the test starts over on a fresh volume.
//!
//! Env: `CRASH_ITERATIONS` (default 50), `CRASH_SEED` (default: from the clock; each iteration
//! prints its seed), `CRASH_MKFS` (mkfs arguments, default `common::DEFAULT_MKFS`),
//! `SMLOGFS_TEST_KEEP=1` (keep the volume of each failed iteration for a post-mortem).
//! Every iteration prints one line starting with `crash-iteration` and `PASS` or `FAIL`;
//! `scripts/crash-test.sh` counts them. A second test does the same with a 4 MiB ring
//! (`CRASH_SMALL_RING_ITERATIONS`, default 10). A third (issue 4) mirrors the volume to a
//! `mirror-agent` in a network namespace and deletes the local ring after every kill, so
//! recovery comes from the agent (`CRASH_MIRROR_ITERATIONS`, default 20; needs the
//! `mirror-agent` binary built next to smlogfs and `ip netns`).

mod common;

use common::netns::{Agent, Host};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORK_DIR: &str = "w";
const MAX_ENTRIES: usize = 120;
const MAX_FILE_BYTES: u64 = 384 * 1024;
/// Writes stay below the kernel's max_write (128 KiB) so the kernel sends each write() as at
/// most two FUSE requests: one when it starts at a page boundary, and when it starts inside a
/// page that is not in the page cache, the rest of that page first and the remainder second
/// (fuse_fill_write_pages stops a request after a partly written page that is not uptodate).
/// So an in-flight write is all, nothing, or that first part (see `torn_at_first_page`).
const MAX_WRITE_BYTES: usize = 64 * 1024;
const PAGE_BYTES: u64 = 4096;
const FILE_NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];
const DIR_NAMES: &[&str] = &["D1", "D2", "D3", "D4"];
const XATTR_NAMES: &[&str] = &["user.one", "user.two", "user.three"];
const FILE_MODES: &[u32] = &[0o644, 0o600, 0o640, 0o755, 0o444, 0o700];
const DIR_MODES: &[u32] = &[0o755, 0o700, 0o750, 0o1777];
/// The test sets this umask; creates and mkdirs are masked by it.
const UMASK: u32 = 0o022;

// ----- the model -----

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

#[derive(Clone, Debug)]
struct Inode {
    kind: Kind,
    mode: u32,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// Paths are relative to the work directory, '/'-separated, without a leading slash.
#[derive(Clone, Debug, Default)]
struct Model {
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

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Create { path, mode } => self.add(path, Kind::File(Vec::new()), *mode & !UMASK),
            Op::Mkdir { path, mode } => self.add(path, Kind::Dir, *mode & !UMASK),
            Op::Symlink { path, target } => self.add(path, Kind::Symlink(target.clone()), 0o777),
            Op::Write {
                path,
                off,
                len,
                seed,
                skip,
            } => {
                let data = write_data(*seed, *skip, *len);
                let f = self.file_mut(path);
                let end = *off as usize + len;
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[*off as usize..end].copy_from_slice(&data);
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

// ----- operations -----

#[derive(Clone, Debug)]
enum Op {
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
    /// Writes bytes `skip..skip + len` of `pattern(seed, ..)` at `off` (skip > 0 only for
    /// the unacknowledged rest of a short write).
    Write {
        path: String,
        off: u64,
        len: usize,
        seed: u64,
        skip: usize,
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
    fn short(&self) -> String {
        match self {
            Op::Write { path, off, len, .. } => format!("Write {path} @{off} +{len}"),
            Op::SetXattr { path, name, value } => {
                format!("SetXattr {path} {name} ({} bytes)", value.len())
            }
            other => format!("{other:?}"),
        }
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
            18..=45 => pick(rng, &files).map(|path| {
                let size = match m.kind_of(path) {
                    Some(Kind::File(d)) => d.len() as u64,
                    _ => 0,
                };
                // A fifth are block-aligned 64 KiB writes, which the daemon writes straight
                // to fresh volume blocks (direct writes) instead of through the ring.
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
                    path: path.clone(),
                    off,
                    len,
                    seed: rng.gen(),
                    skip: 0,
                }
            }),
            46..=51 => pick(rng, &files).map(|path| Op::Truncate {
                path: path.clone(),
                len: rng.gen_range(0..MAX_FILE_BYTES / 2),
            }),
            52..=61 => {
                // A file or symlink to a free name or over another file; a directory to a
                // free name outside its own subtree.
                let all: Vec<String> = m.entries.keys().cloned().collect();
                pick(rng, &all).and_then(|from| {
                    if m.is_dir(from) {
                        let to = free_path(m, rng, DIR_NAMES)?;
                        let inside = to.starts_with(&format!("{from}/"));
                        (!inside && to.matches('/').count() < 3).then(|| Op::Rename {
                            from: from.clone(),
                            to,
                        })
                    } else if rng.gen_bool(0.4) && !files.is_empty() {
                        let to = pick(rng, &files)?.clone();
                        (to != *from).then(|| Op::Rename {
                            from: from.clone(),
                            to,
                        })
                    } else {
                        let to = free_path(m, rng, FILE_NAMES)?;
                        Some(Op::Rename {
                            from: from.clone(),
                            to,
                        })
                    }
                })
            }
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

/// `exec` reports a short write of n bytes as Err(SHORT_WRITE_BASE + n).
const SHORT_WRITE_BASE: i32 = 1 << 24;

fn write_data(seed: u64, skip: usize, len: usize) -> Vec<u8> {
    pattern(seed, skip + len)[skip..].to_vec()
}

fn neg(rc: i64) -> Result<(), i32> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Executes one op in the mount; Ok only when every call it made succeeded.
fn exec(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |rel: &str| cpath(root.join(rel));
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
            Op::Write {
                path,
                off,
                len,
                seed,
                skip,
            } => {
                let fd = libc::open(p(path).as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                neg(fd as i64)?;
                let data = write_data(*seed, *skip, *len);
                let n = libc::pwrite(fd, data.as_ptr().cast(), data.len(), *off as i64);
                let e = errno();
                libc::close(fd);
                if n < 0 {
                    return Err(e);
                }
                if (n as usize) < *len {
                    // The kernel split the write into several requests and a later one failed.
                    return Err(SHORT_WRITE_BASE + n as i32);
                }
                Ok(())
            }
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
                    Err(e)
                } else {
                    Ok(())
                }
            }
        }
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

fn user_xattrs(p: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(format!(
            "listxattr {}: {}",
            p.display(),
            errno_name(errno())
        ));
    }
    let mut out = BTreeMap::new();
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let name = String::from_utf8_lossy(name).into_owned();
        if !name.starts_with("user.") {
            continue;
        }
        let mut val = vec![0u8; 65536];
        let cn = cstr(&name);
        let len =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if len < 0 {
            return Err(format!(
                "getxattr {} {name}: {}",
                p.display(),
                errno_name(errno())
            ));
        }
        val.truncate(len as usize);
        out.insert(name, val);
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
                let mut l = by_ino[&s.st_ino].clone();
                l.sort();
                ('f', data, l)
            }
            libc::S_IFLNK => {
                let t = std::fs::read_link(&full).map_err(|e| format!("readlink {p}: {e}"))?;
                let mut l = by_ino[&s.st_ino].clone();
                l.sort();
                ('l', t.to_string_lossy().as_bytes().to_vec(), l)
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

fn diff(want: &Snapshot, got: &Snapshot) -> Vec<String> {
    let mut d = Vec::new();
    let names: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    for n in names {
        match (want.get(n), got.get(n)) {
            (Some(_), None) => d.push(format!("{n}: missing")),
            (None, Some(g)) => d.push(format!("{n}: unexpected {} entry", g.kind)),
            (Some(w), Some(g)) if w != g => {
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
                d.push(format!("{n}: {}", what.join("; ")));
            }
            _ => {}
        }
    }
    d
}

// ----- one iteration -----

struct Outcome {
    model: Model,
    acked: usize,
    inflight: Option<(Op, i32)>,
}

fn workload(root: PathBuf, mut model: Model, seed: u64, killed: Arc<AtomicBool>) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acked = 0;
    loop {
        if native() && killed.load(Ordering::SeqCst) {
            return Outcome {
                model,
                acked,
                inflight: None,
            };
        }
        let mut op = gen_op(&model, &mut rng);
        match exec(&root, &op) {
            Ok(()) => {
                model.apply(&op);
                acked += 1;
            }
            Err(e) => {
                let e = if e >= SHORT_WRITE_BASE {
                    // The first n bytes were acknowledged; the rest is in flight.
                    let n = (e - SHORT_WRITE_BASE) as usize;
                    if let Op::Write {
                        path,
                        off,
                        len,
                        seed,
                        skip,
                    } = op.clone()
                    {
                        model.apply(&Op::Write {
                            path: path.clone(),
                            off,
                            len: n,
                            seed,
                            skip,
                        });
                        acked += 1;
                        op = Op::Write {
                            path,
                            off: off + n as u64,
                            len: len - n,
                            seed,
                            skip: skip + n,
                        };
                    }
                    libc::EIO
                } else {
                    e
                };
                let after_kill = killed.load(Ordering::SeqCst);
                if !after_kill {
                    // An error while the daemon was alive: a bug, not the crash.
                    return Outcome {
                        model,
                        acked,
                        inflight: Some((op, -e)),
                    };
                }
                return Outcome {
                    model,
                    acked,
                    inflight: Some((op, e)),
                };
            }
        }
    }
}

/// The first of the two FUSE requests the kernel makes of a write that starts inside a page
/// and goes past it: the rest of that page. The daemon may apply it and die before the kernel
/// has its answer; write() then fails although that part happened (and stays).
fn torn_at_first_page(op: &Op) -> Option<Op> {
    let Op::Write {
        path,
        off,
        len,
        seed,
        skip,
    } = op
    else {
        return None;
    };
    let first = (PAGE_BYTES - off % PAGE_BYTES) as usize;
    (off % PAGE_BYTES != 0 && first < *len).then(|| Op::Write {
        path: path.clone(),
        off: *off,
        len: first,
        seed: *seed,
        skip: *skip,
    })
}

/// Compares the mount with the model, accepting the in-flight op either way (a write also
/// torn after its first FUSE request); returns the model that matched.
fn verify(root: &Path, out: &Outcome) -> Result<(Model, &'static str), String> {
    let got = scan(root)?;
    let before = diff(&out.model.snapshot(), &got);
    if before.is_empty() {
        return Ok((out.model.clone(), "not applied"));
    }
    if let Some((op, _)) = &out.inflight {
        let mut after = out.model.clone();
        after.apply(op);
        let d = diff(&after.snapshot(), &got);
        if d.is_empty() {
            return Ok((after, "applied"));
        }
        if let Some(part) = torn_at_first_page(op) {
            let mut torn = out.model.clone();
            torn.apply(&part);
            if diff(&torn.snapshot(), &got).is_empty() {
                return Ok((torn, "applied up to its first page boundary"));
            }
        }
        return Err(format!(
            "tree matches neither the acknowledged ops nor them plus the in-flight {}:\n  \
             without it: {}\n  with it: {}",
            op.short(),
            before
                .iter()
                .take(12)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n    "),
            d.iter()
                .take(12)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n    ")
        ));
    }
    Err(format!(
        "tree differs from the acknowledged ops:\n    {}",
        before
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n    ")
    ))
}

fn default_mkfs_args() -> Vec<String> {
    match std::env::var("CRASH_MKFS") {
        Ok(s) => s.split_whitespace().map(String::from).collect(),
        Err(_) => DEFAULT_MKFS.iter().map(|s| s.to_string()).collect(),
    }
}

/// How a kill-point run mounts its volume and brings it back after each `kill -9`.
struct Mounting {
    /// Arguments of every `smlogfs mount` of the run: the first, the recovery mount and the
    /// one after the clean unmount and fsck.
    args: Vec<String>,
    /// The recovery mount after the kill; Ok holds how long `smlogfs mount` took.
    recover: fn(&mut Volume) -> Result<Duration, String>,
}

impl Mounting {
    /// No mount options; recovery replays the local ring.
    fn local() -> Mounting {
        Mounting {
            args: Vec::new(),
            recover: Volume::try_remount,
        }
    }
}

fn fresh_volume(mkfs_args: &[String], mounting: &Mounting) -> Volume {
    let args: Vec<&str> = mkfs_args.iter().map(|s| s.as_str()).collect();
    let mut v = Volume::new(&args);
    let mount_args: Vec<&str> = mounting.args.iter().map(|s| s.as_str()).collect();
    v.mount(&mount_args);
    std::fs::create_dir(v.path(WORK_DIR)).expect("mkdir work dir");
    v
}

/// Runs one kill point. Err describes the failure.
fn iteration(
    v: &mut Volume,
    model: &mut Model,
    seed: u64,
    mounting: &Mounting,
) -> Result<String, String> {
    let root = v.path(WORK_DIR);
    // The clean unmount and mount since the last kill must have kept everything.
    if let Some(d) = scan(&root).ok().map(|g| diff(&model.snapshot(), &g)) {
        if !d.is_empty() {
            return Err(format!(
                "after a clean umount+mount the tree differs from the model:\n    {}",
                d.into_iter().take(20).collect::<Vec<_>>().join("\n    ")
            ));
        }
    } else {
        return Err("cannot scan the tree after a clean mount".into());
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let delay = Duration::from_millis(rng.gen_range(50..=800));
    let killed = Arc::new(AtomicBool::new(false));
    let worker = {
        let (root, model, killed) = (root.clone(), model.clone(), killed.clone());
        std::thread::spawn(move || workload(root, model, seed, killed))
    };
    std::thread::sleep(delay);
    killed.store(true, Ordering::SeqCst);
    v.kill9();
    let out = worker
        .join()
        .map_err(|_| "workload thread panicked".to_string())?;
    if let Some((op, e)) = &out.inflight {
        if *e < 0 {
            return Err(format!(
                "{} failed with {} while the daemon was alive (after {} ops)",
                op.short(),
                errno_name(-e),
                out.acked
            ));
        }
    }
    let recovery = (mounting.recover)(v)?;
    let (matched, how) = verify(&root, &out)?;
    *model = matched;
    v.umount();
    let (code, text) = v.fsck();
    if code != 0 {
        return Err(format!("fsck exit {code}:\n{text}"));
    }
    v.remount();
    let inflight = match &out.inflight {
        Some((op, e)) => format!("in-flight {} ({}) {how}", op.short(), errno_name(*e)),
        None => "no op in flight".into(),
    };
    Ok(format!(
        "killed after {} ms, {} ops acknowledged, {inflight}, {} entries, recovery mount {} ms",
        delay.as_millis(),
        out.acked,
        model.entries.len(),
        recovery.as_millis()
    ))
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `iterations` kill points on one volume made with `mkfs_args` and mounted as
/// `mounting` says; each prints a line starting with `label`. Panics at the end if any failed.
fn run_kill_points(label: &str, iterations: usize, mkfs_args: &[String], mounting: &Mounting) {
    unsafe { libc::umask(UMASK) };
    let base_seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!(
        "{label}: {iterations} iterations, mkfs {mkfs_args:?}, mount {:?}, CRASH_SEED={base_seed}{}",
        mounting.args,
        if native() { " (native mode)" } else { "" }
    );
    let mut v = fresh_volume(mkfs_args, mounting);
    let mut model = Model::default();
    let mut failures = Vec::new();
    let started = Instant::now();
    for i in 1..=iterations {
        let seed = base_seed.wrapping_add(i as u64 * 0x9E37_79B9);
        let t = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            iteration(&mut v, &mut model, seed, mounting)
        }))
        .unwrap_or_else(|p| {
            Err(format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ))
        });
        match result {
            Ok(msg) => eprintln!(
                "{label} {i} seed {seed} PASS ({} ms): {msg}",
                t.elapsed().as_millis()
            ),
            Err(msg) => {
                eprintln!(
                    "{label} {i} seed {seed} FAIL ({} ms): {msg}",
                    t.elapsed().as_millis()
                );
                failures.push(i);
                if std::env::var_os("SMLOGFS_TEST_KEEP").is_some() {
                    v.keep_on_drop();
                }
                // Start over on a fresh volume (the old one is dropped: unmounted, removed).
                drop(std::mem::replace(&mut v, fresh_volume(mkfs_args, mounting)));
                model = Model::default();
            }
        }
    }
    eprintln!(
        "{label}: {} passed, {} failed in {:.1} s",
        iterations - failures.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "crash iterations failed: {failures:?} (base CRASH_SEED={base_seed})"
    );
}

/// The kill points of the issue: CRASH_ITERATIONS (default 50) on the default volume.
/// `scripts/crash-test.sh` runs this test alone and counts its `crash-iteration` lines.
#[test]
fn kill9_at_random_points_keeps_every_acknowledged_op() {
    run_kill_points(
        "crash-iteration",
        env_number("CRASH_ITERATIONS", 50),
        &default_mkfs_args(),
        &Mounting::local(),
    );
}

/// The same with the smallest ring mkfs accepts (4 MiB): the workload wraps it many times per
/// iteration, so kills land during checkpoints, reclaims and writers waiting for space.
#[test]
fn kill9_with_a_small_ring_that_wraps() {
    let args: Vec<String> = ["--size", "1G", "--ring", "4M", "--disks", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    run_kill_points(
        "small-ring-iteration",
        env_number("CRASH_SMALL_RING_ITERATIONS", 10),
        &args,
        &Mounting::local(),
    );
}

/// After the kill -9: deletes the local ring (VOLDIR/statelog) and mounts again with the
/// run's arguments, the mirror among them. daemon.log must say the entries came from the
/// agent, proof that the recovery mount read them back from there.
fn remount_without_the_ring(v: &mut Volume) -> Result<Duration, String> {
    let ring = v.voldir().join("statelog");
    std::fs::remove_file(&ring).map_err(|e| format!("rm {}: {e}", ring.display()))?;
    let log_path = v.voldir().join("daemon.log");
    let log_before = std::fs::read_to_string(&log_path).unwrap_or_default().len();
    let took = v.try_remount()?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let new = log.get(log_before..).unwrap_or_default();
    if !new.contains("from the mirror agent") {
        return Err(format!(
            "the recovery mount without the ring did not say it read the mirror agent's \
             copy; daemon.log of that mount:\n{new}"
        ));
    }
    Ok(took)
}

/// Issue 4's first proof: the same kill points on a volume mirrored in sync mode to a
/// `mirror-agent` on another host (a network namespace of its own, real TCP over veth), and
/// after every kill -9 the local ring file is deleted before the recovery mount, so every
/// acknowledged op must come back from the agent, exactly once. CRASH_MIRROR_ITERATIONS
/// (default 20).
#[test]
fn kill9_with_the_local_ring_deleted_recovers_from_the_agent_on_another_host() {
    if native() {
        eprintln!("mirror-iteration: skipped in native mode (no daemon, no ring)");
        return;
    }
    let host = Host::new(1);
    let dir = tempfile::Builder::new()
        .prefix("smlogfs-agent-")
        .tempdir()
        .expect("create agent temp dir");
    let agent = Agent::start(&host, &dir.path().join("agent"), None);
    let mounting = Mounting {
        args: [
            "--mirror",
            &host.addr(0),
            "--node",
            "A",
            "--mirror-mode",
            "sync",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        recover: remount_without_the_ring,
    };
    let run = std::panic::catch_unwind(|| {
        run_kill_points(
            "mirror-iteration",
            env_number("CRASH_MIRROR_ITERATIONS", 20),
            &default_mkfs_args(),
            &mounting,
        )
    });
    if let Err(panic) = run {
        if std::env::var_os("SMLOGFS_TEST_KEEP").is_some() {
            eprintln!("kept agent dir in {}", dir.keep().display());
        }
        // The agent first, then the namespace (the volumes are gone already).
        drop(agent);
        drop(host);
        std::panic::resume_unwind(panic);
    }
}

//! POSIX surface of a real smlogfs mount, checked against ext4 semantics (issue 2, point 3).
//!
//! Each test makes its own volume and mount. Errors are checked through libc so the exact errno
//! is compared. `SMLOGFS_TEST_NATIVE=1` runs the same assertions on the host file system.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MIB: usize = 1 << 20;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn open(p: &Path, flags: i32, mode: u32) -> i32 {
    let c = cpath(p);
    unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) }
}

#[track_caller]
fn open_ok(p: &Path, flags: i32, mode: u32) -> i32 {
    let fd = open(p, flags, mode);
    assert!(fd >= 0, "open {}: {}", p.display(), errno_name(errno()));
    fd
}

fn close(fd: i32) {
    assert_eq!(
        unsafe { libc::close(fd) },
        0,
        "close: {}",
        errno_name(errno())
    );
}

fn mkdir(p: &Path, mode: u32) -> i64 {
    let c = cpath(p);
    unsafe { libc::mkdir(c.as_ptr(), mode) as i64 }
}

fn rmdir(p: &Path) -> i64 {
    let c = cpath(p);
    unsafe { libc::rmdir(c.as_ptr()) as i64 }
}

fn unlink(p: &Path) -> i64 {
    let c = cpath(p);
    unsafe { libc::unlink(c.as_ptr()) as i64 }
}

fn rename(a: &Path, b: &Path) -> i64 {
    let (a, b) = (cpath(a), cpath(b));
    unsafe { libc::rename(a.as_ptr(), b.as_ptr()) as i64 }
}

fn renameat2(a: &Path, b: &Path, flags: u32) -> i64 {
    let (a, b) = (cpath(a), cpath(b));
    unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        ) as i64
    }
}

fn link(a: &Path, b: &Path) -> i64 {
    let (a, b) = (cpath(a), cpath(b));
    unsafe { libc::link(a.as_ptr(), b.as_ptr()) as i64 }
}

fn symlink(target: &str, p: &Path) -> i64 {
    let (t, p) = (cstr(target), cpath(p));
    unsafe { libc::symlink(t.as_ptr(), p.as_ptr()) as i64 }
}

fn chmod(p: &Path, mode: u32) -> i64 {
    let c = cpath(p);
    unsafe { libc::chmod(c.as_ptr(), mode) as i64 }
}

fn chown(p: &Path, uid: u32, gid: u32) -> i64 {
    let c = cpath(p);
    unsafe { libc::chown(c.as_ptr(), uid, gid) as i64 }
}

fn truncate(p: &Path, len: i64) -> i64 {
    let c = cpath(p);
    unsafe { libc::truncate(c.as_ptr(), len) as i64 }
}

fn mknod(p: &Path, mode: u32, dev: libc::dev_t) -> i64 {
    let c = cpath(p);
    unsafe { libc::mknod(c.as_ptr(), mode, dev) as i64 }
}

fn access(p: &Path, mode: i32) -> i64 {
    let c = cpath(p);
    unsafe { libc::access(c.as_ptr(), mode) as i64 }
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> i64 {
    setxattr_by(libc::setxattr, p, name, value, flags)
}

/// Like `setxattr` on the symlink itself.
fn lsetxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> i64 {
    setxattr_by(libc::lsetxattr, p, name, value, flags)
}

type SetxattrFn = unsafe extern "C" fn(
    *const libc::c_char,
    *const libc::c_char,
    *const libc::c_void,
    libc::size_t,
    libc::c_int,
) -> libc::c_int;

fn setxattr_by(call: SetxattrFn, p: &Path, name: &str, value: &[u8], flags: i32) -> i64 {
    let (c, n) = (cpath(p), cstr(name));
    unsafe {
        call(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        ) as i64
    }
}

fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (c, n) = (cpath(p), cstr(name));
    let mut buf = vec![0u8; 65536];
    let rc = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(errno());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

fn removexattr(p: &Path, name: &str) -> i64 {
    let (c, n) = (cpath(p), cstr(name));
    unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) as i64 }
}

/// setxattr(2) on prepared C strings: no allocation, so it may run in an `as_user` child.
fn raw_setxattr(path: &CStr, name: &CStr, value: &[u8]) -> i64 {
    let (p, n, v) = (path.as_ptr(), name.as_ptr(), value.as_ptr().cast());
    unsafe { libc::setxattr(p, n, v, value.len(), 0) as i64 }
}

/// getxattr(2) of up to 64 bytes on prepared C strings (see `raw_setxattr`).
fn raw_getxattr(path: &CStr, name: &CStr) -> i64 {
    let mut b = [0u8; 64];
    unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), b.as_mut_ptr().cast(), b.len()) as i64 }
}

fn listxattr(p: &Path) -> Result<BTreeSet<String>, i32> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    let rc = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(errno());
    }
    buf.truncate(rc as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

fn fallocate(fd: i32, mode: i32, off: i64, len: i64) -> i64 {
    unsafe { libc::fallocate(fd, mode, off, len) as i64 }
}

fn pwrite_all(fd: i32, data: &[u8], off: u64) {
    let mut done = 0;
    while done < data.len() {
        let rc = unsafe {
            libc::pwrite(
                fd,
                data[done..].as_ptr().cast(),
                data.len() - done,
                (off + done as u64) as i64,
            )
        };
        assert!(
            rc > 0,
            "pwrite at {}: {}",
            off + done as u64,
            errno_name(errno())
        );
        done += rc as usize;
    }
}

fn pread_exact(fd: i32, len: usize, off: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let rc = unsafe {
            libc::pread(
                fd,
                buf[done..].as_mut_ptr().cast(),
                len - done,
                (off + done as u64) as i64,
            )
        };
        assert!(
            rc >= 0,
            "pread at {}: {}",
            off + done as u64,
            errno_name(errno())
        );
        if rc == 0 {
            break;
        }
        done += rc as usize;
    }
    buf.truncate(done);
    buf
}

/// Creates (or empties) `p` and opens it for reading and writing.
fn create_rw(p: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
}

fn fstat(fd: i32) -> libc::stat {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::fstat(fd, &mut st) },
        0,
        "fstat: {}",
        errno_name(errno())
    );
    st
}

/// A world-writable (and not sticky) directory for ordinary-user tests.
fn public_dir(v: &Volume, name: &str) -> std::path::PathBuf {
    let d = v.path(name);
    assert_ok("mkdir public", mkdir(&d, 0o777));
    assert_ok("chmod public", chmod(&d, 0o777));
    d
}

fn perm(st: &libc::stat) -> u32 {
    st.st_mode & 0o7777
}

fn ftype(st: &libc::stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

// ---------------------------------------------------------------------------------------------

#[test]
fn lookup_and_getattr_report_types_sizes_and_times() {
    let v = Volume::mounted();
    let before = now_secs();
    write_file(v.path("f"), b"hello");
    assert_ok("mkdir", mkdir(&v.path("d"), 0o755));
    assert_ok("symlink", symlink("f", &v.path("l")));
    let after = now_secs();

    let root = st(v.mnt());
    let f = st(v.path("f"));
    let d = st(v.path("d"));
    let l = st(v.path("l"));
    assert_eq!(ftype(&root), libc::S_IFDIR);
    assert_eq!(ftype(&f), libc::S_IFREG);
    assert_eq!(ftype(&d), libc::S_IFDIR);
    assert_eq!(ftype(&l), libc::S_IFLNK);
    assert_eq!(f.st_size, 5);
    assert_eq!(l.st_size, 1, "a symlink's size is its target's length");
    assert_eq!(f.st_nlink, 1);
    assert_eq!(d.st_nlink, 2, "an empty directory has 2 links");
    assert!(f.st_blksize > 0);
    let inos: BTreeSet<u64> = [root.st_ino, f.st_ino, d.st_ino, l.st_ino].into();
    assert_eq!(inos.len(), 4, "distinct inode numbers");
    for s in [&f, &d, &l] {
        assert_eq!(s.st_dev, root.st_dev, "one device for the whole mount");
        for t in [s.st_atime, s.st_mtime, s.st_ctime] {
            assert!(
                t >= before - 2 && t <= after + 2,
                "timestamp {t} not in [{before}, {after}]"
            );
        }
    }
    // stat follows the symlink, lstat does not.
    assert_eq!(stat(v.path("l")).unwrap().st_ino, f.st_ino);
    // Lookup is stable.
    assert_eq!(st(v.path("f")).st_ino, f.st_ino);

    assert_eq!(lstat(v.path("missing")).unwrap_err(), libc::ENOENT);
    assert_eq!(lstat(v.path("d/missing")).unwrap_err(), libc::ENOENT);
    assert_eq!(lstat(v.path("f/x")).unwrap_err(), libc::ENOTDIR);
    assert_eq!(stat(v.path("missing/x")).unwrap_err(), libc::ENOENT);

    // Creating an entry updates the parent's mtime and ctime.
    let d0 = st(v.path("d"));
    std::thread::sleep(Duration::from_millis(20));
    write_file(v.path("d/new"), b"");
    let d1 = st(v.path("d"));
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    assert!(
        ns(d1.st_mtime, d1.st_mtime_nsec) > ns(d0.st_mtime, d0.st_mtime_nsec),
        "parent mtime must advance on create"
    );
    // Writing updates mtime.
    let f0 = st(v.path("f"));
    std::thread::sleep(Duration::from_millis(20));
    write_file(v.path("f"), b"world!");
    let f1 = st(v.path("f"));
    assert!(ns(f1.st_mtime, f1.st_mtime_nsec) > ns(f0.st_mtime, f0.st_mtime_nsec));
    assert_eq!(f1.st_size, 6);
}

#[test]
fn chmod_and_chown_as_root_and_as_user() {
    let v = Volume::mounted();
    let f = v.path("f");
    write_file(&f, b"x");
    for mode in [0o000, 0o644, 0o755, 0o4755, 0o2755, 0o1777, 0o7777, 0o600] {
        assert_ok("chmod", chmod(&f, mode));
        assert_eq!(perm(&st(&f)), mode, "mode after chmod {mode:o}");
    }
    let c0 = st(&f);
    std::thread::sleep(Duration::from_millis(20));
    assert_ok("chmod", chmod(&f, 0o640));
    let c1 = st(&f);
    assert!(
        (c1.st_ctime, c1.st_ctime_nsec) > (c0.st_ctime, c0.st_ctime_nsec),
        "chmod updates ctime"
    );

    assert_ok("chown", chown(&f, 1000, 1001));
    let s = st(&f);
    assert_eq!((s.st_uid, s.st_gid), (1000, 1001));
    assert_errno(
        "chmod missing",
        chmod(&v.path("missing"), 0o644),
        libc::ENOENT,
    );

    // chown clears set-user-ID on a regular file.
    assert_ok("chmod", chmod(&f, 0o4755));
    assert_ok("chown", chown(&f, 1001, 1001));
    assert_eq!(perm(&st(&f)), 0o755, "chown clears S_ISUID");

    // An ordinary user: chmod of a file it does not own, chown to someone else.
    let mine = v.path("mine");
    write_file(&mine, b"");
    assert_ok("chown", chown(&mine, 1000, 1000));
    let (cf, cm) = (cpath(&f), cpath(&mine));
    let nobody = u32::MAX;
    assert_errnos_as_user_a(&[
        (
            "chmod of another user's file",
            &|| unsafe { libc::chmod(cf.as_ptr(), 0o777) } as i64,
            libc::EPERM,
        ),
        (
            "chmod of own file",
            &|| unsafe { libc::chmod(cm.as_ptr(), 0o600) } as i64,
            0,
        ),
        (
            "giving a file away",
            &|| unsafe { libc::chown(cm.as_ptr(), 1001, nobody) } as i64,
            libc::EPERM,
        ),
        (
            "chgrp to a group the user is not in",
            &|| unsafe { libc::chown(cm.as_ptr(), nobody, 1001) } as i64,
            libc::EPERM,
        ),
    ]);
    assert_eq!(perm(&st(&mine)), 0o600);
    let r = as_user(1000, 1000, &[1000, 1001], || {
        err_of(unsafe { libc::chown(cm.as_ptr(), u32::MAX, 1001) } as i64)
    });
    assert_errno_is("chgrp to a supplementary group", r, 0);
    assert_eq!(st(&mine).st_gid, 1001);
    // A non-member setting S_ISGID on its own file: the bit is silently cleared.
    assert_ok("chown", chown(&mine, 1000, 1001));
    let r = as_user_a(|| err_of(unsafe { libc::chmod(cm.as_ptr(), 0o2755) } as i64));
    assert_errno_is("user chmod g+s of own file (non-member)", r, 0);
    assert_eq!(perm(&st(&mine)), 0o755, "S_ISGID dropped for a non-member");
}

#[test]
fn truncate_up_and_down_zero_fills() {
    let v = Volume::mounted();
    let f = v.path("f");
    let data = pattern(1, 100_000);
    write_file(&f, &data);
    assert_ok("truncate down", truncate(&f, 1000));
    assert_eq!(st(&f).st_size, 1000);
    assert_eq!(read_file(&f), &data[..1000]);
    // Growing again must not resurrect the old bytes.
    assert_ok("truncate up", truncate(&f, 300_000));
    let back = read_file(&f);
    assert_eq!(back.len(), 300_000);
    assert_eq!(&back[..1000], &data[..1000]);
    assert!(
        back[1000..].iter().all(|b| *b == 0),
        "extended region reads as zeros"
    );
    // ftruncate through an open descriptor, to 0 and to an unaligned size.
    let fd = open_ok(&f, libc::O_RDWR, 0);
    assert_ok("ftruncate 0", unsafe { libc::ftruncate(fd, 0) } as i64);
    assert_eq!(fstat(fd).st_size, 0);
    pwrite_all(fd, b"abc", 0);
    assert_ok("ftruncate", unsafe { libc::ftruncate(fd, 4097) } as i64);
    assert_eq!(fstat(fd).st_size, 4097);
    let back = pread_exact(fd, 5000, 0);
    assert_eq!(back.len(), 4097);
    assert_eq!(&back[..3], b"abc");
    assert!(back[3..].iter().all(|b| *b == 0));
    close(fd);
    // Truncate inside a block then write past the end: the gap reads as zeros.
    write_file(&f, &[0xaa; 8192]);
    assert_ok("truncate", truncate(&f, 100));
    let fd = open_ok(&f, libc::O_RDWR, 0);
    pwrite_all(fd, b"Z", 8000);
    close(fd);
    let back = read_file(&f);
    assert_eq!(back.len(), 8001);
    assert!(back[..100].iter().all(|b| *b == 0xaa));
    assert!(
        back[100..8000].iter().all(|b| *b == 0),
        "old bytes after a truncate leaked"
    );
    assert_eq!(back[8000], b'Z');

    assert_ok("mkdir", mkdir(&v.path("d"), 0o755));
    assert_errno("truncate dir", truncate(&v.path("d"), 0), libc::EISDIR);
    assert_errno(
        "truncate missing",
        truncate(&v.path("nope"), 0),
        libc::ENOENT,
    );
    assert_errno("truncate negative", truncate(&f, -1), libc::EINVAL);
    // An ordinary user without write permission.
    assert_ok("chmod", chmod(&f, 0o644));
    let cf = cpath(&f);
    let r = as_user_a(|| err_of(unsafe { libc::truncate(cf.as_ptr(), 0) } as i64));
    assert_errno_is(
        "truncate by a user without write permission",
        r,
        libc::EACCES,
    );
    assert_eq!(st(&f).st_size, 8001);
}

#[test]
fn utimensat_keeps_nanoseconds() {
    let v = Volume::mounted();
    let f = v.path("f");
    write_file(&f, b"x");
    let c = cpath(&f);
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 987_654_321,
        },
    ];
    assert_ok(
        "utimensat",
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } as i64,
    );
    let s = st(&f);
    assert_eq!((s.st_atime, s.st_atime_nsec), (1_000_000_000, 123_456_789));
    assert_eq!((s.st_mtime, s.st_mtime_nsec), (1_500_000_000, 987_654_321));

    // UTIME_OMIT leaves one, UTIME_NOW sets the other to the present.
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    assert_ok(
        "utimensat",
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } as i64,
    );
    let s = st(&f);
    assert!((s.st_atime - now_secs()).abs() <= 2, "UTIME_NOW atime");
    assert_eq!(
        (s.st_mtime, s.st_mtime_nsec),
        (1_500_000_000, 987_654_321),
        "UTIME_OMIT"
    );
    // Timestamps before 1970 and far in the future.
    let times = [
        libc::timespec {
            tv_sec: -1,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 4_000_000_000,
            tv_nsec: 999_999_999,
        },
    ];
    assert_ok(
        "utimensat",
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) } as i64,
    );
    let s = st(&f);
    assert_eq!((s.st_atime, s.st_atime_nsec), (-1, 5));
    assert_eq!((s.st_mtime, s.st_mtime_nsec), (4_000_000_000, 999_999_999));
    // On a symlink itself.
    assert_ok("symlink", symlink("f", &v.path("l")));
    let cl = cpath(v.path("l"));
    let times = [
        libc::timespec {
            tv_sec: 1234,
            tv_nsec: 1,
        },
        libc::timespec {
            tv_sec: 5678,
            tv_nsec: 2,
        },
    ];
    assert_ok("utimensat nofollow", unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cl.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } as i64);
    let s = st(v.path("l"));
    assert_eq!((s.st_mtime, s.st_mtime_nsec), (5678, 2));
    assert_eq!(st(&f).st_mtime, 4_000_000_000, "the target is untouched");

    // An ordinary user may not set explicit times on a file it does not own, nor touch a file
    // it cannot write.
    assert_ok("chmod", chmod(&f, 0o666));
    let r = as_user_a(|| {
        let t = [
            libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            },
        ];
        err_of(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) } as i64)
    });
    assert_errno_is("explicit times by a non-owner", r, libc::EPERM);
    let r = as_user_a(|| {
        err_of(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) } as i64)
    });
    assert_errno_is("touch with write permission", r, 0);
    assert_ok("chmod", chmod(&f, 0o644));
    let r = as_user_a(|| {
        err_of(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) } as i64)
    });
    assert_errno_is("touch without write permission", r, libc::EACCES);
}

#[test]
fn create_and_open_flags_and_errors() {
    let v = Volume::mounted();
    let f = v.path("f");
    let fd = open_ok(&f, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o640);
    assert_eq!(perm(&fstat(fd)), 0o640 & !0o022 & 0o640);
    pwrite_all(fd, b"0123456789", 0);
    close(fd);
    assert_ok("mkdir", mkdir(&v.path("d"), 0o755));
    assert_ok("symlink", symlink("f", &v.path("l")));
    let (cr, wr, rd) = (libc::O_CREAT, libc::O_WRONLY, libc::O_RDONLY);
    let op = |rel: &str, flags: i32| open(&v.path(rel), flags, 0o644) as i64;
    assert_errnos(&[
        (
            "O_EXCL on existing",
            &|| op("f", cr | libc::O_EXCL | wr),
            libc::EEXIST,
        ),
        ("open missing", &|| op("missing", rd), libc::ENOENT),
        (
            "create in missing dir",
            &|| op("nodir/x", cr | wr),
            libc::ENOENT,
        ),
        ("create under a file", &|| op("f/x", cr | wr), libc::ENOTDIR),
        ("open dir for writing", &|| op("d", wr), libc::EISDIR),
        (
            "O_DIRECTORY on a file",
            &|| op("f", rd | libc::O_DIRECTORY),
            libc::ENOTDIR,
        ),
        ("O_CREAT on a directory", &|| op("d", cr | wr), libc::EISDIR),
        (
            "O_NOFOLLOW on a symlink",
            &|| op("l", rd | libc::O_NOFOLLOW),
            libc::ELOOP,
        ),
    ]);
    // O_APPEND always writes at the end.
    let fd = open_ok(&f, libc::O_WRONLY | libc::O_APPEND, 0);
    let n = unsafe { libc::write(fd, b"AB".as_ptr().cast(), 2) };
    assert_eq!(n, 2);
    close(fd);
    assert_eq!(read_file(&f), b"0123456789AB");
    // O_TRUNC empties.
    let fd = open_ok(&f, libc::O_WRONLY | libc::O_TRUNC, 0);
    assert_eq!(fstat(fd).st_size, 0);
    close(fd);
    assert_eq!(st(&f).st_size, 0);
    // O_CREAT without O_EXCL opens the existing file and keeps its mode.
    assert_ok("chmod", chmod(&f, 0o600));
    let fd = open_ok(&f, libc::O_CREAT | libc::O_WRONLY, 0o777);
    close(fd);
    assert_eq!(perm(&st(&f)), 0o600);
    // Creating through a dangling symlink creates the target.
    assert_ok("symlink", symlink("target", &v.path("dangling")));
    let fd = open_ok(&v.path("dangling"), libc::O_CREAT | libc::O_WRONLY, 0o644);
    close(fd);
    assert_eq!(ftype(&st(v.path("target"))), libc::S_IFREG);
}

#[test]
fn mknod_fifo_socket_and_device_nodes() {
    let v = Volume::mounted();
    assert_ok("mkfifo", mknod(&v.path("fifo"), libc::S_IFIFO | 0o644, 0));
    assert_ok(
        "mknod sock",
        mknod(&v.path("sock"), libc::S_IFSOCK | 0o600, 0),
    );
    let chr = libc::makedev(1, 3);
    let blk = libc::makedev(7, 200);
    assert_ok(
        "mknod chr",
        mknod(&v.path("null"), libc::S_IFCHR | 0o666, chr),
    );
    assert_ok(
        "mknod blk",
        mknod(&v.path("loop"), libc::S_IFBLK | 0o660, blk),
    );
    assert_ok("mknod reg", mknod(&v.path("reg"), libc::S_IFREG | 0o600, 0));
    let s = st(v.path("fifo"));
    assert_eq!((ftype(&s), perm(&s)), (libc::S_IFIFO, 0o644));
    assert_eq!(ftype(&st(v.path("sock"))), libc::S_IFSOCK);
    let s = st(v.path("null"));
    assert_eq!(ftype(&s), libc::S_IFCHR);
    assert_eq!(s.st_rdev, chr, "char device number");
    let s = st(v.path("loop"));
    assert_eq!(ftype(&s), libc::S_IFBLK);
    assert_eq!(s.st_rdev, blk, "block device number");
    let s = st(v.path("reg"));
    assert_eq!((ftype(&s), s.st_size), (libc::S_IFREG, 0));
    assert_errno(
        "mknod existing",
        mknod(&v.path("fifo"), libc::S_IFIFO | 0o644, 0),
        libc::EEXIST,
    );

    // A fifo in the mount works as a pipe between two opens.
    let fifo = v.path("fifo");
    let reader = std::thread::spawn(move || fs::read(fifo).unwrap());
    fs::write(v.path("fifo"), b"through the fifo").unwrap();
    assert_eq!(reader.join().unwrap(), b"through the fifo");

    // bind(2) creates a socket node in the mount.
    let sock_path = v.path("bound.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).expect("bind in mount");
    assert_eq!(ftype(&st(&sock_path)), libc::S_IFSOCK);
    drop(listener);

    // An ordinary user may make a fifo but not a device node.
    let d = public_dir(&v, "pub");
    let (cf, cd) = (cpath(d.join("ufifo")), cpath(d.join("udev")));
    let r =
        as_user_a(|| err_of(unsafe { libc::mknod(cf.as_ptr(), libc::S_IFIFO | 0o644, 0) } as i64));
    assert_errno_is("fifo by a user", r, 0);
    let s = st(d.join("ufifo"));
    assert_eq!((s.st_uid, s.st_gid), USER_A);
    let r = as_user_a(|| {
        err_of(unsafe { libc::mknod(cd.as_ptr(), libc::S_IFCHR | 0o644, chr) } as i64)
    });
    assert_errno_is("device node by a user", r, libc::EPERM);
}

#[test]
fn mkdir_and_rmdir_with_errors() {
    let v = Volume::mounted();
    let d = v.path("d");
    assert_ok("mkdir", mkdir(&d, 0o750));
    let s = st(&d);
    assert_eq!((ftype(&s), perm(&s)), (libc::S_IFDIR, 0o750 & !0o022));
    write_file(v.path("f"), b"");
    let root_links = st(v.mnt()).st_nlink;
    assert_ok("mkdir sub", mkdir(&d.join("sub"), 0o755));
    assert_eq!(
        st(&d).st_nlink,
        3,
        "a subdirectory adds a link to its parent"
    );
    write_file(d.join("sub/file"), b"");
    let p = |rel: &str| v.path(rel);
    assert_errnos(&[
        ("mkdir existing", &|| mkdir(&d, 0o755), libc::EEXIST),
        ("mkdir over file", &|| mkdir(&p("f"), 0o755), libc::EEXIST),
        (
            "mkdir under missing",
            &|| mkdir(&p("x/y"), 0o755),
            libc::ENOENT,
        ),
        (
            "mkdir under file",
            &|| mkdir(&p("f/y"), 0o755),
            libc::ENOTDIR,
        ),
        ("rmdir non-empty", &|| rmdir(&d), libc::ENOTEMPTY),
        (
            "rmdir non-empty sub",
            &|| rmdir(&p("d/sub")),
            libc::ENOTEMPTY,
        ),
        ("rmdir file", &|| rmdir(&p("d/sub/file")), libc::ENOTDIR),
        ("rmdir missing", &|| rmdir(&p("missing")), libc::ENOENT),
        ("rmdir dot", &|| rmdir(&p("d/.")), libc::EINVAL),
    ]);
    assert_ok("unlink", unlink(&d.join("sub/file")));
    assert_ok("rmdir sub", rmdir(&d.join("sub")));
    assert_eq!(st(&d).st_nlink, 2);
    assert_ok("rmdir", rmdir(&d));
    assert_eq!(lstat(&d).unwrap_err(), libc::ENOENT);
    assert_eq!(st(v.mnt()).st_nlink, root_links - 1);
    // A deep tree.
    let mut p = v.path("deep");
    for i in 0..40 {
        assert_ok("mkdir deep", mkdir(&p, 0o755));
        p = p.join(format!("level{i}"));
    }
    write_file(&p, b"bottom");
    assert_eq!(read_file(&p), b"bottom");
}

#[test]
fn unlink_with_errors_and_open_file_survives() {
    let v = Volume::mounted();
    let f = v.path("f");
    write_file(&f, b"still here");
    assert_ok("mkdir", mkdir(&v.path("d"), 0o755));
    assert_errnos(&[
        ("unlink dir", &|| unlink(&v.path("d")), libc::EISDIR),
        (
            "unlink missing",
            &|| unlink(&v.path("missing")),
            libc::ENOENT,
        ),
        (
            "unlink under file",
            &|| unlink(&v.path("f/x")),
            libc::ENOTDIR,
        ),
    ]);
    // An unlinked file stays usable through an open descriptor.
    let fd = open_ok(&f, libc::O_RDWR, 0);
    assert_ok("unlink", unlink(&f));
    assert_eq!(lstat(&f).unwrap_err(), libc::ENOENT);
    assert_eq!(fstat(fd).st_nlink, 0, "an unlinked open file has no links");
    assert_eq!(pread_exact(fd, 100, 0), b"still here");
    pwrite_all(fd, b"STILL", 0);
    assert_eq!(pread_exact(fd, 100, 0), b"STILL here");
    // The name can be reused meanwhile.
    write_file(&f, b"new file");
    assert_eq!(pread_exact(fd, 100, 0), b"STILL here");
    close(fd);
    assert_eq!(read_file(&f), b"new file");
    // Unlinking a symlink removes the link, not the target.
    assert_ok("symlink", symlink("f", &v.path("l")));
    assert_ok("unlink symlink", unlink(&v.path("l")));
    assert_eq!(read_file(&f), b"new file");
}

#[test]
fn rename_replaces_and_reports_errors() {
    let v = Volume::mounted();
    let (a, b) = (v.path("a"), v.path("b"));
    write_file(&a, b"A");
    write_file(&b, b"B");
    let ino_a = st(&a).st_ino;
    assert_ok("rename over file", rename(&a, &b));
    assert_eq!(lstat(&a).unwrap_err(), libc::ENOENT);
    assert_eq!(read_file(&b), b"A");
    assert_eq!(st(&b).st_ino, ino_a, "rename keeps the inode");
    // A replaced file that is still linked elsewhere loses one link.
    write_file(&a, b"second");
    assert_ok("link", link(&b, &v.path("b2")));
    assert_eq!(st(&b).st_nlink, 2);
    assert_ok("rename over linked", rename(&a, &b));
    assert_eq!(st(v.path("b2")).st_nlink, 1);
    assert_eq!(read_file(v.path("b2")), b"A");
    // Renaming onto another name of the same inode does nothing.
    assert_ok("link", link(&b, &v.path("b3")));
    assert_ok("rename same inode", rename(&b, &v.path("b3")));
    assert_eq!(read_file(&b), b"second", "both names remain");
    assert_eq!(st(&b).st_nlink, 2);

    // Directories.
    let (d1, d2) = (v.path("d1"), v.path("d2"));
    assert_ok("mkdir", mkdir(&d1, 0o755));
    assert_ok("mkdir", mkdir(&d2, 0o755));
    assert_ok("mkdir", mkdir(&d1.join("sub"), 0o755));
    write_file(d1.join("sub/inner"), b"inner");
    assert_eq!(st(&d1).st_nlink, 3);
    // Across directories (no EXDEV within one mount); parent link counts and ".." follow.
    assert_ok(
        "rename dir across",
        rename(&d1.join("sub"), &d2.join("moved")),
    );
    assert_eq!(st(&d1).st_nlink, 2);
    assert_eq!(st(&d2).st_nlink, 3);
    assert_eq!(
        st(d2.join("moved/..")).st_ino,
        st(&d2).st_ino,
        "'..' follows the move"
    );
    assert_eq!(read_file(d2.join("moved/inner")), b"inner");
    // A file across directories.
    assert_ok("rename file across", rename(&b, &d1.join("b")));
    assert_eq!(read_file(d1.join("b")), b"second");
    // Over an empty directory: allowed; over a non-empty one: ENOTEMPTY.
    assert_ok("mkdir", mkdir(&v.path("empty"), 0o755));
    assert_ok(
        "rename dir over empty dir",
        rename(&d2.join("moved"), &v.path("empty")),
    );
    assert_eq!(read_file(v.path("empty/inner")), b"inner");
    assert_ok("mkdir", mkdir(&v.path("e2"), 0o755));
    assert_ok("mkdir", mkdir(&v.path("e2/child"), 0o755));
    write_file(v.path("file"), b"");
    let mv = |a: &str, b: &str| rename(&v.path(a), &v.path(b));
    assert_errnos(&[
        ("over non-empty", &|| mv("e2", "empty"), libc::ENOTEMPTY),
        ("dir over file", &|| mv("e2", "file"), libc::ENOTDIR),
        ("file over dir", &|| mv("file", "e2"), libc::EISDIR),
        ("into own subtree", &|| mv("e2", "e2/child/x"), libc::EINVAL),
        ("missing source", &|| mv("nope", "x"), libc::ENOENT),
        (
            "missing target dir",
            &|| mv("file", "nodir/x"),
            libc::ENOENT,
        ),
        ("target under a file", &|| mv("e2", "file/x"), libc::ENOTDIR),
    ]);
    // Nothing was lost along the way.
    let names: BTreeSet<String> = fs::read_dir(v.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = ["b2", "b3", "d1", "d2", "empty", "e2", "file"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, want);
}

#[test]
fn rename_noreplace() {
    let v = Volume::mounted();
    let (a, b, c) = (v.path("a"), v.path("b"), v.path("c"));
    write_file(&a, b"A");
    write_file(&b, b"B");
    assert_errno(
        "NOREPLACE onto existing",
        renameat2(&a, &b, libc::RENAME_NOREPLACE),
        libc::EEXIST,
    );
    assert_eq!(read_file(&a), b"A");
    assert_eq!(read_file(&b), b"B");
    assert_ok(
        "NOREPLACE to new name",
        renameat2(&a, &c, libc::RENAME_NOREPLACE),
    );
    assert_eq!(read_file(&c), b"A");
    assert_eq!(lstat(&a).unwrap_err(), libc::ENOENT);
    assert_ok("mkdir", mkdir(&v.path("d"), 0o755));
    assert_errno(
        "NOREPLACE onto dir",
        renameat2(&c, &v.path("d"), libc::RENAME_NOREPLACE),
        libc::EEXIST,
    );
    assert_errno(
        "NOREPLACE|EXCHANGE",
        renameat2(&b, &c, libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE),
        libc::EINVAL,
    );
}

#[test]
fn rename_exchange() {
    let v = Volume::mounted();
    let (f, d) = (v.path("f"), v.path("d"));
    write_file(&f, b"file");
    assert_ok("mkdir", mkdir(&d, 0o755));
    assert_ok("mkdir", mkdir(&v.path("other"), 0o755));
    write_file(d.join("inside"), b"in");
    let (fi, di) = (st(&f).st_ino, st(&d).st_ino);
    assert_ok("exchange", renameat2(&f, &d, libc::RENAME_EXCHANGE));
    assert_eq!(ftype(&st(&f)), libc::S_IFDIR);
    assert_eq!(ftype(&st(&d)), libc::S_IFREG);
    assert_eq!((st(&f).st_ino, st(&d).st_ino), (di, fi));
    assert_eq!(read_file(&d), b"file");
    assert_eq!(read_file(f.join("inside")), b"in");
    // Across directories: the directory's ".." and both parents' link counts follow.
    let other = v.path("other");
    write_file(other.join("x"), b"x");
    let root_links = st(v.mnt()).st_nlink;
    assert_ok(
        "exchange across",
        renameat2(&f, &other.join("x"), libc::RENAME_EXCHANGE),
    );
    assert_eq!(ftype(&st(other.join("x"))), libc::S_IFDIR);
    assert_eq!(read_file(&f), b"x");
    assert_eq!(st(other.join("x/..")).st_ino, st(&other).st_ino);
    assert_eq!(st(&other).st_nlink, 3);
    assert_eq!(st(v.mnt()).st_nlink, root_links - 1);
    assert_errno(
        "exchange with missing",
        renameat2(&f, &v.path("missing"), libc::RENAME_EXCHANGE),
        libc::ENOENT,
    );
    assert_eq!(read_file(&f), b"x");
}

#[test]
fn symlink_and_readlink() {
    let v = Volume::mounted();
    let long_target = "t/".repeat(500) + "end";
    for (name, target) in [
        ("rel", "f"),
        ("abs", "/etc/hostname"),
        ("dangling", "no/such/file"),
        ("long", long_target.as_str()),
        ("dots", "../.././x"),
    ] {
        assert_ok("symlink", symlink(target, &v.path(name)));
        let got = fs::read_link(v.path(name)).unwrap();
        assert_eq!(
            got.as_os_str().as_bytes(),
            target.as_bytes(),
            "readlink {name}"
        );
        let s = st(v.path(name));
        assert_eq!(ftype(&s), libc::S_IFLNK);
        assert_eq!(s.st_size as usize, target.len());
        assert_eq!(perm(&s), 0o777);
    }
    write_file(v.path("f"), b"via link");
    assert_eq!(read_file(v.path("rel")), b"via link");
    let readlink = |rel: &str| {
        let c = cpath(v.path(rel));
        let mut buf = [0u8; 64];
        unsafe { libc::readlink(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) as i64 }
    };
    assert_errnos(&[
        (
            "symlink existing",
            &|| symlink("x", &v.path("rel")),
            libc::EEXIST,
        ),
        ("readlink of a file", &|| readlink("f"), libc::EINVAL),
        ("readlink missing", &|| readlink("missing"), libc::ENOENT),
    ]);
    // A loop.
    assert_ok("symlink", symlink("loop2", &v.path("loop1")));
    assert_ok("symlink", symlink("loop1", &v.path("loop2")));
    assert_eq!(stat(v.path("loop1")).unwrap_err(), libc::ELOOP);
    // A symlink to a directory is followed for lookups.
    assert_ok("mkdir", mkdir(&v.path("d"), 0o755));
    write_file(v.path("d/in"), b"in");
    assert_ok("symlink", symlink("d", &v.path("dl")));
    assert_eq!(read_file(v.path("dl/in")), b"in");
}

#[test]
fn hard_link_counts() {
    let v = Volume::mounted();
    let f = v.path("f");
    write_file(&f, b"shared");
    assert_ok("mkdir", mkdir(&v.path("d"), 0o755));
    assert_ok("link", link(&f, &v.path("g")));
    assert_ok("link across dirs", link(&f, &v.path("d/h")));
    for p in ["f", "g", "d/h"] {
        let s = st(v.path(p));
        assert_eq!(s.st_nlink, 3, "nlink of {p}");
        assert_eq!(s.st_ino, st(&f).st_ino);
    }
    // Data written through one name is visible through the others.
    let fd = open_ok(&v.path("g"), libc::O_WRONLY, 0);
    pwrite_all(fd, b"SH", 0);
    close(fd);
    assert_eq!(read_file(v.path("d/h")), b"SHared");
    // Metadata is shared too.
    assert_ok("chmod", chmod(&v.path("d/h"), 0o600));
    assert_eq!(perm(&st(&f)), 0o600);
    let c0 = st(&f);
    assert_ok("unlink", unlink(&f));
    assert_eq!(st(v.path("g")).st_nlink, 2);
    assert!(st(v.path("g")).st_ctime >= c0.st_ctime);
    assert_ok("unlink", unlink(&v.path("g")));
    assert_eq!(st(v.path("d/h")).st_nlink, 1);
    assert_eq!(read_file(v.path("d/h")), b"SHared");
    let ln = |a: &str, b: &str| link(&v.path(a), &v.path(b));
    assert_errnos(&[
        ("link to dir", &|| ln("d", "dl"), libc::EPERM),
        ("link onto existing", &|| ln("d/h", "d"), libc::EEXIST),
        ("link of missing", &|| ln("missing", "x"), libc::ENOENT),
        ("link into missing dir", &|| ln("d/h", "no/x"), libc::ENOENT),
    ]);
    // Hard links to a symlink (linkat without AT_SYMLINK_FOLLOW) and to a fifo.
    assert_ok("symlink", symlink("d/h", &v.path("sl")));
    assert_ok("link symlink", link(&v.path("sl"), &v.path("sl2")));
    assert_eq!(ftype(&st(v.path("sl2"))), libc::S_IFLNK);
    assert_eq!(st(v.path("sl")).st_nlink, 2);
    // Many links.
    for i in 0..100 {
        assert_ok("link", link(&v.path("d/h"), &v.path(&format!("d/l{i}"))));
    }
    assert_eq!(st(v.path("d/h")).st_nlink, 101);
    for i in 0..100 {
        assert_ok("unlink", unlink(&v.path(&format!("d/l{i}"))));
    }
    assert_eq!(st(v.path("d/h")).st_nlink, 1);
}

#[test]
fn read_write_at_offsets() {
    let v = Volume::mounted();
    let f = v.path("f");
    let file = create_rw(&f);
    let big = pattern(7, 4 * MIB + 123);
    file.write_all_at(&big, 0).unwrap();
    // Unaligned overwrites in the middle and across block edges.
    let mut model = big.clone();
    for (i, (off, len)) in [
        (1, 1),
        (4095, 2),
        (4096, 4096),
        (12345, 70_000),
        (MIB - 3, 10),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(100 + i as u64, len);
        file.write_all_at(&data, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&data);
    }
    let mut back = vec![0u8; model.len()];
    file.read_exact_at(&mut back, 0).unwrap();
    assert!(back == model, "content after overwrites differs");
    // Reading past the end returns 0 bytes, reading across it returns the rest.
    let mut buf = [0u8; 100];
    assert_eq!(file.read_at(&mut buf, model.len() as u64 + 10).unwrap(), 0);
    assert_eq!(file.read_at(&mut buf, model.len() as u64 - 7).unwrap(), 7);
    // Writing past the end leaves a zero gap.
    file.write_all_at(b"tail", model.len() as u64 + 5000)
        .unwrap();
    assert_eq!(file.metadata().unwrap().len(), model.len() as u64 + 5004);
    let mut gap = vec![1u8; 5000];
    file.read_exact_at(&mut gap, model.len() as u64).unwrap();
    assert!(gap.iter().all(|b| *b == 0));
    // A second descriptor sees the first one's writes at once.
    let other = fs::File::open(&f).unwrap();
    file.write_all_at(b"SEEN", 100).unwrap();
    let mut four = [0u8; 4];
    other.read_exact_at(&mut four, 100).unwrap();
    assert_eq!(&four, b"SEEN");
    drop(file);
    drop(other);
    // A read-only descriptor refuses writes, a write-only one reads.
    let fd = open_ok(&f, libc::O_RDONLY, 0);
    assert_errno(
        "write on O_RDONLY",
        unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) } as i64,
        libc::EBADF,
    );
    close(fd);
    let fd = open_ok(&f, libc::O_WRONLY, 0);
    let mut b = [0u8; 1];
    assert_errno(
        "read on O_WRONLY",
        unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) } as i64,
        libc::EBADF,
    );
    close(fd);
    // Sequential read through the page cache path.
    let all = read_file(&f);
    assert_eq!(&all[..100], &model[..100]);
    assert_eq!(&all[100..104], b"SEEN");
    assert_eq!(&all[all.len() - 4..], b"tail");
}

#[test]
fn mmap_shared_write_is_read_back() {
    let v = Volume::mounted();
    let f = v.path("f");
    write_file(&f, &vec![b'.'; 3 * 4096]);
    let fd = open_ok(&f, libc::O_RDWR, 0);
    let len = 3 * 4096;
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap: {}", errno_name(errno()));
    let map = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
    assert!(map.iter().all(|b| *b == b'.'));
    map[4096..4096 + 6].copy_from_slice(b"mapped");
    assert_eq!(
        unsafe { libc::msync(p, len, libc::MS_SYNC) },
        0,
        "msync: {}",
        errno_name(errno())
    );
    assert_eq!(unsafe { libc::munmap(p, len) }, 0);
    assert_ok("fsync", unsafe { libc::fsync(fd) } as i64);
    close(fd);
    let back = read_file(&f);
    assert_eq!(&back[4096..4102], b"mapped");
    assert_eq!(back.len(), len);
}

#[test]
fn fsync_fdatasync_and_fsyncdir() {
    let v = Volume::mounted();
    assert_ok("mkdir", mkdir(&v.path("d"), 0o755));
    let f = v.path("d/f");
    let fd = open_ok(&f, libc::O_CREAT | libc::O_WRONLY, 0o644);
    pwrite_all(fd, b"synced data", 0);
    assert_ok("fsync", unsafe { libc::fsync(fd) } as i64);
    pwrite_all(fd, b"SYNCED", 0);
    assert_ok("fdatasync", unsafe { libc::fdatasync(fd) } as i64);
    close(fd);
    let dfd = open_ok(&v.path("d"), libc::O_RDONLY | libc::O_DIRECTORY, 0);
    assert_ok("fsync dir", unsafe { libc::fsync(dfd) } as i64);
    close(dfd);
    let rfd = open_ok(v.mnt(), libc::O_RDONLY | libc::O_DIRECTORY, 0);
    assert_ok("fsync root", unsafe { libc::fsync(rfd) } as i64);
    close(rfd);
    assert_ok("syncfs", {
        let fd = open_ok(v.mnt(), libc::O_RDONLY, 0);
        let r = unsafe { libc::syncfs(fd) };
        close(fd);
        r as i64
    });
    assert_eq!(read_file(&f), b"SYNCED data");
}

fn getdents_names(fd: i32, buf_len: usize) -> Option<Vec<(String, u8)>> {
    let mut buf = vec![0u8; buf_len];
    let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
    assert!(n >= 0, "getdents64: {}", errno_name(errno()));
    if n == 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < n as usize {
        // struct linux_dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; }
        let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
        let dtype = buf[off + 18];
        let name_bytes = &buf[off + 19..off + reclen];
        let end = name_bytes.iter().position(|b| *b == 0).unwrap();
        out.push((
            String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
            dtype,
        ));
        off += reclen;
    }
    Some(out)
}

#[test]
fn readdir_lists_every_entry_once_with_types() {
    let v = Volume::mounted();
    let d = v.path("d");
    assert_ok("mkdir", mkdir(&d, 0o755));
    let mut want = BTreeMap::new();
    for i in 0..1500 {
        let name = format!("entry-{i:05}-{}", "x".repeat(i % 60));
        match i % 5 {
            0 => {
                assert_ok("mkdir", mkdir(&d.join(&name), 0o755));
                want.insert(name, libc::DT_DIR);
            }
            1 => {
                assert_ok("symlink", symlink("target", &d.join(&name)));
                want.insert(name, libc::DT_LNK);
            }
            2 => {
                assert_ok("mkfifo", mknod(&d.join(&name), libc::S_IFIFO | 0o644, 0));
                want.insert(name, libc::DT_FIFO);
            }
            _ => {
                write_file(d.join(&name), b"");
                want.insert(name, libc::DT_REG);
            }
        }
    }
    want.insert(".".into(), libc::DT_DIR);
    want.insert("..".into(), libc::DT_DIR);
    let fd = open_ok(&d, libc::O_RDONLY | libc::O_DIRECTORY, 0);
    let mut got = BTreeMap::new();
    while let Some(batch) = getdents_names(fd, 4096) {
        for (name, t) in batch {
            assert!(
                got.insert(name.clone(), t).is_none(),
                "{name} returned twice"
            );
        }
    }
    close(fd);
    assert_eq!(got.len(), want.len(), "number of entries");
    for (name, t) in &want {
        let g = got
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from readdir"));
        assert!(
            *g == *t || *g == libc::DT_UNKNOWN,
            "d_type of {name}: {g} expected {t}"
        );
    }
    // std's read_dir (readdir(3)) agrees.
    assert_eq!(fs::read_dir(&d).unwrap().count(), 1500);
    // Empty directory: only "." and "..".
    assert_ok("mkdir", mkdir(&v.path("empty"), 0o755));
    let fd = open_ok(&v.path("empty"), libc::O_RDONLY | libc::O_DIRECTORY, 0);
    let names: BTreeSet<String> = getdents_names(fd, 4096)
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    close(fd);
    assert_eq!(names, [".".to_string(), "..".to_string()].into());
}

#[test]
fn readdir_is_stable_while_entries_are_added_and_removed() {
    let v = Volume::mounted();
    let d = v.path("d");
    assert_ok("mkdir", mkdir(&d, 0o755));
    let n = 600;
    for i in 0..n {
        write_file(d.join(format!("orig-{i:04}")), b"");
    }
    // Every third original is removed during the scan; new names are added during it.
    let removed: BTreeSet<String> = (0..n)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("orig-{i:04}"))
        .collect();
    let stable: BTreeSet<String> = (0..n)
        .map(|i| format!("orig-{i:04}"))
        .filter(|s| !removed.contains(s))
        .collect();
    let mut to_remove: Vec<&String> = removed.iter().collect();
    let fd = open_ok(&d, libc::O_RDONLY | libc::O_DIRECTORY, 0);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut added = 0;
    let mut batches = 0;
    // Small buffers force many getdents calls, each followed by changes.
    while let Some(batch) = getdents_names(fd, 512) {
        for (name, _) in batch {
            *seen.entry(name).or_default() += 1;
        }
        // At most 400 additions: a file system that returns new entries at the end (allowed)
        // must still let the scan finish.
        for _ in 0..8 {
            if let Some(r) = to_remove.pop() {
                assert_ok("unlink", unlink(&d.join(r)));
            }
            if added < 400 {
                write_file(d.join(format!("added-{added:04}")), b"");
                added += 1;
            }
        }
        batches += 1;
        assert!(
            batches < 10_000,
            "readdir does not end ({batches} getdents calls)"
        );
    }
    close(fd);
    for name in &stable {
        assert_eq!(
            seen.get(name).copied().unwrap_or(0),
            1,
            "{name} existed throughout"
        );
    }
    for (name, count) in &seen {
        assert_eq!(*count, 1, "{name} returned {count} times");
    }
    // Afterwards the directory holds exactly stable + added (+ any not yet removed).
    let now: BTreeSet<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut want = stable.clone();
    want.extend((0..added).map(|i| format!("added-{i:04}")));
    want.extend(to_remove.iter().map(|s| s.to_string()));
    assert_eq!(now, want);
}

#[test]
fn readdir_seekdir_telldir_resume_at_the_same_entry() {
    let v = Volume::mounted();
    let d = v.path("d");
    assert_ok("mkdir", mkdir(&d, 0o755));
    for i in 0..300 {
        write_file(d.join(format!("n{i}")), b"");
    }
    let c = cpath(&d);
    unsafe {
        let dir = libc::opendir(c.as_ptr());
        assert!(!dir.is_null());
        let mut first = Vec::new();
        let mut marks = Vec::new();
        loop {
            let pos = libc::telldir(dir);
            let e = libc::readdir(dir);
            if e.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                .to_string_lossy()
                .into_owned();
            marks.push(pos);
            first.push(name);
        }
        assert_eq!(first.len(), 302);
        for &k in &[0usize, 1, 57, 150, 301] {
            libc::seekdir(dir, marks[k]);
            let mut again = Vec::new();
            loop {
                let e = libc::readdir(dir);
                if e.is_null() {
                    break;
                }
                again.push(
                    std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            assert_eq!(again, first[k..].to_vec(), "resuming at entry {k}");
        }
        libc::rewinddir(dir);
        let e = libc::readdir(dir);
        assert!(!e.is_null());
        assert_eq!(
            std::ffi::CStr::from_ptr((*e).d_name.as_ptr()).to_string_lossy(),
            first[0].as_str()
        );
        libc::closedir(dir);
    }
}

fn statvfs(p: &Path) -> libc::statvfs {
    let c = cpath(p);
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::statvfs(c.as_ptr(), &mut s) },
        0,
        "statvfs: {}",
        errno_name(errno())
    );
    s
}

#[test]
fn statfs_reports_real_consistent_figures() {
    let v = Volume::mounted();
    let s0 = statvfs(v.mnt());
    assert!(s0.f_bsize > 0 && s0.f_frsize > 0, "block size");
    assert!(s0.f_blocks > 0, "total blocks");
    assert!(s0.f_bfree > 0 && s0.f_bfree <= s0.f_blocks, "free blocks");
    assert!(s0.f_bavail <= s0.f_bfree, "available <= free");
    assert!(s0.f_files > 0, "total inodes");
    assert!(s0.f_ffree > 0 && s0.f_ffree <= s0.f_files, "free inodes");
    assert_eq!(s0.f_namemax, 255);
    if !v.is_native() {
        // The volume was made with --size 1G: the figures must be of that order.
        let total = s0.f_blocks * s0.f_frsize;
        assert!(
            total > 512 << 20 && total <= 1 << 30,
            "total bytes {total} for a 1 GiB volume"
        );
    }
    // Writing 16 MiB (and syncing) consumes about that much; deleting it gives it back.
    let f = v.path("big");
    let file = fs::File::create(&f).unwrap();
    file.write_all_at(&pattern(3, 16 * MIB), 0).unwrap();
    file.sync_all().unwrap();
    drop(file);
    for i in 0..50 {
        write_file(v.path(&format!("small{i}")), b"x");
    }
    let s1 = statvfs(v.mnt());
    let used = (s0.f_bfree - s1.f_bfree) * s1.f_frsize;
    assert!(
        used >= 15 * MIB as u64,
        "16 MiB written but free space fell by only {used}"
    );
    assert!(
        used <= 64 * MIB as u64,
        "16 MiB written but free space fell by {used}"
    );
    // The host file system in native mode is shared with the tests running in parallel.
    if !v.is_native() {
        assert!(
            s1.f_ffree < s0.f_ffree,
            "free inodes must fall after 51 creates"
        );
    }
    assert_eq!(s1.f_blocks, s0.f_blocks, "total does not change");
    fs::remove_file(&f).unwrap();
    let file = fs::File::open(v.mnt()).unwrap();
    file.sync_all().unwrap();
    drop(file);
    let s2 = statvfs(v.mnt());
    let freed = (s2.f_bfree - s1.f_bfree) * s2.f_frsize;
    assert!(
        freed >= 15 * MIB as u64,
        "deleting 16 MiB freed only {freed}"
    );
}

#[test]
fn xattr_user_namespace_create_replace_list_remove() {
    let v = Volume::mounted();
    let f = v.path("f");
    write_file(&f, b"");
    assert_ok("mkdir", mkdir(&v.path("d"), 0o755));
    for p in [f.clone(), v.path("d")] {
        assert_eq!(
            listxattr(&p)
                .unwrap()
                .iter()
                .filter(|n| n.starts_with("user."))
                .count(),
            0
        );
        assert_ok("set", setxattr(&p, "user.a", b"v1", 0));
        assert_eq!(getxattr(&p, "user.a").unwrap(), b"v1");
        assert_errno(
            "XATTR_CREATE existing",
            setxattr(&p, "user.a", b"v2", libc::XATTR_CREATE),
            libc::EEXIST,
        );
        assert_eq!(getxattr(&p, "user.a").unwrap(), b"v1");
        assert_ok(
            "XATTR_REPLACE",
            setxattr(&p, "user.a", b"v2-longer", libc::XATTR_REPLACE),
        );
        assert_eq!(getxattr(&p, "user.a").unwrap(), b"v2-longer");
        assert_errno(
            "XATTR_REPLACE missing",
            setxattr(&p, "user.b", b"x", libc::XATTR_REPLACE),
            libc::ENODATA,
        );
        assert_ok(
            "XATTR_CREATE new",
            setxattr(&p, "user.b", b"", libc::XATTR_CREATE),
        );
        assert_eq!(getxattr(&p, "user.b").unwrap(), b"", "empty value");
        let binary: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        assert_ok("set binary", setxattr(&p, "user.bin", &binary, 0));
        assert_eq!(getxattr(&p, "user.bin").unwrap(), binary);
        let names = listxattr(&p).unwrap();
        for n in ["user.a", "user.b", "user.bin"] {
            assert!(names.contains(n), "{n} in list {names:?}");
        }
        // Size queries and a too-small buffer.
        let (c, n) = (cpath(&p), cstr("user.a"));
        let size = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(size, 9, "getxattr size query");
        let mut small = [0u8; 2];
        assert_errno(
            "getxattr small buffer",
            unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), small.as_mut_ptr().cast(), 2) } as i64,
            libc::ERANGE,
        );
        let lsize = unsafe { libc::listxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        assert!(
            lsize >= ("user.a\0user.b\0user.bin\0".len()) as isize,
            "listxattr size query"
        );
        assert_errno(
            "listxattr small buffer",
            unsafe { libc::listxattr(c.as_ptr(), small.as_mut_ptr().cast(), 2) } as i64,
            libc::ERANGE,
        );
        assert_ok("remove", removexattr(&p, "user.a"));
        assert_eq!(getxattr(&p, "user.a").unwrap_err(), libc::ENODATA);
        assert_errno("remove missing", removexattr(&p, "user.a"), libc::ENODATA);
        assert!(!listxattr(&p).unwrap().contains("user.a"));
    }
    assert_eq!(
        getxattr(&v.path("missing"), "user.a").unwrap_err(),
        libc::ENOENT
    );
    // Names of 255 bytes after the prefix are allowed, longer ones are not.
    let long = format!("user.{}", "n".repeat(250));
    assert_ok("255-byte name", setxattr(&f, &long, b"v", 0));
    assert_eq!(getxattr(&f, &long).unwrap(), b"v");
    let too_long = format!("user.{}", "n".repeat(251));
    assert_errno(
        "256-byte name",
        setxattr(&f, &too_long, b"v", 0),
        libc::ERANGE,
    );
    // Symlinks and fifos take no user. attributes.
    assert_ok("symlink", symlink("f", &v.path("l")));
    assert_errno(
        "user xattr on symlink",
        lsetxattr(&v.path("l"), "user.a", b"v", 0),
        libc::EPERM,
    );
    // Through the symlink (setxattr follows it) the target gets it.
    assert_ok(
        "set via symlink",
        setxattr(&v.path("l"), "user.via", b"l", 0),
    );
    assert_eq!(getxattr(&f, "user.via").unwrap(), b"l");
    // An ordinary user needs write permission to set, read permission to get.
    assert_ok("chmod", chmod(&f, 0o644));
    let cf = cpath(&f);
    let (user_u, user_via) = (cstr("user.u"), cstr("user.via"));
    assert_errnos_as_user_a(&[
        (
            "user.* set without write permission",
            &|| raw_setxattr(&cf, &user_u, b"u"),
            libc::EACCES,
        ),
        (
            "user.* get with read permission",
            &|| raw_getxattr(&cf, &user_via),
            0,
        ),
    ]);
    // Attributes persist across a clean remount.
    let mut v = v;
    v.cycle();
    assert_eq!(getxattr(&f, "user.via").unwrap(), b"l");
    assert_eq!(getxattr(&f, &long).unwrap(), b"v");
}

#[test]
fn xattr_trusted_namespace_root_only() {
    let v = Volume::mounted();
    let f = v.path("f");
    write_file(&f, b"");
    assert_ok("chmod", chmod(&f, 0o666));
    assert_ok("set trusted", setxattr(&f, "trusted.t", b"root-only", 0));
    assert_eq!(getxattr(&f, "trusted.t").unwrap(), b"root-only");
    assert_errno(
        "trusted XATTR_CREATE",
        setxattr(&f, "trusted.t", b"x", libc::XATTR_CREATE),
        libc::EEXIST,
    );
    assert_errno(
        "trusted XATTR_REPLACE",
        setxattr(&f, "trusted.u", b"x", libc::XATTR_REPLACE),
        libc::ENODATA,
    );
    assert!(
        listxattr(&f).unwrap().contains("trusted.t"),
        "root lists trusted.*"
    );
    // Symlinks may carry trusted.* attributes.
    assert_ok("symlink", symlink("f", &v.path("l")));
    assert_ok(
        "trusted on symlink",
        lsetxattr(&v.path("l"), "trusted.s", b"s", 0),
    );
    assert_ok("set user", setxattr(&f, "user.u", b"u", 0));
    let cf = cpath(&f);
    let (trusted_t, trusted_x) = (cstr("trusted.t"), cstr("trusted.x"));
    assert_errnos_as_user_a(&[
        (
            "trusted.* invisible to a user",
            &|| raw_getxattr(&cf, &trusted_t),
            libc::ENODATA,
        ),
        (
            "trusted.* set by a user",
            &|| raw_setxattr(&cf, &trusted_x, b"x"),
            libc::EPERM,
        ),
    ]);
    // listxattr as a user hides trusted.* but shows user.*.
    let r = as_user_a(|| {
        let mut b = [0u8; 4096];
        let n = unsafe { libc::listxattr(cf.as_ptr(), b.as_mut_ptr().cast(), b.len()) };
        if n < 0 {
            return 100;
        }
        let list = &b[..n as usize];
        let has = |name: &[u8]| list.split(|c| *c == 0).any(|s| s == name);
        match (has(b"trusted.t"), has(b"user.u")) {
            (false, true) => 0,
            (true, _) => 1,
            (false, false) => 2,
        }
    });
    assert_eq!(
        r, 0,
        "user listxattr: 1 = trusted.t shown, 2 = user.u missing, 100 = failed"
    );
    assert_ok("remove trusted", removexattr(&f, "trusted.t"));
    assert_eq!(getxattr(&f, "trusted.t").unwrap_err(), libc::ENODATA);
}

#[test]
fn access_checks_for_root_and_user() {
    let v = Volume::mounted();
    let f = v.path("f");
    write_file(&f, b"");
    assert_ok("chmod", chmod(&f, 0o640));
    assert_ok("access F_OK", access(&f, libc::F_OK));
    assert_ok("root R|W", access(&f, libc::R_OK | libc::W_OK));
    assert_errno(
        "root X without any x bit",
        access(&f, libc::X_OK),
        libc::EACCES,
    );
    assert_ok("chmod", chmod(&f, 0o100));
    assert_ok("root X with owner x", access(&f, libc::X_OK));
    assert_errno(
        "missing",
        access(&v.path("missing"), libc::F_OK),
        libc::ENOENT,
    );
    assert_ok("chmod", chmod(&f, 0o644));
    let cf = cpath(&f);
    let cf = &cf;
    let acc = |m: i32| move || err_of(unsafe { libc::access(cf.as_ptr(), m) } as i64);
    assert_eq!(as_user_a(acc(libc::R_OK)), 0, "other may read 0644");
    assert_errno_is(
        "other may not write 0644",
        as_user_a(acc(libc::W_OK)),
        libc::EACCES,
    );
    assert_errno_is(
        "other may not execute 0644",
        as_user_a(acc(libc::X_OK)),
        libc::EACCES,
    );
    assert_ok("chown", chown(&f, 1000, 1000));
    assert_ok("chmod", chmod(&f, 0o604));
    assert_eq!(as_user_a(acc(libc::R_OK | libc::W_OK)), 0, "owner bits");
    assert_ok("chmod", chmod(&f, 0o064));
    assert_errno_is(
        "owner bits apply even when group/other allow",
        as_user_a(acc(libc::R_OK)),
        libc::EACCES,
    );
    // Group bits through a supplementary group.
    assert_ok("chown", chown(&f, 0, 1001));
    assert_ok("chmod", chmod(&f, 0o060));
    let cf2 = cpath(&f);
    let r = as_user(1000, 1000, &[1001], move || {
        err_of(unsafe { libc::access(cf2.as_ptr(), libc::R_OK | libc::W_OK) } as i64)
    });
    assert_eq!(r, 0, "group bits via a supplementary group");
    // Search permission on the path.
    assert_ok("mkdir", mkdir(&v.path("closed"), 0o700));
    write_file(v.path("closed/inner"), b"");
    let ci = cpath(v.path("closed/inner"));
    let r = as_user_a(move || err_of(unsafe { libc::access(ci.as_ptr(), libc::F_OK) } as i64));
    assert_errno_is("no search permission on the parent", r, libc::EACCES);
}

#[test]
fn fallocate_modes() {
    let v = Volume::mounted();
    let f = v.path("f");
    let fd = open_ok(&f, libc::O_CREAT | libc::O_RDWR, 0o644);
    // Mode 0 extends the file and reserves space.
    assert_ok("fallocate 0", fallocate(fd, 0, 0, MIB as i64));
    let s = fstat(fd);
    assert_eq!(s.st_size, MIB as i64);
    assert!(
        s.st_blocks * 512 >= MIB as i64,
        "fallocate reserves blocks: {}",
        s.st_blocks
    );
    assert!(pread_exact(fd, MIB, 0).iter().all(|b| *b == 0));
    // Mode 0 inside the file does not change the size or the data.
    pwrite_all(fd, b"keep", 1000);
    assert_ok("fallocate inside", fallocate(fd, 0, 0, 4096));
    assert_eq!(fstat(fd).st_size, MIB as i64);
    assert_eq!(pread_exact(fd, 4, 1000), b"keep");
    // KEEP_SIZE reserves beyond the end without changing the size.
    assert_ok(
        "KEEP_SIZE",
        fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, MIB as i64, 2 * MIB as i64),
    );
    let s = fstat(fd);
    assert_eq!(s.st_size, MIB as i64, "KEEP_SIZE keeps the size");
    assert!(
        s.st_blocks * 512 >= 3 * MIB as i64,
        "KEEP_SIZE reserves: {}",
        s.st_blocks
    );
    // PUNCH_HOLE|KEEP_SIZE zeroes a range and frees it.
    let data = pattern(9, MIB);
    pwrite_all(fd, &data, 0);
    unsafe { libc::fsync(fd) };
    let before = fstat(fd).st_blocks;
    assert_ok(
        "PUNCH_HOLE",
        fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            65536,
            262144,
        ),
    );
    let s = fstat(fd);
    assert_eq!(s.st_size, MIB as i64, "punching keeps the size");
    assert!(
        s.st_blocks < before,
        "punching frees blocks ({} -> {})",
        before,
        s.st_blocks
    );
    let back = pread_exact(fd, MIB, 0);
    assert_eq!(&back[..65536], &data[..65536]);
    assert!(
        back[65536..65536 + 262144].iter().all(|b| *b == 0),
        "hole reads zeros"
    );
    assert_eq!(&back[65536 + 262144..], &data[65536 + 262144..]);
    // Unaligned punch: partial blocks are zeroed, neighbours kept.
    assert_ok(
        "unaligned PUNCH_HOLE",
        fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            500_001,
            10_000,
        ),
    );
    let back = pread_exact(fd, MIB, 0);
    assert_eq!(back[500_000], data[500_000]);
    assert!(back[500_001..510_001].iter().all(|b| *b == 0));
    assert_eq!(back[510_001], data[510_001]);
    // PUNCH_HOLE without KEEP_SIZE is refused.
    assert_errno(
        "PUNCH_HOLE alone",
        fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE, 0, 4096),
        libc::EOPNOTSUPP,
    );
    assert_errno("negative length", fallocate(fd, 0, 0, -1), libc::EINVAL);
    close(fd);
    // The punched content persists.
    let mut v = v;
    v.cycle();
    let back = read_file(&f);
    assert!(back[65536..65536 + 262144].iter().all(|b| *b == 0));
    assert_eq!(&back[..65536], &data[..65536]);
}

#[test]
fn sparse_files_read_zeros_and_use_little_space() {
    let v = Volume::mounted();
    let f = v.path("sparse");
    let file = create_rw(&f);
    file.write_all_at(b"start", 0).unwrap();
    file.write_all_at(b"middle", 100 * MIB as u64).unwrap();
    file.write_all_at(b"end", 200 * MIB as u64).unwrap();
    file.sync_all().unwrap();
    let s = st(&f);
    assert_eq!(s.st_size, 200 * MIB as i64 + 3);
    assert!(
        s.st_blocks * 512 < 4 * MIB as i64,
        "a sparse file uses {} bytes",
        s.st_blocks * 512
    );
    let mut buf = vec![1u8; MIB];
    file.read_exact_at(&mut buf, 50 * MIB as u64).unwrap();
    assert!(buf.iter().all(|b| *b == 0), "a hole reads as zeros");
    let mut m = [0u8; 6];
    file.read_exact_at(&mut m, 100 * MIB as u64).unwrap();
    assert_eq!(&m, b"middle");
    // A file that is one big hole.
    let h = v.path("hole");
    assert_ok("truncate", {
        write_file(&h, b"");
        truncate(&h, 1 << 30)
    });
    let s = st(&h);
    assert_eq!(s.st_size, 1 << 30);
    assert!(s.st_blocks * 512 < MIB as i64);
    drop(file);
    let mut v = v;
    v.cycle();
    let s = st(&f);
    assert_eq!(s.st_size, 200 * MIB as i64 + 3);
    assert!(
        s.st_blocks * 512 < 4 * MIB as i64,
        "still sparse after remount"
    );
    let file = fs::File::open(&f).unwrap();
    file.read_exact_at(&mut m, 100 * MIB as u64).unwrap();
    assert_eq!(&m, b"middle");
}

#[test]
fn file_larger_than_4gib() {
    let v = Volume::mounted();
    let f = v.path("big");
    let file = create_rw(&f);
    let four_g = 1u64 << 32;
    // Straddling the 4 GiB boundary catches 32-bit offsets.
    let across = pattern(11, 8192);
    file.write_all_at(&across, four_g - 4096).unwrap();
    let tail = pattern(12, 5000);
    file.write_all_at(&tail, 5 * (1 << 30) + 7).unwrap();
    file.sync_all().unwrap();
    assert_eq!(file.metadata().unwrap().len(), 5 * (1 << 30) + 7 + 5000);
    let mut back = vec![0u8; 8192];
    file.read_exact_at(&mut back, four_g - 4096).unwrap();
    assert!(back == across, "data across 4 GiB");
    let mut back = vec![0u8; 5000];
    file.read_exact_at(&mut back, 5 * (1 << 30) + 7).unwrap();
    assert!(back == tail, "data at 5 GiB");
    // The same offset modulo 4 GiB must not have been written.
    let mut wrapped = vec![1u8; 4096];
    file.read_exact_at(&mut wrapped, 0).unwrap();
    assert!(
        wrapped.iter().all(|b| *b == 0),
        "a write at 4 GiB wrapped to offset 0"
    );
    let s = st(&f);
    assert!(
        s.st_blocks * 512 < 64 * MIB as i64,
        "sparse: {} blocks",
        s.st_blocks
    );
    // Truncate up to 6 GiB and down to 4 GiB + 1.
    file.set_len(6 << 30).unwrap();
    assert_eq!(st(&f).st_size, 6 << 30);
    file.set_len(four_g + 1).unwrap();
    assert_eq!(st(&f).st_size, (four_g + 1) as i64);
    let mut b = [9u8; 1];
    file.read_exact_at(&mut b, four_g).unwrap();
    assert_eq!(b[0], across[4096], "byte at exactly 4 GiB");
    drop(file);
    let mut v = v;
    v.cycle();
    assert_eq!(st(&f).st_size, (four_g + 1) as i64);
    let file = fs::File::open(&f).unwrap();
    let mut back = vec![0u8; 4097];
    file.read_exact_at(&mut back, four_g - 4096).unwrap();
    assert_eq!(&back[..], &across[..4097]);
}

#[test]
fn names_up_to_255_bytes() {
    let v = Volume::mounted();
    let n255 = "a".repeat(255);
    let n256 = "a".repeat(256);
    let (p255, p256) = (v.path(&n255), v.path(&n256));
    write_file(&p255, b"long name");
    assert_eq!(read_file(&p255), b"long name");
    assert!(fs::read_dir(v.mnt())
        .unwrap()
        .any(|e| e.unwrap().file_name().len() == 255));
    let too_long = libc::ENAMETOOLONG;
    assert_errnos(&[
        (
            "create 256",
            &|| open(&p256, libc::O_CREAT | libc::O_WRONLY, 0o644) as i64,
            too_long,
        ),
        ("mkdir 256", &|| mkdir(&p256, 0o755), too_long),
        ("symlink 256", &|| symlink("x", &p256), too_long),
        (
            "mknod 256",
            &|| mknod(&p256, libc::S_IFIFO | 0o644, 0),
            too_long,
        ),
        ("link 256", &|| link(&p255, &p256), too_long),
        ("rename to 256", &|| rename(&p255, &p256), too_long),
        (
            "lookup 256",
            &|| lstat(&p256).err().map_or(0, |_| -1),
            too_long,
        ),
    ]);
    assert_eq!(
        read_file(&p255),
        b"long name",
        "the 255-byte file is untouched"
    );
    let d255 = v.path(&"d".repeat(255));
    assert_ok("mkdir 255", mkdir(&d255, 0o755));
    assert_ok("rename to 255", rename(&p255, &d255.join("b".repeat(255))));
    assert_eq!(read_file(d255.join("b".repeat(255))), b"long name");
    // Multi-byte UTF-8 (255 bytes = 85 three-byte characters) and bytes that are not UTF-8.
    let wide = "\u{20ac}".repeat(85);
    assert_eq!(wide.len(), 255);
    write_file(v.path(&wide), b"euro");
    assert_eq!(read_file(v.path(&wide)), b"euro");
    let odd = std::ffi::OsStr::from_bytes(b"odd\xff\xfe name\nwith newline\t");
    write_file(v.mnt().join(odd), b"odd");
    assert!(fs::read_dir(v.mnt())
        .unwrap()
        .any(|e| e.unwrap().file_name() == odd));
    assert_eq!(read_file(v.mnt().join(odd)), b"odd");
}

#[test]
fn permissions_enforced_for_ordinary_user() {
    let v = Volume::mounted();
    // A root file 0600 (no read, no write), a root 0755 directory with a 0666 file in it (no
    // unlink or rename: that needs write permission on the directory, not on the file), and
    // a public directory to rename into.
    let secret = v.path("secret");
    write_file(&secret, b"secret");
    assert_ok("chmod", chmod(&secret, 0o600));
    let d = public_dir(&v, "pub");
    let ro = v.path("ro");
    assert_ok("mkdir", mkdir(&ro, 0o755));
    write_file(ro.join("victim"), b"");
    assert_ok("chmod", chmod(&ro.join("victim"), 0o666));
    // The child that runs as the user may only make syscalls: every path is made here.
    let in_root = cpath(v.path("user-file"));
    let mk = cpath(v.path("user-dir"));
    let cs = cpath(&secret);
    let cv = cpath(ro.join("victim"));
    let cn = cpath(d.join("stolen"));
    let (cr, wr) = (libc::O_CREAT, libc::O_WRONLY);
    assert_errnos_as_user_a(&[
        (
            "create in root-owned 0755 dir",
            &|| unsafe { libc::open(in_root.as_ptr(), cr | wr, 0o644) } as i64,
            libc::EACCES,
        ),
        (
            "mkdir in root-owned 0755 dir",
            &|| unsafe { libc::mkdir(mk.as_ptr(), 0o755) } as i64,
            libc::EACCES,
        ),
        (
            "read 0600 root file",
            &|| unsafe { libc::open(cs.as_ptr(), libc::O_RDONLY) } as i64,
            libc::EACCES,
        ),
        (
            "unlink in a 0755 root dir",
            &|| unsafe { libc::unlink(cv.as_ptr()) } as i64,
            libc::EACCES,
        ),
        (
            "rename out of a 0755 root dir",
            &|| unsafe { libc::rename(cv.as_ptr(), cn.as_ptr()) } as i64,
            libc::EACCES,
        ),
    ]);
    // 0644: read but no write.
    assert_ok("chmod", chmod(&secret, 0o644));
    let r = as_user_a(|| {
        let fd = unsafe { libc::open(cs.as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            return errno();
        }
        let mut b = [0u8; 16];
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 16) };
        unsafe { libc::close(fd) };
        if n == 6 && &b[..6] == b"secret" {
            0
        } else {
            99
        }
    });
    assert_eq!(r, 0, "read 0644 root file");
    let r = as_user_a(|| err_of(unsafe { libc::open(cs.as_ptr(), libc::O_WRONLY) } as i64));
    assert_errno_is("write 0644 root file", r, libc::EACCES);
    // Own file 0444: no write even for the owner; the owner may chmod it back.
    let own = d.join("own");
    let co = cpath(&own);
    let r = as_user_a(|| {
        let fd = unsafe { libc::open(co.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o444) };
        if fd < 0 {
            return errno();
        }
        unsafe { libc::close(fd) };
        // The creating open may write even though the mode is 0444; a new open may not.
        let fd = unsafe { libc::open(co.as_ptr(), libc::O_WRONLY) };
        if fd >= 0 {
            unsafe { libc::close(fd) };
            return 98;
        }
        if errno() != libc::EACCES {
            return 97;
        }
        err_of(unsafe { libc::chmod(co.as_ptr(), 0o644) } as i64)
    });
    assert_eq!(r, 0, "98 = opened 0444 for writing, 97 = wrong errno");
    assert_eq!(perm(&st(&own)), 0o644);
    // No search permission on a directory: EACCES below it.
    let closed = v.path("closed");
    assert_ok("mkdir", mkdir(&closed, 0o700));
    write_file(closed.join("f"), b"");
    let cc = cpath(closed.join("f"));
    let r = as_user_a(|| {
        let mut s: libc::stat = unsafe { std::mem::zeroed() };
        err_of(unsafe { libc::stat(cc.as_ptr(), &mut s) } as i64)
    });
    assert_errno_is("stat under 0700 root dir", r, libc::EACCES);
    // Read permission on a directory is needed to list it (x alone allows lookups).
    assert_ok("chmod", chmod(&closed, 0o711));
    let cd = cpath(&closed);
    let r = as_user_a(|| {
        let fd = unsafe { libc::open(cd.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        err_of(fd as i64)
    });
    assert_errno_is("list a 0711 dir", r, libc::EACCES);
    let r = as_user_a(|| {
        let mut s: libc::stat = unsafe { std::mem::zeroed() };
        err_of(unsafe { libc::stat(cc.as_ptr(), &mut s) } as i64)
    });
    assert_eq!(r, 0, "lookup through a 0711 dir");
    // Root overrides modes.
    assert_ok("chmod", chmod(&secret, 0o000));
    assert_eq!(read_file(&secret), b"secret", "root reads a 0000 file");
}

#[test]
fn owner_and_group_of_caller_on_create() {
    let v = Volume::mounted();
    let d = public_dir(&v, "pub");
    let paths: Vec<CString> = ["file", "dir", "fifo", "link", "sock"]
        .iter()
        .map(|n| cpath(d.join(n)))
        .collect();
    let r = as_user(USER_A.0, USER_A.1, &[], || unsafe {
        let fd = libc::open(paths[0].as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o666);
        if fd < 0 {
            return 10;
        }
        libc::close(fd);
        if libc::mkdir(paths[1].as_ptr(), 0o777) != 0 {
            return 11;
        }
        if libc::mknod(paths[2].as_ptr(), libc::S_IFIFO | 0o666, 0) != 0 {
            return 12;
        }
        if libc::symlink(c"file".as_ptr(), paths[3].as_ptr()) != 0 {
            return 13;
        }
        if libc::mknod(paths[4].as_ptr(), libc::S_IFSOCK | 0o777, 0) != 0 {
            return 14;
        }
        0
    });
    assert_eq!(r, 0, "creates by user A (10 + index of the failed one)");
    for (name, mode) in [
        ("file", 0o644),
        ("dir", 0o755),
        ("fifo", 0o644),
        ("sock", 0o755),
    ] {
        let s = st(d.join(name));
        assert_eq!((s.st_uid, s.st_gid), USER_A, "owner of {name}");
        assert_eq!(perm(&s), mode, "mode of {name} with umask 022");
    }
    let s = st(d.join("link"));
    assert_eq!((s.st_uid, s.st_gid), USER_A, "owner of symlink");
    // The creator's primary gid, not a supplementary one, when the dir is not setgid.
    let c = cpath(d.join("by-b"));
    let r = as_user(USER_B.0, USER_B.1, &[1000], || {
        err_of(unsafe { libc::mkdir(c.as_ptr(), 0o700) } as i64)
    });
    assert_eq!(r, 0);
    let s = st(d.join("by-b"));
    assert_eq!((s.st_uid, s.st_gid), USER_B);
    // Root creates as root.
    write_file(d.join("by-root"), b"");
    let s = st(d.join("by-root"));
    assert_eq!((s.st_uid, s.st_gid), (0, 0));
    // Survives a remount.
    let mut v = v;
    v.cycle();
    assert_eq!(st(d.join("file")).st_uid, USER_A.0);
    assert_eq!(st(d.join("by-b")).st_gid, USER_B.1);
}

#[test]
fn setgid_directory_passes_its_group_down() {
    let v = Volume::mounted();
    let d = v.path("shared");
    assert_ok("mkdir", mkdir(&d, 0o777));
    assert_ok("chown", chown(&d, 0, 4242));
    assert_ok("chmod", chmod(&d, 0o2777));
    assert_eq!(perm(&st(&d)), 0o2777);
    // Root and a user who is not in group 4242 both get the directory's group.
    write_file(d.join("root-file"), b"");
    assert_eq!(st(d.join("root-file")).st_gid, 4242);
    let (cf, cd) = (cpath(d.join("user-file")), cpath(d.join("user-dir")));
    let r = as_user_a(|| unsafe {
        let fd = libc::open(cf.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o2755);
        if fd < 0 {
            return errno();
        }
        libc::close(fd);
        err_of(libc::mkdir(cd.as_ptr(), 0o755) as i64)
    });
    assert_eq!(r, 0);
    let s = st(d.join("user-file"));
    assert_eq!((s.st_uid, s.st_gid), (USER_A.0, 4242));
    assert_eq!(
        perm(&s) & 0o2000,
        0,
        "a non-member's new file does not keep S_ISGID"
    );
    let s = st(d.join("user-dir"));
    assert_eq!((s.st_uid, s.st_gid), (USER_A.0, 4242));
    assert_eq!(perm(&s) & 0o2000, 0o2000, "subdirectories inherit S_ISGID");
    // And one level further down.
    let deeper = cpath(d.join("user-dir/deeper"));
    let r = as_user_a(|| err_of(unsafe { libc::mkdir(deeper.as_ptr(), 0o700) } as i64));
    assert_eq!(r, 0);
    let s = st(d.join("user-dir/deeper"));
    assert_eq!(s.st_gid, 4242);
    assert_eq!(perm(&s), 0o2700);
    // Moving a file in does not change its group.
    write_file(v.path("outside"), b"");
    assert_ok("rename", rename(&v.path("outside"), &d.join("moved-in")));
    assert_eq!(st(d.join("moved-in")).st_gid, 0);
}

#[test]
fn sticky_directory_protects_other_users_files() {
    let v = Volume::mounted();
    let d = v.path("tmp");
    assert_ok("mkdir", mkdir(&d, 0o777));
    assert_ok("chmod", chmod(&d, 0o1777));
    let (fa, fa2, fb) = (
        cpath(d.join("a")),
        cpath(d.join("a-renamed")),
        cpath(d.join("b")),
    );
    let r = as_user_a(|| unsafe {
        let fd = libc::open(fa.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o666);
        if fd < 0 {
            return errno();
        }
        libc::close(fd);
        0
    });
    assert_eq!(r, 0);
    assert_ok("chmod", chmod(&d.join("a"), 0o666));
    let r = as_user_b(|| err_of(unsafe { libc::unlink(fa.as_ptr()) } as i64));
    assert_errno_is("unlink another user's file in a sticky dir", r, libc::EPERM);
    let r = as_user_b(|| err_of(unsafe { libc::rename(fa.as_ptr(), fb.as_ptr()) } as i64));
    assert_errno_is("rename another user's file in a sticky dir", r, libc::EPERM);
    // But B may write it (mode 0666) and create its own file.
    let r = as_user_b(|| unsafe {
        let fd = libc::open(fa.as_ptr(), libc::O_WRONLY);
        if fd < 0 {
            return errno();
        }
        libc::close(fd);
        let fd = libc::open(fb.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        if fd < 0 {
            return errno();
        }
        libc::close(fd);
        0
    });
    assert_eq!(r, 0);
    // A cannot replace B's file by renaming onto it.
    let r = as_user_a(|| err_of(unsafe { libc::rename(fa.as_ptr(), fb.as_ptr()) } as i64));
    assert_errno_is("rename onto another user's file", r, libc::EPERM);
    // The owner may rename and unlink its own file.
    let r = as_user_a(|| err_of(unsafe { libc::rename(fa.as_ptr(), fa2.as_ptr()) } as i64));
    assert_eq!(r, 0);
    let r = as_user_a(|| err_of(unsafe { libc::unlink(fa2.as_ptr()) } as i64));
    assert_eq!(r, 0);
    // Root may remove anything.
    assert_ok("unlink by root", unlink(&d.join("b")));
    // The directory's owner may remove other users' files too.
    assert_ok("chown", chown(&d, USER_A.0, USER_A.1));
    let r = as_user_b(|| unsafe {
        let fd = libc::open(fb.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        if fd < 0 {
            return errno();
        }
        libc::close(fd);
        0
    });
    assert_eq!(r, 0);
    let r = as_user_a(|| err_of(unsafe { libc::unlink(fb.as_ptr()) } as i64));
    assert_eq!(r, 0, "the sticky dir's owner removes B's file");
}

#[test]
fn write_by_user_clears_setuid_and_setgid() {
    let v = Volume::mounted();
    let d = public_dir(&v, "pub");
    let f = d.join("prog");
    write_file(&f, b"#!/bin/sh\n");
    assert_ok("chown", chown(&f, USER_A.0, USER_A.1));
    assert_ok("chmod", chmod(&f, 0o6777));
    let cf = cpath(&f);
    // Another user with write permission writes: both bits go.
    let r = as_user_b(|| unsafe {
        let fd = libc::open(cf.as_ptr(), libc::O_WRONLY | libc::O_APPEND);
        if fd < 0 {
            return errno();
        }
        let n = libc::write(fd, b"echo\n".as_ptr().cast(), 5);
        libc::close(fd);
        if n == 5 {
            0
        } else {
            99
        }
    });
    assert_eq!(r, 0);
    assert_eq!(
        perm(&st(&f)),
        0o777,
        "a write by a user clears S_ISUID and S_ISGID"
    );
    assert_eq!(read_file(&f), b"#!/bin/sh\necho\n");
    // Truncate by a user clears them too.
    assert_ok("chmod", chmod(&f, 0o4777));
    let r = as_user_b(|| err_of(unsafe { libc::truncate(cf.as_ptr(), 3) } as i64));
    assert_eq!(r, 0);
    assert_eq!(perm(&st(&f)), 0o777, "truncate by a user clears S_ISUID");
}

#[test]
fn data_and_metadata_survive_umount_and_mount() {
    let mut v = Volume::mounted();
    assert_ok("mkdir", mkdir(&v.path("dir"), 0o750));
    assert_ok("mkdir", mkdir(&v.path("dir/sub"), 0o700));
    let mut files = BTreeMap::new();
    for i in 0..50u64 {
        let len = (i as usize * 7919) % (300 * 1024);
        let p = format!("dir/file{i}");
        write_file(v.path(&p), &pattern(i, len));
        files.insert(p, pattern(i, len));
    }
    write_file(v.path("dir/sub/deep"), b"deep");
    files.insert("dir/sub/deep".into(), b"deep".to_vec());
    assert_ok("link", link(&v.path("dir/file3"), &v.path("hard")));
    assert_ok("symlink", symlink("dir/file4", &v.path("soft")));
    assert_ok("mkfifo", mknod(&v.path("fifo"), libc::S_IFIFO | 0o600, 0));
    assert_ok("chmod", chmod(&v.path("dir/file5"), 0o4711));
    assert_ok("chown", chown(&v.path("dir/file6"), 1234, 5678));
    assert_ok(
        "setxattr",
        setxattr(&v.path("dir/file7"), "user.k", b"value", 0),
    );
    let c = cpath(v.path("dir/file8"));
    let t = [
        libc::timespec {
            tv_sec: 1_111_111_111,
            tv_nsec: 111_111_111,
        },
        libc::timespec {
            tv_sec: 1_222_222_222,
            tv_nsec: 222_222_222,
        },
    ];
    assert_ok(
        "utimensat",
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) } as i64,
    );
    write_file(v.path("removed"), b"gone");
    assert_ok("unlink", unlink(&v.path("removed")));
    assert_ok("rename", rename(&v.path("dir/file9"), &v.path("renamed")));
    let moved = files.remove("dir/file9").unwrap();
    files.insert("renamed".into(), moved);
    let ino_before = st(v.path("dir/file1")).st_ino;

    v.umount();
    assert!(
        v.is_native() || fs::read_dir(v.mnt()).unwrap().next().is_none(),
        "unmounted dir is empty"
    );
    v.assert_fsck_clean();
    v.remount();

    // Times first: reading the files may update atime.
    let s = st(v.path("dir/file8"));
    assert_eq!((s.st_atime, s.st_atime_nsec), (1_111_111_111, 111_111_111));
    assert_eq!((s.st_mtime, s.st_mtime_nsec), (1_222_222_222, 222_222_222));
    for (p, data) in &files {
        assert!(
            read_file(v.path(p)) == *data,
            "content of {p} after remount"
        );
    }
    assert_eq!(
        st(v.path("dir/file1")).st_ino,
        ino_before,
        "inode numbers are stable"
    );
    assert_eq!(st(v.path("hard")).st_ino, st(v.path("dir/file3")).st_ino);
    assert_eq!(st(v.path("hard")).st_nlink, 2);
    assert_eq!(
        fs::read_link(v.path("soft")).unwrap().as_os_str(),
        "dir/file4"
    );
    assert_eq!(ftype(&st(v.path("fifo"))), libc::S_IFIFO);
    assert_eq!(perm(&st(v.path("dir/file5"))), 0o4711);
    let s = st(v.path("dir/file6"));
    assert_eq!((s.st_uid, s.st_gid), (1234, 5678));
    assert_eq!(getxattr(&v.path("dir/file7"), "user.k").unwrap(), b"value");
    assert_eq!(perm(&st(v.path("dir"))), 0o750);
    assert_eq!(st(v.path("dir")).st_nlink, 3);
    assert_eq!(lstat(v.path("removed")).unwrap_err(), libc::ENOENT);
    assert_eq!(lstat(v.path("dir/file9")).unwrap_err(), libc::ENOENT);
    let names: BTreeSet<String> = fs::read_dir(v.path("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 50, "49 files + sub");
    // A second cycle after more changes.
    write_file(v.path("dir/file1"), b"changed");
    v.cycle();
    assert_eq!(read_file(v.path("dir/file1")), b"changed");
    v.umount_clean();
}

#[test]
fn acknowledged_writes_survive_kill9() {
    let mut v = Volume::mounted();
    // Without fsync: every write() that returned must be recoverable (writeback cache off).
    let f = v.path("unsynced");
    let file = fs::File::create(&f).unwrap();
    let data = pattern(5, 3 * MIB + 17);
    file.write_all_at(&data, 0).unwrap();
    file.write_all_at(b"OVERWRITE", 4096).unwrap();
    drop(file);
    let g = v.path("synced");
    let file = fs::File::create(&g).unwrap();
    file.write_all_at(b"fsynced", 0).unwrap();
    file.sync_all().unwrap();
    drop(file);
    assert_ok("mkdir", mkdir(&v.path("d"), 0o700));
    assert_ok("rename", rename(&g, &v.path("d/synced")));
    assert_ok("setxattr", setxattr(&v.path("d/synced"), "user.x", b"1", 0));
    assert_ok("truncate", truncate(&v.path("d/synced"), 3));
    v.kill9();
    if !v.is_native() {
        // A lookup of a name never seen must reach the (dead) daemon.
        let e = lstat(v.path("never-looked-up")).unwrap_err();
        assert_errno_is("the mount is dead", e, libc::ENOTCONN);
    }
    v.remount();
    let mut want = data.clone();
    want[4096..4105].copy_from_slice(b"OVERWRITE");
    assert!(read_file(&f) == want, "unsynced data after kill -9");
    assert_eq!(read_file(v.path("d/synced")), b"fsy");
    assert_eq!(getxattr(&v.path("d/synced"), "user.x").unwrap(), b"1");
    assert_eq!(perm(&st(v.path("d"))), 0o700);
    assert_eq!(lstat(&g).unwrap_err(), libc::ENOENT);
    v.umount_clean();
}

#[test]
fn concurrent_appends_and_writers_lose_nothing() {
    let v = Volume::mounted();
    let log = v.path("log");
    write_file(&log, b"");
    let threads = 4;
    let records = 400;
    let rec_len = 100;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            let own = v.path(&format!("own{t}"));
            std::thread::spawn(move || {
                let fd = open_ok(&log, libc::O_WRONLY | libc::O_APPEND, 0);
                let mine = fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&own)
                    .unwrap();
                for r in 0..records {
                    // One record: thread, record number, filler, newline.
                    let mut rec = format!("t{t} r{r:05} ").into_bytes();
                    rec.resize(rec_len - 1, b'a' + t as u8);
                    rec.push(b'\n');
                    let n = unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
                    assert_eq!(n, rec_len as isize, "append: {}", errno_name(errno()));
                    mine.write_all_at(&pattern(t as u64 * 1000 + r as u64, 512), r as u64 * 512)
                        .unwrap();
                }
                close(fd);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }
    let data = read_file(&log);
    assert_eq!(data.len(), threads * records * rec_len, "appended bytes");
    let mut seen = BTreeSet::new();
    for rec in data.chunks(rec_len) {
        let text = String::from_utf8_lossy(rec);
        let t: usize = text[1..2].parse().expect("record header");
        assert!(
            rec[..rec_len - 1].ends_with(&[b'a' + t as u8; 8]) && rec[rec_len - 1] == b'\n',
            "torn record: {text:?}"
        );
        assert!(
            seen.insert(text[..9].to_string()),
            "record {} twice",
            &text[..9]
        );
    }
    assert_eq!(seen.len(), threads * records);
    for t in 0..threads {
        let back = read_file(v.path(&format!("own{t}")));
        assert_eq!(back.len(), records * 512);
        for r in 0..records {
            assert!(
                back[r * 512..(r + 1) * 512] == pattern(t as u64 * 1000 + r as u64, 512)[..],
                "own{t} block {r}"
            );
        }
    }
}

#[test]
fn replaced_file_stays_readable_through_an_open_descriptor() {
    let v = Volume::mounted();
    let (a, b) = (v.path("a"), v.path("b"));
    write_file(&a, b"new content");
    write_file(&b, b"old content");
    let old = fs::File::open(&b).unwrap();
    assert_ok("rename over open file", rename(&a, &b));
    let mut buf = vec![0u8; 64];
    let n = old.read_at(&mut buf, 0).unwrap();
    assert_eq!(
        &buf[..n],
        b"old content",
        "the replaced inode lives on while open"
    );
    assert_eq!(read_file(&b), b"new content");
    let fd_st = {
        use std::os::unix::io::AsRawFd;
        fstat(old.as_raw_fd())
    };
    assert_eq!(fd_st.st_nlink, 0, "the replaced inode has no links");
    drop(old);
    let mut v = v;
    v.cycle();
    assert_eq!(read_file(&b), b"new content");
    v.umount_clean();
}

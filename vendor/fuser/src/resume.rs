// PATCHED for smlogfs: this whole file is new (not in fuser 0.18.0). See smlogfs's
// docs/design.md, "Restart on the same FUSE connection".
//! Serving a FUSE connection that outlives the process serving it.
//!
//! A small supervisor mounts, keeps every `/dev/fuse` descriptor of the connection open and
//! hands copies to a serving daemon; when the daemon dies, the next one serves the same
//! connection. For that this module adds what fuser 0.18 lacks:
//! * [`mount_device`]: mount and return the descriptor without a handshake (the supervisor
//!   holds nothing of the file system, so it cannot answer FUSE_INIT itself);
//! * [`clone_device`]: `FUSE_DEV_IOC_CLONE`, done by the supervisor so that it holds every
//!   descriptor the daemon reads from (the kernel ends the requests read through a
//!   descriptor whose last reference closes);
//! * [`take_inherited_fd`]: adopt a descriptor inherited across `exec`;
//! * [`InitRecord`]: what the kernel offered at FUSE_INIT, passed to the next daemon, which
//!   builds its session with `Session::from_fds_resumed` (no second FUSE_INIT ever comes);
//! * [`notify_resend`]: `FUSE_NOTIFY_RESEND`, so requests the dead daemon read but never
//!   answered are queued again, with [`FUSE_UNIQUE_RESEND`] set in their `unique` (replies
//!   carry the `unique` exactly as received, so nothing else changes for them).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::str::FromStr;

use crate::InitFlags;
use crate::MountOption;
use crate::SessionACL;
use crate::dev_fuse::DevFuse;
use crate::ll::Version;
use crate::ll::fuse_abi as abi;
use crate::mnt::Mount;

/// The bit the kernel sets in `unique` of a request it queues again after
/// `FUSE_NOTIFY_RESEND` (include/uapi/linux/fuse.h).
pub const FUSE_UNIQUE_RESEND: u64 = 1 << 63;

/// `FUSE_NOTIFY_RESEND` in `enum fuse_notify_code` (Linux 6.9, protocol 7.40).
const FUSE_NOTIFY_RESEND: i32 = 7;

/// The character device number of `/dev/fuse` (misc major 10, minor 229).
const DEV_FUSE_RDEV: (u32, u32) = (10, 229);

/// What the kernel offered in its FUSE_INIT: enough to call `Filesystem::init` again in a
/// process that serves the connection after the one that answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitRecord {
    /// The kernel's protocol version.
    pub version: Version,
    /// The capabilities the kernel offered (not the ones accepted).
    pub capabilities: InitFlags,
    /// The kernel's maximum readahead.
    pub max_readahead: u32,
}

/// `MAJOR.MINOR:CAPABILITIES_HEX:MAX_READAHEAD`, for an environment variable.
impl fmt::Display for InitRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}:{:x}:{}",
            self.version.0,
            self.version.1,
            self.capabilities.bits(),
            self.max_readahead
        )
    }
}

impl FromStr for InitRecord {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not MAJOR.MINOR:CAPABILITIES_HEX:MAX_READAHEAD");
        let mut parts = s.split(':');
        let (Some(version), Some(caps), Some(readahead), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let (major, minor) = version.split_once('.').ok_or_else(bad)?;
        Ok(InitRecord {
            version: Version(
                major.parse().map_err(|_| bad())?,
                minor.parse().map_err(|_| bad())?,
            ),
            capabilities: InitFlags::from_bits_retain(
                u64::from_str_radix(caps, 16).map_err(|_| bad())?,
            ),
            max_readahead: readahead.parse().map_err(|_| bad())?,
        })
    }
}

/// The header handed to `Filesystem::init` when a session resumes: no request stands
/// behind that call, so every field but the opcode is zero.
pub(crate) fn resumed_init_header() -> abi::fuse_in_header {
    abi::fuse_in_header {
        len: 0,
        opcode: abi::fuse_opcode::FUSE_INIT as u32,
        unique: 0,
        nodeid: 0,
        uid: 0,
        gid: 0,
        pid: 0,
        padding: 0,
    }
}

/// Writes `FUSE_NOTIFY_RESEND` (a bare header) to a descriptor of the connection.
pub(crate) fn notify_resend(fd: BorrowedFd<'_>) -> io::Result<()> {
    let header = abi::fuse_out_header {
        len: size_of::<abi::fuse_out_header>() as u32,
        error: FUSE_NOTIFY_RESEND,
        unique: 0,
    };
    nix::unistd::write(fd, zerocopy::IntoBytes::as_bytes(&header))?;
    Ok(())
}

/// A mount made by [`mount_device`]. Dropping it unmounts, unless the connection is gone.
#[derive(Debug)]
pub struct MountHandle {
    mount: Option<Mount>,
}

impl MountHandle {
    /// Lets go of the mount without unmounting anything: for a connection that ended (or is
    /// left for someone else to clean up), whose mount point may hold another mount by now.
    /// An unmount goes by path, so only the owner of a live connection may do it.
    pub fn release(mut self) {
        if let Some(m) = self.mount.take() {
            m.release();
        }
    }

    /// Unmounts now.
    /// # Errors
    /// Returns the error of umount(2) (or of the fusermount helper).
    pub fn unmount(mut self) -> io::Result<()> {
        match self.mount.take() {
            Some(m) => m.umount(),
            None => Ok(()),
        }
    }
}

/// Mounts a FUSE file system at `mountpoint` and returns a descriptor of its connection,
/// without reading the kernel's FUSE_INIT: whoever serves the descriptor does that.
/// # Errors
/// Returns the error of the mount.
pub fn mount_device(
    mountpoint: &Path,
    options: &[MountOption],
    acl: SessionACL,
) -> io::Result<(OwnedFd, MountHandle)> {
    crate::mnt::mount_options::check_option_conflicts(&crate::Config {
        mount_options: options.to_vec(),
        acl,
        ..Default::default()
    })?;
    let (dev, mount) = Mount::new(mountpoint, options, acl)?;
    // The handle keeps its own reference (it polls it to tell whether the connection is
    // gone); the copy shares the open file, which is what the kernel counts.
    let fd = dev.as_fd().try_clone_to_owned()?;
    Ok((fd, MountHandle { mount: Some(mount) }))
}

/// A new descriptor attached to the connection of `fd` (`FUSE_DEV_IOC_CLONE`): the kernel
/// hands requests to every attached descriptor and keeps a separate list of the requests
/// read through each.
/// # Errors
/// Returns the error of opening /dev/fuse or of the ioctl (Linux before 4.5).
pub fn clone_device(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let new_dev = DevFuse::open()?;
    let mut source_fd = fd.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 through the pointer, which is valid for the call.
    unsafe {
        crate::ll::ioctl::fuse_dev_ioc_clone(new_dev.as_raw_fd(), &mut source_fd)?;
    }
    Ok(OwnedFd::from(new_dev.0))
}

/// Adopts descriptor number `raw`, inherited across `exec`, after checking that it is open
/// and refers to `/dev/fuse`; marks it close-on-exec so it goes to no further child.
/// Call it at most once per number: the returned value owns the descriptor.
/// # Errors
/// Returns an error if `raw` is not an open descriptor of `/dev/fuse`.
pub fn take_inherited_fd(raw: RawFd) -> io::Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    use nix::sys::stat::{fstat, major, minor};
    if raw < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {raw} is negative"),
        ));
    }
    // SAFETY: only borrowed for the checks below; F_GETFD fails on a closed number, and
    // nothing is read or written through it before the checks pass.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    fcntl(borrowed, FcntlArg::F_GETFD)
        .map_err(|e| io::Error::other(format!("descriptor {raw} is not open: {e}")))?;
    let st = fstat(borrowed)?;
    let is_char = (st.st_mode & libc::S_IFMT) == libc::S_IFCHR;
    let rdev = (major(st.st_rdev) as u32, minor(st.st_rdev) as u32);
    if !is_char || rdev != DEV_FUSE_RDEV {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {raw} is not /dev/fuse"),
        ));
    }
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    // SAFETY: the number is open (checked above) and the caller hands its ownership over.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// True while the connection of `fd` is up: the kernel reports POLLERR on a descriptor
/// whose connection was aborted or unmounted.
pub fn connection_alive(fd: BorrowedFd<'_>) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut pfd = [PollFd::new(fd, PollFlags::empty())];
        match poll(&mut pfd, PollTimeout::ZERO) {
            Ok(0) => return true,
            Ok(_) => {
                return !pfd[0].revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)
                });
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn init_record_round_trips_through_its_text() {
        let r = InitRecord {
            version: Version(7, 45),
            capabilities: InitFlags::from_bits_retain(0x8000_0000_7f3f_ffff),
            max_readahead: 131072,
        };
        assert_eq!(r.to_string().parse::<InitRecord>(), Ok(r));
        assert!("7.45:zz:1".parse::<InitRecord>().is_err());
        assert!("7:1:1".parse::<InitRecord>().is_err());
    }
}

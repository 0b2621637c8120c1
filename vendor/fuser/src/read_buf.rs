// PATCHED for smlogfs (vendored fuser 0.18.0): `FuseReadBuf::new` faults in the pages a
// request can reach, so that a daemon killed while the kernel copies a request into its
// buffer never turns that request into an EIO for the application (see `new`).
use std::mem::align_of;

use crate::ll::fuse_abi as abi;
use crate::session::MAX_WRITE_SIZE;

/// Size of the buffer for reading a request from the kernel. Since the kernel may send
/// up to `MAX_WRITE_SIZE` bytes in a write request, we use that value plus some extra space.
const BUFFER_SIZE: usize = MAX_WRITE_SIZE + 4096;

/// PATCHED for smlogfs: how much of the buffer is faulted in up front (see `new`): the
/// largest request smlogfs negotiates (1 MiB of write data) plus headers, with room.
const PREFAULT_BYTES: usize = 2 * 1024 * 1024;

/// A buffer that provides an aligned sub-slice for FUSE operations.
///
/// This struct wraps a `Vec<u8>` and provides access to an aligned portion
/// of the buffer, ensuring proper alignment for `fuse_in_header`.
#[derive(Debug)]
pub(crate) struct FuseReadBuf {
    buffer: Vec<u8>,
}

impl FuseReadBuf {
    /// Creates a new `FuseReadBuf` with the default buffer size.
    ///
    /// The actual buffer may be slightly larger to accommodate alignment requirements.
    pub(crate) fn new() -> Self {
        let mut buffer = vec![0; BUFFER_SIZE];
        // PATCHED for smlogfs: touch the pages a request can reach before the first read.
        // `vec![0; n]` maps untouched zero pages, so the kernel's copy of a request into
        // them page-faults; a SIGKILL of the daemon arriving during such a fault makes the
        // copy fail, and the kernel then ends the request with EIO for the application
        // instead of leaving it for the restarted daemon (fuse_dev_do_read: a failed copy
        // sets `out.h.error = -EIO`). With the pages present the copy cannot fail. Only
        // the part the negotiated max_write can fill (smlogfs asks for 1 MiB) is touched,
        // so that idle threads do not pin 16 MiB each.
        let reach = PREFAULT_BYTES.min(buffer.len());
        for page in (0..reach).step_by(4096) {
            // A volatile store, so that the compiler keeps a write of zero into memory it
            // knows to be zeroed. SAFETY: page < reach <= buffer.len(): inside the buffer.
            unsafe { std::ptr::write_volatile(buffer.as_mut_ptr().add(page), 0) };
        }
        Self { buffer }
    }

    /// Returns a mutable reference to the aligned portion of the buffer.
    pub(crate) fn as_mut(&mut self) -> &mut [u8] {
        let alignment = align_of::<abi::fuse_in_header>();
        let off = alignment - (self.buffer.as_ptr() as usize) % alignment;
        if off == alignment {
            &mut self.buffer
        } else {
            &mut self.buffer[off..]
        }
    }
}

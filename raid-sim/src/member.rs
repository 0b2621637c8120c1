//! Member I/O behind a small trait: the real file, and a fault-injecting wrapper for tests
//! and demos (EIO on chosen reads or writes, bit flips on read, torn writes, slow I/O, and a
//! "halt" that stops every later write as a crashed process would).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// I/O of one member (or journal) file. `len` is the file length, not a collection's.
#[allow(clippy::len_without_is_empty)]
pub trait MemberIo: Send + Sync {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn sync(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// (device, inode) of the open file, to notice a member file removed or replaced
    /// under a running volume.
    fn identity(&self) -> Option<(u64, u64)> {
        None
    }
}

pub struct FileMember {
    file: File,
}

impl FileMember {
    pub fn new(file: File) -> Self {
        FileMember { file }
    }
}

impl MemberIo for FileMember {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn identity(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| (m.dev(), m.ino()))
    }
}

/// Wraps the real I/O of one file; tests pass it as `RaidOptions::wrap_io`.
pub type IoWrapper = Arc<dyn Fn(&Path, Box<dyn MemberIo>) -> Box<dyn MemberIo> + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOp {
    Read,
    Write,
}

#[derive(Clone, Debug)]
pub enum FaultAction {
    /// Return EIO.
    Eio,
    /// Flip the bits of `mask` at byte `at` of the returned buffer (reads only).
    FlipBits { at: usize, mask: u8 },
    /// Write only the first `keep` bytes, then return EIO.
    Tear { keep: usize },
    /// Sleep, then do the I/O.
    Delay(Duration),
    /// Do the I/O, then stop every later write on every file of the plan (a crashed
    /// process issues no more writes).
    HaltAfter,
    /// Stop every write from this one on, without doing it.
    HaltBefore,
}

/// One rule: applies to I/O on files whose name ends with `file_suffix` that overlaps
/// `[from, to)`, for the `skip`-th matching call on and at most `times` calls.
#[derive(Clone, Debug)]
pub struct FaultRule {
    pub file_suffix: String,
    pub op: FaultOp,
    pub from: u64,
    pub to: u64,
    pub skip: u64,
    pub times: u64,
    pub action: FaultAction,
}

impl FaultRule {
    pub fn new(file_suffix: &str, op: FaultOp, action: FaultAction) -> Self {
        FaultRule {
            file_suffix: file_suffix.to_string(),
            op,
            from: 0,
            to: u64::MAX,
            skip: 0,
            times: u64::MAX,
            action,
        }
    }
    pub fn range(mut self, from: u64, to: u64) -> Self {
        self.from = from;
        self.to = to;
        self
    }
    pub fn skip(mut self, n: u64) -> Self {
        self.skip = n;
        self
    }
    pub fn times(mut self, n: u64) -> Self {
        self.times = n;
        self
    }
}

struct RuleState {
    rule: FaultRule,
    seen: u64,
    fired: u64,
}

/// A set of rules shared by every wrapped file of one volume.
#[derive(Default)]
pub struct FaultPlan {
    rules: Mutex<Vec<RuleState>>,
    halted: AtomicBool,
    fired: AtomicU64,
}

impl FaultPlan {
    pub fn new() -> Arc<Self> {
        Arc::new(FaultPlan::default())
    }

    pub fn add(&self, rule: FaultRule) {
        self.rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(RuleState {
                rule,
                seen: 0,
                fired: 0,
            });
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.halted.store(false, Ordering::SeqCst);
    }

    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::SeqCst)
    }

    /// How many times any rule fired.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    /// The wrapper to hand to `RaidOptions::wrap_io`.
    pub fn wrapper(self: &Arc<Self>) -> IoWrapper {
        let plan = Arc::clone(self);
        Arc::new(move |path: &Path, inner: Box<dyn MemberIo>| {
            Box::new(FaultyMember {
                path: path.to_path_buf(),
                inner,
                plan: Arc::clone(&plan),
            }) as Box<dyn MemberIo>
        })
    }

    fn find(&self, path: &Path, op: FaultOp, offset: u64, len: usize) -> Option<FaultAction> {
        let name = path.to_string_lossy();
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        for st in rules.iter_mut() {
            let r = &st.rule;
            let overlaps = offset < r.to && offset + len as u64 > r.from;
            if r.op != op || !name.ends_with(&r.file_suffix) || !overlaps {
                continue;
            }
            st.seen += 1;
            if st.seen > r.skip && st.fired < r.times {
                st.fired += 1;
                self.fired.fetch_add(1, Ordering::SeqCst);
                return Some(r.action.clone());
            }
        }
        None
    }
}

pub struct FaultyMember {
    path: PathBuf,
    inner: Box<dyn MemberIo>,
    plan: Arc<FaultPlan>,
}

fn injected(what: &str) -> io::Error {
    log::debug!("fault injected: {what}");
    io::Error::from_raw_os_error(libc::EIO)
}

impl MemberIo for FaultyMember {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.plan.find(&self.path, FaultOp::Read, offset, buf.len()) {
            Some(FaultAction::Eio) => Err(injected("read EIO")),
            Some(FaultAction::FlipBits { at, mask }) => {
                self.inner.read_at(offset, buf)?;
                if let Some(b) = buf.get_mut(at) {
                    *b ^= mask;
                }
                Ok(())
            }
            Some(FaultAction::Delay(d)) => {
                std::thread::sleep(d);
                self.inner.read_at(offset, buf)
            }
            _ => self.inner.read_at(offset, buf),
        }
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.plan.halted() {
            return Err(injected("write after halt"));
        }
        match self
            .plan
            .find(&self.path, FaultOp::Write, offset, data.len())
        {
            Some(FaultAction::Eio) => Err(injected("write EIO")),
            Some(FaultAction::Tear { keep }) => {
                self.inner.write_at(offset, &data[..keep.min(data.len())])?;
                Err(injected("torn write"))
            }
            Some(FaultAction::Delay(d)) => {
                std::thread::sleep(d);
                self.inner.write_at(offset, data)
            }
            Some(FaultAction::HaltAfter) => {
                let r = self.inner.write_at(offset, data);
                self.plan.halted.store(true, Ordering::SeqCst);
                r
            }
            Some(FaultAction::HaltBefore) => {
                self.plan.halted.store(true, Ordering::SeqCst);
                Err(injected("halt"))
            }
            _ => self.inner.write_at(offset, data),
        }
    }

    fn sync(&self) -> io::Result<()> {
        if self.plan.halted() {
            return Err(injected("sync after halt"));
        }
        self.inner.sync()
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn identity(&self) -> Option<(u64, u64)> {
        self.inner.identity()
    }
}

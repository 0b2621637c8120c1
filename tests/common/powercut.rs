//! Mounts of the power-cut simulator (examples/passthrough, docs/testing.md) for tests that
//! keep a volume directory on a simulated disk with a volatile write cache.
//!
//! A [`Passthrough`] is one process of the example on BACKING at MNT: plain (writes reach
//! BACKING at once) or power-cut mode with a seed (writes stay pending until fsync of their
//! file). [`Passthrough::cut`] cuts the power and returns the simulator's one-line report;
//! [`Passthrough::unmount`] is a clean unmount (every pending page written). Dropping one
//! lazily unmounts it and kills the process, also when the test panicked.

use super::{lazy_umount, wait_for, READY_TIMEOUT};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;

/// The name whose creation in a power-cut mount's root cuts the power.
const CUT_NAME: &str = ".powercut";

/// Builds the example once per test binary (`cargo test --test` does not build examples)
/// and returns its path, target/release/examples/passthrough next to the test binary.
pub fn passthrough_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--example", "passthrough"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cannot run cargo to build the passthrough example");
        assert!(status.success(), "building the passthrough example failed");
        // target/release/deps/TEST-HASH -> target/release/examples/passthrough
        let exe = std::env::current_exe().expect("own path");
        let release = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = release.join("examples/passthrough");
        assert!(bin.exists(), "no passthrough binary at {}", bin.display());
        bin
    })
}

/// One running passthrough process and its mount.
pub struct Passthrough {
    child: Child,
    lines: Receiver<String>,
    mnt: PathBuf,
    /// The power-cut seed, None in plain mode.
    pub seed: Option<u64>,
}

impl Passthrough {
    /// Mounts BACKING at MNT (an existing empty directory), in power-cut mode when `seed` is
    /// given; returns once the mount is ready.
    pub fn start(backing: &Path, mnt: &Path, seed: Option<u64>) -> Passthrough {
        let mut cmd = Command::new(passthrough_bin());
        cmd.arg(backing)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if let Some(seed) = seed {
            cmd.args(["--powercut", "--seed", &seed.to_string()]);
        }
        let mut child = cmd.spawn().expect("spawn the passthrough example");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Passthrough {
            child,
            lines,
            mnt: mnt.to_path_buf(),
            seed,
        };
        let first = p.line();
        assert!(
            first.starts_with("passthrough: mounted"),
            "the passthrough on {} did not mount: {first}",
            mnt.display()
        );
        p
    }

    fn line(&mut self) -> String {
        self.lines
            .recv_timeout(READY_TIMEOUT)
            .unwrap_or_else(|_| "(no line: the passthrough ended or hung)".to_string())
    }

    /// Cuts the power: creates `.powercut` (which must fail with EIO), waits for the report
    /// and the process's exit, and lazily unmounts the dead mount. Err says what went wrong.
    pub fn cut(&mut self) -> Result<String, String> {
        assert!(self.seed.is_some(), "a cut needs power-cut mode");
        let touched = File::create(self.mnt.join(CUT_NAME));
        let errno = touched.err().and_then(|e| e.raw_os_error());
        if errno != Some(libc::EIO) {
            return Err(format!(
                "creating {}/{CUT_NAME} gave errno {errno:?}, not EIO",
                self.mnt.display()
            ));
        }
        let report = self.line();
        let status = self.child.wait().expect("wait for the passthrough");
        lazy_umount(&self.mnt);
        if !status.success() || !report.starts_with("powercut seed ") {
            return Err(format!(
                "the passthrough's cut ended with {status}, report: {report}"
            ));
        }
        Ok(report)
    }

    /// A clean unmount (power-cut mode writes every pending page); returns once the process
    /// has exited.
    #[track_caller]
    pub fn unmount(&mut self) {
        let mnt = self.mnt.clone();
        super::run_while_busy(&format!("fusermount3 -u {}", mnt.display()), || {
            let mut c = Command::new("fusermount3");
            c.arg("-u").arg(&mnt);
            c
        });
        let status = self.child.wait().expect("wait for the passthrough");
        assert!(
            status.success(),
            "passthrough on {} exited with {status} after unmount",
            self.mnt.display()
        );
        wait_for(
            READY_TIMEOUT,
            &format!("{} to be unmounted", self.mnt.display()),
            || !super::is_fuse_mount(&self.mnt),
        );
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        lazy_umount(&self.mnt);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

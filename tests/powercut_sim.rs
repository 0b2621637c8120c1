//! The power-cut simulator itself (examples/passthrough): real mounts of the example binary.
//!
//! Plain mode passes data through; power-cut mode keeps writes pending until fsync (close is
//! not a flush) and at a cut leaves every page of a file either old, new or torn at a sector
//! boundary, with a seeded subset kept; an msync'ed shared mapping is persisted.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::Duration;

const PAGE: usize = 4096;
const SECTOR: usize = 512;
const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds the example once per test run (`cargo test --test` does not build examples) and
/// returns its path, next to this test's own binary.
fn passthrough_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--example", "passthrough"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cannot run cargo to build the passthrough example");
        assert!(status.success(), "building the passthrough example failed");
        // target/release/deps/powercut_sim-HASH -> target/release/examples/passthrough
        let exe = std::env::current_exe().expect("own path");
        let bin = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = bin.join("examples/passthrough");
        assert!(bin.exists(), "no passthrough binary at {}", bin.display());
        bin
    })
}

/// One mount of the example; unmounts and kills it on drop, also when a test fails.
struct Mount {
    child: Child,
    lines: Receiver<String>,
    backing: PathBuf,
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    fn start(seed: Option<u64>) -> Mount {
        let dir = tempfile::tempdir().expect("tempdir");
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        fs::create_dir(&backing).unwrap();
        fs::create_dir(&mnt).unwrap();
        let mut cmd = Command::new(passthrough_bin());
        cmd.arg(&backing).arg(&mnt).stdout(Stdio::piped());
        if let Some(seed) = seed {
            cmd.args(["--powercut", "--seed", &seed.to_string()]);
        }
        let mut child = cmd.spawn().expect("spawn passthrough");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut m = Mount {
            child,
            lines,
            backing,
            mnt,
            _dir: dir,
        };
        let first = m.line();
        assert!(
            first.starts_with("passthrough: mounted"),
            "first line: {first}"
        );
        m
    }

    fn line(&mut self) -> String {
        self.lines
            .recv_timeout(LINE_TIMEOUT)
            .expect("a line from the passthrough within the timeout")
    }

    /// Cuts the power; returns the daemon's report once it has exited.
    fn cut(&mut self) -> String {
        let touched = File::create(self.mnt.join(".powercut"));
        let errno = touched.err().and_then(|e| e.raw_os_error());
        assert_eq!(errno, Some(libc::EIO), "creating .powercut fails with EIO");
        let report = self.line();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "passthrough exit after a cut: {status}");
        assert!(report.starts_with("powercut seed "), "report: {report}");
        eprintln!("{report}");
        report
    }
}

impl Mount {
    /// A clean unmount; returns once the daemon has exited.
    fn unmount(&mut self) {
        let status = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status()
            .expect("run fusermount3");
        assert!(status.success(), "fusermount3 -u: {status}");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "passthrough exit after unmount: {status}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Page contents that differ in every sector between versions and pages.
fn page(version: u8, no: usize) -> Vec<u8> {
    (0..PAGE)
        .map(|i| (i / SECTOR * 31 + no * 7 + usize::from(version) * 101 + i % 13) as u8)
        .collect()
}

fn pages(version: u8, n: usize) -> Vec<u8> {
    (0..n).flat_map(|no| page(version, no)).collect()
}

fn read(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(path).unwrap().read_to_end(&mut v).unwrap();
    v
}

/// What one page of the backing file holds after a cut.
#[derive(Debug, PartialEq)]
enum Seen {
    Old,
    New,
    /// The first N sectors new, the rest old.
    Torn(usize),
}

fn classify(got: &[u8], old: &[u8], new: &[u8]) -> Option<Seen> {
    if got == old {
        return Some(Seen::Old);
    }
    if got == new {
        return Some(Seen::New);
    }
    (1..PAGE / SECTOR)
        .find(|&k| got[..k * SECTOR] == new[..k * SECTOR] && got[k * SECTOR..] == old[k * SECTOR..])
        .map(Seen::Torn)
}

/// Checks every page of `got` is old, new or torn (at most one torn page, the reported one)
/// and returns (pages kept new, pages left old, torn page).
fn check_pages(
    got: &[u8],
    version: (u8, u8),
    n: usize,
    report: &str,
    name: &str,
) -> (usize, usize, Option<usize>) {
    assert_eq!(got.len(), n * PAGE, "{name}: size after the cut");
    let (mut kept, mut lost, mut torn) = (0, 0, None);
    for no in 0..n {
        let (old, new) = (page(version.0, no), page(version.1, no));
        match classify(&got[no * PAGE..(no + 1) * PAGE], &old, &new) {
            Some(Seen::Old) => lost += 1,
            Some(Seen::New) => kept += 1,
            Some(Seen::Torn(k)) => {
                assert_eq!(torn, None, "{name}: a second torn page {no}");
                let said = format!("torn: {name} page {no} ({k} of {} sectors", PAGE / SECTOR);
                assert!(
                    report.contains(&said),
                    "{name}: page {no} torn at {k}, report: {report}"
                );
                torn = Some(no);
            }
            None => panic!("{name}: page {no} holds bytes the test never wrote ({report})"),
        }
    }
    (kept, lost, torn)
}

#[test]
fn plain_mode_passes_data_and_names_through() {
    let m = Mount::start(None);
    let data = pages(1, 300);
    let mut f = File::create(m.mnt.join("f")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(read(&m.mnt.join("f")), data, "read back through the mount");
    assert_eq!(read(&m.backing.join("f")), data, "the backing file");
    fs::create_dir(m.mnt.join("d")).unwrap();
    fs::rename(m.mnt.join("f"), m.mnt.join("d/g")).unwrap();
    assert!(m.backing.join("d/g").exists() && !m.backing.join("f").exists());
    assert_eq!(read(&m.mnt.join("d/g")), data, "read after rename");
    let f = OpenOptions::new()
        .write(true)
        .open(m.mnt.join("d/g"))
        .unwrap();
    f.set_len(5000).unwrap();
    assert_eq!(fs::metadata(m.backing.join("d/g")).unwrap().len(), 5000);
    let names: Vec<_> = fs::read_dir(m.mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["g"]);
}

/// Old content fsync'ed, new content written over it and not: a cut keeps a subset of the
/// new pages, maybe one torn; the same seed gives the same result.
fn cut_once(seed: u64, n: usize) -> (Vec<u8>, String) {
    let mut m = Mount::start(Some(seed));
    let path = m.mnt.join("data");
    let mut f = File::create(&path).unwrap();
    f.write_all(&pages(1, n)).unwrap();
    f.sync_all().unwrap();
    f.write_all_at(&pages(2, n), 0).unwrap();
    drop(f);
    // Close is not a flush; reads see the pending pages.
    assert_eq!(
        read(&m.backing.join("data")),
        pages(1, n),
        "backing after close"
    );
    assert_eq!(read(&path), pages(2, n), "read through the mount");
    let report = m.cut();
    (read(&m.backing.join("data")), report)
}

#[test]
fn powercut_keeps_a_seeded_subset_and_tears_at_sectors() {
    const N: usize = 64;
    let mut torn_seen = false;
    for seed in 1..=6 {
        let (got, report) = cut_once(seed, N);
        let (kept, lost, torn) = check_pages(&got, (1, 2), N, &report, "data");
        assert!(
            kept >= 1 && lost >= 1,
            "seed {seed}: {kept} kept, {lost} lost"
        );
        let expect = format!("{N} page(s) pending in 1 file(s), {kept} kept, torn: ");
        assert!(report.contains(&expect), "seed {seed}: {report}");
        assert_eq!(torn.is_none(), report.ends_with("torn: none"), "{report}");
        torn_seen |= torn.is_some();
        if seed == 1 {
            let (again, report_again) = cut_once(seed, N);
            assert!(again == got, "seed {seed} replayed gives other content");
            assert_eq!(report_again, report);
        }
    }
    assert!(torn_seen, "no torn page in 6 seeds");
}

#[test]
fn msync_persists_a_shared_mapping_and_an_unsynced_one_may_be_lost() {
    const N: usize = 16;
    let mut m = Mount::start(Some(9));
    // Each file stays open: closing it would make the kernel write its dirty pages back.
    let mut open = Vec::new();
    for name in ["synced", "unsynced"] {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(m.mnt.join(name))
            .unwrap();
        f.write_all(&pages(1, N)).unwrap();
        f.sync_all().unwrap();
        // SAFETY: the file is this test's own, nothing else truncates it while mapped.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.expect("mmap");
        map.copy_from_slice(&pages(2, N));
        open.push((map, f));
    }
    assert_eq!(
        read(&m.backing.join("synced")),
        pages(1, N),
        "dirty mapped pages before msync"
    );
    open[0].0.flush().expect("msync");
    assert_eq!(
        read(&m.backing.join("synced")),
        pages(2, N),
        "an msync'ed MAP_SHARED mapping reaches the backing file"
    );
    let report = m.cut();
    assert_eq!(
        read(&m.backing.join("synced")),
        pages(2, N),
        "after the cut"
    );
    let got = read(&m.backing.join("unsynced"));
    check_pages(&got, (1, 2), N, &report, "unsynced");
    drop(open);
}

#[test]
fn powercut_mode_persists_pending_pages_at_a_clean_unmount() {
    let mut m = Mount::start(Some(3));
    let data = pages(1, 10);
    fs::write(m.mnt.join("f"), &data).unwrap();
    assert_eq!(
        read(&m.backing.join("f")),
        b"",
        "pending before the unmount"
    );
    m.unmount();
    assert_eq!(read(&m.backing.join("f")), data, "after a clean unmount");
}

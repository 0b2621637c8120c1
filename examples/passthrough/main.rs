//! A FUSE passthrough of our own, in two modes.
//!
//! **Plain mode** is "FUSE alone": every request becomes the same call on BACKING_DIR, with
//! no logging and no kernel passthrough, multi-threaded, with the TTLs, request size and
//! readahead smlogfs uses. `scripts/bench.sh` runs its workloads on it (target
//! `passthrough`) so that smlogfs's figures can be divided by it as well as by native.
//!
//! **Power-cut mode** (`--powercut`) simulates a disk with a volatile write cache under
//! whatever is stored in BACKING_DIR (for smlogfs: a volume directory, its member files and
//! its mmap'd ring). Writes are kept in memory as pending 4 KiB pages and reach the backing
//! file only on fsync of that file (msync of a mapping sends one too); close is not a flush.
//! Creating `.powercut` in the mount's root (`touch MNT/.powercut`) cuts the power: every
//! request from then on fails with EIO, a random subset of the pending pages is written in
//! random order, one of them perhaps torn at a 512-byte sector; one line on stdout says what
//! was kept, and the process exits, leaving a dead mount to unmount (`fusermount3 -uz MNT`).
//! `--seed N` replays a cut. Directory operations and truncation are applied at once: the
//! simulator covers file data, not directory-entry durability (docs/testing.md).
//!
//!     cargo run --release --example passthrough -- BACKING_DIR MNT [--threads N]
//!     cargo run --release --example passthrough -- BACKING_DIR MNT --powercut --seed 7
//!
//! It runs in the foreground until unmounted; once mounted it prints one line
//! `passthrough: mounted ...` on stdout.

#![deny(unsafe_code)]

mod fs;
mod powercut;
mod sys;

use std::path::{Path, PathBuf};
use std::process::exit;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "passthrough",
    about = "A logging-free FUSE passthrough of BACKING_DIR at MOUNTPOINT, optionally simulating power cuts",
    after_help = "Power-cut mode: writes stay pending in memory until fsync of their file. \
                  `touch MOUNTPOINT/.powercut` cuts the power: every later request gets EIO, a \
                  random subset of the pending 4 KiB pages is written (one perhaps torn at a \
                  512-byte sector), one line on stdout reports it, and the process exits; \
                  unmount the dead mount with `fusermount3 -uz MOUNTPOINT`."
)]
struct Args {
    /// The directory whose contents the mount shows.
    backing_dir: PathBuf,
    /// An empty directory to mount on.
    mountpoint: PathBuf,
    /// FUSE worker threads (smlogfs's default is 2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// The mount's readahead in KiB, as smlogfs sets it; 0 keeps the kernel's.
    #[arg(long, default_value_t = 4096)]
    read_ahead_kb: u64,
    /// Keep writes in memory until fsync and simulate power cuts (see below).
    #[arg(long)]
    powercut: bool,
    /// The seed of the power cut's random choices (default: from the clock, printed).
    #[arg(long, requires = "powercut")]
    seed: Option<u64>,
}

fn fail(what: String) -> ! {
    eprintln!("passthrough: {what}");
    exit(1)
}

/// As smlogfs does (src/cmd/mount.rs): the readahead of the mount's backing device, set
/// once the session answers (the kernel's INIT reply would lower an earlier value).
fn set_read_ahead(mnt: PathBuf, kb: u64) {
    std::thread::spawn(move || {
        let Ok(meta) = std::fs::metadata(&mnt) else {
            return;
        };
        let dev = std::os::unix::fs::MetadataExt::dev(&meta);
        let path = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            libc::major(dev),
            libc::minor(dev)
        );
        if let Err(e) = std::fs::write(&path, kb.to_string()) {
            eprintln!("passthrough: readahead left at the kernel's default: {path}: {e}");
        }
    });
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,fuser=error"))
        .init();
    let args = Args::parse();
    let backing = std::fs::canonicalize(&args.backing_dir).unwrap_or_else(|e| {
        fail(format!(
            "backing directory {}: {e}; give an existing directory",
            args.backing_dir.display()
        ))
    });
    if !backing.is_dir() {
        fail(format!("{} is not a directory", backing.display()));
    }
    let mnt = Path::new(&args.mountpoint);
    let powercut = args.powercut.then(|| {
        let seed = args.seed.unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(0, |d| d.as_nanos() as u64)
        });
        powercut::PowerCut::new(seed)
    });
    let mode = match &powercut {
        Some(pc) => format!("power-cut mode, seed {}", pc.seed()),
        None => "plain mode".to_string(),
    };
    let fs = fs::Passthrough::new(backing.clone(), powercut)
        .unwrap_or_else(|e| fail(format!("{}: {e}", backing.display())));
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(backing.display().to_string()),
        fuser::MountOption::Subtype("passthrough".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.n_threads = Some(usize::from(args.threads));
    config.clone_fd = args.threads > 1;
    // As root (like smlogfs), let every user in; the kernel checks permissions.
    if std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
    {
        config.acl = fuser::SessionACL::All;
    }
    let session = fuser::Session::new(fs, mnt, &config).unwrap_or_else(|e| {
        fail(format!(
            "mounting {} failed: {e}; it must be an existing empty directory, not mounted",
            mnt.display()
        ))
    });
    println!(
        "passthrough: mounted {} at {} (pid {}, {mode})",
        backing.display(),
        mnt.display(),
        std::process::id()
    );
    if args.read_ahead_kb > 0 {
        set_read_ahead(mnt.to_path_buf(), args.read_ahead_kb);
    }
    if let Err(e) = session.run() {
        fail(format!("the FUSE session ended with an error: {e}"));
    }
}

//! The `smlogfs` command: mkfs, mount, umount, status, fsck, inspect.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use smlogfs::cmd::{self, exit, parse_size, CliError};

/// Its error lines read `smlogfs: …` (docs/operations.md).
const PROGRAM: smlog_cli::Program = smlog_cli::Program::unlabelled("smlogfs");

#[derive(Parser)]
#[command(
    name = "smlogfs",
    version,
    about = "A FUSE file system that logs every operation's state machine before answering"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new volume in VOLDIR (backing files, superblock, state log ring).
    Mkfs {
        voldir: PathBuf,
        /// Usable size of the volume (suffixes K, M, G, T).
        #[arg(long, default_value = "1G")]
        size: String,
        /// Size of the state log ring.
        #[arg(long, default_value = "64M")]
        ring: String,
        /// Put the ring file here instead of VOLDIR/statelog (the volume remembers it).
        #[arg(long)]
        ring_file: Option<PathBuf>,
        /// Overwrite an existing volume.
        #[arg(long)]
        force: bool,
        /// Number of backing files: 3 or more = RAID-5 (the default, 4 members); 1 = a single file.
        #[arg(long, default_value_t = 4)]
        disks: u32,
        /// RAID-5 chunk size.
        #[arg(long, default_value = "64K")]
        chunk: String,
        /// RAID-5 hot spares.
        #[arg(long, default_value_t = 0)]
        spares: u32,
    },
    /// Recover if needed and mount VOLDIR at MOUNTPOINT.
    Mount {
        voldir: PathBuf,
        mountpoint: PathBuf,
        /// Stay in the foreground.
        #[arg(short, long)]
        foreground: bool,
        /// Mount options, comma-separated (see docs/operations.md).
        #[arg(short = 'o')]
        options: Vec<String>,
        #[command(flatten)]
        mirror: cmd::failover::MirrorArgs,
        /// Internal: recover from the mirror agent's copy only (set by takeover).
        #[arg(long, hide = true)]
        takeover: bool,
    },
    /// Replay the mirror agent's copy of the ring onto the volume (local ring lost or damaged).
    Recover {
        voldir: PathBuf,
        #[command(flatten)]
        mirror: cmd::failover::MirrorArgs,
    },
    /// On the peer: take a failed node's volume over (raise its epoch, replay from the mirror, mount).
    Takeover {
        voldir: PathBuf,
        mountpoint: PathBuf,
        #[arg(short = 'o')]
        options: Vec<String>,
        #[command(flatten)]
        mirror: cmd::failover::MirrorArgs,
    },
    /// On the peer: checkpoint, unmount and release the volume so its node can mount it again.
    Giveback { mountpoint: PathBuf },
    /// Unmount cleanly (final checkpoint) and wait for the daemon to exit.
    Umount { mountpoint: PathBuf },
    /// Emergency flush (power failing): ring, volume and mirror agent to disk now; prints the time taken.
    Flush { mountpoint: PathBuf },
    /// Check a volume offline: exit 0 clean, 1 problems found, 2 unreadable.
    Fsck { voldir: PathBuf },
    /// Print the state log ring in words and what recovery would do.
    Inspect { voldir: PathBuf },
    /// Show ops by state, ring, checkpoint, mirror, RAID: live from the daemon, else offline.
    Status {
        /// A mountpoint or a volume directory.
        target: PathBuf,
        /// One JSON object per refresh (fields in docs/operations.md).
        #[arg(long)]
        json: bool,
        /// Refresh in place until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// With --watch: stop after N refreshes.
        #[arg(long)]
        count: Option<u64>,
    },
}

fn size(flag: &str, s: &str) -> Result<u64, CliError> {
    parse_size(s).map_err(|e| CliError::new(exit::USAGE, format!("{flag}: {e}")))
}

fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        Command::Mkfs {
            voldir,
            size: sz,
            ring,
            ring_file,
            force,
            disks,
            chunk,
            spares,
        } => {
            let o = cmd::mkfs::MkfsOptions {
                size_bytes: size("--size", &sz)?,
                ring_bytes: size("--ring", &ring)?,
                ring_file,
                force,
                disks,
                chunk_bytes: size("--chunk", &chunk)?,
                spares,
            };
            println!("{}", cmd::mkfs::mkfs(&voldir, &o)?);
            Ok(exit::OK)
        }
        Command::Mount {
            voldir,
            mountpoint,
            foreground,
            options,
            mirror,
            takeover,
        } => {
            let o = cmd::mount::MountOptions {
                foreground,
                options,
                mirror,
                takeover,
            };
            cmd::mount::mount(&voldir, &mountpoint, &o)?;
            Ok(exit::OK)
        }
        Command::Recover { voldir, mirror } => {
            println!("{}", cmd::failover::recover(&voldir, &mirror)?);
            Ok(exit::OK)
        }
        Command::Takeover {
            voldir,
            mountpoint,
            options,
            mirror,
        } => {
            let o = cmd::mount::MountOptions {
                foreground: false,
                options,
                mirror,
                takeover: true,
            };
            cmd::mount::preflight(&voldir, &mountpoint, &o)?;
            let epoch = cmd::failover::take_ownership(&voldir, &o.mirror)?;
            cmd::mount::mount(&voldir, &mountpoint, &o)?;
            println!(
                "took {} over at epoch {epoch}; mounted at {}",
                voldir.display(),
                mountpoint.display()
            );
            Ok(exit::OK)
        }
        Command::Giveback { mountpoint } => {
            let voldir = cmd::mount::umount_volume(&mountpoint)?;
            let epoch = cmd::failover::release_ownership(&voldir)?;
            println!(
                "gave {} back: checkpointed, unmounted, released at epoch {epoch}",
                voldir.display()
            );
            Ok(exit::OK)
        }
        Command::Umount { mountpoint } => {
            cmd::mount::umount(&mountpoint)?;
            Ok(exit::OK)
        }
        Command::Flush { mountpoint } => cmd::flush::flush(&mountpoint),
        Command::Fsck { voldir } => Ok(cmd::fsck::fsck(&voldir)),
        Command::Status {
            target,
            json,
            watch,
            interval,
            count,
        } => {
            if !(0.05..=3600.0).contains(&interval) {
                return Err(CliError::new(
                    exit::USAGE,
                    format!("--interval {interval}: use 0.05 to 3600 seconds"),
                ));
            }
            let o = cmd::status::StatusOptions {
                json,
                watch,
                interval: std::time::Duration::from_secs_f64(interval),
                count,
            };
            cmd::status::status(&target, &o)
        }
        Command::Inspect { voldir } => {
            cmd::inspect::inspect(&voldir)?;
            Ok(exit::OK)
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    PROGRAM.main(|cli| run(cli).map(cmd::exit_status))
}

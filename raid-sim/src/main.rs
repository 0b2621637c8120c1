//! `raid-sim`: create, inspect, damage, scrub and repair RAID-5 volumes of smlogfs.
#![deny(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use raid_sim::format::MemberState;
use raid_sim::{
    in_use, inspect, member_name, CreateOptions, RaidOptions, VolumeError, REQUEST_FILE,
    SCRUB_REPORT_FILE,
};

mod cli;

use cli::bench::{bench, bench_volume};
use cli::failure::{exit, Failure};
use cli::offline_opts;
use cli::progress::Progress;
use cli::report::{status_json, status_text};

/// Error lines read `raid-sim: error: …`; the plumbing is shared with smlogfs (smlog-cli).
const PROGRAM: smlog_cli::Program = smlog_cli::Program::new("raid-sim");

#[derive(Parser)]
#[command(
    name = "raid-sim",
    version,
    about = "Userspace RAID-5 over backing files"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a RAID-5 volume (member-K.img, spare-J.img, raid.journal, raid.records) in VOLDIR.
    Create {
        voldir: PathBuf,
        /// Members holding data and parity (3 or more).
        #[arg(long, default_value_t = 4)]
        disks: u32,
        /// Chunk size in bytes (K, M suffixes allowed).
        #[arg(long, default_value = "64K", value_parser = parse_size)]
        chunk: u64,
        #[arg(long, default_value_t = 0)]
        spares: u32,
        /// Usable size in bytes (K, M, G suffixes allowed).
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        size: u64,
        /// Journal size in bytes.
        #[arg(long, default_value = "32M", value_parser = parse_size)]
        journal: u64,
        /// Rebuild rate limit in bytes per second stored in the superblocks (0 = none).
        #[arg(long, default_value = "0", value_parser = parse_size)]
        rebuild_rate: u64,
    },
    /// Show geometry, member states and rebuild progress (reads only).
    Status {
        voldir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Mark a member failed.
    Fail {
        voldir: PathBuf,
        /// Member index K (the file member-K.img).
        #[arg(long)]
        member: u32,
    },
    /// Flip the bits of bytes of a member file (silent corruption for tests and demos).
    Corrupt {
        voldir: PathBuf,
        /// Member index K (the file member-K.img).
        #[arg(long)]
        member: u32,
        /// Byte offset in the member file (data starts at 8192).
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        #[arg(long, default_value = "1", value_parser = parse_size)]
        len: u64,
    },
    /// Read every stripe, check checksums and parity, repair, report by member and offset.
    Scrub {
        voldir: PathBuf,
        /// Report only.
        #[arg(long)]
        no_repair: bool,
    },
    /// Rebuild member K onto a spare, onto PATH, or onto a new member file.
    Replace {
        voldir: PathBuf,
        /// Member index K to rebuild (failed first if it is not).
        #[arg(long)]
        member: u32,
        /// The replacement file (created; linked as member-K.img); default: a spare of the
        /// array, else a new member-K.img.
        #[arg(long)]
        with: Option<PathBuf>,
        /// Rebuild rate limit in bytes per second (K, M suffixes; 0 = none).
        #[arg(long, value_parser = parse_size)]
        rate: Option<u64>,
        /// Stripes between two progress checkpoints.
        #[arg(long, default_value_t = 256)]
        checkpoint_stripes: u64,
    },
    /// Measure XOR parity and checksum throughput (and, with --dir, volume I/O and rebuild).
    Bench {
        /// Input bytes to process per measurement.
        #[arg(long, default_value = "2G", value_parser = parse_size)]
        bytes: u64,
        #[arg(long, default_value_t = 4)]
        disks: u32,
        /// Also measure sequential I/O and rebuild of a RAID volume against a plain file,
        /// both created in this directory (removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Bytes written and read in the volume measurement.
        #[arg(long, default_value = "256M", value_parser = parse_size)]
        size: u64,
        /// Bytes per write/read call in the volume measurement.
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        io: u64,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let unit = s[i..].trim_end_matches(['B', 'b', 'i']);
            let m = match unit.to_ascii_uppercase().as_str() {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("unknown size unit in {s:?}")),
            };
            (&s[..i], m)
        }
    };
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn request(voldir: &Path, line: &str) -> Result<(), VolumeError> {
    let path = voldir.join(REQUEST_FILE);
    let tmp = voldir.join(format!("{REQUEST_FILE}.tmp"));
    std::fs::write(&tmp, format!("{line}\n")).map_err(|e| VolumeError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| VolumeError::io(&path, e))?;
    println!(
        "{}: in use by another process; request {line:?} handed to it (see `raid-sim status`)",
        voldir.display()
    );
    Ok(())
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.cmd {
        Cmd::Create {
            voldir,
            disks,
            chunk,
            spares,
            size,
            journal,
            rebuild_rate,
        } => {
            let opts = CreateOptions {
                capacity_bytes: size,
                disks,
                chunk_bytes: chunk,
                spares,
            };
            let ropts = RaidOptions {
                journal_bytes: journal,
                create_rebuild_rate_kib_s: (rebuild_rate / 1024).min(u32::MAX as u64) as u32,
                ..offline_opts()
            };
            if disks < 3 {
                return Err(Failure::new(exit::USAGE, format!("--disks {disks}: RAID-5 needs at least 3 (smlogfs mkfs --disks 1 makes a single file)")));
            }
            // Here a refused option is the command line's fault, not the array's.
            let vol = raid_sim::create_raid(&voldir, &opts, &ropts).map_err(|e| match e {
                VolumeError::Invalid { .. } => Failure::new(exit::USAGE, e.to_string()),
                e => e.into(),
            })?;
            let g = vol.geometry();
            println!(
                "created RAID-5 in {}: {} disks + {spares} spare(s), chunk {} bytes, {} usable bytes",
                voldir.display(),
                g.disks,
                g.chunk_bytes,
                g.capacity_bytes()
            );
            Ok(())
        }
        Cmd::Status { voldir, json } => {
            let i = inspect(&voldir)?;
            let busy = in_use(&voldir);
            if json {
                println!("{}", status_json(&i, busy));
            } else {
                print!("{}", status_text(&i, busy));
            }
            Ok(())
        }
        Cmd::Fail { voldir, member } => {
            let i = inspect(&voldir)?;
            if member >= i.geometry.disks {
                return Err(Failure::new(
                    exit::USAGE,
                    format!(
                        "{}: no member {member} in a {}-disk array; use --member 0 to {}",
                        voldir.display(),
                        i.geometry.disks,
                        i.geometry.disks - 1
                    ),
                ));
            }
            if in_use(&voldir) {
                return Ok(request(&voldir, &format!("fail {member}"))?);
            }
            let vol = raid_sim::open_raid(&voldir, &offline_opts())?;
            vol.fail_member(member, "failed on request (raid-sim fail)")?;
            println!(
                "{}: member {member} marked failed; the array runs degraded",
                voldir.display()
            );
            Ok(())
        }
        Cmd::Corrupt {
            voldir,
            member,
            offset,
            len,
        } => {
            let path = voldir.join(member_name(member));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| match (e.kind(), inspect(&voldir)) {
                    (_, Err(not @ VolumeError::NotAVolume { .. })) => not.into(),
                    (std::io::ErrorKind::NotFound, _) => Failure::new(
                        exit::MEMBER,
                        format!(
                            "{}: no such member file; check --member {member} \
                             (`raid-sim status {}` lists the members)",
                            path.display(),
                            voldir.display()
                        ),
                    ),
                    _ => Failure::io(&path, e),
                })?;
            let flen = file.metadata().map_err(|e| Failure::io(&path, e))?.len();
            if len == 0 || offset.checked_add(len).is_none_or(|end| end > flen) {
                return Err(Failure::new(
                    exit::USAGE,
                    format!(
                        "{}: range {offset}+{len} is outside the file ({flen} bytes); \
                         give --offset and --len within it",
                        path.display()
                    ),
                ));
            }
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| Failure::io(&path, e))?;
            for b in &mut buf {
                *b ^= 0xFF;
            }
            file.write_all_at(&buf, offset)
                .and_then(|_| file.sync_data())
                .map_err(|e| Failure::io(&path, e))?;
            println!(
                "flipped every bit of {len} byte(s) of {} at byte {offset}",
                path.display()
            );
            Ok(())
        }
        Cmd::Scrub { voldir, no_repair } => {
            if in_use(&voldir) {
                let report = voldir.join(SCRUB_REPORT_FILE);
                let _ = std::fs::remove_file(&report);
                request(&voldir, "scrub")?;
                let deadline = Instant::now() + Duration::from_secs(3600);
                while Instant::now() < deadline {
                    if let Ok(text) = std::fs::read_to_string(&report) {
                        print!("{text}");
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                return Err(Failure::new(
                    exit::DAEMON,
                    format!(
                        "{}: the process holding the array did not report its scrub within \
                         an hour; see its log and `raid-sim status VOLDIR`",
                        voldir.display()
                    ),
                ));
            }
            let vol = raid_sim::open_raid(&voldir, &offline_opts())?;
            let mut p = Progress::new("scrub");
            let rep = vol.scrub(!no_repair, |d, t| p.update(d, t))?;
            print!("{}", rep.to_text());
            if rep.unrepaired() > 0 {
                let how = if no_repair {
                    "run `raid-sim scrub VOLDIR` without --no-repair to repair what parity can"
                } else {
                    "parity cannot repair them: restore the data from a copy"
                };
                return Err(Failure::new(
                    exit::UNREPAIRED,
                    format!(
                        "{}: {} finding(s) not repaired (listed above, by member and byte); {how}",
                        voldir.display(),
                        rep.unrepaired()
                    ),
                ));
            }
            Ok(())
        }
        Cmd::Replace {
            voldir,
            member,
            with,
            rate,
            checkpoint_stripes,
        } => {
            if in_use(&voldir) {
                let line = match &with {
                    Some(p) => format!("replace {member} {}", p.display()),
                    None => format!("replace {member}"),
                };
                return Ok(request(&voldir, &line)?);
            }
            let ropts = RaidOptions {
                rebuild_rate_bytes_per_s: rate,
                rebuild_checkpoint_stripes: checkpoint_stripes.max(1),
                ..offline_opts()
            };
            let vol = raid_sim::open_raid(&voldir, &ropts)?;
            let g = vol.geometry();
            if member >= g.disks {
                return Err(Failure::new(
                    exit::USAGE,
                    format!(
                        "{}: no member {member} in a {}-disk array; use --member 0 to {}",
                        voldir.display(),
                        g.disks,
                        g.disks - 1
                    ),
                ));
            }
            match vol.rebuild_progress() {
                Some((m, s)) if m == member => {
                    log::info!("resuming the rebuild of member {m} at stripe {s}/{}", g.stripes)
                }
                Some((m, _)) => {
                    return Err(Failure::new(
                        exit::ARRAY,
                        format!(
                            "{}: member {m} is being rebuilt; finish that first (raid-sim replace {} --member {m})",
                            voldir.display(),
                            voldir.display()
                        ),
                    ))
                }
                None => {
                    if vol.member_states()[member as usize] != MemberState::Failed {
                        vol.fail_member(member, "replaced (raid-sim replace)")?;
                    }
                    vol.start_rebuild(member, with.as_deref())?;
                }
            }
            let mut p = Progress::new("rebuild");
            vol.run_rebuild(|d, t| p.update(d, t))?;
            if vol.rebuild_progress().is_some() || vol.is_degraded() {
                return Err(Failure::new(
                    exit::ARRAY,
                    format!(
                        "{}: the rebuild of member {member} did not complete; `raid-sim status {}` \
                         names the member that stopped it",
                        voldir.display(),
                        voldir.display()
                    ),
                ));
            }
            println!("member {member} rebuilt; the array is clean");
            Ok(())
        }
        Cmd::Bench {
            bytes,
            disks,
            dir,
            size,
            io,
        } => {
            bench(bytes, disks)?;
            match dir {
                Some(d) => bench_volume(&d, disks, size, io),
                None => Ok(()),
            }
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    PROGRAM.main(|cli| {
        run(cli)
            .map(|()| 0)
            .map_err(|f| smlog_cli::Failure::new(f.code, f.msg))
    })
}

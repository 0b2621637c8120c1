//! `raid-sim`: create, inspect, damage, scrub and repair RAID-5 volumes of smlogfs.
#![deny(unsafe_code)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use raid_sim::format::MemberState;
use raid_sim::{
    in_use, inspect, member_name, CreateOptions, Inspection, RaidOptions, VolumeError,
    REQUEST_FILE, SCRUB_REPORT_FILE,
};

/// Exit codes, one per kind of failure (docs/operations.md, "Exit codes"). A number means
/// the same in smlogfs, raid-sim and mirror-agent; 14 and 15 are raid-sim's own.
mod exit {
    /// `scrub` found damage it could not repair (the report names member and byte offset).
    pub const UNREPAIRED: u8 = 1;
    /// Bad command line (clap's errors too), a size that does not parse, a geometry that
    /// does not fit, a member index beyond the array, a byte range outside the member file.
    pub const USAGE: u8 = 2;
    /// VOLDIR holds no RAID-5 array (no member file with a valid superblock).
    pub const NOT_A_VOLUME: u8 = 3;
    /// Another process holds the array's lock and the command could not be handed to it.
    pub const BUSY: u8 = 6;
    /// A superblock, the journal or a block is damaged (file and byte offset named).
    pub const CORRUPT: u8 = 7;
    /// An I/O error on the named file.
    pub const IO: u8 = 9;
    /// The process holding the array took the request but did not report back.
    pub const DAEMON: u8 = 10;
    /// Permission denied on the named file.
    pub const PERMISSION: u8 = 13;
    /// The member file named by `--member` is missing or cannot be opened.
    pub const MEMBER: u8 = 14;
    /// The array refuses to start or to do what was asked: it would not survive it (two
    /// members down, nothing to rebuild from), a rebuild is unfinished, or it stopped after
    /// a failure.
    pub const ARRAY: u8 = 15;
}

/// A failed command: its exit code and its one-line message.
struct Failure {
    code: u8,
    msg: String,
}

impl Failure {
    fn new(code: u8, msg: impl Into<String>) -> Self {
        Failure {
            code,
            msg: msg.into(),
        }
    }

    /// An I/O error on `path` outside the volume layer.
    fn io(path: &Path, e: std::io::Error) -> Self {
        VolumeError::io(path, e).into()
    }
}

/// The one place where the volume layer's errors get their exit code and what to do.
impl From<VolumeError> for Failure {
    fn from(e: VolumeError) -> Self {
        use std::io::ErrorKind;
        let (code, hint) = match &e {
            VolumeError::Io { source, .. } if source.kind() == ErrorKind::PermissionDenied => (
                exit::PERMISSION,
                "run as the owner of the array's files (usually root) or give this user \
                 access (ls -l, chown, chmod)",
            ),
            VolumeError::Io { .. } => (
                exit::IO,
                "check the disk holding that file (dmesg, df) and run the command again",
            ),
            VolumeError::Corrupt { .. } => (
                exit::CORRUPT,
                "keep a copy of VOLDIR before anything else (docs/format-raid.md)",
            ),
            VolumeError::NotAVolume { .. } => (
                exit::NOT_A_VOLUME,
                "check the path; `raid-sim create VOLDIR` makes an array",
            ),
            VolumeError::InUse { .. } => (
                exit::BUSY,
                "run the command again: while another process holds the array, raid-sim \
                 hands fail, scrub and replace to it",
            ),
            VolumeError::Assembly { .. } => (
                exit::ARRAY,
                "do not force it: restore a member file if you can, then run the command \
                 again (docs/operations.md, \"A RAID member failed\")",
            ),
            VolumeError::Invalid { .. } | VolumeError::Poisoned => (
                exit::ARRAY,
                "see `raid-sim status VOLDIR` and docs/operations.md, \"A RAID member failed\"",
            ),
            VolumeError::OutOfRange { .. } => (exit::USAGE, "stay within the volume"),
        };
        Failure::new(code, format!("{e}; {hint}"))
    }
}

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

/// Progress of a rebuild or scrub: an `indicatif` bar on a terminal, a log line at every
/// tenth otherwise.
struct Progress {
    what: &'static str,
    bar: Option<indicatif::ProgressBar>,
    last_tenth: u64,
    started: Instant,
}

impl Progress {
    fn new(what: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} stripes ({eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b.set_message(what);
            b
        });
        Progress {
            what,
            bar,
            last_tenth: u64::MAX,
            started: Instant::now(),
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        let total = total.max(1);
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
            if done >= total {
                b.finish_and_clear();
            }
            return;
        }
        let tenth = done * 10 / total;
        if tenth != self.last_tenth {
            self.last_tenth = tenth;
            log::info!(
                "{}: {done}/{total} stripes ({}%), {:.1}s",
                self.what,
                done * 100 / total,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

fn offline_opts() -> RaidOptions {
    RaidOptions {
        background: false,
        ..RaidOptions::default()
    }
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

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The file that holds a member's data: the target when `member-K.img` is a link (as
/// `replace --with PATH` makes it), so that status names the file an operator must keep.
fn data_path(p: &Path) -> PathBuf {
    match p.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(p)
            .or_else(|_| std::fs::read_link(p))
            .unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
    }
}

fn status_json(i: &Inspection, busy: bool) -> String {
    let g = i.geometry;
    let members: Vec<String> = i
        .members
        .iter()
        .map(|m| {
            format!(
                "{{\"index\":{},\"path\":{},\"state\":{},\"problem\":{},\"events\":{}}}",
                m.index,
                json_str(&data_path(&m.path).display().to_string()),
                json_str(&m.state),
                m.problem.as_deref().map(json_str).unwrap_or("null".into()),
                m.events.map(|e| e.to_string()).unwrap_or("null".into())
            )
        })
        .collect();
    let spares: Vec<String> = i
        .spares
        .iter()
        .map(|p| json_str(&p.display().to_string()))
        .collect();
    let rebuild = match i.rebuild {
        None => "null".to_string(),
        Some((m, s)) => format!(
            "{{\"member\":{m},\"next_stripe\":{s},\"stripes\":{},\"percent\":{:.1}}}",
            g.stripes,
            s as f64 * 100.0 / g.stripes as f64
        ),
    };
    let journal = match &i.journal {
        Ok(j) => format!(
            "{{\"pending_records\":{},\"dirty_stripes\":{}}}",
            j.pending_records, j.dirty_stripes
        ),
        Err(e) => format!("{{\"error\":{}}}", json_str(e)),
    };
    let scrub = match raid_sim::scrub_progress(&i.dir) {
        None => "null".to_string(),
        Some((d, t)) => format!("{{\"next_stripe\":{d},\"stripes\":{t}}}"),
    };
    format!(
        "{{\"kind\":\"raid5\",\"array_id\":\"{:032x}\",\"disks\":{},\"chunk_bytes\":{},\"stripes\":{},\
         \"capacity_bytes\":{},\"events\":{},\"degraded\":{},\"in_use\":{busy},\"members\":[{}],\
         \"spares\":[{}],\"rebuild\":{rebuild},\"scrub\":{scrub},\"journal\":{journal},\"rebuild_rate_bytes_per_s\":{}}}",
        i.array_id,
        g.disks,
        g.chunk_bytes,
        g.stripes,
        g.capacity_bytes(),
        i.events,
        i.degraded(),
        members.join(","),
        spares.join(","),
        i.rebuild_rate_kib_s as u64 * 1024
    )
}

fn status_text(i: &Inspection, busy: bool) -> String {
    let g = i.geometry;
    let mut s = format!(
        "{}: RAID-5, {} disks, chunk {} bytes, {} stripes, {} usable bytes, events {}\n",
        i.dir.display(),
        g.disks,
        g.chunk_bytes,
        g.stripes,
        g.capacity_bytes(),
        i.events
    );
    s.push_str(&format!(
        "state: {}{}\n",
        if i.degraded() { "DEGRADED" } else { "clean" },
        if busy {
            " (in use by another process)"
        } else {
            ""
        }
    ));
    for m in &i.members {
        let target = data_path(&m.path);
        let link = if target != m.path {
            format!(" -> {}", target.display())
        } else {
            String::new()
        };
        s.push_str(&format!(
            "  member {} {}{link}: {}{}\n",
            m.index,
            m.path.display(),
            m.state,
            m.problem
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        ));
    }
    for p in &i.spares {
        s.push_str(&format!("  spare {}\n", p.display()));
    }
    for (p, why) in &i.ignored {
        s.push_str(&format!("  ignored {}: {why}\n", p.display()));
    }
    match i.rebuild {
        Some((m, next)) => s.push_str(&format!(
            "rebuild: member {m}, {next}/{} stripes ({:.1}%)\n",
            g.stripes,
            next as f64 * 100.0 / g.stripes as f64
        )),
        None => s.push_str("rebuild: none\n"),
    }
    if let Some((d, t)) = raid_sim::scrub_progress(&i.dir) {
        s.push_str(&format!("scrub: {d}/{t} stripes\n"));
    }
    match &i.journal {
        Ok(j) => s.push_str(&format!(
            "journal: {} record(s) to replay, {} stripe(s) in dirty regions to resync at the next assembly\n",
            j.pending_records, j.dirty_stripes
        )),
        Err(e) => s.push_str(&format!("journal: unreadable: {e}\n")),
    }
    s
}

fn bench(bytes: u64, disks: u32) -> Result<(), Failure> {
    if !(3..=16).contains(&disks) {
        return Err(Failure::new(
            exit::USAGE,
            format!("bench --disks {disks}: use 3 to 16"),
        ));
    }
    let chunk = 64 << 10;
    let data: Vec<Vec<u8>> = (0..disks - 1)
        .map(|d| {
            (0..chunk)
                .map(|i| (i * 31 + d as usize * 7) as u8)
                .collect()
        })
        .collect();
    let refs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
    let mut out = vec![0u8; chunk];
    let stripe_in = chunk as u64 * (disks as u64 - 1);
    let rounds = (bytes / stripe_in).max(1);
    let t = Instant::now();
    for _ in 0..rounds {
        raid_sim::parity::xor_many(&mut out, &refs);
        std::hint::black_box(&mut out);
    }
    let secs = t.elapsed().as_secs_f64();
    let xor_gbs = (rounds * stripe_in) as f64 / secs / 1e9;
    let t = Instant::now();
    let mut acc = 0u32;
    let crc_rounds = rounds.min(bytes / chunk as u64).max(1);
    for _ in 0..crc_rounds {
        for b in out.chunks(4096) {
            acc ^= raid_sim::format::block_crc(b);
        }
    }
    std::hint::black_box(acc);
    let crc_gbs = (crc_rounds * chunk as u64) as f64 / t.elapsed().as_secs_f64() / 1e9;
    println!(
        "xor parity: {xor_gbs:.2} GB/s of data input per core ({} data chunks of {} KiB per stripe, {:.2} GB in {secs:.2}s)",
        disks - 1,
        chunk >> 10,
        (rounds * stripe_in) as f64 / 1e9
    );
    // The same over buffers far larger than the caches: memory bandwidth bound.
    let big = 32usize << 20;
    let data: Vec<Vec<u8>> = (0..disks - 1).map(|d| vec![d as u8 + 1; big]).collect();
    let refs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
    let mut out = vec![0u8; big];
    let rounds = (bytes / (big as u64 * (disks as u64 - 1))).max(1);
    let t = Instant::now();
    for _ in 0..rounds {
        raid_sim::parity::xor_many(&mut out, &refs);
        std::hint::black_box(&mut out);
    }
    let big_gbs =
        (rounds * big as u64 * (disks as u64 - 1)) as f64 / t.elapsed().as_secs_f64() / 1e9;
    println!(
        "xor parity over {} x {} MiB buffers (memory bound): {big_gbs:.2} GB/s of data input",
        disks - 1,
        big >> 20
    );
    println!("crc32c block checksums: {crc_gbs:.2} GB/s per core");
    Ok(())
}

fn mb_s(bytes: u64, t: Instant) -> f64 {
    bytes as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// Sequential write and read of a plain file and of a RAID-5 volume of the same usable
/// size in `dir`, then an unthrottled rebuild of one member.
fn bench_volume(dir: &Path, disks: u32, size: u64, io: u64) -> Result<(), Failure> {
    use raid_sim::BlockVolume;
    if io == 0 || !io.is_multiple_of(4096) || size < io {
        return Err(Failure::new(
            exit::USAGE,
            format!("--io {io}: use a positive multiple of 4096 no larger than --size ({size})"),
        ));
    }
    let size = size / io * io;
    let work = dir.join(format!("raid-sim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| Failure::io(&work, e))?;
    let result = (|| -> Result<(), Failure> {
        let buf: Vec<u8> = (0..io).map(|i| (i * 131 % 251) as u8).collect();
        let mut back = vec![0u8; io as usize];
        // Native file.
        let native = work.join("native.img");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&native)
            .map_err(|e| Failure::io(&native, e))?;
        use std::os::unix::fs::FileExt;
        let t = Instant::now();
        for off in (0..size).step_by(io as usize) {
            f.write_all_at(&buf, off)
                .map_err(|e| Failure::io(&native, e))?;
        }
        f.sync_all().map_err(|e| Failure::io(&native, e))?;
        let native_w = mb_s(size, t);
        let t = Instant::now();
        for off in (0..size).step_by(io as usize) {
            f.read_exact_at(&mut back, off)
                .map_err(|e| Failure::io(&native, e))?;
        }
        let native_r = mb_s(size, t);
        drop(f);
        let _ = std::fs::remove_file(&native);
        // RAID-5.
        let vdir = work.join("raid");
        let opts = CreateOptions {
            capacity_bytes: size,
            disks,
            chunk_bytes: 64 << 10,
            spares: 0,
        };
        let vol = raid_sim::create_raid(&vdir, &opts, &offline_opts())?;
        let t = Instant::now();
        for off in (0..size).step_by(io as usize) {
            vol.write_at(off, &buf)?;
        }
        vol.flush()?;
        let raid_w = mb_s(size, t);
        let t = Instant::now();
        for off in (0..size).step_by(io as usize) {
            vol.read_at(off, &mut back)?;
        }
        let raid_r = mb_s(size, t);
        if back != buf {
            return Err(Failure::new(
                exit::CORRUPT,
                format!(
                    "{}: the RAID volume read back different data",
                    vdir.display()
                ),
            ));
        }
        vol.fail_member(1, "bench")?;
        vol.start_rebuild(1, None)?;
        let member_bytes = vol.geometry().stripes * vol.geometry().chunk_bytes;
        let t = Instant::now();
        vol.run_rebuild(|_, _| {})?;
        let rebuild = mb_s(member_bytes, t);
        println!("sequential, {} KiB per call, {} MiB:", io >> 10, size >> 20);
        println!("  native file  write {native_w:8.1} MB/s   read {native_r:8.1} MB/s");
        println!(
            "  raid5 x{disks}     write {raid_w:8.1} MB/s   read {raid_r:8.1} MB/s   ({:.2}x / {:.2}x of native)",
            raid_w / native_w,
            raid_r / native_r
        );
        println!(
            "  rebuild      {rebuild:8.1} MB/s of member data ({:.2}x of native write)",
            rebuild / native_w
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
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

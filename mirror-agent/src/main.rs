//! `mirror-agent`: keeps a copy of smlogfs state log entries for one or more volumes and
//! serves them back, so that a node's acknowledged operations survive the loss of the node.
//!
//! * `store` — per-volume segment files, epoch and checkpoint on disk;
//! * `session` — one connection: handshake, appends, acks, read-back, fencing, limits.
#![deny(unsafe_code)]

mod session;
mod store;

use clap::Parser;
use session::{Agent, Limits};
use smlog_cli::Failure;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::Volumes;

/// Exit codes, one per kind of failure (docs/operations.md, "Exit codes"). A number means
/// the same in smlogfs, raid-sim and mirror-agent; 16 to 18 are the agent's own.
mod exit {
    /// `--inspect` found a damaged volume (the report names it).
    pub const DAMAGED: u8 = 1;
    /// Bad command line (clap's errors too), a limit of 0.
    pub const USAGE: u8 = smlog_cli::exit::USAGE;
    /// Another mirror-agent already serves DIR.
    pub const BUSY: u8 = 6;
    /// An I/O error on the named file or directory.
    pub const IO: u8 = 9;
    /// Permission denied on DIR, a file in it, the secret file, or a port below 1024.
    pub const PERMISSION: u8 = 13;
    /// Cannot listen on an address: another process listens there, or it is not this host's.
    pub const ADDRESS: u8 = 16;
    /// The secret file is missing, cannot be read, or is empty.
    pub const SECRET: u8 = 17;
    /// DIR cannot be created, is not a directory, or is not writable (a read-only mount).
    pub const DIR: u8 = 18;
}

/// The one place an I/O error gets its exit code: permission denied is PERMISSION wherever
/// it happens, anything else is `code`. `what` says what failed, `fix` what to do.
fn io_failure(code: u8, what: String, e: &std::io::Error, fix: &str) -> Failure {
    if e.kind() == ErrorKind::PermissionDenied {
        return Failure::new(
            exit::PERMISSION,
            format!(
                "{what}: {e}; run as a user that may use it, or give this user access \
                 (ls -ld, chown, chmod)"
            ),
        );
    }
    Failure::new(code, format!("{what}: {e}; {fix}"))
}

/// Error lines read `mirror-agent: error: …`; the plumbing is shared with smlogfs (smlog-cli).
const PROGRAM: smlog_cli::Program = smlog_cli::Program::new("mirror-agent");

#[derive(Parser, Debug)]
#[command(
    name = "mirror-agent",
    version,
    about = "Mirror of smlogfs state logs, served over TCP"
)]
struct Args {
    /// Address to listen on; repeat for several routes (e.g. one per network).
    #[arg(long, required_unless_present = "inspect")]
    listen: Vec<SocketAddr>,
    /// Print what DIR holds (volumes, epochs, checkpoints, segments, damage) and exit
    /// without changing anything; exit status 1 if any volume is damaged.
    #[arg(long)]
    inspect: bool,
    /// Directory holding one sub-directory per volume.
    #[arg(long)]
    dir: PathBuf,
    /// File holding the shared secret; clients must prove it (and so must the agent).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Most connections served at once; further ones are refused with "busy".
    #[arg(long, default_value_t = 64)]
    max_connections: usize,
    /// Most volumes stored; a writer for a new volume beyond it is refused.
    #[arg(long, default_value_t = 256)]
    max_volumes: usize,
    /// Drop an authenticated connection silent for this long (clients heartbeat).
    #[arg(long, default_value_t = 15_000)]
    idle_timeout_ms: u64,
    /// Drop a connection whose frame or handshake stalls, or that stops reading, this long.
    #[arg(long, default_value_t = 5_000)]
    stall_timeout_ms: u64,
    /// fdatasync every batch before acknowledging it (default: written before the ack,
    /// synced in the background every --sync-interval-ms, or at once when a client asks).
    #[arg(long)]
    fsync: bool,
    /// How often the background sync runs; acks report what it made durable.
    #[arg(long, default_value_t = 1_000)]
    sync_interval_ms: u64,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    PROGRAM.main(run)
}

/// Serves until killed; `--inspect` returns its exit code.
fn run(args: Args) -> Result<u8, Failure> {
    if args.inspect {
        let damaged = inspect(&args.dir)?;
        return Ok(if damaged { exit::DAMAGED } else { 0 });
    }
    if args.max_connections == 0 || args.stall_timeout_ms == 0 || args.idle_timeout_ms == 0 {
        return Err(Failure::new(
            exit::USAGE,
            "--max-connections, --stall-timeout-ms and --idle-timeout-ms must be positive",
        ));
    }
    let secret = match &args.secret_file {
        Some(path) => Some(read_secret(path)?),
        None => None,
    };
    let lock = prepare_dir(&args.dir)?;
    let mut listeners = Vec::new();
    for addr in &args.listen {
        let listener = TcpListener::bind(addr).map_err(|e| {
            let what = format!("cannot listen on {addr}: {e}");
            let port = addr.port();
            match e.kind() {
                ErrorKind::AddrInUse => Failure::new(
                    exit::ADDRESS,
                    format!(
                        "{what}; stop what listens there (ss -ltnp 'sport = :{port}') or give \
                         another --listen port"
                    ),
                ),
                ErrorKind::AddrNotAvailable => Failure::new(
                    exit::ADDRESS,
                    format!("{what}; give an address of this host (ip -brief address)"),
                ),
                ErrorKind::PermissionDenied => Failure::new(
                    exit::PERMISSION,
                    format!(
                        "{what}; ports below 1024 need root (or CAP_NET_BIND_SERVICE): run \
                         as root or give a port of 1024 or more"
                    ),
                ),
                _ => Failure::new(exit::IO, format!("{what}; check the address")),
            }
        })?;
        listeners.push(listener);
    }
    let volumes = Volumes::new(args.dir.clone(), args.fsync, args.max_volumes);
    let opened = volumes.open_existing().map_err(|e| {
        io_failure(
            exit::IO,
            format!("cannot list {}", args.dir.display()),
            &e,
            "check the disk holding it (dmesg)",
        )
    })?;
    log::info!(
        "serving {opened} existing volume(s) from {}; {}; entries {} before ack",
        args.dir.display(),
        if secret.is_some() {
            "shared secret required"
        } else {
            "no shared secret"
        },
        if args.fsync {
            "fdatasync'ed"
        } else {
            "written (synced in the background)"
        }
    );
    let agent = Arc::new(Agent {
        secret,
        volumes,
        limits: Limits {
            idle_ms: args.idle_timeout_ms,
            stall_ms: args.stall_timeout_ms,
        },
    });
    // The first lines on stdout name the bound addresses (port 0 picks a free one),
    // written at once; a closed stdout later is no reason to stop serving.
    let mut banner = String::new();
    for listener in &listeners {
        let addr = listener.local_addr().map_err(|e| {
            io_failure(
                exit::IO,
                "cannot learn a listening address".into(),
                &e,
                "run the agent again",
            )
        })?;
        banner.push_str(&format!("mirror-agent listening on {addr}\n"));
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(banner.as_bytes())
        .and_then(|_| stdout.flush())
        .map_err(|e| {
            io_failure(
                exit::IO,
                "cannot write the listening addresses to stdout".into(),
                &e,
                "keep stdout open (a file or a pipe that is read)",
            )
        })?;
    drop(stdout);
    let no_thread = |e: std::io::Error| {
        io_failure(
            exit::IO,
            "cannot start a thread".into(),
            &e,
            "raise the process or memory limits (ulimit -u, -v)",
        )
    };

    let flusher = Arc::clone(&agent);
    let interval = Duration::from_millis(args.sync_interval_ms.max(10));
    std::thread::Builder::new()
        .name("sync".into())
        .spawn(move || loop {
            flusher.volumes.wait_for_kick(interval);
            flusher.volumes.sync_all();
        })
        .map_err(no_thread)?;

    let active = Arc::new(AtomicUsize::new(0));
    let mut acceptors = Vec::new();
    for listener in listeners {
        let agent = Arc::clone(&agent);
        let active = Arc::clone(&active);
        let max = args.max_connections;
        acceptors.push(
            std::thread::Builder::new()
                .name("accept".into())
                .spawn(move || accept_loop(listener, agent, active, max))
                .map_err(no_thread)?,
        );
    }
    for a in acceptors {
        let _ = a.join();
    }
    drop(lock);
    Ok(0)
}

/// The shared secret in `path`.
fn read_secret(path: &Path) -> Result<Vec<u8>, Failure> {
    smlog_wire::auth::read_secret_file(path).map_err(|msg| {
        // The wire crate says what is wrong in words; the kind of error decides the code.
        let denied = matches!(File::open(path), Err(e) if e.kind() == ErrorKind::PermissionDenied);
        if denied {
            Failure::new(
                exit::PERMISSION,
                format!("{msg}; run as a user that may read it, or give this user access (ls -l, chown, chmod)"),
            )
        } else {
            Failure::new(
                exit::SECRET,
                format!("{msg}; write the shared secret into it, the same as the smlogfs node's --secret-file"),
            )
        }
    })
}

/// Prints every volume under `dir`; returns whether any is damaged.
fn inspect(dir: &Path) -> Result<bool, Failure> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| {
            io_failure(
                exit::DIR,
                format!("cannot list --dir {}", dir.display()),
                &e,
                "give the agent's --dir (the directory holding vol-* directories)",
            )
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vol-"))
        .collect();
    names.sort();
    let mut damaged = false;
    let mut out = String::new();
    for name in &names {
        let Some(volume_id) = store::parse_hex(&name["vol-".len()..]) else {
            out.push_str(&format!("{name}: not a volume directory name\n"));
            continue;
        };
        match store::VolumeStore::inspect(dir, volume_id) {
            Ok(volume) => out.push_str(&volume.describe()),
            Err(e) => {
                damaged = true;
                out.push_str(&format!("volume {}: DAMAGED: {e}\n", &name["vol-".len()..]));
            }
        }
    }
    out.push_str(&format!(
        "{} volume(s) in {}{}\n",
        names.len(),
        dir.display(),
        if damaged { "; some DAMAGED" } else { "" }
    ));
    std::io::stdout().write_all(out.as_bytes()).map_err(|e| {
        io_failure(
            exit::IO,
            "cannot write the report to stdout".into(),
            &e,
            "keep stdout open",
        )
    })?;
    Ok(damaged)
}

/// Creates DIR if needed, proves it writable, and takes its lock so that two agents never
/// share one directory. The returned file holds the lock for the life of the process.
fn prepare_dir(dir: &Path) -> Result<File, Failure> {
    let elsewhere = "give another --dir, or move what is in the way";
    fs::create_dir_all(dir).map_err(|e| {
        io_failure(
            exit::DIR,
            format!("cannot create --dir {}", dir.display()),
            &e,
            elsewhere,
        )
    })?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    let written = File::create(&probe)
        .and_then(|mut f| f.write_all(b"probe").and_then(|_| f.sync_all()))
        .and_then(|_| fs::remove_file(&probe));
    written.map_err(|e| {
        io_failure(
            exit::DIR,
            format!("--dir {} is not writable", dir.display()),
            &e,
            "give a directory on a writable file system with free space",
        )
    })?;
    let lock_path = dir.join("agent.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            io_failure(
                exit::IO,
                format!("cannot open {}", lock_path.display()),
                &e,
                "check the disk holding it (dmesg)",
            )
        })?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(Failure::new(
            exit::BUSY,
            format!(
                "another mirror-agent is already using {}; stop it (systemctl stop \
                 mirror-agent) or give another --dir",
                dir.display()
            ),
        )),
        Err(fs::TryLockError::Error(e)) => Err(io_failure(
            exit::IO,
            format!("cannot lock {}", lock_path.display()),
            &e,
            "put --dir on a local file system that supports flock",
        )),
    }
}

fn accept_loop(listener: TcpListener, agent: Arc<Agent>, active: Arc<AtomicUsize>, max: usize) {
    for incoming in listener.incoming() {
        let stream = match incoming {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(_) => continue,
        };
        if active.fetch_add(1, Ordering::SeqCst) >= max {
            active.fetch_sub(1, Ordering::SeqCst);
            log::warn!("{peer}: refused: at the limit of {max} connections");
            refuse_busy(stream, max);
            continue;
        }
        let agent = Arc::clone(&agent);
        let done = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{peer}"))
            .spawn(move || {
                session::serve(&agent, stream, peer);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            log::error!("{peer}: cannot start a thread: {e}");
        }
    }
}

fn refuse_busy(stream: TcpStream, max: usize) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let message = smlog_wire::Message::Error {
        code: smlog_wire::ErrorCode::Busy,
        a: max as u64,
        b: 0,
        reason: format!("agent busy: at its limit of {max} connections"),
    };
    // Sent before the client's Hello is read: in the version every client reads.
    let oldest = smlog_wire::Version::OLDEST;
    let _ = smlog_wire::conn::write_frame_as(&mut &stream, oldest, &[0; 16], &message);
}

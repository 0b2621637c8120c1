//! `mirror-agent`: keeps a copy of smlogfs state log entries for one or more volumes and
//! serves them back, so that a node's acknowledged operations survive the loss of the node.
//!
//! * `store` — per-volume segment files, epoch and checkpoint on disk;
//! * `session` — one connection: handshake, appends, acks, read-back, fencing, limits.
#![deny(unsafe_code)]

mod session;
mod store;

use anyhow::{bail, Context, Result};
use clap::Parser;
use session::{Agent, Limits};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::Volumes;

#[derive(Parser, Debug)]
#[command(
    name = "mirror-agent",
    about = "Mirror of smlogfs state logs, served over TCP"
)]
struct Args {
    /// Address to listen on; repeat for several routes (e.g. one per network).
    #[arg(long, required_unless_present = "inspect")]
    listen: Vec<SocketAddr>,
    /// Print what DIR holds (volumes, epochs, checkpoints, segments, damage) and exit
    /// without changing anything; exit status 2 if any volume is damaged.
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
    /// synced in the background every --sync-interval-ms).
    #[arg(long)]
    fsync: bool,
    #[arg(long, default_value_t = 1_000)]
    sync_interval_ms: u64,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("mirror-agent: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    if args.inspect {
        let damaged = inspect(&args.dir)?;
        std::process::exit(if damaged { 2 } else { 0 });
    }
    if args.max_connections == 0 || args.stall_timeout_ms == 0 || args.idle_timeout_ms == 0 {
        bail!("--max-connections, --stall-timeout-ms and --idle-timeout-ms must be positive");
    }
    let secret = match &args.secret_file {
        Some(path) => Some(smlog_wire::auth::read_secret_file(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let lock = prepare_dir(&args.dir)?;
    let mut listeners = Vec::new();
    for addr in &args.listen {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(listener);
    }
    let volumes = Volumes::new(args.dir.clone(), args.fsync, args.max_volumes);
    let opened = volumes
        .open_existing()
        .with_context(|| format!("cannot list {}", args.dir.display()))?;
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
        banner.push_str(&format!(
            "mirror-agent listening on {}\n",
            listener.local_addr()?
        ));
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(banner.as_bytes())
        .and_then(|_| stdout.flush())
        .context("cannot write the listening addresses to stdout")?;
    drop(stdout);

    let flusher = Arc::clone(&agent);
    let interval = Duration::from_millis(args.sync_interval_ms.max(10));
    std::thread::Builder::new()
        .name("sync".into())
        .spawn(move || loop {
            flusher.volumes.wait_for_kick(interval);
            flusher.volumes.sync_all();
        })?;

    let active = Arc::new(AtomicUsize::new(0));
    let mut acceptors = Vec::new();
    for listener in listeners {
        let agent = Arc::clone(&agent);
        let active = Arc::clone(&active);
        let max = args.max_connections;
        acceptors.push(
            std::thread::Builder::new()
                .name("accept".into())
                .spawn(move || accept_loop(listener, agent, active, max))?,
        );
    }
    for a in acceptors {
        let _ = a.join();
    }
    drop(lock);
    Ok(())
}

/// Prints every volume under `dir`; returns whether any is damaged.
fn inspect(dir: &std::path::Path) -> Result<bool> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("cannot list --dir {}", dir.display()))?
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
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(damaged)
}

/// Creates DIR if needed, proves it writable, and takes its lock so that two agents never
/// share one directory. The returned file holds the lock for the life of the process.
fn prepare_dir(dir: &PathBuf) -> Result<File> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create --dir {}", dir.display()))?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    let written = File::create(&probe)
        .and_then(|mut f| f.write_all(b"probe").and_then(|_| f.sync_all()))
        .and_then(|_| fs::remove_file(&probe));
    written.with_context(|| format!("--dir {} is not writable", dir.display()))?;
    let lock_path = dir.join("agent.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => {
            bail!("another mirror-agent is already using {}", dir.display())
        }
        Err(fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
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
    let _ = smlog_wire::conn::write_frame(&mut &stream, &[0; 16], &message);
}

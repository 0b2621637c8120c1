//! Test harness: the real `mirror-agent` binary as a child process, raw TCP connections
//! for hostile input, and a cuttable TCP proxy for route fail-over (fault injection).
#![allow(dead_code)]

use smlog_wire::conn::{write_frame, write_frame_as, FrameReader};
use smlog_wire::{Frame, Message, MirrorClient, MirrorConfig, Version, VolumeId};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A running agent; killed (SIGKILL) and reaped on drop, even when a test fails.
pub struct AgentProc {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Every listening address (`addr` first); more with extra `--listen` arguments.
    pub addrs: Vec<SocketAddr>,
    pub dir: PathBuf,
    pub log: PathBuf,
    extra: Vec<String>,
}

impl AgentProc {
    pub fn start(dir: &Path, extra: &[&str]) -> AgentProc {
        Self::start_at("127.0.0.1:0".parse().unwrap(), dir, extra)
    }

    pub fn start_at(listen: SocketAddr, dir: &Path, extra: &[&str]) -> AgentProc {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let log = dir.with_extension(format!("log-{}", listen.port()));
        let (child, addrs) = spawn(listen, dir, &extra, &log);
        AgentProc {
            child: Some(child),
            addr: addrs[0],
            addrs,
            dir: dir.to_path_buf(),
            log,
            extra,
        }
    }

    /// An agent on the `agent` subdirectory of a new temporary directory, which lives as
    /// long as the returned guard.
    pub fn in_tempdir(extra: &[&str]) -> (tempfile::TempDir, AgentProc) {
        let tmp = tempfile::tempdir().unwrap();
        let agent = AgentProc::start(&tmp.path().join("agent"), extra);
        (tmp, agent)
    }

    /// The test config (epoch 1) for `vol` on this agent, and a writer connected with it.
    pub fn writer(&self, vol: VolumeId) -> (MirrorConfig, MirrorClient) {
        let cfg = config(vec![self.addr], vol, 1);
        let client = MirrorClient::connect(cfg.clone()).unwrap();
        (cfg, client)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the agent and starts it again on the same address and directory.
    pub fn restart(&mut self) {
        self.kill();
        let (child, addrs) = spawn(self.addr, &self.dir, &self.extra, &self.log);
        assert_eq!(addrs[0], self.addr);
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("agent running")
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent's log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the agent; returns it and every address it reports listening on, in order.
fn spawn(listen: SocketAddr, dir: &Path, extra: &[String], log: &Path) -> (Child, Vec<SocketAddr>) {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("agent log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mirror-agent"))
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .expect("spawn mirror-agent");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    // Reads every line until the agent exits, so the agent never writes into a closed pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let listens = 1 + extra.iter().filter(|a| *a == "--listen").count();
    let mut addrs = Vec::new();
    for _ in 0..listens {
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "mirror-agent did not report its addresses; log: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        };
        match line.trim().rsplit(' ').next().and_then(|a| a.parse().ok()) {
            Some(addr) => addrs.push(addr),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "unexpected line {line:?}; log: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            }
        }
    }
    (child, addrs)
}

/// Every segment file of `vol` under the agent's `dir`, one after the other: what the
/// agent wrote for the volume.
pub fn segment_bytes(dir: &Path, vol: &VolumeId) -> Vec<u8> {
    let hex: String = vol.iter().map(|b| format!("{b:02x}")).collect();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join(format!("vol-{hex}")))
        .expect("volume directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| std::fs::read(p).expect("segment file"))
        .collect()
}

pub fn volume(n: u8) -> VolumeId {
    let mut v = [0xa5u8; 16];
    v[0] = n;
    v
}

/// A client config with short heartbeat and detection times, to keep tests quick.
pub fn config(routes: Vec<SocketAddr>, vol: VolumeId, epoch: u64) -> MirrorConfig {
    let mut cfg = MirrorConfig::new(routes, vol, "node-test", epoch);
    cfg.heartbeat_ms = 100;
    cfg.timeout_ms = 1500;
    cfg
}

/// Deterministic entry bytes of varying length, tagged so that volumes can be told apart.
pub fn entry(tag: &str, seq: u64) -> Vec<u8> {
    let len = (seq * 37 % 700) as usize;
    let mut bytes = format!("{tag}:{seq}:").into_bytes();
    bytes.extend((0..len).map(|i| (seq as usize + i) as u8));
    bytes
}

pub fn entries(tag: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
    seqs.map(|s| (s, entry(tag, s))).collect()
}

/// How long a test waits for the agent to answer, acknowledge or apply something.
pub const WAIT: Duration = Duration::from_secs(10);

/// Submits every entry in order; the client queues them, nothing waits for the agent.
pub fn submit_all(client: &MirrorClient, items: &[(u64, Vec<u8>)]) {
    for (seq, bytes) in items {
        client.submit(*seq, bytes.clone()).unwrap();
    }
}

/// Submits `items` and waits until the agent has acknowledged the last of them.
pub fn submit_acked(client: &MirrorClient, items: &[(u64, Vec<u8>)]) {
    submit_all(client, items);
    let (last, _) = items.last().expect("at least one entry to submit");
    client.wait_acked(*last, WAIT).unwrap();
}

/// Everything the agent holds for `cfg`'s volume, read back over a connection of its own.
pub fn read_all(cfg: &MirrorConfig) -> Vec<(u64, Vec<u8>)> {
    MirrorClient::read_back(cfg, 0).unwrap()
}

/// Polls `cond` every 20 ms for up to `WAIT`; panics with `what()` when it never holds.
#[track_caller]
pub fn wait_until(what: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A hand-driven connection for hostile and protocol-level tests.
pub struct RawConn {
    pub stream: TcpStream,
    reader: FrameReader,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        RawConn {
            stream,
            reader: FrameReader::new(),
        }
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        // The agent may already have closed; a failed write is then expected.
        let _ = self.stream.write_all(bytes);
    }

    pub fn send(&mut self, vol: &VolumeId, message: &Message) {
        let _ = write_frame(&mut self.stream, vol, message);
    }

    /// `send` in another wire version (an older client).
    pub fn send_as(&mut self, version: Version, vol: &VolumeId, message: &Message) {
        let _ = write_frame_as(&mut self.stream, version, vol, message);
    }

    /// The next message, or None when the connection ended or `timeout` passed.
    pub fn recv(&mut self, timeout: Duration) -> Option<Message> {
        self.recv_frame(timeout).map(|f| f.message)
    }

    /// The next message other than a heartbeat (which the agent sends when it has been
    /// quiet for the Hello's `heartbeat_ms`).
    pub fn recv_no_heartbeat(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left)? {
                Message::Heartbeat { .. } => continue,
                other => return Some(other),
            }
        }
    }

    /// The next whole frame (with its version), or None as for `recv`.
    pub fn recv_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.reader.next_buffered() {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(_) => return None,
            }
            if Instant::now() >= deadline || self.read_more() == Filled::Closed {
                return None;
            }
        }
    }

    /// Reads until the agent closes the connection; returns the messages seen on the way,
    /// or None if it was still open after `timeout`.
    pub fn wait_closed(&mut self, timeout: Duration) -> Option<Vec<Message>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            while let Ok(Some(frame)) = self.reader.next_buffered() {
                seen.push(frame.message);
            }
            if Instant::now() >= deadline {
                return None;
            }
            if self.read_more() == Filled::Closed {
                return Some(seen);
            }
        }
    }

    /// One read from the socket into the frame reader (its timeout bounds the wait).
    fn read_more(&mut self) -> Filled {
        match self.reader.fill(&mut self.stream) {
            Ok(0) => Filled::Closed,
            Ok(_) => Filled::Data,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Filled::Nothing
            }
            Err(_) => {
                // Reset by the peer: closed. Drain anything left unparsed.
                let _ = self.stream.read(&mut [0u8; 4096]);
                Filled::Closed
            }
        }
    }

    /// Sends an append of `entries` and returns the agent's answer.
    pub fn append(&mut self, vol: &VolumeId, entries: Vec<(u64, Vec<u8>)>) -> Option<Message> {
        self.send_entries(vol, entries);
        self.recv(WAIT)
    }

    /// Sends an append of `entries` without waiting for an answer.
    pub fn send_entries(&mut self, vol: &VolumeId, entries: Vec<(u64, Vec<u8>)>) {
        self.send(vol, &Message::Append { entries });
    }

    /// Hello without a secret; returns the agent's answer.
    pub fn hello(&mut self, vol: &VolumeId, epoch: u64, writer: bool) -> Option<Message> {
        self.send(
            vol,
            &Message::Hello {
                epoch,
                mode: if writer {
                    smlog_wire::Mode::Writer
                } else {
                    smlog_wire::Mode::Reader
                },
                heartbeat_ms: 200,
                client_nonce: [9; 32],
                node: "raw".into(),
            },
        );
        self.recv(Duration::from_secs(5))
    }
}

/// What one read from a raw connection brought.
#[derive(Debug, PartialEq, Eq)]
enum Filled {
    Data,
    Nothing,
    Closed,
}

/// A TCP proxy in front of the agent whose connections can be cut at once: a route that
/// fails (fault injection over real TCP).
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (cut2, streams2) = (Arc::clone(&cut), Arc::clone(&streams));
        let frozen2 = Arc::clone(&frozen);
        std::thread::spawn(move || {
            for incoming in listener.incoming() {
                let Ok(client) = incoming else { continue };
                if cut2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(target) else {
                    continue;
                };
                let mut list = streams2.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(upstream.try_clone().unwrap());
                drop(list);
                pump(
                    client.try_clone().unwrap(),
                    upstream.try_clone().unwrap(),
                    Arc::clone(&frozen2),
                );
                pump(upstream, client, Arc::clone(&frozen2));
            }
        });
        Proxy {
            addr,
            cut,
            frozen,
            streams,
        }
    }

    /// Black-holes the route: connections stay open but every byte is silently dropped,
    /// so only heartbeat timeouts can tell.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Breaks every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, frozen: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if frozen.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

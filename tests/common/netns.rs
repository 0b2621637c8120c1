//! A second "host" for tests that need one: a network namespace joined to the root namespace
//! by veth pairs ([`Host`]), and a `mirror-agent` running inside it ([`Agent`]). The smlogfs
//! daemon and its mount stay in the root namespace and reach the agent over real TCP.
//!
//! Each `Host` has its own namespace (`smlg-<random>`) and takes a /24 of 10.x per veth pair
//! that no interface uses; dropping it deletes the links and the namespace, dropping an
//! `Agent` kills it, also when the test panicked. Needs root, `ip`, and the `mirror-agent`
//! binary next to the smlogfs one (`cargo build --release --workspace`).
//!
//! Items a test binary does not use are covered by the `dead_code` allow of `common`.

use super::{describe, run, smlogfs_bin};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// Port the agent listens on inside its namespace (each test has its own namespace).
pub const AGENT_PORT: u16 = 7700;

/// `mirror-agent` next to the smlogfs binary.
pub fn agent_bin() -> PathBuf {
    let p = Path::new(smlogfs_bin()).with_file_name("mirror-agent");
    assert!(
        p.exists(),
        "{} not found: build it with `cargo build --release --workspace` \
         (or `cargo build --release -p mirror-agent`) into the same target directory",
        p.display()
    );
    p
}

// ----- the second host: a network namespace with veth links -----

/// One veth pair: `root_if` (root namespace, `root_ip`) to `ns_if` (the namespace, `ns_ip`).
pub struct Link {
    pub root_if: String,
    pub ns_if: String,
    pub root_ip: String,
    pub ns_ip: String,
}

/// A network namespace standing for host B, joined to the root namespace by veth pairs.
pub struct Host {
    pub ns: String,
    pub links: Vec<Link>,
}

/// Serialises address allocation between the tests of this binary.
static NET_ALLOC: Mutex<()> = Mutex::new(());

pub fn ip(args: &[&str]) -> std::process::Output {
    run(Command::new("ip").args(args))
}

pub fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        describe(&out)
    );
}

impl Host {
    /// A namespace with `routes` veth pairs, each in a /24 of 10.x that no interface uses.
    pub fn new(routes: usize) -> Host {
        let _guard = NET_ALLOC.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = StdRng::from_entropy();
        let tag: String = format!("{:06x}", rng.gen::<u32>() & 0xff_ffff);
        let mut host = Host {
            ns: format!("smlg-{tag}"),
            links: Vec::new(),
        };
        ip_ok(&["netns", "add", &host.ns]);
        ip_ok(&["-n", &host.ns, "link", "set", "lo", "up"]);
        for i in 0..routes {
            let used =
                String::from_utf8_lossy(&ip(&["-4", "-o", "addr", "show"]).stdout).into_owned();
            let net = loop {
                let net = format!("10.{}.{}", rng.gen_range(100..250), rng.gen_range(1..255));
                if !used.contains(&format!(" {net}.")) {
                    break net;
                }
            };
            let link = Link {
                root_if: format!("smf{tag}r{i}"),
                ns_if: format!("smf{tag}n{i}"),
                root_ip: format!("{net}.1"),
                ns_ip: format!("{net}.2"),
            };
            ip_ok(&[
                "link",
                "add",
                &link.root_if,
                "type",
                "veth",
                "peer",
                "name",
                &link.ns_if,
                "netns",
                &host.ns,
            ]);
            host.links.push(link);
            let link = host.links.last().unwrap();
            ip_ok(&[
                "addr",
                "add",
                &format!("{}/24", link.root_ip),
                "dev",
                &link.root_if,
            ]);
            ip_ok(&["link", "set", &link.root_if, "up"]);
            ip_ok(&[
                "-n",
                &host.ns,
                "addr",
                "add",
                &format!("{}/24", link.ns_ip),
                "dev",
                &link.ns_if,
            ]);
            ip_ok(&["-n", &host.ns, "link", "set", &link.ns_if, "up"]);
        }
        host
    }

    /// `NS_IP:PORT` of route `i`, as `--mirror` takes it.
    pub fn addr(&self, i: usize) -> String {
        format!("{}:{AGENT_PORT}", self.links[i].ns_ip)
    }

    /// Every route, comma-separated in order.
    pub fn mirror_list(&self) -> String {
        (0..self.links.len())
            .map(|i| self.addr(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Takes route `i` down on host B's side (`ip -n NS link set IF down`).
    pub fn route_down(&self, i: usize) {
        ip_ok(&["-n", &self.ns, "link", "set", &self.links[i].ns_if, "down"]);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = ip(&["link", "del", &l.root_if]);
        }
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

// ----- the mirror agent on host B -----

/// A `mirror-agent` inside a [`Host`]'s namespace, listening on every route of it.
pub struct Agent {
    ns: String,
    listen: Vec<String>,
    /// The agent's `--dir`.
    pub dir: PathBuf,
    /// Its stderr, appended to by every (re)start: DIR with the extension `.log`.
    pub log: PathBuf,
    secret: Option<PathBuf>,
    child: Option<Child>,
}

impl Agent {
    /// Starts `mirror-agent --listen … --dir DIR` inside `host`'s namespace on every route.
    pub fn start(host: &Host, dir: &Path, secret: Option<&Path>) -> Agent {
        fs::create_dir_all(dir).unwrap();
        let mut a = Agent {
            ns: host.ns.clone(),
            listen: (0..host.links.len()).map(|i| host.addr(i)).collect(),
            dir: dir.to_path_buf(),
            log: dir.with_extension("log"),
            secret: secret.map(Path::to_path_buf),
            child: None,
        };
        a.restart();
        a
    }

    /// (Re)starts the agent on the same DIR and addresses; returns once it listens.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(agent_bin());
        for l in &self.listen {
            cmd.arg("--listen").arg(l);
        }
        cmd.arg("--dir").arg(&self.dir);
        if let Some(s) = &self.secret {
            cmd.arg("--secret-file").arg(s);
        }
        // `ip netns exec` execs the agent: the child's pid is the agent's.
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start mirror-agent");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in &self.listen {
            match lines.next() {
                Some(Ok(l)) if l.contains("listening on") => {}
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mirror-agent did not start ({other:?}); its log:\n{}",
                        fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
            }
        }
        self.child = Some(child);
    }

    /// `kill -9` of the agent; returns once it is reaped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `mirror-agent --inspect --dir DIR` (read-only; works while the agent runs).
    pub fn inspect(&self) -> String {
        let out = run(Command::new(agent_bin())
            .arg("--inspect")
            .arg("--dir")
            .arg(&self.dir));
        assert!(
            out.status.success(),
            "mirror-agent --inspect: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The epoch of the (first) volume the agent holds, from `--inspect`: a takeover raises
    /// it, fencing the old owner.
    pub fn epoch(&self) -> Option<u64> {
        self.volume_number_after(": epoch ")
    }

    /// The last seq the agent holds of its (first) volume, from `--inspect`.
    pub fn last_seq(&self) -> Option<u64> {
        self.volume_number_after("..=")
    }

    /// The number that follows `key` on the first `volume ` line of `--inspect`.
    fn volume_number_after(&self, key: &str) -> Option<u64> {
        let out = self.inspect();
        let line = out.lines().find(|l| l.starts_with("volume "))?;
        let (_, rest) = line.split_once(key)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

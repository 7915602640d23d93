//! Data-plane figures (issue 4): iperf3 TCP throughput, CPU seconds per gigabit and RSS of
//! tailrouter against Go tailscaled v1.98.5, of Go tailscaled against itself, and of Debian's
//! wireguard-go against itself, side by side in one run over the same kind of namespaces (one
//! rig: every host is a namespace with a veth into the same bridge).
//!
//! Run as root, against a release build of tailrouter (the bench refuses a debug path):
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-bench cargo build --release -p tailrouter &&
//!   TAILROUTER_BIN=/work/target-bench/release/tailrouter cargo bench -p interop --bench dataplane
//! ```
//!
//! Each pair is measured with iperf3 TCP for 10 s, three times, the pairs interleaved
//! (A, B, C, D, A, B, C, D, …) so that the machine's load falls on all of them alike. The
//! iperf3 server runs in the receiver's namespace bound to its tunnel address, the client in
//! the sender's. Tailscale nodes use the direct UDP path (the bench waits for it on both ends
//! and checks it again at the end). CPU time is `utime + stime` of each daemon from
//! `/proc/<pid>/stat` around each run; RSS is `VmRSS` and `VmHWM` from `/proc/<pid>/status`,
//! idle (after join and path discovery, before any iperf3 traffic) and under load (`VmRSS`
//! sampled every 100 ms during the runs, and `VmHWM` at the end). It prints Markdown; the
//! results are kept in `docs/benchmarks/dataplane.md`.

use interop::bench::{
    Daemon, clk_tck, cpu_ticks, daemon, first_line, iperf_result, loadavg, median, mib, peer,
    release_bin, status_kb, wait_direct,
};
use interop::{Error, Host, Result, Rig, TailnetNode, run, wait_for};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds per iperf3 run.
const SECS: u32 = 10;
/// Runs per pair.
const REPS: usize = 3;
/// Bound on every wait for the rig.
const LIMIT: Duration = Duration::from_secs(60);
/// How to run this bench, for failure messages.
const HOW: &str = "CARGO_TARGET_DIR=/work/target-bench cargo build --release -p tailrouter && \
     TAILROUTER_BIN=/work/target-bench/release/tailrouter cargo bench -p interop --bench dataplane";

fn main() {
    let t0 = Instant::now();
    if let Err(e) = bench(t0) {
        eprintln!(
            "dataplane bench failed after {:.0} s: {e}",
            t0.elapsed().as_secs_f64()
        );
        std::process::exit(1);
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

/// The current path of `node` to `peer_name`: `CurAddr`, or `DERP(<relay>)`.
fn path_of<N: TailnetNode>(node: &N, peer_name: &str) -> String {
    node.status()
        .ok()
        .and_then(|st| {
            let p = peer(&st, peer_name)?;
            let cur = p["CurAddr"].as_str().unwrap_or_default();
            Some(if cur.is_empty() {
                format!("DERP({})", p["Relay"].as_str().unwrap_or("?"))
            } else {
                cur.to_string()
            })
        })
        .unwrap_or_else(|| "?".into())
}

/// The name and MTU of the one link in `host`'s namespace other than `lo` and `eth0`.
fn tunnel_link(host: &Host) -> Result<(String, u64)> {
    let out = run(host.cmd("ip").args(["-j", "link", "show"]))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error(format!("ip -j link show in {}: {e}", host.ns)))?;
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["ifname"].as_str()?.to_string(), l["mtu"].as_u64()?)))
        .find(|(n, _)| n != "lo" && n != "eth0")
        .ok_or_else(|| Error(format!("no tunnel link in {}: {v}", host.ns)))
}

/// The TUN flags of `host`'s tunnel link `tun` that matter for offloads (`ip -d link`):
/// `vnet_hdr` (the virtio-net header, which lets a daemon take and give TSO/GRO super-packets)
/// and `multi_queue`.
fn tun_flags(host: &Host, tun: &str) -> String {
    let flags = run(host
        .cmd("ip")
        .args(["-d", "-j", "link", "show", "dev", tun]))
    .ok()
    .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
    .map(|v| {
        let d = &v[0]["linkinfo"]["info_data"];
        format!(
            "vnet_hdr {}, multi_queue {}",
            d["vnet_hdr"], d["multi_queue"]
        )
    });
    flags.unwrap_or_else(|| "?".into())
}

/// A WireGuard key pair from `wg genkey` / `wg pubkey`.
fn wg_key() -> Result<(String, String)> {
    let private = String::from_utf8_lossy(&run(Command::new("wg").arg("genkey"))?.stdout)
        .trim()
        .to_string();
    // Base64 only: safe in a shell word.
    let public = String::from_utf8_lossy(
        &run(Command::new("sh").args(["-c", &format!("echo {private} | wg pubkey")]))?.stdout,
    )
    .trim()
    .to_string();
    Ok((private, public))
}

/// Removes wireguard-go's control sockets (in the machine-wide `/var/run/wireguard`) on drop,
/// in case a killed wireguard-go left them behind.
struct WgSockets(Vec<PathBuf>);

impl Drop for WgSockets {
    fn drop(&mut self) {
        for s in &self.0 {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// One wireguard-go end: interface `ifname` in `host` with `addr`/24, listening on 51820, one
/// peer `peer_ip`/32 at `peer_endpoint`.
#[allow(clippy::too_many_arguments)]
fn wireguard_go(
    rig: &mut Rig,
    socks: &mut WgSockets,
    host: &Host,
    ifname: &str,
    private: &str,
    peer_public: &str,
    peer_endpoint: &str,
    addr: &str,
    peer_ip: &str,
    mtu: u64,
) -> Result<()> {
    let sock = PathBuf::from(format!("/var/run/wireguard/{ifname}.sock"));
    let _ = std::fs::remove_file(&sock);
    socks.0.push(sock.clone());
    let mut cmd = host.cmd("wireguard-go");
    cmd.env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
        .args(["-f", ifname]);
    rig.spawn(&format!("wireguard-go-{ifname}"), cmd)?;
    wait_for(
        &format!("wireguard-go to create {}", sock.display()),
        Duration::from_secs(10),
        || sock.exists().then_some(()),
    )?;
    let key_file = rig.dir.join(format!("{ifname}.key"));
    std::fs::write(&key_file, format!("{private}\n"))
        .map_err(|e| Error(format!("write {}: {e}", key_file.display())))?;
    run(host.cmd("wg").args([
        "set",
        ifname,
        "private-key",
        &key_file.display().to_string(),
        "listen-port",
        "51820",
        "peer",
        peer_public,
        "allowed-ips",
        &format!("{peer_ip}/32"),
        "endpoint",
        peer_endpoint,
    ]))?;
    run(host
        .cmd("ip")
        .args(["addr", "add", &format!("{addr}/24"), "dev", ifname]))?;
    run(host
        .cmd("ip")
        .args(["link", "set", ifname, "mtu", &mtu.to_string(), "up"]))?;
    Ok(())
}

/// Loss counters of one namespace: where a tunnel end can drop packets.
#[derive(Debug, Default, Clone, Copy)]
struct Drops {
    /// `Udp: RcvbufErrors` (datagrams dropped because a socket's receive buffer was full).
    udp_rcvbuf: u64,
    /// `Udp: SndbufErrors`.
    udp_sndbuf: u64,
    /// The tunnel link's `tx.dropped` (kernel to daemon) and `rx.dropped` (daemon to kernel).
    tun_tx: u64,
    tun_rx: u64,
    /// Drops counted by the tunnel link's qdisc.
    qdisc: u64,
}

impl Drops {
    fn minus(self, o: Drops) -> Drops {
        Drops {
            udp_rcvbuf: self.udp_rcvbuf.saturating_sub(o.udp_rcvbuf),
            udp_sndbuf: self.udp_sndbuf.saturating_sub(o.udp_sndbuf),
            tun_tx: self.tun_tx.saturating_sub(o.tun_tx),
            tun_rx: self.tun_rx.saturating_sub(o.tun_rx),
            qdisc: self.qdisc.saturating_sub(o.qdisc),
        }
    }

    fn plus(self, o: Drops) -> Drops {
        Drops {
            udp_rcvbuf: self.udp_rcvbuf + o.udp_rcvbuf,
            udp_sndbuf: self.udp_sndbuf + o.udp_sndbuf,
            tun_tx: self.tun_tx + o.tun_tx,
            tun_rx: self.tun_rx + o.tun_rx,
            qdisc: self.qdisc + o.qdisc,
        }
    }
}

/// The loss counters of `host`'s namespace and its tunnel link `tun`.
fn drops(host: &Host, tun: &str) -> Result<Drops> {
    let snmp =
        String::from_utf8_lossy(&run(host.cmd("cat").arg("/proc/net/snmp"))?.stdout).into_owned();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return err(format!("no Udp lines in /proc/net/snmp of {}", host.ns));
    };
    let udp_field = |k: &str| -> u64 {
        names
            .split_whitespace()
            .position(|n| n == k)
            .and_then(|i| values.split_whitespace().nth(i)?.parse().ok())
            .unwrap_or(0)
    };
    let link: Value = serde_json::from_slice(
        &run(host
            .cmd("ip")
            .args(["-s", "-j", "link", "show", "dev", tun]))?
        .stdout,
    )
    .map_err(|e| Error(format!("ip -s -j link show {tun}: {e}")))?;
    let stats = &link[0]["stats64"];
    let qdisc: Value = serde_json::from_slice(
        &run(host
            .cmd("tc")
            .args(["-s", "-j", "qdisc", "show", "dev", tun]))?
        .stdout,
    )
    .map_err(|e| Error(format!("tc -s -j qdisc show dev {tun}: {e}")))?;
    Ok(Drops {
        udp_rcvbuf: udp_field("RcvbufErrors"),
        udp_sndbuf: udp_field("SndbufErrors"),
        tun_tx: stats["tx"]["dropped"].as_u64().unwrap_or(0),
        tun_rx: stats["rx"]["dropped"].as_u64().unwrap_or(0),
        qdisc: qdisc
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|q| q["drops"].as_u64())
            .sum(),
    })
}

/// One end of a measured pair.
struct End {
    host: Host,
    /// Its tunnel (tailnet) address.
    ip: String,
    /// Its tunnel link.
    tun: String,
    daemon: Daemon,
    /// Highest `VmRSS` sampled during the runs, in kB.
    peak_rss: u64,
}

/// A measured direction: iperf3 client at `ends[from]`, server at `ends[to]`.
struct Pair {
    name: &'static str,
    from: usize,
    to: usize,
    runs: Vec<Sample>,
    failures: Vec<String>,
}

/// One iperf3 run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    mbps: f64,
    retransmits: i64,
    /// CPU seconds per gigabit received, of the sender's and the receiver's daemon.
    cpu_per_gbit: [f64; 2],
    /// Loss counters during the run, of the sender's and the receiver's namespace.
    drops: [Drops; 2],
}

/// One iperf3 TCP run of `secs` for `pair`, sampling both daemons' RSS every 100 ms.
fn iperf(
    rig: &Rig,
    ends: &mut [End],
    pair: &Pair,
    secs: u32,
    tag: &str,
    tck: f64,
) -> Result<Sample> {
    let (from, to) = (pair.from, pair.to);
    let out_path = rig.dir.join(format!("iperf-{tag}.json"));
    let out = std::fs::File::create(&out_path)
        .map_err(|e| Error(format!("create {}: {e}", out_path.display())))?;
    let errs = out
        .try_clone()
        .map_err(|e| Error(format!("dup iperf3 output: {e}")))?;
    let pids = [ends[from].daemon.pid, ends[to].daemon.pid];
    let drops_before = [
        drops(&ends[from].host, &ends[from].tun)?,
        drops(&ends[to].host, &ends[to].tun)?,
    ];
    let before = [cpu_ticks(pids[0])?, cpu_ticks(pids[1])?];
    let mut child = ends[from]
        .host
        .cmd("timeout")
        .arg((secs + 20).to_string())
        .args(["iperf3", "-J", "-c", &ends[to].ip, "-t", &secs.to_string()])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(errs)
        .spawn()
        .map_err(|e| Error(format!("cannot start iperf3: {e}")))?;
    loop {
        for i in [from, to] {
            let rss = status_kb(ends[i].daemon.pid, "VmRSS")?;
            ends[i].peak_rss = ends[i].peak_rss.max(rss);
        }
        if child
            .try_wait()
            .map_err(|e| Error(format!("wait for iperf3: {e}")))?
            .is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = [cpu_ticks(pids[0])?, cpu_ticks(pids[1])?];
    let drops_after = [
        drops(&ends[from].host, &ends[from].tun)?,
        drops(&ends[to].host, &ends[to].tun)?,
    ];
    let r = iperf_result(&out_path)?;
    let per = |i: usize| (after[i] - before[i]) as f64 / tck / r.gbit;
    Ok(Sample {
        mbps: r.mbps,
        retransmits: r.retransmits,
        cpu_per_gbit: [per(0), per(1)],
        drops: [
            drops_after[0].minus(drops_before[0]),
            drops_after[1].minus(drops_before[1]),
        ],
    })
}

/// Lines of `log` that look like warnings or errors, distinct, with their counts.
fn complaints(log: &str) -> Vec<(usize, String)> {
    let mut seen: Vec<(usize, String)> = Vec::new();
    for l in log.lines() {
        let low = l.to_ascii_lowercase();
        if !(low.contains("warn") || low.contains("error") || low.contains("fail")) {
            continue;
        }
        // Drop a leading timestamp so repeats group together.
        let key: String = l
            .split_whitespace()
            .skip_while(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(200)
            .collect();
        match seen.iter_mut().find(|(_, k)| *k == key) {
            Some((n, _)) => *n += 1,
            None => seen.push((1, key)),
        }
    }
    seen
}

fn bench(t0: Instant) -> Result<()> {
    let bin = release_bin(HOW)?;
    for tool in ["iperf3", "wireguard-go", "wg", "ping", "ip", "getconf"] {
        if run(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_err() {
            return err(format!(
                "{tool} is missing: apt-get install -y iperf3 wireguard-go wireguard-tools \
                 iputils-ping iproute2"
            ));
        }
    }
    let tck = clk_tck()?;
    let nproc = first_line(&mut Command::new("nproc"));
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let kernel = first_line(Command::new("uname").arg("-r"));
    let load_start = loadavg();
    eprintln!("dataplane bench: tailrouter {}", bin.display());

    // Declared before the rig, so dropped after it (once wireguard-go is gone).
    let mut socks = WgSockets(Vec::new());
    let mut rig = Rig::new("bn")?;
    let tailscale_version = rig.peers.tailscale_version.clone();
    let hs = rig.headscale()?;
    let key = hs.preauth_key()?;
    let g1 = rig.go_node("g1")?;
    g1.up(&hs, &key)?;
    let g2 = rig.go_node("g2")?;
    g2.up(&hs, &key)?;
    let g3 = rig.go_node("g3")?;
    g3.up(&hs, &key)?;
    let tr = rig.tailrouter_node("tr", false)?;
    if let Err(e) = tr.up(&hs, &key) {
        return err(format!("{e}\n{}", rig.log_tail(&tr.label, 40)));
    }
    wait_for("every node to list the others", LIMIT, || {
        let all =
            |names: Vec<String>, want: &[&str]| want.iter().all(|w| names.iter().any(|n| n == w));
        (all(tr.peer_names().ok()?, &["g1", "g2", "g3"])
            && all(g1.peer_names().ok()?, &["tr", "g2", "g3"])
            && all(g2.peer_names().ok()?, &["tr", "g1", "g3"])
            && all(g3.peer_names().ok()?, &["tr", "g1", "g2"]))
        .then_some(())
    })?;
    let (tr_ip, g1_ip, g2_ip, g3_ip) = (tr.ipv4()?, g1.ipv4()?, g2.ipv4()?, g3.ipv4()?);
    let under = |h: &Host| format!("{}:41641", h.ip);
    let direct = wait_direct(&tr, &tr.host, "g1", &g1_ip, &under(&g1.host), LIMIT)
        .and_then(|()| wait_direct(&g1, &g1.host, "tr", &tr_ip, &under(&tr.host), LIMIT))
        .and_then(|()| wait_direct(&g2, &g2.host, "g3", &g3_ip, &under(&g3.host), LIMIT))
        .and_then(|()| wait_direct(&g3, &g3.host, "g2", &g2_ip, &under(&g2.host), LIMIT));
    if let Err(e) = direct {
        return err(format!("{e}\n{}", rig.log_tail(&tr.label, 40)));
    }

    // wireguard-go against itself, on two more hosts of the same bridge, with the MTU
    // tailscaled gives its TUN.
    let (_, ts_mtu) = tunnel_link(&g1.host)?;
    let (_, tr_mtu) = tunnel_link(&tr.host)?;
    let w1 = rig.host("w1")?;
    let w2 = rig.host("w2")?;
    let id = std::process::id() % 100_000;
    let (if1, if2) = (format!("trb{id}w1"), format!("trb{id}w2"));
    let (k1, k2) = (wg_key()?, wg_key()?);
    let (w1_ip, w2_ip) = ("100.65.0.1", "100.65.0.2");
    wireguard_go(
        &mut rig,
        &mut socks,
        &w1,
        &if1,
        &k1.0,
        &k2.1,
        &format!("{}:51820", w2.ip),
        w1_ip,
        w2_ip,
        ts_mtu,
    )?;
    wireguard_go(
        &mut rig,
        &mut socks,
        &w2,
        &if2,
        &k2.0,
        &k1.1,
        &format!("{}:51820", w1.ip),
        w2_ip,
        w1_ip,
        ts_mtu,
    )?;
    wait_for("wireguard-go to answer a ping", LIMIT, || {
        w1.cmd("ping")
            .args(["-c", "1", "-W", "1", w2_ip])
            .output()
            .ok()?
            .status
            .success()
            .then_some(())
    })?;

    let mut ends = vec![
        End {
            daemon: daemon(&tr.host, "tailrouter", "tailrouter (tr)")?,
            host: tr.host.clone(),
            ip: tr_ip.clone(),
            tun: tunnel_link(&tr.host)?.0,
            peak_rss: 0,
        },
        End {
            daemon: daemon(&g1.host, "tailscaled", "tailscaled (g1)")?,
            host: g1.host.clone(),
            ip: g1_ip.clone(),
            tun: tunnel_link(&g1.host)?.0,
            peak_rss: 0,
        },
        End {
            daemon: daemon(&g2.host, "tailscaled", "tailscaled (g2)")?,
            host: g2.host.clone(),
            ip: g2_ip,
            tun: tunnel_link(&g2.host)?.0,
            peak_rss: 0,
        },
        End {
            daemon: daemon(&g3.host, "tailscaled", "tailscaled (g3)")?,
            host: g3.host.clone(),
            ip: g3_ip,
            tun: tunnel_link(&g3.host)?.0,
            peak_rss: 0,
        },
        End {
            daemon: daemon(&w1, "wireguard-go", "wireguard-go (w1)")?,
            host: w1.clone(),
            ip: w1_ip.into(),
            tun: tunnel_link(&w1)?.0,
            peak_rss: 0,
        },
        End {
            daemon: daemon(&w2, "wireguard-go", "wireguard-go (w2)")?,
            host: w2.clone(),
            ip: w2_ip.into(),
            tun: tunnel_link(&w2)?.0,
            peak_rss: 0,
        },
    ];
    let mut pairs = [
        ("tailrouter -> tailscaled", 0, 1),
        ("tailscaled -> tailrouter", 1, 0),
        ("tailscaled -> tailscaled", 2, 3),
        ("wireguard-go -> wireguard-go", 4, 5),
    ]
    .map(|(name, from, to)| Pair {
        name,
        from,
        to,
        runs: Vec::new(),
        failures: Vec::new(),
    });

    // Idle: joined, paths found, no iperf3 traffic yet. Let the pings' effects settle.
    std::thread::sleep(Duration::from_secs(3));
    let mut idle = Vec::new();
    for e in &ends {
        idle.push((
            status_kb(e.daemon.pid, "VmRSS")?,
            status_kb(e.daemon.pid, "VmHWM")?,
        ));
    }

    // iperf3 servers in the receivers' namespaces, bound to their tunnel addresses.
    let receivers: BTreeSet<usize> = pairs.iter().map(|p| p.to).collect();
    for &i in &receivers {
        let mut cmd = ends[i].host.cmd("iperf3");
        cmd.args(["-s", "-B", &ends[i].ip]);
        rig.spawn(&format!("iperf3-server-{i}"), cmd)?;
    }
    std::thread::sleep(Duration::from_millis(500));

    // A short warm-up per pair (not counted): the first TCP connection over each tunnel.
    for (k, p) in pairs.iter().enumerate() {
        iperf(&rig, &mut ends, p, 2, &format!("warmup-{k}"), tck).map_err(|e| {
            Error(format!(
                "warm-up {}: {e}\n{}",
                p.name,
                rig.log_tail(&tr.label, 40)
            ))
        })?;
    }

    let load_before = loadavg();
    let runs_t0 = Instant::now();
    for rep in 0..REPS {
        for (k, pair) in pairs.iter_mut().enumerate() {
            let tag = format!("{rep}-{k}");
            match iperf(&rig, &mut ends, pair, SECS, &tag, tck) {
                Ok(s) => {
                    eprintln!(
                        "run {rep} {}: {:.0} Mbit/s, {} retransmits, CPU s/Gbit {:.2} / {:.2}, \
                         drops {:?} / {:?}",
                        pair.name,
                        s.mbps,
                        s.retransmits,
                        s.cpu_per_gbit[0],
                        s.cpu_per_gbit[1],
                        s.drops[0],
                        s.drops[1]
                    );
                    pair.runs.push(s);
                }
                Err(e) => {
                    eprintln!("run {rep} {}: FAILED: {e}", pair.name);
                    pair.failures.push(e.to_string());
                }
            }
        }
    }
    let runs_secs = runs_t0.elapsed().as_secs_f64();
    let load_after = loadavg();
    let mut hwm_after = Vec::new();
    for e in &ends {
        hwm_after.push(status_kb(e.daemon.pid, "VmHWM")?);
    }
    let paths_after = [
        format!("tr -> g1 {}", path_of(&tr, "g1")),
        format!("g1 -> tr {}", path_of(&g1, "tr")),
        format!("g2 -> g3 {}", path_of(&g2, "g3")),
        format!("g3 -> g2 {}", path_of(&g3, "g2")),
    ];

    // The report.
    let tr_version = first_line(Command::new(&bin).arg("--version"));
    let wg_version = first_line(Command::new("wireguard-go").arg("--version"));
    let iperf_version = first_line(Command::new("iperf3").arg("--version"));
    println!("## Throughput and CPU\n");
    println!(
        "iperf3 TCP, {SECS} s per run, {REPS} runs per direction, interleaved. Mbit/s received; \
         CPU seconds (utime + stime) of each daemon per gigabit received, median of the runs.\n"
    );
    println!(
        "| direction | Mbit/s median | min – max | TCP retransmits per run (median) | sender daemon | sender CPU s/Gbit | receiver daemon | receiver CPU s/Gbit |"
    );
    println!("|---|---:|---:|---:|---|---:|---|---:|");
    for p in &pairs {
        let mbps: Vec<f64> = p.runs.iter().map(|s| s.mbps).collect();
        let (lo, hi) = mbps
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        let retr = median(p.runs.iter().map(|s| s.retransmits as f64).collect());
        let cpu = |i: usize| median(p.runs.iter().map(|s| s.cpu_per_gbit[i]).collect());
        let failed = if p.failures.is_empty() {
            String::new()
        } else {
            format!(" ({} of {REPS} runs failed)", p.failures.len())
        };
        println!(
            "| {}{failed} | {:.0} | {lo:.0} – {hi:.0} | {retr:.0} | {} | {:.2} | {} | {:.2} |",
            p.name,
            median(mbps.clone()),
            ends[p.from].daemon.name,
            cpu(0),
            ends[p.to].daemon.name,
            cpu(1),
        );
    }
    println!("\n## Where packets were lost\n");
    println!(
        "Sums over the measured runs: the sender's TCP retransmits (iperf3), and the loss \
         counters of the sender's and the receiver's namespace: qdisc and TUN drops of the \
         tunnel link, UDP socket buffer errors (/proc/net/snmp).\n"
    );
    println!(
        "| direction | TCP retransmits | sender qdisc drops | sender TUN tx drops | sender UDP SndbufErrors | receiver UDP RcvbufErrors | receiver TUN rx drops |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for p in &pairs {
        let retr: i64 = p.runs.iter().map(|s| s.retransmits).sum();
        let snd = p
            .runs
            .iter()
            .fold(Drops::default(), |a, s| a.plus(s.drops[0]));
        let rcv = p
            .runs
            .iter()
            .fold(Drops::default(), |a, s| a.plus(s.drops[1]));
        println!(
            "| {} | {retr} | {} | {} | {} | {} | {} |",
            p.name, snd.qdisc, snd.tun_tx, snd.udp_sndbuf, rcv.udp_rcvbuf, rcv.tun_rx
        );
    }
    println!("\n## Memory\n");
    println!(
        "MiB. Idle: after join and path discovery, before any iperf3 traffic. Load: highest \
         VmRSS sampled every 100 ms during the runs, and VmHWM at the end.\n"
    );
    println!("| daemon | idle VmRSS | idle VmHWM | load peak VmRSS | VmHWM after the runs |");
    println!("|---|---:|---:|---:|---:|");
    for (i, e) in ends.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} |",
            e.daemon.name,
            mib(idle[i].0),
            mib(idle[i].1),
            mib(e.peak_rss),
            mib(hwm_after[i])
        );
    }
    println!("\n## Machine and run\n");
    println!("- nproc: {nproc}; CPU: {cpu_model}; kernel {kernel}");
    println!(
        "- load average (1, 5, 15 min): at start {load_start}; before the runs {load_before}; after the runs {load_after}"
    );
    println!(
        "- measured runs: {:.0} s; whole bench so far: {:.0} s",
        runs_secs,
        t0.elapsed().as_secs_f64()
    );
    println!("- tailrouter: {} ({tr_version})", bin.display());
    println!("- Go tailscaled {tailscale_version}; {wg_version}; {iperf_version}");
    println!(
        "- tunnel MTU: tailrouter {tr_mtu}, tailscaled {ts_mtu}, wireguard-go {ts_mtu} (set to tailscaled's)"
    );
    println!("- paths after the runs: {}", paths_after.join(", "));
    for e in &ends {
        println!(
            "- TUN {} of {}: {}",
            e.tun,
            e.daemon.name,
            tun_flags(&e.host, &e.tun)
        );
    }
    for p in &pairs {
        for f in &p.failures {
            println!("- FAILED run of {}: {f}", p.name);
        }
    }
    let log = rig.log(&tr.label);
    let c = complaints(&log);
    println!(
        "- tailrouter log: {} lines, {} warning/error/fail lines ({} distinct)",
        log.lines().count(),
        c.iter().map(|(n, _)| n).sum::<usize>(),
        c.len()
    );
    for (n, l) in c.iter().take(10) {
        println!("  - {n}x `{}`", l.replace('`', "'"));
    }
    Ok(())
}

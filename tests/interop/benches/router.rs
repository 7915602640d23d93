//! Forwarded-throughput figures (issue 6): iperf3 TCP through tailrouter as a subnet router
//! and as an exit node, against Go tailscaled v1.98.5 in the same two roles, in one rig and
//! one run.
//!
//! Run as root, against a release build of tailrouter (the bench refuses a debug path):
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-rbench cargo build --release -p tailrouter &&
//!   TAILROUTER_BIN=/work/target-rbench/release/tailrouter cargo bench -p interop --bench router
//! ```
//!
//! The rig: headscale; a Go tailscaled client `c` (`--accept-routes`); tailrouter `r1`
//! advertising the LAN 10.81.0.0/24 and the exit node; Go tailscaled `r2` advertising the LAN
//! 10.82.0.0/24 and the exit node; headscale approves all of it. Each router has a LAN host
//! (`.2` of its LAN, a bare namespace wired to the router alone, default route via the
//! router) and an "internet": a gateway namespace on a /30 from the router's `wan0` and
//! behind it a host at 203.0.113.2 that only knows its way back to that gateway. Both
//! internet hosts have the same address; which router carries a flow is checked by the
//! source address a small TCP server on the host sees (the router's WAN address, because an
//! exit node masquerades). IP forwarding is on in the routers' namespaces only.
//!
//! Subnet role: iperf3 from `c` to the LAN host behind `r1`, then to the one behind `r2`,
//! each in both directions (`-R`: the LAN host sends), interleaved r1, r2, r1, r2, ...
//! Exit role: `c` switches its exit node with `tailscale set --exit-node=<ip>` to `r1`, waits
//! until the internet host sees `r1`'s WAN address, measures both directions, then the same
//! with `r2`, and so on. CPU is `utime + stime` of the router's daemon and of the client's
//! tailscaled from `/proc/<pid>/stat` around each run, per gigabit received (the kernel's
//! forwarding and NAT run in softirq context and are not in these figures). It prints
//! Markdown; the results are kept in `docs/benchmarks/router.md`.
//!
//! `ROUTER_BENCH_SECS` and `ROUTER_BENCH_REPS` override the run length and the rounds.

use interop::bench::{
    Daemon, clk_tck, cpu_ticks, daemon, first_line, iperf_result, loadavg, median, peer,
    release_bin, wait_direct,
};
use interop::{
    Error, GoNode, Headscale, Host, Result, Rig, TailnetNode, TailrouterNode, TailrouterOptions,
    run, wait_for, wait_listed,
};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds per iperf3 run (default).
const SECS: u32 = 8;
/// Rounds per role (default): each round measures both routers in both directions.
const REPS: usize = 5;
/// Bound on every wait for the rig.
const LIMIT: Duration = Duration::from_secs(60);
/// The port of the "who am I" servers on the LAN and internet hosts.
const WHO_PORT: u16 = 7400;
/// How to run this bench, for failure messages.
const HOW: &str = "CARGO_TARGET_DIR=/work/target-rbench cargo build --release -p tailrouter && \
     TAILROUTER_BIN=/work/target-rbench/release/tailrouter cargo bench -p interop --bench router";

fn main() {
    let t0 = Instant::now();
    if let Err(e) = bench(t0) {
        eprintln!(
            "router bench failed after {:.0} s: {e}",
            t0.elapsed().as_secs_f64()
        );
        std::process::exit(1);
    }
    eprintln!("router bench: {:.0} s in all", t0.elapsed().as_secs_f64());
}

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sysctl(host: &Host, kv: &str) -> Result<()> {
    run(host.cmd("sysctl").args(["-qw", kv])).map(|_| ())
}

/// `tailscale up` for `node` (Go's CLI or ours) on `hs` with `key`, then `extra`.
fn up<N: TailnetNode>(node: &N, hs: &Headscale, key: &str, extra: &[&str]) -> Result<()> {
    let mut args = vec![
        "up".to_string(),
        format!("--login-server={}", hs.url),
        format!("--auth-key={key}"),
        format!("--hostname={}", node.hostname()),
        "--accept-dns=false".to_string(),
        "--timeout=50s".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    node.tailscale(&a).map(|_| ())
}

/// An "internet" behind `node` for an exit node: a gateway namespace `gw<tag>` on the /30
/// `198.51.100.<wan>` (the node has `.wan+2`, the gateway `.wan+1`) and behind it the host
/// `inet<tag>` at 203.0.113.2, which knows only its way back to the gateway. Nothing masquerades
/// but the exit node. Returns the host and the node's WAN address (what the host sees).
fn internet_behind(rig: &mut Rig, node: &Host, tag: &str, wan: u8) -> Result<(Host, String)> {
    let gw = rig.bare_host(&format!("gw{tag}"))?;
    let (node_ip, gw_ip) = (
        format!("198.51.100.{}", wan + 2),
        format!("198.51.100.{}", wan + 1),
    );
    rig.wire(
        (node, "wan0", &format!("{node_ip}/30")),
        (&gw, "eth0", &format!("{gw_ip}/30")),
    )?;
    let inet = rig.host_behind(&format!("inet{tag}"), &gw, "eth1", "203.0.113")?;
    sysctl(&gw, "net.ipv4.ip_forward=1")?;
    run(node
        .cmd("ip")
        .args(["route", "add", "203.0.113.0/24", "via", &gw_ip]))?;
    Ok((inet, node_ip))
}

/// Starts a TCP server on `ip:WHO_PORT` in `host` that answers each connection with the
/// address it came from (which router forwarded it, after its SNAT). The rig stops it.
fn who_server(rig: &mut Rig, host: &Host, label: &str, ip: &str) -> Result<()> {
    let code = format!(
        "import socket\ns=socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{ip}',{WHO_PORT}))\ns.listen(8)\ns.settimeout(1800)\n\
         while True:\n c,a=s.accept()\n c.sendall(a[0].encode())\n c.close()\n"
    );
    let mut cmd = host.cmd("python3");
    cmd.args(["-c", &code]);
    rig.spawn(label, cmd)?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// Waits until `from` reaches `ip` and the server there sees `want`.
fn wait_seen(from: &Host, ip: &str, want: &str, what: &str) -> Result<()> {
    let mut last = None;
    wait_for(what, LIMIT, || {
        last = from.who_am_i(ip, WHO_PORT);
        (last.as_deref() == Some(want)).then_some(())
    })
    .map_err(|e| Error(format!("{e} (last answer {last:?}, want {want})")))
}

/// The current path of `node` to `peer_name`: `CurAddr`, or `DERP(<relay>)`.
fn path_of<N: TailnetNode + ?Sized>(node: &N, peer_name: &str) -> String {
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

/// One router under test.
struct Router<'a> {
    node: &'a dyn TailnetNode,
    /// `tailrouter` or `tailscaled`, for the tables.
    implementation: &'static str,
    /// Its tailnet name and IPv4 address.
    name: &'static str,
    ip: String,
    daemon: Daemon,
    /// The LAN host behind it and its address.
    lan: Host,
    lan_ip: String,
    /// The address the LAN host sees (the router's LAN address: SNAT is on).
    lan_sees: String,
    /// The internet host behind it (always 203.0.113.2) and the router's WAN address.
    inet: Host,
    wan_ip: String,
}

/// A measured series: one role, one router, one direction.
struct Series {
    role: &'static str,
    router: usize,
    /// iperf3 `-R`: the far host sends, the client receives.
    reverse: bool,
    runs: Vec<Sample>,
    failures: Vec<String>,
    /// The WireGuard paths (client to router, router to client) seen after each run.
    paths: BTreeSet<String>,
}

impl Series {
    fn direction(&self) -> &'static str {
        match (self.role, self.reverse) {
            ("subnet", false) => "client -> LAN host",
            ("subnet", true) => "LAN host -> client",
            (_, false) => "client -> internet host",
            (_, true) => "internet host -> client",
        }
    }
}

/// One iperf3 run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    mbps: f64,
    retransmits: i64,
    /// CPU seconds per gigabit received: the router's daemon, the client's tailscaled.
    router_cpu: f64,
    client_cpu: f64,
}

/// One iperf3 TCP run of `secs` from `client` to `dst` (`-R` if `reverse`), with the CPU
/// time of `router` and `client_daemon` around it.
#[allow(clippy::too_many_arguments)]
fn iperf(
    rig: &Rig,
    client: &Host,
    dst: &str,
    reverse: bool,
    secs: u32,
    router: &Daemon,
    client_daemon: &Daemon,
    tag: &str,
    tck: f64,
) -> Result<Sample> {
    let out_path = rig.dir.join(format!("iperf-{tag}.json"));
    let out = std::fs::File::create(&out_path)
        .map_err(|e| Error(format!("create {}: {e}", out_path.display())))?;
    let errs = out
        .try_clone()
        .map_err(|e| Error(format!("dup iperf3 output: {e}")))?;
    let before = [cpu_ticks(router.pid)?, cpu_ticks(client_daemon.pid)?];
    let mut cmd = client.cmd("timeout");
    cmd.arg((secs + 20).to_string())
        .args(["iperf3", "-J", "-c", dst, "-t", &secs.to_string()]);
    if reverse {
        cmd.arg("-R");
    }
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(errs)
        .status()
        .map_err(|e| Error(format!("cannot run iperf3: {e}")))?;
    let after = [cpu_ticks(router.pid)?, cpu_ticks(client_daemon.pid)?];
    let r = iperf_result(&out_path).map_err(|e| Error(format!("iperf3 ({status}): {e}")))?;
    let per = |i: usize| (after[i] - before[i]) as f64 / tck / r.gbit;
    Ok(Sample {
        mbps: r.mbps,
        retransmits: r.retransmits,
        router_cpu: per(0),
        client_cpu: per(1),
    })
}

/// Points `c` at the exit node `r` and waits until the internet host behind `r` sees `r`'s
/// WAN address.
fn use_exit_node(c: &GoNode, r: &Router) -> Result<()> {
    c.tailscale(&["set", &format!("--exit-node={}", r.ip)])?;
    wait_seen(
        &c.host,
        "203.0.113.2",
        &r.wan_ip,
        &format!("the internet through {} ({})", r.name, r.implementation),
    )
}

/// Measures `series[k]` once (after the `rep`-th switch, if any); a failure is recorded.
#[allow(clippy::too_many_arguments)]
fn measure(
    rig: &Rig,
    c: &GoNode,
    c_daemon: &Daemon,
    routers: &[Router],
    s: &mut Series,
    secs: u32,
    tag: &str,
    tck: f64,
) {
    let r = &routers[s.router];
    let dst = if s.role == "subnet" {
        r.lan_ip.as_str()
    } else {
        "203.0.113.2"
    };
    match iperf(
        rig, &c.host, dst, s.reverse, secs, &r.daemon, c_daemon, tag, tck,
    ) {
        Ok(x) => {
            eprintln!(
                "{tag} {} {} {}: {:.0} Mbit/s, {} retransmits, router CPU {:.2} s/Gbit, \
                 client {:.2} s/Gbit",
                s.role,
                r.implementation,
                s.direction(),
                x.mbps,
                x.retransmits,
                x.router_cpu,
                x.client_cpu
            );
            s.runs.push(x);
        }
        Err(e) => {
            eprintln!(
                "{tag} {} {} {}: FAILED: {e}",
                s.role,
                r.implementation,
                s.direction()
            );
            s.failures.push(e.to_string());
        }
    }
    s.paths.insert(format!(
        "c -> {n} {}, {n} -> c {}",
        path_of(c, r.name),
        path_of(r.node, "c"),
        n = r.name
    ));
}

fn bench(t0: Instant) -> Result<()> {
    let bin = release_bin(HOW)?;
    for tool in ["iperf3", "ping", "ip", "python3", "getconf"] {
        if run(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_err() {
            return err(format!(
                "{tool} is missing: apt-get install -y iperf3 iputils-ping iproute2 python3"
            ));
        }
    }
    let secs: u32 = env_or("ROUTER_BENCH_SECS", SECS);
    let reps: usize = env_or("ROUTER_BENCH_REPS", REPS);
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
    eprintln!("router bench: tailrouter {}", bin.display());

    let mut rig = Rig::new("rb")?;
    let tailscale_version = rig.peers.tailscale_version.clone();
    let hs = rig.headscale()?;
    let key = hs.preauth_key()?;

    // The client.
    let c = rig.go_node("c")?;
    up(&c, &hs, &key, &["--accept-routes"])?;

    // r1: tailrouter, as shipped (quiet log, state file).
    let r1 = rig.tailrouter_node_with(
        "r1",
        &TailrouterOptions {
            state: Some(rig.dir.join("tr-r1/state/tailscaled.state")),
            log_verbosity: None,
        },
    )?;
    // r2: Go tailscaled.
    let r2 = rig.go_node("r2")?;
    let lan1 = rig.host_behind("lan1", &r1.host, "lan0", "10.81.0")?;
    let lan2 = rig.host_behind("lan2", &r2.host, "lan0", "10.82.0")?;
    let (inet1, wan1) = internet_behind(&mut rig, &r1.host, "1", 0)?;
    let (inet2, wan2) = internet_behind(&mut rig, &r2.host, "2", 4)?;
    for h in [&r1.host, &r2.host] {
        sysctl(h, "net.ipv4.ip_forward=1")?;
        sysctl(h, "net.ipv6.conf.all.forwarding=1")?;
    }
    let tr_log = |rig: &Rig, r1: &TailrouterNode| rig.log_tail(&r1.label, 40);
    if let Err(e) = up(
        &r1,
        &hs,
        &key,
        &["--advertise-routes=10.81.0.0/24", "--advertise-exit-node"],
    ) {
        return err(format!("{e}\n{}", tr_log(&rig, &r1)));
    }
    up(
        &r2,
        &hs,
        &key,
        &["--advertise-routes=10.82.0.0/24", "--advertise-exit-node"],
    )?;
    wait_listed(&r1, &c, LIMIT)?;
    wait_listed(&r2, &c, LIMIT)?;
    hs.approve_routes("r1", "10.81.0.0/24,0.0.0.0/0,::/0")?;
    hs.approve_routes("r2", "10.82.0.0/24,0.0.0.0/0,::/0")?;
    wait_for(
        "c to see both routers' routes and exit nodes",
        LIMIT,
        || {
            let st = c.status().ok()?;
            let ok = |name: &str, lan: &str| {
                peer(&st, name).is_some_and(|p| {
                    p["ExitNodeOption"] == true && p["PrimaryRoutes"].to_string().contains(lan)
                })
            };
            (ok("r1", "10.81.0.0/24") && ok("r2", "10.82.0.0/24")).then_some(())
        },
    )?;

    let (c_ip, r1_ip, r2_ip) = (c.ipv4()?, r1.ipv4()?, r2.ipv4()?);
    let under = |h: &Host| format!("{}:41641", h.ip);
    let direct = wait_direct(&c, &c.host, "r1", &r1_ip, &under(&r1.host), LIMIT)
        .and_then(|()| wait_direct(&r1, &r1.host, "c", &c_ip, &under(&c.host), LIMIT))
        .and_then(|()| wait_direct(&c, &c.host, "r2", &r2_ip, &under(&r2.host), LIMIT))
        .and_then(|()| wait_direct(&r2, &r2.host, "c", &c_ip, &under(&c.host), LIMIT));
    if let Err(e) = direct {
        return err(format!("{e}\n{}", tr_log(&rig, &r1)));
    }

    let routers = vec![
        Router {
            implementation: "tailrouter",
            node: &r1,
            name: "r1",
            ip: r1_ip,
            daemon: daemon(&r1.host, "tailrouter", "tailrouter (r1)")?,
            lan: lan1,
            lan_ip: "10.81.0.2".into(),
            lan_sees: "10.81.0.1".into(),
            inet: inet1,
            wan_ip: wan1,
        },
        Router {
            implementation: "tailscaled",
            node: &r2,
            name: "r2",
            ip: r2_ip,
            daemon: daemon(&r2.host, "tailscaled", "tailscaled (r2)")?,
            lan: lan2,
            lan_ip: "10.82.0.2".into(),
            lan_sees: "10.82.0.1".into(),
            inet: inet2,
            wan_ip: wan2,
        },
    ];
    let c_daemon = daemon(&c.host, "tailscaled", "tailscaled (c)")?;

    // Servers on every far host: iperf3 and the address reporter.
    for (i, r) in routers.iter().enumerate() {
        for (h, ip, what) in [
            (&r.lan, &r.lan_ip, "lan"),
            (&r.inet, &"203.0.113.2".to_string(), "inet"),
        ] {
            let mut cmd = h.cmd("iperf3");
            cmd.args(["-s", "-B", ip]);
            rig.spawn(&format!("iperf3-{what}{}", i + 1), cmd)?;
            who_server(&mut rig, h, &format!("who-{what}{}", i + 1), ip)?;
        }
    }

    // The LANs are reached through their routers, with SNAT.
    let mut checks = Vec::new();
    for r in &routers {
        let what = format!("c -> LAN host behind {} ({})", r.name, r.implementation);
        if let Err(e) = wait_seen(&c.host, &r.lan_ip, &r.lan_sees, &what) {
            return err(format!("{e}\n{}", tr_log(&rig, &r1)));
        }
        checks.push(format!(
            "LAN host {} behind {} sees the client as {}",
            r.lan_ip, r.implementation, r.lan_sees
        ));
    }

    let mut series = Vec::new();
    for role in ["subnet", "exit"] {
        for router in 0..routers.len() {
            for reverse in [false, true] {
                series.push(Series {
                    role,
                    router,
                    reverse,
                    runs: Vec::new(),
                    failures: Vec::new(),
                    paths: BTreeSet::new(),
                });
            }
        }
    }

    // Warm-up (not counted): one short run per subnet series.
    for (k, s) in series
        .iter()
        .enumerate()
        .filter(|(_, s)| s.role == "subnet")
    {
        let r = &routers[s.router];
        iperf(
            &rig,
            &c.host,
            &r.lan_ip,
            s.reverse,
            2,
            &r.daemon,
            &c_daemon,
            &format!("warmup-{k}"),
            tck,
        )
        .map_err(|e| {
            Error(format!(
                "warm-up {} {}: {e}\n{}",
                r.implementation,
                s.direction(),
                tr_log(&rig, &r1)
            ))
        })?;
    }

    // Subnet role: r1, r2, r1, r2, ...; both directions each time.
    let load_before_subnet = loadavg();
    let t_subnet = Instant::now();
    for rep in 0..reps {
        for s in series.iter_mut().filter(|s| s.role == "subnet") {
            let tag = format!("subnet-{rep}-{}-{}", s.router, s.reverse);
            measure(&rig, &c, &c_daemon, &routers, s, secs, &tag, tck);
        }
    }
    let subnet_secs = t_subnet.elapsed().as_secs_f64();
    let load_after_subnet = loadavg();

    // Exit role: switch, check, measure both directions; r1, r2, r1, r2, ...
    let mut switch_secs = Vec::new();
    let t_exit = Instant::now();
    let load_before_exit = loadavg();
    for rep in 0..reps {
        for (i, r) in routers.iter().enumerate() {
            let t = Instant::now();
            if let Err(e) = use_exit_node(&c, r) {
                return err(format!("{e}\n{}", tr_log(&rig, &r1)));
            }
            switch_secs.push(t.elapsed().as_secs_f64());
            if rep == 0 {
                // Not counted: the first flow through this exit node.
                iperf(
                    &rig,
                    &c.host,
                    "203.0.113.2",
                    false,
                    2,
                    &r.daemon,
                    &c_daemon,
                    &format!("warmup-exit-{i}"),
                    tck,
                )
                .map_err(|e| {
                    Error(format!(
                        "warm-up exit {}: {e}\n{}",
                        r.implementation,
                        tr_log(&rig, &r1)
                    ))
                })?;
                checks.push(format!(
                    "internet host behind {} sees the client as {} (the router's WAN address)",
                    r.implementation, r.wan_ip
                ));
            }
            for s in series
                .iter_mut()
                .filter(|s| s.role == "exit" && s.router == i)
            {
                let tag = format!("exit-{rep}-{}-{}", s.router, s.reverse);
                measure(&rig, &c, &c_daemon, &routers, s, secs, &tag, tck);
            }
        }
    }
    let exit_secs = t_exit.elapsed().as_secs_f64();
    let load_after_exit = loadavg();
    // Still the last exit node, still direct?
    let last = &routers[routers.len() - 1];
    let still = c.host.who_am_i("203.0.113.2", WHO_PORT);
    if still.as_deref() != Some(last.wan_ip.as_str()) {
        checks.push(format!(
            "AFTER THE RUNS the internet host saw {still:?}, not {}",
            last.wan_ip
        ));
    }
    c.tailscale(&["set", "--exit-node="])?;
    let tun_mtu = |h: &Host, dev: &str| {
        run(h.cmd("cat").arg(format!("/sys/class/net/{dev}/mtu")))
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "?".into())
    };
    let r1_mtu = tun_mtu(&r1.host, &r1.tun);
    let r1_log = rig.log(&r1.label);

    // The report.
    let tr_version = first_line(Command::new(&bin).arg("--version"));
    let iperf_version = first_line(Command::new("iperf3").arg("--version"));
    println!("## Forwarded throughput\n");
    println!(
        "iperf3 TCP, one stream, {secs} s per run, {reps} runs per row, tailrouter and \
         tailscaled interleaved. Mbit/s received; CPU seconds (utime + stime) per gigabit \
         received of the router's daemon and of the client's tailscaled, median of the runs.\n"
    );
    println!(
        "| role | router | direction | Mbit/s median | min – max | TCP retransmits per run (median) | router CPU s/Gbit | client tailscaled CPU s/Gbit |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for s in &series {
        let mbps: Vec<f64> = s.runs.iter().map(|x| x.mbps).collect();
        let (lo, hi) = mbps
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        let retr = median(s.runs.iter().map(|x| x.retransmits as f64).collect());
        let rc = median(s.runs.iter().map(|x| x.router_cpu).collect());
        let cc = median(s.runs.iter().map(|x| x.client_cpu).collect());
        let failed = if s.failures.is_empty() {
            String::new()
        } else {
            format!(" ({} of {reps} runs failed)", s.failures.len())
        };
        println!(
            "| {} | {}{failed} | {} | {:.0} | {lo:.0} – {hi:.0} | {retr:.0} | {rc:.2} | {cc:.2} |",
            s.role,
            routers[s.router].implementation,
            s.direction(),
            median(mbps.clone()),
        );
    }
    println!("\nEvery run, in order (Mbit/s):\n");
    for s in &series {
        let v: Vec<String> = s.runs.iter().map(|x| format!("{:.0}", x.mbps)).collect();
        println!(
            "- {} {} {}: {}",
            s.role,
            routers[s.router].implementation,
            s.direction(),
            v.join(", ")
        );
    }
    println!("\n## Machine and run\n");
    println!("- nproc: {nproc}; CPU: {cpu_model}; kernel {kernel}");
    println!(
        "- load average (1, 5, 15 min): at start {load_start}; subnet runs {load_before_subnet} \
         before, {load_after_subnet} after; exit runs {load_before_exit} before, \
         {load_after_exit} after"
    );
    println!(
        "- measured: subnet {subnet_secs:.0} s, exit {exit_secs:.0} s (with switches); whole \
         bench so far {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    let sw: Vec<String> = switch_secs.iter().map(|s| format!("{s:.1}")).collect();
    println!(
        "- exit-node switches (`tailscale set --exit-node=`, until the internet host sees the \
         new router), s: {}",
        sw.join(", ")
    );
    println!("- tailrouter: {} ({tr_version})", bin.display());
    println!("- Go tailscaled {tailscale_version}; {iperf_version}");
    println!("- tailrouter's TUN MTU {r1_mtu}");
    for s in &series {
        let p: Vec<&str> = s.paths.iter().map(String::as_str).collect();
        println!(
            "- paths seen after the runs of {} {} {}: {}",
            s.role,
            routers[s.router].implementation,
            s.direction(),
            p.join("; ")
        );
    }
    for ch in &checks {
        println!("- checked: {ch}");
    }
    for s in &series {
        for f in &s.failures {
            println!(
                "- FAILED run of {} {} {}: {f}",
                s.role,
                routers[s.router].implementation,
                s.direction()
            );
        }
    }
    println!(
        "- tailrouter log (default verbosity): {} lines",
        r1_log.lines().count()
    );
    let loud: Vec<&str> = r1_log
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("warn") || l.contains("error")
        })
        .collect();
    println!("- tailrouter log lines with warn or error: {}", loud.len());
    for l in loud.iter().take(5) {
        println!("  - `{}`", l.replace('`', "'"));
    }
    Ok(())
}

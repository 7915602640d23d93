//! netcheck against Tailscale's real `derper` v1.98.5 STUN servers, in network namespaces.
//!
//! Two namespaces joined by a veth pair, each with a black-hole default route (IPv4 and
//! IPv6), so nothing can leave: the client (10.77.0.10, fd77::10) and the servers (10.77.0.1,
//! 10.77.0.2, fd77::1, fd77::2). Two derpers run there as two DERP regions:
//!
//! - region 1: derper A, listening on 10.77.0.1 only (STUN 3478); the region's second node
//!   has STUN disabled (`STUNPort` -1) and must not be probed;
//! - region 2: derper B, listening on every address (STUN 3479), reached at 10.77.0.2 and
//!   fd77::2 through a `STUNOnly` node, which is probed like any other;
//! - region 3: `NoMeasureNoHome`, pointing at derper A: never probed;
//! - region 4: 10.77.0.3, where nobody answers: its probes time out.
//!
//! The client drives [`Netcheck`] with two real tokio UDP sockets bound to the wildcard
//! addresses (as magicsock binds), so the global addresses in the report are discovered, not
//! known: they must be the client's address as the derpers see it. (Derper B, on a dual-stack
//! socket, sees our IPv4 address as `::ffff:10.77.0.10` and answers with an IPv6
//! XOR-MAPPED-ADDRESS, and from 10.77.0.1, the interface's first address: the report must
//! still say 10.77.0.10 and count the answer.) The home region follows
//! from the report, then Go's stickiness and `RegionScore` are checked on real figures.
//!
//! Needs root (namespaces) and derper (built by `interop/install-peers.sh`, or `DERPER_BIN`);
//! without them the test fails, saying what is missing. Everything it creates goes on drop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tailcfg::derp::{DerpHomeParams, DerpMap, DerpNode, DerpRegion};
use tokio::net::UdpSocket;
use wg_engine::netcheck::{self, History, Netcheck, PreviousHome, Probe, Report};
use wg_engine::stun;

const PEERS_DIR: &str = ".cache/tailrouter/peers";
const DERPER_DEFAULT: &str = "derper-v1.98.5/bin/derper";

const CLIENT_V4: &str = "10.77.0.10";
const CLIENT_V6: &str = "fd77::10";
const A_V4: &str = "10.77.0.1";
const B_V4: &str = "10.77.0.2";
const B_V6: &str = "fd77::2";
const DEAD_V4: &str = "10.77.0.3";
const A_STUN: u16 = 3478;
const B_STUN: u16 = 3479;

/// Where derper is: `$DERPER_BIN`, else `DERPER_BIN` in the peers cache's `peers.env`, else
/// the default path in that cache.
fn derper_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DERPER_BIN") {
        return PathBuf::from(p);
    }
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let cache = home.join(PEERS_DIR);
    if let Ok(env) = std::fs::read_to_string(cache.join("peers.env")) {
        for line in env.lines() {
            if let Some(v) = line.trim().strip_prefix("DERPER_BIN=") {
                return PathBuf::from(v.trim_matches('"'));
            }
        }
    }
    cache.join(DERPER_DEFAULT)
}

fn run(args: &[&str]) {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "ip {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run ip: {e}"),
    }
}

fn run_in(ns: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", ns, "ip"];
    all.extend_from_slice(args);
    run(&all);
}

/// Namespaces, derpers and their scratch directories; all removed on drop, also when the
/// test panics (then the derper logs are printed).
struct Rig {
    namespaces: Vec<String>,
    children: Vec<Child>,
    dirs: Vec<PathBuf>,
}

impl Rig {
    fn new() -> Rig {
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0);
        assert!(
            matches!(root, Ok(true)),
            "netcheck_derper needs root (it creates network namespaces)"
        );
        Rig {
            namespaces: Vec::new(),
            children: Vec::new(),
            dirs: Vec::new(),
        }
    }

    /// A namespace with loopback up and black-hole default routes.
    fn netns(&mut self, name: &str) -> String {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["netns", "add", name]);
        self.namespaces.push(name.to_owned());
        run_in(name, &["link", "set", "lo", "up"]);
        run_in(name, &["route", "add", "blackhole", "default"]);
        run_in(name, &["-6", "route", "add", "blackhole", "default"]);
        name.to_owned()
    }

    /// derper in `ns`, HTTP on `listen` (its host is also where STUN listens), STUN on
    /// `stun_port`, nothing that reaches out (as in tests/derper.rs).
    fn derper(&mut self, ns: &str, listen: &str, stun_port: u16) {
        let bin = derper_bin();
        assert!(
            bin.is_file(),
            "\n\nTailscale's derper is missing at {}.\n\
             Build the interop peers first (needs Go; about 10 minutes the first time):\n\
             \n    interop/install-peers.sh\n\n\
             or point DERPER_BIN at a derper v1.98.5 binary.\n",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!(
            "tailrouter-netcheck-{}-{}",
            std::process::id(),
            self.dirs.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        self.dirs.push(dir.clone());
        let log = File::create(dir.join("derper.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&bin)
            .arg(format!("-a={listen}"))
            .arg("-http-port=-1")
            .arg(format!("-stun-port={stun_port}"))
            .arg(format!("-c={}", dir.join("derper.key").display()))
            .arg("-mesh-psk-file=")
            .arg("-home=blank")
            .env("HOME", &dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.children.push(child);
    }

    fn check_alive(&mut self) {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                let log = self
                    .dirs
                    .get(i)
                    .and_then(|d| std::fs::read_to_string(d.join("derper.log")).ok())
                    .unwrap_or_default();
                panic!("derper {i} exited early ({status}):\n{log}");
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).output();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for (i, d) in self.dirs.iter().enumerate() {
            if std::thread::panicking() {
                let log = std::fs::read_to_string(d.join("derper.log")).unwrap_or_default();
                eprintln!("--- derper {i} log ---\n{log}");
            }
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn enter_netns(ns: &str) -> io::Result<()> {
    let f = File::open(format!("/var/run/netns/{ns}"))?;
    #[allow(unsafe_code)]
    // SAFETY: setns(2) with a namespace fd held open for the call; it changes only the calling
    // thread's network namespace and touches no memory of ours.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn node(name: &str, region: i32, v4: &str, v6: &str, stun_port: i32) -> DerpNode {
    let mut n = DerpNode::default();
    n.name = name.into();
    n.region_id = region;
    n.host_name = format!("{name}.netcheck.invalid");
    n.ipv4 = v4.into();
    n.ipv6 = v6.into();
    n.stun_port = stun_port;
    n
}

fn region(id: i32, nodes: Vec<DerpNode>) -> DerpRegion {
    let mut r = DerpRegion::default();
    r.region_id = id;
    r.region_code = format!("r{id}");
    r.nodes = nodes;
    r
}

/// The test's DERP map; `with_dead` adds region 4, which never answers.
fn derp_map(with_dead: bool) -> DerpMap {
    let mut b = node("2a", 2, B_V4, B_V6, i32::from(B_STUN));
    b.stun_only = true;
    let mut regions = vec![
        region(
            1,
            vec![
                node("1a", 1, A_V4, "none", i32::from(A_STUN)),
                node("1b", 1, B_V4, "none", -1),
            ],
        ),
        region(2, vec![b]),
    ];
    let mut nomeasure = region(3, vec![node("3a", 3, A_V4, "none", i32::from(A_STUN))]);
    nomeasure.no_measure_no_home = true;
    regions.push(nomeasure);
    if with_dead {
        regions.push(region(4, vec![node("4a", 4, DEAD_V4, "none", 3478)]));
    }
    let mut m = DerpMap::default();
    m.regions = Some(
        regions
            .into_iter()
            .map(|r| (r.region_id, Some(r)))
            .collect(),
    );
    m
}

/// What one report run saw.
struct Run {
    report: Report,
    sent: Vec<Probe>,
    elapsed: Duration,
    started: Instant,
}

/// Drives `nc` to completion over the two sockets, as magicsock would: probes to IPv4
/// servers from the IPv4 socket, to IPv6 ones from the IPv6 socket; every datagram that
/// comes in is offered to `handle_stun`.
async fn drive(mut nc: Netcheck, s4: &UdpSocket, s6: &UdpSocket) -> Run {
    let started = nc.started();
    let mut sent = Vec::new();
    let mut b4 = [0u8; 1500];
    let mut b6 = [0u8; 1500];
    loop {
        let now = Instant::now();
        while let Some(p) = nc.poll_transmit(now) {
            let sock = if p.dst.is_ipv4() { s4 } else { s6 };
            // A send error is a lost probe to netcheck (it will time out), as for magicsock.
            if let Err(e) = sock.send_to(&p.payload, p.dst).await {
                eprintln!("send to {} (region {}): {e}", p.dst, p.region);
            }
            sent.push(p);
        }
        if nc.is_done() {
            break;
        }
        let Some(deadline) = nc.poll_timeout() else {
            break;
        };
        tokio::select! {
            r = s4.recv_from(&mut b4) => {
                let (n, src) = r.unwrap();
                assert!(nc.handle_stun(src, &b4[..n], Instant::now()), "stray datagram from {src}");
            }
            r = s6.recv_from(&mut b6) => {
                let (n, src) = r.unwrap();
                assert!(nc.handle_stun(src, &b6[..n], Instant::now()), "stray datagram from {src}");
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                nc.handle_timeout(Instant::now());
            }
        }
    }
    Run {
        report: nc.report(),
        sent,
        elapsed: started.elapsed(),
        started,
    }
}

/// Waits until `server` answers a plain STUN request (derper starts its STUN listener
/// asynchronously), failing after 15 s.
async fn wait_stun(sock: &UdpSocket, server: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let tx = stun::new_tx_id();
        let _ = sock.send_to(&stun::binding_request(&tx), server).await;
        // Read until our answer or 200 ms, so that late answers to earlier tries drain.
        let ours = async {
            loop {
                if let Ok((n, _)) = sock.recv_from(&mut buf).await {
                    if stun::parse_response(&buf[..n]).is_ok_and(|r| r.tx_id == tx) {
                        return;
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_millis(200), ours)
            .await
            .is_ok()
        {
            return;
        }
    }
    panic!("derper's STUN server at {server} never answered");
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

async fn client(cli_ns: String) {
    let s4 = UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let s6 = UdpSocket::bind("[::]:0").await.unwrap();
    let (p4, p6) = (
        s4.local_addr().unwrap().port(),
        s6.local_addr().unwrap().port(),
    );
    eprintln!("client in {cli_ns}: udp4 port {p4}, udp6 port {p6}");
    wait_stun(&s4, sa(A_V4, A_STUN)).await;
    wait_stun(&s4, sa(B_V4, B_STUN)).await;
    wait_stun(&s6, sa(B_V6, B_STUN)).await;

    // Report 1, with the dead region: it ends when the dead region's last probe times out.
    let map = derp_map(true);
    let run = drive(Netcheck::new(&map, Instant::now()), &s4, &s6).await;
    let r = &run.report;
    eprintln!("report 1 after {:?}: {r:#?}", run.elapsed);
    let dsts: BTreeMap<SocketAddr, usize> = run.sent.iter().fold(BTreeMap::new(), |mut m, p| {
        *m.entry(p.dst).or_default() += 1;
        m
    });
    eprintln!("probes sent: {dsts:?}");
    let allowed: BTreeSet<SocketAddr> = [
        sa(A_V4, A_STUN),
        sa(B_V4, B_STUN),
        sa(B_V6, B_STUN),
        sa(DEAD_V4, 3478),
    ]
    .into();
    for (dst, n) in &dsts {
        assert!(allowed.contains(dst), "probe to {dst} ({n}x): not planned");
    }
    for p in &run.sent {
        assert!(p.region != 3, "NoMeasureNoHome region 3 was probed");
    }
    assert_eq!(
        dsts.get(&sa(DEAD_V4, 3478)),
        Some(&netcheck::TRIES),
        "the dead region gets every retry"
    );
    assert!(r.udp_v4 && r.udp_v6 && r.udp());
    assert_eq!(r.global_v4, Some(sa(CLIENT_V4, p4)), "global_v4");
    assert_eq!(r.global_v6, Some(sa(CLIENT_V6, p6)), "global_v6");
    assert_eq!(r.mapping_varies_by_dest_ip, Some(false));
    assert_eq!(r.region_latency.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        r.region_v4_latency.keys().copied().collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(r.region_v6_latency.keys().copied().collect::<Vec<_>>(), [2]);
    for d in r.region_latency.values() {
        assert!(
            *d > Duration::ZERO && *d < Duration::from_millis(500),
            "{d:?}"
        );
    }
    // Dead region: its last probe (at 200 ms) times out 3 s later; well before the 5 s cap.
    let last_try = netcheck::RETRANSMIT_INTERVAL * (netcheck::TRIES as u32 - 1);
    assert!(
        run.elapsed >= last_try + netcheck::PROBE_TIMEOUT && run.elapsed < netcheck::REPORT_TIMEOUT,
        "report 1 took {:?}",
        run.elapsed
    );

    let mut history = History::new();
    let fastest = if r.region_latency[&1] <= r.region_latency[&2] {
        1
    } else {
        2
    };
    let home = history.update(Instant::now(), r, &map, None);
    assert_eq!(home, fastest);
    let other = 3 - home;

    // Report 2, without the dead region: done as soon as both regions answered.
    let map = derp_map(false);
    let run = drive(Netcheck::new(&map, Instant::now()), &s4, &s6).await;
    let r2 = &run.report;
    eprintln!("report 2 after {:?}: {r2:#?}", run.elapsed);
    assert!(
        run.elapsed < Duration::from_secs(1),
        "report 2 took {:?}",
        run.elapsed
    );
    assert_eq!(
        r2.region_latency.keys().copied().collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(r2.global_v4, Some(sa(CLIENT_V4, p4)));
    assert_eq!(r2.global_v6, Some(sa(CLIENT_V6, p6)));
    // Sub-millisecond regions: whichever is faster now, the home stays (Go's 10 ms rule).
    let prev = PreviousHome::new(home, None, run.started, Instant::now());
    assert!(!prev.heard_recently);
    assert_eq!(history.update(Instant::now(), r2, &map, Some(prev)), home);
    // A RegionScore that makes the home much slower (at least three times the other region's
    // best plus 10 ms) moves it, even against the stickiness.
    let best = history.best_recent(Instant::now());
    let (home_now, other_best) = (r2.region_latency[&home], best[&other]);
    let score = (3.0 * (other_best + netcheck::PREFERRED_DERP_ABSOLUTE_DIFF).as_secs_f64()
        / home_now.as_secs_f64())
    .max(1000.0);
    let mut scored = map.clone();
    let mut hp = DerpHomeParams::default();
    hp.region_score = Some(BTreeMap::from([(home, score)]));
    scored.home_params = Some(hp);
    assert_eq!(
        netcheck::preferred_derp(r2, &scored, &best, Some(prev)),
        other,
        "home {home} scored x{score}"
    );
    // Nothing measured (every server gone): the home is kept only if its DERP connection
    // is alive.
    let empty = Report::default();
    let alive = PreviousHome::new(home, Some(Instant::now()), run.started, Instant::now());
    assert_eq!(
        netcheck::preferred_derp(&empty, &map, &best, Some(alive)),
        home
    );
    assert_eq!(netcheck::preferred_derp(&empty, &map, &best, Some(prev)), 0);
}

#[test]
fn netcheck_against_two_real_derpers() {
    let mut rig = Rig::new();
    let id = std::process::id() % 100_000;
    let cli = rig.netns(&format!("trnc-cli{id}"));
    let srv = rig.netns(&format!("trnc-srv{id}"));
    let (vc, vs) = (format!("nc{id}c"), format!("nc{id}s"));
    run(&[
        "link", "add", &vc, "netns", &cli, "type", "veth", "peer", &vs, "netns", &srv,
    ]);
    run_in(
        &cli,
        &["addr", "add", &format!("{CLIENT_V4}/24"), "dev", &vc],
    );
    run_in(
        &cli,
        &[
            "addr",
            "add",
            &format!("{CLIENT_V6}/64"),
            "dev",
            &vc,
            "nodad",
        ],
    );
    for a in [A_V4, B_V4] {
        run_in(&srv, &["addr", "add", &format!("{a}/24"), "dev", &vs]);
    }
    for a in ["fd77::1", B_V6] {
        run_in(
            &srv,
            &["addr", "add", &format!("{a}/64"), "dev", &vs, "nodad"],
        );
    }
    run_in(&cli, &["link", "set", &vc, "up"]);
    run_in(&srv, &["link", "set", &vs, "up"]);
    // derper A on 10.77.0.1 only; derper B on every address (STUN on [::]:3479, dual-stack).
    rig.derper(&srv, &format!("{A_V4}:8001"), A_STUN);
    rig.derper(&srv, ":8002", B_STUN);
    std::thread::sleep(Duration::from_millis(200));
    rig.check_alive();

    let handle = std::thread::spawn(move || {
        enter_netns(&cli).unwrap_or_else(|e| panic!("setns {cli}: {e}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), client(cli))
                .await
                .expect("the netcheck interop test took more than 60 s");
        });
    });
    let result = handle.join();
    rig.check_alive();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

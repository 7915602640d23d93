//! Interop with software nobody here wrote: Debian's `wireguard-go` and `wireguard-tools`.
//!
//! wireguard-go runs in one network namespace, our engine (boringtun peers on a kernel TUN,
//! one UDP socket) in another, joined by a veth pair. Keys come from `wg genkey`. Proved:
//! ping both ways over IPv4 and IPv6, TCP (iperf3) both ways. Then iperf3 TCP for 5 s each way
//! over ours↔wireguard-go and, side by side, wireguard-go↔wireguard-go over the same kind of
//! veth, with the load average printed (run with `--nocapture` to see the figures).
//!
//! Needs root, `wireguard-go`, `wg`, `iperf3` and `ping`: without them the test fails, naming
//! what is missing. Everything it creates (namespaces, processes, sockets) goes on drop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tailcfg::key::NodePrivate;
use tokio::net::UdpSocket;
use tstun_wrap::tun::{Tun, TunConfig};
use wg_engine::wireguard::{BUFFER_LEN, Decapsulated, EngineConfig, PeerConfig, Peers};

const MTU: u16 = 1420;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).stdin(Stdio::null()).output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!(
            "{cmd} {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run {cmd}: {e}"),
    }
}

fn run_in(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

fn run_with_stdin(ns: &str, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    let child = Command::new("ip")
        .args(&all)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        panic!("spawn {args:?}")
    };
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(input.as_bytes());
    }
    let out = child.wait_with_output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        other => panic!("{args:?}: {other:?}"),
    }
}

fn require() {
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0);
    assert!(
        matches!(root, Ok(true)),
        "wireguard_go interop needs root (network namespaces, TUN devices)"
    );
    for tool in ["wireguard-go", "wg", "iperf3", "ping", "ip"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        assert!(
            found,
            "{tool} is missing: apt-get install -y wireguard-go wireguard-tools iperf3 iputils-ping iproute2"
        );
    }
}

/// Everything the test creates; removed on drop, also when the test panics.
struct Rig {
    namespaces: Vec<String>,
    children: Vec<Child>,
    wg_sockets: Vec<String>,
    stop: Vec<tokio::sync::watch::Sender<bool>>,
    threads: Vec<std::thread::JoinHandle<DriverStats>>,
}

impl Rig {
    fn new() -> Self {
        Self {
            namespaces: Vec::new(),
            children: Vec::new(),
            wg_sockets: Vec::new(),
            stop: Vec::new(),
            threads: Vec::new(),
        }
    }

    fn netns(&mut self, name: &str) -> String {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name]);
        self.namespaces.push(name.to_owned());
        run_in(name, &["ip", "link", "set", "lo", "up"]);
        name.to_owned()
    }

    /// A veth pair between two namespaces with one /24 address on each end.
    fn veth(&mut self, a: &str, a_addr: &str, b: &str, b_addr: &str) {
        let (va, vb) = (format!("v-{a}"), format!("v-{b}"));
        let (va, vb) = (&va[..va.len().min(15)], &vb[..vb.len().min(15)]);
        run(
            "ip",
            &[
                "link", "add", va, "netns", a, "type", "veth", "peer", vb, "netns", b,
            ],
        );
        run_in(a, &["ip", "addr", "add", a_addr, "dev", va]);
        run_in(b, &["ip", "addr", "add", b_addr, "dev", vb]);
        run_in(a, &["ip", "link", "set", va, "up"]);
        run_in(b, &["ip", "link", "set", vb, "up"]);
    }

    fn spawn(&mut self, ns: &str, args: &[&str], env: &[(&str, &str)]) {
        let mut all = vec!["netns", "exec", ns];
        all.extend_from_slice(args);
        let mut cmd = Command::new("ip");
        cmd.args(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        match cmd.spawn() {
            Ok(c) => self.children.push(c),
            Err(e) => panic!("spawn {args:?}: {e}"),
        }
    }

    /// wireguard-go on interface `ifname` in `ns`: key, listen port, one peer, addresses.
    #[allow(clippy::too_many_arguments)]
    fn wireguard_go(
        &mut self,
        ns: &str,
        ifname: &str,
        private_b64: &str,
        port: u16,
        peer_pub_b64: &str,
        peer_endpoint: &str,
        addr4: &str,
        addr6: &str,
        peer_allowed: &str,
    ) {
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        let _ = std::fs::remove_file(&sock);
        self.wg_sockets.push(sock.clone());
        self.spawn(
            ns,
            &["wireguard-go", "-f", ifname],
            &[("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::path::Path::new(&sock).exists() {
            assert!(
                Instant::now() < deadline,
                "wireguard-go did not create {sock}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let keyfile = "/dev/stdin";
        let port = port.to_string();
        run_with_stdin(
            ns,
            &[
                "wg",
                "set",
                ifname,
                "private-key",
                keyfile,
                "listen-port",
                &port,
                "peer",
                peer_pub_b64,
                "allowed-ips",
                peer_allowed,
                "endpoint",
                peer_endpoint,
            ],
            private_b64,
        );
        run_in(ns, &["ip", "addr", "add", addr4, "dev", ifname]);
        run_in(ns, &["ip", "addr", "add", addr6, "dev", ifname, "nodad"]);
        run_in(
            ns,
            &["ip", "link", "set", ifname, "mtu", &MTU.to_string(), "up"],
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for s in &self.stop {
            let _ = s.send(true);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            // Kill anything still inside (a daemonised child), then the namespace.
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).output();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for s in &self.wg_sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// A WireGuard key pair made by `wg genkey` / `wg pubkey`.
struct WgKey {
    private: String,
    public: String,
}

fn wg_key() -> WgKey {
    let private = run("wg", &["genkey"]).trim().to_owned();
    let public = {
        use std::io::Write;
        let child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            panic!("wg pubkey")
        };
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(private.as_bytes());
        }
        let out = child.wait_with_output();
        let Ok(out) = out else { panic!("wg pubkey") };
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    WgKey { private, public }
}

fn b64_32(s: &str) -> [u8; 32] {
    let v = base64::engine::general_purpose::STANDARD.decode(s.trim());
    let Ok(v) = v else {
        panic!("bad base64 key {s:?}")
    };
    let Ok(a) = <[u8; 32]>::try_from(v.as_slice()) else {
        panic!("key of {} bytes", v.len())
    };
    a
}

/// What our driver counted.
#[derive(Debug, Default)]
struct DriverStats {
    tun_packets: u64,
    udp_datagrams: u64,
    errors: HashMap<String, u64>,
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

fn grow_socket_buffers(sock: &std::net::UdpSocket) {
    let size: libc::c_int = 4 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        #[allow(unsafe_code)]
        // SAFETY: setsockopt(2) on a socket we own, reading a c_int that lives for the call.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "setsockopt: {}", io::Error::last_os_error());
    }
}

/// The thin test driver: TUN ↔ Peers ↔ one UDP socket, on a current-thread runtime inside
/// `ns`. Ready once the returned channel yields.
fn start_driver(
    rig: &mut Rig,
    ns: &str,
    tun_name: &str,
    addrs: [&'static str; 2],
    listen: SocketAddr,
    config: EngineConfig<SocketAddr>,
) {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (ns, tun_name) = (ns.to_owned(), tun_name.to_owned());
    let handle = std::thread::spawn(move || {
        let mut stats = DriverStats::default();
        let fail = |e: String| {
            let _ = ready_tx.send(Err(e));
        };
        if let Err(e) = enter_netns(&ns) {
            fail(format!("setns: {e}"));
            return stats;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let Ok(rt) = rt else {
            fail("runtime".into());
            return stats;
        };
        rt.block_on(async {
            let tun = Tun::open(&TunConfig { name: tun_name.clone(), mtu: MTU });
            let tun = match tun {
                Ok(t) => t,
                Err(e) => return fail(format!("TUN: {e}")),
            };
            run_in(&ns, &["ip", "addr", "add", addrs[0], "dev", &tun_name]);
            run_in(&ns, &["ip", "addr", "add", addrs[1], "dev", &tun_name, "nodad"]);
            let sock = match std::net::UdpSocket::bind(listen) {
                Ok(s) => s,
                Err(e) => return fail(format!("bind: {e}")),
            };
            grow_socket_buffers(&sock);
            let _ = sock.set_nonblocking(true);
            let udp = match UdpSocket::from_std(sock) {
                Ok(u) => u,
                Err(e) => return fail(format!("tokio udp: {e}")),
            };
            let mut peers = Peers::new(config);
            let _ = ready_tx.send(Ok(()));

            let mut bufs = vec![vec![0u8; 65536]; 32];
            let mut sizes = vec![0usize; 32];
            let mut out = vec![0u8; BUFFER_LEN];
            let mut rbuf = vec![0u8; BUFFER_LEN];
            let count_err = |stats: &mut DriverStats, e: String| {
                *stats.errors.entry(e).or_default() += 1;
            };
            loop {
                let deadline = peers
                    .poll_timeout()
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
                tokio::select! {
                    r = tun.recv_batch(&mut bufs, &mut sizes) => {
                        let Ok(n) = r else { break };
                        for i in 0..n {
                            stats.tun_packets += 1;
                            match peers.encapsulate(&bufs[i][..sizes[i]], &mut out) {
                                Ok(Some(t)) => { let _ = udp.send_to(t.datagram, t.dst).await; }
                                Ok(None) => {}
                                Err(e) => count_err(&mut stats, format!("{e:?}").chars().take(24).collect()),
                            }
                        }
                    }
                    r = udp.recv_from(&mut rbuf) => {
                        let Ok((mut n, mut src)) = r else { break };
                        // Drain what is ready too: one wake-up per burst.
                        for _ in 0..64 {
                            stats.udp_datagrams += 1;
                            match peers.decapsulate(None, src, &rbuf[..n], &mut out) {
                                Ok(Decapsulated::Packet { packet, .. }) => {
                                    let _ = tun.send(packet).await;
                                }
                                Ok(Decapsulated::Transmit(t)) => {
                                    let peer = t.peer;
                                    let _ = udp.send_to(t.datagram, t.dst).await;
                                    while let Ok(Some(t)) = peers.flush_queued(&peer, &mut out) {
                                        let _ = udp.send_to(t.datagram, t.dst).await;
                                    }
                                }
                                Ok(Decapsulated::Done) => {}
                                Err(e) => count_err(&mut stats, format!("{e:?}").chars().take(24).collect()),
                            }
                            match udp.try_recv_from(&mut rbuf) {
                                Ok((n2, s2)) => { n = n2; src = s2; }
                                Err(_) => break,
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        let mut sends = Vec::new();
                        let _ = peers.handle_timeout(Instant::now(), &mut out, |t| {
                            sends.push((t.dst, t.datagram.to_vec()));
                        });
                        for (dst, d) in sends {
                            let _ = udp.send_to(&d, dst).await;
                        }
                    }
                    _ = stop_rx.changed() => break,
                }
            }
        });
        stats
    });
    rig.stop.push(stop_tx);
    rig.threads.push(handle);
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => {}
        other => panic!("driver did not start: {other:?}"),
    }
}

/// iperf3 TCP from `client_ns` to `server_ip` for `secs`; `reverse` makes the server send.
/// Returns Mbit/s received.
fn iperf(client_ns: &str, server_ip: &str, secs: u32, reverse: bool) -> f64 {
    let t = secs.to_string();
    let mut args = vec!["timeout", "30", "iperf3", "-J", "-c", server_ip, "-t", &t];
    if reverse {
        args.push("-R");
    }
    let out = run_in(client_ns, &args);
    let v: serde_json::Value = match serde_json::from_str(&out) {
        Ok(v) => v,
        Err(e) => panic!("iperf3 JSON: {e}: {out}"),
    };
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64();
    let Some(bps) = bps else {
        panic!("iperf3 result: {out}")
    };
    bps / 1e6
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn ping(ns: &str, addr: &str) {
    let out = run_in(ns, &["ping", "-c", "3", "-i", "0.2", "-W", "3", addr]);
    assert!(
        out.contains(" 0% packet loss"),
        "ping {addr} from {ns}: {out}"
    );
}

#[test]
fn interop_with_wireguard_go() {
    require();
    let started = Instant::now();
    let mut rig = Rig::new();
    let id = std::process::id() % 100_000;
    let go = rig.netns(&format!("trwg-go{id}"));
    let us = rig.netns(&format!("trwg-us{id}"));
    rig.veth(&go, "10.213.0.1/24", &us, "10.213.0.2/24");

    let go_key = wg_key();
    let our_key = wg_key();
    // A NodePrivate and a WireGuard private key are the same 32 bytes.
    let our_private = NodePrivate::from_bytes(b64_32(&our_key.private));
    assert_eq!(our_private.public().as_bytes(), &b64_32(&our_key.public));
    let go_public = tailcfg::key::NodePublic::from_bytes(b64_32(&go_key.public));

    rig.wireguard_go(
        &go,
        "trwg-a",
        &go_key.private,
        51820,
        &our_key.public,
        "10.213.0.2:51821",
        "100.64.0.1/24",
        "fd7a:115c:a1e0::1/64",
        "100.64.0.2/32,fd7a:115c:a1e0::2/128",
    );
    let config = EngineConfig {
        private_key: our_private,
        peers: vec![PeerConfig {
            key: go_public,
            allowed_ips: vec![
                "100.64.0.1/32".parse().unwrap_or_else(|_| unreachable!()),
                "fd7a:115c:a1e0::1/128"
                    .parse()
                    .unwrap_or_else(|_| unreachable!()),
            ],
            endpoint: Some(SocketAddr::from(([10, 213, 0, 1], 51820))),
        }],
    };
    start_driver(
        &mut rig,
        &us,
        "trus0",
        ["100.64.0.2/24", "fd7a:115c:a1e0::2/64"],
        SocketAddr::from(([0, 0, 0, 0], 51821)),
        config,
    );

    // Ours starts the handshake, then wireguard-go pings us over the session.
    ping(&us, "100.64.0.1");
    ping(&go, "100.64.0.2");
    ping(&us, "fd7a:115c:a1e0::1");
    ping(&go, "fd7a:115c:a1e0::2");
    let hs = run_in(&go, &["wg", "show", "trwg-a", "latest-handshakes"]);
    assert!(hs.contains(&our_key.public), "{hs}");

    // TCP both ways: iperf3 servers on each side.
    rig.spawn(&go, &["iperf3", "-s", "-B", "100.64.0.1"], &[]);
    rig.spawn(&us, &["iperf3", "-s", "-B", "100.64.0.2"], &[]);
    std::thread::sleep(Duration::from_millis(500));
    let ours_to_go_3s = iperf(&us, "100.64.0.1", 3, false);
    let go_to_ours_3s = iperf(&go, "100.64.0.2", 3, false);
    assert!(
        ours_to_go_3s > 1.0 && go_to_ours_3s > 1.0,
        "{ours_to_go_3s} {go_to_ours_3s}"
    );

    // Side by side: wireguard-go ↔ wireguard-go over the same kind of veth.
    let g1 = rig.netns(&format!("trwg-g1{id}"));
    let g2 = rig.netns(&format!("trwg-g2{id}"));
    rig.veth(&g1, "10.214.0.1/24", &g2, "10.214.0.2/24");
    let (k1, k2) = (wg_key(), wg_key());
    rig.wireguard_go(
        &g1,
        "trwg-b",
        &k1.private,
        51820,
        &k2.public,
        "10.214.0.2:51820",
        "100.65.0.1/24",
        "fd7a:115c:a1e1::1/64",
        "100.65.0.2/32",
    );
    rig.wireguard_go(
        &g2,
        "trwg-c",
        &k2.private,
        51820,
        &k1.public,
        "10.214.0.1:51820",
        "100.65.0.2/24",
        "fd7a:115c:a1e1::2/64",
        "100.65.0.1/32",
    );
    ping(&g1, "100.65.0.2");
    rig.spawn(&g2, &["iperf3", "-s", "-B", "100.65.0.2"], &[]);
    std::thread::sleep(Duration::from_millis(500));

    let load_before = loadavg();
    let ours_send = iperf(&us, "100.64.0.1", 5, false);
    let ours_recv = iperf(&us, "100.64.0.1", 5, true);
    let go_send = iperf(&g1, "100.65.0.2", 5, false);
    let go_recv = iperf(&g1, "100.65.0.2", 5, true);
    let load_after = loadavg();
    println!(
        "interop: ours->wg-go 3 s {ours_to_go_3s:.0} Mbit/s, wg-go->ours 3 s {go_to_ours_3s:.0} Mbit/s"
    );
    println!(
        "throughput (iperf3 TCP 5 s, MTU {MTU}): ours->wg-go {ours_send:.0}, wg-go->ours {ours_recv:.0}; \
         wg-go->wg-go {go_send:.0}, reverse {go_recv:.0} Mbit/s"
    );
    println!("loadavg before: {load_before}; after: {load_after}");
    println!("test took {:.1} s", started.elapsed().as_secs_f64());
    drop(rig.stop.drain(..));
    if let Some(t) = rig.threads.pop() {
        let stats = t.join();
        println!("driver: {stats:?}");
    }
    assert!(ours_send > 1.0 && ours_recv > 1.0);
}

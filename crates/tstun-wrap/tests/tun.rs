//! The TUN device for real: created inside a network namespace this test makes (root needed;
//! the test fails, never skips, without it), MTU checked with `ip`, a UDP datagram read from
//! the device and answered by writing the mirrored packet back, and a burst read in batches.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;
use tstun_wrap::tun::{DEFAULT_MTU, Tun, TunConfig};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!("ip {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("cannot run ip {args:?}: {e}"),
    }
}

/// A network namespace that is deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0);
        assert!(
            matches!(root, Ok(true)),
            "this test needs root (CAP_NET_ADMIN) to create a network namespace and a TUN"
        );
        let name = format!("trtun-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }

    /// Moves the calling thread (only it) into the namespace.
    fn enter(&self) -> io::Result<()> {
        let f = File::open(format!("/var/run/netns/{}", self.0))?;
        #[allow(unsafe_code)]
        // SAFETY: setns(2) with a namespace fd we hold open for the call; it changes only the
        // calling thread's network namespace and touches no memory of ours.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Runs `f` on a fresh thread inside `ns`, with a current-thread tokio runtime.
fn in_netns<F, Fut>(ns: &Netns, f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let name = Netns(ns.0.clone());
    let handle = std::thread::spawn(move || {
        let entered = name.enter();
        std::mem::forget(name); // the outer guard deletes the namespace
        assert!(entered.is_ok(), "setns: {entered:?}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let Ok(rt) = rt else {
            panic!("runtime: {:?}", rt.err())
        };
        rt.block_on(async move {
            let r = tokio::time::timeout(Duration::from_secs(20), f()).await;
            assert!(r.is_ok(), "test timed out");
        });
    });
    if let Err(e) = handle.join() {
        std::panic::resume_unwind(e);
    }
}

/// The UDP datagram inside an IPv4 packet: (src, dst, payload); `None` for anything else.
fn udp4(p: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    if p.first()? >> 4 != 4 || *p.get(9)? != 17 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let u = p.get(ihl..)?;
    let sport = u16::from_be_bytes([*u.first()?, *u.get(1)?]);
    let dport = u16::from_be_bytes([*u.get(2)?, *u.get(3)?]);
    Some((
        SocketAddr::from((src, sport)),
        SocketAddr::from((dst, dport)),
        u.get(8..)?,
    ))
}

/// The same packet going the other way: addresses and ports swapped. Both checksums stay
/// valid, since a one's-complement sum does not depend on the order of its words.
fn mirror(p: &[u8]) -> Vec<u8> {
    let mut m = p.to_vec();
    let ihl = usize::from(p[0] & 0x0f) * 4;
    m[12..16].copy_from_slice(&p[16..20]);
    m[16..20].copy_from_slice(&p[12..16]);
    m[ihl..ihl + 2].copy_from_slice(&p[ihl + 2..ihl + 4]);
    m[ihl + 2..ihl + 4].copy_from_slice(&p[ihl..ihl + 2]);
    m
}

#[test]
fn default_config_is_tailscale0_at_1280() {
    let c = TunConfig::default();
    assert_eq!((c.name.as_str(), c.mtu), ("tailscale0", 1280));
    assert_eq!(DEFAULT_MTU, 1280);
}

#[test]
fn bad_names_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(rt) = rt else { panic!("runtime") };
    rt.block_on(async {
        for name in ["", "sixteen-chars-xx"] {
            let r = Tun::open(&TunConfig {
                name: name.into(),
                mtu: 1280,
            });
            assert!(r.is_err_and(|e| e.kind() == io::ErrorKind::InvalidInput));
        }
    });
}

#[test]
fn tun_reads_and_writes_ip_packets() {
    let ns = Netns::new("rw");
    let nsname = ns.0.clone();
    in_netns(&ns, move || async move {
        let tun = Tun::open(&TunConfig {
            name: "trtun0".into(),
            mtu: DEFAULT_MTU,
        });
        let tun = match tun {
            Ok(t) => t,
            Err(e) => panic!("open TUN: {e}"),
        };
        assert_eq!((tun.name(), tun.mtu()), ("trtun0", 1280));
        assert!(tun.index().is_ok_and(|i| i > 0));
        let link = ip(&["-n", &nsname, "link", "show", "trtun0"]);
        assert!(link.contains("mtu 1280") && link.contains(",UP"), "{link}");
        ip(&[
            "-n",
            &nsname,
            "addr",
            "add",
            "198.18.7.1/24",
            "dev",
            "trtun0",
        ]);

        let sock = UdpSocket::bind("198.18.7.1:0");
        let Ok(sock) = sock else {
            panic!("bind: {sock:?}")
        };
        assert!(sock.set_nonblocking(true).is_ok());
        let Ok(sock) = tokio::net::UdpSocket::from_std(sock) else {
            panic!("tokio socket")
        };
        let far: SocketAddr = "198.18.7.2:9999".parse().unwrap_or_else(|_| unreachable!());
        assert!(sock.send_to(b"ping over tun", far).await.is_ok());

        // Read until our datagram shows up (IPv6 router solicitations may come first).
        let mut buf = vec![0u8; 65536];
        let packet = loop {
            let n = tun.recv(&mut buf).await;
            let Ok(n) = n else { panic!("recv: {n:?}") };
            if udp4(&buf[..n]).is_some_and(|(_, d, _)| d == far) {
                break buf[..n].to_vec();
            }
        };
        let (src, _, payload) = udp4(&packet).unwrap_or_else(|| unreachable!());
        assert_eq!(payload, b"ping over tun");
        assert_eq!(src, sock.local_addr().unwrap_or_else(|_| unreachable!()));

        // Answer by writing the mirrored packet into the TUN: the kernel delivers it.
        assert!(tun.send(&mirror(&packet)).await.is_ok());
        let mut got = [0u8; 2048];
        let r = sock.recv_from(&mut got).await;
        assert!(matches!(r, Ok((13, from)) if from == far), "{r:?}");
        assert_eq!(&got[..13], b"ping over tun");

        // A burst: read in batches, answered in one batch write.
        for i in 0..32u8 {
            assert!(sock.send_to(&[i; 100], far).await.is_ok());
        }
        let mut bufs = vec![vec![0u8; 2048]; 16];
        let mut sizes = vec![0usize; 16];
        let mut seen = Vec::new();
        let mut batches = 0;
        while seen.len() < 32 {
            let n = tun.recv_batch(&mut bufs, &mut sizes).await;
            let Ok(n) = n else {
                panic!("recv_batch: {n:?}")
            };
            batches += 1;
            let replies: Vec<Vec<u8>> = (0..n)
                .map(|i| &bufs[i][..sizes[i]])
                .filter(|p| udp4(p).is_some_and(|(_, d, _)| d == far))
                .map(mirror)
                .collect();
            seen.extend(replies.iter().cloned());
            let room = tun.tx_headroom();
            let mut batch: Vec<Vec<u8>> = replies
                .iter()
                .map(|r| [vec![0u8; room], r.clone()].concat())
                .collect();
            let sent = tun.send_batch(&mut batch).await;
            assert!(sent.is_ok(), "{sent:?}");
        }
        assert!(
            batches < 32,
            "a burst is read in batches ({batches} reads for 32)"
        );
        for _ in 0..32 {
            let r = sock.recv_from(&mut got).await;
            assert!(matches!(r, Ok((100, _))), "{r:?}");
        }
    });
}

#[test]
fn mtu_is_configurable() {
    let ns = Netns::new("mtu");
    let nsname = ns.0.clone();
    in_netns(&ns, move || async move {
        let tun = Tun::open(&TunConfig {
            name: "trtun1".into(),
            mtu: 1420,
        });
        assert!(tun.as_ref().is_ok_and(|t| t.mtu() == 1420), "{tun:?}");
        let link = ip(&["-n", &nsname, "link", "show", "trtun1"]);
        assert!(link.contains("mtu 1420"), "{link}");
    });
}

#[test]
fn a_descriptor_that_is_not_a_tun_is_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(rt) = rt else { panic!("runtime") };
    rt.block_on(async {
        let f = File::open("/proc/self/status").unwrap();
        let r = tstun_wrap::tun::FdTun::from_fd(f.into());
        assert!(
            r.as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::InvalidInput),
            "{r:?}"
        );
    });
}

/// The caller-provided path: the descriptor of a TUN opened as firmware does
/// (`open_fd`), taken over by `FdTun`, whose name comes from the kernel; a datagram read from
/// it and answered through it.
#[test]
fn a_caller_opened_descriptor_reads_and_writes_ip_packets() {
    let ns = Netns::new("fd");
    let nsname = ns.0.clone();
    in_netns(&ns, move || async move {
        let fd = tstun_wrap::tun::open_fd(&TunConfig {
            name: "trfd0".into(),
            mtu: 1400,
        });
        let fd = match fd {
            Ok(f) => f,
            Err(e) => panic!("open TUN descriptor: {e}"),
        };
        let link = ip(&["-n", &nsname, "link", "show", "trfd0"]);
        assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
        let tun = match tstun_wrap::tun::FdTun::from_fd(fd) {
            Ok(t) => t,
            Err(e) => panic!("FdTun: {e}"),
        };
        assert_eq!(tun.name(), "trfd0");
        ip(&[
            "-n",
            &nsname,
            "addr",
            "add",
            "198.18.9.1/24",
            "dev",
            "trfd0",
        ]);
        let sock = UdpSocket::bind("198.18.9.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let sock = tokio::net::UdpSocket::from_std(sock).unwrap();
        let far: SocketAddr = "198.18.9.2:9999".parse().unwrap();
        sock.send_to(b"ping over fd", far).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let packet = loop {
            let n = tun.recv(&mut buf).await.unwrap();
            // Bare IP packets: no packet-information or virtio header in front.
            if udp4(&buf[..n]).is_some_and(|(_, d, _)| d == far) {
                break buf[..n].to_vec();
            }
        };
        assert_eq!(udp4(&packet).unwrap().2, b"ping over fd");
        // Nothing more waiting: try_recv says so instead of blocking.
        let mut more = [0u8; 2048];
        let r = tun.try_recv(&mut more);
        assert!(
            r.as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock)
                || r.as_ref().is_ok_and(|&n| udp4(&more[..n]).is_none()),
            "{r:?}"
        );
        assert_eq!(tun.send(&mirror(&packet)).await.unwrap(), packet.len());
        let mut got = [0u8; 2048];
        let (n, from) = sock.recv_from(&mut got).await.unwrap();
        assert_eq!((&got[..n], from), (&b"ping over fd"[..], far));
    });
    // The interface lives as long as its descriptor: gone once FdTun was dropped.
    let out = Command::new("ip")
        .args(["-n", &ns.0, "link", "show", "trfd0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "trfd0 outlived its descriptor");
}

/// The one's-complement sum of `data` as 16-bit big-endian words, folded.
fn csum(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Segment `i` of one TCP flow 198.18.9.2:40000 -> 198.18.9.1:5201: IPv4 (ID `i`, DF), TCP
/// with only ACK set, `len` bytes of payload at sequence `1000 + i * len`; both checksums
/// right. Consecutive segments are what a TUN merges into one super-packet.
fn tcp_segment(i: u32, len: usize) -> Vec<u8> {
    let total = 20 + 20 + len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&(i as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[198, 18, 9, 2]);
    p[16..20].copy_from_slice(&[198, 18, 9, 1]);
    let ip_sum = !(csum(0, &p[..20]) as u16);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = 20;
    p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
    p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
    p[t + 4..t + 8].copy_from_slice(&(1000 + i * len as u32).to_be_bytes());
    p[t + 8..t + 12].copy_from_slice(&1u32.to_be_bytes());
    p[t + 12] = 5 << 4;
    p[t + 13] = 0x10; // ACK
    p[t + 14..t + 16].copy_from_slice(&65535u16.to_be_bytes());
    for (k, b) in p[t + 20..].iter_mut().enumerate() {
        *b = (k % 251) as u8;
    }
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((20 + len) as u16).to_be_bytes());
    let tcp_sum = !(csum(csum(0, &pseudo), &p[t..]) as u16);
    p[t + 16..t + 18].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// The device's received-packet counter (packets written into the TUN), from `ip -s`.
fn rx_packets(ns: &str, dev: &str) -> u64 {
    let out = ip(&["-n", ns, "-j", "-s", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

/// With offload, a batch of one TCP flow's segments reaches the kernel as one super-packet,
/// provided each buffer has room for it: the capacity the engine gives its TUN batch
/// buffers (headroom twice and the largest IP packet; wg-engine's TunBatch). Buffers sized
/// to one packet are written one by one: tun-rs does not allocate to merge. That was a real
/// bug (every packet cost its own write), which this test would have caught.
#[test]
fn a_flow_written_with_room_to_merge_is_one_write() {
    let ns = Netns::new("gro");
    let nsname = ns.0.clone();
    in_netns(&ns, move || async move {
        let cfg = TunConfig {
            name: "trtun3".into(),
            mtu: 1500,
        };
        let tun = Tun::open_with(&cfg, true).unwrap_or_else(|e| {
            panic!("open TUN with offload (the kernel has had it since 2.6.27): {e}")
        });
        assert!(tun.offload());
        ip(&[
            "-n",
            &nsname,
            "addr",
            "add",
            "198.18.9.1/24",
            "dev",
            "trtun3",
        ]);
        // A listener, so the kernel keeps the flow's packets (answering with resets is fine).
        let _srv = std::net::TcpListener::bind("198.18.9.1:5201").unwrap();
        let head = tun.tx_headroom();
        const SEGMENTS: u32 = 10;
        const LEN: usize = 1400;
        let batch = |cap: usize, first: u32| -> Vec<Vec<u8>> {
            (first..first + SEGMENTS)
                .map(|i| {
                    let mut b = Vec::with_capacity(cap);
                    b.resize(head, 0);
                    b.extend_from_slice(&tcp_segment(i, LEN));
                    b
                })
                .collect()
        };

        // Room to merge: 2 * headroom + 65,535, as the engine allocates.
        let before = rx_packets(&nsname, "trtun3");
        let mut roomy = batch(2 * head + 65535, 0);
        let r = tun.send_batch(&mut roomy).await;
        assert!(r.is_ok(), "{r:?}");
        let merged = rx_packets(&nsname, "trtun3") - before;
        assert_eq!(
            merged, 1,
            "{SEGMENTS} segments of one flow should be one write, were {merged}"
        );

        // Buffers of one packet each: no merge, one write per segment.
        let before = rx_packets(&nsname, "trtun3");
        let mut tight = batch(head + 40 + LEN, SEGMENTS);
        let r = tun.send_batch(&mut tight).await;
        assert!(r.is_ok(), "{r:?}");
        let unmerged = rx_packets(&nsname, "trtun3") - before;
        assert_eq!(unmerged, u64::from(SEGMENTS));
    });
}

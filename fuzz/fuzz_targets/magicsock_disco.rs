//! magicsock's disco state machine, fed what the network can send it.
//!
//! One [`Magicsock`] with three peers whose keys derive from constants: peer 0 (disco key,
//! three netmap endpoints, home DERP 1), peer 1 (disco key, no endpoints, no home region) and
//! peer 2 (no disco key, home DERP 2). The fuzz bytes are a sequence of operations, each an
//! opcode byte and its operands (a missing byte reads as 0):
//!
//! | op % 15 | operation |
//! |---|---|
//! | 0 | raw datagram `handle_udp(addr, chunk)` |
//! | 1 | raw datagram `handle_derp(region, node, chunk)` |
//! | 2 | `chunk` sealed as a disco packet by `sender`, delivered `via` |
//! | 3 | a Ping (`tx_id[12]`, node-key choice, padding byte) sealed by `sender`, `via` |
//! | 4 | a Pong answering one of our pings seen on the wire (or a fuzzed tx_id) |
//! | 5 | a CallMeMaybe with up to 39 endpoints, sealed by `sender`, `via` |
//! | 6 | `send_paths(peer)` |
//! | 7 | `ping(peer)` |
//! | 8 | `handle_timeout(now)` |
//! | 9 | the clock moves forward (10 ms to 10 min) |
//! | 10 | `poll_transmit` until empty; bit 0 of the next byte: the peers answer our pings |
//! | 11 | `poll_event` until empty |
//! | 12 | a new netmap (`set_peers`): peer 0 restarts, endpoints change, peers come and go |
//! | 13 | `note_derp_recv(peer, region)` |
//! | 14 | `set_my_endpoints` with up to 7 addresses |
//!
//! `addr` is one byte: below 0x80 an entry of a table of interesting addresses (the peers'
//! endpoints, loopback, link-local, v4-mapped v6, unspecified, port 0, multicast, broadcast,
//! DERP's magic address), else an IPv4 (0x80) or IPv6 (0xc0) address and port read from the
//! bytes that follow. `via` is one byte: even, UDP from `addr`; odd, DERP `region` from `node`.
//! `chunk` is a length byte and that many bytes.
//!
//! After every operation: no panic, candidates per peer at most 32, distinct and usable, a
//! trusted path has an address, the peer without a disco key never gets a direct path nor a
//! datagram, counters never go down; every datagram queued is a well-formed disco packet
//! from our key that the addressed peer can open, at most 1024 are queued, pings over UDP go
//! only to usable addresses, CallMeMaybe only over DERP; packets from keys outside the netmap
//! are never accepted; `send_paths` agrees with `path_status` (trusted: the direct address
//! alone; else DERP plus the last direct address, or the first candidate with no region).
//!
//! `FUZZ_TRACE=1 target/…/magicsock_disco FILE` prints each operation and its outcome.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tailcfg::key::{DiscoPrivate, DiscoPublic, NodePrivate, NodePublic};
use wg_engine::disco::{self, CallMeMaybe, MAGIC, Message, Packet, Ping, Pong, TX_ID_LEN};
use wg_engine::magicsock::{Event, Magicsock, Path, PeerInfo, Stats};
use wg_engine::nacl::{NONCE_LEN, SharedKey};

/// Mirrors magicsock's private bounds.
const MAX_CANDIDATES: usize = 32;
const MAX_QUEUED: usize = 1024;
/// Operations per input, so one input stays fast.
const MAX_OPS: usize = 256;

/// A key that can seal disco packets to us.
struct Sender {
    public: DiscoPublic,
    shared: SharedKey,
}

struct Fixed {
    my_disco: DiscoPrivate,
    my_disco_pub: DiscoPublic,
    my_node: NodePublic,
    /// The three peers' node keys.
    nodes: [NodePublic; 3],
    /// Senders: peer 0, peer 1, peer 0 after a restart, peer 2's would-be key (never in the
    /// netmap), a stranger.
    senders: [Sender; 5],
    /// The peers' side of the box keys, to open what we send them: peer 0, peer 0 restarted,
    /// peer 1.
    openers: [SharedKey; 3],
    stranger_node: NodePublic,
    addrs: Vec<SocketAddr>,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let my_disco = DiscoPrivate::from_bytes([0x10; 32]);
        let my_disco_pub = my_disco.public();
        let my_node = NodePrivate::from_bytes([0x20; 32]).public();
        let nodes = [0x21u8, 0x22, 0x23].map(|b| NodePrivate::from_bytes([b; 32]).public());
        let discos = [0x11u8, 0x12, 0x19, 0x13, 0x1f].map(|b| DiscoPrivate::from_bytes([b; 32]));
        let senders = discos.each_ref().map(|d| Sender {
            public: d.public(),
            shared: SharedKey::disco(d, &my_disco_pub),
        });
        let openers = [0usize, 2, 1].map(|i| SharedKey::disco(&discos[i], &my_disco_pub));
        let addrs = [
            "10.0.0.2:41641",
            "[fd7a:115c:a1e0::2]:41641",
            "203.0.113.7:3478",
            "192.168.1.3:41641",
            "10.0.0.9:1234",
            "127.0.0.1:41641",
            "169.254.1.1:41641",
            "[::ffff:10.0.0.2]:41641",
            "[fe80::1]:41641",
            "0.0.0.0:41641",
            "10.0.0.2:0",
            "224.0.0.1:41641",
            "255.255.255.255:41641",
            "[2001:db8::7]:41641",
            "[fc00::1]:1",
            "127.3.3.40:1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        Fixed {
            my_disco,
            my_disco_pub,
            my_node,
            nodes,
            senders,
            openers,
            stranger_node: NodePrivate::from_bytes([0x2f; 32]).public(),
            addrs,
        }
    })
}

/// The fuzz bytes, read from the front; past the end every byte is 0.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.take(N);
        a[..b.len()].copy_from_slice(b);
        a
    }
    fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.take(n)
    }
    fn addr(&mut self, f: &Fixed) -> SocketAddr {
        let b = self.byte();
        if b < 0x80 {
            return f.addrs[usize::from(b) % f.addrs.len()];
        }
        let ip = if b >= 0xc0 {
            IpAddr::V6(Ipv6Addr::from(self.array::<16>()))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.array::<4>()))
        };
        SocketAddr::new(ip, u16::from_be_bytes(self.array::<2>()))
    }
    fn region(&mut self) -> i32 {
        match self.byte() {
            b @ 0..=249 => i32::from(b % 5),
            250 => -1,
            251 => i32::MAX,
            252 => i32::MIN,
            253 => 65536,
            254 => 900,
            255 => 65535,
        }
    }
    fn node(&mut self, f: &Fixed) -> NodePublic {
        match self.byte() % 6 {
            i @ 0..=2 => f.nodes[usize::from(i)],
            3 => f.my_node,
            _ => f.stranger_node,
        }
    }
    fn via(&mut self, f: &Fixed) -> Via {
        if self.byte() % 2 == 0 {
            Via::Udp(self.addr(f))
        } else {
            Via::Derp(self.region(), self.node(f))
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Udp(SocketAddr),
    Derp(i32, NodePublic),
}

/// With `FUZZ_TRACE` set, prints what happens (to check that seeds go where they should).
fn trace(what: std::fmt::Arguments<'_>) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some()) {
        eprintln!("{what}");
    }
}

/// Go's rule for a usable direct endpoint, as magicsock applies it.
fn usable(a: &SocketAddr) -> bool {
    if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
        return false;
    }
    match a.ip() {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        IpAddr::V4(v4) => !v4.is_broadcast(),
    }
}

struct Harness {
    f: &'static Fixed,
    ms: Magicsock,
    start: Instant,
    now: Instant,
    nonce: u64,
    /// Our pings seen on the wire: the peer (index), the path, the tx_id.
    pings: Vec<(usize, Path, [u8; TX_ID_LEN])>,
    /// Which peers the current netmap holds, and peer 0's sender index (0, or 2 restarted).
    present: [bool; 3],
    peer0_sender: usize,
    peer1_disco: bool,
    stats: Stats,
}

impl Harness {
    fn new() -> Self {
        let f = fixed();
        let now = Instant::now();
        let mut h = Harness {
            f,
            ms: Magicsock::new(f.my_disco.clone(), f.my_node),
            start: now,
            now,
            nonce: 0,
            pings: Vec::new(),
            present: [true; 3],
            peer0_sender: 0,
            peer1_disco: true,
            stats: Stats::default(),
        };
        h.ms.set_my_endpoints(vec![f.addrs[4], f.addrs[13]]);
        h.set_peers(0);
        h
    }

    /// A netmap from the bits of `v`: bit 0 peer 0 restarted (new disco key), bit 1 peer 0's
    /// endpoints changed, bit 2 peer 1 absent, bit 3 peer 1 without disco key, bit 4 peer 2
    /// absent, bit 5 peer 1 claims peer 0's disco key (a confused control server), bit 6
    /// peer 0 absent.
    fn set_peers(&mut self, v: u8) {
        let f = self.f;
        let a = &f.addrs;
        self.peer0_sender = if v & 1 != 0 { 2 } else { 0 };
        let eps0 = if v & 2 != 0 {
            vec![a[0], a[4], a[8], a[10]]
        } else {
            vec![a[0], a[1], a[2]]
        };
        self.present = [v & 64 == 0, v & 4 == 0, v & 16 == 0];
        self.peer1_disco = v & 8 == 0;
        let mut peers = Vec::new();
        if self.present[0] {
            peers.push(PeerInfo {
                key: f.nodes[0],
                disco: Some(f.senders[self.peer0_sender].public),
                endpoints: eps0,
                home_derp: 1,
            });
        }
        if self.present[1] {
            let disco = if v & 32 != 0 {
                Some(f.senders[self.peer0_sender].public)
            } else {
                Some(f.senders[1].public)
            };
            peers.push(PeerInfo {
                key: f.nodes[1],
                disco: disco.filter(|_| self.peer1_disco),
                endpoints: Vec::new(),
                home_derp: 0,
            });
        }
        if self.present[2] {
            peers.push(PeerInfo {
                key: f.nodes[2],
                disco: None,
                endpoints: vec![a[3]],
                home_derp: 2,
            });
        }
        self.ms.set_peers(peers);
    }

    /// Whether `sender` is the disco key of a peer in the current netmap.
    fn sender_known(&self, sender: usize) -> bool {
        match sender {
            0 | 2 => {
                (self.present[0] && self.peer0_sender == sender)
                    || (self.present[1] && self.peer1_disco && self.peer0_sender == sender)
            }
            1 => self.present[1] && self.peer1_disco,
            _ => false,
        }
    }

    fn seal(&mut self, sender: usize, plain: &[u8]) -> Vec<u8> {
        let s = &self.f.senders[sender];
        self.nonce += 1;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&self.nonce.to_le_bytes());
        let mut out = Vec::with_capacity(disco::HEADER_LEN + 40 + plain.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(s.public.as_bytes());
        s.shared.seal_with_nonce(&nonce, plain, &mut out);
        out
    }

    fn deliver(&mut self, via: Via, packet: &[u8]) -> bool {
        match via {
            Via::Udp(a) => self.ms.handle_udp(a, packet, self.now),
            Via::Derp(r, k) => self.ms.handle_derp(r, k, packet, self.now),
        }
    }

    fn sealed(&mut self, sender: usize, via: Via, plain: &[u8]) {
        let packet = self.seal(sender, plain);
        let accepted = self.deliver(via, &packet);
        trace(format_args!(
            "sealed by {sender} via {via:?}: accepted {accepted}"
        ));
        if accepted {
            assert!(
                self.sender_known(sender),
                "accepted disco from sender {sender}, a key outside the netmap"
            );
        }
    }

    fn sealed_msg(&mut self, sender: usize, via: Via, msg: &Message) {
        let mut plain = Vec::with_capacity(msg.len());
        msg.emit(&mut plain);
        assert_eq!(plain.len(), msg.len());
        self.sealed(sender, via, &plain);
    }

    /// Opens a datagram we queued for peer `i` with the peer's keys.
    fn open_ours(&self, i: usize, data: &[u8]) -> Message {
        let p = Packet::parse(data).expect("we queued a datagram that is not disco");
        assert_eq!(
            p.sender, self.f.my_disco_pub,
            "queued disco not from our key"
        );
        // Peer 1 may hold peer 0's key when the netmap says so.
        let keys: &[usize] = if i == 0 { &[0, 1] } else { &[0, 1, 2] };
        for &k in keys {
            if let Ok(m) = p.open(&self.f.openers[k]) {
                return m;
            }
        }
        panic!("peer {i} cannot open a datagram we queued for it");
    }

    fn drain(&mut self, answer: bool, latency: Duration) {
        // Answering pongs queue nothing, so all we drain was queued before.
        let mut n = 0;
        while let Some(t) = self.ms.poll_transmit() {
            n += 1;
            assert!(n <= MAX_QUEUED, "more than {MAX_QUEUED} datagrams queued");
            let i = self
                .f
                .nodes
                .iter()
                .position(|k| *k == t.peer)
                .expect("datagram for a node never in the netmap");
            assert_ne!(i, 2, "a datagram for the peer without a disco key");
            let msg = self.open_ours(i, &t.data);
            trace(format_args!("transmit to peer {i} via {}: {msg:?}", t.path));
            match &msg {
                Message::Ping(p) => {
                    assert_eq!(p.node_key, Some(self.f.my_node));
                    if let Path::Udp(a) = t.path {
                        assert!(usable(&a), "ping to unusable address {a}");
                    }
                    if let Path::Derp(r) = t.path {
                        assert_ne!(r, 0, "ping over DERP region 0");
                    }
                    if self.pings.len() >= 256 {
                        self.pings.remove(0);
                    }
                    self.pings.push((i, t.path, p.tx_id));
                    if answer && self.present[i] {
                        // The peer answers from where we sent it.
                        self.now += latency;
                        let sender = if i == 0 { self.peer0_sender } else { 1 };
                        let pong = Message::Pong(Pong {
                            tx_id: p.tx_id,
                            src: self.f.addrs[4],
                        });
                        let via = match t.path {
                            Path::Udp(a) => Via::Udp(a),
                            Path::Derp(r) => Via::Derp(r, self.f.nodes[i]),
                        };
                        self.sealed_msg(sender, via, &pong);
                    }
                }
                Message::Pong(_) => {}
                Message::CallMeMaybe(_) => {
                    assert!(
                        matches!(t.path, Path::Derp(r) if r != 0),
                        "CallMeMaybe not over DERP: {:?}",
                        t.path
                    );
                }
                _ => {}
            }
        }
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.ms.poll_event() {
            trace(format_args!("event {e:?}"));
            match e {
                Event::PathChanged { peer, udp } => {
                    assert_ne!(peer, self.f.nodes[2], "path change for the disco-less peer");
                    assert!(self.f.nodes.contains(&peer));
                    if let Some(a) = udp {
                        assert!(usable(&a), "path changed to unusable {a}");
                    }
                }
                Event::Pong { peer, latency, .. } => {
                    assert!(self.f.nodes[..2].contains(&peer));
                    assert!(latency <= self.now - self.start);
                }
                _ => {}
            }
        }
    }

    fn check(&mut self) {
        let now = self.now;
        let present = self.present.iter().filter(|p| **p).count();
        assert_eq!(self.ms.len(), present);
        for (i, k) in self.f.nodes.iter().enumerate() {
            let st = self.ms.path_status(k, now);
            assert_eq!(st.is_some(), self.present[i]);
            let Some(st) = st else { continue };
            assert!(
                st.candidates.len() <= MAX_CANDIDATES,
                "{} candidates",
                st.candidates.len()
            );
            let distinct: HashSet<_> = st.candidates.iter().collect();
            assert_eq!(distinct.len(), st.candidates.len(), "duplicate candidates");
            for c in &st.candidates {
                assert!(usable(c), "unusable candidate {c}");
            }
            assert_eq!(st.udp.is_some(), st.latency.is_some());
            if st.trusted {
                assert!(st.udp.is_some(), "trusted without an address");
            }
            if i == 2 {
                assert_eq!(st.udp, None, "direct path for the peer without disco");
            }
            if let Some(u) = st.udp {
                assert!(usable(&u));
            }
        }
        assert!(self.ms.path_status(&self.f.stranger_node, now).is_none());
        if let Some(t) = self.ms.poll_timeout(now) {
            assert!(t > now);
        }
        let s = self.ms.stats();
        let o = self.stats;
        assert!(
            s.disco_rejected >= o.disco_rejected
                && s.pings_received >= o.pings_received
                && s.pongs_matched >= o.pongs_matched
                && s.pongs_unmatched >= o.pongs_unmatched
                && s.call_me_maybe_received >= o.call_me_maybe_received
                && s.queue_drops >= o.queue_drops,
            "a counter went down: {o:?} -> {s:?}"
        );
        self.stats = s;
    }

    fn send_paths(&mut self, i: usize) {
        let k = if i < 3 {
            self.f.nodes[i]
        } else {
            self.f.stranger_node
        };
        let paths = self.ms.send_paths(&k, self.now);
        trace(format_args!("send_paths({i}) = {paths:?}"));
        let known = i < 3 && self.present[i];
        assert_eq!(paths.is_some(), known);
        let Some(p) = paths else { return };
        let st = self.ms.path_status(&k, self.now).unwrap();
        if st.trusted {
            assert_eq!(p.udp, st.udp);
            assert_eq!(p.derp, None, "DERP copy on a trusted path");
        } else {
            // Untrusted: the last direct path and DERP; with no DERP region, the first
            // candidate rather than nothing.
            let r = st.derp_region;
            assert_eq!(p.derp, (r != 0).then_some(r));
            let first = st.candidates.first().copied().filter(|_| r == 0);
            assert_eq!(p.udp, st.udp.or(first));
        }
    }

    fn run(&mut self, inp: &mut Input<'_>) {
        let f = self.f;
        for _ in 0..MAX_OPS {
            if inp.0.is_empty() {
                break;
            }
            let op = inp.byte() % 15;
            trace(format_args!("op {op} at {:?}", self.now - self.start));
            match op {
                0 => {
                    let a = inp.addr(f);
                    let d = inp.chunk();
                    self.ms.handle_udp(a, d, self.now);
                }
                1 => {
                    let r = inp.region();
                    let k = inp.node(f);
                    let d = inp.chunk();
                    self.ms.handle_derp(r, k, d, self.now);
                }
                2 => {
                    let s = usize::from(inp.byte()) % 5;
                    let via = inp.via(f);
                    let d = inp.chunk();
                    self.sealed(s, via, d);
                }
                3 => {
                    let s = usize::from(inp.byte()) % 5;
                    let via = inp.via(f);
                    let tx_id = inp.array::<TX_ID_LEN>();
                    let node_key = match inp.byte() % 6 {
                        0 => None,
                        i @ 1..=3 => Some(f.nodes[usize::from(i - 1)]),
                        4 => Some(f.my_node),
                        _ => Some(NodePublic::from_bytes(inp.array::<32>())),
                    };
                    let padding = usize::from(inp.byte());
                    let m = Message::Ping(Ping {
                        tx_id,
                        node_key,
                        padding,
                    });
                    self.sealed_msg(s, via, &m);
                }
                4 => {
                    let s = usize::from(inp.byte()) % 5;
                    let pick = inp.byte();
                    let src = inp.addr(f);
                    let m = usize::from(inp.byte());
                    let (via, tx_id) = if pick < 0xf0 && !self.pings.is_empty() {
                        let (i, path, tx) = self.pings[usize::from(pick) % self.pings.len()];
                        let via = match path {
                            Path::Udp(a) if m % 4 != 3 => Via::Udp(a),
                            Path::Derp(r) if m % 4 != 3 => Via::Derp(r, f.nodes[i]),
                            _ => inp.via(f),
                        };
                        (via, tx)
                    } else {
                        (inp.via(f), inp.array::<TX_ID_LEN>())
                    };
                    self.sealed_msg(s, via, &Message::Pong(Pong { tx_id, src }));
                }
                5 => {
                    let s = usize::from(inp.byte()) % 5;
                    let via = inp.via(f);
                    let n = inp.byte() % 40;
                    let endpoints = (0..n).map(|_| inp.addr(f)).collect();
                    let m = Message::CallMeMaybe(CallMeMaybe { endpoints });
                    self.sealed_msg(s, via, &m);
                }
                6 => self.send_paths(usize::from(inp.byte()) % 4),
                7 => {
                    let i = usize::from(inp.byte()) % 4;
                    let k = if i < 3 { f.nodes[i] } else { f.stranger_node };
                    let ids = self.ms.ping(&k, self.now);
                    let can = i < 3
                        && self.present[i]
                        && match i {
                            0 => true,
                            1 => self.peer1_disco,
                            _ => false,
                        };
                    assert_eq!(ids.is_some(), can, "ping of peer {i}");
                    if let Some(ids) = ids {
                        assert!(ids.len() <= MAX_CANDIDATES + 1);
                    }
                }
                8 => self.ms.handle_timeout(self.now),
                9 => {
                    let b = inp.byte();
                    let v = u64::from(b & 63);
                    self.now += match b >> 6 {
                        0 => Duration::from_millis(10 * v),
                        1 => Duration::from_millis(100 * v),
                        2 => Duration::from_secs(v),
                        _ => Duration::from_secs(10 * v),
                    };
                }
                10 => {
                    let b = inp.byte();
                    self.drain(b & 1 == 1, Duration::from_micros(u64::from(b >> 1) * 100));
                }
                11 => self.drain_events(),
                12 => {
                    let v = inp.byte();
                    self.set_peers(v);
                }
                13 => {
                    let k = inp.node(f);
                    let r = inp.region();
                    self.ms.note_derp_recv(&k, r);
                }
                _ => {
                    let n = inp.byte() % 8;
                    let eps = (0..n).map(|_| inp.addr(f)).collect();
                    self.ms.set_my_endpoints(eps);
                }
            }
            self.check();
        }
        self.drain(false, Duration::ZERO);
        self.drain_events();
        self.check();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = Harness::new();
    h.run(&mut Input(data));
});

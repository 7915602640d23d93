//! In-memory WireGuard: two or three `Peers` tables handshake and exchange packets through a
//! simulated network, driven by a simulated clock; configuration changes keep sessions;
//! garbage never panics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tailcfg::IpPrefix;
use tailcfg::key::{NodePrivate, NodePublic};
use wg_engine::wireguard::{
    BUFFER_LEN, Decapsulated, EngineConfig, Error, PeerConfig, Peers, TIMER_TICK,
};

/// Endpoints in this simulation are node numbers.
type Ep = u8;

fn prefix(s: &str) -> IpPrefix {
    s.parse()
        .unwrap_or_else(|e| unreachable!("bad test prefix {s}: {e}"))
}

/// A minimal IPv4 packet (protocol 253, reserved for experiments) carrying `payload`.
fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 253, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

fn peer(key: NodePublic, ips: &[&str], endpoint: Option<Ep>) -> PeerConfig<Ep> {
    PeerConfig {
        key,
        allowed_ips: ips.iter().map(|s| prefix(s)).collect(),
        endpoint,
    }
}

/// Nodes joined by a lossless in-memory network, with a simulated clock.
struct Sim {
    nodes: Vec<Peers<Ep>>,
    /// (from, to, datagram) in flight.
    wire: VecDeque<(Ep, Ep, Vec<u8>)>,
    /// IP packets each node delivered to its TUN: (node, packet).
    delivered: Vec<(Ep, Vec<u8>)>,
    errors: Vec<(Ep, String)>,
    now: Instant,
    buf: Vec<u8>,
}

impl Sim {
    fn new(nodes: Vec<Peers<Ep>>) -> Self {
        Self {
            nodes,
            wire: VecDeque::new(),
            delivered: Vec::new(),
            errors: Vec::new(),
            now: Instant::now(),
            buf: vec![0; BUFFER_LEN],
        }
    }

    /// Node `from` sends an IP packet read from its TUN.
    fn send(&mut self, from: Ep, packet: &[u8]) -> Result<(), Error> {
        if let Some(t) = self.nodes[from as usize].encapsulate(packet, &mut self.buf)? {
            self.wire.push_back((from, t.dst, t.datagram.to_vec()));
        }
        Ok(())
    }

    /// Delivers everything in flight (and whatever it causes), advancing the clock 1 ms a hop
    /// and running every node's timers when due.
    fn run(&mut self) {
        let mut hops = 0;
        while let Some((from, to, d)) = self.wire.pop_front() {
            hops += 1;
            assert!(hops < 1000, "simulation does not settle");
            self.now += Duration::from_millis(1);
            self.timers();
            let node = &mut self.nodes[to as usize];
            match node.decapsulate(None, from, &d, &mut self.buf) {
                Ok(Decapsulated::Packet { packet, .. }) => {
                    self.delivered.push((to, packet.to_vec()))
                }
                Ok(Decapsulated::Transmit(t)) => {
                    let peer = t.peer;
                    self.wire.push_back((to, t.dst, t.datagram.to_vec()));
                    while let Ok(Some(t)) = node.flush_queued(&peer, &mut self.buf) {
                        self.wire.push_back((to, t.dst, t.datagram.to_vec()));
                    }
                }
                Ok(Decapsulated::Done) => {}
                Err(e) => self.errors.push((to, e.to_string())),
            }
        }
    }

    fn timers(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.poll_timeout().is_none_or(|t| self.now >= t) {
                let wire = &mut self.wire;
                let r = node.handle_timeout(self.now, &mut self.buf, |t| {
                    wire.push_back((i as Ep, t.dst, t.datagram.to_vec()))
                });
                assert!(r.is_ok());
            }
        }
    }
}

struct Keys {
    a: NodePrivate,
    b: NodePrivate,
    c: NodePrivate,
}

fn keys() -> Keys {
    Keys {
        a: NodePrivate::generate(),
        b: NodePrivate::generate(),
        c: NodePrivate::generate(),
    }
}

const A_IP: [u8; 4] = [100, 64, 0, 1];
const B_IP: [u8; 4] = [100, 64, 0, 2];

/// Node 0 (A) knows B's endpoint; node 1 (B) learns A's from the handshake.
fn pair(k: &Keys) -> Sim {
    let a = Peers::new(EngineConfig {
        private_key: k.a.clone(),
        peers: vec![peer(k.b.public(), &["100.64.0.2/32"], Some(1))],
    });
    let b = Peers::new(EngineConfig {
        private_key: k.b.clone(),
        peers: vec![peer(
            k.a.public(),
            &["100.64.0.1/32", "fd7a:115c:a1e0::1/128"],
            None,
        )],
    });
    Sim::new(vec![a, b])
}

fn handshake(sim: &mut Sim) {
    let first = ipv4(A_IP, B_IP, b"hello b");
    assert!(sim.send(0, &first).is_ok());
    assert_eq!(
        sim.wire.front().map(|w| w.2[0]),
        Some(1),
        "first a handshake initiation"
    );
    sim.run();
    assert_eq!(sim.errors, vec![]);
    assert_eq!(
        sim.delivered,
        vec![(1, first)],
        "the queued packet arrives after the handshake"
    );
    sim.delivered.clear();
}

#[test]
fn handshake_and_packets_both_ways() {
    let k = keys();
    let mut sim = pair(&k);
    handshake(&mut sim);
    assert_eq!(
        sim.nodes[1].endpoint(&k.a.public()),
        Some(&0),
        "B learned A's endpoint"
    );

    let reply = ipv4(B_IP, A_IP, b"hello a");
    assert!(sim.send(1, &reply).is_ok());
    assert_eq!(
        sim.wire.front().map(|w| w.2[0]),
        Some(4),
        "a data message, no new handshake"
    );
    sim.run();
    assert_eq!(sim.delivered, vec![(0, reply)]);

    for i in 0..50u8 {
        assert!(sim.send(0, &ipv4(A_IP, B_IP, &[i; 100])).is_ok());
        assert!(sim.send(1, &ipv4(B_IP, A_IP, &[i; 1200])).is_ok());
    }
    sim.run();
    assert_eq!(sim.errors, vec![]);
    assert_eq!(sim.delivered.len(), 101);
    let stats = sim.nodes[0].stats(&k.b.public());
    assert!(stats.is_some_and(|s| s.since_handshake.is_some() && s.rx_bytes > 50 * 1200));
}

#[test]
fn replay_and_spoofed_source_are_refused() {
    let k = keys();
    let mut sim = pair(&k);
    handshake(&mut sim);
    // B sends from an address outside its AllowedIPs on A.
    let spoofed = ipv4([100, 64, 0, 99], A_IP, b"spoof");
    assert!(sim.send(1, &spoofed).is_ok());
    let (from, to, d) = sim.wire.pop_front().unwrap_or_default();
    let mut buf = vec![0; BUFFER_LEN];
    let r = sim.nodes[to as usize].decapsulate(None, from, &d, &mut buf);
    assert!(matches!(r, Err(Error::SourceNotAllowed { .. })), "{r:?}");
    // The same datagram again is a replay.
    let r = sim.nodes[to as usize].decapsulate(None, from, &d, &mut buf);
    assert!(matches!(r, Err(Error::Protocol(_))), "{r:?}");
}

#[test]
fn no_route_and_no_endpoint() {
    let k = keys();
    let mut sim = pair(&k);
    let r = sim.send(0, &ipv4(A_IP, [8, 8, 8, 8], b"x"));
    assert!(matches!(r, Err(Error::NoRoute(_))), "{r:?}");
    // B has no endpoint for A until A speaks first.
    let r = sim.send(1, &ipv4(B_IP, A_IP, b"x"));
    assert!(matches!(r, Err(Error::NoEndpoint(_))), "{r:?}");
    let r = sim.send(0, &[0x60, 0, 0]);
    assert!(matches!(r, Err(Error::NotIp)), "{r:?}");
    let mut small = vec![0; 100];
    let r = sim.nodes[0].encapsulate(&ipv4(A_IP, B_IP, b"x"), &mut small);
    assert!(matches!(r, Err(Error::BufferTooSmall(100))), "{r:?}");
}

#[test]
fn set_config_keeps_sessions_of_unchanged_keys() {
    let k = keys();
    let mut sim = pair(&k);
    handshake(&mut sim);

    // Add a route to B and a new peer C: B's session must survive.
    sim.nodes[0].set_config(EngineConfig {
        private_key: k.a.clone(),
        peers: vec![
            peer(k.c.public(), &["100.64.0.3/32"], Some(2)),
            peer(k.b.public(), &["100.64.0.2/32", "10.0.0.0/8"], None),
        ],
    });
    assert_eq!(sim.nodes[0].len(), 2);
    assert_eq!(
        sim.nodes[0].endpoint(&k.b.public()),
        Some(&1),
        "endpoint kept"
    );
    let routed = ipv4(A_IP, [10, 1, 2, 3], b"via b");
    assert!(sim.send(0, &routed).is_ok());
    assert_eq!(
        sim.wire.front().map(|w| w.2[0]),
        Some(4),
        "data at once: session kept"
    );
    sim.wire.clear();

    // To C: a handshake, C being new.
    assert!(sim.send(0, &ipv4(A_IP, [100, 64, 0, 3], b"to c")).is_ok());
    assert_eq!(sim.wire.front().map(|w| (w.1, w.2[0])), Some((2, 1)));
    sim.wire.clear();

    // Remove B: no route any more; C keeps its pending state.
    sim.nodes[0].set_config(EngineConfig {
        private_key: k.a.clone(),
        peers: vec![peer(k.c.public(), &["100.64.0.3/32"], None)],
    });
    let r = sim.send(0, &ipv4(A_IP, B_IP, b"gone"));
    assert!(matches!(r, Err(Error::NoRoute(_))), "{r:?}");
    assert_eq!(sim.nodes[0].allowed_ips().len(), 1);

    // Add B back: a fresh Tunn, so a new handshake.
    sim.nodes[0].set_config(EngineConfig {
        private_key: k.a.clone(),
        peers: vec![peer(k.b.public(), &["100.64.0.2/32"], Some(1))],
    });
    assert!(sim.send(0, &ipv4(A_IP, B_IP, b"back")).is_ok());
    assert_eq!(sim.wire.front().map(|w| w.2[0]), Some(1));
    sim.run();
    assert_eq!(sim.errors, vec![]);
    assert_eq!(sim.delivered.len(), 1);
}

#[test]
fn new_private_key_resets_sessions() {
    let k = keys();
    let mut sim = pair(&k);
    handshake(&mut sim);
    let new = NodePrivate::generate();
    sim.nodes[0].set_config(EngineConfig {
        private_key: new.clone(),
        peers: vec![peer(k.b.public(), &["100.64.0.2/32"], None)],
    });
    assert_eq!(sim.nodes[0].public_key(), new.public());
    assert!(sim.send(0, &ipv4(A_IP, B_IP, b"x")).is_ok());
    assert_eq!(
        sim.wire.front().map(|w| w.2[0]),
        Some(1),
        "handshake with the new key"
    );
    // B does not know the new key: the initiation is refused without panicking.
    sim.run();
    assert_eq!(sim.errors.len(), 1, "{:?}", sim.errors);
}

#[test]
fn timers_follow_the_simulated_clock() {
    let k = keys();
    let mut sim = pair(&k);
    let t0 = sim.now;
    let mut buf = vec![0; BUFFER_LEN];
    let n = sim.nodes[0].handle_timeout(t0, &mut buf, |_| {});
    assert!(n.is_ok());
    assert_eq!(sim.nodes[0].poll_timeout(), Some(t0 + TIMER_TICK));
    // Not yet due: nothing runs, the deadline stays.
    let n = sim.nodes[0].handle_timeout(t0 + TIMER_TICK / 2, &mut buf, |_| {});
    assert!(matches!(n, Ok(0)));
    assert_eq!(sim.nodes[0].poll_timeout(), Some(t0 + TIMER_TICK));
    let n = sim.nodes[0].handle_timeout(t0 + TIMER_TICK, &mut buf, |_| {});
    assert!(n.is_ok());
    assert_eq!(sim.nodes[0].poll_timeout(), Some(t0 + 2 * TIMER_TICK));
    let empty: Peers<Ep> = Peers::new(EngineConfig {
        private_key: k.c.clone(),
        peers: vec![],
    });
    assert_eq!(empty.poll_timeout(), None);
    assert!(empty.is_empty());
}

/// A small deterministic generator (xorshift64*) for the garbage test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn garbage_datagrams_do_not_panic() {
    let k = keys();
    let mut sim = pair(&k);
    // Capture real messages of every kind to mutate.
    let mut samples: Vec<Vec<u8>> = Vec::new();
    assert!(sim.send(0, &ipv4(A_IP, B_IP, b"sample")).is_ok());
    let init = sim.wire.front().map(|w| w.2.clone()).unwrap_or_default();
    samples.push(init);
    sim.run();
    assert!(sim.send(1, &ipv4(B_IP, A_IP, b"data")).is_ok());
    samples.push(sim.wire.front().map(|w| w.2.clone()).unwrap_or_default());
    sim.wire.clear();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0; BUFFER_LEN];
    let hint = Some(k.a.public());
    for round in 0..20_000u32 {
        let d: Vec<u8> = match round % 4 {
            0 => {
                let len = (rng.next() % 200) as usize;
                (0..len).map(|_| rng.next() as u8).collect()
            }
            1 => {
                // A valid type and zeros, at the interesting lengths.
                let lens = [4, 31, 32, 64, 92, 147, 148, 149];
                let mut d = vec![0u8; lens[(rng.next() % 8) as usize]];
                d[0] = (rng.next() % 5) as u8;
                d
            }
            _ => {
                // A real message, truncated or with one byte flipped.
                let s = &samples[(rng.next() % 2) as usize];
                let mut d = s.clone();
                if rng.next() % 2 == 0 {
                    d.truncate((rng.next() as usize) % (s.len() + 1));
                } else if !d.is_empty() {
                    let i = (rng.next() as usize) % d.len();
                    d[i] ^= 1 << (rng.next() % 8);
                }
                d
            }
        };
        let node = (round % 2) as usize;
        let h = if round % 3 == 0 { hint } else { None };
        let r = sim.nodes[node].decapsulate(h, 7, &d, &mut buf);
        if matches!(r, Ok(Decapsulated::Packet { .. })) {
            // Only the untouched data message may decrypt (once: then it is a replay).
            assert_eq!(d, samples[1], "garbage decrypted");
        }
        let _ = sim.nodes[node].encapsulate(&d, &mut buf);
    }
    // The tunnel still works afterwards.
    assert!(sim.send(1, &ipv4(B_IP, A_IP, b"still fine")).is_ok());
    sim.run();
    assert!(
        sim.delivered
            .iter()
            .any(|(n, p)| *n == 0 && p.ends_with(b"still fine"))
    );
}

#[test]
fn simultaneous_initiations_settle() {
    let k = keys();
    let mut sim = pair(&k);
    // B knows A's endpoint too, and both start at once.
    sim.nodes[1].set_config(EngineConfig {
        private_key: k.b.clone(),
        peers: vec![peer(k.a.public(), &["100.64.0.1/32"], Some(0))],
    });
    assert!(sim.send(0, &ipv4(A_IP, B_IP, b"from a")).is_ok());
    assert!(sim.send(1, &ipv4(B_IP, A_IP, b"from b")).is_ok());
    sim.run();
    let mut got: Vec<_> = sim.delivered.iter().map(|(n, p)| (*n, p.len())).collect();
    got.sort();
    assert_eq!(got, vec![(0, 26), (1, 26)], "errors: {:?}", sim.errors);
    sim.delivered.clear();
    for _ in 0..3 {
        assert!(sim.send(0, &ipv4(A_IP, B_IP, b"again")).is_ok());
        assert!(sim.send(1, &ipv4(B_IP, A_IP, b"again")).is_ok());
    }
    sim.run();
    assert_eq!(sim.delivered.len(), 6, "errors: {:?}", sim.errors);
}

#[test]
fn routes_by_longest_prefix_across_peers() {
    let k = keys();
    let a = Peers::new(EngineConfig {
        private_key: k.a.clone(),
        peers: vec![
            peer(k.b.public(), &["100.64.0.2/32", "10.0.0.0/8"], Some(1)),
            peer(k.c.public(), &["100.64.0.3/32", "10.1.0.0/16"], Some(2)),
        ],
    });
    let b = Peers::new(EngineConfig {
        private_key: k.b.clone(),
        peers: vec![peer(k.a.public(), &["100.64.0.1/32"], None)],
    });
    let c = Peers::new(EngineConfig {
        private_key: k.c.clone(),
        peers: vec![peer(k.a.public(), &["100.64.0.1/32"], None)],
    });
    let mut sim = Sim::new(vec![a, b, c]);
    assert!(sim.send(0, &ipv4(A_IP, [10, 1, 9, 9], b"to c")).is_ok());
    assert!(sim.send(0, &ipv4(A_IP, [10, 2, 9, 9], b"to b")).is_ok());
    let dsts: Vec<Ep> = sim.wire.iter().map(|w| w.1).collect();
    assert_eq!(dsts, vec![2, 1]);
    sim.run();
    let mut got: Vec<_> = sim
        .delivered
        .iter()
        .map(|(n, p)| (*n, p[16..20].to_vec()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![(1, vec![10, 2, 9, 9]), (2, vec![10, 1, 9, 9])],
        "{:?}",
        sim.errors
    );
}

#[test]
fn peer_hint_from_the_transport() {
    // Over DERP the sender's key is known: decapsulate with the hint, endpoints being keys.
    let k = keys();
    let mut a: Peers<NodePublic> = Peers::new(EngineConfig {
        private_key: k.a.clone(),
        peers: vec![PeerConfig {
            key: k.b.public(),
            allowed_ips: vec![prefix("100.64.0.2/32")],
            endpoint: Some(k.b.public()),
        }],
    });
    let mut b: Peers<NodePublic> = Peers::new(EngineConfig {
        private_key: k.b.clone(),
        peers: vec![PeerConfig {
            key: k.a.public(),
            allowed_ips: vec![prefix("100.64.0.1/32")],
            endpoint: Some(k.a.public()),
        }],
    });
    let (mut x, mut y) = (vec![0; BUFFER_LEN], vec![0; BUFFER_LEN]);
    let init = a.encapsulate(&ipv4(A_IP, B_IP, b"derp"), &mut x);
    let Ok(Some(init)) = init else {
        panic!("{init:?}")
    };
    assert_eq!(init.dst, k.b.public());
    let resp = b.decapsulate(Some(k.a.public()), k.a.public(), init.datagram, &mut y);
    let Ok(Decapsulated::Transmit(resp)) = resp else {
        panic!("{resp:?}")
    };
    let ka = a.decapsulate(Some(k.b.public()), k.b.public(), resp.datagram, &mut x);
    assert!(matches!(ka, Ok(Decapsulated::Transmit(_))), "{ka:?}");
    let queued = a.flush_queued(&k.b.public(), &mut x);
    let Ok(Some(data)) = queued else {
        panic!("{queued:?}")
    };
    let got = b.decapsulate(Some(k.a.public()), k.a.public(), data.datagram, &mut y);
    assert!(matches!(got, Ok(Decapsulated::Packet { packet, .. }) if packet.ends_with(b"derp")));
    // A hint naming a stranger is ignored: the datagram's own index decides.
    let stranger = NodePrivate::generate().public();
    let more = a.encapsulate(&ipv4(A_IP, B_IP, b"more"), &mut x);
    let Ok(Some(more)) = more else {
        panic!("{more:?}")
    };
    let got = b.decapsulate(Some(stranger), k.a.public(), more.datagram, &mut y);
    assert!(matches!(got, Ok(Decapsulated::Packet { .. })), "{got:?}");
}

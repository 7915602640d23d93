//! WireGuard datagrams from the network into [`Peers::decapsulate`], shallow and deep.
//!
//! `ours` is a `Peers<()>` with one peer, `remote`, whose keys derive from constants. The
//! `remote` side is a second `Peers<()>` (created on first use, recreated on demand) whose
//! datagrams reach `ours` through a queue, and ours reach it through another; so the fuzzer
//! gets valid handshakes and data records to alter. The fuzz bytes are a sequence of
//! operations, an opcode byte and its operands (a missing byte reads as 0):
//!
//! | op % 10 | operation |
//! |---|---|
//! | 0 | a raw datagram (`chunk`) to `ours.decapsulate(hint, …)` |
//! | 1 | a valid handshake initiation from `remote` (made once per process), with `flips`, to `ours` |
//! | 2 | `remote` encapsulates an IP `packet` for us: its datagram joins the queue to `ours` |
//! | 3 | `ours` encapsulates an IP `packet`: the datagram joins the queue to `remote` |
//! | 4 | the next datagram queued for `ours`, with `flips`, to `ours.decapsulate(hint, …)` |
//! | 5 | the next datagram queued for `remote`, to `remote.decapsulate` |
//! | 6 | the clock moves on and both sides' `handle_timeout` run |
//! | 7 | `remote` restarts (a new `Peers`, same key) |
//! | 8 | `ours` gets a new configuration (endpoint, extra AllowedIPs, the peer dropped) |
//! | 9 | `ours.flush_queued` and the status calls |
//!
//! `hint` is a byte: none, the remote's key, a stranger's, our own. `flips` is a count byte
//! (0–3) then (position, xor) pairs. `chunk` is a length byte (255: two more bytes, up to 4 KiB)
//! and that many bytes. `packet` is a kind byte (raw chunk, IPv4, IPv6, IPv4 claiming more
//! bytes than it has), a source and a destination choice, and a payload chunk.
//!
//! Invariants: no panic; anything `ours` hands over comes from its one peer, and a packet for
//! the TUN device has a source in that peer's AllowedIPs; a data record that was altered never
//! yields a packet, and an unaltered one yields exactly the packet `remote` sealed; a handshake
//! message altered before its MAC2 field is never answered.
//!
//! `FUZZ_TRACE=1 target/…/wireguard_decapsulate FILE` prints each datagram and its outcome.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tailcfg::IpPrefix;
use tailcfg::key::{NodePrivate, NodePublic};
use wg_engine::wireguard::{BUFFER_LEN, Decapsulated, EngineConfig, PeerConfig, Peers};

const MAX_OPS: usize = 128;
const MAX_QUEUE: usize = 64;

const OURS_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const OURS_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 1);
const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 2);

struct Fixed {
    ours: NodePrivate,
    ours_pub: NodePublic,
    remote: NodePrivate,
    remote_pub: NodePublic,
    stranger_pub: NodePublic,
    /// A handshake initiation from `remote` to `ours`.
    init: Vec<u8>,
}

fn prefix(s: &str) -> IpPrefix {
    s.parse().unwrap()
}

fn ours_config(f: &Fixed, v: u8) -> EngineConfig<()> {
    let mut allowed = vec![prefix("100.64.0.2/32"), prefix("fd7a:115c:a1e0::2/128")];
    if v & 2 != 0 {
        allowed.push(prefix("10.1.0.0/16"));
    }
    let peers = if v & 4 != 0 {
        Vec::new()
    } else {
        vec![PeerConfig {
            key: f.remote_pub,
            allowed_ips: allowed,
            endpoint: (v & 1 == 0).then_some(()),
        }]
    };
    EngineConfig {
        private_key: f.ours.clone(),
        peers,
    }
}

fn remote_peers(f: &Fixed) -> Peers<()> {
    Peers::new(EngineConfig {
        private_key: f.remote.clone(),
        peers: vec![PeerConfig {
            key: f.ours_pub,
            allowed_ips: vec![prefix("0.0.0.0/0"), prefix("::/0")],
            endpoint: Some(()),
        }],
    })
}

fn v4_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8], extra_len: u16) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).unwrap_or(u16::MAX);
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.saturating_add(extra_len).to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

fn v6_packet(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let ours = NodePrivate::from_bytes([0x41; 32]);
        let remote = NodePrivate::from_bytes([0x42; 32]);
        let mut f = Fixed {
            ours_pub: ours.public(),
            remote_pub: remote.public(),
            stranger_pub: NodePrivate::from_bytes([0x4f; 32]).public(),
            ours,
            remote,
            init: Vec::new(),
        };
        let mut r = remote_peers(&f);
        let mut buf = vec![0u8; BUFFER_LEN];
        let p = v4_packet(REMOTE_V4, OURS_V4, b"hello", 0);
        let t = r.encapsulate(&p, &mut buf).unwrap().unwrap();
        f.init = t.datagram.to_vec();
        assert_eq!((f.init.len(), f.init[0]), (148, 1));
        f
    })
}

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
    fn chunk(&mut self) -> &'a [u8] {
        let n = match self.byte() {
            255 => usize::from(u16::from_le_bytes([self.byte(), self.byte()])) % 4096,
            n => usize::from(n),
        };
        self.take(n)
    }
    fn hint(&mut self, f: &Fixed) -> Option<NodePublic> {
        match self.byte() % 4 {
            0 => None,
            1 => Some(f.remote_pub),
            2 => Some(f.stranger_pub),
            _ => Some(f.ours_pub),
        }
    }
    /// Applies the flips to `d`; true when its bytes changed.
    fn flip(&mut self, d: &mut [u8]) -> bool {
        let orig = d.to_vec();
        for _ in 0..self.byte() % 4 {
            let at = usize::from(self.byte());
            let x = self.byte() | 1;
            if !d.is_empty() {
                let at = at * d.len() / 256;
                d[at] ^= x;
            }
        }
        orig != d
    }
    /// An IP packet from `from` (0: remote, 1: ours) and, when it is well formed, itself again
    /// (what the far side must decrypt to).
    fn packet(&mut self, from: usize) -> (Vec<u8>, bool) {
        let kind = self.byte() % 4;
        let s = self.byte();
        let d = self.byte();
        let v4 = [
            REMOTE_V4,
            OURS_V4,
            Ipv4Addr::new(10, 1, 2, 3),
            Ipv4Addr::new(8, 8, 8, 8),
        ];
        let v6 = [
            REMOTE_V6,
            OURS_V6,
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            Ipv6Addr::UNSPECIFIED,
        ];
        let (si, di) = (usize::from(s % 4), usize::from(d % 4));
        // By default the source is the sender's own address and the destination the other's.
        let (si, di) = if from == 1 {
            (si ^ 1, di)
        } else {
            (si, di ^ 1)
        };
        let payload = self.chunk();
        match kind {
            0 => (payload.to_vec(), false),
            1 => (v4_packet(v4[si], v4[di], payload, 0), true),
            2 => (v6_packet(v6[si], v6[di], payload), true),
            _ => (v4_packet(v4[si], v4[di], payload, 1 + u16::from(s)), false),
        }
    }
}

/// With `FUZZ_TRACE` set, prints what happens (to check that seeds go where they should).
fn trace(what: std::fmt::Arguments<'_>) {
    static ON: OnceLock<bool> = OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some()) {
        eprintln!("{what}");
    }
}

fn src_of(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(p.get(12..16)?).ok()?)),
        6 => Some(IpAddr::from(<[u8; 16]>::try_from(p.get(8..24)?).ok()?)),
        _ => None,
    }
}

/// What `ours` made of a datagram, owned.
enum Out {
    Packet(NodePublic, Vec<u8>),
    Transmit(NodePublic, Vec<u8>),
    Done,
}

/// A datagram in flight and the packet it must decrypt to, if it is a data record of a
/// well-formed packet.
struct InFlight {
    data: Vec<u8>,
    expect: Option<Vec<u8>>,
}

struct Harness {
    f: &'static Fixed,
    ours: Peers<()>,
    remote: Option<Peers<()>>,
    to_ours: VecDeque<InFlight>,
    to_remote: VecDeque<InFlight>,
    buf: Vec<u8>,
    now: Instant,
    /// Whether `ours` has its peer and which extra prefix it allows.
    has_peer: bool,
    subnet: bool,
}

fn push(q: &mut VecDeque<InFlight>, data: &[u8], expect: Option<Vec<u8>>) {
    if q.len() >= MAX_QUEUE {
        q.pop_front();
    }
    q.push_back(InFlight {
        data: data.to_vec(),
        expect,
    });
}

/// Whether `d` is a handshake message altered (compared with `orig`) before its MAC2 field.
fn mac_covered_change(orig: &[u8], d: &[u8]) -> bool {
    let covered = match (orig.first(), orig.len()) {
        (Some(1), 148) => 132,
        (Some(2), 92) => 76,
        _ => return false,
    };
    orig[..covered] != d[..covered]
}

impl Harness {
    fn allowed(&self, a: IpAddr) -> bool {
        a == IpAddr::V4(REMOTE_V4)
            || a == IpAddr::V6(REMOTE_V6)
            || (self.subnet && matches!(a, IpAddr::V4(v) if v.octets()[..2] == [10, 1]))
    }

    /// Feeds one datagram to `ours` and checks what comes out.
    fn to_ours(&mut self, hint: Option<NodePublic>, d: &[u8], orig: &[u8], expect: Option<&[u8]>) {
        let touched = d != orig;
        let remote_pub = self.f.remote_pub;
        let r = self.ours.decapsulate(hint, (), d, &mut self.buf);
        trace(format_args!(
            "ours <- {} bytes (type {:?}, touched {touched}): {r:?}",
            d.len(),
            d.first()
        ));
        let out = match r {
            Ok(Decapsulated::Packet { peer, packet }) => Out::Packet(peer, packet.to_vec()),
            Ok(Decapsulated::Transmit(t)) => Out::Transmit(t.peer, t.datagram.to_vec()),
            Ok(Decapsulated::Done) => Out::Done,
            Err(_) => return,
        };
        assert!(self.has_peer, "a datagram accepted with no peer configured");
        match out {
            Out::Packet(peer, packet) => {
                assert_eq!(peer, remote_pub);
                let src = src_of(&packet).expect("a packet with no source address");
                assert!(self.allowed(src), "a packet from {src}, outside AllowedIPs");
                assert!(!touched, "an altered data record was decrypted");
                if let Some(e) = expect {
                    assert_eq!(packet, e, "decrypted packet differs from the one sealed");
                }
            }
            Out::Transmit(peer, data) => {
                assert_eq!(peer, remote_pub);
                assert!(
                    !mac_covered_change(orig, d),
                    "an altered handshake message was answered"
                );
                push(&mut self.to_remote, &data, None);
                self.flush();
            }
            Out::Done => {}
        }
    }

    fn flush(&mut self) {
        let k = self.f.remote_pub;
        for _ in 0..300 {
            match self.ours.flush_queued(&k, &mut self.buf) {
                Ok(Some(t)) => {
                    assert_eq!(t.peer, k);
                    let out = t.datagram.to_vec();
                    push(&mut self.to_remote, &out, None);
                }
                _ => return,
            }
        }
        panic!("flush_queued never ends");
    }

    fn remote(&mut self) -> &mut Peers<()> {
        let f = self.f;
        self.remote.get_or_insert_with(|| remote_peers(f))
    }

    fn run(&mut self, inp: &mut Input<'_>) {
        let f = self.f;
        for _ in 0..MAX_OPS {
            if inp.0.is_empty() {
                break;
            }
            match inp.byte() % 10 {
                0 => {
                    let hint = inp.hint(f);
                    let d = inp.chunk();
                    self.to_ours(hint, d, d, None);
                }
                1 => {
                    let hint = inp.hint(f);
                    let mut d = f.init.clone();
                    inp.flip(&mut d);
                    self.to_ours(hint, &d, &f.init, None);
                }
                2 => {
                    let (p, wf) = inp.packet(0);
                    let mut buf = std::mem::take(&mut self.buf);
                    if let Ok(Some(t)) = self.remote().encapsulate(&p, &mut buf) {
                        let data = t.datagram.to_vec();
                        let expect = (wf && data.first() == Some(&4)).then(|| p.clone());
                        push(&mut self.to_ours, &data, expect);
                    }
                    self.buf = buf;
                }
                3 => {
                    let (p, wf) = inp.packet(1);
                    match self.ours.encapsulate(&p, &mut self.buf) {
                        Ok(Some(t)) => {
                            assert_eq!(t.peer, f.remote_pub);
                            let data = t.datagram.to_vec();
                            let expect = (wf && data.first() == Some(&4)).then(|| p.clone());
                            push(&mut self.to_remote, &data, expect);
                        }
                        Ok(None) => assert!(self.has_peer),
                        Err(_) => {}
                    }
                }
                4 => {
                    let hint = inp.hint(f);
                    let Some(m) = self.to_ours.pop_front() else {
                        continue;
                    };
                    let mut d = m.data.clone();
                    inp.flip(&mut d);
                    self.to_ours(hint, &d, &m.data, m.expect.as_deref());
                }
                5 => {
                    let hint = (inp.byte() % 2 == 1).then_some(f.ours_pub);
                    let Some(m) = self.to_remote.pop_front() else {
                        continue;
                    };
                    let mut buf = std::mem::take(&mut self.buf);
                    let r = self.remote();
                    let mut back = Vec::new();
                    let res = r.decapsulate(hint, (), &m.data, &mut buf);
                    trace(format_args!("remote <- {} bytes: {res:?}", m.data.len()));
                    match res {
                        Ok(Decapsulated::Transmit(t)) => {
                            back.push(t.datagram.to_vec());
                            while let Ok(Some(t)) = r.flush_queued(&f.ours_pub, &mut buf) {
                                back.push(t.datagram.to_vec());
                                if back.len() > 300 {
                                    break;
                                }
                            }
                        }
                        Ok(Decapsulated::Packet { packet, .. }) => {
                            if let Some(e) = &m.expect {
                                assert_eq!(packet, &e[..], "remote decrypted another packet");
                            }
                        }
                        _ => {}
                    }
                    self.buf = buf;
                    for d in back {
                        let expect = None;
                        push(&mut self.to_ours, &d, expect);
                    }
                }
                6 => {
                    let b = inp.byte();
                    self.now += Duration::from_millis(u64::from(b) * 20);
                    let now = self.now;
                    let mut out = Vec::new();
                    let _ = self
                        .ours
                        .handle_timeout(now, &mut self.buf, |t| out.push(t.datagram.to_vec()));
                    for d in out.drain(..) {
                        push(&mut self.to_remote, &d, None);
                    }
                    if let Some(t) = self.ours.poll_timeout() {
                        assert!(t > now);
                    }
                    let mut buf = std::mem::take(&mut self.buf);
                    if let Some(r) = self.remote.as_mut() {
                        let _ = r.handle_timeout(now, &mut buf, |t| out.push(t.datagram.to_vec()));
                    }
                    self.buf = buf;
                    for d in out {
                        push(&mut self.to_ours, &d, None);
                    }
                }
                7 => self.remote = Some(remote_peers(f)),
                8 => {
                    let v = inp.byte();
                    self.ours.set_config(ours_config(f, v));
                    self.has_peer = v & 4 == 0;
                    self.subnet = v & 2 != 0;
                    assert_eq!(self.ours.len(), usize::from(self.has_peer));
                }
                _ => {
                    self.flush();
                    let k = f.remote_pub;
                    assert_eq!(self.ours.stats(&k).is_some(), self.has_peer);
                    let _ = self.ours.endpoint(&k);
                    assert!(self.ours.stats(&f.stranger_pub).is_none());
                    assert_eq!(self.ours.public_key(), f.ours_pub);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixed();
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let mut h = Harness {
        f,
        ours: Peers::new(ours_config(f, cfg & 3)),
        remote: None,
        to_ours: VecDeque::new(),
        to_remote: VecDeque::new(),
        buf: vec![0u8; BUFFER_LEN],
        now: Instant::now(),
        has_peer: true,
        subnet: cfg & 2 != 0,
    };
    h.run(&mut Input(rest));
});

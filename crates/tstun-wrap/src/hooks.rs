//! The hook chain: what every packet meets between the TUN device and the WireGuard engine.
//!
//! Outbound (read from the TUN device, bound for peers), in order:
//!
//! 1. **Service addresses** (`100.100.100.100`, `fd7a:115c:a1e0::53`): in builds with the
//!    `netstack` tag the packet goes to the intercept (the userspace stack that answers
//!    MagicDNS) and nowhere else; without the tag there is nothing to answer it and no peer
//!    may receive it, so it is dropped here. Either way it never reaches a peer.
//! 2. **The packet filter** ([`crate::filter::Filter::record_outbound`]): Go's outbound checks,
//!    and the flow record that lets replies back in.
//!
//! Inbound (decrypted from a peer, bound for the TUN device):
//!
//! 1. **TSMP** (IP protocol 99, Tailscale's in-band messages) is consumed here, as Go's
//!    `tstun` does: a ping request gets its pong queued ([`Chain::poll_reply`]), a pong is
//!    handed to the pong sink (the node's own `tailscale ping --tsmp`); nothing of it reaches
//!    the host.
//! 2. **The packet filter** ([`crate::filter::Filter::check_inbound`]), deny by default.
//!    One exception, as in Go's `tstun`: a TCP SYN to a port the node serves itself and
//!    checks at the application layer (the PeerAPI, [`Chain::set_open_ports`]) is let in even
//!    where the rules would drop it; the rest of such a connection passes as TCP non-SYN.
//!
//! Injection is the engine's: packets the node makes itself are handed to it as outbound (to
//! a peer) or inbound (to the TUN device) and skip the chain, which is why a build without
//! `netstack` injects exactly as one with it. The chain is plain data driven by the caller's
//! clock; it allocates nothing per packet and cannot panic on any input.

use crate::filter::{Filter, Proto, Rules, parse};
use crate::tsmp;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

/// TSMP answers waiting to be sent before new ones are dropped.
const MAX_REPLIES: usize = 64;

/// Where TSMP pongs go: their 8 bytes of data and when they arrived.
pub type PongSink = Box<dyn FnMut([u8; 8], Instant) + Send>;

/// Quad-100, Tailscale's IPv4 service address.
pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);
/// Tailscale's IPv6 service address.
pub const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);

/// What to do with an outbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// Encrypt and send it to its peer.
    Send,
    /// Drop it.
    Drop,
    /// The intercept took it.
    Intercepted,
}

/// Counters of the chain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainStats {
    /// Packets to the service addresses handed to the intercept.
    pub intercepted: u64,
    /// Packets to the service addresses dropped (no intercept in this build or none set).
    pub service_dropped: u64,
    /// TSMP ping requests answered.
    pub tsmp_pings: u64,
    /// TSMP pongs received.
    pub tsmp_pongs: u64,
    /// Other TSMP messages (rejects, disco key adverts, unknown), consumed.
    pub tsmp_other: u64,
    /// TCP SYNs the rules dropped but let in for an open port ([`Chain::set_open_ports`]).
    pub open_port_syns: u64,
}

/// Where intercepted packets go (the netstack's input).
#[cfg(feature = "netstack")]
pub type Intercept = Box<dyn FnMut(&[u8]) + Send>;

/// The hook chain.
pub struct Chain {
    filter: Filter,
    #[cfg(feature = "netstack")]
    intercept: Option<Intercept>,
    replies: VecDeque<Vec<u8>>,
    pong_sink: Option<PongSink>,
    open_ports: Vec<(IpAddr, u16)>,
    stats: ChainStats,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("rules", &self.filter.rules().rule_count())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Whether `packet` is addressed to one of the service addresses.
pub fn is_service_packet(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.get(16..20).is_some_and(|d| d == SERVICE_V4.octets()),
        Some(6) => packet.get(24..40).is_some_and(|d| d == SERVICE_V6.octets()),
        _ => false,
    }
}

impl Chain {
    /// A chain around `filter`, with no intercept.
    pub fn new(filter: Filter) -> Self {
        Chain {
            filter,
            #[cfg(feature = "netstack")]
            intercept: None,
            replies: VecDeque::new(),
            pong_sink: None,
            open_ports: Vec::new(),
            stats: ChainStats::default(),
        }
    }

    /// Replaces the filter's rules (flows survive).
    pub fn set_rules(&mut self, rules: Rules) {
        self.filter.set_rules(rules);
    }

    /// The TCP ports on our own addresses whose servers check access themselves (the
    /// PeerAPI): a SYN to one of them passes even where the rules drop it.
    pub fn set_open_ports(&mut self, ports: Vec<(IpAddr, u16)>) {
        self.open_ports = ports;
    }

    /// The filter, for its counters.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The chain's own counters.
    pub fn stats(&self) -> ChainStats {
        self.stats
    }

    /// Sets where service-address packets go.
    #[cfg(feature = "netstack")]
    pub fn set_intercept(&mut self, f: Intercept) {
        self.intercept = Some(f);
    }

    /// An outbound packet, read from the TUN device.
    pub fn outbound(&mut self, packet: &[u8], now: Instant) -> Outbound {
        if is_service_packet(packet) {
            #[cfg(feature = "netstack")]
            if let Some(f) = self.intercept.as_mut() {
                f(packet);
                self.stats.intercepted += 1;
                return Outbound::Intercepted;
            }
            self.stats.service_dropped += 1;
            return Outbound::Drop;
        }
        if self.filter.record_outbound(packet, now).is_accept() {
            Outbound::Send
        } else {
            Outbound::Drop
        }
    }

    /// Sets where TSMP pongs go.
    pub fn set_pong_sink(&mut self, f: PongSink) {
        self.pong_sink = Some(f);
    }

    /// An inbound packet, decrypted from a peer: whether it may be written to the TUN device.
    pub fn inbound(&mut self, packet: &[u8], now: Instant) -> bool {
        if is_tsmp(packet) {
            self.tsmp(packet, now);
            return false;
        }
        let p = parse(packet);
        if self.filter.check_inbound_parsed(&p, now).is_accept() {
            return true;
        }
        let open = p.proto() == Proto::TCP
            && p.is_tcp_syn()
            && self
                .open_ports
                .iter()
                .any(|&(a, port)| a == p.dst() && port == p.dst_port());
        if open {
            self.stats.open_port_syns += 1;
        }
        open
    }

    fn tsmp(&mut self, packet: &[u8], now: Instant) {
        match tsmp::parse(packet).map(|p| p.message) {
            Some(tsmp::Message::PingRequest { .. }) => {
                self.stats.tsmp_pings += 1;
                if let Some(pong) = tsmp::answer(packet)
                    && self.replies.len() < MAX_REPLIES
                {
                    self.replies.push_back(pong);
                }
            }
            Some(tsmp::Message::Pong { data, .. }) => {
                self.stats.tsmp_pongs += 1;
                if let Some(f) = self.pong_sink.as_mut() {
                    f(data, now);
                }
            }
            _ => self.stats.tsmp_other += 1,
        }
    }

    /// A packet the chain made in answer to one it consumed (a TSMP pong), to send to the
    /// peer it came from.
    pub fn poll_reply(&mut self) -> Option<Vec<u8>> {
        self.replies.pop_front()
    }
}

/// Whether the IP protocol (IPv4) or next header (IPv6) says TSMP.
fn is_tsmp(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.get(9) == Some(&tsmp::IP_PROTO),
        Some(6) => packet.get(6) == Some(&tsmp::IP_PROTO),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FlowConfig;

    fn v4(dst: [u8; 4]) -> Vec<u8> {
        // A minimal UDP/IPv4 packet from 100.64.0.1:5000 to dst:53.
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 100, 64, 0, 1, dst[0], dst[1], dst[2],
            dst[3], 0x13, 0x88, 0, 53, 0, 8, 0, 0,
        ];
        p.truncate(28);
        p
    }

    fn v6_to(dst: Ipv6Addr) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[5] = 8;
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd7a:115c:a1e0::1".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&dst.octets());
        p[40..42].copy_from_slice(&5000u16.to_be_bytes());
        p[42..44].copy_from_slice(&53u16.to_be_bytes());
        p[44..46].copy_from_slice(&8u16.to_be_bytes());
        p
    }

    #[test]
    fn service_packets_never_go_to_peers() {
        let mut c = Chain::new(Filter::new(Rules::allow_none(), FlowConfig::go()));
        let now = Instant::now();
        for p in [v4([100, 100, 100, 100]), v6_to(SERVICE_V6)] {
            assert!(is_service_packet(&p));
            assert_ne!(c.outbound(&p, now), Outbound::Send);
        }
        // Without an intercept (or without the tag) they are dropped and counted.
        assert_eq!(c.stats().service_dropped, 2);
        // Other destinations pass the outbound filter.
        let p = v4([100, 64, 0, 2]);
        assert!(!is_service_packet(&p));
        assert_eq!(c.outbound(&p, now), Outbound::Send);
    }

    #[cfg(feature = "netstack")]
    #[test]
    fn service_packets_go_to_the_intercept() {
        use std::sync::{Arc, Mutex};
        let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let g = Arc::clone(&got);
        let mut c = Chain::new(Filter::new(Rules::allow_none(), FlowConfig::go()));
        c.set_intercept(Box::new(move |p| g.lock().unwrap().push(p.to_vec())));
        let p = v4([100, 100, 100, 100]);
        assert_eq!(c.outbound(&p, Instant::now()), Outbound::Intercepted);
        assert_eq!(got.lock().unwrap().as_slice(), &[p]);
        assert_eq!(c.stats().intercepted, 1);
    }

    #[test]
    fn tsmp_pings_are_answered_and_pongs_reported() {
        use std::sync::{Arc, Mutex};
        let mut c = Chain::new(Filter::new(Rules::allow_none(), FlowConfig::go()));
        let got: Arc<Mutex<Vec<[u8; 8]>>> = Arc::default();
        let g = Arc::clone(&got);
        c.set_pong_sink(Box::new(move |d, _| g.lock().unwrap().push(d)));
        let (peer, me) = ("100.64.0.2".parse().unwrap(), "100.64.0.1".parse().unwrap());
        let now = Instant::now();
        let ping = tsmp::ping_request(peer, me, *b"12345678").unwrap();
        // Consumed (never written to the host), answered with the pong Go would send.
        assert!(!c.inbound(&ping, now));
        let pong = c.poll_reply().unwrap();
        assert_eq!(pong, tsmp::answer(&ping).unwrap());
        assert!(c.poll_reply().is_none());
        let p = tsmp::parse(&pong).unwrap();
        assert_eq!((p.src, p.dst), (me, peer));
        // A pong for our own ping goes to the sink.
        let theirs = tsmp::pong(peer, me, *b"abcdefgh", 0).unwrap();
        assert!(!c.inbound(&theirs, now));
        assert_eq!(got.lock().unwrap().as_slice(), &[*b"abcdefgh"]);
        // Answers are bounded.
        for _ in 0..200 {
            c.inbound(&ping, now);
        }
        assert_eq!(c.replies.len(), MAX_REPLIES);
        assert_eq!(c.stats().tsmp_pings, 201);
    }

    /// A TCP/IPv4 packet from 100.64.0.2:40000 to `dst`:`port` with `flags`.
    fn tcp4(dst: [u8; 4], port: u16, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[3] = 40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[100, 64, 0, 2]);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&port.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p
    }

    #[test]
    fn a_syn_to_an_open_port_passes_and_nothing_else() {
        use crate::filter::tcp_flags::{ACK, SYN};
        // No rule admits anything; 100.64.0.1 is our address.
        let local: Vec<tailcfg::IpPrefix> = vec!["100.64.0.1/32".parse().unwrap()];
        let (rules, errors) = Rules::compile(&[], &local);
        assert!(errors.is_empty());
        let mut c = Chain::new(Filter::new(rules, FlowConfig::go()));
        let now = Instant::now();
        let me = [100, 64, 0, 1];
        // Deny by default: the SYN is dropped before the port is open.
        assert!(!c.inbound(&tcp4(me, 4444, SYN), now));
        c.set_open_ports(vec![(IpAddr::from(me), 4444)]);
        assert!(c.inbound(&tcp4(me, 4444, SYN), now));
        assert_eq!(c.stats().open_port_syns, 1);
        // Another port, another address of ours, or UDP to the same port: still dropped.
        assert!(!c.inbound(&tcp4(me, 4445, SYN), now));
        assert!(!c.inbound(&tcp4([100, 64, 0, 9], 4444, SYN), now));
        let mut udp = v4(me);
        udp[22..24].copy_from_slice(&4444u16.to_be_bytes());
        assert!(!c.inbound(&udp, now));
        // The rest of the connection is TCP non-SYN, which the filter passes on its own.
        assert!(c.inbound(&tcp4(me, 4444, ACK), now));
        assert_eq!(c.stats().open_port_syns, 1);
        c.set_open_ports(Vec::new());
        assert!(!c.inbound(&tcp4(me, 4444, SYN), now));
    }

    #[test]
    fn junk_is_neither_service_nor_a_panic() {
        let mut c = Chain::new(Filter::new(Rules::allow_none(), FlowConfig::go()));
        let now = Instant::now();
        for n in 0..64 {
            let p = vec![0x45u8; n];
            let _ = c.outbound(&p, now);
            let _ = c.inbound(&p, now);
        }
        assert!(!is_service_packet(&[]));
        assert!(!is_service_packet(&[0x45, 0, 0]));
        // Inbound is denied by default.
        assert!(!c.inbound(&v4([100, 64, 0, 1]), now));
    }
}

//! The userspace network stack for traffic the node itself answers.
//!
//! A sans-IO [`Netstack`] on smoltcp, fed with the packets the TUN hook intercepted (those to
//! 100.100.100.100 and fd7a:115c:a1e0::53) and producing the packets to write back to the
//! host. It listens on UDP port 53 and TCP port 53 (RFC 7766: a 2-byte length prefix, several
//! queries per connection, answers in any order) on both service addresses, from any source
//! address: queries a LAN host sent through a router that forwards them are answered too.
//!
//! It knows nothing of what DNS means: each query comes out as a [`DnsRequest`] from
//! [`Netstack::poll_dns_request`], and the answer goes back in with [`Netstack::answer`], as
//! bytes, whenever the resolver has it (now, or after forwarding upstream).
//!
//! Driving it:
//!
//! ```
//! use netstack::{Config, Netstack};
//! use std::time::Instant;
//!
//! let mut stack = Netstack::new(Config::default()).unwrap();
//! let now = Instant::now();
//! # let intercepted: Vec<u8> = Vec::new();
//! stack.input(&intercepted, now);
//! while let Some(req) = stack.poll_dns_request() {
//!     let answer = req.query.clone(); // the resolver's job
//!     let _ = stack.answer(req.id, &answer);
//! }
//! while let Some(packet) = stack.poll_transmit() {
//!     // write `packet` to the TUN device (Handle::inject_inbound)
//!     # drop(packet);
//! }
//! // ...and call `poll(now)` again at `poll_timeout()`.
//! ```
//!
//! Everything is bounded: one packet in at a time, a capped transmit queue, a capped number of
//! TCP connections (a SYN finding none free evicts a half-open or idle one, else gets a RST),
//! a capped number of queries waiting for answers (Go's 256), queries expire, idle connections
//! close after 45 s (Go's figure). What does not fit is dropped and counted in [`Stats`].
//! Other ports get what a host gives: TCP a RST, UDP an ICMP port unreachable; pings are
//! answered. Nothing here panics on any input.

mod device;

use device::Phy;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, IpProtocol, Ipv4Packet,
    Ipv6Packet, TcpPacket, UdpPacket,
};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Quad-100, Tailscale's IPv4 service address.
pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);
/// Tailscale's IPv6 service address.
pub const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);
/// The port DNS is served on, over UDP and TCP.
pub const DNS_PORT: u16 = 53;
/// The largest DNS message over TCP (the length prefix is 16 bits).
pub const MAX_TCP_MESSAGE: usize = 65535;

/// How the stack is set up. `Config::default()` is what the node runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The service addresses answered (at most two; Tailscale's pair by default).
    pub addresses: Vec<IpAddr>,
    /// IP MTU of the packets written back (the TUN's: 1280). UDP answers must fit in one.
    pub mtu: usize,
    /// TCP connections at once, half-open ones included.
    pub max_tcp_connections: usize,
    /// Queries waiting for an answer (queued or handed out), over UDP and TCP together.
    pub max_pending_requests: usize,
    /// Unanswered queries per TCP connection; past it the connection is not read (its
    /// window closes) until answers go out.
    pub max_inflight_per_connection: usize,
    /// Largest query accepted over TCP; a larger length prefix resets the connection.
    pub max_tcp_query: usize,
    /// Packets waiting in [`Netstack::poll_transmit`]'s queue.
    pub max_transmit_queue: usize,
    /// An established connection with nothing pending is closed after this long quiet.
    pub tcp_idle_timeout: Duration,
    /// A half-open connection (SYN received, no ACK) is dropped after this long.
    pub tcp_handshake_timeout: Duration,
    /// A query not answered after this long is forgotten.
    pub request_timeout: Duration,
    /// Seed for TCP initial sequence numbers and ports; random per process by default.
    pub random_seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addresses: vec![IpAddr::V4(SERVICE_V4), IpAddr::V6(SERVICE_V6)],
            mtu: 1280,
            max_tcp_connections: 16,
            max_pending_requests: 256,
            max_inflight_per_connection: 16,
            max_tcp_query: 4096,
            max_transmit_queue: 256,
            tcp_idle_timeout: Duration::from_secs(45),
            tcp_handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(20),
            random_seed: RandomState::new().hash_one(0x5eed_u64),
        }
    }
}

/// A configuration the stack cannot run with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// No service address, or more than two.
    AddressCount(usize),
    /// A service address that is not unicast.
    NotUnicast(IpAddr),
    /// Two addresses of the same family.
    SameFamily,
    /// An MTU under 1280 or over 65535.
    Mtu(usize),
    /// A cap of zero.
    ZeroLimit(&'static str),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddressCount(n) => {
                write!(f, "netstack needs one or two service addresses, got {n}")
            }
            Self::NotUnicast(a) => write!(f, "service address {a} is not unicast"),
            Self::SameFamily => write!(f, "at most one service address per IP family"),
            Self::Mtu(m) => write!(f, "MTU {m} is outside 1280..=65535"),
            Self::ZeroLimit(what) => write!(f, "netstack limit {what} must not be zero"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Which transport a query came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP: the answer goes back in one datagram.
    Udp,
    /// TCP: the answer goes back length-prefixed on the same connection.
    Tcp,
}

/// Names one query until it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A DNS query received on a service address, for the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRequest {
    /// Pass it back with the answer.
    pub id: RequestId,
    /// The DNS message, without the TCP length prefix.
    pub query: Vec<u8>,
    /// Who asked (any address: the host itself or a LAN host behind it).
    pub client: SocketAddr,
    /// The service address asked.
    pub server: IpAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// The largest answer that can be sent back: over UDP what fits one packet of the MTU,
    /// over TCP 65535. A resolver truncates (TC bit) to the smaller of this and the client's
    /// EDNS size.
    pub max_response_len: usize,
}

/// Why an answer was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnswerError {
    /// No such query waiting: answered already, expired, or never asked.
    Unknown,
    /// The TCP connection it came on is gone.
    ConnectionClosed,
    /// Longer than the request's `max_response_len`; the query still waits, so a truncated
    /// answer can be given instead.
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The UDP send buffer is full; the answer is dropped (the client retries).
    Busy,
}

impl fmt::Display for AnswerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => f.write_str("no such DNS request waiting"),
            Self::ConnectionClosed => f.write_str("the TCP connection of that request is closed"),
            Self::TooLarge { max } => write!(f, "answer longer than {max} bytes"),
            Self::Busy => f.write_str("UDP send buffer full, answer dropped"),
        }
    }
}

impl std::error::Error for AnswerError {}

/// Counters, for status and for tests. Drops are counted where they happen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets given to [`Netstack::input`].
    pub packets_in: u64,
    /// Of those, dropped before the stack: unparsable, not to a service address, a source
    /// no reply can go to, a fragment, or too large.
    pub packets_rejected: u64,
    /// Packets handed out by [`Netstack::poll_transmit`].
    pub packets_out: u64,
    /// Packets the stack produced while the transmit queue was full.
    pub transmit_dropped: u64,
    /// Queries received over UDP.
    pub udp_queries: u64,
    /// Queries received over TCP.
    pub tcp_queries: u64,
    /// Queries dropped because `max_pending_requests` were already waiting.
    pub requests_dropped: u64,
    /// Queries forgotten unanswered after `request_timeout`.
    pub requests_expired: u64,
    /// Answers sent (queued on the socket).
    pub answers: u64,
    /// TCP connections that completed the handshake.
    pub tcp_accepted: u64,
    /// SYNs that found no free connection and nothing to evict (answered with a RST).
    pub tcp_refused: u64,
    /// Half-open or idle connections reset to make room for a new one.
    pub tcp_evicted: u64,
    /// Connections closed after `tcp_idle_timeout` (or a half-open one timed out).
    pub tcp_timed_out: u64,
    /// Connections reset for a query longer than `max_tcp_query`.
    pub tcp_oversize: u64,
}

/// Where a waiting query came from, so its answer finds the way back.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Udp {
        client: IpEndpoint,
        server: IpAddress,
    },
    Tcp {
        conn: u64,
    },
}

#[derive(Debug)]
struct Pending {
    origin: Origin,
    deadline: Instant,
    max_len: usize,
}

/// One TCP socket: the listener (state Listen) or a connection.
struct Conn {
    handle: SocketHandle,
    id: u64,
    /// When it left Listen (the SYN arrived); `None` while listening.
    created: Option<Instant>,
    last_activity: Instant,
    /// Bytes received and not yet a whole query (at most 2 + `max_tcp_query`).
    inbuf: Vec<u8>,
    /// Answers (length-prefixed) waiting for send-buffer space.
    outbuf: Vec<u8>,
    inflight: usize,
    accepted: bool,
    closing_since: Option<Instant>,
}

// Socket buffer sizes. The receive window needs only hold queries (small); answers past the
// send buffer wait in the connection's `outbuf`.
const TCP_RX_BUFFER: usize = 2048;
const TCP_TX_BUFFER: usize = 4096;
const UDP_RX_PACKETS: usize = 8;
const UDP_RX_BYTES: usize = 8 * 1024;
const UDP_TX_PACKETS: usize = 32;
/// A closing connection the peer never finishes is reset after this long.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// The stack. See the crate documentation.
pub struct Netstack {
    config: Config,
    iface: Interface,
    phy: Phy,
    sockets: SocketSet<'static>,
    udp: SocketHandle,
    conns: Vec<Conn>,
    next_conn: u64,
    queue: VecDeque<DnsRequest>,
    pending: HashMap<u64, Pending>,
    next_request: u64,
    epoch: Option<Instant>,
    now: Option<Instant>,
    stats: Stats,
}

impl fmt::Debug for Netstack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netstack")
            .field("addresses", &self.config.addresses)
            .field("tcp_connections", &self.conns.len())
            .field("pending", &self.pending.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn unicast(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || v4.is_loopback())
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_loopback()),
    }
}

impl Netstack {
    /// A stack answering on `config.addresses`.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        let n = config.addresses.len();
        if n == 0 || n > 2 {
            return Err(ConfigError::AddressCount(n));
        }
        if let Some(a) = config.addresses.iter().find(|a| !unicast(**a)) {
            return Err(ConfigError::NotUnicast(*a));
        }
        if n == 2 && config.addresses[0].is_ipv4() == config.addresses[1].is_ipv4() {
            return Err(ConfigError::SameFamily);
        }
        if !(1280..=65535).contains(&config.mtu) {
            return Err(ConfigError::Mtu(config.mtu));
        }
        for (v, what) in [
            (config.max_tcp_connections, "max_tcp_connections"),
            (config.max_pending_requests, "max_pending_requests"),
            (
                config.max_inflight_per_connection,
                "max_inflight_per_connection",
            ),
            (config.max_tcp_query, "max_tcp_query"),
            (config.max_transmit_queue, "max_transmit_queue"),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroLimit(what));
            }
        }

        let mut phy = Phy::new(config.mtu, config.max_transmit_queue);
        let mut ic = IfaceConfig::new(HardwareAddress::Ip);
        ic.random_seed = config.random_seed;
        let mut iface = Interface::new(ic, &mut phy, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            for a in &config.addresses {
                let cidr = match a {
                    IpAddr::V4(v4) => IpCidr::new(IpAddress::Ipv4(*v4), 32),
                    IpAddr::V6(v6) => IpCidr::new(IpAddress::Ipv6(*v6), 128),
                };
                // Capacity is two, checked above.
                let _ = addrs.push(cidr);
            }
        });
        // Replies go to any source: a default route per family makes every destination
        // reachable (on an IP medium the gateway is never looked at).
        for a in &config.addresses {
            let _ = match a {
                IpAddr::V4(v4) => iface.routes_mut().add_default_ipv4_route(*v4).map(|_| ()),
                IpAddr::V6(v6) => iface.routes_mut().add_default_ipv6_route(*v6).map(|_| ()),
            };
        }

        let mut sockets = SocketSet::new(Vec::new());
        let udp_tx_bytes = (4 * config.mtu).max(16 * 1024);
        let mut udp_socket = udp::Socket::new(
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_RX_PACKETS],
                vec![0u8; UDP_RX_BYTES],
            ),
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_TX_PACKETS],
                vec![0u8; udp_tx_bytes],
            ),
        );
        // Bound to the port on every service address; replies name their source address.
        let _ = udp_socket.bind(IpListenEndpoint {
            addr: None,
            port: DNS_PORT,
        });
        let udp = sockets.add(udp_socket);

        Ok(Self {
            config,
            iface,
            phy,
            sockets,
            udp,
            conns: Vec::new(),
            next_conn: 0,
            queue: VecDeque::new(),
            pending: HashMap::new(),
            next_request: 0,
            epoch: None,
            now: None,
            stats: Stats::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.transmit_dropped = self.phy.tx_dropped;
        s
    }

    /// TCP connections open now, half-open ones included (the listener not counted).
    pub fn tcp_connections(&self) -> usize {
        self.conns.iter().filter(|c| c.created.is_some()).count()
    }

    /// Queries waiting for an answer (queued or handed out).
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Feeds one intercepted IP packet (IPv4 or IPv6, no link header) in and runs the stack
    /// on it. Replies wait in [`Self::poll_transmit`], queries in [`Self::poll_dns_request`].
    pub fn input(&mut self, packet: &[u8], now: Instant) {
        self.stats.packets_in += 1;
        let now = self.advance(now);
        let Some(ingress) = self.classify(packet) else {
            self.stats.packets_rejected += 1;
            return;
        };
        if ingress.syn_to_dns {
            self.ensure_listener();
            if !self.has_listener() {
                self.make_room(now);
            }
        }
        self.phy.feed(packet.to_vec());
        self.run(now);
    }

    /// Runs timers: retransmissions, delayed ACKs, idle and half-open connections, expired
    /// queries. Call it at [`Self::poll_timeout`] (calling it early is harmless).
    pub fn poll(&mut self, now: Instant) {
        let now = self.advance(now);
        self.expire(now);
        self.run(now);
    }

    /// When [`Self::poll`] should run next; `None` when nothing is waiting on time.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let now = self.now?;
        let epoch = self.epoch?;
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            next = Some(next.map_or(t, |n: Instant| n.min(t)));
        };
        let ts = smol_time(epoch, now);
        if let Some(at) = self.iface.poll_at(ts, &self.sockets) {
            let micros = u64::try_from(at.total_micros()).unwrap_or(0);
            consider((epoch + Duration::from_micros(micros)).max(now));
        }
        for c in &self.conns {
            if let Some(t) = self.conn_deadline(c) {
                consider(t);
            }
        }
        if let Some(t) = self.pending.values().map(|p| p.deadline).min() {
            consider(t);
        }
        next
    }

    /// The next packet to write back to the host (the TUN device), oldest first.
    ///
    /// When the queue filled up, connections held back what did not fit (a SYN-ACK, data);
    /// taking the last queued packet lets them send it, so `None` means nothing is ready.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.phy.is_empty() && self.phy.take_held_back() {
            if let Some(now) = self.now {
                self.run(now);
            }
        }
        let p = self.phy.pop()?;
        self.stats.packets_out += 1;
        Some(p)
    }

    /// The next query for the resolver.
    pub fn poll_dns_request(&mut self) -> Option<DnsRequest> {
        while let Some(r) = self.queue.pop_front() {
            if self.pending.contains_key(&r.id.0) {
                return Some(r);
            }
        }
        None
    }

    /// Sends `response` (a DNS message) as the answer to request `id`, then runs the stack
    /// so the packets are ready in [`Self::poll_transmit`].
    pub fn answer(&mut self, id: RequestId, response: &[u8]) -> Result<(), AnswerError> {
        let Some(p) = self.pending.remove(&id.0) else {
            return Err(AnswerError::Unknown);
        };
        if response.len() > p.max_len {
            let max = p.max_len;
            self.pending.insert(id.0, p);
            return Err(AnswerError::TooLarge { max });
        }
        if self.queue.front().is_some() {
            self.queue.retain(|r| r.id != id);
        }
        match p.origin {
            Origin::Udp { client, server } => {
                let socket = self.sockets.get_mut::<udp::Socket>(self.udp);
                let meta = udp::UdpMetadata {
                    endpoint: client,
                    local_address: Some(server),
                    meta: Default::default(),
                };
                if socket.send_slice(response, meta).is_err() {
                    return Err(AnswerError::Busy);
                }
            }
            Origin::Tcp { conn } => {
                let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) else {
                    return Err(AnswerError::ConnectionClosed);
                };
                c.inflight = c.inflight.saturating_sub(1);
                // `max_len` for TCP is 65535, so the length fits the prefix.
                let len = u16::try_from(response.len()).unwrap_or(u16::MAX);
                c.outbuf.extend_from_slice(&len.to_be_bytes());
                c.outbuf.extend_from_slice(response);
            }
        }
        self.stats.answers += 1;
        if let Some(now) = self.now {
            self.run(now);
        }
        Ok(())
    }

    /// Forgets request `id` without answering (the resolver gave up). Over UDP the client
    /// times out and retries; over TCP the connection stays open for its other queries.
    pub fn drop_request(&mut self, id: RequestId) {
        if let Some(p) = self.pending.remove(&id.0) {
            self.forget(&p);
        }
    }

    // --- internals ---

    fn advance(&mut self, now: Instant) -> Instant {
        let epoch = *self.epoch.get_or_insert(now);
        let now = self.now.map_or(now, |last| last.max(now)).max(epoch);
        self.now = Some(now);
        now
    }

    fn ts(&self, now: Instant) -> smoltcp::time::Instant {
        smol_time(self.epoch.unwrap_or(now), now)
    }

    /// One pass: ingress (the fed packet, if any) and egress, then the sockets' data and
    /// timers, egress again for what that produced, then bookkeeping.
    fn run(&mut self, now: Instant) {
        let ts = self.ts(now);
        self.iface.poll(ts, &mut self.phy, &mut self.sockets);
        self.service_udp(now);
        self.service_tcp(now);
        self.iface.poll_egress(ts, &mut self.phy, &mut self.sockets);
        self.reap();
        self.ensure_listener();
    }

    /// Checks what smoltcp would not, or would mishandle, and notes SYNs to port 53.
    fn classify(&self, packet: &[u8]) -> Option<Ingress> {
        if packet.len() > 65535 {
            return None;
        }
        let (src, dst, proto, payload): (IpAddr, IpAddr, IpProtocol, &[u8]) =
            match packet.first()? >> 4 {
                4 => {
                    let p = Ipv4Packet::new_checked(packet).ok()?;
                    if p.more_frags() || p.frag_offset() != 0 {
                        return None; // no reassembly: DNS queries are never fragmented
                    }
                    let hl = usize::from(p.header_len());
                    let tl = usize::from(p.total_len());
                    let payload = packet.get(hl..tl)?;
                    (
                        IpAddr::V4(p.src_addr()),
                        IpAddr::V4(p.dst_addr()),
                        p.next_header(),
                        payload,
                    )
                }
                6 => {
                    let p = Ipv6Packet::new_checked(packet).ok()?;
                    let end = 40 + usize::from(p.payload_len());
                    let payload = packet.get(40..end)?;
                    (
                        IpAddr::V6(p.src_addr()),
                        IpAddr::V6(p.dst_addr()),
                        p.next_header(),
                        payload,
                    )
                }
                _ => return None,
            };
        if !self.config.addresses.contains(&dst) {
            return None;
        }
        // A reply must be able to go back: no unspecified, multicast, broadcast or loopback
        // source, nor one of our own addresses.
        if !unicast(src) || self.config.addresses.contains(&src) {
            return None;
        }
        let mut syn_to_dns = false;
        match proto {
            IpProtocol::Tcp => {
                let t = TcpPacket::new_checked(payload).ok()?;
                if t.src_port() == 0 {
                    return None;
                }
                syn_to_dns = t.dst_port() == DNS_PORT && t.syn() && !t.ack() && !t.rst();
            }
            IpProtocol::Udp => {
                let u = UdpPacket::new_checked(payload).ok()?;
                if u.src_port() == 0 {
                    return None;
                }
            }
            _ => {}
        }
        Some(Ingress { syn_to_dns })
    }

    fn service_udp(&mut self, now: Instant) {
        loop {
            let socket = self.sockets.get_mut::<udp::Socket>(self.udp);
            let Ok((data, meta)) = socket.recv() else {
                break;
            };
            if data.is_empty() {
                continue;
            }
            self.stats.udp_queries += 1;
            let Some(server) = meta.local_address else {
                continue;
            };
            let client = meta.endpoint;
            let query = data.to_vec();
            let header = if server.version() == smoltcp::wire::IpVersion::Ipv4 {
                20
            } else {
                40
            };
            let max_len = self.config.mtu - header - 8;
            Self::enqueue(
                &mut self.queue,
                &mut self.pending,
                &mut self.next_request,
                &mut self.stats,
                &self.config,
                now,
                DnsRequest {
                    id: RequestId(0),
                    query,
                    client: SocketAddr::new(IpAddr::from(client.addr), client.port),
                    server: IpAddr::from(server),
                    transport: Transport::Udp,
                    max_response_len: max_len,
                },
                Origin::Udp { client, server },
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        queue: &mut VecDeque<DnsRequest>,
        pending: &mut HashMap<u64, Pending>,
        next: &mut u64,
        stats: &mut Stats,
        config: &Config,
        now: Instant,
        mut req: DnsRequest,
        origin: Origin,
    ) -> bool {
        if pending.len() >= config.max_pending_requests {
            stats.requests_dropped += 1;
            return false;
        }
        *next += 1;
        req.id = RequestId(*next);
        pending.insert(
            *next,
            Pending {
                origin,
                deadline: now + config.request_timeout,
                max_len: req.max_response_len,
            },
        );
        queue.push_back(req);
        true
    }

    fn service_tcp(&mut self, now: Instant) {
        let max_query = self.config.max_tcp_query;
        let max_inflight = self.config.max_inflight_per_connection;
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            let socket = self.sockets.get_mut::<tcp::Socket>(c.handle);
            let state = socket.state();
            if state == tcp::State::Listen {
                continue;
            }
            let created = match c.created {
                Some(t) => t,
                None => {
                    c.created = Some(now);
                    c.last_activity = now;
                    now
                }
            };
            match state {
                tcp::State::Closed | tcp::State::TimeWait => continue,
                tcp::State::SynReceived | tcp::State::SynSent => {
                    if now.saturating_duration_since(created) >= self.config.tcp_handshake_timeout {
                        socket.abort();
                        self.stats.tcp_timed_out += 1;
                    }
                    continue;
                }
                _ => {}
            }
            if !c.accepted {
                c.accepted = true;
                c.last_activity = now;
                self.stats.tcp_accepted += 1;
            }
            let Some(server) = socket.local_endpoint() else {
                continue;
            };
            let Some(client) = socket.remote_endpoint() else {
                continue;
            };

            // Read whole queries while this connection may have more in flight.
            let mut oversize = false;
            let mut new_queries: Vec<Vec<u8>> = Vec::new();
            while c.inflight + new_queries.len() < max_inflight && socket.can_recv() {
                let want = if c.inbuf.len() < 2 {
                    2 - c.inbuf.len()
                } else {
                    let n = usize::from(u16::from_be_bytes([c.inbuf[0], c.inbuf[1]]));
                    2 + n - c.inbuf.len()
                };
                let start = c.inbuf.len();
                c.inbuf.resize(start + want, 0);
                let got = socket.recv_slice(&mut c.inbuf[start..]).unwrap_or(0);
                c.inbuf.truncate(start + got);
                if got == 0 {
                    break;
                }
                c.last_activity = now;
                if c.inbuf.len() < 2 {
                    continue;
                }
                let n = usize::from(u16::from_be_bytes([c.inbuf[0], c.inbuf[1]]));
                if n > max_query {
                    oversize = true;
                    break;
                }
                if c.inbuf.len() == 2 + n {
                    if n > 0 {
                        new_queries.push(c.inbuf[2..].to_vec());
                    }
                    c.inbuf.clear();
                }
            }
            if oversize {
                socket.abort();
                self.stats.tcp_oversize += 1;
                continue;
            }

            // Answers waiting for room.
            if !c.outbuf.is_empty() && socket.can_send() {
                let sent = socket.send_slice(&c.outbuf).unwrap_or(0);
                if sent > 0 {
                    c.outbuf.drain(..sent);
                    c.last_activity = now;
                }
            }

            let conn_id = c.id;
            for q in new_queries {
                self.stats.tcp_queries += 1;
                let accepted = Self::enqueue(
                    &mut self.queue,
                    &mut self.pending,
                    &mut self.next_request,
                    &mut self.stats,
                    &self.config,
                    now,
                    DnsRequest {
                        id: RequestId(0),
                        query: q,
                        client: SocketAddr::new(IpAddr::from(client.addr), client.port),
                        server: IpAddr::from(server.addr),
                        transport: Transport::Tcp,
                        max_response_len: MAX_TCP_MESSAGE,
                    },
                    Origin::Tcp { conn: conn_id },
                );
                if accepted {
                    self.conns[i].inflight += 1;
                }
            }

            let c = &mut self.conns[i];
            let socket = self.sockets.get_mut::<tcp::Socket>(c.handle);
            let quiet = c.inflight == 0 && c.outbuf.is_empty();
            match socket.state() {
                // The client finished sending: close once every answer is out.
                tcp::State::CloseWait if quiet => socket.close(),
                tcp::State::Established
                    if quiet
                        && now.saturating_duration_since(c.last_activity)
                            >= self.config.tcp_idle_timeout =>
                {
                    socket.close();
                    c.closing_since = Some(now);
                    self.stats.tcp_timed_out += 1;
                }
                _ => {}
            }
            let c = &mut self.conns[i];
            if let Some(since) = c.closing_since {
                if now.saturating_duration_since(since) >= CLOSE_GRACE {
                    self.sockets.get_mut::<tcp::Socket>(c.handle).abort();
                }
            }
        }
    }

    /// The next instant a connection needs looking at.
    fn conn_deadline(&self, c: &Conn) -> Option<Instant> {
        let socket = self.sockets.get::<tcp::Socket>(c.handle);
        match socket.state() {
            tcp::State::Listen | tcp::State::Closed | tcp::State::TimeWait => None,
            tcp::State::SynReceived | tcp::State::SynSent => {
                c.created.map(|t| t + self.config.tcp_handshake_timeout)
            }
            _ => {
                if let Some(since) = c.closing_since {
                    Some(since + CLOSE_GRACE)
                } else if c.inflight == 0 && c.outbuf.is_empty() {
                    Some(c.last_activity + self.config.tcp_idle_timeout)
                } else {
                    None
                }
            }
        }
    }

    /// Removes sockets whose connection ended, and what was waiting on them.
    fn reap(&mut self) {
        let mut gone: Vec<u64> = Vec::new();
        let sockets = &mut self.sockets;
        let tx_dropped = &mut self.phy.tx_dropped;
        self.conns.retain(|c| {
            let socket = sockets.get::<tcp::Socket>(c.handle);
            let state = socket.state();
            if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
                // An aborted socket forgets its peer once its RST is out; one that still
                // knows it had the RST refused by a full transmit queue.
                if state == tcp::State::Closed && socket.local_endpoint().is_some() {
                    *tx_dropped += 1;
                }
                sockets.remove(c.handle);
                gone.push(c.id);
                false
            } else {
                true
            }
        });
        if gone.is_empty() {
            return;
        }
        self.pending
            .retain(|_, p| !matches!(p.origin, Origin::Tcp { conn } if gone.contains(&conn)));
        let pending = &self.pending;
        self.queue.retain(|r| pending.contains_key(&r.id.0));
    }

    fn has_listener(&self) -> bool {
        self.conns
            .iter()
            .any(|c| self.sockets.get::<tcp::Socket>(c.handle).is_listening())
    }

    /// Keeps one socket listening on port 53 while there is room for a connection.
    fn ensure_listener(&mut self) {
        let Some(now) = self.now else {
            return; // before the first packet: made on it
        };
        if self.has_listener() || self.conns.len() >= self.config.max_tcp_connections {
            return;
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; TCP_RX_BUFFER]),
            tcp::SocketBuffer::new(vec![0u8; TCP_TX_BUFFER]),
        );
        socket.set_nagle_enabled(false);
        // smoltcp aborts (RST) a connection whose peer sent nothing for this long, whatever
        // it is doing: only the backstop for a peer gone with data outstanding. It must fall
        // after the idle close (a FIN at `tcp_idle_timeout`) and that close's grace.
        let backstop = self.config.tcp_idle_timeout.saturating_add(CLOSE_GRACE);
        socket.set_timeout(Some(smoltcp::time::Duration::from_micros(
            u64::try_from(backstop.as_micros()).unwrap_or(u64::MAX),
        )));
        if socket
            .listen(IpListenEndpoint {
                addr: None,
                port: DNS_PORT,
            })
            .is_err()
        {
            return;
        }
        let handle = self.sockets.add(socket);
        self.next_conn += 1;
        self.conns.push(Conn {
            handle,
            id: self.next_conn,
            created: None,
            last_activity: now,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            inflight: 0,
            accepted: false,
            closing_since: None,
        });
    }

    /// A SYN arrived and every connection slot is taken: reset the oldest half-open
    /// connection, else the longest-idle one with nothing pending, so the SYN gets a
    /// listener; with neither, smoltcp answers it with a RST.
    fn make_room(&mut self, now: Instant) {
        let mut victim: Option<(usize, bool, Instant)> = None; // (index, half-open, age key)
        for (i, c) in self.conns.iter().enumerate() {
            let state = self.sockets.get::<tcp::Socket>(c.handle).state();
            let candidate = match state {
                tcp::State::SynReceived => c.created.map(|t| (true, t)),
                tcp::State::Established | tcp::State::CloseWait
                    if c.inflight == 0 && c.outbuf.is_empty() =>
                {
                    Some((false, c.last_activity))
                }
                _ => None,
            };
            if let Some((half_open, key)) = candidate {
                let better = match victim {
                    None => true,
                    Some((_, v_half, v_key)) => {
                        (half_open && !v_half) || (half_open == v_half && key < v_key)
                    }
                };
                if better {
                    victim = Some((i, half_open, key));
                }
            }
        }
        let Some((i, _, _)) = victim else {
            if self.conns.len() >= self.config.max_tcp_connections {
                self.stats.tcp_refused += 1;
            }
            return;
        };
        let handle = self.conns[i].handle;
        self.sockets.get_mut::<tcp::Socket>(handle).abort();
        self.stats.tcp_evicted += 1;
        let ts = self.ts(now);
        self.iface.poll_egress(ts, &mut self.phy, &mut self.sockets);
        self.reap();
        self.ensure_listener();
    }

    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return;
        }
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.stats.requests_expired += 1;
                self.forget(&p);
            }
        }
        let pending = &self.pending;
        self.queue.retain(|r| pending.contains_key(&r.id.0));
    }

    /// Releases a TCP connection's in-flight slot for a request that will not be answered.
    fn forget(&mut self, p: &Pending) {
        if let Origin::Tcp { conn } = p.origin {
            if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
                c.inflight = c.inflight.saturating_sub(1);
            }
        }
    }
}

struct Ingress {
    syn_to_dns: bool,
}

fn smol_time(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    let micros = now.saturating_duration_since(epoch).as_micros();
    smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;

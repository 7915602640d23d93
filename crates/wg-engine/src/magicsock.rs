//! magicsock's path logic, sans-IO: for each peer, which path a WireGuard datagram takes
//! (a direct UDP address or the peer's DERP region), and the disco exchange that finds and
//! keeps direct paths.
//!
//! [`Magicsock`] is fed disco packets (from UDP or DERP), the peers of the netmap, our own
//! endpoints and the clock; it hands back disco datagrams to send ([`Magicsock::poll_transmit`])
//! and answers, per outbound datagram, where to send it ([`Magicsock::send_paths`]). It owns no
//! socket. The rules follow Go's magicsock (`wgengine/magicsock/endpoint.go`), with Go's timing
//! constants:
//!
//! - a direct path is *trusted* for 6.5 s after its last pong; while trusted, data goes only
//!   there;
//! - otherwise data goes to DERP (the peer's home region) and to the last direct address if
//!   there is one, and discovery starts: pings to every candidate endpoint not pinged in the
//!   last 5 s, and a CallMeMaybe over DERP carrying our endpoints so the peer pings us at the
//!   same time (the hole punch);
//! - while the peer had outbound data in the last 45 s, the best path is pinged every 3 s, and
//!   every candidate again when the path is not trusted or, once a minute, when its latency is
//!   above 5 ms;
//! - candidates are the netmap's endpoints, those from the peer's CallMeMaybe, and the sources
//!   of its pings; a pong over DERP never makes a direct path.
//!
//! Everything is bounded: candidates per peer, outstanding pings per peer, queued datagrams.

use crate::disco::{self, CallMeMaybe, Message, Ping, Pong, TX_ID_LEN};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tailcfg::key::{DiscoPrivate, DiscoPublic, NodePublic};

/// How long a direct path stays trusted after its last pong.
pub const TRUST_UDP_ADDR: Duration = Duration::from_millis(6500);
/// How often the best path is pinged while the session is active.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// No heartbeats after this long without outbound data.
pub const SESSION_ACTIVE_TIMEOUT: Duration = Duration::from_secs(45);
/// Minimum time between pings to one endpoint.
pub const DISCO_PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long to wait for a pong.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How often to look again for a better path when the current one is slower than
/// [`GOOD_ENOUGH_LATENCY`].
pub const UPGRADE_INTERVAL: Duration = Duration::from_secs(60);
/// A path at least this fast is not improved on.
pub const GOOD_ENOUGH_LATENCY: Duration = Duration::from_millis(5);
/// Minimum time between CallMeMaybe messages to one peer.
const CALL_ME_MAYBE_INTERVAL: Duration = Duration::from_secs(5);
/// How often [`Magicsock::handle_timeout`] wants to run while any peer is active.
const TICK: Duration = Duration::from_millis(500);

/// Candidate endpoints kept per peer (netmap, CallMeMaybe and ping sources together).
const MAX_CANDIDATES: usize = 32;
/// Pings awaiting a pong per peer.
const MAX_PINGS: usize = 64;
/// Disco datagrams queued before the oldest are dropped.
const MAX_QUEUED: usize = 1024;

/// Go's fake address for "via DERP region N": `127.3.3.40:N`. Pongs to pings that came over
/// DERP carry it as the observed source.
pub fn derp_magic_addr(region: i32) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 3, 3, 40)),
        u16::try_from(region).unwrap_or(0),
    )
}

/// A path to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// Direct UDP to this address.
    Udp(SocketAddr),
    /// Relayed by this DERP region.
    Derp(i32),
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Udp(a) => write!(f, "{a}"),
            Path::Derp(r) => write!(f, "DERP({r})"),
        }
    }
}

/// One peer as the netmap describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its node key.
    pub key: NodePublic,
    /// Its disco key; without one no disco is possible and only DERP is used.
    pub disco: Option<DiscoPublic>,
    /// Its endpoints as reported to control.
    pub endpoints: Vec<SocketAddr>,
    /// Its home DERP region, 0 for none.
    pub home_derp: i32,
}

/// A datagram magicsock wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Which way: UDP to an address, or DERP region `r` to the peer below.
    pub path: Path,
    /// The peer's node key (the DERP destination).
    pub peer: NodePublic,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Where to send one outbound WireGuard datagram: to the direct address, to DERP, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendPaths {
    /// Direct UDP address, if any.
    pub udp: Option<SocketAddr>,
    /// DERP region, if needed.
    pub derp: Option<i32>,
}

/// Something the caller may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A pong answered one of our pings.
    Pong {
        /// The peer.
        peer: NodePublic,
        /// The path the ping went over.
        path: Path,
        /// Round-trip time.
        latency: Duration,
        /// Our address as the peer saw it.
        observed: SocketAddr,
        /// The ping's transaction ID.
        tx_id: [u8; TX_ID_LEN],
    },
    /// The best path of a peer changed.
    PathChanged {
        /// The peer.
        peer: NodePublic,
        /// The new direct address, `None` back to DERP.
        udp: Option<SocketAddr>,
    },
}

/// A peer's path as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathStatus {
    /// The direct address in use, if any (trusted or not).
    pub udp: Option<SocketAddr>,
    /// Whether the direct address is trusted now.
    pub trusted: bool,
    /// Latency of the direct address.
    pub latency: Option<Duration>,
    /// The DERP region used when not direct.
    pub derp_region: i32,
    /// The candidate endpoints known.
    pub candidates: Vec<SocketAddr>,
}

/// Counters, for debugging and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Disco packets received that could not be opened (unknown key, bad box).
    pub disco_rejected: u64,
    /// Pings received.
    pub pings_received: u64,
    /// Pongs received that matched a ping of ours.
    pub pongs_matched: u64,
    /// Pongs with no matching ping.
    pub pongs_unmatched: u64,
    /// CallMeMaybe received.
    pub call_me_maybe_received: u64,
    /// Datagrams dropped because the queue was full.
    pub queue_drops: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Endpoint {
    last_ping: Option<Instant>,
    last_pong: Option<Instant>,
    latency: Option<Duration>,
}

#[derive(Debug)]
struct SentPing {
    path: Path,
    at: Instant,
    tx_id: [u8; TX_ID_LEN],
}

#[derive(Debug)]
struct PeerState {
    info: PeerInfo,
    /// Candidates with their ping state, in insertion order.
    candidates: Vec<(SocketAddr, Endpoint)>,
    /// Candidates from the peer's last CallMeMaybe.
    from_call_me_maybe: Vec<SocketAddr>,
    pings: Vec<SentPing>,
    best: Option<(SocketAddr, Duration)>,
    trust_until: Option<Instant>,
    last_send: Option<Instant>,
    last_heartbeat: Option<Instant>,
    last_full_ping: Option<Instant>,
    last_call_me_maybe: Option<Instant>,
    /// The DERP region we last heard this peer from.
    heard_region: i32,
}

impl PeerState {
    fn new(info: PeerInfo) -> Self {
        let mut p = PeerState {
            info: PeerInfo {
                endpoints: Vec::new(),
                ..info.clone()
            },
            candidates: Vec::new(),
            from_call_me_maybe: Vec::new(),
            pings: Vec::new(),
            best: None,
            trust_until: None,
            last_send: None,
            last_heartbeat: None,
            last_full_ping: None,
            last_call_me_maybe: None,
            heard_region: 0,
        };
        p.update(info);
        p
    }

    /// New netmap facts; the path state is kept.
    fn update(&mut self, info: PeerInfo) {
        for ep in &info.endpoints {
            self.add_candidate(*ep);
        }
        // Candidates that came only from an older netmap go; learned ones stay.
        let keep =
            |a: &SocketAddr| info.endpoints.contains(a) || self.from_call_me_maybe.contains(a);
        let old = std::mem::take(&mut self.info.endpoints);
        self.candidates
            .retain(|(a, _)| keep(a) || !old.contains(a) || self.best.is_some_and(|b| b.0 == *a));
        self.info = info;
    }

    fn add_candidate(&mut self, addr: SocketAddr) -> bool {
        if !usable(&addr) || self.candidates.iter().any(|(a, _)| *a == addr) {
            return false;
        }
        if self.candidates.len() >= MAX_CANDIDATES {
            // Drop the oldest candidate that is not the best path.
            let best = self.best.map(|b| b.0);
            if let Some(i) = self.candidates.iter().position(|(a, _)| Some(*a) != best) {
                self.candidates.remove(i);
            } else {
                return false;
            }
        }
        self.candidates.push((addr, Endpoint::default()));
        true
    }

    fn trusted(&self, now: Instant) -> bool {
        self.best.is_some() && self.trust_until.is_some_and(|t| now < t)
    }

    fn derp_region(&self) -> i32 {
        if self.info.home_derp != 0 {
            self.info.home_derp
        } else {
            self.heard_region
        }
    }
}

/// Whether an address can be a peer's direct endpoint.
fn usable(a: &SocketAddr) -> bool {
    if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
        return false;
    }
    match a.ip() {
        // Go ignores link-local IPv6 candidates: they need a zone.
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        IpAddr::V4(v4) => !v4.is_broadcast(),
    }
}

/// Go's preference bonus for a kind of address, in percent of latency.
fn bonus(a: &SocketAddr) -> u32 {
    let ip = a.ip();
    let mut b = 0;
    if ip.is_loopback() {
        b += 50;
    }
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_link_local() {
                b += 30;
            } else if v4.is_private() {
                b += 20;
            }
        }
        IpAddr::V6(v6) => {
            b += 10;
            if (v6.segments()[0] & 0xfe00) == 0xfc00 {
                b += 20;
            }
        }
    }
    b.min(90)
}

/// Whether `a` (with latency `la`) is a better path than `b` (with `lb`): latency scaled down
/// by the address kind's bonus, with 1% hysteresis so the choice does not flap.
fn better(a: SocketAddr, la: Duration, b: SocketAddr, lb: Duration) -> bool {
    if a == b {
        return false;
    }
    let score = |addr: &SocketAddr, l: Duration| l.as_nanos() * u128::from(100 - bonus(addr));
    score(&a, la) * 100 < score(&b, lb) * 99
}

/// The disco state of this node and all its peers.
pub struct Magicsock {
    keys: disco::Keys,
    node_key: NodePublic,
    peers: HashMap<NodePublic, PeerState>,
    by_disco: HashMap<DiscoPublic, NodePublic>,
    my_endpoints: Vec<SocketAddr>,
    queue: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Magicsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Magicsock")
            .field("disco", self.keys.public())
            .field("peers", &self.peers.len())
            .field("queued", &self.queue.len())
            .finish()
    }
}

impl Magicsock {
    /// A magicsock for our disco key and node key.
    pub fn new(disco: DiscoPrivate, node_key: NodePublic) -> Self {
        Magicsock {
            keys: disco::Keys::new(disco),
            node_key,
            peers: HashMap::new(),
            by_disco: HashMap::new(),
            my_endpoints: Vec::new(),
            queue: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            scratch: Vec::with_capacity(256),
        }
    }

    /// Our disco public key.
    pub fn disco_public(&self) -> DiscoPublic {
        *self.keys.public()
    }

    /// Our node key changed (a re-login): disco pings carry it.
    pub fn set_node_key(&mut self, key: NodePublic) {
        self.node_key = key;
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Our own endpoints, sent to peers in CallMeMaybe.
    pub fn set_my_endpoints(&mut self, eps: Vec<SocketAddr>) {
        self.my_endpoints = eps;
    }

    /// Replaces the peer set. Peers whose disco key is unchanged keep their path state; a new
    /// disco key means a restarted peer, whose paths are found again.
    pub fn set_peers(&mut self, peers: Vec<PeerInfo>) {
        let mut next: HashMap<NodePublic, PeerState> = HashMap::with_capacity(peers.len());
        // Every disco key in use until now, gone peers' and restarted peers' old ones alike.
        let before: Vec<DiscoPublic> = self.by_disco.keys().copied().collect();
        self.by_disco.clear();
        for info in peers {
            let key = info.key;
            let st = match self.peers.remove(&key) {
                Some(mut st) if st.info.disco == info.disco => {
                    st.update(info);
                    st
                }
                _ => PeerState::new(info),
            };
            if let Some(d) = st.info.disco {
                self.keys.shared(&d);
                self.by_disco.insert(d, key);
            }
            next.insert(key, st);
        }
        for d in &before {
            if !self.by_disco.contains_key(d) {
                self.keys.forget(d);
            }
        }
        self.peers = next;
    }

    /// How many peers are known.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Where to send a WireGuard datagram for `peer` now, starting discovery when no direct
    /// path is trusted. `None` for an unknown peer.
    pub fn send_paths(&mut self, peer: &NodePublic, now: Instant) -> Option<SendPaths> {
        let st = self.peers.get_mut(peer)?;
        st.last_send = Some(now);
        if st.trusted(now) {
            return Some(SendPaths {
                udp: st.best.map(|b| b.0),
                derp: None,
            });
        }
        let region = st.derp_region();
        // With no relay to fall back on, a candidate that has not answered yet beats
        // dropping the packet (Go does the same when it has no DERP address).
        let udp = st.best.map(|b| b.0).or_else(|| {
            if region == 0 {
                st.candidates.first().map(|c| c.0)
            } else {
                None
            }
        });
        let paths = SendPaths {
            udp,
            derp: (region != 0).then_some(region),
        };
        self.discover(*peer, now);
        Some(paths)
    }

    /// Pings every candidate of `peer` not pinged lately, and sends a CallMeMaybe over DERP.
    fn discover(&mut self, peer: NodePublic, now: Instant) {
        let Some(st) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(disco) = st.info.disco else {
            return;
        };
        let due: Vec<SocketAddr> = st
            .candidates
            .iter()
            .filter(|(_, e)| e.last_ping.is_none_or(|t| now >= t + DISCO_PING_INTERVAL))
            .map(|(a, _)| *a)
            .collect();
        if !due.is_empty() {
            st.last_full_ping = Some(now);
        }
        let cmm_due = !self.my_endpoints.is_empty()
            && st.derp_region() != 0
            && st
                .last_call_me_maybe
                .is_none_or(|t| now >= t + CALL_ME_MAYBE_INTERVAL);
        for addr in due {
            self.send_ping(peer, Path::Udp(addr), now, 0);
        }
        if cmm_due {
            let region = self.peers.get(&peer).map_or(0, PeerState::derp_region);
            if let Some(st) = self.peers.get_mut(&peer) {
                st.last_call_me_maybe = Some(now);
            }
            let msg = Message::CallMeMaybe(CallMeMaybe {
                endpoints: self.my_endpoints.clone(),
            });
            self.seal_and_queue(peer, disco, Path::Derp(region), &msg);
        }
    }

    /// Sends a disco ping to `peer` over `path`; returns its transaction ID, `None` when the
    /// peer is unknown or has no disco key.
    fn send_ping(
        &mut self,
        peer: NodePublic,
        path: Path,
        now: Instant,
        padding: usize,
    ) -> Option<[u8; TX_ID_LEN]> {
        let st = self.peers.get_mut(&peer)?;
        let disco = st.info.disco?;
        let tx_id = new_tx_id();
        if st.pings.len() >= MAX_PINGS {
            st.pings.remove(0);
        }
        st.pings.push(SentPing {
            path,
            at: now,
            tx_id,
        });
        if let Path::Udp(a) = path
            && let Some((_, e)) = st.candidates.iter_mut().find(|(c, _)| *c == a)
        {
            e.last_ping = Some(now);
        }
        let msg = Message::Ping(Ping {
            tx_id,
            node_key: Some(self.node_key),
            padding,
        });
        self.seal_and_queue(peer, disco, path, &msg);
        Some(tx_id)
    }

    /// A user's ping (`tailscale ping`): to the best path if trusted, else to every candidate
    /// and over DERP. Pongs come back as [`Event::Pong`]. `None` when the peer is unknown or
    /// has no disco key.
    pub fn ping(&mut self, peer: &NodePublic, now: Instant) -> Option<Vec<[u8; TX_ID_LEN]>> {
        let st = self.peers.get(peer)?;
        st.info.disco?;
        let mut paths: Vec<Path> = Vec::new();
        if st.trusted(now) {
            paths.extend(st.best.map(|b| Path::Udp(b.0)));
        } else {
            paths.extend(st.candidates.iter().map(|(a, _)| Path::Udp(*a)));
            let r = st.derp_region();
            if r != 0 {
                paths.push(Path::Derp(r));
            }
        }
        let mut ids = Vec::with_capacity(paths.len());
        for p in paths {
            ids.extend(self.send_ping(*peer, p, now, 0));
        }
        Some(ids)
    }

    fn seal_and_queue(&mut self, peer: NodePublic, disco: DiscoPublic, path: Path, msg: &Message) {
        self.scratch.clear();
        self.keys.seal(&disco, msg, &mut self.scratch);
        self.queue_transmit(Transmit {
            path,
            peer,
            data: self.scratch.clone(),
        });
    }

    fn queue_transmit(&mut self, t: Transmit) {
        if self.queue.len() >= MAX_QUEUED {
            self.queue.pop_front();
            self.stats.queue_drops += 1;
        }
        self.queue.push_back(t);
    }

    /// The next disco datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.queue.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A disco packet received on UDP from `src`. Returns whether it was accepted.
    pub fn handle_udp(&mut self, src: SocketAddr, packet: &[u8], now: Instant) -> bool {
        self.handle(Path::Udp(src), None, packet, now)
    }

    /// A disco packet relayed by DERP region `region` from the node `src`.
    pub fn handle_derp(
        &mut self,
        region: i32,
        src: NodePublic,
        packet: &[u8],
        now: Instant,
    ) -> bool {
        self.handle(Path::Derp(region), Some(src), packet, now)
    }

    fn handle(
        &mut self,
        from: Path,
        derp_src: Option<NodePublic>,
        packet: &[u8],
        now: Instant,
    ) -> bool {
        let (sender, msg) = match self.keys.open(packet) {
            Ok(x) => x,
            Err(e) => {
                self.stats.disco_rejected += 1;
                tracing::debug!("disco from {from}: {e}");
                return false;
            }
        };
        let Some(mut peer) = self.by_disco.get(&sender).copied() else {
            self.stats.disco_rejected += 1;
            return false;
        };
        // Over DERP the relay names the sender: it must be the node with this disco key.
        if let Some(src) = derp_src {
            if src != peer {
                match self.peers.get(&src) {
                    Some(st) if st.info.disco == Some(sender) => peer = src,
                    _ => {
                        self.stats.disco_rejected += 1;
                        return false;
                    }
                }
            }
            if let (Path::Derp(r), Some(st)) = (from, self.peers.get_mut(&peer)) {
                st.heard_region = r;
            }
        }
        match msg {
            Message::Ping(p) => {
                self.stats.pings_received += 1;
                if let Some(k) = p.node_key
                    && k != peer
                    && self
                        .peers
                        .get(&k)
                        .is_some_and(|s| s.info.disco == Some(sender))
                {
                    peer = k;
                }
                let observed = match from {
                    Path::Udp(a) => a,
                    Path::Derp(r) => derp_magic_addr(r),
                };
                let mut new_candidate = false;
                if let (Path::Udp(a), Some(st)) = (from, self.peers.get_mut(&peer)) {
                    new_candidate = st.add_candidate(a);
                }
                let pong = Message::Pong(Pong {
                    tx_id: p.tx_id,
                    src: observed,
                });
                self.seal_and_queue(peer, sender, from, &pong);
                // A ping from an address we never tried: try it back at once, the quickest
                // way to a direct path.
                if new_candidate && let Path::Udp(a) = from {
                    self.send_ping(peer, Path::Udp(a), now, 0);
                }
            }
            Message::Pong(p) => self.handle_pong(peer, from, &p, now),
            Message::CallMeMaybe(c) => {
                if !matches!(from, Path::Derp(_)) {
                    // Go accepts CallMeMaybe only over DERP.
                    return false;
                }
                self.stats.call_me_maybe_received += 1;
                let Some(st) = self.peers.get_mut(&peer) else {
                    return false;
                };
                st.from_call_me_maybe = c.endpoints.iter().copied().filter(usable).collect();
                st.from_call_me_maybe.truncate(MAX_CANDIDATES);
                for a in st.from_call_me_maybe.clone() {
                    st.add_candidate(a);
                }
                let targets: Vec<SocketAddr> = st
                    .candidates
                    .iter_mut()
                    .filter(|(a, _)| c.endpoints.contains(a))
                    .map(|(a, e)| {
                        e.last_ping = None;
                        *a
                    })
                    .collect();
                for a in targets {
                    self.send_ping(peer, Path::Udp(a), now, 0);
                }
            }
        }
        true
    }

    fn handle_pong(&mut self, peer: NodePublic, from: Path, p: &Pong, now: Instant) {
        let Some(st) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(i) = st.pings.iter().position(|s| s.tx_id == p.tx_id) else {
            self.stats.pongs_unmatched += 1;
            return;
        };
        let sent = st.pings.swap_remove(i);
        self.stats.pongs_matched += 1;
        let latency = now.saturating_duration_since(sent.at);
        // A pong for a UDP ping must come back from that address.
        if let (Path::Udp(to), Path::Udp(back)) = (sent.path, from)
            && to == back
        {
            if let Some((_, e)) = st.candidates.iter_mut().find(|(a, _)| *a == to) {
                e.last_pong = Some(now);
                e.latency = Some(latency);
            }
            let switch = match st.best {
                None => true,
                Some((b, _)) if b == to => false,
                Some((b, lb)) => !st.trusted(now) || better(to, latency, b, lb),
            };
            if st.best.is_some_and(|(b, _)| b == to) || switch {
                st.trust_until = Some(now + TRUST_UDP_ADDR);
            }
            if switch {
                st.best = Some((to, latency));
                self.events.push_back(Event::PathChanged {
                    peer,
                    udp: Some(to),
                });
            } else if let Some(b) = st.best.as_mut().filter(|b| b.0 == to) {
                b.1 = latency;
            }
        }
        self.events.push_back(Event::Pong {
            peer,
            path: sent.path,
            latency,
            observed: p.src,
            tx_id: p.tx_id,
        });
    }

    /// When [`Magicsock::handle_timeout`] wants to run: soon while a peer is active.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let active = self.peers.values().any(|p| {
            p.last_send
                .is_some_and(|t| now < t + SESSION_ACTIVE_TIMEOUT)
                || !p.pings.is_empty()
        });
        active.then_some(now + TICK)
    }

    /// Heartbeats, re-discovery, expiry of unanswered pings and of trust.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut heartbeat = Vec::new();
        let mut rediscover = Vec::new();
        for (key, st) in &mut self.peers {
            st.pings.retain(|s| now < s.at + PING_TIMEOUT);
            if st.best.is_some() && !st.trusted(now) && st.trust_until.is_some() {
                // Trust ran out: go back to DERP until a pong restores it.
                st.trust_until = None;
                self.events.push_back(Event::PathChanged {
                    peer: *key,
                    udp: None,
                });
            }
            let active = st
                .last_send
                .is_some_and(|t| now < t + SESSION_ACTIVE_TIMEOUT);
            if !active || st.info.disco.is_none() {
                continue;
            }
            if let Some((b, lat)) = st.best
                && st
                    .last_heartbeat
                    .is_none_or(|t| now >= t + HEARTBEAT_INTERVAL)
            {
                st.last_heartbeat = Some(now);
                heartbeat.push((*key, b));
                let slow = lat > GOOD_ENOUGH_LATENCY
                    && st
                        .last_full_ping
                        .is_none_or(|t| now >= t + UPGRADE_INTERVAL);
                if slow {
                    rediscover.push(*key);
                }
            }
            if !st.trusted(now) {
                rediscover.push(*key);
            }
        }
        for (peer, addr) in heartbeat {
            self.send_ping(peer, Path::Udp(addr), now, 0);
        }
        for peer in rediscover {
            self.discover(peer, now);
        }
    }

    /// The path state of `peer`.
    pub fn path_status(&self, peer: &NodePublic, now: Instant) -> Option<PathStatus> {
        let st = self.peers.get(peer)?;
        Some(PathStatus {
            udp: st.best.map(|b| b.0),
            trusted: st.trusted(now),
            latency: st.best.map(|b| b.1),
            derp_region: st.derp_region(),
            candidates: st.candidates.iter().map(|(a, _)| *a).collect(),
        })
    }

    /// Notes that a WireGuard datagram from `peer` arrived over DERP region `region`, so
    /// replies can go back that way when the peer names no home region.
    pub fn note_derp_recv(&mut self, peer: &NodePublic, region: i32) {
        if let Some(st) = self.peers.get_mut(peer) {
            st.heard_region = region;
        }
    }
}

fn new_tx_id() -> [u8; TX_ID_LEN] {
    use rand_core::RngCore;
    let mut tx = [0u8; TX_ID_LEN];
    rand_core::OsRng.fill_bytes(&mut tx);
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailcfg::key::NodePrivate;

    struct Node {
        ms: Magicsock,
        key: NodePublic,
        disco: DiscoPublic,
        addr: SocketAddr,
    }

    fn node(addr: &str) -> Node {
        let d = DiscoPrivate::generate();
        let disco = d.public();
        let key = NodePrivate::generate().public();
        Node {
            ms: Magicsock::new(d, key),
            key,
            disco,
            addr: addr.parse().unwrap(),
        }
    }

    fn info(n: &Node, endpoints: &[SocketAddr]) -> PeerInfo {
        PeerInfo {
            key: n.key,
            disco: Some(n.disco),
            endpoints: endpoints.to_vec(),
            home_derp: 1,
        }
    }

    /// Delivers every queued datagram from `from` to `to` (UDP paths only when `udp_ok`).
    fn deliver(from: &mut Node, to: &mut Node, now: Instant, udp_ok: bool) -> (bool, usize) {
        let mut moved = false;
        let mut n = 0;
        while let Some(t) = from.ms.poll_transmit() {
            moved = true;
            match t.path {
                Path::Udp(dst) if udp_ok && dst == to.addr => {
                    to.ms.handle_udp(from.addr, &t.data, now);
                    n += 1;
                }
                Path::Udp(_) => {}
                Path::Derp(r) => {
                    to.ms.handle_derp(r, from.key, &t.data, now);
                    n += 1;
                }
            }
        }
        (moved, n)
    }

    /// Delivers queued datagrams both ways until both queues are empty.
    fn pump(a: &mut Node, b: &mut Node, now: Instant, udp_ok: bool) -> usize {
        let mut total = 0;
        for _ in 0..10 {
            let (m1, n1) = deliver(a, b, now, udp_ok);
            let (m2, n2) = deliver(b, a, now, udp_ok);
            total += n1 + n2;
            if !m1 && !m2 {
                break;
            }
        }
        total
    }

    fn pair(udp_eps: bool) -> (Node, Node) {
        let mut a = node("10.0.0.1:41641");
        let mut b = node("10.0.0.2:41641");
        let (ea, eb) = if udp_eps {
            (vec![a.addr], vec![b.addr])
        } else {
            (vec![], vec![])
        };
        a.ms.set_peers(vec![info(&b, &eb)]);
        b.ms.set_peers(vec![info(&a, &ea)]);
        a.ms.set_my_endpoints(ea.clone());
        b.ms.set_my_endpoints(eb.clone());
        (a, b)
    }

    #[test]
    fn derp_first_then_direct_after_a_pong() {
        let (mut a, mut b) = pair(true);
        let t0 = Instant::now();
        let p = a.ms.send_paths(&b.key, t0).unwrap();
        assert_eq!(p.derp, Some(1));
        assert_eq!(p.udp, None);
        assert!(pump(&mut a, &mut b, t0 + Duration::from_millis(2), true) > 0);
        let p =
            a.ms.send_paths(&b.key, t0 + Duration::from_millis(3))
                .unwrap();
        assert_eq!(p.udp, Some(b.addr));
        assert_eq!(p.derp, None, "a trusted direct path needs no DERP copy");
        let st =
            a.ms.path_status(&b.key, t0 + Duration::from_millis(3))
                .unwrap();
        assert!(st.trusted);
        // b learned a's address from the ping and confirmed it with its own ping.
        let p =
            b.ms.send_paths(&a.key, t0 + Duration::from_millis(3))
                .unwrap();
        assert_eq!(p.udp, Some(a.addr));
        // Trust runs out without pongs.
        let later = t0 + Duration::from_secs(7);
        a.ms.handle_timeout(later);
        let p = a.ms.send_paths(&b.key, later).unwrap();
        assert_eq!((p.udp, p.derp), (Some(b.addr), Some(1)));
    }

    #[test]
    fn call_me_maybe_finds_a_path_with_no_netmap_endpoints() {
        let (mut a, mut b) = pair(false);
        // Only a knows its own endpoint; b learns it from the CallMeMaybe.
        a.ms.set_my_endpoints(vec![a.addr]);
        let t0 = Instant::now();
        a.ms.send_paths(&b.key, t0).unwrap();
        pump(&mut a, &mut b, t0, true);
        assert!(b.ms.stats().call_me_maybe_received >= 1);
        let p =
            b.ms.send_paths(&a.key, t0 + Duration::from_millis(1))
                .unwrap();
        assert_eq!(p.udp, Some(a.addr));
        assert_eq!(p.derp, None);
    }

    #[test]
    fn no_direct_path_without_udp_stays_on_derp() {
        let (mut a, mut b) = pair(true);
        let t0 = Instant::now();
        for i in 0..20 {
            let now = t0 + Duration::from_secs(i);
            let p = a.ms.send_paths(&b.key, now).unwrap();
            assert_eq!((p.udp, p.derp), (None, Some(1)));
            a.ms.handle_timeout(now);
            pump(&mut a, &mut b, now, false);
        }
        // Pings went out, but never more often than every 5 s per endpoint.
        assert!(a.ms.stats().pongs_matched == 0);
    }

    #[test]
    fn heartbeat_keeps_trust_while_active() {
        let (mut a, mut b) = pair(true);
        let t0 = Instant::now();
        a.ms.send_paths(&b.key, t0);
        pump(&mut a, &mut b, t0, true);
        for s in 1..40 {
            let now = t0 + Duration::from_secs(s);
            a.ms.send_paths(&b.key, now);
            a.ms.handle_timeout(now);
            pump(&mut a, &mut b, now, true);
            assert!(a.ms.path_status(&b.key, now).unwrap().trusted, "at {s} s");
        }
    }

    #[test]
    fn forged_and_foreign_disco_is_rejected() {
        let (mut a, b) = pair(true);
        let stranger = node("10.0.0.9:1");
        let t0 = Instant::now();
        // Garbage, truncated, and a packet from a disco key not in the netmap.
        assert!(!a.ms.handle_udp(b.addr, b"garbage", t0));
        assert!(!a.ms.handle_udp(b.addr, &disco::MAGIC, t0));
        let mut s = stranger;
        s.ms.set_peers(vec![info(&a, &[a.addr])]);
        s.ms.ping(&a.key, t0);
        let t = s.ms.poll_transmit().unwrap();
        assert!(!a.ms.handle_udp(s.addr, &t.data, t0));
        // A DERP sender that is not the owner of the disco key.
        let mut b2 = b;
        b2.ms.ping(&a.key, t0);
        let t = b2.ms.poll_transmit().unwrap();
        assert!(!a.ms.handle_derp(1, s.key, &t.data, t0));
        assert!(a.ms.stats().disco_rejected >= 4);
        assert!(a.ms.poll_transmit().is_none(), "nothing answered");
    }

    #[test]
    fn better_prefers_lower_latency_with_bonuses() {
        let pubv4: SocketAddr = "1.2.3.4:1".parse().unwrap();
        let privv4: SocketAddr = "192.168.1.2:1".parse().unwrap();
        let ms = Duration::from_millis;
        assert!(better(pubv4, ms(5), SocketAddr::new(pubv4.ip(), 2), ms(10)));
        assert!(
            !better(pubv4, ms(10), SocketAddr::new(pubv4.ip(), 2), ms(10)),
            "hysteresis"
        );
        // Private beats public at equal latency.
        assert!(better(privv4, ms(10), pubv4, ms(10)));
        assert!(!better(pubv4, ms(10), privv4, ms(10)));
    }

    #[test]
    fn peers_update_keeps_paths_and_new_disco_resets() {
        let (mut a, mut b) = pair(true);
        let t0 = Instant::now();
        a.ms.send_paths(&b.key, t0);
        pump(&mut a, &mut b, t0, true);
        a.ms.set_peers(vec![info(&b, &[b.addr])]);
        assert!(a.ms.path_status(&b.key, t0).unwrap().trusted);
        // b restarts with a new disco key.
        let d = DiscoPrivate::generate();
        b.disco = d.public();
        a.ms.set_peers(vec![info(&b, &[b.addr])]);
        assert!(!a.ms.path_status(&b.key, t0).unwrap().trusted);
        a.ms.set_peers(vec![]);
        assert!(a.ms.path_status(&b.key, t0).is_none());
        assert!(a.ms.send_paths(&b.key, t0).is_none());
    }

    #[test]
    fn a_restarted_peer_s_old_disco_key_is_forgotten() {
        let (mut a, mut b) = pair(true);
        let t0 = Instant::now();
        b.ms.ping(&a.key, t0);
        let old = b.ms.poll_transmit().unwrap();
        assert!(a.ms.keys.open(&old.data).is_ok());
        // b restarts with a new disco key: a keeps no box key for the old one.
        b.disco = DiscoPrivate::generate().public();
        a.ms.set_peers(vec![info(&b, &[b.addr])]);
        assert!(matches!(
            a.ms.keys.open(&old.data),
            Err(disco::Error::UnknownSender(_))
        ));
    }

    #[test]
    fn candidates_and_pings_are_bounded() {
        let (mut a, b) = pair(true);
        let t0 = Instant::now();
        for i in 0..200u16 {
            let eps: Vec<SocketAddr> = (0..50u16)
                .map(|j| SocketAddr::new("10.1.0.1".parse().unwrap(), 1000 + i * 50 + j))
                .collect();
            a.ms.set_peers(vec![info(&b, &eps)]);
        }
        let st = a.ms.path_status(&b.key, t0).unwrap();
        assert!(st.candidates.len() <= MAX_CANDIDATES);
        for i in 0..200 {
            a.ms.ping(&b.key, t0 + Duration::from_millis(i));
        }
        assert!(a.ms.peers[&b.key].pings.len() <= MAX_PINGS);
        let mut n = 0;
        while a.ms.poll_transmit().is_some() {
            n += 1;
        }
        assert!(n <= MAX_QUEUED);
    }
}

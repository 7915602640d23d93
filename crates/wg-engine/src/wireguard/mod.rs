//! WireGuard peers on boringtun's sans-IO `noise::Tunn`, with the AllowedIPs table.
//!
//! [`Peers`] holds one `Tunn` per peer, keyed by the peer's node key (a Tailscale node key is a
//! plain WireGuard static key: the same 32 bytes). It is fed IP packets from the TUN device
//! ([`Peers::encapsulate`]) and datagrams from the network ([`Peers::decapsulate`]), and hands
//! back datagrams to send with a destination of the caller's endpoint type `E` (a UDP address,
//! a DERP route, or simply the peer's key when magicsock chooses the path), or IP packets to
//! write to the TUN device. It owns no socket and no clock: the caller passes `now` to
//! [`Peers::handle_timeout`] at [`Peers::poll_timeout`].
//!
//! Every call takes a caller buffer of at least [`BUFFER_LEN`] bytes, so no IP packet (at most
//! 65535 bytes) can overflow it; the hot path allocates nothing.
//!
//! boringtun 0.7 reads its own monotonic clock for its timers (rekey, handshake retry,
//! keepalive); the `now` passed here decides only when those timers are evaluated.
//!
//! Handshake initiations are MAC-checked and rate-limited (100 a second for the table, 10 per
//! peer) before the key agreement that names their sender. Endpoints are opaque, so no cookie
//! (which binds to a source IP) is ever sent: past the limit initiations are dropped.

pub mod allowed_ips;

pub use allowed_ips::AllowedIps;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tailcfg::IpPrefix;
use tailcfg::key::{NodePrivate, NodePublic};

/// WireGuard's per-packet overhead: type, receiver index, counter (16 bytes) and AEAD tag.
pub const OVERHEAD: usize = 32;

/// The largest IP packet accepted for encapsulation.
pub const MAX_PACKET: usize = 65535;

/// The smallest buffer every call accepts: the largest packet plus WireGuard's overhead.
pub const BUFFER_LEN: usize = MAX_PACKET + OVERHEAD;

/// How often boringtun's timers are evaluated (its own device uses 250 ms).
pub const TIMER_TICK: Duration = Duration::from_millis(250);

/// Handshake initiations per second accepted before the table counts as under load.
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// One peer as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig<E> {
    /// The peer's node key, which is its WireGuard static public key.
    pub key: NodePublic,
    /// Prefixes routed to this peer and accepted as source addresses from it.
    pub allowed_ips: Vec<IpPrefix>,
    /// Where to send to this peer until it is heard from elsewhere; `None` keeps what was
    /// configured or learned before.
    pub endpoint: Option<E>,
}

/// The whole WireGuard configuration: the node's key and its peers.
///
/// When two peers list the same prefix, the first one in `peers` gets it: the caller (the
/// daemon core) is expected to have resolved such conflicts already.
#[derive(Debug, Clone)]
pub struct EngineConfig<E> {
    /// The node's private key (the WireGuard static private key).
    pub private_key: NodePrivate,
    /// The peers.
    pub peers: Vec<PeerConfig<E>>,
}

/// A datagram to send to a peer.
#[derive(Debug)]
pub struct Transmit<'a, E> {
    /// The peer it is for.
    pub peer: NodePublic,
    /// Where to send it.
    pub dst: E,
    /// The WireGuard message.
    pub datagram: &'a [u8],
}

/// What a received datagram turned into.
#[derive(Debug)]
pub enum Decapsulated<'a, E> {
    /// An IP packet from `peer`, its source checked against the peer's AllowedIPs: write it to
    /// the TUN device.
    Packet {
        /// The peer that sent it.
        peer: NodePublic,
        /// The IP packet.
        packet: &'a [u8],
    },
    /// A datagram to send back (a handshake response or keepalive). Afterwards call
    /// [`Peers::flush_queued`] for the same peer until it returns `None`: packets queued while
    /// the handshake was pending are released.
    Transmit(Transmit<'a, E>),
    /// Consumed with nothing to do (a keepalive, a cookie, a duplicate).
    Done,
}

/// Why a packet or datagram was not handled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The buffer passed is smaller than [`BUFFER_LEN`].
    #[error("buffer of {0} bytes is smaller than {BUFFER_LEN}")]
    BufferTooSmall(usize),
    /// The outbound packet is not an IPv4 or IPv6 packet, or is too long.
    #[error("not an IP packet")]
    NotIp,
    /// No peer's AllowedIPs contain the destination.
    #[error("no peer for destination {0}")]
    NoRoute(IpAddr),
    /// The peer has no endpoint yet: the datagram was dropped.
    #[error("peer {0} has no endpoint")]
    NoEndpoint(NodePublic),
    /// The datagram belongs to no configured peer (unknown key or index).
    #[error("datagram from no known peer")]
    UnknownPeer,
    /// A decrypted packet's source address is not in the sending peer's AllowedIPs.
    #[error("peer {peer} may not send from {src}")]
    SourceNotAllowed {
        /// The peer that sent it.
        peer: NodePublic,
        /// The source address it used.
        src: IpAddr,
    },
    /// boringtun refused the datagram (bad MAC, replay, wrong index, expired, …).
    #[error("wireguard: {0:?}")]
    Protocol(WireGuardError),
}

/// Counters of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStats {
    /// Time since the last completed handshake, if any session exists.
    pub since_handshake: Option<Duration>,
    /// Plaintext bytes sent.
    pub tx_bytes: usize,
    /// Plaintext bytes received.
    pub rx_bytes: usize,
}

struct Peer<E> {
    tunn: Tunn,
    index: u32,
    endpoint: Option<E>,
}

/// The WireGuard peers of one node: a `Tunn` each, and the AllowedIPs table.
pub struct Peers<E> {
    private: NodePrivate,
    secret: StaticSecret,
    public: PublicKey,
    peers: HashMap<NodePublic, Peer<E>>,
    by_index: HashMap<u32, NodePublic>,
    allowed: AllowedIps<NodePublic>,
    /// Checks MACs and rate of handshake initiations before the key agreement that tells
    /// which peer sent them, so strangers cannot make us compute much.
    limiter: Arc<RateLimiter>,
    next_index: u32,
    next_tick: Option<Instant>,
    next_limiter_reset: Option<Instant>,
}

impl<E> std::fmt::Debug for Peers<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("public", &self.private.public())
            .field("peers", &self.peers.len())
            .field("allowed_ips", &self.allowed.len())
            .finish()
    }
}

fn dst_address(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 => {
            let b: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn check_buffer(buf: &[u8]) -> Result<(), Error> {
    if buf.len() < BUFFER_LEN {
        return Err(Error::BufferTooSmall(buf.len()));
    }
    Ok(())
}

impl<E: Clone> Peers<E> {
    /// A table for `config`.
    pub fn new(config: EngineConfig<E>) -> Self {
        let secret = StaticSecret::from(*config.private_key.as_bytes());
        let public = PublicKey::from(&secret);
        let mut me = Self {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            private: config.private_key.clone(),
            secret,
            public,
            peers: HashMap::new(),
            by_index: HashMap::new(),
            allowed: AllowedIps::new(),
            next_index: 1,
            next_tick: None,
            next_limiter_reset: None,
        };
        me.set_config(config);
        me
    }

    /// Applies a new configuration. Peers whose key is unchanged keep their sessions (only
    /// their AllowedIPs and endpoint change); new peers are added, missing ones dropped. A new
    /// private key resets every session.
    pub fn set_config(&mut self, config: EngineConfig<E>) {
        if config.private_key != self.private {
            self.private = config.private_key.clone();
            self.secret = StaticSecret::from(*config.private_key.as_bytes());
            self.public = PublicKey::from(&self.secret);
            self.limiter = Arc::new(RateLimiter::new(&self.public, HANDSHAKE_RATE_LIMIT));
            for peer in self.peers.values_mut() {
                peer.tunn
                    .set_static_private(self.secret.clone(), self.public, None);
            }
        }
        let wanted: HashMap<NodePublic, ()> = config.peers.iter().map(|p| (p.key, ())).collect();
        let by_index = &mut self.by_index;
        self.peers.retain(|key, peer| {
            let keep = wanted.contains_key(key);
            if !keep {
                by_index.remove(&peer.index);
            }
            keep
        });
        self.allowed = AllowedIps::new();
        for pc in config.peers {
            if let Some(peer) = self.peers.get_mut(&pc.key) {
                if pc.endpoint.is_some() {
                    peer.endpoint = pc.endpoint;
                }
            } else {
                let index = self.allocate_index();
                let tunn = Tunn::new(
                    self.secret.clone(),
                    PublicKey::from(*pc.key.as_bytes()),
                    None,
                    None,
                    index,
                    None,
                );
                self.by_index.insert(index, pc.key);
                self.peers.insert(
                    pc.key,
                    Peer {
                        tunn,
                        index,
                        endpoint: pc.endpoint,
                    },
                );
            }
            for prefix in pc.allowed_ips {
                if self.allowed.lookup_exact(prefix).is_none() {
                    self.allowed.insert(prefix, pc.key);
                }
            }
        }
    }

    /// A free 24-bit peer index (boringtun puts a session counter in the low 8 bits).
    fn allocate_index(&mut self) -> u32 {
        loop {
            let i = self.next_index;
            self.next_index = if i >= 0x00ff_ffff { 1 } else { i + 1 };
            if !self.by_index.contains_key(&i) {
                return i;
            }
        }
    }

    /// The node's own public key.
    pub fn public_key(&self) -> NodePublic {
        self.private.public()
    }

    /// How many peers are configured.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is configured.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The AllowedIPs table.
    pub fn allowed_ips(&self) -> &AllowedIps<NodePublic> {
        &self.allowed
    }

    /// The peer's current endpoint (configured or learned from its last authenticated datagram).
    pub fn endpoint(&self, peer: &NodePublic) -> Option<&E> {
        self.peers.get(peer)?.endpoint.as_ref()
    }

    /// The peer's counters.
    pub fn stats(&self, peer: &NodePublic) -> Option<PeerStats> {
        let (since_handshake, tx_bytes, rx_bytes, _, _) = self.peers.get(peer)?.tunn.stats();
        Some(PeerStats {
            since_handshake,
            tx_bytes,
            rx_bytes,
        })
    }

    /// Encrypts an IP packet read from the TUN device for the peer whose AllowedIPs hold its
    /// destination. `Ok(None)`: the packet was queued while a handshake is under way.
    pub fn encapsulate<'a>(
        &mut self,
        packet: &[u8],
        buf: &'a mut [u8],
    ) -> Result<Option<Transmit<'a, E>>, Error> {
        check_buffer(buf)?;
        if packet.len() > MAX_PACKET {
            return Err(Error::NotIp);
        }
        let dst = dst_address(packet).ok_or(Error::NotIp)?;
        let key = *self.allowed.lookup(dst).ok_or(Error::NoRoute(dst))?;
        let peer = self.peers.get_mut(&key).ok_or(Error::NoRoute(dst))?;
        match peer.tunn.encapsulate(packet, buf) {
            TunnResult::WriteToNetwork(d) => {
                let dst = peer.endpoint.clone().ok_or(Error::NoEndpoint(key))?;
                Ok(Some(Transmit {
                    peer: key,
                    dst,
                    datagram: d,
                }))
            }
            TunnResult::Err(e) => Err(Error::Protocol(e)),
            _ => Ok(None),
        }
    }

    /// Which peer a datagram is from: the hint if it names a configured peer, else the
    /// receiver index, else (for a handshake initiation) the static key inside it.
    fn identify(&self, hint: Option<NodePublic>, datagram: &[u8]) -> Result<NodePublic, Error> {
        if let Some(h) = hint.filter(|h| self.peers.contains_key(h)) {
            return Ok(h);
        }
        let index = match Tunn::parse_incoming_packet(datagram).map_err(Error::Protocol)? {
            Packet::HandshakeInit(_) => {
                let mut cookie = [0u8; 64];
                let init = match self.limiter.verify_packet(None, datagram, &mut cookie) {
                    Ok(Packet::HandshakeInit(init)) => init,
                    Ok(_) => return Err(Error::Protocol(WireGuardError::WrongPacketType)),
                    Err(TunnResult::Err(e)) => return Err(Error::Protocol(e)),
                    Err(_) => return Err(Error::Protocol(WireGuardError::UnderLoad)),
                };
                let half = parse_handshake_anon(&self.secret, &self.public, &init)
                    .map_err(Error::Protocol)?;
                let key = NodePublic::from_bytes(half.peer_static_public);
                return if self.peers.contains_key(&key) {
                    Ok(key)
                } else {
                    Err(Error::UnknownPeer)
                };
            }
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => p.receiver_idx,
            Packet::PacketData(p) => p.receiver_idx,
        };
        self.by_index
            .get(&(index >> 8))
            .copied()
            .ok_or(Error::UnknownPeer)
    }

    /// Handles a datagram received from `src`. `peer_hint` names the sender when the transport
    /// already knows it (DERP does); otherwise the datagram itself tells. An authenticated
    /// datagram makes `src` the peer's endpoint (WireGuard roaming).
    pub fn decapsulate<'a>(
        &mut self,
        peer_hint: Option<NodePublic>,
        src: E,
        datagram: &[u8],
        buf: &'a mut [u8],
    ) -> Result<Decapsulated<'a, E>, Error> {
        check_buffer(buf)?;
        if datagram.is_empty() || datagram.len() > BUFFER_LEN {
            return Err(Error::Protocol(WireGuardError::InvalidPacket));
        }
        let key = self.identify(peer_hint, datagram)?;
        let peer = self.peers.get_mut(&key).ok_or(Error::UnknownPeer)?;
        match peer.tunn.decapsulate(None, datagram, buf) {
            TunnResult::WriteToNetwork(d) => {
                peer.endpoint = Some(src.clone());
                Ok(Decapsulated::Transmit(Transmit {
                    peer: key,
                    dst: src,
                    datagram: d,
                }))
            }
            TunnResult::WriteToTunnelV4(p, a) => {
                Self::accept(&self.allowed, peer, key, src, IpAddr::V4(a), p)
            }
            TunnResult::WriteToTunnelV6(p, a) => {
                Self::accept(&self.allowed, peer, key, src, IpAddr::V6(a), p)
            }
            TunnResult::Done => Ok(Decapsulated::Done),
            TunnResult::Err(e) => Err(Error::Protocol(e)),
        }
    }

    fn accept<'a>(
        allowed: &AllowedIps<NodePublic>,
        peer: &mut Peer<E>,
        key: NodePublic,
        src: E,
        from: IpAddr,
        packet: &'a [u8],
    ) -> Result<Decapsulated<'a, E>, Error> {
        peer.endpoint = Some(src);
        if allowed.lookup(from) != Some(&key) {
            return Err(Error::SourceNotAllowed {
                peer: key,
                src: from,
            });
        }
        Ok(Decapsulated::Packet { peer: key, packet })
    }

    /// The next packet queued for `peer` while its handshake was pending, now encrypted.
    pub fn flush_queued<'a>(
        &mut self,
        peer: &NodePublic,
        buf: &'a mut [u8],
    ) -> Result<Option<Transmit<'a, E>>, Error> {
        check_buffer(buf)?;
        let Some(p) = self.peers.get_mut(peer) else {
            return Ok(None);
        };
        match p.tunn.decapsulate(None, &[], buf) {
            TunnResult::WriteToNetwork(d) => {
                let dst = p.endpoint.clone().ok_or(Error::NoEndpoint(*peer))?;
                Ok(Some(Transmit {
                    peer: *peer,
                    dst,
                    datagram: d,
                }))
            }
            TunnResult::Err(e) => Err(Error::Protocol(e)),
            _ => Ok(None),
        }
    }

    /// When [`Peers::handle_timeout`] wants to be called next; `None` with no peers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.peers.is_empty() {
            return None;
        }
        self.next_tick
    }

    /// Runs the peers' timers if their tick is due (or was never run), handing each datagram
    /// they produce (handshake initiations and retries, keepalives) to `emit`. Returns how many
    /// were emitted.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        mut emit: impl FnMut(Transmit<'_, E>),
    ) -> Result<usize, Error> {
        check_buffer(buf)?;
        if self.next_limiter_reset.is_none_or(|t| now >= t) {
            self.limiter.reset_count();
            self.next_limiter_reset = Some(now + Duration::from_secs(1));
        }
        if self.next_tick.is_some_and(|t| now < t) {
            return Ok(0);
        }
        self.next_tick = Some(now + TIMER_TICK);
        let mut sent = 0;
        for (key, peer) in &mut self.peers {
            match peer.tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(d) => {
                    if let Some(dst) = peer.endpoint.clone() {
                        emit(Transmit {
                            peer: *key,
                            dst,
                            datagram: d,
                        });
                        sent += 1;
                    }
                }
                TunnResult::Err(e) => {
                    tracing::trace!(peer = %key, "wireguard timer: {e:?}");
                }
                _ => {}
            }
        }
        Ok(sent)
    }
}

//! The sans-IO DERP client connection: bytes and `Instant`s in, bytes, events and a timer
//! out. No sockets, no clock.

use super::frame::{Frame, FrameError, PING_LEN, PROTOCOL_VERSION};
use super::{ClientInfo, MeshKey, PeerGoneReason, ServerInfo};
use crate::nacl::{OpenError, SharedKey};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tailcfg::key::{NodePrivate, NodePublic};

/// The most bytes waiting to be written before [`Connection::send_packet`] refuses more;
/// DERP carries datagrams, so the caller drops the packet, as a full UDP buffer would.
pub const MAX_PENDING_TRANSMIT: usize = 512 << 10;

fn is_keepalive_data(data: &[u8; PING_LEN]) -> bool {
    data[..2] == *b"ka"
}

/// Settings of a client connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Tell the server we answer Pings (Go clients do).
    pub can_ack_pings: bool,
    /// Mesh key, for mesh peers only.
    pub mesh_key: Option<MeshKey>,
    /// Identify as a prober.
    pub is_prober: bool,
    /// Give up if ServerInfo has not arrived this long after the start (the server's own
    /// handshake deadline is 10 s).
    pub handshake_timeout: Duration,
    /// Ping the server after this long without hearing from it. The server sends a
    /// KeepAlive every 60 s plus up to 5 s of jitter, so this normally never fires.
    pub ping_after: Duration,
    /// Give up after this long without hearing from the server (Go's receive timeout).
    pub read_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            can_ack_pings: true,
            mesh_key: None,
            is_prober: false,
            handshake_timeout: Duration::from_secs(10),
            ping_after: Duration::from_secs(70),
            read_timeout: Duration::from_secs(120),
        }
    }
}

/// What the connection reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// ServerInfo arrived: the server accepted us.
    Connected {
        /// The server's public key (from its ServerKey frame).
        server_key: NodePublic,
        /// What the server said.
        info: ServerInfo,
    },
    /// A packet from a peer.
    Packet {
        /// The sender's node key.
        src: NodePublic,
        /// The packet.
        data: Vec<u8>,
    },
    /// A peer we heard from is gone, or one we sent to is not here.
    PeerGone {
        /// The peer's node key.
        peer: NodePublic,
        /// Why.
        reason: PeerGoneReason,
    },
    /// A peer is present (mesh watchers only).
    PeerPresent {
        /// The peer's node key.
        peer: NodePublic,
        /// Its address as the server saw it.
        endpoint: Option<SocketAddr>,
        /// Presence flags.
        flags: Option<u8>,
    },
    /// The server reports a problem with this connection; empty text clears it.
    Health {
        /// The problem.
        problem: String,
    },
    /// The server is restarting.
    Restarting {
        /// Reconnect after this long.
        reconnect_in: Duration,
        /// Keep trying this long.
        try_for: Duration,
    },
    /// The answer to a [`Connection::ping`].
    Pong([u8; PING_LEN]),
}

/// Why the connection failed. After an error the connection is closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The server sent a frame that cannot be a DERP frame (too large, bad greeting).
    #[error("DERP protocol violation: {0}")]
    Frame(#[from] FrameError),
    /// The first frame was not ServerKey.
    #[error("server's first frame has type {frame_type:#04x}, not ServerKey")]
    NoServerKey {
        /// The type byte that came instead.
        frame_type: u8,
    },
    /// ServerInfo did not open with our key and the server's.
    #[error("server info box did not open: {0}")]
    ServerInfoBox(OpenError),
    /// ServerInfo's JSON did not parse.
    #[error("server info is not valid JSON: {0}")]
    ServerInfoJson(serde_json::Error),
    /// ServerInfo did not arrive in time.
    #[error("DERP handshake timed out")]
    HandshakeTimeout,
    /// Nothing heard from the server for too long.
    #[error("nothing received from the DERP server for {0:?}")]
    ReadTimeout(Duration),
    /// Sending before the server's key is known.
    #[error("DERP connection not ready to send yet")]
    NotReady,
    /// Too many bytes are waiting to be written; the packet was dropped.
    #[error("DERP send buffer full; packet dropped")]
    SendBufferFull,
    /// Over the rate the server allows (ServerInfo's token bucket); the packet was dropped,
    /// as Go's client drops it.
    #[error("over the DERP server's rate limit; packet dropped")]
    RateLimited,
    /// The connection is closed.
    #[error("DERP connection closed")]
    Closed,
}

/// The server's send allowance: `rate` bytes per second, up to `burst` saved up.
#[derive(Debug, Clone)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(info: &ServerInfo, now: Instant) -> Option<Self> {
        if info.token_bucket_bytes_per_second == 0 {
            return None;
        }
        let burst = info.token_bucket_bytes_burst as f64;
        Some(TokenBucket {
            rate: info.token_bucket_bytes_per_second as f64,
            burst,
            tokens: burst,
            last: now,
        })
    }

    /// Takes `n` bytes' worth of tokens if there are enough.
    fn allow(&mut self, n: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitServerKey,
    AwaitServerInfo,
    Established,
    Closed,
}

/// A DERP client connection after the HTTP upgrade.
pub struct Connection {
    private: NodePrivate,
    public: NodePublic,
    config: Config,
    state: State,
    server_key: Option<NodePublic>,
    shared: Option<SharedKey>,
    server_info: Option<ServerInfo>,
    rx: Vec<u8>,
    tx: Vec<u8>,
    events: VecDeque<Event>,
    started: Instant,
    last_rx: Instant,
    keepalive_ping: Option<[u8; PING_LEN]>,
    ping_counter: u64,
    dropped_frames: u64,
    rate: Option<TokenBucket>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("public", &self.public)
            .field("state", &self.state)
            .field("server_key", &self.server_key)
            .field("pending_transmit", &self.tx.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection that waits for the server's ServerKey frame (the normal upgrade).
    pub fn new(private: NodePrivate, config: Config, now: Instant) -> Self {
        let public = private.public();
        Connection {
            private,
            public,
            config,
            state: State::AwaitServerKey,
            server_key: None,
            shared: None,
            server_info: None,
            rx: Vec::new(),
            tx: Vec::new(),
            events: VecDeque::new(),
            started: now,
            last_rx: now,
            keepalive_ping: None,
            ping_counter: 0,
            dropped_frames: 0,
            rate: None,
        }
    }

    /// A connection whose server key is already known (fast start over TLS): ClientInfo is
    /// queued at once, and the server's ServerKey frame is then skipped, as Go does.
    pub fn with_server_key(
        private: NodePrivate,
        server_key: NodePublic,
        config: Config,
        now: Instant,
    ) -> Self {
        let mut c = Self::new(private, config, now);
        c.accept_server_key(server_key);
        c
    }

    /// Our node public key.
    pub fn public_key(&self) -> &NodePublic {
        &self.public
    }

    /// The server's key, once known.
    pub fn server_key(&self) -> Option<&NodePublic> {
        self.server_key.as_ref()
    }

    /// What the server said in ServerInfo, once it arrived.
    pub fn server_info(&self) -> Option<&ServerInfo> {
        self.server_info.as_ref()
    }

    /// Whether ServerInfo has arrived.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the connection is closed (after an error or [`Connection::close`]).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Frames dropped because they were malformed but harmless (Go skips them too).
    pub fn dropped_frames(&self) -> u64 {
        self.dropped_frames
    }

    /// Closes the connection; later calls fail with [`ConnError::Closed`].
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.tx.clear();
        self.rx.clear();
    }

    fn fail(&mut self, e: ConnError) -> ConnError {
        self.close();
        e
    }

    fn accept_server_key(&mut self, key: NodePublic) {
        let shared = SharedKey::node(&self.private, &key);
        let info = ClientInfo {
            mesh_key: self.config.mesh_key.clone(),
            version: PROTOCOL_VERSION,
            can_ack_pings: self.config.can_ack_pings,
            is_prober: self.config.is_prober,
        };
        // Serialising this plain struct cannot fail; an empty object would be refused by
        // the server, which is the right outcome should it ever happen.
        let json = serde_json::to_vec(&info).unwrap_or_else(|_| b"{}".to_vec());
        let mut sealed = Vec::with_capacity(json.len() + crate::nacl::OVERHEAD);
        shared.seal(&json, &mut sealed);
        self.emit(&Frame::ClientInfo {
            key: self.public,
            sealed: &sealed,
        });
        self.server_key = Some(key);
        self.shared = Some(shared);
        self.state = State::AwaitServerInfo;
    }

    fn emit(&mut self, f: &Frame<'_>) {
        // Only frames we build ourselves come here, each within its limits (packets are
        // checked by the caller first), so this cannot fail.
        if let Err(e) = f.emit(&mut self.tx) {
            tracing::debug!("derp: not sending frame: {e}");
        }
    }

    /// Feeds bytes read from the server.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) -> Result<(), ConnError> {
        if self.state == State::Closed {
            return Err(ConnError::Closed);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        self.last_rx = now;
        self.keepalive_ping = None;
        let mut rx = std::mem::take(&mut self.rx);
        rx.extend_from_slice(bytes);
        let mut at = 0;
        let result = loop {
            match Frame::parse(&rx[at..]) {
                Ok((frame, used)) => {
                    at += used;
                    if let Err(e) = self.handle_frame(frame, now) {
                        break Err(e);
                    }
                }
                Err(FrameError::Incomplete { .. }) => break Ok(()),
                Err(e @ (FrameError::TooLarge { .. } | FrameError::BadMagic)) => {
                    break Err(ConnError::Frame(e));
                }
                Err(e) => {
                    // A short or malformed frame of a known type: Go logs and skips it.
                    // The header is valid (the length was checked), so skip the frame.
                    let skip = Frame::peek_header(&rx[at..])
                        .map(|(_, len)| super::FRAME_HEADER_LEN + len)
                        .unwrap_or(rx.len() - at);
                    if self.state == State::AwaitServerKey {
                        break Err(ConnError::Frame(e));
                    }
                    tracing::debug!("derp: dropping malformed frame: {e}");
                    self.dropped_frames += 1;
                    at += skip;
                }
            }
        };
        if let Err(e) = result {
            return Err(self.fail(e));
        }
        if self.state != State::Closed {
            rx.drain(..at);
            self.rx = rx;
        }
        Ok(())
    }

    fn handle_frame(&mut self, frame: Frame<'_>, now: Instant) -> Result<(), ConnError> {
        if self.state == State::AwaitServerKey {
            return match frame {
                Frame::ServerKey { key } => {
                    self.accept_server_key(key);
                    Ok(())
                }
                other => Err(ConnError::NoServerKey {
                    frame_type: other.frame_type(),
                }),
            };
        }
        match frame {
            Frame::ServerInfo { sealed } => {
                let Some(shared) = &self.shared else {
                    return Err(ConnError::NotReady);
                };
                let json = shared.open(sealed).map_err(ConnError::ServerInfoBox)?;
                let info: ServerInfo =
                    serde_json::from_slice(&json).map_err(ConnError::ServerInfoJson)?;
                if self.state == State::AwaitServerInfo {
                    self.state = State::Established;
                    if let Some(server_key) = self.server_key {
                        self.events.push_back(Event::Connected {
                            server_key,
                            info: info.clone(),
                        });
                    }
                }
                self.rate = TokenBucket::new(&info, now);
                self.server_info = Some(info);
            }
            Frame::RecvPacket { src, packet } => self.events.push_back(Event::Packet {
                src,
                data: packet.to_vec(),
            }),
            Frame::PeerGone { peer, reason } => {
                self.events.push_back(Event::PeerGone { peer, reason })
            }
            Frame::PeerPresent {
                peer,
                endpoint,
                flags,
            } => self.events.push_back(Event::PeerPresent {
                peer,
                endpoint,
                flags,
            }),
            Frame::Ping(data) if self.config.can_ack_pings => self.emit(&Frame::Pong(data)),
            // Any input already cleared the keep-alive; only pongs to the caller's pings
            // are reported.
            Frame::Pong(data) if !is_keepalive_data(&data) => {
                self.events.push_back(Event::Pong(data))
            }
            Frame::Health { problem } => self.events.push_back(Event::Health {
                problem: problem.to_owned(),
            }),
            Frame::Restarting {
                reconnect_in,
                try_for,
            } => self.events.push_back(Event::Restarting {
                reconnect_in,
                try_for,
            }),
            // KeepAlive only refreshes the read deadline (done for any input). A repeated
            // ServerKey (fast start), keep-alive pongs, pings we do not answer and frames
            // meant for servers are skipped, as Go does.
            _ => {}
        }
        Ok(())
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes waiting to be written to the server.
    pub fn pending_transmit(&self) -> &[u8] {
        &self.tx
    }

    /// Marks `n` bytes of [`Connection::pending_transmit`] as written.
    pub fn advance_transmit(&mut self, n: usize) {
        let n = n.min(self.tx.len());
        self.tx.drain(..n);
    }

    fn check_can_send(&self) -> Result<(), ConnError> {
        match self.state {
            State::Closed => Err(ConnError::Closed),
            State::AwaitServerKey => Err(ConnError::NotReady),
            _ if self.tx.len() > MAX_PENDING_TRANSMIT => Err(ConnError::SendBufferFull),
            _ => Ok(()),
        }
    }

    /// Queues a packet for the peer with node key `dst`. Allowed once ClientInfo is sent
    /// (Go sends before ServerInfo arrives, too). Packets over the server's rate limit are
    /// refused with [`ConnError::RateLimited`]; the caller drops them.
    pub fn send_packet(
        &mut self,
        dst: &NodePublic,
        packet: &[u8],
        now: Instant,
    ) -> Result<(), ConnError> {
        self.check_can_send()?;
        let frame = Frame::SendPacket { dst: *dst, packet };
        let wire_len = super::FRAME_HEADER_LEN + frame.payload_len();
        if let Some(bucket) = &mut self.rate {
            if !bucket.allow(wire_len, now) {
                return Err(ConnError::RateLimited);
            }
        }
        frame.emit(&mut self.tx)?;
        Ok(())
    }

    /// Tells the server whether it is our home DERP.
    pub fn note_preferred(&mut self, preferred: bool) -> Result<(), ConnError> {
        self.check_can_send()?;
        self.emit(&Frame::NotePreferred { preferred });
        Ok(())
    }

    /// Sends a Ping; the server's Pong comes back as [`Event::Pong`]. Data starting with
    /// `"ka"` is reserved for keep-alives.
    pub fn ping(&mut self, data: [u8; PING_LEN]) -> Result<(), ConnError> {
        self.check_can_send()?;
        self.emit(&Frame::Ping(data));
        Ok(())
    }

    /// When [`Connection::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::AwaitServerKey | State::AwaitServerInfo => {
                Some(self.started + self.config.handshake_timeout)
            }
            State::Established => {
                let dead = self.last_rx + self.config.read_timeout;
                if self.keepalive_ping.is_some() {
                    Some(dead)
                } else {
                    Some(dead.min(self.last_rx + self.config.ping_after))
                }
            }
        }
    }

    /// Handles the timer: handshake deadline, keep-alive ping, read timeout.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ConnError> {
        match self.state {
            State::Closed => Err(ConnError::Closed),
            State::AwaitServerKey | State::AwaitServerInfo => {
                if now >= self.started + self.config.handshake_timeout {
                    Err(self.fail(ConnError::HandshakeTimeout))
                } else {
                    Ok(())
                }
            }
            State::Established => {
                let silent = now.saturating_duration_since(self.last_rx);
                if silent >= self.config.read_timeout {
                    return Err(self.fail(ConnError::ReadTimeout(silent)));
                }
                if silent >= self.config.ping_after && self.keepalive_ping.is_none() {
                    self.ping_counter += 1;
                    let mut data = [0u8; PING_LEN];
                    data[..2].copy_from_slice(b"ka");
                    data[2..].copy_from_slice(&self.ping_counter.to_be_bytes()[2..]);
                    self.keepalive_ping = Some(data);
                    self.emit(&Frame::Ping(data));
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::PeerGoneReason;
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// A tiny in-memory DERP server: enough of derper's behaviour to test the client
    /// state machine (greeting, ClientInfo check, routing, PeerGone to those who heard
    /// from a departed peer).
    struct Server {
        private: NodePrivate,
        /// Per connection id: its key once known, its unparsed input, bytes for it.
        conns: HashMap<u32, ServerConn>,
    }

    #[derive(Default)]
    struct ServerConn {
        key: Option<NodePublic>,
        rx: Vec<u8>,
        out: Vec<u8>,
        saw_src: HashSet<NodePublic>,
    }

    impl Server {
        fn new() -> Self {
            Server {
                private: NodePrivate::from_bytes([0x5e; 32]),
                conns: HashMap::new(),
            }
        }

        fn accept(&mut self, id: u32) {
            let mut c = ServerConn::default();
            Frame::ServerKey {
                key: self.private.public(),
            }
            .emit(&mut c.out)
            .unwrap();
            self.conns.insert(id, c);
        }

        fn input(&mut self, id: u32, bytes: &[u8]) {
            let mut rx = std::mem::take(&mut self.conns.get_mut(&id).unwrap().rx);
            rx.extend_from_slice(bytes);
            let mut at = 0;
            while let Ok((f, used)) = Frame::parse(&rx[at..]) {
                at += used;
                match f {
                    Frame::ClientInfo { key, sealed } => {
                        let shared = SharedKey::node(&self.private, &key);
                        let json = shared.open(sealed).unwrap();
                        let info: ClientInfo = serde_json::from_slice(&json).unwrap();
                        assert_eq!(info.version, 2);
                        assert!(info.can_ack_pings);
                        let mut sealed = Vec::new();
                        shared.seal(br#"{"version":2}"#, &mut sealed);
                        let c = self.conns.get_mut(&id).unwrap();
                        c.key = Some(key);
                        Frame::ServerInfo { sealed: &sealed }
                            .emit(&mut c.out)
                            .unwrap();
                    }
                    Frame::SendPacket { dst, packet } => {
                        let src = self.conns[&id].key.unwrap();
                        let target = self.conns.values_mut().find(|c| c.key == Some(dst));
                        match target {
                            Some(t) => {
                                t.saw_src.insert(src);
                                Frame::RecvPacket { src, packet }.emit(&mut t.out).unwrap();
                            }
                            None => {
                                let c = self.conns.get_mut(&id).unwrap();
                                Frame::PeerGone {
                                    peer: dst,
                                    reason: PeerGoneReason::NotHere,
                                }
                                .emit(&mut c.out)
                                .unwrap();
                            }
                        }
                    }
                    Frame::Ping(d) => {
                        let c = self.conns.get_mut(&id).unwrap();
                        Frame::Pong(d).emit(&mut c.out).unwrap();
                    }
                    _ => {}
                }
            }
            rx.drain(..at);
            self.conns.get_mut(&id).unwrap().rx = rx;
        }

        fn disconnect(&mut self, id: u32) {
            let gone = self.conns.remove(&id).unwrap().key.unwrap();
            for c in self.conns.values_mut() {
                if c.saw_src.remove(&gone) {
                    Frame::PeerGone {
                        peer: gone,
                        reason: PeerGoneReason::Disconnected,
                    }
                    .emit(&mut c.out)
                    .unwrap();
                }
            }
        }

        fn take_out(&mut self, id: u32) -> Vec<u8> {
            std::mem::take(&mut self.conns.get_mut(&id).unwrap().out)
        }
    }

    /// Moves bytes both ways until nothing moves; delivers server bytes in small pieces
    /// to exercise reassembly.
    fn pump(server: &mut Server, clients: &mut [(u32, &mut Connection)], now: Instant) {
        loop {
            let mut moved = false;
            for (id, c) in clients.iter_mut() {
                let up = c.pending_transmit().to_vec();
                if !up.is_empty() {
                    c.advance_transmit(up.len());
                    server.input(*id, &up);
                    moved = true;
                }
                let down = server.take_out(*id);
                if !down.is_empty() {
                    for piece in down.chunks(7) {
                        c.handle_input(piece, now).unwrap();
                    }
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn events(c: &mut Connection) -> Vec<Event> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    #[test]
    fn two_clients_through_in_memory_server() {
        let t0 = Instant::now();
        let mut server = Server::new();
        let ka = NodePrivate::from_bytes([0xa1; 32]);
        let kb = NodePrivate::from_bytes([0xb2; 32]);
        let (pa, pb) = (ka.public(), kb.public());
        let mut a = Connection::new(ka, Config::default(), t0);
        let mut b = Connection::new(kb, Config::default(), t0);
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        assert!(matches!(
            a.send_packet(&pb, b"early", t0),
            Err(ConnError::NotReady)
        ));
        server.accept(1);
        server.accept(2);
        pump(&mut server, &mut [(1, &mut a), (2, &mut b)], t0);
        assert!(a.is_established() && b.is_established());
        let server_key = server.private.public();
        assert_eq!(
            events(&mut a),
            vec![Event::Connected {
                server_key,
                info: ServerInfo {
                    version: 2,
                    ..Default::default()
                }
            }]
        );
        events(&mut b);

        // A → B, then B → A.
        a.send_packet(&pb, b"hello b", t0).unwrap();
        a.note_preferred(true).unwrap();
        pump(&mut server, &mut [(1, &mut a), (2, &mut b)], t0);
        assert_eq!(
            events(&mut b),
            vec![Event::Packet {
                src: pa,
                data: b"hello b".to_vec()
            }]
        );
        b.send_packet(&pa, b"hello a", t0).unwrap();
        pump(&mut server, &mut [(1, &mut a), (2, &mut b)], t0);
        assert_eq!(
            events(&mut a),
            vec![Event::Packet {
                src: pb,
                data: b"hello a".to_vec()
            }]
        );

        // To an unknown key: PeerGone(NotHere).
        let stranger = NodePublic::from_bytes([0x77; 32]);
        a.send_packet(&stranger, b"?", t0).unwrap();
        pump(&mut server, &mut [(1, &mut a), (2, &mut b)], t0);
        assert_eq!(
            events(&mut a),
            vec![Event::PeerGone {
                peer: stranger,
                reason: PeerGoneReason::NotHere
            }]
        );

        // B leaves: A heard from B, so A is told.
        server.disconnect(2);
        pump(&mut server, &mut [(1, &mut a)], t0);
        assert_eq!(
            events(&mut a),
            vec![Event::PeerGone {
                peer: pb,
                reason: PeerGoneReason::Disconnected
            }]
        );
    }

    #[test]
    fn pings_keepalives_and_timeouts() {
        let t0 = Instant::now();
        let mut server = Server::new();
        let mut a = Connection::new(NodePrivate::from_bytes([1; 32]), Config::default(), t0);
        server.accept(1);
        pump(&mut server, &mut [(1, &mut a)], t0);
        events(&mut a);

        // The server pings; we pong.
        let mut ping = Vec::new();
        Frame::Ping(*b"srvping!").emit(&mut ping).unwrap();
        a.handle_input(&ping, t0).unwrap();
        let mut pong = Vec::new();
        Frame::Pong(*b"srvping!").emit(&mut pong).unwrap();
        assert_eq!(a.pending_transmit(), &pong[..]);
        a.advance_transmit(usize::MAX);

        // Silence: a keep-alive ping at 70 s, answered silently.
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(70)));
        let t1 = t0 + Duration::from_secs(70);
        a.handle_timeout(t0 + Duration::from_secs(69)).unwrap();
        assert!(a.pending_transmit().is_empty());
        a.handle_timeout(t1).unwrap();
        assert_eq!(a.pending_transmit()[0], 0x12);
        assert_eq!(a.poll_timeout(), Some(t0 + Duration::from_secs(120)));
        pump(&mut server, &mut [(1, &mut a)], t1);
        assert!(events(&mut a).is_empty(), "keep-alive pong is not reported");
        assert_eq!(a.poll_timeout(), Some(t1 + Duration::from_secs(70)));

        // A caller's ping is reported.
        a.ping(*b"mine1234").unwrap();
        pump(&mut server, &mut [(1, &mut a)], t1);
        assert_eq!(events(&mut a), vec![Event::Pong(*b"mine1234")]);

        // Server gone silent: keep-alive at +70 s, dead at +120 s.
        a.handle_timeout(t1 + Duration::from_secs(70)).unwrap();
        let dead = t1 + Duration::from_secs(120);
        assert_eq!(a.poll_timeout(), Some(dead));
        assert!(matches!(
            a.handle_timeout(dead),
            Err(ConnError::ReadTimeout(_))
        ));
        assert!(a.is_closed());
        assert!(matches!(
            a.send_packet(&NodePublic::default(), b"", t0),
            Err(ConnError::Closed)
        ));
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn handshake_failures() {
        let t0 = Instant::now();
        // No ServerInfo in time.
        let mut a = Connection::new(NodePrivate::from_bytes([1; 32]), Config::default(), t0);
        a.handle_timeout(t0 + Duration::from_secs(9)).unwrap();
        assert!(matches!(
            a.handle_timeout(t0 + Duration::from_secs(10)),
            Err(ConnError::HandshakeTimeout)
        ));

        // First frame is not ServerKey.
        let mut a = Connection::new(NodePrivate::from_bytes([1; 32]), Config::default(), t0);
        let mut b = Vec::new();
        Frame::KeepAlive.emit(&mut b).unwrap();
        assert!(matches!(
            a.handle_input(&b, t0),
            Err(ConnError::NoServerKey { frame_type: 6 })
        ));

        // Bad magic.
        let mut a = Connection::new(NodePrivate::from_bytes([1; 32]), Config::default(), t0);
        let mut b = vec![1, 0, 0, 0, 40];
        b.extend_from_slice(&[0; 40]);
        assert!(matches!(
            a.handle_input(&b, t0),
            Err(ConnError::Frame(FrameError::BadMagic))
        ));

        // ServerInfo sealed with another key.
        let server = NodePrivate::from_bytes([0x5e; 32]);
        let mut a = Connection::new(NodePrivate::from_bytes([1; 32]), Config::default(), t0);
        let mut b = Vec::new();
        Frame::ServerKey {
            key: server.public(),
        }
        .emit(&mut b)
        .unwrap();
        let wrong = SharedKey::from_dh([3; 32]);
        let mut sealed = Vec::new();
        wrong.seal(br#"{"version":2}"#, &mut sealed);
        Frame::ServerInfo { sealed: &sealed }.emit(&mut b).unwrap();
        assert!(matches!(
            a.handle_input(&b, t0),
            Err(ConnError::ServerInfoBox(_))
        ));

        // ServerInfo that is not JSON.
        let mut a = Connection::new(NodePrivate::from_bytes([1; 32]), Config::default(), t0);
        let mut b = Vec::new();
        Frame::ServerKey {
            key: server.public(),
        }
        .emit(&mut b)
        .unwrap();
        let right = SharedKey::node(&server, &NodePrivate::from_bytes([1; 32]).public());
        let mut sealed = Vec::new();
        right.seal(b"not json", &mut sealed);
        Frame::ServerInfo { sealed: &sealed }.emit(&mut b).unwrap();
        assert!(matches!(
            a.handle_input(&b, t0),
            Err(ConnError::ServerInfoJson(_))
        ));
        assert!(matches!(a.handle_input(b"x", t0), Err(ConnError::Closed)));

        // Oversized frame header after the handshake: fatal at once.
        let mut a = Connection::with_server_key(
            NodePrivate::from_bytes([1; 32]),
            server.public(),
            Config::default(),
            t0,
        );
        assert_eq!(
            a.pending_transmit()[0],
            0x02,
            "fast start sends ClientInfo first"
        );
        assert!(matches!(
            a.handle_input(&[5, 0x7f, 0, 0, 0], t0),
            Err(ConnError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn malformed_frames_after_greeting_are_skipped() {
        let t0 = Instant::now();
        let server = NodePrivate::from_bytes([0x5e; 32]);
        let mut a = Connection::with_server_key(
            NodePrivate::from_bytes([1; 32]),
            server.public(),
            Config::default(),
            t0,
        );
        // The server's ServerKey (skipped), a short RecvPacket, a short Ping, an unknown
        // type, then a good packet.
        let mut b = Vec::new();
        Frame::ServerKey {
            key: server.public(),
        }
        .emit(&mut b)
        .unwrap();
        b.extend_from_slice(&[5, 0, 0, 0, 3, 1, 2, 3]);
        b.extend_from_slice(&[0x12, 0, 0, 0, 2, 1, 2]);
        b.extend_from_slice(&[0x66, 0, 0, 0, 1, 9]);
        Frame::RecvPacket {
            src: NodePublic::from_bytes([4; 32]),
            packet: b"ok",
        }
        .emit(&mut b)
        .unwrap();
        a.handle_input(&b, t0).unwrap();
        assert_eq!(a.dropped_frames(), 2);
        assert_eq!(
            events(&mut a),
            vec![Event::Packet {
                src: NodePublic::from_bytes([4; 32]),
                data: b"ok".to_vec()
            }]
        );
    }

    #[test]
    fn garbage_input_never_panics() {
        let t0 = Instant::now();
        let mut x = 0x2545_f491u32;
        for round in 0..300 {
            let mut a = Connection::new(NodePrivate::from_bytes([1; 32]), Config::default(), t0);
            let mut b = Vec::new();
            if round % 2 == 0 {
                Frame::ServerKey {
                    key: NodePublic::from_bytes([2; 32]),
                }
                .emit(&mut b)
                .unwrap();
            }
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                b.push(if x % 3 == 0 { 0 } else { x as u8 });
            }
            for piece in b.chunks(5) {
                if a.handle_input(piece, t0).is_err() {
                    break;
                }
            }
            let _ = a.handle_timeout(t0 + Duration::from_secs(200));
        }
    }

    #[test]
    fn send_buffer_is_bounded() {
        let t0 = Instant::now();
        let mut a = Connection::with_server_key(
            NodePrivate::from_bytes([1; 32]),
            NodePublic::from_bytes([2; 32]),
            Config::default(),
            t0,
        );
        let pkt = vec![0u8; 60_000];
        let dst = NodePublic::from_bytes([3; 32]);
        let mut sent = 0;
        while a.send_packet(&dst, &pkt, t0).is_ok() {
            sent += 1;
        }
        assert!(matches!(
            a.send_packet(&dst, &pkt, t0),
            Err(ConnError::SendBufferFull)
        ));
        assert!(sent >= 8);
        a.advance_transmit(usize::MAX);
        a.send_packet(&dst, &pkt, t0).unwrap();
        assert!(matches!(
            a.send_packet(&dst, &vec![0; 70_000], t0),
            Err(ConnError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn server_rate_limit_drops_excess() {
        let t0 = Instant::now();
        let server = NodePrivate::from_bytes([0x5e; 32]);
        let me = NodePrivate::from_bytes([1; 32]);
        let shared = SharedKey::node(&server, &me.public());
        let mut a = Connection::with_server_key(me, server.public(), Config::default(), t0);
        let mut sealed = Vec::new();
        shared.seal(
            br#"{"version":2,"TokenBucketBytesPerSecond":1000,"TokenBucketBytesBurst":2000}"#,
            &mut sealed,
        );
        let mut b = Vec::new();
        Frame::ServerInfo { sealed: &sealed }.emit(&mut b).unwrap();
        a.handle_input(&b, t0).unwrap();
        assert_eq!(a.server_info().unwrap().token_bucket_bytes_burst, 2000);
        let dst = NodePublic::from_bytes([3; 32]);
        let pkt = [0u8; 963]; // 1000 bytes on the wire with header and key
        a.send_packet(&dst, &pkt, t0).unwrap();
        a.send_packet(&dst, &pkt, t0).unwrap();
        assert!(matches!(
            a.send_packet(&dst, &pkt, t0),
            Err(ConnError::RateLimited)
        ));
        let t1 = t0 + Duration::from_millis(999);
        assert!(matches!(
            a.send_packet(&dst, &pkt, t1),
            Err(ConnError::RateLimited)
        ));
        a.send_packet(&dst, &pkt, t0 + Duration::from_secs(1))
            .unwrap();
        // Time going backwards (a caller's clock mix-up) neither panics nor adds tokens.
        assert!(matches!(
            a.send_packet(&dst, &pkt, t0),
            Err(ConnError::RateLimited)
        ));
    }
}

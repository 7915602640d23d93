//! The engine's tokio driver: one task that moves packets between the TUN device, the
//! WireGuard peers ([`crate::wireguard::Peers`]), the UDP socket(s) and the DERP connections,
//! with [`crate::magicsock::Magicsock`] choosing each datagram's path.
//!
//! The device and the per-packet hooks (netstack intercept, packet filter) are the caller's,
//! behind the [`Device`] and [`Hooks`] traits: the daemon core plugs in `tstun-wrap`, tests
//! plug in what they need, and this crate imports neither. Both are generic parameters, so
//! no per-packet dynamic dispatch.
//!
//! Everything runs on one task: no locks on the packet path, and the sans-IO parts are used
//! as they are. DERP connections run on tasks of their own (one per region in use: the home
//! region always, others while peers homed there are talked to) and talk to the engine task
//! over bounded channels; a full channel drops the datagram, as a full socket buffer would.
//!
//! UDP: one socket per address family on the same port (IPv6 with `IPV6_V6ONLY`), marked with
//! the caller's bypass mark so an exit node's default route never captures them. A family the
//! host lacks is skipped with a warning.

use crate::derp::client::Client;
use crate::derp::dial::{DialOptions, connect_region};
use crate::derp::{Config as DerpConfig, Event as DerpEvent};
use crate::disco;
use crate::magicsock::{self, Magicsock, Path, PeerInfo};
use crate::netcheck::{self, History, Netcheck, PreviousHome};
use crate::udp;
use crate::wireguard::{self, Decapsulated, EngineConfig, PeerConfig, Peers};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tailcfg::key::{DiscoPrivate, DiscoPublic, NodePrivate, NodePublic};
use tailcfg::{DerpMap, DerpRegion, IpPrefix};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// The TUN device (or anything that carries IP packets), as the engine uses it.
pub trait Device: Send + Sync + 'static {
    /// Reads one IP packet into `buf`, waiting for it. Must be cancel-safe.
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>> + Send;
    /// Writes one IP packet.
    fn send(&self, packet: &[u8]) -> impl Future<Output = io::Result<usize>> + Send;
    /// Reads one IP packet into `buf` if one is ready now; `Ok(None)` when none is. The
    /// engine calls it after each wake-up to drain what is already waiting, so a burst costs
    /// one wait, not one per packet. The default polls [`Device::recv`] once (it is
    /// cancel-safe), which is right for any device whose `recv` reads at once when it can.
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        poll_now(self.recv(buf)).transpose()
    }
    /// How many bytes [`Device::send_batch`] wants free in front of each packet (room for a
    /// header the device writes itself). None by default.
    fn headroom(&self) -> usize {
        0
    }
    /// Writes a batch of IP packets, each in its own buffer after [`Device::headroom`] bytes.
    /// The engine collects what it decrypts in one wake-up and hands it over at once, so a
    /// device can merge segments of one flow (GRO) and write them together; it may change the
    /// buffers as it likes. A packet the device refuses must not stop the others. The default
    /// writes each with [`Device::send`] and returns the last error.
    fn send_batch(&self, packets: &mut [Vec<u8>]) -> impl Future<Output = io::Result<()>> + Send {
        async move {
            let skip = self.headroom();
            let mut err = None;
            for p in packets.iter() {
                if let Err(e) = self.send(p.get(skip..).unwrap_or_default()).await {
                    err = Some(e);
                }
            }
            err.map_or(Ok(()), Err)
        }
    }
}

/// Decrypted packets waiting to be written to the device together ([`Device::send_batch`]).
struct TunBatch {
    /// The batch: each buffer holds `headroom` bytes, then one packet.
    bufs: Vec<Vec<u8>>,
    /// Emptied buffers, reused.
    spare: Vec<Vec<u8>>,
    headroom: usize,
}

impl TunBatch {
    /// Capacity of each buffer: room for a device to merge a flow's segments into it (up to
    /// an IP packet's 65,535 bytes) without allocating. tun-rs's GRO table merges only into
    /// a buffer that already has the capacity ("we don't want to allocate"): with buffers
    /// sized to one packet it merged nothing, and every packet cost its own TUN write.
    /// Pages are touched only as far as a merge fills them.
    const CAPACITY: usize = 2 * 64 + wireguard::MAX_PACKET;

    fn new(headroom: usize) -> Self {
        TunBatch {
            bufs: Vec::with_capacity(BATCH),
            spare: Vec::new(),
            headroom,
        }
    }

    fn push(&mut self, packet: &[u8]) {
        let cap = Self::CAPACITY.max(2 * self.headroom + wireguard::MAX_PACKET);
        let mut b = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(cap));
        b.clear();
        b.resize(self.headroom, 0);
        b.extend_from_slice(packet);
        self.bufs.push(b);
    }

    fn full(&self) -> bool {
        self.bufs.len() >= BATCH
    }

    /// Takes the written buffers back for reuse (at most a batch of them).
    fn recycle(&mut self) {
        for b in self.bufs.drain(..) {
            if self.spare.len() < BATCH {
                self.spare.push(b);
            }
        }
    }
}

/// Polls `f` once, with a waker that does nothing: its output if it is ready at once. The
/// future is dropped otherwise, so it must be cancel-safe.
fn poll_now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// What to do with a packet read from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// Encrypt and send it to the peer that owns its destination.
    Send,
    /// Drop it (filtered).
    Drop,
    /// A hook took it (the netstack's service addresses); nothing more to do.
    Consumed,
}

/// The per-packet hooks: called on the engine task for every packet.
pub trait Hooks: Send + 'static {
    /// A packet read from the device, before encryption.
    fn outbound(&mut self, packet: &[u8], now: Instant) -> Outbound;
    /// A packet decrypted from `peer`, before it is written to the device; `false` drops it.
    fn inbound(&mut self, peer: &NodePublic, packet: &[u8], now: Instant) -> bool;
    /// A packet the hooks made in answer to one they saw (a TSMP pong), to send to a peer
    /// as if read from the device. Polled after each inbound packet.
    fn poll_reply(&mut self) -> Option<Vec<u8>> {
        None
    }
}

/// One peer of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Node key (the WireGuard public key).
    pub key: NodePublic,
    /// Disco key, if the peer has one.
    pub disco: Option<DiscoPublic>,
    /// Endpoints reported to control.
    pub endpoints: Vec<SocketAddr>,
    /// Home DERP region, 0 for none.
    pub home_derp: i32,
    /// Prefixes routed to this peer (already decided by the core: exit node, accepted routes).
    pub allowed_ips: Vec<IpPrefix>,
}

/// The engine's whole configuration, from the netmap.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's private key.
    pub private_key: NodePrivate,
    /// The peers.
    pub peers: Vec<PeerSpec>,
    /// The DERP map; `None` until control sent one.
    pub derp_map: Option<Arc<DerpMap>>,
}

/// How the engine starts.
#[derive(Debug, Clone)]
pub struct Options {
    /// UDP port for WireGuard and disco; 0 picks one.
    pub port: u16,
    /// The disco key of this run.
    pub disco: DiscoPrivate,
    /// How DERP servers are dialed.
    pub derp: DialOptions,
    /// `SO_MARK` for the engine's sockets (0: none).
    pub socket_mark: u32,
}

/// Kinds of endpoint, as `MapRequest.EndpointTypes` numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum EndpointKind {
    /// A local interface address.
    Local = 1,
    /// Learned from STUN.
    Stun = 2,
    /// From a port mapping.
    PortMapped = 3,
}

/// What the engine reports for the next MapRequest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalInfo {
    /// Our endpoints with their kinds.
    pub endpoints: Vec<(SocketAddr, EndpointKind)>,
    /// Our home DERP region (`NetInfo.PreferredDERP`), 0 until known.
    pub preferred_derp: i32,
}

/// A peer's data-plane state for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Node key.
    pub key: NodePublic,
    /// The direct address in use (trusted now), if any.
    pub direct: Option<SocketAddr>,
    /// The DERP region used otherwise.
    pub derp_region: i32,
    /// When the last handshake completed.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received (plaintext).
    pub rx_bytes: u64,
    /// Bytes sent (plaintext).
    pub tx_bytes: u64,
    /// Latency of the direct path.
    pub latency: Option<Duration>,
}

/// Counters of the packet path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets read from the device.
    pub tun_rx: u64,
    /// Packets written to the device.
    pub tun_tx: u64,
    /// Outbound packets dropped by the hooks.
    pub outbound_filtered: u64,
    /// Outbound packets with no peer for their destination.
    pub no_route: u64,
    /// Inbound packets dropped by the hooks.
    pub inbound_filtered: u64,
    /// Datagrams that WireGuard refused (garbage, forged, replayed, unknown peer).
    pub wireguard_rejected: u64,
    /// UDP datagrams received.
    pub udp_rx: u64,
    /// Receive calls that returned UDP datagrams: fewer than `udp_rx` when the kernel
    /// coalesces them (`UDP_GRO`).
    pub udp_rx_calls: u64,
    /// UDP datagrams sent.
    pub udp_tx: u64,
    /// DERP packets received.
    pub derp_rx: u64,
    /// DERP packets sent (queued to a connection).
    pub derp_tx: u64,
    /// DERP packets dropped (no connection, full queue).
    pub derp_drops: u64,
}

/// A snapshot of the engine for status.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Per peer.
    pub peers: Vec<PeerStatus>,
    /// Our endpoints and home region.
    pub local: LocalInfo,
    /// DERP regions with a live connection.
    pub derp_connected: Vec<i32>,
    /// Packet counters.
    pub counters: Counters,
    /// Disco counters.
    pub disco: magicsock::Stats,
    /// The last complete netcheck report.
    pub netcheck: Option<netcheck::Report>,
    /// The DERP map's regions: ID, code, name.
    pub regions: Vec<(i32, String, String)>,
}

/// The answer to a disco ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingResult {
    /// The path that answered first.
    pub path: Path,
    /// Round-trip time.
    pub latency: Duration,
    /// Our address as the peer saw it.
    pub observed: SocketAddr,
}

type HookFn<H> = Box<dyn FnOnce(&mut H) + Send>;

enum Command<H> {
    Config(Box<Config>),
    Status(oneshot::Sender<Status>),
    Ping(NodePublic, oneshot::Sender<Option<PingResult>>),
    Hooks(HookFn<H>),
    Inject(Vec<u8>),
    InjectInbound(Vec<u8>),
    PortMapped(Option<SocketAddr>),
}

/// The running engine. Dropping it stops it.
pub struct Handle<H> {
    commands: mpsc::Sender<Command<H>>,
    local: watch::Receiver<LocalInfo>,
    task: tokio::task::JoinHandle<()>,
    port: u16,
}

impl<H> std::fmt::Debug for Handle<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("port", &self.port).finish()
    }
}

impl<H> Drop for Handle<H> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The engine stopped.
#[derive(Debug, thiserror::Error)]
#[error("the engine has stopped")]
pub struct Stopped;

impl<H: Hooks> Handle<H> {
    /// The UDP port in use.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Applies a configuration (each netmap).
    pub async fn set_config(&self, config: Config) -> Result<(), Stopped> {
        self.command(Command::Config(Box::new(config))).await
    }

    /// A status snapshot.
    pub async fn status(&self) -> Result<Status, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Status(tx)).await?;
        rx.await.map_err(|_| Stopped)
    }

    /// A disco ping to `peer`; `None` when the peer is unknown or has no disco key. The caller
    /// bounds the wait.
    pub async fn ping(&self, peer: NodePublic) -> Result<Option<PingResult>, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Ping(peer, tx)).await?;
        rx.await.map_err(|_| Stopped)
    }

    /// Runs `f` on the hooks, on the engine task (to change filter rules without a lock).
    pub async fn with_hooks(&self, f: impl FnOnce(&mut H) + Send + 'static) -> Result<(), Stopped> {
        self.command(Command::Hooks(Box::new(f))).await
    }

    /// Sends a packet the node made itself (netstack replies) as if read from the device.
    pub async fn inject(&self, packet: Vec<u8>) -> Result<(), Stopped> {
        self.command(Command::Inject(packet)).await
    }

    /// Writes a packet the node made itself (netstack answers to this host) to the device,
    /// as if it had come from a peer, without the hooks.
    pub async fn inject_inbound(&self, packet: Vec<u8>) -> Result<(), Stopped> {
        self.command(Command::InjectInbound(packet)).await
    }

    /// The external endpoint a port mapping gives the WireGuard port (`None`: no mapping any
    /// more); reported to control first among our endpoints (type 3) and to peers in disco.
    pub async fn set_port_mapping(&self, external: Option<SocketAddr>) -> Result<(), Stopped> {
        self.command(Command::PortMapped(external)).await
    }

    /// Watches our endpoints and home region.
    pub fn local_info(&self) -> watch::Receiver<LocalInfo> {
        self.local.clone()
    }

    async fn command(&self, c: Command<H>) -> Result<(), Stopped> {
        self.commands.send(c).await.map_err(|_| Stopped)
    }
}

/// Starts the engine on the current tokio runtime with a first configuration.
pub async fn spawn<D: Device, H: Hooks>(
    opts: Options,
    config: Config,
    device: D,
    hooks: H,
) -> io::Result<Handle<H>> {
    let (udp4, udp6, port) = bind_udp(opts.port, opts.socket_mark)?;
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (local_tx, local_rx) = watch::channel(LocalInfo::default());
    let (derp_tx, derp_rx) = mpsc::channel(DERP_QUEUE);
    let node_key = config.private_key.public();
    let tun_out = TunBatch::new(device.headroom());
    let mut engine = Engine {
        tun_out,
        device,
        hooks,
        peers: Peers::new(EngineConfig {
            private_key: config.private_key.clone(),
            peers: Vec::new(),
        }),
        ms: Magicsock::new(opts.disco.clone(), node_key),
        udp4,
        udp6,
        port,
        opts,
        private: config.private_key.clone(),
        derp_map: None,
        derps: BTreeMap::new(),
        derp_in: derp_tx,
        home: 0,
        local: local_tx,
        counters: Counters::default(),
        ping_ids: HashMap::new(),
        ping_waiters: HashMap::new(),
        next_ping: 0,
        peer_keys: Vec::new(),
        out: vec![0u8; wireguard::BUFFER_LEN],
        train: Train::default(),
        gso: cfg!(target_os = "linux"),
        next_endpoint_scan: Instant::now(),
        next_disco_tick: Instant::now(),
        netcheck: None,
        next_netcheck: Instant::now(),
        history: History::new(),
        last_report: None,
        stun_endpoints: Vec::new(),
        port_mapped: None,
    };
    engine.apply(config);
    let task = tokio::spawn(engine.run(cmd_rx, derp_rx));
    Ok(Handle {
        commands: cmd_tx,
        local: local_rx,
        task,
        port,
    })
}

/// Rounds of [`Engine::drain`] per wake-up: up to this many packets from the device and as
/// many from each UDP socket before the engine looks at its other inputs again.
const BATCH: usize = 64;
/// Packets (device and UDP) handled per [`Engine::drain`] at most, so timers, commands and
/// DERP are looked at every few milliseconds even under a flood of `UDP_GRO` trains.
const DRAIN_MAX: usize = 16 * BATCH;
/// Packets waiting from all DERP connections to the engine task.
const DERP_QUEUE: usize = 1024;
/// Packets waiting per DERP connection to be sent.
const DERP_SEND_QUEUE: usize = 512;
/// Local interface addresses are read again this often (they change when links do).
const ENDPOINT_SCAN_INTERVAL: Duration = Duration::from_secs(30);
/// How often netcheck runs again (Go re-STUNs every 20 to 26 s while active, and runs a full
/// report every 5 min; one small report every 30 s does both jobs here).
const NETCHECK_INTERVAL: Duration = Duration::from_secs(30);
/// How often magicsock's timers (heartbeats, discovery, expiry) run.
const DISCO_TICK: Duration = Duration::from_millis(500);
/// Reconnect delays of a DERP connection.
const DERP_BACKOFF_MIN: Duration = Duration::from_millis(500);
const DERP_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Turns UDP receive offload off (`UDP_GRO`, see [`crate::udp`]) when set to a true value
/// (`1`, `t`, `true`, as Go reads booleans): Go tailscaled's knob of the same name.
pub const DISABLE_UDP_GRO_ENV: &str = "TS_DEBUG_DISABLE_UDP_GRO";

fn env_bool(name: &str) -> bool {
    let v = std::env::var(name).unwrap_or_default();
    matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True")
}

fn bind_udp(port: u16, mark: u32) -> io::Result<(Option<UdpSocket>, Option<UdpSocket>, u16)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let gro = !env_bool(DISABLE_UDP_GRO_ENV);
    let make = |domain: Domain, addr: SocketAddr| -> io::Result<UdpSocket> {
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if domain == Domain::IPV6 {
            s.set_only_v6(true)?;
        }
        if mark != 0 {
            s.set_mark(mark)?;
        }
        s.set_nonblocking(true)?;
        // Bursts from many peers: a bigger receive buffer where the host allows it.
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        if gro {
            // Trains of datagrams per receive (see `crate::udp`); without it, one each.
            if let Err(e) = udp::sys::set_udp_gro(&s, true) {
                tracing::info!("no UDP receive offload ({e}): one datagram per receive");
            }
        }
        s.bind(&addr.into())?;
        UdpSocket::from_std(s.into())
    };
    let v4 = make(
        Domain::IPV4,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
    );
    let v4 = match v4 {
        Ok(s) => s,
        Err(e) => return Err(io::Error::new(e.kind(), format!("UDP port {port}: {e}"))),
    };
    let port = v4.local_addr()?.port();
    let v6 = match make(
        Domain::IPV6,
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
    ) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("no IPv6 UDP socket on port {port} ({e}): IPv4 only");
            None
        }
    };
    Ok((Some(v4), v6, port))
}

/// WireGuard datagrams for one address, sent with one `sendmsg` and UDP segmentation offload
/// (`UDP_SEGMENT`, Linux 4.18): the kernel cuts the buffer into datagrams of `seg` bytes
/// (the last may be shorter), so a burst of packets from the device costs one system call
/// and one trip down the stack instead of one per packet. Go tailscaled does the same.
#[derive(Default)]
struct Train {
    dst: Option<SocketAddr>,
    /// Size of every datagram but the last.
    seg: usize,
    count: usize,
    /// A shorter datagram ended it: nothing may follow.
    closed: bool,
    buf: Vec<u8>,
}

/// Datagrams per train (the kernel's limit is 64 on older kernels, 128 on newer).
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes per train: below an IP datagram's 65,535 with its headers.
const GSO_MAX_BYTES: usize = 65_000;

/// The `SOL_UDP`/`UDP_SEGMENT` control message's size: a `cmsghdr` (a `size_t` and two
/// `int`s) and a `u16`, padded to `size_t` as `CMSG_SPACE` does.
const GSO_CMSG_LEN: usize = 2 * std::mem::size_of::<usize>() + 8;

/// The control message that asks the kernel to cut a datagram into `seg`-byte ones. Built
/// as bytes, in the layout of `CMSG_LEN`/`CMSG_SPACE`, so no unsafe code is needed.
fn gso_cmsg(seg: u16) -> [u8; GSO_CMSG_LEN] {
    const W: usize = std::mem::size_of::<usize>();
    const SOL_UDP: i32 = 17;
    const UDP_SEGMENT: i32 = 103;
    let mut c = [0u8; GSO_CMSG_LEN];
    let fields = [
        (0, (W + 8 + 2).to_ne_bytes().to_vec()),
        (W, SOL_UDP.to_ne_bytes().to_vec()),
        (W + 4, UDP_SEGMENT.to_ne_bytes().to_vec()),
        (W + 8, seg.to_ne_bytes().to_vec()),
    ];
    for (at, bytes) in fields {
        if let Some(dst) = c.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(&bytes);
        }
    }
    c
}

/// Errors that mean the kernel or the route cannot do UDP segmentation offload.
fn gso_unsupported(e: &io::Error) -> bool {
    // EIO (no checksum offload on the way out), EINVAL, ENOPROTOOPT, EOPNOTSUPP.
    matches!(e.raw_os_error(), Some(5 | 22 | 92 | 95))
}

/// A packet from a DERP connection.
struct DerpIn {
    region: i32,
    src: NodePublic,
    data: Vec<u8>,
}

struct DerpConn {
    send: mpsc::Sender<(NodePublic, Vec<u8>)>,
    preferred: watch::Sender<bool>,
    connected: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DerpConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Engine<D, H> {
    device: D,
    hooks: H,
    peers: Peers<()>,
    ms: Magicsock,
    udp4: Option<UdpSocket>,
    udp6: Option<UdpSocket>,
    port: u16,
    opts: Options,
    private: NodePrivate,
    derp_map: Option<Arc<DerpMap>>,
    derps: BTreeMap<i32, DerpConn>,
    derp_in: mpsc::Sender<DerpIn>,
    home: i32,
    local: watch::Sender<LocalInfo>,
    counters: Counters,
    /// Transaction IDs of user pings, each naming its waiter.
    ping_ids: HashMap<[u8; disco::TX_ID_LEN], u64>,
    ping_waiters: HashMap<u64, oneshot::Sender<Option<PingResult>>>,
    next_ping: u64,
    /// The configured peers' keys, in configuration order.
    peer_keys: Vec<NodePublic>,
    out: Vec<u8>,
    /// Decrypted packets on their way to the device.
    tun_out: TunBatch,
    /// Datagrams to one address waiting to leave in one `sendmsg` (see [`Train`]).
    train: Train,
    /// Whether the kernel takes UDP segmentation offload; off after the first refusal.
    gso: bool,
    next_endpoint_scan: Instant,
    next_disco_tick: Instant,
    /// The netcheck in progress, if any.
    netcheck: Option<Netcheck>,
    next_netcheck: Instant,
    history: History,
    last_report: Option<netcheck::Report>,
    /// Our addresses as STUN servers saw them.
    stun_endpoints: Vec<SocketAddr>,
    /// The external endpoint of the port mapping, if the gateway gave one.
    port_mapped: Option<SocketAddr>,
}

enum Wake<H> {
    Tun(io::Result<usize>),
    Udp4(io::Result<udp::Recv>),
    Udp6(io::Result<udp::Recv>),
    Derp(Option<DerpIn>),
    Command(Option<Command<H>>),
    Timer,
}

/// A UDP socket's receive buffers: one datagram, or a train of them with `UDP_GRO` (up to
/// 64 KiB), and the control messages that say how to cut it.
struct UdpRx {
    buf: Vec<u8>,
    control: [u8; udp::CONTROL_LEN],
}

impl UdpRx {
    fn new() -> Self {
        UdpRx {
            buf: vec![0u8; wireguard::BUFFER_LEN],
            control: [0u8; udp::CONTROL_LEN],
        }
    }

    /// Waits for the next receive on `s` (never, without a socket). Cancel-safe.
    async fn recv(&mut self, s: Option<&UdpSocket>) -> io::Result<udp::Recv> {
        match s {
            Some(s) => {
                s.async_io(tokio::io::Interest::READABLE, || {
                    udp::sys::recv(s, &mut self.buf, &mut self.control)
                })
                .await
            }
            None => std::future::pending().await,
        }
    }

    /// The next receive on `s` if one is waiting: `Ok(None)` when none is (or no socket).
    fn try_recv(&mut self, s: Option<&UdpSocket>) -> io::Result<Option<udp::Recv>> {
        let Some(s) = s else {
            return Ok(None);
        };
        match s.try_io(tokio::io::Interest::READABLE, || {
            udp::sys::recv(s, &mut self.buf, &mut self.control)
        }) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl<D: Device, H: Hooks> Engine<D, H> {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command<H>>,
        mut derp_rx: mpsc::Receiver<DerpIn>,
    ) {
        let mut tun_buf = vec![0u8; wireguard::MAX_PACKET];
        let mut rx4 = UdpRx::new();
        let mut rx6 = UdpRx::new();
        // One timer for the whole run, moved only when the deadline does: a new `Sleep` per
        // wake-up would register with the timer wheel and leave it again for every packet.
        let sleep = tokio::time::sleep_until(Instant::now().into());
        tokio::pin!(sleep);
        loop {
            let now = Instant::now();
            let deadline = [
                self.peers.poll_timeout(),
                Some(self.next_disco_tick),
                Some(self.next_endpoint_scan),
                match &self.netcheck {
                    Some(n) => n.poll_timeout(),
                    None => self.derp_map.as_ref().map(|_| self.next_netcheck),
                },
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(1));
            let deadline = tokio::time::Instant::from(deadline);
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            let wake = tokio::select! {
                r = self.device.recv(&mut tun_buf) => Wake::Tun(r),
                r = rx4.recv(self.udp4.as_ref()) => Wake::Udp4(r),
                r = rx6.recv(self.udp6.as_ref()) => Wake::Udp6(r),
                d = derp_rx.recv() => Wake::Derp(d),
                c = commands.recv() => Wake::Command(c),
                _ = &mut sleep => Wake::Timer,
            };
            // Device reads owed to the datagrams of this wake-up (see `drain`).
            let mut credit = 0;
            match wake {
                Wake::Tun(Ok(n)) => {
                    self.counters.tun_rx += 1;
                    self.outbound(tun_buf.get(..n).unwrap_or_default()).await;
                }
                Wake::Tun(Err(e)) => {
                    tracing::warn!("TUN read: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Wake::Udp4(Ok(r)) => credit = self.udp_received(r, &rx4.buf).await,
                Wake::Udp6(Ok(r)) => credit = self.udp_received(r, &rx6.buf).await,
                Wake::Udp4(Err(e)) | Wake::Udp6(Err(e)) => {
                    // ICMP errors from earlier sends surface here (ECONNREFUSED); not fatal.
                    tracing::debug!("UDP receive: {e}");
                }
                Wake::Derp(Some(d)) => {
                    self.counters.derp_rx += 1;
                    self.derp_packet(d).await;
                }
                Wake::Derp(None) => {}
                Wake::Command(None) => return,
                Wake::Command(Some(c)) => self.command(c).await,
                Wake::Timer => {}
            }
            self.drain(&mut tun_buf, &mut rx4, &mut rx6, credit).await;
            self.flush_tun().await;
            self.timers().await;
            self.flush_disco().await;
            self.flush_train().await;
        }
    }

    /// Handles what is already waiting on the device and the UDP sockets, in rounds, without
    /// going back to `select!` in between: per round one receive from each UDP socket (one
    /// datagram, or a train of them with `UDP_GRO`), then as many packets from the device as
    /// that receive brought datagrams (at least one). Packets from the device keep pace with
    /// the datagrams that way: receiving a TCP flow, its ACKs leave as fast as its segments
    /// come in, where one device read per train let the TUN queue overflow with ACKs. Ends
    /// when all are empty, after [`BATCH`] rounds, or after [`DRAIN_MAX`] packets. `credit`:
    /// datagrams the wake-up itself brought, owed device reads in the first round.
    async fn drain(&mut self, tun_buf: &mut [u8], rx4: &mut UdpRx, rx6: &mut UdpRx, credit: usize) {
        let (mut tun, mut udp4, mut udp6) = (true, self.udp4.is_some(), self.udp6.is_some());
        let mut handled = 0usize;
        let mut credit = credit;
        for _ in 0..BATCH {
            let mut datagrams = std::mem::take(&mut credit);
            if udp4 {
                match rx4.try_recv(self.udp4.as_ref()) {
                    Ok(Some(r)) => datagrams += self.udp_received(r, &rx4.buf).await,
                    Ok(None) => udp4 = false,
                    Err(e) => tracing::debug!("UDP receive: {e}"),
                }
            }
            if udp6 {
                match rx6.try_recv(self.udp6.as_ref()) {
                    Ok(Some(r)) => datagrams += self.udp_received(r, &rx6.buf).await,
                    Ok(None) => udp6 = false,
                    Err(e) => tracing::debug!("UDP receive: {e}"),
                }
            }
            handled += datagrams;
            for _ in 0..datagrams.max(1) {
                if !tun {
                    break;
                }
                match self.device.try_recv(tun_buf) {
                    Ok(Some(n)) => {
                        self.counters.tun_rx += 1;
                        handled += 1;
                        self.outbound(tun_buf.get(..n).unwrap_or_default()).await;
                    }
                    Ok(None) => tun = false,
                    Err(e) => {
                        // The waiting `recv` reports it again and backs off.
                        tracing::debug!("TUN read: {e}");
                        tun = false;
                    }
                }
            }
            if !(tun || udp4 || udp6) || handled >= DRAIN_MAX {
                return;
            }
        }
    }

    async fn command(&mut self, c: Command<H>) {
        match c {
            Command::Config(cfg) => self.apply(*cfg),
            Command::Status(tx) => {
                let _ = tx.send(self.status());
            }
            Command::Ping(peer, tx) => match self.ms.ping(&peer, Instant::now()) {
                Some(ids) if !ids.is_empty() => {
                    let waiters = &self.ping_waiters;
                    self.ping_ids
                        .retain(|_, w| waiters.get(w).is_some_and(|s| !s.is_closed()));
                    self.ping_waiters.retain(|_, s| !s.is_closed());
                    let id = self.next_ping;
                    self.next_ping += 1;
                    self.ping_waiters.insert(id, tx);
                    for t in ids {
                        self.ping_ids.insert(t, id);
                    }
                }
                _ => {
                    let _ = tx.send(None);
                }
            },
            Command::Hooks(f) => f(&mut self.hooks),
            Command::Inject(p) => self.send_to_peer(&p).await,
            Command::InjectInbound(p) => {
                if !p.is_empty() {
                    self.queue_for_tun(&p).await;
                }
            }
            Command::PortMapped(a) => {
                if self.port_mapped != a {
                    self.port_mapped = a;
                    self.publish_local();
                }
            }
        }
    }

    fn apply(&mut self, cfg: Config) {
        if cfg.private_key != self.private {
            self.private = cfg.private_key.clone();
            self.ms.set_node_key(cfg.private_key.public());
            // DERP connections carry the node key: reconnect them all.
            self.derps.clear();
        }
        self.peer_keys = cfg.peers.iter().map(|p| p.key).collect();
        let wg_peers = cfg
            .peers
            .iter()
            .map(|p| PeerConfig {
                key: p.key,
                allowed_ips: p.allowed_ips.clone(),
                endpoint: Some(()),
            })
            .collect();
        self.peers.set_config(EngineConfig {
            private_key: cfg.private_key.clone(),
            peers: wg_peers,
        });
        self.ms.set_peers(
            cfg.peers
                .into_iter()
                .map(|p| PeerInfo {
                    key: p.key,
                    disco: p.disco,
                    endpoints: p.endpoints,
                    home_derp: p.home_derp,
                })
                .collect(),
        );
        if cfg.derp_map != self.derp_map {
            self.derp_map = cfg.derp_map;
            // Regions no longer in the map are closed.
            let map = self.derp_map.clone();
            self.derps
                .retain(|r, _| map.as_ref().is_some_and(|m| m.region(*r).is_some()));
            // Until netcheck has measured, the deterministic default; a measurement follows
            // at once.
            if self.home == 0 || map.as_ref().is_none_or(|m| m.region(self.home).is_none()) {
                let home = self.derp_map.as_deref().map(default_home).unwrap_or(0);
                self.set_home(home);
            }
            self.netcheck = None;
            self.next_netcheck = Instant::now();
        }
    }

    fn set_home(&mut self, region: i32) {
        if region == self.home {
            return;
        }
        if let Some(old) = self.derps.get(&self.home) {
            let _ = old.preferred.send(false);
        }
        self.home = region;
        if region != 0 {
            self.ensure_derp(region);
            if let Some(c) = self.derps.get(&region) {
                let _ = c.preferred.send(true);
            }
        }
        self.publish_local();
    }

    fn publish_local(&mut self) {
        let mut endpoints: Vec<(SocketAddr, EndpointKind)> = local_addresses()
            .into_iter()
            .filter(|ip| match ip {
                IpAddr::V4(_) => self.udp4.is_some(),
                IpAddr::V6(_) => self.udp6.is_some(),
            })
            .map(|ip| (SocketAddr::new(ip, self.port), EndpointKind::Local))
            .collect();
        endpoints.sort();
        endpoints.dedup();
        // Go's order: STUN-learned before local ones.
        let stun: Vec<(SocketAddr, EndpointKind)> = self
            .stun_endpoints
            .iter()
            .filter(|a| !endpoints.iter().any(|(e, _)| e == *a))
            .map(|a| (*a, EndpointKind::Stun))
            .collect();
        endpoints.splice(0..0, stun);
        // Go's order: the port mapping first of all.
        if let Some(a) = self.port_mapped {
            endpoints.retain(|(e, _)| *e != a);
            endpoints.insert(0, (a, EndpointKind::PortMapped));
        }
        self.ms
            .set_my_endpoints(endpoints.iter().map(|(a, _)| *a).collect());
        let info = LocalInfo {
            endpoints,
            preferred_derp: self.home,
        };
        self.local.send_if_modified(|cur| {
            if *cur == info {
                false
            } else {
                *cur = info;
                true
            }
        });
    }

    /// Starts the connection to `region` if there is none.
    fn ensure_derp(&mut self, region: i32) {
        if self.derps.contains_key(&region) {
            return;
        }
        let Some(r) = self
            .derp_map
            .as_deref()
            .and_then(|m| m.region(region))
            .cloned()
        else {
            return;
        };
        let (send_tx, send_rx) = mpsc::channel(DERP_SEND_QUEUE);
        let (pref_tx, pref_rx) = watch::channel(region == self.home);
        let (conn_tx, conn_rx) = watch::channel(false);
        let task = tokio::spawn(derp_task(
            r,
            self.private.clone(),
            self.opts.derp.clone(),
            send_rx,
            self.derp_in.clone(),
            pref_rx,
            conn_tx,
        ));
        self.derps.insert(
            region,
            DerpConn {
                send: send_tx,
                preferred: pref_tx,
                connected: conn_rx,
                task,
            },
        );
    }

    fn derp_send(&mut self, region: i32, peer: NodePublic, data: Vec<u8>) {
        self.ensure_derp(region);
        match self.derps.get(&region) {
            Some(c) if c.send.try_send((peer, data)).is_ok() => self.counters.derp_tx += 1,
            _ => self.counters.derp_drops += 1,
        }
    }

    async fn udp_send(&mut self, dst: SocketAddr, data: &[u8]) {
        let sock = if dst.is_ipv4() {
            &self.udp4
        } else {
            &self.udp6
        };
        let Some(s) = sock else {
            return;
        };
        match s.try_send_to(data, dst) {
            Ok(_) => self.counters.udp_tx += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if s.send_to(data, dst).await.is_ok() {
                    self.counters.udp_tx += 1;
                }
            }
            Err(e) => tracing::debug!("UDP send to {dst}: {e}"),
        }
    }

    /// Adds a datagram to the train to `dst`, sending the train first if this one cannot join
    /// it. The caller flushes with [`Engine::flush_train`] before it waits for anything.
    async fn udp_queue(&mut self, dst: SocketAddr, data: &[u8]) {
        if !self.gso {
            return self.udp_send(dst, data).await;
        }
        let t = &self.train;
        if t.count > 0
            && (t.dst != Some(dst)
                || t.closed
                || data.len() > t.seg
                || t.count >= GSO_MAX_SEGMENTS
                || t.buf.len() + data.len() > GSO_MAX_BYTES)
        {
            self.flush_train().await;
        }
        let t = &mut self.train;
        if t.count == 0 {
            t.dst = Some(dst);
            t.seg = data.len();
        }
        t.closed = data.len() < t.seg;
        t.buf.extend_from_slice(data);
        t.count += 1;
    }

    /// Sends the waiting train: one datagram as it is, more with `UDP_SEGMENT`. Where the
    /// kernel refuses segmentation, it is turned off for good and the train goes out one
    /// datagram at a time.
    async fn flush_train(&mut self) {
        let mut t = std::mem::take(&mut self.train);
        match (t.dst, t.count) {
            (None, _) | (_, 0) => {}
            (Some(dst), 1) => self.udp_send(dst, &t.buf).await,
            (Some(dst), n) => match send_segmented(
                if dst.is_ipv4() {
                    &self.udp4
                } else {
                    &self.udp6
                },
                dst,
                t.seg,
                &t.buf,
            )
            .await
            {
                Ok(()) => self.counters.udp_tx += n as u64,
                Err(e) if gso_unsupported(&e) => {
                    tracing::info!("UDP segmentation offload refused ({e}): sending one by one");
                    self.gso = false;
                    for d in t.buf.chunks(t.seg.max(1)) {
                        self.udp_send(dst, d).await;
                    }
                }
                Err(e) => tracing::debug!("UDP send of {n} datagrams to {dst}: {e}"),
            },
        }
        t.dst = None;
        t.count = 0;
        t.closed = false;
        t.buf.clear();
        self.train = t;
    }
}

/// One `sendmsg` of `buf` to `dst` that the kernel cuts into `seg`-byte datagrams.
async fn send_segmented(
    s: &Option<UdpSocket>,
    dst: SocketAddr,
    seg: usize,
    buf: &[u8],
) -> io::Result<()> {
    let Some(s) = s else {
        return Ok(());
    };
    // `seg` is at most GSO_MAX_BYTES; EINVAL otherwise, as the kernel would say.
    let seg = u16::try_from(seg).map_err(|_| io::Error::from_raw_os_error(22))?;
    let addr = socket2::SockAddr::from(dst);
    let cmsg = gso_cmsg(seg);
    let iov = [io::IoSlice::new(buf)];
    s.async_io(tokio::io::Interest::WRITABLE, || {
        let msg = socket2::MsgHdr::new()
            .with_addr(&addr)
            .with_buffers(&iov)
            .with_control(&cmsg);
        socket2::SockRef::from(s).sendmsg(&msg, 0)
    })
    .await
    .map(|_| ())
}

impl<D: Device, H: Hooks> Engine<D, H> {
    /// Sends a WireGuard datagram for `peer` the way magicsock says.
    async fn route(&mut self, peer: NodePublic, data: &[u8]) {
        let Some(paths) = self.ms.send_paths(&peer, Instant::now()) else {
            return;
        };
        if let Some(a) = paths.udp {
            self.udp_queue(a, data).await;
        }
        if let Some(r) = paths.derp {
            self.derp_send(r, peer, data.to_vec());
        }
    }

    async fn outbound(&mut self, pkt: &[u8]) {
        match self.hooks.outbound(pkt, Instant::now()) {
            Outbound::Send => self.send_to_peer(pkt).await,
            Outbound::Drop => self.counters.outbound_filtered += 1,
            Outbound::Consumed => {}
        }
    }

    async fn send_to_peer(&mut self, pkt: &[u8]) {
        let mut out = std::mem::take(&mut self.out);
        match self.peers.encapsulate(pkt, &mut out) {
            Ok(Some(t)) => self.route(t.peer, t.datagram).await,
            Ok(None) => {}
            Err(wireguard::Error::NoRoute(_)) => self.counters.no_route += 1,
            Err(e) => tracing::debug!("encapsulate: {e}"),
        }
        self.out = out;
    }

    /// Queues a packet for the device; the batch is written when full and at the end of
    /// each wake-up ([`Engine::flush_tun`]).
    async fn queue_for_tun(&mut self, packet: &[u8]) {
        self.tun_out.push(packet);
        if self.tun_out.full() {
            self.flush_tun().await;
        }
    }

    /// Writes the queued packets to the device in one batch.
    async fn flush_tun(&mut self) {
        let n = self.tun_out.bufs.len() as u64;
        if n == 0 {
            return;
        }
        match self.device.send_batch(&mut self.tun_out.bufs).await {
            Ok(()) => self.counters.tun_tx += n,
            Err(e) => tracing::debug!("TUN write: {e}"),
        }
        self.tun_out.recycle();
    }

    /// Handles one receive from a UDP socket: one datagram, or a train that the kernel
    /// coalesced (`UDP_GRO`), cut into its datagrams.
    /// Returns how many datagrams it held.
    async fn udp_received(&mut self, r: udp::Recv, buf: &[u8]) -> usize {
        let src = SocketAddr::new(r.src.ip().to_canonical(), r.src.port());
        let data = buf.get(..r.len).unwrap_or_default();
        self.counters.udp_rx_calls += 1;
        let mut n = 0;
        for d in udp::segments(data, r.segment) {
            n += 1;
            self.counters.udp_rx += 1;
            self.udp_in(src, d).await;
        }
        n
    }

    async fn udp_in(&mut self, src: SocketAddr, data: &[u8]) {
        let now = Instant::now();
        match disco::classify(data) {
            disco::PacketKind::Stun => {
                let ours = self
                    .netcheck
                    .as_mut()
                    .is_some_and(|n| n.handle_stun(src, data, now));
                if !ours {
                    tracing::trace!("stray STUN from {src}");
                }
            }
            disco::PacketKind::Disco { geneve: false } => {
                self.ms.handle_udp(src, data, now);
            }
            disco::PacketKind::WireGuard { geneve: false } => {
                self.wireguard_in(None, Path::Udp(src), data).await;
            }
            _ => self.counters.wireguard_rejected += 1,
        }
    }

    async fn derp_packet(&mut self, d: DerpIn) {
        if disco::Packet::looks_like(&d.data) {
            self.ms
                .handle_derp(d.region, d.src, &d.data, Instant::now());
            return;
        }
        self.ms.note_derp_recv(&d.src, d.region);
        self.wireguard_in(Some(d.src), Path::Derp(d.region), &d.data)
            .await;
    }

    async fn wireguard_in(&mut self, hint: Option<NodePublic>, from: Path, data: &[u8]) {
        let mut out = std::mem::take(&mut self.out);
        let now = Instant::now();
        let mut reply_peer = None;
        let mut answer = None;
        match self.peers.decapsulate(hint, (), data, &mut out) {
            // An empty packet is a keepalive: nothing to write.
            Ok(Decapsulated::Packet { packet: [], .. }) => {}
            Ok(Decapsulated::Packet { peer, packet }) => {
                if self.hooks.inbound(&peer, packet, now) {
                    self.queue_for_tun(packet).await;
                } else {
                    self.counters.inbound_filtered += 1;
                }
                answer = self.hooks.poll_reply();
            }
            Ok(Decapsulated::Transmit(t)) => {
                // Answer the way it came (WireGuard roaming).
                match from {
                    Path::Udp(a) => self.udp_send(a, t.datagram).await,
                    Path::Derp(r) => self.derp_send(r, t.peer, t.datagram.to_vec()),
                }
                reply_peer = Some(t.peer);
            }
            Ok(Decapsulated::Done) => {}
            Err(e) => {
                self.counters.wireguard_rejected += 1;
                tracing::debug!("WireGuard from {from}: {e}");
            }
        }
        // Then release what waited for the handshake.
        if let Some(peer) = reply_peer {
            while let Ok(Some(t)) = self.peers.flush_queued(&peer, &mut out) {
                self.route(peer, t.datagram).await;
            }
        }
        self.out = out;
        if let Some(a) = answer {
            self.send_to_peer(&a).await;
        }
    }

    async fn timers(&mut self) {
        let now = Instant::now();
        let mut out = std::mem::take(&mut self.out);
        let mut emitted: Vec<(NodePublic, Vec<u8>)> = Vec::new();
        let _ = self.peers.handle_timeout(now, &mut out, |t| {
            emitted.push((t.peer, t.datagram.to_vec()))
        });
        self.out = out;
        for (peer, d) in emitted {
            self.route(peer, &d).await;
        }
        self.drive_netcheck(now).await;
        // Disco timers walk every peer: on a fixed tick, not per packet.
        if now >= self.next_disco_tick {
            self.next_disco_tick = now + DISCO_TICK;
            self.ms.handle_timeout(now);
        }
        if now >= self.next_endpoint_scan {
            self.next_endpoint_scan = now + ENDPOINT_SCAN_INTERVAL;
            self.publish_local();
            // Drop DERP connections to regions no peer is homed in (except home).
            let used: Vec<i32> = self
                .peers_regions()
                .into_iter()
                .chain(std::iter::once(self.home))
                .collect();
            self.derps.retain(|r, _| used.contains(r));
        }
    }

    /// Starts a netcheck when one is due, sends its probes from our own sockets (so the
    /// mapped addresses are the ones peers must use), and on completion takes the home region
    /// and our STUN endpoints from it.
    async fn drive_netcheck(&mut self, now: Instant) {
        if self.netcheck.is_none() && now >= self.next_netcheck {
            let Some(map) = self.derp_map.clone() else {
                return;
            };
            self.netcheck = Some(Netcheck::new(&map, now));
        }
        let Some(mut nc) = self.netcheck.take() else {
            return;
        };
        nc.handle_timeout(now);
        while let Some(p) = nc.poll_transmit(now) {
            self.udp_send(p.dst, &p.payload).await;
        }
        if !nc.is_done() {
            self.netcheck = Some(nc);
            return;
        }
        self.next_netcheck = now + NETCHECK_INTERVAL;
        let report = nc.report();
        let Some(map) = self.derp_map.clone() else {
            return;
        };
        let home_alive = self
            .derps
            .get(&self.home)
            .is_some_and(|c| *c.connected.borrow());
        let previous = (self.home != 0)
            .then(|| PreviousHome::new(self.home, home_alive.then_some(now), nc.started(), now));
        let home = self.history.update(now, &report, &map, previous);
        tracing::debug!(
            "netcheck: udp {} v4 {:?} v6 {:?}, {} regions measured, home {home}",
            report.udp(),
            report.global_v4,
            report.global_v6,
            report.region_latency.len()
        );
        self.stun_endpoints = report
            .global_v4
            .into_iter()
            .chain(report.global_v6)
            .collect();
        self.last_report = Some(report);
        if home != 0 {
            self.set_home(home);
        }
        self.publish_local();
    }

    fn peers_regions(&self) -> Vec<i32> {
        let now = Instant::now();
        let mut v = Vec::new();
        for key in &self.peer_keys {
            if let Some(s) = self.ms.path_status(key, now)
                && s.derp_region != 0
            {
                v.push(s.derp_region);
            }
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    async fn flush_disco(&mut self) {
        while let Some(t) = self.ms.poll_transmit() {
            match t.path {
                Path::Udp(a) => self.udp_send(a, &t.data).await,
                Path::Derp(r) => self.derp_send(r, t.peer, t.data),
            }
        }
        while let Some(ev) = self.ms.poll_event() {
            match ev {
                magicsock::Event::Pong {
                    path,
                    latency,
                    observed,
                    tx_id,
                    ..
                } => {
                    if let Some(tx) = self
                        .ping_ids
                        .remove(&tx_id)
                        .and_then(|id| self.ping_waiters.remove(&id))
                    {
                        let _ = tx.send(Some(PingResult {
                            path,
                            latency,
                            observed,
                        }));
                    }
                }
                magicsock::Event::PathChanged { peer, udp } => match udp {
                    Some(a) => tracing::info!("peer {peer}: direct path {a}"),
                    None => tracing::info!("peer {peer}: direct path lost, using DERP"),
                },
            }
        }
    }

    fn status(&self) -> Status {
        let now = Instant::now();
        let wall = SystemTime::now();
        let peers = self
            .peer_keys
            .iter()
            .copied()
            .map(|key| {
                let st = self.peers.stats(&key);
                let path = self.ms.path_status(&key, now).unwrap_or_default();
                PeerStatus {
                    key,
                    direct: path.udp.filter(|_| path.trusted),
                    derp_region: path.derp_region,
                    last_handshake: st
                        .and_then(|s| s.since_handshake)
                        .and_then(|d| wall.checked_sub(d)),
                    rx_bytes: st.map_or(0, |s| s.rx_bytes as u64),
                    tx_bytes: st.map_or(0, |s| s.tx_bytes as u64),
                    latency: path.latency.filter(|_| path.trusted),
                }
            })
            .collect();
        Status {
            peers,
            local: self.local.borrow().clone(),
            derp_connected: self
                .derps
                .iter()
                .filter(|(_, c)| *c.connected.borrow())
                .map(|(r, _)| *r)
                .collect(),
            counters: self.counters,
            disco: self.ms.stats(),
            netcheck: self.last_report.clone(),
            regions: self
                .derp_map
                .as_deref()
                .and_then(|m| m.regions.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|(id, r)| {
                    r.as_ref()
                        .map(|r| (*id, r.region_code.clone(), r.region_name.clone()))
                })
                .collect(),
        }
    }
}

/// The home region until netcheck measures: the lowest-numbered region that has a DERP
/// node and may be home. Deterministic, so restarts keep it.
pub fn default_home(map: &DerpMap) -> i32 {
    map.regions
        .iter()
        .flatten()
        .filter_map(|(id, r)| r.as_ref().map(|r| (*id, r)))
        .filter(|(_, r)| !r.no_measure_no_home && r.nodes.iter().any(|n| !n.stun_only))
        .map(|(id, _)| id)
        .next()
        .unwrap_or(0)
}

/// One DERP region's connection: dial, relay both ways, reconnect with backoff.
async fn derp_task(
    region: DerpRegion,
    private: NodePrivate,
    opts: DialOptions,
    mut sends: mpsc::Receiver<(NodePublic, Vec<u8>)>,
    to_engine: mpsc::Sender<DerpIn>,
    mut preferred: watch::Receiver<bool>,
    connected: watch::Sender<bool>,
) {
    let id = region.region_id;
    let mut backoff = DERP_BACKOFF_MIN;
    loop {
        let client = connect_region(&region, private.clone(), DerpConfig::default(), &opts).await;
        let mut client: Client = match client {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("DERP region {id}: {e}; retrying in {backoff:?}");
                // Sends while down are dropped, like datagrams.
                let until = tokio::time::Instant::now() + backoff;
                while tokio::time::timeout_at(until, sends.recv())
                    .await
                    .is_ok_and(|m| m.is_some())
                {}
                backoff = (backoff * 2).min(DERP_BACKOFF_MAX);
                continue;
            }
        };
        let p = *preferred.borrow();
        let _ = client.note_preferred(p).await;
        let why: String = loop {
            tokio::select! {
                m = sends.recv() => match m {
                    Some((dst, data)) => {
                        if let Err(e) = client.send(dst, data).await {
                            break e.to_string();
                        }
                    }
                    None => return,
                },
                ev = client.recv() => match ev {
                    Ok(DerpEvent::Connected { .. }) => {
                        tracing::debug!("DERP region {id}: connected");
                        backoff = DERP_BACKOFF_MIN;
                        let _ = connected.send(true);
                    }
                    Ok(DerpEvent::Packet { src, data }) => {
                        // A full engine queue drops, like a full socket buffer.
                        let _ = to_engine.try_send(DerpIn { region: id, src, data });
                    }
                    Ok(other) => tracing::trace!("DERP region {id}: {other:?}"),
                    Err(e) => break e.to_string(),
                },
                r = preferred.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let p = *preferred.borrow();
                    if let Err(e) = client.note_preferred(p).await {
                        break e.to_string();
                    }
                }
            }
        };
        let _ = connected.send(false);
        tracing::warn!("DERP region {id}: {why}; reconnecting in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(DERP_BACKOFF_MAX);
    }
}

/// This host's interface addresses usable as endpoints: not loopback, not link-local, not
/// in Tailscale's own ranges (the TUN's addresses). Read from procfs, so it follows the
/// network namespace and needs no extra privileges or libraries.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut v = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/proc/net/fib_trie") {
        v.extend(parse_fib_trie_locals(&t).into_iter().map(IpAddr::V4));
    }
    if let Ok(t) = std::fs::read_to_string("/proc/net/if_inet6") {
        v.extend(parse_if_inet6(&t).into_iter().map(IpAddr::V6));
    }
    v.retain(|ip| !is_tailscale(ip) && !ip.is_loopback());
    v.sort();
    v.dedup();
    v
}

fn is_tailscale(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 100 && (o[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0xfd7a && s[1] == 0x115c && s[2] == 0xa1e0
        }
    }
}

/// The host addresses of `/proc/net/fib_trie`: an address line followed by `/32 host LOCAL`.
fn parse_fib_trie_locals(text: &str) -> Vec<Ipv4Addr> {
    let mut v = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("|-- ") {
            last = rest.trim().parse().ok();
        } else if t.contains("/32 host LOCAL")
            && let Some(a) = last.take()
            && !a.is_link_local()
            && !v.contains(&a)
        {
            v.push(a);
        }
    }
    v
}

/// Global-scope addresses of `/proc/net/if_inet6` (32 hex digits, index, prefix, scope, …).
fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let hex = f.next()?;
            let scope = f.nth(2)?;
            if scope != "00" || hex.len() != 32 {
                return None;
            }
            let n = u128::from_str_radix(hex, 16).ok()?;
            Some(Ipv6Addr::from(n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Mutex as AsyncMutex;

    /// A device made of two queues: what the test "writes to the TUN" and what the engine
    /// wrote to it.
    struct MemDevice {
        from_os: AsyncMutex<mpsc::Receiver<Vec<u8>>>,
        to_os: mpsc::Sender<Vec<u8>>,
    }

    impl Device for MemDevice {
        async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            let p = self
                .from_os
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| io::Error::other("closed"))?;
            let n = p.len().min(buf.len());
            buf[..n].copy_from_slice(&p[..n]);
            Ok(n)
        }
        fn send(&self, packet: &[u8]) -> impl Future<Output = io::Result<usize>> + Send {
            let p = packet.to_vec();
            async move {
                let n = p.len();
                self.to_os
                    .send(p)
                    .await
                    .map_err(|_| io::Error::other("closed"))?;
                Ok(n)
            }
        }
    }

    struct AllowAll;
    impl Hooks for AllowAll {
        fn outbound(&mut self, _: &[u8], _: Instant) -> Outbound {
            Outbound::Send
        }
        fn inbound(&mut self, _: &NodePublic, _: &[u8], _: Instant) -> bool {
            true
        }
    }

    /// A UDP/IPv4 packet from `src` to `dst` carrying `payload` (checksums zero: the engine
    /// does not look at them).
    fn udp4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut p = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[0x13, 0x88, 0x13, 0x89]);
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    struct Node {
        handle: Handle<AllowAll>,
        from_os: mpsc::Sender<Vec<u8>>,
        to_os: mpsc::Receiver<Vec<u8>>,
    }

    async fn node(key: &NodePrivate, disco: &DiscoPrivate) -> Node {
        let (a_tx, a_rx) = mpsc::channel(64);
        let (b_tx, b_rx) = mpsc::channel(64);
        let dev = MemDevice {
            from_os: AsyncMutex::new(a_rx),
            to_os: b_tx,
        };
        let opts = Options {
            port: 0,
            disco: disco.clone(),
            derp: DialOptions::default(),
            socket_mark: 0,
        };
        let cfg = Config {
            private_key: key.clone(),
            peers: vec![],
            derp_map: None,
        };
        let handle = spawn(opts, cfg, dev, AllowAll).await.unwrap();
        Node {
            handle,
            from_os: a_tx,
            to_os: b_rx,
        }
    }

    /// A port mapping's endpoint leads our endpoints as type 3 and goes away with it.
    #[tokio::test]
    async fn port_mapping_leads_the_endpoints() {
        let n = node(&NodePrivate::generate(), &DiscoPrivate::generate()).await;
        let mut local = n.handle.local_info();
        let ext: SocketAddr = "198.51.100.7:41000".parse().unwrap();
        n.handle.set_port_mapping(Some(ext)).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let e = local.borrow_and_update().endpoints.first().copied();
                if let Some(e) = e.filter(|(a, _)| *a == ext) {
                    return e;
                }
                local.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
        assert_eq!(first.1, EndpointKind::PortMapped);
        n.handle.set_port_mapping(None).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while local
                .borrow_and_update()
                .endpoints
                .iter()
                .any(|(a, _)| *a == ext)
            {
                local.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
    }

    /// Two engines on loopback find the direct path by disco and carry a packet each way;
    /// injection writes to the device and skips the peers.
    #[tokio::test]
    async fn two_engines_on_loopback_talk_and_inject() {
        let (ka, kb) = (NodePrivate::generate(), NodePrivate::generate());
        let (da, db) = (DiscoPrivate::generate(), DiscoPrivate::generate());
        let mut a = node(&ka, &da).await;
        let mut b = node(&kb, &db).await;
        let ip_a: IpPrefix = "100.64.0.1/32".parse().unwrap();
        let ip_b: IpPrefix = "100.64.0.2/32".parse().unwrap();
        let spec = |k: &NodePrivate, d: &DiscoPrivate, port: u16, ip: IpPrefix| PeerSpec {
            key: k.public(),
            disco: Some(d.public()),
            endpoints: vec![SocketAddr::from(([127, 0, 0, 1], port))],
            home_derp: 0,
            allowed_ips: vec![ip],
        };
        let cfg = |me: &NodePrivate, peer: PeerSpec| Config {
            private_key: me.clone(),
            peers: vec![peer],
            derp_map: None,
        };
        a.handle
            .set_config(cfg(&ka, spec(&kb, &db, b.handle.port(), ip_b)))
            .await
            .unwrap();
        b.handle
            .set_config(cfg(&kb, spec(&ka, &da, a.handle.port(), ip_a)))
            .await
            .unwrap();
        let to_b = udp4([100, 64, 0, 1], [100, 64, 0, 2], b"hello b");
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                a.from_os.send(to_b.clone()).await.unwrap();
                if let Ok(Some(p)) =
                    tokio::time::timeout(Duration::from_millis(200), b.to_os.recv()).await
                {
                    return p;
                }
            }
        })
        .await
        .expect("the packet never reached b");
        assert_eq!(got, to_b);
        let to_a = udp4([100, 64, 0, 2], [100, 64, 0, 1], b"hello a");
        b.from_os.send(to_a.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), a.to_os.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, to_a);
        let st = a.handle.status().await.unwrap();
        let p = &st.peers[0];
        assert_eq!(
            p.direct,
            Some(SocketAddr::from(([127, 0, 0, 1], b.handle.port())))
        );
        assert!(p.last_handshake.is_some() && p.rx_bytes > 0 && p.tx_bytes > 0);
        // A disco ping is answered over the direct path.
        let pong = a.handle.ping(kb.public()).await.unwrap().unwrap();
        assert_eq!(
            pong.path,
            Path::Udp(SocketAddr::from(([127, 0, 0, 1], b.handle.port())))
        );
        // Injection to the device goes to the device only.
        let inj = udp4([100, 100, 100, 100], [100, 64, 0, 1], b"answer");
        a.handle.inject_inbound(inj.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), a.to_os.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, inj);
        // Injection towards a peer is routed by AllowedIPs like a packet from the device.
        let inj = udp4([100, 64, 0, 1], [100, 64, 0, 2], b"injected");
        a.handle.inject(inj.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), b.to_os.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, inj);
        // Garbage to the UDP port is counted, not fatal.
        let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for n in [0usize, 1, 4, 16, 32, 148, 1500] {
            let mut d = vec![0xa5u8; n];
            if n >= 4 {
                d[..4].copy_from_slice(&4u32.to_le_bytes());
            }
            junk.send_to(&d, ("127.0.0.1", a.handle.port())).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let st = a.handle.status().await.unwrap();
        assert!(st.counters.wireguard_rejected >= 5, "{:?}", st.counters);
    }

    #[test]
    fn tun_batch_buffers_have_room_to_merge_a_flow() {
        // tun-rs merges segments only into a buffer with this much capacity already.
        let mut b = TunBatch::new(10);
        for _ in 0..3 {
            for i in 0..BATCH {
                b.push(&[i as u8; 1280]);
            }
            assert!(b.full());
            for buf in &b.bufs {
                assert!(buf.capacity() >= 2 * 10 + wireguard::MAX_PACKET);
                assert_eq!(buf.len(), 10 + 1280);
            }
            // A device merged the flow into the first buffer.
            b.bufs[0].resize(10 + wireguard::MAX_PACKET, 0);
            b.recycle();
            assert!(b.bufs.is_empty());
            assert_eq!(b.spare.len(), BATCH);
        }
    }

    /// A socket on 127.0.0.1, with `UDP_GRO` as asked.
    fn loopback_udp(gro: bool) -> UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_nonblocking(true).expect("nonblocking");
        udp::sys::set_udp_gro(&s, gro).expect("UDP_GRO");
        UdpSocket::from_std(s).expect("tokio socket")
    }

    /// Everything that arrives at `rx` within a short while, as (receive, its datagrams).
    async fn receive_all(rx: &UdpSocket) -> Vec<(udp::Recv, Vec<Vec<u8>>)> {
        let mut r = UdpRx::new();
        let sock = Some(rx);
        let mut got = Vec::new();
        while let Ok(Ok(recv)) =
            tokio::time::timeout(Duration::from_millis(300), r.recv(sock)).await
        {
            let data = r.buf.get(..recv.len).expect("length within the buffer");
            let parts = udp::segments(data, recv.segment)
                .map(<[u8]>::to_vec)
                .collect();
            got.push((recv, parts));
        }
        got
    }

    /// A train of 10 datagrams of 100 bytes and one of 50, sent with one `UDP_SEGMENT`
    /// `sendmsg`, and what was sent, one datagram each.
    async fn send_train(to: SocketAddr) -> (SocketAddr, Vec<Vec<u8>>) {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let from = tx.local_addr().expect("address");
        let sent: Vec<Vec<u8>> = (0..11u8)
            .map(|i| vec![i; if i == 10 { 50 } else { 100 }])
            .collect();
        let tx = Some(tx);
        send_segmented(&tx, to, 100, &sent.concat())
            .await
            .expect("UDP_SEGMENT send");
        (from, sent)
    }

    #[tokio::test]
    async fn udp_gro_takes_a_segmented_train_in_one_receive() {
        let rx = loopback_udp(true);
        let (from, sent) = send_train(rx.local_addr().expect("address")).await;
        let got = receive_all(&rx).await;
        assert_eq!(
            got.len(),
            1,
            "one receive: {:?}",
            got.iter().map(|g| g.0).collect::<Vec<_>>()
        );
        let (recv, parts) = &got[0];
        assert_eq!(recv.src, from);
        assert_eq!(recv.len, 1050);
        assert_eq!(recv.segment, Some(100));
        assert!(!recv.truncated);
        assert_eq!(parts, &sent);
    }

    #[tokio::test]
    async fn without_udp_gro_the_train_comes_one_by_one() {
        let rx = loopback_udp(false);
        let (from, sent) = send_train(rx.local_addr().expect("address")).await;
        let got = receive_all(&rx).await;
        assert_eq!(got.len(), 11);
        for (recv, _) in &got {
            assert_eq!((recv.src, recv.segment), (from, None));
        }
        let parts: Vec<Vec<u8>> = got.into_iter().flat_map(|g| g.1).collect();
        assert_eq!(parts, sent);
    }

    #[tokio::test]
    async fn a_small_buffer_reports_truncation() {
        let rx = loopback_udp(true);
        let (_, _) = send_train(rx.local_addr().expect("address")).await;
        let mut buf = [0u8; 300];
        let mut control = [0u8; udp::CONTROL_LEN];
        let r = rx
            .async_io(tokio::io::Interest::READABLE, || {
                udp::sys::recv(&rx, &mut buf, &mut control)
            })
            .await
            .expect("receive");
        assert!(r.truncated);
        assert!(r.len <= buf.len());
        // Cutting what is there never panics, however the kernel cut it.
        assert!(udp::segments(buf.get(..r.len).unwrap_or_default(), r.segment).count() >= 1);
    }

    #[test]
    fn fib_trie_locals() {
        let t = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     \
                 +-- 10.213.40.0/24 2 0 2\n        |-- 10.213.40.2\n           /32 host LOCAL\n\
                 |-- 127.0.0.1\n   /32 host LOCAL\n|-- 169.254.1.1\n /32 host LOCAL\n\
                 Local:\n        |-- 10.213.40.2\n           /32 host LOCAL\n";
        let v = parse_fib_trie_locals(t);
        assert_eq!(
            v,
            vec![
                "10.213.40.2".parse::<Ipv4Addr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn if_inet6_global_only() {
        let t = "fe800000000000000000000000000001 02 40 20 80 eth0\n\
                 20010db8000000000000000000000001 02 40 00 80 eth0\n\
                 garbage\n";
        assert_eq!(
            parse_if_inet6(t),
            vec!["2001:db8::1".parse::<Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn tailscale_ranges() {
        assert!(is_tailscale(&"100.64.0.1".parse().unwrap()));
        assert!(is_tailscale(&"100.127.255.1".parse().unwrap()));
        assert!(!is_tailscale(&"100.128.0.1".parse().unwrap()));
        assert!(is_tailscale(&"fd7a:115c:a1e0::1".parse().unwrap()));
    }
}

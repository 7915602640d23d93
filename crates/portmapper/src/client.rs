//! The tokio driver: sockets, timeouts and the choice of protocol around the sans-IO codecs.

use crate::error::{Error, Result};
use crate::mapping::{Detail, MAX_SCHEDULED_LIFETIME, Mapping, Protocol};
use crate::upnp::{self, ControlPoint, HttpUrl, ServiceKind, soap, ssdp};
use crate::{http, natpmp, pcp, route};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tracing::{debug, info, warn};

/// How long a probe that found something is trusted before `map` probes again.
pub const PROBE_TTL: Duration = Duration::from_secs(600);

/// What a [`Client`] needs to know. Build it with [`Config::new`] and change fields as
/// needed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The gateway to ask; `None`: the default IPv4 gateway from `/proc/net/route`.
    pub gateway: Option<Ipv4Addr>,
    /// This host's address towards the gateway; `None`: the source address the kernel picks
    /// for the gateway (a connected UDP socket, no packet sent).
    pub local_ip: Option<Ipv4Addr>,
    /// The UDP port to map (the WireGuard port).
    pub internal_port: u16,
    /// The protocols allowed, in order of preference. Default: NAT-PMP, PCP, UPnP (the
    /// order Tailscale uses). One entry forces that protocol.
    pub protocols: Vec<Protocol>,
    /// The lifetime asked for. Default 7200 s (RFC 6886's recommendation, Tailscale's value).
    pub lifetime: Duration,
    /// `SO_MARK` for every socket (Linux, needs `CAP_NET_ADMIN`); 0 sets none. The daemon
    /// passes osrouter's bypass mark (0x80000) so these packets skip the tunnel's rules.
    pub socket_mark: u32,
    /// How long to wait for the first answer to a NAT-PMP or PCP request; doubled at each
    /// retransmission. Default 250 ms.
    pub udp_timeout: Duration,
    /// How many times a NAT-PMP or PCP request is sent. Default 3 (250 + 500 + 1000 ms).
    pub udp_attempts: u32,
    /// How long a probe listens for answers. Default 500 ms.
    pub probe_timeout: Duration,
    /// The bound on one HTTP exchange with a UPnP device (connect, send, read). Default 3 s.
    pub http_timeout: Duration,
    /// The largest HTTP body read from a UPnP device. Default 256 KiB.
    pub http_body_limit: usize,
    /// The UPnP mapping's description, shown in the router's UI. Default "tailrouter".
    pub description: String,
    /// How long [`Client::maintain`] waits after a failure before it tries again.
    /// Default 30 s.
    pub retry_interval: Duration,
    /// The gateway's NAT-PMP/PCP port: 5351. Other values are for tests.
    pub pxp_port: u16,
    /// The SSDP port: 1900. Other values are for tests.
    pub ssdp_port: u16,
}

impl Config {
    /// Defaults for mapping `internal_port`, gateway and local address discovered.
    pub fn new(internal_port: u16) -> Config {
        Config {
            gateway: None,
            local_ip: None,
            internal_port,
            protocols: Protocol::ALL.to_vec(),
            lifetime: Duration::from_secs(7200),
            socket_mark: 0,
            udp_timeout: Duration::from_millis(250),
            udp_attempts: 3,
            probe_timeout: Duration::from_millis(500),
            http_timeout: Duration::from_secs(3),
            http_body_limit: 256 * 1024,
            description: "tailrouter".to_string(),
            retry_interval: Duration::from_secs(30),
            pxp_port: natpmp::PORT,
            ssdp_port: ssdp::PORT,
        }
    }

    fn enabled(&self, p: Protocol) -> bool {
        self.protocols.contains(&p)
    }

    fn lifetime_secs(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs())
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

/// Which services answered a probe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProbeResult {
    /// A NAT-PMP external-address request was answered with success.
    pub nat_pmp: bool,
    /// A PCP ANNOUNCE was answered with success.
    pub pcp: bool,
    /// An SSDP search found an Internet Gateway Device.
    pub upnp: bool,
    /// The external address NAT-PMP reported, if it answered.
    pub external_ip: Option<Ipv4Addr>,
}

impl ProbeResult {
    /// Whether `p` answered.
    pub fn has(&self, p: Protocol) -> bool {
        match p {
            Protocol::NatPmp => self.nat_pmp,
            Protocol::Pcp => self.pcp,
            Protocol::Upnp => self.upnp,
        }
    }

    /// Whether anything answered.
    pub fn any(&self) -> bool {
        self.nat_pmp || self.pcp || self.upnp
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    gateway: Ipv4Addr,
    local: Ipv4Addr,
}

#[derive(Debug, Clone)]
struct Probed {
    at: Instant,
    result: ProbeResult,
    /// Root description URLs from SSDP, de-duplicated, aimed at the gateway.
    locations: Vec<HttpUrl>,
}

/// A port-mapping client for one internal port on one gateway.
///
/// Call [`Client::map`] whenever the current external endpoint is wanted (it answers from
/// its cache until half the lifetime has passed, then renews), [`Client::release`] on
/// shutdown; or hand the whole job to [`Client::maintain`]. Every network step is bounded by
/// the timeouts in [`Config`].
#[derive(Debug)]
pub struct Client {
    config: Config,
    net: Option<Net>,
    probed: Option<Probed>,
    mapping: Option<Mapping>,
    upnp: Option<ControlPoint>,
}

impl Client {
    /// A client; nothing is sent until a method is called.
    pub fn new(config: Config) -> Client {
        Client {
            config,
            net: None,
            probed: None,
            mapping: None,
            upnp: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The mapping currently held, if any (it may be past its renewal time).
    pub fn mapping(&self) -> Option<&Mapping> {
        self.mapping.as_ref()
    }

    /// The gateway and local address in use, once resolved.
    pub fn gateway(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        self.net.map(|n| (n.gateway, n.local))
    }

    /// Forgets the gateway, the probe and the mapping without telling the gateway: for when
    /// the network changed and the old gateway is gone.
    pub fn reset(&mut self) {
        self.net = None;
        self.probed = None;
        self.mapping = None;
        self.upnp = None;
    }

    fn resolve(&mut self) -> Result<Net> {
        if let Some(n) = self.net {
            return Ok(n);
        }
        let gateway = match self.config.gateway {
            Some(g) => g,
            None => {
                let text = std::fs::read_to_string(route::PROC_NET_ROUTE)
                    .map_err(|e| Error::io(format!("reading {}", route::PROC_NET_ROUTE), e))?;
                let routes = route::parse_routes(&text)?;
                route::default_gateway(&routes)
                    .map(|(_, gw)| gw)
                    .ok_or(Error::NoGateway)?
            }
        };
        let local = match self.config.local_ip {
            Some(ip) => ip,
            None => local_ip_towards(gateway, self.config.pxp_port, self.config.socket_mark)?,
        };
        let n = Net { gateway, local };
        debug!(%gateway, %local, "port mapping through gateway");
        self.net = Some(n);
        Ok(n)
    }

    /// Asks the gateway which of the enabled protocols it speaks: a NAT-PMP external-address
    /// request, a PCP ANNOUNCE and SSDP searches (unicast to the gateway and multicast), all
    /// at once, answers collected for [`Config::probe_timeout`] (less once every enabled
    /// protocol has answered).
    pub async fn probe(&mut self) -> Result<ProbeResult> {
        let net = self.resolve()?;
        let c = &self.config;
        let sock = udp_socket(net.local, c.socket_mark)?;
        let pxp = SocketAddr::from(SocketAddrV4::new(net.gateway, c.pxp_port));
        let ssdp_unicast = SocketAddr::from(SocketAddrV4::new(net.gateway, c.ssdp_port));
        let ssdp_multicast =
            SocketAddr::from(SocketAddrV4::new(*ssdp::MULTICAST.ip(), c.ssdp_port));
        let pmp_req = natpmp::external_address_request();
        let pcp_req = pcp::announce_request(net.local);
        let searches = [
            ssdp::m_search(ssdp::ST_IGD1, 1),
            ssdp::m_search(ssdp::ST_ALL, 1),
        ];

        let mut result = ProbeResult::default();
        let mut locations: Vec<HttpUrl> = Vec::new();
        let send_pxp = |result: &ProbeResult| {
            let mut out: Vec<&[u8]> = Vec::new();
            if c.enabled(Protocol::NatPmp) && !result.nat_pmp {
                out.push(&pmp_req);
            }
            if c.enabled(Protocol::Pcp) && !result.pcp {
                out.push(&pcp_req);
            }
            out
        };
        for p in send_pxp(&result) {
            send_quietly(&sock, p, pxp).await;
        }
        if c.enabled(Protocol::Upnp) {
            for s in &searches {
                send_quietly(&sock, s, ssdp_unicast).await;
                send_quietly(&sock, s, ssdp_multicast).await;
            }
        }

        let start = Instant::now();
        let mut deadline = start + c.probe_timeout;
        let mut resent = false;
        let mut grace = false;
        let mut buf = vec![0u8; 2048];
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Halfway through, ask again whatever has not answered (a lost datagram).
            let half = start + c.probe_timeout / 2;
            let wake = if resent { deadline } else { half.min(deadline) };
            let got = tokio::time::timeout(
                wake.saturating_duration_since(now),
                sock.recv_from(&mut buf),
            )
            .await;
            let (n, from) = match got {
                Err(_) => {
                    if !resent {
                        resent = true;
                        for p in send_pxp(&result) {
                            send_quietly(&sock, p, pxp).await;
                        }
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    // ICMP errors (port unreachable) surface here on some kernels.
                    debug!(error = %e, "probe receive");
                    continue;
                }
                Ok(Ok(x)) => x,
            };
            let data = buf.get(..n).unwrap_or(&[]);
            if from == pxp {
                match data.first() {
                    Some(&natpmp::VERSION) => match natpmp::parse_response(data) {
                        Ok(natpmp::Response::ExternalAddress { address, epoch }) => {
                            debug!(%address, epoch, "NAT-PMP answered the probe");
                            result.nat_pmp = true;
                            result.external_ip = Some(address);
                        }
                        Ok(other) => debug!(?other, "NAT-PMP probe answer"),
                        Err(e) => debug!(error = %e, "malformed NAT-PMP probe answer"),
                    },
                    Some(&pcp::VERSION) => match pcp::parse_response(data) {
                        Ok(r)
                            if r.opcode == pcp::OP_ANNOUNCE
                                && r.result == pcp::ResultCode::Success =>
                        {
                            debug!(epoch = r.epoch, "PCP answered the probe");
                            result.pcp = true;
                        }
                        Ok(r) => debug!(result = %r.result, opcode = r.opcode, "PCP probe answer"),
                        Err(e) => debug!(error = %e, "malformed PCP probe answer"),
                    },
                    _ => debug!(len = n, "unknown datagram from the PMP/PCP port"),
                }
            } else {
                match ssdp::parse_response(data) {
                    Ok(r) if r.is_gateway() => match HttpUrl::parse(&r.location) {
                        Ok(u) => {
                            if from.ip() != IpAddr::V4(net.gateway)
                                || u.host != net.gateway.to_string()
                            {
                                debug!(%from, location = %r.location, "UPnP answer names another host; asking the gateway instead");
                            }
                            let u = u.at(net.gateway);
                            result.upnp = true;
                            if !locations.contains(&u) && locations.len() < 8 {
                                debug!(location = %u, server = %r.server, st = %r.st, "UPnP gateway found");
                                locations.push(u);
                            }
                        }
                        Err(e) => debug!(error = %e, "UPnP answer with an unusable LOCATION"),
                    },
                    Ok(_) => {}
                    Err(e) => debug!(%from, error = %e, "not an SSDP answer"),
                }
            }
            let all = c.protocols.iter().all(|p| result.has(*p));
            if all && !grace {
                // Everything answered: stay a little for more SSDP answers, then stop.
                grace = true;
                deadline = deadline.min(Instant::now() + Duration::from_millis(50));
            }
        }
        info!(nat_pmp = result.nat_pmp, pcp = result.pcp, upnp = result.upnp, gateway = %net.gateway, "port-mapping probe");
        self.probed = Some(Probed {
            at: Instant::now(),
            result: result.clone(),
            locations,
        });
        Ok(result)
    }

    /// The mapping: the cached one until its renewal time, then renewed; otherwise a new one
    /// from the first protocol (in [`Config::protocols`] order) the gateway answers. A
    /// renewal that fails while the old mapping still holds returns the old mapping.
    pub async fn map(&mut self) -> Result<Mapping> {
        let now = Instant::now();
        if let Some(m) = &self.mapping {
            if !m.wants_renewal(now) {
                return Ok(m.clone());
            }
            match self.renew().await {
                Ok(m) => return Ok(m),
                Err(e) => {
                    if let Some(m) = self.mapping.as_ref().filter(|m| m.is_live(Instant::now())) {
                        warn!(error = %e, "renewing the port mapping failed; the old one still holds");
                        return Ok(m.clone());
                    }
                    warn!(error = %e, "renewing the port mapping failed; making a new one");
                    self.mapping = None;
                }
            }
        }
        self.create().await
    }

    /// Renews the mapping now with the protocol that made it, asking for the same external
    /// port; makes a new mapping if there is none. On failure the old mapping is kept while
    /// it holds.
    pub async fn renew(&mut self) -> Result<Mapping> {
        let Some(prev) = self.mapping.clone() else {
            return self.create().await;
        };
        let net = self.resolve()?;
        let r = self.map_with(prev.protocol, net, Some(&prev)).await;
        match r {
            Ok(m) => {
                if m.external != prev.external {
                    info!(old = %prev.external, new = %m.external, "the gateway moved the mapping");
                }
                self.mapping = Some(m.clone());
                Ok(m)
            }
            Err(e) => {
                if !prev.is_live(Instant::now()) {
                    self.mapping = None;
                }
                Err(e)
            }
        }
    }

    async fn create(&mut self) -> Result<Mapping> {
        let net = self.resolve()?;
        let fresh = self
            .probed
            .as_ref()
            .is_some_and(|p| p.result.any() && p.at.elapsed() < PROBE_TTL);
        if !fresh {
            self.probe().await?;
        }
        let answered = self
            .probed
            .as_ref()
            .map(|p| p.result.clone())
            .unwrap_or_default();
        let candidates: Vec<Protocol> = self
            .config
            .protocols
            .iter()
            .copied()
            .filter(|p| answered.has(*p))
            .collect();
        if candidates.is_empty() {
            self.probed = None;
            return Err(Error::NoService {
                gateway: net.gateway,
                protocols: self
                    .config
                    .protocols
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let mut failures = Vec::new();
        for p in candidates {
            match self.map_with(p, net, None).await {
                Ok(m) => {
                    info!(mapping = %m, "port mapped");
                    self.mapping = Some(m.clone());
                    return Ok(m);
                }
                Err(e) => {
                    warn!(protocol = %p, error = %e, "port mapping failed");
                    failures.push((p, e));
                }
            }
        }
        // Ask again next time: what answered may have changed.
        self.probed = None;
        if failures.len() == 1 {
            if let Some((_, e)) = failures.pop() {
                return Err(e);
            }
        }
        Err(Error::AllFailed(failures))
    }

    async fn map_with(&mut self, p: Protocol, net: Net, prev: Option<&Mapping>) -> Result<Mapping> {
        match p {
            Protocol::NatPmp => self.map_natpmp(net, prev).await,
            Protocol::Pcp => self.map_pcp(net, prev).await,
            Protocol::Upnp => self.map_upnp(net, prev).await,
        }
    }

    /// Deletes the mapping on the gateway (NAT-PMP and PCP: lifetime 0; UPnP:
    /// `DeletePortMapping`) and forgets it. Without a mapping it does nothing.
    pub async fn release(&mut self) -> Result<()> {
        let Some(m) = self.mapping.take() else {
            return Ok(());
        };
        let net = Net {
            gateway: m.gateway,
            local: *m.internal.ip(),
        };
        let r = match &m.detail {
            Detail::NatPmp { .. } => self.release_natpmp(net, &m).await,
            Detail::Pcp { nonce, .. } => self.release_pcp(net, &m, *nonce).await,
            Detail::Upnp { control } => self.release_upnp(control, &m).await,
        };
        match &r {
            Ok(()) => info!(mapping = %m, "port mapping released"),
            Err(e) => warn!(mapping = %m, error = %e, "releasing the port mapping failed"),
        }
        r
    }

    /// Keeps a mapping until `stop` completes, then releases it: maps, sleeps until the
    /// renewal time, renews, and on failure tries again after [`Config::retry_interval`].
    /// `on_change` is called with the new mapping whenever the external endpoint changes,
    /// and with `None` when the mapping is lost. The daemon reports the endpoint to control
    /// (type 3) from there.
    pub async fn maintain<F, C>(&mut self, stop: F, mut on_change: C) -> Result<()>
    where
        F: Future<Output = ()>,
        C: FnMut(Option<&Mapping>),
    {
        tokio::pin!(stop);
        let mut reported: Option<SocketAddrV4> = None;
        loop {
            let r = tokio::select! {
                r = self.map() => r,
                () = &mut stop => break,
            };
            let now = Instant::now();
            let retry = now + self.config.retry_interval;
            let next = match r {
                Ok(m) => {
                    if reported != Some(m.external) {
                        reported = Some(m.external);
                        on_change(Some(&m));
                    }
                    if m.wants_renewal(now) {
                        retry.min(m.expires_at())
                    } else {
                        m.renew_at()
                    }
                }
                Err(e) => {
                    // Most gateways offer none: not worth a warning every retry.
                    debug!(error = %e, "no port mapping");
                    if reported.is_some() && self.mapping.is_none() {
                        reported = None;
                        on_change(None);
                    }
                    retry
                }
            };
            // Never spin, whatever lifetime a gateway grants.
            let next = next.max(now + Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = &mut stop => break,
            }
        }
        self.release().await
    }

    // ---------------------------------------------------------------- NAT-PMP

    async fn map_natpmp(&mut self, net: Net, prev: Option<&Mapping>) -> Result<Mapping> {
        let c = &self.config;
        let internal = c.internal_port;
        let suggested = prev.map_or(internal, |m| m.external.port());
        let req = natpmp::map_udp_request(internal, suggested, c.lifetime_secs());
        let ext_req = natpmp::external_address_request();
        let sock = udp_socket(net.local, c.socket_mark)?;
        let to = SocketAddr::from(SocketAddrV4::new(net.gateway, c.pxp_port));
        let mut address: Option<Ipv4Addr> = None;
        let mut mapped: Option<(u16, u32, u32)> = None;
        let ((address, (external_port, lifetime, epoch)), at) = exchange(
            &sock,
            to,
            &[&ext_req, &req],
            c,
            Protocol::NatPmp,
            net.gateway,
            |data| {
                match natpmp::parse_response(data) {
                    Ok(natpmp::Response::ExternalAddress { address: a, .. }) => address = Some(a),
                    Ok(natpmp::Response::MapUdp {
                        internal_port,
                        external_port,
                        lifetime,
                        epoch,
                    }) if internal_port == internal => {
                        mapped = Some((external_port, lifetime, epoch))
                    }
                    Ok(natpmp::Response::Refused { code, .. }) => {
                        return Some(Err(Error::NatPmpRefused(code)));
                    }
                    Ok(other) => debug!(?other, "unrelated NAT-PMP answer"),
                    Err(e) => debug!(error = %e, "malformed NAT-PMP answer"),
                }
                Some(Ok((address?, mapped?)))
            },
        )
        .await?;
        if address.is_unspecified() || external_port == 0 || lifetime == 0 {
            return Err(Error::unexpected(
                Protocol::NatPmp,
                format!("mapping to {address}:{external_port} for {lifetime} s"),
            ));
        }
        if let Some(Mapping {
            detail: Detail::NatPmp { epoch: old },
            obtained,
            ..
        }) = prev
        {
            if !natpmp::epoch_consistent(*old, *obtained, epoch, at) {
                info!(
                    old,
                    epoch, "the NAT-PMP gateway restarted; the mapping was made again"
                );
            }
        }
        Ok(Mapping {
            protocol: Protocol::NatPmp,
            external: SocketAddrV4::new(address, external_port),
            internal: SocketAddrV4::new(net.local, internal),
            gateway: net.gateway,
            lifetime: scheduled(lifetime),
            obtained: at,
            detail: Detail::NatPmp { epoch },
        })
    }

    async fn release_natpmp(&self, net: Net, m: &Mapping) -> Result<()> {
        let c = &self.config;
        let internal = m.internal.port();
        // RFC 6886 section 3.4: lifetime 0 and suggested external port 0 delete.
        let req = natpmp::map_udp_request(internal, 0, 0);
        let sock = udp_socket(net.local, c.socket_mark)?;
        let to = SocketAddr::from(SocketAddrV4::new(net.gateway, c.pxp_port));
        exchange(
            &sock,
            to,
            &[&req],
            c,
            Protocol::NatPmp,
            net.gateway,
            |data| match natpmp::parse_response(data) {
                Ok(natpmp::Response::MapUdp { internal_port, .. }) if internal_port == internal => {
                    Some(Ok(()))
                }
                Ok(natpmp::Response::Refused { code, .. }) => Some(Err(Error::NatPmpRefused(code))),
                _ => None,
            },
        )
        .await
        .map(|_| ())
    }

    // ---------------------------------------------------------------- PCP

    async fn map_pcp(&mut self, net: Net, prev: Option<&Mapping>) -> Result<Mapping> {
        let c = &self.config;
        let internal = c.internal_port;
        let (nonce, suggested) = match prev {
            Some(Mapping {
                detail: Detail::Pcp { nonce, .. },
                external,
                ..
            }) => (*nonce, *external),
            _ => (
                random_nonce()?,
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, internal),
            ),
        };
        let req = pcp::MapRequest {
            client_ip: net.local,
            lifetime: c.lifetime_secs(),
            nonce,
            internal_port: internal,
            suggested_external: suggested,
        }
        .encode();
        let sock = udp_socket(net.local, c.socket_mark)?;
        let to = SocketAddr::from(SocketAddrV4::new(net.gateway, c.pxp_port));
        let (r, at) = exchange(&sock, to, &[&req], c, Protocol::Pcp, net.gateway, |data| {
            pcp_answer(data, nonce)
        })
        .await?;
        let (body, lifetime, epoch) = r;
        if body.protocol != pcp::PROTO_UDP || body.internal_port != internal {
            return Err(Error::unexpected(
                Protocol::Pcp,
                format!(
                    "answer for protocol {} port {} (asked UDP {internal})",
                    body.protocol, body.internal_port
                ),
            ));
        }
        let external = match body.external {
            SocketAddr::V4(a) if !a.ip().is_unspecified() && a.port() != 0 && lifetime != 0 => a,
            other => {
                return Err(Error::unexpected(
                    Protocol::Pcp,
                    format!("mapping to {other} for {lifetime} s"),
                ));
            }
        };
        if let Some(Mapping {
            detail: Detail::Pcp { epoch: old, .. },
            obtained,
            ..
        }) = prev
        {
            if !natpmp::epoch_consistent(*old, *obtained, epoch, at) {
                info!(
                    old,
                    epoch, "the PCP gateway restarted; the mapping was made again"
                );
            }
        }
        Ok(Mapping {
            protocol: Protocol::Pcp,
            external,
            internal: SocketAddrV4::new(net.local, internal),
            gateway: net.gateway,
            lifetime: scheduled(lifetime),
            obtained: at,
            detail: Detail::Pcp { nonce, epoch },
        })
    }

    async fn release_pcp(&self, net: Net, m: &Mapping, nonce: pcp::Nonce) -> Result<()> {
        let c = &self.config;
        let req = pcp::MapRequest {
            client_ip: net.local,
            lifetime: 0,
            nonce,
            internal_port: m.internal.port(),
            suggested_external: m.external,
        }
        .encode();
        let sock = udp_socket(net.local, c.socket_mark)?;
        let to = SocketAddr::from(SocketAddrV4::new(net.gateway, c.pxp_port));
        exchange(&sock, to, &[&req], c, Protocol::Pcp, net.gateway, |data| {
            pcp_answer(data, nonce)
        })
        .await
        .map(|_| ())
    }

    // ---------------------------------------------------------------- UPnP

    /// The control point: the one in use, else the best service of the first description
    /// (from the probe's SSDP answers) that has one.
    async fn upnp_control(&mut self, net: Net) -> Result<ControlPoint> {
        if let Some(cp) = &self.upnp {
            return Ok(cp.clone());
        }
        let locations = self
            .probed
            .as_ref()
            .map(|p| p.locations.clone())
            .unwrap_or_default();
        let mut last = Error::NoUpnpService("no SSDP answer".into());
        for loc in locations {
            match self.describe(net, &loc).await {
                Ok(cp) => {
                    debug!(kind = ?cp.kind, control = %cp.control, "UPnP control point");
                    self.upnp = Some(cp.clone());
                    return Ok(cp);
                }
                Err(e) => {
                    debug!(location = %loc, error = %e, "UPnP description unusable");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn describe(&self, net: Net, location: &HttpUrl) -> Result<ControlPoint> {
        let req = http::request("GET", &location.authority(), &location.path, &[], b"");
        let resp = self.http_exchange(net, location, &req).await?;
        if resp.head.status != 200 {
            return Err(Error::HttpStatus {
                url: location.to_string(),
                status: resp.head.status,
            });
        }
        let doc = String::from_utf8_lossy(&resp.body);
        let root = upnp::xml::parse_root(&doc)?;
        let cp = upnp::choose_service(&root, location)?
            .ok_or_else(|| Error::NoUpnpService(location.to_string()))?;
        Ok(ControlPoint {
            kind: cp.kind,
            control: cp.control.at(net.gateway),
        })
    }

    async fn map_upnp(&mut self, net: Net, prev: Option<&Mapping>) -> Result<Mapping> {
        let cp = match prev.map(|m| &m.detail) {
            Some(Detail::Upnp { control }) => control.clone(),
            _ => self.upnp_control(net).await?,
        };
        let r = self.map_upnp_at(net, &cp, prev).await;
        if r.is_err() {
            // Look the service up again next time.
            self.upnp = None;
        }
        r
    }

    async fn map_upnp_at(
        &self,
        net: Net,
        cp: &ControlPoint,
        prev: Option<&Mapping>,
    ) -> Result<Mapping> {
        let c = &self.config;
        let internal = c.internal_port;
        let mut lease = c.lifetime_secs();
        let external_port = match prev {
            // Renewal: the same port again, which refreshes the lease.
            Some(m) => {
                self.add_port_mapping(net, cp, "AddPortMapping", m.external.port(), &mut lease)
                    .await?
            }
            None => {
                // Some devices refuse privileged external ports; never ask for one.
                let hint = if internal >= 1024 {
                    internal
                } else {
                    random_port()?
                };
                let first = if cp.kind == ServiceKind::WanIp2 {
                    match self
                        .add_port_mapping(net, cp, "AddAnyPortMapping", hint, &mut lease)
                        .await
                    {
                        Err(Error::UpnpFault { fault, .. })
                            if matches!(
                                fault.code,
                                Some(soap::codes::INVALID_ACTION | soap::codes::NOT_IMPLEMENTED)
                            ) =>
                        {
                            None
                        }
                        other => Some(other),
                    }
                } else {
                    None
                };
                match first {
                    Some(r) => r?,
                    None => match self
                        .add_port_mapping(net, cp, "AddPortMapping", hint, &mut lease)
                        .await
                    {
                        Err(Error::UpnpFault { fault, .. })
                            if fault.code == Some(soap::codes::CONFLICT_IN_MAPPING_ENTRY) =>
                        {
                            let port = random_port()?;
                            debug!(hint, port, "UPnP port taken; trying another");
                            self.add_port_mapping(net, cp, "AddPortMapping", port, &mut lease)
                                .await?
                        }
                        other => other?,
                    },
                }
            }
        };
        let args = self.soap_call(net, cp, "GetExternalIPAddress", &[]).await?;
        let text = soap::arg(&args, "NewExternalIPAddress").unwrap_or("");
        let ip: Ipv4Addr = text
            .trim()
            .parse()
            .map_err(|_| Error::unexpected(Protocol::Upnp, format!("external address {text:?}")))?;
        if ip.is_unspecified() || ip.is_loopback() || external_port == 0 {
            return Err(Error::unexpected(
                Protocol::Upnp,
                format!("mapping to {ip}:{external_port}"),
            ));
        }
        if lease == 0 {
            debug!("the UPnP device grants only permanent leases; renewing on our schedule anyway");
        }
        Ok(Mapping {
            protocol: Protocol::Upnp,
            external: SocketAddrV4::new(ip, external_port),
            internal: SocketAddrV4::new(net.local, internal),
            gateway: net.gateway,
            lifetime: scheduled(c.lifetime_secs()),
            obtained: Instant::now(),
            detail: Detail::Upnp {
                control: cp.clone(),
            },
        })
    }

    /// `AddPortMapping` or `AddAnyPortMapping` for `port`; retried once with a permanent
    /// lease (0) when the device refuses timed ones (725, or 402 as some do), which sets
    /// `lease` to 0. Returns the external port mapped.
    async fn add_port_mapping(
        &self,
        net: Net,
        cp: &ControlPoint,
        action: &'static str,
        port: u16,
        lease: &mut u32,
    ) -> Result<u16> {
        let c = &self.config;
        let port_s = port.to_string();
        let internal_s = c.internal_port.to_string();
        let client_s = net.local.to_string();
        for attempt in 0..2 {
            let lease_s = lease.to_string();
            let args = [
                ("NewRemoteHost", ""),
                ("NewExternalPort", port_s.as_str()),
                ("NewProtocol", "UDP"),
                ("NewInternalPort", internal_s.as_str()),
                ("NewInternalClient", client_s.as_str()),
                ("NewEnabled", "1"),
                ("NewPortMappingDescription", c.description.as_str()),
                ("NewLeaseDuration", lease_s.as_str()),
            ];
            match self.soap_call(net, cp, action, &args).await {
                Ok(out) => {
                    if action == "AddAnyPortMapping" {
                        let text = soap::arg(&out, "NewReservedPort").unwrap_or("");
                        return text.trim().parse().map_err(|_| {
                            Error::unexpected(Protocol::Upnp, format!("reserved port {text:?}"))
                        });
                    }
                    return Ok(port);
                }
                Err(Error::UpnpFault { fault, .. })
                    if attempt == 0
                        && *lease != 0
                        && matches!(
                            fault.code,
                            Some(soap::codes::ONLY_PERMANENT_LEASES | soap::codes::INVALID_ARGS)
                        ) =>
                {
                    debug!(%fault, "UPnP device refuses a timed lease; asking for a permanent one");
                    *lease = 0;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::unexpected(Protocol::Upnp, "lease retry exhausted"))
    }

    async fn release_upnp(&self, cp: &ControlPoint, m: &Mapping) -> Result<()> {
        let net = Net {
            gateway: m.gateway,
            local: *m.internal.ip(),
        };
        let port = m.external.port().to_string();
        let args = [
            ("NewRemoteHost", ""),
            ("NewExternalPort", port.as_str()),
            ("NewProtocol", "UDP"),
        ];
        match self.soap_call(net, cp, "DeletePortMapping", &args).await {
            Ok(_) => Ok(()),
            // 714 NoSuchEntryInArray: already gone.
            Err(Error::UpnpFault { fault, .. }) if fault.code == Some(714) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn soap_call(
        &self,
        net: Net,
        cp: &ControlPoint,
        action: &'static str,
        args: &[(&str, &str)],
    ) -> Result<Vec<(String, String)>> {
        let req = soap::request(
            &cp.control.authority(),
            &cp.control.path,
            cp.kind.urn(),
            action,
            args,
        );
        let resp = self.http_exchange(net, &cp.control, &req).await?;
        match soap::parse_response(resp.head.status, &resp.body, action)? {
            soap::Outcome::Ok(out) => Ok(out),
            soap::Outcome::Fault(fault) => Err(Error::UpnpFault { action, fault }),
        }
    }

    /// One HTTP exchange with the gateway (whatever host `url` names), bounded in time and
    /// size.
    async fn http_exchange(
        &self,
        net: Net,
        url: &HttpUrl,
        request: &[u8],
    ) -> Result<http::Response> {
        let c = &self.config;
        let to = SocketAddr::from(SocketAddrV4::new(net.gateway, url.port));
        let limit = c.http_body_limit;
        let work = async {
            let stream = tcp_socket(c.socket_mark)?
                .connect(to)
                .await
                .map_err(|e| Error::io(format!("connecting to {to}"), e))?;
            let mut stream = stream;
            stream
                .write_all(request)
                .await
                .map_err(|e| Error::io(format!("sending to {to}"), e))?;
            let mut buf: Vec<u8> = Vec::with_capacity(4096);
            let mut chunk = vec![0u8; 8192];
            loop {
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| Error::io(format!("reading from {to}"), e))?;
                buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
                if let Some(resp) = http::parse_response(&buf, n == 0, limit)? {
                    return Ok(resp);
                }
                if buf.len() > http::MAX_HEAD.saturating_add(limit).saturating_add(8192) {
                    return Err(Error::Http(http::Error::BodyTooLarge(limit)));
                }
            }
        };
        match tokio::time::timeout(c.http_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                protocol: Protocol::Upnp,
                gateway: net.gateway,
                after: c.http_timeout,
            }),
        }
    }
}

/// What a PCP MAP exchange accepts: answers carrying our nonce.
fn pcp_answer(data: &[u8], nonce: pcp::Nonce) -> Option<Result<(pcp::MapBody, u32, u32)>> {
    match pcp::parse_response(data) {
        Ok(r) if r.opcode == pcp::OP_MAP => match r.map {
            Some(body) if body.nonce == nonce => {
                if r.result == pcp::ResultCode::Success {
                    Some(Ok((body, r.lifetime, r.epoch)))
                } else {
                    Some(Err(Error::PcpRefused(r.result)))
                }
            }
            Some(_) => {
                debug!("PCP answer for another nonce");
                None
            }
            // An error without the body cannot be matched to our request, but nothing else
            // is asked on this socket.
            None => Some(Err(Error::PcpRefused(r.result))),
        },
        Ok(r) if r.result == pcp::ResultCode::UnsupportedVersion => {
            Some(Err(Error::PcpRefused(r.result)))
        }
        Ok(_) => None,
        Err(e) => {
            // A NAT-PMP gateway answers a PCP request with a NAT-PMP "unsupported version".
            if let Ok(natpmp::Response::Refused { code, .. }) = natpmp::parse_response(data) {
                return Some(Err(Error::NatPmpRefused(code)));
            }
            debug!(error = %e, "malformed PCP answer");
            None
        }
    }
}

/// The lifetime the schedule uses for one granted.
fn scheduled(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs)).min(MAX_SCHEDULED_LIFETIME)
}

/// Sends `packets` to `to` and feeds each datagram from `to` to `accept` until it returns
/// `Some`; resends after [`Config::udp_timeout`], doubling, [`Config::udp_attempts`] times.
/// Returns the value and when the answer arrived.
async fn exchange<T>(
    sock: &UdpSocket,
    to: SocketAddr,
    packets: &[&[u8]],
    c: &Config,
    protocol: Protocol,
    gateway: Ipv4Addr,
    mut accept: impl FnMut(&[u8]) -> Option<Result<T>>,
) -> Result<(T, Instant)> {
    let mut wait = c.udp_timeout;
    let mut waited = Duration::ZERO;
    let mut buf = vec![0u8; 1500];
    for _ in 0..c.udp_attempts.max(1) {
        for p in packets {
            sock.send_to(p, to)
                .await
                .map_err(|e| Error::io(format!("{protocol}: sending to {to}"), e))?;
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, sock.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    // ICMP port unreachable: nothing listens on the gateway.
                    return Err(Error::Timeout {
                        protocol,
                        gateway,
                        after: waited + wait.saturating_sub(left),
                    });
                }
                Ok(Err(e)) => return Err(Error::io(format!("{protocol}: receiving"), e)),
                Ok(Ok((n, from))) => {
                    if from != to {
                        continue;
                    }
                    if let Some(r) = accept(buf.get(..n).unwrap_or(&[])) {
                        return r.map(|v| (v, Instant::now()));
                    }
                }
            }
        }
        waited += wait;
        wait = wait.saturating_mul(2);
    }
    Err(Error::Timeout {
        protocol,
        gateway,
        after: waited,
    })
}

async fn send_quietly(sock: &UdpSocket, data: &[u8], to: SocketAddr) {
    if let Err(e) = sock.send_to(data, to).await {
        debug!(%to, error = %e, "probe send failed");
    }
}

fn set_mark(socket: &socket2::Socket, mark: u32) -> Result<()> {
    if mark == 0 {
        return Ok(());
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        socket
            .set_mark(mark)
            .map_err(|e| Error::io(format!("setting SO_MARK {mark:#x}"), e))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = socket;
        Err(Error::io(
            format!("setting SO_MARK {mark:#x}"),
            io::Error::new(io::ErrorKind::Unsupported, "SO_MARK exists only on Linux"),
        ))
    }
}

/// A UDP socket on `local:0`, marked, multicast leaving through `local`'s interface.
fn udp_socket(local: Ipv4Addr, mark: u32) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol as P, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(P::UDP))
        .map_err(|e| Error::io("creating a UDP socket", e))?;
    set_mark(&s, mark)?;
    s.set_nonblocking(true)
        .map_err(|e| Error::io("making a UDP socket non-blocking", e))?;
    s.bind(&SocketAddr::from(SocketAddrV4::new(local, 0)).into())
        .map_err(|e| Error::io(format!("binding a UDP socket to {local}"), e))?;
    if !local.is_loopback() {
        // Best effort: SSDP multicast leaves through the LAN interface.
        if let Err(e) = s.set_multicast_if_v4(&local) {
            debug!(error = %e, "IP_MULTICAST_IF");
        }
    }
    UdpSocket::from_std(s.into()).map_err(|e| Error::io("registering a UDP socket", e))
}

fn tcp_socket(mark: u32) -> Result<TcpSocket> {
    use socket2::{Domain, Protocol as P, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(P::TCP))
        .map_err(|e| Error::io("creating a TCP socket", e))?;
    set_mark(&s, mark)?;
    s.set_nonblocking(true)
        .map_err(|e| Error::io("making a TCP socket non-blocking", e))?;
    Ok(TcpSocket::from_std_stream(s.into()))
}

/// The source address the kernel would use towards `gateway` (routing with `mark`).
fn local_ip_towards(gateway: Ipv4Addr, port: u16, mark: u32) -> Result<Ipv4Addr> {
    use socket2::{Domain, Protocol as P, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(P::UDP))
        .map_err(|e| Error::io("creating a UDP socket", e))?;
    set_mark(&s, mark)?;
    let to = SocketAddr::from(SocketAddrV4::new(gateway, port));
    s.connect(&to.into())
        .map_err(|e| Error::io(format!("finding the local address towards {gateway}"), e))?;
    let local = s
        .local_addr()
        .map_err(|e| Error::io("reading the local address", e))?;
    match local.as_socket() {
        Some(SocketAddr::V4(a)) => Ok(*a.ip()),
        _ => Err(Error::io(
            "reading the local address",
            io::Error::other("not an IPv4 address"),
        )),
    }
}

fn random_nonce() -> Result<pcp::Nonce> {
    use rand_core::RngCore;
    let mut n = [0u8; 12];
    rand_core::OsRng
        .try_fill_bytes(&mut n)
        .map_err(|e| Error::Random(e.to_string()))?;
    Ok(n)
}

/// A random unprivileged port, 1024 to 65535.
fn random_port() -> Result<u16> {
    use rand_core::RngCore;
    let mut b = [0u8; 2];
    rand_core::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| Error::Random(e.to_string()))?;
    let v = u16::from_be_bytes(b);
    Ok(1024 + v % (u16::MAX - 1024))
}

//! The data plane as the core composes it: the kernel TUN device (`tstun-wrap`), the packet
//! filter as the engine's hooks, the engine (`wg-engine`), and with the `osrouter` tag the
//! host's addresses, routes and rules.
//!
//! Each netmap becomes three plain values here: the engine's [`engine::Config`] (peers, their
//! keys, endpoints, home regions and AllowedIPs; the DERP map), the filter's compiled rules,
//! and the router's addresses and routes. The packet path itself never passes through here.
//!
//! AllowedIPs follow Go's rules for a node that accepts no routes and uses no exit node (the
//! prefs for those come with issue 6): a peer's own addresses always; its other prefixes
//! (subnet routes, exit routes) are not routed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tailcfg::IpPrefix;
use tailcfg::key::{DiscoPrivate, NodePrivate, NodePublic};
use tokio::sync::watch;
use tstun_wrap::filter::{Filter, FlowConfig, Rules};
use tstun_wrap::hooks::{self, Chain};
use tstun_wrap::tun::{Tun, TunConfig};
use wg_engine::engine::{self, Device, Hooks, LocalInfo, Outbound, PeerSpec};

pub use wg_engine::derp::dial::DialOptions;
pub use wg_engine::engine::{PingResult, Status as EngineStatus};

/// How the data plane starts.
#[derive(Debug, Clone)]
pub struct Options {
    /// The TUN device.
    pub tun: TunConfig,
    /// UDP port (0 picks one).
    pub port: u16,
    /// The disco key of this run (the same the control client announces).
    pub disco: DiscoPrivate,
    /// How DERP servers are dialed.
    pub derp: DialOptions,
    /// The resolv.conf `--accept-dns` manages (builds with `dns`); `None`: never touch one.
    pub resolv_conf: Option<std::path::PathBuf>,
}

impl Options {
    /// The daemon's options: TUN `name` with Tailscale's MTU, UDP `port`, a new disco key,
    /// and DERP dialing as the environment says (`TS_DEBUG_USE_DERP_HTTP`).
    pub fn new(name: &str, port: u16) -> Self {
        Options {
            tun: TunConfig {
                name: name.to_string(),
                mtu: tstun_wrap::tun::DEFAULT_MTU,
            },
            port,
            disco: DiscoPrivate::generate(),
            derp: DialOptions::from_env(),
            resolv_conf: Some(std::path::PathBuf::from("/etc/resolv.conf")),
        }
    }
}

struct TunDevice(Tun);

impl Device for TunDevice {
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = std::io::Result<usize>> + Send {
        self.0.recv(buf)
    }
    fn send(&self, packet: &[u8]) -> impl Future<Output = std::io::Result<usize>> + Send {
        self.0.send(packet)
    }
}

/// The engine's hooks: `tstun-wrap`'s chain (service-address intercept, packet filter).
pub struct FilterHooks {
    chain: Chain,
}

impl Hooks for FilterHooks {
    fn outbound(&mut self, packet: &[u8], now: Instant) -> Outbound {
        match self.chain.outbound(packet, now) {
            hooks::Outbound::Send => Outbound::Send,
            hooks::Outbound::Drop => Outbound::Drop,
            hooks::Outbound::Intercepted => Outbound::Consumed,
        }
    }

    fn inbound(&mut self, _peer: &NodePublic, packet: &[u8], now: Instant) -> bool {
        self.chain.inbound(packet, now)
    }

    fn poll_reply(&mut self) -> Option<Vec<u8>> {
        self.chain.poll_reply()
    }
}

/// Our TSMP pings waiting for their pong, by their 8 bytes of data.
type TsmpWaiters = Arc<Mutex<HashMap<[u8; 8], tokio::sync::oneshot::Sender<Instant>>>>;

type RulesKey = (
    std::collections::BTreeMap<String, Vec<tailcfg::FilterRule>>,
    Vec<IpPrefix>,
    bool,
);

#[derive(Default)]
struct Applied {
    rules_key: Option<RulesKey>,
    router: Option<(Vec<IpPrefix>, Vec<IpPrefix>)>,
}

/// The running data plane.
pub struct DataPlane {
    engine: Arc<engine::Handle<FilterHooks>>,
    /// Quad-100: the netstack and (with `dns`) MagicDNS.
    #[cfg(feature = "netstack")]
    quad100: crate::dns::Quad100,
    /// `--accept-dns` (`Prefs.CorpDNS`), for the resolver's configuration.
    accept_dns: std::sync::atomic::AtomicBool,
    #[cfg(feature = "osrouter")]
    router: Mutex<Option<osrouter::Router>>,
    applied: tokio::sync::Mutex<Applied>,
    status: Arc<Mutex<Option<EngineStatus>>>,
    tsmp_waiters: TsmpWaiters,
    /// Our own addresses, from the last netmap (TSMP pings come from them).
    self_addrs: Mutex<Vec<IpAddr>>,
    tun_name: String,
    _poller: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("tun", &self.tun_name)
            .field("port", &self.engine.port())
            .finish_non_exhaustive()
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self._poller.abort();
    }
}

/// Tailscale's IPv4 range (CGNAT) and IPv6 ULA range: routed to the TUN device as two routes,
/// whatever the peer count, so a netmap change never touches the host's routes.
fn tailnet_ranges() -> Vec<IpPrefix> {
    [("100.64.0.0", 10), ("fd7a:115c:a1e0::", 48)]
        .into_iter()
        .filter_map(|(a, b)| IpPrefix::new(a.parse().ok()?, b))
        .collect()
}

impl DataPlane {
    /// Opens the TUN device and starts the engine with no peers. Needs `CAP_NET_ADMIN`.
    pub async fn start(opts: Options) -> Result<Arc<DataPlane>, String> {
        let tun = Tun::open(&opts.tun).map_err(|e| format!("cannot open the TUN device: {e}"))?;
        let tun_name = tun.name().to_string();
        #[cfg(feature = "osrouter")]
        let router = osrouter::Router::new(&tun_name)
            .map_err(|e| format!("cannot configure {tun_name}: {e}"))?;
        #[cfg(feature = "osrouter")]
        let mark = osrouter::BYPASS_MARK;
        #[cfg(not(feature = "osrouter"))]
        let mark = 0;
        #[cfg(not(feature = "osrouter"))]
        tracing::warn!(
            "built without osrouter: {tun_name} gets no addresses or routes from tailrouter; \
             configure them on the host"
        );
        let mut chain = Chain::new(Filter::new(Rules::allow_none(), FlowConfig::go()));
        let tsmp_waiters: TsmpWaiters = Arc::default();
        let w = Arc::clone(&tsmp_waiters);
        chain.set_pong_sink(Box::new(move |data, at| {
            if let Ok(mut g) = w.lock()
                && let Some(tx) = g.remove(&data)
            {
                let _ = tx.send(at);
            }
        }));
        #[cfg(feature = "netstack")]
        let intake = crate::dns::Intake::new();
        #[cfg(feature = "netstack")]
        chain.set_intercept(intake.hook());
        let hooks = FilterHooks { chain };
        let eopts = engine::Options {
            port: opts.port,
            disco: opts.disco,
            derp: opts.derp,
            socket_mark: mark,
        };
        let cfg = engine::Config {
            // A placeholder until the first netmap brings the node key.
            private_key: NodePrivate::generate(),
            peers: Vec::new(),
            derp_map: None,
        };
        let engine = engine::spawn(eopts, cfg, TunDevice(tun), hooks)
            .await
            .map_err(|e| format!("cannot start the engine: {e}"))?;
        let engine = Arc::new(engine);
        #[cfg(feature = "netstack")]
        let quad100 = crate::dns::Quad100::start(
            intake,
            crate::dns::EngineInjector(Arc::downgrade(&engine)),
            opts.resolv_conf.as_deref(),
        )?;
        #[cfg(not(feature = "netstack"))]
        let _ = &opts.resolv_conf;
        tracing::info!("data plane: {tun_name}, UDP port {}", engine.port());
        let status: Arc<Mutex<Option<EngineStatus>>> = Arc::new(Mutex::new(None));
        Ok(Arc::new_cyclic(|weak: &std::sync::Weak<DataPlane>| {
            let weak = weak.clone();
            let st = Arc::clone(&status);
            // Status is read by the LocalAPI synchronously: refresh a snapshot each second.
            let poller = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let Some(dp) = weak.upgrade() else { return };
                    if let Ok(s) = dp.engine.status().await
                        && let Ok(mut g) = st.lock()
                    {
                        *g = Some(s);
                    }
                }
            });
            DataPlane {
                engine,
                #[cfg(feature = "netstack")]
                quad100,
                accept_dns: std::sync::atomic::AtomicBool::new(true),
                #[cfg(feature = "osrouter")]
                router: Mutex::new(Some(router)),
                applied: tokio::sync::Mutex::new(Applied::default()),
                status,
                tsmp_waiters,
                self_addrs: Mutex::new(Vec::new()),
                tun_name,
                _poller: poller,
            }
        }))
    }

    /// Sets `--accept-dns` (`Prefs.CorpDNS`): on, it takes effect with the next netmap; off,
    /// the OS's DNS settings are put back at once.
    pub fn set_accept_dns(&self, on: bool) {
        self.accept_dns
            .store(on, std::sync::atomic::Ordering::Relaxed);
        if !on {
            self.dns_down();
        }
    }

    /// The node stops (`down`, logout): the OS's DNS settings are put back; the next netmap
    /// after `up` sets them again.
    pub fn dns_down(&self) {
        #[cfg(feature = "netstack")]
        self.quad100.close();
    }

    /// The UDP port in use.
    pub fn port(&self) -> u16 {
        self.engine.port()
    }

    /// Our endpoints and home DERP region, for the control client's MapRequests.
    pub fn local_info(&self) -> watch::Receiver<LocalInfo> {
        self.engine.local_info()
    }

    /// The last status snapshot (at most a second old).
    pub fn status(&self) -> Option<EngineStatus> {
        self.status.lock().ok().and_then(|g| g.clone())
    }

    /// A disco ping to the peer with `key`, waiting at most `limit`.
    pub async fn ping(&self, key: NodePublic, limit: Duration) -> Option<PingResult> {
        match tokio::time::timeout(limit, self.engine.ping(key)).await {
            Ok(Ok(r)) => r,
            _ => None,
        }
    }

    /// A TSMP ping to `dst` (a peer's address) through the tunnel, from our address of the
    /// same family; the round-trip time, or `None` after `limit`.
    pub async fn tsmp_ping(&self, dst: IpAddr, limit: Duration) -> Option<Duration> {
        let src = self
            .self_addrs
            .lock()
            .ok()?
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == dst.is_ipv4())?;
        let data: [u8; 8] = crate::control::random_u64().to_le_bytes();
        let packet = tstun_wrap::tsmp::ping_request(src, dst, data).ok()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tsmp_waiters.lock().ok()?.insert(data, tx);
        let sent = Instant::now();
        let r = if self.engine.inject(packet).await.is_ok() {
            tokio::time::timeout(limit, rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        if let Ok(mut g) = self.tsmp_waiters.lock() {
            g.remove(&data);
        }
        r.map(|at| at.saturating_duration_since(sent))
    }

    /// Applies a network map: engine peers, filter rules, host addresses and routes.
    pub async fn apply(&self, nm: &control_client::NetworkMap, key: &NodePrivate) {
        let Some(me) = nm.self_node.as_ref() else {
            return;
        };
        if let Ok(mut g) = self.self_addrs.lock() {
            *g = me.addresses.iter().map(|a| a.addr()).collect();
        }
        #[cfg(feature = "netstack")]
        self.quad100.set_inputs(crate::dns::DnsInputs::from_netmap(
            nm,
            self.accept_dns.load(std::sync::atomic::Ordering::Relaxed),
        ));
        let peers: Vec<PeerSpec> = nm
            .peers
            .values()
            .filter(|p| !p.key.is_zero())
            .map(|p| PeerSpec {
                key: p.key,
                disco: (!p.disco_key.is_zero()).then_some(p.disco_key),
                endpoints: p.endpoints.clone(),
                home_derp: p.home_derp,
                allowed_ips: peer_allowed_ips(p),
            })
            .collect();
        let cfg = engine::Config {
            private_key: key.clone(),
            peers,
            derp_map: nm.derp_map.clone().map(Arc::new),
        };
        if self.engine.set_config(cfg).await.is_err() {
            tracing::error!("the engine has stopped");
            return;
        }
        let mut applied = self.applied.lock().await;
        // Rules are recompiled only when the filter or our addresses change.
        let rules_key = Some((
            nm.packet_filters.clone(),
            me.addresses.clone(),
            nm.has_packet_filter,
        ));
        if rules_key != applied.rules_key {
            let (rules, errors) = if nm.has_packet_filter {
                Rules::compile_named(&nm.packet_filters, &me.addresses)
            } else {
                (Rules::allow_none(), Vec::new())
            };
            for e in &errors {
                tracing::warn!("packet filter: {e}");
            }
            tracing::debug!("packet filter: {} rules", rules.rule_count());
            let _ = self
                .engine
                .with_hooks(move |h| h.chain.set_rules(rules))
                .await;
            applied.rules_key = rules_key;
        }
        let want = (me.addresses.clone(), tailnet_ranges());
        if applied.router.as_ref() != Some(&want) {
            self.set_router(&want.0, &want.1);
            applied.router = Some(want);
        }
    }

    #[cfg(feature = "osrouter")]
    fn set_router(&self, addresses: &[IpPrefix], routes: &[IpPrefix]) {
        let Ok(mut g) = self.router.lock() else {
            return;
        };
        if let Some(r) = g.as_mut() {
            let cfg = osrouter::RouterConfig {
                addresses: addresses.to_vec(),
                routes: routes.to_vec(),
            };
            match r.set(&cfg) {
                Ok(()) => tracing::info!(
                    "{}: addresses {:?}",
                    self.tun_name,
                    addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                ),
                Err(e) => tracing::error!("{}: {e}", self.tun_name),
            }
        }
    }

    #[cfg(not(feature = "osrouter"))]
    fn set_router(&self, _addresses: &[IpPrefix], _routes: &[IpPrefix]) {}

    /// Removes what was added to the host (addresses, routes, rules). Called on shutdown.
    pub fn close(&self) {
        #[cfg(feature = "netstack")]
        self.quad100.close();
        #[cfg(feature = "osrouter")]
        if let Ok(mut g) = self.router.lock()
            && let Some(r) = g.take()
            && let Err(e) = r.close()
        {
            tracing::warn!("restoring the host's routing: {e}");
        }
    }
}

/// A peer's AllowedIPs for a node that accepts no routes and uses no exit node: the peer's
/// own addresses (Go's "always accepted" part).
fn peer_allowed_ips(p: &tailcfg::Node) -> Vec<IpPrefix> {
    let all = p.allowed_ips.as_ref().unwrap_or(&p.addresses);
    all.iter()
        .filter(|pfx| {
            p.addresses.contains(pfx)
                || (pfx.is_single_ip() && tailnet_ranges().iter().any(|r| r.contains(pfx.addr())))
        })
        .copied()
        .collect()
}

/// Whether `ip` is one of the node's or its peers' addresses (for `tailscale ping IP`).
pub fn peer_by_ip(nm: &control_client::NetworkMap, ip: IpAddr) -> Option<NodePublic> {
    nm.peers
        .values()
        .find(|p| p.addresses.iter().any(|a| a.addr() == ip))
        .map(|p| p.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_ips_keep_addresses_and_drop_routes() {
        let mut n = tailcfg::Node::default();
        let a: IpPrefix = "100.64.0.2/32".parse().unwrap();
        let a6: IpPrefix = "fd7a:115c:a1e0::2/128".parse().unwrap();
        let route: IpPrefix = "192.168.1.0/24".parse().unwrap();
        let exit: IpPrefix = "0.0.0.0/0".parse().unwrap();
        n.addresses = vec![a, a6];
        n.allowed_ips = Some(vec![a, a6, route, exit]);
        assert_eq!(peer_allowed_ips(&n), vec![a, a6]);
        n.allowed_ips = None;
        assert_eq!(peer_allowed_ips(&n), vec![a, a6]);
    }

    #[test]
    fn ranges_are_tailscale_s() {
        let r = tailnet_ranges();
        assert_eq!(r.len(), 2);
        assert!(r[0].contains("100.100.100.100".parse().unwrap()));
        assert!(r[1].contains("fd7a:115c:a1e0::53".parse().unwrap()));
    }
}

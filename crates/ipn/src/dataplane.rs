//! The data plane as the core composes it: the kernel TUN device (`tstun-wrap`), the packet
//! filter as the engine's hooks, the engine (`wg-engine`), and with the `osrouter` tag the
//! host's addresses, routes and rules.
//!
//! Each netmap becomes three plain values here: the engine's [`engine::Config`] (peers, their
//! keys, endpoints, home regions and AllowedIPs; the DERP map), the filter's compiled rules,
//! and the router's addresses and routes. The packet path itself never passes through here.
//!
//! AllowedIPs, host routes and the filter's local networks follow Go's rules for the routing
//! prefs (`--accept-routes`, `--exit-node`, `--advertise-routes`): [`crate::routing`]. With
//! osrouter the firewall (forwarding, SNAT, input rules) follows `--netfilter-mode` and its
//! companions. A change of those prefs re-applies the last netmap.

use crate::routing::{self, RoutePrefs};
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
    fn headroom(&self) -> usize {
        self.0.tx_headroom()
    }
    fn send_batch(
        &self,
        packets: &mut [Vec<u8>],
    ) -> impl Future<Output = std::io::Result<()>> + Send {
        self.0.send_batch(packets)
    }
}

/// A caller-provided TUN descriptor as the engine's device.
struct FdDevice(tstun_wrap::tun::FdTun);

impl Device for FdDevice {
    fn recv(&self, buf: &mut [u8]) -> impl Future<Output = std::io::Result<usize>> + Send {
        self.0.recv(buf)
    }
    fn send(&self, packet: &[u8]) -> impl Future<Output = std::io::Result<usize>> + Send {
        self.0.send(packet)
    }
    fn try_recv(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match self.0.try_recv(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
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

/// What the host was last told: addresses, routes into the device, routes kept local.
type RouterKey = (Vec<IpPrefix>, Vec<IpPrefix>, Vec<IpPrefix>);

#[derive(Default)]
struct Applied {
    rules_key: Option<RulesKey>,
    /// The rules in force, for the PeerAPI's access checks.
    #[cfg(feature = "peerapiserver")]
    rules: Option<Rules>,
    router: Option<RouterKey>,
    #[cfg(feature = "osrouter")]
    netfilter: Option<osrouter::NetfilterConfig>,
}

/// The exit node in use (its key and name), or why the one asked for is not in use.
pub type ExitState = Result<(NodePublic, String), String>;

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
    /// The routing prefs; the control driver re-applies its netmap when they change.
    route_prefs: watch::Sender<RoutePrefs>,
    /// The exit node, from the last netmap; `None` when none is asked for.
    exit: Mutex<Option<ExitState>>,
    /// The port-mapping task and what tells it to release its mapping and end.
    #[cfg(feature = "portmapper")]
    portmap: Mutex<Option<(Arc<tokio::sync::Notify>, tokio::task::JoinHandle<()>)>>,
    /// The PeerAPI server and whether its Hostinfo services changed since control was told.
    #[cfg(feature = "peerapiserver")]
    peerapi: Arc<crate::peerapi::PeerApi>,
    services_changed: std::sync::atomic::AtomicBool,
    /// Set by [`DataPlane::down`]: the next netmap is applied as if it were the first.
    forget_applied: std::sync::atomic::AtomicBool,
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

impl DataPlane {
    /// Opens the TUN device and starts the engine with no peers. Needs `CAP_NET_ADMIN`.
    pub async fn start(opts: Options) -> Result<Arc<DataPlane>, String> {
        let tun = Tun::open(&opts.tun).map_err(|e| format!("cannot open the TUN device: {e}"))?;
        let tun_name = tun.name().to_string();
        Self::start_with_device(opts, tun_name, TunDevice(tun)).await
    }

    /// Starts on a TUN device the caller opened ([`tstun_wrap::tun::FdTun`], see its
    /// contract); `opts.tun` is not used: the name comes from the device.
    pub async fn start_with_fd(
        opts: Options,
        fd: std::os::fd::OwnedFd,
    ) -> Result<Arc<DataPlane>, String> {
        let tun = tstun_wrap::tun::FdTun::from_fd(fd)
            .map_err(|e| format!("cannot use the given TUN descriptor: {e}"))?;
        let tun_name = tun.name().to_string();
        Self::start_with_device(opts, tun_name, FdDevice(tun)).await
    }

    /// Starts on any packet device: `device` carries the node's IP packets, `tun_name` is the
    /// host interface it stands for (osrouter puts addresses, routes and rules there, so with
    /// that tag it must exist). `opts.tun` is not used.
    pub async fn start_with_device<D: Device>(
        opts: Options,
        tun_name: String,
        device: D,
    ) -> Result<Arc<DataPlane>, String> {
        #[cfg(feature = "osrouter")]
        let router = osrouter::Router::new(&tun_name)
            .map_err(|e| format!("cannot configure {tun_name}: {e}"))?;
        let mark = crate::SOCKET_MARK;
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
            derp: opts.derp.with_socket_mark(mark),
            socket_mark: mark,
        };
        let cfg = engine::Config {
            // A placeholder until the first netmap brings the node key.
            private_key: NodePrivate::generate(),
            peers: Vec::new(),
            derp_map: None,
        };
        let engine = engine::spawn(eopts, cfg, device, hooks)
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
        #[cfg(feature = "portmapper")]
        let engine_for_pm = Arc::clone(&engine);
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
                route_prefs: watch::Sender::new(RoutePrefs::default()),
                exit: Mutex::new(None),
                #[cfg(feature = "portmapper")]
                portmap: Mutex::new(start_port_mapper(Arc::downgrade(&engine_for_pm))),
                #[cfg(feature = "peerapiserver")]
                peerapi: Arc::new(crate::peerapi::PeerApi::new()),
                services_changed: std::sync::atomic::AtomicBool::new(false),
                forget_applied: std::sync::atomic::AtomicBool::new(false),
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

    /// Sets the routing prefs; a change re-applies the netmap (through the control driver,
    /// which watches [`DataPlane::route_prefs_changed`]).
    pub fn set_route_prefs(&self, prefs: RoutePrefs) {
        self.route_prefs.send_if_modified(|cur| {
            let changed = *cur != prefs;
            *cur = prefs;
            changed
        });
    }

    /// A receiver that wakes when the routing prefs change.
    pub fn route_prefs_changed(&self) -> watch::Receiver<RoutePrefs> {
        self.route_prefs.subscribe()
    }

    /// The exit node in use, or why the one asked for is not in use; `None` when none is
    /// asked for.
    pub fn exit_node(&self) -> Option<ExitState> {
        self.exit.lock().ok().and_then(|g| g.clone())
    }

    /// The node stops (`down`, logout): the OS's DNS settings are put back; the next netmap
    /// after `up` sets them again.
    pub fn dns_down(&self) {
        #[cfg(feature = "netstack")]
        self.quad100.close();
    }

    /// `tailscale down`: the host's routing, firewall and DNS go back to how they were, the
    /// PeerAPI stops and the engine forgets its peers (nothing reaches the TUN device from
    /// them any more), as Go does. The data plane stays, and the next netmap (after `up`)
    /// installs everything again.
    pub fn down(&self) {
        self.dns_down();
        #[cfg(feature = "osrouter")]
        if let Ok(mut g) = self.router.lock()
            && let Some(r) = g.as_mut()
            && let Err(e) = r.down()
        {
            tracing::warn!("restoring the host's routing: {e}");
        }
        self.forget_applied
            .store(true, std::sync::atomic::Ordering::Relaxed);
        #[cfg(feature = "peerapiserver")]
        if self.peerapi.listen_on(&[]) {
            self.services_changed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Ok(mut g) = self.exit.lock() {
            *g = None;
        }
        let engine = Arc::clone(&self.engine);
        tokio::spawn(async move {
            let cfg = engine::Config {
                private_key: NodePrivate::generate(),
                peers: Vec::new(),
                derp_map: None,
            };
            let _ = engine.set_config(cfg).await;
            let _ = engine
                .with_hooks(|h| {
                    h.chain.set_rules(Rules::allow_none());
                    h.chain.set_open_ports(Vec::new());
                })
                .await;
        });
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
        let prefs = self.route_prefs.borrow().clone();
        let host = if prefs.exit_node_allow_lan_access || prefs.advertises_exit_node() {
            host_networks(&self.tun_name)
        } else {
            Vec::new()
        };
        let plan = routing::plan(nm, &prefs, &host);
        let peers: Vec<PeerSpec> = nm
            .peers
            .values()
            .filter(|p| !p.key.is_zero())
            .map(|p| PeerSpec {
                key: p.key,
                disco: (!p.disco_key.is_zero()).then_some(p.disco_key),
                endpoints: p.endpoints.clone(),
                home_derp: p.home_derp,
                allowed_ips: plan.allowed_ips.get(&p.key).cloned().unwrap_or_default(),
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
        if self
            .forget_applied
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            *applied = Applied::default();
        }
        // Rules are recompiled only when the filter or our local networks change.
        let rules_key = Some((
            nm.packet_filters.clone(),
            plan.local_nets.clone(),
            nm.has_packet_filter,
        ));
        if rules_key != applied.rules_key {
            let (rules, errors) = if nm.has_packet_filter {
                Rules::compile_named(&nm.packet_filters, &plan.local_nets)
            } else {
                (Rules::allow_none(), Vec::new())
            };
            for e in &errors {
                tracing::warn!("packet filter: {e}");
            }
            tracing::debug!("packet filter: {} rules", rules.rule_count());
            #[cfg(feature = "peerapiserver")]
            {
                applied.rules = Some(rules.clone());
            }
            let _ = self
                .engine
                .with_hooks(move |h| h.chain.set_rules(rules))
                .await;
            applied.rules_key = rules_key;
        }
        let exit = match (&plan.exit_node, &plan.exit_problem) {
            (Some(e), _) => Some(Ok(e.clone())),
            (None, Some(why)) => Some(Err(why.clone())),
            (None, None) => None,
        };
        if let Ok(mut g) = self.exit.lock()
            && *g != exit
        {
            match &exit {
                Some(Ok((_, name))) => tracing::info!("using exit node {name}"),
                Some(Err(why)) => tracing::warn!("{why}"),
                None if g.is_some() => tracing::info!("no exit node in use"),
                None => {}
            }
            *g = exit;
        }
        #[cfg(feature = "osrouter")]
        self.set_netfilter(&prefs, &mut applied);
        let want = (me.addresses.clone(), plan.routes, plan.local_routes);
        if applied.router.as_ref() != Some(&want) {
            self.set_router(&want);
            applied.router = Some(want);
        }
        drop(applied);
        #[cfg(feature = "peerapiserver")]
        self.update_peerapi(nm, me, &prefs).await;
    }

    /// The PeerAPI follows our addresses (now on the TUN device) and the netmap's peers and
    /// filter; the packet filter lets SYNs to its port in.
    #[cfg(feature = "peerapiserver")]
    async fn update_peerapi(
        &self,
        nm: &control_client::NetworkMap,
        me: &tailcfg::Node,
        prefs: &RoutePrefs,
    ) {
        let addrs: Vec<IpAddr> = me.addresses.iter().map(|a| a.addr()).collect();
        let rules = self.applied.lock().await.rules.clone();
        let view = crate::peerapi::View {
            self_user: me.user,
            peers: nm
                .peers
                .values()
                .flat_map(|p| p.addresses.iter().map(move |a| (a.addr(), p.user)))
                .collect(),
            offering_exit: prefs.advertises_exit_node(),
            filtered: nm
                .dns_config
                .as_ref()
                .map(|d| d.exit_node_filtered_set.clone())
                .unwrap_or_default(),
            rules,
            #[cfg(feature = "netstack")]
            nameservers: self.quad100.base_nameservers(),
            #[cfg(not(feature = "netstack"))]
            nameservers: Vec::new(),
        };
        self.peerapi.set_view(view);
        if self.peerapi.listen_on(&addrs) {
            let open = self.peerapi.open_ports();
            let _ = self
                .engine
                .with_hooks(move |h| h.chain.set_open_ports(open))
                .await;
            self.services_changed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The services to announce in Hostinfo (the PeerAPI's ports).
    pub fn services(&self) -> Vec<tailcfg::Service> {
        #[cfg(feature = "peerapiserver")]
        return self.peerapi.services();
        #[cfg(not(feature = "peerapiserver"))]
        Vec::new()
    }

    /// Whether [`DataPlane::services`] changed since the last call (control must be told).
    pub fn take_services_changed(&self) -> bool {
        self.services_changed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// The firewall settings the prefs ask for, applied when they change.
    #[cfg(feature = "osrouter")]
    fn set_netfilter(&self, prefs: &RoutePrefs, applied: &mut Applied) {
        let mode = match prefs.netfilter_mode {
            0 => osrouter::NetfilterMode::Off,
            1 => osrouter::NetfilterMode::NoDivert,
            _ => osrouter::NetfilterMode::On,
        };
        let backend = match prefs.netfilter_kind.as_str() {
            "nftables" => osrouter::NetfilterBackend::Nftables,
            // Without the tag a stored `iptables` is ignored (a health line says so).
            "iptables" if crate::tags::HAS_IPTABLES => osrouter::NetfilterBackend::Iptables,
            _ => osrouter::NetfilterBackend::Auto,
        };
        let cfg = osrouter::NetfilterConfig {
            mode,
            backend,
            snat_subnet_routes: prefs.snat_subnet_routes,
            stateful_filtering: prefs.stateful_filtering,
            magicsock_port: self.engine.port(),
            ipv6: true,
        };
        if applied.netfilter == Some(cfg) {
            return;
        }
        let Ok(mut g) = self.router.lock() else {
            return;
        };
        if let Some(r) = g.as_mut() {
            match r.set_netfilter(&cfg) {
                Ok(()) => tracing::info!(
                    "firewall: mode {}, back-end {}, SNAT {}, stateful filtering {}",
                    cfg.mode,
                    r.netfilter_backend()
                        .map_or_else(|| "none".to_string(), |b| b.to_string()),
                    if cfg.snat_subnet_routes { "on" } else { "off" },
                    if cfg.stateful_filtering { "on" } else { "off" },
                ),
                Err(e) => tracing::error!("firewall: {e}"),
            }
        }
        // Recorded even after a failure: the same settings are not retried on every netmap.
        applied.netfilter = Some(cfg);
    }

    #[cfg(feature = "osrouter")]
    fn set_router(&self, (addresses, routes, local): &RouterKey) {
        let Ok(mut g) = self.router.lock() else {
            return;
        };
        if let Some(r) = g.as_mut() {
            let cfg = osrouter::RouterConfig {
                addresses: addresses.clone(),
                routes: routes.clone(),
                local_routes: local.clone(),
            };
            let show = |v: &[IpPrefix]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
            match r.set(&cfg) {
                Ok(()) => tracing::info!(
                    "{}: addresses {:?}, routes {:?}, kept local {:?}",
                    self.tun_name,
                    show(addresses),
                    show(routes),
                    show(local),
                ),
                Err(e) => tracing::error!("{}: {e}", self.tun_name),
            }
        }
    }

    #[cfg(not(feature = "osrouter"))]
    fn set_router(&self, (_, routes, _): &RouterKey) {
        if routes.len() > routing::tailnet_ranges().len() {
            tracing::warn!(
                "built without osrouter: accepted routes and exit-node routes must be set \
                 on the host by hand"
            );
        }
    }

    /// Releases the port mapping (if any) at the gateway, waiting at most 5 s. Called on
    /// shutdown, before [`DataPlane::close`].
    pub async fn stop_port_mapping(&self) {
        #[cfg(feature = "portmapper")]
        {
            let task = self.portmap.lock().ok().and_then(|mut g| g.take());
            if let Some((stop, task)) = task {
                stop.notify_one();
                if tokio::time::timeout(Duration::from_secs(5), task)
                    .await
                    .is_err()
                {
                    tracing::warn!("port mapping: not released within 5 s");
                }
            }
        }
    }

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

/// The host's interface addresses with their prefix lengths, the TUN device left out
/// (osrouter reads them; without it an exit node filters as if the host had no networks).
/// Only the exit-node jobs need them: none in builds without `useexitnode` (LAN access) and
/// `advertiseexitnode` (the guest-Wi-Fi set).
fn host_networks(tun: &str) -> Vec<IpPrefix> {
    #[cfg(all(
        feature = "osrouter",
        any(feature = "useexitnode", feature = "advertiseexitnode")
    ))]
    return osrouter::ifaddrs::interface_prefixes(tun);
    #[cfg(not(all(
        feature = "osrouter",
        any(feature = "useexitnode", feature = "advertiseexitnode")
    )))]
    {
        let _ = tun;
        Vec::new()
    }
}

/// Whether the port mapper is turned off (`TS_DISABLE_PORTMAPPER`, as in Go).
#[cfg(feature = "portmapper")]
fn port_mapper_disabled() -> bool {
    let v = std::env::var("TS_DISABLE_PORTMAPPER").unwrap_or_default();
    matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// Starts keeping a port mapping for the engine's UDP port at the default gateway (NAT-PMP,
/// PCP, then UPnP); its external endpoint goes to the engine, which reports it to control.
/// `None` when turned off.
#[cfg(feature = "portmapper")]
fn start_port_mapper(
    engine: std::sync::Weak<engine::Handle<FilterHooks>>,
) -> Option<(Arc<tokio::sync::Notify>, tokio::task::JoinHandle<()>)> {
    if port_mapper_disabled() {
        tracing::info!("port mapping: off (TS_DISABLE_PORTMAPPER)");
        return None;
    }
    let port = engine.upgrade()?.port();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let mut cfg = portmapper::Config::new(port);
        cfg.socket_mark = crate::SOCKET_MARK;
        let mut client = portmapper::Client::new(cfg);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<std::net::SocketAddr>>();
        let weak = engine.clone();
        let forward = tokio::spawn(async move {
            while let Some(a) = rx.recv().await {
                let Some(e) = weak.upgrade() else { return };
                match a {
                    Some(a) => tracing::info!("port mapping: external endpoint {a}"),
                    None => tracing::info!("port mapping: lost"),
                }
                let _ = e.set_port_mapping(a).await;
            }
        });
        let r = client
            .maintain(stopped.notified(), |m| {
                let _ = tx.send(m.map(|m| std::net::SocketAddr::V4(m.external)));
            })
            .await;
        if let Err(e) = r {
            tracing::debug!("port mapping: {e}");
        }
        drop(tx);
        let _ = forward.await;
    });
    Some((stop, task))
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
    fn host_networks_follow_the_build() {
        let nets = host_networks("no-such-tun");
        let reads = cfg!(all(
            feature = "osrouter",
            any(feature = "useexitnode", feature = "advertiseexitnode")
        ));
        assert_eq!(nets.is_empty(), !reads, "{nets:?}");
    }
}

//! Quad-100 as the core composes it: the userspace stack (`netstack`) fed by the TUN hook's
//! intercept, and, in builds with the `dns` tag, MagicDNS (`magicdns`) answering the queries
//! it hands out.
//!
//! One tokio task owns the [`netstack::Netstack`] and the [`magicdns::answer::Resolver`]: it
//! takes intercepted packets from a bounded channel (the hook never waits; a full channel
//! drops, as a full NIC queue would), answers local names at once, sends the rest to the
//! upstream resolvers on tasks of their own (the forwarder bounds how many), and writes the
//! stack's packets back to the TUN device through the engine's inbound injection.
//!
//! A build with `netstack` and without `dns` has nothing to answer DNS with: its queries are
//! dropped unanswered (the client times out, as it would against a host with no server), and
//! status says so ([`NO_DNS_HEALTH`]).

use std::net::IpAddr;
use std::time::Instant;
use tokio::sync::{mpsc, watch};

/// Intercepted packets waiting for the task before new ones are dropped.
const QUEUE: usize = 512;

/// The status line of a build that has the netstack but not MagicDNS.
pub const NO_DNS_HEALTH: &str = "this build has no dns tag: 100.100.100.100 does not answer DNS \
     (MagicDNS needs the dns tag; build with --add=dns)";

/// The DNS-relevant part of a network map, as the resolver's configuration is built from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsInputs {
    /// The self node's FQDN (`gw.tailnet.ts.net.`), empty before the first netmap.
    pub self_fqdn: String,
    /// Self and every peer: FQDN and addresses.
    pub hosts: Vec<(String, Vec<IpAddr>)>,
    /// The netmap's DNS settings.
    pub config: Option<tailcfg::DnsConfig>,
    /// `--accept-dns` (`Prefs.CorpDNS`).
    pub accept_dns: bool,
    /// The OS's own nameservers (the resolv.conf from before tailrouter), used for names no
    /// route covers when control gives no resolvers.
    pub base_nameservers: Vec<IpAddr>,
}

impl DnsInputs {
    /// The inputs of a network map.
    pub fn from_netmap(nm: &control_client::NetworkMap, accept_dns: bool) -> Self {
        let host = |n: &tailcfg::Node| {
            (
                n.name.clone(),
                n.addresses.iter().map(|a| a.addr()).collect::<Vec<_>>(),
            )
        };
        let mut hosts: Vec<(String, Vec<IpAddr>)> = nm.self_node.iter().map(host).collect();
        hosts.extend(nm.peers.values().filter(|p| !p.name.is_empty()).map(host));
        DnsInputs {
            self_fqdn: nm
                .self_node
                .as_ref()
                .map(|n| n.name.clone())
                .unwrap_or_default(),
            hosts,
            config: nm.dns_config.clone(),
            accept_dns,
            base_nameservers: Vec::new(),
        }
    }
}

/// The running quad-100 service.
pub struct Quad100 {
    inputs: watch::Sender<DnsInputs>,
    task: tokio::task::JoinHandle<()>,
    /// The OS side (`--accept-dns`, direct mode), in builds with `dns`.
    #[cfg(feature = "dns")]
    os: Option<std::sync::Mutex<os::OsDns>>,
}

impl std::fmt::Debug for Quad100 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quad100").finish_non_exhaustive()
    }
}

impl Drop for Quad100 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the hook puts intercepted packets; made before the engine, which the task needs.
pub struct Intake {
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<Vec<u8>>,
}

impl Intake {
    /// A new, empty intake.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Intake { tx, rx }
    }

    /// The closure for the hook chain's intercept: copies the packet into the queue, never
    /// waits; a full queue drops it.
    pub fn hook(&self) -> tstun_wrap::hooks::Intercept {
        let tx = self.tx.clone();
        Box::new(move |p: &[u8]| {
            if tx.try_send(p.to_vec()).is_err() {
                tracing::debug!("quad-100: queue full, packet dropped");
            }
        })
    }
}

impl Default for Intake {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes the stack's packets back to the host.
pub trait Injector: Send + Sync + 'static {
    /// Hands one packet to the TUN device.
    fn inject(&self, packet: Vec<u8>) -> impl std::future::Future<Output = bool> + Send;
}

impl Quad100 {
    /// Starts the service on the intercepted packets of `intake`, writing with `out`. With
    /// the `dns` tag and a `resolv_conf` path, `--accept-dns` manages that file.
    pub fn start<I: Injector>(
        intake: Intake,
        out: I,
        resolv_conf: Option<&std::path::Path>,
    ) -> Result<Quad100, String> {
        let stack = netstack::Netstack::new(netstack::Config::default())
            .map_err(|e| format!("quad-100: {e}"))?;
        let (inputs, inputs_rx) = watch::channel(DnsInputs::default());
        let task = tokio::spawn(run(stack, intake.rx, inputs_rx, out));
        #[cfg(not(feature = "dns"))]
        let _ = resolv_conf;
        Ok(Quad100 {
            inputs,
            task,
            #[cfg(feature = "dns")]
            os: resolv_conf.map(|p| std::sync::Mutex::new(os::OsDns::new(p))),
        })
    }

    /// A new network map (or prefs change): the resolver is rebuilt when its inputs changed,
    /// and the OS's DNS settings follow.
    pub fn set_inputs(&self, new: DnsInputs) {
        #[cfg(feature = "dns")]
        let mut new = new;
        #[cfg(feature = "dns")]
        if let Some(os) = &self.os
            && let Ok(mut os) = os.lock()
        {
            new.base_nameservers = os.update(&new);
        }
        self.inputs.send_if_modified(|cur| {
            if *cur == new {
                return false;
            }
            *cur = new;
            true
        });
    }

    /// The host's own nameservers (the resolv.conf from before tailrouter), as last read.
    pub fn base_nameservers(&self) -> Vec<IpAddr> {
        self.inputs.borrow().base_nameservers.clone()
    }

    /// Puts the OS's DNS settings back as they were (on down and on exit).
    pub fn close(&self) {
        #[cfg(feature = "dns")]
        if let Some(os) = &self.os
            && let Ok(mut os) = os.lock()
        {
            os.restore();
        }
    }
}

/// `--accept-dns` in direct mode: `/etc/resolv.conf` names quad-100 while the tailnet has
/// DNS settings for this node; the file from before is kept and put back.
#[cfg(feature = "dns")]
mod os {
    use super::DnsInputs;
    use magicdns::answer::{SERVICE_V4, SERVICE_V6};
    use magicdns::resolvconf::{BaseConfig, ResolvConf};
    use std::net::IpAddr;

    pub(super) struct OsDns {
        rc: ResolvConf,
        /// Whether our file is in place.
        applied: bool,
        /// The inputs last applied and the OS nameservers read then: a netmap that changes
        /// nothing DNS-relevant (most deltas) costs no file I/O.
        last: Option<(DnsInputs, Vec<IpAddr>)>,
    }

    impl OsDns {
        pub(super) fn new(path: &std::path::Path) -> Self {
            OsDns {
                rc: ResolvConf::new(path),
                applied: false,
                last: None,
            }
        }

        /// Applies or restores for `i`; returns the OS's own nameservers.
        pub(super) fn update(&mut self, i: &DnsInputs) -> Vec<IpAddr> {
            if let Some((seen, base)) = &self.last
                && seen == i
            {
                return base.clone();
            }
            let nameservers = self.apply(i);
            self.last = Some((i.clone(), nameservers.clone()));
            nameservers
        }

        fn apply(&mut self, i: &DnsInputs) -> Vec<IpAddr> {
            let base = self.rc.base_config().unwrap_or_else(|e| {
                tracing::debug!("{}: {e}", self.rc.path().display());
                BaseConfig::default()
            });
            match wanted(i, &base) {
                Some(search) => {
                    let servers = [IpAddr::V4(SERVICE_V4), IpAddr::V6(SERVICE_V6)];
                    match self.rc.apply(&servers, &search) {
                        Ok(()) => self.applied = true,
                        Err(e) => tracing::warn!(
                            "cannot write {}: {e}; the host does not use MagicDNS",
                            self.rc.path().display()
                        ),
                    }
                }
                None => self.restore(),
            }
            base.nameservers
        }

        /// Puts the original back; the next netmap applies ours again.
        pub(super) fn restore(&mut self) {
            self.last = None;
            if !self.applied {
                return;
            }
            match self.rc.restore() {
                Ok(()) => self.applied = false,
                Err(e) => tracing::warn!("cannot restore {}: {e}", self.rc.path().display()),
            }
        }
    }

    /// The search domains to write, or `None` when the OS should be left alone: no
    /// `--accept-dns`, or nothing from the tailnet (no MagicDNS, routes, resolvers or search
    /// domains). Tailscale's suffix first, then control's domains, then the OS's own.
    fn wanted(i: &DnsInputs, base: &BaseConfig) -> Option<Vec<String>> {
        let c = i.config.as_ref().filter(|_| i.accept_dns)?;
        let suffix = i
            .self_fqdn
            .trim_end_matches('.')
            .split_once('.')
            .map(|(_, s)| s.to_string())
            .filter(|_| c.proxied);
        if suffix.is_none() && c.routes.is_empty() && c.resolvers.is_empty() && c.domains.is_empty()
        {
            return None;
        }
        let mut search: Vec<String> = Vec::new();
        let all = suffix
            .into_iter()
            .chain(c.domains.iter().cloned())
            .chain(base.search.iter().cloned());
        for d in all {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if !d.is_empty() && !search.contains(&d) {
                search.push(d);
            }
        }
        Some(search)
    }
}

async fn run<I: Injector>(
    mut stack: netstack::Netstack,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut inputs: watch::Receiver<DnsInputs>,
    out: I,
) {
    let mut dns = Answerer::new(&inputs.borrow_and_update());
    loop {
        let deadline = stack
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(60));
        tokio::select! {
            p = rx.recv() => match p {
                Some(p) => stack.input(&p, Instant::now()),
                None => return,
            },
            r = inputs.changed() => match r {
                Ok(()) => dns.configure(&inputs.borrow_and_update()),
                Err(_) => return,
            },
            Some(done) = dns.next_forwarded() => dns.deliver(&mut stack, done),
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        // Everything already queued before the next wait: a burst costs one wake-up.
        while let Ok(p) = rx.try_recv() {
            stack.input(&p, Instant::now());
        }
        stack.poll(Instant::now());
        while let Some(req) = stack.poll_dns_request() {
            dns.handle(&mut stack, req);
        }
        while let Some(p) = stack.poll_transmit() {
            if !out.inject(p).await {
                return;
            }
        }
    }
}

#[cfg(feature = "dns")]
use answerer::Answerer;
#[cfg(not(feature = "dns"))]
use no_dns::Answerer;

/// Builds without `dns`: every query is dropped unanswered.
#[cfg(not(feature = "dns"))]
mod no_dns {
    use super::DnsInputs;

    pub(super) struct Answerer;

    /// Never produced: there is no forwarding without a resolver.
    pub(super) enum Never {}

    impl Answerer {
        pub(super) fn new(_: &DnsInputs) -> Self {
            Answerer
        }
        pub(super) fn configure(&mut self, _: &DnsInputs) {}
        pub(super) async fn next_forwarded(&mut self) -> Option<Never> {
            std::future::pending().await
        }
        pub(super) fn deliver(&mut self, _: &mut netstack::Netstack, n: Never) {
            match n {}
        }
        pub(super) fn handle(&mut self, stack: &mut netstack::Netstack, req: netstack::DnsRequest) {
            stack.drop_request(req.id);
        }
    }
}

#[cfg(feature = "dns")]
mod answerer {
    use super::DnsInputs;
    use magicdns::Upstream;
    use magicdns::answer::{Outcome, Resolver, Transport};
    use magicdns::config::{ConfigOptions, Host, ResolverConfig};
    use magicdns::forward::Forwarder;
    use netstack::{AnswerError, DnsRequest, Netstack, RequestId};
    use std::sync::Arc;
    use std::time::Instant;
    use tokio::sync::mpsc;

    /// An upstream's answer (or none) to a forwarded query.
    pub(super) struct Forwarded {
        id: RequestId,
        query: Vec<u8>,
        transport: Transport,
        response: Option<Vec<u8>>,
    }

    pub(super) struct Answerer {
        resolver: Resolver,
        forwarder: Arc<Forwarder>,
        done_tx: mpsc::Sender<Forwarded>,
        done_rx: mpsc::Receiver<Forwarded>,
    }

    fn config(i: &DnsInputs) -> Arc<ResolverConfig> {
        let hosts: Vec<Host> = i
            .hosts
            .iter()
            .map(|(fqdn, addrs)| Host {
                fqdn: fqdn.clone(),
                addrs: addrs.clone(),
            })
            .collect();
        let dns = i.config.clone().unwrap_or_default();
        let options = ConfigOptions {
            accept_dns: i.accept_dns,
            ..ConfigOptions::default()
        };
        let base = i
            .base_nameservers
            .iter()
            .map(|ip| Upstream::Plain(std::net::SocketAddr::new(*ip, 53)))
            .collect();
        Arc::new(ResolverConfig::new(&dns, &i.self_fqdn, &hosts, options).with_base_upstreams(base))
    }

    impl Answerer {
        pub(super) fn new(i: &DnsInputs) -> Self {
            let (done_tx, done_rx) = mpsc::channel(256);
            Answerer {
                resolver: Resolver::new(config(i)),
                forwarder: Arc::new(Forwarder::new(crate::dns::forwarder_options())),
                done_tx,
                done_rx,
            }
        }

        pub(super) fn configure(&mut self, i: &DnsInputs) {
            self.resolver.set_config(config(i));
        }

        pub(super) async fn next_forwarded(&mut self) -> Option<Forwarded> {
            self.done_rx.recv().await
        }

        pub(super) fn deliver(&mut self, stack: &mut Netstack, f: Forwarded) {
            let bytes = self.resolver.forwarded_over(
                &f.query,
                f.response.as_deref(),
                f.transport,
                Instant::now(),
            );
            send(stack, f.id, &bytes);
        }

        pub(super) fn handle(&mut self, stack: &mut Netstack, req: DnsRequest) {
            let transport = match req.transport {
                netstack::Transport::Udp => Transport::Udp,
                netstack::Transport::Tcp => Transport::Tcp,
            };
            match self.resolver.respond(&req.query, transport, Instant::now()) {
                Outcome::Answer(bytes) => send(stack, req.id, &bytes),
                Outcome::Drop => stack.drop_request(req.id),
                Outcome::Forward { upstreams, query } => {
                    let fw = Arc::clone(&self.forwarder);
                    let tx = self.done_tx.clone();
                    let id = req.id;
                    tokio::spawn(async move {
                        let response = match fw.forward(&query, &upstreams).await {
                            Ok(r) => Some(r),
                            Err(e) => {
                                tracing::debug!("quad-100: forwarding failed: {e}");
                                None
                            }
                        };
                        let _ = tx
                            .send(Forwarded {
                                id,
                                query,
                                transport,
                                response,
                            })
                            .await;
                    });
                }
            }
        }
    }

    /// Sends an answer; one too long for the request's packet goes out truncated (TC set) so
    /// the client retries over TCP.
    fn send(stack: &mut Netstack, id: RequestId, bytes: &[u8]) {
        if bytes.is_empty() {
            stack.drop_request(id);
            return;
        }
        match stack.answer(id, bytes) {
            Ok(()) => {}
            Err(AnswerError::TooLarge { max }) => {
                let short = magicdns::answer::truncate(bytes, max);
                if let Err(e) = stack.answer(id, &short) {
                    tracing::debug!("quad-100: truncated answer not sent: {e}");
                    stack.drop_request(id);
                }
            }
            Err(e) => tracing::debug!("quad-100: answer not sent: {e}"),
        }
    }
}

/// The forwarder's options: sockets marked so forwarded queries bypass the tunnel's policy
/// routing, as the engine's are.
#[cfg(feature = "dns")]
pub(crate) fn forwarder_options() -> magicdns::forward::ForwarderConfig {
    magicdns::forward::ForwarderConfig {
        socket_mark: (crate::SOCKET_MARK != 0).then_some(crate::SOCKET_MARK),
        ..Default::default()
    }
}

/// Writes through the engine's inbound injection. Weak: the data plane owns the engine, and
/// a task that outlived it must not keep it alive.
pub(crate) struct EngineInjector(
    pub(crate) std::sync::Weak<wg_engine::engine::Handle<crate::dataplane::FilterHooks>>,
);

impl Injector for EngineInjector {
    async fn inject(&self, packet: Vec<u8>) -> bool {
        match self.0.upgrade() {
            Some(e) => e.inject_inbound(packet).await.is_ok(),
            None => false,
        }
    }
}

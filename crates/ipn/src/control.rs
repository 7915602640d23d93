//! The control client driver: [`crate::backend::ControlClient`] implemented over the
//! `control-client` crate, running as tasks in the daemon's tokio runtime.
//!
//! One task owns the commands; each `start` runs a *session*: connect (ts2021), register,
//! then the map long-poll, folding every message into a [`NetworkMap`] and reporting a
//! [`NetMapSummary`] to the core. A failed connection or map stream (including the client's
//! 120 s silence watchdog for a stalled server) is retried with exponential backoff and
//! jitter, capped at 60 s, keeping the keys and the last network map.
//!
//! Registration follows Go's client (`controlclient/direct.go`):
//! - a stored node key is re-registered with `Auth` = nil: control answers with the node's
//!   state and nothing new is created, so a restart is the same node;
//! - with no node key, or when the key has expired (`NodeKeyExpired`, or a self node whose
//!   `KeyExpiry` has passed) and an auth key is given, or on an interactive login, a new node
//!   key is made, with `OldNodeKey` = the previous one, and registered with the auth key or
//!   interactively (`AuthURL`, then a `Followup` request that waits for the admin);
//! - only then are keys handed to the core to persist ([`ControlEvent::LoginFinished`]).
//!
//! Logout sends Go's logout: the node key with an `Expiry` in the past.
//!
//! Nothing here logs keys or the auth key: keys' `Debug` shows public halves only, and
//! errors from `control-client` never carry the auth key.

use crate::backend::{ControlClient, ControlEvent, ControlParams, NetMapSummary};
use crate::dataplane::DataPlane;
use crate::localapi::{PeerStatus, UserProfile};
use crate::state;
use control_client::{Applied, ConnectOptions, NetworkMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tailcfg::key::{DiscoPrivate, NodePrivate};
use tailcfg::{Hostinfo, MapRequest, NetInfo, RegisterAuth, RegisterRequest, Time};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The first retry delay after a failure.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Go's logout sentinel: an expiry in the past (`time.Unix(123, 0)`).
const LOGOUT_EXPIRY_UNIX: i64 = 123;

enum Cmd {
    Start(Box<ControlParams>),
    Login,
    Logout(Box<ControlParams>),
    Stop,
}

/// The control client of the daemon. Cheap to share; commands return at once.
pub struct Driver {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl Driver {
    /// Spawns the driver on `rt`. Its reports arrive on the returned receiver; the daemon
    /// hands each to [`crate::backend::LocalBackend::control_event`].
    pub fn spawn(
        rt: &tokio::runtime::Handle,
        version: &str,
    ) -> (Arc<Driver>, mpsc::UnboundedReceiver<ControlEvent>) {
        Self::spawn_with(rt, version, DiscoPrivate::generate(), None)
    }

    /// [`Driver::spawn`] with the data plane: each netmap is applied to it, and its
    /// endpoints and home DERP region go to control. `disco` must be the data plane's.
    pub fn spawn_with(
        rt: &tokio::runtime::Handle,
        version: &str,
        disco: DiscoPrivate,
        dataplane: Option<Arc<DataPlane>>,
    ) -> (Arc<Driver>, mpsc::UnboundedReceiver<ControlEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (etx, erx) = mpsc::unbounded_channel();
        let ctx = Ctx {
            events: etx,
            version: version.to_string(),
            log_id: random_hex32(),
            disco,
            registered: Arc::new(Mutex::new(None)),
            dataplane,
        };
        rt.spawn(command_loop(rx, ctx));
        (Arc::new(Driver { tx }), erx)
    }

    fn send(&self, c: Cmd) {
        if self.tx.send(c).is_err() {
            tracing::error!("control driver is gone");
        }
    }
}

impl ControlClient for Driver {
    fn start(&self, params: ControlParams) {
        self.send(Cmd::Start(Box::new(params)));
    }
    fn login_interactive(&self) {
        self.send(Cmd::Login);
    }
    fn logout(&self, params: ControlParams) {
        self.send(Cmd::Logout(Box::new(params)));
    }
    fn stop(&self) {
        self.send(Cmd::Stop);
    }
}

/// What every session shares.
#[derive(Clone)]
struct Ctx {
    events: mpsc::UnboundedSender<ControlEvent>,
    version: String,
    log_id: String,
    /// Disco keys are not persisted (as in Go): one per daemon run.
    disco: DiscoPrivate,
    /// The node key control knows us by, for logout.
    registered: Arc<Mutex<Option<NodePrivate>>>,
    /// The data plane, when the daemon runs one.
    dataplane: Option<Arc<DataPlane>>,
}

impl Ctx {
    fn emit(&self, ev: ControlEvent) {
        // The receiver goes away only at shutdown.
        let _ = self.events.send(ev);
    }

    fn set_registered(&self, k: Option<NodePrivate>) {
        if let Ok(mut g) = self.registered.lock() {
            *g = k;
        }
    }

    fn registered(&self) -> Option<NodePrivate> {
        self.registered.lock().ok().and_then(|g| g.clone())
    }

    fn take_registered(&self) -> Option<NodePrivate> {
        self.registered.lock().ok().and_then(|mut g| g.take())
    }
}

struct Session {
    params: ControlParams,
    task: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn command_loop(mut rx: mpsc::UnboundedReceiver<Cmd>, ctx: Ctx) {
    let mut session: Option<Session> = None;
    let mut last: Option<ControlParams> = None;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Start(p) => {
                let mut p = *p;
                carry_login(session.as_ref(), ctx.registered(), &mut p);
                // `up` on a node that is already connected with the same key and the same
                // Hostinfo changes nothing; new advertised routes or tags need a new session,
                // whose MapRequest tells control.
                let same = session.as_ref().is_some_and(|s| {
                    !s.task.is_finished()
                        && p.auth_key.is_none()
                        && s.params.control_url == p.control_url
                        && s.params.node_key.as_ref().map(NodePrivate::public)
                            == p.node_key.as_ref().map(NodePrivate::public)
                        && s.params.hostname == p.hostname
                        && s.params.advertise_routes == p.advertise_routes
                        && s.params.advertise_tags == p.advertise_tags
                });
                if same {
                    continue;
                }
                if let Some(k) = &p.node_key {
                    ctx.set_registered(Some(k.clone()));
                }
                // The old session (if any) is aborted before the new one starts.
                drop(session.take());
                last = Some(p.clone());
                session = Some(Session {
                    task: tokio::spawn(run_session(p.clone(), false, ctx.clone())),
                    params: p,
                });
            }
            Cmd::Login => {
                let Some(mut p) = last.clone() else {
                    ctx.emit(ControlEvent::Error(
                        "login: start the node first (`tailscale up`)".into(),
                    ));
                    continue;
                };
                // A node still waiting for its first login is already doing this.
                let waiting = session
                    .as_ref()
                    .is_some_and(|s| !s.task.is_finished() && s.params.node_key.is_none());
                if waiting {
                    continue;
                }
                p.auth_key = None;
                drop(session.take());
                session = Some(Session {
                    task: tokio::spawn(run_session(p.clone(), true, ctx.clone())),
                    params: p,
                });
            }
            Cmd::Stop => session = None,
            Cmd::Logout(p) => {
                session = None;
                last = None;
                // The key control knows us by: the one just registered, else the stored one
                // (a node that was stopped since the daemon started).
                let key = ctx.take_registered().or_else(|| p.node_key.clone());
                if let Some(key) = key {
                    tokio::spawn(logout(*p, key));
                }
            }
        }
    }
}

/// A `Start` without an auth key that only changes Hostinfo (a hostname, routes, tags) while
/// a login with an auth key is under way must not turn that login interactive. This is the
/// container case: the boot's own `up` (with `TS_HOSTNAME`, no key) can arrive just after an
/// `up --auth-key` typed by hand. Same server and same node key only. If the running session
/// has already registered a new key (`registered`, its login done but not yet seen by the
/// backend), the new session goes on with that key, so a single-use auth key is not spent
/// twice; otherwise it takes the auth key over.
fn carry_login(current: Option<&Session>, registered: Option<NodePrivate>, p: &mut ControlParams) {
    let Some(s) = current else { return };
    if p.auth_key.is_some() || s.params.auth_key.is_none() || s.task.is_finished() {
        return;
    }
    let public = |k: &Option<NodePrivate>| k.as_ref().map(NodePrivate::public);
    if s.params.control_url != p.control_url || public(&s.params.node_key) != public(&p.node_key) {
        return;
    }
    match registered {
        Some(k) if Some(k.public()) != public(&p.node_key) => p.node_key = Some(k),
        _ => p.auth_key.clone_from(&s.params.auth_key),
    }
}

async fn logout(p: ControlParams, key: NodePrivate) {
    let res = async {
        let conn = control_client::ControlClient::connect_with(
            &p.control_url,
            &p.machine_key,
            connect_options(),
        )
        .await?;
        let mut req = RegisterRequest::default();
        req.node_key = key.public();
        req.expiry = Some(Time::from_unix(LOGOUT_EXPIRY_UNIX));
        conn.register(req).await
    }
    .await;
    match res {
        Ok(_) => tracing::info!("logged out at the control server"),
        Err(e) => tracing::warn!("logout at the control server failed: {e}"),
    }
}

/// Exponential backoff with jitter.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
    /// The delay to wait now: the current step, scaled by a random 0.5..1.0.
    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let frac = 0.5 + (random_u64() % 1000) as f64 / 2000.0;
        d.mul_f64(frac)
    }
}

/// A task aborted when its guard goes (with the session attempt that started it).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a session attempt ended.
enum End {
    /// A login is needed; the core has been told. Stop retrying.
    NeedsLogin,
    /// Connection-level trouble: retry after a backoff.
    Retry(String),
}

/// Per-session mutable facts, kept across reconnects.
struct SessionState {
    node_key: Option<NodePrivate>,
    auth_key: Option<String>,
    force_login: bool,
    preferred_derp: i32,
    netmap: NetworkMap,
    backoff: Backoff,
}

async fn run_session(p: ControlParams, force_login: bool, ctx: Ctx) {
    let mut st = SessionState {
        node_key: p.node_key.clone(),
        auth_key: p.auth_key.clone(),
        force_login,
        preferred_derp: 0,
        netmap: NetworkMap::new(),
        backoff: Backoff::new(),
    };
    loop {
        match attempt(&p, &mut st, &ctx).await {
            End::NeedsLogin => return,
            End::Retry(why) => {
                let d = st.backoff.step();
                tracing::warn!("control: {why}; retrying in {:.1}s", d.as_secs_f64());
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// The OS's host name, for Hostinfo when the prefs name none.
fn os_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Go's GOARCH name for this build's architecture.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64",
        "mips64" => "mips64",
        other => other,
    }
}

fn hostinfo(p: &ControlParams, ctx: &Ctx, preferred_derp: i32) -> Hostinfo {
    let mut hi = Hostinfo::default();
    hi.ipn_version = format!("{}-tailrouter", ctx.version);
    hi.backend_log_id = ctx.log_id.clone();
    hi.os = "linux".into();
    // Go sends the kernel release here on Linux; there is no Go runtime to name (GoVersion
    // is left out), IPNVersion and GoArch say what we are.
    hi.os_version = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    hi.hostname = if p.hostname.is_empty() {
        os_hostname()
    } else {
        p.hostname.clone()
    };
    hi.go_arch = go_arch().into();
    hi.machine = std::env::consts::ARCH.into();
    hi.no_logs_no_support = true;
    hi.routable_ips = p
        .advertise_routes
        .iter()
        .filter_map(|r| r.to_string().parse().ok())
        .collect();
    hi.request_tags = p.advertise_tags.clone();
    hi.services = ctx
        .dataplane
        .as_ref()
        .map(|d| d.services())
        .unwrap_or_default();
    let mut ni = NetInfo::default();
    // Until netcheck exists (issue 4) we cannot measure DERP latency, so the home region is
    // the lowest-numbered region of the DERP map: deterministic, the same for every restart,
    // and present in the map. Without a PreferredDERP headscale gives us no HomeDERP, and
    // peers could not reach us through DERP at all. 0 (unknown) until the map has arrived.
    ni.preferred_derp = preferred_derp;
    hi.net_info = Some(ni);
    hi
}

fn lowest_region(nm: &NetworkMap) -> i32 {
    nm.derp_map
        .as_ref()
        .and_then(|d| d.regions.as_ref())
        .and_then(|r| {
            r.iter()
                .filter(|(_, v)| v.as_ref().is_some_and(|v| !v.nodes.is_empty()))
                .map(|(k, _)| *k)
                .next()
        })
        .unwrap_or(0)
}

fn now_unix() -> i64 {
    Time::from_system_time(SystemTime::now())
        .unix_seconds()
        .unwrap_or(0)
}

/// How control is dialed: defaults, with the node's socket mark.
fn connect_options() -> ConnectOptions {
    let mut o = ConnectOptions::default();
    o.socket_mark = crate::SOCKET_MARK;
    o
}

/// One connect, register and map poll. Returns when it needs a login or should be retried.
async fn attempt(p: &ControlParams, st: &mut SessionState, ctx: &Ctx) -> End {
    let opts = connect_options();
    let conn =
        match control_client::ControlClient::connect_with(&p.control_url, &p.machine_key, opts)
            .await
        {
            Ok(c) => Arc::new(c),
            Err(e) => return End::Retry(format!("connecting to {}: {e}", p.control_url)),
        };
    if let Err(end) = register(&conn, p, st, ctx).await {
        return end;
    }
    let Some(node) = st.node_key.clone() else {
        return End::Retry("no node key after registration".into());
    };

    let mut local = ctx.dataplane.as_ref().map(|d| d.local_info());
    let mut req = MapRequest::default();
    req.node_key = node.public();
    req.disco_key = ctx.disco.public();
    req.stream = true;
    req.keep_alive = true;
    req.compress = "zstd".into();
    if let Some(l) = local.as_mut() {
        let info = l.borrow_and_update().clone();
        if info.preferred_derp != 0 {
            st.preferred_derp = info.preferred_derp;
        }
        set_endpoints(&mut req, &info);
    }
    req.hostinfo = Some(hostinfo(p, ctx, st.preferred_derp));
    let mut stream = match conn.map_stream(req).await {
        Ok(s) => s,
        Err(e) => return End::Retry(format!("map poll: {e}")),
    };
    // A reconnect starts from a fresh full map.
    st.netmap = NetworkMap::new();
    // Updates beside the stream (endpoints, home region, Hostinfo) go one at a time, the
    // newest replacing any not yet sent. Aborting one in flight for a newer one is not
    // enough: the server may still apply the older one after the newer (headscale does not
    // stop a handler when its stream is reset), and a stale home region would then stay.
    let (lite, lite_rx) = tokio::sync::watch::channel::<Option<MapRequest>>(None);
    let _lite_task = AbortOnDrop(tokio::spawn(send_lite_updates(Arc::clone(&conn), lite_rx)));
    let mut prefs = ctx.dataplane.as_ref().map(|d| d.route_prefs_changed());
    if let Some(r) = prefs.as_mut() {
        r.mark_unchanged();
    }
    // Set when the data plane's Hostinfo services (PeerAPI ports) changed: the next turn
    // sends Hostinfo beside the stream, as for new endpoints.
    let mut services_changed = false;
    loop {
        let next = match (local.as_mut(), prefs.as_mut()) {
            _ if std::mem::take(&mut services_changed) => None,
            (Some(l), Some(r)) => tokio::select! {
                m = stream.next() => Some(m),
                c = l.changed() => {
                    if c.is_err() {
                        local = None;
                    }
                    None
                }
                c = r.changed() => {
                    // The routing prefs changed: the same netmap, routed anew.
                    if c.is_err() {
                        prefs = None;
                    } else if let Some(dp) = &ctx.dataplane
                        && st.netmap.self_node.is_some()
                    {
                        dp.apply(&st.netmap, &node).await;
                        services_changed = dp.take_services_changed();
                    }
                    continue;
                }
            },
            (Some(l), None) => tokio::select! {
                m = stream.next() => Some(m),
                c = l.changed() => {
                    if c.is_err() {
                        local = None;
                    }
                    None
                }
            },
            (None, _) => Some(stream.next().await),
        };
        let Some(next) = next else {
            // Our endpoints or home region changed: tell control beside the stream.
            if let Some(l) = local.as_mut() {
                let info = l.borrow_and_update().clone();
                if info.preferred_derp != 0 {
                    st.preferred_derp = info.preferred_derp;
                }
                let mut req = MapRequest::default();
                req.node_key = node.public();
                req.disco_key = ctx.disco.public();
                req.hostinfo = Some(hostinfo(p, ctx, st.preferred_derp));
                set_endpoints(&mut req, &info);
                lite.send_replace(Some(req));
            }
            continue;
        };
        let msg = match next {
            None => return End::Retry("the server ended the map stream".into()),
            Some(Err(e)) => return End::Retry(format!("map stream: {e}")),
            Some(Ok(m)) => m,
        };
        match st.netmap.apply(msg) {
            Ok(Applied::KeepAlive) => continue,
            Ok(_) => {}
            Err(e) => return End::Retry(format!("map message: {e}")),
        }
        st.backoff.reset();
        if let Some(me) = &st.netmap.self_node {
            let exp = me
                .key_expiry
                .unix_seconds()
                .filter(|_| !me.key_expiry.is_zero());
            if me.expired || exp.is_some_and(|t| t <= now_unix()) {
                ctx.emit(ControlEvent::KeyExpired(key_expired_msg()));
                return End::NeedsLogin;
            }
        }
        ctx.emit(ControlEvent::NetMap(summarize(&st.netmap)));
        if let Some(dp) = &ctx.dataplane {
            dp.apply(&st.netmap, &node).await;
            services_changed = dp.take_services_changed();
        }
        ctx.emit(ControlEvent::EngineUp(true));
        if ctx.dataplane.is_some() {
            // The engine reports its home region through `local`.
            continue;
        }
        let region = lowest_region(&st.netmap);
        if region != 0 && region != st.preferred_derp {
            st.preferred_derp = region;
            let mut req = MapRequest::default();
            req.node_key = node.public();
            req.disco_key = ctx.disco.public();
            req.hostinfo = Some(hostinfo(p, ctx, region));
            // Sent beside the stream, never instead of reading it: a server that stalls on
            // this request must still trip the map watchdog.
            lite.send_replace(Some(req));
        }
    }
}

/// How long a failed update beside the stream waits before it is sent again (or replaced
/// by a newer one).
const LITE_RETRY: Duration = Duration::from_secs(5);

/// Sends the updates beside the map stream in order, one at a time: always the newest, and a
/// failed one again after [`LITE_RETRY`] unless a newer one replaced it. Ends with the session.
async fn send_lite_updates(
    conn: Arc<control_client::ControlClient>,
    mut rx: tokio::sync::watch::Receiver<Option<MapRequest>>,
) {
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        let Some(mut req) = rx.borrow_and_update().clone() else {
            continue;
        };
        loop {
            match conn.lite_update(req.clone()).await {
                Ok(()) => {
                    tracing::debug!("endpoints and Hostinfo sent to control");
                    break;
                }
                Err(e) => tracing::warn!(
                    "control: sending endpoints and Hostinfo: {e}; again in {}s",
                    LITE_RETRY.as_secs()
                ),
            }
            tokio::time::sleep(LITE_RETRY).await;
            if let Some(newer) = rx.borrow_and_update().clone() {
                req = newer;
            }
        }
    }
}

/// Puts our endpoints and their kinds into a MapRequest.
fn set_endpoints(req: &mut MapRequest, info: &wg_engine::engine::LocalInfo) {
    req.endpoints = info.endpoints.iter().map(|(a, _)| *a).collect();
    req.endpoint_types = info.endpoints.iter().map(|(_, k)| *k as i32).collect();
}

fn key_expired_msg() -> String {
    "node key expired: log in again (`tailscale up --auth-key=...` or `tailscale login`)".into()
}

/// Registers (or re-registers) the node; on success `st.node_key` is the registered key.
async fn register(
    conn: &control_client::ControlClient,
    p: &ControlParams,
    st: &mut SessionState,
    ctx: &Ctx,
) -> Result<(), End> {
    let hi = hostinfo(p, ctx, st.preferred_derp);
    // A known key, no login asked for: tell control we are back.
    if let (Some(key), false) = (st.node_key.clone(), st.force_login) {
        let mut req = RegisterRequest::default();
        req.node_key = key.public();
        req.hostinfo = Some(hi.clone());
        req.ephemeral = p.ephemeral;
        let resp = conn
            .register(req)
            .await
            .map_err(|e| End::Retry(format!("registering: {e}")))?;
        if !resp.node_key_expired && resp.auth_url.is_empty() {
            ctx.set_registered(Some(key));
            ctx.emit(ControlEvent::MachineAuthorized(resp.machine_authorized));
            return Ok(());
        }
        if st.auth_key.is_none() {
            let msg = if resp.node_key_expired {
                key_expired_msg()
            } else {
                "control no longer knows this node: log in again \
                 (`tailscale up --auth-key=...` or `tailscale login`)"
                    .into()
            };
            ctx.emit(ControlEvent::KeyExpired(msg));
            return Err(End::NeedsLogin);
        }
        tracing::info!("node key expired: rotating it with the auth key");
    }
    // A login: a new node key, registered with the auth key or interactively.
    let old = st.node_key.clone().or_else(|| p.old_node_key.clone());
    let key = NodePrivate::generate();
    let mut req = RegisterRequest::default();
    req.node_key = key.public();
    if let Some(o) = &old {
        req.old_node_key = o.public();
    }
    req.hostinfo = Some(hi);
    req.ephemeral = p.ephemeral;
    if let Some(a) = &st.auth_key {
        req.auth = Some(RegisterAuth::with_auth_key(a));
    }
    let mut resp = conn
        .register(req.clone())
        .await
        .map_err(|e| End::Retry(format!("registering: {e}")))?;
    // Interactive: show the URL, then wait for the admin with Followup (headscale answers a
    // fresh URL when the old one expired).
    for _ in 0..8 {
        if resp.auth_url.is_empty() {
            break;
        }
        tracing::info!("login needed: {}", resp.auth_url);
        ctx.emit(ControlEvent::AuthUrl(resp.auth_url.clone()));
        let mut f = req.clone();
        f.followup = resp.auth_url.clone();
        resp = conn
            .register(f)
            .await
            .map_err(|e| End::Retry(format!("waiting for the login: {e}")))?;
    }
    if !resp.auth_url.is_empty() {
        return Err(End::Retry("the login was not completed".into()));
    }
    if resp.node_key_expired {
        ctx.emit(ControlEvent::KeyExpired(
            "control refused the new node key as expired: log in again".into(),
        ));
        return Err(End::NeedsLogin);
    }
    let profile = state::Profile {
        control_url: p.control_url.clone(),
        login_name: resp.login.login_name.clone(),
        display_name: if resp.login.display_name.is_empty() {
            resp.user.display_name.clone()
        } else {
            resp.login.display_name.clone()
        },
        user_id: resp.user.id,
        ..state::Profile::default()
    };
    tracing::info!(
        "logged in as {:?}; node key {}",
        profile.login_name,
        key.public()
    );
    st.node_key = Some(key.clone());
    st.auth_key = None;
    st.force_login = false;
    ctx.set_registered(Some(key.clone()));
    ctx.emit(ControlEvent::LoginFinished {
        node_key: key,
        old_node_key: old,
        profile,
    });
    ctx.emit(ControlEvent::MachineAuthorized(resp.machine_authorized));
    Ok(())
}

/// The parts of the map that status shows.
pub fn summarize(nm: &NetworkMap) -> NetMapSummary {
    let region_code = |id: i32| -> String {
        nm.derp_map
            .as_ref()
            .and_then(|d| d.region(id))
            .map(|r| r.region_code.clone())
            .unwrap_or_default()
    };
    let time = |t: &Time| {
        if t.is_zero() {
            String::new()
        } else {
            t.as_str().to_string()
        }
    };
    let suffix = nm.magic_dns_suffix().unwrap_or("").trim_matches('.');
    let mut s = NetMapSummary {
        tailnet: nm.domain.clone(),
        magic_dns_suffix: suffix.to_string(),
        ..NetMapSummary::default()
    };
    if let Some(me) = &nm.self_node {
        s.addresses = me.addresses.iter().map(|a| a.addr()).collect();
        s.dns_name = me.name.clone();
        s.self_id = me.stable_id.clone();
        s.user_id = me.user;
        s.relay = region_code(me.home_derp_region());
        s.key_expiry = time(&me.key_expiry);
    }
    for n in nm.peers.values() {
        let hostname = n
            .hostinfo
            .as_ref()
            .map(|h| h.hostname.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| n.name.split('.').next().unwrap_or("").to_string());
        let expiry = n
            .key_expiry
            .unix_seconds()
            .filter(|_| !n.key_expiry.is_zero());
        s.peers.push(PeerStatus {
            id: n.stable_id.clone(),
            public_key: n.key.to_string(),
            host_name: hostname,
            dns_name: n.name.clone(),
            os: n
                .hostinfo
                .as_ref()
                .map(|h| h.os.clone())
                .unwrap_or_default(),
            user_id: n.user,
            tailscale_ips: n.addresses.iter().map(|a| a.addr()).collect(),
            tags: n.tags.clone(),
            addrs: n.endpoints.iter().map(|e| e.to_string()).collect(),
            relay: region_code(n.home_derp_region()),
            online: n.online.unwrap_or(false),
            in_network_map: true,
            last_seen: n.last_seen.as_ref().map(time).unwrap_or_default(),
            key_expiry: time(&n.key_expiry),
            expired: n.expired || expiry.is_some_and(|t| t <= now_unix()),
            exit_node_option: n.allowed_ips.iter().flatten().any(|r| r.bits() == 0),
            ..PeerStatus::default()
        });
    }
    s.users = nm
        .user_profiles
        .values()
        .map(|u| UserProfile {
            id: u.id,
            login_name: u.login_name.clone(),
            display_name: u.display_name.clone(),
            profile_pic_url: u.profile_pic_url.clone(),
        })
        .collect();
    s
}

pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per thread and varies per instance.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// 64 random hex digits (Hostinfo's BackendLogID), from a fresh key's random bytes.
fn random_hex32() -> String {
    let k = NodePrivate::generate();
    k.public()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new();
        let mut last = Duration::ZERO;
        for i in 0..12 {
            let d = b.step();
            assert!(d <= BACKOFF_MAX, "{i}: {d:?}");
            assert!(d >= BACKOFF_MIN / 2, "{i}: {d:?}");
            last = d;
        }
        assert!(last >= BACKOFF_MAX / 2, "{last:?}");
        b.reset();
        assert!(b.step() <= BACKOFF_MIN);
    }

    #[test]
    fn log_id_is_64_hex() {
        let id = random_hex32();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, random_hex32());
    }

    fn params(url: &str, key: Option<&str>, hostname: &str) -> ControlParams {
        ControlParams {
            control_url: url.into(),
            machine_key: tailcfg::key::MachinePrivate::generate(),
            node_key: None,
            old_node_key: None,
            auth_key: key.map(String::from),
            hostname: hostname.into(),
            advertise_routes: vec![],
            advertise_tags: vec![],
            ephemeral: false,
        }
    }

    #[tokio::test]
    async fn a_pending_auth_key_login_survives_a_hostinfo_only_start() {
        let running = Session {
            params: params("http://hs:8080", Some("hskey-auth-1"), ""),
            task: tokio::spawn(std::future::pending()),
        };
        // The boot's `up`: same server, no node key yet, a hostname, no key.
        let mut p = params("http://hs:8080", None, "ctr");
        carry_login(Some(&running), None, &mut p);
        assert_eq!(p.auth_key.as_deref(), Some("hskey-auth-1"));
        assert!(p.node_key.is_none());
        // The running login already registered a key: go on with it, the auth key unspent.
        let done = NodePrivate::generate();
        let mut after = params("http://hs:8080", None, "ctr");
        carry_login(Some(&running), Some(done.clone()), &mut after);
        assert_eq!(after.auth_key, None);
        assert_eq!(after.node_key.map(|k| k.public()), Some(done.public()));
        // Another server: nothing carried.
        let mut other = params("http://other:8080", None, "ctr");
        carry_login(Some(&running), None, &mut other);
        assert_eq!(other.auth_key, None);
        // Another node key (the backend saw the login, or another node): nothing carried.
        let mut known = params("http://hs:8080", None, "ctr");
        known.node_key = Some(NodePrivate::generate());
        carry_login(Some(&running), None, &mut known);
        assert_eq!(known.auth_key, None);
        // A key of its own wins.
        let mut own = params("http://hs:8080", Some("hskey-auth-2"), "ctr");
        carry_login(Some(&running), None, &mut own);
        assert_eq!(own.auth_key.as_deref(), Some("hskey-auth-2"));
        // An interactive session has no key to carry.
        let interactive = Session {
            params: params("http://hs:8080", None, ""),
            task: tokio::spawn(std::future::pending()),
        };
        let mut q = params("http://hs:8080", None, "ctr");
        carry_login(Some(&interactive), None, &mut q);
        assert_eq!(q.auth_key, None);
        // A session that ended carries nothing.
        let ended = Session {
            params: params("http://hs:8080", Some("hskey-auth-1"), ""),
            task: tokio::spawn(async {}),
        };
        while !ended.task.is_finished() {
            tokio::task::yield_now().await;
        }
        let mut late = params("http://hs:8080", None, "ctr");
        carry_login(Some(&ended), None, &mut late);
        assert_eq!(late.auth_key, None);
        carry_login(None, None, &mut late);
        assert_eq!(late.auth_key, None);
    }

    #[test]
    fn hostinfo_names_us() {
        let p = ControlParams {
            control_url: "http://127.0.0.1:1".into(),
            machine_key: tailcfg::key::MachinePrivate::generate(),
            node_key: None,
            old_node_key: None,
            auth_key: None,
            hostname: "gw".into(),
            advertise_routes: vec![],
            advertise_tags: vec![],
            ephemeral: false,
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        let ctx = Ctx {
            events: tx,
            version: "0.1.0".into(),
            log_id: random_hex32(),
            disco: DiscoPrivate::generate(),
            registered: Arc::new(Mutex::new(None)),
            dataplane: None,
        };
        let hi = hostinfo(&p, &ctx, 999);
        assert_eq!(hi.hostname, "gw");
        assert_eq!(hi.os, "linux");
        assert_eq!(hi.net_info.map(|n| n.preferred_derp), Some(999));
    }
}

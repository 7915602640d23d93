//! The daemon core's state machine and the LocalAPI backend.
//!
//! States are Go's (`NoState`, `NeedsLogin`, `NeedsMachineAuth`, `Stopped`, `Starting`,
//! `Running`), chosen by [`next_state`] from a few facts, as Go's `nextStateLocked` does:
//! not logged in → `NeedsLogin`; logged in but `WantRunning` off → `Stopped`; the tailnet
//! admin has not approved the machine → `NeedsMachineAuth`; a network map and a running
//! engine → `Running`; otherwise `Starting`.
//!
//! The control client (another crate) plugs in through [`ControlClient`], a narrow, non-blocking
//! command trait, and reports back by [`LocalBackend::control_event`] with [`ControlEvent`]s:
//! an auth URL, a finished login (the keys and profile to persist), machine approval, network
//! maps, errors. Without one (this build, until it lands), `start` and `login-interactive`
//! fail with a clear "no control client" error, which also appears in the status `Health`
//! list and as `ErrMessage` on the bus: the node never pretends to be logging in.

use crate::localapi::types::{
    BackendState, IpPrefix, MaskedPrefs, Notify, Options, PeerStatus, PersistView, Prefs, Status,
    TailnetStatus, watch,
};
use crate::localapi::{Backend, BackendError};
use crate::state::{self, Loaded, PersistedState, StateError, StateStore};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use tailcfg::key::{MachinePrivate, NodePrivate, NodePublic};
use tokio::sync::broadcast;

/// The message shown while no control client is built in.
pub const NO_CONTROL_CLIENT: &str =
    "this build has no control client yet (issue 3): it cannot log in or connect to a tailnet";

/// The facts the state is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateInputs {
    /// `start` has been called (by the daemon at boot, or by a client).
    pub started: bool,
    /// The node has a node key and did not log out.
    pub logged_in: bool,
    /// `WantRunning` is on.
    pub want_running: bool,
    /// Control said the machine awaits approval.
    pub needs_machine_auth: bool,
    /// A network map has arrived.
    pub have_netmap: bool,
    /// The WireGuard engine is configured and up.
    pub engine_up: bool,
}

/// Go's state transitions, as a pure function.
pub fn next_state(i: StateInputs) -> BackendState {
    if !i.started {
        BackendState::NoState
    } else if !i.logged_in {
        BackendState::NeedsLogin
    } else if !i.want_running {
        BackendState::Stopped
    } else if i.needs_machine_auth {
        BackendState::NeedsMachineAuth
    } else if i.have_netmap && i.engine_up {
        BackendState::Running
    } else {
        BackendState::Starting
    }
}

/// What the control client is asked to do. Every call returns at once; results come back as
/// [`ControlEvent`]s through [`LocalBackend::control_event`].
pub trait ControlClient: Send + Sync {
    /// Connect (and register or re-register as needed) with these parameters.
    fn start(&self, params: ControlParams);
    /// Begin an interactive login; the URL comes back as [`ControlEvent::AuthUrl`].
    fn login_interactive(&self);
    /// Log out at the server with `params.node_key`, the key the core has just forgotten
    /// (`None` if it had none).
    fn logout(&self, params: ControlParams);
    /// Stop talking to control (`WantRunning` off or shutdown).
    fn stop(&self);
}

/// What the control client needs to connect. `Debug` never shows the keys or auth key.
#[derive(Clone)]
pub struct ControlParams {
    /// Control server URL (already defaulted).
    pub control_url: String,
    /// The machine key.
    pub machine_key: MachinePrivate,
    /// The node key, if registered; the client makes one otherwise.
    pub node_key: Option<NodePrivate>,
    /// The previous node key, for rotation.
    pub old_node_key: Option<NodePrivate>,
    /// An auth key for unattended login (never persisted).
    pub auth_key: Option<String>,
    /// Hostname to register.
    pub hostname: String,
    /// Routes to advertise.
    pub advertise_routes: Vec<IpPrefix>,
    /// Tags to request.
    pub advertise_tags: Vec<String>,
    /// Register as an ephemeral node (state in memory only: `--state=mem:`).
    pub ephemeral: bool,
}

impl std::fmt::Debug for ControlParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlParams")
            .field("control_url", &self.control_url)
            .field("machine_key", &self.machine_key)
            .field("node_key", &self.node_key)
            .field("auth_key", &self.auth_key.as_ref().map(|_| "<redacted>"))
            .field("hostname", &self.hostname)
            .field("ephemeral", &self.ephemeral)
            .finish_non_exhaustive()
    }
}

/// What the control client reports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ControlEvent {
    /// The user must visit this URL to log in.
    AuthUrl(String),
    /// Login completed: the keys and identity to persist.
    LoginFinished {
        /// The registered node key.
        node_key: NodePrivate,
        /// The previous node key, if it was rotated.
        old_node_key: Option<NodePrivate>,
        /// The logged-in identity and tailnet.
        profile: state::Profile,
    },
    /// Whether the machine is approved by the tailnet admin.
    MachineAuthorized(bool),
    /// A new network map (summary the core needs for status; the full map goes to the parts).
    NetMap(NetMapSummary),
    /// The engine came up or went down.
    EngineUp(bool),
    /// Control logged the node out (deleted, or a server-side logout).
    LoggedOut,
    /// The node key expired: the node needs a new login, which will rotate the key (the
    /// expired key is kept as the old one). The text says what to do.
    KeyExpired(String),
    /// An error the user should see.
    Error(String),
}

/// The parts of a network map the core keeps for status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetMapSummary {
    /// This node's Tailscale addresses.
    pub addresses: Vec<IpAddr>,
    /// This node's MagicDNS name (with trailing dot).
    pub dns_name: String,
    /// The peers, as status shows them, keyed by their node key text.
    pub peers: Vec<PeerStatus>,
    /// This node's stable ID.
    pub self_id: String,
    /// This node's owner.
    pub user_id: i64,
    /// The region code of this node's home DERP region.
    pub relay: String,
    /// When this node's key expires (RFC 3339), empty for never.
    pub key_expiry: String,
    /// The tailnet's name.
    pub tailnet: String,
    /// The MagicDNS suffix, without dots at either end.
    pub magic_dns_suffix: String,
    /// The users of the nodes in the map.
    pub users: Vec<crate::localapi::UserProfile>,
}

struct Inner {
    persisted: PersistedState,
    started: bool,
    state: BackendState,
    auth_url: String,
    needs_machine_auth: bool,
    netmap: Option<NetMapSummary>,
    engine_up: bool,
    health: Vec<String>,
    /// The node key expired; a login is needed (and will rotate the key).
    key_expired: Option<String>,
    /// The warnings about the prefs now in `health`: IP forwarding off for the routes we
    /// advertise, prefs this build has no tag for.
    prefs_health: Vec<String>,
}

/// The core's LocalAPI backend: prefs, state machine and persistence.
pub struct LocalBackend {
    inner: Mutex<Inner>,
    store: Box<dyn StateStore>,
    control: Option<Arc<dyn ControlClient>>,
    bus: broadcast::Sender<Notify>,
    version: String,
    ephemeral: bool,
    dataplane: Option<Arc<crate::dataplane::DataPlane>>,
}

/// What opening the state did, for the daemon to log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Opened {
    /// A new node (nothing stored before); its first state was written.
    NewNode,
    /// The stored node.
    Existing,
    /// Go tailscaled's node, imported; its file was kept at this backup path.
    ImportedFromGo(Option<String>),
}

impl LocalBackend {
    /// Opens the store: loads the node (or makes a new one, or imports Go's), writes it if
    /// that changed anything, and returns the backend. A damaged store is an error: the
    /// daemon must not start (and must not register a new node over the old one).
    pub fn open(
        store: Box<dyn StateStore>,
        control: Option<Arc<dyn ControlClient>>,
        version: &str,
    ) -> Result<(Self, Opened), StateError> {
        let (persisted, opened) = match state::load(&*store)? {
            Loaded::Empty => (PersistedState::new_node(), Opened::NewNode),
            Loaded::Ours(s) => (s, Opened::Existing),
            Loaded::FromGo { state, original } => {
                let backup = store.back_up_foreign(&original)?;
                (state, Opened::ImportedFromGo(backup))
            }
        };
        store.write(&persisted.to_bytes())?;
        let mut health = Vec::new();
        if control.is_none() {
            health.push(NO_CONTROL_CLIENT.to_string());
        }
        #[cfg(all(feature = "netstack", not(feature = "dns")))]
        health.push(crate::dns::NO_DNS_HEALTH.to_string());
        let backend = LocalBackend {
            inner: Mutex::new(Inner {
                persisted,
                started: false,
                state: BackendState::NoState,
                auth_url: String::new(),
                needs_machine_auth: false,
                netmap: None,
                engine_up: false,
                health,
                key_expired: None,
                prefs_health: Vec::new(),
            }),
            store,
            control,
            bus: broadcast::channel(64).0,
            version: version.to_string(),
            ephemeral: false,
            dataplane: None,
        };
        Ok((backend, opened))
    }

    /// Marks the node as ephemeral (its state lives in memory only): it registers with
    /// `Ephemeral` set, so control deletes it once it goes away.
    pub fn set_ephemeral(&mut self, ephemeral: bool) {
        self.ephemeral = ephemeral;
    }

    /// Plugs in the control client after the store was opened (the daemon checks the state
    /// before it starts anything that touches the host), clearing the "no control" health.
    pub fn set_control(&mut self, control: Arc<dyn ControlClient>) {
        self.control = Some(control);
        if let Ok(mut g) = self.lock() {
            g.health.retain(|h| h != NO_CONTROL_CLIENT);
        }
    }

    /// The data plane whose per-peer paths and counters status shows.
    pub fn set_dataplane(&mut self, dp: Arc<crate::dataplane::DataPlane>) {
        self.dataplane = Some(dp);
        if let Ok(mut g) = self.lock() {
            self.prefs_to_dataplane(&mut g);
        }
    }

    /// The prefs the data plane follows (`--accept-dns`, the routing prefs), and the health
    /// of IP forwarding for the routes this node advertises and of prefs this build ignores.
    fn prefs_to_dataplane(&self, g: &mut Inner) {
        let routing = crate::routing::RoutePrefs::from_prefs(&g.persisted.prefs);
        #[cfg_attr(
            not(all(feature = "osrouter", feature = "advertiseroutes")),
            allow(unused_mut)
        )]
        let mut warnings: Vec<String> = crate::routing::unbuilt_pref(&g.persisted.prefs)
            .map(|(pref, tag)| {
                format!(
                    "{}; the stored setting is ignored",
                    crate::no_tag(&format!("prefs ask for {pref}"), tag)
                )
            })
            .into_iter()
            .collect();
        #[cfg(all(feature = "osrouter", feature = "advertiseroutes"))]
        warnings.extend(osrouter::forwarding::check_ip_forwarding(
            &routing.advertise_routes,
        ));
        let old = std::mem::replace(&mut g.prefs_health, warnings.clone());
        g.health.retain(|h| !old.contains(h));
        for w in warnings {
            if !old.contains(&w) {
                tracing::warn!("{w}");
            }
            if !g.health.contains(&w) {
                g.health.push(w);
            }
        }
        if let Some(dp) = &self.dataplane {
            dp.set_accept_dns(g.persisted.prefs.corp_dns);
            dp.set_route_prefs(routing);
        }
    }

    /// Adds a line to the status `Health` list.
    pub fn add_health(&self, msg: &str) {
        if let Ok(mut g) = self.lock() {
            if !g.health.iter().any(|h| h == msg) {
                g.health.push(msg.to_string());
            }
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, BackendError> {
        self.inner
            .lock()
            .map_err(|_| BackendError::Internal("backend lock poisoned".into()))
    }

    /// The current state.
    pub fn state(&self) -> BackendState {
        self.lock().map(|g| g.state).unwrap_or_default()
    }

    fn send(&self, n: Notify) {
        // No watchers is not an error.
        let _ = self.bus.send(n);
    }

    /// Recomputes the state; announces it if it changed.
    fn update_state(&self, g: &mut Inner) {
        let p = &g.persisted;
        let next = next_state(StateInputs {
            started: g.started,
            logged_in: p.node_key.is_some() && !p.prefs.logged_out && g.key_expired.is_none(),
            want_running: p.prefs.want_running,
            needs_machine_auth: g.needs_machine_auth,
            have_netmap: g.netmap.is_some(),
            engine_up: g.engine_up,
        });
        if next != g.state {
            tracing::info!("state: {} -> {}", g.state, next);
            g.state = next;
            self.send(Notify {
                state: Some(next.as_int()),
                ..Notify::default()
            });
        }
    }

    /// Writes the state if it changed.
    fn save(&self, g: &Inner) -> Result<(), BackendError> {
        match self.store.write(&g.persisted.to_bytes()) {
            Ok(wrote) => {
                if wrote {
                    tracing::debug!("state saved to {}", self.store.describe());
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!("{e}");
                Err(BackendError::Internal(e.to_string()))
            }
        }
    }

    fn prefs_view(g: &Inner) -> Prefs {
        let mut p = g.persisted.prefs.clone();
        let prof = &g.persisted.profile;
        p.config = Some(PersistView {
            public_node_key: g
                .persisted
                .node_key
                .as_ref()
                .map(|k| k.public().to_string())
                .unwrap_or_default(),
            user_profile: prof.user_profile(),
            node_id: prof.node_id.clone(),
        });
        p
    }

    fn control_params(
        g: &Inner,
        auth_key: Option<String>,
        ephemeral: bool,
    ) -> Option<ControlParams> {
        let p = &g.persisted;
        Some(ControlParams {
            control_url: p.prefs.control_url_or_default().to_string(),
            machine_key: p.machine_key.clone()?,
            node_key: p.node_key.clone(),
            old_node_key: p.old_node_key.clone(),
            auth_key,
            hostname: p.prefs.hostname.clone(),
            // Only what this build can serve is offered to control.
            advertise_routes: p
                .prefs
                .advertise_routes
                .iter()
                .filter(|r| crate::tags::has(crate::routing::tag_for_advertised(r)))
                .cloned()
                .collect(),
            advertise_tags: p.prefs.advertise_tags.clone(),
            ephemeral,
        })
    }

    fn no_control(&self, what: &str) -> BackendError {
        let msg = format!("{what}: {NO_CONTROL_CLIENT}");
        self.send(Notify {
            err_message: Some(msg.clone()),
            ..Notify::default()
        });
        BackendError::Unavailable(msg)
    }

    /// Handles a report from the control client.
    pub fn control_event(&self, ev: ControlEvent) -> Result<(), BackendError> {
        let mut g = self.lock()?;
        match ev {
            ControlEvent::AuthUrl(url) => {
                g.auth_url = url.clone();
                self.send(Notify {
                    browse_to_url: Some(url),
                    ..Notify::default()
                });
            }
            ControlEvent::LoginFinished {
                node_key,
                old_node_key,
                profile,
            } => {
                g.auth_url.clear();
                if let Some(msg) = g.key_expired.take() {
                    g.health.retain(|h| *h != msg);
                }
                g.persisted.node_key = Some(node_key);
                g.persisted.old_node_key = old_node_key;
                g.persisted.profile = profile;
                g.persisted.prefs.logged_out = false;
                self.save(&g)?;
                self.send(Notify {
                    login_finished: Some(serde_json::json!({})),
                    ..Notify::default()
                });
            }
            ControlEvent::MachineAuthorized(ok) => g.needs_machine_auth = !ok,
            ControlEvent::NetMap(nm) => g.netmap = Some(nm),
            ControlEvent::EngineUp(up) => g.engine_up = up,
            ControlEvent::LoggedOut => {
                g.persisted.node_key = None;
                g.persisted.old_node_key = None;
                g.netmap = None;
                self.save(&g)?;
            }
            ControlEvent::KeyExpired(msg) => {
                tracing::warn!("{msg}");
                g.netmap = None;
                g.engine_up = false;
                if !g.health.contains(&msg) {
                    g.health.push(msg.clone());
                }
                g.key_expired = Some(msg.clone());
                self.send(Notify {
                    err_message: Some(msg),
                    ..Notify::default()
                });
            }
            ControlEvent::Error(msg) => self.send(Notify {
                err_message: Some(msg),
                ..Notify::default()
            }),
        }
        self.update_state(&mut g);
        Ok(())
    }
}

fn os_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Refuses prefs that are malformed, or that newly ask for a job this build has no feature
/// tag for (`old`: the prefs before the change; a value already stored is kept, ignored at run
/// time with a health line, so a state file from a fuller build does not block every edit).
fn check_prefs(old: &Prefs, p: &Prefs) -> Result<(), BackendError> {
    if let Some((pref, tag)) = crate::routing::unbuilt_pref(p)
        && crate::routing::unbuilt_pref(old) != Some((pref, tag))
    {
        return Err(BackendError::BadRequest(crate::no_tag(pref, tag)));
    }
    if !p.exit_node_id.is_empty() && p.exit_node_ip.is_some() {
        return Err(BackendError::BadRequest(
            "ExitNodeID and ExitNodeIP cannot both be set".into(),
        ));
    }
    if p.hostname.len() > 63 {
        return Err(BackendError::BadRequest(format!(
            "hostname {:?} is longer than 63 bytes",
            p.hostname
        )));
    }
    if !(0..=2).contains(&p.netfilter_mode) {
        return Err(BackendError::BadRequest(format!(
            "NetfilterMode {} is not 0, 1 or 2",
            p.netfilter_mode
        )));
    }
    Ok(())
}

/// A peer counts as active while WireGuard sessions are fresh: a session rekeys every two
/// minutes while traffic flows, so three minutes without a handshake means idle.
const ACTIVE_WINDOW: std::time::Duration = std::time::Duration::from_secs(180);

/// Adds what the engine knows of a peer to its status: the direct address in use, the
/// counters, the last handshake.
fn merge_engine_peer(ps: &mut PeerStatus, e: &wg_engine::engine::PeerStatus) {
    ps.in_engine = true;
    ps.in_magic_sock = true;
    ps.cur_addr = e.direct.map(|a| a.to_string()).unwrap_or_default();
    ps.rx_bytes = i64::try_from(e.rx_bytes).unwrap_or(i64::MAX);
    ps.tx_bytes = i64::try_from(e.tx_bytes).unwrap_or(i64::MAX);
    if let Some(t) = e.last_handshake {
        ps.last_handshake = tailcfg::Time::from_system_time(t).as_str().to_string();
        ps.active = t.elapsed().map(|d| d < ACTIVE_WINDOW).unwrap_or(true);
    }
}

impl Backend for LocalBackend {
    fn status(&self, peers: bool) -> Status {
        let Ok(g) = self.lock() else {
            return Status::default();
        };
        let p = &g.persisted;
        let ips = g
            .netmap
            .as_ref()
            .map(|n| n.addresses.clone())
            .unwrap_or_default();
        let host = if p.prefs.hostname.is_empty() {
            os_hostname()
        } else {
            p.prefs.hostname.clone()
        };
        let nm = g.netmap.as_ref();
        let me = PeerStatus {
            id: nm
                .map(|n| n.self_id.clone())
                .unwrap_or_else(|| p.profile.node_id.clone()),
            public_key: p
                .node_key
                .as_ref()
                .map(|k| k.public())
                .unwrap_or_default()
                .to_string(),
            host_name: host,
            dns_name: g
                .netmap
                .as_ref()
                .map(|n| n.dns_name.clone())
                .unwrap_or_default(),
            os: "linux".into(),
            user_id: nm.map(|n| n.user_id).unwrap_or(p.profile.user_id),
            tailscale_ips: ips.clone(),
            relay: nm.map(|n| n.relay.clone()).unwrap_or_default(),
            key_expiry: nm.map(|n| n.key_expiry.clone()).unwrap_or_default(),
            online: g.state == BackendState::Running,
            in_network_map: g.netmap.is_some(),
            ..PeerStatus::default()
        };
        let mut st = Status {
            version: self.version.clone(),
            tun: true,
            backend_state: g.state.to_string(),
            have_node_key: p.node_key.is_some(),
            auth_url: g.auth_url.clone(),
            tailscale_ips: ips,
            self_status: Some(me),
            health: g.health.clone(),
            magic_dns_suffix: p.profile.magic_dns_suffix.clone(),
            ..Status::default()
        };
        let (tailnet, suffix) = match nm {
            Some(n) => (n.tailnet.clone(), n.magic_dns_suffix.clone()),
            None => (
                p.profile.tailnet_domain.clone(),
                p.profile.magic_dns_suffix.clone(),
            ),
        };
        st.magic_dns_suffix = suffix.clone();
        if !tailnet.is_empty() {
            st.current_tailnet = Some(TailnetStatus {
                name: tailnet,
                magic_dns_enabled: !suffix.is_empty(),
                magic_dns_suffix: suffix,
            });
        }
        if !p.profile.login_name.is_empty() {
            st.user
                .insert(p.profile.user_id.to_string(), p.profile.user_profile());
        }
        for u in nm.iter().flat_map(|n| n.users.iter()) {
            st.user.insert(u.id.to_string(), u.clone());
        }
        if peers {
            let engine = self.dataplane.as_ref().and_then(|d| d.status());
            let exit = match self.dataplane.as_ref().and_then(|d| d.exit_node()) {
                Some(Ok((key, _))) => Some(key.to_string()),
                Some(Err(why)) => {
                    st.health.push(why);
                    None
                }
                None => None,
            };
            for ps in g.netmap.iter().flat_map(|n| n.peers.iter()) {
                let mut ps = ps.clone();
                ps.exit_node = exit.as_ref() == Some(&ps.public_key);
                if let Some(e) = engine
                    .as_ref()
                    .and_then(|e| e.peers.iter().find(|p| p.key.to_string() == ps.public_key))
                {
                    merge_engine_peer(&mut ps, e);
                }
                st.peer.insert(ps.public_key.clone(), ps);
            }
        }
        st
    }

    fn prefs(&self) -> Prefs {
        self.lock()
            .map(|g| Self::prefs_view(&g))
            .unwrap_or_default()
    }

    fn edit_prefs(&self, mp: MaskedPrefs) -> Result<Prefs, BackendError> {
        let mut g = self.lock()?;
        let mut p = g.persisted.prefs.clone();
        mp.apply_to(&mut p);
        check_prefs(&g.persisted.prefs, &p)?;
        let was_running = g.persisted.prefs.want_running;
        g.persisted.prefs = p;
        self.save(&g)?;
        let view = Self::prefs_view(&g);
        self.send(Notify {
            prefs: Some(view.clone()),
            ..Notify::default()
        });
        self.prefs_to_dataplane(&mut g);
        if was_running && !g.persisted.prefs.want_running {
            if let Some(c) = &self.control {
                c.stop();
            }
            if let Some(dp) = &self.dataplane {
                dp.down();
            }
            g.netmap = None;
            g.engine_up = false;
        }
        self.update_state(&mut g);
        Ok(view)
    }

    fn start(&self, opts: Options) -> Result<(), BackendError> {
        let mut g = self.lock()?;
        if let Some(mut p) = opts.update_prefs {
            check_prefs(&g.persisted.prefs, &p)?;
            p.config = None;
            g.persisted.prefs = p;
            self.save(&g)?;
            self.send(Notify {
                prefs: Some(Self::prefs_view(&g)),
                ..Notify::default()
            });
        }
        g.started = true;
        self.prefs_to_dataplane(&mut g);
        self.update_state(&mut g);
        let Some(control) = &self.control else {
            return Err(self.no_control("start"));
        };
        // Like Go: control is contacted when the node should run, or to log in with a key;
        // a new node at boot waits for `up` rather than dialing the default server.
        // An expired key needs a login: with an auth key the client rotates the key; without
        // one, a reconnect would only hear "expired" again, so wait for `login-interactive`.
        let auth_key = (!opts.auth_key.is_empty()).then_some(opts.auth_key);
        let expired_no_key = g.key_expired.is_some() && auth_key.is_none();
        if (g.persisted.prefs.want_running || auth_key.is_some()) && !expired_no_key {
            if let Some(params) = Self::control_params(&g, auth_key, self.ephemeral) {
                control.start(params);
            }
        }
        Ok(())
    }

    fn login_interactive(&self) -> Result<(), BackendError> {
        let mut g = self.lock()?;
        g.started = true;
        self.update_state(&mut g);
        let Some(control) = &self.control else {
            return Err(self.no_control("login"));
        };
        control.login_interactive();
        Ok(())
    }

    fn logout(&self) -> Result<(), BackendError> {
        let mut g = self.lock()?;
        // What the server-side logout needs, taken before the keys are dropped.
        let params = Self::control_params(&g, None, self.ephemeral);
        g.persisted.node_key = None;
        g.persisted.old_node_key = None;
        g.persisted.profile = state::Profile {
            control_url: g.persisted.profile.control_url.clone(),
            ..state::Profile::default()
        };
        g.persisted.prefs.logged_out = true;
        g.persisted.prefs.want_running = false;
        g.netmap = None;
        g.engine_up = false;
        g.auth_url.clear();
        if let Some(msg) = g.key_expired.take() {
            g.health.retain(|h| *h != msg);
        }
        self.save(&g)?;
        if let (Some(c), Some(params)) = (&self.control, params) {
            c.logout(params);
        }
        if let Some(dp) = &self.dataplane {
            dp.down();
        }
        self.send(Notify {
            prefs: Some(Self::prefs_view(&g)),
            ..Notify::default()
        });
        self.update_state(&mut g);
        Ok(())
    }

    fn netcheck(&self) -> Result<crate::localapi::NetcheckReport, BackendError> {
        let st = self
            .dataplane
            .as_ref()
            .and_then(|d| d.status())
            .ok_or_else(|| BackendError::Unavailable("the data plane is starting".into()))?;
        let r = st.netcheck.ok_or_else(|| {
            BackendError::Unavailable(
                "no netcheck report yet (no DERP map, or still measuring)".into(),
            )
        })?;
        let ns = |m: &std::collections::BTreeMap<i32, std::time::Duration>| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        u64::try_from(v.as_nanos()).unwrap_or(u64::MAX),
                    )
                })
                .collect()
        };
        Ok(crate::localapi::NetcheckReport {
            udp: r.udp(),
            ipv4: r.udp_v4,
            ipv6: r.udp_v6,
            mapping_varies_by_dest_ip: r.mapping_varies_by_dest_ip,
            preferred_derp: st.local.preferred_derp,
            region_latency: ns(&r.region_latency),
            region_v4_latency: ns(&r.region_v4_latency),
            region_v6_latency: ns(&r.region_v6_latency),
            global_v4: r.global_v4.map(|a| a.to_string()).unwrap_or_default(),
            global_v6: r.global_v6.map(|a| a.to_string()).unwrap_or_default(),
            derp_regions: st
                .regions
                .iter()
                .map(|(id, code, name)| (id.to_string(), (code.clone(), name.clone())))
                .collect(),
        })
    }

    fn ping(&self, ip: IpAddr, kind: &str) -> crate::localapi::server::PingFuture {
        use crate::localapi::PingResult;
        let fail = |e: BackendError| -> crate::localapi::server::PingFuture {
            Box::pin(async move { Err(e) })
        };
        let tsmp = match kind {
            "disco" => false,
            "TSMP" | "tsmp" => true,
            _ => {
                return fail(BackendError::BadRequest(format!(
                    "ping type {kind:?}: tailrouter sends disco and TSMP pings"
                )));
            }
        };
        let Some(dp) = self.dataplane.clone() else {
            return fail(BackendError::Unavailable("no data plane".into()));
        };
        let found = self.lock().ok().and_then(|g| {
            g.netmap
                .as_ref()?
                .peers
                .iter()
                .find(|p| p.tailscale_ips.contains(&ip))
                .cloned()
        });
        let Some(p) = found else {
            return fail(BackendError::BadRequest(format!(
                "no peer with address {ip}"
            )));
        };
        let Ok(key) = p.public_key.parse::<NodePublic>() else {
            return fail(BackendError::Internal(format!(
                "bad peer key {}",
                p.public_key
            )));
        };
        Box::pin(async move {
            let name = p
                .dns_name
                .split('.')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or(&p.host_name)
                .to_string();
            let mut r = PingResult {
                ip: ip.to_string(),
                node_ip: p
                    .tailscale_ips
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                node_name: name,
                ..PingResult::default()
            };
            if tsmp {
                match dp.tsmp_ping(ip, std::time::Duration::from_secs(5)).await {
                    Some(d) => r.latency_seconds = d.as_secs_f64(),
                    None => r.err = "timeout".into(),
                }
                return Ok(r);
            }
            match dp.ping(key, std::time::Duration::from_secs(5)).await {
                Some(pong) => {
                    r.latency_seconds = pong.latency.as_secs_f64();
                    match pong.path {
                        wg_engine::magicsock::Path::Udp(a) => r.endpoint = a.to_string(),
                        wg_engine::magicsock::Path::Derp(id) => {
                            r.derp_region_id = id;
                            r.derp_region_code = p.relay.clone();
                        }
                    }
                }
                None => r.err = "timeout".into(),
            }
            Ok(r)
        })
    }

    fn watch(&self, mask: u64) -> (Vec<Notify>, broadcast::Receiver<Notify>) {
        // Subscribe under the lock, so nothing falls between the snapshot and the stream.
        let g = self.lock();
        let rx = self.bus.subscribe();
        let mut first = Notify {
            version: Some(self.version.clone()),
            ..Notify::default()
        };
        if let Ok(g) = g {
            if mask & watch::INITIAL_STATE != 0 {
                first.state = Some(g.state.as_int());
                if !g.auth_url.is_empty() {
                    first.browse_to_url = Some(g.auth_url.clone());
                }
            }
            if mask & watch::INITIAL_PREFS != 0 {
                first.prefs = Some(Self::prefs_view(&g));
            }
        }
        (vec![first], rx)
    }
}

/// The public node key, if the node has one (for logs: never the private half).
pub fn node_public(st: &PersistedState) -> Option<NodePublic> {
    st.node_key.as_ref().map(|k| k.public())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemStore;

    #[test]
    fn transitions_follow_go() {
        use BackendState::*;
        let base = StateInputs {
            started: true,
            logged_in: true,
            want_running: true,
            ..StateInputs::default()
        };
        let cases = [
            (StateInputs::default(), NoState),
            (
                StateInputs {
                    logged_in: false,
                    ..base
                },
                NeedsLogin,
            ),
            (
                StateInputs {
                    want_running: false,
                    ..base
                },
                Stopped,
            ),
            (
                StateInputs {
                    needs_machine_auth: true,
                    ..base
                },
                NeedsMachineAuth,
            ),
            (base, Starting),
            (
                StateInputs {
                    have_netmap: true,
                    ..base
                },
                Starting,
            ),
            (
                StateInputs {
                    have_netmap: true,
                    engine_up: true,
                    ..base
                },
                Running,
            ),
            (
                StateInputs {
                    want_running: false,
                    needs_machine_auth: true,
                    ..base
                },
                Stopped,
            ),
        ];
        for (i, want) in cases {
            assert_eq!(next_state(i), want, "{i:?}");
        }
    }

    fn backend(control: Option<Arc<dyn ControlClient>>) -> LocalBackend {
        LocalBackend::open(Box::new(MemStore::new()), control, "test")
            .unwrap()
            .0
    }

    #[test]
    fn status_says_whether_quad100_answers_dns() {
        let st = backend(None).status(true);
        let said = st.health.iter().any(|h| h.contains("does not answer DNS"));
        // Only a build with the netstack and without MagicDNS has the line.
        assert_eq!(said, cfg!(all(feature = "netstack", not(feature = "dns"))));
    }

    #[test]
    fn without_control_start_and_login_fail_clearly() {
        let b = backend(None);
        let (_, mut rx) = b.watch(0);
        assert_eq!(b.state(), BackendState::NoState);
        let opts = Options {
            update_prefs: Some(Prefs {
                want_running: true,
                hostname: "gw".into(),
                ..Prefs::default()
            }),
            ..Options::default()
        };
        let e = b.start(opts).unwrap_err();
        assert!(matches!(e, BackendError::Unavailable(_)));
        assert!(e.to_string().contains("no control client"), "{e}");
        assert_eq!(b.state(), BackendState::NeedsLogin);
        assert_eq!(b.prefs().hostname, "gw", "prefs applied and saved");
        let st = b.status(true);
        assert_eq!(st.backend_state, "NeedsLogin");
        assert!(st.health.iter().any(|h| h.contains("no control client")));
        assert!(b.login_interactive().is_err());
        let mut saw_err = false;
        while let Ok(n) = rx.try_recv() {
            saw_err |= n
                .err_message
                .is_some_and(|m| m.contains("no control client"));
        }
        assert!(saw_err, "ErrMessage on the bus");
    }

    #[derive(Default)]
    struct FakeControl {
        calls: Mutex<Vec<String>>,
    }
    impl ControlClient for FakeControl {
        fn start(&self, p: ControlParams) {
            if let Ok(mut c) = self.calls.lock() {
                c.push(format!("start {}", p.control_url));
            }
        }
        fn login_interactive(&self) {
            if let Ok(mut c) = self.calls.lock() {
                c.push("login".into());
            }
        }
        fn logout(&self, _: ControlParams) {}
        fn stop(&self) {}
    }

    #[test]
    fn control_events_drive_the_states() {
        let fc = Arc::new(FakeControl::default());
        let b = backend(Some(fc.clone()));
        let opts = Options {
            update_prefs: Some(Prefs {
                want_running: true,
                ..Prefs::default()
            }),
            ..Options::default()
        };
        b.start(opts).unwrap();
        assert_eq!(b.state(), BackendState::NeedsLogin);
        assert_eq!(
            fc.calls.lock().unwrap().as_slice(),
            ["start https://controlplane.tailscale.com"]
        );
        b.control_event(ControlEvent::AuthUrl("https://login.example/x".into()))
            .unwrap();
        assert_eq!(b.status(false).auth_url, "https://login.example/x");
        b.control_event(ControlEvent::LoginFinished {
            node_key: NodePrivate::generate(),
            old_node_key: None,
            profile: state::Profile {
                login_name: "a@b".into(),
                ..state::Profile::default()
            },
        })
        .unwrap();
        assert_eq!(b.state(), BackendState::Starting);
        b.control_event(ControlEvent::MachineAuthorized(false))
            .unwrap();
        assert_eq!(b.state(), BackendState::NeedsMachineAuth);
        b.control_event(ControlEvent::MachineAuthorized(true))
            .unwrap();
        b.control_event(ControlEvent::NetMap(NetMapSummary {
            addresses: vec!["100.64.0.1".parse().unwrap()],
            ..NetMapSummary::default()
        }))
        .unwrap();
        b.control_event(ControlEvent::EngineUp(true)).unwrap();
        assert_eq!(b.state(), BackendState::Running);
        assert_eq!(b.status(true).tailscale_ips.len(), 1);
        let mp = MaskedPrefs {
            want_running_set: true,
            ..MaskedPrefs::default()
        };
        b.edit_prefs(mp).unwrap();
        assert_eq!(b.state(), BackendState::Stopped);
        b.logout().unwrap();
        assert_eq!(b.state(), BackendState::NeedsLogin);
        assert!(!b.status(false).have_node_key);
    }

    #[test]
    fn expired_key_needs_login_until_a_new_one_arrives() {
        let fc = Arc::new(FakeControl::default());
        let b = backend(Some(fc.clone()));
        let run = Options {
            update_prefs: Some(Prefs {
                want_running: true,
                ..Prefs::default()
            }),
            ..Options::default()
        };
        b.start(run.clone()).unwrap();
        let old = NodePrivate::generate();
        b.control_event(ControlEvent::LoginFinished {
            node_key: old.clone(),
            old_node_key: None,
            profile: state::Profile::default(),
        })
        .unwrap();
        b.control_event(ControlEvent::NetMap(NetMapSummary::default()))
            .unwrap();
        b.control_event(ControlEvent::EngineUp(true)).unwrap();
        assert_eq!(b.state(), BackendState::Running);
        b.control_event(ControlEvent::KeyExpired("node key expired: log in".into()))
            .unwrap();
        assert_eq!(b.state(), BackendState::NeedsLogin);
        let st = b.status(true);
        assert!(st.health.iter().any(|h| h.contains("expired")), "{st:?}");
        assert!(st.have_node_key, "the expired key is kept for the rotation");
        // Without an auth key, `start` does not reconnect just to hear "expired" again.
        let calls = fc.calls.lock().unwrap().len();
        b.start(run.clone()).unwrap();
        assert_eq!(fc.calls.lock().unwrap().len(), calls);
        // With one, it does; the rotated key clears the condition.
        let mut with_key = run;
        with_key.auth_key = "hskey-auth-x".into();
        b.start(with_key).unwrap();
        assert_eq!(fc.calls.lock().unwrap().len(), calls + 1);
        b.control_event(ControlEvent::LoginFinished {
            node_key: NodePrivate::generate(),
            old_node_key: Some(old),
            profile: state::Profile::default(),
        })
        .unwrap();
        assert!(!b.status(false).health.iter().any(|h| h.contains("expired")));
        assert_eq!(b.state(), BackendState::Starting);
    }

    /// A LocalAPI client (Go's CLI, say) asking for a router job this build lacks gets a
    /// clear refusal naming the pref and the tag; a value already stored does not block other
    /// edits, and shows as a health line.
    #[test]
    fn prefs_of_missing_tags_are_refused_and_stored_ones_ignored() {
        let b = backend(None);
        let mut mp = MaskedPrefs::default();
        mp.prefs.route_all = true;
        mp.route_all_set = true;
        let r = b.edit_prefs(mp);
        if crate::tags::HAS_USEROUTES {
            assert!(r.is_ok(), "{r:?}");
        } else {
            match r {
                Err(BackendError::BadRequest(m)) => {
                    assert_eq!(m, "RouteAll: this build has no useroutes feature tag")
                }
                other => panic!("{other:?}"),
            }
        }
        // Stored by a fuller build: kept, ignored, reported; other edits still work.
        let stored = Prefs {
            exit_node_id: "gw".into(),
            ..Prefs::default()
        };
        b.lock().unwrap().persisted.prefs = stored;
        let mut mp = MaskedPrefs::default();
        mp.prefs.hostname = "edited".into();
        mp.hostname_set = true;
        assert!(b.edit_prefs(mp).is_ok());
        let st = b.status(false);
        let line = "prefs ask for ExitNodeID: this build has no useexitnode feature tag";
        assert_eq!(
            st.health.iter().any(|h| h.starts_with(line)),
            !crate::tags::HAS_USEEXITNODE,
            "{:?}",
            st.health
        );
    }

    #[test]
    fn bad_prefs_are_refused() {
        let b = backend(None);
        let mut mp = MaskedPrefs::default();
        mp.prefs.exit_node_id = "n1".into();
        mp.prefs.exit_node_ip = Some("100.64.0.2".parse().unwrap());
        mp.exit_node_id_set = true;
        mp.exit_node_ip_set = true;
        assert!(matches!(b.edit_prefs(mp), Err(BackendError::BadRequest(_))));
    }
}

//! The JSON shapes of the LocalAPI, with Go's field names (`ipn.Prefs`, `ipn.MaskedPrefs`,
//! `ipn.Options`, `ipn.Notify`, `ipnstate.Status`), so Tailscale's own CLI and tools can read
//! them. Decoders accept missing fields (zero values) and ignore unknown ones, as Go does.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Tailscale's default control server, used when `ControlURL` is empty.
pub const DEFAULT_CONTROL_URL: &str = "https://controlplane.tailscale.com";

/// The daemon's state, spelled and numbered as Go's `ipn.State`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendState {
    /// Nothing decided yet (just started).
    #[default]
    NoState,
    /// Another local user holds the daemon (Windows only in Go; never used here).
    InUseOtherUser,
    /// The node has no usable login: it must log in.
    NeedsLogin,
    /// Logged in, waiting for a tailnet admin to approve the machine.
    NeedsMachineAuth,
    /// Logged in, but the user asked it not to run (`tailscale down`).
    Stopped,
    /// Logged in and wanting to run; connecting.
    Starting,
    /// Connected with a network map.
    Running,
}

impl BackendState {
    /// Go's spelling, as in the status JSON's `BackendState`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::NoState => "NoState",
            BackendState::InUseOtherUser => "InUseOtherUser",
            BackendState::NeedsLogin => "NeedsLogin",
            BackendState::NeedsMachineAuth => "NeedsMachineAuth",
            BackendState::Stopped => "Stopped",
            BackendState::Starting => "Starting",
            BackendState::Running => "Running",
        }
    }

    /// Go's number, as in `Notify.State`.
    pub fn as_int(self) -> i64 {
        match self {
            BackendState::NoState => 0,
            BackendState::InUseOtherUser => 1,
            BackendState::NeedsLogin => 2,
            BackendState::NeedsMachineAuth => 3,
            BackendState::Stopped => 4,
            BackendState::Starting => 5,
            BackendState::Running => 6,
        }
    }

    /// The state for Go's number, if it is one.
    pub fn from_int(n: i64) -> Option<Self> {
        Some(match n {
            0 => BackendState::NoState,
            1 => BackendState::InUseOtherUser,
            2 => BackendState::NeedsLogin,
            3 => BackendState::NeedsMachineAuth,
            4 => BackendState::Stopped,
            5 => BackendState::Starting,
            6 => BackendState::Running,
            _ => return None,
        })
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP prefix (`10.0.0.0/24`), written as Go's `netip.Prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    /// The address as given (Go keeps host bits too).
    pub addr: IpAddr,
    /// The prefix length.
    pub bits: u8,
}

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    /// Not `address/length`, or the address does not parse.
    #[error("{0:?} is not an IP prefix like 10.0.0.0/24")]
    Syntax(String),
    /// The length is too long for the address family.
    #[error("{0:?}: prefix length out of range")]
    Length(String),
}

impl FromStr for IpPrefix {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('/')
            .ok_or_else(|| PrefixError::Syntax(s.into()))?;
        let addr: IpAddr = a.parse().map_err(|_| PrefixError::Syntax(s.into()))?;
        if b.is_empty() || b.len() > 3 || !b.bytes().all(|c| c.is_ascii_digit()) {
            return Err(PrefixError::Syntax(s.into()));
        }
        let bits: u8 = b.parse().map_err(|_| PrefixError::Length(s.into()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(PrefixError::Length(s.into()));
        }
        Ok(IpPrefix { addr, bits })
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Go's `netip.Addr` zero value is written `""`; this maps it to `None`.
mod opt_addr {
    use super::*;
    pub(super) fn serialize<S: Serializer>(a: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(""),
        }
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// Go writes a nil slice as `null`; accept `null` as empty on input.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Go's `opt.Bool` (`true`, `false` or unset) also arrives as the strings `"true"`/`"false"`.
mod opt_bool {
    use super::*;
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::Bool(b) => Ok(Some(b)),
            serde_json::Value::String(s) => match s.as_str() {
                "" | "unset" => Ok(None),
                "true" => Ok(Some(true)),
                "false" => Ok(Some(false)),
                _ => Err(serde::de::Error::custom(format!("bad opt.Bool {s:?}"))),
            },
            _ => Err(serde::de::Error::custom("bad opt.Bool")),
        }
    }
}

/// Go's `ipn.AutoUpdatePrefs`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct AutoUpdatePrefs {
    /// Check for updates in the background.
    pub check: bool,
    /// Apply updates in the background (unset, true or false).
    #[serde(deserialize_with = "opt_bool::deserialize")]
    pub apply: Option<bool>,
}

/// Go's `ipn.AppConnectorPrefs`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct AppConnectorPrefs {
    /// Advertise this node as an app connector.
    pub advertise: bool,
}

/// The subset of Go's `ipn.Prefs` a router uses, with Go's JSON names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    /// Control server URL; empty means [`DEFAULT_CONTROL_URL`].
    #[serde(rename = "ControlURL")]
    pub control_url: String,
    /// Accept subnet routes advertised by other nodes (`--accept-routes`).
    #[serde(rename = "RouteAll")]
    pub route_all: bool,
    /// Stable ID of the exit node to use.
    #[serde(rename = "ExitNodeID")]
    pub exit_node_id: String,
    /// IP of the exit node to use, until it is resolved to an ID.
    #[serde(rename = "ExitNodeIP", with = "opt_addr")]
    pub exit_node_ip: Option<IpAddr>,
    /// The exit node used most recently (set by the backend).
    #[serde(rename = "InternalExitNodePrior")]
    pub internal_exit_node_prior: String,
    /// Reach the local LAN directly while using an exit node.
    #[serde(rename = "ExitNodeAllowLANAccess")]
    pub exit_node_allow_lan_access: bool,
    /// Use the tailnet's DNS configuration (`--accept-dns`).
    #[serde(rename = "CorpDNS")]
    pub corp_dns: bool,
    /// Run Tailscale SSH (not built by tailrouter; kept for compatibility).
    #[serde(rename = "RunSSH")]
    pub run_ssh: bool,
    /// Run the web client (not built by tailrouter; kept for compatibility).
    #[serde(rename = "RunWebClient")]
    pub run_web_client: bool,
    /// Networking should be up (`tailscale up` / `down`).
    #[serde(rename = "WantRunning")]
    pub want_running: bool,
    /// The user logged out on purpose.
    #[serde(rename = "LoggedOut")]
    pub logged_out: bool,
    /// Block all incoming connections.
    #[serde(rename = "ShieldsUp")]
    pub shields_up: bool,
    /// ACL tags this node asks for.
    #[serde(
        rename = "AdvertiseTags",
        deserialize_with = "null_as_default",
        serialize_with = "empty_as_null"
    )]
    pub advertise_tags: Vec<String>,
    /// Hostname to register; empty means the OS hostname.
    #[serde(rename = "Hostname")]
    pub hostname: String,
    /// Windows debugging setting; kept for compatibility.
    #[serde(rename = "NotepadURLs")]
    pub notepad_urls: bool,
    /// Subnets (and `0.0.0.0/0`, `::/0` for an exit node) routed through this node.
    #[serde(
        rename = "AdvertiseRoutes",
        deserialize_with = "null_as_default",
        serialize_with = "empty_as_null"
    )]
    pub advertise_routes: Vec<IpPrefix>,
    /// Do not source-NAT traffic to advertised subnets.
    #[serde(rename = "NoSNAT")]
    pub no_snat: bool,
    /// Stateful filtering off (unset, true or false).
    #[serde(
        rename = "NoStatefulFiltering",
        deserialize_with = "opt_bool::deserialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub no_stateful_filtering: Option<bool>,
    /// How much netfilter to manage: 0 off, 1 no-divert, 2 on.
    #[serde(rename = "NetfilterMode")]
    pub netfilter_mode: i64,
    /// Local user allowed to operate the daemon without root.
    #[serde(rename = "OperatorUser", skip_serializing_if = "String::is_empty")]
    pub operator_user: String,
    /// Auto-update settings (never applied by tailrouter).
    #[serde(rename = "AutoUpdate")]
    pub auto_update: AutoUpdatePrefs,
    /// App connector settings.
    #[serde(rename = "AppConnector")]
    pub app_connector: AppConnectorPrefs,
    /// Report device posture.
    #[serde(rename = "PostureChecking")]
    pub posture_checking: bool,
    /// `iptables`, `nftables` or empty for automatic.
    #[serde(rename = "NetfilterKind")]
    pub netfilter_kind: String,
    /// The node's persisted login, private keys left out (read-only; ignored on input).
    #[serde(
        rename = "Config",
        skip_serializing_if = "Option::is_none",
        skip_deserializing
    )]
    pub config: Option<PersistView>,
}

fn empty_as_null<S: Serializer, T: Serialize>(v: &Vec<T>, s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        v.serialize(s)
    }
}

impl Default for Prefs {
    /// Go's `ipn.NewPrefs()` on Linux: DNS on, running wanted, netfilter fully managed.
    fn default() -> Self {
        Prefs {
            control_url: String::new(),
            route_all: false,
            exit_node_id: String::new(),
            exit_node_ip: None,
            internal_exit_node_prior: String::new(),
            exit_node_allow_lan_access: false,
            corp_dns: true,
            run_ssh: false,
            run_web_client: false,
            want_running: false,
            logged_out: false,
            shields_up: false,
            advertise_tags: Vec::new(),
            hostname: String::new(),
            notepad_urls: false,
            advertise_routes: Vec::new(),
            no_snat: false,
            no_stateful_filtering: None,
            netfilter_mode: 2,
            operator_user: String::new(),
            auto_update: AutoUpdatePrefs::default(),
            app_connector: AppConnectorPrefs::default(),
            posture_checking: false,
            netfilter_kind: String::new(),
            config: None,
        }
    }
}

impl Prefs {
    /// The control URL to use: `ControlURL`, or Tailscale's when empty.
    pub fn control_url_or_default(&self) -> &str {
        if self.control_url.is_empty() {
            DEFAULT_CONTROL_URL
        } else {
            &self.control_url
        }
    }

    /// Equal ignoring the read-only `Config` view.
    pub fn same_settings(&self, other: &Prefs) -> bool {
        let mut a = self.clone();
        a.config = None;
        let mut b = other.clone();
        b.config = None;
        a == b
    }
}

/// The public part of Go's `persist.Persist`, as `GET prefs` shows it under `Config`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PersistView {
    /// The node's public key, if it has one.
    #[serde(rename = "PublicNodeKey", skip_serializing_if = "String::is_empty")]
    pub public_node_key: String,
    /// The logged-in user.
    #[serde(rename = "UserProfile")]
    pub user_profile: UserProfile,
    /// The node's stable ID.
    #[serde(rename = "NodeID")]
    pub node_id: String,
}

/// Go's `tailcfg.UserProfile`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UserProfile {
    /// Numeric user ID.
    #[serde(rename = "ID")]
    pub id: i64,
    /// Login name, like `alice@example.com`.
    #[serde(rename = "LoginName")]
    pub login_name: String,
    /// Display name.
    #[serde(rename = "DisplayName")]
    pub display_name: String,
    /// Picture URL.
    #[serde(rename = "ProfilePicURL", skip_serializing_if = "String::is_empty")]
    pub profile_pic_url: String,
}

macro_rules! masked_prefs {
    ($( $set:ident, $json:literal, $field:ident; )*) => {
        /// Go's `ipn.MaskedPrefs`: a [`Prefs`] and, per field, a `XxxSet` flag saying whether
        /// it is to be changed.
        #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
        #[serde(default)]
        pub struct MaskedPrefs {
            /// The new values; only those whose flag is set are applied.
            #[serde(flatten)]
            pub prefs: Prefs,
            $(
                #[doc = concat!("Change `", stringify!($field), "`.")]
                #[serde(rename = $json, skip_serializing_if = "is_false")]
                pub $set: bool,
            )*
        }

        impl MaskedPrefs {
            /// Copies the flagged fields into `p`.
            pub fn apply_to(&self, p: &mut Prefs) {
                $( if self.$set { p.$field = self.prefs.$field.clone(); } )*
            }

            /// Whether any flag is set.
            pub fn any_set(&self) -> bool {
                false $( || self.$set )*
            }
        }
    };
}

fn is_false(b: &bool) -> bool {
    !*b
}

masked_prefs! {
    control_url_set, "ControlURLSet", control_url;
    route_all_set, "RouteAllSet", route_all;
    exit_node_id_set, "ExitNodeIDSet", exit_node_id;
    exit_node_ip_set, "ExitNodeIPSet", exit_node_ip;
    exit_node_allow_lan_access_set, "ExitNodeAllowLANAccessSet", exit_node_allow_lan_access;
    corp_dns_set, "CorpDNSSet", corp_dns;
    run_ssh_set, "RunSSHSet", run_ssh;
    run_web_client_set, "RunWebClientSet", run_web_client;
    want_running_set, "WantRunningSet", want_running;
    logged_out_set, "LoggedOutSet", logged_out;
    shields_up_set, "ShieldsUpSet", shields_up;
    advertise_tags_set, "AdvertiseTagsSet", advertise_tags;
    hostname_set, "HostnameSet", hostname;
    notepad_urls_set, "NotepadURLsSet", notepad_urls;
    advertise_routes_set, "AdvertiseRoutesSet", advertise_routes;
    no_snat_set, "NoSNATSet", no_snat;
    no_stateful_filtering_set, "NoStatefulFilteringSet", no_stateful_filtering;
    netfilter_mode_set, "NetfilterModeSet", netfilter_mode;
    operator_user_set, "OperatorUserSet", operator_user;
    posture_checking_set, "PostureCheckingSet", posture_checking;
    netfilter_kind_set, "NetfilterKindSet", netfilter_kind;
}

/// Go's `ipn.Options`, the body of `POST start`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Options {
    /// The frontend's log ID (ignored: tailrouter uploads no logs).
    #[serde(rename = "FrontendLogID", skip_serializing_if = "String::is_empty")]
    pub frontend_log_id: String,
    /// Prefs to replace the current ones with, if any.
    #[serde(rename = "UpdatePrefs", skip_serializing_if = "Option::is_none")]
    pub update_prefs: Option<Prefs>,
    /// A pre-authorised key for unattended login. Never logged.
    #[serde(rename = "AuthKey", skip_serializing_if = "String::is_empty")]
    pub auth_key: String,
}

/// Go's `ipn.Notify`: one message on the IPN bus. Every field is optional.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Notify {
    /// The daemon's version (first message only).
    #[serde(rename = "Version", skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The watch session's ID (first message only).
    #[serde(rename = "SessionID", skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// An error the user should see.
    #[serde(rename = "ErrMessage", skip_serializing_if = "Option::is_none")]
    pub err_message: Option<String>,
    /// Sent (as `{}`) when a login completed.
    #[serde(rename = "LoginFinished", skip_serializing_if = "Option::is_none")]
    pub login_finished: Option<serde_json::Value>,
    /// The new state, as Go's number (see [`BackendState::as_int`]).
    #[serde(rename = "State", skip_serializing_if = "Option::is_none")]
    pub state: Option<i64>,
    /// The new prefs.
    #[serde(rename = "Prefs", skip_serializing_if = "Option::is_none")]
    pub prefs: Option<Prefs>,
    /// The new network map (shape owned by the core; passed through).
    #[serde(rename = "NetMap", skip_serializing_if = "Option::is_none")]
    pub net_map: Option<serde_json::Value>,
    /// A URL the user must visit to log in.
    #[serde(rename = "BrowseToURL", skip_serializing_if = "Option::is_none")]
    pub browse_to_url: Option<String>,
    /// Engine statistics.
    #[serde(rename = "Engine", skip_serializing_if = "Option::is_none")]
    pub engine: Option<serde_json::Value>,
}

impl Notify {
    /// The state this message announces, if any.
    pub fn backend_state(&self) -> Option<BackendState> {
        self.state.and_then(BackendState::from_int)
    }
}

/// Bits of `watch-ipn-bus?mask=`, as Go's `ipn.NotifyWatchOpt`.
pub mod watch {
    /// Engine updates.
    pub const ENGINE_UPDATES: u64 = 1;
    /// Start with the current state (and Version, SessionID).
    pub const INITIAL_STATE: u64 = 2;
    /// Start with the current prefs.
    pub const INITIAL_PREFS: u64 = 4;
    /// Start with the current network map.
    pub const INITIAL_NET_MAP: u64 = 8;
}

/// Go's `ipnstate.PeerStatus` (the fields a router fills).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerStatus {
    /// Stable node ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node key, `nodekey:…`.
    #[serde(rename = "PublicKey")]
    pub public_key: String,
    /// Host name.
    #[serde(rename = "HostName")]
    pub host_name: String,
    /// MagicDNS name, with a trailing dot.
    #[serde(rename = "DNSName")]
    pub dns_name: String,
    /// Operating system.
    #[serde(rename = "OS")]
    pub os: String,
    /// Owner's user ID.
    #[serde(rename = "UserID")]
    pub user_id: i64,
    /// Tailscale addresses.
    #[serde(
        rename = "TailscaleIPs",
        deserialize_with = "null_as_default",
        serialize_with = "empty_as_null"
    )]
    pub tailscale_ips: Vec<IpAddr>,
    /// Tags of a tagged node.
    #[serde(
        rename = "Tags",
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
    /// Known endpoints.
    #[serde(
        rename = "Addrs",
        deserialize_with = "null_as_default",
        serialize_with = "empty_as_null"
    )]
    pub addrs: Vec<String>,
    /// Current direct path, or empty.
    #[serde(rename = "CurAddr")]
    pub cur_addr: String,
    /// DERP region code of its home relay.
    #[serde(rename = "Relay")]
    pub relay: String,
    /// Bytes received.
    #[serde(rename = "RxBytes")]
    pub rx_bytes: i64,
    /// Bytes sent.
    #[serde(rename = "TxBytes")]
    pub tx_bytes: i64,
    /// Connected to control (self) or online (peers).
    #[serde(rename = "Online")]
    pub online: bool,
    /// Is the current exit node.
    #[serde(rename = "ExitNode")]
    pub exit_node: bool,
    /// Offers to be an exit node.
    #[serde(rename = "ExitNodeOption")]
    pub exit_node_option: bool,
    /// Traffic flowed recently.
    #[serde(rename = "Active")]
    pub active: bool,
    /// In the network map.
    #[serde(rename = "InNetworkMap")]
    pub in_network_map: bool,
    /// Known to magicsock.
    #[serde(rename = "InMagicSock")]
    pub in_magic_sock: bool,
    /// Known to the WireGuard engine.
    #[serde(rename = "InEngine")]
    pub in_engine: bool,
    /// When control last saw it online (RFC 3339); empty is Go's zero time.
    #[serde(rename = "LastSeen", serialize_with = "zero_time_if_empty")]
    pub last_seen: String,
    /// When the last WireGuard handshake with it completed (RFC 3339); empty is Go's zero
    /// time.
    #[serde(rename = "LastHandshake", serialize_with = "zero_time_if_empty")]
    pub last_handshake: String,
    /// When its node key expires (RFC 3339); empty: never, and left out.
    #[serde(rename = "KeyExpiry", skip_serializing_if = "String::is_empty")]
    pub key_expiry: String,
    /// Its node key has expired.
    #[serde(rename = "Expired", skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
}

/// Go writes a zero `time.Time` as `0001-01-01T00:00:00Z`.
fn zero_time_if_empty<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_str("0001-01-01T00:00:00Z")
    } else {
        s.serialize_str(v)
    }
}

/// Go's `ipnstate.TailnetStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TailnetStatus {
    /// The tailnet's name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Its MagicDNS suffix.
    #[serde(rename = "MagicDNSSuffix")]
    pub magic_dns_suffix: String,
    /// Whether MagicDNS is on.
    #[serde(rename = "MagicDNSEnabled")]
    pub magic_dns_enabled: bool,
}

/// Go's `ipnstate.Status`, the answer of `GET status` (`tailscale status --json`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// Daemon version.
    #[serde(rename = "Version")]
    pub version: String,
    /// Kernel TUN (true) or userspace networking.
    #[serde(rename = "TUN")]
    pub tun: bool,
    /// The state, spelled as Go does.
    #[serde(rename = "BackendState")]
    pub backend_state: String,
    /// Whether the node has a node key.
    #[serde(rename = "HaveNodeKey", skip_serializing_if = "is_false")]
    pub have_node_key: bool,
    /// Where to log in, when a login is pending.
    #[serde(rename = "AuthURL")]
    pub auth_url: String,
    /// This node's Tailscale addresses.
    #[serde(
        rename = "TailscaleIPs",
        deserialize_with = "null_as_default",
        serialize_with = "empty_as_null"
    )]
    pub tailscale_ips: Vec<IpAddr>,
    /// This node.
    #[serde(rename = "Self")]
    pub self_status: Option<PeerStatus>,
    /// Health problems, in words.
    #[serde(
        rename = "Health",
        deserialize_with = "null_as_default",
        serialize_with = "empty_as_null"
    )]
    pub health: Vec<String>,
    /// Legacy MagicDNS suffix.
    #[serde(rename = "MagicDNSSuffix")]
    pub magic_dns_suffix: String,
    /// The tailnet, once known.
    #[serde(rename = "CurrentTailnet")]
    pub current_tailnet: Option<TailnetStatus>,
    /// Domains certificates can be had for.
    #[serde(
        rename = "CertDomains",
        deserialize_with = "null_as_default",
        serialize_with = "empty_as_null"
    )]
    pub cert_domains: Vec<String>,
    /// Peers keyed by `nodekey:…`.
    #[serde(
        rename = "Peer",
        deserialize_with = "null_as_default",
        serialize_with = "empty_map_as_null"
    )]
    pub peer: BTreeMap<String, PeerStatus>,
    /// Users keyed by decimal ID.
    #[serde(
        rename = "User",
        deserialize_with = "null_as_default",
        serialize_with = "empty_map_as_null"
    )]
    pub user: BTreeMap<String, UserProfile>,
    /// Available client update, if any.
    #[serde(rename = "ClientVersion")]
    pub client_version: Option<serde_json::Value>,
}

fn empty_map_as_null<S: Serializer, V: Serialize>(
    m: &BTreeMap<String, V>,
    s: S,
) -> Result<S::Ok, S::Error> {
    if m.is_empty() {
        s.serialize_none()
    } else {
        m.serialize(s)
    }
}

impl Status {
    /// The state, if `BackendState` is one of Go's spellings.
    pub fn state(&self) -> Option<BackendState> {
        (0..=6)
            .filter_map(BackendState::from_int)
            .find(|s| s.as_str() == self.backend_state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_have_go_spellings_and_numbers() {
        for n in 0..=6 {
            let s = BackendState::from_int(n).unwrap();
            assert_eq!(s.as_int(), n);
        }
        assert_eq!(BackendState::NeedsMachineAuth.as_str(), "NeedsMachineAuth");
        assert_eq!(BackendState::from_int(7), None);
    }

    #[test]
    fn prefs_use_go_names_and_accept_go_json() {
        let go = r#"{"ControlURL":"https://hs.example","RouteAll":true,"ExitNodeID":"",
            "ExitNodeIP":"","CorpDNS":false,"WantRunning":true,"AdvertiseTags":null,
            "Hostname":"gw","AdvertiseRoutes":["192.168.88.0/24","0.0.0.0/0"],"NoSNAT":false,
            "NoStatefulFiltering":"true","NetfilterMode":2,"AutoUpdate":{"Check":true,"Apply":null},
            "AllowSingleHosts":true,"Unknown":42,"Config":{"PrivateNodeKey":"privkey:00"}}"#;
        let p: Prefs = serde_json::from_str(go).unwrap();
        assert!(p.route_all && p.want_running && !p.corp_dns);
        assert_eq!(p.hostname, "gw");
        assert_eq!(p.advertise_routes.len(), 2);
        assert_eq!(p.advertise_routes[0].to_string(), "192.168.88.0/24");
        assert_eq!(p.no_stateful_filtering, Some(true));
        assert_eq!(p.config, None, "Config is never read from input");
        let out = serde_json::to_value(&p).unwrap();
        assert_eq!(out["ExitNodeIP"], "");
        assert_eq!(out["AdvertiseTags"], serde_json::Value::Null);
        assert_eq!(out["AdvertiseRoutes"][1], "0.0.0.0/0");
    }

    #[test]
    fn masked_prefs_apply_only_flagged_fields() {
        let mp: MaskedPrefs = serde_json::from_str(
            r#"{"Hostname":"new","HostnameSet":true,"RouteAll":true,"WantRunning":false,"WantRunningSet":true}"#,
        )
        .unwrap();
        let mut p = Prefs {
            want_running: true,
            ..Prefs::default()
        };
        mp.apply_to(&mut p);
        assert_eq!(p.hostname, "new");
        assert!(!p.want_running);
        assert!(!p.route_all, "RouteAll was not flagged");
        let json = serde_json::to_value(&mp).unwrap();
        assert_eq!(json["HostnameSet"], true);
        assert!(json.get("RouteAllSet").is_none());
    }

    #[test]
    fn prefixes_are_checked() {
        assert!("10.0.0.0/8".parse::<IpPrefix>().is_ok());
        assert!("fd00::/64".parse::<IpPrefix>().is_ok());
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "::/129",
            "x/1",
            "1.2.3.4/+1",
            "1.2.3.4/",
        ] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn status_round_trips_and_writes_nulls_like_go() {
        let st = Status {
            version: "1".into(),
            backend_state: "NeedsLogin".into(),
            ..Status::default()
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["Peer"], serde_json::Value::Null);
        assert_eq!(v["TailscaleIPs"], serde_json::Value::Null);
        assert_eq!(v["Self"], serde_json::Value::Null);
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back.state(), Some(BackendState::NeedsLogin));
    }
}

/// Go's `ipnstate.PingResult`: the answer of `POST ping`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PingResult {
    /// The address pinged.
    #[serde(rename = "IP")]
    pub ip: String,
    /// The peer's first Tailscale address.
    #[serde(rename = "NodeIP")]
    pub node_ip: String,
    /// The peer's name (MagicDNS name without the suffix, or host name).
    #[serde(rename = "NodeName")]
    pub node_name: String,
    /// Why the ping failed; empty on success.
    #[serde(rename = "Err", skip_serializing_if = "String::is_empty")]
    pub err: String,
    /// Round-trip time in seconds.
    #[serde(rename = "LatencySeconds", skip_serializing_if = "is_zero_f64")]
    pub latency_seconds: f64,
    /// The direct ip:port that answered; empty over DERP.
    #[serde(rename = "Endpoint", skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// The DERP region that relayed the answer, 0 for direct.
    #[serde(rename = "DERPRegionID", skip_serializing_if = "is_zero_i32")]
    pub derp_region_id: i32,
    /// That region's code.
    #[serde(rename = "DERPRegionCode", skip_serializing_if = "String::is_empty")]
    pub derp_region_code: String,
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

/// The last netcheck report (`GET netcheck`), with the field names of Go's `netcheck.Report`
/// (latencies in nanoseconds, keyed by region ID) and, tailrouter's own addition, the DERP
/// map's region codes and names so the CLI can print them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetcheckReport {
    /// Any STUN round trip completed.
    #[serde(rename = "UDP")]
    pub udp: bool,
    /// An IPv4 STUN round trip completed.
    #[serde(rename = "IPv4")]
    pub ipv4: bool,
    /// An IPv6 STUN round trip completed.
    #[serde(rename = "IPv6")]
    pub ipv6: bool,
    /// Different STUN servers saw different IPv4 ports; `None` when not known.
    #[serde(rename = "MappingVariesByDestIP")]
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// The home DERP region.
    #[serde(rename = "PreferredDERP")]
    pub preferred_derp: i32,
    /// Region ID to latency (ns).
    #[serde(rename = "RegionLatency")]
    pub region_latency: std::collections::BTreeMap<String, u64>,
    /// Region ID to IPv4 latency (ns).
    #[serde(rename = "RegionV4Latency")]
    pub region_v4_latency: std::collections::BTreeMap<String, u64>,
    /// Region ID to IPv6 latency (ns).
    #[serde(rename = "RegionV6Latency")]
    pub region_v6_latency: std::collections::BTreeMap<String, u64>,
    /// Our IPv4 ip:port as STUN saw it; empty when unknown.
    #[serde(rename = "GlobalV4")]
    pub global_v4: String,
    /// Our IPv6 [ip]:port as STUN saw it; empty when unknown.
    #[serde(rename = "GlobalV6")]
    pub global_v6: String,
    /// Region ID to `[code, name]` (tailrouter's addition).
    #[serde(rename = "DERPRegions")]
    pub derp_regions: std::collections::BTreeMap<String, (String, String)>,
}

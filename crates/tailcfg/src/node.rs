//! `tailcfg.Node`, `Hostinfo` and `NetInfo`: who a node is and what it reports about itself.

use crate::de::{is_default, null_default};
use crate::key::{DiscoPublic, MachinePublic, NodePublic};
use crate::net::{IpPrefix, Time};
use crate::{NodeId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// Node capabilities and attributes (`tailcfg.NodeCapMap`): capability name to a list of raw
/// JSON values (often `null` or empty).
pub type CapMap = BTreeMap<String, Option<Vec<serde_json::Value>>>;

/// The IP address the legacy `DERP` string of a node carries: `127.3.3.40:<region>`.
pub const DERP_MAGIC_IP: &str = "127.3.3.40";

/// A node of the tailnet as the control server describes it (self or peer).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct Node {
    /// Numeric node ID.
    #[serde(rename = "ID")]
    pub id: NodeId,
    /// Stable string ID; exit nodes are chosen by it.
    #[serde(rename = "StableID", skip_serializing_if = "String::is_empty")]
    pub stable_id: String,
    /// MagicDNS name with a trailing dot (`host.example.com.`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Owner's user ID.
    pub user: UserId,
    /// The user who shared this node with us, if shared.
    #[serde(skip_serializing_if = "is_default")]
    pub sharer: UserId,
    /// Node key: the WireGuard public key.
    pub key: NodePublic,
    /// When the node key expires; zero means never.
    #[serde(skip_serializing_if = "Time::is_zero")]
    pub key_expiry: Time,
    /// Tailnet-lock signature of the node key (base64), kept opaque.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub key_signature: String,
    /// Machine key.
    pub machine: MachinePublic,
    /// Disco key.
    pub disco_key: DiscoPublic,
    /// The node's own Tailscale addresses (`/32` and `/128`).
    #[serde(deserialize_with = "null_default")]
    pub addresses: Vec<IpPrefix>,
    /// Prefixes routed to this node; `None` (null or absent) means the same as `addresses`.
    #[serde(rename = "AllowedIPs", skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<Vec<IpPrefix>>,
    /// UDP endpoint candidates.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub endpoints: Vec<SocketAddr>,
    /// Legacy home DERP form `127.3.3.40:<region>`; see [`Node::home_derp_region`].
    #[serde(rename = "DERP", skip_serializing_if = "String::is_empty")]
    pub legacy_derp_string: String,
    /// Home DERP region ID (0: none).
    #[serde(rename = "HomeDERP", skip_serializing_if = "is_default")]
    pub home_derp: i32,
    /// The node's Hostinfo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<Hostinfo>,
    /// When the node was created.
    #[serde(skip_serializing_if = "Time::is_zero")]
    pub created: Time,
    /// The node's capability version.
    #[serde(skip_serializing_if = "is_default")]
    pub cap: i32,
    /// ACL tags, e.g. `tag:server`.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
    /// Subnet routes this node is the primary router for.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub primary_routes: Vec<IpPrefix>,
    /// When the node was last seen; meaningful only while offline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// Whether the node is connected to control; `None` means unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Whether the device is approved.
    #[serde(skip_serializing_if = "is_default")]
    pub machine_authorized: bool,
    /// Legacy capability list.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub capabilities: Vec<String>,
    /// Node capabilities and attributes.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub cap_map: CapMap,
    /// Only peerAPI traffic is allowed to and from this peer.
    #[serde(rename = "UnsignedPeerAPIOnly", skip_serializing_if = "is_default")]
    pub unsigned_peer_api_only: bool,
    /// The node's key has expired (set by control).
    #[serde(skip_serializing_if = "is_default")]
    pub expired: bool,
    /// Source address to SNAT our IPv4 traffic to this peer to.
    #[serde(
        rename = "SelfNodeV4MasqAddrForThisPeer",
        skip_serializing_if = "Option::is_none"
    )]
    pub self_node_v4_masq_addr_for_this_peer: Option<IpAddr>,
    /// Source address to SNAT our IPv6 traffic to this peer to.
    #[serde(
        rename = "SelfNodeV6MasqAddrForThisPeer",
        skip_serializing_if = "Option::is_none"
    )]
    pub self_node_v6_masq_addr_for_this_peer: Option<IpAddr>,
    /// A plain WireGuard peer (no disco, no DERP).
    #[serde(skip_serializing_if = "is_default")]
    pub is_wire_guard_only: bool,
    /// Traffic from this peer must be filtered as if from outside.
    #[serde(skip_serializing_if = "is_default")]
    pub is_jailed: bool,
}

impl Node {
    /// The home DERP region: `HomeDERP`, else the port of a legacy `127.3.3.40:<region>`.
    pub fn home_derp_region(&self) -> i32 {
        if self.home_derp != 0 {
            return self.home_derp;
        }
        self.legacy_derp_string
            .strip_prefix(DERP_MAGIC_IP)
            .and_then(|r| r.strip_prefix(':'))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// The prefixes to route to this node: `AllowedIPs`, or `Addresses` when it is null.
    pub fn effective_allowed_ips(&self) -> &[IpPrefix] {
        self.allowed_ips.as_deref().unwrap_or(&self.addresses)
    }

    /// Client-side normalisation as Go's `upgradeNode`: legacy `DERP` string into `HomeDERP`,
    /// null `AllowedIPs` into a copy of `Addresses`.
    pub fn normalize(&mut self) {
        self.home_derp = self.home_derp_region();
        self.legacy_derp_string.clear();
        if self.allowed_ips.is_none() {
            self.allowed_ips = Some(self.addresses.clone());
        }
    }
}

/// What a node reports about itself (`tailcfg.Hostinfo`). Every field is optional on the wire.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct Hostinfo {
    /// Client version, e.g. `1.90.0-rust`.
    #[serde(rename = "IPNVersion", skip_serializing_if = "String::is_empty")]
    pub ipn_version: String,
    /// Log ID of the frontend.
    #[serde(rename = "FrontendLogID", skip_serializing_if = "String::is_empty")]
    pub frontend_log_id: String,
    /// Log ID of the backend: 64 hex digits; the Go client will not register without one.
    #[serde(rename = "BackendLogID", skip_serializing_if = "String::is_empty")]
    pub backend_log_id: String,
    /// Operating system, `linux`.
    #[serde(rename = "OS", skip_serializing_if = "String::is_empty")]
    pub os: String,
    /// Operating system version.
    #[serde(rename = "OSVersion", skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    /// Whether running in a container (Go `opt.Bool`: null when unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<bool>,
    /// Environment hint (`kn`, `fly`, …).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub env: String,
    /// Linux distribution.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub distro: String,
    /// Distribution version.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub distro_version: String,
    /// Application name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub app: String,
    /// Device model.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device_model: String,
    /// Host name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Blocks all incoming connections.
    #[serde(skip_serializing_if = "is_default")]
    pub shields_up: bool,
    /// The node is shared in from another tailnet.
    #[serde(skip_serializing_if = "is_default")]
    pub sharee_node: bool,
    /// The user opted out of logging.
    #[serde(skip_serializing_if = "is_default")]
    pub no_logs_no_support: bool,
    /// Machine hardware name (`uname -m`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub machine: String,
    /// CPU architecture in Go's naming (`amd64`, `arm64`, `arm`, `mipsle`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub go_arch: String,
    /// Routes this node advertises (subnets, and `0.0.0.0/0` + `::/0` for an exit node).
    #[serde(
        rename = "RoutableIPs",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub routable_ips: Vec<IpPrefix>,
    /// ACL tags this node asks for.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub request_tags: Vec<String>,
    /// Services listening on the node (peerAPI ports among them).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub services: Vec<Service>,
    /// Network conditions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_info: Option<NetInfo>,
    /// SSH host keys (the one lower-case JSON name).
    #[serde(
        rename = "sshHostKeys",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ssh_host_keys: Vec<String>,
    /// Cloud provider, if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cloud: String,
    /// Running with a userspace network stack (Go `opt.Bool`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userspace: Option<bool>,
    /// Routing through a userspace router (Go `opt.Bool`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userspace_router: Option<bool>,
}

/// A service listening on a node (`tailcfg.Service`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct Service {
    /// `tcp`, `udp`, `peerapi4`, `peerapi6` or `peerapi-dns-proxy`.
    pub proto: String,
    /// Port number.
    pub port: u16,
    /// Free text.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Network conditions a node reports (`tailcfg.NetInfo`). `Option<bool>` fields are Go
/// `opt.Bool`: null when unknown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct NetInfo {
    /// The NAT maps differently per destination (hard NAT).
    #[serde(
        rename = "MappingVariesByDestIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// IPv6 works.
    #[serde(rename = "WorkingIPv6", skip_serializing_if = "Option::is_none")]
    pub working_ipv6: Option<bool>,
    /// The OS has IPv6.
    #[serde(rename = "OSHasIPv6", skip_serializing_if = "Option::is_none")]
    pub os_has_ipv6: Option<bool>,
    /// UDP works.
    #[serde(rename = "WorkingUDP", skip_serializing_if = "Option::is_none")]
    pub working_udp: Option<bool>,
    /// ICMPv4 works.
    #[serde(rename = "WorkingICMPv4", skip_serializing_if = "Option::is_none")]
    pub working_icmpv4: Option<bool>,
    /// A port mapping protocol is available.
    #[serde(skip_serializing_if = "is_default")]
    pub have_port_map: bool,
    /// UPnP is available.
    #[serde(rename = "UPnP", skip_serializing_if = "Option::is_none")]
    pub upnp: Option<bool>,
    /// NAT-PMP is available.
    #[serde(rename = "PMP", skip_serializing_if = "Option::is_none")]
    pub pmp: Option<bool>,
    /// PCP is available.
    #[serde(rename = "PCP", skip_serializing_if = "Option::is_none")]
    pub pcp: Option<bool>,
    /// Home DERP region; headscale copies it into the node's `HomeDERP`.
    #[serde(rename = "PreferredDERP", skip_serializing_if = "is_default")]
    pub preferred_derp: i32,
    /// `wired`, `wifi`, `mobile`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link_type: String,
    /// `"<region>-v4"`/`"<region>-v6"` to latency in seconds.
    #[serde(
        rename = "DERPLatency",
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub derp_latency: BTreeMap<String, f64>,
    /// Firewall mode in use on Linux (`ipt-*`, `nft-*`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub firewall_mode: String,
}

//! The map long-poll: `MapRequest` and the full or delta `MapResponse`.

use crate::de::{is_default, null_default};
use crate::derp::DerpMap;
use crate::dns::DnsConfig;
use crate::filter::FilterRule;
use crate::key::{DiscoPublic, NodePublic};
use crate::net::Time;
use crate::node::{CapMap, Hostinfo, Node};
use crate::{NodeId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// A request for the network map (`POST /machine/map`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct MapRequest {
    /// The capability version.
    pub version: i32,
    /// `"zstd"` to have each message compressed; empty for plain JSON.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub compress: String,
    /// Ask for keep-alive messages on a stream.
    pub keep_alive: bool,
    /// The current node key.
    pub node_key: NodePublic,
    /// The current disco key.
    pub disco_key: DiscoPublic,
    /// Long poll (true) or one answer (false).
    pub stream: bool,
    /// The node's Hostinfo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<Hostinfo>,
    /// Handle of a previous stream to resume.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub map_session_handle: String,
    /// Last sequence number seen on that stream.
    #[serde(skip_serializing_if = "is_default")]
    pub map_session_seq: i64,
    /// UDP endpoint candidates.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub endpoints: Vec<SocketAddr>,
    /// Kinds of `endpoints`, index for index (see [`EndpointType`]).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub endpoint_types: Vec<i32>,
    /// Tailnet-lock head.
    #[serde(rename = "TKAHead", skip_serializing_if = "String::is_empty")]
    pub tka_head: String,
    /// Skip peers in the answer (a "lite" update of endpoints or Hostinfo).
    #[serde(skip_serializing_if = "is_default")]
    pub omit_peers: bool,
    /// Debug flags such as `warn-ip-forwarding-off`.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub debug_flags: Vec<String>,
}

/// Kinds of endpoint in [`MapRequest::endpoint_types`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndpointType {
    /// Unknown.
    Unknown = 0,
    /// A local interface address.
    Local = 1,
    /// Learnt by STUN.
    Stun = 2,
    /// Mapped by UPnP, NAT-PMP or PCP.
    PortMapped = 3,
    /// STUN address with the local port (hard NAT guess).
    Stun4LocalPort = 4,
    /// Configured explicitly.
    ExplicitConf = 5,
}

/// One message of the map stream: a full map, a delta, or a keep-alive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct MapResponse {
    /// Opaque handle of this stream, for resumption.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub map_session_handle: String,
    /// Sequence number within the stream.
    #[serde(skip_serializing_if = "is_default")]
    pub seq: i64,
    /// A keep-alive: everything but `PingRequest`, `ControlTime` and `PopBrowserURL` ignored.
    #[serde(skip_serializing_if = "is_default")]
    pub keep_alive: bool,
    /// The server asks the client to check in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_request: Option<PingRequest>,
    /// Open this URL (once).
    #[serde(rename = "PopBrowserURL", skip_serializing_if = "String::is_empty")]
    pub pop_browser_url: String,
    /// The self node; `None` means unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    /// The DERP map; `None` means unchanged.
    #[serde(rename = "DERPMap", skip_serializing_if = "Option::is_none")]
    pub derp_map: Option<DerpMap>,
    /// The full peer list; when non-empty it replaces the peers and the deltas are ignored.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers: Vec<Node>,
    /// Peers added or replaced whole.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers_changed: Vec<Node>,
    /// Peers removed.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers_removed: Vec<NodeId>,
    /// Field-by-field peer changes.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub peers_changed_patch: Vec<PeerChange>,
    /// Peer to "seen now" (true) or "clear last seen" (false).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub peer_seen_change: BTreeMap<NodeId, bool>,
    /// Peer to its online state.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub online_change: BTreeMap<NodeId, bool>,
    /// The DNS configuration; `None` means unchanged.
    #[serde(rename = "DNSConfig", skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
    /// Tailnet name; empty means unchanged.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// The `"base"` filter; `None` means unchanged, `Some(empty)` means deny all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet_filter: Option<Vec<FilterRule>>,
    /// Named filters: a `None` value deletes that name, `"*": null` clears all first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet_filters: Option<BTreeMap<String, Option<Vec<FilterRule>>>>,
    /// New or updated user profiles.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub user_profiles: Vec<UserProfile>,
    /// The SSH policy, kept raw; `None` means unchanged.
    #[serde(rename = "SSHPolicy", skip_serializing_if = "Option::is_none")]
    pub ssh_policy: Option<serde_json::Value>,
    /// Health warnings; `None` means unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Vec<String>>,
    /// The server's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_time: Option<Time>,
}

impl MapResponse {
    /// A keep-alive message, as servers send every minute or so.
    pub fn keep_alive() -> Self {
        Self {
            keep_alive: true,
            ..Self::default()
        }
    }
}

/// A field-by-field change of one peer; `None` fields are unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct PeerChange {
    /// The peer; unknown IDs are ignored.
    #[serde(rename = "NodeID")]
    pub node_id: NodeId,
    /// New home DERP region (0: unchanged).
    #[serde(rename = "DERPRegion", skip_serializing_if = "is_default")]
    pub derp_region: i32,
    /// New capability version (0: unchanged).
    #[serde(skip_serializing_if = "is_default")]
    pub cap: i32,
    /// New capability map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap_map: Option<CapMap>,
    /// New endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<SocketAddr>>,
    /// New node key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<NodePublic>,
    /// New node-key signature (base64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_signature: Option<String>,
    /// New disco key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disco_key: Option<DiscoPublic>,
    /// New online state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// New last-seen time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// New key expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_expiry: Option<Time>,
}

/// A user's public profile (`tailcfg.UserProfile`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct UserProfile {
    /// User ID.
    #[serde(rename = "ID")]
    pub id: UserId,
    /// Login name.
    pub login_name: String,
    /// Display name.
    pub display_name: String,
    /// Avatar URL.
    #[serde(rename = "ProfilePicURL", skip_serializing_if = "String::is_empty")]
    pub profile_pic_url: String,
    /// Groups.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub groups: Vec<String>,
}

/// The server asking the client to check in or to ping something.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct PingRequest {
    /// Where to answer.
    #[serde(rename = "URL")]
    pub url: String,
    /// Answer over the Noise connection rather than plain HTTPS.
    #[serde(rename = "URLIsNoise", skip_serializing_if = "is_default")]
    pub url_is_noise: bool,
    /// Log the ping.
    #[serde(skip_serializing_if = "is_default")]
    pub log: bool,
    /// Empty (an HTTP HEAD to `URL`), or comma-separated `disco`, `TSMP`, `ICMP`, `peerapi`, `c2n`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub types: String,
    /// Address to ping.
    #[serde(rename = "IP", skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// Base64 payload (a whole HTTP request for c2n).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub payload: String,
}

//! Tailscale wire types shared by every tailrouter crate.
//!
//! Owns the data the control plane and the parts exchange: node, machine and disco keys with
//! their text forms (`nodekey:…`), `Node`, `Hostinfo`, `MapRequest`/`MapResponse`, the DERP map,
//! the DNS configuration and packet filter rules, in the JSON shapes Tailscale sends them.
//! It does no I/O and depends on no other tailrouter crate: everything else depends on it.
//!
//! JSON follows Go's `encoding/json` as Tailscale uses it: field names are the Go names
//! (PascalCase, with the few renames Tailscale makes), a missing field or a `null` slice or map
//! is the zero value, unknown fields are ignored, maps keyed by integers (region and node IDs)
//! have decimal string keys. Zero fields are left out when writing, like Go's `omitempty`.

pub mod anchors;
pub mod control;
mod de;
pub mod derp;
pub mod dns;
pub mod filter;
pub mod key;
pub mod map;
pub mod net;
pub mod node;

pub use control::{
    EarlyNoise, Login, OverTlsPublicKeyResponse, RegisterAuth, RegisterRequest, RegisterResponse,
    User,
};
pub use derp::{DerpHomeParams, DerpMap, DerpNode, DerpRegion};
pub use dns::{DnsConfig, DnsRecord, Resolver};
pub use filter::{CapGrant, FilterRule, NetPortRange, PortRange};
pub use map::{EndpointType, MapRequest, MapResponse, PeerChange, PingRequest, UserProfile};
pub use net::{IpPrefix, Time};
pub use node::{CapMap, Hostinfo, NetInfo, Node, Service};

/// A node's numeric ID (`tailcfg.NodeID`).
pub type NodeId = i64;
/// A user's numeric ID (`tailcfg.UserID`).
pub type UserId = i64;

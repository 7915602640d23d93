//! Packet filter rules as control sends them (`tailcfg.FilterRule`).

use crate::de::null_default;
use crate::net::IpPrefix;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One allow rule. Sources and destinations are kept as text: they may be `*`, an address,
/// a CIDR, a range `a-b`, or (sources only) `cap:<capability>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct FilterRule {
    /// Source addresses.
    #[serde(rename = "SrcIPs", deserialize_with = "null_default")]
    pub src_ips: Vec<String>,
    /// Deprecated; a Go client refuses a filter that has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_bits: Option<Vec<i32>>,
    /// Destinations and ports.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub dst_ports: Vec<NetPortRange>,
    /// IP protocol numbers; empty means TCP, UDP, ICMPv4 and ICMPv6.
    #[serde(
        rename = "IPProto",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_proto: Vec<i32>,
    /// Application capability grants (instead of `DstPorts`).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cap_grant: Vec<CapGrant>,
}

/// A destination of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct NetPortRange {
    /// Destination, same syntax as a source except `cap:`.
    #[serde(rename = "IP")]
    pub ip: String,
    /// Deprecated; refused if present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits: Option<i32>,
    /// Inclusive port range.
    pub ports: PortRange,
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

impl PortRange {
    /// A range from `first` to `last` inclusive.
    pub const fn new(first: u16, last: u16) -> Self {
        Self { first, last }
    }
}

/// Capabilities granted to sources towards some destinations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct CapGrant {
    /// Destination prefixes.
    #[serde(deserialize_with = "null_default")]
    pub dsts: Vec<IpPrefix>,
    /// Legacy capability names.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub caps: Vec<String>,
    /// Capability name to raw JSON values.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub cap_map: BTreeMap<String, Option<Vec<serde_json::Value>>>,
}

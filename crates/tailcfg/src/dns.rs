//! The DNS configuration control pushes (`tailcfg.DNSConfig`).

use crate::de::{is_default, null_default};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// DNS settings for the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct DnsConfig {
    /// Upstream resolvers for all queries (when control overrides local DNS).
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resolvers: Vec<Resolver>,
    /// Split DNS: suffix to resolvers; an empty or null list means "answer locally / NXDOMAIN".
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub routes: BTreeMap<String, Option<Vec<Resolver>>>,
    /// Resolvers used only when the OS has none.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub fallback_resolvers: Vec<Resolver>,
    /// Search domains.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub domains: Vec<String>,
    /// MagicDNS is on.
    #[serde(skip_serializing_if = "is_default")]
    pub proxied: bool,
    /// Deprecated plain resolver addresses.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub nameservers: Vec<IpAddr>,
    /// Domains the node may get TLS certificates for.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cert_domains: Vec<String>,
    /// Extra records served by MagicDNS.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub extra_records: Vec<DnsRecord>,
    /// Suffixes not forwarded through an exit node.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exit_node_filtered_set: Vec<String>,
}

/// An upstream resolver (`dnstype.Resolver`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct Resolver {
    /// `1.1.1.1`, `1.1.1.1:53`, `https://…` (DoH) or `http://…`.
    pub addr: String,
    /// Addresses for a DoH host name.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub bootstrap_resolution: Vec<IpAddr>,
    /// Use this resolver also while an exit node is in use.
    #[serde(skip_serializing_if = "is_default")]
    pub use_with_exit_node: bool,
}

/// An extra DNS record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct DnsRecord {
    /// Fully qualified name.
    pub name: String,
    /// `A` or `AAAA`; empty means inferred from the value.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub r#type: String,
    /// The address.
    pub value: String,
}

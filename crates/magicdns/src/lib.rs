//! MagicDNS: the resolver behind 100.100.100.100.
//!
//! Owns the resolver configuration derived from the network map's DNS settings, the answering
//! logic (sans-IO: query bytes in, an answer or "forward this" out) for tailnet names, reverse
//! zones and extra records, upstream forwarding with split-DNS routes, a bounded TTL-respecting
//! cache, and the `/etc/resolv.conf` manager for direct mode.
//! It knows nothing of packets or smoltcp: the netstack hands it query bytes.
//!
//! Modules:
//! - [`config`]: `tailcfg::DnsConfig` plus the netmap's nodes into a [`config::ResolverConfig`].
//! - [`answer`]: the sans-IO resolver: query bytes in, an answer or a forward decision out.
//! - [`cache`]: the bounded, TTL-respecting cache of forwarded answers.
//! - [`forward`]: the tokio driver that sends a query to upstream resolvers (UDP, TCP on
//!   truncation), with timeouts.
//! - [`resolvconf`]: `/etc/resolv.conf` in direct mode (backup, write, restore).

pub mod answer;
pub mod cache;
pub mod config;
pub mod forward;
pub mod resolvconf;

pub use answer::{Outcome, Resolver, Transport};
pub use cache::{Cache, CacheLimits};
pub use config::{ConfigOptions, Host, ResolverConfig, Route, parse_upstream};
pub use forward::{ForwardError, Forwarder, ForwarderConfig};
pub use resolvconf::{BaseConfig, ResolvConf};

use std::net::SocketAddr;

/// An upstream resolver a query may be forwarded to, parsed from `tailcfg::Resolver::addr`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Upstream {
    /// Plain DNS: UDP, with TCP when the answer is truncated (`1.1.1.1`, `1.1.1.1:53`,
    /// `[2606:4700::1111]:53`).
    Plain(SocketAddr),
    /// DNS over HTTPS (`https://…`) or over HTTP to an exit node's peer API
    /// (`http://<peer-ip>:<port>/dns-query`). Kept so the configuration is complete; the
    /// forwarder answers SERVFAIL for it until the exit-node work lands.
    Https(String),
}

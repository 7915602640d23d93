//! Port mapping through the local gateway: NAT-PMP, PCP and UPnP IGD.
//!
//! The node asks its default gateway to forward a UDP port on the gateway's external address
//! to the WireGuard port here, so peers behind other NATs can reach it directly. The mapped
//! address is what the daemon reports to control as endpoint type 3.
//!
//! What it owns:
//! - sans-IO codecs, each parser total (malformed input is an error, never a panic):
//!   [`natpmp`] (RFC 6886), [`pcp`] (RFC 6887), [`upnp`] (SSDP, the device description, SOAP)
//!   over the minimal HTTP/1.1 of [`http`], and the default gateway from `/proc/net/route`
//!   ([`route`]);
//! - a tokio driver, [`Client`]: [`Client::probe`] says which protocols the gateway speaks,
//!   [`Client::map`] returns a [`Mapping`] (made, cached, or renewed at half its lifetime),
//!   [`Client::release`] deletes it, and [`Client::maintain`] does all of it until told to
//!   stop, calling back whenever the external endpoint changes.
//!
//! Protocols are tried in [`Config::protocols`] order among those that answered the probe:
//! NAT-PMP, then PCP, then UPnP by default, as Tailscale does. Every socket carries
//! [`Config::socket_mark`] when it is non-zero, every wait has a timeout, every read a size
//! limit. IPv4 only. It knows nothing of the rest of tailrouter.

#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

mod client;
mod error;
pub mod http;
mod mapping;
pub mod natpmp;
pub mod pcp;
pub mod route;
pub mod upnp;

pub use client::{Client, Config, PROBE_TTL, ProbeResult};
pub use error::{Error, Result};
pub use mapping::{MAX_SCHEDULED_LIFETIME, Mapping, Protocol, UnknownProtocol};

//! The TUN device and the hooks every packet passes through.
//!
//! Owns the kernel TUN device (name and MTU), batched reads and writes, and the hook chain:
//! the outbound intercept that hands quad-100 traffic to the netstack (only in builds with the
//! `netstack` tag; without it the hook does not exist at all), the packet filter in both
//! directions with connection tracking, and injection of packets the node itself generates.
//! No feature combination may make a hook panic.
//!
//! - [`tun`]: the kernel TUN device with non-blocking tokio I/O and batched reads and writes;
//!   [`tun::FdTun`] drives a TUN descriptor the caller opened (embedding firmware).
//! - [`hooks`]: the chain every packet meets: the service-address intercept (netstack tag),
//!   the packet filter out and in.
//! - [`tsmp`]: TSMP (IP protocol 99), Tailscale's in-tunnel messages, sans-IO: parse pings,
//!   pongs, rejects and disco key adverts, build them byte for byte as Go does, answer pings.
//!
//! The packet filter ([`filter`]) is Tailscale's, sans-IO: rules compiled from the netmap, a
//! bounded flow table driven by the caller's clock, and a zero-copy packet summary parser.

pub mod filter;
pub mod hooks;
pub mod tsmp;
pub mod tun;

//! MagicDNS: the resolver behind 100.100.100.100.
//!
//! Owns the resolver configuration derived from the network map's DNS settings, the answering
//! logic (sans-IO: query bytes in, an answer or "forward this" out) for tailnet names, reverse
//! zones and extra records, upstream forwarding with split-DNS routes, a bounded TTL-respecting
//! cache, and the `/etc/resolv.conf` manager for direct mode.
//! It knows nothing of packets or smoltcp: the netstack hands it query bytes.
//!
//! Status: crate boundary only; it lands with issue 5.

//! Port mapping through the local gateway: NAT-PMP, PCP and UPnP IGD.
//!
//! Owns the three protocols' message codecs (sans-IO) and a driver that asks the gateway for a
//! mapping of the WireGuard UDP port, renews it and reports the mapped endpoint, so the daemon
//! can tell control about it and peers get a direct path.
//! It knows nothing of the rest of tailrouter.
//!
//! Status: crate boundary only; it lands with issue 6.

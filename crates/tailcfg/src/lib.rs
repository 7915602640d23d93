//! Tailscale wire types shared by every tailrouter crate.
//!
//! Owns the data the control plane and the parts exchange: node, machine and disco keys with
//! their text forms (`nodekey:…`), `Node`, `Hostinfo`, `MapRequest`/`MapResponse`, the DERP map,
//! the DNS configuration and packet filter rules, in the JSON shapes Tailscale sends them.
//! It does no I/O and depends on no other tailrouter crate: everything else depends on it.
//!
//! Status: keys ([`key`]) are here; the message types arrive with the control client (issue 3).

pub mod key;

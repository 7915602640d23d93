//! The data plane engine: WireGuard peers and the magicsock transport.
//!
//! Owns one boringtun `Tunn` per peer (keyed by node key), the AllowedIPs table, and magicsock:
//! the UDP sockets shared by WireGuard, disco and STUN, the DERP client, disco path discovery and
//! the choice of the best path per peer (direct UDP or a DERP region). Path logic is a sans-IO
//! state machine; the socket drivers are thin.
//! It knows nothing of the control protocol or DNS: it is configured by plain values.
//!
//! Status: crate boundary only; the engine lands with issue 4.

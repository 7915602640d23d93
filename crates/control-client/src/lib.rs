//! The control-plane client: ts2021 and the map long-poll.
//!
//! Owns the ts2021 transport (server key fetch, HTTP upgrade, Noise IK with Tailscale's
//! big-endian nonce, HTTP/2 over the Noise channel), registration with an auth key or an
//! interactive URL, and the streamed map responses assembled into a network map from full and
//! delta updates. The protocol core is sans-IO: it consumes bytes and `Instant`s and produces
//! bytes, timers and events; the socket driver is a thin layer at the edge.
//! It knows nothing of packets or the OS.
//!
//! Status: crate boundary only; the protocol lands with issue 3.

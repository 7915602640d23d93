//! The LocalAPI between the `tailscale` CLI (and other local clients) and the daemon.
//!
//! Owns HTTP over a unix socket with Tailscale's paths and JSON shapes (status, prefs, start,
//! login, logout, the notification bus), peer-credential checks on every connection, a server
//! over a `Backend` trait, and the client the CLI uses.
//! It knows nothing of how the backend works.
//!
//! Status: crate boundary only; it lands with issue 3.

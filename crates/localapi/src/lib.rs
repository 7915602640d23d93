//! The LocalAPI between the `tailscale` CLI (and other local clients) and the daemon.
//!
//! Owns HTTP over a unix socket with Tailscale's paths and JSON shapes, peer-credential checks
//! on every connection, a server over a [`Backend`] trait, and the [`Client`] the CLI uses.
//! It knows nothing of how the backend works.
//!
//! - [`types`]: `Prefs`, `MaskedPrefs`, `Options`, `Notify`, `Status` with Go's field names.
//! - [`server`]: [`Server::bind`] the socket (default [`DEFAULT_SOCKET`]; parent directory
//!   0755, stale socket removed, socket 0666) and [`Server::serve`] it. Each connection's peer
//!   credentials decide its [`Access`]: root or the daemon's own uid may change things, anyone
//!   else may only read (status, prefs, the bus), like Go's unix socket identity rules.
//! - [`http`]: a small strict HTTP/1.1 (why not hyper: see its module doc).
//! - [`client`]: one connection per call; `watch_ipn_bus` streams newline-delimited `Notify`s.
//!
//! Endpoints (all under `/localapi/v0/`): `GET status`, `GET`/`PATCH prefs`, `POST start`,
//! `POST login-interactive`, `POST logout`, `GET watch-ipn-bus?mask=N`. Errors are JSON
//! `{"error": "…"}` with 400, 403, 404, 405, 413, 431, 500 or 503.

pub mod client;
pub mod http;
pub mod server;
pub mod types;

pub use client::{Client, ClientError, Watcher};
pub use server::{Access, Backend, BackendError, Server, ServerError};
pub use types::{
    BackendState, IpPrefix, MaskedPrefs, NetcheckReport, Notify, Options, PeerStatus, PingResult,
    Prefs, Status, TailnetStatus, UserProfile,
};

/// Where tailscaled listens by default on Linux.
pub const DEFAULT_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";

/// Encodes a status as `tailscale status --json` prints it (Go's two-space indent).
pub fn status_json(st: &Status) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(st)
}

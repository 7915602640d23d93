//! tailrouter's daemon core.
//!
//! Owns the node's state machine (NoState, NeedsLogin, NeedsMachineAuth, Starting, Running,
//! Stopped), its preferences, the one state file, and the wiring between the parts: it turns
//! each network map from the control client into plain configuration values for the engine,
//! the packet filter, MagicDNS and the OS router, and serves the LocalAPI backend.
//!
//! This is the one crate where feature tags are composed: each built tag of
//! `featuretags.toml` is a Cargo feature here that enables the crates implementing it.
//! [`tags`] tells at run time which tags this build has.
//!
//! - [`state`]: the one state file ([`state::StateStore`], [`state::FileStore`],
//!   [`state::MemStore`]), its format, atomic writes and the import of Go tailscaled's file.
//! - [`backend`]: the state machine and [`backend::LocalBackend`], the LocalAPI backend, with
//!   the narrow [`backend::ControlClient`] trait the control client will plug into.
//! - [`control`]: the control client driver ([`control::Driver`]), the `control-client`
//!   crate wired into the backend: registration, the map long-poll, reconnects, logout.
//! - `dns` (with the `netstack` tag): quad-100, the netstack fed by the TUN hook and, with the
//!   `dns` tag, MagicDNS answering it.
//! - [`node`]: the whole node behind one builder ([`node::Node::builder`]), for firmware that
//!   embeds the core: a caller-provided state store and TUN device, an optional LocalAPI.
//! - `peerapi` (with the `peerapiserver` tag): the PeerAPI server on the tailnet addresses,
//!   answering DNS for the nodes that use this one as exit node.
//! - [`localapi`] is re-exported so the binary reaches the server and client through the core.

pub mod backend;
pub mod control;
pub mod dataplane;
#[cfg(feature = "netstack")]
pub mod dns;
pub mod node;
#[cfg(feature = "peerapiserver")]
mod peerapi;
pub mod routing;
pub mod state;
pub mod tags;

pub use localapi;

/// The `SO_MARK` on every socket the node opens towards the outside (WireGuard UDP, DERP,
/// control, DNS forwarding, port mapping), so policy routing keeps them out of the tunnel:
/// osrouter's bypass mark, or none in builds that leave the host's routing alone.
#[cfg(feature = "osrouter")]
pub const SOCKET_MARK: u32 = osrouter::BYPASS_MARK;
/// The `SO_MARK` on the node's own sockets: none without osrouter (no policy routing).
#[cfg(not(feature = "osrouter"))]
pub const SOCKET_MARK: u32 = 0;

/// The version of tailrouter.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The tags compiled into this build, sorted by name.
pub fn enabled_tags() -> impl Iterator<Item = &'static str> {
    tags::ALL
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
}

/// The message for something asked of a build that lacks its tag: `"{what}: this build has no
/// {tag} feature tag"`. The CLI names the flag, the LocalAPI the pref.
pub fn no_tag(what: &str, tag: &str) -> String {
    format!("{what}: this build has no {tag} feature tag")
}

/// The tags as `--version` prints them: comma-separated, or `(none)`.
pub fn tags_line() -> String {
    let v: Vec<&str> = enabled_tags().collect();
    if v.is_empty() {
        "(none)".to_string()
    } else {
        v.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_line_matches_cargo_features() {
        let line = tags_line();
        assert_eq!(line.contains("dns"), cfg!(feature = "dns"));
        assert_eq!(line.contains("netstack"), cfg!(feature = "netstack"));
        assert_eq!(line.contains("osrouter"), cfg!(feature = "osrouter"));
        assert_eq!(line == "(none)", tags::ALL.iter().all(|(_, on)| !on));
    }

    #[test]
    fn all_is_sorted_and_unique() {
        let names: Vec<&str> = tags::ALL.iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
    }
}

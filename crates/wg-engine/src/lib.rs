//! The data plane engine: WireGuard peers and the magicsock transport.
//!
//! Owns one boringtun `Tunn` per peer (keyed by node key), the AllowedIPs table, and magicsock:
//! the UDP sockets shared by WireGuard, disco and STUN, the DERP client, disco path discovery and
//! the choice of the best path per peer (direct UDP or a DERP region). Path logic is a sans-IO
//! state machine; the socket drivers are thin.
//! It knows nothing of the control protocol or DNS: it is configured by plain values.
//!
//! What exists so far (issue 4), each a sans-IO core fed bytes and `Instant`s:
//!
//! - [`nacl`]: NaCl `crypto_box` with a precomputed key per peer, as DERP and disco use it.
//! - [`derp`]: the DERP frame codec ([`derp::Frame`]), the HTTP upgrade, the client connection
//!   state machine ([`derp::Connection`]) and a thin tokio driver ([`derp::client`]).
//! - [`disco`]: disco packets and messages (Ping, Pong, CallMeMaybe), sealing with per-peer
//!   keys, and the classifier that tells disco, STUN and WireGuard apart on one UDP socket.
//! - [`stun`]: the binding request Tailscale sends and the parsing of the answer.
//! - [`netcheck`]: the STUN report over the DERP regions and the choice of the home region.
//! - [`wireguard`]: peers on boringtun's sans-IO `Tunn` ([`wireguard::Peers`]) and the
//!   AllowedIPs longest-prefix-match table; datagrams go out to a caller-owned endpoint type.
//! - [`udp`]: UDP receive offload (`UDP_GRO`): turning it on, and cutting a coalesced
//!   receive into its datagrams by the segment size of its control message.
//!
//! Parsers meant for fuzzing: [`derp::Frame::parse`], [`derp::http::parse_upgrade_response`],
//! [`disco::Packet::parse`], [`disco::Message::parse`], [`disco::classify`],
//! [`stun::parse_response`], [`stun::parse_binding_request`] and [`udp::gro_segment_size`].

pub mod derp;
pub mod disco;
pub mod engine;
pub mod magicsock;
pub mod nacl;
pub mod netcheck;
pub mod stun;
pub mod udp;
pub mod wireguard;

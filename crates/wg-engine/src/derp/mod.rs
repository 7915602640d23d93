//! DERP, Tailscale's relay: frames, the HTTP upgrade, a sans-IO client connection and a thin
//! tokio driver (protocol.md §5).
//!
//! - [`Frame`]: parse and emit every frame type over byte buffers ([`Frame::parse`] is the
//!   fuzzing entry point). Sizes are enforced from the header: 1 MiB per frame, 64 KiB per
//!   packet, 256 KiB per ClientInfo.
//! - [`http`]: the `GET /derp` upgrade request and the parsing of its `101` answer.
//! - [`Connection`]: the client state machine after the upgrade. Feed it the server's bytes
//!   with [`Connection::handle_input`], write out [`Connection::pending_transmit`], wake it
//!   at [`Connection::poll_timeout`] with [`Connection::handle_timeout`], drain
//!   [`Connection::poll_event`]. It answers ServerKey with ClientInfo, waits for ServerInfo,
//!   answers Pings, pings the server after a minute of silence and gives up after two.
//! - [`client`]: connects to a `http://` or `https://` URL and runs a [`Connection`] on a
//!   task ([`client::Client::over`] takes any byte stream).
//! - [`dial`]: dials a region of the DERP map as Go does ([`dial::connect_region`]): node
//!   order, ports, address families, TLS 1.2/1.3 with `CertName` and `sha256-raw:` pins.

mod cert;
pub mod client;
mod conn;
pub mod dial;
mod frame;
pub mod http;

pub use conn::{Config, ConnError, Connection, Event, MAX_PENDING_TRANSMIT};
pub use frame::{
    FRAME_HEADER_LEN, Frame, FrameError, FrameType, KEY_LEN, MAGIC, MAX_CLIENT_INFO_LEN,
    MAX_FRAME_LEN, MAX_PACKET_SIZE, NONCE_LEN, PING_LEN, PROTOCOL_VERSION, PeerGoneReason,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A DERP mesh key: lets a server (or a trusted client) watch connections and forward
/// packets. Written as 64 hex digits in JSON; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct MeshKey([u8; 32]);

impl MeshKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
}

impl fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MeshKey(redacted)")
    }
}

impl Serialize for MeshKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for MeshKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut s = String::deserialize(d)?;
        let mut k = [0u8; 32];
        let r = hex::decode_to_slice(&s, &mut k);
        s.zeroize();
        r.map_err(|_| serde::de::Error::custom("mesh key is not 64 hex digits"))?;
        Ok(Self(k))
    }
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// What the client tells the server in its first frame, as JSON inside a NaCl box. Field
/// names and omissions follow Go's `derp.ClientInfo`:
/// `{"version":2,"CanAckPings":true}` for a normal client.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The mesh key, for mesh peers only.
    #[serde(rename = "meshKey", default, skip_serializing_if = "Option::is_none")]
    pub mesh_key: Option<MeshKey>,
    /// The DERP protocol version (2).
    #[serde(rename = "version", default, skip_serializing_if = "is_zero_u32")]
    pub version: u32,
    /// Whether the client answers Pings with Pongs.
    #[serde(rename = "CanAckPings", default)]
    pub can_ack_pings: bool,
    /// Whether the client is a prober.
    #[serde(rename = "IsProber", default, skip_serializing_if = "is_false")]
    pub is_prober: bool,
}

/// What the server tells the client after accepting it, as JSON inside a NaCl box. Zero or
/// missing token-bucket fields mean no rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's DERP protocol version.
    #[serde(rename = "version", default, skip_serializing_if = "is_zero_u32")]
    pub version: u32,
    /// The rate the client may send at, in bytes per second.
    #[serde(
        rename = "TokenBucketBytesPerSecond",
        default,
        skip_serializing_if = "is_zero_u64"
    )]
    pub token_bucket_bytes_per_second: u64,
    /// The burst the client may send, in bytes.
    #[serde(
        rename = "TokenBucketBytesBurst",
        default,
        skip_serializing_if = "is_zero_u64"
    )]
    pub token_bucket_bytes_burst: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_info_json_as_go_writes_it() {
        let ci = ClientInfo {
            version: 2,
            can_ack_pings: true,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&ci).unwrap(),
            r#"{"version":2,"CanAckPings":true}"#
        );
        let mesh = ClientInfo {
            mesh_key: Some(MeshKey::from_bytes([0xab; 32])),
            version: 2,
            can_ack_pings: false,
            is_prober: true,
        };
        let s = serde_json::to_string(&mesh).unwrap();
        assert_eq!(
            s,
            format!(
                r#"{{"meshKey":"{}","version":2,"CanAckPings":false,"IsProber":true}}"#,
                "ab".repeat(32)
            )
        );
        assert_eq!(serde_json::from_str::<ClientInfo>(&s).unwrap(), mesh);
        assert!(!format!("{mesh:?}").contains("abab"));
    }

    #[test]
    fn server_info_json() {
        let si: ServerInfo = serde_json::from_str(r#"{"version":2}"#).unwrap();
        assert_eq!(si.version, 2);
        assert_eq!(si.token_bucket_bytes_per_second, 0);
        let si: ServerInfo = serde_json::from_str(
            r#"{"version":2,"TokenBucketBytesPerSecond":5,"TokenBucketBytesBurst":6,"New":1}"#,
        )
        .unwrap();
        assert_eq!(si.token_bucket_bytes_burst, 6);
        assert_eq!(serde_json::to_string(&ServerInfo::default()).unwrap(), "{}");
    }
}

//! The control-plane client: ts2021 and the map long-poll.
//!
//! Owns the ts2021 transport (server key fetch, HTTP upgrade, Noise IK with Tailscale's
//! big-endian nonce, HTTP/2 over the Noise channel), registration with an auth key or an
//! interactive URL, and the streamed map responses assembled into a network map from full and
//! delta updates. It knows nothing of packets or the OS.
//!
//! The protocol pieces are sans-IO and tested on bytes: [`noise`] (handshake and records),
//! [`early`] (the early payload), [`framing`] (map message framing and zstd) and [`netmap`]
//! (full and delta map messages folded into a [`NetworkMap`]). The tokio driver,
//! [`ControlClient`], is a thin layer over them:
//!
//! ```no_run
//! # async fn demo(machine: tailcfg::key::MachinePrivate, node: tailcfg::key::NodePrivate)
//! # -> Result<(), control_client::Error> {
//! use control_client::{ControlClient, NetworkMap};
//! use tailcfg::{MapRequest, RegisterAuth, RegisterRequest};
//! let client = ControlClient::connect("http://127.0.0.1:8080", &machine).await?;
//! let mut reg = RegisterRequest::default();
//! reg.node_key = node.public();
//! reg.auth = Some(RegisterAuth::with_auth_key("hskey-auth-…"));
//! let answer = client.register(reg).await?;
//! let mut req = MapRequest::default();
//! (req.node_key, req.stream, req.keep_alive, req.compress) =
//!     (node.public(), true, true, "zstd".into());
//! let mut stream = client.map_stream(req).await?;
//! let mut netmap = NetworkMap::new();
//! while let Some(msg) = stream.next().await {
//!     netmap.apply(msg?)?;
//! }
//! # let _ = answer; Ok(()) }
//! ```
//!
//! Only `http://` control URLs are supported so far (headscale on a LAN, tests); TLS comes
//! with the daemon.

mod client;
pub mod early;
pub mod framing;
mod http1;
pub mod netmap;
pub mod noise;
mod stream;

pub use client::{ConnectOptions, ControlClient, MapStream, fetch_server_key};
pub use netmap::{Applied, NetworkMap};
pub use stream::NoiseStream;

/// The capability version this client claims: in `/key?v=`, in the Noise version field and
/// prologue, and in every `RegisterRequest` and `MapRequest`.
///
/// 130 is Tailscale v1.90 (October 2025), the number Tailscale's own Rust client claims.
/// headscale 0.29 accepts 113 (v1.80) and newer and drops the oldest releases as it moves
/// (it supports the latest ten), so 130 leaves room without claiming behaviour of the newest
/// clients. What claiming it promises the server and peers, and where we stand:
///
/// - deltas (5), nil `PacketFilter`/`DNSConfig`/`Node` = unchanged (6, 15, 18),
///   `PeersChangedPatch` (33/36), `PacketFilters` (81), `HomeDERP` (111), null `AllowedIPs`
///   = `Addresses` (112), `DERPRegion.NoMeasureNoHome` (115): handled by [`NetworkMap`].
/// - EarlyNoise (49): parsed by [`early`].
/// - a separate "lite" MapRequest for endpoint/Hostinfo changes (68): the daemon's job.
/// - exit-node DNS proxying on the peerAPI (26), MagicDNS AAAA on request (116),
///   DisplayMessages (117), peer-relay disco messages (120/121), C2N debug endpoints
///   (127/128), seamless key renewal (126): owed by other crates (magicdns, wg-engine, the
///   daemon); until they land, a Go peer may try them and get nothing.
/// - below 137 the server does not expect `Retry-After` handling on register 429s.
pub const CAPABILITY_VERSION: u16 = 130;

/// Everything the driver can fail with. Protocol violations keep their module's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The control URL did not parse.
    #[error("bad control URL {0:?}")]
    Url(String),
    /// Something this client does not do yet.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// A socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server answered with an HTTP error.
    #[error("{context}: HTTP {status}: {body}")]
    Http {
        /// The request.
        context: &'static str,
        /// The status code.
        status: u16,
        /// The start of the body, printable characters only.
        body: String,
    },
    /// The server's HTTP/1 answer was malformed or too large.
    #[error("bad answer from control: {0}")]
    BadResponse(String),
    /// A request could not be built.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// JSON that did not decode (or encode).
    #[error("{context}: invalid JSON: {source}")]
    Json {
        /// What was being decoded.
        context: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// `/key` returned a zero Noise key.
    #[error("control server is too old: it has no ts2021 Noise key")]
    ServerTooOld,
    /// The Noise handshake or a record failed.
    #[error(transparent)]
    Noise(#[from] noise::NoiseError),
    /// The early payload was bad.
    #[error(transparent)]
    Early(#[from] early::EarlyError),
    /// A map message was bad.
    #[error(transparent)]
    Framing(#[from] framing::FramingError),
    /// The network map could not take a message.
    #[error(transparent)]
    Netmap(#[from] netmap::NetmapError),
    /// HTTP/2 failed.
    #[error("HTTP/2 over Noise: {0}")]
    H2(#[from] h2::Error),
    /// The server refused a registration (`RegisterResponse.Error`).
    #[error("control refused the registration: {0}")]
    Register(String),
    /// A step took too long.
    #[error("timed out {0}")]
    Timeout(&'static str),
}

impl Error {
    fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { context, source }
    }

    fn json(context: &'static str, source: serde_json::Error) -> Error {
        Error::Json { context, source }
    }
}

/// A server's text for an error message: printable characters, at most 512.
fn printable(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Random and mutated inputs to every parser: errors are fine, panics are not.
#[cfg(test)]
mod robustness {
    use crate::framing::{Limits, MapDecoder, frame};
    use crate::noise::{Handshake, Initiator, responder};
    use tailcfg::key::MachinePrivate;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let n = (self.next() as usize) % (max + 1);
            (0..n).map(|_| self.next() as u8).collect()
        }
        fn mutate(&mut self, data: &mut [u8]) {
            if data.is_empty() {
                return;
            }
            for _ in 0..1 + self.next() % 4 {
                let i = (self.next() as usize) % data.len();
                data[i] ^= 1 << (self.next() % 8);
            }
        }
    }

    #[test]
    fn noise_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let server = MachinePrivate::generate();
        let machine = MachinePrivate::generate();
        for _ in 0..500 {
            let (init, msg) = Initiator::new(&machine, &server.public(), 130).unwrap();
            let (resp, mut srv, _) = responder::respond(&server, &msg).unwrap();
            let mut input = resp.to_vec();
            srv.encrypt(&rng.bytes(5000), &mut input).unwrap();
            let cut = (rng.next() as usize) % (input.len() + 1);
            let mut input = input[..cut].to_vec();
            if rng.next() % 2 == 0 {
                rng.mutate(&mut input);
            }
            if let Ok(Handshake::Done {
                mut transport,
                consumed,
            }) = init.read_response(&input)
            {
                transport.push(&input[consumed..]);
                transport.push(&rng.bytes(300));
                let _ = transport.decrypt(&mut Vec::new());
            }
        }
        for _ in 0..500 {
            let (init, _) = Initiator::new(&machine, &server.public(), 130).unwrap();
            let _ = init.read_response(&rng.bytes(80));
        }
    }

    #[test]
    fn early_and_map_framing_never_panic() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..2000 {
            let mut b = rng.bytes(40);
            if rng.next() % 2 == 0 && b.len() >= 5 {
                b[..5].copy_from_slice(crate::early::EARLY_MAGIC);
            }
            let _ = crate::early::parse(&b);
        }
        let good = ruzstd::encoding::compress_to_vec(
            &br#"{"Peers":[{"ID":1,"Addresses":["100.64.0.1/32"]}],"Domain":"x"}"#[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        for i in 0..2000 {
            let zstd = i % 2 == 0;
            let mut d = MapDecoder::new(zstd, Limits::default());
            let mut body = if zstd { good.clone() } else { rng.bytes(100) };
            rng.mutate(&mut body);
            d.push(&frame(&body));
            d.push(&rng.bytes(10));
            while let Ok(Some(m)) = d.next_message() {
                let mut nm = crate::NetworkMap::new();
                let _ = nm.apply(m);
            }
        }
    }
}

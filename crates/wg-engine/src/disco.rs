//! Disco: Tailscale's peer discovery messages (protocol.md §6).
//!
//! A disco packet is the magic `"TS💬"`, the sender's disco public key, then a NaCl box
//! (nonce, tag, ciphertext) under the key shared by the two disco keys. Inside is one message:
//! type, version (0), body. This module has:
//!
//! - [`Packet`]: a view of the outer layout ([`Packet::parse`]), opened with a [`SharedKey`];
//! - [`Message`]: Ping, Pong and CallMeMaybe with [`Message::parse`] and [`Message::emit`];
//! - [`seal`]: builds a whole packet from a message;
//! - [`Keys`]: our disco key and the precomputed shared key of each peer;
//! - [`classify`]: which protocol a datagram on the shared UDP socket belongs to (§6.3).
//!
//! The peer-relay message types (0x04–0x09) are recognised but not decoded yet
//! ([`Error::UnsupportedType`]); Go drops messages it cannot parse in the same way.

use crate::nacl::{self, SharedKey};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use tailcfg::key::{DiscoPrivate, DiscoPublic, NodePublic};

/// The disco magic, `"TS💬"`.
pub const MAGIC: [u8; 6] = [0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac];
/// Length of a disco public key.
pub const KEY_LEN: usize = 32;
/// Magic and sender key: what precedes the box.
pub const HEADER_LEN: usize = MAGIC.len() + KEY_LEN;
/// The shortest packet Go treats as disco: header and a nonce.
pub const MIN_PACKET_LEN: usize = HEADER_LEN + nacl::NONCE_LEN;
/// Length of a transaction ID in Ping and Pong.
pub const TX_ID_LEN: usize = 12;
/// Length of an endpoint on the wire: 16-byte IP (IPv4 mapped into IPv6) and a port.
pub const ENDPOINT_LEN: usize = 18;

const TYPE_PING: u8 = 0x01;
const TYPE_PONG: u8 = 0x02;
const TYPE_CALL_ME_MAYBE: u8 = 0x03;
const VERSION: u8 = 0;
const PONG_BODY_LEN: usize = TX_ID_LEN + ENDPOINT_LEN;

/// Why a disco packet or message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The packet does not start with the disco magic or is shorter than header and nonce.
    #[error("not a disco packet")]
    NotDisco,
    /// The box did not open (wrong key or altered bytes).
    #[error("disco box did not open: {0}")]
    Open(#[from] nacl::OpenError),
    /// The message is shorter than its type needs.
    #[error("disco message of type {msg_type:#04x} is too short ({len} bytes)")]
    Short {
        /// The message type.
        msg_type: u8,
        /// The length of the whole message.
        len: usize,
    },
    /// A known type this node does not decode yet (peer relay, 0x04–0x09).
    #[error("disco message type {0:#04x} is not supported")]
    UnsupportedType(u8),
    /// An unknown type.
    #[error("unknown disco message type {0:#04x}")]
    UnknownType(u8),
    /// A packet from a disco key that [`Keys`] does not know (not in the netmap).
    #[error("disco packet from unknown key {0}")]
    UnknownSender(DiscoPublic),
}

/// A disco Ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// Random transaction ID, echoed by the Pong.
    pub tx_id: [u8; TX_ID_LEN],
    /// The sender's node key; older clients omitted it.
    pub node_key: Option<NodePublic>,
    /// Zero bytes after the body, used to probe the path MTU.
    pub padding: usize,
}

/// A disco Pong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// The transaction ID of the Ping it answers.
    pub tx_id: [u8; TX_ID_LEN],
    /// The Ping's source address as the responder saw it.
    pub src: SocketAddr,
}

/// A disco CallMeMaybe: the sender's endpoints. Sent only over DERP.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallMeMaybe {
    /// The endpoints; empty when the body was malformed (Go's rule).
    pub endpoints: Vec<SocketAddr>,
}

/// A disco message (the plaintext inside the box).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// Ping (0x01).
    Ping(Ping),
    /// Pong (0x02).
    Pong(Pong),
    /// CallMeMaybe (0x03).
    CallMeMaybe(CallMeMaybe),
}

fn parse_endpoint(b: &[u8; ENDPOINT_LEN]) -> SocketAddr {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[..16]);
    let ip = IpAddr::V6(Ipv6Addr::from(ip)).to_canonical();
    SocketAddr::new(ip, u16::from_be_bytes([b[16], b[17]]))
}

fn emit_endpoint(addr: &SocketAddr, out: &mut Vec<u8>) {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&v6.octets());
    out.extend_from_slice(&addr.port().to_be_bytes());
}

impl Message {
    /// Parses a message (type, version, body). Trailing bytes are ignored where Go ignores
    /// them; a Ping's extra bytes count as padding.
    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        let (&msg_type, rest) = b.split_first().ok_or(Error::Short {
            msg_type: 0,
            len: 0,
        })?;
        let (&version, body) = rest.split_first().ok_or(Error::Short {
            msg_type,
            len: b.len(),
        })?;
        let short = Error::Short {
            msg_type,
            len: b.len(),
        };
        match msg_type {
            TYPE_PING => {
                let (tx, rest) = body.split_first_chunk::<TX_ID_LEN>().ok_or(short)?;
                let (node_key, padding) = match rest.split_first_chunk::<32>() {
                    Some((k, pad)) => (Some(NodePublic::from_bytes(*k)), pad.len()),
                    None => (None, rest.len()),
                };
                Ok(Message::Ping(Ping {
                    tx_id: *tx,
                    node_key,
                    padding,
                }))
            }
            TYPE_PONG => {
                let (tx, rest) = body.split_first_chunk::<TX_ID_LEN>().ok_or(short.clone())?;
                let (ep, _) = rest.split_first_chunk::<ENDPOINT_LEN>().ok_or(short)?;
                Ok(Message::Pong(Pong {
                    tx_id: *tx,
                    src: parse_endpoint(ep),
                }))
            }
            TYPE_CALL_ME_MAYBE => {
                let mut endpoints = Vec::new();
                if version == VERSION && !body.is_empty() && body.len() % ENDPOINT_LEN == 0 {
                    endpoints = body
                        .chunks_exact(ENDPOINT_LEN)
                        .filter_map(|c| c.try_into().ok())
                        .map(parse_endpoint)
                        .collect();
                }
                Ok(Message::CallMeMaybe(CallMeMaybe { endpoints }))
            }
            0x04..=0x09 => Err(Error::UnsupportedType(msg_type)),
            t => Err(Error::UnknownType(t)),
        }
    }

    /// Appends the message (type, version 0, body) to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Message::Ping(p) => {
                out.extend_from_slice(&[TYPE_PING, VERSION]);
                out.extend_from_slice(&p.tx_id);
                if let Some(k) = &p.node_key {
                    out.extend_from_slice(k.as_bytes());
                }
                out.resize(out.len() + p.padding, 0);
            }
            Message::Pong(p) => {
                out.extend_from_slice(&[TYPE_PONG, VERSION]);
                out.extend_from_slice(&p.tx_id);
                emit_endpoint(&p.src, out);
            }
            Message::CallMeMaybe(c) => {
                out.extend_from_slice(&[TYPE_CALL_ME_MAYBE, VERSION]);
                for ep in &c.endpoints {
                    emit_endpoint(ep, out);
                }
            }
        }
    }

    /// The message's length on the wire, before sealing.
    pub fn len(&self) -> usize {
        2 + match self {
            Message::Ping(p) => TX_ID_LEN + p.node_key.map_or(0, |_| 32) + p.padding,
            Message::Pong(_) => PONG_BODY_LEN,
            Message::CallMeMaybe(c) => ENDPOINT_LEN * c.endpoints.len(),
        }
    }

    /// Never true: every message has at least its type and version.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A view of a disco packet: the sender's key and the sealed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The sender's disco public key.
    pub sender: DiscoPublic,
    /// Nonce, tag and ciphertext.
    pub sealed: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Whether `b` looks like a disco packet (Go's `LooksLikeDiscoWrapper`).
    pub fn looks_like(b: &[u8]) -> bool {
        b.len() >= MIN_PACKET_LEN && b[..MAGIC.len()] == MAGIC
    }

    /// Splits a disco packet into sender and sealed part.
    pub fn parse(b: &'a [u8]) -> Result<Self, Error> {
        if !Self::looks_like(b) {
            return Err(Error::NotDisco);
        }
        let key: [u8; KEY_LEN] = b[MAGIC.len()..HEADER_LEN]
            .try_into()
            .map_err(|_| Error::NotDisco)?;
        Ok(Packet {
            sender: DiscoPublic::from_bytes(key),
            sealed: &b[HEADER_LEN..],
        })
    }

    /// Opens the box with the key shared with [`Packet::sender`] and parses the message.
    pub fn open(&self, key: &SharedKey) -> Result<Message, Error> {
        let plain = key.open(self.sealed)?;
        Message::parse(&plain)
    }
}

/// Appends a whole disco packet carrying `msg` from `sender` (our disco public key), sealed
/// with `key` (shared with the receiver) under a random nonce.
pub fn seal(sender: &DiscoPublic, key: &SharedKey, msg: &Message, out: &mut Vec<u8>) {
    let mut plain = Vec::with_capacity(msg.len());
    msg.emit(&mut plain);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(sender.as_bytes());
    key.seal(&plain, out);
}

/// Our disco key and the precomputed box key of each peer disco key seen.
pub struct Keys {
    private: DiscoPrivate,
    public: DiscoPublic,
    shared: HashMap<DiscoPublic, SharedKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("public", &self.public)
            .field("peers", &self.shared.len())
            .finish()
    }
}

impl Keys {
    /// Keys for our disco private key.
    pub fn new(private: DiscoPrivate) -> Self {
        let public = private.public();
        Keys {
            private,
            public,
            shared: HashMap::new(),
        }
    }

    /// Our disco public key.
    pub fn public(&self) -> &DiscoPublic {
        &self.public
    }

    /// The box key shared with `peer`, computed on first use. Call it (or
    /// [`Keys::seal`]) for each peer disco key in the netmap; [`Keys::open`] accepts only
    /// those.
    pub fn shared(&mut self, peer: &DiscoPublic) -> &SharedKey {
        self.shared
            .entry(*peer)
            .or_insert_with(|| SharedKey::disco(&self.private, peer))
    }

    /// Forgets the key of a peer that left the netmap.
    pub fn forget(&mut self, peer: &DiscoPublic) {
        self.shared.remove(peer);
    }

    /// Seals `msg` for `peer` into a whole packet appended to `out`.
    pub fn seal(&mut self, peer: &DiscoPublic, msg: &Message, out: &mut Vec<u8>) {
        let public = self.public;
        let key = self.shared(peer);
        seal(&public, key, msg, out);
    }

    /// Parses and opens a disco packet from a known peer, returning the sender and the
    /// message. A sender never passed to [`Keys::shared`] is refused before any key
    /// agreement, as Go drops disco from keys outside the netmap; so strangers cannot make
    /// us compute or store keys.
    pub fn open(&self, b: &[u8]) -> Result<(DiscoPublic, Message), Error> {
        let p = Packet::parse(b)?;
        let key = self
            .shared
            .get(&p.sender)
            .ok_or(Error::UnknownSender(p.sender))?;
        Ok((p.sender, p.open(key)?))
    }
}

/// The Geneve protocol numbers Tailscale's peer relays use.
pub const GENEVE_PROTOCOL_DISCO: u16 = 0x7a11;
/// The Geneve protocol number for WireGuard.
pub const GENEVE_PROTOCOL_WIREGUARD: u16 = 0x7a12;
/// Length of the fixed Geneve header.
pub const GENEVE_HEADER_LEN: usize = 8;

/// What a datagram on the shared UDP socket is (Go's `packetLooksLike`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketKind {
    /// A STUN binding message: hand it to netcheck.
    Stun,
    /// A disco packet; `geneve` when it came inside a Geneve header (peer relay).
    Disco {
        /// Whether an 8-byte Geneve header precedes it.
        geneve: bool,
    },
    /// Anything else is WireGuard; `geneve` as above.
    WireGuard {
        /// Whether an 8-byte Geneve header precedes it.
        geneve: bool,
    },
}

/// Classifies a datagram received on the magicsock UDP socket, in Go's order: STUN binding,
/// Geneve (peer relay), disco, else WireGuard. Over DERP there is no STUN or Geneve: use
/// [`Packet::looks_like`] there.
pub fn classify(b: &[u8]) -> PacketKind {
    if crate::stun::is_stun(b) && b[1] == 0x01 {
        return PacketKind::Stun;
    }
    if b.len() >= GENEVE_HEADER_LEN && b[0] & 0xc0 == 0 && b[1] & 0x3f == 0 && b[7] == 0 {
        match u16::from_be_bytes([b[2], b[3]]) {
            GENEVE_PROTOCOL_DISCO => {
                return if Packet::looks_like(&b[GENEVE_HEADER_LEN..]) {
                    PacketKind::Disco { geneve: true }
                } else {
                    PacketKind::WireGuard { geneve: false }
                };
            }
            GENEVE_PROTOCOL_WIREGUARD => return PacketKind::WireGuard { geneve: true },
            _ => {}
        }
    }
    if b.len() >= HEADER_LEN && b[..MAGIC.len()] == MAGIC {
        PacketKind::Disco { geneve: false }
    } else {
        PacketKind::WireGuard { geneve: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodePublic {
        NodePublic::from_bytes([b; 32])
    }

    #[test]
    fn ping_bytes() {
        let m = Message::Ping(Ping {
            tx_id: [1; 12],
            node_key: Some(node(0xaa)),
            padding: 3,
        });
        let mut b = Vec::new();
        m.emit(&mut b);
        let mut want = vec![0x01, 0x00];
        want.extend_from_slice(&[1; 12]);
        want.extend_from_slice(&[0xaa; 32]);
        want.extend_from_slice(&[0, 0, 0]);
        assert_eq!(b, want);
        assert_eq!(m.len(), b.len());
        assert_eq!(Message::parse(&b).unwrap(), m);
        // Old clients: only the tx id.
        let old = Message::parse(&want[..14]).unwrap();
        assert_eq!(
            old,
            Message::Ping(Ping {
                tx_id: [1; 12],
                node_key: None,
                padding: 0
            })
        );
        assert!(matches!(
            Message::parse(&want[..13]),
            Err(Error::Short { .. })
        ));
    }

    #[test]
    fn pong_bytes() {
        let m = Message::Pong(Pong {
            tx_id: [2; 12],
            src: "1.2.3.4:41641".parse().unwrap(),
        });
        let mut b = Vec::new();
        m.emit(&mut b);
        assert_eq!(
            hex::encode(&b),
            "0200020202020202020202020202\
             00000000000000000000ffff01020304a2a9"
        );
        assert_eq!(Message::parse(&b).unwrap(), m);
        b.push(9); // trailing bytes are ignored
        assert_eq!(Message::parse(&b).unwrap(), m);
        let v6 = Message::Pong(Pong {
            tx_id: [2; 12],
            src: "[2001:db8::1]:7".parse().unwrap(),
        });
        let mut b = Vec::new();
        v6.emit(&mut b);
        assert_eq!(Message::parse(&b).unwrap(), v6);
        assert!(matches!(Message::parse(&b[..31]), Err(Error::Short { .. })));
    }

    #[test]
    fn call_me_maybe_bytes() {
        let m = Message::CallMeMaybe(CallMeMaybe {
            endpoints: vec![
                "192.168.1.2:41641".parse().unwrap(),
                "[2001:db8::2]:41641".parse().unwrap(),
            ],
        });
        let mut b = Vec::new();
        m.emit(&mut b);
        assert_eq!(b.len(), 2 + 36);
        assert_eq!(&b[..2], &[0x03, 0x00]);
        assert_eq!(
            &b[2 + 10..2 + 18],
            &[0xff, 0xff, 192, 168, 1, 2, 0xa2, 0xa9]
        );
        assert_eq!(Message::parse(&b).unwrap(), m);
        // Not a multiple of 18, or version 1: treated as empty, as Go does.
        let empty = Message::CallMeMaybe(CallMeMaybe::default());
        assert_eq!(Message::parse(&b[..b.len() - 1]).unwrap(), empty);
        let mut v1 = b.clone();
        v1[1] = 1;
        assert_eq!(Message::parse(&v1).unwrap(), empty);
        assert_eq!(Message::parse(&[3, 0]).unwrap(), empty);
    }

    #[test]
    fn other_types() {
        assert_eq!(Message::parse(&[0x04, 0]), Err(Error::UnsupportedType(4)));
        assert_eq!(Message::parse(&[0x0a, 0]), Err(Error::UnknownType(0x0a)));
        assert!(matches!(Message::parse(&[]), Err(Error::Short { .. })));
        assert!(matches!(Message::parse(&[1]), Err(Error::Short { .. })));
    }

    #[test]
    fn packet_seal_open_between_two_keys() {
        let mut a = Keys::new(DiscoPrivate::from_bytes([0x11; 32]));
        let mut b = Keys::new(DiscoPrivate::from_bytes([0x22; 32]));
        let msg = Message::Ping(Ping {
            tx_id: [7; 12],
            node_key: Some(node(5)),
            padding: 0,
        });
        let mut pkt = Vec::new();
        a.seal(&b.public().clone(), &msg, &mut pkt);
        // B has not learnt A's disco key yet (not in its netmap): refused.
        assert_eq!(b.open(&pkt), Err(Error::UnknownSender(*a.public())));
        b.shared(&a.public().clone());
        assert_eq!(&pkt[..6], "TS💬".as_bytes());
        assert_eq!(&pkt[6..38], a.public().as_bytes());
        assert_eq!(pkt.len(), 38 + 24 + 16 + msg.len());
        assert_eq!(classify(&pkt), PacketKind::Disco { geneve: false });
        let (from, got) = b.open(&pkt).unwrap();
        assert_eq!(&from, a.public());
        assert_eq!(got, msg);
        // Tampering, truncation and a stranger's key fail without panics.
        let mut bad = pkt.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(b.open(&bad), Err(Error::Open(_))));
        for n in 0..pkt.len() {
            let _ = b.open(&pkt[..n]);
        }
        let mut c = Keys::new(DiscoPrivate::from_bytes([0x33; 32]));
        c.shared(&a.public().clone());
        assert!(matches!(c.open(&pkt), Err(Error::Open(_))));
        assert_eq!(Packet::parse(&pkt[..61]), Err(Error::NotDisco));
    }

    // A fixed-nonce packet: same bytes on every run, so a change of layout shows here.
    #[test]
    fn packet_known_bytes() {
        let a = DiscoPrivate::from_bytes([0x11; 32]);
        let b = DiscoPrivate::from_bytes([0x22; 32]);
        let key = SharedKey::disco(&a, &b.public());
        let mut plain = Vec::new();
        Message::Pong(Pong {
            tx_id: [9; 12],
            src: "10.0.0.1:1".parse().unwrap(),
        })
        .emit(&mut plain);
        let mut pkt = Vec::new();
        pkt.extend_from_slice(&MAGIC);
        pkt.extend_from_slice(a.public().as_bytes());
        key.seal_with_nonce(&[0; 24], &plain, &mut pkt);
        let p = Packet::parse(&pkt).unwrap();
        assert_eq!(p.sender, a.public());
        assert_eq!(&p.sealed[..24], &[0; 24]);
        let opened = p.open(&SharedKey::disco(&b, &a.public())).unwrap();
        assert_eq!(
            opened,
            Message::Pong(Pong {
                tx_id: [9; 12],
                src: "10.0.0.1:1".parse().unwrap()
            })
        );
    }

    #[test]
    fn classifier() {
        let stun = crate::stun::binding_request(&[1; 12]);
        assert_eq!(classify(&stun), PacketKind::Stun);
        let mut resp = Vec::new();
        crate::stun::binding_response(&[1; 12], "1.2.3.4:5".parse().unwrap(), &mut resp);
        assert_eq!(classify(&resp), PacketKind::Stun);
        // WireGuard handshake initiation: type 1, little-endian, three zero bytes.
        let mut wg = vec![1, 0, 0, 0];
        wg.resize(148, 0x5a);
        assert_eq!(classify(&wg), PacketKind::WireGuard { geneve: false });
        // Disco needs magic and a key (Go's discoHeaderLen).
        let mut d = MAGIC.to_vec();
        d.resize(HEADER_LEN, 1);
        assert_eq!(classify(&d), PacketKind::Disco { geneve: false });
        assert_eq!(
            classify(&d[..HEADER_LEN - 1]),
            PacketKind::WireGuard { geneve: false }
        );
        // Geneve-wrapped disco and WireGuard.
        let mut g = vec![0, 0, 0x7a, 0x11, 0, 0, 1, 0];
        g.extend_from_slice(&MAGIC);
        g.resize(8 + MIN_PACKET_LEN, 2);
        assert_eq!(classify(&g), PacketKind::Disco { geneve: true });
        let mut gw = vec![0, 0, 0x7a, 0x12, 0, 0, 1, 0];
        gw.extend_from_slice(&wg);
        assert_eq!(classify(&gw), PacketKind::WireGuard { geneve: true });
        for n in 0..40 {
            let _ = classify(&stun[..n.min(stun.len())]);
            let _ = classify(&g[..n]);
        }
        assert_eq!(classify(&[]), PacketKind::WireGuard { geneve: false });
    }
}

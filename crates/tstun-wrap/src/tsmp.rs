//! TSMP, the Tailscale Message Protocol: small control messages that nodes send each other
//! inside the tunnel as IP protocol 99. Sans-IO: whole IP packets in, whole IP packets out.
//!
//! Layouts follow Go's `net/packet/tsmp.go` (v1.98.5). After the IP header, the first byte is
//! the message type:
//!
//! | type | message | body after the type byte |
//! |---|---|---|
//! | `'p'` | ping request | 8 opaque bytes, echoed in the pong |
//! | `'o'` | pong | the 8 ping bytes, then the responder's peerapi port (big endian u16) |
//! | `'!'` | connection rejected | IP protocol, reason, flow source port, flow destination port (u16 BE each), then an optional flags byte (bit 0: "maybe broken") |
//! | `'a'` | disco key advertisement | the sender's 32-byte disco public key |
//!
//! How Go uses them: `tailscale ping --tsmp` sends a ping request with 8 random bytes from the
//! node's own address of the peer's family and waits (10 s) for a pong carrying the same bytes;
//! a node answers every ping request that arrives from WireGuard, before its packet filter, with
//! a pong from the ping's destination back to its source that carries the peerapi port it
//! serves on that address (0 when it serves none, as here). A dropped inbound TCP SYN over IPv4
//! is answered with a reject. The answer goes straight out to the peer, skipping the outbound
//! filter.
//!
//! Packets are built as Go builds them: a 20-byte IPv4 header (no options, TTL 64, no fragment
//! flags, a correct header checksum) or a 40-byte IPv6 header (traffic class 0, hop limit 64).
//! The IPv4 identification or IPv6 flow label is 0 for new messages; a pong made by [`answer`]
//! carries the ping's value with its bits flipped (the low 20 bits for a flow label), as Go's
//! `ToResponse` does.
//!
//! Parsing follows Go's `Parsed.Decode` through the packet filter's own summary
//! ([`crate::filter::parse`]), so a packet is TSMP here exactly when the filter lets it through
//! as TSMP:
//!
//! - IPv4: the header length field is honoured (options are skipped); the header checksum is
//!   not checked (Go does not either); a packet with more-fragments set or a non-zero fragment
//!   offset is not TSMP (Go: TSMP must not be fragmented).
//! - IPv6: extension headers are **not** followed, as in Go: TSMP must be the first next-header
//!   value. A TSMP message behind hop-by-hop, routing, fragment or destination options headers is
//!   not recognised.
//! - The message is the bytes between the end of the IP header and the end given by the IP
//!   length field; bytes past that (link padding) are ignored, and a buffer shorter than the
//!   length field is rejected. At least 7 bytes of message are required.
//! - Each type needs the length Go needs: ping and pong 9 bytes, reject 7, disco advertisement
//!   33. A pong of 9 or 10 bytes has peerapi port 0. Extra bytes after a layout are ignored.
//!
//! Stricter than Go, on packets no real stack sends (both as the filter does): an IPv4 header
//! length field below 5 words is not parsed (Go would read the message from inside the IP
//! header), and the 7-byte minimum is counted within the IP length rather than the buffer (Go
//! then treats the packet as TSMP but finds no message in it, so it acts on nothing either).

use std::net::{IpAddr, SocketAddr};

use crate::filter::{Proto, parse as parse_ip};

/// The IP protocol number of TSMP.
pub const IP_PROTO: u8 = 99;

/// The IPv4 TTL and IPv6 hop limit of every packet built here (Go's value).
pub const TTL: u8 = 64;

/// Type byte of a connection-rejected message.
pub const TYPE_REJECT: u8 = b'!';
/// Type byte of a ping request.
pub const TYPE_PING: u8 = b'p';
/// Type byte of a pong.
pub const TYPE_PONG: u8 = b'o';
/// Type byte of a disco key advertisement.
pub const TYPE_DISCO_ADVERTISEMENT: u8 = b'a';

const IP4_HEADER: usize = 20;
const IP6_HEADER: usize = 40;
const PING_LEN: usize = 9;
const PONG_LEN: usize = 11;
const REJECT_LEN: usize = 7;
const DISCO_LEN: usize = 33;
const REJECT_FLAG_MAYBE_BROKEN: u8 = 0x01;
const FLOW_LABEL_MASK: u32 = 0x000f_ffff;

/// Why a node rejected a connection (the byte Go sends; any value may arrive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RejectReason(pub u8);

impl RejectReason {
    /// No rejection (Go's zero value).
    pub const NONE: RejectReason = RejectReason(0);
    /// The packet filter (ACLs) refused it.
    pub const ACL: RejectReason = RejectReason(b'A');
    /// The node has shields up.
    pub const SHIELDS_UP: RejectReason = RejectReason(b'S');
    /// The relaying node has IP forwarding off.
    pub const IP_FORWARDING: RejectReason = RejectReason(b'F');
    /// The target host's firewall blocks it.
    pub const HOST_FIREWALL: RejectReason = RejectReason(b'W');

    /// Go's short name for the reason (`acl`, `shields`, ...), or `None` for other bytes.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Self::ACL => Some("acl"),
            Self::SHIELDS_UP => Some("shields"),
            Self::IP_FORWARDING => Some("host-ip-forwarding-unavailable"),
            Self::HOST_FIREWALL => Some("host-firewall"),
            _ => None,
        }
    }
}

/// A connection-rejected message.
///
/// The rejected flow ran the other way from this message: from the message's destination
/// address and `flow_src_port` to its source address and `flow_dst_port`. See
/// [`Packet::rejected_flow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reject {
    /// IP protocol of the rejected flow (TCP or UDP in practice).
    pub proto: u8,
    /// Why it was rejected.
    pub reason: RejectReason,
    /// Source port of the rejected flow.
    pub flow_src_port: u16,
    /// Destination port of the rejected flow.
    pub flow_dst_port: u16,
    /// The rejection may not be final (the sender is unsure it is broken).
    pub maybe_broken: bool,
}

/// One TSMP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    /// `'p'`: answer with a pong carrying `data`.
    PingRequest {
        /// Opaque bytes to echo.
        data: [u8; 8],
    },
    /// `'o'`: the answer to a ping request.
    Pong {
        /// The ping's bytes.
        data: [u8; 8],
        /// The responder's peerapi port on the pinged address; 0 when it has none (or the
        /// pong is too short to say).
        peerapi_port: u16,
    },
    /// `'!'`: the sender dropped a flow from us.
    Reject(Reject),
    /// `'a'`: the sender's disco public key.
    DiscoKeyAdvertisement {
        /// The raw 32-byte disco public key.
        key: [u8; 32],
    },
    /// A known type byte whose message is too short for its layout. Go acts on nothing.
    Malformed(u8),
    /// A type byte Go does not know. Go acts on nothing.
    Unknown(u8),
}

/// A parsed TSMP packet: its IP addresses and its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    /// The IP source address.
    pub src: IpAddr,
    /// The IP destination address.
    pub dst: IpAddr,
    /// The message.
    pub message: Message,
}

impl Packet {
    /// For a reject: the rejected flow's source and destination, as Go reads them (the
    /// flow went from this packet's destination to its source).
    pub fn rejected_flow(&self) -> Option<(SocketAddr, SocketAddr)> {
        match self.message {
            Message::Reject(r) => Some((
                SocketAddr::new(self.dst, r.flow_src_port),
                SocketAddr::new(self.src, r.flow_dst_port),
            )),
            _ => None,
        }
    }
}

/// Why a packet could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The source and destination are not of the same IP family.
    #[error("TSMP source and destination are of different IP families")]
    MixedFamilies,
    /// The caller's buffer is shorter than the packet.
    #[error("buffer too small for the TSMP packet: {need} bytes needed")]
    BufferTooSmall {
        /// The packet's length.
        need: usize,
    },
    /// [`Message::Malformed`] and [`Message::Unknown`] have no layout to build.
    #[error("no TSMP layout for this message")]
    NotEncodable,
}

/// Parses a whole IP packet as TSMP. `None` when it is not a TSMP packet (see the module
/// documentation for exactly when). Never panics.
pub fn parse(packet: &[u8]) -> Option<Packet> {
    let ip = parse_ip(packet);
    if ip.proto() != Proto::TSMP {
        return None;
    }
    let body = ip.transport();
    let (&kind, rest) = body.split_first()?;
    Some(Packet {
        src: ip.src(),
        dst: ip.dst(),
        message: decode_message(kind, rest),
    })
}

fn decode_message(kind: u8, rest: &[u8]) -> Message {
    match kind {
        TYPE_PING => match rest.first_chunk::<8>() {
            Some(data) => Message::PingRequest { data: *data },
            None => Message::Malformed(kind),
        },
        TYPE_PONG => match rest.first_chunk::<8>() {
            Some(data) => Message::Pong {
                data: *data,
                peerapi_port: match rest.get(8..10) {
                    Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
                    _ => 0,
                },
            },
            None => Message::Malformed(kind),
        },
        TYPE_REJECT => match rest {
            [proto, reason, s0, s1, d0, d1, flags @ ..] => Message::Reject(Reject {
                proto: *proto,
                reason: RejectReason(*reason),
                flow_src_port: u16::from_be_bytes([*s0, *s1]),
                flow_dst_port: u16::from_be_bytes([*d0, *d1]),
                maybe_broken: flags
                    .first()
                    .is_some_and(|f| f & REJECT_FLAG_MAYBE_BROKEN != 0),
            }),
            _ => Message::Malformed(kind),
        },
        TYPE_DISCO_ADVERTISEMENT => match rest.first_chunk::<32>() {
            Some(key) => Message::DiscoKeyAdvertisement { key: *key },
            None => Message::Malformed(kind),
        },
        other => Message::Unknown(other),
    }
}

/// A ping request from `src` to `dst` carrying `data`, as `tailscale ping --tsmp` sends it.
pub fn ping_request(src: IpAddr, dst: IpAddr, data: [u8; 8]) -> Result<Vec<u8>, BuildError> {
    encode(src, dst, &Message::PingRequest { data })
}

/// A pong from `src` to `dst` echoing `data` and naming `peerapi_port` (0: none). The IPv4
/// identification / IPv6 flow label is 0; [`answer`] sets Go's flipped value instead.
pub fn pong(
    src: IpAddr,
    dst: IpAddr,
    data: [u8; 8],
    peerapi_port: u16,
) -> Result<Vec<u8>, BuildError> {
    encode(src, dst, &Message::Pong { data, peerapi_port })
}

/// A connection-rejected message from `src` (the node that dropped the flow) to `dst`.
pub fn reject(src: IpAddr, dst: IpAddr, reject: Reject) -> Result<Vec<u8>, BuildError> {
    encode(src, dst, &Message::Reject(reject))
}

/// A disco key advertisement from `src` to `dst` of the 32-byte disco public key `key`.
pub fn disco_key_advertisement(
    src: IpAddr,
    dst: IpAddr,
    key: [u8; 32],
) -> Result<Vec<u8>, BuildError> {
    encode(src, dst, &Message::DiscoKeyAdvertisement { key })
}

/// The whole packet for `message` from `src` to `dst`.
pub fn encode(src: IpAddr, dst: IpAddr, message: &Message) -> Result<Vec<u8>, BuildError> {
    let need = encoded_len(src, message)?;
    let mut buf = vec![0u8; need];
    let n = encode_into(&mut buf, src, dst, message)?;
    buf.truncate(n);
    Ok(buf)
}

/// The length [`encode`] would produce for `message` with a source address like `src`.
pub fn encoded_len(src: IpAddr, message: &Message) -> Result<usize, BuildError> {
    let body = body_len(message).ok_or(BuildError::NotEncodable)?;
    Ok(header_len(src) + body)
}

/// Writes the packet for `message` from `src` to `dst` at the start of `buf`, returning its
/// length. Allocates nothing.
pub fn encode_into(
    buf: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    message: &Message,
) -> Result<usize, BuildError> {
    write_packet(buf, src, dst, 0, message)
}

/// The pong Go would send back for `packet` when it is a TSMP ping request, with peerapi
/// port 0 (this node serves no peerapi): from the ping's destination to its source, with the
/// ping's IPv4 identification or IPv6 flow label flipped. `None` for anything else.
///
/// Like Go, this does not check that the ping is addressed to this node: call it on packets
/// decrypted from a peer, before the inbound filter, and drop the ping once answered.
pub fn answer(packet: &[u8]) -> Option<Vec<u8>> {
    answer_with_peerapi_port(packet, 0)
}

/// [`answer`], naming `peerapi_port` in the pong.
pub fn answer_with_peerapi_port(packet: &[u8], peerapi_port: u16) -> Option<Vec<u8>> {
    let ping = parse(packet)?;
    let Message::PingRequest { data } = ping.message else {
        return None;
    };
    let id = match ping.src {
        IpAddr::V4(_) => u32::from(!be16(packet, 4)),
        IpAddr::V6(_) => !be32(packet, 0) & FLOW_LABEL_MASK,
    };
    let pong = Message::Pong { data, peerapi_port };
    let mut buf = vec![0u8; header_len(ping.dst) + PONG_LEN];
    let n = write_packet(&mut buf, ping.dst, ping.src, id, &pong).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[w, x, y, z]) => u32::from_be_bytes([w, x, y, z]),
        _ => 0,
    }
}

fn header_len(src: IpAddr) -> usize {
    match src {
        IpAddr::V4(_) => IP4_HEADER,
        IpAddr::V6(_) => IP6_HEADER,
    }
}

fn body_len(message: &Message) -> Option<usize> {
    match message {
        Message::PingRequest { .. } => Some(PING_LEN),
        Message::Pong { .. } => Some(PONG_LEN),
        Message::Reject(r) if r.maybe_broken => Some(REJECT_LEN + 1),
        Message::Reject(_) => Some(REJECT_LEN),
        Message::DiscoKeyAdvertisement { .. } => Some(DISCO_LEN),
        Message::Malformed(_) | Message::Unknown(_) => None,
    }
}

/// Writes header and body; `id` is the IPv4 identification (low 16 bits) or IPv6 flow label
/// (low 20 bits).
fn write_packet(
    buf: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    id: u32,
    message: &Message,
) -> Result<usize, BuildError> {
    let body_len = body_len(message).ok_or(BuildError::NotEncodable)?;
    let hlen = header_len(src);
    let need = hlen + body_len;
    let (header, rest) = buf
        .get_mut(..need)
        .ok_or(BuildError::BufferTooSmall { need })?
        .split_at_mut(hlen);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            // `need` is at most 20 + 33, so it fits in u16.
            let total = u16::try_from(need).map_err(|_| BuildError::BufferTooSmall { need })?;
            header.fill(0);
            header[0] = 0x45; // version 4, header length 5 words
            header[2..4].copy_from_slice(&total.to_be_bytes());
            header[4..6].copy_from_slice(&(id as u16).to_be_bytes());
            header[8] = TTL;
            header[9] = IP_PROTO;
            header[12..16].copy_from_slice(&s.octets());
            header[16..20].copy_from_slice(&d.octets());
            let sum = ip4_checksum(header);
            header[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let payload = u16::try_from(body_len).map_err(|_| BuildError::BufferTooSmall { need })?;
            let first = 0x6000_0000 | (id & FLOW_LABEL_MASK);
            header[0..4].copy_from_slice(&first.to_be_bytes());
            header[4..6].copy_from_slice(&payload.to_be_bytes());
            header[6] = IP_PROTO;
            header[7] = TTL;
            header[8..24].copy_from_slice(&s.octets());
            header[24..40].copy_from_slice(&d.octets());
        }
        _ => return Err(BuildError::MixedFamilies),
    }
    write_body(rest, message);
    Ok(need)
}

/// `body` is exactly `body_len(message)` bytes long.
fn write_body(body: &mut [u8], message: &Message) {
    match (message, body) {
        (Message::PingRequest { data }, [kind, d @ ..]) => {
            *kind = TYPE_PING;
            d.copy_from_slice(data);
        }
        (Message::Pong { data, peerapi_port }, [kind, rest @ ..]) => {
            *kind = TYPE_PONG;
            let (d, port) = rest.split_at_mut(data.len());
            d.copy_from_slice(data);
            port.copy_from_slice(&peerapi_port.to_be_bytes());
        }
        (Message::Reject(r), [kind, proto, reason, s0, s1, d0, d1, flags @ ..]) => {
            *kind = TYPE_REJECT;
            *proto = r.proto;
            *reason = r.reason.0;
            [*s0, *s1] = r.flow_src_port.to_be_bytes();
            [*d0, *d1] = r.flow_dst_port.to_be_bytes();
            if let Some(f) = flags.first_mut() {
                *f = if r.maybe_broken {
                    REJECT_FLAG_MAYBE_BROKEN
                } else {
                    0
                };
            }
        }
        (Message::DiscoKeyAdvertisement { key }, [kind, k @ ..]) => {
            *kind = TYPE_DISCO_ADVERTISEMENT;
            k.copy_from_slice(key);
        }
        _ => {}
    }
}

/// RFC 1071 checksum of an IPv4 header whose checksum field is zero.
fn ip4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| match c {
            [a, b] => u32::from(u16::from_be_bytes([*a, *b])),
            [a] => u32::from(*a) << 8,
            _ => 0,
        })
        .sum();
    while sum >> 16 != 0 {
        sum = (sum >> 16) + (sum & 0xffff);
    }
    !(sum as u16)
}

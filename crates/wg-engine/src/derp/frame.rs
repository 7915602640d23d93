//! DERP frames: one type byte, a big-endian `u32` length, then the payload (protocol.md §5.3).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tailcfg::key::NodePublic;

/// The magic at the start of the ServerKey frame, `"DERP🔑"`.
pub const MAGIC: [u8; 8] = [0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91];
/// Type byte and length.
pub const FRAME_HEADER_LEN: usize = 5;
/// Length of a node public key on the wire.
pub const KEY_LEN: usize = 32;
/// Length of the NaCl nonce in ClientInfo and ServerInfo.
pub const NONCE_LEN: usize = 24;
/// The largest frame payload accepted (Go's client refuses longer frames).
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// The largest packet a SendPacket or ForwardPacket may carry (the server's limit).
pub const MAX_PACKET_SIZE: usize = 64 << 10;
/// The largest ClientInfo payload the server reads.
pub const MAX_CLIENT_INFO_LEN: usize = 256 << 10;
/// The DERP protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// Length of Ping and Pong payloads.
pub const PING_LEN: usize = 8;

/// The DERP frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameType {
    /// Server → client, first frame: magic and the server's key.
    ServerKey = 0x01,
    /// Client → server, first frame: the client's key and a sealed JSON ClientInfo.
    ClientInfo = 0x02,
    /// Server → client: a sealed JSON ServerInfo.
    ServerInfo = 0x03,
    /// Client → server: a packet for a node key.
    SendPacket = 0x04,
    /// Server → client: a packet from a node key.
    RecvPacket = 0x05,
    /// Server → client: nothing, to keep the connection alive.
    KeepAlive = 0x06,
    /// Client → server: whether this is the client's home DERP.
    NotePreferred = 0x07,
    /// Server → client: a peer is gone.
    PeerGone = 0x08,
    /// Server → mesh watcher: a peer is present.
    PeerPresent = 0x09,
    /// Mesh: a packet forwarded between servers.
    ForwardPacket = 0x0a,
    /// Mesh: subscribe to presence changes.
    WatchConns = 0x10,
    /// Mesh: close a peer's connection.
    ClosePeer = 0x11,
    /// Either direction: 8 bytes to echo.
    Ping = 0x12,
    /// Either direction: the echoed 8 bytes.
    Pong = 0x13,
    /// Server → client: a problem text, empty when healthy.
    Health = 0x14,
    /// Server → client: the server is restarting.
    Restarting = 0x15,
}

impl FrameType {
    /// The frame type of a type byte, if known.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::ServerKey,
            0x02 => Self::ClientInfo,
            0x03 => Self::ServerInfo,
            0x04 => Self::SendPacket,
            0x05 => Self::RecvPacket,
            0x06 => Self::KeepAlive,
            0x07 => Self::NotePreferred,
            0x08 => Self::PeerGone,
            0x09 => Self::PeerPresent,
            0x0a => Self::ForwardPacket,
            0x10 => Self::WatchConns,
            0x11 => Self::ClosePeer,
            0x12 => Self::Ping,
            0x13 => Self::Pong,
            0x14 => Self::Health,
            0x15 => Self::Restarting,
            _ => return None,
        })
    }
}

/// Why a peer is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerGoneReason {
    /// The peer disconnected from this server (0x00, also when the byte is missing).
    Disconnected,
    /// The server does not know the peer we sent to (0x01).
    NotHere,
    /// A reason this implementation does not know.
    Other(u8),
}

impl PeerGoneReason {
    fn from_u8(b: u8) -> Self {
        match b {
            0x00 => Self::Disconnected,
            0x01 => Self::NotHere,
            b => Self::Other(b),
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Disconnected => 0x00,
            Self::NotHere => 0x01,
            Self::Other(b) => b,
        }
    }
}

/// Why bytes are not a valid DERP frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// More bytes are needed: `needed` in all, counted from the start of the frame.
    #[error("incomplete frame: {needed} bytes needed, {have} available")]
    Incomplete {
        /// Bytes the whole frame needs (header first, then header and payload).
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// A frame longer than [`MAX_FRAME_LEN`] (or its type's own limit).
    #[error("frame of type {frame_type:#04x} has {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// The type byte.
        frame_type: u8,
        /// The declared payload length.
        len: usize,
        /// The limit for this type.
        max: usize,
    },
    /// A payload shorter than its type needs.
    #[error("frame of type {frame_type:#04x} is too short ({len} bytes)")]
    Short {
        /// The type byte.
        frame_type: u8,
        /// The payload length.
        len: usize,
    },
    /// The ServerKey frame lacks the DERP magic.
    #[error("server greeting lacks the DERP magic")]
    BadMagic,
    /// A Health text that is not UTF-8.
    #[error("health frame text is not UTF-8")]
    HealthNotUtf8,
}

/// One DERP frame, borrowing its payload from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame<'a> {
    /// Magic and the server's public key; later bytes are ignored.
    ServerKey {
        /// The server's key (a node key, not a machine key).
        key: NodePublic,
    },
    /// The client's key, then nonce and box of the JSON [`super::ClientInfo`].
    ClientInfo {
        /// The client's node public key.
        key: NodePublic,
        /// Nonce, tag and ciphertext.
        sealed: &'a [u8],
    },
    /// Nonce and box of the JSON [`super::ServerInfo`].
    ServerInfo {
        /// Nonce, tag and ciphertext.
        sealed: &'a [u8],
    },
    /// A packet for `dst`.
    SendPacket {
        /// The destination node key.
        dst: NodePublic,
        /// The packet.
        packet: &'a [u8],
    },
    /// A packet forwarded between mesh servers.
    ForwardPacket {
        /// The source node key.
        src: NodePublic,
        /// The destination node key.
        dst: NodePublic,
        /// The packet.
        packet: &'a [u8],
    },
    /// A packet from `src`.
    RecvPacket {
        /// The source node key.
        src: NodePublic,
        /// The packet.
        packet: &'a [u8],
    },
    /// Keep-alive, no payload.
    KeepAlive,
    /// Whether this server is the client's home.
    NotePreferred {
        /// `true` for home.
        preferred: bool,
    },
    /// A peer is gone.
    PeerGone {
        /// The peer's node key.
        peer: NodePublic,
        /// Why.
        reason: PeerGoneReason,
    },
    /// A peer is present (mesh watchers).
    PeerPresent {
        /// The peer's node key.
        peer: NodePublic,
        /// Its address as the server saw it, if sent.
        endpoint: Option<SocketAddr>,
        /// Presence flags, if sent.
        flags: Option<u8>,
    },
    /// Subscribe to presence changes (mesh).
    WatchConns,
    /// Close a peer's connection (mesh).
    ClosePeer {
        /// The peer's node key.
        peer: NodePublic,
    },
    /// 8 bytes to echo; longer payloads are accepted and the rest ignored.
    Ping([u8; PING_LEN]),
    /// The echoed 8 bytes.
    Pong([u8; PING_LEN]),
    /// A problem text; empty when healthy.
    Health {
        /// The text.
        problem: &'a str,
    },
    /// The server is restarting.
    Restarting {
        /// Reconnect after this long.
        reconnect_in: Duration,
        /// Keep trying this long.
        try_for: Duration,
    },
    /// A frame type this implementation does not know; skip it.
    Unknown {
        /// The type byte.
        frame_type: u8,
        /// The payload.
        payload: &'a [u8],
    },
}

fn key_at(b: &[u8], at: usize) -> Option<NodePublic> {
    let k: [u8; KEY_LEN] = b.get(at..at + KEY_LEN)?.try_into().ok()?;
    Some(NodePublic::from_bytes(k))
}

fn max_payload(frame_type: u8) -> usize {
    match FrameType::from_u8(frame_type) {
        Some(FrameType::SendPacket) => KEY_LEN + MAX_PACKET_SIZE,
        Some(FrameType::ForwardPacket) => 2 * KEY_LEN + MAX_PACKET_SIZE,
        Some(FrameType::ClientInfo) => MAX_CLIENT_INFO_LEN,
        _ => MAX_FRAME_LEN,
    }
}

impl<'a> Frame<'a> {
    /// Reads the frame header at the start of `buf`: type byte and payload length. Refuses
    /// a length over the type's limit as soon as the header is there, so a reader never
    /// waits for (or buffers) an oversized frame.
    pub fn peek_header(buf: &[u8]) -> Result<(u8, usize), FrameError> {
        let hdr: [u8; FRAME_HEADER_LEN] = buf
            .get(..FRAME_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(FrameError::Incomplete {
                needed: FRAME_HEADER_LEN,
                have: buf.len(),
            })?;
        let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
        let max = max_payload(hdr[0]);
        if len > max {
            return Err(FrameError::TooLarge {
                frame_type: hdr[0],
                len,
                max,
            });
        }
        Ok((hdr[0], len))
    }

    /// Parses the frame at the start of `buf`, returning it and the bytes it used. With too
    /// few bytes it returns [`FrameError::Incomplete`]; bytes after the frame are left alone.
    pub fn parse(buf: &'a [u8]) -> Result<(Self, usize), FrameError> {
        let (frame_type, len) = Self::peek_header(buf)?;
        let total = FRAME_HEADER_LEN + len;
        let payload = buf
            .get(FRAME_HEADER_LEN..total)
            .ok_or(FrameError::Incomplete {
                needed: total,
                have: buf.len(),
            })?;
        Ok((Self::parse_payload(frame_type, payload)?, total))
    }

    /// Parses a payload of the given type (the header already read).
    pub fn parse_payload(frame_type: u8, p: &'a [u8]) -> Result<Self, FrameError> {
        let short = || FrameError::Short {
            frame_type,
            len: p.len(),
        };
        let max = max_payload(frame_type);
        if p.len() > max {
            return Err(FrameError::TooLarge {
                frame_type,
                len: p.len(),
                max,
            });
        }
        let Some(ty) = FrameType::from_u8(frame_type) else {
            return Ok(Frame::Unknown {
                frame_type,
                payload: p,
            });
        };
        Ok(match ty {
            FrameType::ServerKey => {
                let magic = p.get(..MAGIC.len()).ok_or_else(short)?;
                if magic != MAGIC {
                    return Err(FrameError::BadMagic);
                }
                Frame::ServerKey {
                    key: key_at(p, MAGIC.len()).ok_or_else(short)?,
                }
            }
            FrameType::ClientInfo => {
                if p.len() < KEY_LEN + NONCE_LEN {
                    return Err(short());
                }
                Frame::ClientInfo {
                    key: key_at(p, 0).ok_or_else(short)?,
                    sealed: &p[KEY_LEN..],
                }
            }
            FrameType::ServerInfo => {
                if p.len() < NONCE_LEN {
                    return Err(short());
                }
                Frame::ServerInfo { sealed: p }
            }
            FrameType::SendPacket => Frame::SendPacket {
                dst: key_at(p, 0).ok_or_else(short)?,
                packet: &p[KEY_LEN..],
            },
            FrameType::ForwardPacket => Frame::ForwardPacket {
                src: key_at(p, 0).ok_or_else(short)?,
                dst: key_at(p, KEY_LEN).ok_or_else(short)?,
                packet: &p[2 * KEY_LEN..],
            },
            FrameType::RecvPacket => Frame::RecvPacket {
                src: key_at(p, 0).ok_or_else(short)?,
                packet: &p[KEY_LEN..],
            },
            FrameType::KeepAlive => Frame::KeepAlive,
            FrameType::NotePreferred => Frame::NotePreferred {
                preferred: *p.first().ok_or_else(short)? != 0,
            },
            FrameType::PeerGone => Frame::PeerGone {
                peer: key_at(p, 0).ok_or_else(short)?,
                reason: p.get(KEY_LEN).map_or(PeerGoneReason::Disconnected, |&b| {
                    PeerGoneReason::from_u8(b)
                }),
            },
            FrameType::PeerPresent => {
                let peer = key_at(p, 0).ok_or_else(short)?;
                let endpoint = p.get(KEY_LEN..KEY_LEN + 18).and_then(|e| {
                    let ip: [u8; 16] = e[..16].try_into().ok()?;
                    let ip = IpAddr::V6(Ipv6Addr::from(ip)).to_canonical();
                    Some(SocketAddr::new(ip, u16::from_be_bytes([e[16], e[17]])))
                });
                let flags = endpoint.and(p.get(KEY_LEN + 18).copied());
                Frame::PeerPresent {
                    peer,
                    endpoint,
                    flags,
                }
            }
            FrameType::WatchConns => Frame::WatchConns,
            FrameType::ClosePeer => Frame::ClosePeer {
                peer: key_at(p, 0).ok_or_else(short)?,
            },
            FrameType::Ping | FrameType::Pong => {
                let data: [u8; PING_LEN] = p
                    .get(..PING_LEN)
                    .and_then(|d| d.try_into().ok())
                    .ok_or_else(short)?;
                if ty == FrameType::Ping {
                    Frame::Ping(data)
                } else {
                    Frame::Pong(data)
                }
            }
            FrameType::Health => Frame::Health {
                problem: std::str::from_utf8(p).map_err(|_| FrameError::HealthNotUtf8)?,
            },
            FrameType::Restarting => {
                let b = p.get(..8).ok_or_else(short)?;
                let ms =
                    |i: usize| u64::from(u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
                Frame::Restarting {
                    reconnect_in: Duration::from_millis(ms(0)),
                    try_for: Duration::from_millis(ms(4)),
                }
            }
        })
    }

    /// The type byte of this frame.
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::ServerKey { .. } => FrameType::ServerKey as u8,
            Frame::ClientInfo { .. } => FrameType::ClientInfo as u8,
            Frame::ServerInfo { .. } => FrameType::ServerInfo as u8,
            Frame::SendPacket { .. } => FrameType::SendPacket as u8,
            Frame::ForwardPacket { .. } => FrameType::ForwardPacket as u8,
            Frame::RecvPacket { .. } => FrameType::RecvPacket as u8,
            Frame::KeepAlive => FrameType::KeepAlive as u8,
            Frame::NotePreferred { .. } => FrameType::NotePreferred as u8,
            Frame::PeerGone { .. } => FrameType::PeerGone as u8,
            Frame::PeerPresent { .. } => FrameType::PeerPresent as u8,
            Frame::WatchConns => FrameType::WatchConns as u8,
            Frame::ClosePeer { .. } => FrameType::ClosePeer as u8,
            Frame::Ping(_) => FrameType::Ping as u8,
            Frame::Pong(_) => FrameType::Pong as u8,
            Frame::Health { .. } => FrameType::Health as u8,
            Frame::Restarting { .. } => FrameType::Restarting as u8,
            Frame::Unknown { frame_type, .. } => *frame_type,
        }
    }

    /// The payload length this frame has on the wire.
    pub fn payload_len(&self) -> usize {
        match self {
            Frame::ServerKey { .. } => MAGIC.len() + KEY_LEN,
            Frame::ClientInfo { sealed, .. } => KEY_LEN + sealed.len(),
            Frame::ServerInfo { sealed } => sealed.len(),
            Frame::SendPacket { packet, .. } | Frame::RecvPacket { packet, .. } => {
                KEY_LEN + packet.len()
            }
            Frame::ForwardPacket { packet, .. } => 2 * KEY_LEN + packet.len(),
            Frame::KeepAlive | Frame::WatchConns => 0,
            Frame::NotePreferred { .. } => 1,
            Frame::PeerGone { .. } => KEY_LEN + 1,
            Frame::PeerPresent {
                endpoint, flags, ..
            } => {
                KEY_LEN
                    + if endpoint.is_some() || flags.is_some() {
                        18
                    } else {
                        0
                    }
                    + usize::from(flags.is_some())
            }
            Frame::ClosePeer { .. } => KEY_LEN,
            Frame::Ping(_) | Frame::Pong(_) => PING_LEN,
            Frame::Health { problem } => problem.len(),
            Frame::Restarting { .. } => 8,
            Frame::Unknown { payload, .. } => payload.len(),
        }
    }

    /// Appends the frame (header and payload) to `out`. Refuses a frame over its type's
    /// limit, leaving `out` unchanged.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let frame_type = self.frame_type();
        let len = self.payload_len();
        let max = max_payload(frame_type);
        if len > max {
            return Err(FrameError::TooLarge {
                frame_type,
                len,
                max,
            });
        }
        out.reserve(FRAME_HEADER_LEN + len);
        out.push(frame_type);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        match self {
            Frame::ServerKey { key } => {
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(key.as_bytes());
            }
            Frame::ClientInfo { key, sealed } => {
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(sealed);
            }
            Frame::ServerInfo { sealed } => out.extend_from_slice(sealed),
            Frame::SendPacket { dst: k, packet } | Frame::RecvPacket { src: k, packet } => {
                out.extend_from_slice(k.as_bytes());
                out.extend_from_slice(packet);
            }
            Frame::ForwardPacket { src, dst, packet } => {
                out.extend_from_slice(src.as_bytes());
                out.extend_from_slice(dst.as_bytes());
                out.extend_from_slice(packet);
            }
            Frame::KeepAlive | Frame::WatchConns => {}
            Frame::NotePreferred { preferred } => out.push(u8::from(*preferred)),
            Frame::PeerGone { peer, reason } => {
                out.extend_from_slice(peer.as_bytes());
                out.push(reason.to_u8());
            }
            Frame::PeerPresent {
                peer,
                endpoint,
                flags,
            } => {
                out.extend_from_slice(peer.as_bytes());
                if endpoint.is_some() || flags.is_some() {
                    let ep =
                        endpoint.unwrap_or(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0));
                    let ip = match ep.ip() {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                        IpAddr::V6(v6) => v6,
                    };
                    out.extend_from_slice(&ip.octets());
                    out.extend_from_slice(&ep.port().to_be_bytes());
                }
                if let Some(f) = flags {
                    out.push(*f);
                }
            }
            Frame::ClosePeer { peer } => out.extend_from_slice(peer.as_bytes()),
            Frame::Ping(d) | Frame::Pong(d) => out.extend_from_slice(d),
            Frame::Health { problem } => out.extend_from_slice(problem.as_bytes()),
            Frame::Restarting {
                reconnect_in,
                try_for,
            } => {
                let ms = |d: &Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
                out.extend_from_slice(&ms(reconnect_in).to_be_bytes());
                out.extend_from_slice(&ms(try_for).to_be_bytes());
            }
            Frame::Unknown { payload, .. } => out.extend_from_slice(payload),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> NodePublic {
        NodePublic::from_bytes([b; 32])
    }

    fn emit(f: &Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        f.emit(&mut out).unwrap();
        out
    }

    fn roundtrip(f: Frame<'_>, want_hex_prefix: &str) {
        let b = emit(&f);
        assert!(
            hex::encode(&b).starts_with(want_hex_prefix),
            "{f:?}: {} does not start with {want_hex_prefix}",
            hex::encode(&b)
        );
        let (g, used) = Frame::parse(&b).unwrap();
        assert_eq!(used, b.len());
        assert_eq!(g, f);
        // Every proper prefix is incomplete, never a panic or a wrong frame.
        for n in 0..b.len() {
            assert!(
                matches!(Frame::parse(&b[..n]), Err(FrameError::Incomplete { .. })),
                "{f:?} prefix {n}"
            );
        }
    }

    #[test]
    fn every_frame_type_roundtrips() {
        let ff = "ff".repeat(32);
        let aa = "aa".repeat(32);
        roundtrip(
            Frame::ServerKey { key: k(0xff) },
            &format!("010000002844455250f09f9491{ff}"),
        );
        roundtrip(
            Frame::ClientInfo {
                key: k(0xaa),
                sealed: &[7; 24 + 16 + 3],
            },
            &format!("020000004b{aa}07"),
        );
        roundtrip(Frame::ServerInfo { sealed: &[1; 40] }, "030000002801");
        roundtrip(
            Frame::SendPacket {
                dst: k(0xaa),
                packet: b"hi",
            },
            &format!("0400000022{aa}6869"),
        );
        roundtrip(
            Frame::RecvPacket {
                src: k(0xff),
                packet: b"",
            },
            &format!("0500000020{ff}"),
        );
        roundtrip(
            Frame::ForwardPacket {
                src: k(0xff),
                dst: k(0xaa),
                packet: b"x",
            },
            &format!("0a00000041{ff}{aa}78"),
        );
        roundtrip(Frame::KeepAlive, "0600000000");
        roundtrip(Frame::NotePreferred { preferred: true }, "070000000101");
        roundtrip(Frame::NotePreferred { preferred: false }, "070000000100");
        roundtrip(
            Frame::PeerGone {
                peer: k(0xaa),
                reason: PeerGoneReason::NotHere,
            },
            &format!("0800000021{aa}01"),
        );
        roundtrip(
            Frame::PeerPresent {
                peer: k(0xaa),
                endpoint: Some("1.2.3.4:80".parse().unwrap()),
                flags: Some(1),
            },
            &format!("0900000033{aa}00000000000000000000ffff01020304005001"),
        );
        roundtrip(
            Frame::PeerPresent {
                peer: k(0xaa),
                endpoint: None,
                flags: None,
            },
            &format!("0900000020{aa}"),
        );
        roundtrip(Frame::WatchConns, "1000000000");
        roundtrip(
            Frame::ClosePeer { peer: k(0xff) },
            &format!("1100000020{ff}"),
        );
        roundtrip(Frame::Ping(*b"12345678"), "12000000083132333435363738");
        roundtrip(Frame::Pong(*b"12345678"), "13000000083132333435363738");
        roundtrip(
            Frame::Health {
                problem: "duplicate",
            },
            "140000000964757",
        );
        roundtrip(Frame::Health { problem: "" }, "1400000000");
        roundtrip(
            Frame::Restarting {
                reconnect_in: Duration::from_millis(1000),
                try_for: Duration::from_millis(60_000),
            },
            "1500000008000003e80000ea60",
        );
        roundtrip(
            Frame::Unknown {
                frame_type: 0x7f,
                payload: b"zz",
            },
            "7f000000027a7a",
        );
    }

    #[test]
    fn lenient_where_go_is_lenient() {
        // PeerGone without a reason byte: disconnected.
        let mut b = vec![0x08, 0, 0, 0, 32];
        b.extend_from_slice(&[3; 32]);
        assert_eq!(
            Frame::parse(&b).unwrap().0,
            Frame::PeerGone {
                peer: k(3),
                reason: PeerGoneReason::Disconnected
            }
        );
        // Unknown reason kept.
        b[4] = 33;
        b.push(0xf0);
        assert!(matches!(
            Frame::parse(&b).unwrap().0,
            Frame::PeerGone {
                reason: PeerGoneReason::Other(0xf0),
                ..
            }
        ));
        // ServerKey with future bytes after the key.
        let mut sk = vec![0x01, 0, 0, 0, 44];
        sk.extend_from_slice(&MAGIC);
        sk.extend_from_slice(&[9; 36]);
        assert_eq!(Frame::parse(&sk).unwrap().0, Frame::ServerKey { key: k(9) });
        // PeerPresent with only the key and a partial address: no endpoint.
        let mut pp = vec![0x09, 0, 0, 0, 40];
        pp.extend_from_slice(&[4; 40]);
        assert!(matches!(
            Frame::parse(&pp).unwrap().0,
            Frame::PeerPresent {
                endpoint: None,
                flags: None,
                ..
            }
        ));
        // Trailing bytes after a frame are left for the next one.
        let mut two = emit(&Frame::KeepAlive);
        two.extend_from_slice(&emit(&Frame::Ping([1; 8])));
        let (f, used) = Frame::parse(&two).unwrap();
        assert_eq!((f, used), (Frame::KeepAlive, 5));
        assert_eq!(Frame::parse(&two[5..]).unwrap().0, Frame::Ping([1; 8]));
    }

    #[test]
    fn short_bad_and_oversized() {
        let short = |ty: u8, len: usize| {
            let mut b = vec![ty];
            b.extend_from_slice(&(len as u32).to_be_bytes());
            b.resize(5 + len, 0x44);
            Frame::parse(&b).map(|_| ())
        };
        for (ty, min) in [
            (0x01, 40),
            (0x02, 56),
            (0x03, 24),
            (0x04, 32),
            (0x05, 32),
            (0x07, 1),
            (0x08, 32),
            (0x09, 32),
            (0x0a, 64),
            (0x11, 32),
            (0x12, 8),
            (0x13, 8),
            (0x15, 8),
        ] {
            let r = short(ty, min - 1);
            assert!(
                matches!(r, Err(FrameError::Short { .. }))
                    || matches!(r, Err(FrameError::BadMagic)),
                "type {ty:#x}: {r:?}"
            );
        }
        // Bad magic.
        let mut sk = vec![0x01, 0, 0, 0, 40];
        sk.extend_from_slice(&[0; 40]);
        assert_eq!(Frame::parse(&sk), Err(FrameError::BadMagic));
        // Non-UTF-8 health.
        assert_eq!(
            Frame::parse(&[0x14, 0, 0, 0, 1, 0xff]),
            Err(FrameError::HealthNotUtf8)
        );
        // Oversized: refused from the header alone, before the payload arrives.
        assert!(matches!(
            Frame::parse(&[0x05, 0x00, 0x10, 0x00, 0x01]),
            Err(FrameError::TooLarge { len: 0x100001, .. })
        ));
        assert!(matches!(
            Frame::parse(&[0x04, 0x00, 0x01, 0x00, 0x21]),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            Frame::parse(&[0x02, 0x00, 0x04, 0x00, 0x01]),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            Frame::parse(&[0xee, 0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::TooLarge { .. })
        ));
        // The largest packet is fine; one more byte is refused on emit.
        let big = vec![0u8; MAX_PACKET_SIZE];
        let f = Frame::SendPacket {
            dst: k(1),
            packet: &big,
        };
        assert_eq!(Frame::parse(&emit(&f)).unwrap().0, f);
        let bigger = vec![0u8; MAX_PACKET_SIZE + 1];
        let mut out = Vec::new();
        assert!(matches!(
            Frame::SendPacket {
                dst: k(1),
                packet: &bigger
            }
            .emit(&mut out),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x9e37_79b9u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..5000 {
            let len = (next() % 80) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if b.len() >= 5 {
                b[0] = (next() % 0x17) as u8;
                let plen = (b.len() - 5) as u32;
                b[1..5].copy_from_slice(&plen.to_be_bytes());
            }
            let _ = Frame::parse(&b);
        }
    }
}

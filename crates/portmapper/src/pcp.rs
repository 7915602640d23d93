//! PCP (RFC 6887) messages, without I/O.
//!
//! PCP shares UDP port 5351 with NAT-PMP and tells itself apart by its version byte, 2. Every
//! message starts with a 24-byte header (version, opcode with the reply bit, result code,
//! lifetime, then the client's address in a request or the gateway's epoch in a response).
//! This client speaks two opcodes: ANNOUNCE (0), a header alone, to see whether a gateway
//! speaks PCP, and MAP (1), whose 36-byte body carries a 12-byte nonce, the protocol (17 for
//! UDP), the internal port and the suggested (in a response: assigned) external address and
//! port. Refreshing or deleting (lifetime 0) a mapping must repeat the nonce that created it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

/// The only PCP version.
pub const VERSION: u8 = 2;
/// Opcode ANNOUNCE.
pub const OP_ANNOUNCE: u8 = 0;
/// Opcode MAP.
pub const OP_MAP: u8 = 1;
/// Set in the opcode of every response.
pub const REPLY: u8 = 0x80;
/// The common header's length.
pub const HEADER_LEN: usize = 24;
/// A MAP request or response without options.
pub const MAP_LEN: usize = 60;
/// The largest PCP message (RFC 6887 section 7).
pub const MAX_LEN: usize = 1100;
/// IANA protocol number for UDP.
pub const PROTO_UDP: u8 = 17;

/// A MAP nonce: chosen at random when a mapping is made, repeated to refresh or delete it.
pub type Nonce = [u8; 12];

/// An IPv4 address as PCP carries it: IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
fn mapped(ip: Ipv4Addr) -> [u8; 16] {
    ip.to_ipv6_mapped().octets()
}

/// An ANNOUNCE request from `client_ip`: a header with lifetime 0.
pub fn announce_request(client_ip: Ipv4Addr) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0] = VERSION;
    b[1] = OP_ANNOUNCE;
    b[8..24].copy_from_slice(&mapped(client_ip));
    b
}

/// A MAP request for a UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRequest {
    /// The client's own address: the gateway compares it with the packet's source.
    pub client_ip: Ipv4Addr,
    /// Lifetime asked for, in seconds (0 deletes).
    pub lifetime: u32,
    /// The mapping's nonce.
    pub nonce: Nonce,
    /// The port on this host.
    pub internal_port: u16,
    /// The external address and port we would like (`0.0.0.0:0`: no preference).
    pub suggested_external: SocketAddrV4,
}

impl MapRequest {
    /// The 60-byte request.
    pub fn encode(&self) -> [u8; MAP_LEN] {
        let mut b = [0u8; MAP_LEN];
        b[0] = VERSION;
        b[1] = OP_MAP;
        b[4..8].copy_from_slice(&self.lifetime.to_be_bytes());
        b[8..24].copy_from_slice(&mapped(self.client_ip));
        b[24..36].copy_from_slice(&self.nonce);
        b[36] = PROTO_UDP;
        // b[37..40]: reserved, zero.
        b[40..42].copy_from_slice(&self.internal_port.to_be_bytes());
        b[42..44].copy_from_slice(&self.suggested_external.port().to_be_bytes());
        b[44..60].copy_from_slice(&mapped(*self.suggested_external.ip()));
        b
    }
}

/// A PCP result code (RFC 6887 section 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultCode {
    /// 0
    Success,
    /// 1: the server does not speak this version.
    UnsupportedVersion,
    /// 2: refused by policy (PCP off on the gateway?).
    NotAuthorized,
    /// 3
    MalformedRequest,
    /// 4
    UnsupportedOpcode,
    /// 5
    UnsupportedOption,
    /// 6
    MalformedOption,
    /// 7: the gateway has no external connectivity.
    NetworkFailure,
    /// 8: no more mappings for now.
    NoResources,
    /// 9
    UnsupportedProtocol,
    /// 10: this client's quota is used up.
    UserExceededQuota,
    /// 11: the suggested external address or port cannot be had.
    CannotProvideExternal,
    /// 12: the client address field differs from the packet's source (a NAT in between).
    AddressMismatch,
    /// 13
    ExcessiveRemotePeers,
    /// Any other value.
    Other(u8),
}

impl ResultCode {
    /// The code for a wire value.
    pub fn from_u8(v: u8) -> ResultCode {
        use ResultCode::*;
        match v {
            0 => Success,
            1 => UnsupportedVersion,
            2 => NotAuthorized,
            3 => MalformedRequest,
            4 => UnsupportedOpcode,
            5 => UnsupportedOption,
            6 => MalformedOption,
            7 => NetworkFailure,
            8 => NoResources,
            9 => UnsupportedProtocol,
            10 => UserExceededQuota,
            11 => CannotProvideExternal,
            12 => AddressMismatch,
            13 => ExcessiveRemotePeers,
            other => Other(other),
        }
    }

    /// The wire value.
    pub fn to_u8(self) -> u8 {
        use ResultCode::*;
        match self {
            Success => 0,
            UnsupportedVersion => 1,
            NotAuthorized => 2,
            MalformedRequest => 3,
            UnsupportedOpcode => 4,
            UnsupportedOption => 5,
            MalformedOption => 6,
            NetworkFailure => 7,
            NoResources => 8,
            UnsupportedProtocol => 9,
            UserExceededQuota => 10,
            CannotProvideExternal => 11,
            AddressMismatch => 12,
            ExcessiveRemotePeers => 13,
            Other(v) => v,
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ResultCode::*;
        let text = match self {
            Success => "SUCCESS",
            UnsupportedVersion => "UNSUPP_VERSION",
            NotAuthorized => "NOT_AUTHORIZED",
            MalformedRequest => "MALFORMED_REQUEST",
            UnsupportedOpcode => "UNSUPP_OPCODE",
            UnsupportedOption => "UNSUPP_OPTION",
            MalformedOption => "MALFORMED_OPTION",
            NetworkFailure => "NETWORK_FAILURE",
            NoResources => "NO_RESOURCES",
            UnsupportedProtocol => "UNSUPP_PROTOCOL",
            UserExceededQuota => "USER_EX_QUOTA",
            CannotProvideExternal => "CANNOT_PROVIDE_EXTERNAL",
            AddressMismatch => "ADDRESS_MISMATCH",
            ExcessiveRemotePeers => "EXCESSIVE_REMOTE_PEERS",
            Other(_) => "unknown result code",
        };
        write!(f, "{text} ({})", self.to_u8())
    }
}

/// The MAP-specific part of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapBody {
    /// The nonce, echoed from the request.
    pub nonce: Nonce,
    /// The protocol number (17 for UDP).
    pub protocol: u8,
    /// The internal port, echoed.
    pub internal_port: u16,
    /// The external address and port assigned (IPv4 addresses come back unmapped).
    pub external: SocketAddr,
}

/// A parsed PCP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The request's opcode (reply bit removed).
    pub opcode: u8,
    /// The result.
    pub result: ResultCode,
    /// Seconds the mapping (or, on an error, the error) holds.
    pub lifetime: u32,
    /// The gateway's epoch, in seconds.
    pub epoch: u32,
    /// For MAP: the body. An error response may be too short to carry one.
    pub map: Option<MapBody>,
}

/// Why bytes are not a PCP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Fewer bytes than the message needs.
    #[error("PCP message too short: {got} bytes, need {need}")]
    TooShort {
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Longer than 1100 bytes or not a multiple of 4 (RFC 6887 section 7).
    #[error("PCP message of {0} bytes (must be a multiple of 4, at most 1100)")]
    Length(usize),
    /// Version is not 2 (0 is NAT-PMP).
    #[error("not PCP: version {0}")]
    Version(u8),
    /// The reply bit is clear.
    #[error("PCP request, not a response (opcode {0})")]
    NotResponse(u8),
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*s.first()?, *s.get(1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_be_bytes(a))
}

fn ip16(b: &[u8], at: usize) -> Option<IpAddr> {
    let s = b.get(at..at.checked_add(16)?)?;
    let mut a = [0u8; 16];
    a.copy_from_slice(s);
    let v6 = Ipv6Addr::from(a);
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

/// Parses a response (options after the MAP body are allowed and skipped).
pub fn parse_response(b: &[u8]) -> Result<Response, ParseError> {
    let too_short = |need| ParseError::TooShort { got: b.len(), need };
    let version = *b.first().ok_or(too_short(HEADER_LEN))?;
    if version != VERSION {
        return Err(ParseError::Version(version));
    }
    if b.len() < HEADER_LEN {
        return Err(too_short(HEADER_LEN));
    }
    if b.len() > MAX_LEN || b.len() % 4 != 0 {
        return Err(ParseError::Length(b.len()));
    }
    let op = *b.get(1).ok_or(too_short(HEADER_LEN))?;
    if op & REPLY == 0 {
        return Err(ParseError::NotResponse(op));
    }
    let opcode = op & !REPLY;
    let result = ResultCode::from_u8(*b.get(3).ok_or(too_short(HEADER_LEN))?);
    let lifetime = be32(b, 4).ok_or(too_short(HEADER_LEN))?;
    let epoch = be32(b, 8).ok_or(too_short(HEADER_LEN))?;
    let map = if opcode == OP_MAP && b.len() >= MAP_LEN {
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(b.get(24..36).ok_or(too_short(MAP_LEN))?);
        let port = be16(b, 42).ok_or(too_short(MAP_LEN))?;
        let ip = ip16(b, 44).ok_or(too_short(MAP_LEN))?;
        Some(MapBody {
            nonce,
            protocol: *b.get(36).ok_or(too_short(MAP_LEN))?,
            internal_port: be16(b, 40).ok_or(too_short(MAP_LEN))?,
            external: SocketAddr::new(ip, port),
        })
    } else {
        None
    };
    if opcode == OP_MAP && result == ResultCode::Success && map.is_none() {
        return Err(too_short(MAP_LEN));
    }
    Ok(Response {
        opcode,
        result,
        lifetime,
        epoch,
        map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: Nonce = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn request() -> MapRequest {
        MapRequest {
            client_ip: Ipv4Addr::new(192, 168, 77, 2),
            lifetime: 7200,
            nonce: NONCE,
            internal_port: 41641,
            suggested_external: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 41641),
        }
    }

    #[test]
    fn map_request_is_60_bytes_as_rfc6887_lays_out() {
        let b = request().encode();
        let mut want = [0u8; 60];
        want[..4].copy_from_slice(&[2, 1, 0, 0]);
        want[4..8].copy_from_slice(&7200u32.to_be_bytes());
        want[8..24].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 77, 2]);
        want[24..36].copy_from_slice(&NONCE);
        want[36] = 17;
        want[40..44].copy_from_slice(&[0xa2, 0xa9, 0xa2, 0xa9]);
        want[44..60].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(b, want);
    }

    #[test]
    fn announce_is_a_bare_header() {
        let b = announce_request(Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(&b[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[20..], &[10, 0, 0, 9]);
    }

    fn response(result: u8, lifetime: u32, external: [u8; 4], port: u16) -> Vec<u8> {
        let mut b = request().encode().to_vec();
        b[1] |= REPLY;
        b[3] = result;
        b[4..8].copy_from_slice(&lifetime.to_be_bytes());
        b[8..12].copy_from_slice(&42u32.to_be_bytes());
        b[12..24].fill(0);
        b[42..44].copy_from_slice(&port.to_be_bytes());
        b[56..60].copy_from_slice(&external);
        b
    }

    #[test]
    fn parses_a_map_response() {
        let r = parse_response(&response(0, 7200, [11, 77, 0, 1], 41641)).unwrap();
        assert_eq!(r.opcode, OP_MAP);
        assert_eq!(r.result, ResultCode::Success);
        assert_eq!((r.lifetime, r.epoch), (7200, 42));
        let m = r.map.unwrap();
        assert_eq!(m.nonce, NONCE);
        assert_eq!(m.protocol, PROTO_UDP);
        assert_eq!(m.internal_port, 41641);
        assert_eq!(m.external, "11.77.0.1:41641".parse().unwrap());
    }

    #[test]
    fn parses_errors_and_announce() {
        let r = parse_response(&response(2, 30, [0; 4], 0)).unwrap();
        assert_eq!(r.result, ResultCode::NotAuthorized);
        // An error answer to MAP may be a bare header.
        let mut h = response(8, 30, [0; 4], 0);
        h.truncate(24);
        let r = parse_response(&h).unwrap();
        assert_eq!((r.result, r.map), (ResultCode::NoResources, None));
        // ANNOUNCE answer.
        let mut a = announce_request(Ipv4Addr::LOCALHOST).to_vec();
        a[1] |= REPLY;
        let r = parse_response(&a).unwrap();
        assert_eq!(
            (r.opcode, r.result, r.map),
            (OP_ANNOUNCE, ResultCode::Success, None)
        );
        // Options after the body are skipped.
        let mut o = response(0, 7200, [11, 77, 0, 1], 1);
        o.extend_from_slice(&[1, 0, 0, 0]);
        assert!(parse_response(&o).unwrap().map.is_some());
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(matches!(
            parse_response(&[]),
            Err(ParseError::TooShort { .. })
        ));
        assert_eq!(parse_response(&[0; 24]), Err(ParseError::Version(0)));
        assert!(matches!(
            parse_response(&[2; 12]),
            Err(ParseError::TooShort { .. })
        ));
        assert_eq!(parse_response(&[2; 26]), Err(ParseError::Length(26)));
        assert_eq!(parse_response(&[2; 1104]), Err(ParseError::Length(1104)));
        assert_eq!(
            parse_response(&request().encode()),
            Err(ParseError::NotResponse(1))
        );
        // A success MAP answer without its body.
        let mut h = response(0, 30, [0; 4], 0);
        h.truncate(24);
        assert_eq!(
            parse_response(&h),
            Err(ParseError::TooShort { got: 24, need: 60 })
        );
        let good = response(0, 7200, [11, 77, 0, 1], 41641);
        for n in 0..good.len() {
            let _ = parse_response(&good[..n]);
        }
    }

    #[test]
    fn ipv6_external_is_kept() {
        let mut b = response(0, 7200, [0; 4], 5);
        b[44..60].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        let m = parse_response(&b).unwrap().map.unwrap();
        assert_eq!(m.external, "[2001:db8::1]:5".parse().unwrap());
    }

    #[test]
    fn result_codes_round_trip() {
        for v in 0..=255u8 {
            assert_eq!(ResultCode::from_u8(v).to_u8(), v);
        }
        assert!(
            ResultCode::AddressMismatch
                .to_string()
                .starts_with("ADDRESS_MISMATCH")
        );
    }
}

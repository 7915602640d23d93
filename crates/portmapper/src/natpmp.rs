//! NAT-PMP (RFC 6886) messages, without I/O.
//!
//! A client sends two kinds of request to the gateway's UDP port 5351: the external address
//! (opcode 0, two bytes) and a UDP mapping (opcode 1, twelve bytes). The gateway answers with
//! the request's opcode plus 128, a result code and its epoch (seconds since its mapping table
//! was last reset). A mapping request with lifetime 0 deletes the mapping.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Instant;

/// The gateway's NAT-PMP (and PCP) port.
pub const PORT: u16 = 5351;
/// The only NAT-PMP version.
pub const VERSION: u8 = 0;
/// Opcode: ask for the gateway's external IPv4 address.
pub const OP_EXTERNAL_ADDRESS: u8 = 0;
/// Opcode: map a UDP port.
pub const OP_MAP_UDP: u8 = 1;
/// Opcode: map a TCP port (never sent here; named so a reply to it reads clearly).
pub const OP_MAP_TCP: u8 = 2;
/// Set in the opcode of every response.
pub const REPLY: u8 = 0x80;

/// The external-address request: version 0, opcode 0.
pub fn external_address_request() -> [u8; 2] {
    [VERSION, OP_EXTERNAL_ADDRESS]
}

/// A UDP mapping request: `internal_port` on this host, the external port we would like
/// (0: no preference) and the lifetime in seconds (0 deletes the mapping).
pub fn map_udp_request(
    internal_port: u16,
    suggested_external_port: u16,
    lifetime: u32,
) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = VERSION;
    b[1] = OP_MAP_UDP;
    // b[2..4]: reserved, zero.
    b[4..6].copy_from_slice(&internal_port.to_be_bytes());
    b[6..8].copy_from_slice(&suggested_external_port.to_be_bytes());
    b[8..12].copy_from_slice(&lifetime.to_be_bytes());
    b
}

/// A NAT-PMP result code (RFC 6886 section 3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultCode {
    /// 0: success.
    Success,
    /// 1: the gateway does not speak this version.
    UnsupportedVersion,
    /// 2: mapping is supported but refused (for example, turned off by the owner).
    NotAuthorized,
    /// 3: the gateway has no external connectivity (for example, no DHCP lease yet).
    NetworkFailure,
    /// 4: the gateway cannot create more mappings.
    OutOfResources,
    /// 5: the gateway does not know the opcode.
    UnsupportedOpcode,
    /// Any other value.
    Other(u16),
}

impl ResultCode {
    /// The code for a wire value.
    pub fn from_u16(v: u16) -> ResultCode {
        match v {
            0 => ResultCode::Success,
            1 => ResultCode::UnsupportedVersion,
            2 => ResultCode::NotAuthorized,
            3 => ResultCode::NetworkFailure,
            4 => ResultCode::OutOfResources,
            5 => ResultCode::UnsupportedOpcode,
            other => ResultCode::Other(other),
        }
    }

    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            ResultCode::Success => 0,
            ResultCode::UnsupportedVersion => 1,
            ResultCode::NotAuthorized => 2,
            ResultCode::NetworkFailure => 3,
            ResultCode::OutOfResources => 4,
            ResultCode::UnsupportedOpcode => 5,
            ResultCode::Other(v) => v,
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ResultCode::Success => "success",
            ResultCode::UnsupportedVersion => "unsupported version",
            ResultCode::NotAuthorized => "not authorized (mapping turned off on the gateway?)",
            ResultCode::NetworkFailure => "network failure (gateway has no external address?)",
            ResultCode::OutOfResources => "out of resources",
            ResultCode::UnsupportedOpcode => "unsupported opcode",
            ResultCode::Other(_) => "unknown result code",
        };
        write!(f, "{text} ({})", self.to_u16())
    }
}

/// A parsed NAT-PMP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// Answer to opcode 0.
    ExternalAddress {
        /// The gateway's epoch, in seconds.
        epoch: u32,
        /// Its external IPv4 address.
        address: Ipv4Addr,
    },
    /// Answer to a UDP mapping request.
    MapUdp {
        /// The gateway's epoch, in seconds.
        epoch: u32,
        /// The internal port the mapping leads to.
        internal_port: u16,
        /// The external port the gateway chose.
        external_port: u16,
        /// The lifetime granted, in seconds (0 when a deletion was confirmed).
        lifetime: u32,
    },
    /// A non-zero result code: the request (its opcode given) was refused.
    Refused {
        /// The opcode of the request that was refused.
        op: u8,
        /// Why.
        code: ResultCode,
        /// The gateway's epoch, in seconds.
        epoch: u32,
    },
}

/// Why bytes are not a NAT-PMP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Fewer bytes than the message needs.
    #[error("NAT-PMP message too short: {got} bytes, need {need}")]
    TooShort {
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Version is not 0 (2 is PCP).
    #[error("not NAT-PMP: version {0}")]
    Version(u8),
    /// The reply bit is clear: a request, not a response.
    #[error("NAT-PMP request, not a response (opcode {0})")]
    NotResponse(u8),
    /// A successful response to an opcode this client never sends.
    #[error("NAT-PMP response to unexpected opcode {0}")]
    Opcode(u8),
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

fn too_short(got: usize, need: usize) -> ParseError {
    ParseError::TooShort { got, need }
}

/// Parses a response. Trailing bytes after the message are ignored.
pub fn parse_response(b: &[u8]) -> Result<Response, ParseError> {
    let version = *b.first().ok_or(too_short(0, 8))?;
    if version != VERSION {
        return Err(ParseError::Version(version));
    }
    let op = *b.get(1).ok_or(too_short(b.len(), 8))?;
    if op & REPLY == 0 {
        return Err(ParseError::NotResponse(op));
    }
    let code = be16(b, 2).ok_or(too_short(b.len(), 8))?;
    let epoch = be32(b, 4).ok_or(too_short(b.len(), 8))?;
    let code = ResultCode::from_u16(code);
    let request_op = op & !REPLY;
    if code != ResultCode::Success {
        return Ok(Response::Refused {
            op: request_op,
            code,
            epoch,
        });
    }
    match request_op {
        OP_EXTERNAL_ADDRESS => {
            let a = b.get(8..12).ok_or(too_short(b.len(), 12))?;
            let mut octets = [0u8; 4];
            octets.copy_from_slice(a);
            Ok(Response::ExternalAddress {
                epoch,
                address: Ipv4Addr::from(octets),
            })
        }
        OP_MAP_UDP => {
            let need = || too_short(b.len(), 16);
            Ok(Response::MapUdp {
                epoch,
                internal_port: be16(b, 8).ok_or_else(need)?,
                external_port: be16(b, 10).ok_or_else(need)?,
                lifetime: be32(b, 12).ok_or_else(need)?,
            })
        }
        other => Err(ParseError::Opcode(other)),
    }
}

/// Whether a gateway's epoch seen at `now` is consistent with one seen earlier (RFC 6886
/// section 3.6). Time on the gateway must advance at least about as fast as here: its epoch
/// must not fall behind `previous + 7/8 of the time elapsed here`, with 2 s of slack. When
/// it does, the gateway lost its mapping table (a reboot) and every mapping must be made
/// again.
pub fn epoch_consistent(previous: u32, previous_at: Instant, epoch: u32, now: Instant) -> bool {
    if epoch < previous {
        return false;
    }
    let elapsed = now.saturating_duration_since(previous_at).as_secs();
    let expected = u64::from(previous) + elapsed.saturating_mul(7) / 8;
    u64::from(epoch).saturating_add(2) >= expected
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn requests_are_laid_out_as_rfc6886_says() {
        assert_eq!(external_address_request(), [0, 0]);
        assert_eq!(
            map_udp_request(41641, 41641, 7200),
            [0, 1, 0, 0, 0xa2, 0xa9, 0xa2, 0xa9, 0, 0, 0x1c, 0x20]
        );
        // Deletion: lifetime 0.
        assert_eq!(map_udp_request(41641, 0, 0)[8..], [0, 0, 0, 0]);
    }

    #[test]
    fn parses_miniupnpd_answers() {
        // Captured from miniupnpd 2.3.1 (Debian bookworm) in a test namespace.
        let ext = [0x00, 0x80, 0, 0, 0, 0, 0, 1, 11, 77, 0, 1];
        assert_eq!(
            parse_response(&ext),
            Ok(Response::ExternalAddress {
                epoch: 1,
                address: Ipv4Addr::new(11, 77, 0, 1)
            })
        );
        let map = [
            0x00, 0x81, 0, 0, 0, 0, 0, 1, 0xa2, 0xa9, 0xa2, 0xa9, 0, 0, 0x1c, 0x20,
        ];
        assert_eq!(
            parse_response(&map),
            Ok(Response::MapUdp {
                epoch: 1,
                internal_port: 41641,
                external_port: 41641,
                lifetime: 7200
            })
        );
        // Result 3 (network failure): miniupnpd when its firewall tables are missing.
        let failed = [
            0x00, 0x81, 0, 3, 0, 0, 0, 1, 0xa2, 0xa9, 0xa2, 0xa9, 0, 0, 0x1c, 0x20,
        ];
        assert_eq!(
            parse_response(&failed),
            Ok(Response::Refused {
                op: OP_MAP_UDP,
                code: ResultCode::NetworkFailure,
                epoch: 1
            })
        );
    }

    #[test]
    fn refusal_needs_only_the_header() {
        let r = parse_response(&[0, 0x82, 0, 5, 0, 0, 1, 0]).unwrap();
        assert_eq!(
            r,
            Response::Refused {
                op: OP_MAP_TCP,
                code: ResultCode::UnsupportedOpcode,
                epoch: 256
            }
        );
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(parse_response(&[]), Err(too_short(0, 8)));
        assert_eq!(parse_response(&[0]), Err(too_short(1, 8)));
        assert_eq!(parse_response(&[0, 0x80, 0, 0]), Err(too_short(4, 8)));
        assert_eq!(
            parse_response(&[0, 0x80, 0, 0, 0, 0, 0, 1, 1, 2, 3]),
            Err(too_short(11, 12))
        );
        assert_eq!(
            parse_response(&[0, 0x81, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 0, 0, 0]),
            Err(too_short(15, 16))
        );
        assert_eq!(
            parse_response(&[2, 0x80, 0, 0, 0, 0, 0, 0]),
            Err(ParseError::Version(2))
        );
        assert_eq!(
            parse_response(&map_udp_request(1, 1, 1)),
            Err(ParseError::NotResponse(1))
        );
        assert_eq!(
            parse_response(&[0, 0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ParseError::Opcode(3))
        );
        // Every prefix of a valid message, and every single-byte change, is handled.
        let map = [
            0x00, 0x81, 0, 0, 0, 0, 0, 1, 0xa2, 0xa9, 0xa2, 0xa9, 0, 0, 0x1c, 0x20,
        ];
        for n in 0..map.len() {
            let _ = parse_response(&map[..n]);
        }
        for i in 0..map.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut m = map;
                m[i] = v;
                let _ = parse_response(&m);
            }
        }
    }

    #[test]
    fn result_codes_round_trip() {
        for v in 0..8u16 {
            assert_eq!(ResultCode::from_u16(v).to_u16(), v);
        }
        assert_eq!(ResultCode::from_u16(9), ResultCode::Other(9));
        assert!(ResultCode::NotAuthorized.to_string().contains("(2)"));
    }

    #[test]
    fn epoch_check_follows_section_3_6() {
        let t0 = Instant::now();
        let t100 = t0 + Duration::from_secs(100);
        assert!(epoch_consistent(1000, t0, 1100, t100));
        // Slow gateway clock within tolerance: 7/8 of 100 s is 87, minus 2 s slack.
        assert!(epoch_consistent(1000, t0, 1085, t100));
        assert!(!epoch_consistent(1000, t0, 1084, t100));
        // Went backwards: rebooted.
        assert!(!epoch_consistent(1000, t0, 5, t100));
        // No time passed.
        assert!(epoch_consistent(1000, t0, 1000, t0));
    }
}

//! STUN binding requests and responses, as Tailscale's netcheck and magicsock use them
//! (RFC 5389, protocol.md §11.1).
//!
//! A request is the fixed 40 bytes Go's `net/stun.Request` sends: the 20-byte header (binding
//! request, cookie, 12-byte transaction ID), a SOFTWARE attribute `"tailnode"` and a
//! FINGERPRINT. Tailscale's STUN servers (derper's among them) answer only requests that
//! carry both. A response is parsed for XOR-MAPPED-ADDRESS (or its old `0x8020` number), with
//! MAPPED-ADDRESS as the fallback, IPv4 and IPv6; the caller checks the transaction ID with
//! [`Response::for_transaction`].
//!
//! The request goes out of the same UDP socket as WireGuard and disco, so the mapped address
//! is the one peers must use; [`crate::disco::classify`] picks the answers out of that socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A STUN transaction ID.
pub type TxId = [u8; 12];

/// The STUN magic cookie, bytes 4..8 of every message.
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// Length of the STUN header.
pub const HEADER_LEN: usize = 20;
/// Length of the binding request Tailscale sends.
pub const REQUEST_LEN: usize = HEADER_LEN + 4 + SOFTWARE.len() + 8;
/// The SOFTWARE attribute value Tailscale's clients send and its servers require.
pub const SOFTWARE: &[u8; 8] = b"tailnode";

const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_XOR_MAPPED_ADDRESS_ALT: u16 = 0x8020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Why a STUN message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Too short, top bits set, or no magic cookie.
    #[error("not a STUN message")]
    NotStun,
    /// A STUN message, but not a binding success response.
    #[error("STUN message is not a binding success response")]
    NotSuccessResponse,
    /// A STUN message, but not a binding request.
    #[error("STUN message is not a binding request")]
    NotBindingRequest,
    /// The attributes run past the message or an address attribute is malformed.
    #[error("STUN message has malformed attributes")]
    MalformedAttributes,
    /// A response without a usable (XOR-)MAPPED-ADDRESS.
    #[error("STUN response has no mapped address")]
    NoMappedAddress,
    /// A request without Tailscale's SOFTWARE attribute.
    #[error("STUN request is not from Tailscale software")]
    WrongSoftware,
    /// A request whose last attribute is not a FINGERPRINT.
    #[error("STUN request does not end in a fingerprint")]
    NoFingerprint,
    /// A request whose FINGERPRINT does not match.
    #[error("STUN request has a wrong fingerprint")]
    WrongFingerprint,
    /// A response to another transaction than the one asked about.
    #[error("STUN response is for another transaction")]
    TxIdMismatch,
}

/// A parsed binding success response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The transaction it answers.
    pub tx_id: TxId,
    /// Our address as the server saw it (IPv4-mapped IPv6 is unmapped).
    pub mapped: SocketAddr,
}

impl Response {
    /// The mapped address if this response answers `tx_id`.
    pub fn for_transaction(&self, tx_id: &TxId) -> Result<SocketAddr, Error> {
        if &self.tx_id == tx_id {
            Ok(self.mapped)
        } else {
            Err(Error::TxIdMismatch)
        }
    }
}

/// A fresh random transaction ID from the operating system.
pub fn new_tx_id() -> TxId {
    use rand_core::RngCore;
    let mut tx = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut tx);
    tx
}

/// CRC-32 (IEEE, reflected, as zlib and Go's `crc32.ChecksumIEEE`). Bitwise: a request is
/// fingerprinted a few times a minute, so a table is not worth its bytes.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

fn fingerprint(data: &[u8]) -> u32 {
    crc32(data) ^ FINGERPRINT_XOR
}

/// The binding request Tailscale sends for `tx_id`: header, SOFTWARE `"tailnode"`,
/// FINGERPRINT.
pub fn binding_request(tx_id: &TxId) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[0..2].copy_from_slice(&BINDING_REQUEST);
    let attrs_len = (REQUEST_LEN - HEADER_LEN) as u16;
    b[2..4].copy_from_slice(&attrs_len.to_be_bytes());
    b[4..8].copy_from_slice(&MAGIC_COOKIE);
    b[8..20].copy_from_slice(tx_id);
    b[20..22].copy_from_slice(&ATTR_SOFTWARE.to_be_bytes());
    b[22..24].copy_from_slice(&(SOFTWARE.len() as u16).to_be_bytes());
    b[24..32].copy_from_slice(SOFTWARE);
    let fp = fingerprint(&b[..32]);
    b[32..34].copy_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    b[34..36].copy_from_slice(&4u16.to_be_bytes());
    b[36..40].copy_from_slice(&fp.to_be_bytes());
    b
}

/// Whether `b` looks like a STUN message: at least a header, the top two bits zero and the
/// magic cookie in place.
pub fn is_stun(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN && b[0] & 0xc0 == 0 && b[4..8] == MAGIC_COOKIE
}

/// Calls `f(type, value)` for each attribute, honouring the 4-byte padding.
fn for_each_attr(
    mut b: &[u8],
    mut f: impl FnMut(u16, &[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    while !b.is_empty() {
        if b.len() < 4 {
            return Err(Error::MalformedAttributes);
        }
        let ty = u16::from_be_bytes([b[0], b[1]]);
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let padded = (len + 3) & !3;
        let rest = &b[4..];
        if padded > rest.len() {
            return Err(Error::MalformedAttributes);
        }
        f(ty, &rest[..len])?;
        b = &rest[padded..];
    }
    Ok(())
}

fn family_len(family: u8) -> Option<usize> {
    match family {
        1 => Some(4),
        2 => Some(16),
        _ => None,
    }
}

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => {
            let a: [u8; 4] = bytes.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(a)))
        }
        16 => {
            let a: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(a)).to_canonical())
        }
        _ => None,
    }
}

fn mapped_address(v: &[u8], xor_with: Option<&TxId>) -> Result<SocketAddr, Error> {
    if v.len() < 4 {
        return Err(Error::MalformedAttributes);
    }
    let len = family_len(v[1]).ok_or(Error::MalformedAttributes)?;
    let field = v.get(4..4 + len).ok_or(Error::MalformedAttributes)?;
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    let mut addr = [0u8; 16];
    addr[..len].copy_from_slice(field);
    if let Some(tx) = xor_with {
        port ^= 0x2112;
        for (i, byte) in addr[..len].iter_mut().enumerate() {
            *byte ^= if i < 4 { MAGIC_COOKIE[i] } else { tx[i - 4] };
        }
    }
    let ip = ip_from(&addr[..len]).ok_or(Error::MalformedAttributes)?;
    Ok(SocketAddr::new(ip, port))
}

/// Parses a binding success response: its transaction ID and the mapped address
/// (XOR-MAPPED-ADDRESS preferred, MAPPED-ADDRESS as fallback). Bytes past the declared
/// attribute length are ignored, as Go does.
pub fn parse_response(b: &[u8]) -> Result<Response, Error> {
    if !is_stun(b) {
        return Err(Error::NotStun);
    }
    if b[0..2] != BINDING_SUCCESS {
        return Err(Error::NotSuccessResponse);
    }
    let mut tx_id = [0u8; 12];
    tx_id.copy_from_slice(&b[8..20]);
    let attrs_len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let attrs = b[HEADER_LEN..]
        .get(..attrs_len)
        .ok_or(Error::MalformedAttributes)?;
    let mut xor = None;
    let mut plain = None;
    for_each_attr(attrs, |ty, v| {
        match ty {
            ATTR_XOR_MAPPED_ADDRESS | ATTR_XOR_MAPPED_ADDRESS_ALT => {
                xor = Some(mapped_address(v, Some(&tx_id))?);
            }
            ATTR_MAPPED_ADDRESS => plain = Some(mapped_address(v, None)?),
            _ => {}
        }
        Ok(())
    })?;
    let mapped = xor.or(plain).ok_or(Error::NoMappedAddress)?;
    Ok(Response { tx_id, mapped })
}

/// Parses a binding request as Tailscale's STUN server does (SOFTWARE `"tailnode"` and a
/// valid FINGERPRINT last), returning its transaction ID. For tests and simulations that
/// play the server.
pub fn parse_binding_request(b: &[u8]) -> Result<TxId, Error> {
    if !is_stun(b) {
        return Err(Error::NotStun);
    }
    if b[0..2] != BINDING_REQUEST {
        return Err(Error::NotBindingRequest);
    }
    let mut tx_id = [0u8; 12];
    tx_id.copy_from_slice(&b[8..20]);
    let mut software_ok = false;
    let mut last = 0u16;
    let mut got_fp = None;
    for_each_attr(&b[HEADER_LEN..], |ty, v| {
        last = ty;
        if ty == ATTR_SOFTWARE && v == SOFTWARE {
            software_ok = true;
        }
        if ty == ATTR_FINGERPRINT && v.len() == 4 {
            got_fp = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        }
        Ok(())
    })?;
    if !software_ok {
        return Err(Error::WrongSoftware);
    }
    if last != ATTR_FINGERPRINT || b.len() < HEADER_LEN + 8 {
        return Err(Error::NoFingerprint);
    }
    if got_fp != Some(fingerprint(&b[..b.len() - 8])) {
        return Err(Error::WrongFingerprint);
    }
    Ok(tx_id)
}

/// Appends a binding success response for `tx_id` with one XOR-MAPPED-ADDRESS of `addr`, as
/// Tailscale's STUN server answers. For tests and simulations that play the server.
pub fn binding_response(tx_id: &TxId, addr: SocketAddr, out: &mut Vec<u8>) {
    let (family, ip): (u8, Vec<u8>) = match addr.ip().to_canonical() {
        IpAddr::V4(v4) => (1, v4.octets().to_vec()),
        IpAddr::V6(v6) => (2, v6.octets().to_vec()),
    };
    let attr_len = 4 + ip.len();
    out.extend_from_slice(&BINDING_SUCCESS);
    out.extend_from_slice(&((4 + attr_len) as u16).to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE);
    out.extend_from_slice(tx_id);
    out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(attr_len as u16).to_be_bytes());
    out.push(0);
    out.push(family);
    out.extend_from_slice(&(addr.port() ^ 0x2112).to_be_bytes());
    for (i, b) in ip.iter().enumerate() {
        out.push(b ^ if i < 4 { MAGIC_COOKIE[i] } else { tx_id[i - 4] });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TX: TxId = *b"0123456789ab";

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn request_bytes() {
        let req = binding_request(&TX);
        // Header: binding request, 20 bytes of attributes, cookie, tx id.
        assert_eq!(
            hex::encode(&req[..20]),
            "000100142112a442303132333435363738396162"
        );
        // SOFTWARE "tailnode", unpadded (8 bytes).
        assert_eq!(hex::encode(&req[20..32]), "802200087461696c6e6f6465");
        // FINGERPRINT: CRC-32 of the first 32 bytes XOR 0x5354554e.
        assert_eq!(&req[32..36], &[0x80, 0x28, 0x00, 0x04]);
        let fp = u32::from_be_bytes([req[36], req[37], req[38], req[39]]);
        assert_eq!(fp, crc32(&req[..32]) ^ 0x5354_554e);
        assert_eq!(parse_binding_request(&req), Ok(TX));
        assert!(is_stun(&req));
    }

    #[test]
    fn request_checks() {
        let mut req = binding_request(&TX);
        req[39] ^= 1;
        assert_eq!(parse_binding_request(&req), Err(Error::WrongFingerprint));
        let mut req = binding_request(&TX);
        req[24] = b'x';
        assert_eq!(parse_binding_request(&req), Err(Error::WrongSoftware));
        let req = binding_request(&TX);
        assert_eq!(parse_binding_request(&req[..32]), Err(Error::NoFingerprint));
    }

    // RFC 5769 §2.2: sample IPv4 response, XOR-MAPPED-ADDRESS 192.0.2.1:32853 (with SOFTWARE,
    // MESSAGE-INTEGRITY and FINGERPRINT attributes that we skip).
    const RFC5769_V4: &str = "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96";
    // RFC 5769 §2.3: sample IPv6 response, [2001:db8:1234:5678:11:2233:4455:6677]:32853.
    const RFC5769_V6: &str = "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c";

    #[test]
    fn rfc5769_responses() {
        let tx: TxId = hex::decode("b7e7a701bc34d686fa87dfae")
            .unwrap()
            .try_into()
            .unwrap();
        let r = parse_response(&hex::decode(RFC5769_V4).unwrap()).unwrap();
        assert_eq!(
            r.for_transaction(&tx),
            Ok("192.0.2.1:32853".parse().unwrap())
        );
        assert_eq!(r.for_transaction(&TX), Err(Error::TxIdMismatch));
        let r = parse_response(&hex::decode(RFC5769_V6).unwrap()).unwrap();
        assert_eq!(
            r.for_transaction(&tx),
            Ok("[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap())
        );
    }

    #[test]
    fn response_roundtrip_and_fallback() {
        for addr in ["1.2.3.4:41641", "[2001:db8::1]:3478"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut b = Vec::new();
            binding_response(&TX, addr, &mut b);
            let r = parse_response(&b).unwrap();
            assert_eq!(
                r,
                Response {
                    tx_id: TX,
                    mapped: addr
                }
            );
        }
        // MAPPED-ADDRESS only (plain, not XORed).
        let mut b = Vec::new();
        b.extend_from_slice(&[0x01, 0x01, 0x00, 0x0c]);
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&TX);
        b.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x1f, 0x90, 10, 0, 0, 1]);
        let r = parse_response(&b).unwrap();
        assert_eq!(r.mapped, "10.0.0.1:8080".parse().unwrap());
        // Trailing bytes past the declared length are ignored.
        b.extend_from_slice(&[0xff; 7]);
        assert!(parse_response(&b).is_ok());
    }

    #[test]
    fn garbage_is_refused_without_panics() {
        assert_eq!(parse_response(&[]), Err(Error::NotStun));
        assert_eq!(parse_response(&[0u8; 19]), Err(Error::NotStun));
        let req = binding_request(&TX);
        assert_eq!(parse_response(&req), Err(Error::NotSuccessResponse));
        let mut b = Vec::new();
        binding_response(&TX, "1.2.3.4:5".parse().unwrap(), &mut b);
        for n in 0..b.len() {
            let _ = parse_response(&b[..n]);
            let _ = parse_binding_request(&b[..n]);
        }
        // Declared length longer than the message.
        let mut long = b.clone();
        long[3] = 0xff;
        assert_eq!(parse_response(&long), Err(Error::MalformedAttributes));
        // Bad address family.
        let mut fam = b.clone();
        fam[25] = 9;
        assert_eq!(parse_response(&fam), Err(Error::MalformedAttributes));
        // No address attribute at all.
        let mut none = b[..20].to_vec();
        none[2] = 0;
        none[3] = 0;
        assert_eq!(parse_response(&none), Err(Error::NoMappedAddress));
        // A pseudo-random sweep.
        let mut x = 0x1234_5678u32;
        for len in 0..200 {
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse_response(&buf);
            if buf.len() >= 20 {
                buf[0] = 1;
                buf[1] = 1;
                buf[4..8].copy_from_slice(&MAGIC_COOKIE);
                let _ = parse_response(&buf);
                let _ = parse_binding_request(&buf);
            }
        }
    }
}

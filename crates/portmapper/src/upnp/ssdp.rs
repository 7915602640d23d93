//! SSDP discovery (HTTP over UDP): the M-SEARCH request and the answer a gateway sends back.

use crate::http;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The SSDP multicast group and port.
pub const MULTICAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), PORT);
/// The SSDP port, also asked by unicast on the gateway.
pub const PORT: u16 = 1900;
/// Search target: every device and service.
pub const ST_ALL: &str = "ssdp:all";
/// Search target: an Internet Gateway Device (version 1; version 2 devices answer it too).
pub const ST_IGD1: &str = "urn:schemas-upnp-org:device:InternetGatewayDevice:1";
/// Search target: an Internet Gateway Device, version 2.
pub const ST_IGD2: &str = "urn:schemas-upnp-org:device:InternetGatewayDevice:2";
/// The longest SSDP answer read.
pub const MAX_LEN: usize = 4096;

/// An M-SEARCH for `st`, answers wanted within `mx` seconds.
pub fn m_search(st: &str, mx: u8) -> Vec<u8> {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: {MULTICAST}\r\nST: {st}\r\nMAN: \"ssdp:discover\"\r\nMX: {mx}\r\n\r\n"
    )
    .into_bytes()
}

/// A search answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Where the device description is (`LOCATION`).
    pub location: String,
    /// What the answer is for (`ST`).
    pub st: String,
    /// The device's unique service name (`USN`).
    pub usn: String,
    /// The device's software (`SERVER`), for logs.
    pub server: String,
}

impl Response {
    /// Whether it names an Internet Gateway Device or one of the connection services a port
    /// mapping needs.
    pub fn is_gateway(&self) -> bool {
        [&self.st, &self.usn].iter().any(|s| {
            s.contains(":InternetGatewayDevice:")
                || s.contains(":WANIPConnection:")
                || s.contains(":WANPPPConnection:")
        })
    }
}

/// Why a datagram is not a usable search answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not an HTTP response head (a NOTIFY or M-SEARCH from another host, or garbage).
    #[error("SSDP: {0}")]
    Http(#[from] http::Error),
    /// The head did not end within the datagram.
    #[error("SSDP answer is incomplete")]
    Incomplete,
    /// The status is not 200.
    #[error("SSDP answer with status {0}")]
    Status(u16),
    /// No `LOCATION` header.
    #[error("SSDP answer without LOCATION")]
    NoLocation,
}

/// Parses one search answer.
pub fn parse_response(datagram: &[u8]) -> Result<Response, ParseError> {
    let datagram = datagram.get(..MAX_LEN).unwrap_or(datagram);
    let (head, _) = http::parse_head(datagram)?.ok_or(ParseError::Incomplete)?;
    if head.status != 200 {
        return Err(ParseError::Status(head.status));
    }
    let get = |n| head.header(n).unwrap_or("").to_string();
    let location = get("location");
    if location.is_empty() {
        return Err(ParseError::NoLocation);
    }
    Ok(Response {
        location,
        st: get("st"),
        usn: get("usn"),
        server: get("server"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from miniupnpd 2.3.1 (Debian bookworm) in a test namespace.
    const MINIUPNPD: &[u8] = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nUSN: uuid:3b8b8e1c-0d3e-4a8e-9c5e-000000000077::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\nSERVER: Debian/6.18.44-fc-v1045 UPnP/1.1 MiniUPnPd/2.3.1\r\nLOCATION: http://192.168.77.1:5000/rootDesc.xml\r\nOPT: \"http://schemas.upnp.org/upnp/1/0/\"; ns=01\r\n01-NLS: 1796242432\r\nBOOTID.UPNP.ORG: 1796242432\r\nCONFIGID.UPNP.ORG: 1337\r\n\r\n";

    #[test]
    fn parses_miniupnpd_answer() {
        let r = parse_response(MINIUPNPD).unwrap();
        assert_eq!(r.location, "http://192.168.77.1:5000/rootDesc.xml");
        assert_eq!(r.st, ST_IGD1);
        assert!(r.usn.ends_with("InternetGatewayDevice:1"));
        assert!(r.server.contains("MiniUPnPd/2.3.1"));
        assert!(r.is_gateway());
    }

    #[test]
    fn m_search_text() {
        assert_eq!(
            m_search(ST_IGD1, 2),
            b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nMAN: \"ssdp:discover\"\r\nMX: 2\r\n\r\n"
        );
    }

    #[test]
    fn rejects_what_is_not_an_answer() {
        assert!(matches!(
            parse_response(&m_search(ST_ALL, 1)),
            Err(ParseError::Http(_))
        ));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nST: x\r\n"),
            Err(ParseError::Incomplete)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 404 Nope\r\n\r\n"),
            Err(ParseError::Status(404))
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n"),
            Err(ParseError::NoLocation)
        );
        let printer = parse_response(
            b"HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:Printer:1\r\nLOCATION: http://x/\r\n\r\n",
        )
        .unwrap();
        assert!(!printer.is_gateway());
        for n in 0..MINIUPNPD.len() {
            let _ = parse_response(&MINIUPNPD[..n]);
        }
    }
}

//! The HTTP/1.1 upgrade that opens a DERP connection (protocol.md §5.2).
//!
//! The client sends `GET /derp` with `Upgrade: DERP` and `Connection: Upgrade`, as Go's
//! `derphttp` does, and the server answers `101 Switching Protocols` with `Derp-Version` and
//! `Derp-Public-Key` headers; the DERP frames follow at once, possibly in the same read.
//!
//! Fast start (`Derp-Fast-Start: 1`) makes the server skip its HTTP answer. Go uses it only
//! when the server's key came from a TLS 1.3 "meta certificate", so over plain HTTP it is
//! never used here; [`UpgradeRequest::fast_start`] exists for the TLS driver to come, which
//! must then not call [`parse_upgrade_response`] and must give the key to
//! [`super::Connection::with_server_key`].

use tailcfg::key::NodePublic;

/// The largest HTTP response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 8 << 10;

/// The header that asks the server to skip its HTTP answer.
pub const FAST_START_HEADER: &str = "Derp-Fast-Start";

/// Why the upgrade failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The response head is longer than [`MAX_RESPONSE_HEAD`].
    #[error("HTTP response head longer than {MAX_RESPONSE_HEAD} bytes")]
    TooLong,
    /// Not an HTTP/1.x response.
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    /// The server answered with another status than 101.
    #[error("DERP upgrade refused with HTTP status {status}")]
    Status {
        /// The HTTP status code.
        status: u16,
    },
    /// A 101 that does not upgrade to DERP.
    #[error("server switched to another protocol than DERP")]
    NotDerp,
}

/// The upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    /// The `Host` header: host, and `:port` unless it is the scheme's default.
    pub host: &'a str,
    /// The request path, normally `/derp`.
    pub path: &'a str,
    /// Send `Derp-Fast-Start: 1` (only when the server key is already known, over TLS).
    pub fast_start: bool,
    /// `Ideal-Node`, when not connecting to the region's first node.
    pub ideal_node: Option<&'a str>,
}

impl UpgradeRequest<'_> {
    /// Appends the request bytes to `out`. Control characters in `host`, `path` or
    /// `ideal_node` are dropped, so a caller cannot inject headers.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let clean = |s: &str, out: &mut Vec<u8>| {
            out.extend(s.bytes().filter(|b| !b.is_ascii_control() && *b != b' '));
        };
        out.extend_from_slice(b"GET ");
        clean(self.path, out);
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        clean(self.host, out);
        out.extend_from_slice(
            b"\r\nUser-Agent: tailrouter\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n",
        );
        if let Some(n) = self.ideal_node {
            out.extend_from_slice(b"Ideal-Node: ");
            clean(n, out);
            out.extend_from_slice(b"\r\n");
        }
        if self.fast_start {
            out.extend_from_slice(FAST_START_HEADER.as_bytes());
            out.extend_from_slice(b": 1\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// What a successful upgrade response said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpgradeResponse {
    /// `Derp-Version`, if sent.
    pub derp_version: Option<u32>,
    /// `Derp-Public-Key` (64 hex digits), if sent and well-formed.
    pub server_key: Option<NodePublic>,
}

/// Parses the server's answer to the upgrade. `Ok(None)`: the head is not complete yet.
/// `Ok(Some((response, n)))`: the head took `n` bytes; what follows is DERP frames.
pub fn parse_upgrade_response(
    buf: &[u8],
) -> Result<Option<(UpgradeResponse, usize)>, UpgradeError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(UpgradeError::TooLong);
        }
        return Ok(None);
    };
    if end + 4 > MAX_RESPONSE_HEAD {
        return Err(UpgradeError::TooLong);
    }
    let head =
        std::str::from_utf8(&buf[..end]).map_err(|_| UpgradeError::Malformed("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(UpgradeError::Malformed("empty"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(UpgradeError::Malformed("not HTTP/1.x"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(UpgradeError::Malformed("bad status code"))?;
    if status != 101 {
        return Err(UpgradeError::Status { status });
    }
    let mut resp = UpgradeResponse::default();
    let mut upgrade_ok = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(UpgradeError::Malformed("header line without colon"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ok = value.eq_ignore_ascii_case("derp");
        } else if name.eq_ignore_ascii_case("derp-version") {
            resp.derp_version = value.parse().ok();
        } else if name.eq_ignore_ascii_case("derp-public-key") {
            let mut k = [0u8; 32];
            if value.len() == 64 && hex::decode_to_slice(value, &mut k).is_ok() {
                resp.server_key = Some(NodePublic::from_bytes(k));
            }
        }
    }
    if !upgrade_ok {
        return Err(UpgradeError::NotDerp);
    }
    Ok(Some((resp, end + 4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        let mut out = Vec::new();
        UpgradeRequest {
            host: "derp.example:8443",
            path: "/derp",
            fast_start: false,
            ideal_node: None,
        }
        .emit(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /derp HTTP/1.1\r\nHost: derp.example:8443\r\nUser-Agent: tailrouter\r\n\
             Upgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
        );
        let mut out = Vec::new();
        UpgradeRequest {
            host: "a\r\nEvil: 1",
            path: "/derp",
            fast_start: true,
            ideal_node: Some("1b"),
        }
        .emit(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("Host: aEvil:1\r\n"));
        assert!(s.contains("Ideal-Node: 1b\r\nDerp-Fast-Start: 1\r\n\r\n"));
    }

    // What derper's handler writes (derpserver/handler.go), then the start of a frame.
    #[test]
    fn derper_response() {
        let key = "ab".repeat(32);
        let mut b = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\
             Derp-Version: 2\r\nDerp-Public-Key: {key}\r\n\r\n"
        )
        .into_bytes();
        let head_len = b.len();
        b.extend_from_slice(&[1, 0, 0, 0, 40]);
        let (r, n) = parse_upgrade_response(&b).unwrap().unwrap();
        assert_eq!(n, head_len);
        assert_eq!(r.derp_version, Some(2));
        assert_eq!(r.server_key, Some(NodePublic::from_bytes([0xab; 32])));
        for cut in 0..head_len {
            assert_eq!(parse_upgrade_response(&b[..cut]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn refusals() {
        let r = parse_upgrade_response(
            b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert_eq!(r, Err(UpgradeError::Status { status: 426 }));
        let r = parse_upgrade_response(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        );
        assert_eq!(r, Err(UpgradeError::NotDerp));
        let r = parse_upgrade_response(b"SSH-2.0-OpenSSH\r\n\r\n");
        assert!(matches!(r, Err(UpgradeError::Malformed(_))));
        let r = parse_upgrade_response(b"HTTP/1.1 101 X\r\nnocolon\r\n\r\n");
        assert!(matches!(r, Err(UpgradeError::Malformed(_))));
        let r = parse_upgrade_response(b"HTTP/1.1 abc\r\n\r\n");
        assert!(matches!(r, Err(UpgradeError::Malformed(_))));
        let long = vec![b'a'; MAX_RESPONSE_HEAD + 1];
        assert_eq!(parse_upgrade_response(&long), Err(UpgradeError::TooLong));
        let r = parse_upgrade_response(
            b"HTTP/1.1 101 X\r\nUpgrade: derp\r\nDerp-Public-Key: zz\r\n\r\n",
        );
        assert_eq!(r.unwrap().unwrap().0.server_key, None);
        assert!(parse_upgrade_response(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']).is_err());
    }
}

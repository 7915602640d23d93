//! The little HTTP/1.1 that UPnP needs, without I/O: requests built as bytes, responses
//! parsed from the bytes received so far.
//!
//! UPnP devices speak HTTP/1.0 or 1.1 over plain TCP on the LAN: one request per connection
//! (`Connection: close`), bodies framed by `Content-Length`, `Transfer-Encoding: chunked` or
//! the end of the connection. SSDP answers (HTTP over UDP) use the same head. Every limit is
//! explicit: a head longer than [`MAX_HEAD`] or a body longer than the caller's limit is an
//! error, not an allocation.

use std::fmt::Write as _;

/// The longest response head accepted (status line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// The most headers accepted.
pub const MAX_HEADERS: usize = 64;

/// Why bytes are not an acceptable HTTP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The head did not end within [`MAX_HEAD`] bytes, or had more than [`MAX_HEADERS`].
    #[error("HTTP response head too large")]
    HeadTooLarge,
    /// The status line is not `HTTP/1.x NNN reason`.
    #[error("malformed HTTP status line")]
    StatusLine,
    /// A header line without a colon, or with bytes that are not text.
    #[error("malformed HTTP header line")]
    Header,
    /// `Content-Length` is not a number, or two of them disagree.
    #[error("malformed Content-Length")]
    ContentLength,
    /// A transfer coding other than chunked.
    #[error("unsupported Transfer-Encoding {0:?}")]
    TransferEncoding(String),
    /// A chunk size line or chunk terminator is malformed.
    #[error("malformed chunked body")]
    Chunk,
    /// The body is longer than the limit.
    #[error("HTTP body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The connection ended before the body did.
    #[error("HTTP body truncated")]
    Truncated,
}

/// A response's status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// The reason phrase (may be empty).
    pub reason: String,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first header named `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How the body is delimited.
    pub fn framing(&self) -> Result<Framing, Error> {
        if self.status / 100 == 1 || self.status == 204 || self.status == 304 {
            return Ok(Framing::Length(0));
        }
        let mut chunked = false;
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case("transfer-encoding") {
                for coding in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                    if coding.eq_ignore_ascii_case("chunked") {
                        chunked = true;
                    } else if !coding.eq_ignore_ascii_case("identity") {
                        return Err(Error::TransferEncoding(coding.to_string()));
                    }
                }
            }
        }
        if chunked {
            return Ok(Framing::Chunked);
        }
        let mut length: Option<usize> = None;
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case("content-length") {
                for part in v.split(',') {
                    let part = part.trim();
                    if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
                        return Err(Error::ContentLength);
                    }
                    let l: usize = part.parse().map_err(|_| Error::ContentLength)?;
                    if length.is_some_and(|old| old != l) {
                        return Err(Error::ContentLength);
                    }
                    length = Some(l);
                }
            }
        }
        Ok(match length {
            Some(l) => Framing::Length(l),
            None => Framing::UntilClose,
        })
    }
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// After this many bytes.
    Length(usize),
    /// With a zero-length chunk.
    Chunked,
    /// When the connection closes.
    UntilClose,
}

/// A whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status and headers.
    pub head: Head,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Where the head ends: the index just past the blank line. Accepts CRLF or bare LF.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf.get(i..)?.iter().position(|&c| c == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1..) {
            Some([b'\n', ..]) => return Some(nl + 2),
            Some([b'\r', b'\n', ..]) => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// Parses a response head from the start of `buf`: `Ok(None)` while the blank line that
/// ends it has not arrived, otherwise the head and its length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Error> {
    let window = buf.get(..MAX_HEAD.min(buf.len())).unwrap_or(buf);
    let Some(end) = head_end(window) else {
        return if buf.len() >= MAX_HEAD {
            Err(Error::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    let text = window.get(..end).ok_or(Error::HeadTooLarge)?;
    let text = std::str::from_utf8(text).map_err(|_| Error::Header)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().ok_or(Error::StatusLine)?;
    let (status, reason) = parse_status_line(status_line)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            // An obsolete folded continuation: part of the previous value.
            let (_, v) = headers.last_mut().ok_or(Error::Header)?;
            v.push(' ');
            v.push_str(line.trim());
            continue;
        }
        let (name, value) = line.split_once(':').ok_or(Error::Header)?;
        if name.is_empty() || name.bytes().any(|c| c <= b' ' || c == 0x7f) {
            return Err(Error::Header);
        }
        if headers.len() >= MAX_HEADERS {
            return Err(Error::HeadTooLarge);
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Some((
        Head {
            status,
            reason,
            headers,
        },
        end,
    )))
}

fn parse_status_line(line: &str) -> Result<(u16, String), Error> {
    let rest = line.strip_prefix("HTTP/1.").ok_or(Error::StatusLine)?;
    let mut it = rest.splitn(3, ' ');
    let minor = it.next().ok_or(Error::StatusLine)?;
    if minor.len() != 1 || !minor.bytes().all(|c| c.is_ascii_digit()) {
        return Err(Error::StatusLine);
    }
    let code = it.next().ok_or(Error::StatusLine)?;
    if code.len() != 3 || !code.bytes().all(|c| c.is_ascii_digit()) {
        return Err(Error::StatusLine);
    }
    let status: u16 = code.parse().map_err(|_| Error::StatusLine)?;
    if status < 100 {
        return Err(Error::StatusLine);
    }
    Ok((status, it.next().unwrap_or("").trim().to_string()))
}

/// Decodes a body from `buf` (the bytes after the head): `Ok(None)` while more bytes are
/// needed. `eof` says the connection has closed, so nothing more will come.
pub fn decode_body(
    framing: Framing,
    buf: &[u8],
    eof: bool,
    limit: usize,
) -> Result<Option<Vec<u8>>, Error> {
    match framing {
        Framing::Length(n) => {
            if n > limit {
                return Err(Error::BodyTooLarge(limit));
            }
            match buf.get(..n) {
                Some(body) => Ok(Some(body.to_vec())),
                None if eof => Err(Error::Truncated),
                None => Ok(None),
            }
        }
        Framing::UntilClose => {
            if buf.len() > limit {
                return Err(Error::BodyTooLarge(limit));
            }
            Ok(eof.then(|| buf.to_vec()))
        }
        Framing::Chunked => match decode_chunked(buf, limit)? {
            Some(body) => Ok(Some(body)),
            None if eof => Err(Error::Truncated),
            None => Ok(None),
        },
    }
}

/// Reads one line (without its CRLF or LF) starting at `at`: the line and the index after it.
fn line_at(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let nl = rest.iter().position(|&c| c == b'\n')?;
    let line = rest.get(..nl)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, at + nl + 1))
}

/// The longest chunk-size line accepted (size and extensions).
const MAX_CHUNK_LINE: usize = 1024;

fn decode_chunked(buf: &[u8], limit: usize) -> Result<Option<Vec<u8>>, Error> {
    let mut body = Vec::new();
    let mut at = 0usize;
    loop {
        let Some((line, next)) = line_at(buf, at) else {
            if buf.len().saturating_sub(at) > MAX_CHUNK_LINE {
                return Err(Error::Chunk);
            }
            return Ok(None);
        };
        if line.len() > MAX_CHUNK_LINE {
            return Err(Error::Chunk);
        }
        let size_text = line.split(|&c| c == b';').next().unwrap_or(line);
        let size_text = std::str::from_utf8(size_text)
            .map_err(|_| Error::Chunk)?
            .trim();
        if size_text.is_empty() || !size_text.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::Chunk);
        }
        let size = usize::from_str_radix(size_text, 16).map_err(|_| Error::Chunk)?;
        at = next;
        if size == 0 {
            // Trailers, then a blank line.
            loop {
                let Some((t, next)) = line_at(buf, at) else {
                    if buf.len().saturating_sub(at) > MAX_HEAD {
                        return Err(Error::Chunk);
                    }
                    return Ok(None);
                };
                at = next;
                if t.is_empty() {
                    return Ok(Some(body));
                }
            }
        }
        if size > limit.saturating_sub(body.len()) {
            return Err(Error::BodyTooLarge(limit));
        }
        let end = at.checked_add(size).ok_or(Error::Chunk)?;
        let Some(data) = buf.get(at..end) else {
            return Ok(None);
        };
        body.extend_from_slice(data);
        at = end;
        match buf.get(at..) {
            Some([b'\r', b'\n', ..]) => at += 2,
            Some([b'\n', ..]) => at += 1,
            Some([]) | Some([b'\r']) | None => return Ok(None),
            Some(_) => return Err(Error::Chunk),
        }
    }
}

/// Parses a whole response from the bytes received so far: `Ok(None)` while incomplete.
pub fn parse_response(buf: &[u8], eof: bool, body_limit: usize) -> Result<Option<Response>, Error> {
    let Some((head, len)) = parse_head(buf)? else {
        return if eof { Err(Error::Truncated) } else { Ok(None) };
    };
    let framing = head.framing()?;
    let rest = buf.get(len..).unwrap_or(&[]);
    Ok(decode_body(framing, rest, eof, body_limit)?.map(|body| Response { head, body }))
}

/// An HTTP/1.1 request with `Host`, `Connection: close`, the given headers and, when `body`
/// is non-empty (or the method is POST), its `Content-Length`.
pub fn request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut s = String::new();
    let _ = write!(s, "{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (n, v) in headers {
        let _ = write!(s, "{n}: {v}\r\n");
    }
    if !body.is_empty() || method == "POST" {
        let _ = write!(s, "Content-Length: {}\r\n", body.len());
    }
    s.push_str("Connection: close\r\n\r\n");
    let mut out = s.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 16;

    #[test]
    fn content_length_body() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 5\r\n\r\nhello";
        for n in 0..r.len() {
            assert_eq!(
                parse_response(&r[..n], false, LIMIT),
                Ok(None),
                "prefix {n}"
            );
        }
        let resp = parse_response(r, false, LIMIT).unwrap().unwrap();
        assert_eq!(resp.head.status, 200);
        assert_eq!(resp.head.reason, "OK");
        assert_eq!(resp.head.header("content-type"), Some("text/xml"));
        assert_eq!(resp.body, b"hello");
        // Cut short by the peer.
        assert_eq!(
            parse_response(&r[..r.len() - 1], true, LIMIT),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\n";
        for n in 0..r.len() {
            assert_eq!(
                parse_response(&r[..n], false, LIMIT),
                Ok(None),
                "prefix {n}"
            );
        }
        let resp = parse_response(r, false, LIMIT).unwrap().unwrap();
        assert_eq!(resp.body, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(
            parse_response(&r[..r.len() - 2], true, LIMIT),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn body_until_close_and_http10_and_bare_lf() {
        let r = b"HTTP/1.0 200 OK\nServer: x\n\n<root/>";
        assert_eq!(parse_response(r, false, LIMIT), Ok(None));
        let resp = parse_response(r, true, LIMIT).unwrap().unwrap();
        assert_eq!(resp.head.header("SERVER"), Some("x"));
        assert_eq!(resp.body, b"<root/>");
    }

    #[test]
    fn limits_hold() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        assert_eq!(parse_response(r, false, 99), Err(Error::BodyTooLarge(99)));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n";
        assert_eq!(parse_response(r, false, 99), Err(Error::BodyTooLarge(99)));
        let r = b"HTTP/1.1 200 OK\r\n\r\n0123456789";
        assert_eq!(parse_response(r, true, 9), Err(Error::BodyTooLarge(9)));
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_head(&big), Err(Error::HeadTooLarge));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"A: b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many), Err(Error::HeadTooLarge));
        // A huge chunk size does not overflow.
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n";
        assert!(parse_response(r, false, LIMIT).is_err());
    }

    #[test]
    fn malformed_heads() {
        for bad in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: empty\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded-first\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
            b"HTTP/1.1 200 \xff\r\n\r\n",
        ] {
            assert!(
                parse_response(bad, true, LIMIT).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn folded_header_and_no_body_statuses() {
        let r = b"HTTP/1.1 204 No Content\r\nX: a\r\n  b\r\n\r\n";
        let resp = parse_response(r, false, LIMIT).unwrap().unwrap();
        assert_eq!(resp.head.header("x"), Some("a b"));
        assert!(resp.body.is_empty());
    }

    #[test]
    fn builds_requests() {
        let r = request("GET", "192.168.1.1:5000", "/rootDesc.xml", &[], b"");
        assert_eq!(
            r,
            b"GET /rootDesc.xml HTTP/1.1\r\nHost: 192.168.1.1:5000\r\nConnection: close\r\n\r\n"
        );
        let r = request("POST", "h", "/c", &[("SOAPAction", "\"a#b\"")], b"xy");
        assert_eq!(
            r,
            b"POST /c HTTP/1.1\r\nHost: h\r\nSOAPAction: \"a#b\"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nxy"
        );
    }
}

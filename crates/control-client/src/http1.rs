//! The little HTTP/1.1 the ts2021 dial needs, over TCP or TLS: `GET /key` and the
//! `POST /ts2021` upgrade. Responses are read head first; whatever the server sent after the
//! head (the Noise response, early records) is handed back to the caller.

use crate::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most header bytes accepted in a response.
const MAX_HEAD: usize = 16 * 1024;
/// The most body bytes accepted from `/key` or an error answer.
pub(crate) const MAX_SMALL_BODY: usize = 64 * 1024;

/// A control URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// Plain HTTP (the Noise channel still encrypts ts2021).
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The port used when the URL names none.
    pub(crate) fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed control URL: scheme, host, port, and what to call the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControlUrl {
    /// `http` or `https`.
    pub(crate) scheme: Scheme,
    /// The host without brackets: a DNS name or an IP literal.
    pub(crate) host: String,
    /// The port written in the URL, if any.
    pub(crate) port: Option<u16>,
    /// The authority for `Host:` and HTTP/2 (`host` or `host:port` as written).
    pub(crate) authority: String,
}

impl ControlUrl {
    pub(crate) fn parse(url: &str) -> Result<Self, Error> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (Scheme::Https, r)
        } else {
            return Err(Error::Url(url.to_owned()));
        };
        let bad = || Error::Url(url.to_owned());
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        // "[v6]:port", "[v6]", "host:port", "host".
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad());
            }
            (h, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let port = match port {
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
            None => None,
        };
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
        })
    }

    /// The port this URL's own scheme reaches (`/key` is fetched there).
    pub(crate) fn effective_port(&self) -> u16 {
        self.port.unwrap_or(self.scheme.default_port())
    }
}

/// `host:port` for a socket address lookup, with brackets around IPv6 literals.
pub(crate) fn dial_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse_head(raw: &[u8]) -> Result<Head, Error> {
    let bad = |what: &str| Error::BadResponse(format!("HTTP response: {what}"));
    let text = std::str::from_utf8(raw).map_err(|_| bad("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not HTTP/1.x"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status code"))?;
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (n, v) = line
            .split_once(':')
            .ok_or_else(|| bad("header without ':'"))?;
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(Head { status, headers })
}

/// Reads a response head; returns it with the bytes that came after it.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> Result<(Head, Vec<u8>), Error> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse_head(&buf[..end])?;
            return Ok((head, buf[end + 4..].to_vec()));
        }
        if buf.len() > MAX_HEAD {
            return Err(Error::BadResponse("HTTP response head too large".into()));
        }
        let n = io
            .read(&mut chunk)
            .await
            .map_err(Error::io("reading HTTP response"))?;
        if n == 0 {
            return Err(Error::BadResponse(
                "connection closed before the HTTP response head".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a body by `Content-Length`, or to the end of the stream, up to `max` bytes.
pub(crate) async fn read_body<S: AsyncRead + Unpin>(
    io: &mut S,
    head: &Head,
    mut body: Vec<u8>,
    max: usize,
) -> Result<Vec<u8>, Error> {
    if head
        .header("transfer-encoding")
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Err(Error::BadResponse(
            "chunked HTTP/1 bodies are not supported".into(),
        ));
    }
    let want = match head.header("content-length") {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| Error::BadResponse("bad Content-Length".into()))?,
        ),
        None => None,
    };
    if want.is_some_and(|w| w > max) {
        return Err(Error::BadResponse("HTTP body too large".into()));
    }
    let mut chunk = [0u8; 4096];
    while want.is_none_or(|w| body.len() < w) {
        let n = io
            .read(&mut chunk)
            .await
            .map_err(Error::io("reading HTTP body"))?;
        if n == 0 {
            if want.is_some() {
                return Err(Error::BadResponse("HTTP body cut short".into()));
            }
            break;
        }
        body.extend_from_slice(&chunk[..n]);
        if body.len() > max {
            return Err(Error::BadResponse("HTTP body too large".into()));
        }
    }
    if let Some(w) = want {
        body.truncate(w);
    }
    Ok(body)
}

/// Writes a request with no body.
pub(crate) async fn write_request<S: AsyncWrite + Unpin>(
    io: &mut S,
    method: &str,
    path: &str,
    authority: &str,
    extra: &[(&str, &str)],
) -> Result<(), Error> {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: tailrouter\r\n");
    for (n, v) in extra {
        req.push_str(n);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes())
        .await
        .map_err(Error::io("writing HTTP request"))?;
    io.flush().await.map_err(Error::io("writing HTTP request"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = ControlUrl::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.authority.as_str()),
            (Scheme::Http, "127.0.0.1", Some(8080), "127.0.0.1:8080")
        );
        let u = ControlUrl::parse("http://hs.example.com").unwrap();
        assert_eq!((u.port, u.effective_port()), (None, 80));
        let u = ControlUrl::parse("https://hs.example.com/path").unwrap();
        assert_eq!((u.scheme, u.effective_port()), (Scheme::Https, 443));
        assert_eq!(u.authority, "hs.example.com");
        let u = ControlUrl::parse("http://[::1]:9").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", Some(9)));
        assert_eq!(dial_addr(&u.host, 9), "[::1]:9");
        let u = ControlUrl::parse("https://[::1]/x").unwrap();
        assert_eq!((u.host.as_str(), u.effective_port()), ("::1", 443));
        assert_eq!(dial_addr("h", 1), "h:1");
        for bad in [
            "ftp://x",
            "http://",
            "https://",
            "http://h:99999",
            "http://u@h",
            "http://h:x",
            "http://:80",
            "http://[::1",
            "http://[::1]x",
            "http://[nope]:1",
        ] {
            assert!(
                matches!(ControlUrl::parse(bad), Err(Error::Url(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn head_then_leftover_bytes() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n\r\n\x02\x00\x30rest".to_vec();
        let mut io = &raw[..];
        let (head, rest) = read_head(&mut io).await.unwrap();
        assert_eq!(head.status, 101);
        assert_eq!(head.header("UPGRADE"), Some("tailscale-control-protocol"));
        assert_eq!(rest, b"\x02\x00\x30rest");
    }

    #[tokio::test]
    async fn bodies_by_length_or_eof_and_limits() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab".to_vec();
        let mut io = &raw[..];
        let (head, rest) = read_head(&mut io).await.unwrap();
        let mut more = &b"cdEXTRA"[..];
        assert_eq!(
            read_body(&mut more, &head, rest, 100).await.unwrap(),
            b"abcd"
        );
        let raw = b"HTTP/1.0 200 OK\r\n\r\nall of it".to_vec();
        let mut io = &raw[..];
        let (head, rest) = read_head(&mut io).await.unwrap();
        assert_eq!(
            read_body(&mut io, &head, rest, 100).await.unwrap(),
            b"all of it"
        );
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
        let mut io = &raw[..];
        let (head, rest) = read_head(&mut io).await.unwrap();
        assert!(read_body(&mut io, &head, rest, 100).await.is_err());
        for bad in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n",
        ] {
            let mut io = bad;
            assert!(read_head(&mut io).await.is_err());
        }
    }
}

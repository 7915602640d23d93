//! A small, strict HTTP/1.1 for the LocalAPI socket: request and response heads with hard
//! limits, bodies by `Content-Length` or chunked transfer coding.
//!
//! Why not hyper: hyper with hyper-util costs about 400 KiB of a router binary (measured in the
//! project's style guide), and the LocalAPI needs a tiny subset of HTTP on a local socket: one
//! request at a time per connection, no TLS, no HTTP/2, no pipelining, no upgrades. This
//! module is that subset, with every limit explicit, and is tested with garbage input.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest request or response head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one head.
pub const MAX_HEADERS: usize = 64;
/// Largest request body the server reads, in bytes.
pub const MAX_BODY: usize = 1 << 20;
/// Longest chunk-size line.
const MAX_CHUNK_LINE: usize = 256;

/// What went wrong with the bytes on the socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// The head is longer than [`MAX_HEAD`] or has more than [`MAX_HEADERS`] headers.
    #[error("header section too large")]
    HeadTooLarge,
    /// The body is longer than [`MAX_BODY`].
    #[error("body too large (limit {MAX_BODY} bytes)")]
    BodyTooLarge,
    /// The message is not HTTP/1.1 as this module understands it.
    #[error("malformed HTTP: {0}")]
    Malformed(&'static str),
}

/// A request head and its body.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The method, such as `GET`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query, without `?`.
    pub query: String,
    /// Headers with lower-case names, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The value of a query parameter (no percent-decoding beyond what the LocalAPI needs).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Whether the client asked to close the connection after this request.
    pub fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Reads a head: lines up to an empty line. `Ok(None)` if the stream ended before any byte.
async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<Vec<String>>, HttpError> {
    let mut lines = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = Vec::new();
        let budget = (MAX_HEAD - total) as u64;
        let n = (&mut *r).take(budget).read_until(b'\n', &mut line).await?;
        if n == 0 {
            if lines.is_empty() && total == 0 {
                return Ok(None);
            }
            return Err(if total >= MAX_HEAD {
                HttpError::HeadTooLarge
            } else {
                HttpError::Truncated
            });
        }
        total += n;
        if line.last() != Some(&b'\n') {
            return Err(if total >= MAX_HEAD {
                HttpError::HeadTooLarge
            } else {
                HttpError::Truncated
            });
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            if lines.is_empty() {
                // Tolerate a stray empty line before a request line (RFC 9112 §2.2).
                continue;
            }
            return Ok(Some(lines));
        }
        if lines.len() > MAX_HEADERS {
            return Err(HttpError::HeadTooLarge);
        }
        let s = String::from_utf8(line).map_err(|_| HttpError::Malformed("head is not UTF-8"))?;
        lines.push(s);
    }
}

fn parse_headers(lines: &[String]) -> Result<Vec<(String, String)>, HttpError> {
    let mut out = Vec::with_capacity(lines.len());
    for l in lines {
        if l.starts_with([' ', '\t']) {
            return Err(HttpError::Malformed("obsolete header folding"));
        }
        let (name, value) = l
            .split_once(':')
            .ok_or(HttpError::Malformed("header line without a colon"))?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(HttpError::Malformed("bad header name"));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(HttpError::Malformed("control character in a header value"));
        }
        out.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(out)
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Until the connection closes (responses only).
    Eof,
}

fn framing(headers: &[(String, String)], is_response: bool) -> Result<Framing, HttpError> {
    if let Some(te) = header(headers, "transfer-encoding") {
        if te.eq_ignore_ascii_case("chunked") {
            if header(headers, "content-length").is_some() {
                return Err(HttpError::Malformed(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            return Ok(Framing::Chunked);
        }
        return Err(HttpError::Malformed("unsupported Transfer-Encoding"));
    }
    let lens: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    match lens.as_slice() {
        [] if is_response => Ok(Framing::Eof),
        [] => Ok(Framing::Length(0)),
        [v] if !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse()
            .map(Framing::Length)
            .map_err(|_| HttpError::Malformed("bad Content-Length")),
        [_] => Err(HttpError::Malformed("bad Content-Length")),
        _ => Err(HttpError::Malformed("more than one Content-Length")),
    }
}

/// Reads one request, with its body. `Ok(None)` when the client closed between requests.
pub async fn read_request<R: AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<Option<Request>, HttpError> {
    let Some(lines) = read_head(r).await? else {
        return Ok(None);
    };
    let mut parts = lines[0].split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("bad request line"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Malformed("not HTTP/1.x"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed("bad method"));
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HttpError::Malformed("bad request target"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = parse_headers(&lines[1..])?;
    let mut body = Vec::new();
    match framing(&headers, false)? {
        Framing::Length(n) => {
            if n > MAX_BODY {
                return Err(HttpError::BodyTooLarge);
            }
            body.resize(n, 0);
            r.read_exact(&mut body).await.map_err(eof_is_truncated)?;
        }
        Framing::Chunked => {
            let mut dec = BodyReader::new(Framing::Chunked);
            while let Some(chunk) = dec.next_chunk(r).await? {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(HttpError::BodyTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
        }
        Framing::Eof => {}
    }
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
    }))
}

fn eof_is_truncated(e: std::io::Error) -> HttpError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        HttpError::Truncated
    } else {
        HttpError::Io(e)
    }
}

/// The reason phrase for the status codes the LocalAPI uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a whole response with a `Content-Length`.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    if !body.is_empty() || status != 204 {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    w.write_all(&out).await?;
    w.flush().await
}

/// Writes the head of a chunked (streamed) response.
pub async fn write_stream_head<W: AsyncWrite + Unpin>(
    w: &mut W,
    content_type: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    w.write_all(head.as_bytes()).await?;
    w.flush().await
}

/// Writes one chunk and flushes it; an empty `data` writes nothing.
pub async fn write_chunk<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out).await?;
    w.flush().await
}

/// Ends a chunked body.
pub async fn write_last_chunk<W: AsyncWrite + Unpin>(w: &mut W) -> std::io::Result<()> {
    w.write_all(b"0\r\n\r\n").await?;
    w.flush().await
}

/// A response head, as the client reads it.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Headers with lower-case names.
    pub headers: Vec<(String, String)>,
}

/// Reads a response head and returns it with a reader for its body.
pub async fn read_response_head<R: AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<(ResponseHead, BodyReader), HttpError> {
    let lines = read_head(r).await?.ok_or(HttpError::Truncated)?;
    let mut parts = lines[0].splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(HttpError::Malformed("bad status line"));
    };
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(HttpError::Malformed("bad status line"));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| HttpError::Malformed("bad status code"))?;
    let headers = parse_headers(&lines[1..])?;
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else {
        framing(&headers, true)?
    };
    Ok((ResponseHead { status, headers }, BodyReader::new(framing)))
}

/// Reads a body piece by piece, whatever its framing.
#[derive(Debug)]
pub struct BodyReader {
    framing: Framing,
    /// Bytes left in a length-delimited body.
    left: usize,
    done: bool,
}

impl BodyReader {
    fn new(framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyReader {
            framing,
            left,
            done: matches!(framing, Framing::Length(0)),
        }
    }

    /// The next piece of the body, or `None` at its end.
    pub async fn next_chunk<R: AsyncBufRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Vec<u8>>, HttpError> {
        if self.done {
            return Ok(None);
        }
        match self.framing {
            Framing::Length(_) => {
                let n = self.left.min(64 * 1024);
                let mut buf = vec![0; n];
                r.read_exact(&mut buf).await.map_err(eof_is_truncated)?;
                self.left -= n;
                self.done = self.left == 0;
                Ok(Some(buf))
            }
            Framing::Eof => {
                let mut buf = vec![0; 64 * 1024];
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    self.done = true;
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some(buf))
            }
            Framing::Chunked => {
                let line = read_short_line(r).await?;
                let size_hex = line.split(';').next().unwrap_or("").trim();
                if size_hex.is_empty()
                    || size_hex.len() > 8
                    || !size_hex.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(HttpError::Malformed("bad chunk size"));
                }
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| HttpError::Malformed("bad chunk size"))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    let mut n = 0;
                    while !read_short_line(r).await?.is_empty() {
                        n += 1;
                        if n > MAX_HEADERS {
                            return Err(HttpError::HeadTooLarge);
                        }
                    }
                    self.done = true;
                    return Ok(None);
                }
                if size > MAX_BODY {
                    return Err(HttpError::BodyTooLarge);
                }
                let mut buf = vec![0; size];
                r.read_exact(&mut buf).await.map_err(eof_is_truncated)?;
                if !read_short_line(r).await?.is_empty() {
                    return Err(HttpError::Malformed("chunk not followed by CRLF"));
                }
                Ok(Some(buf))
            }
        }
    }

    /// Reads the rest of the body, up to `limit` bytes.
    pub async fn read_to_end<R: AsyncBufRead + Unpin>(
        &mut self,
        r: &mut R,
        limit: usize,
    ) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        while let Some(c) = self.next_chunk(r).await? {
            if out.len() + c.len() > limit {
                return Err(HttpError::BodyTooLarge);
            }
            out.extend_from_slice(&c);
        }
        Ok(out)
    }
}

async fn read_short_line<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<String, HttpError> {
    let mut line = Vec::new();
    (&mut *r)
        .take(MAX_CHUNK_LINE as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if line.last() != Some(&b'\n') {
        return Err(if line.len() >= MAX_CHUNK_LINE {
            HttpError::Malformed("chunk line too long")
        } else {
            HttpError::Truncated
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| HttpError::Malformed("chunk line is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn parse(bytes: &[u8]) -> Result<Option<Request>, HttpError> {
        block(read_request(&mut BufReader::new(bytes)))
    }

    #[test]
    fn parses_a_request_with_a_body() {
        let r = parse(b"PATCH /localapi/v0/prefs?x=1&y HTTP/1.1\r\nHost: local-tailscaled.sock\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap()
            .unwrap();
        assert_eq!(r.method, "PATCH");
        assert_eq!(r.path, "/localapi/v0/prefs");
        assert_eq!(r.query_param("x"), Some("1"));
        assert_eq!(r.query_param("y"), Some(""));
        assert_eq!(r.header("host"), Some("local-tailscaled.sock"));
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn parses_a_chunked_request_body() {
        let r = parse(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1;ext\r\nc\r\n0\r\nX-T: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn refuses_garbage_and_oversize_input() {
        let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: 1\r\n".repeat(MAX_HEADERS + 2)
        );
        let big_body = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let cases: Vec<(&[u8], &str)> = vec![
            (b"\x00\x01\x02garbage\r\n\r\n", "malformed"),
            (b"GET / HTTP/2\r\n\r\n", "malformed"),
            (b"GET nopath HTTP/1.1\r\n\r\n", "malformed"),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", "malformed"),
            (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", "malformed"),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "malformed"),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                "malformed",
            ),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                "malformed",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "malformed",
            ),
            (b"GET / HTTP/1.1\r\nHost: x", "closed"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", "closed"),
            (big_head.as_bytes(), "too large"),
            (many.as_bytes(), "too large"),
            (big_body.as_bytes(), "too large"),
        ];
        for (input, want) in cases {
            let e = parse(input).unwrap_err().to_string();
            assert!(
                e.contains(want),
                "{:?}: {e}",
                String::from_utf8_lossy(input)
            );
        }
        assert!(parse(b"").unwrap().is_none());
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        // A small deterministic generator (xorshift), so failures reproduce.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = b"POST /localapi/v0/start HTTP/1.1\r\nHost: local-tailscaled.sock\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        for i in 0..3000 {
            let mut input: Vec<u8> = if i % 2 == 0 {
                let n = (next() % 300) as usize;
                (0..n).map(|_| next() as u8).collect()
            } else {
                valid.to_vec()
            };
            if i % 2 == 1 {
                for _ in 0..(1 + next() % 4) {
                    let at = (next() as usize) % input.len();
                    match next() % 3 {
                        0 => input[at] = next() as u8,
                        1 => {
                            input.remove(at);
                        }
                        _ => input.truncate(at),
                    }
                    if input.is_empty() {
                        break;
                    }
                }
            }
            let _ = parse(&input);
            block(async {
                let mut r = BufReader::new(&input[..]);
                if let Ok((_, mut body)) = read_response_head(&mut r).await {
                    let _ = body.read_to_end(&mut r, 1 << 16).await;
                }
            });
        }
    }

    #[test]
    fn chunked_response_round_trip() {
        let mut out = Vec::new();
        block(async {
            write_stream_head(&mut out, "application/json")
                .await
                .unwrap();
            write_chunk(&mut out, b"{\"a\":1}\n").await.unwrap();
            write_chunk(&mut out, b"").await.unwrap();
            write_chunk(&mut out, b"{\"b\":2}\n").await.unwrap();
            write_last_chunk(&mut out).await.unwrap();
        });
        let mut r = BufReader::new(&out[..]);
        let body = block(async {
            let (head, mut body) = read_response_head(&mut r).await.unwrap();
            assert_eq!(head.status, 200);
            body.read_to_end(&mut r, 1024).await.unwrap()
        });
        assert_eq!(body, b"{\"a\":1}\n{\"b\":2}\n");
    }
}

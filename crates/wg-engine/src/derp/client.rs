//! A thin tokio driver for [`Connection`]: dials, upgrades, and runs the state machine on a
//! task.
//!
//! [`Client::connect`] takes a `http://` or `https://` URL; [`super::dial::connect_region`]
//! dials a region of the DERP map. Both end in [`Client::over`]'s work: the upgrade, then the
//! connection over any `AsyncRead + AsyncWrite`. (With TLS 1.3 and a server meta-certificate
//! a client could also use fast start; see [`super::http`]. We do not, yet.)

use super::conn::{Config, ConnError, Connection, Event};
use super::dial::{DialOptions, NodeFailure, tls_error, url_tls_config};
use super::http::{UpgradeError, UpgradeRequest, parse_upgrade_response};
use rustls::pki_types::ServerName;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Instant;
use tailcfg::key::{NodePrivate, NodePublic};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Why a DERP client failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `http[s]://host[:port][/path]`.
    #[error("bad DERP URL {url:?}: {why}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The TLS setup or handshake failed (certificate refused, no roots, not TLS).
    #[error("DERP TLS with {addr}: {source}")]
    Tls {
        /// The server address.
        addr: String,
        /// Why (a rustls error inside an I/O error for handshake failures).
        #[source]
        source: std::io::Error,
    },
    /// A DERP map node that cannot be dialed as described (bad port, no address, bad name,
    /// malformed pin, no roots).
    #[error("unusable DERP node: {0}")]
    BadNode(String),
    /// No node of a DERP region gave a connection.
    #[error("DERP region {region_id} ({region_code}): {}", describe_failures(.failures))]
    Region {
        /// The region's ID.
        region_id: i32,
        /// The region's code.
        region_code: String,
        /// Each node tried, in order, and why it failed (STUN-only nodes are not tried).
        failures: Vec<NodeFailure>,
    },
    /// Dialing, reading or writing failed.
    #[error("DERP I/O with {addr}: {source}")]
    Io {
        /// The server address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server closed the connection.
    #[error("DERP server {addr} closed the connection")]
    Eof {
        /// The server address.
        addr: String,
    },
    /// The HTTP upgrade failed.
    #[error("DERP upgrade with {addr} failed: {source}")]
    Upgrade {
        /// The server address.
        addr: String,
        /// Why.
        #[source]
        source: UpgradeError,
    },
    /// The DERP connection failed.
    #[error("DERP connection to {addr}: {source}")]
    Conn {
        /// The server address.
        addr: String,
        /// Why.
        #[source]
        source: ConnError,
    },
    /// The client task has stopped (after an error already reported, or [`Client::close`]).
    #[error("DERP client stopped")]
    Stopped,
}

fn describe_failures(failures: &[NodeFailure]) -> String {
    if failures.is_empty() {
        return "no DERP node (only STUN-only ones, or none)".to_owned();
    }
    let all: Vec<String> = failures.iter().map(ToString::to_string).collect();
    all.join("; ")
}

enum Command {
    Send { dst: NodePublic, data: Vec<u8> },
    NotePreferred(bool),
    Ping([u8; 8]),
}

/// A running DERP client. Dropping it stops the connection.
///
/// Events are delivered through a small queue: a caller that stops calling
/// [`Client::recv`] stalls the connection (reads stop, then sends), which is the intended
/// back-pressure.
#[derive(Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Result<Event, ClientError>>,
    public: NodePublic,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A DERP URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    tls: bool,
    /// `host:port` to dial.
    dial: String,
    /// The host without port or brackets: the TLS server name.
    host: String,
    /// The `Host` header (the authority as written).
    authority: String,
    path: String,
}

/// Splits `http[s]://host[:port][/path]`; the path defaults to `/derp`, the port to the
/// scheme's.
fn parse_url(url: &str) -> Result<Url, ClientError> {
    let bad = |why| ClientError::BadUrl {
        url: url.to_owned(),
        why,
    };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad("scheme is not http or https"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/derp"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("no host, or user info"));
    }
    let port_at = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => Some(i),
        _ => None,
    };
    let (host, dial) = match port_at {
        Some(i) => (&authority[..i], authority.to_owned()),
        None => (
            authority,
            format!("{authority}:{}", if tls { 443 } else { 80 }),
        ),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(Url {
        tls,
        dial,
        host: host.to_owned(),
        authority: authority.to_owned(),
        path: path.to_owned(),
    })
}

impl Client {
    /// Connects to `http[s]://host[:port][/path]` with our node key and runs the
    /// connection; `https://` checks the certificate for `host` against the system roots.
    /// Returns once the upgrade is done; [`Event::Connected`] follows when the server
    /// accepts us.
    pub async fn connect(
        url: &str,
        private: NodePrivate,
        config: Config,
    ) -> Result<Self, ClientError> {
        Self::connect_with(url, private, config, &DialOptions::new()).await
    }

    /// As [`Client::connect`], with the roots of `opts` (`opts.use_http` is ignored: the
    /// URL's scheme decides).
    pub async fn connect_with(
        url: &str,
        private: NodePrivate,
        config: Config,
        opts: &DialOptions,
    ) -> Result<Self, ClientError> {
        let url = parse_url(url)?;
        let tls = if url.tls {
            let name = ServerName::try_from(url.host.clone()).map_err(|_| {
                ClientError::BadNode(format!("{:?} is not a valid TLS server name", url.host))
            })?;
            let cfg = url_tls_config(&name, opts).map_err(ClientError::BadNode)?;
            Some((cfg, name))
        } else {
            None
        };
        let limit = config.handshake_timeout;
        let dial = url.dial.clone();
        let connect = async {
            let stream = TcpStream::connect(&dial)
                .await
                .map_err(|source| ClientError::Io {
                    addr: dial.clone(),
                    source,
                })?;
            // Packets are small and latency matters more than segment count.
            let _ = stream.set_nodelay(true);
            let request = UpgradeRequest {
                host: &url.authority,
                path: &url.path,
                fast_start: false,
                ideal_node: None,
            };
            match tls {
                None => Self::over_request(stream, &dial, request, private, config).await,
                Some((cfg, name)) => {
                    let stream = tokio_rustls::TlsConnector::from(cfg)
                        .connect(name, stream)
                        .await
                        .map_err(|e| ClientError::Tls {
                            addr: dial.clone(),
                            source: tls_error(e),
                        })?;
                    Self::over_request(stream, &dial, request, private, config).await
                }
            }
        };
        tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| ClientError::Conn {
                addr: url.dial.clone(),
                source: ConnError::HandshakeTimeout,
            })?
    }

    /// Does the upgrade over an established byte stream (TCP or TLS) and runs the
    /// connection on a task. `addr` is used in error messages only. The caller bounds the
    /// time this takes ([`Client::connect`] uses [`Config::handshake_timeout`]); the
    /// connection's own handshake deadline covers ServerInfo afterwards.
    pub async fn over<S>(
        stream: S,
        addr: &str,
        host: &str,
        path: &str,
        private: NodePrivate,
        config: Config,
    ) -> Result<Self, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let request = UpgradeRequest {
            host,
            path,
            fast_start: false,
            ideal_node: None,
        };
        Self::over_request(stream, addr, request, private, config).await
    }

    /// [`Client::over`] with any upgrade request (`Ideal-Node` for region dials).
    pub(crate) async fn over_request<S>(
        mut stream: S,
        addr: &str,
        request: UpgradeRequest<'_>,
        private: NodePrivate,
        config: Config,
    ) -> Result<Self, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io_err = |source| ClientError::Io {
            addr: addr.to_owned(),
            source,
        };
        let mut req = Vec::new();
        request.emit(&mut req);
        stream.write_all(&req).await.map_err(io_err)?;
        stream.flush().await.map_err(io_err)?;

        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        let (response, used) = loop {
            match parse_upgrade_response(&buf) {
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(source) => {
                    return Err(ClientError::Upgrade {
                        addr: addr.to_owned(),
                        source,
                    });
                }
            }
            let n = stream.read(&mut chunk).await.map_err(io_err)?;
            if n == 0 {
                return Err(ClientError::Eof {
                    addr: addr.to_owned(),
                });
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        tracing::debug!(
            "derp: upgraded with {addr}, version {:?}",
            response.derp_version
        );
        let now = Instant::now();
        let mut conn = Connection::new(private, config, now);
        let public = *conn.public_key();
        // The server's first frames may have come with the HTTP answer.
        let leftover = &buf[used..];
        if let Err(source) = conn.handle_input(leftover, now) {
            return Err(ClientError::Conn {
                addr: addr.to_owned(),
                source,
            });
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let addr = addr.to_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = run(stream, conn, cmd_rx, &ev_tx, &addr).await {
                let _ = ev_tx.send(Err(e)).await;
            }
        });
        Ok(Client {
            commands: cmd_tx,
            events: ev_rx,
            public,
            task,
        })
    }

    /// Our node public key.
    pub fn public_key(&self) -> &NodePublic {
        &self.public
    }

    /// Sends `data` to the peer with node key `dst` (dropped, like a datagram, if the send
    /// buffer is full).
    pub async fn send(&self, dst: NodePublic, data: Vec<u8>) -> Result<(), ClientError> {
        self.command(Command::Send { dst, data }).await
    }

    /// Tells the server whether it is our home DERP.
    pub async fn note_preferred(&self, preferred: bool) -> Result<(), ClientError> {
        self.command(Command::NotePreferred(preferred)).await
    }

    /// Pings the server; the answer comes as [`Event::Pong`].
    pub async fn ping(&self, data: [u8; 8]) -> Result<(), ClientError> {
        self.command(Command::Ping(data)).await
    }

    async fn command(&self, c: Command) -> Result<(), ClientError> {
        self.commands
            .send(c)
            .await
            .map_err(|_| ClientError::Stopped)
    }

    /// The next event: packets, peer changes, the connection's end (an error, after which
    /// every call returns [`ClientError::Stopped`]).
    pub async fn recv(&mut self) -> Result<Event, ClientError> {
        match self.events.recv().await {
            Some(r) => r,
            None => Err(ClientError::Stopped),
        }
    }

    /// Stops the connection.
    pub fn close(self) {
        drop(self);
    }
}

enum Wake {
    Read(usize),
    Command(Option<Command>),
    Timer,
}

async fn run<S>(
    mut stream: S,
    mut conn: Connection,
    mut commands: mpsc::Receiver<Command>,
    events: &mpsc::Sender<Result<Event, ClientError>>,
    addr: &str,
) -> Result<(), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io_err = |source| ClientError::Io {
        addr: addr.to_owned(),
        source,
    };
    let conn_err = |source| ClientError::Conn {
        addr: addr.to_owned(),
        source,
    };
    let mut buf = vec![0u8; 64 << 10];
    // Alternate which source is polled first, so neither a flood of commands nor a flood
    // of input starves the other.
    let mut input_first = false;
    loop {
        input_first = !input_first;
        while !conn.pending_transmit().is_empty() {
            let n = stream
                .write(conn.pending_transmit())
                .await
                .map_err(io_err)?;
            if n == 0 {
                return Err(ClientError::Eof {
                    addr: addr.to_owned(),
                });
            }
            conn.advance_transmit(n);
        }
        stream.flush().await.map_err(io_err)?;
        while let Some(ev) = conn.poll_event() {
            if events.send(Ok(ev)).await.is_err() {
                return Ok(()); // the Client is gone
            }
        }
        let deadline = conn.poll_timeout();
        let mut sleep = pin!(deadline.map(|d| tokio::time::sleep_until(d.into())));
        let wake = poll_fn(|cx| {
            let mut poll_commands = |cx: &mut std::task::Context<'_>| match commands.poll_recv(cx) {
                Poll::Ready(c) => Poll::Ready(Ok(Wake::Command(c))),
                Poll::Pending => Poll::Pending,
            };
            if !input_first {
                if let Poll::Ready(w) = poll_commands(cx) {
                    return Poll::Ready(w);
                }
            }
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut stream).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(Wake::Read(rb.filled().len()))),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if input_first {
                if let Poll::Ready(w) = poll_commands(cx) {
                    return Poll::Ready(w);
                }
            }
            if let Some(s) = sleep.as_mut().as_pin_mut() {
                if s.poll(cx).is_ready() {
                    return Poll::Ready(Ok(Wake::Timer));
                }
            }
            Poll::Pending
        })
        .await
        .map_err(io_err)?;
        let now = Instant::now();
        match wake {
            Wake::Read(0) => {
                return Err(ClientError::Eof {
                    addr: addr.to_owned(),
                });
            }
            Wake::Read(n) => conn.handle_input(&buf[..n], now).map_err(conn_err)?,
            Wake::Timer => conn.handle_timeout(now).map_err(conn_err)?,
            Wake::Command(None) => return Ok(()),
            Wake::Command(Some(c)) => {
                let r = match c {
                    Command::Send { dst, data } => conn.send_packet(&dst, &data, Instant::now()),
                    Command::NotePreferred(p) => conn.note_preferred(p),
                    Command::Ping(d) => conn.ping(d),
                };
                match r {
                    Ok(()) => {}
                    Err(e @ (ConnError::SendBufferFull | ConnError::RateLimited)) => {
                        tracing::debug!("derp: {e}");
                    }
                    Err(e @ ConnError::Frame(_)) => {
                        tracing::debug!("derp: packet not sent: {e}");
                    }
                    Err(e) => return Err(conn_err(e)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://127.0.0.1:3340/derp").unwrap();
        assert_eq!(
            u,
            Url {
                tls: false,
                dial: "127.0.0.1:3340".to_owned(),
                host: "127.0.0.1".to_owned(),
                authority: "127.0.0.1:3340".to_owned(),
                path: "/derp".to_owned(),
            }
        );
        let u = parse_url("http://derp.example").unwrap();
        assert_eq!(
            (u.dial.as_str(), u.authority.as_str()),
            ("derp.example:80", "derp.example")
        );
        assert_eq!(u.path, "/derp");
        assert_eq!(parse_url("http://[::1]/derp").unwrap().dial, "[::1]:80");
        assert_eq!(parse_url("http://[::1]:8/derp").unwrap().dial, "[::1]:8");
        let u = parse_url("https://derp.example/derp").unwrap();
        assert!(u.tls);
        assert_eq!(
            (u.dial.as_str(), u.host.as_str()),
            ("derp.example:443", "derp.example")
        );
        let u = parse_url("https://[2001:db8::1]:8443/x").unwrap();
        assert_eq!(u.dial, "[2001:db8::1]:8443");
        assert_eq!(u.host, "2001:db8::1");
        assert_eq!(u.authority, "[2001:db8::1]:8443");
        assert_eq!(u.path, "/x");
        for bad in [
            "ftp://x/",
            "http:///derp",
            "https://:443/derp",
            "http://u@h/derp",
        ] {
            assert!(
                matches!(parse_url(bad), Err(ClientError::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn https_url_against_a_plain_server_is_a_tls_error() {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        use std::sync::Arc;
        // A server that answers the ClientHello with an HTTP error, as a plain HTTP server
        // does: a clear TLS error, no panic.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        });
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(include_bytes!("testdata/derpkey-cn.pem")).unwrap())
            .unwrap();
        let opts = DialOptions::new().with_tls_roots(Arc::new(roots));
        let url = format!("https://{addr}/derp");
        let e = Client::connect_with(
            &url,
            NodePrivate::from_bytes([1; 32]),
            Config::default(),
            &opts,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ClientError::Tls { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("DERP TLS with {addr}: ")),
            "{e}"
        );

        // Empty roots are refused before dialing.
        let opts = DialOptions::new().with_tls_roots(Arc::new(rustls::RootCertStore::empty()));
        let e = Client::connect_with(
            &url,
            NodePrivate::from_bytes([1; 32]),
            Config::default(),
            &opts,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ClientError::BadNode(_)), "{e:?}");
        assert!(e.to_string().contains("TLS roots"), "{e}");
    }

    use crate::derp::Frame;
    use crate::nacl::SharedKey;
    use std::time::Duration;

    /// A scripted server on an in-memory pipe: 101 and ServerKey in one write, then
    /// ServerInfo and a packet once ClientInfo arrives, then it reads until the client
    /// goes away.
    #[tokio::test]
    async fn driver_over_in_memory_stream() {
        let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
        let server = NodePrivate::from_bytes([0x5e; 32]);
        let server_pub = server.public();
        let peer = NodePublic::from_bytes([0x42; 32]);
        let server_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = server_io.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8(got.clone()).unwrap();
            assert!(head.starts_with("GET /derp HTTP/1.1\r\n"), "{head}");
            assert!(head.contains("Upgrade: DERP\r\n"));
            let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\n\
                Connection: Upgrade\r\nDerp-Version: 2\r\n\r\n"
                .to_vec();
            Frame::ServerKey { key: server_pub }.emit(&mut out).unwrap();
            server_io.write_all(&out).await.unwrap();
            let mut rx = Vec::new();
            let client_key = loop {
                let n = server_io.read(&mut buf).await.unwrap();
                rx.extend_from_slice(&buf[..n]);
                if let Ok((Frame::ClientInfo { key, sealed }, _)) = Frame::parse(&rx) {
                    let shared = SharedKey::node(&server, &key);
                    assert_eq!(
                        shared.open(sealed).unwrap(),
                        br#"{"version":2,"CanAckPings":true}"#
                    );
                    break key;
                }
            };
            let shared = SharedKey::node(&server, &client_key);
            let mut sealed = Vec::new();
            shared.seal(br#"{"version":2}"#, &mut sealed);
            let mut out = Vec::new();
            Frame::ServerInfo { sealed: &sealed }
                .emit(&mut out)
                .unwrap();
            Frame::RecvPacket {
                src: peer,
                packet: b"payload",
            }
            .emit(&mut out)
            .unwrap();
            server_io.write_all(&out).await.unwrap();
            // Read until EOF; return what the client sent after ClientInfo.
            let mut rest = Vec::new();
            while let Ok(n) = server_io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                rest.extend_from_slice(&buf[..n]);
            }
            rest
        });
        let mut c = Client::over(
            client_io,
            "pipe",
            "derp.test",
            "/derp",
            NodePrivate::from_bytes([1; 32]),
            Config::default(),
        )
        .await
        .unwrap();
        assert!(matches!(
            c.recv().await.unwrap(),
            Event::Connected { server_key, .. } if server_key == server_pub
        ));
        assert_eq!(
            c.recv().await.unwrap(),
            Event::Packet {
                src: peer,
                data: b"payload".to_vec()
            }
        );
        c.send(peer, b"back".to_vec()).await.unwrap();
        // Give the task a moment to write, then drop the client: the server sees EOF.
        c.ping(*b"12345678").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(c);
        let rest = server_task.await.unwrap();
        let mut want = Vec::new();
        Frame::SendPacket {
            dst: peer,
            packet: b"back",
        }
        .emit(&mut want)
        .unwrap();
        assert!(
            rest.windows(want.len()).any(|w| w == want),
            "the server did not get the packet"
        );
    }

    #[tokio::test]
    async fn refused_upgrade_and_silent_server() {
        let (client_io, mut server_io) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = server_io.read(&mut buf).await;
            let _ = server_io
                .write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
                .await;
        });
        let r = Client::over(
            client_io,
            "pipe",
            "h",
            "/derp",
            NodePrivate::from_bytes([1; 32]),
            Config::default(),
        )
        .await;
        assert!(matches!(
            r,
            Err(ClientError::Upgrade {
                source: UpgradeError::Status { status: 426 },
                ..
            })
        ));

        // A TCP server that accepts and says nothing: the handshake deadline ends it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let config = Config {
            handshake_timeout: Duration::from_millis(200),
            ..Config::default()
        };
        let r = Client::connect(
            &format!("http://{addr}/derp"),
            NodePrivate::from_bytes([1; 32]),
            config,
        )
        .await;
        assert!(matches!(
            r,
            Err(ClientError::Conn {
                source: ConnError::HandshakeTimeout,
                ..
            })
        ));
    }
}

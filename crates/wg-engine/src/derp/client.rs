//! A thin tokio driver for [`Connection`]: dials, upgrades, and runs the state machine on a
//! task.
//!
//! [`Client::connect`] takes `http://host:port/derp` and dials TCP. HTTPS is the seam for
//! rustls: a TLS driver dials, wraps the TCP stream, and hands the stream to
//! [`Client::over`], which does the upgrade and runs the connection over any
//! `AsyncRead + AsyncWrite`. (With TLS 1.3 and a server meta-certificate it could also use
//! fast start; see [`super::http`].)

use super::conn::{Config, ConnError, Connection, Event};
use super::http::{UpgradeError, UpgradeRequest, parse_upgrade_response};
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
    /// The URL is not `http://host[:port]/path`.
    #[error("bad DERP URL {url:?}: {why}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `https://` URLs need the TLS driver, which is not built yet.
    #[error("DERP over TLS is not supported yet: {0}")]
    TlsUnsupported(String),
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

/// Splits `http://host[:port]/path` into the address to dial, the `Host` header and the
/// path.
fn parse_url(url: &str) -> Result<(String, String, String), ClientError> {
    let bad = |why| ClientError::BadUrl {
        url: url.to_owned(),
        why,
    };
    if url.starts_with("https://") {
        return Err(ClientError::TlsUnsupported(url.to_owned()));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or(bad("scheme is not http"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/derp"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("no host, or user info"));
    }
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let dial = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((dial, authority.to_owned(), path.to_owned()))
}

impl Client {
    /// Connects to `http://host[:port]/derp` with our node key and runs the connection.
    /// Returns once the upgrade is done; [`Event::Connected`] follows when the server
    /// accepts us.
    pub async fn connect(
        url: &str,
        private: NodePrivate,
        config: Config,
    ) -> Result<Self, ClientError> {
        let (dial, host, path) = parse_url(url)?;
        let limit = config.handshake_timeout;
        let connect = async {
            let stream = TcpStream::connect(&dial)
                .await
                .map_err(|source| ClientError::Io {
                    addr: dial.clone(),
                    source,
                })?;
            // Packets are small and latency matters more than segment count.
            let _ = stream.set_nodelay(true);
            Self::over(stream, &dial, &host, &path, private, config).await
        };
        tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| ClientError::Conn {
                addr: dial.clone(),
                source: ConnError::HandshakeTimeout,
            })?
    }

    /// Does the upgrade over an established byte stream (TCP now, TLS later) and runs the
    /// connection on a task. `addr` is used in error messages only. The caller bounds the
    /// time this takes ([`Client::connect`] uses [`Config::handshake_timeout`]); the
    /// connection's own handshake deadline covers ServerInfo afterwards.
    pub async fn over<S>(
        mut stream: S,
        addr: &str,
        host: &str,
        path: &str,
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
        UpgradeRequest {
            host,
            path,
            fast_start: false,
            ideal_node: None,
        }
        .emit(&mut req);
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
        assert_eq!(
            parse_url("http://127.0.0.1:3340/derp").unwrap(),
            (
                "127.0.0.1:3340".to_owned(),
                "127.0.0.1:3340".to_owned(),
                "/derp".to_owned()
            )
        );
        assert_eq!(
            parse_url("http://derp.example").unwrap(),
            (
                "derp.example:80".to_owned(),
                "derp.example".to_owned(),
                "/derp".to_owned()
            )
        );
        assert_eq!(parse_url("http://[::1]/derp").unwrap().0, "[::1]:80");
        assert_eq!(parse_url("http://[::1]:8/derp").unwrap().0, "[::1]:8");
        assert!(matches!(
            parse_url("https://derp.example/derp"),
            Err(ClientError::TlsUnsupported(_))
        ));
        assert!(matches!(
            parse_url("ftp://x/"),
            Err(ClientError::BadUrl { .. })
        ));
        assert!(matches!(
            parse_url("http:///derp"),
            Err(ClientError::BadUrl { .. })
        ));
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

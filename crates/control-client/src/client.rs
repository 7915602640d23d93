//! The tokio driver: dial, upgrade, Noise, HTTP/2, and the two requests a node needs.

use crate::early::{self, Early};
use crate::framing::{Limits, MapDecoder};
use crate::http1::{self, ControlUrl, Scheme};
use crate::noise::{Handshake, Initiator};
use crate::stream::NoiseStream;
use crate::{CAPABILITY_VERSION, Error};
use base64::Engine as _;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tailcfg::key::{MachinePrivate, MachinePublic, NodePublic};
use tailcfg::{
    EarlyNoise, MapRequest, MapResponse, OverTlsPublicKeyResponse, RegisterRequest,
    RegisterResponse,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

mod dial;
mod tls;

/// The most bytes read from a register answer (headscale caps requests at 1 MiB too).
const MAX_REGISTER_BODY: usize = 1 << 20;

/// Settings for [`ControlClient::connect_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Bound on the whole dial: `/key`, the upgrade, Noise and HTTP/2 set-up.
    pub connect_timeout: Duration,
    /// Bound on one request/response (`/machine/register` with an auth key, the map head).
    /// An interactive `Followup` register blocks until the user acts: raise it for that.
    pub request_timeout: Duration,
    /// If a map stream delivers nothing for this long, it fails (Go's watchdog: 120 s; the
    /// server sends keep-alives about every minute).
    pub map_watchdog: Duration,
    /// Size limits of map messages.
    pub limits: Limits,
    /// A PEM bundle to trust for TLS instead of `SSL_CERT_FILE` or the system bundle: a
    /// private CA (a self-hosted headscale), or tests.
    pub tls_roots: Option<std::path::PathBuf>,
    /// `SO_MARK` for the TCP connections (0: none; setting one needs `CAP_NET_ADMIN`): the
    /// router's bypass mark, so control is reached by the ordinary routes even while an exit
    /// node's default route sits in the node's own table.
    pub socket_mark: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            map_watchdog: Duration::from_secs(120),
            limits: Limits::default(),
            tls_roots: None,
            socket_mark: 0,
        }
    }
}

/// Aborts the HTTP/2 connection task when the last user is gone.
#[derive(Debug)]
struct ConnTask(tokio::task::JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A ts2021 connection to a control server: one Noise channel carrying HTTP/2.
#[derive(Debug)]
pub struct ControlClient {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
    server_key: MachinePublic,
    early: Option<EarlyNoise>,
    opts: ConnectOptions,
    task: Arc<ConnTask>,
}

async fn timed<T>(
    d: Duration,
    what: &'static str,
    f: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| Error::Timeout(what))?
}

/// Opens TCP to `host:port`, with TLS on top for HTTPS (the given configuration, else one
/// with the system roots).
async fn open(
    scheme: Scheme,
    host: &str,
    port: u16,
    tls_cfg: Option<Arc<rustls::ClientConfig>>,
    mark: u32,
) -> Result<Box<dyn Io>, Error> {
    let tcp = connect_tcp(&http1::dial_addr(host, port), mark)
        .await
        .map_err(Error::io("connecting to control"))?;
    let _ = tcp.set_nodelay(true);
    match scheme {
        Scheme::Http => Ok(Box::new(tcp)),
        Scheme::Https => {
            let cfg = match tls_cfg {
                Some(c) => c,
                None => tls::system_config()?,
            };
            Ok(Box::new(tls::connect(tcp, host, cfg).await?))
        }
    }
}

/// TCP to `host:port`, trying each address the name has in turn, each socket marked with
/// `mark` (when not 0) before it connects.
async fn connect_tcp(addr: &str, mark: u32) -> std::io::Result<TcpStream> {
    if mark == 0 {
        return TcpStream::connect(addr).await;
    }
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let sock = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket2::SockRef::from(&sock).set_mark(mark)?;
        match sock.connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} has no address"))))
}

/// A byte stream to control: TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for S {}

/// `GET /key?v=…` over an open stream.
async fn key_over(mut io: Box<dyn Io>, authority: &str) -> Result<MachinePublic, Error> {
    let path = format!("/key?v={CAPABILITY_VERSION}");
    http1::write_request(&mut io, "GET", &path, authority, &[("Connection", "close")]).await?;
    let (head, rest) = http1::read_head(&mut io).await?;
    let body = http1::read_body(&mut io, &head, rest, http1::MAX_SMALL_BODY).await?;
    if head.status != 200 {
        return Err(Error::Http {
            context: "GET /key",
            status: head.status,
            body: crate::printable(&body),
        });
    }
    let resp: OverTlsPublicKeyResponse =
        serde_json::from_slice(&body).map_err(|e| Error::json("/key answer", e))?;
    if resp.public_key.is_zero() {
        return Err(Error::ServerTooOld);
    }
    Ok(resp.public_key)
}

async fn fetch_key(
    u: &ControlUrl,
    tls_cfg: Option<Arc<rustls::ClientConfig>>,
    mark: u32,
) -> Result<MachinePublic, Error> {
    let io = open(u.scheme, &u.host, u.effective_port(), tls_cfg, mark).await?;
    key_over(io, &u.authority).await
}

/// Fetches the server's Noise key with `GET /key?v=<capability version>`, over the URL's own
/// scheme and port: TLS for `https://` (roots from `SSL_CERT_FILE` or the system bundle).
pub async fn fetch_server_key(url: &str) -> Result<MachinePublic, Error> {
    fetch_key(&ControlUrl::parse(url)?, None, 0).await
}

impl ControlClient {
    /// Connects with default options: fetches the server key, dials, upgrades to ts2021 and
    /// starts HTTP/2. `url` is the control URL, `http://` or `https://`.
    ///
    /// `/key` goes over the URL's scheme and port. The upgrade follows Go's dial policy
    /// (protocol.md §2.2): without a port, plain HTTP on 80 and, after 500 ms, HTTPS on 443,
    /// the first to finish winning; `http://` with a port adds the 443 fallback unless the
    /// host is local or private; `https://` with a port dials only that. TLS trusts the PEM
    /// bundle in `SSL_CERT_FILE`, else `/etc/ssl/certs/ca-certificates.crt`, else
    /// `/etc/ssl/cert.pem`.
    pub async fn connect(url: &str, machine_key: &MachinePrivate) -> Result<Self, Error> {
        Self::connect_with(url, machine_key, ConnectOptions::default()).await
    }

    /// As [`ControlClient::connect`] with options.
    pub async fn connect_with(
        url: &str,
        machine_key: &MachinePrivate,
        opts: ConnectOptions,
    ) -> Result<Self, Error> {
        let t = opts.connect_timeout;
        timed(t, "connecting to control", async {
            let u = Arc::new(ControlUrl::parse(url)?);
            // An https:// URL needs roots for /key anyway: load them once, up front, so a
            // missing bundle is the error. For http:// URLs the 443 fallback loads its own.
            let tls_cfg = match (u.scheme, &opts.tls_roots) {
                (_, Some(bundle)) => Some(tls::config_from_file(bundle)?),
                (Scheme::Https, None) => Some(tls::system_config()?),
                (Scheme::Http, None) => None,
            };
            let server_key = fetch_key(&u, tls_cfg.clone(), opts.socket_mark).await?;
            let plan = dial::plan(&u);
            let machine_key = machine_key.clone();
            dial::race(&plan, u.scheme, |a| {
                let (u, tls_cfg, machine_key, opts) = (
                    Arc::clone(&u),
                    tls_cfg.clone(),
                    machine_key.clone(),
                    opts.clone(),
                );
                async move {
                    let io = open(a.scheme, &u.host, a.port, tls_cfg, opts.socket_mark).await?;
                    Self::connect_over(io, &u.authority, server_key, &machine_key, opts).await
                }
            })
            .await
        })
        .await
    }

    /// The upgrade, Noise handshake, early payload and HTTP/2 set-up over an open stream
    /// (plain TCP, TLS, or anything else that carries the HTTP/1 upgrade).
    pub async fn connect_over<S>(
        mut io: S,
        authority: &str,
        server_key: MachinePublic,
        machine_key: &MachinePrivate,
        opts: ConnectOptions,
    ) -> Result<Self, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut init, msg) = Initiator::new(machine_key, &server_key, CAPABILITY_VERSION)?;
        let hs = base64::engine::general_purpose::STANDARD.encode(msg);
        http1::write_request(
            &mut io,
            "POST",
            "/ts2021",
            authority,
            &[
                ("Upgrade", "tailscale-control-protocol"),
                ("Connection", "upgrade"),
                ("X-Tailscale-Handshake", &hs),
                ("Content-Length", "0"),
            ],
        )
        .await?;
        let (head, mut buf) = http1::read_head(&mut io).await?;
        if head.status != 101 {
            let body = http1::read_body(&mut io, &head, buf, http1::MAX_SMALL_BODY)
                .await
                .unwrap_or_default();
            return Err(Error::Http {
                context: "POST /ts2021 upgrade",
                status: head.status,
                body: crate::printable(&body),
            });
        }
        // The Noise response may already be in `buf`; read until it is complete.
        let (transport, consumed) = loop {
            match init.read_response(&buf)? {
                Handshake::Done {
                    transport,
                    consumed,
                } => break (transport, consumed),
                Handshake::NeedMore(i) => init = i,
            }
            let mut chunk = [0u8; 512];
            let n = io
                .read(&mut chunk)
                .await
                .map_err(Error::io("reading Noise response"))?;
            if n == 0 {
                return Err(Error::BadResponse(
                    "connection closed during the Noise handshake".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut stream = NoiseStream::new(io, transport, &buf[consumed..]);

        // The early payload, if the server sends one, precedes HTTP/2.
        let mut plain = Vec::new();
        let early = loop {
            match early::parse(&plain)? {
                Early::NeedMore => {}
                Early::Absent => {
                    stream.unread(&plain);
                    break None;
                }
                Early::Present { payload, consumed } => {
                    stream.unread(&plain[consumed..]);
                    break Some(payload);
                }
            }
            let mut chunk = [0u8; 512];
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(Error::io("reading early payload"))?;
            if n == 0 {
                return Err(Error::BadResponse(
                    "connection closed before HTTP/2 started".into(),
                ));
            }
            plain.extend_from_slice(&chunk[..n]);
        };
        tracing::debug!(early = early.is_some(), "ts2021 Noise channel up");

        let (send, conn) = h2::client::Builder::new()
            .enable_push(false)
            .handshake::<_, Bytes>(stream)
            .await?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "control HTTP/2 connection ended");
            }
        });
        Ok(Self {
            send,
            authority: authority.to_owned(),
            server_key,
            early,
            opts,
            task: Arc::new(ConnTask(task)),
        })
    }

    /// The server's Noise public key.
    pub fn server_key(&self) -> &MachinePublic {
        &self.server_key
    }

    /// The early payload the server sent, if any.
    pub fn early_noise(&self) -> Option<&EarlyNoise> {
        self.early.as_ref()
    }

    async fn post(
        &self,
        path: &str,
        node_key: &NodePublic,
        body: Vec<u8>,
    ) -> Result<http::Response<h2::RecvStream>, Error> {
        let mut send = self.send.clone().ready().await?;
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("https://{}{path}", self.authority))
            .header("content-type", "application/json")
            .header("ts-lb", node_key.to_string())
            .body(())
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        let (resp, mut tx) = send.send_request(req, false)?;
        tx.send_data(Bytes::from(body), true)?;
        Ok(resp.await?)
    }

    /// `POST /machine/register`. `req.version` is set to [`CAPABILITY_VERSION`]. A
    /// non-empty `Error` in the answer, or an HTTP error, is returned as an error.
    pub async fn register(&self, mut req: RegisterRequest) -> Result<RegisterResponse, Error> {
        req.version = i32::from(CAPABILITY_VERSION);
        let body = serde_json::to_vec(&req).map_err(|e| Error::json("RegisterRequest", e))?;
        let wait = if req.followup.is_empty() {
            self.opts.request_timeout
        } else {
            self.opts.request_timeout.max(Duration::from_secs(15 * 60))
        };
        timed(wait, "registering", async {
            let resp = self.post("/machine/register", &req.node_key, body).await?;
            let status = resp.status().as_u16();
            let data = read_all(resp.into_body(), MAX_REGISTER_BODY).await?;
            if status != 200 {
                return Err(Error::Http {
                    context: "POST /machine/register",
                    status,
                    body: crate::printable(&data),
                });
            }
            let r: RegisterResponse =
                serde_json::from_slice(&data).map_err(|e| Error::json("RegisterResponse", e))?;
            if !r.error.is_empty() {
                return Err(Error::Register(r.error));
            }
            Ok(r)
        })
        .await
    }

    /// `POST /machine/map`. `req.version` is set to [`CAPABILITY_VERSION`]; set `stream`,
    /// `keep_alive` and `compress` (`"zstd"`) as wanted. Returns once the answer's head has
    /// arrived; read messages with [`MapStream::next`].
    pub async fn map_stream(&self, mut req: MapRequest) -> Result<MapStream, Error> {
        req.version = i32::from(CAPABILITY_VERSION);
        let zstd = match req.compress.as_str() {
            "" => false,
            "zstd" => true,
            _ => {
                return Err(Error::BadRequest(format!(
                    "unknown compression {:?}",
                    req.compress
                )));
            }
        };
        let body = serde_json::to_vec(&req).map_err(|e| Error::json("MapRequest", e))?;
        timed(self.opts.request_timeout, "starting the map poll", async {
            let resp = self.post("/machine/map", &req.node_key, body).await?;
            let status = resp.status().as_u16();
            let recv = resp.into_body();
            if status != 200 {
                let data = read_all(recv, http1::MAX_SMALL_BODY)
                    .await
                    .unwrap_or_default();
                return Err(Error::Http {
                    context: "POST /machine/map",
                    status,
                    body: crate::printable(&data),
                });
            }
            Ok(MapStream {
                recv,
                decoder: MapDecoder::new(zstd, self.opts.limits),
                watchdog: self.opts.map_watchdog,
                ended: false,
                _task: Arc::clone(&self.task),
            })
        })
        .await
    }

    /// A "lite" map update (`Stream=false`, `OmitPeers=true`): tells the server new endpoints
    /// or Hostinfo while the long poll stays open. The answer's body, if any, is read and
    /// dropped; only the status matters. Send the current node and disco keys: headscale
    /// stores the disco key of every map request, a zero one included.
    pub async fn lite_update(&self, mut req: MapRequest) -> Result<(), Error> {
        req.stream = false;
        req.omit_peers = true;
        req.keep_alive = false;
        req.version = i32::from(CAPABILITY_VERSION);
        let body = serde_json::to_vec(&req).map_err(|e| Error::json("MapRequest", e))?;
        timed(
            self.opts.request_timeout,
            "sending a lite map update",
            async {
                let resp = self.post("/machine/map", &req.node_key, body).await?;
                let status = resp.status().as_u16();
                let data = read_all(resp.into_body(), self.opts.limits.max_frame).await?;
                if status != 200 {
                    return Err(Error::Http {
                        context: "POST /machine/map (lite)",
                        status,
                        body: crate::printable(&data),
                    });
                }
                Ok(())
            },
        )
        .await
    }
}

async fn read_all(mut body: h2::RecvStream, max: usize) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if out.len() + chunk.len() > max {
            return Err(Error::BadResponse("HTTP/2 body too large".into()));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The messages of one map poll. Keeps the connection alive while it exists.
#[derive(Debug)]
pub struct MapStream {
    recv: h2::RecvStream,
    decoder: MapDecoder,
    watchdog: Duration,
    ended: bool,
    _task: Arc<ConnTask>,
}

impl MapStream {
    /// The next message; `None` when the server ended the stream cleanly. Fails if nothing
    /// arrives within the watchdog time, on a transport error, or on a bad message.
    pub async fn next(&mut self) -> Option<Result<MapResponse, Error>> {
        let raw = match self.next_json().await? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        Some(serde_json::from_slice(&raw).map_err(|e| {
            self.ended = true;
            Error::from(crate::framing::FramingError::Json(e))
        }))
    }

    /// As [`MapStream::next`], giving the message's JSON (decompressed) undecoded.
    pub async fn next_json(&mut self) -> Option<Result<Vec<u8>, Error>> {
        loop {
            match self.decoder.next_raw() {
                Ok(Some(m)) => return Some(Ok(m)),
                Ok(None) => {}
                Err(e) => {
                    self.ended = true;
                    return Some(Err(e.into()));
                }
            }
            if self.ended {
                return None;
            }
            let chunk = match tokio::time::timeout(self.watchdog, self.recv.data()).await {
                Err(_) => {
                    self.ended = true;
                    return Some(Err(Error::Timeout("waiting for a map message")));
                }
                Ok(None) => {
                    self.ended = true;
                    return match self.decoder.finish() {
                        Ok(()) => None,
                        Err(e) => Some(Err(e.into())),
                    };
                }
                Ok(Some(Err(e))) => {
                    self.ended = true;
                    return Some(Err(e.into()));
                }
                Ok(Some(Ok(c))) => c,
            };
            let _ = self.recv.flow_control().release_capacity(chunk.len());
            self.decoder.push(&chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::frame;
    use crate::noise::responder;
    use tailcfg::key::NodePrivate;
    use tokio::io::{AsyncWriteExt, DuplexStream};

    /// What the fake control server does after the handshake.
    #[derive(Clone, Copy)]
    enum Script {
        /// Serve register and map requests over HTTP/2.
        Serve,
        /// Answer the upgrade with HTTP 400.
        RefuseUpgrade,
        /// Send a Noise error frame after the 101.
        NoiseError,
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    fn node_json(id: i64) -> String {
        let key = NodePrivate::generate().public();
        format!(
            r#"{{"ID":{id},"Key":"{key}","Machine":"mkey:{z}","DiscoKey":"discokey:{z}","Addresses":["100.64.{}.{}/32"],"HomeDERP":999}}"#,
            id / 256,
            id % 256,
            z = "0".repeat(64)
        )
    }

    async fn handle(
        req: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) {
        let path = req.uri().path().to_owned();
        assert_eq!(req.uri().authority().map(|a| a.as_str()), Some("ctl.test"));
        assert!(
            req.headers()["ts-lb"]
                .to_str()
                .unwrap()
                .starts_with("nodekey:")
        );
        let body = read_all(req.into_body(), 1 << 20).await.unwrap();
        let ok = http::Response::builder().status(200).body(()).unwrap();
        match path.as_str() {
            "/machine/register" => {
                let r: RegisterRequest = serde_json::from_slice(&body).unwrap();
                assert_eq!(r.version, i32::from(CAPABILITY_VERSION));
                let key = r.auth.map(|a| a.auth_key).unwrap_or_default();
                let (status, answer) = match key.as_str() {
                    "good" => (
                        200,
                        r#"{"MachineAuthorized":true,"NodeKeySignature":null}"#.to_owned(),
                    ),
                    "refused" => (200, r#"{"Error":"invalid pre auth key"}"#.to_owned()),
                    _ => (401, "Unauthorized\n\u{1b}[31m".to_owned()),
                };
                let head = http::Response::builder().status(status).body(()).unwrap();
                let mut tx = respond.send_response(head, false).unwrap();
                tx.send_data(Bytes::from(answer), true).unwrap();
            }
            "/machine/map" => {
                let r: MapRequest = serde_json::from_slice(&body).unwrap();
                assert_eq!(r.version, i32::from(CAPABILITY_VERSION));
                let mut tx = respond.send_response(ok, false).unwrap();
                if r.compress == "zstd" {
                    let full = format!(
                        r#"{{"Node":{},"Peers":[{},{}],"DERPMap":{{"Regions":{{"999":{{"RegionID":999,"Nodes":[]}}}}}},"PacketFilters":{{"base":[]}}}}"#,
                        node_json(1),
                        node_json(2),
                        node_json(3)
                    );
                    let mut wire = frame(&zstd(full.as_bytes()));
                    wire.extend(frame(&zstd(br#"{"KeepAlive":true}"#)));
                    wire.extend(frame(&zstd(
                        br#"{"PeersRemoved":[2],"OnlineChange":{"3":false}}"#,
                    )));
                    // Cut across message boundaries on purpose.
                    let (a, b) = wire.split_at(7);
                    tx.send_data(Bytes::copy_from_slice(a), false).unwrap();
                    tx.send_data(Bytes::copy_from_slice(b), true).unwrap();
                } else {
                    // One big uncompressed full map: far more than a flow-control window.
                    let peers: Vec<String> = (2..3000).map(node_json).collect();
                    let full = format!(
                        r#"{{"Node":{},"Peers":[{}]}}"#,
                        node_json(1),
                        peers.join(",")
                    );
                    assert!(full.len() > 300_000);
                    tx.send_data(Bytes::from(frame(full.as_bytes())), true)
                        .unwrap();
                }
            }
            _ => {
                let head = http::Response::builder().status(404).body(()).unwrap();
                let _ = respond.send_response(head, true);
            }
        }
    }

    async fn fake_control(mut io: DuplexStream, key: MachinePrivate, script: Script) {
        let (head, rest) = {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            loop {
                let n = io.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break (
                        String::from_utf8(buf[..end].to_vec()).unwrap(),
                        buf[end + 4..].to_vec(),
                    );
                }
            }
        };
        assert!(rest.is_empty());
        assert!(head.starts_with("POST /ts2021 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nUpgrade: tailscale-control-protocol"));
        assert!(head.contains("\r\nHost: ctl.test"));
        let hs = head
            .lines()
            .find_map(|l| l.strip_prefix("X-Tailscale-Handshake: "))
            .unwrap();
        let init = base64::engine::general_purpose::STANDARD
            .decode(hs)
            .unwrap();
        assert_eq!(&init[..2], &CAPABILITY_VERSION.to_be_bytes());
        let mut out = Vec::new();
        match script {
            Script::RefuseUpgrade => {
                out.extend_from_slice(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 16\r\n\r\nbad handshake\r\n\r\n",
                );
                io.write_all(&out).await.unwrap();
                return;
            }
            Script::NoiseError => {
                out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n\r\n");
                out.extend(responder::error_frame("unsupported client version"));
                io.write_all(&out).await.unwrap();
                return;
            }
            Script::Serve => {}
        }
        let (resp, mut transport, _) = responder::respond(&key, &init).unwrap();
        // 101, the Noise response and the early payload in one write, as a corked server does.
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n\r\n");
        out.extend_from_slice(&resp);
        let chal = format!(r#"{{"nodeKeyChallenge":"chalpub:{}"}}"#, "ab".repeat(32));
        let early = crate::early::encode(&serde_json::from_str(&chal).unwrap()).unwrap();
        transport.encrypt(&early, &mut out).unwrap();
        io.write_all(&out).await.unwrap();
        let stream = NoiseStream::new(io, transport, &[]);
        let mut conn = h2::server::handshake(stream).await.unwrap();
        while let Some(r) = conn.accept().await {
            let Ok((req, respond)) = r else { break };
            tokio::spawn(handle(req, respond));
        }
    }

    async fn session(script: Script) -> Result<ControlClient, Error> {
        let (client_io, server_io) = tokio::io::duplex(8 * 1024);
        let key = MachinePrivate::generate();
        let server_pub = key.public();
        tokio::spawn(fake_control(server_io, key, script));
        let machine = MachinePrivate::generate();
        ControlClient::connect_over(
            client_io,
            "ctl.test",
            server_pub,
            &machine,
            ConnectOptions::default(),
        )
        .await
    }

    fn register(key: &str) -> RegisterRequest {
        let mut r = RegisterRequest::default();
        r.node_key = NodePrivate::generate().public();
        r.auth = Some(tailcfg::RegisterAuth::with_auth_key(key));
        r
    }

    #[tokio::test]
    async fn whole_session_in_memory() {
        let client = session(Script::Serve).await.unwrap();
        assert!(!client.early_noise().unwrap().node_key_challenge.is_zero());
        assert!(
            client
                .register(register("good"))
                .await
                .unwrap()
                .machine_authorized
        );

        let mut req = MapRequest::default();
        req.stream = true;
        req.compress = "zstd".into();
        let mut stream = client.map_stream(req).await.unwrap();
        let mut nm = crate::NetworkMap::new();
        let full = stream.next().await.unwrap().unwrap();
        assert_eq!(nm.apply(full).unwrap(), crate::Applied::Changed);
        assert_eq!(nm.peers.len(), 2);
        let ka = stream.next().await.unwrap().unwrap();
        assert_eq!(nm.apply(ka).unwrap(), crate::Applied::KeepAlive);
        nm.apply(stream.next().await.unwrap().unwrap()).unwrap();
        assert_eq!(nm.peers.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(nm.peers[&3].online, Some(false));
        assert!(stream.next().await.is_none());

        // A big uncompressed map on the same connection, past the flow-control windows.
        let mut stream = client.map_stream(MapRequest::default()).await.unwrap();
        let big = stream.next().await.unwrap().unwrap();
        assert_eq!(big.peers.len(), 2998);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn errors_are_clear() {
        let client = session(Script::Serve).await.unwrap();
        let e = client.register(register("refused")).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "control refused the registration: invalid pre auth key"
        );
        let e = client.register(register("other")).await.unwrap_err();
        assert!(
            matches!(&e, Error::Http { status: 401, body, .. } if body == "Unauthorized  [31m"),
            "{e:?}"
        );
        let mut req = MapRequest::default();
        req.compress = "brotli".into();
        assert!(matches!(
            client.map_stream(req).await,
            Err(Error::BadRequest(_))
        ));

        let e = session(Script::RefuseUpgrade).await.unwrap_err();
        assert!(
            matches!(&e, Error::Http { status: 400, body, .. } if body == "bad handshake"),
            "{e:?}"
        );
        let e = session(Script::NoiseError).await.unwrap_err();
        assert!(
            matches!(&e, Error::Noise(crate::noise::NoiseError::Refused(t)) if t == "unsupported client version"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn watchdog_fires_on_a_silent_stream() {
        let (client_io, server_io) = tokio::io::duplex(8 * 1024);
        let key = MachinePrivate::generate();
        let server_pub = key.public();
        tokio::spawn(async move {
            // Handshake, then a map answer head and nothing more.
            let mut io = server_io;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let init = loop {
                let n = io.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let hs = head
                        .lines()
                        .find_map(|l| l.strip_prefix("X-Tailscale-Handshake: "))
                        .unwrap()
                        .to_owned();
                    break base64::engine::general_purpose::STANDARD
                        .decode(hs)
                        .unwrap();
                }
            };
            let (resp, transport, _) = responder::respond(&key, &init).unwrap();
            let mut out = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
            out.extend_from_slice(&resp);
            io.write_all(&out).await.unwrap();
            let mut conn = h2::server::handshake(NoiseStream::new(io, transport, &[]))
                .await
                .unwrap();
            let mut held = Vec::new();
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                let ok = http::Response::builder().status(200).body(()).unwrap();
                held.push(respond.send_response(ok, false).unwrap());
            }
        });
        let machine = MachinePrivate::generate();
        let opts = ConnectOptions {
            map_watchdog: Duration::from_millis(200),
            ..ConnectOptions::default()
        };
        let client = ControlClient::connect_over(client_io, "ctl.test", server_pub, &machine, opts)
            .await
            .unwrap();
        assert!(
            client.early_noise().is_none(),
            "no early payload: HTTP/2 bytes pass through"
        );
        let mut stream = client.map_stream(MapRequest::default()).await.unwrap();
        assert!(matches!(stream.next().await, Some(Err(Error::Timeout(_)))));
        assert!(stream.next().await.is_none());
    }
}

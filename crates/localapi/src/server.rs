//! The LocalAPI server: a unix socket, peer-credential checks, and the routes over a
//! [`Backend`].

use crate::http::{self, HttpError, Request};
use crate::types::{MaskedPrefs, NetcheckReport, Notify, Options, PingResult, Prefs, Status};
use std::future::Future;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

/// The `Host` header Tailscale's clients send.
pub const HOST: &str = "local-tailscaled.sock";
/// How long a connection may take to send a whole request (or idle between requests).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections served at once (watchers included); more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;

/// Why the backend refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The request is wrong (bad prefs, bad value): HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// The backend cannot do it now or in this build (such as having no control client):
    /// HTTP 503.
    #[error("{0}")]
    Unavailable(String),
    /// Something failed inside the daemon (such as writing the state file): HTTP 500.
    #[error("{0}")]
    Internal(String),
}

impl BackendError {
    fn status(&self) -> u16 {
        match self {
            BackendError::BadRequest(_) => 400,
            BackendError::Unavailable(_) => 503,
            BackendError::Internal(_) => 500,
        }
    }
}

/// What the LocalAPI needs from the daemon core. Calls are short and never block on the
/// network; slow work (logging in) reports its progress on the notification bus.
pub trait Backend: Send + Sync + 'static {
    /// The status (`GET status`); `peers: false` leaves peers out.
    fn status(&self, peers: bool) -> Status;
    /// The current prefs (`GET prefs`).
    fn prefs(&self) -> Prefs;
    /// Changes the flagged prefs and returns the result (`PATCH prefs`).
    fn edit_prefs(&self, mp: MaskedPrefs) -> Result<Prefs, BackendError>;
    /// Starts the backend with options (`POST start`).
    fn start(&self, opts: Options) -> Result<(), BackendError>;
    /// Starts an interactive login (`POST login-interactive`); the URL arrives on the bus.
    fn login_interactive(&self) -> Result<(), BackendError>;
    /// Logs out (`POST logout`).
    fn logout(&self) -> Result<(), BackendError>;
    /// Subscribes to the bus: the messages to send first (chosen by `mask`, see
    /// [`crate::types::watch`]) and a receiver for the ones that follow.
    fn watch(&self, mask: u64) -> (Vec<Notify>, broadcast::Receiver<Notify>);
    /// The last netcheck report (`GET netcheck`).
    fn netcheck(&self) -> Result<NetcheckReport, BackendError> {
        Err(BackendError::Unavailable("no data plane".into()))
    }
    /// Pings a peer's address (`POST ping?ip=…&type=disco`). The future runs after the call
    /// returns and may take seconds; a backend without a data plane answers an error.
    fn ping(&self, ip: IpAddr, kind: &str) -> PingFuture {
        let _ = (ip, kind);
        Box::pin(async { Err(BackendError::Unavailable("no data plane".into())) })
    }
}

/// The answer of [`Backend::ping`], to be awaited.
pub type PingFuture =
    Pin<Box<dyn Future<Output = Result<PingResult, BackendError>> + Send + 'static>>;

/// What a peer may do, from its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Root or the daemon's own user: everything.
    ReadWrite,
    /// Anyone else: reads only (status, prefs, the bus), as Go's unix socket identity rules.
    ReadOnly,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A file system or socket operation failed.
    #[error("LocalAPI socket {path}: cannot {op}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Something else answers on the socket.
    #[error("LocalAPI socket {0}: another daemon is listening there")]
    InUse(PathBuf),
    /// The path exists and is not a socket; it is left alone.
    #[error("LocalAPI socket {0}: exists and is not a socket; not removing it")]
    NotSocket(PathBuf),
}

/// A bound LocalAPI socket. Dropping it removes the socket file (if it is still ours).
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    ino: u64,
    owner_uid: u32,
}

impl Server {
    /// Binds the socket: creates the parent directory (0755), removes a stale socket, binds,
    /// and makes the socket 0666 (access is decided per request by peer credentials).
    /// Must be called inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<Server, ServerError> {
        let io = |op: &'static str| {
            let path = path.to_path_buf();
            move |source| ServerError::Io { path, op, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io("create its directory"))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(ServerError::InUse(path.to_path_buf()));
                }
                tracing::info!("removing stale LocalAPI socket {}", path.display());
                std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
            }
            Ok(_) => return Err(ServerError::NotSocket(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspect it")(e)),
        }
        let listener = UnixListener::bind(path).map_err(io("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .map_err(io("set its mode"))?;
        // The socket was just created by us: its owner is our effective uid.
        let meta = std::fs::metadata(path).map_err(io("inspect it"))?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            ino: meta.ino(),
            owner_uid: meta.uid(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` completes, one task per connection; then removes the socket.
    pub async fn serve<F: Future<Output = ()>>(self, backend: Arc<dyn Backend>, shutdown: F) {
        let mut shutdown = pin!(shutdown);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = std::future::poll_fn(|cx| {
                if shutdown.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                self.listener.poll_accept(cx).map(Some)
            })
            .await;
            match accepted {
                None => break,
                Some(Ok((stream, _))) => {
                    let access = access_for(&stream, self.owner_uid);
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let backend = backend.clone();
                            tokio::spawn(async move {
                                handle_conn(stream, access, backend).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            tokio::spawn(async move {
                                let (_, mut wr) = stream.into_split();
                                let body = error_body("too many LocalAPI connections");
                                let _ = http::write_response(
                                    &mut wr,
                                    503,
                                    "application/json",
                                    &body,
                                    true,
                                )
                                .await;
                            });
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!("LocalAPI accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn access_for(stream: &UnixStream, owner_uid: u32) -> Access {
    match stream.peer_cred() {
        Ok(c) if c.uid() == 0 || c.uid() == owner_uid => Access::ReadWrite,
        Ok(_) => Access::ReadOnly,
        Err(e) => {
            tracing::warn!("LocalAPI: cannot read peer credentials ({e}); read-only");
            Access::ReadOnly
        }
    }
}

/// What a route answers.
enum Reply {
    Json(u16, Vec<u8>),
    Later(PingFuture),
    NoContent,
    Watch(Vec<Notify>, broadcast::Receiver<Notify>),
}

fn error_reply(status: u16, msg: &str) -> Reply {
    Reply::Json(status, error_body(msg))
}

fn error_body(msg: &str) -> Vec<u8> {
    let mut b = serde_json::json!({ "error": msg }).to_string().into_bytes();
    b.push(b'\n');
    b
}

fn json_reply<T: serde::Serialize>(v: &T) -> Reply {
    match serde_json::to_vec_pretty(v) {
        Ok(mut b) => {
            b.push(b'\n');
            Reply::Json(200, b)
        }
        Err(e) => error_reply(500, &format!("encoding the answer: {e}")),
    }
}

fn backend_reply(r: Result<(), BackendError>) -> Reply {
    match r {
        Ok(()) => Reply::NoContent,
        Err(e) => error_reply(e.status(), &e.to_string()),
    }
}

/// Routes one request. Pure apart from the backend calls, so it is tested without sockets.
fn route(req: &Request, access: Access, backend: &dyn Backend) -> Reply {
    match req.header("host") {
        None | Some("") | Some(HOST) => {}
        Some(_) => return error_reply(403, "invalid Host header for the LocalAPI"),
    }
    if req.header("origin").is_some() || req.header("referer").is_some() {
        return error_reply(403, "LocalAPI requests from browsers are refused");
    }
    let Some(endpoint) = req.path.strip_prefix("/localapi/v0/") else {
        return error_reply(404, &format!("not found: {:?}", req.path));
    };
    let (methods, write): (&[&str], bool) = match endpoint {
        "status" | "watch-ipn-bus" | "netcheck" => (&["GET"], false),
        "prefs" => (&["GET", "PATCH"], req.method == "PATCH"),
        "start" | "login-interactive" | "logout" | "ping" => (&["POST"], true),
        _ => {
            return error_reply(404, &format!("unknown LocalAPI endpoint {endpoint:?}"));
        }
    };
    if !methods.contains(&req.method.as_str()) {
        return error_reply(405, &format!("{endpoint}: want {}", methods.join(" or ")));
    }
    if write && access != Access::ReadWrite {
        return error_reply(
            403,
            &format!("{endpoint} access denied: changes need root or the daemon's user"),
        );
    }
    match (endpoint, req.method.as_str()) {
        ("status", _) => json_reply(&backend.status(req.query_param("peers") != Some("false"))),
        ("prefs", "GET") => json_reply(&backend.prefs()),
        ("prefs", _) => match serde_json::from_slice::<MaskedPrefs>(&req.body) {
            Ok(mp) => match backend.edit_prefs(mp) {
                Ok(p) => json_reply(&p),
                Err(e) => error_reply(e.status(), &e.to_string()),
            },
            Err(e) => error_reply(400, &format!("bad MaskedPrefs JSON: {e}")),
        },
        ("start", _) => {
            let opts = if req.body.iter().all(u8::is_ascii_whitespace) {
                Ok(Options::default())
            } else {
                serde_json::from_slice::<Options>(&req.body)
            };
            match opts {
                Ok(o) => backend_reply(backend.start(o)),
                Err(e) => error_reply(400, &format!("bad Options JSON: {e}")),
            }
        }
        ("login-interactive", _) => backend_reply(backend.login_interactive()),
        ("logout", _) => backend_reply(backend.logout()),
        ("netcheck", _) => match backend.netcheck() {
            Ok(r) => json_reply(&r),
            Err(e) => error_reply(e.status(), &e.to_string()),
        },
        ("ping", _) => {
            let Some(ip) = req.query_param("ip").and_then(|s| s.parse::<IpAddr>().ok()) else {
                return error_reply(400, "ping: want ip=<address>");
            };
            let kind = req.query_param("type").unwrap_or("disco");
            Reply::Later(backend.ping(ip, kind))
        }
        ("watch-ipn-bus", _) => {
            let mask = match req.query_param("mask").map(str::parse::<u64>) {
                None => 0,
                Some(Ok(m)) => m,
                Some(Err(_)) => return error_reply(400, "mask: want a number"),
            };
            let (initial, rx) = backend.watch(mask);
            Reply::Watch(initial, rx)
        }
        _ => error_reply(404, "not found"),
    }
}

async fn handle_conn(stream: UnixStream, access: Access, backend: Arc<dyn Backend>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let req = match tokio::time::timeout(REQUEST_TIMEOUT, http::read_request(&mut rd)).await {
            Err(_) | Ok(Ok(None)) => return,
            Ok(Ok(Some(r))) => r,
            Ok(Err(HttpError::Io(_))) | Ok(Err(HttpError::Truncated)) => return,
            Ok(Err(e)) => {
                let status = match e {
                    HttpError::HeadTooLarge => 431,
                    HttpError::BodyTooLarge => 413,
                    _ => 400,
                };
                tracing::debug!("LocalAPI: bad request: {e}");
                let body = error_body(&format!("bad request: {e}"));
                let _ =
                    http::write_response(&mut wr, status, "application/json", &body, true).await;
                return;
            }
        };
        let close = req.wants_close();
        let mut reply = route(&req, access, &*backend);
        if let Reply::Later(fut) = reply {
            reply = match fut.await {
                Ok(r) => json_reply(&r),
                Err(e) => error_reply(e.status(), &e.to_string()),
            };
        }
        let ok = match reply {
            Reply::Json(status, body) => {
                http::write_response(&mut wr, status, "application/json", &body, close).await
            }
            Reply::NoContent => http::write_response(&mut wr, 204, "", &[], close).await,
            Reply::Later(_) => {
                let body = error_body("internal: unresolved answer");
                http::write_response(&mut wr, 500, "application/json", &body, close).await
            }
            Reply::Watch(initial, rx) => {
                stream_bus(&mut rd, &mut wr, initial, rx).await;
                return;
            }
        };
        if ok.is_err() || close {
            return;
        }
    }
}

/// Streams the bus as newline-delimited JSON until the client goes away or the bus closes.
async fn stream_bus(
    rd: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    initial: Vec<Notify>,
    mut rx: broadcast::Receiver<Notify>,
) {
    let line = |n: &Notify| {
        serde_json::to_vec(n).map(|mut v| {
            v.push(b'\n');
            v
        })
    };
    if http::write_stream_head(wr, "application/json")
        .await
        .is_err()
    {
        return;
    }
    for n in &initial {
        match line(n) {
            Ok(b) if http::write_chunk(wr, &b).await.is_ok() => {}
            _ => return,
        }
    }
    loop {
        let next = {
            let mut recv = pin!(rx.recv());
            let mut buf = [0u8; 1];
            let mut gone = pin!(rd.read(&mut buf));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = recv.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                if gone.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
        };
        match next {
            None => return,
            Some(Ok(n)) => match line(&n) {
                Ok(b) if http::write_chunk(wr, &b).await.is_ok() => {}
                _ => return,
            },
            Some(Err(broadcast::error::RecvError::Lagged(k))) => {
                tracing::debug!("LocalAPI watcher lagged; {k} messages dropped");
            }
            Some(Err(broadcast::error::RecvError::Closed)) => {
                let _ = http::write_last_chunk(wr).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::BackendState;
    use std::sync::Mutex;

    struct Fake {
        prefs: Mutex<Prefs>,
        tx: broadcast::Sender<Notify>,
    }

    impl Backend for Fake {
        fn status(&self, _peers: bool) -> Status {
            Status {
                backend_state: BackendState::NeedsLogin.to_string(),
                ..Status::default()
            }
        }
        fn prefs(&self) -> Prefs {
            self.prefs.lock().map(|p| p.clone()).unwrap_or_default()
        }
        fn edit_prefs(&self, mp: MaskedPrefs) -> Result<Prefs, BackendError> {
            let mut p = self
                .prefs
                .lock()
                .map_err(|_| BackendError::Internal("lock".into()))?;
            mp.apply_to(&mut p);
            Ok(p.clone())
        }
        fn start(&self, _o: Options) -> Result<(), BackendError> {
            Err(BackendError::Unavailable("no control client".into()))
        }
        fn login_interactive(&self) -> Result<(), BackendError> {
            Ok(())
        }
        fn logout(&self) -> Result<(), BackendError> {
            Ok(())
        }
        fn watch(&self, _mask: u64) -> (Vec<Notify>, broadcast::Receiver<Notify>) {
            (vec![Notify::default()], self.tx.subscribe())
        }
    }

    fn fake() -> Fake {
        Fake {
            prefs: Mutex::new(Prefs::default()),
            tx: broadcast::channel(4).0,
        }
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn status_of(r: Reply) -> (u16, String) {
        match r {
            Reply::Json(s, b) => (s, String::from_utf8_lossy(&b).into_owned()),
            Reply::NoContent => (204, String::new()),
            Reply::Watch(..) => (200, "watch".into()),
            Reply::Later(_) => (200, "later".into()),
        }
    }

    #[test]
    fn routes_answer_with_go_codes() {
        let b = fake();
        let rw = Access::ReadWrite;
        let ro = Access::ReadOnly;
        let host = [("host", HOST)];
        let cases = [
            (req("GET", "/localapi/v0/status", &host, ""), rw, 200),
            (
                req("GET", "/localapi/v0/status?peers=false", &[], ""),
                ro,
                200,
            ),
            (req("GET", "/localapi/v0/prefs", &host, ""), ro, 200),
            (
                req(
                    "GET",
                    "/localapi/v0/status",
                    &[
                        ("host", HOST),
                        ("sec-tailscale", "localapi"),
                        ("tailscale-cap", "130"),
                    ],
                    "",
                ),
                ro,
                200,
            ),
            (
                req(
                    "PATCH",
                    "/localapi/v0/prefs",
                    &host,
                    r#"{"HostnameSet":true,"Hostname":"x"}"#,
                ),
                rw,
                200,
            ),
            (
                req(
                    "PATCH",
                    "/localapi/v0/prefs",
                    &host,
                    r#"{"HostnameSet":true}"#,
                ),
                ro,
                403,
            ),
            (
                req("PATCH", "/localapi/v0/prefs", &host, "{not json"),
                rw,
                400,
            ),
            (req("POST", "/localapi/v0/start", &host, "{}"), rw, 503),
            (req("POST", "/localapi/v0/start", &host, ""), ro, 403),
            (req("POST", "/localapi/v0/logout", &host, ""), rw, 204),
            (
                req("POST", "/localapi/v0/login-interactive", &host, ""),
                ro,
                403,
            ),
            (req("GET", "/localapi/v0/start", &host, ""), rw, 405),
            (req("DELETE", "/localapi/v0/status", &host, ""), rw, 405),
            (req("GET", "/localapi/v0/nope", &host, ""), rw, 404),
            (req("GET", "/other", &host, ""), rw, 404),
            (
                req(
                    "GET",
                    "/localapi/v0/status",
                    &[("host", "evil.example")],
                    "",
                ),
                rw,
                403,
            ),
            (
                req("GET", "/localapi/v0/status", &[("origin", "http://x")], ""),
                rw,
                403,
            ),
            (
                req("GET", "/localapi/v0/watch-ipn-bus?mask=x", &host, ""),
                rw,
                400,
            ),
            (
                req("GET", "/localapi/v0/watch-ipn-bus?mask=2", &host, ""),
                ro,
                200,
            ),
        ];
        for (r, access, want) in cases {
            let (got, body) = status_of(route(&r, access, &b));
            assert_eq!(got, want, "{} {} {:?}: {body}", r.method, r.path, access);
            if got >= 400 {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
            }
        }
        assert_eq!(b.prefs().hostname, "x");
    }
}

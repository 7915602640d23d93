//! Server and client over a real unix socket in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use localapi::types::{MaskedPrefs, Notify, Options, Prefs, Status};
use localapi::{Backend, BackendError, BackendState, Client, ClientError, Server};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

struct Fake {
    prefs: Mutex<Prefs>,
    tx: broadcast::Sender<Notify>,
}

impl Backend for Fake {
    fn status(&self, _peers: bool) -> Status {
        Status {
            version: "test".into(),
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
        let _ = self.tx.send(Notify {
            prefs: Some(p.clone()),
            ..Notify::default()
        });
        Ok(p.clone())
    }
    fn start(&self, _o: Options) -> Result<(), BackendError> {
        Err(BackendError::Unavailable(
            "no control client in this build".into(),
        ))
    }
    fn login_interactive(&self) -> Result<(), BackendError> {
        let _ = self.tx.send(Notify {
            browse_to_url: Some("https://login.example/a/b".into()),
            ..Notify::default()
        });
        Ok(())
    }
    fn logout(&self) -> Result<(), BackendError> {
        Ok(())
    }
    fn watch(&self, _mask: u64) -> (Vec<Notify>, broadcast::Receiver<Notify>) {
        let first = Notify {
            version: Some("test".into()),
            state: Some(BackendState::NeedsLogin.as_int()),
            ..Notify::default()
        };
        (vec![first], self.tx.subscribe())
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("localapi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Starts a server on `sock`; returns the task and a sender that stops it.
fn start(
    sock: &Path,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let server = Server::bind(sock).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(Fake {
        prefs: Mutex::new(Prefs::default()),
        tx: broadcast::channel(16).0,
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(backend, async move {
        let _ = stop_rx.await;
    }));
    (task, stop_tx)
}

async fn raw(sock: &Path, bytes: &[u8]) -> String {
    let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn client_and_server_talk_over_the_socket() {
    let dir = temp_dir("talk");
    let sock = dir.join("sub/tailscaled.sock");
    rt().block_on(async {
        let (task, stop) = start(&sock);
        let mode = std::fs::metadata(&sock).unwrap().mode();
        assert_eq!(mode & 0o777, 0o666, "socket mode");
        let dir_mode = std::fs::metadata(sock.parent().unwrap()).unwrap().mode();
        assert_eq!(dir_mode & 0o777, 0o755, "parent directory mode");

        let c = Client::new(&sock);
        let st = c.status().await.unwrap();
        assert_eq!(st.state(), Some(BackendState::NeedsLogin));

        let mut w = c.watch_ipn_bus(2).await.unwrap();
        let first = w.next().await.unwrap().unwrap();
        assert_eq!(first.backend_state(), Some(BackendState::NeedsLogin));

        let mut mp = MaskedPrefs::default();
        mp.prefs.hostname = "gw".into();
        mp.hostname_set = true;
        let p = c.edit_prefs(&mp).await.unwrap();
        assert_eq!(p.hostname, "gw");
        assert_eq!(c.prefs().await.unwrap().hostname, "gw");
        let n = w.next().await.unwrap().unwrap();
        assert_eq!(n.prefs.unwrap().hostname, "gw");

        c.login_interactive().await.unwrap();
        let n = w.next().await.unwrap().unwrap();
        assert_eq!(
            n.browse_to_url.as_deref(),
            Some("https://login.example/a/b")
        );

        match c.start(&Options::default()).await {
            Err(ClientError::Status { code: 503, message }) => {
                assert!(message.contains("no control client"), "{message}")
            }
            other => panic!("start: {other:?}"),
        }
        c.logout().await.unwrap();

        let _ = stop.send(());
        task.await.unwrap();
    });
    assert!(!sock.exists(), "socket removed when the server stops");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_requests_get_clear_errors_and_the_server_lives_on() {
    let dir = temp_dir("bad");
    let sock = dir.join("s.sock");
    rt().block_on(async {
        let (task, stop) = start(&sock);
        let big = format!(
            "GET /localapi/v0/status HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(20000)
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"\x16\x03\x01garbage\r\n\r\n".to_vec(), "400 Bad Request"),
            (big.into_bytes(), "431 Request Header Fields Too Large"),
            (
                b"GET /localapi/v0/nonesuch HTTP/1.1\r\nHost: local-tailscaled.sock\r\n\r\n"
                    .to_vec(),
                "404 Not Found",
            ),
            (
                b"PUT /localapi/v0/status HTTP/1.1\r\nHost: local-tailscaled.sock\r\n\r\n".to_vec(),
                "405 Method Not Allowed",
            ),
            (
                b"POST /localapi/v0/start HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n".to_vec(),
                "413",
            ),
        ];
        for (input, want) in cases {
            let out = raw(&sock, &input).await;
            assert!(
                out.starts_with(&format!("HTTP/1.1 {want}")),
                "{want}: {out}"
            );
            assert!(out.contains("{\"error\":"), "JSON error body: {out}");
        }
        // Half a request, then close: no answer, no panic.
        let _ = raw(&sock, b"GET /localapi/v0/status HTTP/1.1\r\nHost: lo").await;
        // Still serving.
        let st = Client::new(&sock).status().await.unwrap();
        assert_eq!(st.version, "test");
        // A second server on the same socket is refused; a stale one is replaced.
        assert!(Server::bind(&sock).is_err());
        let _ = stop.send(());
        task.await.unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stale_socket_is_replaced_and_a_regular_file_is_not() {
    let dir = temp_dir("stale");
    let sock = dir.join("s.sock");
    rt().block_on(async {
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let s = Server::bind(&sock).unwrap();
        drop(s);
        let file = dir.join("file");
        std::fs::write(&file, b"keep me").unwrap();
        let e = Server::bind(&file).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs curl as `nobody` against the socket; returns the HTTP code it saw.
fn curl_as_nobody(sock: &Path, method: &str, endpoint: &str) -> String {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
        .arg("--unix-socket")
        .arg(sock)
        .arg(format!(
            "http://local-tailscaled.sock/localapi/v0/{endpoint}"
        ))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn other_users_may_read_but_not_change() {
    let dir = temp_dir("peercred");
    let probe = dir.join("probe");
    std::fs::write(&probe, b"").unwrap();
    let am_root = std::fs::metadata(&probe).unwrap().uid() == 0;
    let have_curl = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok();
    if !am_root || !have_curl {
        eprintln!("skipped: needs root (to become nobody) and curl");
        return;
    }
    let sock = dir.join("s.sock");
    rt().block_on(async {
        let (task, stop) = start(&sock);
        let s = sock.clone();
        let codes = tokio::task::spawn_blocking(move || {
            [
                curl_as_nobody(&s, "GET", "status"),
                curl_as_nobody(&s, "POST", "start"),
                curl_as_nobody(&s, "POST", "logout"),
                curl_as_nobody(&s, "PATCH", "prefs"),
            ]
        })
        .await
        .unwrap();
        assert_eq!(codes, ["200", "403", "403", "403"]);
        let _ = stop.send(());
        task.await.unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}

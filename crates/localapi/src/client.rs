//! The LocalAPI client the `tailscale` CLI uses.

use crate::http::{self, BodyReader, HttpError};
use crate::types::{MaskedPrefs, NetcheckReport, Notify, Options, PingResult, Prefs, Status};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// The capability version sent in `Tailscale-Cap`, as Go's client does.
pub const CAPABILITY_VERSION: u32 = 130;
/// Largest answer the client reads (status of a big tailnet fits).
const MAX_ANSWER: usize = 32 << 20;
/// Longest line on the bus (one Notify, which may hold a network map).
const MAX_NOTIFY: usize = 32 << 20;

/// Why a LocalAPI call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The daemon's socket could not be reached.
    #[error("failed to connect to local tailscaled at {path} (is it running?): {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The conversation broke.
    #[error("LocalAPI: {0}")]
    Http(#[from] HttpError),
    /// The daemon answered with an error.
    #[error("{message}")]
    Status {
        /// The HTTP status.
        code: u16,
        /// The daemon's message (its `error` field, or the body).
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("LocalAPI: unexpected answer: {0}")]
    Json(#[from] serde_json::Error),
}

/// A client for one daemon socket. Each call opens its own connection.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    /// A client for the socket at `path`.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Client {
            path: path.as_ref().to_path_buf(),
        }
    }

    async fn send(
        &self,
        method: &str,
        endpoint: &str,
        body: Option<&[u8]>,
    ) -> Result<
        (
            BufReader<OwnedReadHalf>,
            OwnedWriteHalf,
            http::ResponseHead,
            BodyReader,
        ),
        ClientError,
    > {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let (rd, mut wr) = stream.into_split();
        let body = body.unwrap_or_default();
        let mut out = format!(
            "{method} /localapi/v0/{endpoint} HTTP/1.1\r\nHost: {}\r\nTailscale-Cap: {CAPABILITY_VERSION}\r\nConnection: close\r\n",
            crate::server::HOST
        );
        if !body.is_empty() || method != "GET" {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        wr.write_all(&bytes).await.map_err(HttpError::Io)?;
        wr.flush().await.map_err(HttpError::Io)?;
        let mut rd = BufReader::new(rd);
        let (head, reader) = http::read_response_head(&mut rd).await?;
        Ok((rd, wr, head, reader))
    }

    /// Sends a request and returns the body of a 2xx answer, or the daemon's error.
    pub async fn call(
        &self,
        method: &str,
        endpoint: &str,
        body: Option<&[u8]>,
    ) -> Result<Vec<u8>, ClientError> {
        let (mut rd, _wr, head, mut reader) = self.send(method, endpoint, body).await?;
        let bytes = reader.read_to_end(&mut rd, MAX_ANSWER).await?;
        if (200..300).contains(&head.status) {
            return Ok(bytes);
        }
        Err(status_error(head.status, &bytes))
    }

    /// `GET status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        Ok(serde_json::from_slice(
            &self.call("GET", "status", None).await?,
        )?)
    }

    /// `GET status?peers=false`.
    pub async fn status_without_peers(&self) -> Result<Status, ClientError> {
        Ok(serde_json::from_slice(
            &self.call("GET", "status?peers=false", None).await?,
        )?)
    }

    /// `POST ping?ip=IP&type=KIND`: one ping (`disco` is the kind tailrouter answers).
    pub async fn ping(&self, ip: std::net::IpAddr, kind: &str) -> Result<PingResult, ClientError> {
        let ep = format!("ping?ip={ip}&type={kind}");
        Ok(serde_json::from_slice(
            &self.call("POST", &ep, None).await?,
        )?)
    }

    /// `GET netcheck`: the daemon's last netcheck report.
    pub async fn netcheck(&self) -> Result<NetcheckReport, ClientError> {
        Ok(serde_json::from_slice(
            &self.call("GET", "netcheck", None).await?,
        )?)
    }

    /// `GET prefs`.
    pub async fn prefs(&self) -> Result<Prefs, ClientError> {
        Ok(serde_json::from_slice(
            &self.call("GET", "prefs", None).await?,
        )?)
    }

    /// `PATCH prefs`: changes the flagged prefs, returns the result.
    pub async fn edit_prefs(&self, mp: &MaskedPrefs) -> Result<Prefs, ClientError> {
        let body = serde_json::to_vec(mp)?;
        Ok(serde_json::from_slice(
            &self.call("PATCH", "prefs", Some(&body)).await?,
        )?)
    }

    /// `POST start`.
    pub async fn start(&self, opts: &Options) -> Result<(), ClientError> {
        let body = serde_json::to_vec(opts)?;
        self.call("POST", "start", Some(&body)).await.map(drop)
    }

    /// `POST login-interactive`.
    pub async fn login_interactive(&self) -> Result<(), ClientError> {
        self.call("POST", "login-interactive", None).await.map(drop)
    }

    /// `POST logout`.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.call("POST", "logout", None).await.map(drop)
    }

    /// `GET watch-ipn-bus?mask=…`: a stream of notifications.
    pub async fn watch_ipn_bus(&self, mask: u64) -> Result<Watcher, ClientError> {
        let (mut rd, wr, head, mut body) = self
            .send("GET", &format!("watch-ipn-bus?mask={mask}"), None)
            .await?;
        if head.status != 200 {
            let bytes = body.read_to_end(&mut rd, MAX_ANSWER).await?;
            return Err(status_error(head.status, &bytes));
        }
        Ok(Watcher {
            rd,
            _wr: wr,
            body,
            buf: Vec::new(),
        })
    }
}

fn status_error(code: u16, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or_else(|| {
            let s = String::from_utf8_lossy(body).trim().to_string();
            if s.is_empty() {
                format!("HTTP {code} {}", http::reason(code))
            } else {
                s
            }
        });
    ClientError::Status { code, message }
}

/// An open `watch-ipn-bus` stream.
#[derive(Debug)]
pub struct Watcher {
    rd: BufReader<OwnedReadHalf>,
    _wr: OwnedWriteHalf,
    body: BodyReader,
    buf: Vec<u8>,
}

impl Watcher {
    /// The next notification, or `None` when the daemon ended the stream.
    pub async fn next(&mut self) -> Result<Option<Notify>, ClientError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(serde_json::from_slice(&line)?));
            }
            match self.body.next_chunk(&mut self.rd).await? {
                Some(c) => {
                    if self.buf.len() + c.len() > MAX_NOTIFY {
                        return Err(HttpError::BodyTooLarge.into());
                    }
                    self.buf.extend_from_slice(&c);
                }
                None => return Ok(None),
            }
        }
    }
}

//! Dialing a DERP region from the DERP map, over TLS (or plain HTTP for debugging), as Go's
//! `derphttp` client does it (protocol.md §5.1-5.2; Go v1.98.5 `derp/derphttp/
//! derphttp_client.go`: `dialRegion`, `dialNode`, `tlsClient`, `urlString`, and
//! `net/tlsdial`).
//!
//! The rules, per node:
//!
//! - **Which nodes**: the region's nodes in map order; `STUNOnly` nodes are skipped. Go moves
//!   on to the next node only when TCP fails; we also move on when TLS or the upgrade fails
//!   (any node of a region serves its peers equally), and report every node's reason.
//! - **Port**: `DERPPort` when non-zero, else 443, or 3340 with [`DialOptions::use_http`].
//! - **Addresses**, per family: the `IPv4`/`IPv6` field when it holds an address of that
//!   family; an empty field means resolve `HostName` (A or AAAA records only); anything else
//!   (`"none"`, garbage, the other family) turns the family off, as does a `HostName` that is
//!   an address of the other family. Both families race; the first TCP connection wins. A
//!   node gets [`DIAL_NODE_TIMEOUT`] to connect (Go's `dialNodeTimeout`) and
//!   [`Config::handshake_timeout`] for the whole attempt.
//! - **Request**: `GET /derp` with `Host: HostName`, and `Ideal-Node: <first node's name>`
//!   when we are not on the first node.
//! - **TLS** (1.2 or 1.3; rustls on ring): SNI is `HostName` (none for an IP literal). The
//!   certificate is checked as follows:
//!   - `CertName` = `sha256-raw:<hex>`: exactly one certificate besides derper's meta
//!     certificate, whose SHA-256 over its DER is `<hex>`, valid for `HostName` when that is
//!     a DNS name, within its validity dates. No chain is built (it is usually self-signed).
//!   - another `CertName` that differs from `HostName`: the chain is verified against the
//!     roots for the name `CertName` (SNI stays `HostName`).
//!   - `InsecureForTests` (without either of the above): not checked.
//!   - otherwise: the chain is verified against the roots for `HostName`.
//!
//! Roots are [`DialOptions::tls_roots`], or the system bundle: `SSL_CERT_FILE`, else
//! `/etc/ssl/certs/ca-certificates.crt`, else `/etc/ssl/cert.pem`, each a PEM bundle or a
//! tailrouter anchor file ([`tailcfg::anchors`]).

use super::cert;
use super::client::{Client, ClientError};
use super::conn::{Config, ConnError};
use super::http::UpgradeRequest;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, Der, ServerName, TrustAnchor, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tailcfg::derp::{DerpNode, DerpRegion};
use tailcfg::key::NodePrivate;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// How long one node gets to accept a TCP connection (Go's `dialNodeTimeout`).
pub const DIAL_NODE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The port DERP is served on over TLS when the map gives none.
pub const DEFAULT_TLS_PORT: u16 = 443;

/// The port Go dials with `TS_DEBUG_USE_DERP_HTTP=1` when the map gives none (derper's
/// `-dev` port).
pub const DEFAULT_HTTP_PORT: u16 = 3340;

/// The environment knob that makes Go's client speak plain HTTP to DERP nodes.
pub const USE_HTTP_ENV: &str = "TS_DEBUG_USE_DERP_HTTP";

/// How to reach DERP nodes.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DialOptions {
    /// The roots certificates are verified against; `None` means the system bundle
    /// (`SSL_CERT_FILE`, `/etc/ssl/certs/ca-certificates.crt`, `/etc/ssl/cert.pem`; a PEM
    /// bundle or tailrouter anchor file), read when a node needs it.
    pub tls_roots: Option<Arc<RootCertStore>>,
    /// Plain HTTP instead of TLS, on port 3340 unless the node sets `DERPPort`: Go's
    /// `TS_DEBUG_USE_DERP_HTTP=1`, for test setups only. Ignored by URLs, whose scheme
    /// decides.
    pub use_http: bool,
    /// `SO_MARK` for the TCP connections (0: none), so that with an exit node's default
    /// route in the node's own routing table DERP still leaves by the ordinary route.
    pub socket_mark: u32,
}

impl DialOptions {
    /// TLS with the system roots.
    pub fn new() -> Self {
        Self::default()
    }

    /// As [`DialOptions::new`], with `use_http` taken from `TS_DEBUG_USE_DERP_HTTP` (read
    /// as Go reads a boolean: `1`, `t`, `true`, `TRUE`, `True` are true).
    pub fn from_env() -> Self {
        let v = std::env::var(USE_HTTP_ENV).unwrap_or_default();
        Self {
            use_http: matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"),
            ..Self::default()
        }
    }

    /// These roots instead of the system bundle.
    pub fn with_tls_roots(mut self, roots: Arc<RootCertStore>) -> Self {
        self.tls_roots = Some(roots);
        self
    }

    /// Plain HTTP (`true`) or TLS (`false`).
    pub fn with_use_http(mut self, use_http: bool) -> Self {
        self.use_http = use_http;
        self
    }

    /// This `SO_MARK` on every connection (needs `CAP_NET_ADMIN`).
    pub fn with_socket_mark(mut self, mark: u32) -> Self {
        self.socket_mark = mark;
        self
    }
}

/// Why one node of a region did not give a connection.
#[derive(Debug)]
pub struct NodeFailure {
    /// The node's `Name` (or its position, `#2`, when it has none), with the host and port.
    pub node: String,
    /// What went wrong.
    pub error: ClientError,
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.node, self.error)
    }
}

/// Connects to the first usable node of `region` (see the module documentation for the
/// rules), runs the connection and returns once the upgrade is done, like
/// [`Client::connect`]. The error names every node tried and why it failed.
pub async fn connect_region(
    region: &DerpRegion,
    private: NodePrivate,
    config: Config,
    opts: &DialOptions,
) -> Result<Client, ClientError> {
    let mut roots = Roots::new(opts.tls_roots.clone());
    let mut failures = Vec::new();
    let first = region
        .nodes
        .first()
        .map(|n| n.name.as_str())
        .filter(|n| !n.is_empty());
    for (i, node) in region.nodes.iter().enumerate() {
        if node.stun_only {
            continue;
        }
        let ideal = if i == 0 { None } else { first };
        let label = node_label(node, i, opts.use_http);
        let attempt = NodeAttempt {
            node,
            label: &label,
            ideal,
            use_http: opts.use_http,
            mark: opts.socket_mark,
        };
        match attempt
            .connect(private.clone(), config.clone(), &mut roots)
            .await
        {
            Ok(c) => {
                tracing::debug!(
                    "derp: connected to region {} node {label}",
                    region.region_id
                );
                return Ok(c);
            }
            Err(error) => {
                tracing::debug!("derp: region {} node {label}: {error}", region.region_id);
                failures.push(NodeFailure { node: label, error });
            }
        }
    }
    Err(ClientError::Region {
        region_id: region.region_id,
        region_code: region.region_code.clone(),
        failures,
    })
}

/// `name (host:port)` for messages.
fn node_label(node: &DerpNode, index: usize, use_http: bool) -> String {
    let name = if node.name.is_empty() {
        format!("#{index}")
    } else {
        node.name.clone()
    };
    let host = if node.host_name.is_empty() {
        "no HostName"
    } else {
        &node.host_name
    };
    match node_port(node, use_http) {
        Ok(port) => format!("{name} ({host}:{port})"),
        Err(_) => format!("{name} ({host})"),
    }
}

/// One node to try.
struct NodeAttempt<'a> {
    node: &'a DerpNode,
    /// [`node_label`], for errors.
    label: &'a str,
    /// `Ideal-Node`: the region's first node when this is not it.
    ideal: Option<&'a str>,
    use_http: bool,
    mark: u32,
}

impl NodeAttempt<'_> {
    async fn connect(
        &self,
        private: NodePrivate,
        config: Config,
        roots: &mut Roots,
    ) -> Result<Client, ClientError> {
        let bad = ClientError::BadNode;
        let plan = plan_node(self.node, self.use_http).map_err(bad)?;
        // The TLS configuration first, so that a roots problem costs no connection.
        let tls = match &plan.tls {
            None => None,
            Some(t) => Some((
                tls_config(&t.check, roots).map_err(bad)?,
                t.server_name.clone(),
            )),
        };
        let limit = config.handshake_timeout;
        let attempt = async {
            let tcp = dial_tcp(&plan.targets, DIAL_NODE_TIMEOUT.min(limit), self.mark).await?;
            let peer = tcp.peer_addr().map_err(|source| ClientError::Io {
                addr: self.label.to_owned(),
                source,
            })?;
            let addr = peer.to_string();
            // Packets are small and latency matters more than segment count.
            let _ = tcp.set_nodelay(true);
            let host = plan
                .host_header
                .clone()
                .unwrap_or_else(|| host_literal(peer.ip()));
            let request = UpgradeRequest {
                host: &host,
                path: "/derp",
                fast_start: false,
                ideal_node: self.ideal,
            };
            match tls {
                None => Client::over_request(tcp, &addr, request, private, config).await,
                Some((cfg, name)) => {
                    let name = name.unwrap_or(ServerName::IpAddress(peer.ip().into()));
                    let stream = tokio_rustls::TlsConnector::from(cfg)
                        .connect(name, tcp)
                        .await
                        .map_err(|e| ClientError::Tls {
                            addr: addr.clone(),
                            source: tls_error(e),
                        })?;
                    Client::over_request(stream, &addr, request, private, config).await
                }
            }
        };
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| ClientError::Conn {
                addr: self.label.to_owned(),
                source: ConnError::HandshakeTimeout,
            })?
    }
}

/// An IP as it appears in a `Host` header.
fn host_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Something to open a TCP connection to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A fixed address.
    Addr(SocketAddr),
    /// A name to resolve, keeping the addresses of one family.
    Resolve { host: String, port: u16, v6: bool },
}

/// How one node is to be dialed, decided from the map alone.
#[derive(Debug)]
struct NodePlan {
    /// IPv4 first, then IPv6; raced.
    targets: Vec<Target>,
    /// The `Host` header; `None` means the address dialed (no HostName).
    host_header: Option<String>,
    /// `None` for plain HTTP.
    tls: Option<TlsPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TlsPlan {
    /// The name given to rustls (SNI for a DNS name); `None` means the address dialed, and
    /// no SNI.
    server_name: Option<ServerName<'static>>,
    check: CertCheck,
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CertCheck {
    /// Chain to the roots, valid for this name.
    Roots(ServerName<'static>),
    /// `sha256-raw:`: this leaf, valid for this DNS name (when there is one), no chain.
    Pin {
        sha256: [u8; 32],
        host: Option<ServerName<'static>>,
    },
    /// `InsecureForTests`: anything.
    Insecure,
}

const PIN_PREFIX: &str = "sha256-raw:";

fn node_port(node: &DerpNode, use_http: bool) -> Result<u16, String> {
    match node.derp_port {
        0 if use_http => Ok(DEFAULT_HTTP_PORT),
        0 => Ok(DEFAULT_TLS_PORT),
        p => u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("DERPPort {p} is not a port")),
    }
}

/// Decides ports, addresses, names and certificate checks for one node.
fn plan_node(node: &DerpNode, use_http: bool) -> Result<NodePlan, String> {
    let port = node_port(node, use_http)?;
    let mut targets = Vec::new();
    for v6 in [false, true] {
        let field = if v6 { &node.ipv6 } else { &node.ipv4 };
        let dst = if field.is_empty() {
            node.host_name.as_str()
        } else {
            match field.parse::<IpAddr>() {
                Ok(ip) if ip.is_ipv6() == v6 => field.as_str(),
                _ => continue, // "none", garbage or the other family: this family is off
            }
        };
        if dst.is_empty() {
            continue;
        }
        match dst.parse::<IpAddr>() {
            Ok(ip) if ip.is_ipv6() == v6 => targets.push(Target::Addr(SocketAddr::new(ip, port))),
            Ok(_) => {}
            Err(_) => targets.push(Target::Resolve {
                host: dst.to_owned(),
                port,
                v6,
            }),
        }
    }
    if targets.is_empty() {
        return Err(if node.host_name.is_empty() {
            "no HostName and no usable IPv4 or IPv6 address".to_owned()
        } else {
            "both IPv4 and IPv6 are disabled for this node".to_owned()
        });
    }
    let host_header = match node.host_name.parse::<IpAddr>() {
        _ if node.host_name.is_empty() => None,
        Ok(ip) => Some(host_literal(ip)),
        Err(_) => Some(node.host_name.clone()),
    };
    let tls = if use_http {
        None
    } else {
        Some(plan_tls(node)?)
    };
    Ok(NodePlan {
        targets,
        host_header,
        tls,
    })
}

fn server_name(name: &str, field: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| format!("{field} {name:?} is not a valid TLS server name"))
}

fn plan_tls(node: &DerpNode) -> Result<TlsPlan, String> {
    let host = if node.host_name.is_empty() {
        None
    } else {
        Some(server_name(&node.host_name, "HostName")?)
    };
    let cert_name = node.cert_name.as_str();
    if let Some(hex_pin) = cert_name.strip_prefix(PIN_PREFIX) {
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(hex_pin, &mut sha256)
            .map_err(|_| format!("CertName {cert_name:?}: the pin is not 64 hex digits"))?;
        // Go checks the name only when it sent one (a DNS name, not an IP literal).
        let dns = host.clone().filter(|h| matches!(h, ServerName::DnsName(_)));
        return Ok(TlsPlan {
            server_name: host,
            check: CertCheck::Pin { sha256, host: dns },
        });
    }
    if !cert_name.is_empty() && cert_name != node.host_name {
        let expected = server_name(cert_name, "CertName")?;
        return Ok(TlsPlan {
            // Go sends CertName as SNI only when there is no HostName.
            server_name: Some(host.unwrap_or_else(|| expected.clone())),
            check: CertCheck::Roots(expected),
        });
    }
    if node.insecure_for_tests {
        return Ok(TlsPlan {
            server_name: host,
            check: CertCheck::Insecure,
        });
    }
    match host {
        Some(h) => Ok(TlsPlan {
            server_name: Some(h.clone()),
            check: CertCheck::Roots(h),
        }),
        None => Err("no HostName to check its TLS certificate against".to_owned()),
    }
}

/// Opens the first TCP connection among `targets`, racing them, within `limit`.
async fn dial_tcp(
    targets: &[Target],
    limit: Duration,
    mark: u32,
) -> Result<TcpStream, ClientError> {
    let mut set = JoinSet::new();
    for t in targets {
        set.spawn(dial_target(t.clone(), mark));
    }
    let deadline = tokio::time::Instant::now() + limit;
    let mut errors = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(Ok(stream)))) => return Ok(stream),
            Ok(Some(Ok(Err(e)))) => errors.push(e),
            Ok(Some(Err(e))) => errors.push(format!("dial task: {e}")),
            Err(_) => {
                errors.push(format!("no TCP connection within {limit:?}"));
                break;
            }
        }
    }
    // Dropping the set aborts the dials still running.
    Err(ClientError::Io {
        addr: targets
            .iter()
            .map(|t| match t {
                Target::Addr(a) => a.to_string(),
                Target::Resolve { host, port, v6 } => {
                    format!("{host}:{port} (IPv{})", if *v6 { 6 } else { 4 })
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        source: std::io::Error::other(errors.join("; ")),
    })
}

/// A TCP connection to `a`, its socket marked with `mark` first when that is not 0.
pub(crate) async fn connect_marked(a: SocketAddr, mark: u32) -> std::io::Result<TcpStream> {
    let sock = if a.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if mark != 0 {
        socket2::SockRef::from(&sock).set_mark(mark)?;
    }
    sock.connect(a).await
}

async fn dial_target(target: Target, mark: u32) -> Result<TcpStream, String> {
    match target {
        Target::Addr(a) => connect_marked(a, mark)
            .await
            .map_err(|e| format!("{a}: {e}")),
        Target::Resolve { host, port, v6 } => {
            let family = if v6 { 6 } else { 4 };
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| format!("resolving {host}: {e}"))?
                .filter(|a| a.is_ipv6() == v6)
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no IPv{family} address"));
            }
            let mut errors = Vec::new();
            for a in addrs {
                match connect_marked(a, mark).await {
                    Ok(s) => return Ok(s),
                    Err(e) => errors.push(format!("{a}: {e}")),
                }
            }
            Err(errors.join(", "))
        }
    }
}

/// The roots, read from the system bundle at most once per region dial, and only when a
/// node needs them.
struct Roots {
    given: Option<Arc<RootCertStore>>,
    loaded: Option<Result<Arc<RootCertStore>, String>>,
}

impl Roots {
    fn new(given: Option<Arc<RootCertStore>>) -> Self {
        Self {
            given,
            loaded: None,
        }
    }

    fn get(&mut self) -> Result<Arc<RootCertStore>, String> {
        if let Some(r) = &self.given {
            return Ok(r.clone());
        }
        self.loaded
            .get_or_insert_with(|| {
                let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
                load_roots(&bundle_candidates(env)).map(Arc::new)
            })
            .clone()
    }
}

// The system bundle, read as `control-client/src/client/tls.rs` reads it. This is a small
// private copy on purpose: wg-engine must not depend on the control client, and tailcfg,
// which both use, stays free of I/O.

use tailcfg::anchors::SYSTEM_BUNDLES;

/// The most bytes read from a bundle (Mozilla's whole bundle is about 220 KB).
const MAX_BUNDLE: u64 = 8 << 20;

/// `SSL_CERT_FILE` alone when set (as OpenSSL and Go do), else the system paths.
fn bundle_candidates(ssl_cert_file: Option<PathBuf>) -> Vec<PathBuf> {
    match ssl_cert_file {
        Some(p) if !p.as_os_str().is_empty() => vec![p],
        _ => SYSTEM_BUNDLES.iter().map(PathBuf::from).collect(),
    }
}

/// The roots from the first candidate holding at least one usable certificate.
fn load_roots(candidates: &[PathBuf]) -> Result<RootCertStore, String> {
    let mut tried = Vec::new();
    for path in candidates {
        match read_bundle(path) {
            Ok(store) => {
                if !store.is_empty() {
                    return Ok(store);
                }
                tried.push(format!("{} (no certificates)", path.display()));
            }
            Err(e) => tried.push(format!("{} ({e})", path.display())),
        }
    }
    Err(format!(
        "no CA certificates for DERP over TLS: tried {}; install a CA bundle or set \
         SSL_CERT_FILE to a PEM bundle or tailrouter anchor file",
        tried.join(", ")
    ))
}

/// The roots of one bundle: a tailrouter anchor file, which must parse as a whole, or PEM,
/// whose unparsable blocks are skipped.
fn read_bundle(path: &Path) -> std::io::Result<RootCertStore> {
    use std::io::Read as _;
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_BUNDLE)
        .read_to_end(&mut data)?;
    let mut store = RootCertStore::empty();
    if tailcfg::anchors::is_anchor_file(&data) {
        let anchors = tailcfg::anchors::parse(&data)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        store.extend(anchors.into_iter().map(|a| TrustAnchor {
            subject: Der::from(a.subject),
            subject_public_key_info: Der::from(a.spki),
            name_constraints: a.name_constraints.map(Der::from),
        }));
    } else {
        store.add_parsable_certificates(
            CertificateDer::pem_slice_iter(&data).filter_map(Result::ok),
        );
    }
    Ok(store)
}

/// A rustls client configuration for one node: ring, TLS 1.2 and 1.3, no ALPN (as Go's
/// DERP client), our certificate check.
fn tls_config(check: &CertCheck, roots: &mut Roots) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = DerpVerifier::new(check, roots, &provider)?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The server certificate check for one node (see [`CertCheck`]).
#[derive(Debug)]
struct DerpVerifier {
    check: Check,
    algs: WebPkiSupportedAlgorithms,
}

#[derive(Debug)]
enum Check {
    Roots {
        inner: Arc<WebPkiServerVerifier>,
        name: ServerName<'static>,
    },
    Pin {
        sha256: [u8; 32],
        host: Option<ServerName<'static>>,
    },
    Insecure,
}

impl DerpVerifier {
    fn new(
        check: &CertCheck,
        roots: &mut Roots,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, String> {
        let check = match check {
            CertCheck::Roots(name) => {
                let roots = roots.get()?;
                let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| format!("TLS roots: {e}"))?;
                Check::Roots {
                    inner,
                    name: name.clone(),
                }
            }
            CertCheck::Pin { sha256, host } => Check::Pin {
                sha256: *sha256,
                host: host.clone(),
            },
            CertCheck::Insecure => Check::Insecure,
        };
        Ok(Self {
            check,
            algs: provider.signature_verification_algorithms,
        })
    }
}

/// A refusal of ours, carried inside a rustls error.
#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Makes a handshake error readable: rustls shows a refusal of ours (inside
/// `CertificateError::Other`) with `Debug`; this gives its text instead.
pub(crate) fn tls_error(e: std::io::Error) -> std::io::Error {
    let ours = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|r| match r {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => {
                o.0.downcast_ref::<Refused>()
            }
            _ => None,
        })
        .map(|refused| format!("invalid peer certificate: {refused}"));
    let unknown_issuer = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            )
        });
    match ours {
        Some(text) => std::io::Error::new(e.kind(), text),
        None if unknown_issuer => std::io::Error::new(
            e.kind(),
            "invalid peer certificate: UnknownIssuer (its chain does not lead to a trusted root)",
        ),
        None => e,
    }
}

fn refuse(why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(Refused(why)),
    )))
}

/// SHA-256 through rustls's ring provider (its TLS 1.3 AES-128-GCM suite's hash), so that
/// no hashing crate is added for one digest.
fn sha256(data: &[u8]) -> Option<[u8; 32]> {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256.tls13()?;
    <[u8; 32]>::try_from(suite.common.hash_provider.hash(data).as_ref()).ok()
}

/// derper appends a "meta certificate" carrying its DERP key (CN `derpkey<hex>`) to every
/// chain; pinning ignores it, as Go does.
fn is_meta_cert(fields: &cert::Fields<'_>) -> bool {
    fields
        .common_name
        .is_some_and(|cn| cn.starts_with(b"derpkey"))
}

/// Go's `tlsdial.SetConfigExpectedCertHash`.
fn verify_pinned(
    chain: &[&CertificateDer<'_>],
    want: &[u8; 32],
    host: Option<&ServerName<'_>>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let mut saw_good = false;
    for der in chain {
        let Some(fields) = cert::parse(der) else {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ));
        };
        if is_meta_cert(&fields) {
            continue;
        }
        if saw_good {
            return Err(refuse(
                "more than one certificate presented with a sha256-raw: pin".to_owned(),
            ));
        }
        let got = sha256(der).ok_or_else(|| refuse("SHA-256 unavailable".to_owned()))?;
        if got != *want {
            return Err(refuse(format!(
                "certificate SHA-256 {} does not match the pinned {PIN_PREFIX}{}",
                hex::encode(got),
                hex::encode(want)
            )));
        }
        if let Some(host) = host {
            let parsed = rustls::server::ParsedCertificate::try_from(*der)?;
            rustls::client::verify_server_name(&parsed, host)?;
        }
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if now > fields.not_after {
            return Err(refuse(format!(
                "pinned certificate expired {} s ago",
                now - fields.not_after
            )));
        }
        if now < fields.not_before {
            return Err(refuse(format!(
                "pinned certificate is not valid for another {} s; is the clock right?",
                fields.not_before - now
            )));
        }
        saw_good = true;
    }
    if saw_good {
        Ok(())
    } else {
        Err(refuse(
            "the pinned certificate was not presented".to_owned(),
        ))
    }
}

impl ServerCertVerifier for DerpVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.check {
            Check::Roots { inner, name } => {
                inner.verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
            }
            Check::Pin { sha256, host } => {
                let chain: Vec<&CertificateDer<'_>> =
                    std::iter::once(end_entity).chain(intermediates).collect();
                verify_pinned(&chain, sha256, host.as_ref(), now)?;
                Ok(ServerCertVerified::assertion())
            }
            Check::Insecure => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The client configuration for an `https://` URL: roots from `opts`, checked for `host`.
pub(crate) fn url_tls_config(
    host: &ServerName<'static>,
    opts: &DialOptions,
) -> Result<Arc<rustls::ClientConfig>, String> {
    tls_config(
        &CertCheck::Roots(host.clone()),
        &mut Roots::new(opts.tls_roots.clone()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: &str) -> DerpNode {
        serde_json::from_str(json).unwrap()
    }

    fn addr(s: &str) -> Target {
        Target::Addr(s.parse().unwrap())
    }

    fn dns(host: &str, port: u16, v6: bool) -> Target {
        Target::Resolve {
            host: host.to_owned(),
            port,
            v6,
        }
    }

    fn name(s: &str) -> ServerName<'static> {
        ServerName::try_from(s.to_owned()).unwrap()
    }

    #[test]
    fn ports() {
        let n = node(r#"{"HostName":"derp.example"}"#);
        assert_eq!(node_port(&n, false), Ok(443));
        assert_eq!(node_port(&n, true), Ok(3340));
        let n = node(r#"{"HostName":"derp.example","IPv4":"192.0.2.1","DERPPort":8443}"#);
        assert_eq!(node_port(&n, false), Ok(8443));
        assert_eq!(node_port(&n, true), Ok(8443));
        assert_eq!(
            plan_node(&n, true).unwrap().targets[0],
            addr("192.0.2.1:8443")
        );
        for bad in [-1, 65536] {
            let n = node(&format!(r#"{{"HostName":"d.example","DERPPort":{bad}}}"#));
            let e = plan_node(&n, false).unwrap_err();
            assert!(e.contains("is not a port"), "{e}");
        }
    }

    #[test]
    fn addresses_per_family() {
        // No fixed addresses: the name, once per family.
        let p = plan_node(&node(r#"{"HostName":"derp.example"}"#), false).unwrap();
        assert_eq!(
            p.targets,
            vec![
                dns("derp.example", 443, false),
                dns("derp.example", 443, true)
            ]
        );
        // Fixed addresses win over the name.
        let p = plan_node(
            &node(r#"{"HostName":"derp.example","IPv4":"192.0.2.1","IPv6":"2001:db8::1"}"#),
            false,
        )
        .unwrap();
        assert_eq!(
            p.targets,
            vec![addr("192.0.2.1:443"), addr("[2001:db8::1]:443")]
        );
        // "none", garbage and the wrong family turn a family off.
        let p = plan_node(
            &node(r#"{"HostName":"derp.example","IPv4":"none","IPv6":"192.0.2.9"}"#),
            false,
        )
        .unwrap_err();
        assert!(p.contains("both IPv4 and IPv6 are disabled"), "{p}");
        let p = plan_node(
            &node(r#"{"HostName":"derp.example","IPv4":"1.2.3","IPv6":""}"#),
            false,
        )
        .unwrap();
        assert_eq!(p.targets, vec![dns("derp.example", 443, true)]);
        let p = plan_node(
            &node(r#"{"HostName":"derp.example","IPv4":"192.0.2.1","IPv6":"none"}"#),
            true,
        )
        .unwrap();
        assert_eq!(p.targets, vec![addr("192.0.2.1:3340")]);
        // A HostName that is an address serves only its own family.
        let p = plan_node(&node(r#"{"HostName":"2001:db8::7"}"#), false).unwrap();
        assert_eq!(p.targets, vec![addr("[2001:db8::7]:443")]);
        assert_eq!(p.host_header.as_deref(), Some("[2001:db8::7]"));
        let p = plan_node(&node(r#"{"HostName":"192.0.2.7","IPv6":"none"}"#), false).unwrap();
        assert_eq!(p.targets, vec![addr("192.0.2.7:443")]);
        // Nothing to dial at all.
        let e = plan_node(&node(r#"{"IPv4":"none","IPv6":"none"}"#), false).unwrap_err();
        assert!(e.contains("no HostName"), "{e}");
    }

    #[test]
    fn host_header_and_names() {
        let p = plan_node(
            &node(r#"{"HostName":"derp1.example","IPv4":"192.0.2.1","DERPPort":8443}"#),
            false,
        )
        .unwrap();
        // Go's URL is https://HostName/derp: no port in Host even off 443.
        assert_eq!(p.host_header.as_deref(), Some("derp1.example"));
        assert_eq!(
            p.tls,
            Some(TlsPlan {
                server_name: Some(name("derp1.example")),
                check: CertCheck::Roots(name("derp1.example")),
            })
        );
        // Plain HTTP: no TLS at all.
        assert_eq!(
            plan_node(&node(r#"{"HostName":"derp1.example"}"#), true)
                .unwrap()
                .tls,
            None
        );
        // No HostName: the Host header is the address dialed; TLS needs something to check.
        let n = node(r#"{"IPv4":"192.0.2.1","IPv6":"none"}"#);
        assert_eq!(plan_node(&n, true).unwrap().host_header, None);
        let e = plan_node(&n, false).unwrap_err();
        assert!(e.contains("no HostName to check"), "{e}");
        let e = plan_node(&node(r#"{"HostName":"bad name!"}"#), false).unwrap_err();
        assert!(e.contains("not a valid TLS server name"), "{e}");
    }

    #[test]
    fn cert_checks() {
        let plan = |json: &str| plan_node(&node(json), false).map(|p| p.tls);
        // CertName equal to HostName changes nothing.
        assert_eq!(
            plan(r#"{"HostName":"a.example","CertName":"a.example"}"#).unwrap(),
            Some(TlsPlan {
                server_name: Some(name("a.example")),
                check: CertCheck::Roots(name("a.example")),
            })
        );
        // Another CertName: SNI stays HostName, the chain is checked for CertName, even
        // with InsecureForTests (Go's VerifyPeerCertificate still runs).
        let want = Some(TlsPlan {
            server_name: Some(name("a.example")),
            check: CertCheck::Roots(name("b.example")),
        });
        assert_eq!(
            plan(r#"{"HostName":"a.example","CertName":"b.example"}"#).unwrap(),
            want
        );
        assert_eq!(
            plan(r#"{"HostName":"a.example","CertName":"b.example","InsecureForTests":true}"#)
                .unwrap(),
            want
        );
        // No HostName: CertName is also the SNI.
        assert_eq!(
            plan(r#"{"IPv4":"192.0.2.1","CertName":"b.example"}"#).unwrap(),
            Some(TlsPlan {
                server_name: Some(name("b.example")),
                check: CertCheck::Roots(name("b.example")),
            })
        );
        // Insecure.
        assert_eq!(
            plan(r#"{"HostName":"a.example","InsecureForTests":true}"#).unwrap(),
            Some(TlsPlan {
                server_name: Some(name("a.example")),
                check: CertCheck::Insecure,
            })
        );
        // Pins: the name is checked only when it is a DNS name.
        let hex64 = "0f".repeat(32);
        assert_eq!(
            plan(&format!(
                r#"{{"HostName":"a.example","CertName":"sha256-raw:{hex64}"}}"#
            ))
            .unwrap(),
            Some(TlsPlan {
                server_name: Some(name("a.example")),
                check: CertCheck::Pin {
                    sha256: [0x0f; 32],
                    host: Some(name("a.example")),
                },
            })
        );
        assert_eq!(
            plan(&format!(
                r#"{{"HostName":"192.0.2.1","CertName":"sha256-raw:{hex64}"}}"#
            ))
            .unwrap(),
            Some(TlsPlan {
                server_name: Some(name("192.0.2.1")),
                check: CertCheck::Pin {
                    sha256: [0x0f; 32],
                    host: None,
                },
            })
        );
        assert_eq!(
            plan(&format!(
                r#"{{"IPv4":"192.0.2.1","CertName":"sha256-raw:{hex64}"}}"#
            ))
            .unwrap(),
            Some(TlsPlan {
                server_name: None,
                check: CertCheck::Pin {
                    sha256: [0x0f; 32],
                    host: None,
                },
            })
        );
        for bad in ["sha256-raw:", "sha256-raw:abc", "sha256-raw:zz"] {
            let e = plan(&format!(r#"{{"HostName":"a.example","CertName":"{bad}"}}"#)).unwrap_err();
            assert!(e.contains("not 64 hex digits"), "{e}");
        }
    }

    #[test]
    fn roots_from_ssl_cert_file_or_system() {
        assert_eq!(
            bundle_candidates(Some("/x.pem".into())),
            vec![PathBuf::from("/x.pem")]
        );
        let sys: Vec<PathBuf> = SYSTEM_BUNDLES.iter().map(PathBuf::from).collect();
        assert_eq!(bundle_candidates(None), sys);
        assert_eq!(bundle_candidates(Some(PathBuf::new())), sys);
        let e = load_roots(&[PathBuf::from("/nonexistent/tailrouter-ca.pem")]).unwrap_err();
        assert!(e.contains("/nonexistent/tailrouter-ca.pem ("), "{e}");
        assert!(e.contains("SSL_CERT_FILE"), "{e}");
        let pem = std::env::temp_dir().join(format!("trderp-roots-{}.pem", std::process::id()));
        std::fs::write(&pem, include_str!("testdata/derpkey-cn.pem")).unwrap();
        let store = load_roots(&[PathBuf::from("/nonexistent"), pem.clone()]).unwrap();
        assert_eq!(store.len(), 1);
        let _ = std::fs::remove_file(pem);
    }

    #[test]
    fn roots_from_an_anchor_file() {
        use rustls::pki_types::pem::PemObject as _;
        use tailcfg::anchors::{Anchor, MAGIC, encode};
        let cert =
            CertificateDer::from_pem_slice(include_bytes!("testdata/derpkey-cn.pem")).unwrap();
        let mut from_pem = RootCertStore::empty();
        from_pem.add(cert).unwrap();
        let ta = &from_pem.roots[0];
        let anchor = Anchor {
            subject: ta.subject.to_vec(),
            spki: ta.subject_public_key_info.to_vec(),
            name_constraints: ta.name_constraints.as_ref().map(|n| n.to_vec()),
        };
        let file = encode(&[anchor]).unwrap();
        let path =
            std::env::temp_dir().join(format!("trderp-roots-{}.anchors", std::process::id()));
        std::fs::write(&path, &file).unwrap();
        let store = load_roots(&[PathBuf::from("/nonexistent"), path.clone()]).unwrap();
        assert_eq!(store.len(), 1);
        assert_eq!(store.roots, from_pem.roots);

        // A damaged anchor file is this candidate's error, not an empty PEM bundle.
        std::fs::write(&path, &file[..file.len() - 2]).unwrap();
        let e = load_roots(std::slice::from_ref(&path)).unwrap_err();
        assert!(e.contains("anchor file truncated"), "{e}");
        std::fs::write(&path, MAGIC).unwrap();
        let e = load_roots(std::slice::from_ref(&path)).unwrap_err();
        assert!(e.contains("(no certificates)"), "{e}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn sha256_matches_the_standard_vector() {
        assert_eq!(
            hex::encode(sha256(b"abc").unwrap()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn pinning_rules() {
        use rustls::pki_types::pem::PemObject as _;
        let pem = |b: &[u8]| CertificateDer::from_pem_slice(b).unwrap();
        // A self-signed leaf for pin.tailrouter.test (openssl, valid 2026-12-01 11:07:41Z
        // to 2036-11-28 11:07:41Z) and a certificate with derper's meta-certificate CN.
        let leaf = pem(include_bytes!("testdata/pinned-leaf.pem"));
        let meta = pem(include_bytes!("testdata/derpkey-cn.pem"));
        let pin: [u8; 32] = {
            let mut p = [0u8; 32];
            hex::decode_to_slice(
                "7f23bda2a88d87bdb17e6f957a9954b9cf14c05094237d3273eb1bb8394d50d5",
                &mut p,
            )
            .unwrap();
            p
        };
        assert_eq!(sha256(&leaf), Some(pin));
        let at = |secs: u64| UnixTime::since_unix_epoch(Duration::from_secs(secs));
        let during = at(1_900_000_000);
        let host = name("pin.tailrouter.test");
        // The leaf, then the meta certificate (skipped), as derper sends them.
        verify_pinned(&[&leaf, &meta], &pin, Some(&host), during).unwrap();
        verify_pinned(&[&leaf], &pin, None, during).unwrap();
        let err = |chain: &[&CertificateDer<'_>], host: Option<&ServerName<'_>>, now| {
            verify_pinned(chain, &pin, host, now)
                .unwrap_err()
                .to_string()
        };
        let e = err(&[&leaf], Some(&name("other.tailrouter.test")), during);
        assert!(e.contains("not valid for name"), "{e}");
        let e = err(&[&leaf], None, at(1_796_123_261 - 1));
        assert!(e.contains("not valid for another 1 s"), "{e}");
        let e = err(&[&leaf], None, at(2_111_483_261 + 5));
        assert!(e.contains("expired 5 s ago"), "{e}");
        let e = err(&[&leaf, &leaf], None, during);
        assert!(e.contains("more than one certificate"), "{e}");
        let e = verify_pinned(&[&leaf], &[0; 32], None, during)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not match the pinned sha256-raw:0000"),
            "{e}"
        );
        // Only a meta certificate: the pinned one was not presented.
        let e = err(&[&meta], None, during);
        assert!(e.contains("not presented"), "{e}");
        // An empty chain and garbage are refused, without panicking.
        assert!(verify_pinned(&[], &pin, None, during).is_err());
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(verify_pinned(&[&junk], &pin, None, during).is_err());
    }

    #[test]
    fn options() {
        let o = DialOptions::new();
        assert!(o.tls_roots.is_none() && !o.use_http);
        let o = DialOptions::new()
            .with_use_http(true)
            .with_tls_roots(Arc::new(RootCertStore::empty()));
        assert!(o.use_http && o.tls_roots.is_some());
    }

    /// Plain HTTP to a node named `localhost` with no fixed IPv4: the name is resolved, the
    /// port is the map's, `Host` is the name, and `Ideal-Node` names the region's first
    /// node (a STUN-only one, skipped; then one that refuses; then ours).
    #[tokio::test]
    async fn region_dial_resolves_names_and_reports_every_node() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // A port nothing listens on, for the refusing node.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let region: DerpRegion = serde_json::from_str(&format!(
            r#"{{"RegionID":901,"RegionCode":"t","Nodes":[
                {{"Name":"901s","HostName":"stun.invalid","STUNOnly":true}},
                {{"Name":"901a","HostName":"127.0.0.1","IPv6":"none","DERPPort":{closed}}},
                {{"Name":"901b","HostName":"localhost","IPv6":"none","DERPPort":{port}}}
            ]}}"#
        ))
        .unwrap();
        let opts = DialOptions::new().with_use_http(true);
        let e = connect_region(
            &region,
            NodePrivate::from_bytes([1; 32]),
            Config::default(),
            &opts,
        )
        .await
        .unwrap_err();
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /derp HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nHost: localhost\r\n"), "{head}");
        assert!(head.contains("\r\nIdeal-Node: 901s\r\n"), "{head}");
        let text = e.to_string();
        assert!(text.starts_with("DERP region 901 (t): "), "{text}");
        assert!(!text.contains("901s"), "STUN-only node tried: {text}");
        assert!(
            text.contains(&format!(
                "901a (127.0.0.1:{closed}): DERP I/O with 127.0.0.1:{closed}"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("901b (localhost:{port}): DERP upgrade with 127.0.0.1:{port} failed: DERP upgrade refused with HTTP status 426")),
            "{text}"
        );
        match e {
            ClientError::Region { failures, .. } => assert_eq!(failures.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn region_without_derp_nodes() {
        let region: DerpRegion = serde_json::from_str(
            r#"{"RegionID":902,"RegionCode":"s","Nodes":[{"Name":"s","STUNOnly":true}]}"#,
        )
        .unwrap();
        let e = connect_region(
            &region,
            NodePrivate::from_bytes([1; 32]),
            Config::default(),
            &DialOptions::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "DERP region 902 (s): no DERP node (only STUN-only ones, or none)"
        );
    }
}

//! DERP over TLS, against Tailscale's real `derper` (v1.98.5, built by
//! `interop/install-peers.sh`) and against rustls servers limited to TLS 1.2 or 1.3.
//!
//! derper runs with `-certmode=manual` and a certificate made here with `openssl` (a test CA
//! and a leaf for `derp.tailrouter.test` and `alt.tailrouter.test`), in a network namespace
//! of its own whose default routes are black holes: nothing reaches out. Our clients run on a
//! thread moved into that namespace (setns(2)) and dial the region from a DERP map, as
//! magicsock will.
//!
//! Needs root, `ip`, `openssl` and derper: without them the tests fail, saying what is
//! missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tailcfg::derp::DerpRegion;
use tailcfg::key::{NodePrivate, NodePublic};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wg_engine::derp::client::{Client, ClientError};
use wg_engine::derp::dial::{DialOptions, connect_region};
use wg_engine::derp::http::UpgradeError;
use wg_engine::derp::{Config, Event};

const PEERS_DIR: &str = ".cache/tailrouter/peers";
const DERPER_DEFAULT: &str = "derper-v1.98.5/bin/derper";
const NAME: &str = "derp.tailrouter.test";
const ALT_NAME: &str = "alt.tailrouter.test";
/// derper's TLS port inside its namespace.
const PORT: u16 = 8443;
/// A port nothing listens on in the namespace.
const CLOSED_PORT: u16 = 8444;

/// Where derper is: `$DERPER_BIN`, else `DERPER_BIN` in the peers cache's `peers.env`, else
/// the default path in that cache (as `tests/derper.rs`).
fn derper_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DERPER_BIN") {
        return PathBuf::from(p);
    }
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let cache = home.join(PEERS_DIR);
    if let Ok(env) = std::fs::read_to_string(cache.join("peers.env")) {
        for line in env.lines() {
            if let Some(v) = line.trim().strip_prefix("DERPER_BIN=") {
                return PathBuf::from(v.trim_matches('"'));
            }
        }
    }
    cache.join(DERPER_DEFAULT)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn require_tools(tools: &[&str]) {
    for tool in tools {
        assert!(
            on_path(tool),
            "{tool} is missing: apt-get install -y openssl iproute2"
        );
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!(
            "{cmd} {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("cannot run {cmd}: {e}"),
    }
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tailrouter-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A test PKI made with openssl: a CA, a leaf signed by it, and an unrelated CA.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// `names`: the leaf's DNS names; the first is its CN and its file name, as derper's
    /// manual mode wants it (`<hostname>.crt`, `<hostname>.key`).
    fn new(dir: &Path, names: &[&str]) -> Pki {
        let p = |f: &str| dir.join(f).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let mut args = vec!["req", "-x509"];
            args.extend_from_slice(&ec);
            let (key, crt, subj) = (
                p(&format!("{ca}.key")),
                p(&format!("{ca}.crt")),
                format!("/CN=tailrouter test {ca}"),
            );
            args.extend_from_slice(&[
                "-keyout",
                &key,
                "-out",
                &crt,
                "-subj",
                &subj,
                "-days",
                "2",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ]);
            run("openssl", &args);
        }
        let first = names[0];
        let (key, csr, crt) = (
            p(&format!("{first}.key")),
            p("leaf.csr"),
            p(&format!("{first}.crt")),
        );
        let subj = format!("/CN={first}");
        let mut args = vec!["req", "-new"];
        args.extend_from_slice(&ec);
        args.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", &subj]);
        run("openssl", &args);
        let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            dir.join("leaf.ext"),
            format!(
                "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\n\
                 extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
                sans.join(",")
            ),
        )
        .unwrap();
        let (ca_crt, ca_key, serial, ext) = (p("ca.crt"), p("ca.key"), p("ca.srl"), p("leaf.ext"));
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-CAserial",
                &serial,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        let der = p("leaf.der");
        run(
            "openssl",
            &["x509", "-in", &crt, "-outform", "DER", "-out", &der],
        );
        std::fs::write(
            dir.join("leaf.sha256"),
            run("openssl", &["dgst", "-sha256", "-r", &der]),
        )
        .unwrap();
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn roots(&self, ca: &str) -> Arc<RootCertStore> {
        let mut store = RootCertStore::empty();
        let pem = self.dir.join(format!("{ca}.crt"));
        store
            .add(CertificateDer::from_pem_file(&pem).unwrap())
            .unwrap();
        Arc::new(store)
    }

    /// The leaf's SHA-256 over its DER, in hex, as `openssl dgst` computed it.
    fn leaf_sha256(&self) -> String {
        let out = std::fs::read_to_string(self.dir.join("leaf.sha256")).unwrap();
        out.split_whitespace().next().unwrap().to_owned()
    }

    fn leaf(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let certs = CertificateDer::pem_file_iter(self.dir.join(format!("{name}.crt")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.dir.join(format!("{name}.key"))).unwrap();
        (certs, key)
    }
}

/// A network namespace with lo up and black-hole default routes, and derper in it; all gone
/// on drop (derper's log printed if the test panicked).
struct DerperNs {
    ns: String,
    child: Option<Child>,
    dir: PathBuf,
}

impl DerperNs {
    /// `tag` tells apart the namespaces of tests running at once.
    fn start(tag: &str, pki: &Pki, dir: &Path) -> DerperNs {
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0);
        assert!(
            matches!(root, Ok(true)),
            "the derper TLS test needs root (it runs derper in a network namespace)"
        );
        require_tools(&["ip", "openssl"]);
        let bin = derper_bin();
        assert!(
            bin.is_file(),
            "\n\nTailscale's derper is missing at {}.\n\
             Build the interop peers first (needs Go; about 10 minutes the first time):\n\
             \n    interop/install-peers.sh\n\n\
             or point DERPER_BIN at a derper v1.98.5 binary.\n",
            bin.display()
        );
        let ns = format!("trdtls-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run("ip", &["netns", "add", &ns]);
        let mut d = DerperNs {
            ns: ns.clone(),
            child: None,
            dir: dir.to_path_buf(),
        };
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        run("ip", &["-n", &ns, "route", "add", "blackhole", "default"]);
        run(
            "ip",
            &["-n", &ns, "-6", "route", "add", "blackhole", "default"],
        );
        let log = File::create(dir.join("derper.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&bin)
            .arg(format!("-a=:{PORT}"))
            .arg("-certmode=manual")
            .arg(format!("-certdir={}", pki.dir.display()))
            .arg(format!("-hostname={NAME}"))
            .arg("-http-port=-1")
            .arg("-stun=false")
            .arg(format!("-c={}", dir.join("derper.key").display()))
            .arg("-mesh-psk-file=")
            .arg("-home=blank")
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        d.child = Some(child);
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("derper exited early ({status}):\n{}", self.log());
            }
            let ns = self.ns.clone();
            let up = in_netns(&ns, || async {
                tokio::net::TcpStream::connect(("127.0.0.1", PORT))
                    .await
                    .is_ok()
            });
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("derper did not listen on :{PORT} in 15 s:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("derper.log")).unwrap_or_default()
    }

    fn server_key(&self) -> NodePublic {
        let text = std::fs::read_to_string(self.dir.join("derper.key")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        NodePrivate::from_text(v["PrivateKey"].as_str().unwrap())
            .unwrap()
            .public()
    }
}

impl Drop for DerperNs {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- derper log ---\n{}", self.log());
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn enter_netns(ns: &str) -> std::io::Result<()> {
    let f = File::open(format!("/var/run/netns/{ns}"))?;
    #[allow(unsafe_code)]
    // SAFETY: setns(2) with a namespace fd held open for the call; it changes only the calling
    // thread's network namespace and touches no memory of ours.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a current-thread runtime on a thread inside `ns`; a panic there is re-raised.
fn in_netns<F, Fut>(ns: &str, f: F) -> Fut::Output
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future,
    Fut::Output: Send + 'static,
{
    let ns = ns.to_owned();
    let t = std::thread::spawn(move || {
        enter_netns(&ns).unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    });
    match t.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn region(nodes: &str) -> DerpRegion {
    serde_json::from_str(&format!(
        r#"{{"RegionID":900,"RegionCode":"tls","RegionName":"TLS test","Nodes":[{nodes}]}}"#
    ))
    .unwrap()
}

/// The one good node, with `extra` JSON fields.
fn node(name: &str, extra: &str) -> String {
    format!(
        r#"{{"Name":"{name}","RegionID":900,"HostName":"{NAME}","IPv4":"127.0.0.1",
            "IPv6":"::1","DERPPort":{PORT}{extra}}}"#
    )
}

async fn next_event(c: &mut Client, what: &str) -> Event {
    let r = tokio::time::timeout(Duration::from_secs(10), c.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    r.unwrap_or_else(|e| panic!("client failed while waiting for {what}: {e}"))
}

async fn connected(c: &mut Client) -> NodePublic {
    match next_event(c, "Connected").await {
        Event::Connected { server_key, info } => {
            assert_eq!(info.version, 2);
            server_key
        }
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// Connects to `region` and waits for ServerInfo; returns the server's key.
async fn accepted(region: &DerpRegion, opts: &DialOptions) -> Result<NodePublic, ClientError> {
    let mut c = connect_region(region, NodePrivate::generate(), Config::default(), opts).await?;
    Ok(connected(&mut c).await)
}

/// The one failure of a single-node region: a TLS error naming the node.
fn tls_refusal(r: Result<NodePublic, ClientError>, node: &str) -> String {
    let e = match r {
        Ok(k) => panic!("node {node} was accepted (server key {k:?})"),
        Err(e) => e,
    };
    let text = e.to_string();
    eprintln!("refused as wanted: {text}");
    match &e {
        ClientError::Region { failures, .. } => {
            assert_eq!(failures.len(), 1, "{text}");
            assert!(
                matches!(failures[0].error, ClientError::Tls { .. }),
                "{node}: not a TLS error: {text}"
            );
        }
        other => panic!("{node}: expected a region error, got {other:?}"),
    }
    assert!(
        text.starts_with(&format!(
            "DERP region 900 (tls): {node} ({NAME}:{PORT}): DERP TLS with "
        )),
        "{text}"
    );
    text
}

#[test]
fn tls_region_relays_between_two_clients() {
    let dir = scratch_dir("derper-tls");
    let pki = Pki::new(&dir, &[NAME, ALT_NAME]);
    let derper = DerperNs::start("relay", &pki, &dir);
    let server_key = derper.server_key();
    let roots = pki.roots("ca");
    in_netns(&derper.ns.clone(), move || async move {
        // A STUN-only node (skipped), a node that refuses TCP, then derper.
        let region = region(&format!(
            r#"{{"Name":"900s","RegionID":900,"HostName":"stun.{NAME}","STUNOnly":true}},
               {{"Name":"900a","RegionID":900,"HostName":"{NAME}","IPv4":"127.0.0.1",
                 "IPv6":"none","DERPPort":{CLOSED_PORT}}},
               {}"#,
            node("900b", "")
        ));
        let opts = DialOptions::new().with_tls_roots(roots);
        let run = async {
            let ka = NodePrivate::generate();
            let kb = NodePrivate::generate();
            let (pa, pb) = (ka.public(), kb.public());
            let mut a = connect_region(&region, ka, Config::default(), &opts)
                .await
                .unwrap();
            let mut b = connect_region(&region, kb, Config::default(), &opts)
                .await
                .unwrap();
            assert_eq!(connected(&mut a).await, server_key);
            assert_eq!(connected(&mut b).await, server_key);
            a.note_preferred(true).await.unwrap();

            let payload: Vec<u8> = (0..1200u32).map(|i| (i * 13) as u8).collect();
            a.send(pb, payload.clone()).await.unwrap();
            assert_eq!(
                next_event(&mut b, "A's packet").await,
                Event::Packet {
                    src: pa,
                    data: payload
                }
            );
            b.send(pa, b"reply over TLS".to_vec()).await.unwrap();
            assert_eq!(
                next_event(&mut a, "B's reply").await,
                Event::Packet {
                    src: pb,
                    data: b"reply over TLS".to_vec()
                }
            );
            a.ping(*b"tls-ping").await.unwrap();
            assert_eq!(next_event(&mut a, "Pong").await, Event::Pong(*b"tls-ping"));
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the derper TLS relay test took more than 60 s");
    });
}

#[test]
fn tls_certificate_checks_against_real_derper() {
    let dir = scratch_dir("derper-tls-checks");
    let pki = Pki::new(&dir, &[NAME, ALT_NAME]);
    let derper = DerperNs::start("checks", &pki, &dir);
    let server_key = derper.server_key();
    let (ca, other_ca) = (pki.roots("ca"), pki.roots("other-ca"));
    let pin = pki.leaf_sha256();
    assert_eq!(pin.len(), 64, "{pin}");
    in_netns(&derper.ns.clone(), move || async move {
        let trusted = DialOptions::new().with_tls_roots(ca);
        let untrusted = DialOptions::new().with_tls_roots(other_ca);
        let run = async {
            // Accepted: another name the certificate holds, as CertName.
            let r = region(&node("900c", &format!(r#","CertName":"{ALT_NAME}""#)));
            assert_eq!(accepted(&r, &trusted).await.unwrap(), server_key);
            // Accepted: the right pin, whatever the roots (derper's meta certificate, which
            // follows the leaf, is skipped).
            let r = region(&node("900p", &format!(r#","CertName":"sha256-raw:{pin}""#)));
            assert_eq!(accepted(&r, &untrusted).await.unwrap(), server_key);
            // Accepted: InsecureForTests, whatever the roots.
            let r = region(&node("900i", r#","InsecureForTests":true"#));
            assert_eq!(accepted(&r, &untrusted).await.unwrap(), server_key);

            // Refused: a CA we do not trust.
            let text = tls_refusal(
                accepted(&region(&node("900u", "")), &untrusted).await,
                "900u",
            );
            assert!(
                text.contains("invalid peer certificate: UnknownIssuer"),
                "{text}"
            );
            // Refused: a CertName the certificate does not hold.
            let r = region(&node("900n", r#","CertName":"wrong.tailrouter.test""#));
            let text = tls_refusal(accepted(&r, &trusted).await, "900n");
            assert!(
                text.contains(r#"certificate not valid for name "wrong.tailrouter.test""#),
                "{text}"
            );
            // Refused: the wrong pin, even with trusted roots.
            let wrong = "00".repeat(32);
            let r = region(&node(
                "900w",
                &format!(r#","CertName":"sha256-raw:{wrong}""#),
            ));
            let text = tls_refusal(accepted(&r, &trusted).await, "900w");
            assert!(
                text.ends_with(&format!(
                    "invalid peer certificate: certificate SHA-256 {pin} does not match the \
                     pinned sha256-raw:{wrong}"
                )),
                "{text}"
            );
            // Refused: InsecureForTests does not override a CertName check (as in Go).
            let r = region(&node(
                "900x",
                r#","CertName":"wrong.tailrouter.test","InsecureForTests":true"#,
            ));
            tls_refusal(accepted(&r, &trusted).await, "900x");

            // After all that, derper still serves: the good node behind a refusing one.
            let r = region(&format!(
                "{},{}",
                node("900w", &format!(r#","CertName":"sha256-raw:{wrong}""#)),
                node("900b", "")
            ));
            assert_eq!(accepted(&r, &trusted).await.unwrap(), server_key);
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the derper TLS checks took more than 60 s");
    });
}

/// A rustls server limited to one TLS version, with the test leaf for `localhost`, that
/// answers the DERP upgrade with 426: reaching the upgrade proves the handshake.
async fn one_version_server(
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
) -> (u16, tokio::task::JoinHandle<rustls::ProtocolVersion>) {
    let (certs, key) = pki.leaf("localhost");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "client went away before its request");
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("GET /derp HTTP/1.1\r\n"), "{head}");
        tls.write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        tls.flush().await.unwrap();
        tls.get_ref().1.protocol_version().unwrap()
    });
    (port, task)
}

#[tokio::test]
async fn tls12_and_tls13_servers_are_both_accepted() {
    require_tools(&["openssl"]);
    let dir = scratch_dir("derp-tls-versions");
    let pki = Pki::new(&dir, &["localhost"]);
    let opts = DialOptions::new().with_tls_roots(pki.roots("ca"));
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        // Through the DERP map (HostName resolved through DNS: localhost)...
        let (port, server) = one_version_server(&pki, version).await;
        let r = region(&format!(
            r#"{{"Name":"v","HostName":"localhost","IPv6":"none","DERPPort":{port}}}"#
        ));
        let e = connect_region(&r, NodePrivate::generate(), Config::default(), &opts)
            .await
            .unwrap_err();
        let ClientError::Region { failures, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(
            matches!(
                failures[0].error,
                ClientError::Upgrade {
                    source: UpgradeError::Status { status: 426 },
                    ..
                }
            ),
            "{version:?}: {e}"
        );
        assert_eq!(server.await.unwrap(), want);

        // ...and through an https:// URL.
        let (port, server) = one_version_server(&pki, version).await;
        let e = Client::connect_with(
            &format!("https://localhost:{port}/derp"),
            NodePrivate::generate(),
            Config::default(),
            &opts,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Upgrade {
                    source: UpgradeError::Status { status: 426 },
                    ..
                }
            ),
            "{version:?}: {e}"
        );
        assert_eq!(server.await.unwrap(), want);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

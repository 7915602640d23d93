//! Interop with a real headscale on loopback: register with a pre-auth key and receive the
//! first full network map; a bad key gives a clear error; the same over TLS with a private CA
//! trusted through `ConnectOptions::tls_roots`, and a clear TLS error for a CA that is not trusted.
//!
//! Needs a headscale binary: `$TAILROUTER_HEADSCALE`, else the newest
//! `$HOME/.cache/tailrouter/peers/headscale-*/bin/headscale` (`interop/install-peers.sh`
//! puts it there). Without one the tests fail and say how to get it; they never skip.
//! Each test starts its own headscale on free loopback ports, bounds itself in time, and
//! kills headscale when it ends, also on panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use control_client::{ConnectOptions, ControlClient, Error, NetworkMap};
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tailcfg::key::{MachinePrivate, NodePrivate};
use tailcfg::{Hostinfo, IpPrefix, MapRequest, NetInfo, RegisterAuth, RegisterRequest};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const REGION: i32 = 999;

fn find_headscale() -> PathBuf {
    if let Some(p) = std::env::var_os("TAILROUTER_HEADSCALE") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "TAILROUTER_HEADSCALE={} is not a file",
            p.display()
        );
        return p;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let dir = home.join(".cache/tailrouter/peers");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("headscale-"))
        .map(|e| e.path().join("bin/headscale"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    match found.pop() {
        Some(p) => p,
        None => panic!(
            "\n\nheadscale not found: this interop test needs a real headscale and does not skip.\n\
             Install it with `interop/install-peers.sh`, or by hand:\n  \
             GOBIN=$HOME/.cache/tailrouter/peers/headscale-v0.29.3/bin CGO_ENABLED=0 \\\n    \
             go install github.com/juanfont/headscale/cmd/headscale@v0.29.3\n\
             or point TAILROUTER_HEADSCALE at a headscale binary. Looked in {}\n",
            dir.display()
        ),
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running headscale in its own temporary directory; killed and cleaned up on drop.
struct Headscale {
    bin: PathBuf,
    dir: PathBuf,
    child: Child,
    url: String,
    port: u16,
    tls: bool,
}

impl Headscale {
    fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts headscale serving TLS with this certificate and key (PEM files) when given.
    fn start_with(tls: Option<(&Path, &Path)>) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let bin = find_headscale();
        let dir = std::env::temp_dir().join(format!(
            "trhs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_tcp_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let d = dir.display();
        let tls_config = match tls {
            Some((cert, key)) => format!(
                "tls_cert_path: {}\ntls_key_path: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let config = format!(
            r#"{tls_config}server_url: {url}
listen_addr: 127.0.0.1:{port}
metrics_listen_addr: 127.0.0.1:{metrics}
grpc_listen_addr: 127.0.0.1:{grpc}
grpc_allow_insecure: false
disable_check_updates: true
noise:
  private_key_path: {d}/noise_private.key
prefixes:
  v4: 100.64.0.0/10
  v6: fd7a:115c:a1e0::/48
  allocation: sequential
derp:
  server:
    enabled: true
    region_id: {REGION}
    region_code: trt
    region_name: tailrouter test
    verify_clients: true
    stun_listen_addr: 127.0.0.1:{stun}
    private_key_path: {d}/derp_server_private.key
    automatically_add_embedded_derp_region: true
    ipv4: 127.0.0.1
  urls: []
  paths: []
  auto_update_enabled: false
  update_frequency: 24h
database:
  type: sqlite
  sqlite:
    path: {d}/db.sqlite
    write_ahead_log: true
log:
  level: info
  format: text
policy:
  mode: file
  path: ""
dns:
  magic_dns: true
  base_domain: trt.test
  override_local_dns: false
  nameservers:
    global: []
    split: {{}}
  search_domains: []
  extra_records: []
unix_socket: {d}/hs.sock
unix_socket_permission: "0770"
logtail:
  enabled: false
taildrop:
  enabled: false
"#,
            metrics = free_tcp_port(),
            grpc = free_tcp_port(),
            stun = free_udp_port(),
        );
        std::fs::write(dir.join("config.yaml"), config).unwrap();
        let log = std::fs::File::create(dir.join("headscale.log")).unwrap();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(dir.join("config.yaml"))
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut hs = Self {
            bin,
            dir,
            child,
            url,
            port,
            tls: tls.is_some(),
        };
        hs.wait_healthy(Duration::from_secs(30));
        hs
    }

    fn wait_healthy(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "headscale exited ({status}) before it was healthy:\n{}",
                    self.log()
                );
            }
            if self.health_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "headscale not healthy in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn health_ok(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls {
            // The listener is up; the TLS client under test is what checks the rest.
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("headscale.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs a headscale CLI command (JSON output), bounded in time.
    fn cli(&self, args: &[&str]) -> serde_json::Value {
        let stdout = self.cli_text(args);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("headscale {args:?}: {e}: {stdout}"))
    }

    /// Runs a headscale CLI command, bounded in time; its standard output.
    fn cli_text(&self, args: &[&str]) -> String {
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.join("config.yaml"))
            .args(args)
            .args(["-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("headscale {args:?} timed out");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "headscale {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.into_owned()
    }

    fn user_and_key(&self, name: &str) -> String {
        self.user_and_key_with(name, &[])
    }

    fn user_and_key_with(&self, name: &str, extra: &[&str]) -> String {
        let user = self.cli(&["users", "create", name]);
        let id = user["id"]
            .as_u64()
            .map(|i| i.to_string())
            .or_else(|| user["id"].as_str().map(String::from));
        let id = id.unwrap_or_else(|| panic!("no user id in {user}"));
        let mut args = vec!["preauthkeys", "create", "--user", &id, "--expiration", "1h"];
        args.extend_from_slice(extra);
        let key = self.cli(&args);
        key["key"]
            .as_str()
            .unwrap_or_else(|| panic!("no key in {key}"))
            .to_owned()
    }
}

impl Drop for Headscale {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- headscale log (last lines) ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hostinfo() -> Hostinfo {
    let mut log_id = [0u8; 32];
    log_id.copy_from_slice(NodePrivate::generate().as_bytes());
    let mut ni = NetInfo::default();
    ni.preferred_derp = REGION;
    let mut hi = Hostinfo::default();
    hi.ipn_version = format!("{}-tailrouter", env!("CARGO_PKG_VERSION"));
    hi.os = "linux".into();
    hi.hostname = "tailrouter-test".into();
    hi.backend_log_id = hex::encode(log_id);
    hi.go_arch = "amd64".into();
    hi.net_info = Some(ni);
    hi
}

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("interop test took too long")
}

fn under(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_preauth_key_and_gets_the_netmap() {
    let hs = Headscale::start();
    eprintln!("headscale started at {} ({})", hs.url, under(&hs.bin));
    let auth_key = hs.user_and_key("tailrouter");
    let machine = MachinePrivate::generate();
    let node = NodePrivate::generate();

    bounded(async {
        let client = ControlClient::connect(&hs.url, &machine).await.unwrap();
        assert!(
            client.early_noise().is_some(),
            "headscale always sends the early payload"
        );

        let mut reg = RegisterRequest::default();
        reg.node_key = node.public();
        reg.hostinfo = Some(hostinfo());
        reg.auth = Some(RegisterAuth::with_auth_key(&auth_key));
        let answer = client.register(reg).await.unwrap();
        assert!(answer.machine_authorized, "{answer:?}");
        assert!(answer.auth_url.is_empty());

        let disco = tailcfg::key::DiscoPrivate::generate().public();
        let mut req = MapRequest::default();
        req.node_key = node.public();
        req.disco_key = disco;
        req.stream = true;
        req.keep_alive = true;
        req.compress = "zstd".into();
        req.hostinfo = Some(hostinfo());
        let mut stream = client.map_stream(req).await.unwrap();
        let mut nm = NetworkMap::new();
        let first = loop {
            let raw = stream.next_json().await.expect("map stream ended").unwrap();
            if let Some(path) = std::env::var_os("TAILROUTER_DUMP_MAP") {
                std::fs::write(path, &raw).unwrap();
            }
            let m: tailcfg::MapResponse = serde_json::from_slice(&raw).unwrap();
            if !m.keep_alive {
                break m;
            }
        };
        nm.apply(first).unwrap();

        let me = nm.self_node.as_ref().unwrap();
        assert_eq!(me.key, node.public());
        assert_eq!(me.machine, machine.public());
        let cgnat: IpPrefix = "100.64.0.0/10".parse().unwrap();
        let v4: Vec<IpAddr> = me
            .addresses
            .iter()
            .map(|p| p.addr())
            .filter(IpAddr::is_ipv4)
            .collect();
        assert!(!v4.is_empty(), "no IPv4 address: {:?}", me.addresses);
        assert!(v4.iter().all(|a| cgnat.contains(*a)), "{:?}", me.addresses);
        assert_eq!(
            me.home_derp, REGION,
            "headscale copies NetInfo.PreferredDERP"
        );
        let dm = nm.derp_map.as_ref().expect("no DERP map");
        let region = dm.region(REGION).expect("local DERP region missing");
        assert!(!region.nodes.is_empty());
        assert_eq!(
            dm.regions.as_ref().unwrap().len(),
            1,
            "only the local region"
        );
        assert!(nm.has_packet_filter);
        assert!(nm.peers.is_empty());
        assert_eq!(nm.magic_dns_suffix(), Some("trt.test"));

        // A lite update with an endpoint, while the stream stays open.
        let mut lite = MapRequest::default();
        lite.node_key = node.public();
        lite.disco_key = disco;
        lite.endpoints = vec!["192.0.2.7:41641".parse().unwrap()];
        lite.endpoint_types = vec![tailcfg::EndpointType::Local as i32];
        lite.hostinfo = Some(hostinfo());
        client.lite_update(lite).await.unwrap();

        let nodes = hs.cli(&["nodes", "list"]);
        let want = node.public().to_string();
        let ours = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_key"].as_str() == Some(&want))
            .unwrap_or_else(|| {
                panic!("our node key {want} not in `headscale nodes list`: {nodes}")
            });
        assert_eq!(
            ours["machine_key"].as_str(),
            Some(machine.public().to_string().as_str())
        );
        assert_eq!(ours["disco_key"].as_str(), Some(disco.to_string().as_str()));
        assert_eq!(ours["online"], true);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_auth_key_is_a_clear_error() {
    let hs = Headscale::start();
    let _ = hs.user_and_key("someone");
    let machine = MachinePrivate::generate();
    let node = NodePrivate::generate();
    bounded(async {
        let client = ControlClient::connect(&hs.url, &machine).await.unwrap();
        let mut reg = RegisterRequest::default();
        reg.node_key = node.public();
        reg.hostinfo = Some(hostinfo());
        // A malformed key, and a well-formed one that headscale never issued.
        let unknown = format!("hskey-auth-{}-{}", "a".repeat(12), "b".repeat(64));
        for key in ["hskey-auth-notreal-0123456789abcdef", unknown.as_str()] {
            let mut reg = reg.clone();
            reg.auth = Some(RegisterAuth::with_auth_key(key));
            let err = client.register(reg).await.unwrap_err();
            eprintln!("bad key error: {err}");
            match &err {
                Error::Http { status, .. } => assert!((400..500).contains(status), "{err}"),
                Error::Register(msg) => assert!(msg.contains("auth"), "{err}"),
                other => panic!("unexpected error kind: {other:?}"),
            }
            assert!(
                !err.to_string().contains(&unknown[20..]),
                "key echoed in the error: {err}"
            );
        }
    })
    .await;
}

/// A node that has registered and holds its map stream open.
struct Joined {
    node: NodePrivate,
    // Kept so the connection lives as long as the stream.
    _client: ControlClient,
    stream: control_client::MapStream,
    netmap: NetworkMap,
}

async fn join(hs: &Headscale, auth_key: &str, hostname: &str) -> Joined {
    let machine = MachinePrivate::generate();
    let node = NodePrivate::generate();
    let client = ControlClient::connect(&hs.url, &machine).await.unwrap();
    let mut hi = hostinfo();
    hi.hostname = hostname.into();
    let mut reg = RegisterRequest::default();
    reg.node_key = node.public();
    reg.hostinfo = Some(hi.clone());
    reg.auth = Some(RegisterAuth::with_auth_key(auth_key));
    assert!(client.register(reg).await.unwrap().machine_authorized);
    let mut req = MapRequest::default();
    req.node_key = node.public();
    req.disco_key = tailcfg::key::DiscoPrivate::generate().public();
    req.stream = true;
    req.keep_alive = true;
    req.compress = "zstd".into();
    req.hostinfo = Some(hi);
    let mut stream = client.map_stream(req).await.unwrap();
    let mut netmap = NetworkMap::new();
    while netmap.self_node.is_none() {
        let m = stream.next().await.expect("map stream ended").unwrap();
        netmap.apply(m).unwrap();
    }
    Joined {
        node,
        _client: client,
        stream,
        netmap,
    }
}

impl Joined {
    /// Applies messages until `done` holds for the map.
    async fn until(&mut self, what: &str, done: impl Fn(&NetworkMap) -> bool) {
        let wait = tokio::time::timeout(Duration::from_secs(45), async {
            while !done(&self.netmap) {
                let m = self.stream.next().await.expect("map stream ended").unwrap();
                eprintln!(
                    "{what}: keepalive={} peers={} changed={} removed={:?} patches={} online={:?}",
                    m.keep_alive,
                    m.peers.len(),
                    m.peers_changed.len(),
                    m.peers_removed,
                    m.peers_changed_patch.len(),
                    m.online_change,
                );
                self.netmap.apply(m).unwrap();
            }
        });
        wait.await
            .unwrap_or_else(|_| panic!("no map update for: {what}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_arrive_and_leave_as_deltas() {
    let hs = Headscale::start();
    let key = hs.user_and_key_with("pair", &["--reusable"]);
    bounded(async {
        let mut a = join(&hs, &key, "node-a").await;
        assert!(a.netmap.peers.is_empty());
        let b = join(&hs, &key, "node-b").await;
        // B's first map has A as a full peer.
        let a_id = a.netmap.self_node.as_ref().unwrap().id;
        let b_id = b.netmap.self_node.as_ref().unwrap().id;
        let a_seen_by_b = &b.netmap.peers[&a_id];
        assert_eq!(a_seen_by_b.key, a.node.public());
        assert_eq!(a_seen_by_b.home_derp, REGION);
        // A learns of B through a delta on its open stream.
        a.until("B added to A", |nm| nm.peers.contains_key(&b_id))
            .await;
        let b_seen_by_a = &a.netmap.peers[&b_id];
        assert_eq!(b_seen_by_a.key, b.node.public());
        assert!(
            b_seen_by_a
                .effective_allowed_ips()
                .iter()
                .any(|p| p.is_single_ip())
        );
        a.until("B online", |nm| nm.peers[&b_id].online == Some(true))
            .await;
        // B goes away: A hears it is offline.
        drop(b);
        a.until("B offline", |nm| nm.peers[&b_id].online == Some(false))
            .await;
        // Deleting B on the server removes it from A's map.
        hs.cli(&[
            "nodes",
            "delete",
            "--identifier",
            &b_id.to_string(),
            "--force",
        ]);
        a.until("B removed", |nm| !nm.peers.contains_key(&b_id))
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_login_with_auth_url_and_followup() {
    let hs = std::sync::Arc::new(Headscale::start());
    hs.cli(&["users", "create", "inter"]);
    let machine = MachinePrivate::generate();
    let node = NodePrivate::generate();
    bounded(async {
        let client = ControlClient::connect(&hs.url, &machine).await.unwrap();
        let mut reg = RegisterRequest::default();
        reg.node_key = node.public();
        reg.hostinfo = Some(hostinfo());
        let first = client.register(reg.clone()).await.unwrap();
        assert!(!first.machine_authorized);
        let prefix = format!("{}/register/", hs.url);
        let auth_id = first
            .auth_url
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("AuthURL {:?} is not under {prefix}", first.auth_url))
            .to_owned();
        // The follow-up blocks until an admin approves; approve while it waits.
        reg.followup = first.auth_url.clone();
        let hs2 = std::sync::Arc::clone(&hs);
        let approve = async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tokio::task::spawn_blocking(move || {
                hs2.cli_text(&["auth", "register", "--auth-id", &auth_id, "--user", "inter"])
            })
            .await
            .unwrap()
        };
        let (done, _) = tokio::join!(client.register(reg), approve);
        let done = done.unwrap();
        assert!(done.machine_authorized, "{done:?}");
        assert!(done.auth_url.is_empty());
    })
    .await;
}

/// Runs `openssl` with `args` in `dir`; fails the test with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (needed to make test certificates): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `<name>-ca.pem` (a CA) and `<name>-leaf.pem`/`<name>-leaf.key` (a server
/// certificate for IP 127.0.0.1 signed by it) in `dir`.
fn make_ca_and_leaf(dir: &Path, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca_key, ca) = (format!("{name}-ca.key"), format!("{name}-ca.pem"));
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    let subj = format!("/CN=tailrouter test CA {name}");
    args.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca,
        "-days",
        "2",
        "-subj",
        &subj,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args);
    let (key, csr, leaf) = (
        format!("{name}-leaf.key"),
        format!("{name}-leaf.csr"),
        format!("{name}-leaf.pem"),
    );
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
    openssl(dir, &args);
    let ext = format!("{name}-ext.cnf");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &leaf,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// One https:// case against the TLS headscale, trusting only `roots`. `expect` says what
/// must happen: `map` (register over TLS and receive the first map), `untrusted` (a TLS error
/// naming the unknown issuer), `noroots` (the no-roots error).
async fn tls_case(url: &str, roots: &Path, expect: &str, auth_key: &str) {
    let machine = MachinePrivate::generate();
    let node = NodePrivate::generate();
    let mut opts = ConnectOptions::default();
    opts.tls_roots = Some(roots.to_path_buf());
    bounded(async {
        let res = ControlClient::connect_with(url, &machine, opts).await;
        match expect {
            "untrusted" => {
                let e = res.unwrap_err();
                eprintln!("untrusted CA error: {e}");
                assert!(matches!(e, Error::Io { .. }), "{e:?}");
                let text = e.to_string();
                assert!(
                    text.starts_with("TLS handshake with control: invalid peer certificate"),
                    "{text}"
                );
                assert!(text.contains("UnknownIssuer"), "{text}");
            }
            "noroots" => {
                let e = res.unwrap_err();
                eprintln!("no roots error: {e}");
                let text = e.to_string();
                assert!(
                    text.starts_with("loading TLS root certificates: no CA certificates found"),
                    "{text}"
                );
            }
            "map" => {
                let client = res.unwrap();
                assert!(client.early_noise().is_some());
                let mut reg = RegisterRequest::default();
                reg.node_key = node.public();
                reg.hostinfo = Some(hostinfo());
                reg.auth = Some(RegisterAuth::with_auth_key(auth_key));
                assert!(client.register(reg).await.unwrap().machine_authorized);
                let mut req = MapRequest::default();
                req.node_key = node.public();
                req.disco_key = tailcfg::key::DiscoPrivate::generate().public();
                req.stream = true;
                req.keep_alive = true;
                req.compress = "zstd".into();
                req.hostinfo = Some(hostinfo());
                let mut stream = client.map_stream(req).await.unwrap();
                let mut nm = NetworkMap::new();
                while nm.self_node.is_none() {
                    nm.apply(stream.next().await.expect("map stream ended").unwrap())
                        .unwrap();
                }
                let me = nm.self_node.as_ref().unwrap();
                assert_eq!(me.key, node.public());
                assert_eq!(me.machine, machine.public());
                assert!(!me.addresses.is_empty());
                assert!(nm.derp_map.is_some());
                eprintln!(
                    "registered over TLS; first map has {} peers",
                    nm.peers.len()
                );
            }
            other => panic!("unknown TLS case {other:?}"),
        }
    })
    .await;
}

#[test]
fn tls_to_headscale_with_a_private_ca() {
    let dir = std::env::temp_dir().join(format!("trtls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    make_ca_and_leaf(&dir, "good");
    make_ca_and_leaf(&dir, "other");
    let hs = Headscale::start_with(Some((
        &dir.join("good-leaf.pem"),
        &dir.join("good-leaf.key"),
    )));
    assert!(hs.url.starts_with("https://127.0.0.1:"), "{}", hs.url);
    let key = hs.user_and_key("tls");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Trusted: /key and the upgrade both over TLS (an https URL with a port dials only that).
    rt.block_on(tls_case(&hs.url, &dir.join("good-ca.pem"), "map", &key));
    // A CA the server's certificate does not chain to.
    rt.block_on(tls_case(
        &hs.url,
        &dir.join("other-ca.pem"),
        "untrusted",
        &key,
    ));
    // A bundle with no certificates in it.
    std::fs::write(dir.join("empty.pem"), "").unwrap();
    rt.block_on(tls_case(&hs.url, &dir.join("empty.pem"), "noroots", &key));
    drop(hs);
    let _ = std::fs::remove_dir_all(&dir);
}

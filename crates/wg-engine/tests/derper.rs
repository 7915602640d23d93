//! Interop with Tailscale's real `derper` (v1.98.5, built by `interop/install-peers.sh`).
//!
//! derper runs on 127.0.0.1 with plain HTTP and nothing that reaches out: no TLS (`-a` with a
//! port other than 443 and the default cert mode serves HTTP), no port-80 listener
//! (`-http-port=-1`), no mesh (`-mesh-psk-file=` and no `-mesh-with`), no client
//! verification, no bootstrap DNS, and `HOME` in a scratch directory. Its STUN server listens
//! on 127.0.0.1 too, and the STUN test talks to it.
//!
//! A missing derper fails these tests with the command that builds it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tailcfg::key::{DiscoPrivate, NodePrivate, NodePublic};
use wg_engine::derp::client::Client;
use wg_engine::derp::{Config, Event, MAX_PACKET_SIZE, PeerGoneReason};
use wg_engine::{disco, stun};

const PEERS_DIR: &str = ".cache/tailrouter/peers";
const DERPER_DEFAULT: &str = "derper-v1.98.5/bin/derper";

/// Where derper is: `$DERPER_BIN`, else `DERPER_BIN` in the peers cache's `peers.env`, else
/// the default path in that cache.
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

/// A running derper; killed (and its scratch directory removed) on drop, also when a test
/// panics, in which case its log is printed.
struct Derper {
    child: Child,
    dir: PathBuf,
    http: SocketAddr,
    stun: SocketAddr,
}

impl Derper {
    fn start() -> Derper {
        let bin = derper_bin();
        assert!(
            bin.is_file(),
            "\n\nTailscale's derper is missing at {}.\n\
             Build the interop peers first (needs Go; about 10 minutes the first time):\n\
             \n    interop/install-peers.sh\n\n\
             or point DERPER_BIN at a derper v1.98.5 binary.\n",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!(
            "tailrouter-derper-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let stun: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("derper.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!("-a={http}"))
            .arg("-http-port=-1")
            .arg(format!("-stun-port={}", stun.port()))
            .arg(format!("-c={}", dir.join("derper.key").display()))
            .arg("-mesh-psk-file=")
            .arg("-home=blank")
            .env("HOME", &dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut d = Derper {
            child,
            dir,
            http,
            stun,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("derper exited early ({status}):\n{}", self.log());
            }
            if TcpStream::connect_timeout(&self.http, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "derper did not listen on {} in 15 s:\n{}",
            self.http,
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("derper.log")).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("http://{}/derp", self.http)
    }
}

impl Drop for Derper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- derper log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The next event that is not a server health note, within `limit`.
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

fn key_file(path: &Path) -> NodePublic {
    // derper writes {"PrivateKey": "privkey:..."}; its public key is what it greets with.
    let text = std::fs::read_to_string(path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let private = NodePrivate::from_text(v["PrivateKey"].as_str().unwrap()).unwrap();
    private.public()
}

/// Connects a client. A connection the server resets is tried again, at most 3 times, 200 ms
/// apart: under a loaded CI machine derper has once reset a connection made right after it
/// started listening (its readiness is only that the port accepts). Any other error, or a
/// fourth reset, fails the test.
async fn connect(url: &str, key: NodePrivate) -> Client {
    let mut tries = 0;
    loop {
        match Client::connect(url, key.clone(), Config::default()).await {
            Ok(c) => return c,
            Err(wg_engine::derp::client::ClientError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::ConnectionReset && tries < 3 =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("connecting to {url}: {e:?}"),
        }
    }
}

#[tokio::test]
async fn two_clients_relay_through_real_derper() {
    let derper = Derper::start();
    let run = async {
        let ka = NodePrivate::generate();
        let kb = NodePrivate::generate();
        let (pa, pb) = (ka.public(), kb.public());
        let mut a = connect(&derper.url(), ka).await;
        let mut b = connect(&derper.url(), kb).await;
        let server_key = connected(&mut a).await;
        assert_eq!(connected(&mut b).await, server_key);
        assert_eq!(server_key, key_file(&derper.dir.join("derper.key")));
        a.note_preferred(true).await.unwrap();

        // A → B: exactly the bytes sent, from A's key.
        let payload: Vec<u8> = (0..1200u32).map(|i| (i * 7) as u8).collect();
        a.send(pb, payload.clone()).await.unwrap();
        assert_eq!(
            next_event(&mut b, "A's packet").await,
            Event::Packet {
                src: pa,
                data: payload
            }
        );

        // The largest packet derper relays.
        let big = vec![0x5au8; MAX_PACKET_SIZE];
        a.send(pb, big.clone()).await.unwrap();
        assert_eq!(
            next_event(&mut b, "the 64 KiB packet").await,
            Event::Packet { src: pa, data: big }
        );

        // The server answers our ping.
        a.ping(*b"tr-ping1").await.unwrap();
        assert_eq!(next_event(&mut a, "Pong").await, Event::Pong(*b"tr-ping1"));

        // A disco packet to a key nobody holds: derper says NotHere (it does so only for
        // packets that look like disco, which proves our disco framing to Go's check).
        let stranger = NodePrivate::generate().public();
        let mut keys = disco::Keys::new(DiscoPrivate::generate());
        let peer_disco = DiscoPrivate::generate().public();
        let mut pkt = Vec::new();
        keys.seal(
            &peer_disco,
            &disco::Message::CallMeMaybe(disco::CallMeMaybe {
                endpoints: vec!["127.0.0.1:41641".parse().unwrap()],
            }),
            &mut pkt,
        );
        a.send(stranger, pkt).await.unwrap();
        assert_eq!(
            next_event(&mut a, "PeerGone(NotHere)").await,
            Event::PeerGone {
                peer: stranger,
                reason: PeerGoneReason::NotHere
            }
        );

        // B → A, so derper records that A heard from B; then B leaves and A is told.
        b.send(pa, b"reply".to_vec()).await.unwrap();
        assert_eq!(
            next_event(&mut a, "B's reply").await,
            Event::Packet {
                src: pb,
                data: b"reply".to_vec()
            }
        );
        drop(b);
        assert_eq!(
            next_event(&mut a, "PeerGone(Disconnected)").await,
            Event::PeerGone {
                peer: pb,
                reason: PeerGoneReason::Disconnected
            }
        );
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the derper interop test took more than 60 s");
}

#[tokio::test]
async fn stun_binding_against_real_derper() {
    let derper = Derper::start();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = sock.local_addr().unwrap();
    let run = async {
        let mut buf = [0u8; 1500];
        // UDP may lose the first datagram while the server starts; retry a few times.
        for attempt in 0..10 {
            let tx = stun::new_tx_id();
            sock.send_to(&stun::binding_request(&tx), derper.stun)
                .await
                .unwrap();
            let got =
                tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await;
            let Ok(Ok((n, from))) = got else {
                eprintln!("STUN attempt {attempt}: no answer yet");
                continue;
            };
            assert_eq!(from, derper.stun);
            assert_eq!(disco::classify(&buf[..n]), disco::PacketKind::Stun);
            let resp = stun::parse_response(&buf[..n]).unwrap();
            assert_eq!(resp.for_transaction(&tx), Ok(local));
            assert_eq!(
                resp.for_transaction(&stun::new_tx_id()),
                Err(stun::Error::TxIdMismatch)
            );
            return;
        }
        panic!("derper's STUN server never answered");
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the STUN interop test took more than 30 s");
}

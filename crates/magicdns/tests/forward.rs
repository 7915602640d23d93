//! The forwarder against tiny DNS servers on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use magicdns::Upstream;
use magicdns::forward::{ForwardError, Forwarder, ForwarderConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::Instant;

/// Every test body gets at most this long.
const TEST_BOUND: Duration = Duration::from_secs(15);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_BOUND, f)
        .await
        .expect("test exceeded its time bound")
}

fn config() -> ForwarderConfig {
    ForwarderConfig {
        attempt_timeout: Duration::from_millis(600),
        query_timeout: Duration::from_secs(3),
        stagger: Duration::from_millis(150),
        max_in_flight: 16,
        socket_mark: None,
    }
}

/// A query for `name` (dotted, no trailing dot) of `qtype`, with RD set.
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// An answer to `q` with `rcode` and `records` A records (10.0.x.y).
fn answer(q: &[u8], rcode: u8, records: u16) -> Vec<u8> {
    let mut r = q.to_vec();
    r[2] |= 0x80;
    r[3] = 0x80 | rcode;
    r[6..8].copy_from_slice(&records.to_be_bytes());
    for i in 0..records {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0]);
        r.extend_from_slice(&i.to_be_bytes());
    }
    r
}

fn with_tc(mut r: Vec<u8>) -> Vec<u8> {
    r[2] |= 0x02;
    r
}

type Respond = dyn Fn(&[u8]) -> Vec<Vec<u8>> + Send + Sync;

/// A UDP server on `socket` sending back, for each datagram, the replies `respond` gives.
fn serve_udp(socket: UdpSocket, respond: Arc<Respond>) -> SocketAddr {
    serve_udp_after(socket, Duration::ZERO, respond)
}

/// Like [`serve_udp`], with the replies sent `delay` after the query arrived.
fn serve_udp_after(socket: UdpSocket, delay: Duration, respond: Arc<Respond>) -> SocketAddr {
    let addr = socket.local_addr().unwrap();
    let socket = Arc::new(socket);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let replies = respond(&buf[..n]);
            let socket = Arc::clone(&socket);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                for reply in replies {
                    let _ = socket.send_to(&reply, from).await;
                }
            });
        }
    });
    addr
}

async fn udp_server(respond: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + Sync + 'static) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    serve_udp(socket, Arc::new(respond))
}

/// A UDP server that reads and never answers.
async fn silent_server() -> SocketAddr {
    udp_server(|_| Vec::new()).await
}

/// A TCP DNS server on `listener`, answering each framed query with `respond`'s message.
fn serve_tcp(listener: TcpListener, respond: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static) {
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let respond = Arc::clone(&respond);
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await.unwrap();
                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                stream.read_exact(&mut q).await.unwrap();
                let reply = respond(&q);
                let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                stream.write_all(&framed).await.unwrap();
            });
        }
    });
}

/// A UDP socket and a TCP listener on the same loopback port.
async fn udp_and_tcp() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

/// A loopback UDP port with nothing listening.
async fn closed_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.local_addr().unwrap()
}

fn plain(addrs: &[SocketAddr]) -> Vec<Upstream> {
    addrs.iter().map(|a| Upstream::Plain(*a)).collect()
}

fn counting(
    hits: &Arc<AtomicUsize>,
    respond: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + Sync + 'static,
) -> impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + Sync + 'static {
    let hits = Arc::clone(hits);
    move |q| {
        hits.fetch_add(1, Ordering::SeqCst);
        respond(q)
    }
}

#[tokio::test]
async fn plain_answer() {
    bounded(async {
        let server = udp_server(|q| vec![answer(q, 0, 2)]).await;
        let q = query(0x4242, "example.com", 1);
        let got = Forwarder::new(config())
            .forward(&q, &plain(&[server]))
            .await
            .unwrap();
        assert_eq!(got, answer(&q, 0, 2));
        let parsed = hickory_proto::op::Message::from_vec(&got).unwrap();
        assert_eq!(parsed.id(), 0x4242);
        assert_eq!(parsed.answers().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn truncated_udp_answer_is_asked_again_over_tcp() {
    bounded(async {
        let (udp, tcp) = udp_and_tcp().await;
        let addr = serve_udp(udp, Arc::new(|q: &[u8]| vec![with_tc(answer(q, 0, 0))]));
        // About 11 KiB: more than UDP would carry, fine over TCP.
        serve_tcp(tcp, |q| answer(q, 0, 700));
        let q = query(7, "big.example", 1);
        let got = Forwarder::new(config())
            .forward(&q, &plain(&[addr]))
            .await
            .unwrap();
        assert_eq!(got, answer(&q, 0, 700));
        assert!(got.len() > 4096);
        let parsed = hickory_proto::op::Message::from_vec(&got).unwrap();
        assert!(!parsed.truncated());
        assert_eq!(parsed.answers().len(), 700);
    })
    .await;
}

#[tokio::test]
async fn oversized_udp_datagram_counts_as_truncated() {
    bounded(async {
        let (udp, tcp) = udp_and_tcp().await;
        // 5 KiB over UDP without TC: bigger than the 4096-byte limit.
        let addr = serve_udp(udp, Arc::new(|q: &[u8]| vec![answer(q, 0, 320)]));
        serve_tcp(tcp, |q| answer(q, 0, 3));
        let q = query(8, "big.example", 1);
        let got = Forwarder::new(config())
            .forward(&q, &plain(&[addr]))
            .await
            .unwrap();
        assert_eq!(got, answer(&q, 0, 3));
    })
    .await;
}

#[tokio::test]
async fn truncated_answer_is_kept_when_tcp_fails() {
    bounded(async {
        let (udp, tcp) = udp_and_tcp().await;
        drop(tcp); // nothing listens on TCP
        let addr = serve_udp(udp, Arc::new(|q: &[u8]| vec![with_tc(answer(q, 0, 1))]));
        let q = query(9, "big.example", 1);
        let got = Forwarder::new(config())
            .forward(&q, &plain(&[addr]))
            .await
            .unwrap();
        assert_eq!(got, with_tc(answer(&q, 0, 1)));
    })
    .await;
}

#[tokio::test]
async fn oversized_answer_without_tcp_becomes_a_truncated_stub() {
    bounded(async {
        let (udp, tcp) = udp_and_tcp().await;
        drop(tcp);
        let addr = serve_udp(udp, Arc::new(|q: &[u8]| vec![answer(q, 0, 320)]));
        let q = query(10, "big.example", 1);
        let got = Forwarder::new(config())
            .forward(&q, &plain(&[addr]))
            .await
            .unwrap();
        let parsed = hickory_proto::op::Message::from_vec(&got).unwrap();
        assert!(parsed.truncated());
        assert_eq!(parsed.id(), 10);
        assert!(parsed.answers().is_empty());
        assert_eq!(parsed.queries().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn silent_first_upstream_then_the_second_after_the_stagger() {
    bounded(async {
        let silent = silent_server().await;
        let good = udp_server(|q| vec![answer(q, 0, 1)]).await;
        let q = query(11, "example.com", 1);
        let cfg = config();
        let start = Instant::now();
        let got = Forwarder::new(cfg.clone())
            .forward(&q, &plain(&[silent, good]))
            .await
            .unwrap();
        let took = start.elapsed();
        assert_eq!(got, answer(&q, 0, 1));
        assert!(took >= cfg.stagger, "second upstream asked after {took:?}");
        assert!(took < cfg.attempt_timeout, "took {took:?}");
    })
    .await;
}

#[tokio::test]
async fn a_quick_first_answer_never_asks_the_second() {
    bounded(async {
        let second_hits = Arc::new(AtomicUsize::new(0));
        let first = udp_server(|q| vec![answer(q, 0, 1)]).await;
        let second = udp_server(counting(&second_hits, |q| vec![answer(q, 0, 2)])).await;
        let q = query(12, "example.com", 1);
        let cfg = config();
        let got = Forwarder::new(cfg.clone())
            .forward(&q, &plain(&[first, second]))
            .await
            .unwrap();
        assert_eq!(got, answer(&q, 0, 1));
        tokio::time::sleep(cfg.stagger * 2).await;
        assert_eq!(second_hits.load(Ordering::SeqCst), 0);
    })
    .await;
}

#[tokio::test]
async fn all_silent_is_a_timeout_within_the_bound() {
    bounded(async {
        let a = silent_server().await;
        let b = silent_server().await;
        let cfg = config();
        let start = Instant::now();
        let err = Forwarder::new(cfg.clone())
            .forward(&query(13, "example.com", 1), &plain(&[a, b]))
            .await
            .unwrap_err();
        let took = start.elapsed();
        assert!(matches!(err, ForwardError::Timeout), "{err}");
        // The second starts one stagger late and gets a whole attempt.
        assert!(took >= cfg.attempt_timeout, "took {took:?}");
        assert!(
            took < cfg.attempt_timeout + cfg.stagger + Duration::from_secs(1),
            "took {took:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn the_query_deadline_caps_everything() {
    bounded(async {
        let a = silent_server().await;
        let cfg = ForwarderConfig {
            attempt_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_millis(300),
            ..config()
        };
        let start = Instant::now();
        let err = Forwarder::new(cfg)
            .forward(&query(14, "example.com", 1), &plain(&[a]))
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Timeout), "{err}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn replies_that_do_not_match_are_ignored() {
    bounded(async {
        let server = udp_server(|q| {
            let mut wrong_id = answer(q, 0, 9);
            wrong_id[1] ^= 0xff;
            let other_name = answer(
                &query(u16::from_be_bytes([q[0], q[1]]), "evil.com", 1),
                0,
                9,
            );
            let other_type = answer(
                &query(u16::from_be_bytes([q[0], q[1]]), "example.com", 28),
                0,
                9,
            );
            let echo = q.to_vec(); // not a response
            vec![
                wrong_id,
                other_name,
                other_type,
                echo,
                b"\x00\x01garbage".to_vec(),
                Vec::new(),
                vec![0xff; 3],
                answer(q, 0, 1),
            ]
        })
        .await;
        let q = query(15, "example.com", 1);
        let got = Forwarder::new(config())
            .forward(&q, &plain(&[server]))
            .await
            .unwrap();
        assert_eq!(got, answer(&q, 0, 1));
    })
    .await;
}

#[tokio::test]
async fn garbage_only_is_a_timeout() {
    bounded(async {
        let server = udp_server(|q| {
            let mut cut = answer(q, 0, 1);
            cut.truncate(14);
            vec![b"garbage".to_vec(), cut, vec![0u8; 4096]]
        })
        .await;
        let err = Forwarder::new(config())
            .forward(&query(16, "example.com", 1), &plain(&[server]))
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Timeout), "{err}");
    })
    .await;
}

#[tokio::test]
async fn servfail_waits_for_a_better_answer() {
    bounded(async {
        let failing = udp_server(|q| vec![answer(q, 2, 0)]).await;
        let good = udp_server(|q| vec![answer(q, 0, 1)]).await;
        let q = query(17, "example.com", 1);
        // A long stagger: the failure itself must start the second upstream.
        let cfg = ForwarderConfig {
            stagger: Duration::from_secs(2),
            ..config()
        };
        let start = Instant::now();
        let got = Forwarder::new(cfg)
            .forward(&q, &plain(&[failing, good]))
            .await
            .unwrap();
        assert_eq!(got, answer(&q, 0, 1));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );

        // The good answer wins also when the SERVFAIL comes second, and sooner.
        let slow_good = serve_udp_after(
            UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            Duration::from_millis(200),
            Arc::new(|q: &[u8]| vec![answer(q, 0, 1)]),
        );
        let got = Forwarder::new(ForwarderConfig {
            stagger: Duration::from_millis(10),
            ..config()
        })
        .forward(&q, &plain(&[slow_good, failing]))
        .await
        .unwrap();
        assert_eq!(got, answer(&q, 0, 1));
    })
    .await;
}

#[tokio::test]
async fn only_servfail_returns_the_servfail_bytes() {
    bounded(async {
        let a = udp_server(|q| vec![answer(q, 5, 0)]).await; // REFUSED
        let b = udp_server(|q| vec![answer(q, 2, 0)]).await; // SERVFAIL
        let q = query(18, "example.com", 1);
        let got = Forwarder::new(config())
            .forward(&q, &plain(&[a, b]))
            .await
            .unwrap();
        assert_eq!(got, answer(&q, 2, 0));
        // A silent one next to a SERVFAIL: the SERVFAIL once the silent one times out.
        let silent = silent_server().await;
        let got = Forwarder::new(config())
            .forward(&q, &plain(&[b, silent]))
            .await
            .unwrap();
        assert_eq!(got, answer(&q, 2, 0));
        let got = Forwarder::new(config())
            .forward(&q, &plain(&[a]))
            .await
            .unwrap();
        assert_eq!(got, answer(&q, 5, 0));
    })
    .await;
}

#[tokio::test]
async fn a_flood_beyond_the_cap_is_busy() {
    bounded(async {
        let silent = silent_server().await;
        let fwd = Forwarder::new(ForwarderConfig {
            max_in_flight: 2,
            ..config()
        });
        let upstreams = plain(&[silent]);
        let mut held = Vec::new();
        for id in 0..2 {
            let (fwd, upstreams) = (fwd.clone(), upstreams.clone());
            held.push(tokio::spawn(async move {
                fwd.forward(&query(id, "example.com", 1), &upstreams).await
            }));
        }
        while fwd.in_flight() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let start = Instant::now();
        let err = fwd
            .forward(&query(3, "example.com", 1), &upstreams)
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Busy), "{err}");
        assert!(start.elapsed() < Duration::from_millis(500));
        for h in held {
            assert!(matches!(h.await.unwrap(), Err(ForwardError::Timeout)));
        }
        assert_eq!(fwd.in_flight(), 0);
        let good = udp_server(|q| vec![answer(q, 0, 1)]).await;
        assert!(
            fwd.forward(&query(4, "example.com", 1), &plain(&[good]))
                .await
                .is_ok()
        );
    })
    .await;
}

#[tokio::test]
async fn a_cancelled_forward_frees_its_slot() {
    bounded(async {
        let silent = silent_server().await;
        let fwd = Forwarder::new(ForwarderConfig {
            max_in_flight: 1,
            ..config()
        });
        let q = query(19, "example.com", 1);
        let cut = tokio::time::timeout(
            Duration::from_millis(50),
            fwd.forward(&q, &plain(&[silent])),
        )
        .await;
        assert!(cut.is_err());
        assert_eq!(fwd.in_flight(), 0);
    })
    .await;
}

#[tokio::test]
async fn ipv6_loopback_upstream() {
    bounded(async {
        let socket = match UdpSocket::bind("[::1]:0").await {
            Ok(s) => s,
            Err(e) => panic!("this host has no usable ::1 ({e}); the IPv6 test needs it"),
        };
        let addr = serve_udp(socket, Arc::new(|q: &[u8]| vec![answer(q, 0, 1)]));
        let q = query(20, "example.com", 28);
        let got = Forwarder::new(config())
            .forward(&q, &plain(&[addr]))
            .await
            .unwrap();
        assert_eq!(got, answer(&q, 0, 1));
    })
    .await;
}

#[tokio::test]
async fn https_is_unsupported_and_skipped() {
    bounded(async {
        let fwd = Forwarder::new(config());
        let q = query(21, "example.com", 1);
        let doh = Upstream::Https("https://dns.example/dns-query".to_owned());
        let err = fwd
            .forward(&q, std::slice::from_ref(&doh))
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Unsupported), "{err}");
        let good = udp_server(|q| vec![answer(q, 0, 1)]).await;
        let got = fwd
            .forward(&q, &[doh, Upstream::Plain(good)])
            .await
            .unwrap();
        assert_eq!(got, answer(&q, 0, 1));
    })
    .await;
}

#[tokio::test]
async fn bad_input() {
    bounded(async {
        let fwd = Forwarder::new(config());
        let q = query(22, "example.com", 1);
        assert!(matches!(
            fwd.forward(&q, &[]).await,
            Err(ForwardError::NoUpstream)
        ));
        let good = udp_server(|q| vec![answer(q, 0, 1)]).await;
        for bad in [
            &q[..5],
            &answer(&q, 0, 0)[..],
            &b"\x00\x01\x01\x00\x00\x00"[..],
        ] {
            assert!(matches!(
                fwd.forward(bad, &plain(&[good])).await,
                Err(ForwardError::InvalidQuery)
            ));
        }
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_upstream_fails_over_at_once() {
    bounded(async {
        let closed = closed_port().await;
        let q = query(23, "example.com", 1);
        let fwd = Forwarder::new(ForwarderConfig {
            stagger: Duration::from_secs(2),
            ..config()
        });
        let err = fwd.forward(&q, &plain(&[closed])).await.unwrap_err();
        assert!(matches!(err, ForwardError::Io(_)), "{err}");
        let good = udp_server(|q| vec![answer(q, 0, 1)]).await;
        let start = Instant::now();
        let got = fwd.forward(&q, &plain(&[closed, good])).await.unwrap();
        assert_eq!(got, answer(&q, 0, 1));
        assert!(start.elapsed() < Duration::from_secs(1));
    })
    .await;
}

/// With a socket mark: works where the process may set SO_MARK (CAP_NET_ADMIN), and says
/// "permission denied" where it may not.
#[tokio::test]
async fn marked_sockets() {
    bounded(async {
        let probe =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        let allowed = probe.set_mark(0x80000).is_ok();
        let (udp, tcp) = udp_and_tcp().await;
        let addr = serve_udp(udp, Arc::new(|q: &[u8]| vec![with_tc(answer(q, 0, 0))]));
        serve_tcp(tcp, |q| answer(q, 0, 2));
        let fwd = Forwarder::new(ForwarderConfig {
            socket_mark: Some(0x80000),
            ..config()
        });
        let q = query(24, "example.com", 1);
        let got = fwd.forward(&q, &plain(&[addr])).await;
        if allowed {
            assert_eq!(got.unwrap(), answer(&q, 0, 2));
        } else {
            match got {
                Err(ForwardError::Io(e)) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied)
                }
                other => panic!("expected a permission error, got {other:?}"),
            }
        }
    })
    .await;
}

//! The driver against fake gateways on loopback: protocol choice and fallback, renewal with
//! the same port and nonce, release, a chunked UPnP description, and `maintain`.
//!
//! The fakes speak the wire formats from the RFCs (and miniupnpd's answers); the real
//! gateway is tested in tests/interop/tests/portmapper.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portmapper::{Client, Config, Error, Protocol, natpmp, pcp};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

const EXTERNAL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

#[derive(Clone, Copy, PartialEq)]
enum Pmp {
    Silent,
    Ok,
    RefuseMaps,
}

#[derive(Clone)]
struct Fake {
    pmp: Pmp,
    pcp: bool,
    upnp: bool,
    /// Lifetime granted to NAT-PMP and PCP mappings.
    grant: u32,
}

#[derive(Default)]
struct Seen {
    pxp: Vec<Vec<u8>>,
    soap: Vec<String>,
}

struct Gateway {
    pxp_port: u16,
    ssdp_port: u16,
    seen: Arc<Mutex<Seen>>,
}

fn pmp_answer(req: &[u8], fake: &Fake) -> Option<Vec<u8>> {
    let epoch = 100u32.to_be_bytes();
    match req.get(1)? {
        0 if fake.pmp != Pmp::Silent => {
            let mut r = vec![0, 0x80, 0, 0];
            r.extend_from_slice(&epoch);
            r.extend_from_slice(&EXTERNAL.octets());
            Some(r)
        }
        1 if fake.pmp == Pmp::RefuseMaps => {
            let mut r = vec![0, 0x81, 0, 2];
            r.extend_from_slice(&epoch);
            r.extend_from_slice(&[0; 8]);
            Some(r)
        }
        1 if fake.pmp == Pmp::Ok => {
            let internal = req.get(4..6)?;
            let suggested = u16::from_be_bytes([req[6], req[7]]);
            let lifetime = u32::from_be_bytes(req[8..12].try_into().unwrap());
            let external = if suggested == 0 { 40000 } else { suggested };
            let mut r = vec![0, 0x81, 0, 0];
            r.extend_from_slice(&epoch);
            r.extend_from_slice(internal);
            r.extend_from_slice(&external.to_be_bytes());
            r.extend_from_slice(&lifetime.min(fake.grant).to_be_bytes());
            Some(r)
        }
        _ => None,
    }
}

fn pcp_answer(req: &[u8], fake: &Fake) -> Option<Vec<u8>> {
    if !fake.pcp || req.len() < 24 {
        return None;
    }
    let mut r = req.to_vec();
    r[1] |= 0x80;
    r[3] = 0;
    r[8..12].copy_from_slice(&200u32.to_be_bytes());
    r[12..24].fill(0);
    if req[1] == pcp::OP_MAP && req.len() >= 60 {
        let lifetime = u32::from_be_bytes(req[4..8].try_into().unwrap());
        r[4..8].copy_from_slice(&lifetime.min(fake.grant).to_be_bytes());
        if r[42..44] == [0, 0] {
            r[42..44].copy_from_slice(&40001u16.to_be_bytes());
        }
        r[44..60].copy_from_slice(&EXTERNAL.to_ipv6_mapped().octets());
    }
    Some(r)
}

/// A UPnP 1.0 description whose URLBase names another host: the client must still speak
/// only to the gateway, on URLBase's port.
const DESCRIPTION: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><URLBase>http://10.9.9.9:HTTP_PORT/</URLBase>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<deviceList><device><deviceList><device><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<controlURL>/ctl/IPConn</controlURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"#;

async fn serve_http(listener: TcpListener, seen: Arc<Mutex<Seen>>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head and whatever body Content-Length promises.
            loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let cl = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + cl {
                        break;
                    }
                }
            }
            let text = String::from_utf8_lossy(&buf).to_string();
            if text.starts_with("GET /desc.xml ") {
                // Chunked, in three chunks.
                let port = s.local_addr().unwrap().port().to_string();
                let description = DESCRIPTION.replace("HTTP_PORT", &port);
                let body = description.as_bytes();
                let mut resp =
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n"
                        .to_vec();
                for part in body.chunks(body.len() / 3 + 1) {
                    resp.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    resp.extend_from_slice(part);
                    resp.extend_from_slice(b"\r\n");
                }
                resp.extend_from_slice(b"0\r\n\r\n");
                let _ = s.write_all(&resp).await;
                return;
            }
            let action = text
                .lines()
                .find_map(|l| l.strip_prefix("SOAPAction: "))
                .and_then(|v| v.trim_matches('"').split('#').nth(1))
                .unwrap_or("")
                .to_string();
            seen.lock().unwrap().soap.push(text.clone());
            let inner = match action.as_str() {
                "GetExternalIPAddress" => {
                    format!("<NewExternalIPAddress>{EXTERNAL}</NewExternalIPAddress>")
                }
                _ => String::new(),
            };
            let body = format!(
                "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><u:{action}Response xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">{inner}</u:{action}Response></s:Body></s:Envelope>"
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

async fn gateway(fake: Fake) -> Gateway {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let pxp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ssdp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (pxp_port, ssdp_port, http_port) = (
        pxp.local_addr().unwrap().port(),
        ssdp.local_addr().unwrap().port(),
        http.local_addr().unwrap().port(),
    );
    let f = fake.clone();
    let s = seen.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = pxp.recv_from(&mut buf).await {
            let req = buf[..n].to_vec();
            s.lock().unwrap().pxp.push(req.clone());
            let answer = match req.first() {
                Some(0) => pmp_answer(&req, &f),
                Some(2) => pcp_answer(&req, &f),
                _ => None,
            };
            if let Some(a) = answer {
                pxp.send_to(&a, from).await.unwrap();
            }
        }
    });
    if fake.upnp {
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = ssdp.recv_from(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                if text.starts_with("M-SEARCH") {
                    let a = format!(
                        "HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nUSN: uuid:1::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://127.0.0.1:{http_port}/desc.xml\r\nSERVER: fake\r\n\r\n"
                    );
                    ssdp.send_to(a.as_bytes(), from).await.unwrap();
                }
            }
        });
        tokio::spawn(serve_http(http, seen.clone()));
    }
    Gateway {
        pxp_port,
        ssdp_port,
        seen,
    }
}

fn config(gw: &Gateway) -> Config {
    let mut c = Config::new(41641);
    c.gateway = Some(Ipv4Addr::LOCALHOST);
    c.local_ip = Some(Ipv4Addr::LOCALHOST);
    c.pxp_port = gw.pxp_port;
    c.ssdp_port = gw.ssdp_port;
    c.probe_timeout = Duration::from_millis(300);
    c.udp_timeout = Duration::from_millis(100);
    c.udp_attempts = 2;
    c
}

fn all() -> Fake {
    Fake {
        pmp: Pmp::Ok,
        pcp: true,
        upnp: true,
        grant: 7200,
    }
}

#[tokio::test]
async fn probe_sees_all_three_and_natpmp_wins() {
    let gw = gateway(all()).await;
    let mut c = Client::new(config(&gw));
    let p = c.probe().await.unwrap();
    assert!(p.nat_pmp && p.pcp && p.upnp, "{p:?}");
    assert_eq!(p.external_ip, Some(EXTERNAL));

    let m = c.map().await.unwrap();
    assert_eq!(m.protocol, Protocol::NatPmp);
    assert_eq!(
        m.external,
        SocketAddr::from((EXTERNAL, 41641))
            .to_string()
            .parse()
            .unwrap()
    );
    assert_eq!(m.lifetime, Duration::from_secs(7200));
    // Cached until half the lifetime.
    let again = c.map().await.unwrap();
    assert_eq!(again, m);

    // Renewal asks for the same external port.
    let r = c.renew().await.unwrap();
    assert_eq!(r.external, m.external);
    assert!(r.obtained > m.obtained);
    let last_map = gw
        .seen
        .lock()
        .unwrap()
        .pxp
        .iter()
        .rev()
        .find(|p| p.len() == 12)
        .cloned()
        .unwrap();
    assert_eq!(last_map, natpmp::map_udp_request(41641, 41641, 7200));

    c.release().await.unwrap();
    assert!(c.mapping().is_none());
    let last = gw.seen.lock().unwrap().pxp.last().cloned().unwrap();
    assert_eq!(last, natpmp::map_udp_request(41641, 0, 0));
    // Nothing left to release.
    c.release().await.unwrap();
}

#[tokio::test]
async fn falls_back_to_pcp_and_keeps_the_nonce() {
    let gw = gateway(Fake {
        pmp: Pmp::RefuseMaps,
        ..all()
    })
    .await;
    let mut cfg = config(&gw);
    cfg.protocols = vec![Protocol::NatPmp, Protocol::Pcp];
    let mut c = Client::new(cfg);
    let m = c.map().await.unwrap();
    assert_eq!(m.protocol, Protocol::Pcp);
    assert_eq!(m.external.to_string(), format!("{EXTERNAL}:41641"));
    c.renew().await.unwrap();
    c.release().await.unwrap();
    let seen = gw.seen.lock().unwrap();
    let maps: Vec<&Vec<u8>> = seen
        .pxp
        .iter()
        .filter(|p| p.first() == Some(&2) && p.get(1) == Some(&pcp::OP_MAP))
        .collect();
    assert_eq!(maps.len(), 3, "map, renew, delete");
    let nonce = &maps[0][24..36];
    assert!(
        maps.iter().all(|p| &p[24..36] == nonce),
        "one nonce throughout"
    );
    assert_eq!(&maps[2][4..8], &[0, 0, 0, 0], "deletion has lifetime 0");
    assert_eq!(
        &maps[1][42..44],
        &41641u16.to_be_bytes(),
        "renewal suggests the port held"
    );
}

#[tokio::test]
async fn upnp_alone_with_a_chunked_description() {
    let gw = gateway(Fake {
        pmp: Pmp::Silent,
        pcp: false,
        ..all()
    })
    .await;
    let mut cfg = config(&gw);
    cfg.protocols = vec![Protocol::Upnp];
    cfg.description = "test <&>".into();
    let mut c = Client::new(cfg);
    let p = c.probe().await.unwrap();
    assert!(p.upnp && !p.nat_pmp && !p.pcp);
    let m = c.map().await.unwrap();
    assert_eq!(m.protocol, Protocol::Upnp);
    assert_eq!(m.external.to_string(), format!("{EXTERNAL}:41641"));
    c.release().await.unwrap();
    let seen = gw.seen.lock().unwrap();
    let actions: Vec<&str> = seen
        .soap
        .iter()
        .map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("SOAPAction: "))
                .unwrap()
                .split('#')
                .nth(1)
                .unwrap()
                .trim_matches('"')
        })
        .collect();
    // WANIPConnection:1 has no AddAnyPortMapping.
    assert_eq!(
        actions,
        [
            "AddPortMapping",
            "GetExternalIPAddress",
            "DeletePortMapping"
        ]
    );
    let add = &seen.soap[0];
    assert!(
        add.starts_with("POST /ctl/IPConn HTTP/1.1\r\nHost: 127.0.0.1:"),
        "{add}"
    );
    assert!(add.contains("<NewInternalClient>127.0.0.1</NewInternalClient>"));
    assert!(
        add.contains("<NewPortMappingDescription>test &lt;&amp;&gt;</NewPortMappingDescription>")
    );
    assert!(add.contains("<NewLeaseDuration>7200</NewLeaseDuration>"));
}

#[tokio::test]
async fn nothing_answers_within_the_probe_time() {
    let gw = gateway(Fake {
        pmp: Pmp::Silent,
        pcp: false,
        upnp: false,
        grant: 0,
    })
    .await;
    let mut c = Client::new(config(&gw));
    let start = std::time::Instant::now();
    let e = c.map().await.unwrap_err();
    assert!(matches!(e, Error::NoService { .. }), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // A forced protocol that does not answer times out as configured.
    let mut cfg = config(&gw);
    cfg.protocols = vec![Protocol::NatPmp];
    cfg.udp_timeout = Duration::from_millis(50);
    let mut c = Client::new(cfg);
    assert!(matches!(c.map().await, Err(Error::NoService { .. })));
}

#[tokio::test]
async fn maintain_renews_at_half_the_lifetime_and_releases_on_stop() {
    // The gateway grants 2 s: renewals every second.
    let gw = gateway(Fake { grant: 2, ..all() }).await;
    let mut cfg = config(&gw);
    cfg.protocols = vec![Protocol::NatPmp];
    let mut c = Client::new(cfg);
    let changes = Arc::new(Mutex::new(Vec::new()));
    let ch = changes.clone();
    c.maintain(tokio::time::sleep(Duration::from_millis(3300)), |m| {
        ch.lock().unwrap().push(m.map(|m| m.external));
    })
    .await
    .unwrap();
    // One report: the endpoint never changed.
    assert_eq!(
        *changes.lock().unwrap(),
        [Some(format!("{EXTERNAL}:41641").parse().unwrap())]
    );
    let seen = gw.seen.lock().unwrap();
    let maps = seen
        .pxp
        .iter()
        .filter(|p| p.len() == 12 && p[1] == 1)
        .count();
    // Made at 0 s, renewed at about 1, 2 and 3 s, deleted at 3.3 s.
    assert!((4..=6).contains(&maps), "{maps} mapping requests");
    assert_eq!(seen.pxp.last().unwrap()[8..12], [0, 0, 0, 0]);
    assert!(c.mapping().is_none());
}

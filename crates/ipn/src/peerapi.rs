//! The PeerAPI server (the `peerapiserver` tag): plain HTTP over the tailnet, on a TCP port of
//! each of the node's tailnet addresses, for other nodes.
//!
//! It serves one thing: `/dns-query`, DNS over HTTP (RFC 8484 framing, without TLS: the
//! tunnel is the encryption) for the nodes that use this one as their exit node. Go clients
//! whose exit node has capability version 26 or newer send *all* their DNS there, so an exit
//! node without it leaves its users with no name resolution. The queries go to this host's
//! own resolvers (the resolv.conf from before tailrouter), as Go's exit nodes do on Linux.
//!
//! Access is decided here, at the application layer, not by the packet filter (whose only
//! part in it is letting the SYN in, `tstun_wrap::hooks::Chain::set_open_ports`), by Go's
//! rules: the caller must be a peer of the netmap; a node of our own user may always ask;
//! any other only while we offer an exit node and the packet filter would let it reach the
//! internet (a TCP connection to `0.0.0.0:53`, or `2000:::53` over IPv6: Go's stand-ins for
//! `autogroup:internet`). Names in the DNS config's `ExitNodeFilteredSet` are refused.
//!
//! Ports: one port for every address, picked by the kernel on the first bind and kept while
//! the addresses stay; Hostinfo announces it as `peerapi4`/`peerapi6`, together with the
//! `peerapi-dns-proxy` service (version 1).
//!
//! Without the `dns` tag there is no forwarder: `/dns-query` answers 501, and the access
//! checks and DoH parsing below are compiled but unused (kept in one piece rather than gated
//! line by line; the linker drops them).

#![cfg_attr(not(feature = "dns"), allow(dead_code))]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tailcfg::Service;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tstun_wrap::filter::{Filter, FlowConfig, Proto, Rules};

/// Longest DNS query accepted (Go's limit is larger; a DNS message over TCP cannot be).
const MAX_QUERY: usize = 65535;
/// How long one connection may take for one request before it is closed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once, over all listeners.
const MAX_CONNS: usize = 64;
/// How long a forwarded query may take (Go's "noticed by humans" bound).
#[cfg(feature = "dns")]
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// What the server decides access with, from the last netmap.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// Our own user.
    pub self_user: i64,
    /// Every peer's tailnet addresses, to its user.
    pub peers: HashMap<IpAddr, i64>,
    /// Whether we advertise the default routes.
    pub offering_exit: bool,
    /// `ExitNodeFilteredSet`, lower case: exact names, or suffixes with a leading dot.
    pub filtered: Vec<String>,
    /// The packet filter's rules, for the "may reach the internet" check.
    pub rules: Option<Rules>,
    /// The host's own nameservers (the resolv.conf from before tailrouter).
    pub nameservers: Vec<IpAddr>,
}

impl View {
    /// Whether `from` may have its DNS queries answered.
    pub(crate) fn may_query_dns(&self, from: IpAddr) -> bool {
        let Some(&user) = self.peers.get(&from) else {
            return false;
        };
        if user == self.self_user && user != 0 {
            return true;
        }
        if !self.offering_exit {
            return false;
        }
        let Some(rules) = &self.rules else {
            return false;
        };
        let internet = match from {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0)),
        };
        Filter::new(rules.clone(), FlowConfig::go()).check_new(from, internet, 53, Proto::TCP)
    }

    /// Whether `name` (a query's name, any case, with or without the final dot) is one the
    /// DNS config says exit-node users must not resolve through us.
    pub(crate) fn is_filtered(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.filtered.iter().any(|f| {
            let f = f.trim_end_matches('.');
            match f.strip_prefix('.') {
                Some(suffix) if !suffix.is_empty() => {
                    name == suffix
                        || name
                            .strip_suffix(suffix)
                            .is_some_and(|head| head.ends_with('.'))
                }
                Some(_) => false,
                None => !f.is_empty() && name == f,
            }
        })
    }
}

/// The name asked in a DNS query: the first question's name, dotted, lower case. `None` for
/// anything that is not a plain query with exactly one question.
pub(crate) fn question_name(q: &[u8]) -> Option<String> {
    let head = q.get(..12)?;
    let is_response = head[2] & 0x80 != 0;
    let opcode = (head[2] >> 3) & 0x0f;
    let qdcount = u16::from_be_bytes([head[4], head[5]]);
    if is_response || opcode != 0 || qdcount != 1 {
        return None;
    }
    let mut at = 12;
    let mut name = String::new();
    loop {
        let len = usize::from(*q.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // No compression in a question's name; 0x40 and 0x80 prefixes are not labels.
        if len > 63 {
            return None;
        }
        let label = q.get(at..at + len)?;
        at += len;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            name.push(char::from(b.to_ascii_lowercase()));
        }
        if name.len() > 253 {
            return None;
        }
    }
    // Type and class follow.
    q.get(at..at + 4)?;
    Some(if name.is_empty() { ".".into() } else { name })
}

/// A REFUSED answer to query `q` (which [`question_name`] accepted): its header and question,
/// no records.
pub(crate) fn refused(q: &[u8]) -> Vec<u8> {
    let mut end = 12;
    while let Some(&len) = q.get(end) {
        end += 1 + usize::from(len);
        if len == 0 {
            break;
        }
    }
    let end = (end + 4).min(q.len());
    let mut r = q[..end].to_vec();
    // QR set, opcode and RD kept; RA set; RCODE 5.
    r[2] |= 0x80;
    r[3] = 0x80 | 5;
    r[6..12].fill(0);
    r
}

/// What one HTTP request gets: status, content type, body.
type Reply = (u16, &'static str, Vec<u8>);

fn text(status: u16, msg: &str) -> Reply {
    (
        status,
        "text/plain; charset=utf-8",
        format!("{msg}\n").into_bytes(),
    )
}

/// The DNS query a `/dns-query` request carries, or the client's mistake.
pub(crate) fn doh_query(req: &localapi::http::Request) -> Result<Vec<u8>, &'static str> {
    use base64::Engine as _;
    match req.method.as_str() {
        "GET" => {
            let b64 = req
                .query_param("dns")
                .filter(|v| !v.is_empty())
                .ok_or("missing 'dns' parameter")?;
            if b64.len() > MAX_QUERY * 4 / 3 + 4 {
                return Err("query too large");
            }
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64.trim_end_matches('='))
                .map_err(|_| "invalid 'dns' base64 encoding")
        }
        "POST" => {
            if req.header("content-type") != Some("application/dns-message") {
                return Err("unexpected Content-Type");
            }
            if req.body.len() > MAX_QUERY {
                return Err("query too large");
            }
            Ok(req.body.clone())
        }
        _ => Err("bad HTTP method"),
    }
}

/// The listeners and what they decide with.
pub(crate) struct PeerApi {
    view: Arc<RwLock<View>>,
    listening: Mutex<Listening>,
    conns: Arc<tokio::sync::Semaphore>,
    #[cfg(feature = "dns")]
    forwarder: Arc<magicdns::forward::Forwarder>,
}

#[derive(Default)]
struct Listening {
    port: u16,
    tasks: Vec<(IpAddr, tokio::task::JoinHandle<()>)>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        for (_, t) in &self.tasks {
            t.abort();
        }
    }
}

impl PeerApi {
    pub(crate) fn new() -> Self {
        PeerApi {
            view: Arc::default(),
            listening: Mutex::default(),
            conns: Arc::new(tokio::sync::Semaphore::new(MAX_CONNS)),
            #[cfg(feature = "dns")]
            forwarder: Arc::new(magicdns::forward::Forwarder::new(
                crate::dns::forwarder_options(),
            )),
        }
    }

    /// Replaces what access is decided with.
    pub(crate) fn set_view(&self, v: View) {
        if let Ok(mut g) = self.view.write() {
            *g = v;
        }
    }

    /// Listens on each of `addrs` (our tailnet addresses, already on the TUN device) and stops
    /// listening on others. Returns whether the announced services changed.
    pub(crate) fn listen_on(self: &Arc<Self>, addrs: &[IpAddr]) -> bool {
        let Ok(mut l) = self.listening.lock() else {
            return false;
        };
        let before: Vec<(IpAddr, u16)> = l.tasks.iter().map(|(a, _)| (*a, l.port)).collect();
        l.tasks.retain(|(a, t)| {
            let keep = addrs.contains(a);
            if !keep {
                t.abort();
            }
            keep
        });
        for &addr in addrs {
            if l.tasks.iter().any(|(a, _)| *a == addr) {
                continue;
            }
            match bind(addr, l.port) {
                Ok(listener) => {
                    if let Ok(local) = listener.local_addr() {
                        l.port = local.port();
                    }
                    tracing::debug!("peerapi: listening on {addr} port {}", l.port);
                    let me = Arc::clone(self);
                    l.tasks.push((addr, tokio::spawn(me.accept_loop(listener))));
                }
                Err(e) => tracing::warn!("peerapi: cannot listen on {addr}: {e}"),
            }
        }
        if l.tasks.is_empty() {
            l.port = 0;
        }
        let after: Vec<(IpAddr, u16)> = l.tasks.iter().map(|(a, _)| (*a, l.port)).collect();
        before != after
    }

    /// The `(address, port)` pairs being served, for the packet filter's exemption.
    pub(crate) fn open_ports(&self) -> Vec<(IpAddr, u16)> {
        self.listening
            .lock()
            .map(|l| l.tasks.iter().map(|(a, _)| (*a, l.port)).collect())
            .unwrap_or_default()
    }

    /// The Hostinfo services: `peerapi4`/`peerapi6` with the port, and the DNS proxy.
    pub(crate) fn services(&self) -> Vec<Service> {
        let mut out = Vec::new();
        let ports = self.open_ports();
        for (proto, v4) in [("peerapi4", true), ("peerapi6", false)] {
            if let Some((_, port)) = ports.iter().find(|(a, _)| a.is_ipv4() == v4) {
                out.push(service(proto, *port));
            }
        }
        if cfg!(feature = "dns") && !out.is_empty() {
            // The proxy's version, in the port field.
            out.push(service("peerapi-dns-proxy", 1));
        }
        out
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("peerapi: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&self.conns).try_acquire_owned() else {
                tracing::debug!("peerapi: too many connections, {from} refused");
                continue;
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                me.serve(stream, from).await;
                drop(permit);
            });
        }
    }

    async fn serve(&self, stream: TcpStream, from: SocketAddr) {
        let from_ip = match from.ip() {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
            a => a,
        };
        let mut rw = BufReader::new(stream);
        loop {
            let req =
                match tokio::time::timeout(REQUEST_TIMEOUT, localapi::http::read_request(&mut rw))
                    .await
                {
                    Ok(Ok(Some(r))) => r,
                    Ok(Ok(None)) | Err(_) => return,
                    Ok(Err(e)) => {
                        tracing::debug!("peerapi: {from}: {e}");
                        let (s, ct, b) = text(400, "bad request");
                        let _ = localapi::http::write_response(rw.get_mut(), s, ct, &b, true).await;
                        return;
                    }
                };
            let close = req.wants_close();
            let (status, ct, body) = self.handle(&req, from_ip).await;
            if localapi::http::write_response(rw.get_mut(), status, ct, &body, close)
                .await
                .is_err()
                || close
            {
                let _ = rw.get_mut().shutdown().await;
                return;
            }
        }
    }

    async fn handle(&self, req: &localapi::http::Request, from: IpAddr) -> Reply {
        let view = match self.view.read() {
            Ok(v) => v.clone(),
            Err(_) => return text(500, "internal error"),
        };
        if !view.peers.contains_key(&from) {
            return text(403, "not a peer of this node");
        }
        match req.path.as_str() {
            "/dns-query" => self.dns_query(req, &view, from).await,
            "/" => text(200, "tailrouter peerapi"),
            _ => text(404, "not found"),
        }
    }

    #[cfg(feature = "dns")]
    async fn dns_query(&self, req: &localapi::http::Request, view: &View, from: IpAddr) -> Reply {
        if !view.may_query_dns(from) {
            return text(403, "DNS access denied");
        }
        let q = match doh_query(req) {
            Ok(q) => q,
            Err(e) => return text(400, e),
        };
        let Some(name) = question_name(&q) else {
            return text(400, "bad DNS query");
        };
        if view.is_filtered(&name) {
            return (200, "application/dns-message", refused(&q));
        }
        let upstreams: Vec<magicdns::Upstream> = view
            .nameservers
            .iter()
            .filter(|ip| !is_service_ip(**ip))
            .map(|ip| magicdns::Upstream::Plain(SocketAddr::new(*ip, 53)))
            .collect();
        let fw = Arc::clone(&self.forwarder);
        match tokio::time::timeout(FORWARD_TIMEOUT, fw.forward(&q, &upstreams)).await {
            Ok(Ok(answer)) => (200, "application/dns-message", answer),
            Ok(Err(e)) => {
                tracing::debug!("peerapi: DNS for {from}: {e}");
                text(500, "DNS forwarding error")
            }
            Err(_) => text(500, "DNS forwarding timed out"),
        }
    }

    #[cfg(not(feature = "dns"))]
    async fn dns_query(&self, _: &localapi::http::Request, _: &View, _: IpAddr) -> Reply {
        text(501, "DNS not built in")
    }
}

fn service(proto: &str, port: u16) -> Service {
    let mut s = Service::default();
    s.proto = proto.into();
    s.port = port;
    s
}

/// Quad-100 in either family: our own stub, never an upstream for peers.
#[cfg(feature = "dns")]
fn is_service_ip(ip: IpAddr) -> bool {
    ip == IpAddr::V4(tstun_wrap::hooks::SERVICE_V4)
        || ip == IpAddr::V6(tstun_wrap::hooks::SERVICE_V6)
}

/// A listener on `addr`, on `port` if it is free (0 or taken: any port).
fn bind(addr: IpAddr, port: u16) -> std::io::Result<TcpListener> {
    let try_bind = |port: u16| -> std::io::Result<TcpListener> {
        let l = std::net::TcpListener::bind(SocketAddr::new(addr, port))?;
        l.set_nonblocking(true)?;
        TcpListener::from_std(l)
    };
    match try_bind(port) {
        Err(_) if port != 0 => try_bind(0),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.').filter(|l| !l.is_empty()) {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&[0, 1, 0, 1]);
        q
    }

    #[test]
    fn question_names_are_read_and_junk_refused() {
        assert_eq!(
            question_name(&query("WWW.Example.com")).as_deref(),
            Some("www.example.com")
        );
        assert_eq!(question_name(&query("")).as_deref(), Some("."));
        let mut resp = query("a.b");
        resp[2] |= 0x80;
        assert_eq!(question_name(&resp), None, "a response is not a query");
        let mut two = query("a.b");
        two[5] = 2;
        assert_eq!(question_name(&two), None);
        let q = query("a.b");
        for n in 0..q.len() {
            assert_eq!(question_name(&q[..n]), None, "truncated at {n}");
        }
        let mut ptr = query("a.b");
        ptr[12] = 0xc0;
        assert_eq!(question_name(&ptr), None, "no compression in questions");
        // Every byte string: no panic.
        for seed in 0u32..2000 {
            let mut b = q.clone();
            let i = (seed as usize * 7) % b.len();
            b[i] = (seed.wrapping_mul(2654435761) >> 24) as u8;
            b.truncate(12 + (seed as usize % 20));
            let _ = question_name(&b);
            if question_name(&b).is_some() {
                let r = refused(&b);
                assert_eq!(r[3] & 0x0f, 5);
            }
        }
    }

    #[test]
    fn refused_keeps_id_and_question() {
        let q = query("blocked.example");
        let r = refused(&q);
        assert_eq!(&r[..2], &q[..2]);
        assert_eq!(r[2] & 0x80, 0x80, "QR");
        assert_eq!(r[3] & 0x0f, 5, "REFUSED");
        assert_eq!(&r[4..6], &[0, 1], "the question stays");
        assert_eq!(&r[6..12], &[0; 6], "no records");
        assert_eq!(&r[12..], &q[12..]);
    }

    #[test]
    fn filtered_names_exact_and_by_suffix() {
        let v = View {
            filtered: vec!["exact.example".into(), ".corp.example".into(), ".".into()],
            ..View::default()
        };
        assert!(v.is_filtered("Exact.Example."));
        assert!(!v.is_filtered("sub.exact.example"));
        assert!(v.is_filtered("corp.example"));
        assert!(v.is_filtered("db.corp.example"));
        assert!(!v.is_filtered("notcorp.example"));
        assert!(!v.is_filtered("www.example.org"));
    }

    fn rules(json: &str, local: &[&str]) -> Rules {
        let rules: Vec<tailcfg::FilterRule> = serde_json::from_str(json).unwrap();
        let local: Vec<tailcfg::IpPrefix> = local.iter().map(|p| p.parse().unwrap()).collect();
        let (r, errors) = Rules::compile(&rules, &local);
        assert!(errors.is_empty(), "{errors:?}");
        r
    }

    #[test]
    fn dns_access_follows_go() {
        let me: IpAddr = "100.64.0.1".parse().unwrap();
        let same: IpAddr = "100.64.0.2".parse().unwrap();
        let other: IpAddr = "100.64.0.3".parse().unwrap();
        let stranger: IpAddr = "100.64.0.4".parse().unwrap();
        let internet_for_other = rules(
            r#"[{"SrcIPs":["100.64.0.3"],"DstPorts":[{"IP":"*","Ports":{"First":0,"Last":65535}}]}]"#,
            &["100.64.0.1/32", "0.0.0.0/0"],
        );
        let mut v = View {
            self_user: 1,
            peers: HashMap::from([(same, 1), (other, 2)]),
            offering_exit: true,
            rules: Some(internet_for_other),
            ..View::default()
        };
        let _ = me;
        assert!(v.may_query_dns(same), "our own user");
        assert!(v.may_query_dns(other), "allowed to the internet");
        assert!(!v.may_query_dns(stranger), "not a peer");
        v.offering_exit = false;
        assert!(!v.may_query_dns(other), "no exit node offered");
        assert!(v.may_query_dns(same));
        v.offering_exit = true;
        v.rules = Some(rules(
            r#"[{"SrcIPs":["100.64.0.3"],"DstPorts":[{"IP":"100.64.0.1","Ports":{"First":22,"Last":22}}]}]"#,
            &["100.64.0.1/32", "0.0.0.0/0"],
        ));
        assert!(!v.may_query_dns(other), "the filter gives no internet");
    }

    #[test]
    fn doh_requests_get_and_post() {
        use base64::Engine as _;
        let q = query("www.example.com");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&q);
        let get = localapi::http::Request {
            method: "GET".into(),
            path: "/dns-query".into(),
            query: format!("dns={b64}"),
            ..Default::default()
        };
        assert_eq!(doh_query(&get).unwrap(), q);
        let post = localapi::http::Request {
            method: "POST".into(),
            path: "/dns-query".into(),
            headers: vec![("content-type".into(), "application/dns-message".into())],
            body: q.clone(),
            ..Default::default()
        };
        assert_eq!(doh_query(&post).unwrap(), q);
        let bad = localapi::http::Request {
            query: "dns=%%%".into(),
            ..get.clone()
        };
        assert!(doh_query(&bad).is_err());
        let none = localapi::http::Request {
            query: String::new(),
            ..get
        };
        assert!(doh_query(&none).is_err());
        let wrong_type = localapi::http::Request {
            headers: vec![("content-type".into(), "text/plain".into())],
            ..post
        };
        assert!(doh_query(&wrong_type).is_err());
    }
}

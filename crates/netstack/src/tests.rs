//! Real IPv4/IPv6 packets built with smoltcp's `wire` module, fed in, and the replies checked
//! byte by byte (addresses, ports, flags, sequence numbers, checksums, payloads).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4Packet, Icmpv6Packet, IpRepr, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber, UdpRepr,
};

const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 168, 88, 20); // a LAN host, not the node
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20);

fn stack() -> (Netstack, Instant) {
    let config = Config {
        random_seed: 7,
        ..Config::default()
    };
    (Netstack::new(config).unwrap(), Instant::now())
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn ip_packet(src: IpAddr, dst: IpAddr, proto: IpProtocol, len: usize) -> (Vec<u8>, usize) {
    let repr = IpRepr::new(src.into(), dst.into(), proto, len, 64);
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf[..], &ChecksumCapabilities::default());
    (buf, repr.header_len())
}

fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (mut buf, hl) = ip_packet(src.ip(), dst.ip(), IpProtocol::Udp, 8 + payload.len());
    let repr = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    repr.emit(
        &mut UdpPacket::new_unchecked(&mut buf[hl..]),
        &src.ip().into(),
        &dst.ip().into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    buf
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    Syn,
    Fin,
    Rst,
    Psh,
    None,
}

fn tcp(
    src: SocketAddr,
    dst: SocketAddr,
    flag: Flag,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
        control: match flag {
            Flag::Syn => TcpControl::Syn,
            Flag::Fin => TcpControl::Fin,
            Flag::Rst => TcpControl::Rst,
            Flag::Psh => TcpControl::Psh,
            Flag::None => TcpControl::None,
        },
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64000,
        window_scale: None,
        max_seg_size: (flag == Flag::Syn).then_some(1200),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload,
    };
    let (mut buf, hl) = ip_packet(src.ip(), dst.ip(), IpProtocol::Tcp, repr.buffer_len());
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut buf[hl..]),
        &src.ip().into(),
        &dst.ip().into(),
        &ChecksumCapabilities::default(),
    );
    buf
}

/// A reply, parsed with every checksum verified.
#[derive(Debug)]
struct Reply {
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    transport: Vec<u8>,
}

fn parse(packet: &[u8]) -> Reply {
    let caps = ChecksumCapabilities::default();
    let r = match packet[0] >> 4 {
        4 => {
            let p = Ipv4Packet::new_checked(packet).unwrap();
            let repr = Ipv4Repr::parse(&p, &caps).expect("valid IPv4 header checksum");
            assert_eq!(repr.hop_limit, 64);
            Reply {
                src: repr.src_addr.into(),
                dst: repr.dst_addr.into(),
                proto: repr.next_header,
                transport: p.payload().to_vec(),
            }
        }
        6 => {
            let p = Ipv6Packet::new_checked(packet).unwrap();
            Reply {
                src: p.src_addr().into(),
                dst: p.dst_addr().into(),
                proto: p.next_header(),
                transport: p.payload().to_vec(),
            }
        }
        v => panic!("IP version {v}"),
    };
    let (s, d) = (IpAddress::from(r.src), IpAddress::from(r.dst));
    match r.proto {
        IpProtocol::Udp => {
            assert!(
                UdpPacket::new_checked(&r.transport[..])
                    .unwrap()
                    .verify_checksum(&s, &d)
            )
        }
        IpProtocol::Tcp => {
            assert!(
                TcpPacket::new_checked(&r.transport[..])
                    .unwrap()
                    .verify_checksum(&s, &d)
            )
        }
        _ => {}
    }
    r
}

fn udp_reply(packet: &[u8]) -> (SocketAddr, SocketAddr, Vec<u8>) {
    let r = parse(packet);
    assert_eq!(r.proto, IpProtocol::Udp);
    let u = UdpPacket::new_checked(&r.transport[..]).unwrap();
    (
        sa(r.src, u.src_port()),
        sa(r.dst, u.dst_port()),
        u.payload().to_vec(),
    )
}

#[derive(Debug)]
struct Seg {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    rst: bool,
    payload: Vec<u8>,
}

fn tcp_reply(packet: &[u8]) -> Seg {
    let r = parse(packet);
    assert_eq!(r.proto, IpProtocol::Tcp);
    let t = TcpPacket::new_checked(&r.transport[..]).unwrap();
    Seg {
        src: sa(r.src, t.src_port()),
        dst: sa(r.dst, t.dst_port()),
        seq: t.seq_number().0 as u32,
        ack: t.ack().then(|| t.ack_number().0 as u32),
        syn: t.syn(),
        fin: t.fin(),
        rst: t.rst(),
        payload: t.payload().to_vec(),
    }
}

fn drain(s: &mut Netstack) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

fn query(id: u16) -> Vec<u8> {
    // A DNS header and one question (example.com A): this crate does not parse it.
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
    q
}

fn answer_for(q: &[u8], extra: usize) -> Vec<u8> {
    let mut a = q.to_vec();
    a[2] |= 0x80;
    a.extend(std::iter::repeat_n(0xab, extra));
    a
}

fn udp_round_trip(client: SocketAddr, server: SocketAddr, max: usize) {
    let (mut s, now) = stack();
    let q = query(0x1234);
    s.input(&udp(client, server, &q), now);
    assert!(
        drain(&mut s).is_empty(),
        "nothing goes out before the answer"
    );
    let req = s.poll_dns_request().unwrap();
    assert_eq!(req.query, q);
    assert_eq!(req.client, client);
    assert_eq!(req.server, server.ip());
    assert_eq!(req.transport, Transport::Udp);
    assert_eq!(req.max_response_len, max);
    assert!(s.poll_dns_request().is_none());
    let a = answer_for(&q, 40);
    s.answer(req.id, &a).unwrap();
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    let (from, to, payload) = udp_reply(&out[0]);
    assert_eq!(from, server);
    assert_eq!(to, client);
    assert_eq!(payload, a);
    assert_eq!(s.answer(req.id, &a), Err(AnswerError::Unknown));
    let st = s.stats();
    assert_eq!((st.udp_queries, st.answers, st.packets_out), (1, 1, 1));
}

#[test]
fn udp_v4_query_is_answered_from_quad_100_to_the_clients_port() {
    udp_round_trip(sa(CLIENT4, 40123), sa(SERVICE_V4, 53), 1280 - 28);
}

#[test]
fn udp_v6_query_is_answered_from_the_v6_service_address() {
    udp_round_trip(sa(CLIENT6, 50000), sa(SERVICE_V6, 53), 1280 - 48);
}

#[test]
fn udp_answer_too_large_for_one_packet_can_be_retried_truncated() {
    let (mut s, now) = stack();
    let q = query(9);
    s.input(&udp(sa(CLIENT4, 999), sa(SERVICE_V4, 53), &q), now);
    let req = s.poll_dns_request().unwrap();
    let big = answer_for(&q, 2000);
    assert_eq!(
        s.answer(req.id, &big),
        Err(AnswerError::TooLarge { max: 1252 })
    );
    s.answer(req.id, &answer_for(&q, 0)).unwrap();
    assert_eq!(drain(&mut s).len(), 1);
}

/// A scripted TCP client.
struct Client {
    me: SocketAddr,
    server: SocketAddr,
    seq: u32,
    ack: u32,
}

impl Client {
    /// Completes a handshake. With every slot taken, the SYN evicts a connection, which
    /// gets a RST: that RST, and nothing else, may go out besides the SYN-ACK.
    fn connect(s: &mut Netstack, me: SocketAddr, server: SocketAddr, now: Instant) -> Client {
        let isn = 1_000_000;
        let (conns, before) = (s.tcp_connections(), s.stats());
        s.input(&tcp(me, server, Flag::Syn, isn, None, &[]), now);
        let out: Vec<Seg> = drain(s).iter().map(|p| tcp_reply(p)).collect();
        let evicted = s.stats().tcp_evicted - before.tcp_evicted;
        assert!(evicted <= 1, "one SYN evicts at most one connection");
        assert_eq!(out.len() as u64, 1 + evicted, "one SYN-ACK: {out:?}");
        let (mine, resets): (Vec<&Seg>, Vec<&Seg>) = out.iter().partition(|g| g.dst == me);
        assert_eq!(mine.len(), 1, "one SYN-ACK: {out:?}");
        for r in resets {
            assert!(r.rst && !r.syn && r.src.port() == DNS_PORT, "{r:?}");
        }
        let sa = mine[0];
        assert!(sa.syn && !sa.fin && !sa.rst);
        assert_eq!((sa.src, sa.dst), (server, me));
        assert_eq!(sa.ack, Some(isn + 1));
        let mut c = Client {
            me,
            server,
            seq: isn + 1,
            ack: sa.seq.wrapping_add(1),
        };
        s.input(&c.segment(Flag::None, &[]), now);
        assert!(drain(s).is_empty());
        assert_eq!(s.stats().tcp_accepted, before.tcp_accepted + 1);
        assert_eq!(s.tcp_connections() as u64, conns as u64 + 1 - evicted);
        c.seq = isn + 1;
        c
    }

    fn segment(&self, flag: Flag, payload: &[u8]) -> Vec<u8> {
        tcp(
            self.me,
            self.server,
            flag,
            self.seq,
            Some(self.ack),
            payload,
        )
    }

    fn send(&mut self, s: &mut Netstack, payload: &[u8], now: Instant) {
        let p = self.segment(Flag::Psh, payload);
        self.seq = self.seq.wrapping_add(payload.len() as u32);
        s.input(&p, now);
    }

    /// Reads the server's segments, checks they are in order, ACKs data, returns the bytes.
    fn receive(&mut self, s: &mut Netstack, now: Instant) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        let mut fin = false;
        for p in drain(s) {
            let seg = tcp_reply(&p);
            assert_eq!((seg.src, seg.dst), (self.server, self.me));
            assert!(!seg.rst && !seg.syn);
            if seg.payload.is_empty() && !seg.fin {
                continue; // a pure ACK
            }
            assert_eq!(seg.seq, self.ack, "in order");
            self.ack = self.ack.wrapping_add(seg.payload.len() as u32);
            data.extend_from_slice(&seg.payload);
            if seg.fin {
                self.ack = self.ack.wrapping_add(1);
                fin = true;
            }
        }
        if !data.is_empty() || fin {
            s.input(&self.segment(Flag::None, &[]), now);
        }
        (data, fin)
    }
}

fn framed(q: &[u8]) -> Vec<u8> {
    let mut v = (q.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(q);
    v
}

fn tcp_session(me: SocketAddr, server: SocketAddr) {
    let (mut s, now) = stack();
    let mut c = Client::connect(&mut s, me, server, now);
    assert_eq!(s.stats().tcp_accepted, 1);

    // Two pipelined queries, the first split across segments.
    let (q1, q2) = (query(1), query(2));
    let mut bytes = framed(&q1);
    bytes.extend_from_slice(&framed(&q2));
    c.send(&mut s, &bytes[..5], now);
    assert!(
        s.poll_dns_request().is_none(),
        "half a query is not a query"
    );
    c.send(&mut s, &bytes[5..], now);
    let r1 = s.poll_dns_request().unwrap();
    let r2 = s.poll_dns_request().unwrap();
    assert_eq!(
        (r1.query.clone(), r2.query.clone()),
        (q1.clone(), q2.clone())
    );
    assert_eq!(r1.transport, Transport::Tcp);
    assert_eq!(r1.client, me);
    assert_eq!(r1.server, server.ip());
    assert_eq!(r1.max_response_len, MAX_TCP_MESSAGE);

    // Answers in the other order (RFC 7766 allows it), each length-prefixed.
    let (a1, a2) = (answer_for(&q1, 10), answer_for(&q2, 3000));
    s.answer(r2.id, &a2).unwrap();
    s.answer(r1.id, &a1).unwrap();
    let mut got = Vec::new();
    for step in 0..20 {
        let (d, fin) = c.receive(&mut s, now + Duration::from_millis(step));
        assert!(!fin);
        got.extend_from_slice(&d);
        s.poll(now + Duration::from_millis(step));
        if got.len() >= a1.len() + a2.len() + 4 {
            break;
        }
    }
    let mut want = framed(&a2);
    want.extend_from_slice(&framed(&a1));
    assert_eq!(got, want);

    // The client closes; the server answers with its FIN.
    let fin = c.segment(Flag::Fin, &[]);
    c.seq = c.seq.wrapping_add(1);
    s.input(&fin, now);
    let out = drain(&mut s);
    let fins: Vec<Seg> = out.iter().map(|p| tcp_reply(p)).filter(|s| s.fin).collect();
    assert_eq!(fins.len(), 1, "{out:?}");
    assert_eq!(fins[0].ack, Some(c.seq));
    assert_eq!(fins[0].seq, c.ack);
    c.ack = c.ack.wrapping_add(1);
    s.input(&c.segment(Flag::None, &[]), now);
    assert_eq!(s.tcp_connections(), 0, "closed and reaped");
    assert_eq!(s.stats().tcp_queries, 2);
}

#[test]
fn tcp_v4_handshake_pipelined_queries_answers_and_fin() {
    tcp_session(sa(CLIENT4, 33333), sa(SERVICE_V4, 53));
}

#[test]
fn tcp_v6_handshake_pipelined_queries_answers_and_fin() {
    tcp_session(sa(CLIENT6, 44444), sa(SERVICE_V6, 53));
}

#[test]
fn other_ports_get_rst_for_tcp_and_port_unreachable_for_udp() {
    let (mut s, now) = stack();
    s.input(
        &tcp(
            sa(CLIENT4, 1234),
            sa(SERVICE_V4, 80),
            Flag::Syn,
            5,
            None,
            &[],
        ),
        now,
    );
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    let rst = tcp_reply(&out[0]);
    assert!(rst.rst);
    assert_eq!(rst.ack, Some(6));
    assert_eq!((rst.src, rst.dst), (sa(SERVICE_V4, 80), sa(CLIENT4, 1234)));

    s.input(&udp(sa(CLIENT4, 1234), sa(SERVICE_V4, 5353), b"hi"), now);
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    let r = parse(&out[0]);
    assert_eq!(r.proto, IpProtocol::Icmp);
    assert_eq!(r.dst, IpAddr::V4(CLIENT4));
    let icmp = Icmpv4Packet::new_checked(&r.transport[..]).unwrap();
    assert_eq!((icmp.msg_type().into(), icmp.msg_code()), (3u8, 3u8));

    s.input(&udp(sa(CLIENT6, 1234), sa(SERVICE_V6, 5353), b"hi"), now);
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    let r = parse(&out[0]);
    assert_eq!(r.proto, IpProtocol::Icmpv6);
    let icmp = Icmpv6Packet::new_checked(&r.transport[..]).unwrap();
    assert_eq!((icmp.msg_type().into(), icmp.msg_code()), (1u8, 4u8));
    assert!(s.poll_dns_request().is_none());
}

#[test]
fn packets_not_for_the_service_addresses_or_from_bad_sources_are_rejected() {
    let (mut s, now) = stack();
    let q = query(1);
    for p in [
        udp(sa(CLIENT4, 1000), sa(Ipv4Addr::new(100, 64, 0, 1), 53), &q),
        udp(sa(Ipv4Addr::UNSPECIFIED, 1000), sa(SERVICE_V4, 53), &q),
        udp(
            sa(Ipv4Addr::new(224, 0, 0, 1), 1000),
            sa(SERVICE_V4, 53),
            &q,
        ),
        udp(sa(Ipv4Addr::LOCALHOST, 1000), sa(SERVICE_V4, 53), &q),
        udp(sa(CLIENT4, 0), sa(SERVICE_V4, 53), &q),
        udp(sa(Ipv6Addr::UNSPECIFIED, 1000), sa(SERVICE_V6, 53), &q),
        tcp(
            sa(Ipv4Addr::UNSPECIFIED, 9),
            sa(SERVICE_V4, 53),
            Flag::Syn,
            1,
            None,
            &[],
        ),
    ] {
        s.input(&p, now);
    }
    assert!(drain(&mut s).is_empty());
    assert!(s.poll_dns_request().is_none());
    assert_eq!(s.stats().packets_rejected, 7);
}

#[test]
fn udp_flood_is_capped_and_expires() {
    let (mut s, now) = stack();
    let q = query(3);
    for port in 1..=5000u16 {
        s.input(&udp(sa(CLIENT4, port), sa(SERVICE_V4, 53), &q), now);
    }
    assert_eq!(s.pending_requests(), 256);
    assert_eq!(s.stats().requests_dropped, 5000 - 256);
    // The resolver takes a few and never answers; all are forgotten after the timeout.
    for _ in 0..10 {
        s.poll_dns_request().unwrap();
    }
    let deadline = s.poll_timeout().unwrap();
    assert!(deadline <= now + Duration::from_secs(20));
    s.poll(now + Duration::from_secs(21));
    assert_eq!(s.pending_requests(), 0);
    assert!(s.poll_dns_request().is_none());
    assert_eq!(s.stats().requests_expired, 256);
    assert!(s.queue.is_empty() && s.pending.is_empty());
}

#[test]
fn syn_flood_is_capped_and_a_real_client_still_gets_in() {
    let (mut s, now) = stack();
    for port in 1..=2000u16 {
        s.input(
            &tcp(
                sa(CLIENT4, port),
                sa(SERVICE_V4, 53),
                Flag::Syn,
                77,
                None,
                &[],
            ),
            now,
        );
        assert!(s.conns.len() <= s.config.max_tcp_connections);
    }
    drain(&mut s);
    assert_eq!(s.tcp_connections(), 16);
    assert!(s.stats().tcp_evicted >= 2000 - 16);
    // A real client completes its handshake and is served.
    let mut c = Client::connect(&mut s, sa(CLIENT6, 4242), sa(SERVICE_V6, 53), now);
    c.send(&mut s, &framed(&query(5)), now);
    let r = s.poll_dns_request().unwrap();
    s.answer(r.id, &answer_for(&query(5), 0)).unwrap();
    let (d, _) = c.receive(&mut s, now);
    assert_eq!(d, framed(&answer_for(&query(5), 0)));
    // Half-open connections time out.
    s.poll(now + Duration::from_secs(11));
    drain(&mut s);
    assert_eq!(s.tcp_connections(), 1);
}

#[test]
fn a_full_transmit_queue_holds_syn_acks_back_and_counts_lost_resets() {
    let config = Config {
        max_tcp_connections: 2,
        max_transmit_queue: 1,
        random_seed: 3,
        ..Config::default()
    };
    let mut s = Netstack::new(config).unwrap();
    let now = Instant::now();
    let syn = |port| {
        tcp(
            sa(CLIENT4, port),
            sa(SERVICE_V4, 53),
            Flag::Syn,
            500,
            None,
            &[],
        )
    };
    // Nobody drains: 1's SYN-ACK fills the queue, 2's is held back; 3 evicts 1, whose RST
    // cannot be queued and is counted as dropped.
    for port in 1..=3 {
        s.input(&syn(port), now);
    }
    assert_eq!(s.tcp_connections(), 2);
    assert_eq!((s.stats().tcp_evicted, s.stats().transmit_dropped), (1, 1));
    // Draining releases what was held back: one SYN-ACK per SYN, nothing twice.
    let out: Vec<Seg> = drain(&mut s).iter().map(|p| tcp_reply(p)).collect();
    let mut ports: Vec<u16> = out.iter().map(|g| g.dst.port()).collect();
    ports.sort_unstable(); // in socket order, not SYN order
    assert_eq!(ports, [1, 2, 3], "{out:?}");
    assert!(out.iter().all(|g| g.syn && !g.rst && g.ack == Some(501)));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn established_connections_are_refused_only_when_all_are_busy() {
    let config = Config {
        max_tcp_connections: 2,
        random_seed: 1,
        ..Config::default()
    };
    let mut s = Netstack::new(config).unwrap();
    let now = Instant::now();
    let mut a = Client::connect(&mut s, sa(CLIENT4, 1001), sa(SERVICE_V4, 53), now);
    let mut b = Client::connect(&mut s, sa(CLIENT4, 1002), sa(SERVICE_V4, 53), now);
    a.send(&mut s, &framed(&query(1)), now);
    b.send(&mut s, &framed(&query(2)), now);
    assert_eq!(s.pending_requests(), 2);
    s.input(
        &tcp(
            sa(CLIENT4, 1003),
            sa(SERVICE_V4, 53),
            Flag::Syn,
            9,
            None,
            &[],
        ),
        now,
    );
    let rst = tcp_reply(&drain(&mut s)[0]);
    assert!(rst.rst);
    assert_eq!(s.stats().tcp_refused, 1);
    assert_eq!(s.tcp_connections(), 2);
}

#[test]
fn idle_connection_is_closed_after_45_seconds() {
    let (mut s, now) = stack();
    let mut c = Client::connect(&mut s, sa(CLIENT4, 2000), sa(SERVICE_V4, 53), now);
    let t = s.poll_timeout().unwrap();
    assert_eq!(t, now + Duration::from_secs(45));
    s.poll(now + Duration::from_secs(44));
    assert!(drain(&mut s).is_empty());
    s.poll(t);
    let (d, fin) = c.receive(&mut s, t);
    assert!(d.is_empty() && fin);
    assert_eq!(s.stats().tcp_timed_out, 1);
    let fin = c.segment(Flag::Fin, &[]);
    s.input(&fin, t);
    drain(&mut s);
    assert_eq!(s.tcp_connections(), 0);
}

#[test]
fn oversized_tcp_query_resets_the_connection() {
    let (mut s, now) = stack();
    let mut c = Client::connect(&mut s, sa(CLIENT4, 2001), sa(SERVICE_V4, 53), now);
    c.send(&mut s, &5000u16.to_be_bytes(), now);
    let out = drain(&mut s);
    assert!(out.iter().any(|p| tcp_reply(p).rst));
    assert_eq!(s.stats().tcp_oversize, 1);
    assert_eq!(s.tcp_connections(), 0);
}

#[test]
fn answers_to_a_closed_connection_are_refused() {
    let (mut s, now) = stack();
    let mut c = Client::connect(&mut s, sa(CLIENT4, 2002), sa(SERVICE_V4, 53), now);
    c.send(&mut s, &framed(&query(1)), now);
    let r = s.poll_dns_request().unwrap();
    s.input(&c.segment(Flag::Rst, &[]), now);
    assert_eq!(s.tcp_connections(), 0);
    assert_eq!(s.pending_requests(), 0);
    assert_eq!(s.answer(r.id, &query(1)), Err(AnswerError::Unknown));
}

#[test]
fn pings_to_quad_100_are_answered() {
    let (mut s, now) = stack();
    let echo = smoltcp::wire::Icmpv4Repr::EchoRequest {
        ident: 1,
        seq_no: 2,
        data: b"ping",
    };
    let (mut buf, hl) = ip_packet(
        IpAddr::V4(CLIENT4),
        IpAddr::V4(SERVICE_V4),
        IpProtocol::Icmp,
        echo.buffer_len(),
    );
    echo.emit(
        &mut Icmpv4Packet::new_unchecked(&mut buf[hl..]),
        &ChecksumCapabilities::default(),
    );
    s.input(&buf, now);
    let out = drain(&mut s);
    assert_eq!(out.len(), 1);
    let r = parse(&out[0]);
    let icmp = Icmpv4Packet::new_checked(&r.transport[..]).unwrap();
    assert_eq!(u8::from(icmp.msg_type()), 0);
    assert_eq!(icmp.data(), b"ping");
}

#[test]
fn bad_configs_are_refused() {
    let bad = |f: fn(&mut Config)| {
        let mut c = Config::default();
        f(&mut c);
        Netstack::new(c).unwrap_err()
    };
    assert_eq!(bad(|c| c.addresses.clear()), ConfigError::AddressCount(0));
    assert_eq!(
        bad(|c| c.addresses = vec![IpAddr::V4(SERVICE_V4), IpAddr::V4(CLIENT4)]),
        ConfigError::SameFamily
    );
    assert!(matches!(
        bad(|c| c.addresses = vec![IpAddr::V4(Ipv4Addr::BROADCAST)]),
        ConfigError::NotUnicast(_)
    ));
    assert_eq!(bad(|c| c.mtu = 576), ConfigError::Mtu(576));
    assert!(matches!(
        bad(|c| c.max_tcp_connections = 0),
        ConfigError::ZeroLimit(_)
    ));
}

/// xorshift64*: deterministic noise for the garbage tests.
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn garbage_and_mutated_packets_never_panic_and_stay_bounded() {
    let (mut s, now) = stack();
    let mut n = Noise(0x1234_5678);
    let seeds = [
        udp(sa(CLIENT4, 1), sa(SERVICE_V4, 53), &query(1)),
        udp(sa(CLIENT6, 1), sa(SERVICE_V6, 53), &query(1)),
        tcp(sa(CLIENT4, 9), sa(SERVICE_V4, 53), Flag::Syn, 1, None, &[]),
        tcp(
            sa(CLIENT6, 9),
            sa(SERVICE_V6, 53),
            Flag::Psh,
            1,
            Some(1),
            &framed(&query(2)),
        ),
    ];
    for i in 0..20_000u64 {
        let t = now + Duration::from_millis(i);
        let p = if i % 3 == 0 {
            let len = (n.next() % 120) as usize;
            let mut p: Vec<u8> = (0..len).map(|_| n.next() as u8).collect();
            if let Some(b) = p.first_mut() {
                *b = (*b & 0x0f) | if i % 2 == 0 { 0x40 } else { 0x60 };
            }
            p
        } else {
            let mut p = seeds[(n.next() % 4) as usize].clone();
            for _ in 0..(n.next() % 4) {
                let at = (n.next() as usize) % p.len();
                p[at] = n.next() as u8;
            }
            if n.next() % 8 == 0 {
                p.truncate((n.next() as usize) % p.len());
            }
            p
        };
        s.input(&p, t);
        if i % 7 == 0 {
            if let Some(r) = s.poll_dns_request() {
                let _ = s.answer(r.id, &answer_for(&r.query, (n.next() % 3000) as usize));
            }
        }
        s.poll(t);
        drain(&mut s);
        assert!(s.pending_requests() <= 256);
        assert!(s.conns.len() <= 16);
        assert!(s.queue.len() <= 256);
    }
    s.input(&[], now);
    s.input(&[0x45], now);
    s.input(&[0x60; 40], now);
}

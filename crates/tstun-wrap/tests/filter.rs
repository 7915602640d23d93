//! The packet filter against literal packets and rule sets shaped like headscale 0.29's output.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tailcfg::{FilterRule, IpPrefix, MapResponse};
use tstun_wrap::filter::{
    AcceptReason, DropReason, Filter, FlowConfig, Fragment, Proto, RuleError, Rules, Verdict, parse,
};

const SELF4: &str = "100.64.0.1";
const SELF6: &str = "fd7a:115c:a1e0::1";

fn local() -> Vec<IpPrefix> {
    vec![
        format!("{SELF4}/32").parse().unwrap(),
        format!("{SELF6}/128").parse().unwrap(),
    ]
}

/// Applies the filters of map responses as the netmap does: `PacketFilter` is `"base"`, a
/// null named value deletes, `"*": null` clears, an absent field changes nothing.
fn apply(named: &mut BTreeMap<String, Vec<FilterRule>>, json: &str) {
    let resp: MapResponse = serde_json::from_str(json).unwrap();
    if let Some(pf) = resp.packet_filter {
        named.insert("base".into(), pf);
    }
    if let Some(m) = resp.packet_filters {
        if matches!(m.get("*"), Some(None)) {
            named.clear();
        }
        for (k, v) in m {
            match v {
                Some(r) if k != "*" => {
                    named.insert(k, r);
                }
                _ => {
                    named.remove(&k);
                }
            }
        }
    }
}

fn filter_from(json: &str) -> Filter {
    let mut named = BTreeMap::new();
    apply(&mut named, json);
    let (rules, errors) = Rules::compile_named(&named, &local());
    assert!(errors.is_empty(), "{errors:?}");
    Filter::new(rules, FlowConfig::default())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ---- packet builders (checksums are left zero: the filter does not read them) ----

fn ip4(proto: u8, src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(src), ip(dst)) else {
        panic!("v4")
    };
    let total = (20 + payload.len()) as u16;
    let mut b = vec![0x45, 0];
    b.extend(total.to_be_bytes());
    b.extend([0, 1, 0x40, 0, 64, proto, 0, 0]);
    b.extend(s.octets());
    b.extend(d.octets());
    b.extend(payload);
    b
}

fn ip6(next: u8, src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (ip(src), ip(dst)) else {
        panic!("v6")
    };
    let mut b = vec![0x60, 0, 0, 0];
    b.extend((payload.len() as u16).to_be_bytes());
    b.extend([next, 64]);
    b.extend(s.octets());
    b.extend(d.octets());
    b.extend(payload);
    b
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend(sport.to_be_bytes());
    t.extend(dport.to_be_bytes());
    t.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend(sport.to_be_bytes());
    t.extend(dport.to_be_bytes());
    t.extend([0, 12, 0, 0, b'h', b'i', b'!', b'!']);
    t
}

fn icmp(ty: u8, code: u8) -> Vec<u8> {
    vec![ty, code, 0, 0, 0x12, 0x34, 0, 1]
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn inbound(f: &mut Filter, pkt: &[u8]) -> Verdict {
    f.check_inbound(pkt, Instant::now())
}

// ---- literal packets ----

/// IPv4 TCP SYN 100.64.0.2:40000 -> 100.64.0.1:22, as a peer sends it (with MSS option).
const LIT_SYN4: [u8; 44] = [
    0x45, 0x00, 0x00, 0x2c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 0x64, 0x40, 0x00, 0x02,
    0x64, 0x40, 0x00, 0x01, 0x9c, 0x40, 0x00, 0x16, 0x5e, 0x1f, 0x8a, 0x01, 0x00, 0x00, 0x00, 0x00,
    0x60, 0x02, 0xfa, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x02, 0x04, 0x05, 0x8c,
];

/// IPv4 ICMP echo request 100.64.0.2 -> 100.64.0.1.
const LIT_PING4: [u8; 28] = [
    0x45, 0x00, 0x00, 0x1c, 0x00, 0x01, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 0x64, 0x40, 0x00, 0x02,
    0x64, 0x40, 0x00, 0x01, 0x08, 0x00, 0xf7, 0xfc, 0x00, 0x01, 0x00, 0x02,
];

/// IPv6 UDP fd7a:115c:a1e0::2:5353 -> fd7a:115c:a1e0::1:53 behind a hop-by-hop header.
const LIT_HOPOPT6: [u8; 64] = [
    0x60, 0x00, 0x00, 0x00, 0x00, 0x18, 0x00, 0x40, 0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // hop-by-hop: next UDP, len 0
    0x11, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00, // UDP
    0x14, 0xe9, 0x00, 0x35, 0x00, 0x10, 0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x21, 0x21, 0x21,
];

const ALLOW_ALL: &str = r#"{"PacketFilters":{"base":[{"SrcIPs":["*"],"DstPorts":[{"IP":"*","Ports":{"First":0,"Last":65535}}]}]}}"#;

/// headscale 0.29 for `{"acls":[{"action":"accept","src":["group:admins"],"dst":["tag:server:22,443"]}]}`
/// seen from the server (100.64.0.1): the group expanded to its members' addresses, the
/// destination written as bare addresses, no IPProto (TCP, UDP, ICMP).
const PORT_ACL: &str = r#"{"PacketFilters":{"base":[{"SrcIPs":["100.64.0.2","100.64.0.3","fd7a:115c:a1e0::2","fd7a:115c:a1e0::3"],"DstPorts":[{"IP":"100.64.0.1","Ports":{"First":22,"Last":22}},{"IP":"100.64.0.1","Ports":{"First":443,"Last":443}},{"IP":"fd7a:115c:a1e0::1","Ports":{"First":22,"Last":22}},{"IP":"fd7a:115c:a1e0::1","Ports":{"First":443,"Last":443}}]}]}}"#;

/// A group rule with ranges (as headscale writes merged address sets), TCP only, plus a
/// second rule for UDP 53 from a prefix.
const GROUP_ACL: &str = r#"{"PacketFilters":{"base":[{"SrcIPs":["100.64.0.10-100.64.0.20","100.64.1.0/24"],"DstPorts":[{"IP":"100.64.0.0/24","Ports":{"First":8000,"Last":8999}}],"IPProto":[6]},{"SrcIPs":["100.64.0.0/10","fd7a:115c:a1e0::/48"],"DstPorts":[{"IP":"*","Ports":{"First":53,"Last":53}}],"IPProto":[17]}]}}"#;

#[test]
fn literal_packets_parse() {
    let p = parse(&LIT_SYN4);
    assert_eq!((p.version(), p.proto()), (4, Proto::TCP));
    assert_eq!((p.src_port(), p.dst_port()), (40000, 22));
    assert!(p.is_tcp_syn());
    let p = parse(&LIT_PING4);
    assert!(p.is_echo_request());
    assert_eq!(p.icmp_type_code(), Some((8, 0)));
    let p = parse(&LIT_HOPOPT6);
    assert_eq!((p.version(), p.ipv6_next_header()), (6, 0));
    assert_eq!(p.proto(), Proto::UNKNOWN);
    assert_eq!(p.dst(), ip(SELF6));
}

#[test]
fn allow_all() {
    let mut f = filter_from(ALLOW_ALL);
    assert_eq!(
        inbound(&mut f, &LIT_SYN4),
        Verdict::Accept(AcceptReason::Rule)
    );
    assert_eq!(
        inbound(&mut f, &LIT_PING4),
        Verdict::Accept(AcceptReason::IcmpRule)
    );
    let u6 = ip6(17, "fd7a:115c:a1e0::9", SELF6, &udp(1000, 9999));
    assert_eq!(inbound(&mut f, &u6), Verdict::Accept(AcceptReason::Rule));
    // Still only to our own addresses.
    let other = ip4(6, "100.64.0.2", "100.64.0.7", &tcp(1, 22, SYN));
    assert_eq!(inbound(&mut f, &other), Verdict::Drop(DropReason::NotLocal));
    // The default protocols do not include GRE, so allow-all still refuses it.
    let gre = ip4(47, "100.64.0.2", SELF4, &[0; 8]);
    assert_eq!(inbound(&mut f, &gre), Verdict::Drop(DropReason::NoRule));
    // Hop-by-hop options: unknown to Go's parser, dropped.
    assert_eq!(
        inbound(&mut f, &LIT_HOPOPT6),
        Verdict::Drop(DropReason::UnknownProtocol)
    );
}

#[test]
fn port_restricted_acl() {
    let mut f = filter_from(PORT_ACL);
    let syn = |src: &str, port: u16| ip4(6, src, SELF4, &tcp(40000, port, SYN));
    assert!(inbound(&mut f, &syn("100.64.0.2", 22)).is_accept());
    assert!(inbound(&mut f, &syn("100.64.0.3", 443)).is_accept());
    assert_eq!(
        inbound(&mut f, &syn("100.64.0.2", 80)),
        Verdict::Drop(DropReason::NoRule)
    );
    assert_eq!(
        inbound(&mut f, &syn("100.64.0.4", 22)),
        Verdict::Drop(DropReason::NoRule)
    );
    // Go admits every TCP packet without SYN (replies to our connections).
    let ack = ip4(6, "100.64.0.4", SELF4, &tcp(22, 40000, ACK));
    assert_eq!(
        inbound(&mut f, &ack),
        Verdict::Accept(AcceptReason::TcpNonSyn)
    );
    let synack = ip4(6, "100.64.0.4", SELF4, &tcp(22, 40000, SYN | ACK));
    assert!(inbound(&mut f, &synack).is_accept());
    // No IPProto means UDP too.
    let u = ip4(17, "100.64.0.2", SELF4, &udp(5000, 443));
    assert!(inbound(&mut f, &u).is_accept());
    // ICMP: a request needs a rule to the address (any port); replies and errors always pass.
    assert!(inbound(&mut f, &LIT_PING4).is_accept());
    let ping_other = ip4(1, "100.64.0.4", SELF4, &icmp(8, 0));
    assert_eq!(
        inbound(&mut f, &ping_other),
        Verdict::Drop(DropReason::NoRule)
    );
    let reply = ip4(1, "100.64.0.4", SELF4, &icmp(0, 0));
    assert_eq!(
        inbound(&mut f, &reply),
        Verdict::Accept(AcceptReason::IcmpReply)
    );
    let unreach = ip4(1, "100.64.0.4", SELF4, &icmp(3, 1));
    assert!(inbound(&mut f, &unreach).is_accept());
    // IPv6 side.
    let syn6 = ip6(6, "fd7a:115c:a1e0::2", SELF6, &tcp(40000, 22, SYN));
    assert!(inbound(&mut f, &syn6).is_accept());
    let syn6_bad = ip6(6, "fd7a:115c:a1e0::4", SELF6, &tcp(40000, 22, SYN));
    assert!(!inbound(&mut f, &syn6_bad).is_accept());
    let ping6 = ip6(58, "fd7a:115c:a1e0::3", SELF6, &icmp(128, 0));
    assert_eq!(
        inbound(&mut f, &ping6),
        Verdict::Accept(AcceptReason::IcmpRule)
    );
    let pong6 = ip6(58, "fd7a:115c:a1e0::9", SELF6, &icmp(129, 0));
    assert_eq!(
        inbound(&mut f, &pong6),
        Verdict::Accept(AcceptReason::IcmpReply)
    );
    // Cross-family source/destination never match.
    assert!(!f.check_new(ip("100.64.0.2"), ip(SELF6), 22, Proto::TCP));
    assert!(f.check_new(ip("100.64.0.2"), ip(SELF4), 22, Proto::TCP));
    assert!(!f.check_new(ip("100.64.0.2"), ip(SELF4), 80, Proto::TCP));
    assert!(f.check_new(ip("fd7a:115c:a1e0::3"), ip(SELF6), 443, Proto::UDP));
    assert!(!f.check_new(ip("100.64.0.2"), ip("224.0.0.1"), 22, Proto::TCP));
    assert_eq!(f.stats().inbound_dropped(DropReason::NoRule), 4);
}

#[test]
fn group_acl_with_ranges_and_protocols() {
    let mut f = filter_from(GROUP_ACL);
    let syn = |src: &str, port: u16| ip4(6, src, SELF4, &tcp(1234, port, SYN));
    assert!(inbound(&mut f, &syn("100.64.0.10", 8000)).is_accept());
    assert!(inbound(&mut f, &syn("100.64.0.20", 8999)).is_accept());
    assert!(inbound(&mut f, &syn("100.64.1.77", 8080)).is_accept());
    assert!(!inbound(&mut f, &syn("100.64.0.21", 8080)).is_accept());
    assert!(!inbound(&mut f, &syn("100.64.0.9", 8080)).is_accept());
    assert!(!inbound(&mut f, &syn("100.64.0.10", 9000)).is_accept());
    // IPProto [6]: UDP to 8000 is refused, but UDP 53 has its own rule.
    let u = |src: &str, port: u16| ip4(17, src, SELF4, &udp(1234, port));
    assert!(!inbound(&mut f, &u("100.64.0.10", 8000)).is_accept());
    assert!(inbound(&mut f, &u("100.100.1.1", 53)).is_accept());
    assert!(!inbound(&mut f, &u("192.168.1.1", 53)).is_accept());
    let u6 = ip6(17, "fd7a:115c:a1e0::77", SELF6, &udp(1234, 53));
    assert!(inbound(&mut f, &u6).is_accept());
    // Go's ICMP check ignores the rule's protocols: a TCP-only rule lets pings through.
    let ping = ip4(1, "100.64.0.15", SELF4, &icmp(8, 0));
    assert!(inbound(&mut f, &ping).is_accept());
}

#[test]
fn empty_filter_denies_and_allow_none_has_no_local() {
    let mut f = filter_from(r#"{"PacketFilters":{"base":[]}}"#);
    assert_eq!(
        inbound(&mut f, &LIT_SYN4),
        Verdict::Drop(DropReason::NoRule)
    );
    let mut none = Filter::allow_none();
    assert_eq!(
        inbound(&mut none, &LIT_SYN4),
        Verdict::Drop(DropReason::NotLocal)
    );
    assert_eq!(
        inbound(&mut none, &[]),
        Verdict::Accept(AcceptReason::Keepalive)
    );
}

#[test]
fn udp_replies_to_recorded_flows() {
    let t0 = Instant::now();
    let mut f = filter_from(r#"{"PacketFilters":{"base":[]}}"#);
    let out = ip4(17, SELF4, "100.64.0.9", &udp(5353, 53));
    let reply = ip4(17, "100.64.0.9", SELF4, &udp(53, 5353));
    let other_port = ip4(17, "100.64.0.9", SELF4, &udp(54, 5353));
    assert_eq!(
        f.check_inbound(&reply, t0),
        Verdict::Drop(DropReason::NoRule)
    );
    assert_eq!(
        f.record_outbound(&out, t0),
        Verdict::Accept(AcceptReason::Outbound)
    );
    assert_eq!(f.flow_count(), 1);
    assert_eq!(
        f.check_inbound(&reply, t0 + Duration::from_secs(1)),
        Verdict::Accept(AcceptReason::Flow)
    );
    assert!(!f.check_inbound(&other_port, t0).is_accept());
    // Replies keep the flow alive; 120 s of silence ends it.
    assert!(
        f.check_inbound(&reply, t0 + Duration::from_secs(100))
            .is_accept()
    );
    assert!(
        f.check_inbound(&reply, t0 + Duration::from_secs(200))
            .is_accept()
    );
    assert!(
        !f.check_inbound(&reply, t0 + Duration::from_secs(321))
            .is_accept()
    );
    // A rule change keeps flows.
    f.record_outbound(&out, t0 + Duration::from_secs(400));
    let (rules, _) = Rules::compile(&Vec::<FilterRule>::new(), &local());
    f.set_rules(rules);
    assert!(
        f.check_inbound(&reply, t0 + Duration::from_secs(401))
            .is_accept()
    );
    // Entering shields-up forgets them, as Go does.
    f.set_rules(Rules::shields_up(&local()));
    assert!(
        !f.check_inbound(&reply, t0 + Duration::from_secs(402))
            .is_accept()
    );
    // Shields up still lets TCP replies and ICMP replies in.
    let ack = ip4(6, "100.64.0.4", SELF4, &tcp(22, 40000, ACK));
    assert!(f.check_inbound(&ack, t0).is_accept());
    // IPv6 flows too.
    let out6 = ip6(17, SELF6, "fd7a:115c:a1e0::9", &udp(5000, 443));
    let reply6 = ip6(17, "fd7a:115c:a1e0::9", SELF6, &udp(443, 5000));
    f.record_outbound(&out6, t0);
    assert!(f.check_inbound(&reply6, t0).is_accept());
}

#[test]
fn outbound_drops_what_go_drops() {
    let now = Instant::now();
    let mut f = filter_from(ALLOW_ALL);
    let mdns = ip4(17, SELF4, "224.0.0.251", &udp(5353, 5353));
    assert_eq!(
        f.record_outbound(&mdns, now),
        Verdict::Drop(DropReason::Multicast)
    );
    let ll = ip4(17, SELF4, "169.254.1.1", &udp(5353, 5353));
    assert_eq!(
        f.record_outbound(&ll, now),
        Verdict::Drop(DropReason::LinkLocalUnicast)
    );
    let metadata = ip4(6, SELF4, "169.254.169.254", &tcp(1, 80, SYN));
    assert!(f.record_outbound(&metadata, now).is_accept());
    let ra6 = ip6(58, "fe80::1", "ff02::1", &icmp(134, 0));
    assert_eq!(
        f.record_outbound(&ra6, now),
        Verdict::Drop(DropReason::Multicast)
    );
    let ll6 = ip6(17, SELF6, "fe80::2", &udp(1, 2));
    assert_eq!(
        f.record_outbound(&ll6, now),
        Verdict::Drop(DropReason::LinkLocalUnicast)
    );
    assert_eq!(
        f.record_outbound(&[0x45; 10], now),
        Verdict::Drop(DropReason::TooShort)
    );
    assert_eq!(
        f.record_outbound(&LIT_SYN4[..30], now),
        Verdict::Drop(DropReason::UnknownProtocol)
    );
    assert_eq!(f.stats().outbound_dropped(DropReason::Multicast), 2);
    // Only UDP and SCTP are recorded.
    assert_eq!(f.flow_count(), 0);
}

#[test]
fn fragments_as_go_treats_them() {
    let mut f = filter_from(PORT_ACL);
    // A first fragment with a full TCP header is judged like any packet.
    let mut first = ip4(6, "100.64.0.4", SELF4, &tcp(1, 22, SYN));
    first[6] = 0x20; // more fragments
    assert_eq!(parse(&first).fragment(), Fragment::First);
    assert!(!inbound(&mut f, &first).is_accept());
    // A first fragment too short for its TCP header is unknown: dropped.
    let mut tiny = ip4(6, "100.64.0.2", SELF4, &[0x9c, 0x40, 0, 22, 0, 0, 0, 0]);
    tiny[6] = 0x20;
    assert_eq!(
        inbound(&mut f, &tiny),
        Verdict::Drop(DropReason::UnknownProtocol)
    );
    // A later fragment (offset >= 80 bytes) passes even with no rule, even not to us.
    let mut later = ip4(6, "100.64.0.4", "100.64.0.99", &[0u8; 64]);
    later[6] = 0x00;
    later[7] = 10;
    let mut none = Filter::allow_none();
    assert_eq!(
        inbound(&mut none, &later),
        Verdict::Accept(AcceptReason::Fragment)
    );
    // ... but one that could overlap the transport header is dropped.
    later[7] = 3;
    assert_eq!(
        inbound(&mut none, &later),
        Verdict::Drop(DropReason::UnknownProtocol)
    );
    // IPv6 fragment headers are not walked: protocol 44, needs an explicit all-ports rule.
    let frag6 = ip6(
        44,
        "fd7a:115c:a1e0::2",
        SELF6,
        &[6, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0, 0],
    );
    assert_eq!(parse(&frag6).proto(), Proto(44));
    assert_eq!(inbound(&mut f, &frag6), Verdict::Drop(DropReason::NoRule));
}

#[test]
fn tsmp_and_other_protocols() {
    let mut f = filter_from(
        r#"{"PacketFilter":[{"SrcIPs":["100.64.0.2"],"DstPorts":[{"IP":"100.64.0.1","Ports":{"First":0,"Last":65535}}],"IPProto":[47,132]},{"SrcIPs":["100.64.0.3"],"DstPorts":[{"IP":"100.64.0.1","Ports":{"First":1,"Last":65535}}],"IPProto":[47]}]}"#,
    );
    let tsmp = ip4(99, "100.64.0.77", SELF4, &[b'!', 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(inbound(&mut f, &tsmp), Verdict::Accept(AcceptReason::Tsmp));
    let short_tsmp = ip4(99, "100.64.0.77", SELF4, &[b'!', 0]);
    assert!(!inbound(&mut f, &short_tsmp).is_accept());
    let gre = |src: &str| ip4(47, src, SELF4, &[0; 8]);
    assert!(inbound(&mut f, &gre("100.64.0.2")).is_accept());
    // Not all ports open: other protocols are refused.
    assert!(!inbound(&mut f, &gre("100.64.0.3")).is_accept());
    let sctp = ip4(
        132,
        "100.64.0.2",
        SELF4,
        &[0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    assert!(inbound(&mut f, &sctp).is_accept());
    // TCP is not in this rule's protocols.
    let syn = ip4(6, "100.64.0.2", SELF4, &tcp(1, 22, SYN));
    assert!(!inbound(&mut f, &syn).is_accept());
}

#[test]
fn named_filter_deltas() {
    let mut named = BTreeMap::new();
    apply(&mut named, PORT_ACL);
    apply(
        &mut named,
        r#"{"PacketFilters":{"extra":[{"SrcIPs":["100.64.0.4"],"DstPorts":[{"IP":"100.64.0.1","Ports":{"First":80,"Last":80}}]}]}}"#,
    );
    apply(&mut named, r#"{"KeepAlive":false}"#); // nil: unchanged
    let (rules, _) = Rules::compile_named(&named, &local());
    assert_eq!(rules.rule_count(), 2);
    let mut f = Filter::new(rules, FlowConfig::go());
    assert!(inbound(&mut f, &ip4(6, "100.64.0.4", SELF4, &tcp(1, 80, SYN))).is_accept());
    apply(&mut named, r#"{"PacketFilters":{"extra":null}}"#);
    f.set_rules(Rules::compile_named(&named, &local()).0);
    assert!(!inbound(&mut f, &ip4(6, "100.64.0.4", SELF4, &tcp(1, 80, SYN))).is_accept());
    apply(&mut named, r#"{"PacketFilters":{"*":null}}"#);
    assert!(named.is_empty());
}

#[test]
fn bad_entries_skipped_deprecated_bits_refuse_all() {
    let rules: Vec<FilterRule> = serde_json::from_str(
        r#"[{"SrcIPs":["100.64.0.2","bogus","100.64.0.0/9","cap:foo"],"DstPorts":[{"IP":"100.64.0.1","Ports":{"First":22,"Last":22}},{"IP":"cap:bar","Ports":{"First":1,"Last":1}}]}]"#,
    )
    .unwrap();
    let (r, errors) = Rules::compile(&rules, &local());
    assert_eq!(errors.len(), 3, "{errors:?}");
    let mut f = Filter::new(r, FlowConfig::go());
    assert!(inbound(&mut f, &ip4(6, "100.64.0.2", SELF4, &tcp(1, 22, SYN))).is_accept());

    let rules: Vec<FilterRule> = serde_json::from_str(
        r#"[{"SrcIPs":["*"],"DstPorts":[{"IP":"*","Ports":{"First":0,"Last":65535}}]},{"SrcIPs":["1.2.3.4"],"SrcBits":[32],"DstPorts":[]}]"#,
    )
    .unwrap();
    let (r, errors) = Rules::compile(&rules, &local());
    assert_eq!(errors, [RuleError::SrcBits { rule: 1 }]);
    let mut f = Filter::new(r, FlowConfig::go());
    assert!(!inbound(&mut f, &ip4(6, "100.64.0.2", SELF4, &tcp(1, 22, SYN))).is_accept());
}

#[test]
fn capability_sources() {
    let rules: Vec<FilterRule> = serde_json::from_str(
        r#"[{"SrcIPs":["cap:example.com/cap/ssh"],"DstPorts":[{"IP":"100.64.0.1","Ports":{"First":22,"Last":22}}],"IPProto":[6]}]"#,
    )
    .unwrap();
    let holders = |cap: &str| {
        assert_eq!(cap, "example.com/cap/ssh");
        vec![ip("100.64.0.5"), ip("fd7a:115c:a1e0::5")]
    };
    let (r, errors) = Rules::compile_with_caps(&rules, &local(), &holders);
    assert!(errors.is_empty());
    let mut f = Filter::new(r, FlowConfig::go());
    assert!(inbound(&mut f, &ip4(6, "100.64.0.5", SELF4, &tcp(1, 22, SYN))).is_accept());
    assert!(!inbound(&mut f, &ip4(6, "100.64.0.5", SELF4, &tcp(1, 23, SYN))).is_accept());
    assert!(!inbound(&mut f, &ip4(6, "100.64.0.6", SELF4, &tcp(1, 22, SYN))).is_accept());
    assert!(!inbound(&mut f, &ip4(17, "100.64.0.5", SELF4, &udp(1, 22))).is_accept());
    // ICMP needs only the address match; the rule has no IPv6 destination, so IPv6 is refused
    // (Go's per-family split drops it there).
    assert!(inbound(&mut f, &ip4(1, "100.64.0.5", SELF4, &icmp(8, 0))).is_accept());
    assert!(!inbound(&mut f, &ip6(58, "fd7a:115c:a1e0::5", SELF6, &icmp(128, 0))).is_accept());
    // Without a capability test, cap: sources match nothing.
    let mut plain = Filter::new(Rules::compile(&rules, &local()).0, FlowConfig::go());
    assert!(!inbound(&mut plain, &ip4(6, "100.64.0.5", SELF4, &tcp(1, 22, SYN))).is_accept());
}

/// xorshift64*: deterministic randomness without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_packets_never_panic_and_empty_filter_denies() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = [
        LIT_SYN4.to_vec(),
        LIT_PING4.to_vec(),
        LIT_HOPOPT6.to_vec(),
        ip6(6, "fd7a:115c:a1e0::2", SELF6, &tcp(1, 22, SYN)),
        ip4(17, "100.64.0.2", SELF4, &udp(1, 2)),
        ip4(6, "100.64.0.2", SELF4, &tcp(22, 4000, ACK)),
        ip6(58, "fd7a:115c:a1e0::2", SELF6, &icmp(129, 0)),
    ];
    let mut empty = filter_from(r#"{"PacketFilters":{"base":[]}}"#);
    let mut none = Filter::allow_none();
    let mut all = filter_from(ALLOW_ALL);
    let t0 = Instant::now();
    let mut buf = Vec::with_capacity(2048);
    for i in 0..200_000u64 {
        buf.clear();
        if rng.below(4) == 0 {
            let n = rng.below(120);
            buf.extend((0..n).map(|_| rng.next() as u8));
            if let Some(b) = buf.first_mut() {
                *b = (*b & 0x0f) | if rng.below(2) == 0 { 0x40 } else { 0x60 };
            }
        } else {
            buf.extend_from_slice(&seeds[rng.below(seeds.len())]);
            for _ in 0..=rng.below(4) {
                let at = rng.below(buf.len());
                buf[at] = rng.next() as u8;
            }
            let cut = rng.below(buf.len() + 1);
            buf.truncate(cut);
        }
        let now = t0 + Duration::from_millis(i);
        let p = parse(&buf);
        let _ = (p.src(), p.dst(), p.icmp_type_code(), p.transport().len());
        for (has_local, f) in [(true, &mut empty), (false, &mut none)] {
            match f.check_inbound(&buf, now) {
                Verdict::Accept(AcceptReason::Keepalive | AcceptReason::Fragment) => {}
                // With our addresses but no rule, Go still admits replies and TSMP.
                Verdict::Accept(
                    AcceptReason::TcpNonSyn | AcceptReason::IcmpReply | AcceptReason::Tsmp,
                ) if has_local => {}
                v @ Verdict::Accept(_) => panic!("{v:?} for {buf:02x?}"),
                Verdict::Drop(_) => {}
            }
        }
        let _ = all.record_outbound(&buf, now);
        let _ = all.check_inbound(&buf, now);
    }
    assert!(all.flow_count() <= 512);
    // The mutations reach every stage, not just the parser's refusals.
    let st = all.stats();
    for r in [
        AcceptReason::Rule,
        AcceptReason::TcpNonSyn,
        AcceptReason::IcmpReply,
    ] {
        assert!(st.inbound_accepted(r) > 100, "{r:?}");
    }
    for r in [
        DropReason::UnknownProtocol,
        DropReason::NotLocal,
        DropReason::TooShort,
    ] {
        assert!(st.inbound_dropped(r) > 100, "{r:?}");
    }
}

/// A tailnet-sized policy: 40 rules of 30 sources (addresses, prefixes, ranges) each, to a
/// few ports of our addresses, and a mix of packets: SYNs that match late or not at all,
/// TCP data, UDP replies and new UDP, pings, IPv6.
pub(crate) fn bench_setup() -> (Filter, Vec<Vec<u8>>) {
    let mut rules = Vec::new();
    for r in 0..40u32 {
        let mut srcs = Vec::new();
        for s in 0..30u32 {
            let n = r * 30 + s;
            srcs.push(match s % 3 {
                0 => format!("\"100.{}.{}.{}\"", 64 + n / 65536, (n / 256) % 256, n % 256),
                1 => format!("\"10.{}.{}.0/24\"", n / 256, n % 256),
                _ => format!("\"fd7a:115c:a1e0::{n:x}\""),
            });
        }
        rules.push(format!(
            r#"{{"SrcIPs":[{}],"DstPorts":[{{"IP":"{SELF4}","Ports":{{"First":{p},"Last":{p}}}}},{{"IP":"{SELF6}","Ports":{{"First":{p},"Last":{p}}}}}]}}"#,
            srcs.join(","),
            p = 1000 + r
        ));
    }
    let json = format!(r#"{{"PacketFilters":{{"base":[{}]}}}}"#, rules.join(","));
    let mut f = filter_from(&json);
    let now = Instant::now();
    for i in 0..400u16 {
        f.record_outbound(&ip4(17, SELF4, "100.64.9.9", &udp(20000 + i, 53)), now);
    }
    let pkts = vec![
        ip4(6, "100.64.4.170", SELF4, &tcp(1, 1039, SYN)), // last rule matches
        ip4(6, "100.99.0.1", SELF4, &tcp(1, 1000, SYN)),   // no rule: scans all
        ip4(6, "100.99.0.1", SELF4, &tcp(1, 1000, ACK)),   // data
        ip4(17, "100.64.9.9", SELF4, &udp(53, 20123)),     // flow reply
        ip4(17, "100.64.0.3", SELF4, &udp(9, 1000)),       // new UDP, first rule
        ip4(1, "100.64.0.0", SELF4, &icmp(8, 0)),          // ping
        ip6(6, "fd7a:115c:a1e0::4a6", SELF6, &tcp(1, 1039, SYN)),
        ip6(6, "fd7a:115c:a1e0::1:0", SELF6, &tcp(1, 1039, SYN)),
    ];
    (f, pkts)
}

#[test]
fn bench_smoke() {
    let (mut f, pkts) = bench_setup();
    let now = Instant::now();
    let got: Vec<bool> = pkts
        .iter()
        .map(|p| f.check_inbound(p, now).is_accept())
        .collect();
    assert_eq!(got, [true, false, true, true, true, true, true, false]);
}

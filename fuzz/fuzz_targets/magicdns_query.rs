//! MagicDNS (quad-100): `Resolver::respond` on arbitrary bytes over UDP and TCP, and
//! `Resolver::forwarded` with the bytes both as an upstream's answer to a fixed good query and
//! as the client's query, against a small fixed configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use magicdns::{ConfigOptions, Host, Outcome, Resolver, ResolverConfig, Transport};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tailcfg::{DnsConfig, DnsRecord};

/// `www.example.com. IN A`, ID 0xbeef, RD set, no EDNS.
const GOOD_QUERY: &[u8] = &[
    0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 3, b'w', b'w', b'w',
    7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0, 0x00, 0x01, 0x00, 0x01,
];

fn config() -> ResolverConfig {
    let mut dns = DnsConfig::default();
    dns.proxied = true;
    let mut upstream = tailcfg::Resolver::default();
    upstream.addr = "1.1.1.1".to_owned();
    dns.resolvers = vec![upstream];
    let mut split = tailcfg::Resolver::default();
    split.addr = "10.0.0.53:5353".to_owned();
    dns.routes.insert("corp.example".to_owned(), Some(vec![split]));
    dns.routes.insert("quiet.example".to_owned(), Some(Vec::new()));
    let mut rec = DnsRecord::default();
    rec.name = "printer.home.arpa".to_owned();
    rec.value = "192.168.1.9".to_owned();
    dns.extra_records = vec![rec];
    let hosts = [
        ("gw.tail1234.ts.net.", &["100.64.0.1", "fd7a:115c:a1e0::1"][..]),
        ("peer.tail1234.ts.net.", &["100.64.0.2", "fd7a:115c:a1e0::2"][..]),
        ("v6only.tail1234.ts.net.", &["fd7a:115c:a1e0::3"][..]),
    ]
    .iter()
    .map(|(fqdn, addrs)| Host {
        fqdn: (*fqdn).to_owned(),
        addrs: addrs.iter().filter_map(|a| a.parse().ok()).collect(),
    })
    .collect::<Vec<_>>();
    let options = ConfigOptions {
        accept_dns: true,
        magicdns_aaaa: false,
    };
    ResolverConfig::new(&dns, "gw.tail1234.ts.net.", &hosts, options)
}

fn check(input: &[u8], out: &Outcome, transport: Transport) {
    match out {
        Outcome::Answer(b) => {
            let cap = match transport {
                Transport::Udp => 4096,
                Transport::Tcp => 65_535,
            };
            assert!(b.len() >= 12 && b.len() <= cap, "answer of {} bytes", b.len());
            assert_eq!(b.get(..2), input.get(..2), "the client's ID");
            assert_eq!(b.get(2).map(|f| f & 0x80), Some(0x80), "QR set");
        }
        Outcome::Forward { upstreams, query } => {
            assert!(!upstreams.is_empty());
            assert_eq!(query.as_slice(), input);
        }
        // Only shorter-than-a-header input and responses are dropped.
        Outcome::Drop => assert!(input.len() < 12 || input.get(2).is_some_and(|f| f & 0x80 != 0)),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Resolver::new(Arc::new(config()));
    let t0 = Instant::now();
    for transport in [Transport::Udp, Transport::Tcp] {
        let out = r.respond(data, transport, t0);
        check(data, &out, transport);
    }
    // The bytes as an upstream's answer: whatever they are, the client gets a bounded reply
    // with its own ID; a cached one serves the next query the same way.
    let back = r.forwarded(GOOD_QUERY, Some(data), t0);
    assert!(back.len() >= 12 && back.len() <= 512, "{} bytes", back.len());
    assert_eq!(back.get(..2), GOOD_QUERY.get(..2));
    let again = r.respond(GOOD_QUERY, Transport::Udp, t0 + Duration::from_secs(1));
    check(GOOD_QUERY, &again, Transport::Udp);
    // The bytes as the client's query, with a good answer or none.
    for response in [Some(GOOD_QUERY), None] {
        let back = r.forwarded_over(data, response, Transport::Tcp, t0);
        assert!(back.is_empty() || back.get(..2) == data.get(..2));
        assert!(back.len() <= 65_535);
    }
    assert!(r.cache().len() <= r.cache().limits().max_entries);
    assert!(r.cache().bytes() <= r.cache().limits().max_bytes);
});

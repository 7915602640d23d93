//! Datagrams on the WireGuard socket offered to a netcheck report with probes in flight.
//!
//! The input is a run of chunks `len:u8, ctl:u8, bytes[len]`. Before each chunk the clock
//! moves on by 0, 10 ms, 400 ms or 2 s (`ctl` bits 2-3) and due probes go out; with `ctl` bit
//! 0 set, bytes 8..20 of the chunk become the transaction ID of sent probe number `ctl >> 4`,
//! so that the fuzzer reaches the "one of ours" path with arbitrary attributes. Checked: a
//! datagram is ours exactly when it parses as a STUN answer to a probe we sent, and the report
//! stays consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tailcfg::derp::{DerpMap, DerpNode, DerpRegion};
use wg_engine::netcheck::Netcheck;
use wg_engine::stun;

fn derp_map() -> DerpMap {
    let mut regions = std::collections::BTreeMap::new();
    for id in 1..=3 {
        let mut r = DerpRegion::default();
        r.region_id = id;
        for n in 0..2 {
            let mut node = DerpNode::default();
            node.name = format!("{id}{n}");
            node.region_id = id;
            node.ipv4 = format!("192.0.2.{}", id * 10 + n);
            node.ipv6 = if id == 2 {
                format!("2001:db8::{id}:{n}")
            } else {
                "none".into()
            };
            r.nodes.push(node);
        }
        regions.insert(id, Some(r));
    }
    let mut m = DerpMap::default();
    m.regions = Some(regions);
    m
}

fuzz_target!(|data: &[u8]| {
    let map = derp_map();
    let t0 = Instant::now();
    let mut now = t0;
    let mut nc = Netcheck::new(&map, now);
    let mut sent: Vec<stun::TxId> = Vec::new();
    let src: SocketAddr = "192.0.2.10:3478".parse().unwrap();
    let mut rest = data;
    while let [len, ctl, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        now += [0, 10, 400, 2000].map(Duration::from_millis)[usize::from((ctl >> 2) & 3)];
        nc.handle_timeout(now);
        while let Some(p) = nc.poll_transmit(now) {
            sent.push(stun::parse_binding_request(&p.payload).unwrap());
        }
        let mut dgram = chunk.to_vec();
        if ctl & 1 == 1 && dgram.len() >= 20 && !sent.is_empty() {
            let tx = sent[usize::from(ctl >> 4) % sent.len()];
            dgram[8..20].copy_from_slice(&tx);
        }
        let expect = stun::parse_response(&dgram).is_ok_and(|r| sent.contains(&r.tx_id));
        assert_eq!(nc.handle_stun(src, &dgram, now), expect);

        let r = nc.report();
        assert!(r.region_latency.keys().all(|id| (1..=3).contains(id)));
        assert_eq!(r.udp_v4, !r.region_v4_latency.is_empty());
        assert_eq!(r.udp_v6, !r.region_v6_latency.is_empty());
        assert!(r.global_v4.is_none_or(|a| a.is_ipv4()));
        assert!(r.global_v6.is_none_or(|a| a.is_ipv6()));
        assert_eq!(r.udp_v4, r.global_v4.is_some());
        for (id, d) in &r.region_latency {
            let v4 = r.region_v4_latency.get(id);
            let v6 = r.region_v6_latency.get(id);
            assert_eq!(Some(d), [v4, v6].into_iter().flatten().min());
        }
        if nc.is_done() {
            assert_eq!(nc.poll_timeout(), None);
            assert!(nc.poll_transmit(now).is_none());
        } else {
            assert!(now < t0 + Duration::from_secs(5));
        }
    }
});

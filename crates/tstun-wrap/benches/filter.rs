//! Packet filter cost per packet: `cargo bench -p tstun-wrap --bench filter` (release profile,
//! the one we ship). 40 rules of 30 sources each and a mix of eight packet kinds, from the
//! integration tests' `bench_setup`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[allow(dead_code, unused_imports)]
#[path = "../tests/filter.rs"]
mod cases;

use std::time::Instant;
use tstun_wrap::filter::parse;

fn main() {
    let (mut f, pkts) = cases::bench_setup();
    let now = Instant::now();
    let rounds = 500_000;
    let start = Instant::now();
    let mut accepted = 0u64;
    for _ in 0..rounds {
        for p in &pkts {
            accepted += u64::from(f.check_inbound(std::hint::black_box(p), now).is_accept());
        }
    }
    let n = rounds * pkts.len();
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("filter: {ns:.1} ns/packet inbound over {n} packets ({accepted} accepted)");
    let names = [
        "SYN, last rule",
        "SYN, no rule",
        "TCP ACK",
        "UDP flow reply",
        "UDP, first rule",
        "ping",
        "IPv6 SYN, last rule",
        "IPv6 SYN, no rule",
    ];
    for (p, name) in pkts.iter().zip(names) {
        let start = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(f.check_inbound(std::hint::black_box(p), now));
        }
        let ns = start.elapsed().as_nanos() as f64 / rounds as f64;
        println!("  {name}: {ns:.1} ns");
    }
    let start = Instant::now();
    for _ in 0..rounds {
        for p in &pkts {
            std::hint::black_box(parse(std::hint::black_box(p)));
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("parse: {ns:.1} ns/packet");
}

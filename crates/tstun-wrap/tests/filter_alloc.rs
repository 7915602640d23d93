//! The packet filter allocates nothing per packet, even while the flow table churns.
//! Its own test binary: the counting allocator sees only this test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tailcfg::{FilterRule, IpPrefix};
use tstun_wrap::filter::{Filter, FlowConfig, Rules};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> [u8; 36] {
    let mut b = [0u8; 36];
    b[..12].copy_from_slice(&[0x45, 0, 0, 36, 0, 1, 0x40, 0, 64, 17, 0, 0]);
    b[12..16].copy_from_slice(&src);
    b[16..20].copy_from_slice(&dst);
    b[20..22].copy_from_slice(&sport.to_be_bytes());
    b[22..24].copy_from_slice(&dport.to_be_bytes());
    b[24..26].copy_from_slice(&16u16.to_be_bytes());
    b
}

#[test]
fn no_allocation_per_packet() {
    let rules: Vec<FilterRule> = serde_json::from_str(
        r#"[{"SrcIPs":["100.64.0.0/10"],"DstPorts":[{"IP":"*","Ports":{"First":53,"Last":53}}]}]"#,
    )
    .unwrap();
    let local: Vec<IpPrefix> = vec!["100.64.0.1/32".parse().unwrap()];
    let mut f = Filter::new(Rules::compile(&rules, &local).0, FlowConfig::default());
    let me = [100, 64, 0, 1];
    let peer = [100, 64, 0, 2];
    let t0 = Instant::now();
    // Warm up: fill the table once.
    for i in 0..1024u16 {
        f.record_outbound(&udp4(me, peer, 10000 + i, 443), t0);
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut accepted = 0u32;
    for i in 0..100_000u32 {
        let now = t0 + Duration::from_millis(u64::from(i) * 10);
        let port = 10000 + (i % 3000) as u16;
        f.record_outbound(&udp4(me, peer, port, 443), now);
        accepted += u32::from(f.check_inbound(&udp4(peer, me, 443, port), now).is_accept());
        accepted += u32::from(
            f.check_inbound(&udp4(peer, me, 443, port ^ 1), now)
                .is_accept(),
        );
        accepted += u32::from(f.check_inbound(&udp4(peer, me, 9, 53), now).is_accept());
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "allocations during 300k packets");
    assert!(accepted >= 200_000);
    assert_eq!(f.flow_count(), 512);
}

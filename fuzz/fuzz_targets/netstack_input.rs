//! The quad-100 netstack fed what the TUN hook can hand it: any bytes as IP packets, with the
//! clock moving and every DNS request answered (with its own query bytes, or with an answer
//! too large for its transport). The input is split into packets by a length byte each; a
//! packet's first byte also steers the clock and whether queries get answered.
//!
//! After every step: no panic, the transmit queue and pending requests stay within their
//! configured bounds, and every packet the stack emits comes from a service address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netstack::{Config, Netstack, SERVICE_V4, SERVICE_V6};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let config = Config {
        random_seed: 7,
        ..Config::default()
    };
    let (max_tx, max_pending) = (config.max_transmit_queue, config.max_pending_requests);
    let Ok(mut stack) = Netstack::new(config) else {
        return;
    };
    let mut now = Instant::now();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (packet, next) = tail.split_at(n);
        rest = next;
        let steer = packet.first().copied().unwrap_or(0);
        now += Duration::from_millis(u64::from(steer) * 500);
        stack.input(packet, now);
        stack.poll(now);
        assert!(stack.pending_requests() <= max_pending);
        while let Some(req) = stack.poll_dns_request() {
            match steer % 3 {
                0 => {
                    let _ = stack.answer(req.id, &req.query);
                }
                1 => {
                    let big = vec![0u8; req.max_response_len + 1];
                    let _ = stack.answer(req.id, &big);
                }
                _ => stack.drop_request(req.id),
            }
        }
        let mut sent = 0;
        while let Some(out) = stack.poll_transmit() {
            sent += 1;
            assert!(sent <= max_tx + 4, "transmit queue beyond its bound");
            match out.first().map(|b| b >> 4) {
                Some(4) => assert_eq!(out.get(12..16), Some(&SERVICE_V4.octets()[..])),
                Some(6) => assert_eq!(out.get(8..24), Some(&SERVICE_V6.octets()[..])),
                other => panic!("emitted a packet that is not IP: {other:?}"),
            }
        }
    }
});

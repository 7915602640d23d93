//! Bytes from a DERP server, into the client connection state machine: frames split at any
//! point, with timeouts in between. The first byte sets the chunk size. Also every frame
//! parsed on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};
use tailcfg::key::NodePrivate;
use wg_engine::derp::{Config, Connection, Frame};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok((_, used)) = Frame::parse(&data[at..]) {
        if used == 0 {
            break;
        }
        at += used;
    }
    let Some((&ctl, rest)) = data.split_first() else { return };
    let mut now = Instant::now();
    let mut conn = Connection::new(NodePrivate::from_bytes([3; 32]), Config::default(), now);
    let step = usize::from(ctl).max(1);
    for chunk in rest.chunks(step) {
        if conn.handle_input(chunk, now).is_err() {
            break;
        }
        while conn.poll_event().is_some() {}
        let pending = conn.pending_transmit().len();
        conn.advance_transmit(pending);
        now += Duration::from_secs(1);
        if conn.handle_timeout(now).is_err() {
            break;
        }
    }
});

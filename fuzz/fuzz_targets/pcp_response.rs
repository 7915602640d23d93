//! PCP answers from the gateway (or anyone on the LAN) on the client's UDP socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portmapper::pcp;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = pcp::parse_response(data) {
        assert!(data.len() >= pcp::HEADER_LEN && data.len() <= pcp::MAX_LEN);
        if r.map.is_some() {
            assert!(data.len() >= pcp::MAP_LEN);
        }
    }
});

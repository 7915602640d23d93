//! NAT-PMP answers from the gateway (or anyone on the LAN) on the client's UDP socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portmapper::natpmp;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = natpmp::parse_response(data) {
        // Whatever parsed was long enough for what it claims.
        let need = match r {
            natpmp::Response::ExternalAddress { .. } => 12,
            natpmp::Response::MapUdp { .. } => 16,
            natpmp::Response::Refused { .. } => 8,
        };
        assert!(data.len() >= need);
    }
});

//! STUN responses from servers and binding requests from anyone on the UDP port.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wg_engine::stun::parse_response(data);
    let _ = wg_engine::stun::parse_binding_request(data);
});

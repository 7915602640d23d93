//! The DERP server's HTTP answer to our upgrade request.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, used))) = wg_engine::derp::http::parse_upgrade_response(data) {
        assert!(used <= data.len());
    }
});

//! HTTP/1.1 responses from UPnP devices: the head alone and head plus body (length, chunked
//! or until close), with a small body limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portmapper::http;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, used))) = http::parse_head(data) {
        assert!(used <= data.len() && used <= http::MAX_HEAD);
        let _ = head.framing();
    }
    for eof in [false, true] {
        if let Ok(Some(r)) = http::parse_response(data, eof, 4096) {
            assert!(r.body.len() <= 4096);
        }
    }
});

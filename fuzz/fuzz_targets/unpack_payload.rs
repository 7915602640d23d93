//! The image launcher reads its own file from disk: a damaged file (a bad trailer, a corrupt or
//! truncated xz stream) must give an error, never a panic or a write past its buffers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = tailrouter_unpack::trailer(data) {
        assert!(t.payload_start + t.payload_len + tailrouter_unpack::TRAILER_LEN == data.len());
    }
    // The xz stream alone, into small buffers as the launcher would size them.
    let out_len = data.first().map_or(1, |&b| 1 + usize::from(b) * 64);
    let mut dict = vec![0u8; 4096];
    let mut out = vec![0u8; out_len];
    let _ = tailrouter_unpack::unpack(data, &mut dict, &mut out);
});

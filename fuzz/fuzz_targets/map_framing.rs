//! Map responses as they arrive on the HTTP/2 body: little-endian length prefixes, zstd or
//! plain JSON, split at arbitrary points. The first byte picks compression and the split size.
#![no_main]

use control_client::framing::{Limits, MapDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let limits = Limits::default();
    let mut dec = MapDecoder::new(ctl & 1 == 1, limits);
    let step = usize::from(ctl >> 1).max(1);
    for chunk in rest.chunks(step) {
        dec.push(chunk);
        loop {
            match dec.next_message() {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = dec.finish();
});

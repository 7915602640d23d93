//! MapResponse JSON from control, folded into a network map: a sequence of responses split by
//! a NUL byte, so deltas are applied on top of earlier full maps.
#![no_main]

use control_client::NetworkMap;
use libfuzzer_sys::fuzz_target;
use tailcfg::map::MapResponse;

fuzz_target!(|data: &[u8]| {
    let mut nm = NetworkMap::new();
    for part in data.split(|b| *b == 0) {
        if let Ok(resp) = serde_json::from_slice::<MapResponse>(part) {
            let _ = nm.apply(resp);
        }
    }
});

//! The state file from flash: ours or Go tailscaled's, possibly truncated or damaged.
#![no_main]

use ipn::state::{MemStore, StateStore, load};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let store = MemStore::new();
    if store.write(data).is_err() {
        return;
    }
    let _ = load(&store);
});

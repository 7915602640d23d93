//! The first decrypted bytes from control: the early payload header and its JSON, or HTTP/2.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = control_client::early::parse(data);
});

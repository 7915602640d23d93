//! UDP payloads on the shared socket: the demux, disco packets, and disco messages (as they
//! are after opening the box).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wg_engine::disco::{Message, Packet, classify};

fuzz_target!(|data: &[u8]| {
    let _ = classify(data);
    let _ = Packet::parse(data);
    let _ = Message::parse(data);
});

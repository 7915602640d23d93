//! The CA anchor file from flash (or `SSL_CERT_FILE`): any bytes must parse or give an error,
//! and what parses must write back to the same bytes and parse to the same anchors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailcfg::anchors::{encode, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(anchors) = parse(data) else { return };
    let again = encode(&anchors).expect("parsed anchors encode");
    assert_eq!(again, data, "the encoding is canonical");
    assert_eq!(parse(&again).expect("encoded anchors parse"), anchors);
});

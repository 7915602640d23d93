//! A UPnP device's SOAP answers: the first byte picks the HTTP status (200 or 500) and the
//! action, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portmapper::upnp::soap;

const ACTIONS: [&str; 4] = [
    "AddPortMapping",
    "AddAnyPortMapping",
    "GetExternalIPAddress",
    "DeletePortMapping",
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let status = if first & 1 == 0 { 200 } else { 500 };
    let action = ACTIONS[usize::from(first >> 1) % ACTIONS.len()];
    if let Ok(soap::Outcome::Ok(args)) = soap::parse_response(status, body, action) {
        let _ = soap::arg(&args, "NewExternalIPAddress");
    }
});

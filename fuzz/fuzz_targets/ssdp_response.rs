//! SSDP answers to our M-SEARCH (any host on the LAN can send them), and the LOCATION URL
//! the client then resolves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portmapper::upnp::{HttpUrl, ssdp};
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = ssdp::parse_response(data) {
        let _ = r.is_gateway();
        if let Ok(u) = HttpUrl::parse(&r.location) {
            let _ = u.join(&r.usn);
            let at = u.at(Ipv4Addr::new(192, 168, 1, 1));
            assert_eq!(at.port, u.port);
        }
    }
});

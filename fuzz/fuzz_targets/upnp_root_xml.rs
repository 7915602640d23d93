//! The root device description a UPnP gateway serves, and the choice of control URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portmapper::upnp::{self, HttpUrl, xml};

fuzz_target!(|data: &[u8]| {
    let doc = String::from_utf8_lossy(data);
    if let Ok(root) = xml::parse_root(&doc) {
        assert!(root.services.len() <= xml::MAX_SERVICES);
        if let Ok(loc) = HttpUrl::parse("http://192.168.1.1:5000/rootDesc.xml") {
            let _ = upnp::choose_service(&root, &loc);
        }
    }
});

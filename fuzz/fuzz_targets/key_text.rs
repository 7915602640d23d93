//! Key text forms arrive from control (JSON) and from the state file: any string must parse
//! to a key or an error, and a parsed key must print back to the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tailcfg::key::{MachinePrivate, NodePublic};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(k) = s.parse::<NodePublic>() {
        let again: NodePublic = k.to_string().parse().expect("printed key parses");
        assert_eq!(again, k);
    }
    if let Ok(k) = MachinePrivate::from_text(s) {
        assert_eq!(MachinePrivate::from_text(&k.to_text()).ok(), Some(k));
    }
    let _ = serde_json_like(s);
});

/// Keys also arrive inside JSON strings.
fn serde_json_like(s: &str) -> Option<NodePublic> {
    s.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

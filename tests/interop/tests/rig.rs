//! The rig itself works: two Go nodes join headscale, list each other and pass traffic.
//! If this fails, no tailrouter interop result can be trusted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::{Rig, TailnetNode, wait_for};
use std::time::Duration;

#[test]
fn two_go_nodes_join_headscale_and_ping() {
    let mut rig = Rig::new("smoke").unwrap();
    eprintln!(
        "peers: tailscale {} headscale {}",
        rig.peers.tailscale_version, rig.peers.headscale_version
    );
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let a = rig.go_node("a").unwrap();
    let b = rig.go_node("b").unwrap();
    a.up(&hs, &key).unwrap();
    b.up(&hs, &key).unwrap();
    wait_for(
        "a and b to list each other",
        Duration::from_secs(30),
        || {
            let ab = a.peer_names().ok()?.contains(&"b".to_string());
            let ba = b.peer_names().ok()?.contains(&"a".to_string());
            (ab && ba).then_some(())
        },
    )
    .unwrap();
    let ip_b = b.ipv4().unwrap();
    assert!(ip_b.starts_with("100."), "{ip_b}");
    // Disco ping first: it finds the path (DERP, then direct) and the WireGuard session.
    let pong = a
        .tailscale(&["ping", "--c", "10", "--timeout", "3s", &ip_b])
        .unwrap();
    assert!(pong.contains("pong from b"), "{pong}");
    // Then the kernel's ping through both TUN devices: up to 20 s for three replies.
    let out = a
        .host
        .cmd("ping")
        .args(["-c", "3", "-i", "0.3", "-w", "20", &ip_b])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ping a -> b over the tailnet failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(hs.nodes().unwrap().len(), 2);
}

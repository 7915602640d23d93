//! The data plane under a tailnet policy and through Tailscale's own DERP server, against Go
//! tailscaled v1.98.5 and headscale v0.29.3:
//!
//! - headscale with an ACL policy, compiled into the `PacketFilter` it sends to tailrouter:
//!   tailrouter's packet filter lets in what the policy grants and drops the rest, and lets in
//!   the replies to flows it started itself.
//! - Tailscale's real `derper` as the only DERP region (headscale's embedded DERP off): a
//!   DERP-only Go node and tailrouter exchange ping and TCP both ways through it.
//!
//! Each test builds its own rig (namespaces on a bridge in a black hole); traffic goes only
//! between the rig's namespaces. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::{Connect, Rig, TailnetNode, echo_client, echo_server, tcp_connect, wait_for};
use serde_json::Value;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

/// How long a connection that the filter must drop is given: the SYN is sent and retransmitted
/// at least twice (1 s, 3 s) over a path just shown to work.
const DENIED: Duration = Duration::from_secs(5);

fn peer<'a>(st: &'a Value, host: &str) -> Option<&'a Value> {
    st.get("Peer")?
        .as_object()?
        .values()
        .find(|p| p["HostName"] == host)
}

/// Waits until `node` lists every one of `names` as a peer.
fn lists(rig: &Rig, node: &dyn TailnetNode, names: &[&str], label: &str) {
    wait_for(
        &format!("{} to list {names:?}", node.hostname()),
        LIMIT,
        || {
            let have = node.peer_names().ok()?;
            names
                .iter()
                .all(|n| have.iter().any(|h| h == n))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(label, 40)));
}

/// `ping` from `host`'s namespace to `ip`, until one answer comes (WireGuard's first
/// handshake may eat the first packets), then three more that must all be answered.
fn ping_ok(rig: &Rig, host: &interop::Host, ip: &str, what: &str, tr_label: &str) {
    host.ping_ok(ip, LIMIT)
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", rig.log_tail(tr_label, 60)));
}

/// Three pings from `host` to `ip` (0.5 s apart, 2 s for each answer) of which none may be
/// answered.
fn ping_denied(host: &interop::Host, ip: &str, what: &str) {
    let out = host
        .cmd("timeout")
        .args(["10", "ping", "-c", "3", "-i", "0.5", "-W", "2", ip])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" 0 received"),
        "{what}: ping {ip} must go unanswered: {text}"
    );
}

/// An echo server on `server`'s `ip:port`; one message from `client` must come back within
/// 30 s. The server is stopped afterwards.
fn echo_ok(
    rig: &Rig,
    (server, client): (&interop::Host, &interop::Host),
    ip: &str,
    port: u16,
    udp: bool,
    what: &str,
    tr_label: &str,
) {
    let proto = if udp { "udp" } else { "tcp" };
    let mut srv = echo_server(server, ip, port, udp).unwrap();
    let msg = format!("hello-{proto}-{port}");
    let got = wait_for(what, Duration::from_secs(30), || {
        echo_client(client, ip, port, udp, &msg)
    });
    let _ = srv.kill();
    let _ = srv.wait();
    match got {
        Ok(answer) => assert_eq!(answer, format!("echo:{msg}"), "{what}"),
        Err(e) => panic!("{e}\n{}", rig.log_tail(tr_label, 60)),
    }
}

/// The tailnet policy of [`acl_policy_is_enforced_by_tailrouter`], in headscale v0.29.3's
/// format (HuJSON; users as `name@`). The Go node `go` (user `gouser`) may open TCP port 7001
/// on tailrouter (user `truser`) and nothing else; tailrouter may reach `go` and `out` (user
/// `outsider`) on every protocol and port; `out` gets nothing towards tailrouter, but the
/// rule from tailrouter makes them peers, so its packets reach tailrouter's filter.
///
/// ICMP follows Go's filter (`wgengine/filter`, `runIn4`): an echo request passes when any rule
/// opens any port of the destination to the source, whatever its protocol. So `go` (TCP 7001)
/// may ping tailrouter, and `out` (no rule) may not.
const POLICY: &str = r#"{
  // tailrouter interop: ACLs enforced by tailrouter's packet filter.
  "acls": [
    {"action": "accept", "proto": "tcp", "src": ["gouser@"], "dst": ["truser@:7001"]},
    {"action": "accept", "src": ["truser@"], "dst": ["gouser@:*", "outsider@:*"]},
  ],
}
"#;

#[test]
fn acl_policy_is_enforced_by_tailrouter() {
    let t0 = Instant::now();
    let mut rig = Rig::new("pol").unwrap();
    let hs = rig.headscale_with_policy(POLICY).unwrap();
    let key = |user: &str| {
        let id = hs.create_user(user).unwrap();
        hs.preauth_key_for(&id).unwrap()
    };
    let (key_go, key_tr, key_out) = (key("gouser"), key("truser"), key("outsider"));
    let go = rig.go_node("go").unwrap();
    go.up(&hs, &key_go).unwrap();
    let out = rig.go_node("out").unwrap();
    out.up(&hs, &key_out).unwrap();
    let tr = rig.tailrouter_node("tr", false).unwrap();
    if let Err(e) = tr.up(&hs, &key_tr) {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 40));
    }
    lists(&rig, &tr, &["go", "out"], &tr.label);
    lists(&rig, &go, &["tr"], &tr.label);
    lists(&rig, &out, &["tr"], &tr.label);
    let label = tr.label.clone();
    let (go_ip, out_ip, tr_ip) = (go.ipv4().unwrap(), out.ipv4().unwrap(), tr.ipv4().unwrap());

    // Flows tailrouter starts: allowed by the policy at the Go end; their replies (echo
    // replies, SYN-ACKs, UDP answers) need no rule at tailrouter's end.
    ping_ok(&rig, &tr.host, &go_ip, "tailrouter -> go", &label);
    echo_ok(
        &rig,
        (&go.host, &tr.host),
        &go_ip,
        7003,
        false,
        "TCP tailrouter -> go",
        &label,
    );
    echo_ok(
        &rig,
        (&go.host, &tr.host),
        &go_ip,
        7004,
        true,
        "UDP tailrouter -> go",
        &label,
    );

    // go -> tailrouter TCP 7001: granted.
    let mut srv7001 = echo_server(&tr.host, &tr_ip, 7001, false).unwrap();
    let mut srv7002 = echo_server(&tr.host, &tr_ip, 7002, false).unwrap();
    let mut udp7001 = echo_server(&tr.host, &tr_ip, 7001, true).unwrap();
    let granted = |what: &str| {
        let got = wait_for(what, Duration::from_secs(30), || {
            echo_client(&go.host, &tr_ip, 7001, false, "granted")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&label, 60)));
        assert_eq!(got, "echo:granted", "{what}");
    };
    granted("TCP go -> tailrouter:7001");

    // go -> tailrouter TCP 7002: not granted. The server listens (it answers from its own
    // namespace), the path works (7001 just answered), so only the filter can stop the SYN.
    assert_eq!(
        echo_client(&tr.host, &tr_ip, 7002, false, "local").as_deref(),
        Some("echo:local"),
        "the 7002 server must answer locally"
    );
    let t = Instant::now();
    let got = tcp_connect(&go.host, &tr_ip, 7002, DENIED).unwrap();
    assert_eq!(
        got,
        Connect::TimedOut,
        "TCP go -> tailrouter:7002 must be dropped by tailrouter's filter\n{}",
        rig.log_tail(&label, 30)
    );
    assert!(
        t.elapsed() >= DENIED,
        "the attempt lasted {:?}",
        t.elapsed()
    );
    // UDP to 7001: the rule is TCP only.
    assert_eq!(
        echo_client(&tr.host, &tr_ip, 7001, true, "local").as_deref(),
        Some("echo:local"),
        "the UDP 7001 server must answer locally"
    );
    for _ in 0..2 {
        assert_eq!(
            echo_client(&go.host, &tr_ip, 7001, true, "udp-denied"),
            None,
            "UDP go -> tailrouter:7001 must be dropped (the rule is TCP only)"
        );
    }
    // And the granted port still works after the denials.
    granted("TCP go -> tailrouter:7001 again");

    // ICMP from go: Go's rule (any open port towards an address lets ICMP in) grants it.
    ping_ok(
        &rig,
        &go.host,
        &tr_ip,
        "go -> tailrouter (icmp via the 7001 rule)",
        &label,
    );

    // out: tailrouter reaches it (so their WireGuard session is up), it reaches nothing.
    ping_ok(&rig, &tr.host, &out_ip, "tailrouter -> out", &label);
    ping_denied(&out.host, &tr_ip, "out -> tailrouter (no rule)");
    assert_eq!(
        tcp_connect(&out.host, &tr_ip, 7001, DENIED).unwrap(),
        Connect::TimedOut,
        "TCP out -> tailrouter:7001 must be dropped (no rule for out)"
    );
    // The session with out still works the other way: the drops were the filter's, not a
    // broken path.
    ping_ok(&rig, &tr.host, &out_ip, "tailrouter -> out again", &label);

    for c in [&mut srv7001, &mut srv7002, &mut udp7001] {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Both peers' WireGuard sessions carried traffic to tailrouter.
    let st = tr.status().unwrap();
    for name in ["go", "out"] {
        let p = peer(&st, name).unwrap_or_else(|| panic!("no peer {name} in {st}"));
        assert!(p["RxBytes"].as_i64().unwrap_or(0) > 0, "{p}");
    }
    eprintln!("acl: {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn tailscale_derper_relays_between_go_and_tailrouter() {
    let t0 = Instant::now();
    let mut rig = Rig::new("dpr").unwrap();
    let derper = rig.derper().unwrap();
    let hs = rig.headscale_with_derper(&derper).unwrap();
    // headscale's embedded DERP server is off: nothing serves /derp on the control host.
    let derp_url = format!("{}/derp", hs.url);
    let code = hs
        .host
        .cmd("curl")
        .args([
            "-sS",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &derp_url,
        ])
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&code.stdout).into_owned();
    assert_eq!(code, "404", "headscale must not serve DERP at {derp_url}");

    let key = hs.preauth_key().unwrap();
    let go = rig
        .go_node_env("go", &[("TS_DEBUG_ALWAYS_USE_DERP", "1")])
        .unwrap();
    go.up(&hs, &key).unwrap();
    let tr = rig.tailrouter_node("tr", false).unwrap();
    if let Err(e) = tr.up(&hs, &key) {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 40));
    }
    lists(&rig, &tr, &["go"], &tr.label);
    lists(&rig, &go, &["tr"], &tr.label);
    let label = tr.label.clone();

    // The only DERP region the nodes were given is the derper's.
    let map: Value = serde_json::from_str(&go.tailscale(&["debug", "derp-map"]).unwrap()).unwrap();
    let regions = map["Regions"].as_object().unwrap();
    assert_eq!(regions.len(), 1, "{map}");
    let region = &regions[&derper.region_id.to_string()];
    assert_eq!(region["RegionCode"], derper.region_code.as_str(), "{map}");
    assert_eq!(region["Nodes"][0]["IPv4"], derper.host.ip.as_str(), "{map}");

    let sent_before = derper.counter("packets_sent").unwrap();
    let go_ip = go.ipv4().unwrap();
    let tr_ip = tr.ipv4().unwrap();
    ping_ok(&rig, &tr.host, &go_ip, "tailrouter -> go (derper)", &label);
    ping_ok(&rig, &go.host, &tr_ip, "go -> tailrouter (derper)", &label);
    echo_ok(
        &rig,
        (&go.host, &tr.host),
        &go_ip,
        7001,
        false,
        "TCP tailrouter -> go (derper)",
        &label,
    );
    echo_ok(
        &rig,
        (&tr.host, &go.host),
        &tr_ip,
        7001,
        false,
        "TCP go -> tailrouter (derper)",
        &label,
    );

    // The Go node relays through the derper's region, with no direct path.
    let st = go.status().unwrap();
    let p = peer(&st, "tr").unwrap();
    assert_eq!(p["CurAddr"], "", "{p}");
    assert_eq!(p["Relay"], derper.region_code.as_str(), "{p}");
    let st = tr.status().unwrap();
    let p = peer(&st, "go").unwrap();
    assert_eq!(p["Relay"], derper.region_code.as_str(), "{p}");
    // And the derper itself carried it: both nodes are its clients, and it forwarded at
    // least what the Go node sent and received above (4 echo requests and 4 replies; more
    // with TCP and the first pings, and tailrouter's side if it too went through DERP).
    let vars = derper.vars().unwrap();
    assert_eq!(vars["gauge_clients_local"], 2, "{vars}");
    let sent = derper.counter("packets_sent").unwrap() - sent_before;
    assert!(sent >= 8, "derper sent only {sent} packets: {vars}");
    eprintln!(
        "derper: {sent} packets relayed; {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

//! Data plane against Go tailscaled v1.98.5 and headscale's DERP: ICMP, TCP and UDP both
//! ways over a direct path and over DERP, and the upgrade from DERP to direct.
//!
//! Each test builds its own rig (namespaces on a bridge in a black hole); traffic goes only
//! between the rig's namespaces. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::{GoNode, Rig, TailnetNode, TailrouterNode, echo_client, echo_server, wait_for};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

fn peer<'a>(st: &'a Value, host: &str) -> Option<&'a Value> {
    st.get("Peer")?
        .as_object()?
        .values()
        .find(|p| p["HostName"] == host)
}

/// headscale, a Go node (with `go_env`) and a tailrouter node, both up, each listing the
/// other.
fn joined(rig: &mut Rig, go_env: &[(&str, &str)]) -> (interop::Headscale, GoNode, TailrouterNode) {
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node_env("go", go_env).unwrap();
    go.up(&hs, &key).unwrap();
    let tr = rig.tailrouter_node("tr", false).unwrap();
    if let Err(e) = tr.up(&hs, &key) {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 40));
    }
    interop::wait_listed(&tr, &go, LIMIT).unwrap();
    (hs, go, tr)
}

/// `ping` from `host`'s namespace to `ip`, until one answer comes (WireGuard's first
/// handshake may eat the first packets), then three more that must all be answered.
fn ping_ok(rig: &Rig, host: &interop::Host, ip: &str, what: &str, tr_label: &str) {
    host.ping_ok(ip, LIMIT)
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", rig.log_tail(tr_label, 60)));
}

/// TCP and UDP both ways between the two nodes' tailnet addresses.
fn tcp_udp_both_ways(rig: &Rig, go: &GoNode, tr: &TailrouterNode) {
    let go_ip = go.ipv4().unwrap();
    let tr_ip = tr.ipv4().unwrap();
    for (udp, port) in [(false, 7001u16), (true, 7002u16)] {
        let proto = if udp { "UDP" } else { "TCP" };
        for (server, server_ip, client, dir) in [
            (&go.host, &go_ip, &tr.host, "tailrouter -> go"),
            (&tr.host, &tr_ip, &go.host, "go -> tailrouter"),
        ] {
            let mut srv = echo_server(server, server_ip, port, udp).unwrap();
            let msg = format!("hello-{}-{port}", proto.to_lowercase());
            let got = wait_for(&format!("{proto} {dir}"), Duration::from_secs(30), || {
                echo_client(client, server_ip, port, udp, &msg)
            });
            let _ = srv.kill();
            let _ = srv.wait();
            match got {
                Ok(answer) => assert_eq!(answer, format!("echo:{msg}"), "{proto} {dir}"),
                Err(e) => panic!("{e}\n{}", rig.log_tail(&tr.label, 60)),
            }
        }
    }
}

#[test]
fn direct_path_icmp_tcp_udp_both_ways() {
    let t0 = Instant::now();
    let mut rig = Rig::new("dpa").unwrap();
    let (_hs, go, tr) = joined(&mut rig, &[]);
    let go_ip = go.ipv4().unwrap();
    let tr_ip = tr.ipv4().unwrap();
    ping_ok(&rig, &tr.host, &go_ip, "tailrouter -> go", &tr.label);
    ping_ok(&rig, &go.host, &tr_ip, "go -> tailrouter", &tr.label);
    tcp_udp_both_ways(&rig, &go, &tr);

    // Both sides settle on the direct path over the underlay.
    let go_under = format!("{}:41641", go.host.ip);
    let tr_under = format!("{}:41641", tr.host.ip);
    wait_for("tailrouter to use the direct path", LIMIT, || {
        let _ = tr
            .host
            .cmd("ping")
            .args(["-c", "1", "-W", "1", &go_ip])
            .output();
        let st = tr.status().ok()?;
        (peer(&st, "go")?["CurAddr"] == go_under.as_str()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&tr.label, 60)));
    wait_for("go to use the direct path", LIMIT, || {
        let _ = go
            .host
            .cmd("ping")
            .args(["-c", "1", "-W", "1", &tr_ip])
            .output();
        let st = go.status().ok()?;
        (peer(&st, "tr")?["CurAddr"] == tr_under.as_str()).then_some(())
    })
    .unwrap();
    let st = tr.status().unwrap();
    let p = peer(&st, "go").unwrap();
    assert!(p["RxBytes"].as_i64().unwrap() > 0, "{p}");
    assert!(p["TxBytes"].as_i64().unwrap() > 0, "{p}");
    assert_ne!(p["LastHandshake"], "0001-01-01T00:00:00Z", "{p}");
    let text = tr.tailscale(&["status"]).unwrap();
    eprintln!("{text}");
    assert!(
        text.contains(&format!("active; direct {go_under}")),
        "{text}"
    );
    // netcheck: STUN through the rig's DERP region saw our underlay address, and the region
    // is home.
    let nc = wait_for("a netcheck report", LIMIT, || {
        tr.tailscale(&["netcheck"])
            .ok()
            .filter(|t| t.contains("DERP latency"))
    })
    .unwrap();
    eprintln!("{nc}");
    assert!(nc.contains("\t* UDP: true"), "{nc}");
    assert!(nc.contains(&format!("\t* IPv4: yes, {tr_under}")), "{nc}");
    assert!(nc.contains("\t* Nearest DERP: tailrouter rig"), "{nc}");
    assert!(nc.contains("\t\t- rig: "), "{nc}");
    let js: Value =
        serde_json::from_str(&tr.tailscale(&["netcheck", "--format=json"]).unwrap()).unwrap();
    assert_eq!(js["PreferredDERP"], 999, "{js}");
    assert_eq!(js["GlobalV4"], tr_under.as_str(), "{js}");
    // The Go node got our endpoints from control (its netmap lists them for us).
    let nm: Value = serde_json::from_str(&go.tailscale(&["debug", "netmap"]).unwrap()).unwrap();
    let me = nm["Peers"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["Name"].as_str().is_some_and(|n| n.starts_with("tr.")))
        })
        .cloned()
        .unwrap_or(Value::Null);
    assert!(
        me["Endpoints"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == tr_under.as_str())),
        "our endpoints in Go's netmap: {}",
        me["Endpoints"]
    );
    // TSMP pings through the tunnel, both ways: Go answers ours, we answer Go's.
    let pong = tr.tailscale(&["ping", "--tsmp", "go"]).unwrap();
    assert!(
        pong.starts_with(&format!("pong from go ({go_ip}) via TSMP in ")),
        "{pong}"
    );
    let pong = go.tailscale(&["ping", "--tsmp", "--c=1", &tr_ip]).unwrap();
    assert!(pong.contains("pong from tr ("), "{pong}");
    // `tailscale ping` (disco) answers over the direct path and stops there.
    let pong = tr.tailscale(&["ping", "go"]).unwrap();
    assert!(
        pong.lines()
            .last()
            .is_some_and(|l| l.starts_with(&format!("pong from go ({go_ip}) via {go_under} in "))),
        "{pong}"
    );
    eprintln!("direct: {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn derp_only_go_node_icmp_tcp_udp_both_ways() {
    let t0 = Instant::now();
    let mut rig = Rig::new("dpb").unwrap();
    let (_hs, go, tr) = joined(&mut rig, &[("TS_DEBUG_ALWAYS_USE_DERP", "1")]);
    let go_ip = go.ipv4().unwrap();
    let tr_ip = tr.ipv4().unwrap();
    ping_ok(&rig, &tr.host, &go_ip, "tailrouter -> go (DERP)", &tr.label);
    ping_ok(&rig, &go.host, &tr_ip, "go -> tailrouter (DERP)", &tr.label);
    tcp_udp_both_ways(&rig, &go, &tr);
    // The Go node relays everything through the rig's DERP region.
    let st = go.status().unwrap();
    let p = peer(&st, "tr").unwrap();
    assert_eq!(p["CurAddr"], "", "{p}");
    assert_eq!(p["Relay"], "rig", "{p}");
    eprintln!("derp-only: {:.1}s", t0.elapsed().as_secs_f64());
}

/// Blocks (or unblocks) the underlay path from `host` to `ip` with a blackhole route, which
/// leaves the DERP server (another host) reachable.
fn blackhole(host: &interop::Host, ip: &str, on: bool) {
    let verb = if on { "add" } else { "del" };
    let st = Command::new("ip")
        .args([
            "-n",
            &host.ns,
            "route",
            verb,
            "blackhole",
            &format!("{ip}/32"),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "ip route {verb} blackhole {ip}");
}

#[test]
fn derp_first_then_upgrade_to_direct() {
    let t0 = Instant::now();
    let mut rig = Rig::new("dpc").unwrap();
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go.up(&hs, &key).unwrap();
    let tr = rig.tailrouter_node("tr", false).unwrap();
    // No direct path between the two hosts at first.
    blackhole(&tr.host, &go.host.ip, true);
    tr.up(&hs, &key)
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&tr.label, 40)));
    interop::wait_listed(&tr, &go, LIMIT).unwrap();
    let go_ip = go.ipv4().unwrap();
    ping_ok(
        &rig,
        &tr.host,
        &go_ip,
        "tailrouter -> go over DERP",
        &tr.label,
    );
    let st = tr.status().unwrap();
    let p = peer(&st, "go").unwrap();
    assert_eq!(p["CurAddr"], "", "no direct path while blocked: {p}");
    // A disco ping is answered through DERP, and `--until-direct` fails while blocked.
    let pong = tr
        .tailscale(&["ping", "--c=1", "--until-direct=false", &go_ip])
        .unwrap();
    assert!(
        pong.starts_with(&format!("pong from go ({go_ip}) via DERP(rig) in ")),
        "{pong}"
    );
    assert!(tr.tailscale(&["ping", "--c=1", &go_ip]).is_err());
    // Open the path: traffic moves to it without a restart.
    blackhole(&tr.host, &go.host.ip, false);
    let go_under = format!("{}:41641", go.host.ip);
    wait_for("the path to upgrade to direct", LIMIT, || {
        let _ = tr
            .host
            .cmd("ping")
            .args(["-c", "1", "-W", "1", &go_ip])
            .output();
        let st = tr.status().ok()?;
        (peer(&st, "go")?["CurAddr"] == go_under.as_str()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&tr.label, 60)));
    ping_ok(&rig, &tr.host, &go_ip, "tailrouter -> go direct", &tr.label);
    eprintln!("upgrade: {:.1}s", t0.elapsed().as_secs_f64());
}

//! The router jobs against Go tailscaled v1.98.5 and headscale v0.29: tailrouter as subnet
//! router (SNAT on and off), as exit node for a Go node, and using a Go node as its exit
//! node, with names resolving through quad-100 throughout; routes, rules and firewall of
//! tailrouter's namespace restored exactly once it exits.
//!
//! A "LAN" or "internet" host is a namespace wired by a veth to one node only, with a
//! black-hole default route: its traffic can only be what the node forwards. Every wait is
//! bounded; the rig removes its namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::dns::dig;
use interop::{
    GoNode, Headscale, Host, Rig, TailnetNode, TailrouterNode, net_state, python_server, run,
    wait_for, wait_listed,
};
use serde_json::Value;
use std::process::Child;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// A server process, killed and reaped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP server on `ip:port` in `host` that answers each connection with the address it came
/// from: what SNAT did is then plain to see.
fn who_server(host: &Host, ip: &str, port: u16) -> Server {
    let code = format!(
        "import socket\ns=socket.socket(socket.AF_INET6 if ':' in '{ip}' else socket.AF_INET)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{ip}',{port}))\ns.listen(8)\ns.settimeout(120)\n\
         while True:\n c,a=s.accept()\n c.sendall(a[0].encode())\n c.close()\n"
    );
    Server(python_server(host, &code).unwrap())
}

/// Waits until `who_am_i` answers; panics with tailrouter's log if it never does.
fn reach(rig: &Rig, from: &Host, ip: &str, port: u16, what: &str, tr: &TailrouterNode) -> String {
    match wait_for(what, LIMIT, || from.who_am_i(ip, port)) {
        Ok(s) => s,
        Err(e) => panic!("{e}\n{}", rig.log_tail(&tr.label, 60)),
    }
}

fn sysctl(host: &Host, kv: &str) {
    run(host.cmd("sysctl").args(["-qw", kv])).unwrap();
}

/// `tailscale up` arguments for `name` on `hs` with `key`, then `extra`.
fn up_args(hs: &Headscale, key: &str, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "up".to_string(),
        format!("--login-server={}", hs.url),
        format!("--auth-key={key}"),
        format!("--hostname={name}"),
        "--accept-dns=false".to_string(),
        "--timeout=50s".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `tailscale up` for a Go node with extra flags.
fn go_up(go: &GoNode, hs: &Headscale, key: &str, extra: &[&str]) {
    let args = up_args(hs, key, &go.name, extra);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    go.tailscale(&a).unwrap();
}

/// `tailscale up` for tailrouter with extra flags; panics with its log on failure.
fn tr_up(rig: &Rig, tr: &TailrouterNode, hs: &Headscale, key: &str, extra: &[&str]) {
    let args = up_args(hs, key, &tr.name, extra);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    if let Err(e) = tr.tailscale(&a) {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 60));
    }
}

/// Stops tailrouter with SIGTERM and waits for it to exit (10 s at most).
fn stop(rig: &mut Rig, tr: &TailrouterNode) {
    rig.stop(&tr.label).unwrap();
}

/// An "internet" for an exit node on `node`: a gateway namespace on a /30 from the node
/// (198.51.100.2 on the node, 198.51.100.1 on the gateway) and behind it a host at
/// 203.0.113.2 that only knows its way back to the gateway. The node reaches 203.0.113.0/24
/// through the gateway; nothing does SNAT but the exit node. Not an attached network of the
/// exit node, which Tailscale exit nodes refuse to forward to (a guest Wi-Fi's rule).
fn internet_behind(rig: &mut Rig, node: &Host) -> Host {
    let gw = rig.bare_host("gw").unwrap();
    rig.wire(
        (node, "wan0", "198.51.100.2/30"),
        (&gw, "eth0", "198.51.100.1/30"),
    )
    .unwrap();
    let inet = rig.host_behind("inet", &gw, "eth1", "203.0.113").unwrap();
    sysctl(&gw, "net.ipv4.ip_forward=1");
    run(node
        .cmd("ip")
        .args(["route", "add", "203.0.113.0/24", "via", "198.51.100.1"]))
    .unwrap();
    inet
}

/// A DNS query for `name`, type A, recursion desired.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x4a, 0x11, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// What Go clients do with an exit node of capability 26 or newer: DNS over HTTP to the
/// PeerAPI URL the exit node announces. The URL is the one the Go node itself shows for the
/// exit node (from our Hostinfo, through headscale); the request goes from the Go node's
/// namespace through its tunnel. Go's own resolver would only use it with `--accept-dns`,
/// which makes Go rewrite files in this machine's /etc, so the HTTP client here is Python.
fn exit_node_dns_via_peerapi(go: &GoNode, tr_ip: &str) {
    let st = go.status().unwrap();
    let urls = peer(&st, "tr")["PeerAPIURL"].clone();
    let base = urls
        .as_array()
        .and_then(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .find(|u| u.contains(tr_ip))
        })
        .unwrap_or_else(|| panic!("go shows no IPv4 PeerAPI URL for tr: {urls}"))
        .to_string();
    let fetch = |name: &str| -> (u16, Vec<u8>) {
        let q: String = dns_query(name).iter().map(|b| format!("{b:02x}")).collect();
        // RFC 8484 GET: the query in unpadded base64url.
        let code = format!(
            "import base64, urllib.request, urllib.error\n\
             q = base64.urlsafe_b64encode(bytes.fromhex('{q}')).rstrip(b'=').decode()\n\
             try:\n    r = urllib.request.urlopen('{base}/dns-query?dns=' + q, timeout=10)\n    \
             print(r.status, r.read().hex())\n\
             except urllib.error.HTTPError as e:\n    print(e.code, e.read().hex())\n"
        );
        let out = go.host.cmd("python3").args(["-c", &code]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut parts = text.split_whitespace();
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "DoH fetch failed: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let hex = parts.next().unwrap_or("");
        let body = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        (status, body)
    };
    let (status, answer) = fetch("www.example.test");
    assert_eq!(status, 200, "DoH answer: {answer:?}");
    assert_eq!(&answer[..2], &[0x4a, 0x11], "the query's ID");
    assert_eq!(answer[3] & 0x0f, 0, "NOERROR");
    assert_eq!(u16::from_be_bytes([answer[6], answer[7]]), 1, "one answer");
    assert_eq!(
        &answer[answer.len() - 4..],
        &[203, 0, 113, 80],
        "the A record"
    );
}

fn peer<'a>(st: &'a Value, host: &str) -> &'a Value {
    st["Peer"]
        .as_object()
        .and_then(|m| m.values().find(|p| p["HostName"] == host))
        .unwrap_or_else(|| panic!("no peer {host} in {st}"))
}

#[test]
fn subnet_router_with_snat_on_and_off() {
    let mut rig = Rig::new("sub").unwrap();
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go_up(&go, &hs, &key, &["--accept-routes"]);
    let tr = rig.tailrouter_node("tr", false).unwrap();
    let lan = rig.host_behind("lan", &tr.host, "lan0", "10.77.0").unwrap();
    // The same LAN over IPv6 (no duplicate address detection: the addresses are usable at once).
    for (h, dev, addr) in [
        (&tr.host, "lan0", "fd00:77::1/64"),
        (&lan, "eth0", "fd00:77::2/64"),
    ] {
        run(h
            .cmd("ip")
            .args(["-6", "addr", "add", addr, "dev", dev, "nodad"]))
        .unwrap();
    }
    // The LAN host can answer tailnet addresses directly only through the router (its IPv4
    // default route is the router).
    run(lan.cmd("ip").args([
        "-6",
        "route",
        "add",
        "fd7a:115c:a1e0::/48",
        "via",
        "fd00:77::1",
    ]))
    .unwrap();
    sysctl(&tr.host, "net.ipv4.ip_forward=1");
    sysctl(&tr.host, "net.ipv6.conf.all.forwarding=1");
    let before = net_state(&tr.host, &tr.tun);

    tr_up(
        &rig,
        &tr,
        &hs,
        &key,
        &["--advertise-routes=10.77.0.0/24,fd00:77::/64"],
    );
    wait_listed(&tr, &go, LIMIT).unwrap();
    hs.approve_routes("tr", "10.77.0.0/24,fd00:77::/64")
        .unwrap();
    let srv = who_server(&lan, "10.77.0.2", 7100);
    let srv6 = who_server(&lan, "fd00:77::2", 7102);

    // SNAT on (the default): the LAN host sees the router's LAN address, in both families.
    let seen = reach(&rig, &go.host, "10.77.0.2", 7100, "go -> lan via tr", &tr);
    assert_eq!(seen, "10.77.0.1", "with SNAT the LAN sees the router");
    let seen = reach(
        &rig,
        &go.host,
        "fd00:77::2",
        7102,
        "go -> lan via tr, IPv6",
        &tr,
    );
    assert_eq!(
        seen, "fd00:77::1",
        "with SNAT the LAN sees the router (IPv6)"
    );
    let st = go.status().unwrap();
    let routes = peer(&st, "tr")["PrimaryRoutes"].to_string();
    assert!(routes.contains("10.77.0.0/24"), "{routes}");
    assert!(routes.contains("fd00:77::/64"), "{routes}");

    // SNAT off: the LAN host sees the Go node's tailnet address.
    tr_up(
        &rig,
        &tr,
        &hs,
        &key,
        &[
            "--advertise-routes=10.77.0.0/24,fd00:77::/64",
            "--snat-subnet-routes=false",
        ],
    );
    let go_ip = go.ipv4().unwrap();
    let seen = wait_for("the LAN sees the tailnet address", LIMIT, || {
        go.host.who_am_i("10.77.0.2", 7100).filter(|s| *s == go_ip)
    });
    if let Err(e) = seen {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 60));
    }
    let go_ip6 = go.tailscale(&["ip", "-6"]).unwrap().trim().to_string();
    let seen = wait_for("the LAN sees the tailnet address (IPv6)", LIMIT, || {
        go.host
            .who_am_i("fd00:77::2", 7102)
            .filter(|s| *s == go_ip6)
    });
    if let Err(e) = seen {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 60));
    }
    drop(srv6);
    // The LAN host reaches the Go node through the router, too (no SNAT needed that way).
    let back = who_server(&go.host, &go_ip, 7101);
    let seen = reach(&rig, &lan, &go_ip, 7101, "lan -> go via tr", &tr);
    assert_eq!(seen, "10.77.0.2");
    drop(back);
    drop(srv);

    stop(&mut rig, &tr);
    assert_eq!(net_state(&tr.host, &tr.tun), before, "state after exit");
}

/// Down, up, a crash (SIGKILL), a restart and an exit, with a subnet router and its firewall:
/// after `down` and after the exit the namespace is exactly as before the start; after the
/// crash it is not (rules and firewall are left behind), and the restarted daemon takes over
/// what the dead one left and leaves nothing either.
#[test]
fn state_is_restored_after_down_and_after_a_crash_and_restart() {
    let mut rig = Rig::new("rst").unwrap();
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go_up(&go, &hs, &key, &["--accept-routes"]);
    let tr = rig.tailrouter_node("tr", false).unwrap();
    let lan = rig.host_behind("lan", &tr.host, "lan0", "10.79.0").unwrap();
    sysctl(&tr.host, "net.ipv4.ip_forward=1");
    let before = net_state(&tr.host, &tr.tun);
    tr_up(&rig, &tr, &hs, &key, &["--advertise-routes=10.79.0.0/24"]);
    wait_listed(&tr, &go, LIMIT).unwrap();
    hs.approve_routes("tr", "10.79.0.0/24").unwrap();
    let srv = who_server(&lan, "10.79.0.2", 7300);
    assert_eq!(
        reach(&rig, &go.host, "10.79.0.2", 7300, "go -> lan", &tr),
        "10.79.0.1"
    );
    let running = net_state(&tr.host, &tr.tun);
    assert_ne!(running, before, "the router changed nothing?");

    tr.tailscale(&["down"]).unwrap();
    wait_for("the state after down", LIMIT, || {
        (net_state(&tr.host, &tr.tun) == before).then_some(())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nbefore:\n{before}\nafter down:\n{}",
            net_state(&tr.host, &tr.tun)
        )
    });
    assert_eq!(tr.status().unwrap()["BackendState"], "Stopped");
    assert_eq!(
        go.host.who_am_i("10.79.0.2", 7300),
        None,
        "the subnet is still routed after down"
    );

    tr_up(&rig, &tr, &hs, &key, &["--advertise-routes=10.79.0.0/24"]);
    assert_eq!(
        reach(&rig, &go.host, "10.79.0.2", 7300, "go -> lan after up", &tr),
        "10.79.0.1"
    );

    // A crash: nothing is cleaned up...
    rig.signal(&tr.label, "KILL").unwrap();
    rig.stop(&tr.label).unwrap();
    let crashed = net_state(&tr.host, &tr.tun);
    assert_ne!(
        crashed, before,
        "a SIGKILL left nothing behind? then this test proves nothing"
    );
    // ...until the daemon runs again: it logs in from its state file and routes at once.
    rig.start_tailrouter(&tr).unwrap();
    assert_eq!(
        reach(
            &rig,
            &go.host,
            "10.79.0.2",
            7300,
            "go -> lan after restart",
            &tr
        ),
        "10.79.0.1"
    );
    drop(srv);
    stop(&mut rig, &tr);
    assert_eq!(
        net_state(&tr.host, &tr.tun),
        before,
        "state after crash, restart and exit"
    );
}

#[test]
fn go_node_uses_tailrouter_as_exit_node() {
    let mut rig = Rig::new("exo").unwrap();
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go_up(&go, &hs, &key, &[]);
    let tr = rig.tailrouter_node("tr", false).unwrap();
    let inet = internet_behind(&mut rig, &tr.host);
    // The exit node's own resolver is on the "internet" (and nowhere else): only DNS through
    // the exit node's PeerAPI can answer www.example.test for the Go node.
    let inet_dns = Host {
        ns: inet.ns.clone(),
        ip: "203.0.113.2".into(),
    };
    interop::dns::dnsmasq_on(
        &mut rig,
        &inet_dns,
        "inet",
        &[("example.test", "203.0.113.80")],
    )
    .unwrap();
    std::fs::write(
        tr.socket.with_file_name("resolv.conf"),
        "nameserver 203.0.113.2\n",
    )
    .unwrap();
    // A LAN on the exit node that is not advertised: users of the exit node must not reach it.
    let lan = rig.host_behind("lan", &tr.host, "lan0", "10.78.0").unwrap();
    sysctl(&tr.host, "net.ipv4.ip_forward=1");
    sysctl(&tr.host, "net.ipv6.conf.all.forwarding=1");
    let before = net_state(&tr.host, &tr.tun);
    tr_up(&rig, &tr, &hs, &key, &["--advertise-exit-node"]);
    wait_listed(&tr, &go, LIMIT).unwrap();
    hs.approve_routes("tr", "0.0.0.0/0,::/0").unwrap();
    let tr_ip = tr.ipv4().unwrap();
    wait_for("go sees tr as an exit node", LIMIT, || {
        let st = go.status().ok()?;
        (peer(&st, "tr")["ExitNodeOption"] == true).then_some(())
    })
    .unwrap();
    go_up(&go, &hs, &key, &[&format!("--exit-node={tr_ip}")]);
    let srv = who_server(&inet, "203.0.113.2", 7200);
    let seen = reach(
        &rig,
        &go.host,
        "203.0.113.2",
        7200,
        "go -> internet via tr",
        &tr,
    );
    assert_eq!(seen, "198.51.100.2", "the exit node masquerades");
    drop(srv);
    exit_node_dns_via_peerapi(&go, &tr_ip);
    // The exit node's own LAN stays closed (the same server answers the LAN host itself).
    let lan_srv = who_server(&lan, "10.78.0.2", 7201);
    assert_eq!(
        tr.host.who_am_i("10.78.0.2", 7201).as_deref(),
        Some("10.78.0.1")
    );
    assert_eq!(
        go.host.who_am_i("10.78.0.2", 7201),
        None,
        "LAN reached via exit node"
    );
    drop(lan_srv);
    // The tailnet itself still works while Go sends everything through us.
    let seen_tr = tr.status().unwrap();
    assert_eq!(seen_tr["BackendState"], "Running");
    stop(&mut rig, &tr);
    assert_eq!(net_state(&tr.host, &tr.tun), before, "state after exit");
}

#[test]
fn tailrouter_uses_a_go_exit_node_and_names_still_resolve() {
    let mut rig = Rig::new("exu").unwrap();
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    let inet = internet_behind(&mut rig, &go.host);
    sysctl(&go.host, "net.ipv4.ip_forward=1");
    sysctl(&go.host, "net.ipv6.conf.all.forwarding=1");
    go_up(&go, &hs, &key, &["--advertise-exit-node"]);
    let tr = rig.tailrouter_node("tr", false).unwrap();
    let before = net_state(&tr.host, &tr.tun);
    tr_up(&rig, &tr, &hs, &key, &[]);
    wait_listed(&tr, &go, LIMIT).unwrap();
    hs.approve_routes("go", "0.0.0.0/0,::/0").unwrap();
    wait_for("tr sees go as an exit node", LIMIT, || {
        let st = tr.status().ok()?;
        (peer(&st, "go")["ExitNodeOption"] == true).then_some(())
    })
    .unwrap();
    // By name, as a router owner would type it.
    tr_up(&rig, &tr, &hs, &key, &["--exit-node=go"]);
    let srv = who_server(&inet, "203.0.113.2", 7300);
    let seen = reach(
        &rig,
        &tr.host,
        "203.0.113.2",
        7300,
        "tr -> internet via go",
        &tr,
    );
    assert_eq!(seen, "198.51.100.2", "Go's exit node masquerades");
    drop(srv);
    let st = tr.status().unwrap();
    assert_eq!(peer(&st, "go")["ExitNode"], true, "{st}");

    // Quad-100 still answers tailnet names.
    let suffix = st["MagicDNSSuffix"].as_str().unwrap().to_string();
    let go_ip = go.ipv4().unwrap();
    let name = format!("go.{suffix}");
    let d = wait_for("quad-100 answers with the exit node in use", LIMIT, || {
        dig(&tr.host, "100.100.100.100", &name, "A", &[])
    })
    .unwrap();
    assert!(
        d.answers.iter().any(|(t, v)| t == "A" && *v == go_ip),
        "{d:?}"
    );

    // Control is still reached by the ordinary routes: a rename in headscale arrives.
    let id = hs.node_id("go").unwrap();
    hs.cli(&[
        "nodes",
        "rename",
        "--identifier",
        &id,
        "go-renamed",
        "-o",
        "json",
    ])
    .unwrap();
    wait_for("the rename reaches tailrouter", LIMIT, || {
        let st = tr.status().ok()?;
        st["Peer"]
            .as_object()?
            .values()
            .any(|p| {
                p["DNSName"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("go-renamed."))
            })
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&tr.label, 60)));

    // Leaving the exit node puts the default route back where it was.
    tr_up(&rig, &tr, &hs, &key, &["--exit-node="]);
    wait_for("the exit route is gone", LIMIT, || {
        let out = tr
            .host
            .cmd("ip")
            .args(["route", "show", "table", "52"])
            .output()
            .ok()?;
        (!String::from_utf8_lossy(&out.stdout).contains("default")).then_some(())
    })
    .unwrap();
    stop(&mut rig, &tr);
    assert_eq!(net_state(&tr.host, &tr.tun), before, "state after exit");
}

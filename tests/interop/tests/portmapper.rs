//! The `portmapper` crate against a real gateway: Debian's miniupnpd 2.3.1 (nftables
//! backend) with NAT-PMP, PCP and UPnP IGD on.
//!
//! Topology, all namespaces of the rig (each also on the rig's black-hole bridge):
//!
//! ```text
//!   cli 192.168.77.2 ──lan── 192.168.77.1 gw 11.77.0.1 ──wan── 11.77.0.2 isp
//!   (portmap example,          (miniupnpd on lan0,          (a "peer on the
//!    default route via gw)      ext_ifname wan0)             internet")
//! ```
//!
//! miniupnpd refuses to map when its WAN address is private or reserved (every RFC 1918,
//! CGNAT and documentation range counts), so the WAN link carries 11.77.0.0/24; it exists
//! only between two namespaces of the rig and nothing is routed beyond them.
//!
//! For each protocol alone (the example's `--protocol`), the example, run in `cli` with the
//! gateway found from its `/proc/net/route`: probes, maps UDP 41641, renews at once, holds.
//! The test then checks that the external address is the gateway's WAN address, that
//! miniupnpd holds the mapping (its nftables DNAT rule and its lease file, whose description
//! says which protocol made it), and that a datagram from `isp` to the external address
//! reaches a server in `cli` and is answered. On SIGTERM the example releases; the rule and
//! the lease are gone and the datagram no longer passes. A last run with every protocol
//! allowed shows the probe finds all three and NAT-PMP is preferred.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::{Host, Rig, TailnetNode, echo_client, echo_server, portmap_bin, run, wait_for};
use std::path::Path;
use std::time::{Duration, Instant};

const MINIUPNPD: &str = "/usr/sbin/miniupnpd";
const LAN_GW: &str = "192.168.77.1";
const LAN_CLI: &str = "192.168.77.2";
const WAN_GW: &str = "11.77.0.1";
const WAN_ISP: &str = "11.77.0.2";
const PORT: u16 = 41641;
const LIMIT: Duration = Duration::from_secs(20);

/// The firewall miniupnpd adds its rules to (what Debian's nft_init.sh would create, with
/// our table and chain names); replies to mapped flows are let back out.
const NFT_INIT: &str = "table inet miniupnpd {
    chain forward { type filter hook forward priority 0; policy drop;
        ct state established,related accept
        jump forward_miniupnpd; }
    chain forward_miniupnpd { }
    chain prerouting { type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd; }
    chain postrouting { type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd; }
    chain prerouting_miniupnpd { }
    chain postrouting_miniupnpd { }
}
";

fn ip(args: &[&str]) {
    run(std::process::Command::new("ip").args(args)).unwrap();
}

fn sh(host: &Host, args: &[&str]) -> String {
    let out = run(host.cmd(args[0]).args(&args[1..])).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// miniupnpd's DNAT rules.
fn dnat_rules(gw: &Host) -> String {
    sh(
        gw,
        &[
            "nft",
            "list",
            "chain",
            "inet",
            "miniupnpd",
            "prerouting_miniupnpd",
        ],
    )
}

/// One line the example printed: its `key=value` fields.
fn fields(line: &str) -> Vec<(String, String)> {
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field<'a>(f: &'a [(String, String)], k: &str) -> &'a str {
    f.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {k} in {f:?}"))
}

/// The gateway between `cli` (its LAN side, default route moved to the gateway) and an
/// `isp` host on the WAN side, with miniupnpd running on it; returns (gw, isp, miniupnpd's
/// version).
fn gateway(rig: &mut Rig, cli: &Host) -> (Host, Host, String) {
    let gw = rig.host("gw").unwrap();
    let isp = rig.host("isp").unwrap();

    // LAN: gw lan0 <-> cli lan1; the client's default route leads to the gateway (which
    // forwards only towards isp: its own default route is the rig's black hole).
    ip(&[
        "link", "add", "lan0", "netns", &gw.ns, "type", "veth", "peer", "name", "lan1", "netns",
        &cli.ns,
    ]);
    ip(&[
        "-n",
        &gw.ns,
        "addr",
        "add",
        &format!("{LAN_GW}/24"),
        "dev",
        "lan0",
    ]);
    ip(&["-n", &gw.ns, "link", "set", "lan0", "up"]);
    ip(&[
        "-n",
        &cli.ns,
        "addr",
        "add",
        &format!("{LAN_CLI}/24"),
        "dev",
        "lan1",
    ]);
    ip(&["-n", &cli.ns, "link", "set", "lan1", "up"]);
    ip(&[
        "-n", &cli.ns, "route", "replace", "default", "via", LAN_GW, "dev", "lan1",
    ]);
    // WAN: gw wan0 <-> isp wan1.
    ip(&[
        "link", "add", "wan0", "netns", &gw.ns, "type", "veth", "peer", "name", "wan1", "netns",
        &isp.ns,
    ]);
    ip(&[
        "-n",
        &gw.ns,
        "addr",
        "add",
        &format!("{WAN_GW}/24"),
        "dev",
        "wan0",
    ]);
    ip(&["-n", &gw.ns, "link", "set", "wan0", "up"]);
    ip(&[
        "-n",
        &isp.ns,
        "addr",
        "add",
        &format!("{WAN_ISP}/24"),
        "dev",
        "wan1",
    ]);
    ip(&["-n", &isp.ns, "link", "set", "wan1", "up"]);
    sh(&gw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

    let nft = rig.dir.join("miniupnpd.nft");
    std::fs::write(&nft, NFT_INIT).unwrap();
    sh(&gw, &["nft", "-f", nft.to_str().unwrap()]);
    let leases = rig.dir.join("miniupnpd.leases");
    let conf = rig.dir.join("miniupnpd.conf");
    std::fs::write(
        &conf,
        format!(
            "ext_ifname=wan0\n\
             listening_ip=lan0\n\
             http_port=5000\n\
             enable_natpmp=yes\n\
             enable_upnp=yes\n\
             secure_mode=yes\n\
             system_uptime=no\n\
             notify_interval=60\n\
             lease_file={}\n\
             uuid=3b8b8e1c-0d3e-4a8e-9c5e-000000000077\n\
             upnp_table_name=miniupnpd\n\
             upnp_nat_table_name=miniupnpd\n\
             upnp_forward_chain=forward_miniupnpd\n\
             upnp_nat_chain=prerouting_miniupnpd\n\
             upnp_nat_postrouting_chain=postrouting_miniupnpd\n\
             allow 1024-65535 {LAN_CLI}/32 1024-65535\n\
             deny 0-65535 0.0.0.0/0 0-65535\n",
            leases.display()
        ),
    )
    .unwrap();
    let mut cmd = gw.cmd(MINIUPNPD);
    cmd.arg("-f")
        .arg(&conf)
        .arg("-d")
        .arg("-P")
        .arg(rig.dir.join("miniupnpd.pid"));
    rig.spawn("miniupnpd", cmd).unwrap();
    wait_for("miniupnpd to listen", LIMIT, || {
        let log = rig.log("miniupnpd");
        (log.contains("Listening for NAT-PMP/PCP traffic")
            && log.contains("HTTP listening on port"))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail("miniupnpd", 30)));
    let version = rig
        .log("miniupnpd")
        .lines()
        .find_map(|l| {
            l.split("version ")
                .nth(1)
                .map(|v| v.split(' ').next().unwrap_or("").to_string())
        })
        .unwrap_or_default();
    (gw, isp, version)
}

#[test]
fn natpmp_pcp_and_upnp_each_map_renew_and_release_on_miniupnpd() {
    let t0 = Instant::now();
    assert!(
        Path::new(MINIUPNPD).is_file(),
        "{MINIUPNPD} is missing: run bash interop/install-peers.sh (it installs Debian's \
         miniupnpd-nftables and nftables)"
    );
    let bin = portmap_bin().unwrap();
    let mut rig = Rig::without_peers("pm").unwrap();
    let cli = rig.host("cli").unwrap();
    let (gw, isp, version) = gateway(&mut rig, &cli);
    let leases = rig.dir.join("miniupnpd.leases");
    eprintln!("miniupnpd {version}, up after {:?}", t0.elapsed());

    // The server peers would reach: answers each datagram with "echo:" and the datagram.
    // On a failure the rig kills it with its namespace; it also exits after 60 s idle.
    let mut echo = echo_server(&cli, LAN_CLI, PORT, true).unwrap();

    for (proto, lease_desc) in [
        ("nat-pmp", "NAT-PMP 41641 udp".to_string()),
        ("pcp", "PCP MAP ".to_string()),
        ("upnp", "tailrouter".to_string()),
    ] {
        let t = Instant::now();
        let label = format!("portmap-{proto}");
        let mut cmd = cli.cmd(&bin);
        cmd.args([
            "--protocol",
            proto,
            "--port",
            "41641",
            "--mark",
            "0x80000",
            "--renew",
            "--hold",
            "60",
        ]);
        rig.spawn(&label, cmd).unwrap();
        let log = wait_for(&format!("{label} to renew its mapping"), LIMIT, || {
            let log = rig.log(&label);
            if log.contains("renewed ") || !rig.alive(&label) {
                Some(log)
            } else {
                None
            }
        })
        .unwrap();
        let line = |what: &str| -> Vec<(String, String)> {
            let l = log
                .lines()
                .find(|l| l.starts_with(what))
                .unwrap_or_else(|| {
                    panic!(
                        "{label}: no {what:?} line:\n{log}\n{}",
                        rig.log_tail("miniupnpd", 30)
                    )
                });
            fields(l)
        };
        let probe = line("probe ");
        let mapped = line("mapped ");
        let renewed = line("renewed ");
        assert_eq!(
            field(&probe, proto),
            "true",
            "{proto} answered the probe: {probe:?}"
        );
        assert_eq!(field(&mapped, "protocol"), proto);
        assert_eq!(
            field(&mapped, "gateway"),
            LAN_GW,
            "gateway from /proc/net/route"
        );
        assert_eq!(field(&mapped, "internal"), format!("{LAN_CLI}:{PORT}"));
        let external = field(&mapped, "external").to_string();
        let (ext_ip, ext_port) = external.rsplit_once(':').unwrap();
        let wan = sh(&gw, &["ip", "-4", "-o", "addr", "show", "dev", "wan0"]);
        assert!(
            wan.contains(&format!("inet {ext_ip}/")),
            "external {ext_ip} is not wan0's address: {wan}"
        );
        assert_eq!(ext_ip, WAN_GW);
        assert_eq!(
            field(&renewed, "external"),
            external,
            "renewal kept the port"
        );

        // miniupnpd holds it: its DNAT rule and its lease, made by this protocol.
        let rules = dnat_rules(&gw);
        assert!(
            rules.contains(&format!("th dport {ext_port} dnat ip to {LAN_CLI}:{PORT}")),
            "no DNAT rule for {external}:\n{rules}"
        );
        let lease_text = std::fs::read_to_string(&leases).unwrap_or_default();
        let lease = lease_text
            .lines()
            .find(|l| l.starts_with(&format!("UDP:{ext_port}:{LAN_CLI}:{PORT}:")))
            .unwrap_or_else(|| panic!("no lease for {external}:\n{lease_text}"));
        assert!(
            lease.contains(&lease_desc),
            "{proto} lease {lease:?} lacks {lease_desc:?}"
        );
        // A peer on the WAN side reaches the node through the mapping.
        let msg = format!("via-{proto}");
        assert_eq!(
            echo_client(&isp, ext_ip, ext_port.parse().unwrap(), true, &msg),
            Some(format!("echo:{msg}")),
            "{WAN_ISP} -> {external} did not reach {LAN_CLI}:{PORT}"
        );

        // Release on SIGTERM.
        rig.signal(&label, "TERM").unwrap();
        wait_for(&format!("{label} to release and exit"), LIMIT, || {
            (!rig.alive(&label)).then_some(())
        })
        .unwrap();
        let log = rig.log(&label);
        assert!(log.lines().any(|l| l == "released"), "{label}:\n{log}");
        let rules = dnat_rules(&gw);
        assert!(
            !rules.contains("dnat"),
            "{proto}: rule left after release:\n{rules}"
        );
        let lease_text = std::fs::read_to_string(&leases).unwrap_or_default();
        assert!(
            !lease_text.contains(&format!("UDP:{ext_port}:")),
            "{proto}: lease left after release:\n{lease_text}"
        );
        assert_eq!(
            echo_client(&isp, ext_ip, ext_port.parse().unwrap(), true, "after"),
            None,
            "{proto}: still reachable after release"
        );
        rig.stop(&label).unwrap();
        eprintln!(
            "{proto}: {external} mapped, renewed, reachable, released in {:?}",
            t.elapsed()
        );
    }

    let _ = echo.kill();
    let _ = echo.wait();

    // Every protocol allowed: the probe finds all three, NAT-PMP is chosen (Tailscale's
    // order), and without --hold the mapping is released at once.
    let out = run(cli
        .cmd("timeout")
        .arg("20")
        .arg(&bin)
        .args(["--protocol", "any"]))
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let probe = fields(text.lines().find(|l| l.starts_with("probe ")).unwrap());
    for p in ["nat-pmp", "pcp", "upnp"] {
        assert_eq!(field(&probe, p), "true", "{text}");
    }
    assert_eq!(field(&probe, "external-ip"), WAN_GW);
    let mapped = fields(text.lines().find(|l| l.starts_with("mapped ")).unwrap());
    assert_eq!(field(&mapped, "protocol"), "nat-pmp", "{text}");
    assert!(text.lines().any(|l| l == "released"), "{text}");
    assert!(!dnat_rules(&gw).contains("dnat"));
    eprintln!("all done in {:?}", t0.elapsed());
}

/// The daemon behind miniupnpd: it maps its WireGuard port by itself, and the mapped
/// endpoint reaches control and, through it, a Go peer's netmap; on exit the mapping is
/// released.
#[test]
fn the_daemon_reports_its_mapping_to_control() {
    assert!(
        Path::new(MINIUPNPD).is_file(),
        "{MINIUPNPD} is missing: run bash interop/install-peers.sh"
    );
    let mut rig = Rig::new("pmd").unwrap();
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go.up(&hs, &key).unwrap();
    let tr = rig.tailrouter_node("tr", false).unwrap();
    let (gw, _isp, _version) = gateway(&mut rig, &tr.host);
    // Started again, so its first probe already sees the gateway as its default route.
    rig.stop(&tr.label).unwrap();
    rig.start_tailrouter(&tr).unwrap();
    if let Err(e) = tr.up(&hs, &key) {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 40));
    }
    let want = format!("{WAN_GW}:");
    // Go's `debug netmap` prints the peers' endpoints as control sent them.
    let seen = wait_for(
        "the mapped endpoint in Go's netmap",
        Duration::from_secs(60),
        || {
            let nm = go.tailscale(&["debug", "netmap"]).ok()?;
            let at = nm.find(&want)?;
            let rest = &nm[at..];
            let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))?;
            Some(rest[..end].to_string())
        },
    )
    .unwrap_or_else(|e| {
        let nm = go.tailscale(&["debug", "netmap"]).unwrap_or_default();
        panic!("{e}\ngo netmap: {nm}\n{}", rig.log_tail(&tr.label, 20))
    });
    let port = seen.rsplit(':').next().unwrap();
    assert!(
        dnat_rules(&gw).contains(&format!("dport {port} dnat")),
        "{}",
        dnat_rules(&gw)
    );
    assert!(
        rig.log(&tr.label)
            .contains("port mapping: external endpoint")
    );
    rig.stop(&tr.label).unwrap();
    let gone = wait_for("the mapping released on exit", LIMIT, || {
        (!dnat_rules(&gw).contains(&format!("dport {port} dnat"))).then_some(())
    });
    gone.unwrap_or_else(|e| panic!("{e}\n{}", dnat_rules(&gw)));
}

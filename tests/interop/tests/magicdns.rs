//! MagicDNS on tailrouter's quad-100 against a real tailnet: headscale (MagicDNS on, base
//! domain `rig.test`, an extra record, a global nameserver and a split-DNS route, each a
//! Debian dnsmasq on a host of its own), a Go tailscaled v1.98.5 and tailrouter.
//!
//! `dig` in tailrouter's namespace asks 100.100.100.100 and fd7a:115c:a1e0::53, over UDP and
//! TCP: the Go peer's FQDN and short name, PTR for its address, the extra record, a missing
//! tailnet name, an outside name (forwarded to the global nameserver) and a split-DNS name
//! (forwarded to the split route's server). The tailnet answers are compared with what the Go
//! node's own quad-100 says for the same names. Every wait is bounded; traffic stays inside
//! the rig's namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::dns::{dig, dnsmasq};
use interop::{Rig, TailnetNode, wait_for};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn quad100_answers_tailnet_names_and_forwards_the_rest() {
    let mut rig = Rig::new("dns").unwrap();
    let global = dnsmasq(&mut rig, "ns1", &[("outside.example", "192.0.2.7")]).unwrap();
    let split = dnsmasq(&mut rig, "ns2", &[("split.example", "192.0.2.8")]).unwrap();
    let dns = format!(
        "  magic_dns: true\n  base_domain: rig.test\n  override_local_dns: true\n  nameservers:\n    global:\n      - {}\n    split:\n      split.example:\n        - {}\n  search_domains: []\n  extra_records:\n    - name: extra.rig.test\n      type: A\n      value: 100.100.5.5\n",
        global.ip, split.ip
    );
    let hs = rig
        .headscale_with(&interop::HeadscaleOptions {
            dns: Some(dns),
            ..Default::default()
        })
        .unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go.up(&hs, &key).unwrap();
    let tr = rig.tailrouter_node("tr", false).unwrap();
    // The host's own resolv.conf (the rig's stand-in for /etc/resolv.conf, see
    // `--resolv-conf`), which --accept-dns must keep and put back.
    let resolv = tr.socket.with_file_name("resolv.conf");
    let original = b"# the LAN's resolver\nnameserver 192.0.2.53\nsearch lan.example\n";
    std::fs::write(&resolv, original).unwrap();
    // tailrouter accepts the tailnet's DNS settings (routes, nameservers): `up` with
    // --accept-dns, which in this build does not touch the host's /etc/resolv.conf.
    if let Err(e) = tr.tailscale(&[
        "up",
        &format!("--login-server={}", hs.url),
        &format!("--auth-key={key}"),
        "--hostname=tr",
        "--accept-dns=true",
        "--timeout=50s",
    ]) {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 40));
    }
    interop::wait_listed(&tr, &go, LIMIT).unwrap();
    let go_ip = go.ipv4().unwrap();
    let tr_ip = tr.ipv4().unwrap();

    // The first answer may wait for the netmap to reach the resolver.
    let first = wait_for("quad-100 answers go.rig.test", LIMIT, || {
        let d = dig(&tr.host, "100.100.100.100", "go.rig.test", "A", &[])?;
        (d.status == "NOERROR" && !d.answers.is_empty()).then_some(d)
    });
    if let Err(e) = first {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 60));
    }

    let a = |ip: &str| vec![("A".to_string(), ip.to_string())];
    for server in ["100.100.100.100", "fd7a:115c:a1e0::53"] {
        for tcp in [false, true] {
            let flags: &[&str] = if tcp { &["+tcp"] } else { &[] };
            let what = format!("@{server}{}", if tcp { " over TCP" } else { "" });
            let q = |name: &str, t: &str| {
                dig(&tr.host, server, name, t, flags)
                    .unwrap_or_else(|| panic!("{what}: no answer for {name} {t}"))
            };
            let d = q("go.rig.test", "A");
            assert_eq!(
                (d.status.as_str(), d.aa),
                ("NOERROR", true),
                "{what}: {d:?}"
            );
            assert_eq!(d.answers, a(&go_ip), "{what}: FQDN");
            assert_eq!(q("go", "A").answers, a(&go_ip), "{what}: short name");
            assert_eq!(q("GO.Rig.Test.", "A").answers, a(&go_ip), "{what}: case");
            assert_eq!(q("extra.rig.test", "A").answers, a("100.100.5.5"), "{what}");
            let d = q("nothere.rig.test", "A");
            assert_eq!(
                (d.status.as_str(), d.aa),
                ("NXDOMAIN", true),
                "{what}: {d:?}"
            );
            let d = dig(&tr.host, server, "-x", &go_ip, flags).unwrap();
            assert_eq!(
                d.answers,
                vec![("PTR".to_string(), "go.rig.test.".to_string())],
                "{what}: PTR {go_ip}"
            );
            let d = q("www.outside.example", "A");
            assert_eq!(d.status, "NOERROR", "{what}: forwarded: {d:?}");
            assert_eq!(
                d.answers,
                a("192.0.2.7"),
                "{what}: via the global nameserver"
            );
            let d = q("host.split.example", "A");
            assert_eq!(d.answers, a("192.0.2.8"), "{what}: via the split route");
        }
    }
    // The forwarded names really went to the dnsmasq servers (their query logs).
    assert!(rig.log("dnsmasq-ns1").contains("www.outside.example"));
    assert!(rig.log("dnsmasq-ns2").contains("host.split.example"));
    assert!(!rig.log("dnsmasq-ns1").contains("host.split.example"));

    // --accept-dns wrote the resolv.conf: quad-100 first, the MagicDNS suffix, then the
    // original's search domain; `down` puts the original back byte for byte.
    let ours = std::fs::read_to_string(&resolv).unwrap();
    assert!(ours.contains("generated by tailscale"), "{ours}");
    assert!(ours.contains("nameserver 100.100.100.100"), "{ours}");
    assert!(ours.contains("search rig.test lan.example"), "{ours}");
    tr.tailscale(&["down"]).unwrap();
    wait_for("down to restore resolv.conf", LIMIT, || {
        (std::fs::read(&resolv).ok()? == original).then_some(())
    })
    .unwrap();
    tr.tailscale(&["up", "--accept-dns=true"]).unwrap();
    wait_for("up to write resolv.conf again", LIMIT, || {
        std::fs::read_to_string(&resolv)
            .ok()?
            .contains("nameserver 100.100.100.100")
            .then_some(())
    })
    .unwrap();

    // The Go node's own quad-100 says the same for the tailnet's names.
    let names = [
        ("go.rig.test", "A"),
        ("tr.rig.test", "A"),
        ("extra.rig.test", "A"),
        ("-x", go_ip.as_str()),
        ("-x", tr_ip.as_str()),
    ];
    for (name, t) in names {
        let ours = dig(&tr.host, "100.100.100.100", name, t, &[]).unwrap();
        let theirs = wait_for(&format!("Go's quad-100: {name} {t}"), LIMIT, || {
            let d = dig(&go.host, "100.100.100.100", name, t, &[])?;
            (d.status == "NOERROR" && !d.answers.is_empty()).then_some(d)
        })
        .unwrap();
        assert_eq!(
            (ours.status, ours.answers),
            (theirs.status, theirs.answers),
            "{name} {t}: tailrouter and Go tailscaled"
        );
    }
}

//! The router against the real kernel, inside network namespaces these tests create (root
//! needed; the tests fail, never skip, without it). Each namespace has black-hole default routes,
//! so nothing can leave it, and a TUN `ts0` that is up and attached, as the daemon's would be.
//! `ip` is used only to set up and to read the state back; after `close` (or drop) the
//! namespace must look exactly as before.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Netns, prefixes};
use osrouter::{BYPASS_MARK, Error, Router, RouterConfig};

const GO_RULES: &str = "\
5210:\tfrom all fwmark 0x80000/0xff0000 lookup main
5230:\tfrom all fwmark 0x80000/0xff0000 lookup default
5250:\tfrom all fwmark 0x80000/0xff0000 unreachable
5270:\tfrom all lookup 52
";

#[test]
fn set_change_close_restores_the_namespace() {
    assert_eq!(BYPASS_MARK, 0x80000);
    let ns = Netns::new("set", true);
    let inside = ns.handle();
    ns.run_inside(move || {
        let ns = inside;
        let tun = ns.attach_ts0();
        let before = ns.snapshot();
        let mut r = Router::new("ts0").unwrap();
        let first = RouterConfig {
            addresses: prefixes(&["100.101.102.103/32", "fd7a:115c:a1e0::1234/128"]),
            routes: prefixes(&[
                "100.64.0.0/10",
                "100.100.100.100/32",
                "10.1.0.0/16",
                "0.0.0.0/0",
                "fd7a:115c:a1e0::/48",
                "fd7a:115c:a1e0::53/128",
                "::/0",
            ]),
            local_routes: prefixes(&["192.168.88.0/24", "fd00:88::/64"]),
        };
        r.set(&first).unwrap();
        assert!(!r.ipv6_disabled());
        let v4 = ns.ip(&["-4", "addr", "show", "dev", "ts0"]);
        assert!(
            v4.contains("inet 100.101.102.103/32 scope global ts0"),
            "{v4}"
        );
        let v6 = ns.ip(&["-6", "addr", "show", "dev", "ts0"]);
        assert!(
            v6.contains("inet6 fd7a:115c:a1e0::1234/128 scope global"),
            "{v6}"
        );
        assert_eq!(
            ns.table52("-4"),
            "default dev ts0 \n10.1.0.0/16 dev ts0 \n100.64.0.0/10 dev ts0 \n\
             100.100.100.100 dev ts0 \nthrow 192.168.88.0/24 \n"
        );
        assert_eq!(
            ns.table52("-6"),
            // The kernel shows IPv6 throw routes on lo.
            "throw fd00:88::/64 dev lo metric 1024 pref medium\n\
             fd7a:115c:a1e0::53 dev ts0 metric 1024 pref medium\n\
             fd7a:115c:a1e0::/48 dev ts0 metric 1024 pref medium\n\
             default dev ts0 metric 1024 pref medium\n"
        );
        assert_eq!(ns.rules("-4"), GO_RULES);
        assert_eq!(ns.rules("-6"), GO_RULES);

        // A changed netmap: one address replaced, routes gone and added (host bits ignored),
        // a route turned into a throw route, throw routes gone.
        let second = RouterConfig {
            addresses: prefixes(&["100.101.102.104/32", "fd7a:115c:a1e0::1234/128"]),
            routes: prefixes(&[
                "100.64.0.0/10",
                "192.168.7.9/24",
                "fd7a:115c:a1e0::/48",
                "10.1.0.0/16",
            ]),
            local_routes: prefixes(&["10.1.0.0/16"]),
        };
        r.set(&second).unwrap();
        r.set(&second).unwrap(); // idempotent
        let v4 = ns.ip(&["-4", "addr", "show", "dev", "ts0"]);
        assert!(v4.contains("inet 100.101.102.104/32"), "{v4}");
        assert!(!v4.contains("100.101.102.103"), "{v4}");
        assert_eq!(
            ns.table52("-4"),
            "throw 10.1.0.0/16 \n100.64.0.0/10 dev ts0 \n192.168.7.0/24 dev ts0 \n"
        );
        assert_eq!(
            ns.table52("-6"),
            "fd7a:115c:a1e0::/48 dev ts0 metric 1024 pref medium\n"
        );
        assert_eq!(ns.rules("-4"), GO_RULES);
        r.close().unwrap();
        assert_eq!(ns.snapshot(), before);
        drop(tun);
    });
}

#[test]
fn drop_removes_everything_and_stale_rules_are_replaced() {
    let ns = Netns::new("drop", true);
    let inside = ns.handle();
    ns.run_inside(move || {
        let ns = inside;
        let tun = ns.attach_ts0();
        let before = ns.snapshot();
        // An earlier run left a rule at our preference with another mark.
        let stale = [
            "pref",
            "5210",
            "fwmark",
            "0x40000/0xff0000",
            "lookup",
            "main",
        ];
        ns.ip(&[&["-4", "rule", "add"][..], &stale].concat());
        ns.ip(&[&["-6", "rule", "add"][..], &stale].concat());
        let mut r = Router::new("ts0").unwrap();
        let cfg = RouterConfig {
            addresses: prefixes(&["100.64.0.7/32", "fd7a:115c:a1e0::7/128"]),
            routes: prefixes(&["100.64.0.0/10", "fd7a:115c:a1e0::/48"]),
            local_routes: Vec::new(),
        };
        r.set(&cfg).unwrap();
        assert_eq!(ns.rules("-4"), GO_RULES);
        assert_eq!(ns.rules("-6"), GO_RULES);
        drop(r);
        assert_eq!(ns.snapshot(), before);
        drop(tun);
    });
}

#[test]
fn ipv6_disabled_degrades_to_ipv4() {
    let ns = Netns::new("nov6", false);
    let inside = ns.handle();
    ns.run_inside(move || {
        let ns = inside;
        let tun = ns.attach_ts0();
        let before = ns.snapshot();
        let mut r = Router::new("ts0").unwrap();
        let cfg = RouterConfig {
            addresses: prefixes(&["100.64.0.9/32", "fd7a:115c:a1e0::9/128"]),
            routes: prefixes(&["100.64.0.0/10", "fd7a:115c:a1e0::/48", "::/0"]),
            local_routes: Vec::new(),
        };
        r.set(&cfg).unwrap();
        assert!(r.ipv6_disabled());
        r.set(&cfg).unwrap();
        let v4 = ns.ip(&["-4", "addr", "show", "dev", "ts0"]);
        assert!(v4.contains("inet 100.64.0.9/32"), "{v4}");
        assert_eq!(ns.table52("-4"), "100.64.0.0/10 dev ts0 \n");
        assert_eq!(ns.table52("-6"), "");
        assert_eq!(ns.rules("-4"), GO_RULES);
        r.close().unwrap();
        assert_eq!(ns.snapshot(), before);
        drop(tun);
    });
}

#[test]
fn unknown_interface_and_refusals_are_clear_errors() {
    let ns = Netns::new("err", true);
    ns.ip(&["tuntap", "add", "dev", "ts1", "mode", "tun"]); // left down
    let before = ns.snapshot();
    ns.run_inside(move || {
        let e = Router::new("nope0").unwrap_err();
        assert!(matches!(e, Error::Interface { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "looking up interface \"nope0\": No such device (os error 19)"
        );
        let e = Router::new("a-name-far-too-long").unwrap_err();
        assert!(e.to_string().contains("1 to 15 bytes"), "{e}");

        // A route through a device that is down: the kernel refuses; the error names the
        // operation and the errno, and carries the kernel's own words.
        let mut r = Router::new("ts1").unwrap();
        let cfg = RouterConfig {
            addresses: vec![],
            routes: prefixes(&["10.0.0.0/8"]),
            local_routes: Vec::new(),
        };
        let e = r.set(&cfg).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("add route 10.0.0.0/8 dev ts1 table 52: Network is down"),
            "{text}"
        );
        let Error::Os { source, kernel, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(source.raw_os_error(), Some(libc::ENETDOWN));
        // The kernel's extended-ack text ("Device for nexthop is not up" on 6.x).
        let k = kernel.as_deref().unwrap_or_default();
        assert!(
            k.contains("not up") && text.ends_with(&format!("({k})")),
            "{text}"
        );
        r.close().unwrap();
    });
    assert_eq!(ns.snapshot(), before);
}

//! The firewall back-ends against the real kernel, in network namespaces these tests create
//! (root needed; the tests fail, never skip, without it or without the tools). `nft` and
//! `iptables-save` are used only to read the state back (the nftables back-end needs no `nft`);
//! each namespace holds unrelated rules of its own (an `inet userfw` table, iptables rules in
//! filter and nat) that must come through untouched, and after `close` the namespace's
//! firewall, routes and rules must print exactly as before.

// The iptables tests need the `iptables` feature (on in workspace builds); their helpers
// are unused without it.
#![cfg_attr(not(feature = "iptables"), allow(dead_code, unused_imports))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{
    CHILD_OF, Netns, child_args, in_netns, is_child_of, prefixes, require_tool, tool_path,
};
use osrouter::{
    ActiveBackend, IptablesFlavor, NetfilterBackend, NetfilterConfig, NetfilterMode, Router,
    RouterConfig,
};
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

fn tools() {
    require_tool("nft", "nftables");
    require_tool("iptables-save", "iptables");
    require_tool("ip6tables-save", "iptables");
}

/// Rules of someone else's, which must survive everything we do.
fn add_unrelated_rules(ns: &Netns) {
    ns.exec("nft", &["add", "table", "inet", "userfw"]);
    ns.exec(
        "nft",
        &["add chain inet userfw fw { type filter hook forward priority 10; policy accept; }"],
    );
    ns.exec(
        "nft",
        &["add rule inet userfw fw iifname \"eth9\" ct state new accept"],
    );
    ns.exec("iptables", &["-A", "FORWARD", "-i", "eth9", "-j", "ACCEPT"]);
    ns.exec(
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
    );
    ns.exec(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan0",
            "-j",
            "MASQUERADE",
        ],
    );
    ns.exec("ip6tables", &["-A", "INPUT", "-i", "eth9", "-j", "ACCEPT"]);
    ns.exec(
        "ip6tables",
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan0",
            "-j",
            "MASQUERADE",
        ],
    );
}

/// Everything a router may touch: addresses, routes, policy rules and the firewall.
fn everything(ns: &Netns) -> String {
    ns.snapshot() + &ns.firewall()
}

/// `nft list table <fam> tailrouter` with the counters' values dropped.
fn nft_table(ns: &Netns, fam: &str) -> String {
    let out = ns.exec("nft", &["list", "table", fam, "tailrouter"]);
    out.lines()
        .map(|l| match l.find(" counter packets ") {
            Some(i) => {
                let rest = &l[i + " counter packets ".len()..];
                // "<n> bytes <m>" then the verdict, if any.
                let after: Vec<&str> = rest.splitn(4, ' ').collect();
                let tail = after.get(3).map(|t| format!(" {t}")).unwrap_or_default();
                format!("{} counter{tail}\n", &l[..i])
            }
            None => format!("{l}\n"),
        })
        .collect()
}

fn nft_tables(ns: &Netns) -> String {
    ns.exec("nft", &["list", "tables"])
}

/// The lines of `iptables-save` (or `ip6tables-save`) about our chains: table `filter`, then
/// table `nat` (the save tools print tables in the kernel's order, which differs between
/// iptables-nft and legacy, so the sections are put in a fixed order here).
fn ipt_ours(ns: &Netns, save: &str) -> String {
    let out = ns.exec(save, &[]);
    let mut s = String::new();
    for table in ["*filter", "*nat"] {
        let Some(start) = out.lines().position(|l| l == table) else {
            continue;
        };
        s += &format!("{table}\n");
        for l in out.lines().skip(start + 1) {
            if l.starts_with('*') || l == "COMMIT" {
                break;
            }
            if !l.contains("ts-") {
                continue;
            }
            match (l.starts_with(':'), l.rfind('[')) {
                (true, Some(i)) => s += &format!("{}\n", l[..i].trim_end()),
                _ => s += &format!("{l}\n"),
            }
        }
    }
    s
}

fn router_config(v4: &str, v6: &str) -> RouterConfig {
    RouterConfig {
        addresses: prefixes(&[v4, v6]),
        routes: prefixes(&["100.64.0.0/10", "fd7a:115c:a1e0::/48"]),
        local_routes: Vec::new(),
    }
}

const NFT_V4_FIRST: &str = "\
table ip tailrouter {
\tchain ts-input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"lo\" ip saddr 100.101.102.103 counter accept
\t\tiifname \"ts0\" counter accept
\t\tudp dport 41641 counter accept
\t\tiifname != \"ts0\" ip saddr 100.115.92.0/23 counter return
\t\tiifname != \"ts0\" ip saddr 100.64.0.0/10 counter drop
\t}

\tchain ts-forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"ts0\" counter meta mark set meta mark & 0xff04ffff | 0x00040000
\t\tmeta mark & 0x00ff0000 == 0x00040000 counter accept
\t\toifname \"ts0\" ip saddr 100.64.0.0/10 counter drop
\t\toifname \"ts0\" counter accept
\t}

\tchain ts-postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00ff0000 == 0x00040000 counter masquerade
\t}
}
";

const NFT_V6_FIRST: &str = "\
table ip6 tailrouter {
\tchain ts-input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"lo\" ip6 saddr fd7a:115c:a1e0::1234 counter accept
\t\tiifname \"ts0\" counter accept
\t\tudp dport 41641 counter accept
\t}

\tchain ts-forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"ts0\" counter meta mark set meta mark & 0xff04ffff | 0x00040000
\t\tmeta mark & 0x00ff0000 == 0x00040000 counter accept
\t\toifname \"ts0\" counter accept
\t}

\tchain ts-postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00ff0000 == 0x00040000 counter masquerade
\t}
}
";

/// The second config: another address and port, SNAT off, stateful filtering on.
const NFT_V4_SECOND: &str = "\
table ip tailrouter {
\tchain ts-input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"lo\" ip saddr 100.101.102.104 counter accept
\t\tiifname \"ts0\" counter accept
\t\tudp dport 41642 counter accept
\t\tiifname != \"ts0\" ip saddr 100.115.92.0/23 counter return
\t\tiifname != \"ts0\" ip saddr 100.64.0.0/10 counter drop
\t}

\tchain ts-forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"ts0\" counter meta mark set meta mark & 0xff04ffff | 0x00040000
\t\tmeta mark & 0x00ff0000 == 0x00040000 counter accept
\t\toifname \"ts0\" ip saddr 100.64.0.0/10 counter drop
\t\toifname \"ts0\" ct state ! established,related counter drop
\t\toifname \"ts0\" counter accept
\t}

\tchain ts-postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t}
}
";

fn first_cfg(backend: NetfilterBackend) -> NetfilterConfig {
    NetfilterConfig {
        backend,
        magicsock_port: 41641,
        ..Default::default()
    }
}

fn second_cfg(backend: NetfilterBackend) -> NetfilterConfig {
    NetfilterConfig {
        backend,
        magicsock_port: 41642,
        snat_subnet_routes: false,
        stateful_filtering: true,
        ..Default::default()
    }
}

#[test]
fn nftables_set_converge_close_restores_everything() {
    tools();
    let ns = Netns::new("nft", true);
    add_unrelated_rules(&ns);
    let inside = ns.handle();
    ns.run_inside(move || {
        let ns = inside;
        let tun = ns.attach_ts0();
        let before = everything(&ns);
        let fw_before = ns.firewall();
        let tables_before = nft_tables(&ns);
        let mut r = Router::new("ts0").unwrap();
        assert_eq!(r.netfilter_backend(), None);
        r.set(&router_config(
            "100.101.102.103/32",
            "fd7a:115c:a1e0::1234/128",
        ))
        .unwrap();
        // Nothing is touched before the netfilter settings arrive.
        assert_eq!(ns.firewall(), fw_before);
        r.set_netfilter(&first_cfg(NetfilterBackend::Nftables))
            .unwrap();
        assert_eq!(r.netfilter_backend(), Some(ActiveBackend::Nftables));
        assert_eq!(nft_table(&ns, "ip"), NFT_V4_FIRST);
        assert_eq!(nft_table(&ns, "ip6"), NFT_V6_FIRST);
        assert_eq!(
            nft_tables(&ns),
            format!("{tables_before}table ip tailrouter\ntable ip6 tailrouter\n")
        );
        // Nothing outside our tables changed: the iptables view and the other tables.
        let others = |ns: &Netns| -> String {
            let fw = ns.firewall();
            let start = fw.find("## iptables-save").unwrap();
            ns.exec("nft", &["list", "table", "inet", "userfw"]) + &fw[start..]
        };
        let others_before = {
            let start = fw_before.find("## iptables-save").unwrap();
            ns.exec("nft", &["list", "table", "inet", "userfw"]) + &fw_before[start..]
        };
        assert_eq!(others(&ns), others_before);

        // The same again changes nothing (the rules keep their handles).
        let handles = ns.exec("nft", &["-a", "list", "table", "ip", "tailrouter"]);
        r.set_netfilter(&first_cfg(NetfilterBackend::Nftables))
            .unwrap();
        r.set(&router_config(
            "100.101.102.103/32",
            "fd7a:115c:a1e0::1234/128",
        ))
        .unwrap();
        assert_eq!(
            ns.exec("nft", &["-a", "list", "table", "ip", "tailrouter"]),
            handles
        );

        // Another address (through set) and other settings converge.
        r.set(&router_config(
            "100.101.102.104/32",
            "fd7a:115c:a1e0::1234/128",
        ))
        .unwrap();
        r.set_netfilter(&second_cfg(NetfilterBackend::Nftables))
            .unwrap();
        assert_eq!(nft_table(&ns, "ip"), NFT_V4_SECOND);
        let v6 = nft_table(&ns, "ip6");
        assert!(
            v6.contains("oifname \"ts0\" ct state ! established,related counter drop"),
            "{v6}"
        );

        // nodivert: the same rules in plain chains, hooked nowhere.
        let nodivert = NetfilterConfig {
            mode: NetfilterMode::NoDivert,
            ..first_cfg(NetfilterBackend::Nftables)
        };
        r.set_netfilter(&nodivert).unwrap();
        let v4 = nft_table(&ns, "ip");
        assert!(!v4.contains("hook"), "{v4}");
        let hooked: String = NFT_V4_FIRST
            .lines()
            .filter(|l| !l.contains("hook"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(v4, hooked.replace("103", "104"));

        // IPv6 off: the IPv6 table goes.
        let no_v6 = NetfilterConfig {
            ipv6: false,
            ..first_cfg(NetfilterBackend::Nftables)
        };
        r.set_netfilter(&no_v6).unwrap();
        assert_eq!(
            nft_tables(&ns),
            format!("{tables_before}table ip tailrouter\n")
        );
        r.set_netfilter(&first_cfg(NetfilterBackend::Nftables))
            .unwrap();
        assert_eq!(
            nft_tables(&ns),
            format!("{tables_before}table ip tailrouter\ntable ip6 tailrouter\n")
        );

        // Mode off removes ours and nothing else; on again puts them back.
        let off = NetfilterConfig {
            mode: NetfilterMode::Off,
            ..first_cfg(NetfilterBackend::Nftables)
        };
        r.set_netfilter(&off).unwrap();
        assert_eq!(ns.firewall(), fw_before);
        r.set_netfilter(&first_cfg(NetfilterBackend::Nftables))
            .unwrap();
        assert_eq!(nft_table(&ns, "ip"), NFT_V4_FIRST.replace("103", "104"));

        r.close().unwrap();
        assert_eq!(everything(&ns), before);
        drop(tun);
    });
}

const IPT_V4_FIRST: &str = "\
*filter
:ts-forward -
:ts-input -
-A INPUT -j ts-input
-A FORWARD -j ts-forward
-A ts-forward -i ts0 -j MARK --set-xmark 0x40000/0xff0000
-A ts-forward -m mark --mark 0x40000/0xff0000 -j ACCEPT
-A ts-forward -s 100.64.0.0/10 -o ts0 -j DROP
-A ts-forward -o ts0 -j ACCEPT
-A ts-input -s 100.101.102.103/32 -i lo -j ACCEPT
-A ts-input -i ts0 -j ACCEPT
-A ts-input -p udp -m udp --dport 41641 -j ACCEPT
-A ts-input -s 100.115.92.0/23 ! -i ts0 -j RETURN
-A ts-input -s 100.64.0.0/10 ! -i ts0 -j DROP
*nat
:ts-postrouting -
-A POSTROUTING -j ts-postrouting
-A ts-postrouting -m mark --mark 0x40000/0xff0000 -j MASQUERADE
";

const IPT_V6_FIRST: &str = "\
*filter
:ts-forward -
:ts-input -
-A INPUT -j ts-input
-A FORWARD -j ts-forward
-A ts-forward -i ts0 -j MARK --set-xmark 0x40000/0xff0000
-A ts-forward -m mark --mark 0x40000/0xff0000 -j ACCEPT
-A ts-forward -o ts0 -j ACCEPT
-A ts-input -s fd7a:115c:a1e0::1234/128 -i lo -j ACCEPT
-A ts-input -i ts0 -j ACCEPT
-A ts-input -p udp -m udp --dport 41641 -j ACCEPT
*nat
:ts-postrouting -
-A POSTROUTING -j ts-postrouting
-A ts-postrouting -m mark --mark 0x40000/0xff0000 -j MASQUERADE
";

const IPT_V4_SECOND: &str = "\
*filter
:ts-forward -
:ts-input -
-A INPUT -j ts-input
-A FORWARD -j ts-forward
-A ts-forward -i ts0 -j MARK --set-xmark 0x40000/0xff0000
-A ts-forward -m mark --mark 0x40000/0xff0000 -j ACCEPT
-A ts-forward -s 100.64.0.0/10 -o ts0 -j DROP
-A ts-forward -o ts0 -m conntrack ! --ctstate RELATED,ESTABLISHED -j DROP
-A ts-forward -o ts0 -j ACCEPT
-A ts-input -s 100.101.102.104/32 -i lo -j ACCEPT
-A ts-input -i ts0 -j ACCEPT
-A ts-input -p udp -m udp --dport 41642 -j ACCEPT
-A ts-input -s 100.115.92.0/23 ! -i ts0 -j RETURN
-A ts-input -s 100.64.0.0/10 ! -i ts0 -j DROP
*nat
:ts-postrouting -
-A POSTROUTING -j ts-postrouting
";

#[test]
#[cfg(feature = "iptables")]
fn iptables_set_converge_close_restores_everything() {
    tools();
    let ns = Netns::new("ipt", true);
    add_unrelated_rules(&ns);
    let inside = ns.handle();
    ns.run_inside(move || {
        let ns = inside;
        let tun = ns.attach_ts0();
        let before = everything(&ns);
        let nft_before = ns.exec("nft", &["list", "tables"]);
        let mut r = Router::new("ts0").unwrap();
        r.set(&router_config(
            "100.101.102.103/32",
            "fd7a:115c:a1e0::1234/128",
        ))
        .unwrap();
        r.set_netfilter(&first_cfg(NetfilterBackend::Iptables))
            .unwrap();
        assert_eq!(
            r.netfilter_backend(),
            Some(ActiveBackend::Iptables(IptablesFlavor::Nft))
        );
        assert_eq!(ipt_ours(&ns, "iptables-save"), IPT_V4_FIRST);
        assert_eq!(ipt_ours(&ns, "ip6tables-save"), IPT_V6_FIRST);
        // Our jumps come first; the owner's rules are still there, after them.
        let save = ns.exec("iptables-save", &[]);
        let jump = save.find("-A FORWARD -j ts-forward").unwrap();
        let theirs = save.find("-A FORWARD -i eth9 -j ACCEPT").unwrap();
        assert!(jump < theirs, "{save}");
        assert!(
            save.contains("-A POSTROUTING -o wan0 -j MASQUERADE"),
            "{save}"
        );
        // No nftables table of ours (iptables-nft's own tables existed already).
        assert_eq!(ns.exec("nft", &["list", "tables"]), nft_before);

        r.set(&router_config(
            "100.101.102.104/32",
            "fd7a:115c:a1e0::1234/128",
        ))
        .unwrap();
        r.set_netfilter(&second_cfg(NetfilterBackend::Iptables))
            .unwrap();
        r.set_netfilter(&second_cfg(NetfilterBackend::Iptables))
            .unwrap();
        assert_eq!(ipt_ours(&ns, "iptables-save"), IPT_V4_SECOND);

        // nodivert: chains and rules, no jumps.
        let nodivert = NetfilterConfig {
            mode: NetfilterMode::NoDivert,
            ..second_cfg(NetfilterBackend::Iptables)
        };
        r.set_netfilter(&nodivert).unwrap();
        let ours = ipt_ours(&ns, "iptables-save");
        let no_jumps: String = IPT_V4_SECOND
            .lines()
            .filter(|l| !l.starts_with("-A INPUT") && !l.starts_with("-A FORWARD"))
            .filter(|l| !l.starts_with("-A POSTROUTING"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(ours, no_jumps);

        // Switching back-end takes ours out of iptables and puts them into nftables.
        r.set_netfilter(&first_cfg(NetfilterBackend::Nftables))
            .unwrap();
        assert_eq!(r.netfilter_backend(), Some(ActiveBackend::Nftables));
        assert_eq!(ipt_ours(&ns, "iptables-save"), "*filter\n*nat\n");
        assert_eq!(nft_table(&ns, "ip"), NFT_V4_FIRST.replace("103", "104"));
        r.set_netfilter(&first_cfg(NetfilterBackend::Iptables))
            .unwrap();

        r.close().unwrap();
        assert_eq!(everything(&ns), before);
        drop(tun);
    });
}

#[test]
fn auto_prefers_nftables_and_off_touches_nothing() {
    tools();
    let ns = Netns::new("auto", true);
    add_unrelated_rules(&ns);
    let inside = ns.handle();
    ns.run_inside(move || {
        let ns = inside;
        let tun = ns.attach_ts0();
        let before = everything(&ns);
        let mut r = Router::new("ts0").unwrap();
        let off = NetfilterConfig {
            mode: NetfilterMode::Off,
            ..Default::default()
        };
        r.set_netfilter(&off).unwrap();
        r.set(&router_config(
            "100.101.102.103/32",
            "fd7a:115c:a1e0::1234/128",
        ))
        .unwrap();
        assert_eq!(r.netfilter_backend(), None);
        assert_eq!(ns.firewall(), {
            let s = before.find("## nft list ruleset").unwrap();
            before[s..].to_owned()
        });
        r.set_netfilter(&NetfilterConfig::default()).unwrap();
        assert_eq!(r.netfilter_backend(), Some(ActiveBackend::Nftables));
        let v4 = nft_table(&ns, "ip");
        assert!(v4.contains("masquerade"), "{v4}");
        drop(r); // drop, not close: removes everything too
        assert_eq!(everything(&ns), before);
        drop(tun);
    });
}

/// The x_tables (legacy) tables registered in the namespace: `/proc/net/ip_tables_names` and
/// its IPv6 twin (empty, or absent where the module was never loaded).
fn legacy_tables(ns: &Netns) -> String {
    let script = "cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>/dev/null; true";
    ns.exec("sh", &["-c", script])
}

#[test]
fn off_touches_nothing_in_a_bare_namespace() {
    tools();
    // No firewall state at all: any command or message sent would show (iptables-nft and
    // nftables create tables, iptables-legacy registers them).
    let ns = Netns::new("off", true);
    let inside = ns.handle();
    ns.run_inside(move || {
        let ns = inside;
        let tun = ns.attach_ts0();
        let before = everything(&ns);
        assert_eq!(ns.exec("nft", &["list", "ruleset"]), "");
        let legacy_before = legacy_tables(&ns);
        for backend in [
            NetfilterBackend::Auto,
            NetfilterBackend::Nftables,
            NetfilterBackend::Iptables,
        ] {
            let off = NetfilterConfig {
                mode: NetfilterMode::Off,
                ..first_cfg(backend)
            };
            let mut r = Router::new("ts0").unwrap();
            r.set_netfilter(&off).unwrap();
            r.set(&router_config(
                "100.101.102.103/32",
                "fd7a:115c:a1e0::1234/128",
            ))
            .unwrap();
            r.set_netfilter(&off).unwrap();
            assert_eq!(r.netfilter_backend(), None, "{backend}");
            assert_eq!(ns.exec("nft", &["list", "ruleset"]), "", "{backend}");
            assert_eq!(legacy_tables(&ns), legacy_before, "{backend}");
            r.close().unwrap();
            assert_eq!(everything(&ns), before, "{backend}");
        }
        drop(tun);
    });
}

/// What the nftables children must do without (the nftables back-end speaks netlink only).
const FIREWALL_BINARIES: [&str; 7] = [
    "nft",
    "iptables",
    "ip6tables",
    "iptables-nft",
    "ip6tables-nft",
    "iptables-legacy",
    "ip6tables-legacy",
];

/// The child part of [`crash_then_recover`], in a process inside the namespace: installs
/// everything, says so, and waits to be killed.
fn child_router_then_killed() {
    let backend: NetfilterBackend = std::env::var("TROR_CHILD_BACKEND")
        .expect("run by crash_then_a_new_router_cleans_up, with TROR_CHILD_BACKEND set")
        .parse()
        .unwrap();
    if std::env::var_os("TROR_CHILD_NO_BINARIES").is_some() {
        // The parent hid them: prove it, so that success below means none was needed.
        for name in FIREWALL_BINARIES {
            let on_path = Command::new(name).arg("--version").output();
            assert!(on_path.is_err(), "`{name}` is still on PATH");
            for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin"] {
                let p = std::path::Path::new(dir).join(name);
                let ran = Command::new(&p).arg("--version").output();
                assert!(
                    !ran.is_ok_and(|o| o.status.success()),
                    "{} still runs",
                    p.display()
                );
            }
        }
    }
    let mut r = Router::new("ts0").unwrap();
    r.set(&router_config(
        "100.101.102.103/32",
        "fd7a:115c:a1e0::1234/128",
    ))
    .unwrap();
    r.set_netfilter(&first_cfg(backend)).unwrap();
    let want = match backend {
        NetfilterBackend::Iptables => ActiveBackend::Iptables(IptablesFlavor::Nft),
        NetfilterBackend::Nftables | NetfilterBackend::Auto => ActiveBackend::Nftables,
    };
    assert_eq!(r.netfilter_backend(), Some(want));
    println!("TROR-READY");
    std::thread::sleep(Duration::from_secs(60));
    panic!("not killed within 60 s");
}

/// A router killed without closing (SIGKILL), then a new one on the same device: the new one
/// replaces the leftovers (no duplicates), converges, and its close restores the namespace.
fn crash_then_recover(test: &'static str, backend: NetfilterBackend, tag: &str) {
    if is_child_of(test) {
        return child_router_then_killed();
    }
    tools();
    let ns = Netns::new(tag, true);
    add_unrelated_rules(&ns);
    let inside = ns.handle();
    ns.run_inside(move || {
        let ns = inside;
        let tun = ns.attach_ts0();
        let before = everything(&ns);
        let exe = std::env::current_exe().unwrap();
        let ip = tool_path("ip", "iproute2");
        let hide = backend != NetfilterBackend::Iptables;
        let mut cmd = if hide {
            // The nftables back-end (and `auto`, which picks it) runs no program at all: the
            // child runs in a mount namespace of its own where `nft` and every iptables binary
            // are /dev/null (not executable), with a PATH that leads nowhere.
            let mount = tool_path("mount", "mount");
            let mut script = String::new();
            let mut hidden = std::collections::BTreeSet::new();
            for name in FIREWALL_BINARIES {
                for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin"] {
                    if let Ok(p) = std::path::Path::new(dir).join(name).canonicalize() {
                        hidden.insert(p);
                    }
                }
            }
            assert!(
                !hidden.is_empty(),
                "no nft or iptables binary found to hide"
            );
            for p in hidden {
                script += &format!(
                    "{} --bind /dev/null {} || exit 1\n",
                    mount.display(),
                    p.display()
                );
            }
            script += "exec \"$@\"\n";
            let mut c = Command::new(tool_path("unshare", "util-linux"));
            c.args(["--mount", "--propagation", "private", "--"])
                .arg(tool_path("sh", "dash"))
                .args(["-c", &script, "sh"])
                .arg(&ip)
                .env("PATH", "/nonexistent")
                .env("TROR_CHILD_NO_BINARIES", "1");
            c
        } else {
            let mut c = Command::new(&ip);
            c.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
            c
        };
        let mut child = cmd
            .args(["netns", "exec", &ns.name])
            .arg(&exe)
            .args(child_args(test))
            .env(CHILD_OF, test)
            .env("TROR_CHILD_BACKEND", backend.as_str())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut ready = false;
        for line in BufReader::new(out).lines() {
            if line.unwrap().contains("TROR-READY") {
                ready = true;
                break;
            }
        }
        assert!(ready, "the child router never got ready");
        child.kill().unwrap(); // SIGKILL: no close, no drop
        child.wait().unwrap();
        let leftovers = everything(&ns);
        assert_ne!(
            leftovers, before,
            "the killed router left nothing to clean up?"
        );
        // Read back with the real `nft` (this process's mount namespace still has it).
        if hide {
            assert_eq!(nft_table(&ns, "ip"), NFT_V4_FIRST);
            assert_eq!(nft_table(&ns, "ip6"), NFT_V6_FIRST);
        } else {
            assert_eq!(ipt_ours(&ns, "iptables-save"), IPT_V4_FIRST);
        }

        let mut r = Router::new("ts0").unwrap();
        r.set(&router_config(
            "100.101.102.103/32",
            "fd7a:115c:a1e0::1234/128",
        ))
        .unwrap();
        r.set_netfilter(&first_cfg(backend)).unwrap();
        // Exactly one copy of everything: what the dead router had.
        assert_eq!(everything(&ns), leftovers);
        r.set_netfilter(&second_cfg(backend)).unwrap();
        if hide {
            assert_eq!(nft_table(&ns, "ip"), NFT_V4_SECOND.replace("104", "103"));
        } else {
            assert_eq!(
                ipt_ours(&ns, "iptables-save"),
                IPT_V4_SECOND.replace("104", "103")
            );
        }
        r.close().unwrap();
        let mut after = everything(&ns);
        if backend == NetfilterBackend::Iptables {
            // iptables-nft made `ip6 filter`'s FORWARD chain (empty, policy accept: no effect
            // on traffic) for the killed router. The new one found it there, so leaves it.
            let residue = "\n\n\tchain FORWARD {\n\t\ttype filter hook forward priority \
                           filter; policy accept;\n\t}\n}\ntable ip6 nat";
            assert!(
                !before.contains(residue) && after.contains(residue),
                "{after}"
            );
            after = after.replacen(residue, "\n}\ntable ip6 nat", 1);
        }
        assert_eq!(after, before);
        drop(tun);
    });
}

#[test]
fn crash_then_a_new_router_cleans_up_nftables() {
    crash_then_recover(
        "crash_then_a_new_router_cleans_up_nftables",
        NetfilterBackend::Nftables,
        "crash-nft",
    );
}

/// `auto` with no firewall binary at all picks nftables and installs everything.
#[test]
fn crash_then_a_new_router_cleans_up_auto_without_binaries() {
    crash_then_recover(
        "crash_then_a_new_router_cleans_up_auto_without_binaries",
        NetfilterBackend::Auto,
        "crash-auto",
    );
}

#[test]
#[cfg(feature = "iptables")]
fn crash_then_a_new_router_cleans_up_iptables() {
    crash_then_recover(
        "crash_then_a_new_router_cleans_up_iptables",
        NetfilterBackend::Iptables,
        "crash-ipt",
    );
}

// ---------------------------------------------------------------- real forwarding

/// Three namespaces: a tailnet peer stand-in (`tail`, 100.101.1.2) on a veth whose router end
/// is named `ts0` like the TUN; the router (forwarding on); a LAN host (192.168.77.2) with no
/// route back to the tailnet.
struct Topology {
    tail: Netns,
    router: Netns,
    lan: Netns,
}

fn topology(tag: &str) -> Topology {
    let t = Topology {
        tail: Netns::empty(&format!("{tag}-t")),
        router: Netns::empty(&format!("{tag}-r")),
        lan: Netns::empty(&format!("{tag}-l")),
    };
    for ns in [&t.tail, &t.router, &t.lan] {
        // IPv4 only: no IPv6 link-local addresses changing state between snapshots.
        for k in ["all", "default"] {
            ns.exec(
                "sysctl",
                &["-q", "-w", &format!("net.ipv6.conf.{k}.disable_ipv6=1")],
            );
        }
    }
    let (tl, l) = (&t.tail.name, &t.lan.name);
    t.router.ip(&[
        "link", "add", "ts0", "type", "veth", "peer", "tp0", "netns", tl,
    ]);
    t.router.ip(&[
        "link", "add", "rl0", "type", "veth", "peer", "lan0", "netns", l,
    ]);
    for (ns, dev) in [
        (&t.router, "ts0"),
        (&t.router, "rl0"),
        (&t.tail, "tp0"),
        (&t.lan, "lan0"),
    ] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    t.router
        .ip(&["addr", "add", "192.168.77.1/24", "dev", "rl0"]);
    t.lan.ip(&["addr", "add", "192.168.77.2/24", "dev", "lan0"]);
    t.tail.ip(&["addr", "add", "100.101.1.2/32", "dev", "tp0"]);
    t.tail.ip(&["route", "add", "100.101.1.1/32", "dev", "tp0"]);
    t.tail.ip(&[
        "route",
        "add",
        "192.168.77.0/24",
        "via",
        "100.101.1.1",
        "dev",
        "tp0",
    ]);
    t.router
        .exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
    t
}

fn udp_in(ns: &Netns, addr: &'static str) -> UdpSocket {
    let s = in_netns(&ns.name, move || UdpSocket::bind(addr).unwrap());
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Sends one datagram from `from` to `to` and returns the source address the receiver saw
/// (`None`: nothing arrived within 2 s).
fn seen_source(from: &UdpSocket, to: &UdpSocket) -> Option<std::net::SocketAddr> {
    let dst = to.local_addr().unwrap();
    from.send_to(b"ping", dst).unwrap();
    let mut buf = [0u8; 16];
    to.recv_from(&mut buf).ok().map(|(_, peer)| peer)
}

fn forwarding_with(backend: NetfilterBackend, tag: &str) {
    tools();
    let t = topology(tag);
    let tail = udp_in(&t.tail, "100.101.1.2:0");
    let lan = udp_in(&t.lan, "192.168.77.2:9999");
    let tail_listener = udp_in(&t.tail, "100.101.1.2:9998");
    let lan_sender = udp_in(&t.lan, "192.168.77.2:0");
    let (router, tail_ns, lan_ns) = (t.router.handle(), t.tail.handle(), t.lan.handle());
    t.router.run_inside(move || {
        let before = router.snapshot() + &router.firewall();
        let mut r = Router::new("ts0").unwrap();
        r.set(&RouterConfig {
            addresses: prefixes(&["100.101.1.1/32"]),
            routes: prefixes(&["100.64.0.0/10"]),
            local_routes: Vec::new(),
        })
        .unwrap();
        let cfg = NetfilterConfig {
            backend,
            ..Default::default()
        };
        // Without rules the packets are forwarded as they are (nothing masquerades them).
        let peer = seen_source(&tail, &lan).expect("nothing forwarded without rules");
        assert_eq!(peer.ip().to_string(), "100.101.1.2");

        r.set_netfilter(&cfg).unwrap();
        // SNAT on: the LAN host sees the router's LAN address, and its answer gets back. (Each
        // case sends from a fresh port: conntrack keeps a flow's NAT decision.)
        let tail1 = udp_in(&tail_ns, "100.101.1.2:0");
        let peer = seen_source(&tail1, &lan).expect("nothing forwarded with SNAT on");
        assert_eq!(peer.ip().to_string(), "192.168.77.1", "not masqueraded");
        lan.send_to(b"pong", peer).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = tail1
            .recv_from(&mut buf)
            .expect("no answer through the NAT");
        assert_eq!((&buf[..n], from), (&b"pong"[..], lan.local_addr().unwrap()));

        // SNAT off: the tailnet address arrives as it is.
        r.set_netfilter(&NetfilterConfig {
            snat_subnet_routes: false,
            ..cfg
        })
        .unwrap();
        let tail2 = udp_in(&tail_ns, "100.101.1.2:0");
        let peer = seen_source(&tail2, &lan).expect("nothing forwarded with SNAT off");
        assert_eq!(
            peer.ip().to_string(),
            "100.101.1.2",
            "masqueraded with SNAT off"
        );

        // From the LAN into the tailnet (the LAN host routes 100.64.0.0/10 via the router):
        // forwarded without stateful filtering, dropped with it.
        lan_ns.ip(&["route", "add", "100.64.0.0/10", "via", "192.168.77.1"]);
        let peer = seen_source(&lan_sender, &tail_listener).expect("LAN to tailnet not forwarded");
        assert_eq!(peer.ip().to_string(), "192.168.77.2");
        r.set_netfilter(&NetfilterConfig {
            stateful_filtering: true,
            ..cfg
        })
        .unwrap();
        let lan_sender2 = udp_in(&lan_ns, "192.168.77.2:0");
        assert_eq!(
            seen_source(&lan_sender2, &tail_listener),
            None,
            "stateful filtering let a new LAN connection into the tailnet"
        );
        // ... while the tailnet can still start connections to the LAN, answers included.
        let tail3 = udp_in(&tail_ns, "100.101.1.2:0");
        let peer = seen_source(&tail3, &lan).expect("stateful filtering broke tailnet to LAN");
        lan.send_to(b"pong", peer).unwrap();
        assert!(
            tail3.recv_from(&mut buf).is_ok(),
            "no answer with stateful filtering"
        );
        lan_ns.ip(&["route", "del", "100.64.0.0/10", "via", "192.168.77.1"]);

        r.close().unwrap();
        assert_eq!(router.snapshot() + &router.firewall(), before);
    });
    drop(t);
}

#[test]
fn forwarding_masquerades_with_snat_on_only_nftables() {
    forwarding_with(NetfilterBackend::Nftables, "fwd-nft");
}

#[test]
#[cfg(feature = "iptables")]
fn forwarding_masquerades_with_snat_on_only_iptables() {
    forwarding_with(NetfilterBackend::Iptables, "fwd-ipt");
}

// ---------------------------------------------------------------- iptables-legacy

/// Runs the child part of `test` from this test binary in a process inside `ns`, with `iptables` and
/// `ip6tables` on PATH being the legacy ones (xtables-legacy-multi picks its mode by name),
/// and fails with its output when it fails.
fn run_legacy_child(ns: &Netns, test: &str) {
    let dir = std::env::temp_dir().join(format!("tror-legacy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, target) in [
        ("iptables", "iptables-legacy"),
        ("ip6tables", "ip6tables-legacy"),
    ] {
        let t = ["/usr/sbin", "/sbin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(target))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("this test needs {target} (Debian package iptables)"));
        std::os::unix::fs::symlink(t, dir.join(name)).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&exe)
        .args(child_args(test))
        .env(CHILD_OF, test)
        .env("TROR_NS", &ns.name)
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", dir.display()),
        )
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "the child part of {test} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The legacy tables' view, for before/after comparisons (dated comments dropped, built-in
/// counters zeroed).
fn legacy_firewall(ns: &Netns) -> String {
    let mut s = String::new();
    for save in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        s += &format!("## {save}\n");
        for line in ns.exec(save, &[]).lines() {
            if line.starts_with('#') {
                continue;
            }
            match (line.starts_with(':'), line.rfind('[')) {
                (true, Some(i)) => s += &format!("{}[0:0]\n", &line[..i]),
                _ => s += &format!("{line}\n"),
            }
        }
    }
    s
}

#[test]
#[cfg(feature = "iptables")]
fn iptables_legacy_set_converge_close_restores_everything() {
    if is_child_of("iptables_legacy_set_converge_close_restores_everything") {
        return child_legacy_scenario();
    }
    tools();
    require_tool("iptables-legacy-save", "iptables");
    let ns = Netns::new("legacy", true);
    // A legacy router's own rules (so its tables exist: legacy tables cannot be unloaded).
    for (bin, args) in [
        (
            "iptables-legacy",
            &["-A", "FORWARD", "-i", "eth9", "-j", "ACCEPT"][..],
        ),
        (
            "iptables-legacy",
            &["-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
        ),
        (
            "iptables-legacy",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan0",
                "-j",
                "MASQUERADE",
            ],
        ),
        (
            "ip6tables-legacy",
            &["-A", "FORWARD", "-i", "eth9", "-j", "ACCEPT"],
        ),
        (
            "ip6tables-legacy",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan0",
                "-j",
                "MASQUERADE",
            ],
        ),
    ] {
        ns.exec(bin, args);
    }
    run_legacy_child(
        &ns,
        "iptables_legacy_set_converge_close_restores_everything",
    );
}

/// The child part of [`iptables_legacy_set_converge_close_restores_everything`], inside its
/// namespace.
fn child_legacy_scenario() {
    let name = std::env::var("TROR_NS").expect("run by iptables_legacy_set_converge_close_...");
    let ns = Netns::existing(&name, true);
    let before = legacy_firewall(&ns) + &ns.firewall();
    let addrs: Vec<std::net::IpAddr> = ["100.101.102.103", "fd7a:115c:a1e0::1234"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let mut nf = osrouter::Netfilter::new("ts0");
    nf.set(&first_cfg(NetfilterBackend::Iptables), &addrs)
        .unwrap();
    assert_eq!(
        nf.active(),
        Some(ActiveBackend::Iptables(IptablesFlavor::Legacy))
    );
    assert_eq!(ipt_ours(&ns, "iptables-legacy-save"), IPT_V4_FIRST);
    assert_eq!(ipt_ours(&ns, "ip6tables-legacy-save"), IPT_V6_FIRST);
    // iptables-nft's view and nftables are untouched.
    assert_eq!(
        ns.firewall(),
        before[before.find("## nft list ruleset").unwrap()..]
    );
    let addrs2 = [
        addrs[0].to_string().replace("103", "104").parse().unwrap(),
        addrs[1],
    ];
    nf.set(&second_cfg(NetfilterBackend::Iptables), &addrs2)
        .unwrap();
    nf.set(&second_cfg(NetfilterBackend::Iptables), &addrs2)
        .unwrap();
    assert_eq!(ipt_ours(&ns, "iptables-legacy-save"), IPT_V4_SECOND);
    nf.close().unwrap();
    assert_eq!(legacy_firewall(&ns) + &ns.firewall(), before);
}

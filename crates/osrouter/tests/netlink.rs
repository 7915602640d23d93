//! The router against the real kernel, inside network namespaces these tests create (root
//! needed; the tests fail, never skip, without it). Each namespace has black-hole default routes,
//! so nothing can leave it, and a TUN `ts0` that is up and attached, as the daemon's would be.
//! `ip` is used only to set up and to read the state back; after `close` (or drop) the
//! namespace must look exactly as before.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use osrouter::{BYPASS_MARK, Error, Router, RouterConfig};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;
use tailcfg::IpPrefix;

fn run(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!("{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("cannot run {cmd} {args:?}: {e}"),
    }
}

/// A network namespace with a persistent TUN `ts0` (up), deleted when its owner is dropped.
struct Netns {
    name: String,
    ipv6: bool,
    owner: bool,
}

impl Netns {
    /// `ipv6`: false disables IPv6 in the namespace (as a container may) before `ts0` exists.
    fn new(tag: &str, ipv6: bool) -> Self {
        let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0);
        assert!(
            matches!(root, Ok(true)),
            "these tests need root (CAP_NET_ADMIN) to create network namespaces"
        );
        let name = format!("tror-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Self {
            name,
            ipv6,
            owner: true,
        };
        if !ipv6 {
            for k in ["all", "default"] {
                let key = format!("net.ipv6.conf.{k}.disable_ipv6=1");
                run(
                    "ip",
                    &["netns", "exec", &ns.name, "sysctl", "-q", "-w", &key],
                );
            }
        }
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["tuntap", "add", "dev", "ts0", "mode", "tun"]);
        ns.ip(&["link", "set", "ts0", "up"]);
        ns.ip(&["-4", "route", "add", "blackhole", "default"]);
        if ipv6 {
            ns.ip(&["-6", "route", "add", "blackhole", "default"]);
        }
        ns
    }

    /// Another handle on the same namespace, which does not delete it.
    fn handle(&self) -> Self {
        let name = self.name.clone();
        let ipv6 = self.ipv6;
        Self {
            name,
            ipv6,
            owner: false,
        }
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Everything the router may touch, as `ip` prints it.
    fn snapshot(&self) -> String {
        let mut s = String::new();
        for args in [
            &["-4", "addr"][..],
            &["-6", "addr"],
            &["-4", "route", "show", "table", "all"],
            &["-6", "route", "show", "table", "all"],
            &["-4", "rule"],
            &["-6", "rule"],
        ] {
            s += &format!("## ip {}\n{}", args.join(" "), self.ip(args));
        }
        s
    }

    /// Our rules (preferences 52xx) of one family, as `ip rule` prints them.
    fn rules(&self, fam: &str) -> String {
        let out = self.ip(&[fam, "rule"]);
        out.lines()
            .filter(|l| l.starts_with("52"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Attaches to `ts0` from a thread inside the namespace, so that it has carrier and the
    /// kernel's own IPv6 set-up (link-local address, multicast route) is done before the state
    /// is first read; waits for it (5 s at most). Detaches when the file is dropped.
    fn attach_ts0(&self) -> File {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        let mut req = [0u8; 40]; // struct ifreq: the name, then the flags
        req[..3].copy_from_slice(b"ts0");
        let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as i16;
        req[16..18].copy_from_slice(&flags.to_ne_bytes());
        #[allow(unsafe_code)]
        // SAFETY: TUNSETIFF reads and writes one struct ifreq (40 bytes), which `req` is.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF, req.as_mut_ptr()) };
        assert_eq!(r, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        for _ in 0..100 {
            let v6 = self.ip(&["-6", "addr", "show", "dev", "ts0"]);
            let settled = v6.contains("inet6 fe80::") && !v6.contains("tentative");
            if !self.ipv6 || settled {
                return f;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ts0 got no IPv6 link-local address within 5 s");
    }

    fn table52(&self, fam: &str) -> String {
        self.ip(&[fam, "route", "show", "table", "52"])
    }

    /// Runs `f` on a fresh thread that has entered the namespace (with setns, as the daemon's
    /// namespace would be its own), failing the test after 30 s.
    fn run_inside<F: FnOnce() + Send + 'static>(&self, f: F) {
        let path = format!("/var/run/netns/{}", self.name);
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            let file = File::open(&path).unwrap();
            #[allow(unsafe_code)]
            // SAFETY: setns(2) with a namespace fd held open for the call; it changes only
            // this thread's network namespace and touches no memory of ours.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f();
            let _ = tx.send(());
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(e) = handle.join() {
                    std::panic::resume_unwind(e);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("test timed out after 30 s"),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn prefixes(list: &[&str]) -> Vec<IpPrefix> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

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
             100.100.100.100 dev ts0 \n"
        );
        assert_eq!(
            ns.table52("-6"),
            "fd7a:115c:a1e0::53 dev ts0 metric 1024 pref medium\n\
             fd7a:115c:a1e0::/48 dev ts0 metric 1024 pref medium\n\
             default dev ts0 metric 1024 pref medium\n"
        );
        assert_eq!(ns.rules("-4"), GO_RULES);
        assert_eq!(ns.rules("-6"), GO_RULES);

        // A changed netmap: one address replaced, routes gone and added (host bits ignored).
        let second = RouterConfig {
            addresses: prefixes(&["100.101.102.104/32", "fd7a:115c:a1e0::1234/128"]),
            routes: prefixes(&["100.64.0.0/10", "192.168.7.9/24", "fd7a:115c:a1e0::/48"]),
        };
        r.set(&second).unwrap();
        r.set(&second).unwrap(); // idempotent
        let v4 = ns.ip(&["-4", "addr", "show", "dev", "ts0"]);
        assert!(v4.contains("inet 100.101.102.104/32"), "{v4}");
        assert!(!v4.contains("100.101.102.103"), "{v4}");
        assert_eq!(
            ns.table52("-4"),
            "100.64.0.0/10 dev ts0 \n192.168.7.0/24 dev ts0 \n"
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

//! IP forwarding: whether the kernel forwards, warnings for a node that needs it, and turning
//! it on (at container start).
//!
//! A subnet router or exit node forwards packets between the TUN device and the LAN, which the
//! kernel does only with `net.ipv4.ip_forward` (and, for IPv6, `net.ipv6.conf.all.forwarding`)
//! on. Like Go's `net/netutil.CheckIPForwarding`: IPv4 forwarding off globally but on for some
//! interfaces gets one warning per interface left out; off everywhere gets one warning.
//!
//! Where we differ, on purpose (docs/osrouter.md, "IP forwarding"):
//!
//! * **A value that cannot be read is not a warning.** Containers often hide or restrict
//!   `/proc/sys` while the host (or the container runtime's `--sysctl`) has forwarding on; Go
//!   then warns "Couldn't check system's IP forwarding configuration" on every start, a false
//!   alarm. We report such a value as [`Setting::Unknown`] (logged once at info level) and warn
//!   only about a value we read and found off.
//! * **IPv6 forwarding is not asked for where IPv6 is off** (no `/proc/sys/net/ipv6`, or
//!   `disable_ipv6` on for all interfaces): there is nothing to forward, and warning that "IPv6
//!   forwarding is disabled" there is the other false alarm routers and containers see.
//! * Turning forwarding on writes nothing that is on already, so a read-only `/proc/sys` with
//!   forwarding on is not an error; one with forwarding off is, with the way out in the error.

use crate::Error;
use std::io;
use std::path::{Path, PathBuf};
use tailcfg::IpPrefix;
use tracing::{info, warn};

/// Where the kernel's settings are.
const PROC_SYS: &str = "/proc/sys";

const IPV4_FORWARD: &str = "net/ipv4/ip_forward";
const IPV6_FORWARD: &str = "net/ipv6/conf/all/forwarding";
const IPV6_DISABLED: &str = "net/ipv6/conf/all/disable_ipv6";

/// One forwarding setting as read from `/proc/sys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting {
    /// 1 (or 2, which the kernel also accepts as on).
    On,
    /// 0.
    Off,
    /// The setting does not exist: that protocol is not in this kernel (or is disabled at boot).
    Absent,
    /// It could not be read (no `/proc/sys`, permission, an odd value): why.
    Unknown(String),
}

/// The kernel's forwarding settings, as read from `/proc/sys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpForwarding {
    /// `net.ipv4.ip_forward`.
    pub ipv4: Setting,
    /// `net.ipv6.conf.all.forwarding`.
    pub ipv6: Setting,
    /// Whether IPv6 is off here: absent from the kernel, or `net.ipv6.conf.all.disable_ipv6`.
    pub ipv6_off: bool,
    /// With IPv4 forwarding off globally: each interface (but lo) and whether its own
    /// `net.ipv4.conf.<if>.forwarding` is on. Empty otherwise.
    pub ipv4_interfaces: Vec<(String, bool)>,
}

fn sysctl_name(key: &str) -> String {
    key.replace('/', ".")
}

fn read_setting(root: &Path, key: &str) -> Setting {
    match std::fs::read_to_string(root.join(key)) {
        Ok(s) => match s.trim() {
            "0" => Setting::Off,
            "1" | "2" => Setting::On,
            v => Setting::Unknown(format!("unexpected value {v:?}")),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound && root.join("net").is_dir() => {
            Setting::Absent
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Setting::Unknown(format!("{} is not mounted", root.display()))
        }
        Err(e) => Setting::Unknown(e.to_string()),
    }
}

impl IpForwarding {
    /// Reads the settings of the calling thread's network namespace.
    pub fn read() -> IpForwarding {
        IpForwarding::read_from(Path::new(PROC_SYS))
    }

    /// Reads the settings from a `/proc/sys`-like tree at `root`.
    pub fn read_from(root: &Path) -> IpForwarding {
        let ipv4 = read_setting(root, IPV4_FORWARD);
        let ipv6 = read_setting(root, IPV6_FORWARD);
        let ipv6_off =
            matches!(ipv6, Setting::Absent) || read_setting(root, IPV6_DISABLED) == Setting::On;
        let mut ipv4_interfaces = Vec::new();
        if ipv4 == Setting::Off
            && let Ok(dir) = std::fs::read_dir(root.join("net/ipv4/conf"))
        {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if ["all", "default", "lo"].contains(&name.as_str()) {
                    continue;
                }
                let key = format!("net/ipv4/conf/{name}/forwarding");
                let on = read_setting(root, &key) == Setting::On;
                ipv4_interfaces.push((name, on));
            }
            ipv4_interfaces.sort();
        }
        IpForwarding {
            ipv4,
            ipv6,
            ipv6_off,
            ipv4_interfaces,
        }
    }

    /// Warnings for a node that advertises `routes` (subnets; an exit node advertises
    /// `0.0.0.0/0` and `::/0`): one line each, empty when all is well or nothing is advertised.
    /// Only settings read and found off are warned about.
    pub fn warnings(&self, routes: &[IpPrefix]) -> Vec<String> {
        let want4 = routes.iter().any(|p| p.addr().is_ipv4());
        let want6 = routes.iter().any(|p| p.addr().is_ipv6());
        let mut out = Vec::new();
        if want4 && self.ipv4 == Setting::Off {
            let on = self.ipv4_interfaces.iter().filter(|(_, on)| *on).count();
            if on == 0 {
                out.push(
                    "IP forwarding is disabled (net.ipv4.ip_forward = 0): subnet routes and the \
                     exit node will not work. Turn it on with `sysctl -w net.ipv4.ip_forward=1` \
                     (in a container: where the container is created, e.g. \
                     `--sysctl net.ipv4.ip_forward=1`)"
                        .to_owned(),
                );
            } else {
                for (name, _) in self.ipv4_interfaces.iter().filter(|(_, on)| !*on) {
                    out.push(format!(
                        "packets arriving on {name} are not forwarded \
                         (net.ipv4.conf.{name}.forwarding = 0); subnet routes and the exit \
                         node may not work for them"
                    ));
                }
            }
        }
        if want6 && !self.ipv6_off && self.ipv6 == Setting::Off {
            out.push(
                "IPv6 forwarding is disabled (net.ipv6.conf.all.forwarding = 0): IPv6 subnet \
                 routes and IPv6 exit traffic will not work. Turn it on with \
                 `sysctl -w net.ipv6.conf.all.forwarding=1`"
                    .to_owned(),
            );
        }
        out
    }

    /// The settings that could not be read, each with why (for an info line, not a warning).
    pub fn unknown(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, s) in [(IPV4_FORWARD, &self.ipv4), (IPV6_FORWARD, &self.ipv6)] {
            if let Setting::Unknown(why) = s {
                out.push(format!("{}: {why}", sysctl_name(key)));
            }
        }
        out
    }
}

/// Reads the forwarding settings and returns the warnings for a node advertising `routes`
/// (see [`IpForwarding::warnings`]); settings that cannot be read are logged at info level.
pub fn check_ip_forwarding(routes: &[IpPrefix]) -> Vec<String> {
    let f = IpForwarding::read();
    let unknown = f.unknown();
    if !routes.is_empty() && !unknown.is_empty() {
        info!(
            "osrouter: cannot read IP forwarding settings ({}); assuming forwarding is set up \
             outside (as in containers whose /proc/sys is hidden)",
            unknown.join("; ")
        );
    }
    f.warnings(routes)
}

/// Turns IPv4 forwarding on, and IPv6 forwarding too when `ipv6` is set and IPv6 is on here,
/// in the calling thread's network namespace. A setting already on is not written. Fails with
/// the way out when a setting is off and cannot be written (read-only `/proc/sys`, as in most
/// containers, or no permission).
///
/// Turning IPv6 forwarding on makes the kernel ignore router advertisements on interfaces
/// with `accept_ra` = 1 (the default); those are logged, since a host that takes its IPv6
/// default route from RAs loses it (`accept_ra` = 2 keeps it). Nothing is undone on exit.
pub fn enable_ip_forwarding(ipv6: bool) -> Result<(), Error> {
    enable_ip_forwarding_at(Path::new(PROC_SYS), ipv6)
}

/// [`enable_ip_forwarding`] for a `/proc/sys`-like tree at `root`.
pub fn enable_ip_forwarding_at(root: &Path, ipv6: bool) -> Result<(), Error> {
    let before = IpForwarding::read_from(root);
    if before.ipv4 != Setting::On {
        write_on(root, IPV4_FORWARD)?;
    }
    if ipv6 && !before.ipv6_off && before.ipv6 != Setting::On {
        write_on(root, IPV6_FORWARD)?;
        let ra = accept_ra_one(root);
        if !ra.is_empty() {
            warn!(
                "osrouter: IPv6 forwarding is now on, so the kernel ignores router \
                 advertisements on {} (accept_ra = 1); set accept_ra = 2 there if the host takes \
                 its IPv6 default route from them",
                ra.join(", ")
            );
        }
    }
    Ok(())
}

/// Interfaces (but lo) whose `accept_ra` is 1.
fn accept_ra_one(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(root.join("net/ipv6/conf")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if ["all", "default", "lo"].contains(&name.as_str()) {
                continue;
            }
            let p: PathBuf = root.join(format!("net/ipv6/conf/{name}/accept_ra"));
            if std::fs::read_to_string(p).is_ok_and(|v| v.trim() == "1") {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

fn write_on(root: &Path, key: &str) -> Result<(), Error> {
    let name = sysctl_name(key);
    std::fs::write(root.join(key), "1\n").map_err(|source| {
        let hint = match source.raw_os_error() {
            Some(libc::EROFS) => format!(
                "{} is read-only here, as in most containers: turn forwarding on where the \
                 container is created (docker/podman: `--sysctl {name}=1`; Kubernetes: the pod's \
                 securityContext.sysctls), or on the host",
                root.display()
            ),
            Some(libc::EACCES | libc::EPERM) => format!(
                "no permission: writing {name} needs root with CAP_NET_ADMIN in this network \
                 namespace; or turn it on where the container is created (`--sysctl {name}=1`)"
            ),
            Some(libc::ENOENT) if !root.join("net").is_dir() => format!(
                "{} is not mounted here (hidden, as in some containers): turn forwarding on \
                 where the container is created (`--sysctl {name}=1`), or on the host",
                root.display()
            ),
            Some(libc::ENOENT) => format!("this kernel has no {name}"),
            _ => format!("turn it on by hand: sysctl -w {name}=1"),
        };
        Error::Sysctl {
            key: name.clone(),
            source,
            hint,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc/sys tree in a fresh temporary directory.
    struct Tree(PathBuf);

    impl Tree {
        fn new(tag: &str) -> Tree {
            let p = std::env::temp_dir().join(format!("osrouter-fwd-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(p.join("net/ipv4/conf")).unwrap();
            Tree(p)
        }
        fn set(&self, key: &str, v: &str) -> &Tree {
            let p = self.0.join(key);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
            self
        }
        fn get(&self, key: &str) -> String {
            std::fs::read_to_string(self.0.join(key))
                .unwrap()
                .trim()
                .to_owned()
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn p(s: &[&str]) -> Vec<IpPrefix> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn off_everywhere_is_one_warning_and_nothing_advertised_is_none() {
        let t = Tree::new("off");
        t.set(IPV4_FORWARD, "0")
            .set(IPV6_FORWARD, "0")
            .set("net/ipv4/conf/eth0/forwarding", "0")
            .set("net/ipv4/conf/lo/forwarding", "0");
        let f = IpForwarding::read_from(&t.0);
        assert_eq!(f.ipv4, Setting::Off);
        assert!(!f.ipv6_off);
        assert!(f.warnings(&[]).is_empty());
        let w = f.warnings(&p(&["10.0.0.0/24"]));
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("IP forwarding is disabled"), "{w:?}");
        // An exit node: both families.
        let w = f.warnings(&p(&["0.0.0.0/0", "::/0"]));
        assert_eq!(w.len(), 2);
        assert!(w[1].starts_with("IPv6 forwarding is disabled"), "{w:?}");
    }

    #[test]
    fn per_interface_forwarding_names_the_interfaces_left_out() {
        let t = Tree::new("perif");
        t.set(IPV4_FORWARD, "0")
            .set("net/ipv4/conf/eth0/forwarding", "1")
            .set("net/ipv4/conf/ts0/forwarding", "0");
        let w = IpForwarding::read_from(&t.0).warnings(&p(&["10.0.0.0/24"]));
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("packets arriving on ts0"), "{w:?}");
    }

    #[test]
    fn no_false_alarms() {
        // IPv6 absent from the kernel, or disabled: no IPv6 warning for an exit node.
        let t = Tree::new("nov6");
        t.set(IPV4_FORWARD, "1");
        let f = IpForwarding::read_from(&t.0);
        assert_eq!(f.ipv6, Setting::Absent);
        assert!(f.warnings(&p(&["0.0.0.0/0", "::/0"])).is_empty());
        t.set(IPV6_FORWARD, "0").set(IPV6_DISABLED, "1");
        assert!(IpForwarding::read_from(&t.0).ipv6_off);
        assert!(
            IpForwarding::read_from(&t.0)
                .warnings(&p(&["::/0"]))
                .is_empty()
        );
        // No /proc/sys at all (a hidden one): unknown, not a warning.
        let gone = IpForwarding::read_from(Path::new("/nonexistent-proc-sys"));
        assert!(matches!(gone.ipv4, Setting::Unknown(_)));
        assert!(gone.warnings(&p(&["0.0.0.0/0", "::/0"])).is_empty());
        assert_eq!(gone.unknown().len(), 2);
        // 2 is on too (the kernel accepts it).
        t.set(IPV4_FORWARD, "2");
        assert_eq!(IpForwarding::read_from(&t.0).ipv4, Setting::On);
    }

    #[test]
    fn enabling_writes_only_what_is_off() {
        let t = Tree::new("enable");
        t.set(IPV4_FORWARD, "0")
            .set(IPV6_FORWARD, "0")
            .set("net/ipv6/conf/eth0/accept_ra", "1");
        enable_ip_forwarding_at(&t.0, false).unwrap();
        assert_eq!(t.get(IPV4_FORWARD), "1");
        assert_eq!(t.get(IPV6_FORWARD), "0");
        enable_ip_forwarding_at(&t.0, true).unwrap();
        assert_eq!(t.get(IPV6_FORWARD), "1");
        assert_eq!(accept_ra_one(&t.0), vec!["eth0".to_owned()]);
        // With IPv6 disabled, IPv6 forwarding is left alone.
        let t = Tree::new("enable-nov6");
        t.set(IPV4_FORWARD, "1")
            .set(IPV6_FORWARD, "0")
            .set(IPV6_DISABLED, "1");
        enable_ip_forwarding_at(&t.0, true).unwrap();
        assert_eq!(t.get(IPV6_FORWARD), "0");
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = write_on(Path::new("/nonexistent-proc-sys"), IPV4_FORWARD).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("setting net.ipv4.ip_forward=1: "),
            "{text}"
        );
        let Error::Sysctl { source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        // A hidden /proc/sys is not "this kernel has no ...": the hint says where to look.
        assert!(text.contains("is not mounted here"), "{text}");
        assert!(text.contains("--sysctl net.ipv4.ip_forward=1"), "{text}");
        // A tree that is there but lacks the key: the kernel has no such setting.
        let t = Tree::new("nokey");
        std::fs::create_dir_all(t.0.join("net")).unwrap();
        let text = write_on(&t.0, IPV6_FORWARD).unwrap_err().to_string();
        assert!(
            text.contains("this kernel has no net.ipv6.conf.all.forwarding"),
            "{text}"
        );
    }
}

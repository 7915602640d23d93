//! Network namespaces for the router's tests (root needed; the tests fail, never skip,
//! without it): each is deleted when its owner is dropped.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;
use tailcfg::IpPrefix;

pub fn run(cmd: &str, args: &[&str]) -> String {
    match Command::new(cmd).args(args).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!("{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => panic!("cannot run {cmd} {args:?}: {e}"),
    }
}

/// A network namespace with a persistent TUN `ts0` (up), deleted when its owner is dropped.
pub struct Netns {
    pub name: String,
    pub ipv6: bool,
    owner: bool,
}

impl Netns {
    /// `ipv6`: false disables IPv6 in the namespace (as a container may) before `ts0` exists.
    pub fn new(tag: &str, ipv6: bool) -> Self {
        require_root();
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

    /// A namespace with only `lo` (up): for tests that build their own links.
    pub fn empty(tag: &str) -> Self {
        require_root();
        let name = format!("tror-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Self {
            name,
            ipv6: true,
            owner: true,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `cmd args` inside the namespace (`ip netns exec`); panics on failure.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The firewall as the tools print it, for before/after comparisons: `nft list ruleset`,
    /// `iptables-save` and `ip6tables-save` (without their dated comment lines, and with the
    /// built-in chains' packet counters zeroed, since stray IPv6 packets move them).
    pub fn firewall(&self) -> String {
        let mut s = format!(
            "## nft list ruleset\n{}",
            self.exec("nft", &["list", "ruleset"])
        );
        for save in ["iptables-save", "ip6tables-save"] {
            s += &format!("## {save}\n");
            for line in self.exec(save, &[]).lines() {
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

    /// A handle on a namespace someone else created (and deletes), e.g. in a child process.
    pub fn existing(name: &str, ipv6: bool) -> Self {
        Self {
            name: name.to_owned(),
            ipv6,
            owner: false,
        }
    }

    /// Another handle on the same namespace, which does not delete it.
    pub fn handle(&self) -> Self {
        let name = self.name.clone();
        let ipv6 = self.ipv6;
        Self {
            name,
            ipv6,
            owner: false,
        }
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Everything the router may touch, as `ip` prints it.
    pub fn snapshot(&self) -> String {
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
    pub fn rules(&self, fam: &str) -> String {
        let out = self.ip(&[fam, "rule"]);
        out.lines()
            .filter(|l| l.starts_with("52"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Attaches to `ts0` from a thread inside the namespace, so that it has carrier and the
    /// kernel's own IPv6 set-up (link-local address, multicast route) is done before the state
    /// is first read; waits for it (5 s at most). Detaches when the file is dropped.
    pub fn attach_ts0(&self) -> File {
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

    pub fn table52(&self, fam: &str) -> String {
        self.ip(&[fam, "route", "show", "table", "52"])
    }

    /// Runs `f` on a fresh thread that has entered the namespace (with setns, as the daemon's
    /// namespace would be its own), failing the test after 30 s.
    pub fn run_inside<F: FnOnce() + Send + 'static>(&self, f: F) {
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

pub fn prefixes(list: &[&str]) -> Vec<IpPrefix> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// Fails the test (never skips it) without root.
pub fn require_root() {
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0);
    assert!(
        matches!(root, Ok(true)),
        "these tests need root (CAP_NET_ADMIN) to create network namespaces"
    );
}

/// The absolute path of `tool`: on PATH, else in the sbin and bin directories. Fails the test
/// (never skips it) when it is missing.
pub fn tool_path(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let system = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(system)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs `{tool}` (Debian package {package}; interop/install-peers.sh \
                 installs it)"
            )
        })
}

/// Fails the test (never skips it) when a tool it needs is missing.
pub fn require_tool(tool: &str, package: &str) {
    tool_path(tool, package);
}

/// Runs `f` on a fresh thread inside namespace `name` and returns what it returns (sockets
/// made there stay in that namespace wherever they are used).
pub fn in_netns<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(name: &str, f: F) -> T {
    let path = format!("/var/run/netns/{name}");
    let h = std::thread::spawn(move || {
        let file = File::open(&path).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: setns(2) with a namespace fd held open for the call; it changes only this
        // thread's network namespace and touches no memory of ours.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    });
    match h.join() {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e),
    }
}

/// Set when this test binary re-runs one of its own tests as a child process (in a namespace
/// or a private mount namespace the parent prepared): the value is that test's name.
pub const CHILD_OF: &str = "TROR_CHILD_OF";

/// Whether this process is the child part of `test` (see [`child_args`]). A test that has a
/// child part starts with this check; run normally, it is the parent and does everything.
pub fn is_child_of(test: &str) -> bool {
    std::env::var(CHILD_OF).is_ok_and(|v| v == test)
}

/// The arguments that make this test binary run `test` alone as its own child; the caller
/// also sets [`CHILD_OF`] to `test`.
pub fn child_args(test: &str) -> [&str; 3] {
    ["--exact", test, "--nocapture"]
}

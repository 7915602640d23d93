//! The IP forwarding checks against the real kernel, in network namespaces these tests create
//! (root needed; the tests fail, never skip, without it), with `/proc/sys` mounted read-only in
//! a mount namespace of the child's own, as container runtimes mount it. What must hold there:
//! forwarding that is on is no alarm (no warning, nothing to write, no error); forwarding that
//! is off is one clear warning per family, and turning it on fails with the way out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{CHILD_OF, Netns, child_args, is_child_of, prefixes, tool_path};
use osrouter::Error;
use osrouter::forwarding::{self, IpForwarding, Setting};
use std::process::Command;

const GUARD: &str = "TROR_READ_ONLY_PROC_SYS";

/// Runs the child part of `test` from this test binary in a process inside `ns`, with `/proc/sys`
/// read-only for it alone, and fails with its output when it fails.
fn run_read_only_child(ns: &Netns, test: &str) {
    let mount = tool_path("mount", "mount");
    let script = format!(
        "{m} --bind /proc/sys /proc/sys && {m} -o remount,bind,ro /proc/sys && exec \"$@\"",
        m = mount.display()
    );
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(tool_path("unshare", "util-linux"))
        .args(["--mount", "--propagation", "private", "--"])
        .arg(tool_path("sh", "dash"))
        .args(["-c", &script, "sh"])
        .arg(tool_path("ip", "iproute2"))
        .args(["netns", "exec", &ns.name])
        .arg(&exe)
        .args(child_args(test))
        .env(CHILD_OF, test)
        .env(GUARD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the child part of {test} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// In a child: checks that `/proc/sys` really is read-only here (writing a setting's own value
/// back, so that nothing changes if it is not).
fn assert_read_only() {
    assert!(
        std::env::var_os(GUARD).is_some(),
        "the child part of a read_only_proc_sys_* test: run by it"
    );
    let key = "/proc/sys/net/ipv4/ip_forward";
    let v = std::fs::read_to_string(key).unwrap();
    let e = std::fs::write(key, v).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{key}: {e}");
}

fn sysctl(ns: &Netns, key: &str) -> String {
    ns.exec("sysctl", &["-n", key]).trim().to_owned()
}

#[test]
fn read_only_proc_sys_with_forwarding_on_is_no_alarm() {
    if is_child_of("read_only_proc_sys_with_forwarding_on_is_no_alarm") {
        return child_read_only_forwarding_on();
    }
    let ns = Netns::empty("ro-on");
    ns.exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
    // IPv6 off, as in many containers: an exit node's ::/0 must not warn about it.
    for k in ["all", "default"] {
        let key = format!("net.ipv6.conf.{k}.disable_ipv6=1");
        ns.exec("sysctl", &["-q", "-w", &key]);
    }
    run_read_only_child(&ns, "read_only_proc_sys_with_forwarding_on_is_no_alarm");
    assert_eq!(sysctl(&ns, "net.ipv4.ip_forward"), "1");
}

/// The child part of [`read_only_proc_sys_with_forwarding_on_is_no_alarm`], under a
/// read-only `/proc/sys`.
fn child_read_only_forwarding_on() {
    assert_read_only();
    let f = IpForwarding::read();
    assert_eq!(f.ipv4, Setting::On);
    assert!(f.ipv6_off, "{f:?}");
    assert!(f.unknown().is_empty(), "{f:?}");
    let exit = prefixes(&["0.0.0.0/0", "::/0", "192.168.1.0/24"]);
    assert_eq!(forwarding::check_ip_forwarding(&exit), Vec::<String>::new());
    // Nothing to write: no error even though nothing could be written.
    forwarding::enable_ip_forwarding(true).unwrap();
}

#[test]
fn read_only_proc_sys_with_forwarding_off_says_what_to_do() {
    if is_child_of("read_only_proc_sys_with_forwarding_off_says_what_to_do") {
        return child_read_only_forwarding_off();
    }
    let ns = Netns::empty("ro-off");
    ns.exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=0"]);
    ns.exec("sysctl", &["-q", "-w", "net.ipv6.conf.all.forwarding=0"]);
    run_read_only_child(
        &ns,
        "read_only_proc_sys_with_forwarding_off_says_what_to_do",
    );
    assert_eq!(sysctl(&ns, "net.ipv4.ip_forward"), "0");
}

/// The child part of [`read_only_proc_sys_with_forwarding_off_says_what_to_do`].
fn child_read_only_forwarding_off() {
    assert_read_only();
    let subnet = prefixes(&["192.168.1.0/24"]);
    let w = forwarding::check_ip_forwarding(&subnet);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("IP forwarding is disabled (net.ipv4.ip_forward = 0)")
            && w[0].contains("--sysctl net.ipv4.ip_forward=1"),
        "{w:?}"
    );
    let exit = prefixes(&["0.0.0.0/0", "::/0"]);
    let w = forwarding::check_ip_forwarding(&exit);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[1].starts_with("IPv6 forwarding is disabled"), "{w:?}");
    // Nothing advertised: nothing to warn about.
    assert!(forwarding::check_ip_forwarding(&[]).is_empty());

    let e = forwarding::enable_ip_forwarding(false).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("setting net.ipv4.ip_forward=1: Read-only file system"),
        "{text}"
    );
    let Error::Sysctl { key, source, hint } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(key, "net.ipv4.ip_forward");
    assert_eq!(source.raw_os_error(), Some(libc::EROFS));
    assert!(
        hint.contains("/proc/sys is read-only here")
            && hint.contains("--sysctl net.ipv4.ip_forward=1"),
        "{hint}"
    );
    assert_eq!(IpForwarding::read().ipv4, Setting::Off);
}

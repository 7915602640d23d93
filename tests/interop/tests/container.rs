//! tailrouter as a RouterOS container, with the RouterOS side simulated: `containerboot`
//! configured by environment variables only, a "router" namespace standing in for RouterOS
//! (veth to the container, a route for 100.64.0.0/10 via it, DNS for the tailnet suffix
//! forwarded to 100.100.100.100 by dnsmasq), headscale and a Go tailscaled v1.98.5 peer.
//!
//! Each step stands for a line of docs/container.md's "RouterOS side"; the comments name it.
//! Every wait is bounded; the rig removes its namespaces, and the boot process is killed if a
//! test fails before it is stopped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::dns::dig;
use interop::{
    GoNode, Headscale, Host, Rig, TailnetNode, net_state, run, tailrouter_bin, wait_for,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

/// The RouterOS side of the veth (the bridge address) and the container's own address.
const ROUTER_ADDR: &str = "172.17.0.1";
const CONTAINER_ADDR: &str = "172.17.0.2";

/// A containerboot process in the container namespace, with the environment RouterOS's
/// `/container/envs` would give it. Killed if dropped while running.
struct Boot {
    child: Option<Child>,
    log: PathBuf,
    socket: PathBuf,
    host: Host,
    bin: PathBuf,
}

impl Boot {
    fn start(host: &Host, dir: &Path, run_no: u32, env: &[(&str, String)]) -> Boot {
        Self::start_in(host, dir, run_no, env, false)
    }

    /// With `read_only_sys`, `/proc/sys` is mounted read-only for the boot (in a mount
    /// namespace of its own), as in a container runtime that does not let it set sysctls.
    fn start_in(
        host: &Host,
        dir: &Path,
        run_no: u32,
        env: &[(&str, String)],
        read_only_sys: bool,
    ) -> Boot {
        let bin = tailrouter_bin().unwrap();
        let socket = dir.join("tailscaled.sock");
        let log = dir.join(format!("containerboot-{run_no}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = if read_only_sys {
            let mut c = host.cmd("unshare");
            c.args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount --bind -o ro /proc/sys /proc/sys && exec \"$0\" containerboot",
            ])
            .arg(&bin);
            c
        } else {
            let mut c = host.cmd(&bin);
            c.arg("containerboot");
            c
        };
        cmd.env_clear()
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            // The rig's DERP (headscale's) speaks plain HTTP.
            .env("TS_DEBUG_USE_DERP_HTTP", "1")
            .env("TS_LOG_VERBOSITY", "1")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Boot {
            child: Some(child),
            log,
            socket,
            host: host.clone(),
            bin,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Our CLI against the boot's socket, as an owner types it in the container's shell.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        self.host
            .cmd("timeout")
            .arg("60")
            .arg(&self.bin)
            .arg("tailscale")
            .arg(format!("--socket={}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn status(&self) -> Option<Value> {
        let out = self.cli(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).ok()
    }

    fn wait_running(&self) {
        let r = wait_for("containerboot Running", LIMIT, || {
            let st = self.status()?;
            (st["BackendState"] == "Running").then_some(())
        });
        if let Err(e) = r {
            panic!("{e}\n{}", self.log());
        }
    }

    /// SIGTERM, as `/container/stop` sends; returns the exit status and how long it took.
    fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().unwrap();
        let t0 = Instant::now();
        run(Command::new("kill").args(["-TERM", &child.id().to_string()])).unwrap();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Some(st) = child.try_wait().unwrap() {
                return (st, t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "containerboot did not exit within 10 s of SIGTERM\n{}",
            self.log()
        );
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TUN name unique on this machine, within 15 bytes.
fn tun_name() -> String {
    format!("cb{}t", std::process::id() % 1_000_000)
}

/// The "router" (RouterOS) and "container" namespaces, wired as docs/container.md tells a
/// RouterOS owner to: the container on the rig's underlay (its way to control and DERP),
/// a veth between the two, the router's LAN behind the router.
struct Site {
    router: Host,
    container: Host,
    lan: Host,
}

fn site(rig: &mut Rig) -> Site {
    let container = rig.host("ctr").unwrap();
    let router = rig.bare_host("router").unwrap();
    // /interface/veth add name=veth-ts address=172.17.0.2/24 gateway=172.17.0.1, and
    // /ip/address add address=172.17.0.1/24 interface=containers (the bridge with the veth).
    rig.wire(
        (&router, "ctr0", &format!("{ROUTER_ADDR}/24")),
        (&container, "veth-ts", &format!("{CONTAINER_ADDR}/24")),
    )
    .unwrap();
    // The router's LAN (192.168.88.0/24, RouterOS's default) with one host on it.
    let lan = rig
        .host_behind("lan", &router, "lan0", "192.168.88")
        .unwrap();
    // A router forwards.
    run(router.cmd("sysctl").args(["-qw", "net.ipv4.ip_forward=1"])).unwrap();
    // /ip/route add dst-address=100.64.0.0/10 gateway=172.17.0.2
    run(router
        .cmd("ip")
        .args(["route", "add", "100.64.0.0/10", "via", CONTAINER_ADDR]))
    .unwrap();
    // The veth's gateway=172.17.0.1 makes the router the container's default route; here the
    // container's default leads to the rig's underlay (control, DERP), so the LAN gets its
    // own route via the router.
    run(container
        .cmd("ip")
        .args(["route", "add", "192.168.88.0/24", "via", ROUTER_ADDR]))
    .unwrap();
    Site {
        router,
        container,
        lan,
    }
}

/// The environment RouterOS's `/container/envs` gives the container.
fn envs(dir: &Path, hs: &Headscale, key: Option<&str>, tun: &str) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("TS_HOSTNAME", "ctr".to_string()),
        ("TS_ROUTES", "192.168.88.0/24,172.17.0.0/24".to_string()),
        ("TS_STATE_DIR", dir.join("state").display().to_string()),
        (
            "TS_SOCKET",
            dir.join("tailscaled.sock").display().to_string(),
        ),
        // In a real container /etc/resolv.conf is the container's; the rig's namespaces share
        // this machine's /etc, so the daemon gets its own file (accept-dns is off anyway).
        (
            "TS_TAILSCALED_EXTRA_ARGS",
            format!(
                "--tun={tun} --port=41641 --resolv-conf={}",
                dir.join("resolv.conf").display()
            ),
        ),
        ("TS_LOGIN_SERVER", hs.url.clone()),
    ];
    if let Some(k) = key {
        v.push(("TS_AUTHKEY", k.to_string()));
    }
    v
}

/// dnsmasq in the router namespace, forwarding the tailnet suffix to quad-100 and nothing
/// else: `/ip/dns/static add name=rig.test type=FWD forward-to=100.100.100.100
/// match-subdomain=yes`.
fn router_dns(rig: &mut Rig, router: &Host) {
    let mut cmd = interop::dns::dnsmasq_command(router);
    cmd.args([
        "--listen-address=127.0.0.1",
        "--server=/rig.test/100.100.100.100",
    ])
    .arg(format!(
        "--pid-file={}",
        rig.dir.join("dnsmasq-router.pid").display()
    ));
    rig.spawn("dnsmasq-router", cmd).unwrap();
}

fn node_ids(hs: &Headscale) -> Vec<String> {
    let mut ids: Vec<String> = hs
        .nodes()
        .unwrap()
        .iter()
        .map(|n| n["id"].to_string())
        .collect();
    ids.sort();
    ids
}

fn ping(from: &Host, ip: &str) -> Option<()> {
    from.ping1(ip).then_some(())
}

fn go_up(go: &GoNode, hs: &Headscale, key: &str) {
    go.tailscale(&[
        "up",
        &format!("--login-server={}", hs.url),
        &format!("--auth-key={key}"),
        "--hostname=go",
        "--accept-dns=false",
        "--accept-routes",
        "--timeout=50s",
    ])
    .unwrap();
}

#[test]
fn routeros_side_reaches_the_tailnet_through_containerboot() {
    let mut rig = Rig::new("cbr").unwrap();
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go_up(&go, &hs, &key);
    let s = site(&mut rig);
    let dir = rig.dir.join("container");
    std::fs::create_dir_all(&dir).unwrap();
    let tun = tun_name();
    let before = net_state(&s.container, &tun);
    let _ = std::fs::write(dir.join("resolv.conf"), "nameserver 192.0.2.53\n");

    // /container add … with the envs above; /container start.
    let t0 = Instant::now();
    let mut boot = Boot::start(&s.container, &dir, 1, &envs(&dir, &hs, Some(&key), &tun));
    boot.wait_running();
    let boot_secs = t0.elapsed().as_secs_f64();
    let go_ip = go.ipv4().unwrap();
    let nodes_before = node_ids(&hs);
    assert_eq!(nodes_before.len(), 2, "{nodes_before:?}");

    // Forwarding was turned on in the container's namespace.
    let fwd = s
        .container
        .cmd("sysctl")
        .args(["-n", "net.ipv4.ip_forward"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");

    // The admin approves the routes (console / headscale).
    let id = hs.node_id("ctr").unwrap();
    hs.approve_routes("ctr", "192.168.88.0/24,172.17.0.0/24")
        .unwrap();

    // The router reaches the Go peer through the container: its packets leave from
    // 172.17.0.1, an approved subnet, so the Go node accepts and answers them.
    if let Err(e) = wait_for("router -> go through the container", LIMIT, || {
        ping(&s.router, &go_ip)
    }) {
        panic!("{e}\n{}", boot.log());
    }

    // Quad-100 answers queries that arrive forwarded from the router (source 172.17.0.1),
    // asked directly…
    let want = vec![("A".to_string(), go_ip.clone())];
    let direct = wait_for("quad-100 from the router", LIMIT, || {
        dig(&s.router, "100.100.100.100", "go.rig.test", "A", &[]).filter(|d| d.status == "NOERROR")
    });
    let direct = direct.unwrap_or_else(|e| panic!("{e}\n{}", boot.log()));
    assert_eq!(direct.answers, want);
    // …and through the router's DNS forwarder for the tailnet suffix.
    router_dns(&mut rig, &s.router);
    let fwd = wait_for("router's forwarder -> quad-100", LIMIT, || {
        dig(&s.router, "127.0.0.1", "go.rig.test", "A", &[]).filter(|d| d.status == "NOERROR")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            rig.log_tail("dnsmasq-router", 20),
            boot.log()
        )
    });
    assert_eq!(fwd.answers, want);
    let tcp = dig(&s.router, "100.100.100.100", "go.rig.test", "A", &["+tcp"]).unwrap();
    assert_eq!(tcp.answers, want, "quad-100 over TCP from the router");

    // The Go node reaches a host on the router's LAN through the container (TS_ROUTES).
    if let Err(e) = wait_for("go -> router's LAN", LIMIT, || {
        ping(&go.host, "192.168.88.2")
    }) {
        panic!("{e}\n{}", boot.log());
    }

    // A host on the router's LAN reaches the Go peer too: the router forwards to the
    // container, whose advertised LAN the Go node accepts.
    if let Err(e) = wait_for("router's LAN -> go", LIMIT, || ping(&s.lan, &go_ip)) {
        panic!("{e}\n{}", boot.log());
    }

    // /container/stop: SIGTERM; a clean exit, everything put back.
    let (status, took) = boot.terminate();
    assert!(status.success(), "exit status {status}\n{}", boot.log());
    assert_eq!(net_state(&s.container, &tun), before, "state after exit");
    assert!(
        !boot.log().contains(&key),
        "the auth key is in the log:\n{}",
        boot.log()
    );

    // Restart with the same state and envs: the same node, no new registration.
    let t1 = Instant::now();
    let boot2 = Boot::start(&s.container, &dir, 2, &envs(&dir, &hs, Some(&key), &tun));
    boot2.wait_running();
    let reboot_secs = t1.elapsed().as_secs_f64();
    assert_eq!(node_ids(&hs), nodes_before, "a restart adds no node");
    assert_eq!(hs.node_id("ctr").unwrap(), id);
    if let Err(e) = wait_for("router -> go after the restart", LIMIT, || {
        ping(&s.router, &go_ip)
    }) {
        panic!("{e}\n{}", boot2.log());
    }
    let rss = std::fs::read_to_string(format!(
        "/proc/{}/status",
        boot2.child.as_ref().unwrap().id()
    ))
    .unwrap_or_default()
    .lines()
    .find(|l| l.starts_with("VmRSS"))
    .unwrap_or("")
    .to_string();
    eprintln!(
        "containerboot: boot to Running {boot_secs:.1} s, restart {reboot_secs:.1} s, \
         SIGTERM to exit {} ms, {rss}",
        took.as_millis()
    );
}

#[test]
fn tailscale_up_by_hand_inside_the_container() {
    let mut rig = Rig::new("cbh").unwrap();
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let container = rig.host("ctr").unwrap();
    let dir = rig.dir.join("container");
    std::fs::create_dir_all(&dir).unwrap();
    let tun = tun_name();
    // No TS_AUTHKEY and no login server: the boot cannot log in by itself.
    let env: Vec<(&str, String)> = envs(&dir, &hs, None, &tun)
        .into_iter()
        .filter(|(k, _)| *k != "TS_LOGIN_SERVER")
        .collect();
    let mut boot = Boot::start(&container, &dir, 1, &env);
    wait_for("containerboot's socket", LIMIT, || {
        boot.status()
            .filter(|st| st["BackendState"] == "NeedsLogin")
            .map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", boot.log()));
    assert!(hs.nodes().unwrap().is_empty());

    // The owner opens a shell in the container and logs in by hand.
    let out = boot.cli(&[
        "up",
        &format!("--login-server={}", hs.url),
        &format!("--authkey={key}"),
        "--timeout=50s",
    ]);
    assert!(
        out.status.success(),
        "tailscale up: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        boot.log()
    );
    boot.wait_running();
    let nodes = hs.nodes().unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(!boot.log().contains(&key), "auth key in the log");
    // The hostname from TS_HOSTNAME reached control.
    hs.node_id("ctr").unwrap();
    let (status, _) = boot.terminate();
    assert!(status.success(), "exit status {status}\n{}", boot.log());
    // The boot's own `up`, waiting for the login, saw it complete.
    assert!(
        !boot.log().contains("`tailscale up` failed"),
        "{}",
        boot.log()
    );
}

#[test]
fn forwarding_that_cannot_be_set_is_one_line_each_and_the_boot_goes_on() {
    let mut rig = Rig::without_peers("cbf").unwrap();
    let container = rig.bare_host("ctr").unwrap();
    run(container.cmd("sysctl").args([
        "-qw",
        "net.ipv4.ip_forward=0",
        "net.ipv6.conf.all.forwarding=0",
    ]))
    .unwrap();
    let dir = rig.dir.join("container");
    std::fs::create_dir_all(&dir).unwrap();
    let tun = tun_name();
    let env = vec![
        ("TS_STATE_DIR", dir.join("state").display().to_string()),
        (
            "TS_SOCKET",
            dir.join("tailscaled.sock").display().to_string(),
        ),
        (
            "TS_TAILSCALED_EXTRA_ARGS",
            format!("--tun={tun} --resolv-conf="),
        ),
        // Nothing answers there (black-hole route): the node waits for a login.
        ("TS_LOGIN_SERVER", "http://192.0.2.1:8080".to_string()),
    ];
    let mut boot = Boot::start_in(&container, &dir, 1, &env, true);
    wait_for("containerboot's LocalAPI", LIMIT, || {
        boot.status()
            .filter(|st| st["BackendState"] == "NeedsLogin")
            .map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", boot.log()));
    let log = boot.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("containerboot: cannot turn on"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains("net.ipv4.ip_forward"), "{log}");
    assert!(lines[1].contains("net.ipv6.conf.all.forwarding"), "{log}");
    assert!(lines[0].contains("Read-only file system"), "{log}");
    // Still off: the refusal was real.
    let fwd = container
        .cmd("sysctl")
        .args(["-n", "net.ipv4.ip_forward"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "0");
    let (status, _) = boot.terminate();
    assert!(status.success(), "exit status {status}\n{}", boot.log());
}

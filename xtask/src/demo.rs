//! `cargo xtask demo`: the node's main job, shown end to end.
//!
//! Without a login server it builds tailrouter and runs a local demo tailnet in network
//! namespaces it creates (and removes): headscale, a Go `tailscaled` v1.98.5 and tailrouter,
//! both logged in with a pre-auth key; it pings the Go node through the tunnel (the kernel's
//! ping, then `tailscale ping`), asks tailrouter's quad-100 for the Go node's name, and prints
//! `tailscale netcheck` and `tailscale status` from both sides. With `--login-server URL` (and
//! usually `--auth-key KEY`) it runs tailrouter on this machine and joins that tailnet
//! instead, prints its status, and logs out again on the way out.

use interop::{Rig, TailnetNode, wait_for};
use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Options of `cargo xtask demo`.
#[derive(Debug, Default)]
pub struct Opts {
    /// Join this control server instead of the local demo tailnet.
    pub login_server: Option<String>,
    /// Pre-auth key for the control server.
    pub auth_key: Option<String>,
    /// Hostname on the tailnet.
    pub hostname: Option<String>,
    /// Keep everything up until Enter is pressed.
    pub hold: bool,
}

/// Parses `--login-server URL --auth-key KEY --hostname NAME --hold`.
pub fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--login-server" => o.login_server = Some(value()?),
            "--auth-key" => o.auth_key = Some(value()?),
            "--hostname" => o.hostname = Some(value()?),
            "--hold" if inline.is_none() => o.hold = true,
            _ => {
                return Err(format!(
                    "unknown option `{a}` (demo takes: --login-server URL, --auth-key KEY, --hostname NAME, --hold)"
                ));
            }
        }
    }
    if o.auth_key.is_some() && o.login_server.is_none() {
        return Err("--auth-key needs --login-server (the local demo makes its own key)".into());
    }
    Ok(o)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn build_tailrouter(root: &Path) -> Result<(), String> {
    eprintln!("building tailrouter (debug)...");
    let ok = Command::new(crate::cargo())
        .current_dir(root)
        .args(["build", "--quiet", "--locked", "--package", "tailrouter"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err("cargo build -p tailrouter failed".into())
    }
}

fn wait_enter(hold: bool) {
    if hold {
        eprintln!("\nEverything is up. Press Enter to tear it down.");
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
}

/// Runs the demo; returns what to print last.
pub fn run(root: &Path, o: &Opts) -> Result<String, String> {
    if !is_root() {
        return Err("the demo needs root: it creates network namespaces and TUN devices".into());
    }
    build_tailrouter(root)?;
    match &o.login_server {
        None => local(root, o),
        Some(url) => remote(root, url, o),
    }
}

fn local(root: &Path, o: &Opts) -> Result<String, String> {
    let peers = Command::new("bash")
        .current_dir(root)
        .arg("interop/install-peers.sh")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !peers {
        return Err(
            "interop/install-peers.sh failed: the demo needs headscale and Go tailscaled".into(),
        );
    }
    let e = |e: interop::Error| e.to_string();
    let mut rig = Rig::new("demo").map_err(e)?;
    println!(
        "local demo tailnet: headscale {}, Go tailscaled {}, tailrouter {}",
        rig.peers.headscale_version,
        rig.peers.tailscale_version,
        env!("CARGO_PKG_VERSION")
    );
    let hs = rig.headscale().map_err(e)?;
    let key = hs.preauth_key().map_err(e)?;
    let go = rig.go_node("go-peer").map_err(e)?;
    let name = o.hostname.clone().unwrap_or_else(|| "tailrouter".into());
    let tr = rig.tailrouter_node(&name, false).map_err(e)?;
    go.up(&hs, &key).map_err(e)?;
    tr.up(&hs, &key).map_err(e)?;
    wait_for(
        "tailrouter and the Go node to list each other",
        Duration::from_secs(60),
        || {
            let a = tr.peer_names().ok()?.iter().any(|n| n == "go-peer");
            let b = go.peer_names().ok()?.contains(&name);
            (a && b).then_some(())
        },
    )
    .map_err(e)?;
    // Traffic through the tunnel: the kernel's ping from tailrouter's namespace to the Go
    // node's tailnet address, then a disco ping that shows the path.
    let go_ip = go.ipv4().map_err(e)?;
    println!("\n== ping {go_ip} (the Go node), from tailrouter's namespace, through the tunnel");
    let pinged = wait_for("the first ping answer", Duration::from_secs(30), || {
        let out = tr
            .host
            .cmd("ping")
            .args(["-c", "3", "-i", "0.3", "-W", "2", &go_ip])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .map_err(e)?;
    print!("{pinged}");
    println!("\n== tailscale ping go-peer, on tailrouter");
    print!("{}", tr.tailscale(&["ping", "go-peer"]).map_err(e)?);
    // MagicDNS: tailrouter's own quad-100 answers the Go node's name from the netmap.
    println!("\n== dig @100.100.100.100 go-peer.rig.test, from tailrouter's namespace");
    let answered = wait_for("quad-100 to answer", Duration::from_secs(30), || {
        let d = interop::dns::dig(&tr.host, "100.100.100.100", "go-peer.rig.test", "A", &[])?;
        d.answers
            .iter()
            .any(|(t, ip)| t == "A" && *ip == go_ip)
            .then_some(d)
    })
    .map_err(e)?;
    println!(
        "status {}, answer {}",
        answered.status,
        answered
            .answers
            .iter()
            .map(|(t, v)| format!("{t} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("\n== tailscale netcheck, on tailrouter");
    match tr.tailscale(&["netcheck"]) {
        Ok(t) => print!("{t}"),
        Err(err) => println!("(no report yet: {err})"),
    }
    println!(
        "\n== tailscale status, on tailrouter ({} in namespace {})",
        name, tr.host.ns
    );
    print!("{}", tr.tailscale(&["status"]).map_err(e)?);
    println!(
        "\n== tailscale status, on the Go node (namespace {})",
        go.host.ns
    );
    print!("{}", go.tailscale(&["status"]).map_err(e)?);
    let nodes = hs.nodes().map_err(e)?;
    println!("\n== headscale knows {} nodes", nodes.len());
    wait_enter(o.hold);
    drop(rig);
    Ok("demo done; namespaces and processes removed".into())
}

fn remote(root: &Path, url: &str, o: &Opts) -> Result<String, String> {
    let bin = interop::tailrouter_bin().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("tailrouter-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let socket = dir.join("tailscaled.sock");
    let _ = root;
    let mut daemon = Command::new(&bin)
        .arg("tailscaled")
        .arg(format!(
            "--state={}",
            dir.join("tailscaled.state").display()
        ))
        .arg(format!("--socket={}", socket.display()))
        .arg("--tun=trdemo0")
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start tailscaled: {e}"))?;
    let cli = |args: &[&str]| {
        Command::new(&bin)
            .arg("tailscale")
            .arg(format!("--socket={}", socket.display()))
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    let result = (|| {
        wait_for("the daemon's socket", Duration::from_secs(20), || {
            socket.exists().then_some(())
        })
        .map_err(|e| e.to_string())?;
        let mut up = vec![format!("--login-server={url}")];
        if let Some(k) = &o.auth_key {
            up.push(format!("--auth-key={k}"));
        }
        if let Some(h) = &o.hostname {
            up.push(format!("--hostname={h}"));
        }
        up.push("--accept-dns=false".into());
        let mut args: Vec<&str> = vec!["up"];
        args.extend(up.iter().map(String::as_str));
        if !cli(&args) {
            return Err("tailscale up failed".to_string());
        }
        println!("\n== tailscale status");
        cli(&["status"]);
        wait_enter(o.hold);
        cli(&["logout"]);
        Ok("left the tailnet (logged out)".to_string())
    })();
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

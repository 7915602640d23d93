//! The embedding example of the daemon core (`crates/ipn/examples/embed.rs`) run for real:
//! a program that opens its own TUN device, keeps the node's state in its own store (an
//! "NVRAM" file with a write callback) and hands both to `ipn::node::Node::builder`.
//!
//! - Against headscale and a Go tailscaled: the example logs in with a pre-auth key, its
//!   store receives the login's write, and ICMP passes both ways through the tunnel over the
//!   TUN device it opened; on SIGTERM it shuts down and the device is gone.
//! - Without a server: it comes up on the TUN it was given and waits in NeedsLogin, with one
//!   state write (the new node's keys).
//!
//! The example must be built with the `osrouter` tag (it puts the node's address on the
//! TUN interface): `cargo build -p ipn --example embed --features osrouter,dns`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::{Host, Rig, TailnetNode, run, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(45);

/// The example: `$EMBED_BIN`, else `<target dir>/debug/examples/embed`; it must exist and
/// have the osrouter tag, or the test fails naming the build command.
fn embed_bin() -> PathBuf {
    let build = "cargo build -p ipn --example embed --features osrouter,dns (or set EMBED_BIN)";
    let path = match std::env::var_os("EMBED_BIN") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
            .join("debug/examples/embed"),
    };
    assert!(
        path.is_file(),
        "embed example {} not found: {build}",
        path.display()
    );
    let out = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", path.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let tags = text
        .lines()
        .find_map(|l| l.strip_prefix("tags:"))
        .unwrap_or_default();
    assert!(
        tags.split(',').any(|t| t.trim() == "osrouter"),
        "embed example {} lacks the osrouter tag ({}): {build}",
        path.display(),
        text.trim()
    );
    path
}

/// A TUN name unique on this machine, within 15 bytes.
fn tun_name(n: u32) -> String {
    format!("emb{}x{n}", std::process::id() % 100_000)
}

/// Waits until the example's log has a line starting with `prefix`; returns that line.
fn wait_line(rig: &mut Rig, prefix: &str, limit: Duration) -> String {
    let got = wait_for(&format!("embed: {prefix:?}"), limit, || {
        rig.log("embed")
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(String::from)
    });
    match got {
        Ok(l) => l,
        Err(e) => panic!(
            "{e} (alive: {})\n{}",
            rig.alive("embed"),
            rig.log_tail("embed", 40)
        ),
    }
}

fn link_exists(host: &Host, tun: &str) -> bool {
    Command::new("ip")
        .args(["-n", &host.ns, "link", "show", tun])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One ping answered (the first handshake may eat some), then three that all are.
fn ping_ok(rig: &Rig, host: &Host, ip: &str, what: &str) {
    host.ping_ok(ip, LIMIT)
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", rig.log_tail("embed", 60)));
}

/// How many writes the example's store reported.
fn store_writes(log: &str) -> usize {
    log.lines()
        .filter(|l| l.starts_with("nvram: saved "))
        .count()
}

#[test]
fn embedded_node_logs_in_with_its_own_tun_and_store_and_passes_traffic() {
    let bin = embed_bin();
    let mut rig = Rig::new("emb").unwrap();
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go.up(&hs, &key).unwrap();

    let host = rig.host("embed").unwrap();
    let tun = tun_name(1);
    let nvram = rig.dir.join("embed.nvram");
    let mut cmd = host.cmd(&bin);
    // headscale's embedded DERP listens on plain HTTP in the rig.
    cmd.env("TS_DEBUG_USE_DERP_HTTP", "1")
        .arg(format!("--login-server={}", hs.url))
        .arg(format!("--auth-key={key}"))
        .arg("--hostname=embed")
        .arg(format!("--tun={tun}"))
        .arg(format!("--nvram={}", nvram.display()))
        .arg("--port=41641");
    rig.spawn("embed", cmd).unwrap();

    // It opened the TUN device itself and handed the descriptor over.
    wait_line(&mut rig, &format!("embed: opened TUN {tun}"), LIMIT);
    // Logged in: Running, with its tailnet address.
    let line = wait_line(&mut rig, "embed: addresses ", LIMIT);
    let ip4 = line
        .trim_start_matches("embed: addresses ")
        .split_whitespace()
        .find(|a| a.starts_with("100."))
        .unwrap_or_else(|| panic!("no IPv4 tailnet address in {line:?}"))
        .to_string();
    assert!(link_exists(&host, &tun), "{tun} missing in {}", host.ns);
    // osrouter put the address on the device the example opened.
    let addrs =
        run(Command::new("ip").args(["-n", &host.ns, "-4", "addr", "show", "dev", &tun])).unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout).into_owned();
    assert!(addrs.contains(&ip4), "{ip4} not on {tun}: {addrs}");

    // The custom store received the login's write: the new node's keys at start, then the
    // registered node key and profile.
    let log = rig.log("embed");
    assert!(
        store_writes(&log) >= 2,
        "the store saw {} writes, want the first state and the login's:\n{log}",
        store_writes(&log)
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&nvram).unwrap()).unwrap();
    let node_key = stored["NodeKey"].as_str().unwrap_or_default();
    assert!(
        !node_key.is_empty(),
        "no NodeKey in the stored state: {stored}"
    );

    // Traffic through the tunnel, both ways.
    let go_ip = go.ipv4().unwrap();
    ping_ok(&rig, &go.host, &ip4, "go -> embed");
    ping_ok(&rig, &host, &go_ip, "embed -> go");
    assert!(
        go.peer_names().unwrap().iter().any(|n| n == "embed"),
        "the Go node does not list embed"
    );

    // No secret in its output.
    let log = rig.log("embed");
    let secret = key.rsplit('-').next().unwrap_or(&key);
    assert!(
        !log.contains(secret),
        "the auth key is in the example's log"
    );
    let hex = node_key.rsplit(':').next().unwrap_or_default();
    assert!(
        hex.len() < 16 || !log.contains(hex),
        "the node's private key is in the log"
    );

    // SIGTERM: shutdown, and the TUN device goes with its descriptor.
    rig.stop("embed").unwrap();
    let log = rig.log("embed");
    assert!(
        log.contains("embed: SIGTERM: shutting down") && log.contains("embed: stopped after"),
        "no clean shutdown:\n{}",
        rig.log_tail("embed", 20)
    );
    assert!(!link_exists(&host, &tun), "{tun} still exists after exit");
}

#[test]
fn embedded_node_without_a_server_waits_for_login_on_the_tun_it_was_given() {
    let bin = embed_bin();
    let mut rig = Rig::without_peers("embn").unwrap();
    let host = rig.bare_host("embed").unwrap();
    let tun = tun_name(2);
    let nvram = rig.dir.join("embed.nvram");
    let mut cmd = host.cmd(&bin);
    cmd.arg(format!("--tun={tun}"))
        .arg(format!("--nvram={}", nvram.display()))
        .arg("--port=0");
    rig.spawn("embed", cmd).unwrap();
    wait_line(&mut rig, "embed: state NeedsLogin", LIMIT);
    assert!(link_exists(&host, &tun), "{tun} missing in {}", host.ns);
    let log = rig.log("embed");
    assert_eq!(
        store_writes(&log),
        1,
        "a new node writes its state once:\n{log}"
    );
    assert!(
        nvram.is_file(),
        "the store's file {} is missing",
        nvram.display()
    );
    rig.stop("embed").unwrap();
    assert!(
        rig.log("embed")
            .contains("embed: stopped after 1 state writes"),
        "{}",
        rig.log_tail("embed", 20)
    );
    assert!(!link_exists(&host, &tun), "{tun} still exists after exit");
}

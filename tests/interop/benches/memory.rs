//! Memory figures (issue 7): the resident set of tailrouter and of Go tailscaled v1.98.5, side
//! by side in one tailnet, idle with one peer and again once the tailnet has 100 more nodes.
//!
//! Run as root, against a release build of tailrouter (the bench refuses a debug path):
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-bench cargo build --release -p tailrouter &&
//!   TAILROUTER_BIN=/work/target-bench/release/tailrouter cargo bench -p interop --bench memory
//! ```
//!
//! headscale v0.29 (allow-all policy) serves one tailrouter node and one Go node. The 100
//! extra nodes are real registrations at headscale, each with its own machine and node key
//! and the rig's pre-auth key, made by this bench re-run inside a rig namespace
//! (`--register`); they never poll a map, so headscale lists them to the others as offline
//! peers with no endpoints. That is the memory of a netmap of 101 peers and their WireGuard
//! configuration, not of 101 live tunnels. RSS is `VmRSS` from `/proc/<pid>/status`, the
//! median of five samples a second apart after a settling pause; `VmHWM` is the high-water
//! mark since start. The bench prints Markdown; the results are kept in
//! `docs/benchmarks/memory.md`.

use interop::bench::{daemon, first_line, loadavg, median, mib, release_bin, status_kb};
use interop::{Error, Result, Rig, TailnetNode, wait_for};
use std::process::Command;
use std::time::{Duration, Instant};

/// Extra nodes registered for the second measurement.
const EXTRA: usize = 100;
/// Bound on every wait for the rig.
const LIMIT: Duration = Duration::from_secs(90);
/// How to run this bench, for failure messages.
const HOW: &str = "CARGO_TARGET_DIR=/work/target-bench cargo build --release -p tailrouter && \
     TAILROUTER_BIN=/work/target-bench/release/tailrouter cargo bench -p interop --bench memory";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The child mode: register nodes at a control server (run inside a rig namespace).
    if let Some(i) = args.iter().position(|a| a == "--register") {
        let (Some(url), Some(key), Some(n)) = (args.get(i + 1), args.get(i + 2), args.get(i + 3))
        else {
            eprintln!("usage: memory --register URL AUTHKEY COUNT");
            std::process::exit(2);
        };
        let n: usize = n.parse().unwrap_or(0);
        if let Err(e) = register(url, key, n) {
            eprintln!("registering: {e}");
            std::process::exit(1);
        }
        return;
    }
    let t0 = Instant::now();
    if let Err(e) = bench() {
        eprintln!(
            "memory bench failed after {:.0} s: {e}",
            t0.elapsed().as_secs_f64()
        );
        std::process::exit(1);
    }
}

/// Registers `n` nodes named `extra-NNN` with `auth_key`, each with fresh keys.
fn register(url: &str, auth_key: &str, n: usize) -> Result<()> {
    use tailcfg::control::{RegisterAuth, RegisterRequest};
    use tailcfg::key::{MachinePrivate, NodePrivate};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error(format!("runtime: {e}")))?;
    rt.block_on(async {
        for i in 0..n {
            let machine = MachinePrivate::generate();
            let conn = control_client::ControlClient::connect(url, &machine)
                .await
                .map_err(|e| Error(format!("node {i}: connecting: {e}")))?;
            let mut req = RegisterRequest::default();
            req.node_key = NodePrivate::generate().public();
            req.auth = Some(RegisterAuth::with_auth_key(auth_key));
            let mut hi = tailcfg::node::Hostinfo::default();
            hi.hostname = format!("extra-{i:03}");
            hi.os = "linux".into();
            req.hostinfo = Some(hi);
            let resp = conn
                .register(req)
                .await
                .map_err(|e| Error(format!("node {i}: registering: {e}")))?;
            if !resp.auth_url.is_empty() || !resp.error.is_empty() {
                return Err(Error(format!(
                    "node {i}: not registered (auth URL {:?}, error {:?})",
                    resp.auth_url, resp.error
                )));
            }
        }
        Ok(())
    })
}

/// VmRSS: the median of five samples a second apart, in kB.
fn rss(pid: u32) -> Result<u64> {
    let mut v = Vec::new();
    for _ in 0..5 {
        v.push(status_kb(pid, "VmRSS")? as f64);
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(median(v) as u64)
}

fn peer_count(st: &serde_json::Value) -> usize {
    st.get("Peer")
        .and_then(|p| p.as_object())
        .map_or(0, |m| m.len())
}

fn bench() -> Result<()> {
    let bin = release_bin(HOW)?;
    let nproc = first_line(&mut Command::new("nproc"));
    let load_start = loadavg();
    eprintln!("memory bench: tailrouter {}", bin.display());
    let mut rig = Rig::new("bm")?;
    let tailscale_version = rig.peers.tailscale_version.clone();
    let hs = rig.headscale()?;
    let key = hs.preauth_key()?;
    let go = rig.go_node("go")?;
    go.up(&hs, &key)?;
    let tr = rig.tailrouter_node("tr", false)?;
    if let Err(e) = tr.up(&hs, &key) {
        return Err(Error(format!("{e}\n{}", rig.log_tail(&tr.label, 40))));
    }
    interop::wait_listed(&tr, &go, LIMIT)?;
    let trd = daemon(&tr.host, "tailrouter", "tailrouter")?;
    let god = daemon(&go.host, "tailscaled", "tailscaled")?;
    // Let the first netcheck, port-mapping probe and path discovery finish.
    std::thread::sleep(Duration::from_secs(15));
    let idle = [rss(trd.pid)?, rss(god.pid)?];
    let idle_hwm = [status_kb(trd.pid, "VmHWM")?, status_kb(god.pid, "VmHWM")?];

    let reg = rig.host("reg")?;
    let exe = std::env::current_exe().map_err(|e| Error(format!("current_exe: {e}")))?;
    let t_reg = Instant::now();
    let out = reg
        .cmd(&exe)
        .args(["--register", &hs.url, &key, &EXTRA.to_string()])
        .output()
        .map_err(|e| Error(format!("running the registrar: {e}")))?;
    if !out.status.success() {
        return Err(Error(format!(
            "the registrar failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    eprintln!(
        "registered {EXTRA} nodes in {:.1} s",
        t_reg.elapsed().as_secs_f64()
    );
    let want = EXTRA + 1;
    wait_for(&format!("both nodes to list {want} peers"), LIMIT, || {
        (peer_count(&tr.status().ok()?) >= want && peer_count(&go.status().ok()?) >= want)
            .then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(15));
    let full = [rss(trd.pid)?, rss(god.pid)?];
    let full_hwm = [status_kb(trd.pid, "VmHWM")?, status_kb(god.pid, "VmHWM")?];
    // What the resident set is made of: the binary's own pages (file) or the heap and stacks.
    // Shared memory is the packed image's memfd (the unpacked binary's touched pages).
    let split = |pid: u32| -> Result<(u64, u64, u64)> {
        Ok((
            status_kb(pid, "RssAnon")?,
            status_kb(pid, "RssFile")?,
            status_kb(pid, "RssShmem")?,
        ))
    };
    let parts = [split(trd.pid)?, split(god.pid)?];
    let peers = [
        peer_count(&tr.status()?),
        peer_count(&go.status().map_err(|e| Error(format!("go status: {e}")))?),
    ];
    let load_end = loadavg();

    println!("## Memory, one tailnet (headscale v0.29.3)\n");
    println!(
        "tailrouter: `{}` (release); Go tailscaled {tailscale_version}. {nproc} cores; load \
         {load_start} at the start, {load_end} at the end.\n",
        bin.display()
    );
    println!(
        "| daemon | VmRSS, 1 peer | VmRSS, {want} peers | of which anon / file / shmem | VmHWM, 1 peer / {want} | peers listed |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, name) in ["tailrouter", "tailscaled"].iter().enumerate() {
        println!(
            "| {name} | {} | {} | {} / {} / {} | {} / {} | {} |",
            mib(idle[i]),
            mib(full[i]),
            mib(parts[i].0),
            mib(parts[i].1),
            mib(parts[i].2),
            mib(idle_hwm[i]),
            mib(full_hwm[i]),
            peers[i]
        );
    }
    Ok(())
}

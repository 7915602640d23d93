//! MagicDNS figures (issue 5): queries per second and latency on quad-100, tailrouter's and
//! Go tailscaled v1.98.5's, side by side in one run, and tailrouter's memory under a flood.
//!
//! Run as root, against a release build of tailrouter (the bench refuses a debug path):
//!
//! ```sh
//! CARGO_TARGET_DIR=/work/target-bench cargo build --release -p tailrouter &&
//!   TAILROUTER_BIN=/work/target-bench/release/tailrouter cargo bench -p interop --bench magicdns
//! ```
//!
//! One rig: headscale (MagicDNS on, base domain `rig.test`, a global nameserver), a Go node,
//! tailrouter, and Debian's dnsmasq as the global nameserver. dnsperf (Debian) runs in each
//! node's namespace against that node's own 100.100.100.100, `-q 64` queries outstanding,
//! for 5 s a run, three runs per case, the cases interleaved. Cases: tailnet names (the two
//! nodes' FQDNs, answered from the netmap), and forwarded names (16 names under
//! `outside.example`, answered by dnsmasq once and then from tailrouter's cache). Latency is
//! per query from dnsperf's `-v` lines: median and p99 over all runs of a case. Last, a flood
//! of 20,000 names never asked before (each forwarded), 500 outstanding, with tailrouter's
//! peak memory before and after.
//!
//! The Go node runs with `--accept-dns=false`: with it on, tailscaled manages resolv.conf in
//! direct mode and keeps its backup beside it, in the `/etc` every namespace here shares. Go's quad-100 then
//! still answers tailnet names but forwards nothing, so the forwarded case has no Go column;
//! its baseline is dnsmasq itself, asked directly from tailrouter's namespace.

use interop::bench::{daemon, loadavg, median, mib, release_bin, status_kb};
use interop::dns::{dig, dnsmasq};
use interop::{Error, Host, Result, Rig, TailnetNode, wait_for};
use std::time::{Duration, Instant};

/// Seconds per dnsperf run.
const SECS: u32 = 5;
/// Runs per case.
const REPS: usize = 3;
/// Bound on every wait for the rig.
const LIMIT: Duration = Duration::from_secs(60);
const HOW: &str = "CARGO_TARGET_DIR=/work/target-bench cargo build --release -p tailrouter && \
     TAILROUTER_BIN=/work/target-bench/release/tailrouter cargo bench -p interop --bench magicdns";

fn main() {
    let t0 = Instant::now();
    if let Err(e) = bench() {
        eprintln!(
            "magicdns bench failed after {:.0} s: {e}",
            t0.elapsed().as_secs_f64()
        );
        std::process::exit(1);
    }
    eprintln!("magicdns bench: {:.0} s in all", t0.elapsed().as_secs_f64());
}

/// One dnsperf run's figures.
struct Run {
    qps: f64,
    lost: u64,
    latencies: Vec<f64>,
}

/// dnsperf from `host` against `server` with the queries of `file`.
fn dnsperf(host: &Host, server: &str, file: &str) -> Result<Run> {
    let out = host
        .cmd("dnsperf")
        .args(["-s", server, "-d", file, "-q", "64", "-t", "2", "-v"])
        .args(["-l", &SECS.to_string()])
        .output()
        .map_err(|e| Error(format!("dnsperf: {e} (apt-get install dnsperf)")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let qps = field("Queries per second:")
        .ok_or_else(|| Error(format!("dnsperf printed no rate:\n{text}")))?;
    let lost = field("Queries lost:").unwrap_or(f64::NAN) as u64;
    let latencies: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    Ok(Run {
        qps,
        lost,
        latencies,
    })
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

fn bench() -> Result<()> {
    let bin = release_bin(HOW)?;
    eprintln!("tailrouter under test: {}", bin.display());
    let load_start = loadavg();
    let mut rig = Rig::new("dnsb")?;
    let ns = dnsmasq(&mut rig, "ns1", &[("outside.example", "192.0.2.7")])?;
    let dns = format!(
        "  magic_dns: true\n  base_domain: rig.test\n  override_local_dns: true\n  nameservers:\n    global:\n      - {}\n    split: {{}}\n  search_domains: []\n  extra_records: []\n",
        ns.ip
    );
    let hs = rig.headscale_with(&interop::HeadscaleOptions {
        dns: Some(dns),
        ..Default::default()
    })?;
    let key = hs.preauth_key()?;
    let go = rig.go_node("go")?;
    go.up(&hs, &key)?;
    let tr = rig.tailrouter_node("tr", false)?;
    tr.tailscale(&[
        "up",
        &format!("--login-server={}", hs.url),
        &format!("--auth-key={key}"),
        "--hostname=tr",
        "--accept-dns=true",
        "--timeout=50s",
    ])?;
    for (host, name) in [(&tr.host, "go.rig.test"), (&go.host, "tr.rig.test")] {
        wait_for(&format!("{} answers {name}", host.ns), LIMIT, || {
            let d = dig(host, "100.100.100.100", name, "A", &[])?;
            (d.status == "NOERROR" && !d.answers.is_empty()).then_some(())
        })?;
    }
    let tailnet = rig.dir.join("tailnet.txt");
    let forwarded = rig.dir.join("forwarded.txt");
    let write = |p: &std::path::Path, text: String| {
        std::fs::write(p, text).map_err(|e| Error(format!("write {}: {e}", p.display())))
    };
    write(&tailnet, "go.rig.test A\ntr.rig.test A\n".into())?;
    write(
        &forwarded,
        (0..16)
            .map(|i| format!("n{i}.outside.example A\n"))
            .collect(),
    )?;
    // A flood: 20,000 names never asked before, so each one is forwarded (the forwarder's
    // in-flight cap and the cache's bounds are what keep memory flat).
    let flood = rig.dir.join("flood.txt");
    write(
        &flood,
        (0..20_000)
            .map(|i| format!("f{i}.outside.example A\n"))
            .collect(),
    )?;
    // Forwarded names answered once, so the runs measure tailrouter's cache.
    for i in 0..16 {
        let name = format!("n{i}.outside.example");
        let d = dig(&tr.host, "100.100.100.100", &name, "A", &[])
            .ok_or_else(|| Error(format!("no answer for {name}")))?;
        if d.answers != [("A".to_string(), "192.0.2.7".to_string())] {
            return Err(Error(format!("{name}: {d:?}")));
        }
    }
    let trd = daemon(&tr.host, "tailrouter", "tailrouter")?;
    let god = daemon(&go.host, "tailscaled", "tailscaled")?;
    let idle = (status_kb(trd.pid, "VmRSS")?, status_kb(god.pid, "VmRSS")?);
    let (t, f) = (
        tailnet.display().to_string(),
        forwarded.display().to_string(),
    );
    let cases: Vec<(&str, &Host, &str, &str)> = vec![
        ("tailrouter, tailnet names", &tr.host, "100.100.100.100", &t),
        ("tailscaled, tailnet names", &go.host, "100.100.100.100", &t),
        (
            "tailrouter, forwarded names (cached)",
            &tr.host,
            "100.100.100.100",
            &f,
        ),
        ("dnsmasq asked directly, same names", &tr.host, &ns.ip, &f),
    ];
    let load_runs = loadavg();
    let mut runs: Vec<Vec<Run>> = cases.iter().map(|_| Vec::new()).collect();
    for _ in 0..REPS {
        for (i, (_, host, server, file)) in cases.iter().enumerate() {
            let r = dnsperf(host, server, file)?;
            if let Some(v) = runs.get_mut(i) {
                v.push(r);
            }
        }
    }
    let before_flood = status_kb(trd.pid, "VmHWM")?;
    let flood_run = tr
        .host
        .cmd("dnsperf")
        .args([
            "-s",
            "100.100.100.100",
            "-q",
            "500",
            "-t",
            "2",
            "-n",
            "1",
            "-l",
            "20",
        ])
        .arg("-d")
        .arg(&flood)
        .output()
        .map_err(|e| Error(format!("dnsperf: {e}")))?;
    let flood_text = String::from_utf8_lossy(&flood_run.stdout).into_owned();
    let after_flood = (status_kb(trd.pid, "VmHWM")?, status_kb(trd.pid, "VmRSS")?);
    let load_end = loadavg();
    let peak = (status_kb(trd.pid, "VmHWM")?, status_kb(god.pid, "VmHWM")?);
    let after = (status_kb(trd.pid, "VmRSS")?, status_kb(god.pid, "VmRSS")?);

    println!("| case | queries/s median | min – max | latency median ms | p99 ms | lost |");
    println!("|---|---:|---:|---:|---:|---:|");
    for ((name, ..), rs) in cases.iter().zip(&runs) {
        let q: Vec<f64> = rs.iter().map(|r| r.qps).collect();
        let lat: Vec<f64> = rs
            .iter()
            .flat_map(|r| r.latencies.iter().copied())
            .collect();
        let (lo, hi) = q
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        println!(
            "| {name} | {:.0} | {lo:.0} – {hi:.0} | {:.3} | {:.3} | {} |",
            median(q.clone()),
            percentile(lat.clone(), 0.5) * 1000.0,
            percentile(lat, 0.99) * 1000.0,
            rs.iter().map(|r| r.lost).sum::<u64>()
        );
    }
    println!();
    println!("| daemon | idle VmRSS MiB | VmHWM after the runs and the flood | VmRSS after |");
    println!("|---|---:|---:|---:|");
    println!(
        "| tailrouter | {} | {} | {} |",
        mib(idle.0),
        mib(peak.0),
        mib(after.0)
    );
    println!(
        "| tailscaled | {} | {} | {} |",
        mib(idle.1),
        mib(peak.1),
        mib(after.1)
    );
    println!();
    let line = |key: &str| {
        flood_text
            .lines()
            .find(|l| l.trim().starts_with(key))
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    };
    println!(
        "flood (20,000 uncached names, 500 outstanding): {}; {}; {}; tailrouter VmHWM {} MiB after the runs, {} MiB after the flood, VmRSS {} MiB",
        line("Queries completed:"),
        line("Queries lost:"),
        line("Queries per second:"),
        mib(before_flood),
        mib(after_flood.0),
        mib(after_flood.1)
    );
    println!();
    println!(
        "load average: {load_start} at the start, {load_runs} before the runs, {load_end} after"
    );
    Ok(())
}

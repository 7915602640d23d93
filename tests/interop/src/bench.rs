//! What the benches share: the release binary they measure, the daemons' pids, CPU time and
//! memory from `/proc`, the machine's load, and small statistics.

use crate::{Error, Host, Result, TailnetNode, run, tailrouter_bin, wait_for};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

/// `$TAILROUTER_BIN`, which must be set, exist, carry the `cli` tag and not be a debug build.
pub fn release_bin(how: &str) -> Result<PathBuf> {
    let Some(p) = std::env::var_os("TAILROUTER_BIN").map(PathBuf::from) else {
        return err(format!(
            "TAILROUTER_BIN is not set: this bench measures a release build. Run: {how}"
        ));
    };
    if p.components().any(|c| c.as_os_str() == "debug") {
        return err(format!(
            "TAILROUTER_BIN={} is a debug build path: this bench measures a release build. \
             Run: {how}",
            p.display()
        ));
    }
    // Also checks that the file exists and has the cli tag.
    tailrouter_bin()
}

/// A tunnel daemon: the process that moves the packets of one end.
#[derive(Debug, Clone)]
pub struct Daemon {
    /// What the tables call it, e.g. `tailrouter (tr)`.
    pub name: String,
    /// Its process id.
    pub pid: u32,
}

/// The pid of the one process named `comm` in `host`'s namespace.
pub fn daemon(host: &Host, comm: &str, name: &str) -> Result<Daemon> {
    let pid = wait_for(
        &format!("a {comm} process in {}", host.ns),
        Duration::from_secs(10),
        || {
            let out = Command::new("ip")
                .args(["netns", "pids", &host.ns])
                .output()
                .ok()?;
            let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == comm)
                })
                .collect();
            (pids.len() == 1).then(|| pids[0])
        },
    )?;
    Ok(Daemon {
        name: name.to_string(),
        pid,
    })
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clk_tck() -> Result<f64> {
    let out = run(Command::new("getconf").arg("CLK_TCK"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| Error(format!("getconf CLK_TCK: {e}")))
}

/// `utime + stime` of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| Error(format!("read /proc/{pid}/stat (did the daemon die?): {e}")))?;
    // Fields after the command name (which may hold spaces): state is field 3, so field N
    // is at index N - 3; utime is 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| Error(format!("odd /proc/{pid}/stat: {stat}")))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error(format!("odd /proc/{pid}/stat: {stat}")))
    };
    Ok(field(11)? + field(12)?)
}

/// A `kB` line (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`.
pub fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| {
        Error(format!(
            "read /proc/{pid}/status (did the daemon die?): {e}"
        ))
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| Error(format!("no {key} in /proc/{pid}/status")))
}

/// The load average (1, 5, 15 minutes).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// First line of a command's output (stdout, else stderr), or `?`.
pub fn first_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .output()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("?")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

/// The median (NaN for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// kB as MiB with one decimal.
pub fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// The peer whose host name is `host` in a status (`tailscale status --json`).
pub fn peer<'a>(st: &'a serde_json::Value, host: &str) -> Option<&'a serde_json::Value> {
    st.get("Peer")?
        .as_object()?
        .values()
        .find(|p| p["HostName"] == host)
}

/// Waits up to `limit` until `node` uses the direct path `under` to `peer_name` (pinging
/// `peer_ip` from `host` meanwhile, which drives disco).
pub fn wait_direct<N: TailnetNode>(
    node: &N,
    host: &Host,
    peer_name: &str,
    peer_ip: &str,
    under: &str,
    limit: Duration,
) -> Result<()> {
    wait_for(
        &format!(
            "{} to use the direct path {under} to {peer_name}",
            node.hostname()
        ),
        limit,
        || {
            let _ = host
                .cmd("ping")
                .args(["-c", "1", "-W", "1", peer_ip])
                .output();
            let st = node.status().ok()?;
            (peer(&st, peer_name)?["CurAddr"] == under).then_some(())
        },
    )
}

/// What one iperf3 run (`iperf3 -J`) reports: received rate and volume, sender retransmits.
#[derive(Debug, Clone, Copy)]
pub struct Iperf {
    /// Mbit/s received.
    pub mbps: f64,
    /// Gigabits received.
    pub gbit: f64,
    /// TCP retransmits at the sender; -1 when iperf3 does not say.
    pub retransmits: i64,
}

/// Reads the JSON iperf3 wrote to `path`; an error for anything but a run that moved data.
pub fn iperf_result(path: &std::path::Path) -> Result<Iperf> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error(format!("read {}: {e}", path.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error(format!("iperf3 output is not JSON ({e}): {text}")))?;
    if let Some(e) = v.get("error") {
        return err(format!("iperf3: {e}"));
    }
    let recv = &v["end"]["sum_received"];
    let (Some(bytes), Some(bps)) = (recv["bytes"].as_f64(), recv["bits_per_second"].as_f64())
    else {
        return err(format!("iperf3 result lacks end.sum_received: {text}"));
    };
    let gbit = bytes * 8.0 / 1e9;
    if gbit <= 0.0 {
        return err(format!("iperf3 moved nothing: {text}"));
    }
    Ok(Iperf {
        mbps: bps / 1e6,
        gbit,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_i64().unwrap_or(-1),
    })
}

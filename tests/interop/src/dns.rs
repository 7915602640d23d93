//! DNS in the rig: `dig` from a host's namespace, read into a [`Dig`], and Debian's dnsmasq as
//! an upstream nameserver on a host of its own.

use crate::{Error, Host, Result, Rig, wait_for};
use std::time::Duration;

/// What `dig` said: the status, the AA flag and the answer section's (type, data) pairs,
/// sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dig {
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, …
    pub status: String,
    /// The answer is authoritative.
    pub aa: bool,
    /// (type, data) of each answer record, sorted.
    pub answers: Vec<(String, String)>,
}

/// `dig @server name type` from `host`'s namespace, with `extra` flags (such as `+tcp`); one
/// try, 3 s. `None` when dig got no answer or printed something unreadable.
pub fn dig(host: &Host, server: &str, name: &str, qtype: &str, extra: &[&str]) -> Option<Dig> {
    let out = host
        .cmd("dig")
        .args(["+time=3", "+tries=1", "+nocookie"])
        .arg(format!("@{server}"))
        .args(extra)
        .args([name, qtype])
        .output()
        .ok()?;
    parse_dig(&String::from_utf8_lossy(&out.stdout))
}

/// Reads dig's default output.
pub fn parse_dig(text: &str) -> Option<Dig> {
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))?
        .split(',')
        .next()?
        .to_string();
    let aa = text
        .lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .is_some_and(|f| {
            f.split(';')
                .next()
                .unwrap_or("")
                .split(' ')
                .any(|x| x == "aa")
        });
    let mut answers = Vec::new();
    let mut in_answer = false;
    for l in text.lines() {
        if l.starts_with(";; ANSWER SECTION:") {
            in_answer = true;
        } else if in_answer {
            if l.trim().is_empty() {
                break;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            if let (Some(t), Some(_)) = (f.get(3), f.get(4)) {
                answers.push((t.to_string(), f.get(4..).unwrap_or_default().join(" ")));
            }
        }
    }
    answers.sort();
    Some(Dig {
        status,
        aa,
        answers,
    })
}

/// Starts dnsmasq on a new host `role`, answering `names` (a domain and every name below it,
/// with one IPv4 address each) and nothing else: no upstream, no hosts file, no config
/// file; records with a 300 s TTL; queries logged to its rig log (`dnsmasq-<role>`). Returns
/// once it answers.
pub fn dnsmasq(rig: &mut Rig, role: &str, names: &[(&str, &str)]) -> Result<Host> {
    let host = rig.host(role)?;
    dnsmasq_on(rig, &host, role, names)?;
    Ok(host)
}

/// dnsmasq in `host`'s namespace on port 53, in the foreground, logging queries to stderr,
/// reading no configuration, hosts file or resolv.conf: the caller adds where it listens and
/// what it answers.
pub fn dnsmasq_command(host: &Host) -> std::process::Command {
    let mut cmd = host.cmd("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--log-facility=-",
        "--log-queries",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--bind-interfaces",
        "--port=53",
        "--user=root",
    ]);
    cmd
}

/// [`dnsmasq`] on an existing host (such as a [`Rig::bare_host`]), on `host.ip`.
pub fn dnsmasq_on(rig: &mut Rig, host: &Host, role: &str, names: &[(&str, &str)]) -> Result<()> {
    let mut cmd = dnsmasq_command(host);
    cmd.args([
        "--cache-size=1000",
        // dnsmasq gives its own records TTL 0 by default: nothing could cache them.
        "--local-ttl=300",
    ])
    .arg(format!("--listen-address={}", host.ip))
    .arg(format!(
        "--pid-file={}",
        rig.dir.join(format!("dnsmasq-{role}.pid")).display()
    ));
    for (domain, ip) in names {
        cmd.arg(format!("--address=/{domain}/{ip}"));
    }
    let label = format!("dnsmasq-{role}");
    rig.spawn(&label, cmd)?;
    let probe = match names.first() {
        Some((domain, _)) => format!("probe.{domain}"),
        None => return Err(Error("dnsmasq needs at least one name".into())),
    };
    let h = host.clone();
    wait_for(
        &format!("{label} to answer"),
        Duration::from_secs(20),
        || {
            let d = dig(&h, &h.ip, &probe, "A", &[])?;
            (d.status == "NOERROR").then_some(())
        },
    )
    .map_err(|e| Error(format!("{e}\n{}", rig.log_tail(&label, 20))))?;
    Ok(())
}

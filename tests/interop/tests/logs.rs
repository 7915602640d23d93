//! Logs (issue 7, item 5): quiet by default, more with `TS_LOG_VERBOSITY`, a malformed value
//! a warning and not a failure, and never a key or an auth secret in any line, at any level.
//!
//! Each node lives a whole session against headscale and a Go tailscaled: start, login with
//! an auth key, netmap, DERP, a ping through the tunnel, stop; the loudest one
//! (`TS_LOG_VERBOSITY=2`, everything) also has its key expired and rotated with the auth key,
//! and logs out. Every private key it ever stored (read from its state file at each step) and
//! the auth key are then searched for in its whole stderr, in every encoding a careless
//! log line could use. Line counts go to stderr (`--nocapture`) and into docs/flash.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::{GoNode, Headscale, Rig, TailnetNode, TailrouterNode, TailrouterOptions, wait_for};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(45);

fn base64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[(n >> (18 - 6 * i)) as usize & 63]));
        }
        if pad {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Every way a private key (`privkey:<64 hex>` in the state file) could be spelled in a log
/// line: the text itself, hex in both cases (also its first half, a truncated print), base64
/// standard and URL-safe, padded or not, and Rust's `Debug` of its first bytes.
fn key_spellings(text: &str) -> Vec<String> {
    let hex = text.strip_prefix("privkey:").unwrap_or(text);
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert_eq!(
        bytes.len(),
        32,
        "private key {}… is not 32 bytes",
        &hex[..4]
    );
    let debug = format!("{:?}", &bytes[..8]);
    vec![
        text.to_string(),
        hex.to_lowercase(),
        hex.to_uppercase(),
        hex[..32].to_lowercase(),
        base64(&bytes, STD, true),
        base64(&bytes, STD, false),
        base64(&bytes, URL, true),
        base64(&bytes, URL, false),
        debug.trim_end_matches(']').to_string(),
    ]
}

/// The private keys in a state file now.
fn state_keys(tr: &TailrouterNode) -> Vec<String> {
    let Some(text) = tr
        .state
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&text).unwrap();
    ["MachineKey", "NodeKey", "OldNodeKey"]
        .iter()
        .filter_map(|f| v[*f].as_str().map(String::from))
        .collect()
}

/// Fails naming the line (with the secret cut out) if any secret appears in `log`.
fn assert_clean(label: &str, log: &str, secrets: &[(String, String)]) {
    for (i, line) in log.lines().enumerate() {
        for (what, s) in secrets {
            assert!(
                !line.contains(s.as_str()),
                "{label} line {}: {what} in the log: {}",
                i + 1,
                line.replace(s.as_str(), "<SECRET>")
            );
        }
        let lower = line.to_lowercase();
        assert!(
            !lower.contains("privkey") && !lower.contains("private key"),
            "{label} line {}: names a private key: {line}",
            i + 1
        );
    }
}

/// The auth key (whole and its secret part) and every spelling of each private key.
fn secrets(auth_key: &str, keys: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut out = vec![("the auth key".to_string(), auth_key.to_string())];
    // The secret part alone (headscale's keys are `hskey-auth-<id>-<secret>`).
    if let Some(s) = auth_key.rsplit('-').next().filter(|s| s.len() >= 12) {
        out.push(("the auth key's secret".into(), s.to_string()));
    }
    for k in keys {
        for s in key_spellings(k) {
            out.push(("a private key".into(), s));
        }
    }
    out
}

struct Session {
    tr: TailrouterNode,
    log: String,
    lines: usize,
}

/// One node's life: start, login with the auth key, the Go peer in its netmap, a ping
/// through the tunnel, `extra` (more steps while up), stop.
fn session(
    rig: &mut Rig,
    hs: &Headscale,
    key: &str,
    go: &GoNode,
    name: &str,
    verbosity: Option<&str>,
    extra: impl FnOnce(&mut Rig, &TailrouterNode),
) -> Session {
    let state = rig.dir.join(format!("tr-{name}/state/tailscaled.state"));
    let tr = rig
        .tailrouter_node_with(
            name,
            &TailrouterOptions {
                state: Some(state),
                log_verbosity: verbosity.map(String::from),
            },
        )
        .unwrap();
    if let Err(e) = tr.up(hs, key) {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 40));
    }
    tr.wait_state("Running", LIMIT).unwrap();
    let go_ip = go.ipv4().unwrap();
    tr.host
        .ping_until(&go_ip, LIMIT)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", rig.log_tail(&tr.label, 30)));
    extra(rig, &tr);
    rig.stop(&tr.label).unwrap();
    let log = rig.log(&tr.label);
    let lines = log.lines().count();
    eprintln!(
        "logs: {name} (TS_LOG_VERBOSITY={}): {lines} lines, {} bytes",
        verbosity.unwrap_or("unset"),
        log.len()
    );
    Session { tr, log, lines }
}

#[test]
fn quiet_by_default_env_sets_verbosity_and_no_secret_in_any_line() {
    let t0 = Instant::now();
    let mut rig = Rig::new("lg").unwrap();
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go.up(&hs, &key).unwrap();

    // Everything (level 2): login, netmap, DERP, ping, key rotation with the auth key, logout.
    let mut keys = BTreeSet::new();
    let loud = session(&mut rig, &hs, &key, &go, "loud", Some("2"), |rig, tr| {
        keys.extend(state_keys(tr));
        let out = tr.tailscale(&["ping", "--c=3", "go"]);
        eprintln!("logs: tailscale ping go: {out:?}");
        // Expire the node key at headscale; `up --auth-key` rotates it (OldNodeKey kept).
        let id = hs
            .nodes()
            .unwrap()
            .into_iter()
            .find(|n| n["given_name"].as_str() == Some("loud"))
            .map(|n| match &n["id"] {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            })
            .unwrap();
        hs.cli(&["nodes", "expire", "-i", &id, "-o", "json"])
            .unwrap();
        tr.wait_state("NeedsLogin", LIMIT).unwrap();
        tr.up(&hs, &key).unwrap();
        tr.wait_state("Running", LIMIT).unwrap();
        keys.extend(state_keys(tr));
        tr.tailscale(&["logout"]).unwrap();
        tr.wait_state("NeedsLogin", LIMIT).unwrap();
        // The server-side logout runs on after the CLI returns; its answer is logged.
        wait_for("the logout at headscale", LIMIT, || {
            rig.log(&tr.label)
                .contains("logged out at the control server")
                .then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&tr.label, 20)));
        keys.extend(state_keys(tr));
    });
    assert!(
        keys.len() >= 3,
        "expected a machine key and two node keys from the state file, found {}",
        keys.len()
    );
    assert_clean(&loud.tr.label, &loud.log, &secrets(&key, &keys));
    let lower = loud.log.to_lowercase();
    for word in ["derp", "logged in", "logged out"] {
        assert!(
            lower.contains(word),
            "the level-2 log never mentions {word:?}: the session did not cover it"
        );
    }

    // Default (unset): a handful of lines for a whole session.
    let quiet = session(&mut rig, &hs, &key, &go, "quiet", None, |_, _| {});
    let quiet_keys: BTreeSet<String> = state_keys(&quiet.tr).into_iter().collect();
    assert!(quiet_keys.len() >= 2, "quiet: keys in its state file");
    assert_clean(&quiet.tr.label, &quiet.log, &secrets(&key, &quiet_keys));
    assert!(
        quiet.lines <= 20,
        "default verbosity printed {} lines:\n{}",
        quiet.lines,
        quiet.log
    );
    // Level 1 prints more: the variable is read and the filter acts.
    let v1 = session(&mut rig, &hs, &key, &go, "verbose", Some("1"), |_, _| {});
    assert!(
        v1.lines > quiet.lines,
        "TS_LOG_VERBOSITY=1 printed {} lines, the default {}",
        v1.lines,
        quiet.lines
    );
    assert!(
        loud.lines > v1.lines,
        "TS_LOG_VERBOSITY=2 printed {} lines, 1 printed {}",
        loud.lines,
        v1.lines
    );
    // A malformed value: one warning, the default level, and the node still works.
    let bad = session(&mut rig, &hs, &key, &go, "bad", Some("abc"), |_, _| {});
    let warnings: Vec<&str> = bad
        .log
        .lines()
        .filter(|l| l.contains("TS_LOG_VERBOSITY"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", bad.log);
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("\"abc\""),
        "{}",
        warnings[0]
    );
    assert!(
        bad.lines <= quiet.lines + 1 + 2,
        "TS_LOG_VERBOSITY=abc printed {} lines, the default {}",
        bad.lines,
        quiet.lines
    );
    for sess in [&v1, &bad] {
        let k: BTreeSet<String> = state_keys(&sess.tr).into_iter().collect();
        assert_clean(&sess.tr.label, &sess.log, &secrets(&key, &k));
    }
    eprintln!(
        "logs: default {} lines, 1: {}, 2: {} (with rotation and logout), abc: {}; {:.0}s\n\
         logs: the default session's log:\n{}",
        quiet.lines,
        v1.lines,
        loud.lines,
        bad.lines,
        t0.elapsed().as_secs_f64(),
        quiet.log
    );
}

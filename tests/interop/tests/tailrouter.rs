//! tailrouter's daemon against real headscale and a real Go node: the control-plane scenarios
//! of issue 3 (login, sync, restarts, deletion, key expiry). Each test owns a rig, bounds
//! every wait, and leaves nothing behind (the rig's Drop). There is no data plane yet
//! (issue 4), so nothing here sends packets over the tailnet.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::{GoNode, Headscale, Rig, TailnetNode, TailrouterNode, wait_for};
use serde_json::Value;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(45);

fn nodes_by_name(hs: &Headscale, name: &str) -> Vec<Value> {
    hs.nodes()
        .unwrap()
        .into_iter()
        .filter(|n| n["given_name"].as_str() == Some(name) || n["name"].as_str() == Some(name))
        .collect()
}

fn peer<'a>(st: &'a Value, host: &str) -> Option<&'a Value> {
    st["Peer"]
        .as_object()?
        .values()
        .find(|p| p["HostName"].as_str() == Some(host))
}

/// Neither the auth key nor any private key text may appear in the daemon's output.
fn assert_no_secrets(rig: &Rig, tr: &TailrouterNode, auth_keys: &[&str]) {
    let log = rig.log(&tr.label);
    for k in auth_keys {
        assert!(!log.contains(k), "auth key in {} log", tr.label);
        // The secret part alone, too.
        if let Some(secret) = k.rsplit('-').next().filter(|s| s.len() >= 16) {
            assert!(!log.contains(secret), "auth key secret in {} log", tr.label);
        }
    }
    assert!(
        !log.contains("privkey:"),
        "a private key in {} log",
        tr.label
    );
    if let Some(state) = tr
        .state
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        let v: Value = serde_json::from_str(&state).unwrap();
        for field in ["MachineKey", "NodeKey", "OldNodeKey"] {
            if let Some(k) = v[field].as_str() {
                let hex = k.rsplit(':').next().unwrap();
                assert!(
                    !log.contains(hex),
                    "{field} private text in {} log",
                    tr.label
                );
            }
        }
    }
}

/// headscale, a Go node and a tailrouter node, both up with the same key.
fn joined(rig: &mut Rig) -> (Headscale, String, GoNode, TailrouterNode) {
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go.up(&hs, &key).unwrap();
    let tr = rig.tailrouter_node("tr", false).unwrap();
    if let Err(e) = tr.up(&hs, &key) {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 40));
    }
    (hs, key, go, tr)
}

fn timed(name: &str, t0: Instant) {
    eprintln!("{name}: {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn a_registers_with_auth_key_and_lists_go_peer_both_ways() {
    let t0 = Instant::now();
    let mut rig = Rig::new("tra").unwrap();
    let (hs, key, go, tr) = joined(&mut rig);
    tr.wait_state("Running", LIMIT).unwrap();
    interop::wait_listed(&tr, &go, LIMIT).unwrap();

    let st = tr.status().unwrap();
    let me = &st["Self"];
    assert_eq!(me["HostName"], "tr", "{st}");
    assert_eq!(me["DNSName"], "tr.rig.test.", "{st}");
    let ip4 = tr.ipv4().unwrap();
    assert!(ip4.starts_with("100."), "{ip4}");
    assert!(
        me["TailscaleIPs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == ip4.as_str()),
        "{st}"
    );
    let p = peer(&st, "go").unwrap_or_else(|| panic!("no go peer: {st}"));
    assert_eq!(p["DNSName"], "go.rig.test.");
    assert_eq!(p["Relay"], "rig", "peer's home DERP region code: {p}");
    assert!(p["LastSeen"].is_string(), "{p}");
    let go_ip = go.ipv4().unwrap();
    assert!(
        p["TailscaleIPs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == go_ip.as_str())
    );
    // `tailscale ip PEER` by host name, MagicDNS name and address gives the peer's IPv4.
    for name in ["go", "go.rig.test", go_ip.as_str()] {
        let got = tr.tailscale(&["ip", "-4", name]).unwrap();
        assert_eq!(got.trim(), go_ip, "tailscale ip -4 {name}");
    }
    assert!(tr.tailscale(&["ip", "nosuchpeer"]).is_err());
    wait_for("go online in tailrouter's status", LIMIT, || {
        let st = tr.status().ok()?;
        (peer(&st, "go")?["Online"] == true).then_some(())
    })
    .unwrap();

    // The Go node sees us with our address and our home DERP region.
    wait_for("go to see tr with its IP and relay", LIMIT, || {
        let st = go.status().ok()?;
        let p = st["Peer"]
            .as_object()?
            .values()
            .find(|p| p["HostName"] == "tr")?
            .clone();
        let has_ip = p["TailscaleIPs"]
            .as_array()?
            .iter()
            .any(|i| i == ip4.as_str());
        (has_ip && p["Relay"] == "rig").then_some(())
    })
    .unwrap();

    // Our `tailscale status` table: self first, then the peer, Go's columns.
    let text = tr.tailscale(&["status"]).unwrap();
    eprintln!(
        "tailrouter's status:\n{text}Go's status:\n{}",
        go.tailscale(&["status"]).unwrap()
    );
    let first = text.lines().next().unwrap();
    assert!(first.starts_with(&ip4), "{text}");
    assert!(first.contains(" tr ") && first.contains("linux"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&go_ip) && l.contains(" go ")),
        "{text}"
    );
    assert_eq!(nodes_by_name(&hs, "tr").len(), 1);
    assert_no_secrets(&rig, &tr, &[&key]);
    timed("a", t0);
}

/// Runs `tailscale up` without an auth key in the background, waits for the AuthURL in
/// status, approves it with `headscale auth register`, and checks what `up` printed.
fn interactive_up(rig: &Rig, hs: &Headscale, tr: &TailrouterNode, old_url: &str) -> String {
    let mut up = tr.host.cmd("timeout");
    up.arg("90")
        .arg(interop::tailrouter_bin().unwrap())
        .arg("tailscale")
        .arg(format!("--socket={}", tr.socket.display()))
        .args(["up", &format!("--login-server={}", hs.url), "--hostname=tr"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = up.spawn().unwrap();
    let url = wait_for("AuthURL in status", LIMIT, || {
        let st = tr.status().ok()?;
        let u = st["AuthURL"].as_str()?.to_string();
        (!u.is_empty() && u != old_url).then_some(u)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&tr.label, 30)));
    assert_eq!(tr.backend_state(), "NeedsLogin");
    let prefix = format!("{}/register/", hs.url);
    let auth_id = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{url} not under {prefix}"));
    // headscale v0.29.3 has `auth register` (`nodes register` is the deprecated form).
    hs.cli(&[
        "auth",
        "register",
        "--auth-id",
        auth_id,
        "--user",
        "rig",
        "-o",
        "json",
    ])
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "up failed: {stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        rig.log_tail(&tr.label, 30)
    );
    assert!(stdout.contains(&url), "up printed the URL: {stdout}");
    assert!(stdout.contains("Success."), "{stdout}");
    url
}

#[test]
fn b_interactive_login_completes_after_auth_register() {
    let t0 = Instant::now();
    let mut rig = Rig::new("trb").unwrap();
    let hs = rig.headscale().unwrap();
    let tr = rig.tailrouter_node("tr", false).unwrap();
    let url = interactive_up(&rig, &hs, &tr, "");
    tr.wait_state("Running", LIMIT).unwrap();
    assert!(tr.ipv4().unwrap().starts_with("100."));
    let n = nodes_by_name(&hs, "tr");
    assert_eq!(n.len(), 1);
    let id = n[0]["id"].to_string();
    let nk = tr.node_key().unwrap();
    timed("b (first login)", t0);

    // After an expiry, `up` without a key logs in interactively again and rotates the key.
    hs.cli(&["nodes", "expire", "--identifier", &id, "-o", "json"])
        .unwrap();
    tr.wait_state("NeedsLogin", LIMIT).unwrap();
    interactive_up(&rig, &hs, &tr, &url);
    tr.wait_state("Running", LIMIT).unwrap();
    let nk2 = tr.node_key().unwrap();
    assert_ne!(nk, nk2, "node key rotated");
    let n = nodes_by_name(&hs, "tr");
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0]["id"].to_string(), id, "same node");
    timed("b", t0);
}

#[test]
fn c_restart_keeps_node_and_ips_without_new_registration() {
    let t0 = Instant::now();
    let mut rig = Rig::new("trc").unwrap();
    let (hs, key, _go, tr) = joined(&mut rig);
    tr.wait_state("Running", LIMIT).unwrap();
    let ip = tr.ipv4().unwrap();
    let nk = tr.node_key().unwrap();
    let before = hs.nodes().unwrap();
    let state_before = std::fs::read(tr.state.as_ref().unwrap()).unwrap();
    rig.stop(&tr.label).unwrap();
    rig.start_tailrouter(&tr).unwrap();
    // No `tailscale up`: WantRunning was persisted.
    tr.wait_state("Running", LIMIT).unwrap();
    assert_eq!(tr.ipv4().unwrap(), ip);
    assert_eq!(tr.node_key().unwrap(), nk);
    let after = hs.nodes().unwrap();
    let ids = |v: &[Value]| -> Vec<String> { v.iter().map(|n| n["id"].to_string()).collect() };
    assert_eq!(ids(&before), ids(&after), "no new registration");
    assert_eq!(
        std::fs::read(tr.state.as_ref().unwrap()).unwrap(),
        state_before,
        "a restart does not rewrite the state file"
    );
    // `down` is persisted too: a restart stays Stopped, `up` resumes the same node.
    tr.tailscale(&["down"]).unwrap();
    tr.wait_state("Stopped", LIMIT).unwrap();
    rig.stop(&tr.label).unwrap();
    rig.start_tailrouter(&tr).unwrap();
    tr.wait_state("Stopped", LIMIT).unwrap();
    tr.tailscale(&["up", "--timeout=40s"]).unwrap();
    tr.wait_state("Running", LIMIT).unwrap();
    assert_eq!(tr.node_key().unwrap(), nk);
    assert_eq!(ids(&hs.nodes().unwrap()), ids(&before));
    // A node stopped since the daemon started still logs out at the server.
    tr.tailscale(&["down"]).unwrap();
    rig.stop(&tr.label).unwrap();
    rig.start_tailrouter(&tr).unwrap();
    tr.wait_state("Stopped", LIMIT).unwrap();
    let expiry = nodes_by_name(&hs, "tr")[0]["expiry"].clone();
    tr.tailscale(&["logout"]).unwrap();
    tr.wait_state("NeedsLogin", LIMIT).unwrap();
    wait_for("headscale to see the logout", LIMIT, || {
        (nodes_by_name(&hs, "tr").first()?["expiry"] != expiry).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&tr.label, 20)));
    assert_no_secrets(&rig, &tr, &[&key]);
    timed("c", t0);
}

#[test]
fn d_headscale_restart_reconnects_as_the_same_node() {
    let t0 = Instant::now();
    let mut rig = Rig::new("trd").unwrap();
    let (hs, _key, go, tr) = joined(&mut rig);
    tr.wait_state("Running", LIMIT).unwrap();
    let nk = tr.node_key().unwrap();
    let ip = tr.ipv4().unwrap();
    let ids_before: Vec<String> = hs
        .nodes()
        .unwrap()
        .iter()
        .map(|n| n["id"].to_string())
        .collect();
    rig.restart_headscale(&hs).unwrap();
    // headscale marks a node online only while its map stream is open: ours is back when
    // headscale lists it online again.
    wait_for(
        "tailrouter online again in headscale",
        Duration::from_secs(90),
        || {
            let n = nodes_by_name(&hs, "tr");
            (n.len() == 1 && n[0]["online"] == true).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&tr.label, 30)));
    assert_eq!(tr.backend_state(), "Running");
    assert_eq!(tr.node_key().unwrap(), nk);
    assert_eq!(tr.ipv4().unwrap(), ip);
    let ids_after: Vec<String> = hs
        .nodes()
        .unwrap()
        .iter()
        .map(|n| n["id"].to_string())
        .collect();
    assert_eq!(ids_before, ids_after);
    wait_for("still listing go", LIMIT, || {
        tr.peer_names()
            .ok()?
            .contains(&"go".to_string())
            .then_some(())
    })
    .unwrap();
    let _ = go;
    timed("d", t0);
}

#[test]
fn e_deleted_peer_disappears() {
    let t0 = Instant::now();
    let mut rig = Rig::new("tre").unwrap();
    let (hs, _key, go, tr) = joined(&mut rig);
    wait_for("tr to list go", LIMIT, || {
        tr.peer_names()
            .ok()?
            .contains(&"go".to_string())
            .then_some(())
    })
    .unwrap();
    let id = nodes_by_name(&hs, "go")[0]["id"].to_string();
    // Stop the Go node first, so it does not come straight back.
    rig.stop("tailscaled-go").unwrap();
    let _ = go;
    hs.cli(&[
        "nodes",
        "delete",
        "--identifier",
        &id,
        "--force",
        "-o",
        "json",
    ])
    .unwrap();
    wait_for("go gone from tailrouter's status", LIMIT, || {
        (!tr.peer_names().ok()?.contains(&"go".to_string())).then_some(())
    })
    .unwrap();
    assert_eq!(tr.backend_state(), "Running");
    timed("e", t0);
}

#[test]
fn f_expired_node_key_needs_login_and_relogin_rotates() {
    let t0 = Instant::now();
    let mut rig = Rig::new("trf").unwrap();
    let (hs, key, _go, tr) = joined(&mut rig);
    tr.wait_state("Running", LIMIT).unwrap();
    let nk = tr.node_key().unwrap();
    let ip = tr.ipv4().unwrap();
    let id = nodes_by_name(&hs, "tr")[0]["id"].to_string();
    hs.cli(&["nodes", "expire", "--identifier", &id, "-o", "json"])
        .unwrap();
    tr.wait_state("NeedsLogin", LIMIT).unwrap();
    let st = tr.status().unwrap();
    assert!(
        st["Health"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h.as_str().unwrap_or("").contains("expired")),
        "a clear message: {st}"
    );
    let text = tr.cli(&["status"]).unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("expired"));
    // Re-login with the auth key rotates the node key; same node in headscale.
    tr.up(&hs, &key)
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&tr.label, 30)));
    tr.wait_state("Running", LIMIT).unwrap();
    let nk2 = tr.node_key().unwrap();
    assert_ne!(nk, nk2, "node key rotated");
    let n = nodes_by_name(&hs, "tr");
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0]["id"].to_string(), id, "same node");
    assert_eq!(n[0]["node_key"].as_str(), Some(nk2.as_str()));
    assert_eq!(tr.ipv4().unwrap(), ip);
    let expiry_before_logout = n[0]["expiry"].clone();
    eprintln!("expiry after re-login: {expiry_before_logout}");
    // Logout: server-side, keys gone from the state file, NeedsLogin.
    tr.tailscale(&["logout"]).unwrap();
    tr.wait_state("NeedsLogin", LIMIT).unwrap();
    let state: Value =
        serde_json::from_slice(&std::fs::read(tr.state.as_ref().unwrap()).unwrap()).unwrap();
    assert!(state["NodeKey"].is_null(), "{state}");
    assert!(state["OldNodeKey"].is_null(), "{state}");
    wait_for("headscale to see the logout", LIMIT, || {
        let n = nodes_by_name(&hs, "tr");
        (n.first()?["expiry"] != expiry_before_logout).then_some(())
    })
    .unwrap();
    assert_no_secrets(&rig, &tr, &[&key]);
    timed("f", t0);
}

#[test]
fn g_mem_state_runs_without_a_state_file() {
    let t0 = Instant::now();
    let mut rig = Rig::new("trg").unwrap();
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let tr = rig.tailrouter_node("eph", true).unwrap();
    tr.up(&hs, &key)
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&tr.label, 30)));
    tr.wait_state("Running", LIMIT).unwrap();
    assert_eq!(nodes_by_name(&hs, "eph").len(), 1);
    assert!(tr.state.is_none());
    // headscale v0.29.3 takes ephemerality from the pre-auth key only and ignores
    // RegisterRequest.Ephemeral, so the flag itself cannot be observed here.
    timed("g", t0);
}

#[test]
fn h_stalled_server_is_detected_and_left_for_a_fresh_connection() {
    // The map stream's watchdog is Go's 120 s (headscale sends keep-alives every 50-59 s), so
    // this test takes about two and a half minutes.
    let t0 = Instant::now();
    let mut rig = Rig::new("trh").unwrap();
    let (hs, _key, go, tr) = joined(&mut rig);
    tr.wait_state("Running", LIMIT).unwrap();
    let nk = tr.node_key().unwrap();
    // Settled: the Go node sees our home DERP region, so no request of ours is in flight.
    wait_for("go to see tr's relay", LIMIT, || {
        let st = go.status().ok()?;
        let p = st["Peer"]
            .as_object()?
            .values()
            .find(|p| p["HostName"] == "tr")?
            .clone();
        (p["Relay"] == "rig").then_some(())
    })
    .unwrap();
    // A server that accepts but never answers: headscale frozen.
    rig.signal("headscale", "STOP").unwrap();
    let frozen = Instant::now();
    let r = wait_for("the map watchdog to fire", Duration::from_secs(150), || {
        rig.log(&tr.label)
            .contains("timed out waiting for a map message")
            .then_some(())
    });
    rig.signal("headscale", "CONT").unwrap();
    r.unwrap();
    eprintln!(
        "stall detected after {:.0}s",
        frozen.elapsed().as_secs_f64()
    );
    // Still Running on the last map while it reconnects, and back as the same node.
    assert_eq!(tr.backend_state(), "Running");
    let resumed = Instant::now();
    wait_for(
        "a new map stream after the stall",
        Duration::from_secs(90),
        || {
            let log = rig.log(&tr.label);
            let after = log.split("timed out waiting for a map message").nth(1)?;
            after.contains("Noise channel up").then_some(())
        },
    )
    .unwrap();
    wait_for("tailrouter online in headscale", LIMIT, || {
        let n = nodes_by_name(&hs, "tr");
        (n.len() == 1 && n[0]["online"] == true).then_some(())
    })
    .unwrap();
    eprintln!(
        "reconnected {:.0}s after the server resumed",
        resumed.elapsed().as_secs_f64()
    );
    assert_eq!(tr.node_key().unwrap(), nk);
    timed("h", t0);
}

//! Faults on the data plane, against Go tailscaled v1.98.5 and headscale's DERP: garbage on
//! tailrouter's UDP port, a DERP server that restarts, a peer that vanishes. tailrouter must
//! keep running and keep (or resume) passing traffic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::{GoNode, Headscale, Rig, TailnetNode, TailrouterNode};
use std::process::Command;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

fn joined(rig: &mut Rig, block_direct: bool) -> (Headscale, GoNode, TailrouterNode) {
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go.up(&hs, &key).unwrap();
    let tr = rig.tailrouter_node("tr", false).unwrap();
    if block_direct {
        let st = Command::new("ip")
            .args(["-n", &tr.host.ns, "route", "add", "blackhole"])
            .arg(format!("{}/32", go.host.ip))
            .status()
            .unwrap();
        assert!(st.success());
    }
    tr.up(&hs, &key)
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&tr.label, 40)));
    interop::wait_listed(&tr, &go, LIMIT).unwrap();
    (hs, go, tr)
}

fn ping_until_ok(rig: &Rig, host: &interop::Host, ip: &str, what: &str, label: &str) {
    host.ping_until(ip, LIMIT)
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", rig.log_tail(label, 60)));
}

#[test]
fn garbage_on_the_udp_port_changes_nothing() {
    let t0 = Instant::now();
    let mut rig = Rig::new("dfa").unwrap();
    let (_hs, go, tr) = joined(&mut rig, false);
    let go_ip = go.ipv4().unwrap();
    ping_until_ok(&rig, &tr.host, &go_ip, "before", &tr.label);
    // From a third host: random bytes, truncated and forged WireGuard messages of every
    // type, disco magic with a forged key and box, STUN-looking junk, empty datagrams.
    let junk = rig.host("junk").unwrap();
    let code = format!(
        "import os,socket,struct,random\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         dst=('{}',41641)\n\
         magic=bytes([0x54,0x53,0xf0,0x9f,0x92,0xac])\n\
         for i in range(3000):\n\
         \x20k=i%7\n\
         \x20if k==0: p=os.urandom(random.randint(0,1500))\n\
         \x20elif k==1: p=struct.pack('<I',random.randint(1,4))+os.urandom(random.randint(0,200))\n\
         \x20elif k==2: p=struct.pack('<II',4,random.getrandbits(32))+os.urandom(random.randint(8,1400))\n\
         \x20elif k==3: p=struct.pack('<I',1)+os.urandom(144)\n\
         \x20elif k==4: p=magic+os.urandom(random.randint(0,200))\n\
         \x20elif k==5: p=bytes([0,1,0,0,0x21,0x12,0xa4,0x42])+os.urandom(random.randint(12,100))\n\
         \x20else: p=b''\n\
         \x20s.sendto(p,dst)\n",
        tr.host.ip
    );
    let st = junk
        .cmd("timeout")
        .args(["30", "python3", "-c", &code])
        .status()
        .unwrap();
    assert!(st.success(), "junk sender failed");
    assert!(
        rig.alive(&tr.label),
        "tailrouter died: {}",
        rig.log_tail(&tr.label, 40)
    );
    ping_until_ok(&rig, &tr.host, &go_ip, "after the junk", &tr.label);
    let tr_ip = tr.ipv4().unwrap();
    ping_until_ok(
        &rig,
        &go.host,
        &tr_ip,
        "after the junk, go -> tr",
        &tr.label,
    );
    eprintln!("garbage: {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn derp_restart_and_vanished_peer_are_survived() {
    let t0 = Instant::now();
    let mut rig = Rig::new("dfb").unwrap();
    // Only DERP between the two: the direct path is blackholed.
    let (hs, go, tr) = joined(&mut rig, true);
    let go_ip = go.ipv4().unwrap();
    ping_until_ok(&rig, &tr.host, &go_ip, "over DERP", &tr.label);
    // headscale (and with it the DERP server) restarts: the DERP connection comes back.
    rig.restart_headscale(&hs).unwrap();
    ping_until_ok(&rig, &tr.host, &go_ip, "after the DERP restart", &tr.label);
    assert!(rig.alive(&tr.label));
    // The peer vanishes without a word: tailrouter keeps running and answers its CLI.
    rig.signal("tailscaled-go", "KILL").unwrap();
    let out = tr
        .host
        .cmd("ping")
        .args(["-c", "2", "-W", "1", &go_ip])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a dead peer answered");
    std::thread::sleep(Duration::from_secs(2));
    assert!(rig.alive(&tr.label), "{}", rig.log_tail(&tr.label, 40));
    let st = tr.status().unwrap();
    assert_eq!(st["BackendState"], "Running", "{st}");
    eprintln!(
        "derp restart + vanished peer: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

//! Netmap figures (issue 3): time and heap to parse and apply a full map of N synthetic peers
//! shaped like headscale 0.29.3's (keys, addresses, AllowedIPs, endpoints, DERP, Hostinfo,
//! CapMap), then one delta of each kind against it.
//!
//! `cargo bench -p control-client --bench netmap` (plain binary, no harness); prints a
//! Markdown table. Heap is counted by a global allocator that tracks live bytes: "retained"
//! is what the network map holds after the apply (the parsed message is consumed by it),
//! divided by the peer count. Times are medians of several runs.

#![allow(unsafe_code)] // the counting allocator
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use control_client::NetworkMap;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};
use tailcfg::MapResponse;

/// Live heap bytes, the peak since the last reset, and the number of allocations.
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

struct Counting;

fn grew(n: usize) {
    let now = LIVE.fetch_add(n as isize, Ordering::Relaxed) + n as isize;
    PEAK.fetch_max(now, Ordering::Relaxed);
    ALLOCS.fetch_add(1, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; the wrapper only
// counts sizes, so the GlobalAlloc contract is the system allocator's.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        // SAFETY: same layout, forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `System` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        grew(l.size());
        // SAFETY: same layout, forwarded.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        grew(new);
        // SAFETY: `p` came from `System` with layout `l`; forwarded.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn reset_peak() {
    PEAK.store(live(), Ordering::Relaxed);
}

/// A deterministic 64-hex-digit key body for peer `i` and key kind `k`.
fn hex_key(i: u64, k: u64) -> String {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ k.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (0..4)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}")
        })
        .collect()
}

/// One peer as headscale 0.29.3 sends it to a capability-130 client: the self node of
/// `crates/tailcfg/tests/fixtures/headscale-0.29.3-first-map.json`, plus what a Go
/// tailscaled peer reports (endpoints, services, NetInfo with DERP latencies) and what
/// headscale adds for peers (LastSeen, PrimaryRoutes, tags on some).
fn peer_json(i: u64) -> String {
    let (a, b) = ((i + 2) / 256, (i + 2) % 256);
    let id = i + 2;
    let subnet = if i % 20 == 0 {
        format!(r#","10.{}.{}.0/24""#, (i / 256) % 256, i % 256)
    } else {
        String::new()
    };
    let primary = if subnet.is_empty() {
        String::new()
    } else {
        format!(r#","PrimaryRoutes":[{}]"#, &subnet[1..])
    };
    let tags = if i % 4 == 0 {
        r#","Tags":["tag:server","tag:prod"]"#
    } else {
        ""
    };
    format!(
        r#"{{"ID":{id},"StableID":"{id}","Name":"host-{i}.trt.test.","User":{user},"Key":"nodekey:{nk}","Machine":"mkey:{mk}","DiscoKey":"discokey:{dk}","Addresses":["100.64.{a}.{b}/32","fd7a:115c:a1e0::{id:x}/128"],"AllowedIPs":["100.64.{a}.{b}/32","fd7a:115c:a1e0::{id:x}/128"{subnet}],"Endpoints":["198.51.{a}.{b}:41641","192.168.{a}.{b}:41641","[2001:db8:{a:x}::{b:x}]:41641","172.17.0.1:41641"],"DERP":"127.3.3.40:999","HomeDERP":999,"Hostinfo":{{"IPNVersion":"1.98.5-t1234abcd-gabcdef012","FrontendLogID":"{fl}","BackendLogID":"{bl}","OS":"linux","OSVersion":"6.12.48","Distro":"debian","DistroVersion":"13.1","Hostname":"host-{i}","GoArch":"amd64","GoVersion":"go1.25.3","Services":[{{"Proto":"peerapi4","Port":{p4}}},{{"Proto":"peerapi6","Port":{p4}}},{{"Proto":"peerapi-dns-proxy","Port":1}}],"NetInfo":{{"MappingVariesByDestIP":false,"WorkingIPv6":true,"OSHasIPv6":true,"WorkingUDP":true,"WorkingICMPv4":true,"UPnP":false,"PMP":false,"PCP":false,"PreferredDERP":999,"LinkType":"wired","DERPLatency":{{"999-v4":0.0021,"999-v6":0.0024}},"FirewallMode":"nft-forced"}},"Userspace":false,"UserspaceRouter":false}},"Created":"2026-11-24T16:15:11.635671631Z","Cap":130{tags}{primary},"LastSeen":"2026-11-24T16:20:00Z","Online":true,"MachineAuthorized":true,"CapMap":{{"default-auto-update":[false],"https://tailscale.com/cap/ssh":[]}}}}"#,
        user = 1 + i % 5,
        nk = hex_key(i, 1),
        mk = hex_key(i, 2),
        dk = hex_key(i, 3),
        fl = &hex_key(i, 4)[..40],
        bl = hex_key(i, 5),
        p4 = 40000 + i % 20000,
    )
}

/// The fixture's first map with `n` peers spliced in.
fn full_map_json(n: u64) -> Vec<u8> {
    let fixture = include_str!("../../tailcfg/tests/fixtures/headscale-0.29.3-first-map.json");
    let mut v: serde_json::Value = serde_json::from_str(fixture).unwrap();
    let peers: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::from_str(&peer_json(i)).unwrap())
        .collect();
    v["Peers"] = serde_json::Value::Array(peers);
    serde_json::to_vec(&v).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    if d >= Duration::from_millis(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    }
}

fn kib(b: isize) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
}

struct Row {
    n: u64,
    json_bytes: usize,
    parse: Duration,
    apply: Duration,
    parsed_heap: isize,
    retained: isize,
    peak_apply: isize,
    patch_parse: Duration,
    patch_apply: Duration,
    changed_parse: Duration,
    changed_apply: Duration,
    delta_growth: isize,
    parts: Vec<(&'static str, isize)>,
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn run(n: u64, reps: usize) -> Row {
    let json = full_map_json(n);
    let now = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let mut parse_t = Vec::new();
    let mut apply_t = Vec::new();
    let (mut parsed_heap, mut retained, mut peak_apply) = (0, 0, 0);
    let mut kept = None;
    for _ in 0..reps {
        drop(kept.take());
        let before = live();
        let (resp, tp) = time(|| serde_json::from_slice::<MapResponse>(&json).unwrap());
        assert_eq!(resp.peers.len() as u64, n);
        parsed_heap = live() - before;
        let mut nm = NetworkMap::new();
        reset_peak();
        let (_, ta) = time(|| nm.apply_at(resp, now).unwrap());
        peak_apply = PEAK.load(Ordering::Relaxed) - before;
        retained = live() - before;
        parse_t.push(tp);
        apply_t.push(ta);
        kept = Some(nm);
    }
    let mut nm = kept.unwrap();
    assert_eq!(nm.peers.len() as u64, n);

    // Deltas: a patch of one peer's endpoints/DERP/online, then one changed peer in full.
    let target = 2 + n / 2;
    let patch = format!(
        r#"{{"PeersChangedPatch":[{{"NodeID":{target},"DERPRegion":999,"Endpoints":["198.51.100.9:41641","192.168.7.9:41641"],"Online":false,"LastSeen":"2026-11-24T17:00:00Z"}}]}}"#
    );
    let mut changed: serde_json::Value = serde_json::from_str(&peer_json(target - 2)).unwrap();
    changed["Endpoints"] = serde_json::json!(["203.0.113.77:41641"]);
    changed["Hostinfo"]["Hostname"] = "renamed".into();
    let changed = format!(r#"{{"PeersChanged":[{changed}]}}"#);
    let before = live();
    let mut pp = Vec::new();
    let mut pa = Vec::new();
    let mut cp = Vec::new();
    let mut ca = Vec::new();
    for _ in 0..reps.max(5) {
        let (m, t) = time(|| serde_json::from_str::<MapResponse>(&patch).unwrap());
        pp.push(t);
        let (_, t) = time(|| nm.apply_at(m, now).unwrap());
        pa.push(t);
        let (m, t) = time(|| serde_json::from_str::<MapResponse>(&changed).unwrap());
        cp.push(t);
        let (_, t) = time(|| nm.apply_at(m, now).unwrap());
        ca.push(t);
    }
    let delta_growth = live() - before;
    assert_eq!(
        nm.peers[&(target as i64)].endpoints.len(),
        1,
        "the full change came last"
    );

    // Where the retained bytes go: free one part of every peer at a time.
    let mut parts = Vec::new();
    let mut free = |name: &'static str, f: &dyn Fn(&mut tailcfg::Node)| {
        let b = live();
        for p in nm.peers.values_mut() {
            f(p);
        }
        parts.push((name, b - live()));
    };
    free("Hostinfo", &|p| p.hostinfo = None);
    free("CapMap", &|p| p.cap_map = Default::default());
    free("Endpoints", &|p| p.endpoints = Vec::new());
    free("Addresses + AllowedIPs + PrimaryRoutes", &|p| {
        p.addresses = Vec::new();
        p.allowed_ips = None;
        p.primary_routes = Vec::new();
    });
    free("strings (StableID, Name, DERP, Tags)", &|p| {
        p.stable_id = String::new();
        p.name = String::new();
        p.legacy_derp_string = String::new();
        p.tags = Vec::new();
    });
    free("times (Created, LastSeen, KeyExpiry)", &|p| {
        p.created = Default::default();
        p.last_seen = None;
        p.key_expiry = Default::default();
    });
    let b = live();
    nm.peers.clear();
    parts.push(("Node structs + BTreeMap nodes", b - live()));

    Row {
        n,
        json_bytes: json.len(),
        parse: median(parse_t),
        apply: median(apply_t),
        parsed_heap,
        retained,
        peak_apply,
        patch_parse: median(pp),
        patch_apply: median(pa),
        changed_parse: median(cp),
        changed_apply: median(ca),
        delta_growth,
        parts,
    }
}

fn main() {
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("loadavg before: {}", load().trim());
    println!(
        "size_of::<Node>() = {} B, size_of::<Hostinfo>() = {} B",
        std::mem::size_of::<tailcfg::Node>(),
        std::mem::size_of::<tailcfg::Hostinfo>()
    );
    let rows = [run(1_000, 7), run(10_000, 5)];
    println!("loadavg after: {}", load().trim());
    println!();
    println!(
        "| peers | full map JSON | parse | apply | parsed message heap | retained by netmap | per peer | peak during apply |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.0} B | {} |",
            r.n,
            kib(r.json_bytes as isize),
            us(r.parse),
            us(r.apply),
            kib(r.parsed_heap),
            kib(r.retained),
            r.retained as f64 / r.n as f64,
            kib(r.peak_apply),
        );
    }
    println!();
    println!(
        "| peers | PeersChangedPatch parse / apply | PeersChanged (1 node) parse / apply | heap growth after deltas |"
    );
    println!("|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} / {} | {} / {} | {} B |",
            r.n,
            us(r.patch_parse),
            us(r.patch_apply),
            us(r.changed_parse),
            us(r.changed_apply),
            r.delta_growth
        );
    }
    println!();
    println!("| part of a peer (10,000 peers) | bytes per peer |");
    println!("|---|---:|");
    if let Some(r) = rows.last() {
        for (name, b) in &r.parts {
            println!("| {name} | {:.0} |", *b as f64 / r.n as f64);
        }
    }
    println!("\nallocations counted: {}", ALLOCS.load(Ordering::Relaxed));
}

//! Flash discipline (issue 7, item 4): tailrouter writes its state file on login, key
//! rotation, prefs change and logout, and nothing else: no netmap cache, no log file, no
//! write at all while the network map churns.
//!
//! The state directory is a real block-device file system, so the kernel itself counts what
//! would reach flash: a sparse 16 MiB image, `mkfs.ext4`, `losetup`, mounted in a temporary
//! directory; the sectors written come from `/sys/block/loopN/stat` after `sync -f`. Beside
//! the counter, each phase records the directory's listing (size, mtime, inode of every
//! file), so a failure names the file written. Figures go to stderr (`--nocapture`) and into
//! docs/flash.md. Needs root, `losetup`, `mkfs.ext4` and loop devices; a missing one fails
//! the test saying which. The image is unmounted and detached on drop, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use interop::{GoNode, Headscale, Rig, TailnetNode, TailrouterNode, TailrouterOptions, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(45);

/// What a listing keeps of a file: size, mtime and atime (ns), inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    size: u64,
    mtime: i128,
    atime: i128,
    ino: u64,
}

/// A loop-mounted ext4 image standing in for the router's flash.
struct Flash {
    dir: PathBuf,
    img: PathBuf,
    mnt: PathBuf,
    dev: Option<String>,
    mounted: bool,
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Flash {
    fn new(tag: &str) -> Flash {
        for tool in ["losetup", "mkfs.ext4", "mount", "umount", "sync"] {
            let found = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
                .unwrap_or(false);
            assert!(
                found,
                "{tool} is missing: the flash test needs util-linux (losetup, mount) and e2fsprogs (mkfs.ext4)"
            );
        }
        assert!(
            Path::new("/dev/loop-control").exists(),
            "/dev/loop-control is missing: the flash test needs loop devices (modprobe loop)"
        );
        let dir =
            std::env::temp_dir().join(format!("tailrouter-flash-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = Flash {
            img: dir.join("flash.img"),
            mnt: dir.join("mnt"),
            dir,
            dev: None,
            mounted: false,
        };
        std::fs::create_dir_all(&f.mnt).unwrap();
        let img = std::fs::File::create(&f.img).unwrap();
        img.set_len(16 << 20).unwrap();
        drop(img);
        // Inode tables and journal initialised now, not lazily by a kernel thread after the
        // mount: that background writing would be counted against the daemon.
        sh(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&f.img))
        .unwrap();
        let dev = sh(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&f.img))
        .unwrap_or_else(|e| panic!("losetup: no free loop device? {e}"));
        f.dev = Some(dev.trim().to_string());
        // Default options (relatime), as a router's USB stick or partition would have.
        sh(Command::new("mount")
            .arg(f.dev.as_ref().unwrap())
            .arg(&f.mnt))
        .unwrap();
        f.mounted = true;
        f
    }

    /// Sectors written to the device so far (field 7 of `/sys/block/loopN/stat`, 512 bytes
    /// each), after `sync -f` has pushed everything dirty to the device.
    fn sectors(&self) -> u64 {
        sh(Command::new("sync").arg("-f").arg(&self.mnt)).unwrap();
        let name = self
            .dev
            .as_ref()
            .and_then(|d| d.rsplit('/').next())
            .unwrap()
            .to_string();
        let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
        stat.split_whitespace()
            .nth(6)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unexpected /sys/block/{name}/stat: {stat}"))
    }

    /// Every file under the mount but `lost+found` (made by mkfs): path -> (size, mtime in
    /// ns, inode).
    fn listing(&self) -> BTreeMap<String, Entry> {
        fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Entry>) {
            for e in std::fs::read_dir(d).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                if rel == "lost+found" {
                    continue;
                }
                let m = std::fs::symlink_metadata(&p).unwrap();
                let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
                let entry = Entry {
                    size: m.len(),
                    mtime: ns(m.mtime(), m.mtime_nsec()),
                    // A directory's atime moves when this walk reads it: not the daemon's.
                    atime: if m.is_dir() {
                        0
                    } else {
                        ns(m.atime(), m.atime_nsec())
                    },
                    ino: m.ino(),
                };
                out.insert(rel, entry);
                if m.is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.mnt, &self.mnt, &mut out);
        out
    }
}

impl Drop for Flash {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Still busy (a daemon that did not exit): detach it lazily.
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        if let Some(dev) = &self.dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What changed between two listings, one line per file.
fn diff(a: &BTreeMap<String, Entry>, b: &BTreeMap<String, Entry>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in b {
        match a.get(k) {
            None => out.push(format!("{k}: created ({} bytes)", v.size)),
            Some(old) if (old.size, old.mtime, old.ino) != (v.size, v.mtime, v.ino) => {
                out.push(format!(
                    "{k}: written ({} -> {} bytes{})",
                    old.size,
                    v.size,
                    if old.ino != v.ino { ", replaced" } else { "" }
                ))
            }
            // Reading a file updates its atime (relatime: once after each write), itself a
            // write of the inode.
            Some(old) if old.atime != v.atime => out.push(format!("{k}: read (atime updated)")),
            Some(_) => {}
        }
    }
    for k in a.keys().filter(|k| !b.contains_key(*k)) {
        out.push(format!("{k}: removed"));
    }
    out
}

/// One measured step: bytes reaching the device and the files it changed.
struct Step {
    name: &'static str,
    bytes: u64,
    files: Vec<String>,
}

struct Meter<'a> {
    flash: &'a Flash,
    sectors: u64,
    listing: BTreeMap<String, Entry>,
    steps: Vec<Step>,
}

impl<'a> Meter<'a> {
    fn new(flash: &'a Flash) -> Meter<'a> {
        // The listing first: reading a directory changed since its last read updates its
        // atime (relatime), a write that the sync below then counts in the step that changed
        // the directory, not in the next one.
        let listing = flash.listing();
        Meter {
            sectors: flash.sectors(),
            listing,
            flash,
            steps: Vec::new(),
        }
    }

    /// Measures since the last step.
    fn step(&mut self, name: &'static str) -> &Step {
        let l = self.flash.listing();
        let s = self.flash.sectors();
        let step = Step {
            name,
            bytes: (s - self.sectors) * 512,
            files: diff(&self.listing, &l),
        };
        eprintln!(
            "flash: {name}: {} bytes written; files: {:?}",
            step.bytes, step.files
        );
        self.sectors = s;
        self.listing = l;
        self.steps.push(step);
        self.steps.last().unwrap()
    }
}

/// The peer (by its Tailscale IP) in a status.
fn peer_by_ip(st: &Value, ip: &str) -> Option<Value> {
    st["Peer"]
        .as_object()?
        .values()
        .find(|p| {
            p["TailscaleIPs"]
                .as_array()
                .is_some_and(|a| a.iter().any(|i| i == ip))
        })
        .cloned()
}

/// Regular files the daemon holds open, except stdin, stdout and stderr (the rig's log
/// file, opened by the rig, not by the daemon).
fn open_regular_files(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in rd.flatten() {
        let fd: u32 = e.file_name().to_string_lossy().parse().unwrap_or(0);
        if fd <= 2 {
            continue;
        }
        if std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()) {
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            out.push(format!("fd {fd} -> {target}"));
        }
    }
    out
}

/// The daemon's process id: the one process in its namespace running our binary.
fn daemon_pid(tr: &TailrouterNode) -> u32 {
    let out = sh(Command::new("ip").args(["netns", "pids", &tr.host.ns])).unwrap();
    let pids: Vec<u32> = out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split('\0').any(|a| a == "tailscaled"))
        })
        .collect();
    assert_eq!(
        pids.len(),
        1,
        "daemon processes in {}: {pids:?}",
        tr.host.ns
    );
    pids[0]
}

/// Netmap churn for `secs`: the Go node `go` renamed in headscale (its DNSName changes) and
/// its hostname changed by its own `tailscale set` (its Hostinfo changes), alternately, each
/// change waited for in the observer's status (`status`), so every one is a netmap update
/// that reached it. `each(i)` runs after the i-th update. Returns the updates seen and the
/// seconds it took.
fn churn(
    rig: &Rig,
    hs: &Headscale,
    go: &GoNode,
    status: &dyn Fn() -> Option<Value>,
    secs: u64,
    each: &mut dyn FnMut(u64),
) -> (u64, f64) {
    let go_ip = go.ipv4().unwrap();
    let go_id = hs.node_id(&go.name).unwrap();
    let peer = || peer_by_ip(&status()?, &go_ip);
    let start = Instant::now();
    let mut updates = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let i = updates + 1;
        let (field, want) = if i % 2 == 1 {
            let name = format!("{}-{i}", go.name);
            hs.cli(&["nodes", "rename", "-i", &go_id, &name, "-o", "json"])
                .unwrap();
            ("DNSName", format!("{name}.rig.test."))
        } else {
            let host = format!("{}host-{i}", go.name);
            go.tailscale(&["set", &format!("--hostname={host}")])
                .unwrap();
            ("HostName", host)
        };
        wait_for(
            &format!("the observer to see {field} {want}"),
            Duration::from_secs(15),
            || (peer()?[field].as_str() == Some(want.as_str())).then_some(()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail("headscale", 10)));
        updates = i;
        each(i);
    }
    (updates, start.elapsed().as_secs_f64())
}

fn churn_secs() -> u64 {
    std::env::var("TAILROUTER_FLASH_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// The two tests each run a rig with churn; one at a time keeps the figures comparable.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn state_is_written_on_login_prefs_and_logout_only_never_on_netmap_churn() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let mut rig = Rig::new("fl").unwrap();
    // Declared after the rig, so dropped (unmounted, detached) before the rig removes its
    // namespaces and directory.
    let flash = Flash::new("fl");
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go.up(&hs, &key).unwrap();
    let go_ip = go.ipv4().unwrap();

    let mut meter = Meter::new(&flash);
    let state_path = flash.mnt.join("tailscaled.state");
    let tr = rig
        .tailrouter_node_with(
            "tr",
            &TailrouterOptions {
                state: Some(state_path.clone()),
                log_verbosity: Some("1".into()),
            },
        )
        .unwrap();

    // (a) a new node: the state file is created (the machine key).
    let s = meter.step("start, new node");
    assert!(
        s.files.len() == 1 && s.files[0].starts_with("tailscaled.state: created"),
        "a new node writes its state file and nothing else: {:?}",
        s.files
    );
    // ... and a login with an auth key: prefs and keys.
    if let Err(e) = tr.up(&hs, &key) {
        panic!("{e}\n{}", rig.log_tail(&tr.label, 40));
    }
    tr.wait_state("Running", LIMIT).unwrap();
    wait_for("go in tailrouter's status", LIMIT, || {
        peer_by_ip(&tr.status().ok()?, &go_ip)
    })
    .unwrap();
    // Let the first seconds settle (netcheck, endpoints sent, DERP home chosen).
    std::thread::sleep(Duration::from_secs(3));
    let s = meter.step("login with an auth key");
    assert!(s.bytes > 0, "the login wrote nothing");
    assert!(
        s.files.iter().all(|f| f.starts_with("tailscaled.state:")),
        "the login wrote other files: {:?}",
        s.files
    );

    // (b) netmap churn, with a look at the daemon's open files mid-way.
    let pid = daemon_pid(&tr);
    let (updates, churn_s) = churn(
        &rig,
        &hs,
        &go,
        &|| tr.status().ok(),
        churn_secs(),
        &mut |i| {
            if i == 5 {
                let open = open_regular_files(pid);
                assert!(
                    open.is_empty(),
                    "the daemon holds regular files open: {open:?}"
                );
            }
        },
    );
    let s = meter.step("netmap churn");
    let per_min = updates as f64 * 60.0 / churn_s;
    let per_hour = s.bytes as f64 * 3600.0 / churn_s;
    eprintln!(
        "flash: churn: {updates} netmap updates seen in {churn_s:.0} s ({per_min:.0}/min); \
         {} bytes written = {per_hour:.0} bytes per hour of churn",
        s.bytes
    );
    assert!(
        updates >= 20,
        "only {updates} netmap updates in {churn_s:.0} s: the churn did not happen"
    );
    assert_eq!(
        (s.bytes, &s.files),
        (0, &Vec::<String>::new()),
        "writes during netmap churn"
    );
    let open = open_regular_files(pid);
    assert!(
        open.is_empty(),
        "the daemon holds regular files open: {open:?}"
    );

    // (c) a prefs change writes the state file once; the same prefs again write nothing.
    let up2 = |host: &str| {
        tr.tailscale(&[
            "up",
            &format!("--login-server={}", hs.url),
            &format!("--hostname={host}"),
            "--accept-dns=false",
            "--timeout=50s",
        ])
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.log_tail(&tr.label, 30)));
    };
    up2("tr2");
    let s = meter.step("prefs change (up --hostname)");
    assert!(s.bytes > 0, "the prefs change wrote nothing");
    assert_eq!(s.files.len(), 1, "{:?}", s.files);
    assert!(
        s.files[0].starts_with("tailscaled.state: written"),
        "{:?}",
        s.files
    );
    up2("tr2");
    let s = meter.step("same prefs again");
    assert_eq!(
        (s.bytes, &s.files),
        (0, &Vec::<String>::new()),
        "unchanged prefs wrote (a file, or its atime through the compare's read)"
    );
    let same_prefs_bytes = s.bytes;

    // A restart with nothing changed writes nothing (the file is read, compared, kept).
    rig.stop(&tr.label).unwrap();
    rig.start_tailrouter(&tr).unwrap();
    tr.wait_state("Running", LIMIT).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let s = meter.step("restart, nothing changed");
    assert_eq!(
        (s.bytes, &s.files),
        (0, &Vec::<String>::new()),
        "a plain restart wrote (a file, or its atime through the read at start)"
    );
    let restart_bytes = s.bytes;

    // (d) logout forgets the node keys: one write.
    tr.tailscale(&["logout"]).unwrap();
    tr.wait_state("NeedsLogin", LIMIT).unwrap();
    let s = meter.step("logout");
    assert!(s.bytes > 0, "the logout wrote nothing");
    assert_eq!(s.files.len(), 1, "{:?}", s.files);
    assert!(
        s.files[0].starts_with("tailscaled.state: written"),
        "{:?}",
        s.files
    );

    // Only the state file, no temporary file left behind, nothing else from the daemon in
    // its own directory (the LocalAPI socket only).
    let names: Vec<String> = flash.listing().into_keys().collect();
    assert_eq!(
        names,
        vec!["tailscaled.state".to_string()],
        "state directory"
    );
    let node_dir: Vec<String> = std::fs::read_dir(tr.socket.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        node_dir,
        vec!["tailscaled.sock".to_string()],
        "node directory"
    );
    rig.stop(&tr.label).unwrap();

    eprintln!("flash: summary (bytes reaching the device, ext4 on loop, relatime):");
    for s in &meter.steps {
        eprintln!("flash:   {:<34} {:>7}  {:?}", s.name, s.bytes, s.files);
    }
    eprintln!(
        "flash: same prefs {same_prefs_bytes} B, plain restart {restart_bytes} B; {:.0}s",
        t0.elapsed().as_secs_f64()
    );
}

/// The original's figure beside ours: Go tailscaled v1.98.5 (the MikroTik image's version)
/// with its state directory, and its logs directory as on the image (`/var/lib/tailscale`
/// holds both), on the same kind of flash, through the same churn. Nothing is asserted about
/// its writes (they are what they are); the test fails only if the churn did not reach it.
#[test]
fn go_tailscaled_under_the_same_churn_for_comparison() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rig = Rig::new("fg").unwrap();
    let flash = Flash::new("fg");
    let hs = rig.headscale().unwrap();
    let key = hs.preauth_key().unwrap();
    let go = rig.go_node("go").unwrap();
    go.up(&hs, &key).unwrap();

    let mut meter = Meter::new(&flash);
    let host = rig.host("sub").unwrap();
    let dir = rig.dir.join("go-sub");
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("tailscaled.sock");
    let tun = format!("flg{}", std::process::id() % 100_000);
    let mut cmd = host.cmd(&rig.peers.tailscaled);
    cmd.env("TS_NO_LOGS_NO_SUPPORT", "1")
        .env("TS_DEBUG_USE_DERP_HTTP", "1")
        .env("TS_LOGS_DIR", &flash.mnt)
        .arg(format!("--tun={tun}"))
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--statedir={}", flash.mnt.display()))
        .args(["--port=41641", "--no-logs-no-support"]);
    rig.spawn("tailscaled-sub", cmd).unwrap();
    let cli = rig.peers.tailscale.clone();
    let ts = |args: &[&str]| -> Option<String> {
        let out = host
            .cmd("timeout")
            .arg("60")
            .arg(&cli)
            .arg(format!("--socket={}", socket.display()))
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    wait_for("the Go subject's socket", LIMIT, || ts(&["version"])).unwrap();
    meter.step("go: start, new node");
    ts(&[
        "up",
        &format!("--login-server={}", hs.url),
        &format!("--auth-key={key}"),
        "--hostname=sub",
        "--accept-dns=false",
        "--timeout=50s",
    ])
    .unwrap_or_else(|| {
        panic!(
            "go subject up failed\n{}",
            rig.log_tail("tailscaled-sub", 30)
        )
    });
    let status = || -> Option<Value> { serde_json::from_str(&ts(&["status", "--json"])?).ok() };
    let go_ip = go.ipv4().unwrap();
    wait_for("go in the Go subject's status", LIMIT, || {
        peer_by_ip(&status()?, &go_ip)
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    meter.step("go: login with an auth key");
    let (updates, churn_s) = churn(&rig, &hs, &go, &status, churn_secs(), &mut |_| {});
    let s = meter.step("go: netmap churn");
    eprintln!(
        "flash: go churn: {updates} netmap updates seen in {churn_s:.0} s ({:.0}/min); \
         {} bytes written = {:.0} bytes per hour of churn",
        updates as f64 * 60.0 / churn_s,
        s.bytes,
        s.bytes as f64 * 3600.0 / churn_s
    );
    assert!(
        updates >= 20,
        "only {updates} netmap updates in {churn_s:.0} s: the churn did not happen"
    );
    rig.stop("tailscaled-sub").unwrap();
    meter.step("go: stop");
    eprintln!(
        "flash: go files: {:?}",
        flash.listing().keys().collect::<Vec<_>>()
    );
    eprintln!("flash: go summary (bytes reaching the device, ext4 on loop, relatime):");
    for s in &meter.steps {
        eprintln!("flash:   {:<34} {:>7}  {:?}", s.name, s.bytes, s.files);
    }
}

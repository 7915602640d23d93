//! The real binary as `tailscaled` with a temporary socket and state file, driven by the real
//! binary as `tailscale`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
#[cfg(feature = "cli")]
use std::process::Output;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tailrouter");

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tailrouter-e2e-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A TUN name of this test run's own: the tests run side by side, and a name is one daemon's.
fn tun_name(tag: &str) -> String {
    format!("tre{tag}{}", std::process::id() % 100_000)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    #[cfg_attr(not(feature = "cli"), allow(dead_code))]
    fn start(dir: &Path, state: &Path) -> Daemon {
        let socket = dir.join("run/tailscaled.sock");
        let child = Command::new(BIN)
            .arg("tailscaled")
            .arg(format!("--state={}", state.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--tun={}", tun_name("up")))
            // Any free UDP port: the tests run side by side.
            .arg("--port=0")
            // Never the machine's own resolv.conf.
            .arg("--resolv-conf=")
            .env_remove("TS_LOG_VERBOSITY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut d = Daemon { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.socket.exists() {
            if let Some(s) = d.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = d.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("daemon exited early: {s}\n{err}");
            }
            assert!(Instant::now() < deadline, "daemon made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// SIGTERM, then the exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = self.child.wait_with_output().unwrap();
        (out.status, text(&out.stderr))
    }
}

#[cfg(feature = "cli")]
fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("tailscale")
        .arg(format!("--socket={}", socket.display()))
        .args(args)
        .output()
        .unwrap()
}

#[cfg_attr(not(feature = "cli"), allow(dead_code))]
fn stamp(p: &Path) -> (u64, i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

#[cfg(feature = "cli")]
#[test]
fn status_and_up_against_the_real_daemon() {
    let dir = temp_dir("up");
    let state = dir.join("lib/tailscaled.state");
    let d = Daemon::start(&dir, &state);
    let sock = d.socket.clone();
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o666);

    let o = cli(&sock, &["status", "--json"]);
    let json = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(json.contains("\"BackendState\": \"NeedsLogin\""), "{json}");
    assert!(json.contains("\"Version\": \""), "{json}");
    // Control client and data plane are both wired in: nothing is reported missing.
    assert!(json.contains("\"TUN\": true"), "{json}");
    assert!(json.contains("\"Health\": null"), "{json}");

    let o = cli(&sock, &["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stdout).starts_with("Logged out."),
        "{}",
        text(&o.stdout)
    );

    let o = cli(&sock, &["ip"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no current Tailscale IPs; state: NeedsLogin"));

    // `up` saves the prefs, then waits for a login server that does not answer (a closed
    // loopback port) until its timeout.
    let unreachable = "--login-server=http://127.0.0.1:9";
    let before = stamp(&state);
    let o = cli(
        &sock,
        &[
            "up",
            unreachable,
            "--hostname=gw-e2e",
            "--advertise-routes=192.168.88.0/24",
            "--timeout=1s",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(err.contains("timeout waiting"), "{err}");
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains("\"Hostname\": \"gw-e2e\""), "{saved}");
    assert!(saved.contains("192.168.88.0/24"), "{saved}");
    assert_ne!(stamp(&state), before, "changed prefs are written");
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o600);

    // The same `up` again changes nothing, so the file is not touched.
    let after_first = stamp(&state);
    std::thread::sleep(Duration::from_millis(20));
    let o = cli(
        &sock,
        &[
            "up",
            unreachable,
            "--hostname=gw-e2e",
            "--advertise-routes=192.168.88.0/24",
            "--timeout=1s",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stamp(&state),
        after_first,
        "unchanged prefs are not written"
    );

    let o = cli(&sock, &["login", unreachable, "--timeout=1s"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("timeout waiting"));

    // `down` writes WantRunning=false once.
    let o = cli(&sock, &["down"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        std::fs::read_to_string(&state)
            .unwrap()
            .contains("\"WantRunning\": false")
    );

    // Another user may read but not change anything.
    if std::fs::metadata(&state).unwrap().uid() == 0 {
        use std::os::unix::process::CommandExt;
        let o = Command::new(BIN)
            .arg("tailscale")
            .arg(format!("--socket={}", sock.display()))
            .arg("logout")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(
            text(&o.stderr).contains("access denied"),
            "{}",
            text(&o.stderr)
        );
        let o = Command::new(BIN)
            .arg("tailscale")
            .arg(format!("--socket={}", sock.display()))
            .args(["status", "--json"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    }

    let (status, stderr) = d.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!sock.exists(), "socket removed on exit");
    let o = cli(&sock, &["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("failed to connect"),
        "{}",
        text(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn daemon_refuses_a_corrupt_state_file_and_leaves_it() {
    let dir = temp_dir("corrupt");
    let state = dir.join("tailscaled.state");
    let bad = b"{\"Version\": 1, \"MachineKey\": \"privkey:12";
    std::fs::write(&state, bad).unwrap();
    let out = Command::new(BIN)
        .arg("tailscaled")
        .arg(format!("--state={}", state.display()))
        .arg(format!("--socket={}", dir.join("s.sock").display()))
        .arg(format!("--tun={}", tun_name("bad")))
        .env_remove("TS_LOG_VERBOSITY")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&state.display().to_string()) && err.contains("not valid JSON"),
        "{err}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), bad, "left untouched");
    assert!(
        !Path::new("/sys/class/net").join(tun_name("bad")).exists(),
        "a refused state touches nothing on the host: no TUN was made"
    );
    assert!(
        !dir.join("s.sock").exists(),
        "no LocalAPI for a refused state"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn memory_state_writes_nothing() {
    let dir = temp_dir("mem");
    let socket = dir.join("s.sock");
    let child = Command::new(BIN)
        .args(["tailscaled", "--state=mem:"])
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--tun={}", tun_name("mem")))
        .arg("--port=0")
        .env_remove("TS_LOG_VERBOSITY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut d = Daemon { child, socket };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.socket.exists() {
        assert!(d.child.try_wait().unwrap().is_none(), "daemon exited");
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["s.sock"]);
    let (status, stderr) = d.stop();
    assert!(status.success(), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

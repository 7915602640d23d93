//! The built binary as a user runs it: under its three names, with good and bad flags, and
//! stopped by SIGTERM as a container runtime stops it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A private directory holding the binary under the names `tailscale` and `tailscaled`.
fn links(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tailrouter-it-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["tailscale", "tailscaled"] {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tailrouter"), dir.join(name)).unwrap();
    }
    dir
}

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("TS_LOG_VERBOSITY")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_name_reports_the_same_version_and_tags() {
    let dir = links("version");
    let daemon = run(&dir.join("tailscaled"), &["--version"]);
    let direct = run(Path::new(env!("CARGO_BIN_EXE_tailrouter")), &["--version"]);
    assert!(daemon.status.success() && direct.status.success());
    assert_eq!(daemon.stdout, direct.stdout);
    let out = text(&daemon.stdout);
    assert!(out.starts_with(env!("CARGO_PKG_VERSION")), "{out}");
    let tags = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("tags: "))
        .unwrap();
    assert_eq!(tags.split(',').any(|t| t == "cli"), cfg!(feature = "cli"));
    assert_eq!(
        tags.split(',').any(|t| t == "netstack"),
        cfg!(feature = "netstack")
    );

    let cli = run(&dir.join("tailscale"), &["version"]);
    if cfg!(feature = "cli") {
        assert!(cli.status.success());
        assert_eq!(cli.stdout, daemon.stdout);
    } else {
        assert_eq!(cli.status.code(), Some(2));
        assert!(
            text(&cli.stderr).contains("no CLI"),
            "{}",
            text(&cli.stderr)
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_flags_exit_2_with_a_message_naming_them() {
    let dir = links("badflags");
    for (args, word) in [
        (&["--bogus"][..], "--bogus"),
        (&["--tun=abcdefghijklmnopq"][..], "--tun"),
        (&["--port=notaport"][..], "--port"),
        (&["-state=mem:extra"][..], "mem:"),
    ] {
        let o = run(&dir.join("tailscaled"), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            text(&o.stderr).contains(word),
            "{args:?}: {}",
            text(&o.stderr)
        );
        assert!(o.stdout.is_empty());
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn daemon_makes_a_private_state_dir_and_stops_cleanly_on_sigterm() {
    let dir = links("sigterm");
    let statedir = dir.join("state");
    let mut child = Command::new(dir.join("tailscaled"))
        .arg(format!("--statedir={}", statedir.display()))
        .arg(format!(
            "--socket={}",
            dir.join("tailscaled.sock").display()
        ))
        .arg("--tun=trtest0")
        .env_remove("TS_LOG_VERBOSITY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The state directory appears once the daemon has started.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !statedir.exists() {
        assert!(
            Instant::now() < deadline,
            "daemon did not create its state dir"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = std::fs::metadata(&statedir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "state dir must be private");
    // Give the runtime a moment to install its signal handlers, then stop it.
    std::thread::sleep(Duration::from_millis(300));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("daemon ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = text(&child.wait_with_output().unwrap().stderr);
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert!(!stderr.contains("DEBUG"), "quiet by default: {stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

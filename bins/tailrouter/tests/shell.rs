//! The `sh` personality as a router owner meets it: the built binary run as `sh`, next to its
//! `tailscale` name on PATH, as in the container image.

#![cfg(feature = "shell")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A private directory with the binary as `sh`, `tailscale` and `tailscaled`, and a file.
fn bin_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tailrouter-sh-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["sh", "tailscale", "tailscaled"] {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tailrouter"), dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("note.txt"), "hello from a file\n").unwrap();
    dir
}

fn sh(dir: &PathBuf, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(dir.join("sh"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", dir)
        .env("GREETING", "hi there")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn dash_c_runs_builtins_and_programs_from_path() {
    let dir = bin_dir("c");
    let o = sh(
        &dir,
        &[
            "-c",
            "tailscale version; echo \"$GREETING\" 'a  b'; cat note.txt && echo ok || echo no; ls -l",
        ],
        "",
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with(env!("CARGO_PKG_VERSION")),
        "tailscale version first: {out}"
    );
    assert!(
        out.contains("\nhi there a  b\nhello from a file\nok\n"),
        "{out}"
    );
    assert!(!out.contains("no\n"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("lrwxrwxrwx") && l.contains("tailscale -> ")),
        "ls -l shows links: {out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("-rw") && l.contains(" 18 note.txt")),
        "ls -l shows mode and size: {out}"
    );
}

#[test]
fn exit_status_flows_through_and_or_and_exit() {
    let dir = bin_dir("status");
    let o = sh(
        &dir,
        &[
            "-c",
            "false || echo fell; nosuch; echo $?; exit 7; echo never",
        ],
        "",
    );
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(text(&o.stdout), "fell\n127\n");
    assert!(text(&o.stderr).contains("sh: nosuch: not found"));
    // A program's own status comes back: `tailscale` with a bad command fails.
    let o = sh(&dir, &["-c", "tailscale no-such-command; echo $?"], "");
    let out = text(&o.stdout);
    assert!(out.trim() != "0" && !out.trim().is_empty(), "{out}");
}

#[test]
fn reads_commands_from_stdin_without_a_terminal() {
    let dir = bin_dir("stdin");
    let o = sh(
        &dir,
        &[],
        "X=one\nexport Y=two\necho $X $Y\nenv\necho 'unterminated\ncd /proc && pwd\nunset X; echo \"[$X]\"\n",
    );
    let out = text(&o.stdout);
    let err = text(&o.stderr);
    // No terminal, no prompt; the bad line is reported and the shell goes on.
    assert!(out.starts_with("one two\n"), "{out}");
    assert!(
        out.contains("\nY=two\n") && !out.contains("\nX=one\n"),
        "{out}"
    );
    assert!(err.contains("unterminated single quote"), "{err}");
    assert!(out.contains("\n/proc\n[]\n"), "{out}");
    assert!(o.status.success(), "the last command succeeded: {err}");
}

#[test]
fn ps_lists_this_shell_and_kill_signals_a_process() {
    let dir = bin_dir("ps");
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id();
    let o = sh(&dir, &["-c", &format!("ps; kill -TERM {pid}")], "");
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    assert!(out.starts_with("    PID RSS(KiB) COMMAND\n"), "{out}");
    assert!(out.contains(" sleep 30\n"), "{out}");
    let st = sleeper.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(15), "sleep got SIGTERM");
    let o = sh(&dir, &["-c", "kill -BOGUS 1"], "");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_usage_is_an_error_message() {
    let dir = bin_dir("bad");
    for (args, want) in [
        (&["-c"][..], "-c needs a command string"),
        (&["-x"][..], "unknown option -x"),
        (&["-c", "ls | cat"][..], "pipes"),
        (&["/no/such/script"][..], "/no/such/script"),
    ] {
        let o = sh(&dir, args, "");
        assert!(!o.status.success(), "{args:?}");
        let e = text(&o.stderr);
        assert!(e.contains(want) && !e.contains("panicked"), "{args:?}: {e}");
    }
}

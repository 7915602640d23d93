//! The `cargo xtask` command line: outputs, errors and exit codes, as a user sees them.

use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("run xtask")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn add_dns_yields_netstack_and_says_why() {
    let o = xtask(&["featuretags", "--min", "--add=dns"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "cli,dns,netstack");
    assert!(text(&o.stderr).contains("pulled in netstack: required by dns"));
}

#[test]
fn add_accepts_a_separate_value_and_repeats() {
    let o = xtask(&[
        "featuretags",
        "--min",
        "--add",
        "osrouter",
        "--add=portmapper",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "cli,osrouter,portmapper");
}

#[test]
fn without_min_everything_is_kept() {
    let o = xtask(&["featuretags"]);
    assert!(o.status.success());
    let n = text(&o.stdout).trim().split(',').count();
    let registry =
        std::fs::read_to_string(xtask::workspace_root().join("featuretags.toml")).unwrap();
    assert_eq!(n, registry.matches("\n[tag.").count());
}

#[test]
fn unknown_tag_fails_with_close_matches() {
    let o = xtask(&["featuretags", "--min", "--add=netstak"]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(
        e.contains("unknown tag `netstak`") && e.contains("did you mean `netstack`"),
        "{e}"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn remove_refuses_while_a_kept_tag_depends_on_it() {
    let o = xtask(&["featuretags", "--remove=netstack"]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(
        e.contains("cannot remove `netstack` without also removing `dns`"),
        "{e}"
    );
}

#[test]
fn contradictory_add_and_remove_fails() {
    let o = xtask(&["featuretags", "--min", "--add=dns", "--remove=netstack"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("`dns` is added and depends on it"));
}

#[test]
fn list_shows_every_tag_with_status() {
    let o = xtask(&["featuretags", "--list"]);
    assert!(o.status.success());
    let out = text(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("dns ") && l.contains("partial") && l.contains("netstack"))
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("cachenetmap ") && l.contains("not-planned"))
    );
}

#[test]
fn bad_options_are_refused() {
    for args in [
        &["featuretags", "--bogus"][..],
        &["featuretags", "--add"][..],
        &["featuretags", "--min=yes"][..],
        &["nosuchcommand"][..],
        &["check", "extra"][..],
    ] {
        let o = xtask(args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(
            text(&o.stderr).starts_with("error: "),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
}

#[test]
fn build_refuses_a_tag_without_code_before_building() {
    let o = xtask(&["build", "--min", "--add=ssh"]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(
        e.contains("no code yet for") && e.contains("`ssh` (not planned:"),
        "{e}"
    );
    assert!(!e.contains("Compiling"), "nothing may be built: {e}");
}

#[test]
fn build_refuses_a_named_planned_tag_naming_the_issue() {
    let o = xtask(&["build", "--min", "--add=osrouter,c2n"]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(e.contains("`c2n` (planned, see issue 6)"), "{e}");
    assert!(!e.contains("Compiling"), "nothing may be built: {e}");
}

#[test]
fn upstream_dependencies_without_code_are_kept_in_the_allowlist() {
    // Tailscale's allowlist: useexitnode keeps peerapiclient (which tailrouter builds
    // without, see dist::features_for) and useroutes.
    let o = xtask(&["featuretags", "--min", "--add=useexitnode"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout).trim(),
        "cli,peerapiclient,useexitnode,useroutes"
    );
}

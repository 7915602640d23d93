//! `cargo xtask test`: the whole test suite, the command README.md names and CI runs.
//!
//! Every step runs even when an earlier one failed (except where a step needs the previous
//! one), and the last line is the plain `N passed, N failed` summary.

use crate::registry::{Registry, Request};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

struct Outcome {
    name: String,
    ok: bool,
    secs: f64,
    detail: String,
}

fn cargo_step(root: &Path, args: &[&str]) -> Result<String, String> {
    let status = Command::new(crate::cargo())
        .current_dir(root)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(String::new())
    } else {
        Err(format!("cargo {} failed ({status})", args.join(" ")))
    }
}

fn build_step(root: &Path, add: &[&str]) -> Result<String, String> {
    let reg = Registry::load(&root.join("featuretags.toml")).map_err(|e| e.to_string())?;
    let built = crate::dist::build(
        root,
        &reg,
        &crate::dist::BuildOpts {
            req: Request::min_plus(add),
            ..Default::default()
        },
    )?;
    let set: Vec<&str> = built.features.iter().map(String::as_str).collect();
    for want in add {
        if !built.features.contains(*want) {
            return Err(format!("built set {set:?} lacks requested `{want}`"));
        }
    }
    Ok(format!("tags {} -> {} bytes", set.join(","), built.size))
}

/// The tag combinations CI lints, as `--add` lists on top of `--min` (`None`: the full
/// default build). Each is resolved by the registry as `cargo xtask build` would, so what is
/// linted is exactly a set the xtask accepts (dependencies pulled in, tags without code left
/// out). One per router tag on top of osrouter, the port mapper alone, and both ends.
pub const COMBOS: &[Option<&[&str]>] = &[
    Some(&[]),
    Some(&["osrouter"]),
    Some(&["osrouter", "advertiseroutes"]),
    Some(&["osrouter", "useexitnode"]),
    Some(&["osrouter", "advertiseexitnode"]),
    Some(&["osrouter", "iptables"]),
    Some(&["portmapper"]),
    None,
];

/// The Cargo features (`tailrouter/<tag>`) of one [`COMBOS`] entry, and its label.
pub fn combo_features(
    reg: &Registry,
    combo: Option<&[&str]>,
) -> Result<(String, Vec<String>), String> {
    let Some(add) = combo else {
        return Ok(("default".into(), Vec::new()));
    };
    let res = reg
        .resolve(&Request::min_plus(add))
        .map_err(|e| e.to_string())?;
    let (feats, _) = crate::dist::features_for(reg, &res)?;
    let label = if add.is_empty() {
        "--min".to_string()
    } else {
        format!("--min --add={}", add.join(","))
    };
    Ok((
        label,
        feats
            .iter()
            .map(|f| format!("{}/{f}", crate::check::BIN))
            .collect(),
    ))
}

/// Clippy (warnings denied, every target) of the binary, the core and osrouter for each of
/// [`COMBOS`], in the suite's one target directory (dependencies are shared between the
/// combinations), then the binary's tests in the `--min` build, where every router flag must
/// be refused with its tag's name.
fn combos_step(root: &Path) -> Result<String, String> {
    let reg = Registry::load(&root.join("featuretags.toml")).map_err(|e| e.to_string())?;
    let mut done = Vec::new();
    for combo in COMBOS {
        let (label, feats) = combo_features(&reg, *combo)?;
        let list = feats.join(",");
        let mut args = vec![
            "clippy",
            "--locked",
            "--package",
            "tailrouter",
            "--package",
            "ipn",
            "--package",
            "osrouter",
            "--all-targets",
        ];
        if combo.is_some() {
            args.push("--no-default-features");
            if !list.is_empty() {
                args.extend(["--features", list.as_str()]);
            }
        }
        args.extend(["--", "-D", "warnings"]);
        eprintln!("--- tag combination {label}");
        let t = Instant::now();
        cargo_step(root, &args).map_err(|e| format!("{label}: {e}"))?;
        done.push(format!("{label} {:.0}s", t.elapsed().as_secs_f64()));
    }
    let t = Instant::now();
    cargo_step(
        root,
        &[
            "test",
            "--locked",
            "--package",
            "tailrouter",
            "--bins",
            "--no-default-features",
            "--features",
            "tailrouter/cli",
        ],
    )
    .map_err(|e| format!("tests of the --min binary: {e}"))?;
    done.push(format!("tests --min {:.0}s", t.elapsed().as_secs_f64()));
    Ok(done.join("; "))
}

/// cargo-deny, installed from crates.io when missing. The advisory database cannot be fetched
/// here (no network but the registries), so the advisories check is left to CI with network.
fn deny_step(root: &Path) -> Result<String, String> {
    let have = Command::new(crate::cargo())
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("cargo-deny is missing: installing it from crates.io (a few minutes, once)");
        cargo_step(root, &["install", "--locked", "cargo-deny"])?;
    }
    cargo_step(
        root,
        &["deny", "--locked", "check", "bans", "licenses", "sources"],
    )
    .map(|_| {
        "bans, licenses, sources (advisories need the RustSec database: no network here)".into()
    })
}

/// The image's target (xtask/tests/image.rs builds it): the host CPU with musl, added with
/// rustup when missing.
fn musl_target() -> Result<String, String> {
    let target = crate::image::default_target(&crate::host_triple());
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    let lib = Path::new(String::from_utf8_lossy(&sysroot.stdout).trim())
        .join("lib/rustlib")
        .join(&target)
        .join("lib");
    if lib.is_dir() {
        return Ok(format!("Rust target {target}"));
    }
    eprintln!("the Rust target {target} is missing: rustup target add {target}");
    let ok = Command::new("rustup")
        .args(["target", "add", &target])
        .status()
        .is_ok_and(|s| s.success());
    if ok && lib.is_dir() {
        Ok(format!("added Rust target {target}"))
    } else {
        Err(format!(
            "the image tests need the Rust target {target}: `rustup target add {target}` failed"
        ))
    }
}

/// Tools the suite needs beyond Rust, installed when missing so the suite runs on a new machine.
fn prerequisites_step() -> Result<String, String> {
    let musl = musl_target()?;
    let src = rust_src()?;
    yaml_step().map(|y| format!("{musl}; {src}; {y}"))
}

/// std's sources: the image builds std from source for size (`dist::STD_FROM_SOURCE`).
fn rust_src() -> Result<String, String> {
    if crate::dist::rust_src_installed() {
        return Ok("rust-src".into());
    }
    eprintln!("std's sources are missing: rustup component add rust-src");
    let ok = Command::new("rustup")
        .args(["component", "add", "rust-src"])
        .status()
        .is_ok_and(|s| s.success());
    if ok && crate::dist::rust_src_installed() {
        Ok("added rust-src".into())
    } else {
        Err("the image tests need std's sources: `rustup component add rust-src` failed".into())
    }
}

fn yaml_step() -> Result<String, String> {
    let has_yaml = || {
        Command::new("python3")
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has_yaml() {
        return Ok("python3 with PyYAML".into());
    }
    eprintln!("PyYAML is missing: installing it with pip");
    let ok = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "pyyaml"])
        .status()
        .is_ok_and(|s| s.success());
    if ok && has_yaml() {
        Ok("installed PyYAML".into())
    } else {
        Err("python3 with PyYAML is needed by the packaging tests: `python3 -m pip install pyyaml` or `apt-get install python3-yaml`".into())
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Real peers (headscale, Go tailscaled, tailscale, derper) built from the Go module proxy
/// into a cache outside the repository; quick when they are cached already.
fn peers_step(root: &Path) -> Result<String, String> {
    let out = Command::new("bash")
        .current_dir(root)
        .arg("interop/install-peers.sh")
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run interop/install-peers.sh: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprint!("{stdout}");
    if !out.status.success() {
        return Err(format!("interop/install-peers.sh failed ({})", out.status));
    }
    let peers: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("peer "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some(format!("{} {}", w.next()?, w.next()?))
        })
        .collect();
    Ok(peers.join(", "))
}

pub fn run(root: &Path, args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("test takes no options (got `{a}`)"));
    }
    type StepFn<'a> = Box<dyn Fn() -> Result<String, String> + 'a>;
    let steps: Vec<(&str, StepFn)> = vec![
        ("prerequisites", Box::new(prerequisites_step)),
        // Before the tests: some unit-level interop tests (control client against headscale
        // on loopback) need the peers too.
        (
            "interop peers (Go module proxy)",
            Box::new(|| peers_step(root)),
        ),
        (
            "fmt",
            Box::new(|| cargo_step(root, &["fmt", "--all", "--check"])),
        ),
        (
            "clippy (workspace, every tag)",
            Box::new(|| {
                cargo_step(
                    root,
                    &[
                        "clippy",
                        "--workspace",
                        "--all-targets",
                        "--locked",
                        "--",
                        "-D",
                        "warnings",
                    ],
                )
            }),
        ),
        (
            "clippy (no tags)",
            Box::new(|| {
                cargo_step(
                    root,
                    &[
                        "clippy",
                        "--package",
                        "tailrouter",
                        "--package",
                        "ipn",
                        "--all-targets",
                        "--no-default-features",
                        "--locked",
                        "--",
                        "-D",
                        "warnings",
                    ],
                )
            }),
        ),
        (
            "tests (workspace, every tag)",
            Box::new(|| {
                cargo_step(
                    root,
                    &["test", "--workspace", "--exclude", "interop", "--locked"],
                )
            }),
        ),
        (
            "tests (no tags)",
            Box::new(|| {
                cargo_step(
                    root,
                    &[
                        "test",
                        "--package",
                        "tailrouter",
                        "--package",
                        "ipn",
                        "--no-default-features",
                        "--locked",
                    ],
                )
            }),
        ),
        (
            "clippy and tests (netstack without dns)",
            Box::new(|| {
                // The one combination where quad-100 is absorbed but not answered: it must
                // build cleanly and say so in status.
                let set = [
                    "--package",
                    "ipn",
                    "--no-default-features",
                    "--features",
                    "netstack",
                    "--locked",
                ];
                let mut clippy = vec!["clippy", "--all-targets"];
                clippy.extend(set);
                clippy.extend(["--", "-D", "warnings"]);
                cargo_step(root, &clippy)?;
                let mut test = vec!["test"];
                test.extend(set);
                cargo_step(root, &test)
            }),
        ),
        (
            "xtask check",
            Box::new(|| {
                let p = crate::check::run(root);
                if p.is_empty() {
                    Ok(String::new())
                } else {
                    Err(p.join("\n"))
                }
            }),
        ),
        (
            "launcher (bins/unpack: fmt, clippy, tests)",
            Box::new(|| {
                // Its own workspace (no_std, panic = "abort"), so the workspace steps skip it.
                let m = "bins/unpack/Cargo.toml";
                cargo_step(root, &["fmt", "--manifest-path", m, "--check"])?;
                cargo_step(
                    root,
                    &[
                        "clippy",
                        "--manifest-path",
                        m,
                        "--all-targets",
                        "--locked",
                        "--",
                        "-D",
                        "warnings",
                    ],
                )?;
                cargo_step(root, &["test", "--manifest-path", m, "--locked"])
            }),
        ),
        ("tag combinations (clippy)", Box::new(|| combos_step(root))),
        ("build --min", Box::new(|| build_step(root, &[]))),
        (
            "build --min --add=osrouter,dns,netstack",
            Box::new(|| build_step(root, &["osrouter", "dns", "netstack"])),
        ),
        ("cargo-deny", Box::new(|| deny_step(root))),
        (
            "fuzz (10 s per target)",
            Box::new(|| crate::fuzz::run(root, 10, &[])),
        ),
        (
            "interop (headscale, Go tailscaled)",
            Box::new(|| {
                if !is_root() {
                    return Err("the interop tests need root (network namespaces, TUN devices); run the suite as root".into());
                }
                // The harness runs target/debug/tailrouter: build it with every tag (the
                // no-tags test step may have left a build without the CLI there).
                cargo_step(root, &["build", "--package", "tailrouter", "--locked"])?;
                // The port-mapping test drives the portmapper crate through its example.
                cargo_step(
                    root,
                    &[
                        "build",
                        "--package",
                        "portmapper",
                        "--example",
                        "portmap",
                        "--locked",
                    ],
                )?;
                // The embedding test runs the core's example; it needs osrouter (addresses on
                // its TUN). The no-tags build of the example is the clippy step's.
                cargo_step(
                    root,
                    &[
                        "build",
                        "--package",
                        "ipn",
                        "--example",
                        "embed",
                        "--features",
                        "osrouter,dns",
                        "--locked",
                    ],
                )?;
                cargo_step(root, &["test", "--package", "interop", "--locked"])
            }),
        ),
        (
            "demo (README's main-job command)",
            Box::new(|| {
                let out = Command::new(crate::cargo())
                    .current_dir(root)
                    .args([
                        "run",
                        "--quiet",
                        "--locked",
                        "--package",
                        "xtask",
                        "--",
                        "demo",
                    ])
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .map_err(|e| format!("cannot run the demo: {e}"))?;
                let text = String::from_utf8_lossy(&out.stdout);
                print!("{text}");
                if !out.status.success() {
                    return Err(format!("cargo xtask demo failed ({})", out.status));
                }
                for want in [
                    "tailscale status, on tailrouter",
                    "tailscale status, on the Go node",
                    "go-peer",
                    "3 received",
                    "pong from go-peer",
                    "status NOERROR, answer A 100.",
                ] {
                    if !text.contains(want) {
                        return Err(format!("demo output lacks {want:?}"));
                    }
                }
                Ok("both sides list each other, ping through the tunnel, MagicDNS answers".into())
            }),
        ),
    ];
    let mut outcomes = Vec::new();
    for (name, step) in &steps {
        eprintln!("\n=== {name}");
        let t = Instant::now();
        let r = step();
        let secs = t.elapsed().as_secs_f64();
        let (ok, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => (false, e),
        };
        eprintln!(
            "=== {name}: {} in {secs:.1}s",
            if ok { "ok" } else { "FAILED" }
        );
        outcomes.push(Outcome {
            name: name.to_string(),
            ok,
            secs,
            detail,
        });
    }
    println!("\nsummary:");
    for o in &outcomes {
        println!(
            "  {:<6} {:<42} {:>7.1}s  {}",
            if o.ok { "ok" } else { "FAILED" },
            o.name,
            o.secs,
            o.detail.lines().next().unwrap_or("")
        );
    }
    let passed = outcomes.iter().filter(|o| o.ok).count();
    let failed = outcomes.len() - passed;
    println!("suite: {passed} passed, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} step(s) failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_combination_is_one_the_xtask_accepts() {
        let reg = Registry::load(&crate::workspace_root().join("featuretags.toml")).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for c in COMBOS {
            let (label, feats) = combo_features(&reg, *c).unwrap();
            assert!(seen.insert(feats.clone()), "{label} repeats another set");
            if let Some(add) = c {
                for a in *add {
                    assert!(
                        feats.contains(&format!("tailrouter/{a}")),
                        "{label}: {feats:?}"
                    );
                }
            }
        }
        // Each router tag is linted without the others at least once.
        let (_, f) = combo_features(&reg, Some(&["osrouter", "useexitnode"])).unwrap();
        assert!(f.contains(&"tailrouter/useroutes".to_string()));
        assert!(
            !f.iter()
                .any(|t| t.ends_with("advertiseroutes") || t.ends_with("iptables"))
        );
    }
}

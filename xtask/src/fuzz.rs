//! `cargo xtask fuzz`: runs every fuzz target of `fuzz/` for a bounded time.
//!
//! Targets are the `[[bin]]` entries of `fuzz/Cargo.toml`. Each runs with libFuzzer through
//! cargo-fuzz, starting from the committed seeds in `fuzz/seeds/<target>/` (plus the
//! dictionary `fuzz/dict/<target>.dict` when there is one) and a scratch corpus that is thrown
//! away. cargo-fuzz wants nightly-only compiler flags; the project builds on stable, so the
//! fuzz builds alone set `RUSTC_BOOTSTRAP=1`. Address sanitizer is off (`-s none`): the code is
//! safe Rust, and the sanitizer needs a nightly standard library.

use std::path::Path;
use std::process::Command;

/// The names of the fuzz targets declared in `fuzz/Cargo.toml`.
pub fn targets(root: &Path) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(default)]
        bin: Vec<Bin>,
    }
    #[derive(serde::Deserialize)]
    struct Bin {
        name: String,
    }
    let path = root.join("fuzz/Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let m: Manifest =
        toml::from_str(&text).map_err(|e| format!("malformed {}: {e}", path.display()))?;
    if m.bin.is_empty() {
        return Err(format!("{} declares no fuzz targets", path.display()));
    }
    Ok(m.bin.into_iter().map(|b| b.name).collect())
}

fn ensure_cargo_fuzz() -> Result<(), String> {
    let have = Command::new(crate::cargo())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if have {
        return Ok(());
    }
    eprintln!("cargo-fuzz is missing: installing it from crates.io (about two minutes, once)");
    let ok = Command::new(crate::cargo())
        .args(["install", "--locked", "cargo-fuzz"])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err("cargo install cargo-fuzz failed".into())
    }
}

/// Runs each target (all when `only` is empty) for `seconds`; a crash fails with its artifact.
pub fn run(root: &Path, seconds: u32, only: &[String]) -> Result<String, String> {
    ensure_cargo_fuzz()?;
    let all = targets(root)?;
    for o in only {
        if !all.contains(o) {
            return Err(format!(
                "unknown fuzz target `{o}` (targets: {})",
                all.join(", ")
            ));
        }
    }
    let chosen: Vec<&String> = all
        .iter()
        .filter(|t| only.is_empty() || only.contains(t))
        .collect();
    let fuzz = root.join("fuzz");
    let mut report = Vec::new();
    for t in chosen {
        let scratch =
            std::env::temp_dir().join(format!("tailrouter-fuzz-{}-{t}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| format!("mkdir {}: {e}", scratch.display()))?;
        let mut cmd = Command::new(crate::cargo());
        cmd.current_dir(&fuzz)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", t, "-s", "none"])
            .arg(&scratch);
        let seeds = fuzz.join("seeds").join(t);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--").arg(format!("-max_total_time={seconds}"));
        let dict = fuzz.join("dict").join(format!("{t}.dict"));
        if dict.is_file() {
            cmd.arg(format!("-dict={}", dict.display()));
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        let _ = std::fs::remove_dir_all(&scratch);
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!("fuzz target `{t}` failed:\n{}", tail.join("\n")));
        }
        let runs = log
            .lines()
            .find_map(|l| {
                l.strip_prefix("Done ")
                    .and_then(|r| r.split_whitespace().next())
            })
            .unwrap_or("?")
            .to_string();
        report.push(format!("{t}: {runs} runs"));
    }
    Ok(report.join(", "))
}

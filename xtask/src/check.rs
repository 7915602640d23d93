//! `cargo xtask check`: the registry is sound and the Cargo features of every crate agree with it.
//!
//! The rules, each with its own message:
//! - the composition root (`ipn`) has exactly one feature per built tag, each enabling the
//!   features of the tags it depends on, and no default features;
//! - the binary (`tailrouter`) passes each tag through to `ipn` one-to-one, with the same
//!   dependencies, and its default is the full set of built tags;
//! - a library crate's features are built tags forwarded to it by the root's same-named
//!   feature; it has no default features;
//! - no crate has a public feature without a tag (optional dependencies use `dep:`);
//! - `crates/ipn/src/tags.rs` is what `cargo xtask gen` would write;
//! - the compile-time guard refuses each tag without each of its dependencies that is built
//!   (a dependency Tailscale declares on a tag we have no code for is recorded, not enforced).

use crate::registry::Registry;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The crate where tags are composed.
pub const ROOT: &str = "ipn";
/// The binary that passes tags through to the root.
pub const BIN: &str = "tailrouter";
/// Build tooling, which has no tags.
const TOOLING: &[&str] = &["xtask"];

/// crate name -> feature name -> what the feature enables.
pub type Features = BTreeMap<String, BTreeMap<String, Vec<String>>>;

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    features: BTreeMap<String, Vec<String>>,
}

/// The features of every workspace member, as Cargo itself reads them.
pub fn workspace_features(root: &Path) -> Result<Features, String> {
    let out = Command::new(crate::cargo())
        .current_dir(root)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let md: Metadata = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("cannot read cargo metadata output: {e}"))?;
    Ok(md
        .packages
        .into_iter()
        .filter(|p| !TOOLING.contains(&p.name.as_str()))
        .map(|p| (p.name, p.features))
        .collect())
}

/// Every disagreement between the registry and the crates' features.
pub fn check_features(reg: &Registry, crates: &Features) -> Vec<String> {
    let mut problems = Vec::new();
    let built = reg.cargo_tags();
    let empty = BTreeMap::new();
    let root = crates.get(ROOT).unwrap_or_else(|| {
        problems.push(format!("the composition root crate `{ROOT}` is missing"));
        &empty
    });
    let bin = crates.get(BIN).unwrap_or_else(|| {
        problems.push(format!("the binary crate `{BIN}` is missing"));
        &empty
    });

    let describe = |f: &str| match reg.tags.get(f) {
        Some(t) => format!(
            "tag `{f}` is {}: mark it scaffold, partial or implemented in featuretags.toml, or drop the feature",
            t.status.as_str()
        ),
        None => "no tag in featuretags.toml has that name (optional dependencies must use `dep:`)"
            .to_string(),
    };

    for (krate, feats) in [(ROOT, root), (BIN, bin)] {
        if crates.contains_key(krate) {
            for tag in &built {
                if !feats.contains_key(tag) {
                    problems.push(format!(
                        "crate `{krate}` has no feature `{tag}`, but tag `{tag}` is {} in featuretags.toml",
                        reg.tags[tag].status.as_str()
                    ));
                }
            }
        }
        for f in feats.keys() {
            if f != "default" && !built.contains(f) {
                problems.push(format!(
                    "crate `{krate}` has feature `{f}` without a built tag: {}",
                    describe(f)
                ));
            }
        }
    }

    for tag in &built {
        // Only dependencies with code are enforced; see `Registry::built_deps`.
        let deps = &reg.built_deps(tag);
        if let Some(enables) = root.get(tag) {
            for d in deps {
                if !enables.contains(d) {
                    problems.push(format!(
                        "feature `{ROOT}/{tag}` does not enable `{d}`, which tag `{tag}` depends on"
                    ));
                }
            }
        }
        if let Some(enables) = bin.get(tag) {
            let forward = format!("{ROOT}/{tag}");
            if !enables.contains(&forward) {
                problems.push(format!(
                    "feature `{BIN}/{tag}` does not forward to `{forward}`"
                ));
            }
            for d in deps {
                if !enables.contains(d) {
                    problems.push(format!(
                        "feature `{BIN}/{tag}` does not enable `{d}`, which tag `{tag}` depends on"
                    ));
                }
            }
        }
    }

    if let Some(d) = root.get("default").filter(|d| !d.is_empty()) {
        problems.push(format!(
            "crate `{ROOT}` has default features {d:?}: the binary chooses the tags, the root defaults to none"
        ));
    }
    if crates.contains_key(BIN) {
        let default: BTreeSet<String> = bin.get("default").into_iter().flatten().cloned().collect();
        if default != built {
            let missing: Vec<_> = built.difference(&default).collect();
            let extra: Vec<_> = default.difference(&built).collect();
            problems.push(format!(
                "crate `{BIN}` default features must be every built tag (a plain `cargo build` is the full node); missing {missing:?}, extra {extra:?}"
            ));
        }
    }

    for (krate, feats) in crates {
        if krate == ROOT || krate == BIN {
            continue;
        }
        for (f, enables) in feats {
            if f == "default" {
                if !enables.is_empty() {
                    problems.push(format!(
                        "crate `{krate}` has default features {enables:?}: library crates get tags only from `{ROOT}`"
                    ));
                }
                continue;
            }
            if !built.contains(f) {
                problems.push(format!(
                    "crate `{krate}` has feature `{f}` without a built tag: {}",
                    describe(f)
                ));
                continue;
            }
            let plain = format!("{krate}/{f}");
            let weak = format!("{krate}?/{f}");
            let forwarded = root
                .get(f)
                .is_some_and(|e| e.contains(&plain) || e.contains(&weak));
            if !forwarded {
                problems.push(format!(
                    "crate `{krate}` has feature `{f}` but `{ROOT}/{f}` does not forward to it (add \"{plain}\" or \"{weak}\")"
                ));
            }
        }
    }
    problems
}

/// Compiles the generated tags file alone with `rustc`, once per tag dependency with only the
/// dependent tag on, and confirms each build is refused; then with all built tags on, accepted.
pub fn check_guards(reg: &Registry, tags_rs: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("xtask-guard-{}-{n}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return vec![format!("cannot create {}: {e}", dir.display())];
    }
    let rustc = |cfgs: &[&String]| {
        let mut cmd = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()));
        cmd.args([
            "--crate-type=lib",
            "--edition=2024",
            "--emit=metadata",
            "--out-dir",
        ])
        .arg(&dir)
        .arg(tags_rs);
        for c in cfgs {
            cmd.arg("--cfg").arg(format!("feature=\"{c}\""));
        }
        cmd.output()
    };
    for tag in reg.cargo_tags() {
        for dep in &reg.built_deps(&tag) {
            // Everything on except this one dependency: only its guard can fire.
            let on: Vec<&String> = reg
                .tags
                .keys()
                .filter(|t| reg.tags[*t].status.has_cargo_feature() && *t != dep)
                .collect();
            match rustc(&on) {
                Ok(out) => {
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let want = format!("feature tag `{tag}` requires `{dep}`");
                    if out.status.success() || !stderr.contains(&want) {
                        problems.push(format!(
                            "the compile-time guard did not refuse `{tag}` without `{dep}` (rustc said: {})",
                            stderr.trim()
                        ));
                    }
                }
                Err(e) => problems.push(format!("cannot run rustc: {e}")),
            }
        }
    }
    let all: Vec<String> = reg.cargo_tags().into_iter().collect();
    match rustc(&all.iter().collect::<Vec<_>>()) {
        Ok(out) if out.status.success() => {}
        Ok(out) => problems.push(format!(
            "the generated tags file does not compile with every built tag on: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => problems.push(format!("cannot run rustc: {e}")),
    }
    let _ = std::fs::remove_dir_all(&dir);
    problems
}

/// Loads a fixture's `features.toml` (crate -> feature -> list), the shape `cargo metadata` gives.
pub fn features_from_toml(text: &str) -> Result<Features, String> {
    toml::from_str(text).map_err(|e| format!("malformed features fixture: {e}"))
}

/// The whole check over a workspace: returns every problem found.
pub fn run(root: &Path) -> Vec<String> {
    let reg = match Registry::load(&root.join("featuretags.toml")) {
        Ok(r) => r,
        Err(e) => return e.0,
    };
    let mut problems = match workspace_features(root) {
        Ok(f) => check_features(&reg, &f),
        Err(e) => vec![e],
    };
    problems.extend(check_generated(&reg, &root.join(crate::codegen::TAGS_RS)));
    problems
}

/// The generated tags file is current, and its guards refuse every missing dependency.
pub fn check_generated(reg: &Registry, path: &Path) -> Vec<String> {
    let want = crate::codegen::tags_rs(reg);
    match std::fs::read_to_string(path) {
        Ok(have) if have == want => check_guards(reg, path),
        Ok(_) => vec![format!(
            "{} is stale: run `cargo xtask gen`",
            path.display()
        )],
        Err(e) => vec![format!(
            "cannot read {}: {e} (run `cargo xtask gen`)",
            path.display()
        )],
    }
}

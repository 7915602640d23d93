//! `cargo xtask build` and `cargo xtask size`: release builds of the combined binary with an
//! exact set of tags.

use crate::registry::{Registry, Request, Resolution};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Options of one build.
#[derive(Debug, Default, Clone)]
pub struct BuildOpts {
    pub req: Request,
    pub target: Option<String>,
    pub out: Option<PathBuf>,
    /// A static router build: [`STATIC_FLAGS`], then [`drop_unwind_tables`].
    pub static_link: bool,
    /// Build std from source for size ([`STD_FROM_SOURCE`]); needs `--target` and rust-src.
    pub std_from_source: bool,
}

/// Cargo's flags that build std itself with the release profile (opt-level "z", fat LTO with
/// our code) and without its `backtrace` feature, with std's `optimize_for_size` algorithms.
/// A panic still prints its message. These are unstable Cargo flags, so the build sets
/// `RUSTC_BOOTSTRAP=1` (as the fuzz builds do); CI's image tests build exactly this, and the
/// Dockerfile pins the toolchain (rust:1.95). docs/sizes.md has what it saves: 355 KB raw,
/// 144 KB packed.
pub const STD_FROM_SOURCE: [&str; 4] = [
    "-Z",
    "build-std=std,panic_abort",
    "-Z",
    "build-std-features=optimize_for_size",
];

/// Whether std's sources (the rust-src component) are installed.
pub fn rust_src_installed() -> bool {
    std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|root| {
            root.join("lib/rustlib/src/rust/library/std/Cargo.toml")
                .is_file()
        })
}

/// The Cargo features a resolution builds, or why it cannot be built.
///
/// Tags the user named with `--add` must all be built in tailrouter. Tags kept only because no
/// `--min` was given, and dependencies that Tailscale declares but tailrouter has no code for
/// yet (`advertiseroutes` -> `c2n`), are skipped and returned in the second list so the caller
/// can say so. A kept tag without code that some built tag needs as *our* dependency cannot
/// occur: `cargo xtask check` refuses such a registry.
pub fn features_for(
    reg: &Registry,
    res: &Resolution,
) -> Result<(BTreeSet<String>, Vec<String>), String> {
    let mut feats = BTreeSet::new();
    let mut skipped = Vec::new();
    let mut refused = Vec::new();
    for t in &res.kept {
        let tag = &reg.tags[t];
        if tag.status.has_cargo_feature() {
            feats.insert(t.clone());
        } else if res.named.contains(t) {
            let why = match (tag.issue, &tag.reason) {
                (_, Some(r)) => format!("not planned: {r}"),
                (Some(i), None) => format!("{}, see issue {i}", tag.status.as_str()),
                (None, None) => tag.status.as_str().to_string(),
            };
            refused.push(format!("`{t}` ({why})"));
        } else {
            skipped.push(t.clone());
        }
    }
    if refused.is_empty() {
        Ok((feats, skipped))
    } else {
        Err(format!(
            "cannot build: tailrouter has no code yet for {}",
            refused.join(", ")
        ))
    }
}

/// The result of one build.
pub struct Built {
    pub features: BTreeSet<String>,
    pub binary: PathBuf,
    pub size: u64,
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Builds `tailrouter` in release mode with exactly `features`, and returns where it is.
pub fn cargo_build(
    root: &Path,
    features: &BTreeSet<String>,
    target: Option<&str>,
    static_link: bool,
    std_from_source: bool,
) -> Result<PathBuf, String> {
    let mut cmd = Command::new(crate::cargo());
    cmd.current_dir(root).args([
        "build",
        "--release",
        "--locked",
        "--package",
        crate::check::BIN,
        "--no-default-features",
    ]);
    if !features.is_empty() {
        let list: Vec<&str> = features.iter().map(String::as_str).collect();
        cmd.arg("--features").arg(list.join(","));
    }
    if let Some(commit) = git_commit(root) {
        cmd.env("TAILROUTER_COMMIT", commit);
    }
    if std_from_source {
        if target.is_none() {
            return Err("std from source needs --target".into());
        }
        if !rust_src_installed() {
            return Err(
                "building std from source needs its sources: rustup component add rust-src \
                 (or build with --prebuilt-std)"
                    .into(),
            );
        }
        cmd.env("RUSTC_BOOTSTRAP", "1").args(STD_FROM_SOURCE);
    }
    if let Some(t) = target {
        cmd.args(["--target", t]);
        if static_link {
            // Scoped to the target so host build scripts keep their own flags.
            let var = format!(
                "CARGO_TARGET_{}_RUSTFLAGS",
                t.to_ascii_uppercase().replace(['-', '.'], "_")
            );
            let flags = match std::env::var(&var) {
                Ok(existing) if !existing.trim().is_empty() => format!("{existing} {STATIC_FLAGS}"),
                _ => STATIC_FLAGS.to_string(),
            };
            cmd.env(var, flags);
        }
    } else if static_link {
        return Err(
            "--static needs --target (crt-static links only with an explicit target)".into(),
        );
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }
    let mut bin = target_dir(root);
    if let Some(t) = target {
        bin.push(t);
    }
    bin.push("release");
    bin.push(crate::check::BIN);
    if static_link {
        drop_unwind_tables(&bin, target.is_none_or(runs_here))?;
    }
    Ok(bin)
}

/// The flags of a static router build (docs/sizes.md has what each saves):
/// - `+crt-static`: one file, no loader or shared libraries in the image;
/// - `relocation-model=static`: not position-independent, so no relocation table to carry
///   (Go's tailscaled is not PIE either; stack, heap and mappings are still randomised);
/// - `force-unwind-tables=no`: with `panic = "abort"` nothing unwinds.
///
/// No linker flags, so they hold whichever linker a target uses (cc, or rust-lld in the
/// Dockerfile).
pub const STATIC_FLAGS: &str =
    "-C target-feature=+crt-static -C relocation-model=static -C force-unwind-tables=no";

/// The sections only unwinding reads. The C library and std are built with them; with
/// `panic = "abort"` a panic still prints its message, only without a backtrace.
const UNWIND_SECTIONS: [&str; 3] = [".eh_frame", ".eh_frame_hdr", ".gcc_except_table"];

/// Removes [`UNWIND_SECTIONS`] from a static binary in place. For the host's own CPU
/// (`native`) binutils' objcopy goes first, as it also closes the gap the sections leave; for
/// other CPUs only LLVM's, which knows every ELF machine (the gap is zeros, which xz packs to
/// nothing).
pub fn drop_unwind_tables(bin: &Path, native: bool) -> Result<(), String> {
    let tmp = bin.with_extension("unwound");
    let mut tried = Vec::new();
    let tools: &[&str] = if native {
        &["objcopy", "llvm-objcopy", "llvm-objcopy-14"]
    } else {
        &["llvm-objcopy", "llvm-objcopy-14"]
    };
    for &tool in tools {
        let mut cmd = Command::new(tool);
        for s in UNWIND_SECTIONS {
            cmd.args(["--remove-section", s]);
        }
        match cmd.arg(bin).arg(&tmp).output() {
            Ok(o) if o.status.success() => {
                return std::fs::rename(&tmp, bin).map_err(|e| {
                    format!(
                        "cannot replace {} with {}: {e}",
                        bin.display(),
                        tmp.display()
                    )
                });
            }
            Ok(o) => tried.push(format!(
                "{tool}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => tried.push(format!("{tool}: {e}")),
        }
    }
    let _ = std::fs::remove_file(&tmp);
    Err(format!(
        "cannot remove the unwind tables from {} (install binutils or llvm): {}",
        bin.display(),
        tried.join("; ")
    ))
}

/// The short commit hash of the checkout, with `-dirty` when it has uncommitted changes.
fn git_commit(root: &Path) -> Option<String> {
    let run = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let hash = run(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

/// Copies the binary to `out` under its three names: `tailrouter`, `tailscale`, `tailscaled`.
fn install(bin: &Path, out: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let dest = out.join("tailrouter");
    // Copied beside, then renamed over: another build may be running the old file, and
    // writing into a running program fails (ETXTBSY).
    let tmp = out.join(format!(".tailrouter.{}", std::process::id()));
    std::fs::copy(bin, &tmp)
        .map_err(|e| format!("cannot copy {} to {}: {e}", bin.display(), tmp.display()))?;
    std::fs::rename(&tmp, &dest)
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), dest.display()))?;
    for name in ["tailscale", "tailscaled"] {
        let link = out.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("tailrouter", &link)
            .map_err(|e| format!("cannot link {}: {e}", link.display()))?;
    }
    Ok(dest)
}

/// Asks a host-runnable binary which tags it was built with (`tailscaled --version` output).
pub fn tags_of(binary: &Path) -> Result<BTreeSet<String>, String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("tags:"))
        .ok_or_else(|| {
            format!(
                "{} --version printed no tags line: {text}",
                binary.display()
            )
        })?;
    Ok(line
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "(none)")
        .map(String::from)
        .collect())
}

pub fn build(root: &Path, reg: &Registry, opts: &BuildOpts) -> Result<Built, String> {
    let res = reg.resolve(&opts.req).map_err(|e| e.to_string())?;
    crate::print_pulled(&res);
    let (features, skipped) = features_for(reg, &res)?;
    if !skipped.is_empty() {
        eprintln!(
            "not built into tailrouter yet (skipped): {}",
            skipped.join(",")
        );
    }
    let bin = cargo_build(
        root,
        &features,
        opts.target.as_deref(),
        opts.static_link,
        opts.std_from_source,
    )?;
    let out = opts.out.clone().unwrap_or_else(|| {
        target_dir(root)
            .join("dist")
            .join(opts.target.as_deref().unwrap_or("host"))
    });
    let dest = install(&bin, &out)?;
    let size = std::fs::metadata(&dest)
        .map_err(|e| format!("cannot stat {}: {e}", dest.display()))?
        .len();
    // The binary reports its own tags; for a host build, prove it has exactly the set.
    if opts.target.as_deref().is_none_or(runs_here) {
        let have = tags_of(&dest)?;
        if have != features {
            return Err(format!(
                "the built binary reports tags {have:?}, but {features:?} were requested"
            ));
        }
    }
    Ok(Built {
        features,
        binary: dest,
        size,
    })
}

/// Whether a binary for `triple` runs on this machine: the host's own target, or a static
/// musl one for the host's CPU.
pub fn runs_here(triple: &str) -> bool {
    let host = crate::host_triple();
    let cpu = |t: &str| t.split('-').next().map(str::to_string);
    triple == host || (triple.contains("-linux-musl") && cpu(triple) == cpu(&host))
}

/// One row per built tag: size with everything omitted, then with that tag (and what it needs).
pub fn size_table(root: &Path, reg: &Registry, target: Option<&str>) -> Result<String, String> {
    let none = Request {
        min: true,
        add: vec![],
        remove: reg
            .tags
            .iter()
            .filter(|(_, t)| t.min)
            .map(|(n, _)| n.clone())
            .collect(),
    };
    let measure = |req: &Request| -> Result<(BTreeSet<String>, u64), String> {
        let res = reg.resolve(req).map_err(|e| e.to_string())?;
        let (features, _) = features_for(reg, &res)?;
        let bin = cargo_build(root, &features, target, false, false)?;
        let size = std::fs::metadata(&bin)
            .map_err(|e| format!("cannot stat {}: {e}", bin.display()))?
            .len();
        Ok((features, size))
    };
    let (_, base) = measure(&none)?;
    let mut rows = vec![format!("| (everything omitted) | {base} | | |\n")];
    for tag in reg.cargo_tags() {
        let mut req = none.clone();
        req.remove.retain(|r| *r != tag);
        req.add = vec![tag.clone()];
        let (features, size) = measure(&req)?;
        let set: Vec<&str> = features.iter().map(String::as_str).collect();
        rows.push(format!(
            "| + {tag} | {size} | {:+} | {} |\n",
            size as i64 - base as i64,
            set.join(",")
        ));
    }
    let all = Request::default();
    let (_, full) = measure(&all)?;
    rows.push(format!(
        "| (every built tag) | {full} | {:+} | |\n",
        full as i64 - base as i64
    ));
    let mut s = String::from("| build | bytes | vs. omitted | tags built |\n|---|---:|---:|---|\n");
    for r in rows {
        s.push_str(&r);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real() -> Registry {
        Registry::load(&crate::workspace_root().join("featuretags.toml")).unwrap()
    }

    fn feats(add: &[&str]) -> Result<(BTreeSet<String>, Vec<String>), String> {
        let reg = real();
        let res = reg
            .resolve(&Request::min_plus(add))
            .map_err(|e| e.to_string())?;
        features_for(&reg, &res)
    }

    #[test]
    fn upstream_dependencies_without_code_are_skipped_not_refused() {
        let (f, skipped) = feats(&["osrouter", "useexitnode"]).unwrap();
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        assert_eq!(f, ["cli", "osrouter", "useexitnode", "useroutes"]);
        assert_eq!(skipped, ["peerapiclient"]);
        let (f, skipped) = feats(&["advertiseexitnode"]).unwrap();
        assert!(f.contains("peerapiserver") && f.contains("advertiseroutes"));
        assert_eq!(skipped, ["c2n"]);
        // Ours are real: iptables brings osrouter.
        let (f, _) = feats(&["iptables"]).unwrap();
        assert!(f.contains("osrouter"));
    }

    #[test]
    fn a_named_tag_without_code_is_refused() {
        let e = feats(&["advertiseroutes", "c2n"]).unwrap_err();
        assert!(e.contains("`c2n` (planned, see issue 6)"), "{e}");
    }
}

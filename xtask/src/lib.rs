//! tailrouter's build tooling as a library, so its tests can drive each piece directly.
//! The `xtask` binary (run as `cargo xtask`) is a thin command-line layer over it.

pub mod anchors;
pub mod check;
pub mod codegen;
pub mod demo;
pub mod dist;
pub mod fuzz;
pub mod image;
pub mod pack;
pub mod registry;
pub mod suite;

use registry::Resolution;
use std::path::{Path, PathBuf};

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The cargo that runs us, so toolchain overrides carry through.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The host's target triple, from `rustc -vV`.
pub fn host_triple() -> String {
    std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        })
        .unwrap_or_default()
}

/// Says on stderr which tags were pulled in, and why.
pub fn print_pulled(res: &Resolution) {
    for (tag, by) in &res.pulled {
        eprintln!("pulled in {tag}: required by {by}");
    }
}

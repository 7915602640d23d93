//! tailrouter's build tooling, run as `cargo xtask <command>`.
//!
//! Commands:
//!   featuretags [--min] [--add=a,b] [--remove=c] [--list]   resolve an allowlist of tags
//!   build [--min] [--add=..] [--remove=..] [--target T] [--out DIR] [--static]
//!                                                           build the combined binary
//!   image [--min] [--add=..] [--remove=..] [--target T] [--out FILE] [--no-compress]
//!         [--prebuilt-std] [--rootfs DIR]
//!                                                           RouterOS image archive, no Docker
//!   size [--target T]                                       binary size per tag
//!   check                                                   registry and Cargo features agree
//!   gen                                                     regenerate crates/ipn/src/tags.rs
//!   test                                                    the whole test suite (CI runs this)

use std::path::PathBuf;
use std::process::ExitCode;
use xtask::registry::Registry;
use xtask::registry::Request;
use xtask::{check, codegen, dist, print_pulled, suite, workspace_root};

const USAGE: &str = "usage: cargo xtask <command> [options]

commands:
  featuretags [--min] [--add=a,b] [--remove=c] [--list]
        print the resolved allowlist of feature tags (dependencies pulled in)
  build [--min] [--add=a,b] [--remove=c] [--target T] [--out DIR] [--static]
        build the combined tailscale+tailscaled binary with exactly that set; print set and size
  image [--min] [--add=a,b] [--remove=c] [--target T] [--out FILE] [--no-compress] [--prebuilt-std] [--rootfs DIR]
        a container image archive (docker-save format, uncompressed layer) that RouterOS imports,
        built without Docker around the static binary, with FILE.sha256 (sha256sum format) beside it;
        target default: the host CPU with musl; the binary is xz-packed behind a launcher unless --no-compress;
        std is built from source for size (rust-src) unless --prebuilt-std;
        --rootfs DIR also writes the image's files into DIR (the Dockerfile's way);
        default tags --min --add=osrouter,dns,netstack,advertiseroutes,advertiseexitnode,peerapiserver,useroutes,useexitnode,shell
  size [--target T]
        binary size with every tag omitted, then with each tag added (dependencies included)
  check
        featuretags.toml is sound and agrees with every crate's Cargo features
  gen
        regenerate crates/ipn/src/tags.rs from featuretags.toml
  demo [--login-server URL --auth-key KEY] [--hostname NAME] [--hold]
        the node's main job: a local demo tailnet (headscale, Go tailscaled, tailrouter in
        namespaces) printing `tailscale status` from both sides; or join the given tailnet
  fuzz [--seconds N] [target ...]
        run the fuzz targets of fuzz/ (all by default) for N seconds each (default 20)
  test
        the whole test suite: fmt, clippy, tests, check, builds, cargo-deny, interop, fuzz";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Parsed options shared by featuretags, build and size.
#[derive(Default)]
struct Opts {
    req: Request,
    list: bool,
    target: Option<String>,
    out: Option<PathBuf>,
    static_link: bool,
    no_compress: bool,
    prebuilt_std: bool,
    rootfs: Option<PathBuf>,
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Parses `--flag=value` and `--flag value`; `allowed` names the flags this command takes.
fn parse_opts(args: &[String], allowed: &[&str]) -> Result<Opts, String> {
    let mut o = Opts::default();
    let mut i = 0;
    while i < args.len() {
        let (flag, inline) = match args[i].split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (args[i].clone(), None),
        };
        if !allowed.contains(&flag.as_str()) {
            return Err(format!(
                "unknown option `{}` (this command takes: {})",
                args[i],
                allowed.join(" ")
            ));
        }
        let takes_value = !matches!(
            flag.as_str(),
            "--min" | "--list" | "--static" | "--no-compress" | "--prebuilt-std"
        );
        let value = if takes_value {
            match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| format!("{flag} needs a value"))?
                }
            }
        } else if inline.is_some() {
            return Err(format!("{flag} takes no value"));
        } else {
            String::new()
        };
        match flag.as_str() {
            "--min" => o.req.min = true,
            "--list" => o.list = true,
            "--static" => o.static_link = true,
            "--no-compress" => o.no_compress = true,
            "--prebuilt-std" => o.prebuilt_std = true,
            "--add" => o.req.add.extend(split_list(&value)),
            "--remove" => o.req.remove.extend(split_list(&value)),
            "--target" => o.target = Some(value),
            "--out" => o.out = Some(PathBuf::from(value)),
            "--rootfs" => o.rootfs = Some(PathBuf::from(value)),
            _ => unreachable!("flag list and match agree"),
        }
        i += 1;
    }
    Ok(o)
}

fn load_registry() -> Result<Registry, String> {
    Registry::load(&workspace_root().join("featuretags.toml")).map_err(|e| e.to_string())
}

/// The registry, for commands that build: refused while `cargo xtask check` finds problems.
fn checked_registry(root: &std::path::Path) -> Result<Registry, String> {
    let problems = check::run(root);
    if !problems.is_empty() {
        return Err(format!(
            "not building, `cargo xtask check` fails:\n{}",
            problems.join("\n")
        ));
    }
    load_registry()
}

fn run(args: &[String]) -> Result<(), String> {
    let Some(cmd) = args.first() else {
        return Err(USAGE.into());
    };
    let rest = &args[1..];
    let root = workspace_root();
    match cmd.as_str() {
        "featuretags" => {
            let o = parse_opts(rest, &["--min", "--add", "--remove", "--list"])?;
            let reg = load_registry()?;
            if o.list {
                print_list(&reg);
                return Ok(());
            }
            let res = reg.resolve(&o.req).map_err(|e| e.to_string())?;
            print_pulled(&res);
            let kept: Vec<&str> = res.kept.iter().map(String::as_str).collect();
            println!("{}", kept.join(","));
            Ok(())
        }
        "build" => {
            let o = parse_opts(
                rest,
                &[
                    "--min", "--add", "--remove", "--target", "--out", "--static",
                ],
            )?;
            let reg = checked_registry(&root)?;
            let built = dist::build(
                &root,
                &reg,
                &dist::BuildOpts {
                    req: o.req,
                    target: o.target,
                    out: o.out,
                    static_link: o.static_link,
                    std_from_source: false,
                },
            )?;
            let set: Vec<&str> = built.features.iter().map(String::as_str).collect();
            println!(
                "feature set: {}",
                if set.is_empty() {
                    "(none)".to_string()
                } else {
                    set.join(",")
                }
            );
            println!(
                "binary: {} ({} bytes, {:.2} MiB)",
                built.binary.display(),
                built.size,
                built.size as f64 / 1048576.0
            );
            Ok(())
        }
        "image" => {
            let o = parse_opts(
                rest,
                &[
                    "--min",
                    "--add",
                    "--remove",
                    "--target",
                    "--out",
                    "--no-compress",
                    "--prebuilt-std",
                    "--rootfs",
                ],
            )?;
            let reg = checked_registry(&root)?;
            let b = xtask::image::build(
                &root,
                &reg,
                &xtask::image::ImageOpts {
                    req: o.req,
                    target: o.target,
                    out: o.out,
                    uncompressed: o.no_compress,
                    prebuilt_std: o.prebuilt_std,
                    rootfs_dir: o.rootfs,
                },
            )?;
            let set: Vec<&str> = b.features.iter().map(String::as_str).collect();
            println!("feature set: {}", set.join(","));
            println!(
                "platform: linux/{}{}",
                b.platform.arch,
                b.platform
                    .variant
                    .map(|v| format!("/{v}"))
                    .unwrap_or_default()
            );
            if let Some(p) = b.packed_size {
                println!(
                    "packed: {p} bytes (launcher + xz of the {}-byte binary)",
                    b.binary_size
                );
            }
            println!("CA roots: {} (/{})", b.roots, xtask::image::ANCHORS);
            println!(
                "binary: {} bytes; rootfs files: {} bytes ({:.2} MiB); layer tar: {} bytes",
                b.binary_size,
                b.rootfs_bytes,
                b.rootfs_bytes as f64 / 1048576.0,
                b.layer_size
            );
            println!("layer: {}", b.diff_id);
            println!(
                "image: {} ({} bytes, {:.2} MiB, sha256 {})",
                b.path.display(),
                b.archive_size,
                b.archive_size as f64 / 1048576.0,
                b.archive_sha256
            );
            println!("digest file: {}", b.digest_file.display());
            Ok(())
        }
        "size" => {
            let o = parse_opts(rest, &["--target"])?;
            let reg = load_registry()?;
            print!("{}", dist::size_table(&root, &reg, o.target.as_deref())?);
            Ok(())
        }
        "check" => {
            if !rest.is_empty() {
                return Err("check takes no options".into());
            }
            let problems = check::run(&root);
            if problems.is_empty() {
                let reg = load_registry()?;
                println!(
                    "featuretags.toml: {} tags ({} built), acyclic; Cargo features agree; tags.rs current; compile-time guards refuse every missing dependency that has code",
                    reg.tags.len(),
                    reg.cargo_tags().len()
                );
                Ok(())
            } else {
                Err(format!("check failed:\n{}", problems.join("\n")))
            }
        }
        "gen" => {
            if !rest.is_empty() {
                return Err("gen takes no options".into());
            }
            let reg = load_registry()?;
            let path = root.join(codegen::TAGS_RS);
            std::fs::write(&path, codegen::tags_rs(&reg))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            println!("wrote {}", path.display());
            Ok(())
        }
        "test" => suite::run(&root, rest),
        "demo" => {
            let o = xtask::demo::parse(rest)?;
            println!("{}", xtask::demo::run(&root, &o)?);
            Ok(())
        }
        "fuzz" => {
            let mut seconds = 20u32;
            let mut only = Vec::new();
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                if let Some(v) = a.strip_prefix("--seconds=") {
                    seconds = v
                        .parse()
                        .map_err(|_| format!("--seconds: not a number: {v}"))?;
                } else if a == "--seconds" {
                    let v = it.next().ok_or("--seconds needs a value")?;
                    seconds = v
                        .parse()
                        .map_err(|_| format!("--seconds: not a number: {v}"))?;
                } else if a.starts_with('-') {
                    return Err(format!(
                        "unknown option `{a}` (fuzz takes: --seconds N, target names)"
                    ));
                } else {
                    only.push(a.clone());
                }
            }
            println!("{}", xtask::fuzz::run(&root, seconds, &only)?);
            Ok(())
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    }
}

fn print_list(reg: &Registry) {
    println!("registry mirrors {}", reg.upstream);
    println!(
        "{:<20} {:<12} {:<6} {:<32} description",
        "tag", "status", "issue", "deps"
    );
    for (name, t) in &reg.tags {
        println!(
            "{:<20} {:<12} {:<6} {:<32} {}",
            name,
            t.status.as_str(),
            t.issue.map(|i| format!("#{i}")).unwrap_or_default(),
            t.deps.join(","),
            if t.upstream {
                t.desc.clone()
            } else {
                format!("{} (tailrouter only)", t.desc)
            }
        );
    }
}

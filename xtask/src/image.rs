//! `cargo xtask image`: a container image archive for RouterOS, built without Docker.
//!
//! RouterOS's `/container/add file=…` imports a `docker save` archive with uncompressed
//! layers. This module writes exactly that, in Rust, from the static binary `cargo xtask
//! build --static` makes: one layer holding the same rootfs as the Dockerfile's `image` stage
//! plus `/bin/sh` (the binary's `sh` personality, for `/container/shell`), the image config,
//! `manifest.json` and `repositories`. Every tar header has uid/gid 0, the same mtime
//! (`SOURCE_DATE_EPOCH`, else 0) and entries in sorted order, so the same binary and CA
//! bundle always give the same archive, byte for byte. docs/packaging.md has the decisions.

use crate::dist::{self, BuildOpts};
use crate::registry::{Registry, Request};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The tag set when the command line names none: the router set with its router jobs (subnet
/// router and exit node, both ways), the PeerAPI server (so an exit node answers its users'
/// DNS) and the shell. Not `iptables`: that back-end runs `iptables` binaries, which the image
/// does not have.
pub const DEFAULT_ADD: &[&str] = &[
    "osrouter",
    "dns",
    "netstack",
    "advertiseroutes",
    "advertiseexitnode",
    "peerapiserver",
    "useroutes",
    "useexitnode",
    "shell",
];

/// Where Debian keeps the CA bundle the image's roots come from (package `ca-certificates`).
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Where the image keeps those roots, as a tailrouter anchor file (`tailcfg::anchors`): only
/// what checking a chain needs of each root, about 30% of the PEM bundle.
pub const ANCHORS: &str = "etc/ssl/certs/ca-anchors.bin";

/// The image's process: the `containerboot` personality, configured by environment variables
/// only (RouterOS `/container/envs`; docs/container.md). It takes no arguments, so the image
/// has no CMD (as in the Dockerfile).
pub const ENTRYPOINT: &[&str] = &["/usr/local/bin/containerboot"];
pub const ENV: &[&str] = &[
    "PATH=/usr/local/bin",
    "SSL_CERT_FILE=/etc/ssl/certs/ca-anchors.bin",
];
/// The state directory, a volume: a router owner mounts a disk directory there.
pub const STATE_DIR: &str = "/var/lib/tailscale";

/// Options of `cargo xtask image`.
#[derive(Debug, Default, Clone)]
pub struct ImageOpts {
    pub req: Request,
    pub target: Option<String>,
    /// The archive to write; default `<target dir>/dist/tailrouter-<version>-linux-<arch>.tar`.
    /// Its digest goes beside it, to the same path with `.sha256` appended.
    pub out: Option<PathBuf>,
    /// Put the binary in as it is, not packed behind the launcher ([`crate::pack`]).
    pub uncompressed: bool,
    /// Link rustup's prebuilt std instead of building it for size ([`dist::STD_FROM_SOURCE`]).
    pub prebuilt_std: bool,
    /// Also write the rootfs, unpacked, into this directory (the Dockerfile copies it into a
    /// `scratch` image, so both ways give the same files).
    pub rootfs_dir: Option<PathBuf>,
}

/// Writes `entries` under `dir`, which must not exist yet or be empty.
pub fn write_rootfs(entries: &[Entry], dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let io =
        |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    if std::fs::read_dir(dir)
        .map_err(|e| io("read", dir, e))?
        .next()
        .is_some()
    {
        return Err(format!(
            "--rootfs {}: the directory is not empty",
            dir.display()
        ));
    }
    // Sorted by path, so every parent comes before what is in it.
    for e in entries {
        if e.path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(format!("rootfs: bad path {:?}", e.path));
        }
        let p = dir.join(&e.path);
        match &e.node {
            Node::Dir => std::fs::create_dir(&p).map_err(|err| io("create", &p, err))?,
            Node::File(data) => std::fs::write(&p, data).map_err(|err| io("write", &p, err))?,
            Node::Symlink(t) => {
                std::os::unix::fs::symlink(t, &p).map_err(|err| io("link", &p, err))?;
                continue;
            }
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode))
            .map_err(|err| io("chmod", &p, err))?;
    }
    Ok(())
}

/// The image's target when none is given: the host's CPU with musl, whose static C library
/// is about 740 KB smaller than glibc's and whose allocator keeps less memory (docs/sizes.md).
pub fn default_target(host: &str) -> String {
    match host.strip_suffix("-gnu") {
        Some(base) => format!("{base}-musl"),
        None => host.replace("-gnueabihf", "-musleabihf"),
    }
}

/// Whether the Rust standard library for `triple` is installed (rustup target add).
fn target_installed(triple: &str) -> bool {
    std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|root| root.join("lib/rustlib").join(triple).join("lib").is_dir())
}

/// An OCI platform: `architecture` and `variant` as registries and RouterOS name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub arch: &'static str,
    pub variant: Option<&'static str>,
}

/// The platform a Rust target triple runs on.
pub fn platform_of(triple: &str) -> Result<Platform, String> {
    let cpu = triple.split('-').next().unwrap_or_default();
    let p = |arch, variant| Ok(Platform { arch, variant });
    match cpu {
        "x86_64" => p("amd64", None),
        "aarch64" => p("arm64", Some("v8")),
        "armv7" => p("arm", Some("v7")),
        "arm" if triple.contains("eabihf") => p("arm", Some("v6")),
        "i686" | "i586" => p("386", None),
        "mips" | "mipsel" | "riscv64gc" | "powerpc64le" => Err(format!(
            "target `{triple}`: no RouterOS container platform for it (RouterOS runs containers on amd64, arm64 and arm)"
        )),
        _ => Err(format!("target `{triple}`: unknown CPU `{cpu}`")),
    }
}

/// One member of a tar archive.
#[derive(Debug, Clone)]
pub enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// A tar member: a path without a leading `/`, its kind and permission bits.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub node: Node,
    pub mode: u32,
}

impl Entry {
    fn dir(path: &str, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            node: Node::Dir,
            mode,
        }
    }
    fn file(path: &str, data: Vec<u8>, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            node: Node::File(data),
            mode,
        }
    }
    fn link(path: &str, target: &str) -> Entry {
        Entry {
            path: path.into(),
            node: Node::Symlink(target.into()),
            mode: 0o777,
        }
    }
}

/// Writes `value` as a NUL-terminated octal field filling `field`.
fn octal(field: &mut [u8], value: u64) -> Result<(), String> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        return Err(format!(
            "tar: {value} does not fit a {}-byte field",
            field.len()
        ));
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

/// A POSIX ustar archive of `entries` in the order given, every member owned by 0:0 with
/// `mtime`. Paths of directories get their trailing `/`.
pub fn tar(entries: &[Entry], mtime: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = [0u8; 512];
        let mut name = e.path.clone();
        if matches!(e.node, Node::Dir) && !name.ends_with('/') {
            name.push('/');
        }
        // ustar splits long names at a `/` into prefix (155) and name (100).
        let (prefix, base) = if name.len() <= 100 {
            ("", name.as_str())
        } else {
            let cut = name[..name.len().min(156)]
                .rfind('/')
                .filter(|&i| name.len() - i - 1 <= 100 && i <= 155)
                .ok_or_else(|| format!("tar: path too long for ustar: {name}"))?;
            (&name[..cut], &name[cut + 1..])
        };
        h[..base.len()].copy_from_slice(base.as_bytes());
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        let (kind, size, link) = match &e.node {
            Node::Dir => (b'5', 0, ""),
            Node::File(d) => (b'0', d.len() as u64, ""),
            Node::Symlink(t) => (b'2', 0, t.as_str()),
        };
        if link.len() > 100 {
            return Err(format!("tar: link target too long: {link}"));
        }
        octal(&mut h[100..108], u64::from(e.mode & 0o7777))?;
        octal(&mut h[108..116], 0)?;
        octal(&mut h[116..124], 0)?;
        octal(&mut h[124..136], size)?;
        octal(&mut h[136..148], mtime)?;
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        octal(&mut h[329..337], 0)?;
        octal(&mut h[337..345], 0)?;
        // The checksum is taken with its own field read as eight spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        octal(&mut h[148..155], sum)?;
        h[155] = b' ';
        out.extend_from_slice(&h);
        if let Node::File(d) = &e.node {
            out.extend_from_slice(d);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    // Two zero blocks end the archive.
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the archive's digest goes: the archive's path with `.sha256` appended.
pub fn digest_path(archive: &Path) -> PathBuf {
    let mut p = archive.as_os_str().to_owned();
    p.push(".sha256");
    PathBuf::from(p)
}

/// The digest file's text, in `sha256sum`'s format: 64 lowercase hex digits, two spaces
/// (text mode, which on Linux reads the same bytes), the archive's file name, a newline.
/// `sha256sum -c` checks it in the archive's directory, and routeros/upgrade.rsc reads the
/// first 64 characters.
pub fn digest_text(hex: &str, archive: &Path) -> String {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{hex}  {name}\n")
}

/// RFC 3339 UTC time of a Unix timestamp (the image config's `created`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The rootfs as tar entries, sorted by path: the Dockerfile's layout, `/bin/sh` included.
pub fn rootfs(binary: Vec<u8>, anchors: Vec<u8>) -> Vec<Entry> {
    let mut v = vec![
        Entry::dir("bin", 0o755),
        Entry::link("bin/sh", "../usr/local/bin/tailrouter"),
        Entry::dir("etc", 0o755),
        Entry::dir("etc/ssl", 0o755),
        Entry::dir("etc/ssl/certs", 0o755),
        Entry::file(ANCHORS, anchors, 0o644),
        Entry::dir("tmp", 0o1777),
        Entry::dir("usr", 0o755),
        Entry::dir("usr/local", 0o755),
        Entry::dir("usr/local/bin", 0o755),
        Entry::link("usr/local/bin/containerboot", "tailrouter"),
        Entry::link("usr/local/bin/tailscale", "tailrouter"),
        Entry::link("usr/local/bin/tailscaled", "tailrouter"),
        Entry::file("usr/local/bin/tailrouter", binary, 0o755),
        Entry::dir("var", 0o755),
        Entry::dir("var/lib", 0o755),
        Entry::dir("var/lib/tailscale", 0o700),
        Entry::dir("var/run", 0o755),
        Entry::dir("var/run/tailscale", 0o755),
    ];
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}

/// What [`archive`] made, for the caller to report.
pub struct Archive {
    pub bytes: Vec<u8>,
    /// `sha256:…` of the uncompressed layer tar (the config's diff_id).
    pub diff_id: String,
    pub layer_size: u64,
    /// Bytes of file data in the rootfs (binary and CA bundle; links and directories are 0).
    pub rootfs_bytes: u64,
}

/// The `docker save` archive of one image with `layer` as its only layer.
pub fn archive(
    layer_entries: &[Entry],
    platform: &Platform,
    repo_tag: &str,
    tags_line: &str,
    mtime: u64,
) -> Result<Archive, String> {
    let layer = tar(layer_entries, mtime)?;
    let layer_hex = sha256_hex(&layer);
    let diff_id = format!("sha256:{layer_hex}");
    let created = rfc3339(mtime);
    let mut config = json!({
        "architecture": platform.arch,
        "os": "linux",
        "created": created,
        "config": {
            "Entrypoint": ENTRYPOINT,
            "Env": ENV,
            "Volumes": { STATE_DIR: {} },
            "WorkingDir": "/",
            "Labels": {
                "org.opencontainers.image.title": "tailrouter",
                "org.opencontainers.image.description": "Tailscale node for routers (combined tailscale + tailscaled, sh for /container/shell)",
                "org.opencontainers.image.licenses": "BSD-3-Clause",
                "org.opencontainers.image.version": env!("CARGO_PKG_VERSION"),
            },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": created,
            "created_by": format!("cargo xtask image (tags: {tags_line})"),
        }],
    });
    if let (Some(v), Some(obj)) = (platform.variant, config.as_object_mut()) {
        obj.insert("variant".into(), json!(v));
    }
    let config_bytes = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let config_name = format!("{}.json", sha256_hex(&config_bytes));
    let (repo, tag) = repo_tag
        .rsplit_once(':')
        .ok_or_else(|| format!("image name `{repo_tag}` lacks `:tag`"))?;
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }]);
    let repositories = json!({ repo: { tag: layer_hex } });
    // The legacy per-layer files older `docker load` versions read; harmless to newer ones.
    let legacy = json!({ "id": layer_hex, "created": created, "os": "linux" });
    let to_vec = |v: &serde_json::Value| serde_json::to_vec(v).map_err(|e| e.to_string());
    let layer_size = layer.len() as u64;
    let mut outer = vec![
        Entry::file(&config_name, config_bytes, 0o644),
        Entry::dir(&layer_hex, 0o755),
        Entry::file(&format!("{layer_hex}/VERSION"), b"1.0".to_vec(), 0o644),
        Entry::file(&format!("{layer_hex}/json"), to_vec(&legacy)?, 0o644),
        Entry::file(&format!("{layer_hex}/layer.tar"), layer, 0o644),
        Entry::file("manifest.json", to_vec(&manifest)?, 0o644),
        Entry::file("repositories", to_vec(&repositories)?, 0o644),
    ];
    outer.sort_by(|a, b| a.path.cmp(&b.path));
    let rootfs_bytes = layer_entries
        .iter()
        .map(|e| match &e.node {
            Node::File(d) => d.len() as u64,
            _ => 0,
        })
        .sum();
    Ok(Archive {
        bytes: tar(&outer, mtime)?,
        diff_id,
        layer_size,
        rootfs_bytes,
    })
}

/// The mtime every member gets: `SOURCE_DATE_EPOCH` when set, else 0.
pub fn source_date_epoch() -> Result<u64, String> {
    epoch_from(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref())
}

fn epoch_from(v: Option<&str>) -> Result<u64, String> {
    match v.map(str::trim) {
        Some(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| format!("SOURCE_DATE_EPOCH is not a number of seconds: {v:?}")),
        _ => Ok(0),
    }
}

/// What `cargo xtask image` built.
pub struct Built {
    pub path: PathBuf,
    pub platform: Platform,
    pub features: std::collections::BTreeSet<String>,
    pub binary_size: u64,
    /// The file at /usr/local/bin/tailrouter when packed: launcher, xz stream, trailer.
    pub packed_size: Option<u64>,
    /// Roots in the image's anchor file.
    pub roots: usize,
    pub archive_size: u64,
    pub archive_sha256: String,
    /// The `sha256sum`-format file beside the archive ([`digest_path`]).
    pub digest_file: PathBuf,
    pub diff_id: String,
    pub layer_size: u64,
    pub rootfs_bytes: u64,
}

/// Builds the static binary through `cargo xtask build`'s code and writes the image archive.
pub fn build(root: &Path, reg: &Registry, opts: &ImageOpts) -> Result<Built, String> {
    let host = crate::host_triple();
    if opts.target.is_none() && host.is_empty() {
        return Err("cannot tell the host target (rustc -vV); pass --target".into());
    }
    // Tags first: a bad tag is the error to report, whatever the target.
    reg.resolve(&opts.req).map_err(|e| e.to_string())?;
    if let Some(dir) = &opts.rootfs_dir {
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(format!(
                "--rootfs {}: the directory is not empty",
                dir.display()
            ));
        }
    }
    let target = opts.target.clone().unwrap_or_else(|| default_target(&host));
    let platform = platform_of(&target)?;
    if !target_installed(&target) {
        return Err(format!(
            "the Rust standard library for {target} is not installed: rustup target add {target}"
        ));
    }
    let mut req = opts.req.clone();
    if !req.min && req.add.is_empty() && req.remove.is_empty() {
        req.min = true;
        req.add = DEFAULT_ADD.iter().map(|s| s.to_string()).collect();
    }
    let pem = std::fs::read(CA_BUNDLE).map_err(|e| {
        format!("cannot read the CA bundle {CA_BUNDLE}: {e} (install it: apt-get install ca-certificates)")
    })?;
    let (ca, roots) =
        crate::anchors::from_pem(&pem).map_err(|e| format!("the CA bundle {CA_BUNDLE}: {e}"))?;
    let built = dist::build(
        root,
        reg,
        &BuildOpts {
            req,
            target: Some(target.clone()),
            out: None,
            static_link: true,
            std_from_source: !opts.prebuilt_std,
        },
    )?;
    if !built.features.contains("shell") {
        eprintln!(
            "warning: the `shell` tag is not in this build: /bin/sh in the image will not run, so RouterOS's /container/shell will not work"
        );
    }
    let binary = std::fs::read(&built.binary)
        .map_err(|e| format!("cannot read {}: {e}", built.binary.display()))?;
    let tags: Vec<&str> = built.features.iter().map(String::as_str).collect();
    let version = env!("CARGO_PKG_VERSION");
    let arch_name = match platform.variant {
        Some(v) if platform.arch == "arm" => format!("arm{v}"),
        _ => platform.arch.to_string(),
    };
    let out = opts.out.clone().unwrap_or_else(|| {
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        dir.join("dist")
            .join(format!("tailrouter-{version}-linux-{arch_name}.tar"))
    });
    let binary_size = binary.len() as u64;
    let file = if opts.uncompressed {
        binary
    } else {
        let launcher = crate::pack::build_launcher(root, &target)?;
        let launcher = std::fs::read(&launcher)
            .map_err(|e| format!("cannot read {}: {e}", launcher.display()))?;
        crate::pack::pack(&launcher, &binary, &target)?
    };
    let packed_size = (!opts.uncompressed).then_some(file.len() as u64);
    let entries = rootfs(file, ca);
    if let Some(dir) = &opts.rootfs_dir {
        write_rootfs(&entries, dir)?;
    }
    let a = archive(
        &entries,
        &platform,
        &format!("tailrouter:{version}"),
        &tags.join(","),
        source_date_epoch()?,
    )?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&out, &a.bytes).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let archive_sha256 = sha256_hex(&a.bytes);
    let digest_file = digest_path(&out);
    std::fs::write(&digest_file, digest_text(&archive_sha256, &out))
        .map_err(|e| format!("cannot write {}: {e}", digest_file.display()))?;
    Ok(Built {
        path: out,
        platform,
        features: built.features,
        binary_size,
        packed_size,
        roots,
        archive_size: a.bytes.len() as u64,
        archive_sha256,
        digest_file,
        diff_id: a.diff_id,
        layer_size: a.layer_size,
        rootfs_bytes: a.rootfs_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_of_router_targets() {
        let p = |t| platform_of(t).unwrap();
        assert_eq!(p("x86_64-unknown-linux-musl").arch, "amd64");
        assert_eq!(p("x86_64-unknown-linux-gnu").variant, None);
        assert_eq!(p("aarch64-unknown-linux-musl").arch, "arm64");
        let arm = p("armv7-unknown-linux-musleabihf");
        assert_eq!((arm.arch, arm.variant), ("arm", Some("v7")));
        assert!(platform_of("mipsel-unknown-linux-musl").is_err());
        assert!(platform_of("sparc-sun-solaris").is_err());
    }

    #[test]
    fn source_date_epoch_values() {
        assert_eq!(epoch_from(None), Ok(0));
        assert_eq!(epoch_from(Some(" ")), Ok(0));
        assert_eq!(epoch_from(Some("1700000000\n")), Ok(1_700_000_000));
        assert!(
            epoch_from(Some("yesterday"))
                .unwrap_err()
                .contains("SOURCE_DATE_EPOCH")
        );
        assert!(epoch_from(Some("-1")).is_err());
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_754_200), "2025-12-03T09:30:00Z");
    }

    #[test]
    fn sha256_matches_the_standard_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digest_file_is_in_sha256sum_format() {
        let p = Path::new("/x/dist/tailrouter-0.1.0-linux-arm64.tar");
        assert_eq!(
            digest_path(p),
            Path::new("/x/dist/tailrouter-0.1.0-linux-arm64.tar.sha256")
        );
        let hex = sha256_hex(b"abc");
        let t = digest_text(&hex, p);
        assert_eq!(t, format!("{hex}  tailrouter-0.1.0-linux-arm64.tar\n"));
        // What routeros/upgrade.rsc takes: the first 64 characters.
        assert_eq!(&t[..64], hex);
    }

    #[test]
    fn tar_headers_are_ustar_with_valid_checksums() {
        let t = tar(
            &[
                Entry::dir("a", 0o1777),
                Entry::file("a/f", b"hello".to_vec(), 0o644),
                Entry::link("a/l", "f"),
            ],
            42,
        )
        .unwrap();
        assert_eq!(
            t.len(),
            512 * 4 + 1024,
            "3 headers, one data block, the end"
        );
        let h = &t[..512];
        assert_eq!(&h[..2], b"a/");
        assert_eq!(&h[100..108], b"0001777\0");
        assert_eq!(&h[136..148], b"00000000052\0");
        assert_eq!(h[156], b'5');
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut blank = h.to_vec();
        blank[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, blank.iter().map(|&b| u64::from(b)).sum::<u64>());
        assert_eq!(&t[1024..1029], b"hello");
        assert_eq!(&t[1536 + 157..1536 + 158], b"f");
    }

    #[test]
    fn long_names_use_the_prefix_and_overlong_ones_fail() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let t = tar(&[Entry::file(&long, vec![], 0o644)], 0).unwrap();
        assert_eq!(&t[..90], "f".repeat(90).as_bytes());
        assert_eq!(&t[345..465], "d".repeat(120).as_bytes());
        assert!(tar(&[Entry::file(&"x".repeat(101), vec![], 0o644)], 0).is_err());
    }

    #[test]
    fn system_tar_reads_our_archives() {
        let dir = std::env::temp_dir().join(format!("xtask-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rootfs.tar");
        std::fs::write(
            &file,
            tar(&rootfs(b"#!bin".to_vec(), b"certs".to_vec()), 0).unwrap(),
        )
        .unwrap();
        let o = std::process::Command::new("tar")
            .args(["-tvf"])
            .arg(&file)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let list = String::from_utf8_lossy(&o.stdout);
        assert!(
            list.contains("drwxrwxrwt 0/0") && list.contains("tmp/"),
            "{list}"
        );
        assert!(
            list.contains("bin/sh -> ../usr/local/bin/tailrouter"),
            "{list}"
        );
        assert!(
            list.contains("-rwxr-xr-x 0/0") && list.contains("usr/local/bin/tailrouter"),
            "{list}"
        );
        assert!(
            list.contains("drwx------ 0/0") && list.contains("var/lib/tailscale/"),
            "{list}"
        );
    }

    #[test]
    fn same_inputs_same_archive_and_the_epoch_counts() {
        let p = platform_of("aarch64-unknown-linux-musl").unwrap();
        let make = |bin: &[u8], t| {
            archive(
                &rootfs(bin.to_vec(), b"ca".to_vec()),
                &p,
                "tailrouter:0.1.0",
                "cli",
                t,
            )
            .unwrap()
        };
        let (a, b) = (make(b"bin", 0), make(b"bin", 0));
        assert_eq!(a.bytes, b.bytes);
        assert_ne!(a.bytes, make(b"bin", 1_700_000_000).bytes);
        let c = make(b"other", 0);
        assert_ne!(a.diff_id, c.diff_id);
        assert_eq!(a.rootfs_bytes, 5);
    }
}

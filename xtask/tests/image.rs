//! `cargo xtask image` checked by real OCI tools from Debian (skopeo, umoci) and by running
//! the unpacked rootfs in fresh namespaces. The static binary is built once per test run
//! (a release build with fat LTO takes minutes) and shared by every test here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

const INSTALL_HINT: &str =
    "apt-get install skopeo umoci (the suite's interop/install-peers.sh installs them)";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Where a tool is; fails the test with an install hint when it is missing.
fn need(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .chain(["/usr/sbin".into(), "/sbin".into()])
                .map(|d| d.join(tool))
                .find(|f| f.is_file())
        })
        .unwrap_or_else(|| panic!("`{tool}` is not installed: {INSTALL_HINT}"))
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
            .unwrap_or(false)
    })
}

fn work_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("xtask-image-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `cargo xtask image --out FILE` with extra environment; returns its stdout.
fn xtask_image(out: &Path, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(["image", "--out"])
        .arg(out)
        .stderr(Stdio::inherit());
    cmd.env_remove("SOURCE_DATE_EPOCH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    text(&run(&mut cmd).stdout)
}

/// The archive's sha256 as the xtask printed it.
fn printed_sha(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.split("sha256 ").nth(1))
        .map(|s| s.trim_end_matches(')').to_string())
        .unwrap_or_else(|| panic!("no sha256 in xtask output: {stdout}"))
}

fn sha256_of(file: &Path) -> String {
    let o = run(Command::new("sha256sum").arg(file));
    text(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The image of the default tag set, built once: (archive path, xtask stdout).
fn image() -> &'static (PathBuf, String) {
    static IMAGE: OnceLock<(PathBuf, String)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let out = work_dir().join("a.tar");
        let stdout = xtask_image(&out, &[]);
        (out, stdout)
    })
}

fn host_arch() -> &'static str {
    xtask::image::platform_of(&xtask::host_triple())
        .unwrap()
        .arch
}

#[test]
fn skopeo_reads_it_as_a_docker_save_archive() {
    need("skopeo");
    let (file, stdout) = image();
    assert!(
        stdout.contains("feature set: advertiseexitnode,advertiseroutes,cli,dns,netstack,osrouter,peerapiserver,shell,useexitnode,useroutes"),
        "{stdout}"
    );
    let src = format!("docker-archive:{}", file.display());
    let o = run(Command::new("skopeo").args(["inspect", &src]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["Architecture"], host_arch());
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Layers"].as_array().map(Vec::len), Some(1));
    let o = run(Command::new("skopeo").args(["inspect", "--config", &src]));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        c["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/containerboot"])
    );
    assert!(
        c["config"]["Cmd"].is_null(),
        "containerboot takes no CMD: {c}"
    );
    assert!(
        c["config"]["Volumes"]["/var/lib/tailscale"].is_object(),
        "{c}"
    );
    assert_eq!(c["rootfs"]["diff_ids"], v["Layers"]);
    // The RepoTag in manifest.json names the image inside the archive.
    let tagged = format!("{src}:tailrouter:{}", env!("CARGO_PKG_VERSION"));
    run(Command::new("skopeo").args(["inspect", &tagged]));
}

#[test]
fn the_unpacked_rootfs_runs_in_fresh_namespaces() {
    need("skopeo");
    need("umoci");
    need("unshare");
    let chroot = need("chroot");
    let (file, _) = image();
    let dir = work_dir().join("unpack");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let oci = format!("oci:{}:tr", dir.join("oci").display());
    run(Command::new("skopeo").args(["copy", &format!("docker-archive:{}", file.display()), &oci]));
    let bundle = dir.join("bundle");
    let mut umoci = Command::new("umoci");
    umoci.arg("unpack");
    if !is_root() {
        umoci.arg("--rootless");
    }
    run(umoci
        .args(["--image", &format!("{}:tr", dir.join("oci").display())])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");

    // The layout and modes the image promises.
    let link = |p: &str| std::fs::read_link(rootfs.join(p)).unwrap();
    assert_eq!(link("bin/sh"), Path::new("../usr/local/bin/tailrouter"));
    assert_eq!(link("usr/local/bin/containerboot"), Path::new("tailrouter"));
    assert_eq!(link("usr/local/bin/tailscale"), Path::new("tailrouter"));
    assert_eq!(link("usr/local/bin/tailscaled"), Path::new("tailrouter"));
    let mode = |p: &str| {
        std::fs::metadata(rootfs.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("usr/local/bin/tailrouter"), 0o755);
    // The binary is packed: the launcher, the xz stream, the trailer (xtask/src/pack.rs).
    let packed = std::fs::read(rootfs.join("usr/local/bin/tailrouter")).unwrap();
    let t = tailrouter_unpack::trailer(&packed).expect("the image's binary has a pack trailer");
    assert!(
        packed[t.payload_start..].starts_with(b"\xfd7zXZ\0"),
        "payload is an xz stream"
    );
    assert!(
        t.out_len > 2 * packed.len(),
        "{} -> {}",
        packed.len(),
        t.out_len
    );
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("var/lib/tailscale"), 0o700);
    assert_eq!(mode("var/run/tailscale"), 0o755);
    assert_eq!(mode(xtask::image::ANCHORS), 0o644);
    let ca = std::fs::read(rootfs.join(xtask::image::ANCHORS)).unwrap();
    let roots = tailcfg::anchors::parse(&ca).expect("the image's roots are an anchor file");
    assert!(roots.len() > 100, "{} roots", roots.len());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["process"]["args"],
        serde_json::json!(["/usr/local/bin/containerboot"])
    );

    // Inside: new mount, PID, network, UTS and IPC namespaces, the rootfs as /, the image's
    // environment only. The shell finds `tailscale` on PATH, as RouterOS's /container/shell.
    let inside = |script: Option<&str>, stdin: &str| {
        let mut cmd = Command::new("timeout");
        cmd.args(["60", "unshare"]);
        if !is_root() {
            cmd.arg("--map-root-user");
        }
        cmd.args([
            "--mount", "--pid", "--fork", "--net", "--uts", "--ipc", "env", "-i",
        ])
        .args([
            "PATH=/usr/local/bin",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-anchors.bin",
        ])
        .arg(&chroot)
        .arg(&rootfs)
        .arg("/bin/sh");
        if let Some(s) = script {
            cmd.args(["-c", s]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = inside(
        Some(
            "tailscale version; echo hi; tailscaled --version && ls -l /bin /usr/local/bin; cd /var/lib && pwd",
        ),
        "",
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        out.starts_with(&format!(
            "{version}\n  tags: advertiseexitnode,advertiseroutes,cli,dns,netstack,osrouter,peerapiserver,shell,useexitnode,useroutes\n"
        )),
        "{out}"
    );
    assert!(out.contains("\nhi\n"), "{out}");
    assert_eq!(
        out.matches("tags: advertiseexitnode,advertiseroutes,cli,dns,netstack,osrouter,peerapiserver,shell,useexitnode,useroutes")
            .count(),
        2,
        "{out}"
    );
    assert!(out.contains("sh -> ../usr/local/bin/tailrouter"), "{out}");
    assert!(out.contains("tailscaled -> tailrouter"), "{out}");
    assert!(out.ends_with("\n/var/lib\n"), "{out}");
    // The entry point is the boot under its link's name. Refusals stop it before any daemon
    // starts (no TUN, no socket, nothing written): arguments (an old CMD or RouterOS cmd=),
    // then a bad variable, each exit code 2 with a line naming what is wrong.
    let o = inside(
        Some(
            "/usr/local/bin/containerboot --statedir=/x; echo rc=$?; \
             TS_USERSPACE=true containerboot; echo rc=$?",
        ),
        "",
    );
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(out, "rc=2\nrc=2\n", "{err}");
    assert!(
        err.contains("containerboot: takes no arguments")
            && err.contains("TS_TAILSCALED_EXTRA_ARGS"),
        "{err}"
    );
    assert!(err.contains("containerboot: TS_USERSPACE=true"), "{err}");
    // Without -c, commands come from stdin (no terminal, so no prompt), and exit's status.
    let o = inside(
        None,
        "echo from stdin\ntailscale version >/dev/null\nexit 3\n",
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(
        text(&o.stdout).starts_with("from stdin\n"),
        "{}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stderr).contains("redirection"),
        "{}",
        text(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The digest file beside the archive: exactly `sha256sum`'s line for it, which
/// `sha256sum -c` accepts in the archive's directory and routeros/upgrade.rsc reads the first
/// 64 characters of.
#[test]
fn the_digest_file_is_sha256sum_of_the_archive() {
    let (file, stdout) = image();
    let sum_file = xtask::image::digest_path(file);
    assert_eq!(
        sum_file.file_name().unwrap(),
        "a.tar.sha256",
        "named after the archive"
    );
    assert!(
        stdout.contains(&format!("digest file: {}", sum_file.display())),
        "{stdout}"
    );
    let written = std::fs::read_to_string(&sum_file).unwrap();
    let dir = file.parent().unwrap();
    let o = run(Command::new("sha256sum").arg("a.tar").current_dir(dir));
    assert_eq!(written, text(&o.stdout), "the file is sha256sum's output");
    assert_eq!(&written[..64], sha256_of(file));
    assert!(
        written[..64]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "lowercase hex, as upgrade.rsc compares: {written}"
    );
    let o = run(Command::new("sha256sum")
        .args(["--check", "--strict", "a.tar.sha256"])
        .current_dir(dir));
    assert_eq!(text(&o.stdout), "a.tar: OK\n");
}

#[test]
fn same_inputs_give_the_same_archive() {
    let (first, stdout) = image();
    let again = work_dir().join("b.tar");
    let second = xtask_image(&again, &[]);
    assert_eq!(
        printed_sha(stdout),
        sha256_of(first),
        "printed digest is the file's"
    );
    assert_eq!(
        sha256_of(first),
        sha256_of(&again),
        "two builds, one digest"
    );
    assert_eq!(printed_sha(stdout), printed_sha(&second));
    let _ = std::fs::remove_file(xtask::image::digest_path(&again));
    let _ = std::fs::remove_file(again);
}

/// The files of `archive`'s one layer, extracted by the system's tar under `dir`.
fn layer_files(archive: &Path, dir: &Path) -> PathBuf {
    let outer = dir.join("archive");
    let files = dir.join("layer");
    for d in [&outer, &files] {
        std::fs::create_dir_all(d).unwrap();
    }
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&outer));
    let layer = std::fs::read_dir(&outer)
        .unwrap()
        .map(|e| e.unwrap().path().join("layer.tar"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no layer in {}", archive.display()));
    run(Command::new("tar")
        .arg("-xf")
        .arg(&layer)
        .arg("-C")
        .arg(&files));
    files
}

/// `--no-compress` puts the plain binary in, and `--rootfs DIR` writes exactly the layer's
/// files, as the Dockerfile copies them.
#[test]
fn uncompressed_image_and_rootfs_dir() {
    let dir = work_dir().join("plain");
    let _ = std::fs::remove_dir_all(&dir);
    let rootfs = dir.join("rootfs");
    let out = dir.join("plain.tar");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(["image", "--no-compress", "--out"])
        .arg(&out)
        .arg("--rootfs")
        .arg(&rootfs)
        .stderr(Stdio::inherit());
    let stdout = text(&run(&mut cmd).stdout);
    assert!(!stdout.contains("packed:"), "{stdout}");
    let bin = std::fs::read(rootfs.join("usr/local/bin/tailrouter")).unwrap();
    assert!(
        tailrouter_unpack::trailer(&bin).is_err(),
        "plain binary has no trailer"
    );
    assert!(
        stdout.contains(&format!("binary: {} bytes", bin.len())),
        "{stdout}"
    );

    // The packed image's binary unpacks to this very binary: run both, same version line.
    let (packed_tar, packed_out) = image();
    assert!(packed_out.contains("packed: "), "{packed_out}");
    let version = |exe: &Path| {
        let o = run(Command::new(exe).arg("--version"));
        text(&o.stdout)
    };
    let plain_v = version(&rootfs.join("usr/local/bin/tailscaled"));
    assert!(plain_v.contains("tags: "), "{plain_v}");
    let packed_fs = layer_files(packed_tar, &dir.join("packed"));
    assert_eq!(
        version(&packed_fs.join("usr/local/bin/tailscaled")),
        plain_v
    );
    // Unpacked, the program runs from a memfd, and it carries the name it was run by (the
    // kernel would call it "memfd:tailroute"): the shell, waiting on stdin, is `sh` to ps.
    let mut sh = Command::new(packed_fs.join("bin/sh"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{}", sh.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let seen = loop {
        let exe = std::fs::read_link(proc_dir.join("exe")).unwrap_or_default();
        let comm = std::fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
        if exe.to_string_lossy().contains("memfd:") && comm.trim() == "sh" {
            break None;
        }
        if std::time::Instant::now() > deadline {
            break Some(format!("exe {exe:?}, comm {comm:?}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(sh.stdin.take());
    let _ = sh.wait();
    assert_eq!(
        seen, None,
        "the unpacked shell should run from a memfd under the name sh"
    );

    // --rootfs wrote what the layer of its own archive holds, path for path and byte for byte.
    let from_layer = layer_files(&out, &dir.join("plain-x"));
    let o = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&from_layer)
        .arg(&rootfs)
        .output()
        .expect("diff (diffutils)");
    assert!(
        o.status.success(),
        "rootfs dir differs from the layer: {}",
        text(&o.stdout)
    );
    // A non-empty rootfs directory is refused, not merged into.
    let mut again = Command::new(env!("CARGO_BIN_EXE_xtask"));
    let o = again
        .args(["image", "--no-compress", "--out"])
        .arg(dir.join("again.tar"))
        .arg("--rootfs")
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("is not empty"),
        "{}",
        text(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_targets_and_options_are_refused() {
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["image", "--target", "mipsel-unknown-linux-musl"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("no RouterOS container platform"),
        "{}",
        text(&o.stderr)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["image", "--static"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("unknown option `--static`"),
        "{}",
        text(&o.stderr)
    );
}

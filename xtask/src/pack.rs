//! The compressed binary of the image: the `tailrouter-unpack` launcher (bins/unpack), then
//! the xz stream of the real binary, then the launcher's trailer. At start the launcher
//! inflates the binary into a sealed memfd and executes it (docs/packaging.md: what it costs
//! in RAM and start time, and why a router owner may still want it).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The smallest dictionary size an LZMA2 header can state that is at least `n` (2^k or
/// 3 * 2^(k-1)): the decoder is given exactly this much.
pub fn lzma2_dict_size(n: u64) -> u64 {
    let mut k = 12; // 4 KiB, xz's smallest
    loop {
        let two = 1u64 << k;
        if two >= n {
            return two;
        }
        if two + two / 2 >= n {
            return two + two / 2;
        }
        k += 1;
    }
}

/// xz's branch-call filter for the CPU of `triple`: it turns relative call targets into
/// absolute ones, which repeat and so compress better (about 5% on x86_64).
pub fn bcj_filter(triple: &str) -> Result<&'static str, String> {
    match triple.split('-').next().unwrap_or_default() {
        "x86_64" | "i686" | "i586" => Ok("--x86"),
        "aarch64" => Ok("--arm64"),
        "armv7" | "arm" => Ok("--arm"),
        cpu => Err(format!("no xz branch filter known for CPU `{cpu}`")),
    }
}

/// The xz stream of `binary` as the launcher reads it: one block, CRC32, the branch filter,
/// LZMA2 at xz's strongest preset with the dictionary just big enough.
pub fn xz(binary: &[u8], triple: &str) -> Result<Vec<u8>, String> {
    let dict = lzma2_dict_size(binary.len() as u64);
    let mut child = Command::new("xz")
        .args([
            "--format=xz",
            "--check=crc32",
            "--threads=1",
            bcj_filter(triple)?,
        ])
        .arg(format!("--lzma2=preset=9e,dict={dict}"))
        .args(["--stdout", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run xz (install xz-utils): {e}"))?;
    let mut stdin = child.stdin.take().ok_or("xz: no stdin")?;
    let input = binary.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().map_err(|e| format!("xz: {e}"))?;
    let wrote = writer
        .join()
        .map_err(|_| "xz: writer thread failed".to_string())?;
    if !out.status.success() {
        return Err(format!(
            "xz failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    wrote.map_err(|e| format!("xz: cannot write its input: {e}"))?;
    Ok(out.stdout)
}

/// Builds the launcher for `triple` (a static release build, as the binary's) and returns
/// its path.
pub fn build_launcher(root: &Path, triple: &str) -> Result<PathBuf, String> {
    let manifest = root.join("bins/unpack/Cargo.toml");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("unpack");
    let var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        triple.to_ascii_uppercase().replace(['-', '.'], "_")
    );
    let status = Command::new(crate::cargo())
        .current_dir(root)
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        .args(["--target", triple])
        .env("CARGO_TARGET_DIR", &dir)
        .env(var, crate::dist::STATIC_FLAGS)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of the launcher failed ({status})"));
    }
    let bin = dir.join(triple).join("release").join("tailrouter-unpack");
    crate::dist::drop_unwind_tables(&bin, crate::dist::runs_here(triple))?;
    Ok(bin)
}

/// The packed file: `launcher`, the xz stream of `binary`, the trailer. Before returning it
/// unpacks the result with the launcher's own code and compares, so an image never carries a
/// binary that does not come back exactly.
pub fn pack(launcher: &[u8], binary: &[u8], triple: &str) -> Result<Vec<u8>, String> {
    let payload = xz(binary, triple)?;
    let dict = lzma2_dict_size(binary.len() as u64);
    let mut file = Vec::with_capacity(launcher.len() + payload.len() + 32);
    file.extend_from_slice(launcher);
    file.extend_from_slice(&payload);
    file.extend_from_slice(&tailrouter_unpack::encode_trailer(
        payload.len() as u64,
        binary.len() as u64,
        dict,
    ));
    let t = tailrouter_unpack::trailer(&file).map_err(|e| e.message().to_string())?;
    let dict_len = usize::try_from(dict).map_err(|e| e.to_string())?;
    let mut d = vec![0u8; dict_len];
    let mut out = vec![0u8; t.out_len];
    tailrouter_unpack::unpack(
        &file[t.payload_start..t.payload_start + t.payload_len],
        &mut d,
        &mut out,
    )
    .map_err(|e| format!("packed binary does not unpack: {}", e.message()))?;
    if out != binary {
        return Err("packed binary unpacks to different bytes".into());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_sizes_are_ones_lzma2_can_state() {
        assert_eq!(lzma2_dict_size(1), 4096);
        assert_eq!(lzma2_dict_size(4096), 4096);
        assert_eq!(lzma2_dict_size(4097), 6144);
        assert_eq!(lzma2_dict_size(6145), 8192);
        assert_eq!(lzma2_dict_size(4_063_368), 4 << 20);
        assert_eq!(lzma2_dict_size((4 << 20) + 1), 6 << 20);
    }

    #[test]
    fn filters_by_cpu() {
        assert_eq!(bcj_filter("x86_64-unknown-linux-musl"), Ok("--x86"));
        assert_eq!(bcj_filter("aarch64-unknown-linux-musl"), Ok("--arm64"));
        assert_eq!(bcj_filter("armv7-unknown-linux-musleabihf"), Ok("--arm"));
        assert!(bcj_filter("mipsel-unknown-linux-musl").is_err());
    }

    #[test]
    fn pack_round_trips_and_the_trailer_points_at_the_payload() {
        let launcher = b"\x7fELF launcher stand-in".to_vec();
        let binary: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 977).to_le_bytes())
            .collect();
        let file = pack(&launcher, &binary, "x86_64-unknown-linux-musl").unwrap();
        assert!(file.starts_with(&launcher));
        assert!(file.len() < binary.len() / 4, "{} bytes", file.len());
        let t = tailrouter_unpack::trailer(&file).unwrap();
        assert_eq!(t.payload_start, launcher.len());
        assert_eq!(t.out_len, binary.len());
        assert_eq!(t.payload_start + t.payload_len + 32, file.len());
    }
}

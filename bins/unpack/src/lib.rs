//! The part of the launcher that needs no operating system: finding the payload in the
//! launcher's own file and inflating it. `main.rs` does the system calls.
//!
//! The file is the launcher's code, then the xz stream of the real binary, then a trailer of
//! 32 bytes: the payload length, the binary's length and the dictionary size the decoder
//! needs, each a little-endian u64, then [`MAGIC`].
#![cfg_attr(not(test), no_std)]

/// The last 8 bytes of a packed file.
pub const MAGIC: &[u8; 8] = b"TRPACK01";

/// Bytes of the trailer at the end of the file.
pub const TRAILER_LEN: usize = 32;

/// The largest binary or dictionary the launcher accepts (a guard against a damaged trailer).
pub const MAX_LEN: u64 = 256 << 20;

/// What the trailer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Where the xz stream starts in the file, and its length.
    pub payload_start: usize,
    pub payload_len: usize,
    /// Bytes of the unpacked binary.
    pub out_len: usize,
    /// Bytes of dictionary the xz stream was made with.
    pub dict_len: usize,
}

/// Why the launcher cannot go on; each has a fixed message for stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    NoTrailer,
    BadTrailer,
    Corrupt,
    WrongLength,
}

impl Error {
    pub fn message(self) -> &'static str {
        match self {
            Error::NoTrailer => "no packed binary in this file (trailer missing)",
            Error::BadTrailer => "the packed binary's trailer is damaged",
            Error::Corrupt => "the packed binary is corrupt (xz stream error)",
            Error::WrongLength => "the packed binary unpacked to the wrong length",
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Reads the trailer of `file` (the launcher's whole file).
pub fn trailer(file: &[u8]) -> Result<Trailer, Error> {
    let Some(start) = file.len().checked_sub(TRAILER_LEN) else {
        return Err(Error::NoTrailer);
    };
    let t = &file[start..];
    if &t[24..32] != MAGIC {
        return Err(Error::NoTrailer);
    }
    let (payload, out, dict) = (u64_at(t, 0), u64_at(t, 8), u64_at(t, 16));
    if payload == 0 || payload > start as u64 || out == 0 || out > MAX_LEN || dict > MAX_LEN {
        return Err(Error::BadTrailer);
    }
    // All three fit in usize: each is at most the file length or MAX_LEN.
    let payload_len = payload as usize;
    Ok(Trailer {
        payload_start: start - payload_len,
        payload_len,
        out_len: out as usize,
        dict_len: (dict as usize).max(xz4rust::DICT_SIZE_MIN),
    })
}

/// The 32 trailer bytes for a payload of `payload_len` that unpacks to `out_len` bytes.
pub fn encode_trailer(payload_len: u64, out_len: u64, dict_len: u64) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[0..8].copy_from_slice(&payload_len.to_le_bytes());
    t[8..16].copy_from_slice(&out_len.to_le_bytes());
    t[16..24].copy_from_slice(&dict_len.to_le_bytes());
    t[24..32].copy_from_slice(MAGIC);
    t
}

/// Inflates the xz stream `payload` into `out`, which must be filled exactly.
pub fn unpack(payload: &[u8], dict: &mut [u8], out: &mut [u8]) -> Result<(), Error> {
    use xz4rust::{XzDecoder, XzNextBlockResult};
    let mut dec = XzDecoder::with_fixed_size_dict(dict);
    let (mut ip, mut op) = (0usize, 0usize);
    loop {
        let (Some(input), Some(output)) = (payload.get(ip..), out.get_mut(op..)) else {
            return Err(Error::Corrupt);
        };
        match dec.decode(input, output) {
            Ok(XzNextBlockResult::NeedMoreData(used, made)) => {
                if used == 0 && made == 0 {
                    // No progress: the input ran out, or the output is already full.
                    return Err(if op == out.len() {
                        Error::WrongLength
                    } else {
                        Error::Corrupt
                    });
                }
                ip += used;
                op += made;
            }
            Ok(XzNextBlockResult::EndOfStream(_, made)) => {
                op += made;
                return if op == out.len() {
                    Ok(())
                } else {
                    Err(Error::WrongLength)
                };
            }
            Err(_) => return Err(Error::Corrupt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A real xz stream from xz-utils, made as `cargo xtask image` makes one.
    fn xz(data: &[u8], filter: &str) -> Vec<u8> {
        use std::io::Write as _;
        let mut child = Command::new("xz")
            .args([
                "--format=xz",
                "--check=crc32",
                filter,
                "--lzma2=preset=6,dict=1MiB",
                "-c",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("xz (package xz-utils) must be installed for these tests");
        let mut stdin = child.stdin.take().unwrap();
        let owned = data.to_vec();
        let w = std::thread::spawn(move || stdin.write_all(&owned).unwrap());
        let out = child.wait_with_output().unwrap();
        w.join().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    fn sample() -> Vec<u8> {
        // Something like code: repetitive with variation, longer than one LZMA2 chunk.
        (0..300_000u32)
            .flat_map(|i| (i.wrapping_mul(2654435761) >> (i % 23)).to_le_bytes())
            .collect()
    }

    #[test]
    fn a_real_xz_stream_unpacks_exactly() {
        let data = sample();
        for filter in ["--x86", "--arm", "--armthumb", "--arm64"] {
            let packed = xz(&data, filter);
            let mut dict = vec![0u8; 1 << 20];
            let mut out = vec![0u8; data.len()];
            unpack(&packed, &mut dict, &mut out).unwrap_or_else(|e| panic!("{filter}: {e:?}"));
            assert!(out == data, "{filter}: unpacked bytes differ");
        }
    }

    #[test]
    fn wrong_lengths_and_damage_are_errors() {
        let data = sample();
        let packed = xz(&data, "--x86");
        let mut dict = vec![0u8; 1 << 20];
        let mut short = vec![0u8; data.len() - 1];
        assert_eq!(
            unpack(&packed, &mut dict, &mut short),
            Err(Error::WrongLength)
        );
        let mut long = vec![0u8; data.len() + 1];
        assert_eq!(
            unpack(&packed, &mut dict, &mut long),
            Err(Error::WrongLength)
        );
        let mut out = vec![0u8; data.len()];
        assert_eq!(
            unpack(&packed[..packed.len() / 2], &mut dict, &mut out),
            Err(Error::Corrupt)
        );
        let mut bad = packed.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        assert_eq!(unpack(&bad, &mut dict, &mut out), Err(Error::Corrupt));
        let mut small_dict = vec![0u8; 64 << 10];
        assert!(unpack(&packed, &mut small_dict, &mut out).is_err());
    }

    #[test]
    fn trailer_round_trip_and_refusals() {
        let mut file = vec![7u8; 100];
        file.extend_from_slice(&encode_trailer(60, 5000, 1 << 20));
        let t = trailer(&file).unwrap();
        assert_eq!(
            t,
            Trailer {
                payload_start: 40,
                payload_len: 60,
                out_len: 5000,
                dict_len: 1 << 20
            }
        );
        assert_eq!(trailer(&file[..10]), Err(Error::NoTrailer));
        assert_eq!(trailer(&file[..file.len() - 1]), Err(Error::NoTrailer));
        for (p, o, d) in [
            (0, 5, 5),
            (101, 5, 5),
            (10, 0, 5),
            (10, MAX_LEN + 1, 5),
            (10, 5, MAX_LEN + 1),
        ] {
            let mut f = vec![0u8; 100];
            f.extend_from_slice(&encode_trailer(p, o, d));
            assert_eq!(trailer(&f), Err(Error::BadTrailer), "{p} {o} {d}");
        }
        // Every truncation of a trailer-bearing file is refused, never a panic.
        for n in 0..file.len() {
            let _ = trailer(&file[..n]);
        }
    }
}

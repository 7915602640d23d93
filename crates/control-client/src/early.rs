//! The early payload the server sends inside Noise before HTTP/2, sans-IO.
//!
//! The first plaintext bytes from the server are either `FF FF FF 54 53` (`"\xff\xff\xffTS"`),
//! a big-endian `u32` length and that much JSON of [`EarlyNoise`], or (servers that send no
//! early payload) the start of the HTTP/2 SETTINGS frame, which must go to HTTP/2 untouched.

use tailcfg::EarlyNoise;

/// The magic that starts an early payload.
pub const EARLY_MAGIC: &[u8; 5] = b"\xff\xff\xffTS";
/// Magic plus length.
pub const EARLY_HEADER_LEN: usize = 9;
/// The largest early payload JSON accepted (Go's client allows 10 MiB; the known payload is
/// under 100 bytes, so a small cap bounds what a bad server can make us buffer).
pub const MAX_EARLY_PAYLOAD: usize = 64 * 1024;

/// Why an early payload was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EarlyError {
    /// The announced length exceeds [`MAX_EARLY_PAYLOAD`].
    #[error("early Noise payload of {0} bytes is over the limit")]
    TooLarge(u64),
    /// The JSON did not parse.
    #[error("early Noise payload is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What the start of the server's plaintext holds.
#[derive(Debug)]
pub enum Early {
    /// Not enough bytes to decide: read more.
    NeedMore,
    /// No early payload: all bytes belong to HTTP/2.
    Absent,
    /// An early payload that took the first `consumed` bytes.
    Present {
        /// The payload.
        payload: EarlyNoise,
        /// Bytes it took; the rest belong to HTTP/2.
        consumed: usize,
    },
}

/// Looks for the early payload at the start of `buf` (the first plaintext from the server).
pub fn parse(buf: &[u8]) -> Result<Early, EarlyError> {
    // Decide on the magic as soon as its bytes differ, not only after 9 bytes.
    let n = buf.len().min(EARLY_MAGIC.len());
    if buf[..n] != EARLY_MAGIC[..n] {
        return Ok(Early::Absent);
    }
    let Some(len) = buf.get(EARLY_MAGIC.len()..EARLY_HEADER_LEN) else {
        return Ok(Early::NeedMore);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    if u64::from(len) > MAX_EARLY_PAYLOAD as u64 {
        return Err(EarlyError::TooLarge(len.into()));
    }
    let end = EARLY_HEADER_LEN + len as usize;
    let Some(json) = buf.get(EARLY_HEADER_LEN..end) else {
        return Ok(Early::NeedMore);
    };
    Ok(Early::Present {
        payload: serde_json::from_slice(json)?,
        consumed: end,
    })
}

/// Encodes an early payload as a server would (tests and fuzzing).
pub fn encode(payload: &EarlyNoise) -> Result<Vec<u8>, EarlyError> {
    let json = serde_json::to_vec(payload)?;
    let mut out = EARLY_MAGIC.to_vec();
    // MAX_EARLY_PAYLOAD fits in u32; a larger payload is refused.
    let len = u32::try_from(json.len())
        .ok()
        .filter(|l| *l as usize <= MAX_EARLY_PAYLOAD)
        .ok_or(EarlyError::TooLarge(json.len() as u64))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAL: &str = "chalpub:5b1c3b0e4b8f2c1ad0e3a3f06a0a3b4c9f1d2e3f405162738495a6b7c8d9eaf0";

    #[test]
    fn payload_then_http2_preface_bytes() {
        let json = format!("{{\"nodeKeyChallenge\":\"{CHAL}\"}}");
        let mut buf = b"\xff\xff\xffTS".to_vec();
        buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
        buf.extend_from_slice(json.as_bytes());
        buf.extend_from_slice(b"\x00\x00\x12\x04"); // start of an HTTP/2 SETTINGS frame
        for cut in 0..buf.len() - 4 {
            assert!(
                matches!(parse(&buf[..cut]).unwrap(), Early::NeedMore),
                "{cut}"
            );
        }
        match parse(&buf).unwrap() {
            Early::Present { payload, consumed } => {
                assert_eq!(consumed, buf.len() - 4);
                assert_eq!(payload.node_key_challenge.to_string(), CHAL);
            }
            other => panic!("{other:?}"),
        }
        let enc = encode(&serde_json::from_str::<EarlyNoise>(&json).unwrap()).unwrap();
        assert_eq!(enc, buf[..buf.len() - 4]);
    }

    #[test]
    fn no_magic_means_http2() {
        assert!(matches!(
            parse(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00").unwrap(),
            Early::Absent
        ));
        assert!(matches!(parse(b"\xff\xff\x00").unwrap(), Early::Absent));
        assert!(matches!(parse(b"\xff\xff").unwrap(), Early::NeedMore));
    }

    #[test]
    fn oversized_or_bad_json_is_refused() {
        let mut big = b"\xff\xff\xffTS".to_vec();
        big.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse(&big),
            Err(EarlyError::TooLarge(4_294_967_295))
        ));
        let mut bad = b"\xff\xff\xffTS\x00\x00\x00\x02{x".to_vec();
        assert!(matches!(parse(&bad), Err(EarlyError::Json(_))));
        bad.truncate(10);
        assert!(matches!(parse(&bad).unwrap(), Early::NeedMore));
    }
}

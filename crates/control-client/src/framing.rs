//! Map response framing, sans-IO: each message is a 4-byte **little-endian** length and that
//! many bytes of JSON, zstd-compressed when the request asked for `Compress: "zstd"`.
//!
//! Both sizes are capped: a message's length before decompression ([`Limits::max_frame`])
//! and after ([`Limits::max_decompressed`]), so a bad server can neither make us buffer
//! without bound nor expand a small frame into a huge one.

use std::io::Read;
use tailcfg::MapResponse;

/// Size limits for map messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest message as framed (compressed, if compressed).
    pub max_frame: usize,
    /// The largest JSON after decompression.
    pub max_decompressed: usize,
}

impl Default for Limits {
    /// 16 MiB framed, 64 MiB of JSON: a full map of a few thousand peers fits easily.
    fn default() -> Self {
        Self {
            max_frame: 16 << 20,
            max_decompressed: 64 << 20,
        }
    }
}

/// Why a map message was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// The length prefix exceeds [`Limits::max_frame`].
    #[error("map message of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// Decompression would exceed [`Limits::max_decompressed`].
    #[error("map message decompresses to more than {max} bytes")]
    DecompressedTooLarge {
        /// The limit.
        max: usize,
    },
    /// The zstd data is corrupt.
    #[error("map message is not valid zstd: {0}")]
    Zstd(String),
    /// The JSON does not parse as a MapResponse.
    #[error("map message is not a valid MapResponse: {0}")]
    Json(#[from] serde_json::Error),
    /// The stream ended in the middle of a message.
    #[error("map stream ended inside a message ({0} bytes left over)")]
    Truncated(usize),
}

/// Splits a map response body into messages and decodes them.
#[derive(Debug)]
pub struct MapDecoder {
    buf: Vec<u8>,
    zstd: bool,
    limits: Limits,
}

impl MapDecoder {
    /// A decoder; `zstd` says whether the request asked for compression.
    pub fn new(zstd: bool, limits: Limits) -> Self {
        Self {
            buf: Vec::new(),
            zstd,
            limits,
        }
    }

    /// Buffers body bytes as they arrive.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet a whole message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, if one is buffered. Refuses an oversized length as soon
    /// as the prefix is read, before its body arrives.
    pub fn next_message(&mut self) -> Result<Option<MapResponse>, FramingError> {
        let Some(raw) = self.next_raw()? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(&raw)?))
    }

    /// As [`MapDecoder::next_message`], giving the JSON bytes (decompressed) undecoded.
    pub fn next_raw(&mut self) -> Result<Option<Vec<u8>>, FramingError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if u64::from(len) > self.limits.max_frame as u64 {
            return Err(FramingError::FrameTooLarge {
                len: len.into(),
                max: self.limits.max_frame,
            });
        }
        let end = 4 + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let body: Vec<u8> = self.buf.drain(..end).skip(4).collect();
        if self.zstd {
            decompress(&body, self.limits.max_decompressed).map(Some)
        } else if body.len() > self.limits.max_decompressed {
            Err(FramingError::DecompressedTooLarge {
                max: self.limits.max_decompressed,
            })
        } else {
            Ok(Some(body))
        }
    }

    /// Call at the end of the body: an error if a partial message is left.
    pub fn finish(&self) -> Result<(), FramingError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(FramingError::Truncated(n)),
        }
    }
}

/// Decompresses one zstd frame, refusing output over `max` bytes.
pub fn decompress(data: &[u8], max: usize) -> Result<Vec<u8>, FramingError> {
    let decoder = ruzstd::decoding::StreamingDecoder::new(data)
        .map_err(|e| FramingError::Zstd(e.to_string()))?;
    let mut out = Vec::new();
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| FramingError::Zstd(e.to_string()))?;
    if out.len() > max {
        return Err(FramingError::DecompressedTooLarge { max });
    }
    Ok(out)
}

/// Frames one message as a server does: little-endian length, then the bytes.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    #[test]
    fn plain_messages_in_pieces() {
        let mut wire = frame(br#"{"KeepAlive":true}"#);
        wire.extend(frame(br#"{"Domain":"example.com","Unknown":[1,2]}"#));
        assert_eq!(&wire[..4], &[18, 0, 0, 0]);
        let mut d = MapDecoder::new(false, Limits::default());
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        d.finish().unwrap();
        assert_eq!(got.len(), 2);
        assert!(got[0].keep_alive);
        assert_eq!(got[1].domain, "example.com");
    }

    #[test]
    fn zstd_messages() {
        let json = br#"{"Domain":"example.com","PeersRemoved":[1,2,3]}"#.to_vec();
        let mut d = MapDecoder::new(true, Limits::default());
        d.push(&frame(&zstd(&json)));
        let m = d.next_message().unwrap().unwrap();
        assert_eq!(m.peers_removed, vec![1, 2, 3]);
    }

    #[test]
    fn oversized_length_is_refused_before_the_body() {
        let mut d = MapDecoder::new(
            false,
            Limits {
                max_frame: 100,
                max_decompressed: 100,
            },
        );
        d.push(&101u32.to_le_bytes());
        assert!(matches!(
            d.next_message(),
            Err(FramingError::FrameTooLarge { len: 101, max: 100 })
        ));
        // Big-endian reading would see 0x65000000: the prefix is little-endian.
        let mut d = MapDecoder::new(false, Limits::default());
        d.push(&[2, 0, 0, 0, b'{', b'}']);
        assert!(d.next_message().unwrap().is_some());
    }

    #[test]
    fn decompression_bomb_is_capped() {
        let json = format!(r#"{{"Domain":"{}"}}"#, "a".repeat(100_000));
        let small = zstd(json.as_bytes());
        assert!(small.len() < 1000);
        let mut d = MapDecoder::new(
            true,
            Limits {
                max_frame: 1000,
                max_decompressed: 50_000,
            },
        );
        d.push(&frame(&small));
        assert!(matches!(
            d.next_message(),
            Err(FramingError::DecompressedTooLarge { max: 50_000 })
        ));
    }

    #[test]
    fn corrupt_zstd_bad_json_and_truncation_are_errors() {
        let mut d = MapDecoder::new(true, Limits::default());
        d.push(&frame(b"not zstd at all"));
        assert!(matches!(d.next_message(), Err(FramingError::Zstd(_))));
        let mut good = zstd(br#"{"Domain":"x"}"#);
        let n = good.len();
        good.truncate(n - 3);
        let mut d = MapDecoder::new(true, Limits::default());
        d.push(&frame(&good));
        assert!(d.next_message().is_err());
        let mut d = MapDecoder::new(false, Limits::default());
        d.push(&frame(b"{\"Peers\": 5}"));
        assert!(matches!(d.next_message(), Err(FramingError::Json(_))));
        let mut d = MapDecoder::new(false, Limits::default());
        d.push(&[5, 0, 0, 0, b'{']);
        assert!(d.next_message().unwrap().is_none());
        assert!(matches!(d.finish(), Err(FramingError::Truncated(5))));
    }
}

//! The tailrouter anchor file: a compact binary alternative to a PEM CA bundle.
//!
//! Verifying a server certificate needs only three parts of each trusted root: its subject,
//! its SubjectPublicKeyInfo and its name constraints, if any. Those are the fields of a
//! rustls `TrustAnchor`, and all rustls keeps of a root once it is loaded. Storing just those
//! drops the rest of each certificate (validity, extensions, signature) and the base64 of
//! PEM, which makes the file about a quarter of the size of the bundle it was made from.
//!
//! Layout: the 8 bytes of [`MAGIC`], then records up to the end of the data, each holding
//! three fields in this order, each a big-endian `u16` length followed by that many bytes:
//!
//! 1. the subject (as rustls's `TrustAnchor::subject` holds it), never empty;
//! 2. the SubjectPublicKeyInfo (`TrustAnchor::subject_public_key_info`), never empty;
//! 3. the name constraints (`TrustAnchor::name_constraints`), length 0 when there are none.
//!
//! This module only reads and writes byte slices; finding and reading the file is the
//! callers' business.

/// Where the control client and the DERP dialer look for roots, in order, when
/// `SSL_CERT_FILE` is not set: Debian/Ubuntu/Alpine/OpenWrt's PEM bundle, the BSD/macOS style
/// path, then the anchor file tailrouter's container image carries.
pub const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/certs/ca-anchors.bin",
];

/// The first bytes of every anchor file (format version 1).
pub const MAGIC: &[u8; 8] = b"TRANCHR1";

/// The most records a file may hold (Mozilla's program has about 150 roots).
pub const MAX_RECORDS: usize = 4096;

/// The largest file accepted, in bytes (the same cap the loaders put on a PEM bundle).
pub const MAX_FILE: usize = 8 << 20;

/// One trusted root, reduced to what certificate verification uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Anchor {
    /// The root's subject name, DER.
    pub subject: Vec<u8>,
    /// The root's SubjectPublicKeyInfo, DER.
    pub spki: Vec<u8>,
    /// The root's name constraints, DER, when it has any.
    pub name_constraints: Option<Vec<u8>>,
}

/// Why an anchor file could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    /// The data does not begin with [`MAGIC`].
    #[error("not a tailrouter anchor file (it does not start with {MAGIC:?})")]
    BadMagic,
    /// A record ends before its fields do.
    #[error("anchor file truncated: record {record} at offset {offset} is incomplete")]
    Truncated {
        /// The index of the record, from 0.
        record: usize,
        /// The byte offset where that record starts.
        offset: usize,
    },
    /// A record's subject or public key is empty.
    #[error("anchor file record {record} at offset {offset} has an empty {field}")]
    EmptyField {
        /// The index of the record, from 0.
        record: usize,
        /// The byte offset where that record starts (when encoding: 0).
        offset: usize,
        /// Which field is empty.
        field: &'static str,
    },
    /// More than [`MAX_RECORDS`] records.
    #[error("anchor file holds more than {MAX_RECORDS} records")]
    TooManyRecords,
    /// The data is longer than [`MAX_FILE`].
    #[error("anchor file is {len} bytes, more than the {MAX_FILE} allowed")]
    TooLarge {
        /// The length of the data.
        len: usize,
    },
    /// When encoding: a field does not fit its 16-bit length.
    #[error("anchor {record}: {field} is {len} bytes, more than the 65535 a record can hold")]
    FieldTooLong {
        /// The index of the anchor, from 0.
        record: usize,
        /// Which field is too long.
        field: &'static str,
        /// Its length.
        len: usize,
    },
}

/// Whether `data` looks like an anchor file (starts with [`MAGIC`]) rather than PEM.
pub fn is_anchor_file(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
}

/// Reads a big-endian `u16` length and that many bytes from `data` at `*pos`, moving `*pos`
/// past them; `None` when the data ends first.
fn take_field<'a>(data: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let start = pos.checked_add(2)?;
    let len: [u8; 2] = data.get(*pos..start)?.try_into().ok()?;
    let end = start.checked_add(usize::from(u16::from_be_bytes(len)))?;
    let field = data.get(start..end)?;
    *pos = end;
    Some(field)
}

/// Parses a whole anchor file. A file with the magic and no records is valid and yields no
/// anchors; whether that is acceptable is the caller's choice.
pub fn parse(data: &[u8]) -> Result<Vec<Anchor>, AnchorError> {
    if data.len() > MAX_FILE {
        return Err(AnchorError::TooLarge { len: data.len() });
    }
    if !is_anchor_file(data) {
        return Err(AnchorError::BadMagic);
    }
    let mut anchors = Vec::new();
    let mut pos = MAGIC.len();
    while pos < data.len() {
        let record = anchors.len();
        if record >= MAX_RECORDS {
            return Err(AnchorError::TooManyRecords);
        }
        let offset = pos;
        let truncated = AnchorError::Truncated { record, offset };
        let subject = take_field(data, &mut pos).ok_or(truncated.clone())?;
        let spki = take_field(data, &mut pos).ok_or(truncated.clone())?;
        let constraints = take_field(data, &mut pos).ok_or(truncated)?;
        let empty = |field| AnchorError::EmptyField {
            record,
            offset,
            field,
        };
        if subject.is_empty() {
            return Err(empty("subject"));
        }
        if spki.is_empty() {
            return Err(empty("public key"));
        }
        anchors.push(Anchor {
            subject: subject.to_vec(),
            spki: spki.to_vec(),
            name_constraints: (!constraints.is_empty()).then(|| constraints.to_vec()),
        });
    }
    Ok(anchors)
}

/// Writes `anchors` as an anchor file.
///
/// It refuses what [`parse`] would refuse, so a successful result always parses back to the
/// same anchors: a field over 65535 bytes, an empty subject or public key, name constraints
/// that are present but empty (they would read back as none), more than [`MAX_RECORDS`]
/// anchors, or a result over [`MAX_FILE`].
pub fn encode(anchors: &[Anchor]) -> Result<Vec<u8>, AnchorError> {
    if anchors.len() > MAX_RECORDS {
        return Err(AnchorError::TooManyRecords);
    }
    let mut out = MAGIC.to_vec();
    for (record, a) in anchors.iter().enumerate() {
        let constraints = a.name_constraints.as_deref();
        let fields = [
            ("subject", Some(a.subject.as_slice())),
            ("public key", Some(a.spki.as_slice())),
            ("name constraints", constraints),
        ];
        for (field, value) in fields {
            let value = value.unwrap_or_default();
            if value.is_empty() && (field != "name constraints" || constraints.is_some()) {
                return Err(AnchorError::EmptyField {
                    record,
                    offset: 0,
                    field,
                });
            }
            let len = u16::try_from(value.len()).map_err(|_| AnchorError::FieldTooLong {
                record,
                field,
                len: value.len(),
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(value);
        }
        if out.len() > MAX_FILE {
            return Err(AnchorError::TooLarge { len: out.len() });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Anchor> {
        vec![
            Anchor {
                subject: b"subject one".to_vec(),
                spki: vec![0x30; 300],
                name_constraints: None,
            },
            Anchor {
                subject: vec![1],
                spki: vec![2, 3],
                name_constraints: Some(vec![4, 5, 6]),
            },
        ]
    }

    #[test]
    fn round_trip() {
        let file = encode(&sample()).unwrap();
        assert!(is_anchor_file(&file));
        assert_eq!(&file[..8], MAGIC);
        // Record 0: 2+11, 2+300, 2+0; record 1: 2+1, 2+2, 2+3.
        assert_eq!(file.len(), 8 + 13 + 302 + 2 + 3 + 4 + 5);
        assert_eq!(&file[8..10], &[0, 11]);
        assert_eq!(parse(&file).unwrap(), sample());
        assert_eq!(encode(&parse(&file).unwrap()).unwrap(), file);
    }

    #[test]
    fn zero_records_is_empty() {
        assert_eq!(parse(MAGIC).unwrap(), Vec::new());
        assert_eq!(encode(&[]).unwrap(), MAGIC.to_vec());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let file = encode(&sample()).unwrap();
        // The one cut that is valid: right after the first record.
        let first_end = 8 + 13 + 302 + 2;
        for cut in 0..file.len() {
            let r = parse(&file[..cut]);
            match cut {
                8 => assert_eq!(r, Ok(Vec::new())),
                c if c == first_end => assert_eq!(r.unwrap().len(), 1),
                c if c < 8 => assert_eq!(r, Err(AnchorError::BadMagic), "cut {c}"),
                c => {
                    let e = r.unwrap_err();
                    let offset = if c < first_end { 8 } else { first_end };
                    assert_eq!(
                        e,
                        AnchorError::Truncated {
                            record: usize::from(c >= first_end),
                            offset
                        },
                        "cut {c}"
                    );
                    assert!(e.to_string().contains(&format!("offset {offset}")), "{e}");
                }
            }
        }
    }

    #[test]
    fn bad_magic() {
        assert_eq!(parse(b""), Err(AnchorError::BadMagic));
        assert_eq!(parse(b"TRANCHR2"), Err(AnchorError::BadMagic));
        assert_eq!(
            parse(b"-----BEGIN CERTIFICATE-----\n"),
            Err(AnchorError::BadMagic)
        );
        assert!(!is_anchor_file(b"TRANCHR"));
        assert!(is_anchor_file(b"TRANCHR1\0\x01"));
    }

    #[test]
    fn empty_fields_are_refused() {
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&[0, 0, 0, 1, 9, 0, 0]);
        assert_eq!(
            parse(&file),
            Err(AnchorError::EmptyField {
                record: 0,
                offset: 8,
                field: "subject"
            })
        );
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&[0, 1, 9, 0, 0, 0, 0]);
        let e = parse(&file).unwrap_err();
        assert!(e.to_string().contains("empty public key"), "{e}");

        let mut a = sample();
        a[1].name_constraints = Some(Vec::new());
        assert!(matches!(
            encode(&a),
            Err(AnchorError::EmptyField { record: 1, .. })
        ));
        let mut a = sample();
        a[0].subject.clear();
        assert!(matches!(
            encode(&a),
            Err(AnchorError::EmptyField { record: 0, .. })
        ));
    }

    #[test]
    fn limits() {
        let mut a = sample();
        a[1].spki = vec![0; 65536];
        assert_eq!(
            encode(&a),
            Err(AnchorError::FieldTooLong {
                record: 1,
                field: "public key",
                len: 65536
            })
        );
        a[1].spki = vec![0; 65535];
        let file = encode(&a).unwrap();
        assert_eq!(parse(&file).unwrap(), a);

        let one = Anchor {
            subject: vec![1],
            spki: vec![2],
            name_constraints: None,
        };
        let max = vec![one; MAX_RECORDS];
        let mut file = encode(&max).unwrap();
        assert_eq!(parse(&file).unwrap().len(), MAX_RECORDS);
        file.extend_from_slice(&[0, 1, 1, 0, 1, 2, 0, 0]);
        assert_eq!(parse(&file), Err(AnchorError::TooManyRecords));
        assert_eq!(
            encode(&vec![max[0].clone(); MAX_RECORDS + 1]),
            Err(AnchorError::TooManyRecords)
        );

        let mut big = MAGIC.to_vec();
        big.resize(MAX_FILE + 1, 0);
        assert_eq!(
            parse(&big),
            Err(AnchorError::TooLarge { len: MAX_FILE + 1 })
        );
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        // A cheap stand-in for the fuzz target: every short byte pattern after the magic.
        for a in 0..=255u8 {
            for b in [0u8, 1, 2, 0xff] {
                let mut file = MAGIC.to_vec();
                file.extend_from_slice(&[b, a, a, b, 0xff, 0, 1]);
                if let Ok(v) = parse(&file) {
                    assert_eq!(encode(&v).unwrap(), file);
                }
            }
        }
    }
}

//! The two X.509 fields DERP's `sha256-raw:` certificate pinning needs, read straight from
//! the DER: the subject CommonName (to recognise derper's "meta certificate", whose CN is
//! `derpkey<hex>` and which derper appends to its chain) and the validity window (a pinned
//! certificate skips chain verification, so its dates are checked here, as Go does).
//!
//! This is a walker over the first fields of `TBSCertificate`, not a certificate parser:
//! signatures, extensions and names other than the subject's CN are not looked at. Anything
//! malformed gives `None`; nothing here panics or allocates.

/// What [`parse`] reads from a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fields<'a> {
    /// The raw value of the subject's first CommonName attribute, if any.
    pub(crate) common_name: Option<&'a [u8]>,
    /// `notBefore`, in seconds since the Unix epoch.
    pub(crate) not_before: i64,
    /// `notAfter`, in seconds since the Unix epoch.
    pub(crate) not_after: i64,
}

const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version`, present in every v3 certificate.
const VERSION: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

/// A cursor over a run of DER TLVs.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next TLV's tag and contents (definite lengths up to 4 bytes; low tag numbers).
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes.iter().fold(0usize, |l, &b| (l << 8) | usize::from(b))
        };
        if rest.len() < len {
            return None;
        }
        let (body, after) = rest.split_at(len);
        self.0 = after;
        Some((tag, body))
    }

    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        let (t, body) = self.next()?;
        (t == tag).then_some(body)
    }
}

/// Reads the subject CN and validity of a DER certificate.
pub(crate) fn parse(der: &[u8]) -> Option<Fields<'_>> {
    let cert = Der(der).expect(SEQUENCE)?;
    let mut tbs = Der(Der(cert).expect(SEQUENCE)?);
    let (mut tag, _) = tbs.next()?;
    if tag == VERSION {
        tag = tbs.next()?.0;
    }
    if tag != INTEGER {
        return None; // the serial number
    }
    tbs.expect(SEQUENCE)?; // signature algorithm
    tbs.expect(SEQUENCE)?; // issuer
    let mut validity = Der(tbs.expect(SEQUENCE)?);
    let not_before = time(validity.next()?)?;
    let not_after = time(validity.next()?)?;
    let subject = tbs.expect(SEQUENCE)?;
    Some(Fields {
        common_name: common_name(subject),
        not_before,
        not_after,
    })
}

/// The first CommonName in a `Name` (a SEQUENCE of SETs of `{type, value}` SEQUENCEs).
fn common_name(name: &[u8]) -> Option<&[u8]> {
    let mut rdns = Der(name);
    while let Some((tag, set)) = rdns.next() {
        if tag != SET {
            return None;
        }
        let mut attrs = Der(set);
        while let Some(attr) = attrs.expect(SEQUENCE) {
            let mut attr = Der(attr);
            if attr.expect(OID)? == OID_COMMON_NAME {
                return attr.next().map(|(_, value)| value);
            }
        }
    }
    None
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), the
/// two forms RFC 5280 allows, as Unix seconds.
fn time((tag, s): (u8, &[u8])) -> Option<i64> {
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        s.get(range)?.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (year, rest) = match (tag, s.len()) {
        (UTC_TIME, 13) => {
            let yy = digits(0..2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (GENERALIZED_TIME, 15) => (digits(0..4)?, 4),
        _ => return None,
    };
    if s.last() != Some(&b'Z') {
        return None;
    }
    let month = digits(rest..rest + 2)?;
    let day = digits(rest + 2..rest + 4)?;
    let hour = digits(rest + 4..rest + 6)?;
    let minute = digits(rest + 6..rest + 8)?;
    let second = digits(rest + 8..rest + 10)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj
    /// /O=tailrouter/CN=derpkey0102 -days 3650`, made for this test: notBefore
    /// 2026-12-01 10:56:51Z, notAfter 2036-11-28 10:56:51Z (both UTCTime).
    const CERT_PEM: &str = include_str!("testdata/derpkey-cn.pem");

    fn der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn reads_cn_and_validity() {
        let der = der(CERT_PEM);
        let f = parse(&der).unwrap();
        assert_eq!(f.common_name, Some(&b"derpkey0102"[..]));
        assert_eq!(f.not_before, 1_796_122_611);
        assert_eq!(f.not_after, 2_111_482_611);
    }

    #[test]
    fn truncated_or_garbage_is_none() {
        let der = der(CERT_PEM);
        for n in 0..der.len() {
            // Cutting the outer SEQUENCE short always breaks its length.
            assert_eq!(parse(&der[..n]), None, "prefix of {n} bytes");
        }
        assert_eq!(parse(b"\x30\x84\xff\xff\xff\xff"), None);
        assert_eq!(parse(b"\x30\x85\x01\x01\x01\x01\x01"), None);
        assert_eq!(parse(b"\x1f\x01\x00"), None);
        assert_eq!(parse(&[]), None);
    }

    #[test]
    fn times() {
        assert_eq!(time((UTC_TIME, b"700101000000Z")), Some(0));
        assert_eq!(time((UTC_TIME, b"491231235959Z")), Some(2_524_607_999));
        assert_eq!(time((UTC_TIME, b"500101000000Z")), Some(-631_152_000));
        assert_eq!(
            time((GENERALIZED_TIME, b"20000229120000Z")),
            Some(951_825_600)
        );
        assert_eq!(
            time((GENERALIZED_TIME, b"99991231235959Z")),
            Some(253_402_300_799)
        );
        assert_eq!(time((UTC_TIME, b"7001010000Z")), None);
        assert_eq!(time((UTC_TIME, b"701301000000Z")), None);
        assert_eq!(time((UTC_TIME, b"700101000000+")), None);
        assert_eq!(time((GENERALIZED_TIME, b"2000022912000Z")), None);
        assert_eq!(time((OID, b"700101000000Z")), None);
        assert_eq!(time((UTC_TIME, b"7a0101000000Z")), None);
    }
}

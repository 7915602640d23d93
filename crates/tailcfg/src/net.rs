//! Address and time types in Go's text forms: `netip.Prefix` and `time.Time`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Why an IP prefix's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixParseError {
    /// The text has no `/bits` part.
    #[error("prefix {0:?} has no '/'")]
    NoSlash(String),
    /// The address part is not an IPv4 or IPv6 address.
    #[error("prefix {0:?} has an invalid address")]
    Addr(String),
    /// The length is not a number, or is longer than the address.
    #[error("prefix {0:?} has an invalid length")]
    Bits(String),
}

/// An IP prefix such as `100.64.0.1/32` (Go's `netip.Prefix`). Host bits may be set, as in Go:
/// a node's own addresses are written as `/32` and `/128` prefixes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    addr: IpAddr,
    bits: u8,
}

impl IpPrefix {
    /// A prefix from an address and a length; `None` if the length exceeds the address.
    pub fn new(addr: IpAddr, bits: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (bits <= max).then_some(Self { addr, bits })
    }

    /// The address, with its host bits as written.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Whether this prefix covers a single address (`/32` or `/128`).
    pub fn is_single_ip(&self) -> bool {
        self.bits == if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// Whether `ip` lies inside this prefix (same family, same leading `bits`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

impl fmt::Debug for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for IpPrefix {
    type Err = PrefixParseError;
    fn from_str(s: &str) -> Result<Self, PrefixParseError> {
        let (a, b) = s
            .split_once('/')
            .ok_or_else(|| PrefixParseError::NoSlash(s.to_owned()))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| PrefixParseError::Addr(s.to_owned()))?;
        // Go refuses a sign or leading zeros ("/08"); so do we.
        if b.is_empty() || b.len() > 3 || !b.bytes().all(|c| c.is_ascii_digit()) {
            return Err(PrefixParseError::Bits(s.to_owned()));
        }
        if b.len() > 1 && b.starts_with('0') {
            return Err(PrefixParseError::Bits(s.to_owned()));
        }
        let bits: u8 = b
            .parse()
            .map_err(|_| PrefixParseError::Bits(s.to_owned()))?;
        Self::new(addr, bits).ok_or_else(|| PrefixParseError::Bits(s.to_owned()))
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Go's zero `time.Time` as JSON writes it.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// A point in time in Go's JSON form (RFC 3339, optional fraction), kept as the text received
/// so that nothing is lost; [`Time::unix_seconds`] reads it. The default is Go's zero time.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Time(String);

impl Default for Time {
    fn default() -> Self {
        Self(ZERO_TIME.to_owned())
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both fit: d in 1..=31, m in 1..=12.
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Time {
    /// The time `secs` seconds after the Unix epoch, in UTC (`1970-01-01T00:02:03Z`).
    pub fn from_unix(secs: i64) -> Self {
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        Self(format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        ))
    }

    /// The current wall-clock time, to the second.
    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        let secs = match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        Self::from_unix(secs)
    }

    /// The text as received.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is Go's zero time (or empty text).
    pub fn is_zero(&self) -> bool {
        self.0.is_empty() || self.0 == ZERO_TIME
    }

    /// Seconds since the Unix epoch (fraction dropped), or `None` if the text is not RFC 3339.
    pub fn unix_seconds(&self) -> Option<i64> {
        let s = self.0.as_bytes();
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let b = s.get(r)?;
            if !b.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(b).ok()?.parse().ok()
        };
        if s.len() < 20 || s[4] != b'-' || s[7] != b'-' || !matches!(s[10], b'T' | b't') {
            return None;
        }
        if s[13] != b':' || s[16] != b':' {
            return None;
        }
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
            return None;
        }
        let mut i = 19;
        if s.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            while s.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
        let offset = match s.get(i..)? {
            b"Z" | b"z" => 0,
            [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
                let o = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
                if *sign == b'+' { o } else { -o }
            }
            _ => return None,
        };
        // mo and d were range-checked above.
        let days = days_from_civil(y, mo as u32, d as u32);
        Some(days * 86_400 + h * 3600 + mi * 60 + se - offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_print_and_contain() {
        let p: IpPrefix = "100.64.0.0/10".parse().unwrap();
        assert!(p.contains("100.127.255.1".parse().unwrap()));
        assert!(!p.contains("100.128.0.1".parse().unwrap()));
        assert!(!p.contains("fd7a:115c:a1e0::1".parse().unwrap()));
        let a: IpPrefix = "fd7a:115c:a1e0::1/128".parse().unwrap();
        assert!(a.is_single_ip());
        assert_eq!(a.to_string(), "fd7a:115c:a1e0::1/128");
        let all: IpPrefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in [
            "1.2.3.4",
            "1.2.3.4/33",
            "1.2.3.4/-1",
            "x/8",
            "1.2.3.4/08",
            "::/129",
            "/",
        ] {
            assert!(bad.parse::<IpPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn times_round_trip_through_unix_seconds() {
        assert_eq!(Time::from_unix(123).as_str(), "1970-01-01T00:02:03Z");
        assert_eq!(Time::from_unix(0).unix_seconds(), Some(0));
        let t = Time("2026-11-24T16:20:00.123456789Z".into());
        assert_eq!(
            Time::from_unix(t.unix_seconds().unwrap()).as_str(),
            "2026-11-24T16:20:00Z"
        );
        let off = Time("2026-11-24T17:20:00+01:00".into());
        assert_eq!(off.unix_seconds(), t.unix_seconds());
        assert!(Time::default().is_zero());
        assert_eq!(Time::default().unix_seconds(), Some(-62_135_596_800));
        for bad in [
            "",
            "2026-11-24",
            "2026-13-01T00:00:00Z",
            "2026-11-24T16:20:00",
            "2026-11-24T16:20:00.Z",
        ] {
            assert_eq!(Time(bad.into()).unix_seconds(), None, "{bad}");
        }
    }
}

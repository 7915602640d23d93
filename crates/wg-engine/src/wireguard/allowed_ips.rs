//! The AllowedIPs table: longest-prefix match from an IP address to a value (a peer's key).
//!
//! One hash map per prefix length in use, searched from the longest length down, so a lookup
//! costs one hash probe per distinct length present (a tailnet has few: `/32`, `/128` and a
//! handful of routes). The same table answers both questions WireGuard asks: which peer an
//! outbound packet goes to, and whether a peer may send from a source address.

use std::collections::HashMap;
use std::net::IpAddr;
use tailcfg::IpPrefix;

/// Prefixes of one family, grouped by length; `levels` is sorted by length, longest first.
#[derive(Debug, Clone)]
struct Family<K, T> {
    levels: Vec<(u8, HashMap<K, T>)>,
}

impl<K: std::hash::Hash + Eq + Copy, T> Family<K, T> {
    fn new() -> Self {
        Self { levels: Vec::new() }
    }

    fn insert(&mut self, bits: u8, key: K, value: T) -> Option<T> {
        match self.levels.binary_search_by(|(b, _)| bits.cmp(b)) {
            Ok(i) => self.levels[i].1.insert(key, value),
            Err(i) => {
                let mut map = HashMap::new();
                map.insert(key, value);
                self.levels.insert(i, (bits, map));
                None
            }
        }
    }

    fn remove(&mut self, bits: u8, key: K) -> Option<T> {
        let i = self.levels.binary_search_by(|(b, _)| bits.cmp(b)).ok()?;
        let old = self.levels[i].1.remove(&key);
        if self.levels[i].1.is_empty() {
            self.levels.remove(i);
        }
        old
    }

    fn get(&self, bits: u8, key: K) -> Option<&T> {
        let i = self.levels.binary_search_by(|(b, _)| bits.cmp(b)).ok()?;
        self.levels[i].1.get(&key)
    }

    fn lookup(&self, mask: impl Fn(u8) -> K) -> Option<&T> {
        self.levels
            .iter()
            .find_map(|(bits, map)| map.get(&mask(*bits)))
    }

    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for (_, map) in &mut self.levels {
            map.retain(|_, v| keep(v));
        }
        self.levels.retain(|(_, map)| !map.is_empty());
    }

    fn len(&self) -> usize {
        self.levels.iter().map(|(_, m)| m.len()).sum()
    }
}

fn mask_v4(addr: u32, bits: u8) -> u32 {
    addr & u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0)
}

fn mask_v6(addr: u128, bits: u8) -> u128 {
    addr & u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0)
}

/// A longest-prefix-match table from IPv4 and IPv6 prefixes to values.
///
/// Host bits of an inserted prefix are ignored (`10.1.2.3/8` is `10.0.0.0/8`), as in Go's
/// `netip.Prefix.Masked`.
#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    v4: Family<u32, T>,
    v6: Family<u128, T>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> AllowedIps<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            v4: Family::new(),
            v6: Family::new(),
        }
    }

    /// Maps `prefix` to `value`, returning the value it replaces.
    pub fn insert(&mut self, prefix: IpPrefix, value: T) -> Option<T> {
        let bits = prefix.bits();
        match prefix.addr() {
            IpAddr::V4(a) => self.v4.insert(bits, mask_v4(a.into(), bits), value),
            IpAddr::V6(a) => self.v6.insert(bits, mask_v6(a.into(), bits), value),
        }
    }

    /// Removes exactly `prefix` (not the prefixes inside it), returning its value.
    pub fn remove(&mut self, prefix: IpPrefix) -> Option<T> {
        let bits = prefix.bits();
        match prefix.addr() {
            IpAddr::V4(a) => self.v4.remove(bits, mask_v4(a.into(), bits)),
            IpAddr::V6(a) => self.v6.remove(bits, mask_v6(a.into(), bits)),
        }
    }

    /// Keeps only the entries whose value passes `keep` (for example: all but one peer's).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.v4.retain(&mut keep);
        self.v6.retain(keep);
    }

    /// The value of exactly `prefix`, if present.
    pub fn lookup_exact(&self, prefix: IpPrefix) -> Option<&T> {
        let bits = prefix.bits();
        match prefix.addr() {
            IpAddr::V4(a) => self.v4.get(bits, mask_v4(a.into(), bits)),
            IpAddr::V6(a) => self.v6.get(bits, mask_v6(a.into(), bits)),
        }
    }

    /// The value of the longest prefix that contains `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.lookup(|bits| mask_v4(a, bits))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.lookup(|bits| mask_v6(a, bits))
            }
        }
    }

    /// How many prefixes the table holds.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpPrefix {
        s.parse()
            .unwrap_or_else(|e| unreachable!("bad test prefix {s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or_else(|e| unreachable!("bad test ip {s}: {e}"))
    }

    #[test]
    fn overlapping_v4_longest_wins() {
        let mut t = AllowedIps::new();
        t.insert(p("0.0.0.0/0"), "default");
        t.insert(p("10.0.0.0/8"), "ten");
        t.insert(p("10.1.0.0/16"), "ten-one");
        t.insert(p("10.1.2.3/32"), "host");
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&"host"));
        assert_eq!(t.lookup(ip("10.1.2.4")), Some(&"ten-one"));
        assert_eq!(t.lookup(ip("10.2.0.1")), Some(&"ten"));
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(&"default"));
        assert_eq!(t.lookup(ip("::1")), None, "families never mix");
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn overlapping_v6_and_host_bits() {
        let mut t = AllowedIps::new();
        t.insert(p("fd7a:115c:a1e0::/48"), 1);
        t.insert(p("fd7a:115c:a1e0:ab12::5/64"), 2); // host bits ignored
        t.insert(p("fd7a:115c:a1e0:ab12:4843:cd96:6200:1/128"), 3);
        t.insert(p("::/0"), 0);
        assert_eq!(
            t.lookup(ip("fd7a:115c:a1e0:ab12:4843:cd96:6200:1")),
            Some(&3)
        );
        assert_eq!(t.lookup(ip("fd7a:115c:a1e0:ab12::9")), Some(&2));
        assert_eq!(t.lookup(ip("fd7a:115c:a1e0:1::9")), Some(&1));
        assert_eq!(t.lookup(ip("2001:db8::1")), Some(&0));
        assert_eq!(t.lookup(ip("100.64.0.1")), None);
    }

    #[test]
    fn removal_falls_back_to_shorter() {
        let mut t = AllowedIps::new();
        t.insert(p("100.64.0.0/10"), 'a');
        t.insert(p("100.64.0.7/32"), 'b');
        t.insert(p("fd7a:115c:a1e0::7/128"), 'b');
        assert_eq!(t.lookup(ip("100.64.0.7")), Some(&'b'));
        assert_eq!(
            t.remove(p("100.64.0.0/32")),
            None,
            "only the exact prefix is removed"
        );
        assert_eq!(t.remove(p("100.64.0.7/32")), Some('b'));
        assert_eq!(t.lookup(ip("100.64.0.7")), Some(&'a'));
        assert_eq!(
            t.insert(p("100.64.0.0/10"), 'c'),
            Some('a'),
            "replace returns old"
        );
        t.retain(|v| *v != 'b');
        assert_eq!(t.lookup(ip("fd7a:115c:a1e0::7")), None);
        assert_eq!(t.len(), 1);
        t.retain(|_| false);
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("100.64.0.7")), None);
    }
}

//! Filter rules compiled from control's `FilterRule`s (Go's `filter.MatchesFromFilterRules`
//! and `filter.New`): per address family, address sets as sorted, merged ranges searched by
//! binary search, protocols as a 256-bit set.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tailcfg::net::IpPrefix;
use tailcfg::{FilterRule, PortRange};

/// Why part of a filter was refused. Like Go, a bad address is skipped (the rest of its rule
/// still counts), while a deprecated `SrcBits` or `Bits` refuses the whole filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// A rule has the deprecated `SrcBits`; the whole filter becomes deny-all.
    #[error("rule {rule}: unexpected SrcBits; the whole filter is refused")]
    SrcBits {
        /// Index of the rule in the concatenated list.
        rule: usize,
    },
    /// A destination has the deprecated `Bits`; the whole filter becomes deny-all.
    #[error("rule {rule}: unexpected DstPorts Bits; the whole filter is refused")]
    DstBits {
        /// Index of the rule in the concatenated list.
        rule: usize,
    },
    /// An address, prefix or range could not be read; that entry is skipped.
    #[error("rule {rule}: invalid address {text:?}: {why}")]
    BadAddress {
        /// Index of the rule in the concatenated list.
        rule: usize,
        /// The text as sent.
        text: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A `cap:` entry in `DstPorts`, where only sources may name capabilities; skipped.
    #[error("rule {rule}: unexpected capability {text:?} in DstPorts")]
    CapInDst {
        /// Index of the rule in the concatenated list.
        rule: usize,
        /// The text as sent.
        text: String,
    },
}

/// An address of one family as an integer.
pub(crate) trait Addr: Copy + Ord + std::fmt::Debug {
    const BITS: u32;
    fn from_raw(raw: u128) -> Self;
    fn range(addr: IpAddr, bits: u8) -> Option<(Self, Self)>;
    fn succ(self) -> Option<Self>;
}

impl Addr for u32 {
    const BITS: u32 = 32;
    fn from_raw(raw: u128) -> Self {
        raw as u32
    }
    fn range(addr: IpAddr, bits: u8) -> Option<(Self, Self)> {
        let IpAddr::V4(a) = addr else { return None };
        let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
        let lo = u32::from(a) & mask;
        Some((lo, lo | !mask))
    }
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Addr for u128 {
    const BITS: u32 = 128;
    fn from_raw(raw: u128) -> Self {
        raw
    }
    fn range(addr: IpAddr, bits: u8) -> Option<(Self, Self)> {
        let IpAddr::V6(a) = addr else { return None };
        let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
        let lo = u128::from(a) & mask;
        Some((lo, lo | !mask))
    }
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// A set of addresses: sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangeSet<A> {
    ranges: Vec<(A, A)>,
}

impl<A: Addr> RangeSet<A> {
    fn new(mut ranges: Vec<(A, A)>) -> Self {
        ranges.sort_unstable();
        let mut out: Vec<(A, A)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            if let Some(last) = out.last_mut() {
                let touches = match last.1.succ() {
                    Some(next) => lo <= next,
                    None => true,
                };
                if touches {
                    if hi > last.1 {
                        last.1 = hi;
                    }
                    continue;
                }
            }
            out.push((lo, hi));
        }
        Self { ranges: out }
    }

    #[inline]
    pub(crate) fn contains(&self, a: A) -> bool {
        let i = self.ranges.partition_point(|r| r.0 <= a);
        i > 0 && self.ranges.get(i - 1).is_some_and(|r| r.1 >= a)
    }

    fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// A set of IP protocol numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ProtoSet([u64; 4]);

impl ProtoSet {
    fn insert(&mut self, p: u8) {
        self.0[usize::from(p >> 6)] |= 1 << (p & 63);
    }
    #[inline]
    fn contains(&self, p: u8) -> bool {
        self.0[usize::from(p >> 6)] & (1 << (p & 63)) != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Dst<A> {
    lo: A,
    hi: A,
    ports: PortRange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Match<A> {
    protos: ProtoSet,
    srcs: RangeSet<A>,
    /// Addresses of the nodes holding a `cap:` source's capability.
    cap_srcs: RangeSet<A>,
    dsts: Vec<Dst<A>>,
}

/// The rules of one address family and the local addresses of that family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Family<A> {
    local: RangeSet<A>,
    matches: Vec<Match<A>>,
}

impl<A: Addr> Family<A> {
    pub(crate) fn is_local(&self, dst: A) -> bool {
        self.local.contains(dst)
    }

    /// Go's `match`: protocol, source, destination address and port. The cheap tests (protocol,
    /// destinations) run before the source lookup; the result is the same.
    pub(crate) fn matches(&self, proto: u8, src: A, dst: A, port: u16) -> bool {
        self.matches.iter().any(|m| {
            m.protos.contains(proto)
                && m.dsts.iter().any(|d| {
                    d.ports.first <= port && port <= d.ports.last && d.lo <= dst && dst <= d.hi
                })
                && (m.srcs.contains(src) || m.cap_srcs.contains(src))
        })
    }

    /// Go's `matchIPsOnly` (for ICMP): source and destination address, any protocol or port.
    /// As in Go, a source holding a rule's `cap:` capability passes whatever the destination.
    pub(crate) fn matches_ips_only(&self, src: A, dst: A) -> bool {
        self.matches
            .iter()
            .any(|m| m.dsts.iter().any(|d| d.lo <= dst && dst <= d.hi) && m.srcs.contains(src))
            || self.matches.iter().any(|m| m.cap_srcs.contains(src))
    }

    /// Go's `matchProtoAndIPsOnlyIfAllPorts` (other protocols): the protocol is listed and the
    /// destination is open on all ports.
    pub(crate) fn matches_all_ports(&self, proto: u8, src: A, dst: A) -> bool {
        self.matches.iter().any(|m| {
            m.protos.contains(proto)
                && m.dsts.iter().any(|d| {
                    d.ports.first == 0 && d.ports.last == u16::MAX && d.lo <= dst && dst <= d.hi
                })
                && m.srcs.contains(src)
        })
    }

    fn new(local: &[IpPrefix], parsed: &[ParsedRule]) -> Self {
        let local = RangeSet::new(
            local
                .iter()
                .filter_map(|p| A::range(p.addr(), p.bits()))
                .collect(),
        );
        let mut matches = Vec::new();
        for r in parsed {
            let srcs = RangeSet::new(
                r.srcs
                    .iter()
                    .filter_map(|&(ip, bits)| A::range(ip, bits))
                    .collect(),
            );
            let cap_srcs = RangeSet::new(
                r.cap_srcs
                    .iter()
                    .filter_map(|&ip| A::range(ip, A::BITS as u8))
                    .collect(),
            );
            let dsts: Vec<Dst<A>> = r
                .dsts
                .iter()
                .filter_map(|&(ip, bits, ports)| {
                    A::range(ip, bits).map(|(lo, hi)| Dst { lo, hi, ports })
                })
                .collect();
            // As Go's matchesFamily: a rule with no source or no destination in this family
            // can never match here.
            if (!srcs.is_empty() || !cap_srcs.is_empty()) && !dsts.is_empty() {
                matches.push(Match {
                    protos: r.protos,
                    srcs,
                    cap_srcs,
                    dsts,
                });
            }
        }
        Self { local, matches }
    }
}

/// One rule after reading its text, before splitting by family.
struct ParsedRule {
    protos: ProtoSet,
    srcs: Vec<(IpAddr, u8)>,
    cap_srcs: Vec<IpAddr>,
    dsts: Vec<(IpAddr, u8, PortRange)>,
}

/// A compiled packet filter policy: the rules and the node's local addresses. Immutable; give
/// it to [`super::Filter::set_rules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub(crate) v4: Family<u32>,
    pub(crate) v6: Family<u128>,
    pub(crate) shields_up: bool,
    rule_count: usize,
}

impl Rules {
    /// Denies everything: no rule and no local address. What Go uses until the first netmap.
    pub fn allow_none() -> Self {
        Self::compile(&[], &[]).0
    }

    /// "Shields up": no rule admits anything new, but replies (TCP non-SYN, tracked UDP,
    /// ICMP replies) to `local` still pass, as in Go's `NewShieldsUpFilter`.
    pub fn shields_up(local: &[IpPrefix]) -> Self {
        let mut r = Self::compile(&[], local).0;
        r.shields_up = true;
        r
    }

    /// Compiles `rules` (in order) for a node whose local addresses are `local` (its own
    /// addresses, plus advertised routes when it is a subnet router; host bits are ignored).
    ///
    /// Returns the rules and what was refused, as Go's `MatchesFromFilterRules`: a bad entry
    /// is skipped and reported; `SrcBits` or `Bits` make the whole filter deny-all. `cap:`
    /// sources match nothing here (Go with a nil `CapTestFunc`; see
    /// [`Rules::compile_with_caps`]); `CapGrant` plays no part in packet decisions.
    pub fn compile<'a>(
        rules: impl IntoIterator<Item = &'a FilterRule>,
        local: &[IpPrefix],
    ) -> (Self, Vec<RuleError>) {
        Self::compile_with_caps(rules, local, &|_| Vec::new())
    }

    /// [`Rules::compile`] where a `cap:<capability>` source matches the addresses
    /// `cap_holders(capability)` returns: the `Addresses` of the nodes (peers and self) whose
    /// `CapMap` holds it, as Go's `srcIPHasCapForFilter` decides per packet. Recompile when
    /// peers or their capabilities change.
    pub fn compile_with_caps<'a>(
        rules: impl IntoIterator<Item = &'a FilterRule>,
        local: &[IpPrefix],
        cap_holders: &dyn Fn(&str) -> Vec<IpAddr>,
    ) -> (Self, Vec<RuleError>) {
        let mut errors = Vec::new();
        let mut parsed = Vec::new();
        let mut fatal = false;
        for (i, r) in rules.into_iter().enumerate() {
            if r.src_bits.as_ref().is_some_and(|b| !b.is_empty()) {
                errors.push(RuleError::SrcBits { rule: i });
                fatal = true;
                break;
            }
            if r.dst_ports.iter().any(|d| d.bits.is_some()) {
                errors.push(RuleError::DstBits { rule: i });
                fatal = true;
                break;
            }
            let mut protos = ProtoSet::default();
            if r.ip_proto.is_empty() {
                for p in [6, 17, 1, 58] {
                    protos.insert(p);
                }
            } else {
                for &n in &r.ip_proto {
                    if let Ok(p) = u8::try_from(n) {
                        protos.insert(p);
                    }
                }
            }
            let mut srcs = Vec::new();
            let mut cap_srcs = Vec::new();
            for s in &r.src_ips {
                if let Some(cap) = s.strip_prefix("cap:") {
                    if !cap.is_empty() {
                        cap_srcs.extend(cap_holders(cap));
                    }
                    continue;
                }
                match parse_ip_set(s) {
                    Ok(set) => srcs.extend(set),
                    Err(why) => errors.push(RuleError::BadAddress {
                        rule: i,
                        text: s.clone(),
                        why,
                    }),
                }
            }
            let mut dsts = Vec::new();
            for d in &r.dst_ports {
                if d.ip.starts_with("cap:") {
                    errors.push(RuleError::CapInDst {
                        rule: i,
                        text: d.ip.clone(),
                    });
                    continue;
                }
                match parse_ip_set(&d.ip) {
                    Ok(set) => dsts.extend(set.into_iter().map(|(ip, b)| (ip, b, d.ports))),
                    Err(why) => errors.push(RuleError::BadAddress {
                        rule: i,
                        text: d.ip.clone(),
                        why,
                    }),
                }
            }
            parsed.push(ParsedRule {
                protos,
                srcs,
                cap_srcs,
                dsts,
            });
        }
        if fatal {
            parsed.clear();
        }
        let rules = Self {
            v4: Family::new(local, &parsed),
            v6: Family::new(local, &parsed),
            shields_up: false,
            rule_count: parsed.len(),
        };
        (rules, errors)
    }

    /// Compiles the netmap's named filters (`PacketFilters`, with `PacketFilter` as `"base"`),
    /// joined in name order as Go does.
    pub fn compile_named(
        named: &BTreeMap<String, Vec<FilterRule>>,
        local: &[IpPrefix],
    ) -> (Self, Vec<RuleError>) {
        Self::compile(named.values().flatten(), local)
    }

    /// Whether this is a shields-up policy.
    pub fn is_shields_up(&self) -> bool {
        self.shields_up
    }

    /// How many rules were compiled (before splitting by family).
    pub fn rule_count(&self) -> usize {
        self.rule_count
    }
}

/// Go's `parseIPSet`: `*`, a CIDR with no host bits, a range `a-b`, or one address. Returns
/// (address, prefix length) pairs; a range becomes its covering prefixes.
fn parse_ip_set(s: &str) -> Result<Vec<(IpAddr, u8)>, &'static str> {
    if s == "*" {
        return Ok(vec![
            (IpAddr::V4(0u32.into()), 0),
            (IpAddr::V6(0u128.into()), 0),
        ]);
    }
    if s.contains('/') {
        let p: IpPrefix = s.parse().map_err(|_| "not a prefix")?;
        let masked = match p.addr() {
            IpAddr::V4(a) => {
                u32::range(IpAddr::V4(a), p.bits()).is_some_and(|(lo, _)| lo == u32::from(a))
            }
            IpAddr::V6(a) => {
                u128::range(IpAddr::V6(a), p.bits()).is_some_and(|(lo, _)| lo == u128::from(a))
            }
        };
        if !masked {
            return Err("prefix has host bits set");
        }
        return Ok(vec![(p.addr(), p.bits())]);
    }
    if s.matches('-').count() == 1 {
        let (a, b) = s.split_once('-').ok_or("not a range")?;
        let a: IpAddr = a.parse().map_err(|_| "range start is not an address")?;
        let b: IpAddr = b.parse().map_err(|_| "range end is not an address")?;
        return match (a, b) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => {
                Ok(range_prefixes::<u32>(a.into(), b.into())
                    .into_iter()
                    .map(|(lo, bits)| (IpAddr::V4(lo.into()), bits))
                    .collect())
            }
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => {
                Ok(range_prefixes::<u128>(a.into(), b.into())
                    .into_iter()
                    .map(|(lo, bits)| (IpAddr::V6(lo.into()), bits))
                    .collect())
            }
            _ => Err("invalid range"),
        };
    }
    let ip: IpAddr = s.parse().map_err(|_| "not an address")?;
    Ok(vec![(ip, if ip.is_ipv4() { 32 } else { 128 })])
}

/// The smallest list of prefixes covering `lo..=hi` (as `netipx.IPRange.Prefixes`).
fn range_prefixes<A>(mut lo: A, hi: A) -> Vec<(A, u8)>
where
    A: Addr + RangeBits,
{
    let mut out = Vec::new();
    loop {
        // Largest aligned block starting at lo that stays within hi.
        let mut size = lo.trailing_zeros_bits().min(A::BITS);
        while size > 0 && lo.block_end(size) > hi {
            size -= 1;
        }
        let end = lo.block_end(size);
        out.push((lo, (A::BITS - size) as u8));
        match end.succ() {
            Some(next) if end < hi => lo = next,
            _ => break,
        }
    }
    out
}

/// Bit helpers for [`range_prefixes`].
trait RangeBits: Sized {
    fn trailing_zeros_bits(self) -> u32;
    /// The last address of the block of 2^size addresses starting at self.
    fn block_end(self, size: u32) -> Self;
}

impl RangeBits for u32 {
    fn trailing_zeros_bits(self) -> u32 {
        self.trailing_zeros()
    }
    fn block_end(self, size: u32) -> Self {
        self | 1u32.checked_shl(size).map_or(u32::MAX, |v| v - 1)
    }
}

impl RangeBits for u128 {
    fn trailing_zeros_bits(self) -> u32 {
        self.trailing_zeros()
    }
    fn block_end(self, size: u32) -> Self {
        self | 1u128.checked_shl(size).map_or(u128::MAX, |v| v - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_prefixes() {
        let got = parse_ip_set("100.64.0.0-100.115.91.255").unwrap();
        let text: Vec<String> = got.iter().map(|(a, b)| format!("{a}/{b}")).collect();
        assert_eq!(
            text,
            [
                "100.64.0.0/11",
                "100.96.0.0/12",
                "100.112.0.0/15",
                "100.114.0.0/16",
                "100.115.0.0/18",
                "100.115.64.0/20",
                "100.115.80.0/21",
                "100.115.88.0/22"
            ]
        );
        assert_eq!(
            parse_ip_set("0.0.0.0-255.255.255.255").unwrap(),
            [(IpAddr::V4(0u32.into()), 0)]
        );
        assert_eq!(parse_ip_set("1.2.3.4-1.2.3.4").unwrap().len(), 1);
        assert!(parse_ip_set("1.2.3.5-1.2.3.4").is_err());
        assert!(parse_ip_set("1.2.3.4-::1").is_err());
        assert!(parse_ip_set("1.2.3.4/24").is_err());
        assert!(parse_ip_set("1.2.3.0/24").is_ok());
        assert!(parse_ip_set("fd7a:115c:a1e0::/48").is_ok());
        assert!(parse_ip_set("a-b-c").is_err());
        assert!(parse_ip_set("").is_err());
    }

    #[test]
    fn range_set_merges_and_finds() {
        let s = RangeSet::<u32>::new(vec![(10, 20), (21, 30), (5, 6), (40, 50), (45, 46)]);
        assert_eq!(s.ranges, [(5, 6), (10, 30), (40, 50)]);
        for (a, want) in [
            (4, false),
            (5, true),
            (7, false),
            (30, true),
            (31, false),
            (50, true),
        ] {
            assert_eq!(s.contains(a), want, "{a}");
        }
        let all = RangeSet::<u32>::new(vec![(0, u32::MAX), (3, 4)]);
        assert!(all.contains(u32::MAX) && all.contains(0));
    }
}

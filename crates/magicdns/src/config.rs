//! The resolver configuration: `tailcfg::DnsConfig` plus the tailnet's hosts, compiled into the
//! tables quad-100 answers from (protocol.md 8.2).
//!
//! Every name here is in one canonical form: lowercase ASCII, labels joined by `.`, with a
//! trailing dot (`gw.tail1234.ts.net.`; the root is `.`). Names from the wire may carry bytes
//! that are not plain label characters; the resolver writes those as `\DDD`, so a `.` in a
//! canonical name is always a label separator and suffix matching stays label-exact.

use crate::Upstream;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tailcfg::DnsConfig;
use tracing::debug;

/// The longest name on the wire is 255 bytes: one length byte per label, the labels, and the
/// root's zero byte.
const MAX_WIRE_NAME: usize = 255;
/// The longest label.
const MAX_LABEL: usize = 63;

/// The IPv6 reverse zone of Tailscale's ULA range `fd7a:115c:a1e0::/48`.
const V6_REVERSE_ZONE: &str = "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.";

/// One tailnet host (the self node or a peer) as MagicDNS sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Host {
    /// The node's MagicDNS name (`gw.tail1234.ts.net.`); the trailing dot and case do not
    /// matter.
    pub fqdn: String,
    /// The node's Tailscale addresses, IPv4 and IPv6, in the netmap's order.
    pub addrs: Vec<IpAddr>,
}

/// The switches that do not come from `tailcfg::DnsConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfigOptions {
    /// `--accept-dns` (`Prefs.CorpDNS`): without it only the hosts and ExtraRecords are served;
    /// control's resolvers, routes, search domains and authoritative zones are ignored.
    pub accept_dns: bool,
    /// The self node has the `magicdns-aaaa` capability: peers that have IPv4 are answered
    /// with their IPv6 address too.
    pub magicdns_aaaa: bool,
}

/// A split-DNS route: queries at or below `suffix` go to `upstreams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The suffix, canonical (`corp.example.`).
    pub suffix: String,
    /// Where its queries go; never empty (an empty route is an authoritative zone instead).
    pub upstreams: Vec<Upstream>,
}

/// Everything quad-100 needs to answer or forward a query, compiled once per netmap.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolverConfig {
    proxied: bool,
    suffix: Option<String>,
    zones: Vec<String>,
    routes: Vec<Route>,
    resolvers: Vec<Upstream>,
    fallback: Vec<Upstream>,
    base: Vec<Upstream>,
    search_domains: Vec<String>,
    extra: HashMap<String, Vec<IpAddr>>,
    nodes: HashMap<String, Vec<IpAddr>>,
    reverse: HashMap<IpAddr, String>,
}

impl ResolverConfig {
    /// Compiles the configuration from control's DNS settings, the self node's MagicDNS name
    /// and the tailnet's hosts (self and peers).
    ///
    /// Nothing here fails: names, addresses and resolver addresses that do not parse are left
    /// out with a debug log.
    pub fn new(dns: &DnsConfig, self_fqdn: &str, hosts: &[Host], options: ConfigOptions) -> Self {
        let self_name = normalize_name(self_fqdn);
        // The MagicDNS suffix is the self name minus its first label (none for a bare label).
        let suffix = self_name
            .as_deref()
            .and_then(|n| n.split_once('.'))
            .map(|(_, rest)| rest)
            .filter(|rest| !rest.is_empty())
            .map(str::to_owned);

        let nodes = node_table(self_name.as_deref(), hosts, options.magicdns_aaaa);
        let extra_list: Vec<(String, IpAddr)> =
            dns.extra_records.iter().filter_map(extra_entry).collect();
        let mut extra: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, addr) in &extra_list {
            extra.entry(name.clone()).or_default().push(*addr);
        }

        let mut reverse = HashMap::new();
        // Nodes first, in the caller's order, then ExtraRecords: the first name wins an address.
        for host in hosts {
            let Some(name) = normalize_name(&host.fqdn) else {
                continue;
            };
            if let Some(addrs) = nodes.get(&name) {
                for addr in addrs {
                    reverse.entry(*addr).or_insert_with(|| name.clone());
                }
            }
        }
        for (name, addr) in extra_list {
            reverse.entry(addr).or_insert(name);
        }

        let mut cfg = Self {
            proxied: dns.proxied,
            suffix,
            nodes,
            extra,
            reverse,
            ..Self::default()
        };
        if options.accept_dns {
            cfg.compile_routes(dns);
        }
        cfg
    }

    /// Routes, zones, default upstreams and search domains: only with `--accept-dns`.
    fn compile_routes(&mut self, dns: &DnsConfig) {
        if self.proxied {
            if let Some(suffix) = &self.suffix {
                self.zones.push(suffix.clone());
            }
            for octet in 64..=127u8 {
                self.zones.push(format!("{octet}.100.in-addr.arpa."));
            }
            self.zones.push(V6_REVERSE_ZONE.to_owned());
        }
        for (suffix, resolvers) in &dns.routes {
            let Some(suffix) = normalize_suffix(suffix) else {
                debug!(route = %suffix, "magicdns: skipping a route with an invalid suffix");
                continue;
            };
            if self.zones.contains(&suffix) || self.routes.iter().any(|r| r.suffix == suffix) {
                continue;
            }
            let resolvers = resolvers.as_deref().unwrap_or_default();
            if resolvers.is_empty() {
                self.zones.push(suffix);
                continue;
            }
            let upstreams = parse_resolvers(resolvers);
            if upstreams.is_empty() {
                // Configured with resolvers, none usable: as if the route were absent, so its
                // queries take the next matching route rather than NXDOMAIN.
                debug!(route = %suffix, "magicdns: no usable resolver in route");
                continue;
            }
            self.routes.push(Route { suffix, upstreams });
        }
        // An ExtraRecord that no route covers gets an authoritative zone of its own, so names
        // below it answer NXDOMAIN rather than leaking upstream. The default route `.` does not
        // count as covering.
        let mut own: Vec<String> = self
            .extra
            .keys()
            .filter(|name| {
                !self.zones.iter().any(|z| in_zone(name, z))
                    && !self
                        .routes
                        .iter()
                        .any(|r| r.suffix != "." && in_zone(name, &r.suffix))
            })
            .cloned()
            .collect();
        own.sort();
        self.zones.append(&mut own);
        self.zones.dedup();

        self.resolvers = parse_resolvers(&dns.resolvers);
        self.fallback = parse_resolvers(&dns.fallback_resolvers);
        self.search_domains =
            dns.domains
                .iter()
                .filter_map(|d| normalize_name(d))
                .fold(Vec::new(), |mut acc, d| {
                    if !acc.contains(&d) {
                        acc.push(d);
                    }
                    acc
                });
    }

    /// Sets the OS's own nameservers (the pre-Tailscale resolv.conf), used for the default
    /// route when control gives no `Resolvers`.
    pub fn set_base_upstreams(&mut self, upstreams: Vec<Upstream>) {
        self.base = upstreams;
    }

    /// The same as [`set_base_upstreams`](Self::set_base_upstreams), by value.
    #[must_use]
    pub fn with_base_upstreams(mut self, upstreams: Vec<Upstream>) -> Self {
        self.base = upstreams;
        self
    }

    /// The OS's own nameservers, as last set.
    pub fn base_upstreams(&self) -> &[Upstream] {
        &self.base
    }

    /// The MagicDNS suffix (`tail1234.ts.net.`), whether or not MagicDNS is on.
    pub fn magic_suffix(&self) -> Option<&str> {
        self.suffix.as_deref()
    }

    /// Whether MagicDNS is on (`DnsConfig.proxied`): enables bare single-label names.
    pub fn proxied(&self) -> bool {
        self.proxied
    }

    /// The zones quad-100 answers itself (NXDOMAIN for names it does not know), canonical.
    pub fn authoritative_zones(&self) -> &[String] {
        &self.zones
    }

    /// The split-DNS routes that have upstreams.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The default route's (`.`) upstreams: control's `Resolvers`, else the OS's base
    /// nameservers, else control's `FallbackResolvers`.
    pub fn default_upstreams(&self) -> &[Upstream] {
        if !self.resolvers.is_empty() {
            &self.resolvers
        } else if !self.base.is_empty() {
            &self.base
        } else {
            &self.fallback
        }
    }

    /// The search domains, canonical, without duplicates.
    pub fn search_domains(&self) -> &[String] {
        &self.search_domains
    }

    /// The upstreams a query for `name` would be forwarded to: the most specific route that
    /// covers it, else the default route. Empty when there are none, or when `name` is in an
    /// authoritative zone (it is never forwarded).
    pub fn upstreams_for(&self, name: &str) -> &[Upstream] {
        let Some(name) = normalize_suffix(name) else {
            return &[];
        };
        if self.is_authoritative(&name) {
            return &[];
        }
        self.route_upstreams(&name)
    }

    /// Route lookup for a canonical name, ignoring the authoritative zones.
    pub(crate) fn route_upstreams(&self, name: &str) -> &[Upstream] {
        self.routes
            .iter()
            .filter(|r| in_zone(name, &r.suffix))
            .max_by_key(|r| r.suffix.len())
            .map_or_else(|| self.default_upstreams(), |r| r.upstreams.as_slice())
    }

    /// Whether a canonical name is inside one of the authoritative zones.
    pub(crate) fn is_authoritative(&self, name: &str) -> bool {
        self.zones.iter().any(|z| in_zone(name, z))
    }

    /// The ExtraRecords addresses for a canonical name.
    pub(crate) fn extra_record(&self, name: &str) -> Option<&[IpAddr]> {
        self.extra.get(name).map(Vec::as_slice)
    }

    /// The served addresses of a node, by canonical FQDN, or by bare single label relative to
    /// the MagicDNS suffix when MagicDNS is on.
    pub(crate) fn node(&self, name: &str) -> Option<&[IpAddr]> {
        if let Some(addrs) = self.nodes.get(name) {
            return Some(addrs);
        }
        let label = name.strip_suffix('.')?;
        if !self.proxied || label.is_empty() || label.contains('.') {
            return None;
        }
        let suffix = self.suffix.as_deref()?;
        let mut full = String::with_capacity(label.len() + 1 + suffix.len());
        full.push_str(label);
        full.push('.');
        full.push_str(suffix);
        self.nodes.get(&full).map(Vec::as_slice)
    }

    /// The name that owns an address (nodes before ExtraRecords).
    pub(crate) fn name_for_addr(&self, addr: IpAddr) -> Option<&str> {
        self.reverse.get(&addr).map(String::as_str)
    }

    /// Whether two configurations forward the same names to the same places (so cached
    /// upstream answers stay valid across the change).
    pub(crate) fn same_forwarding(&self, other: &Self) -> bool {
        self.routes == other.routes
            && self.default_upstreams() == other.default_upstreams()
            && self.zones == other.zones
    }
}

/// The served addresses of every host, under the AAAA rule of protocol.md 8.3: an IPv6-only
/// self node sees only IPv6 addresses; otherwise a host that has IPv4 is served without its
/// IPv6 addresses unless the self node has `magicdns-aaaa`.
fn node_table(
    self_name: Option<&str>,
    hosts: &[Host],
    magicdns_aaaa: bool,
) -> HashMap<String, Vec<IpAddr>> {
    let self_v6_only = self_name
        .and_then(|me| {
            hosts
                .iter()
                .find(|h| normalize_name(&h.fqdn).as_deref() == Some(me))
        })
        .is_some_and(|h| {
            h.addrs.iter().any(IpAddr::is_ipv6) && !h.addrs.iter().any(IpAddr::is_ipv4)
        });
    let mut nodes = HashMap::new();
    for host in hosts {
        if host.addrs.is_empty() {
            continue;
        }
        let Some(name) = normalize_name(&host.fqdn) else {
            debug!(name = %host.fqdn, "magicdns: skipping a host with an invalid name");
            continue;
        };
        let has4 = host.addrs.iter().any(IpAddr::is_ipv4);
        let served: Vec<IpAddr> = host
            .addrs
            .iter()
            .copied()
            .filter(|a| {
                if self_v6_only {
                    a.is_ipv6()
                } else {
                    !(a.is_ipv6() && has4 && !magicdns_aaaa)
                }
            })
            .collect();
        if let Entry::Vacant(slot) = nodes.entry(name) {
            slot.insert(served);
        }
    }
    nodes
}

/// One ExtraRecord as a canonical name and an address: types `""`, `A` and `AAAA` (the
/// value's family decides, as in Go), values that parse as IP addresses; the rest is skipped.
fn extra_entry(rec: &tailcfg::DnsRecord) -> Option<(String, IpAddr)> {
    if !matches!(rec.r#type.as_str(), "" | "A" | "AAAA") {
        debug!(name = %rec.name, r#type = %rec.r#type, "magicdns: ignoring an ExtraRecord type");
        return None;
    }
    let Ok(addr) = rec.value.trim().parse::<IpAddr>() else {
        debug!(name = %rec.name, "magicdns: ignoring an ExtraRecord with a bad address");
        return None;
    };
    let Some(name) = normalize_name(&rec.name) else {
        debug!(name = %rec.name, "magicdns: ignoring an ExtraRecord with a bad name");
        return None;
    };
    Some((name, addr))
}

fn parse_resolvers(resolvers: &[tailcfg::Resolver]) -> Vec<Upstream> {
    let mut out: Vec<Upstream> = Vec::new();
    for r in resolvers {
        match parse_upstream(&r.addr) {
            Some(u) if !out.contains(&u) => out.push(u),
            Some(_) => {}
            None => debug!(addr = %r.addr, "magicdns: skipping an unusable resolver address"),
        }
    }
    out
}

/// Parses a `tailcfg::Resolver::addr`: a plain IP (port 53), `IP:port`, `[v6]:port`, or an
/// `https://` / `http://` URL (DNS over HTTPS, or over HTTP to an exit node's peer API).
/// Anything else, or port 0, is `None`.
pub fn parse_upstream(addr: &str) -> Option<Upstream> {
    let addr = addr.trim();
    let lower = addr.get(..8).unwrap_or(addr).to_ascii_lowercase();
    for scheme in ["https://", "http://"] {
        if lower.starts_with(scheme) {
            let rest = addr.get(scheme.len()..)?;
            if rest.is_empty() || rest.starts_with('/') || rest.chars().any(char::is_whitespace) {
                return None;
            }
            return Some(Upstream::Https(addr.to_owned()));
        }
    }
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Some(Upstream::Plain(SocketAddr::new(ip, 53)));
    }
    if let Some(inner) = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        let ip = inner.parse::<std::net::Ipv6Addr>().ok()?;
        return Some(Upstream::Plain(SocketAddr::new(IpAddr::V6(ip), 53)));
    }
    let sa = addr.parse::<SocketAddr>().ok()?;
    (sa.port() != 0).then_some(Upstream::Plain(sa))
}

/// A host name from configuration in canonical form, or `None` (empty, the root, or invalid).
pub(crate) fn normalize_name(name: &str) -> Option<String> {
    normalize_suffix(name).filter(|n| n != ".")
}

/// A name or route suffix from configuration in canonical form; `.` (or an empty string) is
/// the root. Labels must be 1 to 63 bytes of printable ASCII other than `\`; the whole name
/// must fit the wire.
pub(crate) fn normalize_suffix(name: &str) -> Option<String> {
    let name = name.trim();
    let body = name.strip_suffix('.').unwrap_or(name);
    if body.is_empty() {
        return Some(".".to_owned());
    }
    let mut out = String::with_capacity(body.len() + 1);
    let mut wire = 1usize;
    for label in body.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL {
            return None;
        }
        if !label.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
            return None;
        }
        wire = wire.checked_add(label.len())?.checked_add(1)?;
        out.push_str(&label.to_ascii_lowercase());
        out.push('.');
    }
    (wire <= MAX_WIRE_NAME).then_some(out)
}

/// A name read from the wire (its labels) in canonical form: lowercase, with `.`, `\` and
/// non-printable bytes written as `\DDD`.
pub(crate) fn wire_name<'a, I>(labels: I) -> String
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut out = String::new();
    for label in labels {
        for &b in label {
            let b = b.to_ascii_lowercase();
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                out.push(char::from(b));
            } else {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\{b:03}");
            }
        }
        out.push('.');
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// Whether canonical `name` is `zone` or below it (label-exact).
pub(crate) fn in_zone(name: &str, zone: &str) -> bool {
    if zone == "." || name == zone {
        return true;
    }
    let Some(cut) = name.len().checked_sub(zone.len() + 1) else {
        return false;
    };
    name.ends_with(zone) && name.as_bytes().get(cut) == Some(&b'.')
}

/// The address a reverse-lookup name stands for: `d.c.b.a.in-addr.arpa.` (four decimal
/// labels without leading zeros) or 32 nibble labels under `ip6.arpa.`.
pub(crate) fn reverse_name_addr(name: &str) -> Option<IpAddr> {
    if let Some(body) = name.strip_suffix(".in-addr.arpa.") {
        let mut octets = [0u8; 4];
        let mut labels = body.split('.');
        for slot in octets.iter_mut().rev() {
            let label = labels.next()?;
            if label.is_empty()
                || label.len() > 3
                || (label.len() > 1 && label.starts_with('0'))
                || !label.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            *slot = label.parse().ok()?;
        }
        if labels.next().is_some() {
            return None;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let body = name.strip_suffix(".ip6.arpa.")?;
    let mut bytes = [0u8; 16];
    let mut count = 0usize;
    for (i, label) in body.split('.').enumerate() {
        let &[c] = label.as_bytes() else {
            return None;
        };
        let nibble = char::from(c).to_digit(16)?;
        // Labels run from the least significant nibble: label i is nibble 31 - i.
        let pos = 31usize.checked_sub(i)?;
        let byte = bytes.get_mut(pos / 2)?;
        let nibble = u8::try_from(nibble).ok()?;
        *byte |= if pos % 2 == 0 { nibble << 4 } else { nibble };
        count = i + 1;
    }
    (count == 32).then_some(IpAddr::V6(bytes.into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::collections::BTreeMap;
    use std::net::{Ipv6Addr, SocketAddrV6};
    use tailcfg::{DnsRecord, Resolver};

    fn resolver(addr: &str) -> Resolver {
        let mut r = Resolver::default();
        r.addr = addr.to_owned();
        r
    }

    fn plain(s: &str) -> Upstream {
        Upstream::Plain(s.parse().unwrap())
    }

    fn record(name: &str, ty: &str, value: &str) -> DnsRecord {
        let mut r = DnsRecord::default();
        r.name = name.to_owned();
        r.r#type = ty.to_owned();
        r.value = value.to_owned();
        r
    }

    fn hosts() -> Vec<Host> {
        vec![
            Host {
                fqdn: "GW.tail1234.ts.net".to_owned(),
                addrs: vec![
                    "100.64.0.1".parse().unwrap(),
                    "fd7a:115c:a1e0::1".parse().unwrap(),
                ],
            },
            Host {
                fqdn: "peer.tail1234.ts.net.".to_owned(),
                addrs: vec![
                    "100.64.0.2".parse().unwrap(),
                    "fd7a:115c:a1e0::2".parse().unwrap(),
                ],
            },
            Host {
                fqdn: "v6only.tail1234.ts.net.".to_owned(),
                addrs: vec!["fd7a:115c:a1e0::3".parse().unwrap()],
            },
        ]
    }

    fn on() -> ConfigOptions {
        ConfigOptions {
            accept_dns: true,
            magicdns_aaaa: false,
        }
    }

    #[test]
    fn upstream_addresses() {
        assert_eq!(parse_upstream("1.1.1.1"), Some(plain("1.1.1.1:53")));
        assert_eq!(
            parse_upstream(" 1.1.1.1:5353 "),
            Some(plain("1.1.1.1:5353"))
        );
        assert_eq!(
            parse_upstream("2606:4700::1111"),
            Some(plain("[2606:4700::1111]:53"))
        );
        assert_eq!(
            parse_upstream("[2606:4700::1111]"),
            Some(plain("[2606:4700::1111]:53"))
        );
        assert_eq!(
            parse_upstream("[2606:4700::1111]:853"),
            Some(Upstream::Plain(SocketAddr::V6(SocketAddrV6::new(
                "2606:4700::1111".parse().unwrap(),
                853,
                0,
                0
            ))))
        );
        assert_eq!(
            parse_upstream("https://dns.google/dns-query"),
            Some(Upstream::Https("https://dns.google/dns-query".to_owned()))
        );
        assert_eq!(
            parse_upstream("HTTP://100.64.0.9:41641/dns-query"),
            Some(Upstream::Https(
                "HTTP://100.64.0.9:41641/dns-query".to_owned()
            ))
        );
        for bad in [
            "",
            "dns.google",
            "1.1.1.1:0",
            "1.1.1.1:99999",
            "tls://1.1.1.1",
            "https://",
            "http:///x",
            "[::1",
            "::1]:53",
            "1.1.1",
            "\u{0}\u{ff}",
            "https:",
        ] {
            assert_eq!(parse_upstream(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_normalize() {
        assert_eq!(
            normalize_name("GW.Tail1234.TS.net").as_deref(),
            Some("gw.tail1234.ts.net.")
        );
        assert_eq!(normalize_name("a.b.").as_deref(), Some("a.b."));
        assert_eq!(normalize_suffix(".").as_deref(), Some("."));
        assert_eq!(normalize_name("."), None);
        assert_eq!(normalize_name("a..b"), None);
        assert_eq!(normalize_name("a b.c"), None);
        assert_eq!(normalize_name(&"x".repeat(64)), None);
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(normalize_name(&long), None); // 4 * 64 + 1 = 257 > 255
        assert!(in_zone("a.b.c.", "b.c."));
        assert!(in_zone("b.c.", "b.c."));
        assert!(!in_zone("ab.c.", "b.c."));
        assert!(in_zone("x.", "."));
        assert!(!in_zone("c.", "b.c."));
        assert_eq!(
            wire_name([&b"A\\.b"[..], &b"\x00"[..]]),
            "a\\092\\046b.\\000.".to_owned()
        );
        assert_eq!(wire_name(std::iter::empty::<&[u8]>()), ".");
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name_addr("2.0.64.100.in-addr.arpa."),
            Some("100.64.0.2".parse().unwrap())
        );
        for bad in [
            "0.64.100.in-addr.arpa.",
            "1.2.0.64.100.in-addr.arpa.",
            "02.0.64.100.in-addr.arpa.",
            "256.0.64.100.in-addr.arpa.",
            "a.0.64.100.in-addr.arpa.",
            "in-addr.arpa.",
            "1.0.0.ip6.arpa.",
        ] {
            assert_eq!(reverse_name_addr(bad), None, "{bad}");
        }
        let v6: Ipv6Addr = "fd7a:115c:a1e0::53".parse().unwrap();
        let name = nibbles(v6);
        assert_eq!(reverse_name_addr(&name), Some(IpAddr::V6(v6)));
        assert_eq!(reverse_name_addr(&name.replacen('3', "g", 1)), None);
        assert_eq!(reverse_name_addr(&name.replacen('3', "33", 1)), None);
    }

    pub(crate) fn nibbles(v6: Ipv6Addr) -> String {
        let mut s = String::new();
        for b in v6.octets().iter().rev() {
            s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
        }
        s + "ip6.arpa."
    }

    #[test]
    fn zones_routes_and_defaults() {
        let mut dns = DnsConfig::default();
        dns.proxied = true;
        dns.resolvers = vec![
            resolver("1.1.1.1"),
            resolver("garbage"),
            resolver("1.1.1.1:53"),
        ];
        dns.fallback_resolvers = vec![resolver("9.9.9.9")];
        dns.domains = vec!["tail1234.ts.net".to_owned(), "Corp.Example".to_owned()];
        dns.routes = BTreeMap::from([
            ("corp.example".to_owned(), Some(vec![resolver("10.0.0.53")])),
            (
                "inner.corp.example.".to_owned(),
                Some(vec![resolver("10.0.1.53:5353")]),
            ),
            ("local.example".to_owned(), Some(vec![])),
            ("null.example".to_owned(), None),
            ("broken.example".to_owned(), Some(vec![resolver("nope")])),
            ("bad..suffix".to_owned(), Some(vec![resolver("10.0.0.1")])),
        ]);
        dns.extra_records = vec![
            record("db.corp.example", "A", "10.1.1.1"),
            record("Printer.Home.Arpa", "", "192.168.1.9"),
            record("v6.home.arpa", "AAAA", "2001:db8::9"),
            record("txt.home.arpa", "TXT", "hello"),
            record("bad.home.arpa", "A", "not-an-ip"),
        ];
        let cfg = ResolverConfig::new(&dns, "gw.tail1234.ts.net.", &hosts(), on());
        assert_eq!(cfg.magic_suffix(), Some("tail1234.ts.net."));
        let zones = cfg.authoritative_zones();
        assert!(zones.contains(&"tail1234.ts.net.".to_owned()));
        for octet in 64..=127 {
            assert!(zones.contains(&format!("{octet}.100.in-addr.arpa.")));
        }
        assert!(!zones.contains(&"63.100.in-addr.arpa.".to_owned()));
        assert!(!zones.contains(&"128.100.in-addr.arpa.".to_owned()));
        assert!(zones.contains(&V6_REVERSE_ZONE.to_owned()));
        assert!(zones.contains(&"local.example.".to_owned()));
        assert!(zones.contains(&"null.example.".to_owned()));
        // Uncovered ExtraRecords get their own zone; covered ones and skipped ones do not.
        assert!(zones.contains(&"printer.home.arpa.".to_owned()));
        assert!(zones.contains(&"v6.home.arpa.".to_owned()));
        assert!(!zones.contains(&"db.corp.example.".to_owned()));
        assert!(!zones.contains(&"txt.home.arpa.".to_owned()));
        assert!(!zones.contains(&"bad.home.arpa.".to_owned()));

        assert_eq!(cfg.default_upstreams(), &[plain("1.1.1.1:53")]);
        assert_eq!(cfg.upstreams_for("www.example.com"), &[plain("1.1.1.1:53")]);
        assert_eq!(
            cfg.upstreams_for("x.corp.example."),
            &[plain("10.0.0.53:53")]
        );
        assert_eq!(cfg.upstreams_for("CORP.example."), &[plain("10.0.0.53:53")]);
        assert_eq!(
            cfg.upstreams_for("a.inner.corp.example."),
            &[plain("10.0.1.53:5353")]
        );
        // A route whose resolvers are all unusable is as if absent.
        assert_eq!(
            cfg.upstreams_for("x.broken.example."),
            &[plain("1.1.1.1:53")]
        );
        assert!(cfg.upstreams_for("x.local.example.").is_empty());
        assert!(cfg.upstreams_for("peer.tail1234.ts.net.").is_empty());
        assert_eq!(cfg.routes().len(), 2);
        assert_eq!(
            cfg.search_domains(),
            &["tail1234.ts.net.".to_owned(), "corp.example.".to_owned()]
        );
        assert_eq!(
            cfg.extra_record("printer.home.arpa."),
            Some(&["192.168.1.9".parse().unwrap()][..])
        );
        assert_eq!(
            cfg.extra_record("v6.home.arpa."),
            Some(&["2001:db8::9".parse().unwrap()][..])
        );
        assert_eq!(cfg.extra_record("txt.home.arpa."), None);
        assert_eq!(
            cfg.name_for_addr("10.1.1.1".parse().unwrap()),
            Some("db.corp.example.")
        );
    }

    #[test]
    fn default_route_precedence() {
        let mut dns = DnsConfig::default();
        dns.fallback_resolvers = vec![resolver("9.9.9.9")];
        let mut cfg = ResolverConfig::new(&dns, "gw.tail1234.ts.net.", &[], on());
        assert_eq!(cfg.default_upstreams(), &[plain("9.9.9.9:53")]);
        cfg.set_base_upstreams(vec![plain("192.168.1.1:53")]);
        assert_eq!(cfg.default_upstreams(), &[plain("192.168.1.1:53")]);
        assert_eq!(cfg.base_upstreams(), &[plain("192.168.1.1:53")]);
        dns.resolvers = vec![resolver("8.8.8.8")];
        let cfg = ResolverConfig::new(&dns, "gw.tail1234.ts.net.", &[], on())
            .with_base_upstreams(vec![plain("192.168.1.1:53")]);
        assert_eq!(cfg.default_upstreams(), &[plain("8.8.8.8:53")]);
    }

    #[test]
    fn accept_dns_off_keeps_only_hosts() {
        let mut dns = DnsConfig::default();
        dns.proxied = true;
        dns.resolvers = vec![resolver("8.8.8.8")];
        dns.domains = vec!["tail1234.ts.net".to_owned()];
        dns.routes =
            BTreeMap::from([("corp.example".to_owned(), Some(vec![resolver("10.0.0.53")]))]);
        dns.extra_records = vec![record("printer.home.arpa", "", "192.168.1.9")];
        let cfg = ResolverConfig::new(
            &dns,
            "gw.tail1234.ts.net.",
            &hosts(),
            ConfigOptions::default(),
        )
        .with_base_upstreams(vec![plain("192.168.1.1:53")]);
        assert!(cfg.authoritative_zones().is_empty());
        assert!(cfg.routes().is_empty());
        assert!(cfg.search_domains().is_empty());
        assert_eq!(
            cfg.upstreams_for("x.corp.example."),
            &[plain("192.168.1.1:53")]
        );
        assert!(cfg.extra_record("printer.home.arpa.").is_some());
        assert!(cfg.node("peer.tail1234.ts.net.").is_some());
    }

    #[test]
    fn not_proxied_has_no_zones_and_no_short_names() {
        let mut dns = DnsConfig::default();
        let cfg = ResolverConfig::new(&dns, "gw.tail1234.ts.net.", &hosts(), on());
        assert!(cfg.authoritative_zones().is_empty());
        assert!(cfg.node("peer.tail1234.ts.net.").is_some());
        assert!(cfg.node("peer.").is_none());
        dns.proxied = true;
        let cfg = ResolverConfig::new(&dns, "gw.tail1234.ts.net.", &hosts(), on());
        assert!(cfg.node("peer.").is_some());
        assert!(cfg.node("peer.tail1234.").is_none());
        assert!(cfg.node(".").is_none());
    }

    #[test]
    fn aaaa_rule() {
        let dns = DnsConfig::default();
        let v4 = |s: &str| -> IpAddr { s.parse().unwrap() };
        // Self has IPv4, no capability: peers with IPv4 lose their IPv6; IPv6-only peers keep it.
        let cfg = ResolverConfig::new(&dns, "gw.tail1234.ts.net.", &hosts(), on());
        assert_eq!(
            cfg.node("peer.tail1234.ts.net."),
            Some(&[v4("100.64.0.2")][..])
        );
        assert_eq!(
            cfg.node("v6only.tail1234.ts.net."),
            Some(&[v4("fd7a:115c:a1e0::3")][..])
        );
        // The reverse map follows what is served.
        assert_eq!(cfg.name_for_addr(v4("fd7a:115c:a1e0::2")), None);
        assert_eq!(
            cfg.name_for_addr(v4("100.64.0.2")),
            Some("peer.tail1234.ts.net.")
        );
        // With magicdns-aaaa every address is served.
        let opts = ConfigOptions {
            magicdns_aaaa: true,
            ..on()
        };
        let cfg = ResolverConfig::new(&dns, "gw.tail1234.ts.net.", &hosts(), opts);
        assert_eq!(
            cfg.node("peer.tail1234.ts.net."),
            Some(&[v4("100.64.0.2"), v4("fd7a:115c:a1e0::2")][..])
        );
        // An IPv6-only self node sees only IPv6 addresses.
        let mut hs = hosts();
        hs[0].addrs = vec![v4("fd7a:115c:a1e0::1")];
        hs.push(Host {
            fqdn: "v4only.tail1234.ts.net.".to_owned(),
            addrs: vec![v4("100.64.0.4")],
        });
        let cfg = ResolverConfig::new(&dns, "gw.tail1234.ts.net.", &hs, on());
        assert_eq!(
            cfg.node("peer.tail1234.ts.net."),
            Some(&[v4("fd7a:115c:a1e0::2")][..])
        );
        assert_eq!(cfg.node("v4only.tail1234.ts.net."), Some(&[][..]));
    }

    #[test]
    fn duplicates_and_bad_hosts() {
        let dns = DnsConfig::default();
        let hs = vec![
            Host {
                fqdn: "a.tail1234.ts.net.".to_owned(),
                addrs: vec!["100.64.0.7".parse().unwrap()],
            },
            Host {
                fqdn: "A.tail1234.ts.net".to_owned(),
                addrs: vec!["100.64.0.8".parse().unwrap()],
            },
            Host {
                fqdn: "b.tail1234.ts.net.".to_owned(),
                addrs: vec!["100.64.0.7".parse().unwrap()],
            },
            Host {
                fqdn: "bad name.ts.net".to_owned(),
                addrs: vec!["100.64.0.9".parse().unwrap()],
            },
            Host {
                fqdn: "noaddr.tail1234.ts.net".to_owned(),
                addrs: vec![],
            },
        ];
        let cfg = ResolverConfig::new(&dns, "", &hs, on());
        assert_eq!(cfg.magic_suffix(), None);
        assert_eq!(
            cfg.node("a.tail1234.ts.net."),
            Some(&["100.64.0.7".parse().unwrap()][..])
        );
        assert_eq!(
            cfg.name_for_addr("100.64.0.7".parse().unwrap()),
            Some("a.tail1234.ts.net.")
        );
        assert_eq!(cfg.name_for_addr("100.64.0.9".parse().unwrap()), None);
        assert_eq!(cfg.node("noaddr.tail1234.ts.net."), None);
        // A bare self name has no suffix.
        let cfg = ResolverConfig::new(&dns, "gw", &hs, on());
        assert_eq!(cfg.magic_suffix(), None);
    }

    #[test]
    fn forwarding_comparison() {
        let mut dns = DnsConfig::default();
        dns.resolvers = vec![resolver("8.8.8.8")];
        let a = ResolverConfig::new(&dns, "gw.tail1234.ts.net.", &hosts(), on());
        let b = ResolverConfig::new(&dns, "gw.tail1234.ts.net.", &[], on());
        assert!(a.same_forwarding(&b));
        let c = ResolverConfig::new(&DnsConfig::default(), "gw.tail1234.ts.net.", &[], on());
        assert!(!a.same_forwarding(&c));
    }
}

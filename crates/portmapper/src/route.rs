//! The default IPv4 gateway, from the kernel's `/proc/net/route`.
//!
//! Each line after the header is `Iface Destination Gateway Flags RefCnt Use Metric Mask MTU
//! Window IRTT`, addresses in hex as the kernel holds them in memory (network byte order read
//! as a native integer: `0101A8C0` is 192.168.1.1 on a little-endian machine). The default
//! gateway is the up, gateway-flagged route with destination and mask 0 and the lowest
//! metric.

use std::net::Ipv4Addr;

/// Where the kernel lists IPv4 routes.
pub const PROC_NET_ROUTE: &str = "/proc/net/route";

const RTF_UP: u16 = 0x1;
const RTF_GATEWAY: u16 = 0x2;

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Interface name.
    pub iface: String,
    /// Destination network.
    pub destination: Ipv4Addr,
    /// Next hop (0.0.0.0 for an on-link route).
    pub gateway: Ipv4Addr,
    /// `RTF_*` flags.
    pub flags: u16,
    /// Metric.
    pub metric: u32,
    /// Destination mask.
    pub mask: Ipv4Addr,
}

/// Why the table could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("/proc/net/route line {line}: {what}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub what: &'static str,
}

fn hex_addr(s: &str) -> Option<Ipv4Addr> {
    if s.len() != 8 {
        return None;
    }
    let v = u32::from_str_radix(s, 16).ok()?;
    Some(Ipv4Addr::from(v.to_ne_bytes()))
}

/// Parses the table. The header line is skipped; blank lines are ignored.
pub fn parse_routes(text: &str) -> Result<Vec<Route>, ParseError> {
    let mut routes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let err = |what| ParseError { line: n, what };
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() || (i == 0 && f.first() == Some(&"Iface")) {
            continue;
        }
        if f.len() < 8 {
            return Err(err("fewer than 8 fields"));
        }
        let field = |k: usize| f.get(k).copied().unwrap_or("");
        routes.push(Route {
            iface: field(0).to_string(),
            destination: hex_addr(field(1)).ok_or(err("bad destination"))?,
            gateway: hex_addr(field(2)).ok_or(err("bad gateway"))?,
            flags: u16::from_str_radix(field(3), 16).map_err(|_| err("bad flags"))?,
            metric: field(6).parse().map_err(|_| err("bad metric"))?,
            mask: hex_addr(field(7)).ok_or(err("bad mask"))?,
        });
    }
    Ok(routes)
}

/// The default gateway of `routes`: (interface, next hop).
pub fn default_gateway(routes: &[Route]) -> Option<(&str, Ipv4Addr)> {
    routes
        .iter()
        .filter(|r| {
            r.destination.is_unspecified()
                && r.mask.is_unspecified()
                && r.flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY
                && !r.gateway.is_unspecified()
        })
        .min_by_key(|r| r.metric)
        .map(|r| (r.iface.as_str(), r.gateway))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The byte order is the machine's; these vectors are little-endian (x86, most ARM).
    #[cfg(target_endian = "little")]
    const TABLE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth1\t00000000\t014DA8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t00000000\tFE10D50A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
eth1\t004DA8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
wg0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n";

    #[test]
    #[cfg(target_endian = "little")]
    fn finds_the_lowest_metric_default_route() {
        let routes = parse_routes(TABLE).unwrap();
        assert_eq!(routes.len(), 4);
        assert_eq!(routes[2].destination, Ipv4Addr::new(192, 168, 77, 0));
        assert_eq!(routes[2].mask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            default_gateway(&routes),
            Some(("eth1", Ipv4Addr::new(192, 168, 77, 1)))
        );
        // Without it, the metric-100 one; a gatewayless default (wg0) never counts.
        assert_eq!(
            default_gateway(&routes[1..]),
            Some(("eth0", Ipv4Addr::new(10, 213, 16, 254)))
        );
        assert_eq!(default_gateway(&routes[2..]), None);
    }

    #[test]
    fn malformed_tables() {
        assert_eq!(parse_routes("").unwrap(), vec![]);
        assert_eq!(parse_routes("Iface x\n\n").unwrap(), vec![]);
        for bad in [
            "eth0 00000000 0101A8C0 0003 0 0 0",
            "eth0 0000000 0101A8C0 0003 0 0 0 00000000",
            "eth0 00000000 0101A8CX 0003 0 0 0 00000000",
            "eth0 00000000 0101A8C0 zz 0 0 0 00000000",
            "eth0 00000000 0101A8C0 0003 0 0 -1 00000000",
            "eth0 00000000 0101A8C0 0003 0 0 0 0000000000",
        ] {
            assert!(parse_routes(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_routes("Iface\nx y").unwrap_err(),
            ParseError {
                line: 2,
                what: "fewer than 8 fields"
            }
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn reads_this_machine() {
        let text = std::fs::read_to_string(PROC_NET_ROUTE).unwrap();
        parse_routes(&text).unwrap();
    }
}

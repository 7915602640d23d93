//! A zero-copy summary of an IPv4 or IPv6 packet: just what the filter decides on.
//!
//! [`parse`] reads a borrowed buffer and never allocates or panics. It follows Go's
//! `net/packet.Parsed.Decode` (v1.98.5): anything it cannot read, or that looks like a
//! fragment-based evasion, gets the protocol [`Proto::UNKNOWN`], which the filter drops in both
//! directions.
//!
//! What it reads, as Go does:
//!
//! - IPv4: protocol, addresses, the fragment fields. A first fragment (offset 0) must hold a
//!   whole transport header for TCP (20 bytes), UDP (8), SCTP (12), ICMPv4 (4), IGMP (8) and
//!   TSMP (7, and TSMP may not be fragmented at all). A later fragment is
//!   [`Proto::FRAGMENT`] unless its offset is below 80 bytes (10 blocks), which could overlap a
//!   transport header (RFC 1858): then it is unknown.
//! - IPv6: the fixed header only. Extension headers are **not** walked: the first next-header
//!   value is the protocol, so hop-by-hop options (0) are unknown, and a fragment header (44),
//!   routing (43) or destination options (60) is an "other protocol" that only a rule listing
//!   that protocol number with all ports can admit. Go does exactly this (it says IPv6 should
//!   not be fragmented); see [`Parsed::ipv6_next_header`].
//! - Any other protocol keeps its number with ports 0.
//!
//! Where we are stricter than Go, on packets no real stack sends: an IPv4 header length below
//! 20 bytes is unknown (Go would read the transport header from inside the IP header), and
//! transport headers must lie within the IP total length, not just within the buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP protocol number, with Go's two special values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Proto(pub u8);

impl Proto {
    /// Not parseable, truncated, or suspicious; also IPv6 hop-by-hop (0), as in Go.
    pub const UNKNOWN: Proto = Proto(0);
    /// ICMP for IPv4.
    pub const ICMPV4: Proto = Proto(1);
    /// IGMP.
    pub const IGMP: Proto = Proto(2);
    /// TCP.
    pub const TCP: Proto = Proto(6);
    /// UDP.
    pub const UDP: Proto = Proto(17);
    /// ICMP for IPv6.
    pub const ICMPV6: Proto = Proto(58);
    /// TSMP, Tailscale's in-band message protocol between nodes.
    pub const TSMP: Proto = Proto(99);
    /// SCTP.
    pub const SCTP: Proto = Proto(132);
    /// An IPv4 fragment other than the first (Go steals the reserved 255 for it).
    pub const FRAGMENT: Proto = Proto(255);
}

/// Where a packet stands in IPv4 fragmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented (or IPv6, whose fragments are not recognised).
    None,
    /// The first fragment: offset 0 with more fragments to come.
    First,
    /// A later fragment: no transport header.
    Later,
}

/// TCP flag bits.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

const IP4_HEADER: usize = 20;
const IP6_HEADER: usize = 40;
/// RFC 1858: longest IPv4 header plus a basic TCP header, in 8-byte fragment blocks.
const MIN_FRAG_BLOCKS: u16 = (60 + 20) / 8;
const TSMP_MIN: usize = 7;

/// The summary of one packet, borrowing its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    buf: &'a [u8],
    version: u8,
    proto: Proto,
    src: u128,
    dst: u128,
    src_port: u16,
    dst_port: u16,
    tcp_flags: u8,
    sub_ofs: usize,
    end: usize,
    fragment: Fragment,
    ipv6_next: u8,
}

/// Parses the summary of `buf`; never fails or panics. An unreadable packet has version 0 or
/// protocol [`Proto::UNKNOWN`].
#[inline]
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let mut p = Parsed {
        buf,
        version: 0,
        proto: Proto::UNKNOWN,
        src: 0,
        dst: 0,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        sub_ofs: 0,
        end: 0,
        fragment: Fragment::None,
        ipv6_next: 0,
    };
    match buf.first().map(|b| b >> 4) {
        Some(4) => p.decode4(),
        Some(6) => p.decode6(),
        _ => {}
    }
    p
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

#[inline]
fn addr_bytes<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = b.get(at..at + N) {
        out.copy_from_slice(s);
    }
    out
}

impl<'a> Parsed<'a> {
    fn decode4(&mut self) {
        let b = self.buf;
        if b.len() < IP4_HEADER {
            return;
        }
        self.version = 4;
        self.src = u128::from(u32::from_be_bytes(addr_bytes(b, 12)));
        self.dst = u128::from(u32::from_be_bytes(addr_bytes(b, 16)));
        let total = usize::from(be16(b, 2));
        let ihl = usize::from(b[0] & 0x0f) * 4;
        if b.len() < total || ihl < IP4_HEADER || ihl > total {
            return;
        }
        self.sub_ofs = ihl;
        self.end = total;
        let proto = Proto(b[9]);
        let frag = be16(b, 6);
        let more = frag & 0x2000 != 0;
        let offset = frag & 0x1fff;
        if offset != 0 {
            self.fragment = Fragment::Later;
            if offset >= MIN_FRAG_BLOCKS {
                self.proto = Proto::FRAGMENT;
            }
            return;
        }
        if more {
            self.fragment = Fragment::First;
        }
        let sub = &b[ihl..total];
        let need = match proto {
            Proto::ICMPV4 => 4,
            Proto::IGMP => 8,
            Proto::TCP => 20,
            Proto::UDP => 8,
            Proto::SCTP => 12,
            Proto::TSMP if more => return,
            Proto::TSMP => TSMP_MIN,
            Proto::FRAGMENT => return,
            _ => 0,
        };
        self.set_transport(proto, sub, need);
    }

    fn decode6(&mut self) {
        let b = self.buf;
        if b.len() < IP6_HEADER {
            return;
        }
        self.version = 6;
        self.src = u128::from_be_bytes(addr_bytes(b, 8));
        self.dst = u128::from_be_bytes(addr_bytes(b, 24));
        let total = usize::from(be16(b, 4)) + IP6_HEADER;
        if b.len() < total {
            return;
        }
        self.sub_ofs = IP6_HEADER;
        self.end = total;
        let proto = Proto(b[6]);
        self.ipv6_next = proto.0;
        let sub = &b[IP6_HEADER..total];
        let need = match proto {
            Proto::ICMPV6 => 4,
            Proto::TCP => 20,
            Proto::UDP => 8,
            Proto::SCTP => 12,
            Proto::TSMP => TSMP_MIN,
            Proto::FRAGMENT => return,
            _ => 0,
        };
        self.set_transport(proto, sub, need);
    }

    fn set_transport(&mut self, proto: Proto, sub: &[u8], need: usize) {
        if sub.len() < need {
            return;
        }
        match proto {
            Proto::TCP => {
                self.src_port = be16(sub, 0);
                self.dst_port = be16(sub, 2);
                self.tcp_flags = sub.get(13).copied().unwrap_or(0);
            }
            Proto::UDP | Proto::SCTP => {
                self.src_port = be16(sub, 0);
                self.dst_port = be16(sub, 2);
            }
            _ => {}
        }
        self.proto = proto;
    }

    /// The whole buffer this summary reads.
    #[inline]
    pub fn buffer(&self) -> &'a [u8] {
        self.buf
    }

    /// 4 or 6, or 0 when the buffer is not a readable IP header.
    #[inline]
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The protocol; [`Proto::UNKNOWN`] for anything unreadable or suspicious,
    /// [`Proto::FRAGMENT`] for a later IPv4 fragment.
    #[inline]
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// The source address (unspecified when the version is 0).
    #[inline]
    pub fn src(&self) -> IpAddr {
        self.addr(self.src)
    }

    /// The destination address (unspecified when the version is 0).
    #[inline]
    pub fn dst(&self) -> IpAddr {
        self.addr(self.dst)
    }

    fn addr(&self, raw: u128) -> IpAddr {
        if self.version == 6 {
            IpAddr::V6(Ipv6Addr::from(raw))
        } else {
            IpAddr::V4(Ipv4Addr::from(raw as u32))
        }
    }

    /// Raw source address: an IPv4 address in the low 32 bits.
    #[inline]
    pub(crate) fn src_raw(&self) -> u128 {
        self.src
    }

    /// Raw destination address: an IPv4 address in the low 32 bits.
    #[inline]
    pub(crate) fn dst_raw(&self) -> u128 {
        self.dst
    }

    /// TCP, UDP or SCTP source port; 0 otherwise.
    #[inline]
    pub fn src_port(&self) -> u16 {
        self.src_port
    }

    /// TCP, UDP or SCTP destination port; 0 otherwise.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        self.dst_port
    }

    /// The TCP flags byte (see [`tcp_flags`]); 0 for other protocols.
    #[inline]
    pub fn tcp_flags(&self) -> u8 {
        self.tcp_flags
    }

    /// A TCP SYN without ACK: the first packet of a new connection.
    #[inline]
    pub fn is_tcp_syn(&self) -> bool {
        self.proto == Proto::TCP
            && self.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
    }

    /// ICMP type and code, for ICMPv4 in IPv4 and ICMPv6 in IPv6.
    #[inline]
    pub fn icmp_type_code(&self) -> Option<(u8, u8)> {
        let icmp = match self.version {
            4 => Proto::ICMPV4,
            6 => Proto::ICMPV6,
            _ => return None,
        };
        if self.proto != icmp {
            return None;
        }
        match self.transport() {
            [t, c, ..] => Some((*t, *c)),
            _ => None,
        }
    }

    /// The IP payload: the transport header and its data, within the IP total length.
    #[inline]
    pub fn transport(&self) -> &'a [u8] {
        self.buf.get(self.sub_ofs..self.end).unwrap_or(&[])
    }

    /// IPv4 fragmentation state.
    #[inline]
    pub fn fragment(&self) -> Fragment {
        self.fragment
    }

    /// The first next-header value of an IPv6 packet (0 for IPv4). Extension headers are not
    /// walked, as in Go.
    #[inline]
    pub fn ipv6_next_header(&self) -> u8 {
        self.ipv6_next
    }

    /// Go's `IsEchoResponse`: an echo reply (code 0) with at least 8 bytes of ICMP header.
    #[inline]
    pub fn is_echo_reply(&self) -> bool {
        let want = if self.version == 4 { 0 } else { 129 };
        self.transport().len() >= 8 && self.icmp_type_code() == Some((want, 0))
    }

    /// Go's `IsEchoRequest`: an echo request (code 0) with at least 8 bytes of ICMP header.
    #[inline]
    pub fn is_echo_request(&self) -> bool {
        let want = if self.version == 4 { 8 } else { 128 };
        self.transport().len() >= 8 && self.icmp_type_code() == Some((want, 0))
    }

    /// Go's `IsError`: destination unreachable or time exceeded, with at least 8 bytes of ICMP
    /// header. (IPv6 "packet too big" is not one, as in Go.)
    #[inline]
    pub fn is_icmp_error(&self) -> bool {
        if self.transport().len() < 8 {
            return false;
        }
        match (self.version, self.icmp_type_code()) {
            (4, Some((t, _))) => t == 3 || t == 11,
            (6, Some((t, _))) => t == 1 || t == 3,
            _ => false,
        }
    }

    /// Whether the destination is multicast (224.0.0.0/4, ff00::/8; IPv4-mapped IPv6 addresses
    /// are judged as IPv4, like Go's `netip`).
    #[inline]
    pub(crate) fn dst_is_multicast(&self) -> bool {
        match self.dst_v4ish() {
            Some(a) => a >> 28 == 0xe,
            None => self.dst >> 120 == 0xff,
        }
    }

    /// Whether the destination is link-local unicast (169.254.0.0/16, fe80::/10), except
    /// 169.254.169.254, the cloud metadata and DNS address Go lets through.
    #[inline]
    pub(crate) fn dst_is_blocked_link_local(&self) -> bool {
        match self.dst_v4ish() {
            // Go compares the address as written: a mapped ::ffff:169.254.169.254 is blocked.
            Some(a) => a >> 16 == 0xa9fe && !(self.version == 4 && a == 0xa9fe_a9fe),
            None => self.dst >> 118 == 0x3fa,
        }
    }

    fn dst_v4ish(&self) -> Option<u32> {
        match self.version {
            4 => Some(self.dst as u32),
            6 if self.dst >> 32 == 0xffff => Some(self.dst as u32),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 TCP SYN 100.64.0.2:40000 -> 100.64.0.1:22 (checksums left zero).
    const TCP_SYN: [u8; 40] = [
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 100, 64, 0, 2, 100, 64, 0, 1, //
        0x9c, 0x40, 0, 22, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ];

    #[test]
    fn tcp_syn() {
        let p = parse(&TCP_SYN);
        assert_eq!(p.version(), 4);
        assert_eq!(p.proto(), Proto::TCP);
        assert_eq!(p.src(), "100.64.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(p.dst(), "100.64.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((p.src_port(), p.dst_port()), (40000, 22));
        assert!(p.is_tcp_syn());
        assert_eq!(p.fragment(), Fragment::None);
    }

    #[test]
    fn syn_ack_is_not_syn() {
        let mut b = TCP_SYN;
        b[33] = tcp_flags::SYN | tcp_flags::ACK;
        assert!(!parse(&b).is_tcp_syn());
    }

    #[test]
    fn truncated_is_unknown() {
        for n in 0..TCP_SYN.len() {
            let p = parse(&TCP_SYN[..n]);
            assert_eq!(p.proto(), Proto::UNKNOWN, "len {n}");
        }
    }

    #[test]
    fn short_transport_within_total_length_is_unknown() {
        // total length says 30: only 10 bytes of TCP header, even though the buffer has more.
        let mut b = TCP_SYN;
        b[3] = 30;
        assert_eq!(parse(&b).proto(), Proto::UNKNOWN);
    }

    #[test]
    fn ihl_below_five_is_unknown() {
        let mut b = TCP_SYN;
        b[0] = 0x44;
        assert_eq!(parse(&b).proto(), Proto::UNKNOWN);
    }

    #[test]
    fn fragments() {
        let mut b = TCP_SYN;
        // First fragment, more to come, whole TCP header present: TCP.
        b[6] = 0x20;
        b[7] = 0;
        let p = parse(&b);
        assert_eq!((p.proto(), p.fragment()), (Proto::TCP, Fragment::First));
        // Later fragment at offset 10 blocks (80 bytes): Fragment.
        b[6] = 0x20;
        b[7] = 10;
        let p = parse(&b);
        assert_eq!(
            (p.proto(), p.fragment()),
            (Proto::FRAGMENT, Fragment::Later)
        );
        // Later fragment at offset 9 blocks: could overlap a transport header: unknown.
        b[7] = 9;
        assert_eq!(parse(&b).proto(), Proto::UNKNOWN);
    }

    #[test]
    fn other_protocol_keeps_number() {
        let mut b = TCP_SYN;
        b[9] = 47; // GRE
        let p = parse(&b);
        assert_eq!(p.proto(), Proto(47));
        assert_eq!((p.src_port(), p.dst_port()), (0, 0));
    }

    #[test]
    fn link_local_and_multicast() {
        let mut b = TCP_SYN;
        b[16..20].copy_from_slice(&[169, 254, 169, 254]);
        assert!(!parse(&b).dst_is_blocked_link_local());
        b[16..20].copy_from_slice(&[169, 254, 1, 1]);
        assert!(parse(&b).dst_is_blocked_link_local());
        b[16..20].copy_from_slice(&[239, 1, 2, 3]);
        assert!(parse(&b).dst_is_multicast());
    }
}

//! Tailscale's packet filter, sans-IO: Go's `wgengine/filter` (v1.98.5) decision for decision.
//!
//! When to call what:
//!
//! - On each netmap whose filters changed: [`Rules::compile_named`] with the netmap's named
//!   filters (`PacketFilter` is `"base"`; headscale sends `PacketFilters: {"base": [...]}`) and
//!   the node's local addresses, then [`Filter::set_rules`]. Flows survive a rule change. Until
//!   the first netmap the filter is [`Filter::allow_none`].
//! - Each packet read from the TUN device: [`Filter::record_outbound`] (drops only what Go drops
//!   outbound; records UDP and SCTP flows so replies pass).
//! - Each packet decrypted from a peer: [`Filter::check_inbound`].
//! - [`parse`] alone gives the packet summary (also the fuzzing entry point).
//!
//! Inbound, in Go's order: an empty packet (WireGuard keepalive) passes; under 20 bytes,
//! unknown or unparseable protocol, multicast destination, link-local destination (except
//! 169.254.169.254) are dropped; a later IPv4 fragment passes; the destination must be local;
//! then ICMP echo replies and errors pass, other ICMP needs a rule to that address (any port,
//! any protocol); TCP without SYN passes, a SYN needs a rule; UDP and SCTP pass when they
//! answer a recorded flow, else need a rule; TSMP passes (the caller handles its messages);
//! another protocol needs a rule that lists it with all ports open. Everything else is denied.
//! Outbound, the same pre-checks apply (so multicast, link-local and junk never leave), and
//! everything else passes.
//!
//! Every decision carries its reason and is counted ([`Filter::stats`]) for debug logs.
//! No clock inside: time is the `now` argument. No allocation per packet.

mod flows;
mod packet;
mod rules;

use std::net::IpAddr;
use std::time::Instant;

pub use flows::FlowConfig;
pub use packet::{Fragment, Parsed, Proto, parse, tcp_flags};
pub use rules::{RuleError, Rules};

use flows::{FlowKey, FlowTable};
use rules::{Addr, Family};

/// Why a packet was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AcceptReason {
    /// An empty packet: a WireGuard keepalive.
    Keepalive,
    /// An IPv4 fragment after the first (no transport header to judge).
    Fragment,
    /// An ICMP echo reply or error.
    IcmpReply,
    /// ICMP allowed by a rule towards that address.
    IcmpRule,
    /// A TCP packet without SYN: part of an existing connection.
    TcpNonSyn,
    /// A UDP or SCTP reply to a flow this node started.
    Flow,
    /// TSMP, Tailscale's messages between nodes.
    Tsmp,
    /// A rule allowed it.
    Rule,
    /// An outbound packet.
    Outbound,
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Shorter than an IPv4 header.
    TooShort,
    /// Not IP, truncated, suspicious fragment, or a protocol Go does not parse.
    UnknownProtocol,
    /// Multicast destination.
    Multicast,
    /// Link-local unicast destination.
    LinkLocalUnicast,
    /// The destination is not one of this node's addresses or routes.
    NotLocal,
    /// No rule allows it.
    NoRule,
}

impl AcceptReason {
    const ALL: [AcceptReason; 9] = [
        Self::Keepalive,
        Self::Fragment,
        Self::IcmpReply,
        Self::IcmpRule,
        Self::TcpNonSyn,
        Self::Flow,
        Self::Tsmp,
        Self::Rule,
        Self::Outbound,
    ];

    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keepalive => "keepalive",
            Self::Fragment => "fragment",
            Self::IcmpReply => "icmp response ok",
            Self::IcmpRule => "icmp ok",
            Self::TcpNonSyn => "tcp non-syn",
            Self::Flow => "cached",
            Self::Tsmp => "tsmp ok",
            Self::Rule => "ok",
            Self::Outbound => "ok out",
        }
    }
}

impl DropReason {
    const ALL: [DropReason; 6] = [
        Self::TooShort,
        Self::UnknownProtocol,
        Self::Multicast,
        Self::LinkLocalUnicast,
        Self::NotLocal,
        Self::NoRule,
    ];

    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooShort => "too short",
            Self::UnknownProtocol => "unknown proto",
            Self::Multicast => "multicast",
            Self::LinkLocalUnicast => "link-local-unicast",
            Self::NotLocal => "destination not allowed",
            Self::NoRule => "no rules matched",
        }
    }
}

/// The filter's decision on one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let it through.
    Accept(AcceptReason),
    /// Drop it.
    Drop(DropReason),
}

impl Verdict {
    /// Whether the packet passes.
    pub fn is_accept(self) -> bool {
        matches!(self, Verdict::Accept(_))
    }
}

/// Counts of decisions by direction and reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterStats {
    inbound_accepted: [u64; AcceptReason::ALL.len()],
    inbound_dropped: [u64; DropReason::ALL.len()],
    outbound_accepted: [u64; AcceptReason::ALL.len()],
    outbound_dropped: [u64; DropReason::ALL.len()],
}

impl FilterStats {
    fn count(&mut self, inbound: bool, v: Verdict) {
        let slot = match (inbound, v) {
            (true, Verdict::Accept(r)) => &mut self.inbound_accepted[r as usize],
            (true, Verdict::Drop(r)) => &mut self.inbound_dropped[r as usize],
            (false, Verdict::Accept(r)) => &mut self.outbound_accepted[r as usize],
            (false, Verdict::Drop(r)) => &mut self.outbound_dropped[r as usize],
        };
        *slot = slot.wrapping_add(1);
    }

    /// Inbound packets dropped for `reason`.
    pub fn inbound_dropped(&self, reason: DropReason) -> u64 {
        self.inbound_dropped[reason as usize]
    }

    /// Inbound packets accepted for `reason`.
    pub fn inbound_accepted(&self, reason: AcceptReason) -> u64 {
        self.inbound_accepted[reason as usize]
    }

    /// Outbound packets dropped for `reason`.
    pub fn outbound_dropped(&self, reason: DropReason) -> u64 {
        self.outbound_dropped[reason as usize]
    }

    /// Outbound packets accepted for `reason`.
    pub fn outbound_accepted(&self, reason: AcceptReason) -> u64 {
        self.outbound_accepted[reason as usize]
    }

    /// Every non-zero inbound drop count, for a debug log line.
    pub fn inbound_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .into_iter()
            .map(|r| (r, self.inbound_dropped(r)))
            .filter(|&(_, n)| n > 0)
    }
}

/// The stateful packet filter: compiled [`Rules`], the flow table and counters.
#[derive(Debug)]
pub struct Filter {
    rules: Rules,
    flows: FlowTable,
    stats: FilterStats,
}

impl Filter {
    /// A filter with `rules` and a flow table sized by `flows`.
    pub fn new(rules: Rules, flows: FlowConfig) -> Self {
        Self {
            rules,
            flows: FlowTable::new(flows),
            stats: FilterStats::default(),
        }
    }

    /// Denies every inbound packet: the filter before the first netmap.
    pub fn allow_none() -> Self {
        Self::new(Rules::allow_none(), FlowConfig::default())
    }

    /// Replaces the rules, keeping the recorded flows (Go's `shareStateWith`), except when
    /// entering shields-up from a normal policy: then flows are forgotten, as in Go.
    pub fn set_rules(&mut self, rules: Rules) {
        if rules.shields_up && !self.rules.shields_up {
            self.flows.clear();
        }
        self.rules = rules;
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Decision counts so far.
    pub fn stats(&self) -> &FilterStats {
        &self.stats
    }

    /// How many flows are recorded.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Judges a packet from a peer (after decryption), at time `now`.
    pub fn check_inbound(&mut self, pkt: &[u8], now: Instant) -> Verdict {
        self.check_inbound_parsed(&parse(pkt), now)
    }

    /// [`Filter::check_inbound`] on an already parsed packet.
    pub fn check_inbound_parsed(&mut self, p: &Parsed<'_>, now: Instant) -> Verdict {
        let v = match pre(p) {
            Some(v) => v,
            None => match p.version() {
                4 => run_family(&self.rules.v4, &mut self.flows, p, Proto::ICMPV4, now),
                6 => run_family(&self.rules.v6, &mut self.flows, p, Proto::ICMPV6, now),
                // Go's "not-ip"; unreachable after `pre`, which drops unknown protocols.
                _ => Verdict::Drop(DropReason::UnknownProtocol),
            },
        };
        self.stats.count(true, v);
        v
    }

    /// Judges a packet this node sends to a peer, recording UDP and SCTP flows so their replies
    /// pass [`Filter::check_inbound`].
    pub fn record_outbound(&mut self, pkt: &[u8], now: Instant) -> Verdict {
        self.record_outbound_parsed(&parse(pkt), now)
    }

    /// [`Filter::record_outbound`] on an already parsed packet.
    pub fn record_outbound_parsed(&mut self, p: &Parsed<'_>, now: Instant) -> Verdict {
        let v = match pre(p) {
            Some(v) => v,
            None => {
                if matches!(p.proto(), Proto::UDP | Proto::SCTP) {
                    // Stored as the reply will look: source and destination swapped.
                    let key = FlowKey {
                        proto: p.proto().0,
                        v6: p.version() == 6,
                        src: p.dst_raw(),
                        dst: p.src_raw(),
                        src_port: p.dst_port(),
                        dst_port: p.src_port(),
                    };
                    self.flows.insert(key, now);
                }
                Verdict::Accept(AcceptReason::Outbound)
            }
        };
        self.stats.count(false, v);
        v
    }

    /// Whether a new connection (a TCP SYN, or the first packet of another protocol) from
    /// `src` to `dst:port` would be let in, judging the rules and the pre-checks only (no flow
    /// is read or changed). Go's `Filter.Check`, for services that accept connections in
    /// userspace.
    pub fn check_new(&self, src: IpAddr, dst: IpAddr, port: u16, proto: Proto) -> bool {
        let v4ish = match dst {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => a.to_ipv4_mapped(),
        };
        let special = match (v4ish, dst) {
            (Some(a), _) => {
                a.is_multicast() || (a.is_link_local() && dst != IpAddr::from([169, 254, 169, 254]))
            }
            (None, IpAddr::V6(a)) => a.is_multicast() || a.is_unicast_link_local(),
            (None, IpAddr::V4(_)) => false,
        };
        if proto == Proto::UNKNOWN || special {
            return false;
        }
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                would_admit(&self.rules.v4, proto, u32::from(s), u32::from(d), port)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                would_admit(&self.rules.v6, proto, u128::from(s), u128::from(d), port)
            }
            _ => false,
        }
    }
}

/// Go's `pre`: the checks both directions share. `None` means no verdict yet.
fn pre(p: &Parsed<'_>) -> Option<Verdict> {
    let len = p.buffer().len();
    if len == 0 {
        return Some(Verdict::Accept(AcceptReason::Keepalive));
    }
    if len < 20 {
        return Some(Verdict::Drop(DropReason::TooShort));
    }
    if p.proto() == Proto::UNKNOWN {
        return Some(Verdict::Drop(DropReason::UnknownProtocol));
    }
    if p.dst_is_multicast() {
        return Some(Verdict::Drop(DropReason::Multicast));
    }
    if p.dst_is_blocked_link_local() {
        return Some(Verdict::Drop(DropReason::LinkLocalUnicast));
    }
    if p.proto() == Proto::FRAGMENT {
        return Some(Verdict::Accept(AcceptReason::Fragment));
    }
    None
}

/// Go's `runIn4` / `runIn6`.
fn run_family<A: Addr>(
    fam: &Family<A>,
    flows: &mut FlowTable,
    p: &Parsed<'_>,
    icmp: Proto,
    now: Instant,
) -> Verdict {
    let src = A::from_raw(p.src_raw());
    let dst = A::from_raw(p.dst_raw());
    if !fam.is_local(dst) {
        return Verdict::Drop(DropReason::NotLocal);
    }
    let proto = p.proto();
    let accept = match proto {
        _ if proto == icmp => {
            if p.is_echo_reply() || p.is_icmp_error() {
                return Verdict::Accept(AcceptReason::IcmpReply);
            }
            fam.matches_ips_only(src, dst)
                .then_some(AcceptReason::IcmpRule)
        }
        Proto::TCP => {
            if !p.is_tcp_syn() {
                return Verdict::Accept(AcceptReason::TcpNonSyn);
            }
            fam.matches(proto.0, src, dst, p.dst_port())
                .then_some(AcceptReason::Rule)
        }
        Proto::UDP | Proto::SCTP => {
            let key = FlowKey {
                proto: proto.0,
                v6: p.version() == 6,
                src: p.src_raw(),
                dst: p.dst_raw(),
                src_port: p.src_port(),
                dst_port: p.dst_port(),
            };
            if flows.lookup(&key, now) {
                return Verdict::Accept(AcceptReason::Flow);
            }
            fam.matches(proto.0, src, dst, p.dst_port())
                .then_some(AcceptReason::Rule)
        }
        Proto::TSMP => Some(AcceptReason::Tsmp),
        _ => fam
            .matches_all_ports(proto.0, src, dst)
            .then_some(AcceptReason::Rule),
    };
    match accept {
        Some(r) => Verdict::Accept(r),
        None => Verdict::Drop(DropReason::NoRule),
    }
}

fn would_admit<A: Addr>(fam: &Family<A>, proto: Proto, src: A, dst: A, port: u16) -> bool {
    if !fam.is_local(dst) {
        return false;
    }
    match proto {
        Proto::ICMPV4 | Proto::ICMPV6 => fam.matches_ips_only(src, dst),
        Proto::TCP | Proto::UDP | Proto::SCTP => fam.matches(proto.0, src, dst, port),
        Proto::TSMP => true,
        _ => fam.matches_all_ports(proto.0, src, dst),
    }
}

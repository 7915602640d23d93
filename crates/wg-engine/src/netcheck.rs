//! netcheck: STUN probes to the DERP regions, as a sans-IO state machine (protocol.md §11).
//!
//! One [`Netcheck`] is one report. The caller owns the UDP sockets and the clock: the probes
//! must leave from the socket WireGuard and disco use, so that the mapped address a STUN
//! server sees is the one peers must use. The loop is:
//!
//! ```text
//! let mut nc = Netcheck::new(&derp_map, now);
//! loop {
//!     while let Some(p) = nc.poll_transmit(now) { socket.send_to(&p.payload, p.dst) }
//!     if nc.is_done() { break }
//!     wait for a datagram (-> nc.handle_stun(src, bytes, now); false means "not ours")
//!         or for nc.poll_timeout() (-> nc.handle_timeout(now))
//! }
//! let report = nc.report();
//! let home = history.update(now, &report, &derp_map, previous_home);
//! ```
//!
//! **The plan** (Go's initial, "full" plan, simplified): for each region that is not
//! `NoMeasureNoHome`, and for each address family, the first (up to) [`NODES_PER_REGION`]
//! nodes that have STUN (`STUNPort` not -1) and an address in that family. `STUNOnly` nodes
//! are probed like any other. Each such (region, family) set sends [`TRIES`] probes,
//! [`RETRANSMIT_INTERVAL`] apart, cycling over its nodes. The first answer ends the set (later
//! answers to probes already in flight still count, the lowest latency wins). A retry is not
//! sent when it could not teach anything new (Go's `probeWouldHelp`).
//!
//! **Addresses**: the node's `IPv4`/`IPv6` literal; `"none"` (or anything that is not an
//! address of that family) disables the family; `STUNTestIP` overrides both, as in Go. A node
//! with neither (only `HostName`) needs DNS, which is I/O: [`Netcheck::new`] skips such
//! nodes and counts them ([`Netcheck::unresolved`]); a caller that resolves host names
//! ([`hosts_to_resolve`] lists them) hands the answers to [`Netcheck::with_lookup`].
//!
//! **Timing**: a probe times out [`PROBE_TIMEOUT`] (3 s) after it was sent and the whole
//! report after [`REPORT_TIMEOUT`] (5 s), Go's values; the report is done as soon as every
//! set was answered or ran out of probes. Go's early stop once three regions answered, and
//! its HTTPS/ICMP fallbacks when UDP is blocked, are not here.
//!
//! **Home region**: [`preferred_derp`] applies Go's rules (lowest latency over recent reports
//! scaled by `HomeParams.RegionScore`, stickiness to the old home) and [`History`] keeps the
//! recent reports it needs.
//!
//! Nothing here panics on any input: garbage given to [`Netcheck::handle_stun`] returns
//! `false`.

use crate::stun::{self, TxId};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};
use tailcfg::derp::{DerpMap, DerpNode};

/// How long one STUN probe waits for its answer (Go's `stunProbeTimeout`).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a whole report takes (Go's `ReportTimeout`).
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// The gap between the probes of one set (Go's `defaultInitialRetransmitTime`).
pub const RETRANSMIT_INTERVAL: Duration = Duration::from_millis(100);
/// Probes per (region, address family) set, the first one at once (Go's initial plan).
pub const TRIES: usize = 3;
/// How many nodes of a region are probed, per address family.
pub const NODES_PER_REGION: usize = 2;
/// A new home must be at least this much faster than the old one (Go's
/// `preferredDERPAbsoluteDiff`).
pub const PREFERRED_DERP_ABSOLUTE_DIFF: Duration = Duration::from_millis(10);
/// A DERP frame from the old home this recent counts as "still reachable" when its STUN probe
/// got no answer (Go's `PreferredDERPFrameTime`).
pub const PREFERRED_DERP_FRAME_TIME: Duration = Duration::from_secs(8);
/// When nothing at all was measured, the old home is kept if a DERP frame (a keep-alive at
/// least) came from it this recently (Go's `PreferredDERPKeepAliveTimeout`, 2 × 60 s).
pub const PREFERRED_DERP_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a report counts towards a region's best recent latency: a full report interval
/// (5 min) plus a report's own duration, as Go's history keeps.
pub const HISTORY_MAX_AGE: Duration = Duration::from_secs(5 * 60 + 5);
/// Reports kept by [`History`] at most, whatever their age (a bound on memory if reports are
/// run very often).
pub const HISTORY_MAX_REPORTS: usize = 64;

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// One STUN binding request to send, from the WireGuard socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The STUN server.
    pub dst: SocketAddr,
    /// The DERP region it belongs to (for logs).
    pub region: i32,
    /// The datagram: Tailscale's binding request with a fresh transaction ID.
    pub payload: [u8; stun::REQUEST_LEN],
}

/// What one netcheck measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// A STUN round trip over IPv4 completed.
    pub udp_v4: bool,
    /// A STUN round trip over IPv6 completed.
    pub udp_v6: bool,
    /// Our IPv4 ip:port as the first STUN server to answer saw it.
    pub global_v4: Option<SocketAddr>,
    /// Our IPv6 ip:port as the first STUN server to answer over IPv6 saw it.
    pub global_v6: Option<SocketAddr>,
    /// Whether IPv4 STUN servers saw different ip:ports ("hard NAT"); `None` until two of them
    /// answered.
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// Region ID to its lowest latency, either family.
    pub region_latency: BTreeMap<i32, Duration>,
    /// Region ID to its lowest IPv4 latency.
    pub region_v4_latency: BTreeMap<i32, Duration>,
    /// Region ID to its lowest IPv6 latency.
    pub region_v6_latency: BTreeMap<i32, Duration>,
}

impl Report {
    /// Whether any STUN round trip completed.
    pub fn udp(&self) -> bool {
        self.udp_v4 || self.udp_v6
    }

    /// Records an answer from `region`. `same_server` says whether it came from the server
    /// that gave us `global_v4`: the same server answering twice says nothing about hard NAT.
    fn add_latency(&mut self, region: i32, mapped: SocketAddr, d: Duration, same_server: bool) {
        lower(&mut self.region_latency, region, d);
        match mapped.ip() {
            IpAddr::V4(_) => {
                lower(&mut self.region_v4_latency, region, d);
                self.udp_v4 = true;
                match self.global_v4 {
                    None => self.global_v4 = Some(mapped),
                    Some(first) if first != mapped => self.mapping_varies_by_dest_ip = Some(true),
                    Some(_) => {
                        if !same_server && self.mapping_varies_by_dest_ip.is_none() {
                            self.mapping_varies_by_dest_ip = Some(false);
                        }
                    }
                }
            }
            IpAddr::V6(_) => {
                lower(&mut self.region_v6_latency, region, d);
                self.udp_v6 = true;
                if self.global_v6.is_none() {
                    self.global_v6 = Some(mapped);
                }
            }
        }
    }
}

/// `t + d`, or `t` if that does not fit in an `Instant` (no panic on absurd clocks).
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

/// Keeps the lowest latency per region.
fn lower(map: &mut BTreeMap<i32, Duration>, region: i32, d: Duration) {
    map.entry(region)
        .and_modify(|old| *old = (*old).min(d))
        .or_insert(d);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not sent yet.
    Waiting,
    /// Sent; its answer is awaited.
    InFlight,
    /// Answered.
    Answered,
    /// No answer in time.
    TimedOut,
    /// Never sent: the set was answered or the probe would not have helped.
    Cancelled,
}

#[derive(Debug, Clone)]
struct Slot {
    set: usize,
    dst: SocketAddr,
    send_at: Instant,
    state: State,
    /// Set when sent; kept afterwards so that late or repeated answers are still known ours.
    tx: Option<TxId>,
    sent: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Set {
    region: i32,
    family: Family,
    /// Answered, or a retry would not have helped: nothing more is sent, and probes still in
    /// flight no longer hold the report open (their answers still count until it ends).
    closed: bool,
}

/// One netcheck report in progress: the probe plan, what was sent and what came back.
#[derive(Debug, Clone)]
pub struct Netcheck {
    started: Instant,
    deadline: Instant,
    slots: Vec<Slot>,
    sets: Vec<Set>,
    report: Report,
    /// The server whose answer set `global_v4`.
    first_v4_server: Option<SocketAddr>,
    done: bool,
    unresolved: usize,
}

/// Where to send a node's STUN probe for one family.
enum NodeAddr {
    /// This address.
    At(SocketAddr),
    /// No STUN, or the family is disabled for this node.
    Disabled,
    /// Only a host name, which did not resolve (or was not looked up).
    Unresolved,
}

fn node_addr(
    node: &DerpNode,
    family: Family,
    lookup: &mut impl FnMut(&str, Family) -> Option<IpAddr>,
) -> NodeAddr {
    let Some(port) = node.effective_stun_port() else {
        return NodeAddr::Disabled;
    };
    let literal = |ip: Option<IpAddr>| match ip {
        Some(ip) if Family::of(&ip) == family => NodeAddr::At(SocketAddr::new(ip, port)),
        _ => NodeAddr::Disabled,
    };
    if !node.stun_test_ip.is_empty() {
        return literal(node.stun_test_ip.parse::<IpAddr>().ok());
    }
    let field = match family {
        Family::V4 => &node.ipv4,
        Family::V6 => &node.ipv6,
    };
    if !field.is_empty() {
        let ip = match family {
            Family::V4 => field.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
            // An IPv4-mapped address is not an IPv6 destination.
            Family::V6 => field
                .parse::<Ipv6Addr>()
                .ok()
                .filter(|a| a.to_ipv4_mapped().is_none())
                .map(IpAddr::V6),
        };
        return literal(ip);
    }
    if node.host_name.is_empty() {
        return NodeAddr::Disabled;
    }
    match lookup(&node.host_name, family).map(|ip| ip.to_canonical()) {
        Some(ip) if Family::of(&ip) == family => NodeAddr::At(SocketAddr::new(ip, port)),
        _ => NodeAddr::Unresolved,
    }
}

/// Host names that a report would need resolved: nodes of measured regions with STUN and no
/// address literal (nor `"none"`) for some family. Resolve them (A and AAAA) and pass the
/// answers to [`Netcheck::with_lookup`]; the same name may come more than once.
pub fn hosts_to_resolve(derp_map: &DerpMap) -> impl Iterator<Item = &str> {
    derp_map
        .regions
        .iter()
        .flat_map(|regions| regions.values())
        .flatten()
        .filter(|r| !r.no_measure_no_home)
        .flat_map(|r| r.nodes.iter())
        .filter(|n| {
            let mut never = |_: &str, _: Family| None;
            [Family::V4, Family::V6]
                .into_iter()
                .any(|f| matches!(node_addr(n, f, &mut never), NodeAddr::Unresolved))
        })
        .map(|n| n.host_name.as_str())
}

impl Netcheck {
    /// Plans a report over `derp_map`, starting at `now`. Nodes known only by host name are
    /// skipped (and counted in [`Netcheck::unresolved`]).
    pub fn new(derp_map: &DerpMap, now: Instant) -> Netcheck {
        Netcheck::with_lookup(derp_map, now, |_, _| None)
    }

    /// Like [`Netcheck::new`], with `lookup(host_name, family)` giving an address for nodes
    /// that have no literal for that family; an address of the other family, or `None`,
    /// skips the node for that family.
    pub fn with_lookup(
        derp_map: &DerpMap,
        now: Instant,
        mut lookup: impl FnMut(&str, Family) -> Option<IpAddr>,
    ) -> Netcheck {
        let mut slots = Vec::new();
        let mut sets = Vec::new();
        let mut unresolved = 0;
        let regions = derp_map.regions.iter().flat_map(|r| r.iter());
        for (&region_id, region) in regions {
            let Some(region) = region else { continue };
            if region.no_measure_no_home {
                continue;
            }
            for family in [Family::V4, Family::V6] {
                let mut targets = [SocketAddr::from(([0, 0, 0, 0], 0)); NODES_PER_REGION];
                let mut found = 0;
                for node in &region.nodes {
                    if found == NODES_PER_REGION {
                        break;
                    }
                    match node_addr(node, family, &mut lookup) {
                        NodeAddr::At(dst) => {
                            if let Some(t) = targets.get_mut(found) {
                                *t = dst;
                            }
                            found += 1;
                        }
                        NodeAddr::Unresolved => unresolved += 1,
                        NodeAddr::Disabled => {}
                    }
                }
                let targets = targets.get(..found).unwrap_or_default();
                if targets.is_empty() {
                    continue;
                }
                let set = sets.len();
                sets.push(Set {
                    region: region_id,
                    family,
                    closed: false,
                });
                let mut send_at = now;
                for (try_no, dst) in targets.iter().cycle().take(TRIES).enumerate() {
                    if try_no > 0 {
                        send_at = later(send_at, RETRANSMIT_INTERVAL);
                    }
                    slots.push(Slot {
                        set,
                        dst: *dst,
                        send_at,
                        state: State::Waiting,
                        tx: None,
                        sent: now,
                    });
                }
            }
        }
        // Earliest first, so poll_transmit hands out due probes in order.
        slots.sort_by_key(|s| s.send_at);
        let mut nc = Netcheck {
            started: now,
            deadline: later(now, REPORT_TIMEOUT),
            slots,
            sets,
            report: Report::default(),
            first_v4_server: None,
            done: false,
            unresolved,
        };
        nc.check_done();
        nc
    }

    /// When this report started (for [`PreviousHome::new`]).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// How many (node, family) pairs were skipped because the node has only a host name that
    /// was not resolved.
    pub fn unresolved(&self) -> usize {
        self.unresolved
    }

    /// How many probes the plan holds, retries included.
    pub fn planned_probes(&self) -> usize {
        self.slots.len()
    }

    /// Whether the report is complete: every set answered or out of probes, or the report
    /// timed out. After that nothing is sent and answers no longer change the report.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The report so far (final once [`Netcheck::is_done`]).
    pub fn report(&self) -> Report {
        self.report.clone()
    }

    /// The next probe due at `now`, if any. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Probe> {
        self.expire(now);
        if self.done {
            return None;
        }
        let mut found = None;
        for i in 0..self.slots.len() {
            let Some(slot) = self.slots.get(i) else { break };
            if slot.send_at > now {
                // Sorted by send time: nothing later is due either.
                break;
            }
            if slot.state != State::Waiting {
                continue;
            }
            let Some(set) = self.sets.get(slot.set).copied() else {
                continue;
            };
            if set.closed || !self.would_help(&set) {
                self.cancel_waiting(slot.set);
                continue;
            }
            found = Some(i);
            break;
        }
        let probe = match found.and_then(|i| self.slots.get_mut(i)) {
            Some(slot) => {
                let tx = stun::new_tx_id();
                slot.state = State::InFlight;
                slot.tx = Some(tx);
                slot.sent = now;
                let region = self.sets.get(slot.set).map_or(0, |s| s.region);
                Some(Probe {
                    dst: slot.dst,
                    region,
                    payload: stun::binding_request(&tx),
                })
            }
            None => None,
        };
        self.check_done();
        probe
    }

    /// When [`Netcheck::handle_timeout`] (or [`Netcheck::poll_transmit`]) should next be
    /// called; `None` once done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let mut next = self.deadline;
        for slot in &self.slots {
            let closed = self.sets.get(slot.set).is_none_or(|s| s.closed);
            let at = match slot.state {
                State::Waiting if !closed => slot.send_at,
                State::InFlight if !closed => later(slot.sent, PROBE_TIMEOUT),
                _ => continue,
            };
            next = next.min(at);
        }
        Some(next)
    }

    /// Advances the clock: probes past [`PROBE_TIMEOUT`] give up, and the whole report past
    /// [`REPORT_TIMEOUT`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
    }

    /// A datagram that came in on the probing socket. Returns whether it was the answer to
    /// one of this report's probes (also when it came too late or twice, and so changed
    /// nothing); anything else, garbage included, returns `false` and is someone else's.
    ///
    /// The source address is not checked, as in Go: the 96-bit random transaction ID is
    /// what ties an answer to its probe, and servers behind anycast or NAT may answer from
    /// another address.
    pub fn handle_stun(&mut self, src: SocketAddr, datagram: &[u8], now: Instant) -> bool {
        let Ok(resp) = stun::parse_response(datagram) else {
            return false;
        };
        self.expire(now);
        let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| s.tx.as_ref() == Some(&resp.tx_id))
        else {
            return false;
        };
        if self.done || slot.state != State::InFlight {
            tracing::trace!(%src, "netcheck: late or repeated STUN answer");
            return true;
        }
        slot.state = State::Answered;
        let latency = now.saturating_duration_since(slot.sent);
        let (set_index, server) = (slot.set, slot.dst);
        let Some(set) = self.sets.get_mut(set_index) else {
            return true;
        };
        set.closed = true;
        let region = set.region;
        tracing::trace!(%src, region, ?latency, mapped = %resp.mapped, "netcheck: STUN answer");
        let same_server = self.first_v4_server == Some(server);
        if resp.mapped.is_ipv4() && self.first_v4_server.is_none() {
            self.first_v4_server = Some(server);
        }
        self.report
            .add_latency(region, resp.mapped, latency, same_server);
        self.cancel_waiting(set_index);
        self.check_done();
        true
    }

    /// Go's `probeWouldHelp`: a retry is worth sending if its region has no latency yet, if
    /// it is IPv6 and no IPv6 answer came yet, or if it is IPv4 and hard NAT is still unknown.
    fn would_help(&self, set: &Set) -> bool {
        if !self.report.region_latency.contains_key(&set.region) {
            return true;
        }
        match set.family {
            Family::V6 => self.report.region_v6_latency.is_empty(),
            Family::V4 => self.report.mapping_varies_by_dest_ip.is_none(),
        }
    }

    /// Closes `set`: its waiting probes will not be sent.
    fn cancel_waiting(&mut self, set: usize) {
        if let Some(s) = self.sets.get_mut(set) {
            s.closed = true;
        }
        for slot in &mut self.slots {
            if slot.set == set && slot.state == State::Waiting {
                slot.state = State::Cancelled;
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if now >= self.deadline {
            self.finish();
            return;
        }
        for slot in &mut self.slots {
            if slot.state == State::InFlight && now >= later(slot.sent, PROBE_TIMEOUT) {
                slot.state = State::TimedOut;
            }
        }
        self.check_done();
    }

    /// Done once every set is closed or has nothing waiting or in flight.
    fn check_done(&mut self) {
        let open = self.slots.iter().any(|s| {
            matches!(s.state, State::Waiting | State::InFlight)
                && self.sets.get(s.set).is_some_and(|set| !set.closed)
        });
        if !open {
            self.finish();
        }
    }

    fn finish(&mut self) {
        self.done = true;
        for slot in &mut self.slots {
            slot.state = match slot.state {
                State::Waiting => State::Cancelled,
                State::InFlight => State::TimedOut,
                s => s,
            };
        }
    }
}

/// The current home region, as [`preferred_derp`] needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousHome {
    /// The home region so far.
    pub region: i32,
    /// A DERP frame (not STUN) came from it since the report started or within
    /// [`PREFERRED_DERP_FRAME_TIME`]: it counts as reachable even if its probes were lost.
    pub heard_recently: bool,
    /// A DERP frame came from it within [`PREFERRED_DERP_KEEPALIVE_TIMEOUT`]: kept as home
    /// when the report measured nothing at all.
    pub alive: bool,
}

impl PreviousHome {
    /// The old home `region`, whose last DERP frame arrived at `last_frame` (`None`: never or
    /// unknown), for a report that started at `report_started`, judged at `now`.
    pub fn new(
        region: i32,
        last_frame: Option<Instant>,
        report_started: Instant,
        now: Instant,
    ) -> PreviousHome {
        let within = |window: Duration| {
            last_frame.is_some_and(|t| now.saturating_duration_since(t) < window)
        };
        PreviousHome {
            region,
            heard_recently: last_frame.is_some_and(|t| t > report_started)
                || within(PREFERRED_DERP_FRAME_TIME),
            alive: within(PREFERRED_DERP_KEEPALIVE_TIMEOUT),
        }
    }

    /// The old home `region`, with nothing known of its DERP connection.
    pub fn region(region: i32) -> PreviousHome {
        PreviousHome {
            region,
            heard_recently: false,
            alive: false,
        }
    }
}

/// `d` times the region's `HomeParams.RegionScore`, when that score is positive; saturates.
fn scaled(derp_map: &DerpMap, region: i32, d: Duration) -> Duration {
    let score = derp_map
        .home_params
        .as_ref()
        .and_then(|h| h.region_score.as_ref())
        .and_then(|s| s.get(&region))
        .copied()
        .unwrap_or(0.0);
    if score > 0.0 {
        Duration::try_from_secs_f64(d.as_secs_f64() * score).unwrap_or(Duration::MAX)
    } else {
        d
    }
}

/// Whether a region may be home: present in the map and not `NoMeasureNoHome`.
fn may_be_home(derp_map: &DerpMap, region: i32) -> bool {
    derp_map
        .region(region)
        .is_some_and(|r| !r.no_measure_no_home)
}

/// Chooses the home DERP region after `report`, with Go's rules; 0 when there is none.
///
/// - Among the regions that answered in `report`, the lowest of `best_recent` (each region's
///   best latency over recent reports: [`History::best_recent`], or `&report.region_latency`
///   without history; the report's own figure counts too), each scaled by the map's
///   `HomeParams.RegionScore`. Ties go to the lower region ID.
/// - The old home stays if it is still reachable (it answered in this report, or
///   [`PreviousHome::heard_recently`]) and the newcomer is not better by at least
///   [`PREFERRED_DERP_ABSOLUTE_DIFF`] or not below 2/3 of the old home's current (scaled)
///   latency.
/// - Nothing measured: the old home stays if [`PreviousHome::alive`], else 0.
///
/// Regions missing from the map or marked `NoMeasureNoHome` are never chosen or kept.
pub fn preferred_derp(
    report: &Report,
    derp_map: &DerpMap,
    best_recent: &BTreeMap<i32, Duration>,
    previous: Option<PreviousHome>,
) -> i32 {
    let previous = previous.filter(|p| p.region != 0 && may_be_home(derp_map, p.region));
    let mut best: Option<(i32, Duration)> = None;
    let mut old_current: Option<Duration> = None;
    for (&region, &d) in &report.region_latency {
        if !may_be_home(derp_map, region) {
            continue;
        }
        let current = scaled(derp_map, region, d);
        if previous.is_some_and(|p| p.region == region) {
            old_current = Some(current);
        }
        let recent = best_recent
            .get(&region)
            .map_or(current, |&r| scaled(derp_map, region, r).min(current));
        if best.is_none_or(|(_, b)| recent < b) {
            best = Some((region, recent));
        }
    }
    let Some(previous) = previous else {
        return best.map_or(0, |(region, _)| region);
    };
    let Some((region, best_latency)) = best else {
        return if previous.alive { previous.region } else { 0 };
    };
    if region == previous.region {
        return region;
    }
    if old_current.is_none() && !previous.heard_recently {
        return region;
    }
    // Heard from only by DERP frames: Go takes its latency as zero, which keeps it.
    let old = old_current.unwrap_or(Duration::ZERO);
    let too_close = old.saturating_sub(best_latency) < PREFERRED_DERP_ABSOLUTE_DIFF;
    let not_much_better = best_latency > old / 3 * 2;
    if too_close || not_much_better {
        previous.region
    } else {
        region
    }
}

/// Recent reports' region latencies, for [`preferred_derp`]'s "best over recent reports" (Go
/// keeps [`HISTORY_MAX_AGE`] of them).
#[derive(Debug, Clone, Default)]
pub struct History {
    reports: VecDeque<(Instant, BTreeMap<i32, Duration>)>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Records `report`'s region latencies as of `now`, dropping reports older than
    /// [`HISTORY_MAX_AGE`] (and the oldest beyond [`HISTORY_MAX_REPORTS`]).
    pub fn add(&mut self, now: Instant, report: &Report) {
        self.reports
            .retain(|(t, _)| now.saturating_duration_since(*t) <= HISTORY_MAX_AGE);
        while self.reports.len() >= HISTORY_MAX_REPORTS {
            self.reports.pop_front();
        }
        self.reports.push_back((now, report.region_latency.clone()));
    }

    /// Each region's lowest latency over the reports of the last [`HISTORY_MAX_AGE`] before
    /// `now`.
    pub fn best_recent(&self, now: Instant) -> BTreeMap<i32, Duration> {
        let mut best = BTreeMap::new();
        for (t, latencies) in &self.reports {
            if now.saturating_duration_since(*t) > HISTORY_MAX_AGE {
                continue;
            }
            for (&region, &d) in latencies {
                lower(&mut best, region, d);
            }
        }
        best
    }

    /// Reports held.
    pub fn len(&self) -> usize {
        self.reports.len()
    }

    /// Whether no report is held.
    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// Records `report` and chooses the home region from it and the recent history: Go's
    /// `addReportHistoryAndSetPreferredDERP`.
    pub fn update(
        &mut self,
        now: Instant,
        report: &Report,
        derp_map: &DerpMap,
        previous: Option<PreviousHome>,
    ) -> i32 {
        self.add(now, report);
        preferred_derp(report, derp_map, &self.best_recent(now), previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailcfg::derp::{DerpHomeParams, DerpRegion};

    fn node(name: &str, region: i32, v4: &str, v6: &str) -> DerpNode {
        let mut n = DerpNode::default();
        n.name = name.into();
        n.region_id = region;
        n.host_name = format!("{name}.derp.example");
        n.ipv4 = v4.into();
        n.ipv6 = v6.into();
        n
    }

    fn region(id: i32, nodes: Vec<DerpNode>) -> DerpRegion {
        let mut r = DerpRegion::default();
        r.region_id = id;
        r.region_code = format!("r{id}");
        r.nodes = nodes;
        r
    }

    fn map(regions: Vec<DerpRegion>) -> DerpMap {
        let mut m = DerpMap::default();
        m.regions = Some(
            regions
                .into_iter()
                .map(|r| (r.region_id, Some(r)))
                .collect(),
        );
        m
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A simulated STUN server answering a probe: who it thinks we are.
    fn answer(p: &Probe, mapped: SocketAddr) -> Vec<u8> {
        let tx = stun::parse_binding_request(&p.payload).unwrap();
        let mut b = Vec::new();
        stun::binding_response(&tx, mapped, &mut b);
        b
    }

    fn drain(nc: &mut Netcheck, now: Instant) -> Vec<Probe> {
        std::iter::from_fn(|| nc.poll_transmit(now)).collect()
    }

    const ME4: &str = "203.0.113.7:41641";
    const ME6: &str = "[2001:db8::7]:41641";

    #[test]
    fn plan_follows_the_map() {
        let mut stun_off = node("1c", 1, "10.0.1.3", "");
        stun_off.stun_port = -1;
        let mut stun_only = node("2a", 2, "10.0.2.1", "none");
        stun_only.stun_only = true;
        stun_only.stun_port = 3479;
        let mut nomeasure = region(3, vec![node("3a", 3, "10.0.3.1", "fd00::3:1")]);
        nomeasure.no_measure_no_home = true;
        let m = map(vec![
            // Three nodes: STUN off on the first, so the next two are probed; IPv6 on one.
            region(
                1,
                vec![
                    stun_off,
                    node("1a", 1, "10.0.1.1", "fd00::1:1"),
                    node("1b", 1, "10.0.1.2", "none"),
                ],
            ),
            region(2, vec![stun_only]),
            nomeasure,
            // Host name only: skipped and counted (twice: v4 and v6).
            region(4, vec![node("4a", 4, "", "")]),
            // Garbage literals disable the family.
            region(5, vec![node("5a", 5, "not-an-ip", "10.0.0.1")]),
        ]);
        let t0 = Instant::now();
        let mut nc = Netcheck::new(&m, t0);
        assert_eq!(nc.unresolved(), 2);
        // Sets: 1/v4 (1a,1b), 1/v6 (1a), 2/v4 (2a) -> 3 sets of 3 tries.
        assert_eq!(nc.planned_probes(), 9);
        let first = drain(&mut nc, t0);
        let dsts: Vec<_> = first.iter().map(|p| (p.region, p.dst)).collect();
        assert_eq!(
            dsts,
            vec![
                (1, sa("10.0.1.1:3478")),
                (1, sa("[fd00::1:1]:3478")),
                (2, sa("10.0.2.1:3479")),
            ]
        );
        for p in &first {
            assert!(stun::parse_binding_request(&p.payload).is_ok());
        }
        assert_eq!(nc.poll_timeout(), Some(t0 + RETRANSMIT_INTERVAL));
        // Retries cycle over the region's nodes.
        let second = drain(&mut nc, t0 + RETRANSMIT_INTERVAL);
        let dsts: Vec<_> = second.iter().map(|p| p.dst).collect();
        assert_eq!(
            dsts,
            vec![
                sa("10.0.1.2:3478"),
                sa("[fd00::1:1]:3478"),
                sa("10.0.2.1:3479")
            ]
        );
        let hosts: Vec<&str> = hosts_to_resolve(&m).collect();
        assert_eq!(hosts, vec!["4a.derp.example"]);
    }

    #[test]
    fn lookup_fills_host_name_only_nodes() {
        let m = map(vec![
            region(4, vec![node("4a", 4, "", "")]),
            region(5, vec![node("5a", 5, "", "none")]),
        ]);
        let t0 = Instant::now();
        let mut asked = Vec::new();
        // Only IPv4 answers; the IPv6 question gets an IPv4 address, which is refused.
        let mut nc = Netcheck::with_lookup(&m, t0, |h, f| {
            asked.push((h.to_owned(), f));
            Some(
                if h.starts_with("4a") {
                    "192.0.2.4"
                } else {
                    "192.0.2.5"
                }
                .parse()
                .unwrap(),
            )
        });
        assert_eq!(
            asked,
            vec![
                ("4a.derp.example".to_owned(), Family::V4),
                ("4a.derp.example".to_owned(), Family::V6),
                ("5a.derp.example".to_owned(), Family::V4),
            ]
        );
        assert_eq!(nc.unresolved(), 1);
        let dsts: Vec<_> = drain(&mut nc, t0).iter().map(|p| p.dst).collect();
        assert_eq!(dsts, vec![sa("192.0.2.4:3478"), sa("192.0.2.5:3478")]);
    }

    #[test]
    fn stun_test_ip_overrides() {
        let mut n = node("1a", 1, "10.0.0.1", "fd00::1");
        n.stun_test_ip = "127.0.0.1".into();
        n.stun_port = 5000;
        let t0 = Instant::now();
        let mut nc = Netcheck::new(&map(vec![region(1, vec![n])]), t0);
        let ps = drain(&mut nc, t0);
        assert_eq!(ps.len(), 1);
        assert_eq!(ps[0].dst, sa("127.0.0.1:5000"));
    }

    #[test]
    fn empty_plan_is_done_at_once() {
        let t0 = Instant::now();
        let mut nc = Netcheck::new(&DerpMap::default(), t0);
        assert!(nc.is_done());
        assert_eq!(nc.poll_transmit(t0), None);
        assert_eq!(nc.poll_timeout(), None);
        assert_eq!(nc.report(), Report::default());
        let mut nomeasure = region(1, vec![node("1a", 1, "10.0.0.1", "")]);
        nomeasure.no_measure_no_home = true;
        let nc = Netcheck::new(&map(vec![nomeasure]), t0);
        assert!(nc.is_done());
        assert_eq!(nc.planned_probes(), 0);
    }

    #[test]
    fn answers_in_any_order_and_early_done() {
        let m = map(vec![
            region(1, vec![node("1a", 1, "10.0.1.1", "none")]),
            region(2, vec![node("2a", 2, "10.0.2.1", "fd00::2:1")]),
            region(3, vec![node("3a", 3, "10.0.3.1", "none")]),
        ]);
        let t0 = Instant::now();
        let mut nc = Netcheck::new(&m, t0);
        let ps = drain(&mut nc, t0);
        assert_eq!(ps.len(), 4);
        let by = |dst: &str| ps.iter().find(|p| p.dst == sa(dst)).unwrap();
        // Region 3 first, then the IPv6 answer, then 1 and 2.
        assert!(nc.handle_stun(
            sa("10.0.3.1:3478"),
            &answer(by("10.0.3.1:3478"), sa(ME4)),
            t0 + ms(5)
        ));
        assert!(!nc.is_done());
        assert!(nc.handle_stun(
            sa("[fd00::2:1]:3478"),
            &answer(by("[fd00::2:1]:3478"), sa(ME6)),
            t0 + ms(30)
        ));
        assert!(nc.handle_stun(
            sa("10.0.1.1:3478"),
            &answer(by("10.0.1.1:3478"), sa(ME4)),
            t0 + ms(50)
        ));
        assert!(!nc.is_done());
        assert!(nc.handle_stun(
            sa("10.0.2.1:3478"),
            &answer(by("10.0.2.1:3478"), sa(ME4)),
            t0 + ms(70)
        ));
        // Every set answered before any retry: done at 70 ms, no retry sent.
        assert!(nc.is_done());
        assert_eq!(nc.poll_transmit(t0 + ms(100)), None);
        let r = nc.report();
        assert!(r.udp_v4 && r.udp_v6 && r.udp());
        assert_eq!(r.global_v4, Some(sa(ME4)));
        assert_eq!(r.global_v6, Some(sa(ME6)));
        assert_eq!(r.mapping_varies_by_dest_ip, Some(false));
        assert_eq!(
            r.region_latency,
            BTreeMap::from([(1, ms(50)), (2, ms(30)), (3, ms(5))])
        );
        assert_eq!(
            r.region_v4_latency,
            BTreeMap::from([(1, ms(50)), (2, ms(70)), (3, ms(5))])
        );
        assert_eq!(r.region_v6_latency, BTreeMap::from([(2, ms(30))]));
        assert_eq!(preferred_derp(&r, &m, &r.region_latency, None), 3);
    }

    #[test]
    fn hard_nat_is_noticed() {
        let m = map(vec![
            region(1, vec![node("1a", 1, "10.0.1.1", "none")]),
            region(2, vec![node("2a", 2, "10.0.2.1", "none")]),
        ]);
        let t0 = Instant::now();
        let mut nc = Netcheck::new(&m, t0);
        let ps = drain(&mut nc, t0);
        assert!(nc.handle_stun(ps[0].dst, &answer(&ps[0], sa(ME4)), t0 + ms(10)));
        assert_eq!(nc.report().mapping_varies_by_dest_ip, None);
        assert!(nc.handle_stun(
            ps[1].dst,
            &answer(&ps[1], sa("203.0.113.7:50000")),
            t0 + ms(20)
        ));
        let r = nc.report();
        assert_eq!(r.global_v4, Some(sa(ME4)));
        assert_eq!(r.mapping_varies_by_dest_ip, Some(true));
    }

    #[test]
    fn retries_then_timeouts() {
        let m = map(vec![
            region(1, vec![node("1a", 1, "10.0.1.1", "none")]),
            region(
                2,
                vec![
                    node("2a", 2, "10.0.2.1", "none"),
                    node("2b", 2, "10.0.2.2", "none"),
                ],
            ),
        ]);
        let t0 = Instant::now();
        let mut nc = Netcheck::new(&m, t0);
        let mut sent = drain(&mut nc, t0);
        assert_eq!(sent.len(), 2);
        // Region 1 answers the first probe late, after the first retry went out.
        assert_eq!(nc.poll_timeout(), Some(t0 + ms(100)));
        sent.extend(drain(&mut nc, t0 + ms(100)));
        assert_eq!(sent.len(), 4);
        assert_eq!(sent[3].dst, sa("10.0.2.2:3478"));
        assert!(nc.handle_stun(sent[0].dst, &answer(&sent[0], sa(ME4)), t0 + ms(150)));
        // The retry's answer comes in faster (its own clock): the lower latency wins.
        assert!(nc.handle_stun(sent[2].dst, &answer(&sent[2], sa(ME4)), t0 + ms(160)));
        assert_eq!(nc.report().region_latency[&1], ms(60));
        // Repeated answer: ours, no change.
        assert!(nc.handle_stun(sent[0].dst, &answer(&sent[0], sa(ME4)), t0 + ms(170)));
        assert_eq!(nc.report().region_latency[&1], ms(60));
        // Region 2 never answers: third try at 200 ms, then each probe times out 3 s after it
        // was sent; the report ends when the last one does, not at 5 s.
        let third = drain(&mut nc, t0 + ms(200));
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].dst, sa("10.0.2.1:3478"));
        assert_eq!(nc.poll_timeout(), Some(t0 + PROBE_TIMEOUT));
        nc.handle_timeout(t0 + PROBE_TIMEOUT);
        assert!(!nc.is_done());
        assert_eq!(nc.poll_timeout(), Some(t0 + ms(100) + PROBE_TIMEOUT));
        nc.handle_timeout(t0 + ms(100) + PROBE_TIMEOUT);
        assert_eq!(nc.poll_timeout(), Some(t0 + ms(200) + PROBE_TIMEOUT));
        // A timed-out probe's late answer is recognised but ignored.
        assert!(nc.handle_stun(sent[1].dst, &answer(&sent[1], sa(ME4)), t0 + ms(3100)));
        assert!(!nc.report().region_latency.contains_key(&2));
        nc.handle_timeout(t0 + ms(200) + PROBE_TIMEOUT);
        assert!(nc.is_done());
        assert_eq!(nc.poll_timeout(), None);
        let r = nc.report();
        assert_eq!(r.region_latency, BTreeMap::from([(1, ms(60))]));
        assert_eq!(r.mapping_varies_by_dest_ip, None);
        // After the end, even the in-flight third probe's answer changes nothing.
        assert!(nc.handle_stun(third[0].dst, &answer(&third[0], sa(ME4)), t0 + ms(3300)));
        assert_eq!(nc.report(), r);
    }

    #[test]
    fn report_deadline_ends_everything() {
        let m = map(vec![region(1, vec![node("1a", 1, "10.0.1.1", "none")])]);
        let t0 = Instant::now();
        let mut nc = Netcheck::new(&m, t0);
        // A caller that polls late: all three tries go out at 4.5 s, the report still ends
        // at 5 s.
        let ps = drain(&mut nc, t0 + ms(4500));
        assert_eq!(ps.len(), 3);
        let p = ps[0];
        assert_eq!(nc.poll_timeout(), Some(t0 + REPORT_TIMEOUT));
        nc.handle_timeout(t0 + REPORT_TIMEOUT);
        assert!(nc.is_done());
        assert!(nc.handle_stun(p.dst, &answer(&p, sa(ME4)), t0 + ms(5001)));
        assert!(!nc.report().udp());
        assert_eq!(nc.poll_transmit(t0 + ms(6000)), None);
    }

    #[test]
    fn useless_retries_are_skipped() {
        // Region 1 answers on v4 before its v6 retry is due, while region 2's v6 answered
        // already: the v6 retry to region 1 would teach nothing and is cancelled.
        let m = map(vec![
            region(1, vec![node("1a", 1, "10.0.1.1", "fd00::1:1")]),
            region(2, vec![node("2a", 2, "none", "fd00::2:1")]),
            region(3, vec![node("3a", 3, "10.0.3.1", "none")]),
        ]);
        let t0 = Instant::now();
        let mut nc = Netcheck::new(&m, t0);
        let ps = drain(&mut nc, t0);
        assert_eq!(ps.len(), 4);
        let by = |dst: &str| ps.iter().find(|p| p.dst == sa(dst)).unwrap();
        for (dst, me) in [
            ("10.0.1.1:3478", ME4),
            ("[fd00::2:1]:3478", ME6),
            ("10.0.3.1:3478", ME4),
        ] {
            assert!(nc.handle_stun(sa(dst), &answer(by(dst), sa(me)), t0 + ms(20)));
        }
        assert_eq!(nc.report().mapping_varies_by_dest_ip, Some(false));
        assert!(!nc.is_done());
        assert_eq!(drain(&mut nc, t0 + ms(100)), vec![]);
        assert!(nc.is_done());
    }

    #[test]
    fn garbage_is_not_ours() {
        let m = map(vec![region(1, vec![node("1a", 1, "10.0.1.1", "none")])]);
        let t0 = Instant::now();
        let mut nc = Netcheck::new(&m, t0);
        let p = nc.poll_transmit(t0).unwrap();
        let src = p.dst;
        assert!(!nc.handle_stun(src, &[], t0));
        assert!(!nc.handle_stun(src, &p.payload, t0)); // a request, not an answer
        // An answer to someone else's transaction.
        let mut other = Vec::new();
        stun::binding_response(&stun::new_tx_id(), sa(ME4), &mut other);
        assert!(!nc.handle_stun(src, &other, t0));
        // Every prefix of our own answer, and bit flips.
        let good = answer(&p, sa(ME4));
        for n in 0..good.len() {
            let _ = nc.handle_stun(src, &good[..n], t0);
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x80;
            let _ = nc.handle_stun(src, &b, t0);
        }
        // At most the one real answer (or a bit-flipped twin of it) was taken.
        assert!(nc.report().region_latency.len() <= 1);
    }

    fn report(lat: &[(i32, u64)]) -> Report {
        let mut r = Report::default();
        for &(id, l) in lat {
            r.region_latency.insert(id, ms(l));
            r.region_v4_latency.insert(id, ms(l));
        }
        r.udp_v4 = !lat.is_empty();
        r
    }

    fn three_regions() -> DerpMap {
        map(vec![
            region(1, vec![node("1a", 1, "10.0.1.1", "")]),
            region(2, vec![node("2a", 2, "10.0.2.1", "")]),
            region(3, vec![node("3a", 3, "10.0.3.1", "")]),
        ])
    }

    fn home(r: &Report, m: &DerpMap, prev: Option<PreviousHome>) -> i32 {
        preferred_derp(r, m, &r.region_latency, prev)
    }

    #[test]
    fn home_is_the_fastest() {
        let m = three_regions();
        assert_eq!(home(&report(&[]), &m, None), 0);
        assert_eq!(home(&report(&[(1, 50), (2, 20), (3, 30)]), &m, None), 2);
        // Ties go to the lower ID.
        assert_eq!(home(&report(&[(3, 20), (2, 20)]), &m, None), 2);
        // A region not in the map, or NoMeasureNoHome, is never home.
        assert_eq!(home(&report(&[(9, 1), (1, 50)]), &m, None), 1);
        let mut m2 = three_regions();
        if let Some(Some(r)) = m2.regions.as_mut().and_then(|r| r.get_mut(&2)) {
            r.no_measure_no_home = true;
        }
        assert_eq!(home(&report(&[(1, 50), (2, 20)]), &m2, None), 1);
    }

    #[test]
    fn home_hysteresis() {
        let m = three_regions();
        let old = Some(PreviousHome::region(1));
        // Better by less than 10 ms: stay.
        assert_eq!(home(&report(&[(1, 15), (2, 6)]), &m, old), 1);
        // Better by 10 ms or more but not below 2/3: stay (old 60, new 41 > 40).
        assert_eq!(home(&report(&[(1, 60), (2, 41)]), &m, old), 1);
        // Both: move (old 60, new 39).
        assert_eq!(home(&report(&[(1, 60), (2, 39)]), &m, old), 2);
        // Exactly 2/3 is "below or at": moves (Go: stays only if best > old/3*2).
        assert_eq!(home(&report(&[(1, 60), (2, 40)]), &m, old), 2);
        // Old home did not answer and no DERP frames: it is not reachable, move.
        assert_eq!(home(&report(&[(2, 59)]), &m, old), 2);
        // ... but DERP frames from it keep it (Go counts it as 0 ms).
        let heard = Some(PreviousHome {
            region: 1,
            heard_recently: true,
            alive: true,
        });
        assert_eq!(home(&report(&[(2, 5)]), &m, heard), 1);
        // Nothing measured: keep the home if its connection is alive, else none.
        assert_eq!(home(&report(&[]), &m, heard), 1);
        assert_eq!(home(&report(&[]), &m, old), 0);
        // An old home that left the map is not kept.
        assert_eq!(
            home(&report(&[(2, 50)]), &m, Some(PreviousHome::region(7))),
            2
        );
    }

    #[test]
    fn previous_home_from_frames() {
        let t0 = Instant::now();
        let start = t0 + Duration::from_secs(200);
        let now = start + Duration::from_secs(3);
        let p = PreviousHome::new(1, None, start, now);
        assert!(!p.heard_recently && !p.alive);
        // During the report.
        let p = PreviousHome::new(1, Some(start + ms(1)), start, now);
        assert!(p.heard_recently && p.alive);
        // 7 s before now (before the start): within the 8 s frame time.
        let p = PreviousHome::new(1, Some(now - Duration::from_secs(7)), start, now);
        assert!(p.heard_recently && p.alive);
        // 60 s ago: alive only.
        let p = PreviousHome::new(1, Some(now - Duration::from_secs(60)), start, now);
        assert!(!p.heard_recently && p.alive);
        let p = PreviousHome::new(1, Some(t0), start, now);
        assert!(!p.heard_recently && !p.alive);
    }

    #[test]
    fn scores_scale_latency() {
        let mut m = three_regions();
        let mut hp = DerpHomeParams::default();
        // Region 2 is penalised (x3), region 3 favoured (x0.5), zero and negative ignored.
        hp.region_score = Some(BTreeMap::from([(1, 0.0), (2, 3.0), (3, 0.5)]));
        m.home_params = Some(hp);
        assert_eq!(home(&report(&[(1, 50), (2, 20)]), &m, None), 1);
        assert_eq!(home(&report(&[(1, 30), (3, 50)]), &m, None), 3);
        // Scores apply to the stickiness too: old home 3 at 100 ms counts as 50 ms.
        let old = Some(PreviousHome::region(3));
        assert_eq!(home(&report(&[(1, 40), (3, 100)]), &m, old), 3);
        assert_eq!(home(&report(&[(1, 30), (3, 100)]), &m, old), 1);
        // Absurd scores saturate instead of panicking.
        let mut hp = DerpHomeParams::default();
        hp.region_score = Some(BTreeMap::from([
            (1, f64::INFINITY),
            (2, f64::NAN),
            (3, 1e300),
        ]));
        m.home_params = Some(hp);
        assert_eq!(home(&report(&[(1, 10), (2, 20), (3, 5)]), &m, None), 2);
    }

    #[test]
    fn history_keeps_the_best_recent() {
        let m = three_regions();
        let t0 = Instant::now();
        let mut h = History::new();
        assert!(h.is_empty());
        // Report 1: region 1 best; becomes home.
        assert_eq!(h.update(t0, &report(&[(1, 20), (2, 35)]), &m, None), 1);
        // Report 2: region 1 had a bad moment (80 ms), region 2 at 30 ms. Region 1's best
        // recent is still 20 ms, so it stays the choice.
        let t1 = t0 + Duration::from_secs(30);
        let prev = Some(PreviousHome::region(1));
        assert_eq!(h.update(t1, &report(&[(1, 80), (2, 30)]), &m, prev), 1);
        assert_eq!(
            h.best_recent(t1),
            BTreeMap::from([(1, ms(20)), (2, ms(30))])
        );
        // Six minutes later the 20 ms is forgotten: region 2 (30) vs old home 80 now.
        let t2 = t0 + Duration::from_secs(6 * 60);
        assert_eq!(h.update(t2, &report(&[(1, 80), (2, 30)]), &m, prev), 2);
        assert_eq!(h.len(), 1);
        // The history is bounded.
        for i in 0..(HISTORY_MAX_REPORTS as u64 + 10) {
            h.add(t2 + ms(i), &report(&[(1, 1)]));
        }
        assert_eq!(h.len(), HISTORY_MAX_REPORTS);
    }

    #[test]
    fn full_run_with_simulated_servers() {
        // Three regions; region 1's IPv6 and region 3 drop everything; region 2 has two
        // nodes, the first one lossy (drops the first probe).
        let m = map(vec![
            region(1, vec![node("1a", 1, "10.0.1.1", "fd00::1:1")]),
            region(
                2,
                vec![
                    node("2a", 2, "10.0.2.1", "none"),
                    node("2b", 2, "10.0.2.2", "none"),
                ],
            ),
            region(3, vec![node("3a", 3, "10.0.3.1", "none")]),
        ]);
        let rtt = |dst: SocketAddr| match dst.ip().to_string().as_str() {
            "10.0.1.1" => Some(ms(40)),
            "10.0.2.2" => Some(ms(15)),
            _ => None,
        };
        let t0 = Instant::now();
        let mut nc = Netcheck::new(&m, t0);
        let mut now = t0;
        let mut inbox: Vec<(Instant, SocketAddr, Vec<u8>)> = Vec::new();
        let mut steps = 0;
        while !nc.is_done() {
            steps += 1;
            assert!(steps < 1000);
            while let Some(p) = nc.poll_transmit(now) {
                if let Some(d) = rtt(p.dst) {
                    inbox.push((now + d, p.dst, answer(&p, sa(ME4))));
                }
            }
            inbox.sort_by_key(|(t, _, _)| *t);
            let next_in = inbox.first().map(|(t, _, _)| *t);
            let next_timer = nc.poll_timeout();
            match (next_in, next_timer) {
                (Some(a), Some(b)) if a <= b => {
                    let (t, src, b) = inbox.remove(0);
                    now = t;
                    assert!(nc.handle_stun(src, &b, now));
                }
                (_, Some(b)) => {
                    now = b;
                    nc.handle_timeout(now);
                }
                (_, None) => break,
            }
        }
        let r = nc.report();
        // Region 2's first answer comes from the retry to 2b (sent at 100 ms, back at 115).
        assert_eq!(r.region_latency, BTreeMap::from([(1, ms(40)), (2, ms(15))]));
        assert_eq!(r.mapping_varies_by_dest_ip, Some(false));
        assert!(!r.udp_v6);
        // Region 3 and 1's IPv6 time out 3 s after their last try (200 ms).
        assert_eq!(now, t0 + ms(200) + PROBE_TIMEOUT);
        assert_eq!(preferred_derp(&r, &m, &r.region_latency, None), 2);
    }
}

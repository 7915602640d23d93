//! The sans-IO resolver: query bytes in, an answer or a forward decision out
//! (protocol.md 8.3).
//!
//! [`Resolver::respond`] answers what quad-100 knows itself (tailnet names, ExtraRecords,
//! reverse zones, the service name), serves forwarded answers from the cache, and otherwise
//! says where to forward. The driver sends the query, then hands the upstream's answer (or
//! `None`) to [`Resolver::forwarded`], which checks it, caches it and returns the bytes for the
//! client. Nothing here does I/O or reads the clock: `now` comes from the caller.

use crate::Upstream;
use crate::cache::{Cache, CacheKey, CacheLimits};
use crate::config::{ResolverConfig, in_zone, reverse_name_addr, wire_name};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;
use tracing::debug;

/// The TTL of every record quad-100 answers itself: 600 s, as Tailscale v1.98 (our peer
/// version) and up to v1.102.0 do; negative answers carry no SOA.
pub const LOCAL_TTL: u32 = 600;

/// The name quad-100's own addresses answer to, and that reverse lookups of them return.
pub const SERVICE_NAME: &str = "magicdns.localhost-tailscale-daemon.";

/// Quad-100's IPv4 address.
pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);

/// Quad-100's IPv6 address.
pub const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);

/// The largest UDP answer, whatever the client's EDNS payload size says; also the payload size
/// quad-100 advertises in its own OPT records.
pub const MAX_UDP_PAYLOAD: u16 = 4096;

/// A UDP answer may always be this big (RFC 1035), and a client's EDNS size below it is raised.
const MIN_UDP_PAYLOAD: u16 = 512;

/// A DNS message over TCP is at most this big (the length prefix is 16 bits).
const MAX_TCP_MESSAGE: usize = 65_535;

/// The smallest question on the wire: the root name, type and class.
const MIN_QUESTION: usize = 5;

/// The smallest resource record on the wire: the root name, type, class, TTL, RDLENGTH.
const MIN_RECORD: usize = 11;

/// The DNS header.
const HEADER: usize = 12;

/// The first 104 bits of Tailscale's 4to6 range, `fd7a:115c:a1e0:ab12:4843:cd96:6200::/104`.
const FOUR_TO_SIX_PREFIX: [u8; 13] = [
    0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0xab, 0x12, 0x48, 0x43, 0xcd, 0x96, 0x62,
];

/// The first 64 bits of Tailscale's 4via6 range, `fd7a:115c:a1e0:b1a::/64`.
const VIA_PREFIX: [u8; 8] = [0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0x0b, 0x1a];

/// How a query reached quad-100, which bounds the answer's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: 512 bytes, or the client's EDNS payload size (at most [`MAX_UDP_PAYLOAD`]).
    Udp,
    /// TCP (the 2-byte length prefix already stripped): up to 65535 bytes.
    Tcp,
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back to the client.
    Answer(Vec<u8>),
    /// Send `query` to these upstreams (in order of preference; never empty), then pass the
    /// first answer, or `None`, to [`Resolver::forwarded`] together with the same query.
    Forward {
        /// Where to send it.
        upstreams: Vec<Upstream>,
        /// The client's query, unchanged (the driver may give it an ID of its own).
        query: Vec<u8>,
    },
    /// Send nothing: the input is not a query one could answer (shorter than a header, or a
    /// response).
    Drop,
}

/// The MagicDNS resolver: the current configuration and the cache of forwarded answers.
#[derive(Debug)]
pub struct Resolver {
    config: Arc<ResolverConfig>,
    cache: Cache,
}

impl Resolver {
    /// A resolver with the default cache bounds.
    pub fn new(config: Arc<ResolverConfig>) -> Self {
        Self::with_cache_limits(config, CacheLimits::default())
    }

    /// A resolver with the given cache bounds.
    pub fn with_cache_limits(config: Arc<ResolverConfig>, limits: CacheLimits) -> Self {
        Self {
            config,
            cache: Cache::new(limits),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &Arc<ResolverConfig> {
        &self.config
    }

    /// Replaces the configuration (on every netmap change). The cache is kept unless the
    /// routes, the default upstreams or the authoritative zones changed.
    pub fn set_config(&mut self, config: Arc<ResolverConfig>) {
        if !self.config.same_forwarding(&config) {
            self.cache.clear();
        }
        self.config = config;
    }

    /// The cache of forwarded answers.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Decides what to do with a query that arrived over `transport`.
    pub fn respond(&mut self, query: &[u8], transport: Transport, now: Instant) -> Outcome {
        let q = match ParsedQuery::parse(query) {
            Ok(q) => q,
            Err(Rejected::Drop) => return Outcome::Drop,
            Err(Rejected::Reply(bytes)) => return Outcome::Answer(bytes),
        };
        let limit = q.size_limit(transport);
        if let Some(msg) = decide_local(&self.config, &q) {
            return Outcome::Answer(finish(msg, &q, limit));
        }
        if bonjour_name(&q.name) {
            // DNS-SD browsing spam is never worth an upstream round trip.
            return Outcome::Answer(finish(q.reply(ResponseCode::NXDomain, false), &q, limit));
        }
        let upstreams = self.config.route_upstreams(&q.name);
        if upstreams.is_empty() {
            debug!(name = %q.name, "magicdns: no upstream for query, SERVFAIL");
            return Outcome::Answer(finish(q.reply(ResponseCode::ServFail, false), &q, limit));
        }
        if let Some(cached) = self.cache.lookup(&q.cache_key(), now) {
            return Outcome::Answer(finish(q.adapt_cached(cached), &q, limit));
        }
        Outcome::Forward {
            upstreams: upstreams.to_vec(),
            query: query.to_vec(),
        }
    }

    /// The answer for a UDP client from an upstream's `response` to `query` (`None`: no
    /// upstream answered). The same as [`forwarded_over`](Self::forwarded_over) with
    /// [`Transport::Udp`]; a client that asked over TCP must go through `forwarded_over`.
    pub fn forwarded(&mut self, query: &[u8], response: Option<&[u8]>, now: Instant) -> Vec<u8> {
        self.forwarded_over(query, response, Transport::Udp, now)
    }

    /// The answer for a client that asked `query` over `transport`, from an upstream's
    /// `response` (`None`: no upstream answered, SERVFAIL).
    ///
    /// A response that is not an answer to `query` (not a response, unparseable, another
    /// question) counts as none. A good one is cached (TTL-respecting) and returned with the
    /// client's ID, with TC set and its records dropped when it is over the client's limit.
    /// An empty result means "send nothing" (only for a `query` that [`respond`](Self::respond)
    /// would have dropped).
    pub fn forwarded_over(
        &mut self,
        query: &[u8],
        response: Option<&[u8]>,
        transport: Transport,
        now: Instant,
    ) -> Vec<u8> {
        let q = match ParsedQuery::parse(query) {
            Ok(q) => q,
            Err(Rejected::Drop) => return Vec::new(),
            Err(Rejected::Reply(bytes)) => return bytes,
        };
        let limit = q.size_limit(transport);
        let servfail = |q: &ParsedQuery| finish(q.reply(ResponseCode::ServFail, false), q, limit);
        let Some(wire) = response else {
            return servfail(&q);
        };
        let Some(msg) = q.check_response(wire) else {
            debug!(name = %q.name, "magicdns: upstream answer does not match the query");
            return servfail(&q);
        };
        self.cache.insert(q.cache_key(), &msg, wire, now);
        if wire.len() <= limit {
            let mut out = wire.to_vec();
            if let Some(id) = out.get_mut(..2) {
                id.copy_from_slice(&q.id.to_be_bytes());
            }
            return out;
        }
        let mut msg = msg;
        msg.set_id(q.id);
        *msg.extensions_mut() = q.edns.map(|e| our_edns(e.dnssec_ok));
        finish(msg, &q, limit)
    }
}

/// Why a query gets no normal processing.
enum Rejected {
    /// No reply at all.
    Drop,
    /// This error reply.
    Reply(Vec<u8>),
}

/// The EDNS facts of a query that matter here.
#[derive(Debug, Clone, Copy)]
struct EdnsInfo {
    payload: u16,
    dnssec_ok: bool,
}

/// A query that passed the checks: one question, opcode QUERY, class IN or ANY.
#[derive(Debug)]
struct ParsedQuery {
    id: u16,
    recursion_desired: bool,
    checking_disabled: bool,
    question: Query,
    /// The question's name, canonical.
    name: String,
    qtype: RecordType,
    edns: Option<EdnsInfo>,
}

impl ParsedQuery {
    fn parse(bytes: &[u8]) -> Result<Self, Rejected> {
        let Some(header) = Header::read(bytes) else {
            return Err(Rejected::Drop);
        };
        if header.is_response() {
            // Never answer a response: two resolvers could bounce errors forever.
            return Err(Rejected::Drop);
        }
        if header.opcode() != 0 {
            return Err(Rejected::Reply(header.error(ResponseCode::NotImp)));
        }
        if !header.counts_fit(bytes.len()) {
            return Err(Rejected::Reply(header.error(ResponseCode::FormErr)));
        }
        let Ok(msg) = Message::from_vec(bytes) else {
            return Err(Rejected::Reply(header.error(ResponseCode::FormErr)));
        };
        let question = match msg.queries() {
            [question] => question.clone(),
            _ => return Err(Rejected::Reply(header.error(ResponseCode::FormErr))),
        };
        let q = Self {
            id: msg.id(),
            recursion_desired: msg.recursion_desired(),
            checking_disabled: msg.checking_disabled(),
            name: wire_name(question.name().iter()),
            qtype: question.query_type(),
            edns: msg.extensions().as_ref().map(|e| EdnsInfo {
                payload: e.max_payload(),
                dnssec_ok: e.flags().dnssec_ok,
            }),
            question,
        };
        let limit = q.size_limit(Transport::Udp);
        if msg.extensions().as_ref().is_some_and(|e| e.version() != 0) {
            return Err(Rejected::Reply(finish(
                q.reply(ResponseCode::BADVERS, false),
                &q,
                limit,
            )));
        }
        if q.qtype == RecordType::OPT {
            return Err(Rejected::Reply(finish(
                q.reply(ResponseCode::FormErr, false),
                &q,
                limit,
            )));
        }
        if !matches!(q.question.query_class(), DNSClass::IN | DNSClass::ANY) {
            return Err(Rejected::Reply(finish(
                q.reply(ResponseCode::Refused, false),
                &q,
                limit,
            )));
        }
        Ok(q)
    }

    /// The largest answer this client takes over `transport`.
    fn size_limit(&self, transport: Transport) -> usize {
        match transport {
            Transport::Tcp => MAX_TCP_MESSAGE,
            Transport::Udp => usize::from(
                self.edns
                    .map_or(MIN_UDP_PAYLOAD, |e| e.payload)
                    .clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
            ),
        }
    }

    fn cache_key(&self) -> CacheKey {
        CacheKey {
            name: self.name.clone(),
            qtype: u16::from(self.qtype),
            qclass: u16::from(self.question.query_class()),
            dnssec_ok: self.edns.is_some_and(|e| e.dnssec_ok),
        }
    }

    /// A reply to this query with no records yet: ID, RD and CD copied, RA set when RD is,
    /// the question echoed, and an OPT record when the query had one.
    fn reply(&self, rcode: ResponseCode, authoritative: bool) -> Message {
        let mut m = Message::new();
        m.set_id(self.id)
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_authoritative(authoritative)
            .set_recursion_desired(self.recursion_desired)
            .set_recursion_available(self.recursion_desired)
            .set_checking_disabled(self.checking_disabled)
            .set_response_code(rcode);
        m.add_query(self.question.clone());
        if let Some(e) = self.edns {
            m.set_edns(our_edns(e.dnssec_ok));
        }
        m
    }

    /// A record answering this query's name.
    fn record(&self, rdata: RData) -> Record {
        Record::from_rdata(self.question.name().clone(), LOCAL_TTL, rdata)
    }

    /// A cached upstream answer made into this client's: its ID, flags, question and OPT.
    fn adapt_cached(&self, mut m: Message) -> Message {
        m.set_id(self.id)
            .set_recursion_desired(self.recursion_desired)
            .set_checking_disabled(self.checking_disabled);
        *m.queries_mut() = vec![self.question.clone()];
        *m.extensions_mut() = self.edns.map(|e| our_edns(e.dnssec_ok));
        m
    }

    /// The upstream's `wire`, parsed, if it is a response to this query's question.
    fn check_response(&self, wire: &[u8]) -> Option<Message> {
        if wire.len() > MAX_TCP_MESSAGE {
            return None;
        }
        let header = Header::read(wire)?;
        if !header.is_response() || header.opcode() != 0 || !header.counts_fit(wire.len()) {
            return None;
        }
        let msg = Message::from_vec(wire).ok()?;
        let [question] = msg.queries() else {
            return None;
        };
        let same = wire_name(question.name().iter()) == self.name
            && question.query_type() == self.qtype
            && question.query_class() == self.question.query_class();
        same.then_some(msg)
    }
}

/// Quad-100's OPT record: version 0, our payload size, the client's DO bit.
fn our_edns(dnssec_ok: bool) -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(MAX_UDP_PAYLOAD)
        .set_version(0)
        .set_dnssec_ok(dnssec_ok);
    e
}

/// The fixed 12-byte header, read by hand so that even a message hickory rejects gets an
/// error reply with its ID.
struct Header<'a>(&'a [u8; HEADER]);

impl<'a> Header<'a> {
    fn read(bytes: &'a [u8]) -> Option<Self> {
        bytes.first_chunk::<HEADER>().map(Header)
    }

    fn is_response(&self) -> bool {
        self.0[2] & 0x80 != 0
    }

    fn opcode(&self) -> u8 {
        (self.0[2] >> 3) & 0x0f
    }

    fn count(&self, at: usize) -> usize {
        match (self.0.get(at), self.0.get(at + 1)) {
            (Some(&hi), Some(&lo)) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => 0,
        }
    }

    /// Whether the section counts could fit in a message this long: a 12-byte header with
    /// counts of 65535 must not make the parser reserve room for 65535 records.
    fn counts_fit(&self, len: usize) -> bool {
        let records = self.count(6) + self.count(8) + self.count(10);
        let need = self.count(4) * MIN_QUESTION + records * MIN_RECORD;
        need <= len.saturating_sub(HEADER)
    }

    /// A header-only error reply: ID, opcode and RD copied.
    fn error(&self, rcode: ResponseCode) -> Vec<u8> {
        header_only(self.0[0], self.0[1], self.0[2], rcode, false)
    }
}

/// A 12-byte reply with no sections. `flags` is the query's third byte (opcode and RD kept).
fn header_only(id_hi: u8, id_lo: u8, flags: u8, rcode: ResponseCode, truncated: bool) -> Vec<u8> {
    let rd = flags & 0x01;
    let tc = if truncated { 0x02 } else { 0 };
    let byte2 = 0x80 | (flags & 0x78) | tc | rd;
    let byte3 = (rd << 7) | rcode.low();
    vec![id_hi, id_lo, byte2, byte3, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// Cuts an encoded answer down to at most `max` bytes, as the transport below the resolver
/// may take less than the client's EDNS size (the netstack's UDP datagram within the TUN's
/// MTU): the records go and TC is set, so the client asks again over TCP. The question and
/// OPT stay when they fit; else the header alone (ID, flags, rcode, TC, no counts). Never
/// longer than `max` unless `max` is under a header's 12 bytes.
pub fn truncate(answer: &[u8], max: usize) -> Vec<u8> {
    if answer.len() <= max {
        return answer.to_vec();
    }
    if let Ok(mut m) = Message::from_vec(answer) {
        m.take_answers();
        m.take_name_servers();
        m.take_additionals();
        m.set_truncated(true);
        if let Ok(bytes) = m.to_vec()
            && bytes.len() <= max
        {
            return bytes;
        }
    }
    let mut h = [0u8; 12];
    if let (Some(dst), Some(src)) = (h.get_mut(..4), answer.get(..4)) {
        dst.copy_from_slice(src);
    }
    if let Some(b) = h.get_mut(2) {
        *b |= 0x82; // QR and TC
    }
    h.to_vec()
}

/// Encodes `m` for a client that takes at most `limit` bytes: over it, the records go and TC
/// is set (the question and OPT stay).
fn finish(mut m: Message, q: &ParsedQuery, limit: usize) -> Vec<u8> {
    let [id_hi, id_lo] = q.id.to_be_bytes();
    let flags = u8::from(q.recursion_desired);
    match m.to_vec() {
        Ok(bytes) if bytes.len() <= limit => return bytes,
        Ok(_) => {}
        Err(e) => {
            debug!(error = %e, "magicdns: cannot encode an answer, SERVFAIL");
            return header_only(id_hi, id_lo, flags, ResponseCode::ServFail, false);
        }
    }
    m.take_answers();
    m.take_name_servers();
    m.take_additionals();
    m.set_truncated(true);
    match m.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        _ => header_only(id_hi, id_lo, flags, m.response_code(), true),
    }
}

/// The reply quad-100 gives from its own data, or `None` to forward (protocol.md 8.3).
fn decide_local(cfg: &ResolverConfig, q: &ParsedQuery) -> Option<Message> {
    let name = q.name.as_str();
    if q.qtype == RecordType::PTR {
        if let Some(addr) = reverse_name_addr(name) {
            if let Some(target) = reverse_lookup(cfg, addr) {
                let mut m = q.reply(ResponseCode::NoError, true);
                match name_from_canonical(target) {
                    Some(target) => m.add_answer(q.record(RData::PTR(PTR(target)))),
                    None => m.set_response_code(ResponseCode::ServFail),
                };
                return Some(m);
            }
            if cfg.is_authoritative(name) {
                return Some(q.reply(ResponseCode::NXDomain, true));
            }
            // Not ours: forwarded, unless a rule below claims the name.
        }
    }
    // RFC 7686: .onion names never resolve.
    if in_zone(name, "onion.") {
        return Some(q.reply(ResponseCode::NXDomain, true));
    }
    if name == SERVICE_NAME {
        return Some(host_reply(
            q,
            &[IpAddr::V4(SERVICE_V4), IpAddr::V6(SERVICE_V6)],
        ));
    }
    if let Some(via) = via_address(name, q.qtype) {
        let mut m = q.reply(ResponseCode::NoError, true);
        if let Some(addr) = via {
            m.add_answer(q.record(RData::AAAA(AAAA(addr))));
        }
        return Some(m);
    }
    if let Some(addrs) = cfg.extra_record(name).or_else(|| cfg.node(name)) {
        return Some(host_reply(q, addrs));
    }
    if cfg.is_authoritative(name) {
        return Some(q.reply(ResponseCode::NXDomain, true));
    }
    None
}

/// The answer for a name quad-100 knows, by query type: one address of the family asked for
/// (ANY: the first one), NOTIMP for NS/SOA/AXFR/HINFO, no records for anything else.
fn host_reply(q: &ParsedQuery, addrs: &[IpAddr]) -> Message {
    let pick = match q.qtype {
        RecordType::A => addrs.iter().find(|a| a.is_ipv4()),
        RecordType::AAAA => addrs.iter().find(|a| a.is_ipv6()),
        RecordType::ANY => addrs.first(),
        RecordType::NS | RecordType::SOA | RecordType::AXFR | RecordType::HINFO => {
            return q.reply(ResponseCode::NotImp, true);
        }
        _ => None,
    };
    let mut m = q.reply(ResponseCode::NoError, true);
    match pick {
        Some(IpAddr::V4(a)) => {
            m.add_answer(q.record(RData::A(A(*a))));
        }
        Some(IpAddr::V6(a)) => {
            m.add_answer(q.record(RData::AAAA(AAAA(*a))));
        }
        None => {}
    }
    m
}

/// The name for a reverse lookup of `addr`: quad-100's own addresses answer the service
/// name; an address in the 4to6 range is first tried as the IPv4 address it carries.
fn reverse_lookup(cfg: &ResolverConfig, addr: IpAddr) -> Option<&str> {
    let known = |a: IpAddr| -> Option<&str> {
        if a == IpAddr::V4(SERVICE_V4) || a == IpAddr::V6(SERVICE_V6) {
            Some(SERVICE_NAME)
        } else {
            cfg.name_for_addr(a)
        }
    };
    if let IpAddr::V6(v6) = addr {
        let o = v6.octets();
        if o.starts_with(&FOUR_TO_SIX_PREFIX) {
            let v4 = Ipv4Addr::new(100, o[13], o[14], o[15]);
            if let Some(name) = known(IpAddr::V4(v4)) {
                return Some(name);
            }
        }
    }
    known(addr)
}

/// A hickory name from a canonical one (configuration names never need escapes).
fn name_from_canonical(name: &str) -> Option<Name> {
    let body = name.strip_suffix('.')?;
    Name::from_labels(body.split('.').map(str::as_bytes)).ok()
}

/// A 4via6 name, `a-b-c-d-via-<site>` alone or under `ts.net` / `tailscale.net`:
/// `Some(Some(addr))` for AAAA and ANY, `Some(None)` (the name exists, no IPv4) for A, `None`
/// when the name is not one or the type is another.
fn via_address(name: &str, qtype: RecordType) -> Option<Option<Ipv6Addr>> {
    if !matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
        return None;
    }
    let (first, rest) = name.split_once('.')?;
    if !(rest.is_empty() || in_zone(rest, "ts.net.") || in_zone(rest, "tailscale.net.")) {
        return None;
    }
    let (dashed, site) = first.split_once("-via-")?;
    let v4: Ipv4Addr = dashed.replace('-', ".").parse().ok()?;
    let site = parse_site_id(site)?;
    if qtype == RecordType::A {
        return Some(None);
    }
    let mut o = [0u8; 16];
    let (prefix, tail) = o.split_at_mut(8);
    prefix.copy_from_slice(&VIA_PREFIX);
    let (site_bytes, v4_bytes) = tail.split_at_mut(4);
    site_bytes.copy_from_slice(&site.to_be_bytes());
    v4_bytes.copy_from_slice(&v4.octets());
    Some(Some(Ipv6Addr::from(o)))
}

/// A 4via6 site ID the way Go's `strconv.ParseUint(s, 0, 32)` reads it (without `_`): `0x`
/// hex, `0o` or a leading `0` octal, `0b` binary, else decimal.
fn parse_site_id(s: &str) -> Option<u32> {
    let lower = s.to_ascii_lowercase();
    let (digits, radix) = if let Some(h) = lower.strip_prefix("0x") {
        (h, 16)
    } else if let Some(o) = lower.strip_prefix("0o") {
        (o, 8)
    } else if let Some(b) = lower.strip_prefix("0b") {
        (b, 2)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (lower.get(1..)?, 8)
    } else {
        (lower.as_str(), 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}

/// DNS-SD browsing names (RFC 6763 section 11): `b`, `db`, `r`, `dr` or `lb` followed by
/// `_dns-sd._udp.`.
fn bonjour_name(name: &str) -> bool {
    let Some((first, rest)) = name.split_once('.') else {
        return false;
    };
    matches!(first, "b" | "db" | "r" | "dr" | "lb") && rest.starts_with("_dns-sd._udp.")
}

#[cfg(test)]
mod tests {
    //! Queries built with hickory-proto, answers parsed back and checked field by field.
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::config::{ConfigOptions, Host};

    #[test]
    fn truncate_keeps_the_question_and_sets_tc() {
        let mut m = Message::new();
        m.set_id(0x4242)
            .set_message_type(MessageType::Response)
            .add_query(Query::query(
                Name::from_ascii("big.example.").unwrap(),
                RecordType::A,
            ));
        for i in 0..100u8 {
            m.add_answer(Record::from_rdata(
                Name::from_ascii("big.example.").unwrap(),
                60,
                RData::A(A::new(10, 0, 0, i)),
            ));
        }
        let full = m.to_vec().unwrap();
        assert!(full.len() > 1000);
        let short = truncate(&full, 512);
        assert!(short.len() <= 512);
        let back = Message::from_vec(&short).unwrap();
        assert!(back.truncated());
        assert_eq!(back.id(), 0x4242);
        assert!(back.answers().is_empty());
        assert_eq!(back.queries().len(), 1);
        // Short enough already: unchanged.
        assert_eq!(truncate(&full, full.len()), full);
        // Not a message: the header alone, TC set, never longer than asked.
        let junk = [
            0x12u8, 0x34, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        let h = truncate(&junk, 12);
        assert_eq!(h.len(), 12);
        assert_eq!(&h[..2], &[0x12, 0x34]);
        assert_eq!(h[2] & 0x82, 0x82);
        assert!(h[4..].iter().all(|&b| b == 0));
    }
    use hickory_proto::rr::rdata::SOA;
    use std::collections::BTreeMap;
    use std::time::Duration;
    use tailcfg::{DnsConfig, DnsRecord};

    const ID: u16 = 0x4a5b;

    fn resolver_addr(addr: &str) -> tailcfg::Resolver {
        let mut r = tailcfg::Resolver::default();
        r.addr = addr.to_owned();
        r
    }

    fn record(name: &str, ty: &str, value: &str) -> DnsRecord {
        let mut r = DnsRecord::default();
        r.name = name.to_owned();
        r.r#type = ty.to_owned();
        r.value = value.to_owned();
        r
    }

    fn plain(s: &str) -> Upstream {
        Upstream::Plain(s.parse().unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn hosts() -> Vec<Host> {
        let h = |fqdn: &str, addrs: &[&str]| Host {
            fqdn: fqdn.to_owned(),
            addrs: addrs.iter().map(|a| ip(a)).collect(),
        };
        vec![
            h("gw.tail1234.ts.net.", &["100.64.0.1", "fd7a:115c:a1e0::1"]),
            h(
                "peer.tail1234.ts.net.",
                &["100.64.0.2", "fd7a:115c:a1e0::2"],
            ),
            h("v6only.tail1234.ts.net.", &["fd7a:115c:a1e0::3"]),
            h("dup.tail1234.ts.net.", &["100.64.0.5"]),
            h("shared.other.ts.net.", &["100.64.0.6"]),
        ]
    }

    fn dns_config(proxied: bool) -> DnsConfig {
        let mut dns = DnsConfig::default();
        dns.proxied = proxied;
        dns.resolvers = vec![resolver_addr("1.1.1.1"), resolver_addr("8.8.8.8:53")];
        dns.routes = BTreeMap::from([
            (
                "corp.example".to_owned(),
                Some(vec![resolver_addr("10.0.0.53")]),
            ),
            (
                "inner.corp.example".to_owned(),
                Some(vec![resolver_addr("10.0.1.53")]),
            ),
            ("quiet.example".to_owned(), Some(vec![])),
        ]);
        dns.extra_records = vec![
            record("printer.home.arpa", "", "192.168.1.9"),
            record("printer.home.arpa", "", "2001:db8::9"),
            record("dup.tail1234.ts.net", "", "100.99.0.5"),
        ];
        dns
    }

    fn config(proxied: bool, aaaa: bool) -> ResolverConfig {
        let options = ConfigOptions {
            accept_dns: true,
            magicdns_aaaa: aaaa,
        };
        ResolverConfig::new(
            &dns_config(proxied),
            "gw.tail1234.ts.net.",
            &hosts(),
            options,
        )
    }

    fn resolver() -> Resolver {
        Resolver::new(Arc::new(config(true, false)))
    }

    fn build(name: &str, qtype: RecordType, edit: impl FnOnce(&mut Message)) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(ID)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(raw_name(name), qtype));
        edit(&mut m);
        m.to_vec().unwrap()
    }

    /// A name from dotted text, labels taken as raw bytes (so test names may hold anything).
    fn raw_name(name: &str) -> Name {
        let body = name.strip_suffix('.').unwrap_or(name);
        if body.is_empty() {
            return Name::root();
        }
        Name::from_labels(body.split('.').map(str::as_bytes)).unwrap()
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        build(name, qtype, |_| {})
    }

    fn query_edns(name: &str, qtype: RecordType, payload: u16, dnssec_ok: bool) -> Vec<u8> {
        build(name, qtype, |m| {
            let mut e = Edns::new();
            e.set_max_payload(payload).set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        })
    }

    fn now() -> Instant {
        Instant::now()
    }

    fn answered(out: Outcome) -> Message {
        match out {
            Outcome::Answer(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn ask(r: &mut Resolver, name: &str, qtype: RecordType) -> Message {
        answered(r.respond(&query(name, qtype), Transport::Udp, now()))
    }

    /// The common shape of every reply: our ID, a response, RD echoed with RA, the question.
    fn check_reply(m: &Message, rcode: ResponseCode, aa: bool) {
        assert_eq!(m.id(), ID);
        assert_eq!(m.message_type(), MessageType::Response);
        assert_eq!(m.response_code(), rcode, "{m:?}");
        assert_eq!(m.authoritative(), aa, "AA of {m:?}");
        assert!(m.recursion_desired());
        assert!(m.recursion_available());
        assert!(!m.truncated());
        assert_eq!(m.queries().len(), 1);
    }

    fn addrs(m: &Message) -> Vec<IpAddr> {
        m.answers()
            .iter()
            .map(|r| match r.data() {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                other => panic!("unexpected record {other:?}"),
            })
            .collect()
    }

    fn ptr_target(m: &Message) -> String {
        match m.answers() {
            [r] => match r.data() {
                RData::PTR(p) => p.0.to_string(),
                other => panic!("not a PTR: {other:?}"),
            },
            other => panic!("want one answer, got {other:?}"),
        }
    }

    fn forwarded_to(out: Outcome) -> Vec<Upstream> {
        match out {
            Outcome::Forward { upstreams, .. } => upstreams,
            other => panic!("expected a forward, got {other:?}"),
        }
    }

    fn v4_reverse(a: &str) -> String {
        let IpAddr::V4(v4) = ip(a) else { panic!() };
        let o = v4.octets();
        format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
    }

    fn v6_reverse(a: &str) -> String {
        let IpAddr::V6(v6) = ip(a) else { panic!() };
        let mut s = String::new();
        for b in v6.octets().iter().rev() {
            s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
        }
        s + "ip6.arpa."
    }

    #[test]
    fn node_a_record() {
        let mut r = resolver();
        let m = ask(&mut r, "peer.tail1234.ts.net.", RecordType::A);
        check_reply(&m, ResponseCode::NoError, true);
        assert_eq!(addrs(&m), vec![ip("100.64.0.2")]);
        let rec = &m.answers()[0];
        assert_eq!(rec.ttl(), LOCAL_TTL);
        assert_eq!(rec.ttl(), 600);
        assert_eq!(rec.dns_class(), DNSClass::IN);
        assert_eq!(rec.name().to_ascii(), "peer.tail1234.ts.net.");
        assert!(m.name_servers().is_empty(), "no SOA in v1.98 answers");
        assert!(m.extensions().is_none(), "no OPT unless asked with one");
    }

    #[test]
    fn names_match_without_case_and_echo_the_question() {
        let mut r = resolver();
        let m = ask(&mut r, "PeEr.TAIL1234.ts.NET.", RecordType::A);
        check_reply(&m, ResponseCode::NoError, true);
        assert_eq!(addrs(&m), vec![ip("100.64.0.2")]);
        assert_eq!(m.queries()[0].name().to_ascii(), "PeEr.TAIL1234.ts.NET.");
        assert_eq!(m.answers()[0].name().to_ascii(), "PeEr.TAIL1234.ts.NET.");
    }

    #[test]
    fn short_names_only_when_proxied() {
        let mut r = resolver();
        let m = ask(&mut r, "peer.", RecordType::A);
        check_reply(&m, ResponseCode::NoError, true);
        assert_eq!(addrs(&m), vec![ip("100.64.0.2")]);
        // Nodes outside our suffix have no short name; two labels are not a short name.
        assert!(matches!(
            r.respond(&query("shared.", RecordType::A), Transport::Udp, now()),
            Outcome::Forward { .. }
        ));
        assert!(matches!(
            r.respond(
                &query("peer.tail1234.", RecordType::A),
                Transport::Udp,
                now()
            ),
            Outcome::Forward { .. }
        ));
        let m = ask(&mut r, "shared.other.ts.net.", RecordType::A);
        assert_eq!(addrs(&m), vec![ip("100.64.0.6")]);

        let mut off = Resolver::new(Arc::new(config(false, false)));
        let out = off.respond(&query("peer.", RecordType::A), Transport::Udp, now());
        assert_eq!(
            forwarded_to(out),
            vec![plain("1.1.1.1:53"), plain("8.8.8.8:53")]
        );
        // The FQDN still answers without MagicDNS, and there is no authoritative zone.
        let m = ask(&mut off, "peer.tail1234.ts.net.", RecordType::A);
        assert_eq!(addrs(&m), vec![ip("100.64.0.2")]);
        let out = off.respond(
            &query("nope.tail1234.ts.net.", RecordType::A),
            Transport::Udp,
            now(),
        );
        assert!(matches!(out, Outcome::Forward { .. }));
    }

    #[test]
    fn aaaa_follows_the_rule() {
        let mut r = resolver();
        // Peer has IPv4 and we lack magicdns-aaaa: the name exists, no AAAA.
        let m = ask(&mut r, "peer.tail1234.ts.net.", RecordType::AAAA);
        check_reply(&m, ResponseCode::NoError, true);
        assert!(m.answers().is_empty());
        // A node without IPv4 answers its IPv6.
        let m = ask(&mut r, "v6only.tail1234.ts.net.", RecordType::AAAA);
        assert_eq!(addrs(&m), vec![ip("fd7a:115c:a1e0::3")]);
        let m = ask(&mut r, "v6only.tail1234.ts.net.", RecordType::A);
        check_reply(&m, ResponseCode::NoError, true);
        assert!(m.answers().is_empty());
        // With the capability, every node answers AAAA.
        let mut cap = Resolver::new(Arc::new(config(true, true)));
        let m = ask(&mut cap, "peer.tail1234.ts.net.", RecordType::AAAA);
        assert_eq!(addrs(&m), vec![ip("fd7a:115c:a1e0::2")]);
        assert_eq!(m.answers()[0].ttl(), LOCAL_TTL);
    }

    #[test]
    fn any_is_the_first_address() {
        let mut r = Resolver::new(Arc::new(config(true, true)));
        let m = ask(&mut r, "peer.tail1234.ts.net.", RecordType::ANY);
        check_reply(&m, ResponseCode::NoError, true);
        assert_eq!(addrs(&m), vec![ip("100.64.0.2")]);
        let m = ask(&mut r, "v6only.tail1234.ts.net.", RecordType::ANY);
        assert_eq!(addrs(&m), vec![ip("fd7a:115c:a1e0::3")]);
    }

    #[test]
    fn other_types_on_local_names() {
        let mut r = resolver();
        for t in [
            RecordType::NS,
            RecordType::SOA,
            RecordType::AXFR,
            RecordType::HINFO,
        ] {
            let m = ask(&mut r, "peer.tail1234.ts.net.", t);
            check_reply(&m, ResponseCode::NotImp, true);
            assert!(m.answers().is_empty());
        }
        for t in [
            RecordType::TXT,
            RecordType::MX,
            RecordType::SRV,
            RecordType::CNAME,
            RecordType::PTR,
            RecordType::Unknown(9824),
        ] {
            let m = ask(&mut r, "peer.tail1234.ts.net.", t);
            check_reply(&m, ResponseCode::NoError, true);
            assert!(m.answers().is_empty(), "{t:?}");
        }
    }

    #[test]
    fn unknown_names_in_zones_are_nxdomain() {
        let mut r = resolver();
        for name in [
            "nope.tail1234.ts.net.",
            "tail1234.ts.net.",
            "a.peer.tail1234.ts.net.",
            "x.quiet.example.",
            "quiet.example.",
            "sub.printer.home.arpa.",
            "1.0.64.100.in-addr.arpa.",
        ] {
            let m = ask(&mut r, name, RecordType::A);
            check_reply(&m, ResponseCode::NXDomain, true);
            assert!(
                m.answers().is_empty() && m.name_servers().is_empty(),
                "{name}"
            );
        }
    }

    #[test]
    fn extra_records_come_first() {
        let mut r = resolver();
        let m = ask(&mut r, "printer.home.arpa.", RecordType::A);
        check_reply(&m, ResponseCode::NoError, true);
        assert_eq!(addrs(&m), vec![ip("192.168.1.9")]);
        // ExtraRecords are not subject to the AAAA rule.
        let m = ask(&mut r, "PRINTER.home.arpa.", RecordType::AAAA);
        assert_eq!(addrs(&m), vec![ip("2001:db8::9")]);
        let m = ask(&mut r, "dup.tail1234.ts.net.", RecordType::A);
        assert_eq!(addrs(&m), vec![ip("100.99.0.5")]);
        // ExtraRecords have no short names.
        let mut dns = DnsConfig::default();
        dns.proxied = true;
        dns.extra_records = vec![record("only-extra.tail1234.ts.net", "A", "100.99.0.7")];
        let cfg = ResolverConfig::new(
            &dns,
            "gw.tail1234.ts.net.",
            &hosts(),
            ConfigOptions {
                accept_dns: true,
                magicdns_aaaa: false,
            },
        );
        let mut r = Resolver::new(Arc::new(cfg));
        let m = ask(&mut r, "only-extra.tail1234.ts.net.", RecordType::A);
        assert_eq!(addrs(&m), vec![ip("100.99.0.7")]);
        let out = r.respond(&query("only-extra.", RecordType::A), Transport::Udp, now());
        let m = answered(out);
        check_reply(&m, ResponseCode::ServFail, false);
    }

    #[test]
    fn reverse_lookups() {
        let mut r = resolver();
        for (addr, want) in [
            ("100.100.100.100", SERVICE_NAME),
            ("100.64.0.2", "peer.tail1234.ts.net."),
            ("100.64.0.1", "gw.tail1234.ts.net."),
            ("192.168.1.9", "printer.home.arpa."),
        ] {
            let m = ask(&mut r, &v4_reverse(addr), RecordType::PTR);
            check_reply(&m, ResponseCode::NoError, true);
            assert_eq!(ptr_target(&m), want, "{addr}");
            assert_eq!(m.answers()[0].ttl(), LOCAL_TTL);
        }
        for (addr, want) in [
            ("fd7a:115c:a1e0::53", SERVICE_NAME),
            ("fd7a:115c:a1e0::3", "v6only.tail1234.ts.net."),
            // 4to6: the low 24 bits are 100.x.y.z's last three octets.
            (
                "fd7a:115c:a1e0:ab12:4843:cd96:6240:2",
                "peer.tail1234.ts.net.",
            ),
            ("fd7a:115c:a1e0:ab12:4843:cd96:6264:6464", SERVICE_NAME),
        ] {
            let m = ask(&mut r, &v6_reverse(addr), RecordType::PTR);
            check_reply(&m, ResponseCode::NoError, true);
            assert_eq!(ptr_target(&m), want, "{addr}");
        }
        // Unknown addresses inside the reverse zones: NXDOMAIN.
        for name in [
            v4_reverse("100.64.9.9"),
            v4_reverse("100.127.255.255"),
            v6_reverse("fd7a:115c:a1e0::99"),
            v6_reverse("fd7a:115c:a1e0:ab12:4843:cd96:6240:99"),
            // Not an address, but inside a zone.
            "64.100.in-addr.arpa.".to_owned(),
        ] {
            let m = ask(&mut r, &name, RecordType::PTR);
            check_reply(&m, ResponseCode::NXDomain, true);
        }
        // Outside them: forwarded.
        for name in [
            v4_reverse("8.8.8.8"),
            v4_reverse("100.128.0.1"),
            v4_reverse("100.63.0.1"),
            v6_reverse("2001:db8::1"),
            "x.y.in-addr.arpa.".to_owned(),
        ] {
            let out = r.respond(&query(&name, RecordType::PTR), Transport::Udp, now());
            assert_eq!(
                forwarded_to(out),
                vec![plain("1.1.1.1:53"), plain("8.8.8.8:53")],
                "{name}"
            );
        }
        // Without MagicDNS there are no reverse zones, but known addresses still answer.
        let mut off = Resolver::new(Arc::new(config(false, false)));
        let m = ask(&mut off, &v4_reverse("100.64.0.2"), RecordType::PTR);
        assert_eq!(ptr_target(&m), "peer.tail1234.ts.net.");
        let out = off.respond(
            &query(&v4_reverse("100.64.9.9"), RecordType::PTR),
            Transport::Udp,
            now(),
        );
        assert!(matches!(out, Outcome::Forward { .. }));
    }

    #[test]
    fn onion_is_nxdomain() {
        let mut r = resolver();
        for name in ["duckduckgo.onion.", "a.b.ONION.", "onion."] {
            let m = ask(&mut r, name, RecordType::A);
            check_reply(&m, ResponseCode::NXDomain, true);
        }
        let out = r.respond(
            &query("onion.example.", RecordType::A),
            Transport::Udp,
            now(),
        );
        assert!(matches!(out, Outcome::Forward { .. }));
        let out = r.respond(&query("notonion.", RecordType::A), Transport::Udp, now());
        assert!(matches!(out, Outcome::Forward { .. }));
    }

    #[test]
    fn service_name() {
        // Even with nothing configured at all.
        let mut r = Resolver::new(Arc::new(ResolverConfig::default()));
        let m = ask(
            &mut r,
            "MagicDNS.localhost-tailscale-daemon.",
            RecordType::A,
        );
        check_reply(&m, ResponseCode::NoError, true);
        assert_eq!(addrs(&m), vec![IpAddr::V4(SERVICE_V4)]);
        let m = ask(&mut r, SERVICE_NAME, RecordType::AAAA);
        assert_eq!(addrs(&m), vec![IpAddr::V6(SERVICE_V6)]);
        assert_eq!(ip("fd7a:115c:a1e0::53"), IpAddr::V6(SERVICE_V6));
        let m = ask(&mut r, SERVICE_NAME, RecordType::TXT);
        check_reply(&m, ResponseCode::NoError, true);
        assert!(m.answers().is_empty());
    }

    #[test]
    fn via_names() {
        let mut r = resolver();
        let m = ask(&mut r, "10-1-2-3-via-7.", RecordType::AAAA);
        check_reply(&m, ResponseCode::NoError, true);
        assert_eq!(addrs(&m), vec![ip("fd7a:115c:a1e0:b1a:0:7:a01:203")]);
        let m = ask(
            &mut r,
            "10-1-2-3-via-0x10.tail1234.ts.net.",
            RecordType::ANY,
        );
        assert_eq!(addrs(&m), vec![ip("fd7a:115c:a1e0:b1a:0:10:a01:203")]);
        let m = ask(
            &mut r,
            "192-168-1-2-via-4294967295.tailscale.net.",
            RecordType::AAAA,
        );
        assert_eq!(addrs(&m), vec![ip("fd7a:115c:a1e0:b1a:ffff:ffff:c0a8:102")]);
        let m = ask(&mut r, "10-1-2-3-via-7.", RecordType::A);
        check_reply(&m, ResponseCode::NoError, true);
        assert!(m.answers().is_empty());
        for not_via in [
            "10-1-2-3-via-7.example.com.",
            "10-1-2-via-7.",
            "10-1-2-300-via-7.",
            "10-1-2-3-via-4294967296.",
            "10-1-2-3-via-+7.",
            "10-1-2-3-via-.",
        ] {
            let out = r.respond(&query(not_via, RecordType::AAAA), Transport::Udp, now());
            assert!(matches!(out, Outcome::Forward { .. }), "{not_via}");
        }
        let out = r.respond(
            &query("10-1-2-3-via-7.", RecordType::TXT),
            Transport::Udp,
            now(),
        );
        assert!(matches!(out, Outcome::Forward { .. }));
        assert_eq!(parse_site_id("010"), Some(8));
        assert_eq!(parse_site_id("0b101"), Some(5));
        assert_eq!(parse_site_id("0o17"), Some(15));
        assert_eq!(parse_site_id("0"), Some(0));
        assert_eq!(parse_site_id("09"), None);
        assert_eq!(parse_site_id("0x"), None);
    }

    #[test]
    fn forwarding_follows_the_longest_route() {
        let mut r = resolver();
        let cases = [
            (
                "www.example.com.",
                vec![plain("1.1.1.1:53"), plain("8.8.8.8:53")],
            ),
            ("corp.example.", vec![plain("10.0.0.53:53")]),
            ("db.CORP.example.", vec![plain("10.0.0.53:53")]),
            ("a.inner.corp.example.", vec![plain("10.0.1.53:53")]),
            (
                "notcorp.example.",
                vec![plain("1.1.1.1:53"), plain("8.8.8.8:53")],
            ),
            (".", vec![plain("1.1.1.1:53"), plain("8.8.8.8:53")]),
        ];
        for (name, want) in cases {
            let q = query(name, RecordType::A);
            match r.respond(&q, Transport::Udp, now()) {
                Outcome::Forward { upstreams, query } => {
                    assert_eq!(upstreams, want, "{name}");
                    assert_eq!(query, q, "the query goes upstream unchanged");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn no_upstream_is_servfail() {
        let cfg = ResolverConfig::new(
            &DnsConfig::default(),
            "gw.tail1234.ts.net.",
            &hosts(),
            ConfigOptions::default(),
        );
        let mut r = Resolver::new(Arc::new(cfg));
        let m = ask(&mut r, "www.example.com.", RecordType::A);
        check_reply(&m, ResponseCode::ServFail, false);
        // The base nameservers fill the default route.
        let cfg = ResolverConfig::new(
            &DnsConfig::default(),
            "gw.tail1234.ts.net.",
            &hosts(),
            ConfigOptions::default(),
        )
        .with_base_upstreams(vec![plain("192.168.1.1:53")]);
        r.set_config(Arc::new(cfg));
        let out = r.respond(
            &query("www.example.com.", RecordType::A),
            Transport::Udp,
            now(),
        );
        assert_eq!(forwarded_to(out), vec![plain("192.168.1.1:53")]);
    }

    #[test]
    fn bonjour_browsing_is_nxdomain() {
        let mut r = resolver();
        for name in [
            "b._dns-sd._udp.0.1.168.192.in-addr.arpa.",
            "lb._dns-sd._udp.example.com.",
            "DB._dns-sd._udp.local.",
        ] {
            let m = ask(&mut r, name, RecordType::PTR);
            check_reply(&m, ResponseCode::NXDomain, false);
        }
        let out = r.respond(
            &query("x._dns-sd._udp.example.", RecordType::PTR),
            Transport::Udp,
            now(),
        );
        assert!(matches!(out, Outcome::Forward { .. }));
    }

    /// An upstream's answer to `q` with `n` A records of `ttl`, under upstream ID 0x9999.
    fn upstream_answer(q: &[u8], n: usize, ttl: u32) -> Vec<u8> {
        let mut m = Message::from_vec(q).unwrap();
        m.set_id(0x9999)
            .set_message_type(MessageType::Response)
            .set_recursion_available(true);
        let name = m.queries()[0].name().clone();
        for i in 0..n {
            let o = u8::try_from(i % 250).unwrap();
            m.add_answer(Record::from_rdata(
                name.clone(),
                ttl,
                RData::A(A(Ipv4Addr::new(192, 0, 2, o))),
            ));
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn forwarded_answers_get_the_client_id_and_are_cached() {
        let mut r = resolver();
        let t0 = now();
        let q = query("www.example.com.", RecordType::A);
        assert!(matches!(
            r.respond(&q, Transport::Udp, t0),
            Outcome::Forward { .. }
        ));
        let up = upstream_answer(&q, 2, 120);
        let out = r.forwarded(&q, Some(&up), t0);
        assert_eq!(out.get(..2), Some(&ID.to_be_bytes()[..]));
        assert_eq!(out.get(2..), up.get(2..), "otherwise passed through");
        assert_eq!(r.cache().len(), 1);

        // A second client (another ID, other case) is served from the cache, TTLs aged.
        let q2 = build("WWW.example.com.", RecordType::A, |m| {
            m.set_id(0x0102);
        });
        let m = answered(r.respond(&q2, Transport::Udp, t0 + Duration::from_secs(20)));
        assert_eq!(m.id(), 0x0102);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(m.queries()[0].name().to_ascii(), "WWW.example.com.");
        assert_eq!(addrs(&m), vec![ip("192.0.2.0"), ip("192.0.2.1")]);
        assert!(m.answers().iter().all(|a| a.ttl() == 100));
        // Expired: forwarded again.
        let out = r.respond(&q2, Transport::Udp, t0 + Duration::from_secs(120));
        assert!(matches!(out, Outcome::Forward { .. }));
    }

    #[test]
    fn cached_answers_follow_the_client_edns() {
        let mut r = resolver();
        let t0 = now();
        let q = query_edns("www.example.com.", RecordType::A, 1232, false);
        let mut up = Message::from_vec(&upstream_answer(&q, 1, 60)).unwrap();
        let mut e = Edns::new();
        e.set_max_payload(1232);
        up.set_edns(e);
        let up = up.to_vec().unwrap();
        r.forwarded(&q, Some(&up), t0);
        // A client without EDNS gets no OPT; one with EDNS gets ours.
        let m = answered(r.respond(
            &query("www.example.com.", RecordType::A),
            Transport::Udp,
            t0,
        ));
        assert!(m.extensions().is_none());
        assert_eq!(addrs(&m).len(), 1);
        let m = answered(r.respond(&q, Transport::Udp, t0));
        assert_eq!(
            m.extensions().as_ref().map(Edns::max_payload),
            Some(MAX_UDP_PAYLOAD)
        );
        // The DO bit is part of the key.
        let q_do = query_edns("www.example.com.", RecordType::A, 1232, true);
        assert!(matches!(
            r.respond(&q_do, Transport::Udp, t0),
            Outcome::Forward { .. }
        ));
    }

    #[test]
    fn no_answer_is_servfail() {
        let mut r = resolver();
        let q = query_edns("www.example.com.", RecordType::A, 1400, true);
        let m = Message::from_vec(&r.forwarded(&q, None, now())).unwrap();
        check_reply(&m, ResponseCode::ServFail, false);
        let e = m.extensions().as_ref().unwrap();
        assert!(e.flags().dnssec_ok);
        assert_eq!(r.cache().len(), 0);
    }

    #[test]
    fn mismatched_answers_are_rejected() {
        let mut r = resolver();
        let t0 = now();
        let q = query("www.example.com.", RecordType::A);
        let other = upstream_answer(&query("evil.example.com.", RecordType::A), 1, 600);
        let aaaa = upstream_answer(&query("www.example.com.", RecordType::AAAA), 0, 600);
        let mut not_response = upstream_answer(&q, 1, 600);
        not_response[2] &= 0x7f;
        for bad in [other, aaaa, not_response, vec![1, 2, 3], Vec::new()] {
            let m = Message::from_vec(&r.forwarded(&q, Some(&bad), t0)).unwrap();
            check_reply(&m, ResponseCode::ServFail, false);
        }
        assert!(r.cache().is_empty());
    }

    #[test]
    fn errors_and_truncation_are_not_cached() {
        let mut r = resolver();
        let t0 = now();
        let q = query("www.example.com.", RecordType::A);
        let mut sf = Message::from_vec(&upstream_answer(&q, 0, 60)).unwrap();
        sf.set_response_code(ResponseCode::ServFail);
        let out = r.forwarded(&q, Some(&sf.to_vec().unwrap()), t0);
        assert_eq!(
            Message::from_vec(&out).unwrap().response_code(),
            ResponseCode::ServFail
        );
        let mut tc = Message::from_vec(&upstream_answer(&q, 1, 60)).unwrap();
        tc.set_truncated(true);
        r.forwarded(&q, Some(&tc.to_vec().unwrap()), t0);
        assert!(r.cache().is_empty());
    }

    #[test]
    fn negative_upstream_answers_are_cached_by_soa() {
        let mut r = resolver();
        let t0 = now();
        let q = query("nx.example.com.", RecordType::A);
        let mut nx = Message::from_vec(&upstream_answer(&q, 0, 0)).unwrap();
        nx.set_response_code(ResponseCode::NXDomain);
        let soa = SOA::new(
            Name::from_ascii("ns.example.com.").unwrap(),
            Name::from_ascii("host.example.com.").unwrap(),
            1,
            7200,
            900,
            1_209_600,
            900,
        );
        nx.add_name_server(Record::from_rdata(
            Name::from_ascii("example.com.").unwrap(),
            3600,
            RData::SOA(soa),
        ));
        r.forwarded(&q, Some(&nx.to_vec().unwrap()), t0);
        let m = answered(r.respond(&q, Transport::Udp, t0 + Duration::from_secs(100)));
        check_reply(&m, ResponseCode::NXDomain, false);
        // Records age from what the upstream said; the entry itself lives 300 s.
        assert_eq!(m.name_servers()[0].ttl(), 3500);
        // The negative cap is 300 s, below the SOA's 900.
        let out = r.respond(&q, Transport::Udp, t0 + Duration::from_secs(300));
        assert!(matches!(out, Outcome::Forward { .. }));
    }

    #[test]
    fn big_answers_are_truncated_for_udp() {
        let mut r = resolver();
        let t0 = now();
        let q = query("big.example.com.", RecordType::A);
        let up = upstream_answer(&q, 60, 300);
        assert!(up.len() > 512);
        let m = Message::from_vec(&r.forwarded(&q, Some(&up), t0)).unwrap();
        assert!(m.truncated());
        assert_eq!(m.id(), ID);
        assert!(m.answers().is_empty());
        assert_eq!(m.queries().len(), 1);
        // Over TCP the same answer is whole.
        let out = r.forwarded_over(&q, Some(&up), Transport::Tcp, t0);
        assert_eq!(out.len(), up.len());
        assert!(!Message::from_vec(&out).unwrap().truncated());
        // The cache has it (not truncated): UDP gets TC, TCP the records.
        let out = r.respond(&q, Transport::Udp, t0);
        let Outcome::Answer(bytes) = out else {
            panic!()
        };
        assert!(bytes.len() <= 512);
        assert!(Message::from_vec(&bytes).unwrap().truncated());
        let m = answered(r.respond(&q, Transport::Tcp, t0));
        assert_eq!(m.answers().len(), 60);
        // A client with a 4096-byte EDNS buffer gets it whole over UDP, OPT echoed.
        let q = query_edns("big.example.com.", RecordType::A, 8192, false);
        let m = answered(r.respond(&q, Transport::Udp, t0));
        assert!(!m.truncated());
        assert_eq!(m.answers().len(), 60);
        assert_eq!(m.extensions().as_ref().map(Edns::max_payload), Some(4096));
        // A client asking for less than 512 still gets 512.
        let q = query_edns("mid.example.com.", RecordType::A, 100, false);
        let up = upstream_answer(&q, 25, 300);
        assert!(up.len() > 100 && up.len() <= 512, "{}", up.len());
        let m = Message::from_vec(&r.forwarded(&q, Some(&up), t0)).unwrap();
        assert!(!m.truncated());
        // 1232 is honoured: 100 records do not fit, TC with the OPT kept.
        let q = query_edns("huge.example.com.", RecordType::A, 1232, false);
        let up = upstream_answer(&q, 100, 300);
        let out = r.forwarded(&q, Some(&up), t0);
        assert!(out.len() <= 1232);
        let m = Message::from_vec(&out).unwrap();
        assert!(m.truncated() && m.answers().is_empty());
        assert!(m.extensions().is_some());
        // Limit arithmetic.
        let q = ParsedQuery::parse(&query_edns("a.", RecordType::A, 65_000, false))
            .ok()
            .unwrap();
        assert_eq!(q.size_limit(Transport::Udp), 4096);
        assert_eq!(q.size_limit(Transport::Tcp), 65_535);
    }

    #[test]
    fn edns_is_echoed() {
        let mut r = resolver();
        let q = query_edns("peer.tail1234.ts.net.", RecordType::A, 1232, true);
        let m = answered(r.respond(&q, Transport::Udp, now()));
        check_reply(&m, ResponseCode::NoError, true);
        let e = m.extensions().as_ref().unwrap();
        assert_eq!(e.max_payload(), MAX_UDP_PAYLOAD);
        assert_eq!(e.version(), 0);
        assert!(e.flags().dnssec_ok);
        let q = build("peer.tail1234.ts.net.", RecordType::A, |m| {
            let mut e = Edns::new();
            e.set_version(1);
            m.set_edns(e);
        });
        let m = answered(r.respond(&q, Transport::Udp, now()));
        // BADVERS and BADSIG share the value 16; hickory reads it back as BADSIG.
        assert_eq!(
            u16::from(m.response_code()),
            u16::from(ResponseCode::BADVERS)
        );
        assert_eq!(m.extensions().as_ref().map(Edns::version), Some(0));
        assert!(m.answers().is_empty());
    }

    #[test]
    fn set_config_keeps_the_cache_only_when_forwarding_is_unchanged() {
        let mut r = resolver();
        let t0 = now();
        let q = query("www.example.com.", RecordType::A);
        r.forwarded(&q, Some(&upstream_answer(&q, 1, 600)), t0);
        assert_eq!(r.cache().len(), 1);
        // A netmap change that only moves peers keeps it.
        let mut hs = hosts();
        hs.pop();
        let cfg = ResolverConfig::new(
            &dns_config(true),
            "gw.tail1234.ts.net.",
            &hs,
            ConfigOptions {
                accept_dns: true,
                magicdns_aaaa: false,
            },
        );
        r.set_config(Arc::new(cfg));
        assert_eq!(r.cache().len(), 1);
        assert!(r.config().node("shared.other.ts.net.").is_none());
        // New resolvers drop it.
        let mut dns = dns_config(true);
        dns.resolvers = vec![resolver_addr("9.9.9.9")];
        let cfg = ResolverConfig::new(&dns, "gw.tail1234.ts.net.", &hs, ConfigOptions::default());
        r.set_config(Arc::new(cfg));
        assert!(r.cache().is_empty());
    }

    #[test]
    fn bad_queries() {
        let mut r = resolver();
        let t = now();
        let good = query("peer.tail1234.ts.net.", RecordType::A);
        // Too short for a header, or a response: nothing.
        for short in [&good[..0], &good[..1], &good[..11]] {
            assert_eq!(r.respond(short, Transport::Udp, t), Outcome::Drop);
        }
        let mut resp = good.clone();
        resp[2] |= 0x80;
        assert_eq!(r.respond(&resp, Transport::Udp, t), Outcome::Drop);

        let header_reply = |out: Outcome| -> [u8; 12] {
            let Outcome::Answer(b) = out else {
                panic!("{out:?}")
            };
            b.try_into().unwrap()
        };
        // Another opcode (STATUS = 2): NOTIMP, opcode and ID echoed.
        let mut status = good.clone();
        status[2] = (status[2] & 0x87) | (2 << 3);
        let h = header_reply(r.respond(&status, Transport::Udp, t));
        assert_eq!(h[..2], ID.to_be_bytes());
        assert_eq!(h[2] & 0x80, 0x80);
        assert_eq!((h[2] >> 3) & 0xf, 2);
        assert_eq!(h[3] & 0xf, ResponseCode::NotImp.low());
        // A header alone (no question): FORMERR.
        let mut bare = good[..12].to_vec();
        bare[5] = 0;
        let h = header_reply(r.respond(&bare, Transport::Udp, t));
        assert_eq!(h[3] & 0xf, ResponseCode::FormErr.low());
        assert_eq!(h[..2], ID.to_be_bytes());
        // The question cut short: FORMERR with the ID.
        let h = header_reply(r.respond(&good[..good.len() - 2], Transport::Udp, t));
        assert_eq!(h[3] & 0xf, ResponseCode::FormErr.low());
        // Counts that cannot fit: FORMERR without parsing.
        let mut huge = good.clone();
        huge[6..12].copy_from_slice(&[0xff; 6]);
        let h = header_reply(r.respond(&huge, Transport::Udp, t));
        assert_eq!(h[3] & 0xf, ResponseCode::FormErr.low());
        // Two questions: FORMERR.
        let two = build("peer.tail1234.ts.net.", RecordType::A, |m| {
            m.add_query(Query::query(
                Name::from_ascii("gw.tail1234.ts.net.").unwrap(),
                RecordType::A,
            ));
        });
        let h = header_reply(r.respond(&two, Transport::Udp, t));
        assert_eq!(h[3] & 0xf, ResponseCode::FormErr.low());
        // Class CH (and unknown classes): REFUSED, question echoed.
        for class in [DNSClass::CH, DNSClass::HS, DNSClass::Unknown(77)] {
            let q = build("version.bind.", RecordType::TXT, |m| {
                m.queries_mut()[0].set_query_class(class);
            });
            let m = answered(r.respond(&q, Transport::Udp, t));
            check_reply(&m, ResponseCode::Refused, false);
        }
        // Class ANY is served like IN.
        let q = build("peer.tail1234.ts.net.", RecordType::A, |m| {
            m.queries_mut()[0].set_query_class(DNSClass::ANY);
        });
        let m = answered(r.respond(&q, Transport::Udp, t));
        assert_eq!(addrs(&m), vec![ip("100.64.0.2")]);
        // OPT as a question type: FORMERR.
        let m = ask(&mut r, "peer.tail1234.ts.net.", RecordType::OPT);
        check_reply(&m, ResponseCode::FormErr, false);
        // forwarded() on a query respond() would drop sends nothing.
        assert!(r.forwarded(&good[..5], None, t).is_empty());
        assert_eq!(r.forwarded(&bare, None, t).len(), 12);
    }

    #[test]
    fn compression_loops_are_formerr() {
        let mut r = resolver();
        let t = now();
        let mut head = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        // A name that points at itself, then two that point at each other.
        let mut selfloop = head.clone();
        selfloop.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let mut pair = head.clone();
        pair.extend_from_slice(&[1, b'a', 0xc0, 16, 0xc0, 12, 0, 1, 0, 1]);
        // A forward pointer past the end.
        head.extend_from_slice(&[0xc0, 0xff, 0, 1, 0, 1]);
        for bad in [selfloop, pair, head] {
            let Outcome::Answer(b) = r.respond(&bad, Transport::Udp, t) else {
                panic!()
            };
            assert_eq!(b.len(), 12);
            assert_eq!(b[3] & 0xf, ResponseCode::FormErr.low());
            assert_eq!(b[..2], [0x12, 0x34]);
        }
    }

    /// xorshift64*: a fixed, dependency-free stream of test bytes.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
        }
    }

    fn check_outcome(input: &[u8], out: &Outcome, transport: Transport) {
        match out {
            Outcome::Answer(b) => {
                let cap = if transport == Transport::Udp {
                    4096
                } else {
                    65_535
                };
                assert!(b.len() >= 12 && b.len() <= cap, "{} bytes", b.len());
                assert_eq!(b.get(..2), input.get(..2), "ID echoed");
                assert_eq!(b[2] & 0x80, 0x80, "QR set");
            }
            Outcome::Forward { upstreams, query } => {
                assert!(!upstreams.is_empty());
                assert_eq!(query.as_slice(), input);
            }
            Outcome::Drop => {}
        }
    }

    #[test]
    fn flood_of_garbage() {
        let mut r = resolver();
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let t0 = now();
        let mut valid = Vec::new();
        for (name, t) in [
            ("peer.tail1234.ts.net.", RecordType::A),
            ("www.example.com.", RecordType::AAAA),
            ("2.0.64.100.in-addr.arpa.", RecordType::PTR),
            ("10-1-2-3-via-7.", RecordType::AAAA),
            ("x.onion.", RecordType::ANY),
        ] {
            valid.push(query(name, t));
            valid.push(query_edns(name, t, 1232, true));
        }
        let mut inputs: Vec<Vec<u8>> = Vec::new();
        for q in &valid {
            // Every truncation and every single-byte change of each valid query.
            for len in 0..q.len() {
                inputs.push(q[..len].to_vec());
            }
            for pos in 0..q.len() {
                for v in [0x00, 0xff, 0xc0, 0x3f, rng.byte()] {
                    let mut m = q.clone();
                    m[pos] = v;
                    inputs.push(m);
                }
            }
        }
        for _ in 0..3000 {
            let len = rng.below(600);
            let mut b: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            if b.len() > 3 && rng.below(2) == 0 {
                b[2] &= 0x07; // a plain query header makes deeper parsing likelier
                if let Some(c) = b.get_mut(4..6) {
                    c.copy_from_slice(&[0, 1]);
                }
            }
            inputs.push(b);
        }
        for (i, input) in inputs.iter().enumerate() {
            let t = t0 + Duration::from_millis(u64::try_from(i).unwrap());
            let transport = if i % 3 == 0 {
                Transport::Tcp
            } else {
                Transport::Udp
            };
            let out = r.respond(input, transport, t);
            check_outcome(input, &out, transport);
            // The same bytes as an upstream's answer to a good query, and as the query itself.
            let q = &valid[i % valid.len()];
            let back = r.forwarded(q, Some(input), t);
            assert!(back.len() >= 12 && back.len() <= 4096);
            assert_eq!(back.get(..2), q.get(..2));
            let back = r.forwarded_over(input, Some(q), transport, t);
            assert!(back.is_empty() || back.get(..2) == input.get(..2));
            assert!(back.len() <= 65_535);
        }
        assert!(r.cache().len() <= r.cache().limits().max_entries);
        assert!(r.cache().bytes() <= r.cache().limits().max_bytes);
    }
}

//! The bounded, TTL-respecting cache of forwarded answers.
//!
//! Entries are keyed by (lowercased query name, type, class, DO bit) and hold the upstream's
//! answer as it came on the wire. An entry lives as long as the smallest TTL in its answer and
//! authority sections (a negative answer: its SOA's minimum, RFC 2308), within caps. When
//! served, every record's TTL is lowered by the whole seconds the entry has spent here; the
//! resolver then gives it the client's ID and question. The cache is bounded both by entry
//! count and by bytes; when full it drops expired entries, then the oldest.
//! SERVFAIL, other errors, truncated answers and negative answers without an SOA are never
//! stored.

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, Record};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Bookkeeping cost charged per entry on top of its answer bytes and name.
const ENTRY_OVERHEAD: usize = 96;

/// The cache's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// At most this many entries (0 disables the cache).
    pub max_entries: usize,
    /// At most this many bytes of answers, names and bookkeeping.
    pub max_bytes: usize,
    /// Positive answers are kept at most this long, whatever their TTL.
    pub max_ttl: Duration,
    /// Negative answers (NXDOMAIN, or no records of the type) are kept at most this long.
    pub max_negative_ttl: Duration,
}

impl Default for CacheLimits {
    /// 1024 entries, 512 KiB, one day for positive answers, 300 s for negative ones.
    fn default() -> Self {
        Self {
            max_entries: 1024,
            max_bytes: 512 * 1024,
            max_ttl: Duration::from_secs(86_400),
            max_negative_ttl: Duration::from_secs(300),
        }
    }
}

/// What an answer is cached under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    /// The canonical (lowercase) query name.
    pub(crate) name: String,
    pub(crate) qtype: u16,
    pub(crate) qclass: u16,
    /// The query's EDNS DO bit: DNSSEC-aware clients get answers with signatures.
    pub(crate) dnssec_ok: bool,
}

#[derive(Debug)]
struct CacheEntry {
    wire: Vec<u8>,
    stored: Instant,
    expires: Instant,
    seq: u64,
    cost: usize,
}

/// A bounded cache of upstream answers (see the module documentation).
#[derive(Debug)]
pub struct Cache {
    limits: CacheLimits,
    entries: HashMap<CacheKey, CacheEntry>,
    /// Insertion order: sequence number to key, oldest first.
    by_age: BTreeMap<u64, CacheKey>,
    /// Expiry order: (expiry, sequence number), soonest first.
    by_expiry: BTreeSet<(Instant, u64)>,
    next_seq: u64,
    bytes: usize,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new(CacheLimits::default())
    }
}

impl Cache {
    /// An empty cache with these bounds.
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            limits,
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            next_seq: 0,
            bytes: 0,
        }
    }

    /// The bounds.
    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// How many entries are held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes charged against [`CacheLimits::max_bytes`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_age.clear();
        self.by_expiry.clear();
        self.bytes = 0;
    }

    /// Stores an upstream answer (`msg` is `wire` parsed) if it may be cached at all.
    pub(crate) fn insert(&mut self, key: CacheKey, msg: &Message, wire: &[u8], now: Instant) {
        let Some(ttl) = cache_ttl(msg, &self.limits) else {
            return;
        };
        let Some(expires) = now.checked_add(ttl) else {
            return;
        };
        let cost = wire
            .len()
            .saturating_add(key.name.len())
            .saturating_add(ENTRY_OVERHEAD);
        if self.limits.max_entries == 0 || cost > self.limits.max_bytes {
            return;
        }
        self.remove(&key);
        self.drop_expired(now);
        while self.entries.len() >= self.limits.max_entries
            || self.bytes.saturating_add(cost) > self.limits.max_bytes
        {
            let Some(oldest) = self.by_age.first_key_value().map(|(_, k)| k.clone()) else {
                break;
            };
            self.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.by_age.insert(seq, key.clone());
        self.by_expiry.insert((expires, seq));
        self.bytes = self.bytes.saturating_add(cost);
        self.entries.insert(
            key,
            CacheEntry {
                wire: wire.to_vec(),
                stored: now,
                expires,
                seq,
                cost,
            },
        );
    }

    /// The cached answer for `key`, parsed, with every TTL lowered by its age; `None` when
    /// absent or expired (an expired entry is dropped).
    pub(crate) fn lookup(&mut self, key: &CacheKey, now: Instant) -> Option<Message> {
        let entry = self.entries.get(key)?;
        if now >= entry.expires {
            self.remove(key);
            return None;
        }
        let age = now.saturating_duration_since(entry.stored).as_secs();
        let age = u32::try_from(age).unwrap_or(u32::MAX);
        let Ok(mut msg) = Message::from_vec(&entry.wire) else {
            self.remove(key);
            return None;
        };
        let age_records = |records: &mut Vec<Record>| {
            for r in records.iter_mut() {
                let ttl = r.ttl().saturating_sub(age);
                r.set_ttl(ttl);
            }
        };
        age_records(msg.answers_mut());
        age_records(msg.name_servers_mut());
        age_records(msg.additionals_mut());
        Some(msg)
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(old) = self.entries.remove(key) {
            self.by_age.remove(&old.seq);
            self.by_expiry.remove(&(old.expires, old.seq));
            self.bytes = self.bytes.saturating_sub(old.cost);
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        while let Some(&(expires, seq)) = self.by_expiry.first() {
            if expires > now {
                break;
            }
            self.by_expiry.remove(&(expires, seq));
            if let Some(key) = self.by_age.remove(&seq) {
                if let Some(old) = self.entries.remove(&key) {
                    self.bytes = self.bytes.saturating_sub(old.cost);
                }
            }
        }
    }
}

/// How long an answer may be cached, or `None` if it may not be.
fn cache_ttl(msg: &Message, limits: &CacheLimits) -> Option<Duration> {
    if msg.truncated() {
        return None;
    }
    let rcode = msg.response_code();
    let secs = if rcode == ResponseCode::NoError && !msg.answers().is_empty() {
        let min = msg
            .answers()
            .iter()
            .chain(msg.name_servers())
            .map(Record::ttl)
            .min()?;
        Duration::from_secs(u64::from(min)).min(limits.max_ttl)
    } else if rcode == ResponseCode::NoError || rcode == ResponseCode::NXDomain {
        // RFC 2308 section 5: the negative TTL is the SOA's own TTL or its MINIMUM field,
        // whichever is less; without an SOA the answer is not cached.
        let min = msg
            .name_servers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
                _ => None,
            })
            .min()?;
        Duration::from_secs(u64::from(min)).min(limits.max_negative_ttl)
    } else {
        return None;
    };
    (!secs.is_zero()).then_some(secs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use hickory_proto::op::{MessageType, Query};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RecordType};
    use std::net::Ipv4Addr;

    fn key(name: &str) -> CacheKey {
        CacheKey {
            name: name.to_owned(),
            qtype: 1,
            qclass: 1,
            dnssec_ok: false,
        }
    }

    fn answer(name: &str, ttls: &[u32]) -> (Message, Vec<u8>) {
        let n = Name::from_ascii(name).unwrap();
        let mut m = Message::new();
        m.set_message_type(MessageType::Response);
        m.add_query(Query::query(n.clone(), RecordType::A));
        for (i, ttl) in ttls.iter().enumerate() {
            let last = u8::try_from(i).unwrap();
            m.add_answer(Record::from_rdata(
                n.clone(),
                *ttl,
                RData::A(A(Ipv4Addr::new(192, 0, 2, last))),
            ));
        }
        let wire = m.to_vec().unwrap();
        (m, wire)
    }

    fn negative(
        name: &str,
        rcode: ResponseCode,
        soa_ttl: Option<(u32, u32)>,
    ) -> (Message, Vec<u8>) {
        let n = Name::from_ascii(name).unwrap();
        let mut m = Message::new();
        m.set_message_type(MessageType::Response);
        m.set_response_code(rcode);
        m.add_query(Query::query(n.clone(), RecordType::A));
        if let Some((ttl, minimum)) = soa_ttl {
            let soa = SOA::new(
                Name::from_ascii("ns.example.").unwrap(),
                Name::from_ascii("host.example.").unwrap(),
                1,
                3600,
                600,
                86400,
                minimum,
            );
            m.add_name_server(Record::from_rdata(
                Name::from_ascii("example.").unwrap(),
                ttl,
                RData::SOA(soa),
            ));
        }
        let wire = m.to_vec().unwrap();
        (m, wire)
    }

    #[test]
    fn ttl_is_the_minimum_and_ages() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        let (m, w) = answer("a.example.", &[300, 60, 120]);
        c.insert(key("a.example."), &m, &w, t0);
        let got = c
            .lookup(&key("a.example."), t0 + Duration::from_millis(10_900))
            .unwrap();
        let ttls: Vec<u32> = got.answers().iter().map(Record::ttl).collect();
        assert_eq!(ttls, vec![290, 50, 110]);
        assert!(
            c.lookup(&key("a.example."), t0 + Duration::from_secs(59))
                .is_some()
        );
        assert!(
            c.lookup(&key("a.example."), t0 + Duration::from_secs(60))
                .is_none()
        );
        assert!(c.is_empty(), "expired entry dropped on lookup");
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn caps_apply() {
        let limits = CacheLimits {
            max_ttl: Duration::from_secs(100),
            ..CacheLimits::default()
        };
        let mut c = Cache::new(limits);
        let t0 = Instant::now();
        let (m, w) = answer("a.example.", &[86_400]);
        c.insert(key("a.example."), &m, &w, t0);
        assert!(
            c.lookup(&key("a.example."), t0 + Duration::from_secs(99))
                .is_some()
        );
        assert!(
            c.lookup(&key("a.example."), t0 + Duration::from_secs(100))
                .is_none()
        );
    }

    #[test]
    fn negative_answers_use_the_soa() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        let (m, w) = negative("nx.example.", ResponseCode::NXDomain, Some((3600, 30)));
        c.insert(key("nx.example."), &m, &w, t0);
        assert!(
            c.lookup(&key("nx.example."), t0 + Duration::from_secs(29))
                .is_some()
        );
        assert!(
            c.lookup(&key("nx.example."), t0 + Duration::from_secs(30))
                .is_none()
        );
        // The SOA's own TTL when lower, and the negative cap.
        let (m, w) = negative("nodata.example.", ResponseCode::NoError, Some((20, 3600)));
        c.insert(key("nodata.example."), &m, &w, t0);
        let got = c
            .lookup(&key("nodata.example."), t0 + Duration::from_secs(5))
            .unwrap();
        assert_eq!(got.name_servers()[0].ttl(), 15);
        assert!(
            c.lookup(&key("nodata.example."), t0 + Duration::from_secs(20))
                .is_none()
        );
        let (m, w) = negative(
            "long.example.",
            ResponseCode::NXDomain,
            Some((86_400, 86_400)),
        );
        c.insert(key("long.example."), &m, &w, t0);
        assert!(
            c.lookup(&key("long.example."), t0 + Duration::from_secs(299))
                .is_some()
        );
        assert!(
            c.lookup(&key("long.example."), t0 + Duration::from_secs(300))
                .is_none()
        );
        // Without an SOA: not cached.
        let (m, w) = negative("bare.example.", ResponseCode::NXDomain, None);
        c.insert(key("bare.example."), &m, &w, t0);
        assert!(c.lookup(&key("bare.example."), t0).is_none());
    }

    #[test]
    fn uncacheable_answers() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        let (m, w) = negative("sf.example.", ResponseCode::ServFail, Some((60, 60)));
        c.insert(key("sf.example."), &m, &w, t0);
        let (m, w) = negative("rf.example.", ResponseCode::Refused, Some((60, 60)));
        c.insert(key("rf.example."), &m, &w, t0);
        let (mut m, _) = answer("tc.example.", &[60]);
        m.set_truncated(true);
        let w = m.to_vec().unwrap();
        c.insert(key("tc.example."), &m, &w, t0);
        let (m, w) = answer("zero.example.", &[0]);
        c.insert(key("zero.example."), &m, &w, t0);
        assert!(c.is_empty());
        let mut off = Cache::new(CacheLimits {
            max_entries: 0,
            ..CacheLimits::default()
        });
        let (m, w) = answer("a.example.", &[60]);
        off.insert(key("a.example."), &m, &w, t0);
        assert!(off.is_empty());
    }

    #[test]
    fn keys_are_distinct() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        let (m, w) = answer("a.example.", &[60]);
        c.insert(key("a.example."), &m, &w, t0);
        let mut k = key("a.example.");
        k.dnssec_ok = true;
        assert!(c.lookup(&k, t0).is_none());
        let mut k = key("a.example.");
        k.qtype = 28;
        assert!(c.lookup(&k, t0).is_none());
        let mut k = key("a.example.");
        k.qclass = 3;
        assert!(c.lookup(&k, t0).is_none());
        assert!(c.lookup(&key("a.example."), t0).is_some());
    }

    #[test]
    fn entry_cap_evicts_the_oldest() {
        let mut c = Cache::new(CacheLimits {
            max_entries: 3,
            ..CacheLimits::default()
        });
        let t0 = Instant::now();
        for (i, name) in ["a.", "b.", "c.", "d."].iter().enumerate() {
            let (m, w) = answer(name, &[600]);
            c.insert(
                key(name),
                &m,
                &w,
                t0 + Duration::from_secs(u64::try_from(i).unwrap()),
            );
        }
        assert_eq!(c.len(), 3);
        let t = t0 + Duration::from_secs(5);
        assert!(c.lookup(&key("a."), t).is_none());
        for name in ["b.", "c.", "d."] {
            assert!(c.lookup(&key(name), t).is_some(), "{name}");
        }
        // Replacing a key does not grow the cache.
        let (m, w) = answer("d.", &[600]);
        c.insert(key("d."), &m, &w, t);
        assert_eq!(c.len(), 3);
        assert!(c.lookup(&key("b."), t).is_some());
    }

    #[test]
    fn expired_entries_go_before_live_ones() {
        let mut c = Cache::new(CacheLimits {
            max_entries: 2,
            ..CacheLimits::default()
        });
        let t0 = Instant::now();
        let (m, w) = answer("old.", &[600]);
        c.insert(key("old."), &m, &w, t0);
        let (m, w) = answer("short.", &[5]);
        c.insert(key("short."), &m, &w, t0 + Duration::from_secs(1));
        let (m, w) = answer("new.", &[600]);
        let t = t0 + Duration::from_secs(10);
        c.insert(key("new."), &m, &w, t);
        // "short." had expired, so the oldest live entry survives.
        assert!(c.lookup(&key("old."), t).is_some());
        assert!(c.lookup(&key("new."), t).is_some());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn byte_cap() {
        let (m, w) = answer("a.example.", &[600; 10]);
        let one = w.len() + "a.example.".len() + ENTRY_OVERHEAD;
        let mut c = Cache::new(CacheLimits {
            max_bytes: one * 2 + one / 2,
            ..CacheLimits::default()
        });
        let t0 = Instant::now();
        for name in ["a.example.", "b.example.", "c.example."] {
            c.insert(key(name), &m, &w, t0);
            assert!(c.bytes() <= c.limits().max_bytes);
        }
        assert_eq!(c.len(), 2);
        assert!(c.lookup(&key("a.example."), t0).is_none());
        // An answer bigger than the whole cache is not stored.
        let mut tiny = Cache::new(CacheLimits {
            max_bytes: 64,
            ..CacheLimits::default()
        });
        tiny.insert(key("a.example."), &m, &w, t0);
        assert!(tiny.is_empty());
        c.clear();
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }
}

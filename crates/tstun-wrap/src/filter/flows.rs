//! The bounded table of outbound UDP and SCTP flows whose replies are let in (Go's
//! `flowtrack.Cache` of 512 entries). Least recently used entries go first when it is full;
//! an idle timeout (ours; Go has none) drops flows nobody used for a while. Time comes in as an
//! `Instant` argument. All memory is reserved up front: no allocation per packet.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::{Duration, Instant};

/// Sizes and timeouts of the flow table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlowConfig {
    /// Most flows kept; the least recently used is evicted beyond it. Go: 512.
    pub capacity: usize,
    /// A flow unused (no packet either way) for this long is forgotten. `None` keeps flows
    /// until evicted, exactly as Go does.
    pub idle_timeout: Option<Duration>,
}

impl FlowConfig {
    /// Go's table: 512 flows, no timeout.
    pub const fn go() -> Self {
        Self {
            capacity: 512,
            idle_timeout: None,
        }
    }

    /// A table of `capacity` flows forgotten after `idle_timeout`.
    pub const fn new(capacity: usize, idle_timeout: Option<Duration>) -> Self {
        Self {
            capacity,
            idle_timeout,
        }
    }
}

impl Default for FlowConfig {
    /// 512 flows (as Go) forgotten after 120 s idle (Linux's UDP stream timeout).
    fn default() -> Self {
        Self {
            capacity: 512,
            idle_timeout: Some(Duration::from_secs(120)),
        }
    }
}

/// A flow as an inbound reply sees it: protocol, remote (source) and local (destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowKey {
    pub(crate) proto: u8,
    pub(crate) v6: bool,
    pub(crate) src: u128,
    pub(crate) dst: u128,
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
}

impl std::hash::Hash for FlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One word per call: the hasher below mixes words, not bytes.
        state.write_u64(self.src as u64);
        state.write_u64((self.src >> 64) as u64);
        state.write_u64(self.dst as u64);
        state.write_u64((self.dst >> 64) as u64);
        state.write_u64(
            u64::from(self.proto)
                | u64::from(self.v6) << 8
                | u64::from(self.src_port) << 16
                | u64::from(self.dst_port) << 32,
        );
    }
}

/// A keyed multiply-fold hasher: much cheaper than SipHash for a 40-byte key, and its random
/// per-table seed keeps a peer from choosing colliding flows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowHash {
    seed: u64,
}

impl FlowHash {
    fn new() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0x243f_6a88_85a3_08d3);
        Self {
            seed: h.finish() | 1,
        }
    }
}

#[derive(Debug)]
pub(crate) struct FlowHasher {
    state: u64,
    seed: u64,
}

fn fold_mul(a: u64, b: u64) -> u64 {
    let full = u128::from(a).wrapping_mul(u128::from(b));
    (full as u64) ^ ((full >> 64) as u64)
}

impl Hasher for FlowHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.state = fold_mul(self.state ^ x, self.seed ^ 0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        fold_mul(self.state, self.seed)
    }
}

impl BuildHasher for FlowHash {
    type Hasher = FlowHasher;
    fn build_hasher(&self) -> FlowHasher {
        FlowHasher {
            state: self.seed,
            seed: self.seed,
        }
    }
}

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: FlowKey,
    seen: Instant,
    live: bool,
    prev: u32,
    next: u32,
}

/// The LRU table: slots in a vector linked most recent first, indexed by a hash map.
#[derive(Debug)]
pub(crate) struct FlowTable {
    config: FlowConfig,
    index: HashMap<FlowKey, u32, FlowHash>,
    slots: Vec<Slot>,
    head: u32,
    tail: u32,
}

impl FlowTable {
    pub(crate) fn new(config: FlowConfig) -> Self {
        // Slots are addressed by u32; keep far below that.
        let capacity = config.capacity.clamp(1, 1 << 24);
        Self {
            config: FlowConfig { capacity, ..config },
            index: HashMap::with_capacity_and_hasher(capacity, FlowHash::new()),
            slots: Vec::with_capacity(capacity),
            head: NIL,
            tail: NIL,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    pub(crate) fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.head = NIL;
        self.tail = NIL;
    }

    fn expired(&self, seen: Instant, now: Instant) -> bool {
        self.config
            .idle_timeout
            .is_some_and(|t| now.saturating_duration_since(seen) > t)
    }

    /// Records or refreshes a flow.
    pub(crate) fn insert(&mut self, key: FlowKey, now: Instant) {
        if let Some(&i) = self.index.get(&key) {
            self.touch(i, now);
            return;
        }
        let i = if self.slots.len() < self.config.capacity {
            let i = self.slots.len() as u32;
            self.slots.push(Slot {
                key,
                seen: now,
                live: true,
                prev: NIL,
                next: NIL,
            });
            i
        } else {
            // Full: reuse the least recently used slot.
            let i = self.tail;
            let Some(old) = self.slots.get(i as usize).map(|s| s.key) else {
                return;
            };
            // An expired slot's key may since live again in another slot.
            if self.index.get(&old) == Some(&i) {
                self.index.remove(&old);
            }
            self.unlink(i);
            if let Some(s) = self.slots.get_mut(i as usize) {
                s.key = key;
                s.seen = now;
                s.live = true;
            }
            i
        };
        if self.index.capacity() <= self.index.len() {
            self.rebuild_index();
        }
        self.index.insert(key, i);
        self.push_front(i);
    }

    /// Whether a live flow matches; a hit refreshes it (as Go's `Get` does).
    pub(crate) fn lookup(&mut self, key: &FlowKey, now: Instant) -> bool {
        let Some(&i) = self.index.get(key) else {
            return false;
        };
        let Some(seen) = self.slots.get(i as usize).map(|s| s.seen) else {
            return false;
        };
        if self.expired(seen, now) {
            // Leave the slot where it is: it is the oldest or soon will be, and gets reused.
            // Mark it unmatchable by removing the index entry and moving it to the tail.
            self.index.remove(key);
            if let Some(s) = self.slots.get_mut(i as usize) {
                s.live = false;
            }
            self.unlink(i);
            self.push_back(i);
            return false;
        }
        self.touch(i, now);
        true
    }

    /// Removals leave tombstones in the hash table; when they use up its spare room, the next
    /// insert would make the table grow (allocate). Clearing keeps the allocation and drops
    /// the tombstones; then the live flows go back in. Amortised: once per few hundred churns.
    fn rebuild_index(&mut self) {
        self.index.clear();
        for (i, s) in self.slots.iter().enumerate() {
            if s.live {
                self.index.insert(s.key, i as u32);
            }
        }
    }

    fn touch(&mut self, i: u32, now: Instant) {
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.seen = now;
        }
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn unlink(&mut self, i: u32) {
        let Some(&Slot { prev, next, .. }) = self.slots.get(i as usize) else {
            return;
        };
        match self.slots.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slots.get_mut(next as usize) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.prev = NIL;
            s.next = NIL;
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.prev = NIL;
            s.next = old;
        }
        match self.slots.get_mut(old as usize) {
            Some(h) => h.prev = i,
            None => self.tail = i,
        }
        self.head = i;
    }

    fn push_back(&mut self, i: u32) {
        let old = self.tail;
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.next = NIL;
            s.prev = old;
        }
        match self.slots.get_mut(old as usize) {
            Some(t) => t.next = i,
            None => self.head = i,
        }
        self.tail = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u16) -> FlowKey {
        FlowKey {
            proto: 17,
            v6: false,
            src: 1,
            dst: 2,
            src_port: n,
            dst_port: 53,
        }
    }

    #[test]
    fn lru_evicts_oldest_and_hits_refresh() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(FlowConfig::new(3, None));
        for n in 0..3 {
            t.insert(key(n), t0);
        }
        assert!(t.lookup(&key(0), t0)); // 0 is now the most recent
        t.insert(key(3), t0); // evicts 1
        assert!(!t.lookup(&key(1), t0));
        assert!(t.lookup(&key(0), t0) && t.lookup(&key(2), t0) && t.lookup(&key(3), t0));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn idle_timeout() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(FlowConfig::new(2, Some(Duration::from_secs(10))));
        t.insert(key(1), t0);
        assert!(t.lookup(&key(1), t0 + Duration::from_secs(10)));
        assert!(t.lookup(&key(1), t0 + Duration::from_secs(20)));
        assert!(!t.lookup(&key(1), t0 + Duration::from_secs(31)));
        assert_eq!(t.len(), 0);
        // The expired slot is reused without growing.
        t.insert(key(2), t0 + Duration::from_secs(40));
        t.insert(key(3), t0 + Duration::from_secs(40));
        t.insert(key(4), t0 + Duration::from_secs(40));
        assert_eq!(t.len(), 2);
        assert!(!t.lookup(&key(2), t0 + Duration::from_secs(40)));
        assert!(t.lookup(&key(4), t0 + Duration::from_secs(40)));
    }

    #[test]
    fn many_inserts_stay_bounded() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(FlowConfig::go());
        for n in 0..5000u16 {
            t.insert(key(n), t0);
        }
        assert_eq!(t.len(), 512);
        assert!(t.lookup(&key(4999), t0));
        assert!(!t.lookup(&key(4000), t0));
    }

    /// Random inserts and lookups against a plain list model of an LRU with timeouts.
    #[test]
    fn matches_model_under_churn() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(50);
        let mut t = FlowTable::new(FlowConfig::new(8, Some(timeout)));
        // Most recent last: (port, last seen in seconds).
        let mut model: Vec<(u16, u64)> = Vec::new();
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = (x % 24) as u16;
            let now_s = step / 16;
            let now = t0 + Duration::from_secs(now_s);
            let pos = model.iter().position(|&(p, _)| p == port);
            if x & (1 << 40) != 0 {
                t.insert(key(port), now);
                if let Some(i) = pos {
                    model.remove(i);
                } else if model.len() == 8 {
                    // The table evicts its least recently used slot, which may be an expired
                    // flow the model still holds; expired flows never match either way.
                    model.remove(0);
                }
                model.push((port, now_s));
            } else {
                let live = pos.is_some_and(|i| now_s - model[i].1 <= 50);
                assert_eq!(t.lookup(&key(port), now), live, "step {step} port {port}");
                if let Some(i) = pos {
                    let (p, _) = model.remove(i);
                    if live {
                        model.push((p, now_s));
                    }
                }
            }
            assert!(t.len() <= 8);
        }
    }
}

//! nf_tables by hand, over a NETLINK_NETFILTER socket: no `nft` binary, no libnftnl.
//!
//! Everything we install lives in two tables of our own, `ip tailrouter` and `ip6 tailrouter`,
//! so nothing outside them is ever touched and removal is one table delete per family. A
//! family's rules are written in one nfnetlink batch, which the kernel applies as one
//! transaction (all or nothing):
//!
//! ```text
//! BATCH_BEGIN
//! NEWTABLE ip tailrouter      (create if missing: the delete below then always finds it)
//! DELTABLE ip tailrouter      (drops whatever an earlier run, crashed or not, left in it)
//! NEWTABLE ip tailrouter
//! NEWCHAIN ts-input, ts-forward, ts-postrouting   (hooked base chains, or plain ones)
//! NEWRULE ... (appended, in order)
//! BATCH_END
//! ```
//!
//! Removal is the same batch without the second table. Every message but the batch markers
//! asks for an acknowledgement, so the kernel answers each one (or refuses the first bad one,
//! with the batch aborted); [`BatchReplies`] follows those answers. nf_tables attributes are
//! big-endian; registers hold marks and conntrack state in host order, as the kernel loads
//! them.

use crate::Error;
use crate::netfilter::{
    Action, ActiveBackend, Backend, BackendError, Family, FamilyRules, Hook, Match, Rule,
};
use crate::netlink::{self, Ack, NlError, Socket};
#[cfg(feature = "iptables")]
use libc::EBUSY;
use libc::{EAFNOSUPPORT, ENOENT, EOPNOTSUPP, EPROTONOSUPPORT};
use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::time::Instant;
use tailcfg::IpPrefix;

/// The name of our tables (one per family).
pub(crate) const TABLE: &str = "tailrouter";

// Kernel ABI numbers (linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h,
// linux/netfilter.h, linux/netlink.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
#[cfg(feature = "iptables")] // only the iptables back-end looks up and deletes others' objects
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
#[cfg(feature = "iptables")]
const NFT_MSG_GETCHAIN: u16 = 4;
#[cfg(feature = "iptables")]
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
#[cfg(feature = "iptables")]
const NLM_F_NONREC: u16 = 0x100; // on a delete: refuse (EBUSY) rather than empty the object
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_META_MARK: u32 = 3;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CT_STATE: u32 = 0;
/// conntrack state bits (NF_CT_STATE_BIT): established 1 << 1, related 1 << 2.
const CT_ESTABLISHED_OR_RELATED: u32 = 0b110;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_RETURN: i32 = -5;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
const PRIORITY_FILTER: i32 = 0;
const PRIORITY_SRCNAT: i32 = 100;
const IPPROTO_UDP: u8 = 17;
const IFNAMSIZ: usize = 16;

/// Errnos meaning "this kernel cannot do that": no such family, expression or chain type (the
/// module is missing, ENOENT after the kernel's failed autoload), or no nfnetlink at all.
const UNSUPPORTED: [i32; 4] = [EAFNOSUPPORT, EOPNOTSUPP, EPROTONOSUPPORT, ENOENT];

// ---------------------------------------------------------------- message building

/// Netlink attributes being built (nf_tables integers big-endian, strings NUL-terminated).
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn bytes(mut self, ty: u16, data: &[u8]) -> Self {
        netlink::attr(&mut self.0, ty, data);
        self
    }

    fn be32(self, ty: u16, v: u32) -> Self {
        self.bytes(ty, &v.to_be_bytes())
    }

    fn string(self, ty: u16, s: &str) -> Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.bytes(ty, &b)
    }

    fn nest(self, ty: u16, inner: Attrs) -> Self {
        self.bytes(ty | NLA_F_NESTED, &inner.0)
    }
}

fn a() -> Attrs {
    Attrs::default()
}

/// An nfnetlink message: header (length and sequence number filled in when the batch is
/// sent), `struct nfgenmsg` (family, version 0, resource id), attributes.
fn message(ty: u16, flags: u16, family: u8, res_id: u16, attrs: Attrs) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + attrs.0.len());
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&[0; 8]);
    m.push(family);
    m.push(0);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(&attrs.0);
    netlink::pad(&mut m);
    m
}

fn nft_message(msg: u16, flags: u16, family: u8, attrs: Attrs) -> Vec<u8> {
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | msg;
    message(ty, flags | NLM_F_REQUEST | NLM_F_ACK, family, 0, attrs)
}

fn nfproto(f: Family) -> u8 {
    match f {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

fn family_word(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn new_table(f: Family) -> Vec<u8> {
    let attrs = a().string(NFTA_TABLE_NAME, TABLE).be32(NFTA_TABLE_FLAGS, 0);
    nft_message(NFT_MSG_NEWTABLE, NLM_F_CREATE, nfproto(f), attrs)
}

fn del_table(f: Family) -> Vec<u8> {
    nft_message(
        NFT_MSG_DELTABLE,
        0,
        nfproto(f),
        a().string(NFTA_TABLE_NAME, TABLE),
    )
}

/// A chain of ours: a base chain on its hook (policy accept) when `divert`, else a plain
/// chain nothing jumps to.
fn new_chain(f: Family, hook: Hook, divert: bool) -> Vec<u8> {
    let mut attrs = a()
        .string(NFTA_CHAIN_TABLE, TABLE)
        .string(NFTA_CHAIN_NAME, hook.chain());
    if divert {
        let (num, prio, ty) = match hook {
            Hook::Input => (NF_INET_LOCAL_IN, PRIORITY_FILTER, "filter"),
            Hook::Forward => (NF_INET_FORWARD, PRIORITY_FILTER, "filter"),
            Hook::Postrouting => (NF_INET_POST_ROUTING, PRIORITY_SRCNAT, "nat"),
        };
        let h = a()
            .be32(NFTA_HOOK_HOOKNUM, num)
            .be32(NFTA_HOOK_PRIORITY, prio as u32);
        attrs = attrs
            .nest(NFTA_CHAIN_HOOK, h)
            .be32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32)
            .string(NFTA_CHAIN_TYPE, ty);
    }
    nft_message(NFT_MSG_NEWCHAIN, NLM_F_CREATE, nfproto(f), attrs)
}

/// One expression, as an element of a rule's expression list.
fn expr(name: &str, data: Option<Attrs>) -> Attrs {
    let mut e = a().string(NFTA_EXPR_NAME, name);
    if let Some(d) = data {
        e = e.nest(NFTA_EXPR_DATA, d);
    }
    a().nest(NFTA_LIST_ELEM, e)
}

fn value(data: &[u8]) -> Attrs {
    a().bytes(NFTA_DATA_VALUE, data)
}

fn meta_load(key: u32) -> Attrs {
    let d = a().be32(NFTA_META_DREG, NFT_REG_1).be32(NFTA_META_KEY, key);
    expr("meta", Some(d))
}

fn meta_store(key: u32) -> Attrs {
    let d = a().be32(NFTA_META_KEY, key).be32(NFTA_META_SREG, NFT_REG_1);
    expr("meta", Some(d))
}

fn cmp(op: u32, data: &[u8]) -> Attrs {
    let d = a()
        .be32(NFTA_CMP_SREG, NFT_REG_1)
        .be32(NFTA_CMP_OP, op)
        .nest(NFTA_CMP_DATA, value(data));
    expr("cmp", Some(d))
}

/// `reg1 = (reg1 & mask) ^ xor` over `mask.len()` bytes.
fn bitwise(mask: &[u8], xor: &[u8]) -> Attrs {
    let len = u32::try_from(mask.len()).unwrap_or(0);
    let d = a()
        .be32(NFTA_BITWISE_SREG, NFT_REG_1)
        .be32(NFTA_BITWISE_DREG, NFT_REG_1)
        .be32(NFTA_BITWISE_LEN, len)
        .nest(NFTA_BITWISE_MASK, value(mask))
        .nest(NFTA_BITWISE_XOR, value(xor));
    expr("bitwise", Some(d))
}

fn payload(base: u32, offset: u32, len: u32) -> Attrs {
    let d = a()
        .be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
        .be32(NFTA_PAYLOAD_BASE, base)
        .be32(NFTA_PAYLOAD_OFFSET, offset)
        .be32(NFTA_PAYLOAD_LEN, len);
    expr("payload", Some(d))
}

fn verdict(code: i32) -> Attrs {
    let v = a().nest(NFTA_DATA_VERDICT, a().be32(NFTA_VERDICT_CODE, code as u32));
    let d = a()
        .be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
        .nest(NFTA_IMMEDIATE_DATA, v);
    expr("immediate", Some(d))
}

/// An interface name as the kernel loads it into a register: IFNAMSIZ bytes, NUL-padded,
/// so the comparison is exact (a shorter operand would match any name it begins).
fn ifname(name: &str) -> [u8; IFNAMSIZ] {
    let mut b = [0u8; IFNAMSIZ];
    for (d, s) in b.iter_mut().zip(name.bytes().take(IFNAMSIZ - 1)) {
        *d = s;
    }
    b
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The network mask of `p`, as bytes of its address length.
fn mask(p: IpPrefix) -> Vec<u8> {
    let len = if p.addr().is_ipv4() { 4 } else { 16 };
    let mut bits = usize::from(p.bits());
    (0..len)
        .map(|_| {
            let take = bits.min(8);
            bits -= take;
            // The low byte of 0xff00 shifted right by 0..=8: 0x00, 0x80, 0xc0, ..., 0xff.
            (0xff00u16 >> take) as u8
        })
        .collect()
}

fn push_match(out: &mut Vec<Attrs>, family: Family, m: &Match) {
    match m {
        Match::InIface(n) => {
            out.push(meta_load(NFT_META_IIFNAME));
            out.push(cmp(NFT_CMP_EQ, &ifname(n)));
        }
        Match::NotInIface(n) => {
            out.push(meta_load(NFT_META_IIFNAME));
            out.push(cmp(NFT_CMP_NEQ, &ifname(n)));
        }
        Match::OutIface(n) => {
            out.push(meta_load(NFT_META_OIFNAME));
            out.push(cmp(NFT_CMP_EQ, &ifname(n)));
        }
        Match::Src(p) => {
            let (offset, len, full) = match family {
                Family::V4 => (12, 4, 32),
                Family::V6 => (8, 16, 128),
            };
            out.push(payload(NFT_PAYLOAD_NETWORK_HEADER, offset, len));
            let p = netlink::masked(*p);
            if p.bits() < full {
                let m = mask(p);
                out.push(bitwise(&m, &vec![0; m.len()]));
            }
            out.push(cmp(NFT_CMP_EQ, &octets(p.addr())));
        }
        Match::Mark { value, mask } => {
            out.push(meta_load(NFT_META_MARK));
            out.push(bitwise(&mask.to_ne_bytes(), &[0; 4]));
            out.push(cmp(NFT_CMP_EQ, &value.to_ne_bytes()));
        }
        Match::UdpDport(port) => {
            out.push(meta_load(NFT_META_L4PROTO));
            out.push(cmp(NFT_CMP_EQ, &[IPPROTO_UDP]));
            out.push(payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2));
            out.push(cmp(NFT_CMP_EQ, &port.to_be_bytes()));
        }
        Match::NotEstablishedOrRelated => {
            // (state & (established | related)) == 0; `ct state != established,related` in
            // nft syntax would compare against the two bits together and always match.
            let d = a()
                .be32(NFTA_CT_DREG, NFT_REG_1)
                .be32(NFTA_CT_KEY, NFT_CT_STATE);
            out.push(expr("ct", Some(d)));
            out.push(bitwise(&CT_ESTABLISHED_OR_RELATED.to_ne_bytes(), &[0; 4]));
            out.push(cmp(NFT_CMP_EQ, &0u32.to_ne_bytes()));
        }
    }
}

/// The expressions of one rule: its matches, a counter, its action.
fn rule_exprs(family: Family, r: &Rule) -> Attrs {
    let mut out = Vec::new();
    for m in &r.matches {
        push_match(&mut out, family, m);
    }
    out.push(expr("counter", None));
    match r.action {
        Action::Accept => out.push(verdict(NF_ACCEPT)),
        Action::Drop => out.push(verdict(NF_DROP)),
        Action::Return => out.push(verdict(NFT_RETURN)),
        Action::Masquerade => out.push(expr("masq", None)),
        Action::SetMark { value, mask } => {
            out.push(meta_load(NFT_META_MARK));
            out.push(bitwise(&(!mask).to_ne_bytes(), &value.to_ne_bytes()));
            out.push(meta_store(NFT_META_MARK));
        }
    }
    let mut all = Attrs::default();
    for e in out {
        all.0.extend_from_slice(&e.0);
    }
    all
}

fn new_rule(family: Family, hook: Hook, r: &Rule) -> Vec<u8> {
    let attrs = a()
        .string(NFTA_RULE_TABLE, TABLE)
        .string(NFTA_RULE_CHAIN, hook.chain())
        .nest(NFTA_RULE_EXPRESSIONS, rule_exprs(family, r));
    let flags = NLM_F_CREATE | NLM_F_APPEND;
    nft_message(NFT_MSG_NEWRULE, flags, nfproto(family), attrs)
}

/// The messages (each with what it does, for errors) that replace our table in one family.
pub(crate) fn replace_batch(rules: &FamilyRules) -> Vec<(Vec<u8>, String)> {
    let f = rules.family;
    let t = format!("table {} {TABLE}", family_word(f));
    let mut out = vec![
        (new_table(f), format!("add {t}")),
        (del_table(f), format!("flush {t}")),
        (new_table(f), format!("add {t}")),
    ];
    for c in &rules.chains {
        let what = format!("add chain {} to {t}", c.hook.chain());
        out.push((new_chain(f, c.hook, rules.divert), what));
    }
    for c in &rules.chains {
        for (i, r) in c.rules.iter().enumerate() {
            let what = format!("add rule {} to chain {} of {t}", i + 1, c.hook.chain());
            out.push((new_rule(f, c.hook, r), what));
        }
    }
    out
}

/// The messages that remove our table in one family, whether it exists or not.
pub(crate) fn remove_batch(f: Family) -> Vec<(Vec<u8>, String)> {
    let t = format!("table {} {TABLE}", family_word(f));
    vec![
        (new_table(f), format!("add {t} (to delete it)")),
        (del_table(f), format!("delete {t}")),
    ]
}

/// The batch markers (nfgenmsg resource id: the nf_tables subsystem).
fn batch_marker(ty: u16) -> Vec<u8> {
    message(
        ty,
        NLM_F_REQUEST,
        libc::AF_UNSPEC as u8,
        NFNL_SUBSYS_NFTABLES,
        a(),
    )
}

/// Frames `msgs` as one batch with sequence numbers from `next`: returns the datagram, the
/// batch-begin sequence number and the sequence number of each message, in order.
pub(crate) fn frame_batch(
    msgs: &[(Vec<u8>, String)],
    mut next: impl FnMut() -> u32,
) -> (Vec<u8>, u32, Vec<u32>) {
    let mut out = Vec::new();
    let mut put = |mut m: Vec<u8>, seq: u32| {
        let len = u32::try_from(m.len()).unwrap_or(u32::MAX);
        if let Some(h) = m.get_mut(..12) {
            h[..4].copy_from_slice(&len.to_ne_bytes());
            h[8..].copy_from_slice(&seq.to_ne_bytes());
        }
        out.extend_from_slice(&m);
    };
    let begin = next();
    put(batch_marker(NFNL_MSG_BATCH_BEGIN), begin);
    let mut seqs = Vec::with_capacity(msgs.len());
    for (m, _) in msgs {
        let s = next();
        seqs.push(s);
        put(m.clone(), s);
    }
    put(batch_marker(NFNL_MSG_BATCH_END), next());
    (out, begin, seqs)
}

// ---------------------------------------------------------------- reading the answers

/// How a batch went, from the kernel's answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Answers are still due.
    Pending,
    /// Every message was acknowledged: the transaction is committed.
    Committed,
    /// The kernel refused the message with this sequence number (or, for the batch-begin
    /// number, the whole batch or its commit), with this errno and, when given, its words.
    Refused {
        /// The sequence number refused.
        seq: u32,
        /// The (positive) errno.
        errno: i32,
        /// The kernel's extended-ack text.
        msg: Option<String>,
    },
}

/// Follows the kernel's answers to one batch. Each message of the batch asked for an
/// acknowledgement, so each gets one answer: 0, or the errno that aborted the batch (the kernel
/// still acknowledges the messages it took before that). A refusal of the batch itself (no
/// nf_tables, no permission, a failed commit) answers the batch-begin number instead, and may
/// be the only answer. Answers for other numbers (earlier batches) are ignored.
///
/// Sans-IO: fed datagrams, never panics on any bytes (it is fuzzed: `fuzz/fuzz_targets/
/// nft_batch_replies.rs`).
#[derive(Clone, Debug)]
pub struct BatchReplies {
    begin: u32,
    pending: std::collections::BTreeSet<u32>,
    refused: Option<Ack>,
}

impl BatchReplies {
    /// Waits for answers to `seqs`, in a batch that began with `begin`.
    pub fn new(begin: u32, seqs: impl IntoIterator<Item = u32>) -> BatchReplies {
        BatchReplies {
            begin,
            pending: seqs.into_iter().filter(|&s| s != begin).collect(),
            refused: None,
        }
    }

    /// Reads one datagram; an error for a datagram that is not well-formed netlink.
    pub fn feed(&mut self, datagram: &[u8]) -> Result<(), &'static str> {
        for ack in netlink::parse_acks(datagram)? {
            if ack.seq == self.begin {
                if ack.errno != 0 && self.refused.is_none() {
                    self.refused = Some(ack);
                }
                // The begin number is answered only on failure: the batch is over.
                self.pending.clear();
                continue;
            }
            if !self.pending.remove(&ack.seq) {
                continue;
            }
            if ack.errno != 0 && self.refused.is_none() {
                self.refused = Some(ack);
            }
        }
        Ok(())
    }

    /// Where the batch stands.
    pub fn outcome(&self) -> BatchOutcome {
        match (&self.refused, self.pending.is_empty()) {
            (Some(a), true) => BatchOutcome::Refused {
                seq: a.seq,
                errno: a.errno,
                msg: a.msg.clone(),
            },
            (_, false) => BatchOutcome::Pending,
            (None, true) => BatchOutcome::Committed,
        }
    }
}

// ---------------------------------------------------------------- the back-end

/// nf_tables through one NETLINK_NETFILTER socket.
#[derive(Debug)]
pub(crate) struct Nft {
    sock: Socket,
}

impl Nft {
    /// Opens the socket (in the calling thread's network namespace). Fails where the kernel
    /// has no nfnetlink; a kernel without nf_tables fails on the first batch instead.
    pub(crate) fn open() -> Result<Nft, Error> {
        let sock = Socket::open_netfilter().map_err(|source| Error::Os {
            op: "nftables: opening a NETLINK_NETFILTER socket".to_owned(),
            source,
            kernel: None,
        })?;
        Ok(Nft { sock })
    }

    /// Sends `msgs` as one transaction and waits (5 s at most) for the kernel's verdict.
    fn run(&mut self, msgs: &[(Vec<u8>, String)]) -> Result<(), BackendError> {
        let sock = &mut self.sock;
        let (datagram, begin, seqs) = frame_batch(msgs, || sock.next_seq());
        let what: BTreeMap<u32, &str> = seqs
            .iter()
            .copied()
            .zip(msgs.iter().map(|(_, w)| w.as_str()))
            .collect();
        let first = msgs.first().map_or("", |(_, w)| w.as_str());
        let io_err = |e: NlError, op: &str| {
            let op = format!("nftables: {op}");
            BackendError::Failed(crate::error(op, e))
        };
        self.sock.send(&datagram).map_err(|e| io_err(e, first))?;
        let mut replies = BatchReplies::new(begin, seqs);
        let deadline = Instant::now() + netlink::REPLY_TIMEOUT;
        while replies.outcome() == BatchOutcome::Pending {
            if Instant::now() >= deadline {
                return Err(io_err(netlink::timed_out(), first));
            }
            let Some(data) = self.sock.recv().map_err(|e| io_err(e, first))? else {
                continue;
            };
            replies
                .feed(data)
                .map_err(|m| io_err(NlError::Malformed(m), first))?;
        }
        match replies.outcome() {
            BatchOutcome::Refused { seq, errno, msg } => {
                let op = what
                    .get(&seq)
                    .copied()
                    .unwrap_or("the nftables transaction");
                let e = Error::Os {
                    op: format!("nftables: {op}"),
                    source: io::Error::from_raw_os_error(errno),
                    kernel: msg,
                };
                if UNSUPPORTED.contains(&errno) {
                    Err(BackendError::Unsupported(e))
                } else {
                    Err(BackendError::Failed(e))
                }
            }
            _ => Ok(()),
        }
    }
}

/// Someone else's object, named for [`Nft::exists`] and [`Nft::delete_if_empty`]: a table, or
/// a chain in it. Used by the iptables back-end only.
#[cfg(feature = "iptables")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Object {
    pub(crate) family: Family,
    pub(crate) table: &'static str,
    pub(crate) chain: Option<&'static str>,
}

#[cfg(feature = "iptables")]
impl Object {
    fn describe(&self) -> String {
        let t = format!("table {} {}", family_word(self.family), self.table);
        match self.chain {
            Some(c) => format!("chain {c} of {t}"),
            None => t,
        }
    }

    fn message(&self, ty_table: u16, ty_chain: u16, flags: u16) -> Vec<u8> {
        let f = nfproto(self.family);
        match self.chain {
            Some(c) => {
                let attrs = a()
                    .string(NFTA_CHAIN_TABLE, self.table)
                    .string(NFTA_CHAIN_NAME, c);
                nft_message(ty_chain, flags, f, attrs)
            }
            None => nft_message(ty_table, flags, f, a().string(NFTA_TABLE_NAME, self.table)),
        }
    }
}

#[cfg(feature = "iptables")]
impl Nft {
    /// Whether `o` exists (a GET: the kernel answers with the object, or ENOENT).
    pub(crate) fn exists(&mut self, o: Object) -> Result<bool, Error> {
        let msg = o.message(NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, 0);
        match self.sock.request(msg) {
            Ok(()) => Ok(true),
            Err(NlError::Kernel { errno, .. }) if errno == ENOENT => Ok(false),
            Err(e) => Err(crate::error(
                format!("nftables: look up {}", o.describe()),
                e,
            )),
        }
    }

    /// Deletes `o` only if nothing is in it (no rules or references in a chain, no chains in
    /// a table): the kernel checks that itself, atomically (NLM_F_NONREC, Linux 4.15 and
    /// later). `Ok(false)`: not empty, or already gone.
    pub(crate) fn delete_if_empty(&mut self, o: Object) -> Result<bool, Error> {
        let msg = o.message(NFT_MSG_DELTABLE, NFT_MSG_DELCHAIN, NLM_F_NONREC);
        let what = format!("delete {} if empty", o.describe());
        match self.run(&[(msg, what)]) {
            Ok(()) => Ok(true),
            Err(BackendError::Failed(Error::Os { source, .. }))
            | Err(BackendError::Unsupported(Error::Os { source, .. }))
                if matches!(source.raw_os_error(), Some(EBUSY | ENOENT)) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into_error()),
        }
    }
}

impl Backend for Nft {
    fn replace(&mut self, rules: &FamilyRules) -> Result<(), BackendError> {
        self.run(&replace_batch(rules))
    }

    fn remove(&mut self, family: Family) -> Result<(), BackendError> {
        self.run(&remove_batch(family))
    }

    fn kind(&self) -> ActiveBackend {
        ActiveBackend::Nftables
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::{NetfilterConfig, family_rules};

    /// An NLMSG_ERROR for `seq` with `code` (0: an acknowledgement), capped.
    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&0x100u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        m
    }

    #[test]
    fn masks() {
        let p = |s: &str| s.parse::<IpPrefix>().unwrap();
        assert_eq!(mask(p("100.64.0.0/10")), vec![0xff, 0xc0, 0, 0]);
        assert_eq!(mask(p("100.115.92.0/23")), vec![0xff, 0xff, 0xfe, 0]);
        assert_eq!(mask(p("0.0.0.0/0")), vec![0, 0, 0, 0]);
        assert_eq!(mask(p("fd7a::/17")).len(), 16);
        assert_eq!(&mask(p("fd7a::/17"))[..3], &[0xff, 0xff, 0x80]);
    }

    #[test]
    fn interface_names_are_padded_and_exact() {
        assert_eq!(&ifname("ts0")[..4], b"ts0\0");
        assert_eq!(ifname("ts0").len(), 16);
        assert_eq!(ifname("a-name-far-too-long")[15], 0);
    }

    #[test]
    fn batch_is_framed_with_begin_and_end() {
        let rules = family_rules(Family::V4, "ts0", &NetfilterConfig::default(), &[]);
        let msgs = replace_batch(&rules);
        // 3 table messages, 3 chains, 3 input + 4 forward + 1 postrouting rules.
        assert_eq!(msgs.len(), 3 + 3 + 8);
        let mut n = 40;
        let (d, begin, seqs) = frame_batch(&msgs, || {
            n += 1;
            n
        });
        assert_eq!(begin, 41);
        assert_eq!(seqs.first(), Some(&42));
        assert_eq!(seqs.last(), Some(&55));
        // Walk the datagram: every message's length is sane and the types are right.
        let mut at = 0;
        let mut types = Vec::new();
        while at < d.len() {
            let len = netlink::u32_at(&d, at).unwrap() as usize;
            types.push(netlink::u16_at(&d, at + 4).unwrap());
            assert!(len >= 20 && len % 4 == 0);
            at += len;
        }
        assert_eq!(at, d.len());
        assert_eq!(types.first(), Some(&NFNL_MSG_BATCH_BEGIN));
        assert_eq!(types.last(), Some(&NFNL_MSG_BATCH_END));
        assert_eq!(types[1], 0x0a00 | NFT_MSG_NEWTABLE);
        assert_eq!(types[2], 0x0a00 | NFT_MSG_DELTABLE);
        // The begin marker names the nf_tables subsystem, big-endian.
        assert_eq!(&d[16..20], &[0, 0, 0, 10]);
    }

    #[test]
    fn rule_encoding_matches_nft() {
        // `oifname "ts0" ip saddr 100.64.0.0/10 counter drop`, as nft --debug=netlink shows
        // it: meta load oifname, cmp 16 bytes, payload 4b @ network + 12, bitwise mask
        // 0xffc00000, cmp 100.64.0.0, counter, immediate drop.
        let r = Rule {
            matches: vec![
                Match::OutIface("ts0".into()),
                Match::Src("100.64.0.0/10".parse().unwrap()),
            ],
            action: Action::Drop,
        };
        let e = rule_exprs(Family::V4, &r).0;
        let names: Vec<&[u8]> = ["meta", "cmp", "payload", "bitwise", "cmp", "counter"]
            .iter()
            .map(|s| s.as_bytes())
            .collect();
        let mut at = 0;
        for n in &names {
            let pos = e[at..].windows(n.len()).position(|w| w == *n).unwrap();
            at += pos + n.len();
        }
        assert!(e[at..].windows(9).any(|w| w == b"immediate"));
        // The CGNAT network and mask appear in network order.
        assert!(e.windows(4).any(|w| w == [100, 64, 0, 0]));
        assert!(e.windows(4).any(|w| w == [0xff, 0xc0, 0, 0]));
        // The interface name is a 16-byte operand.
        assert!(e.windows(16).any(|w| w == ifname("ts0")));
    }

    #[test]
    fn replies_commit_refuse_or_wait() {
        let mut r = BatchReplies::new(10, [11, 12, 13]);
        assert_eq!(r.outcome(), BatchOutcome::Pending);
        r.feed(&ack(11, 0)).unwrap();
        r.feed(&[ack(9, -2), ack(12, 0)].concat()).unwrap(); // 9: an old batch
        assert_eq!(r.outcome(), BatchOutcome::Pending);
        r.feed(&ack(13, 0)).unwrap();
        assert_eq!(r.outcome(), BatchOutcome::Committed);

        // The second message refused: the others still answer, the first refusal counts.
        let mut r = BatchReplies::new(10, [11, 12, 13]);
        r.feed(&[ack(11, 0), ack(12, -libc::ENOENT)].concat())
            .unwrap();
        assert_eq!(r.outcome(), BatchOutcome::Pending);
        r.feed(&ack(13, -libc::EINVAL)).unwrap();
        let want = BatchOutcome::Refused {
            seq: 12,
            errno: libc::ENOENT,
            msg: None,
        };
        assert_eq!(r.outcome(), want);

        // The batch itself refused (no permission): the begin number is the only answer.
        let mut r = BatchReplies::new(10, [11, 12]);
        r.feed(&ack(10, -libc::EPERM)).unwrap();
        assert!(matches!(
            r.outcome(),
            BatchOutcome::Refused {
                seq: 10,
                errno: libc::EPERM,
                ..
            }
        ));
        // Garbage is an error, not a panic.
        assert!(r.feed(&[1, 2, 3]).is_err());
        let mut bad = ack(11, 0);
        bad[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(BatchReplies::new(10, [11]).feed(&bad).is_err());
    }
}

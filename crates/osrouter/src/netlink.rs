//! rtnetlink by hand: the few requests the router sends (addresses, routes, policy rules) and a
//! defensive reader for the kernel's acknowledgements. Netlink integers are host-endian;
//! addresses travel in network order. Nothing here panics on any reply.
//!
//! The socket also speaks NETLINK_NETFILTER for `nftables.rs`, which builds its own messages
//! and sends them as one batch; [`parse_acks`] reads the answers to every message of a batch.

// The system calls (socket, setsockopt, sendto, recvfrom, if_nametoindex) are the only unsafe
// code in the crate; each block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};
use tailcfg::IpPrefix;

// Kernel ABI numbers (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h, linux/fib_rules.h).
pub(crate) const HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_CAPPED: u16 = 0x100; // on an NLMSG_ERROR: only the request's header is echoed
const NLM_F_ACK_TLVS: u16 = 0x200; // on an NLMSG_ERROR: extended-ack attributes follow
const NLMSGERR_ATTR_MSG: u16 = 1;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FR_ACT_TO_TBL: u8 = 1;
const FR_ACT_UNREACHABLE: u8 = 7;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;
const RTN_THROW: u8 = 9;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_NOWHERE: u8 = 255;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// How long one request may wait for its acknowledgement.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a policy rule does once it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Look the packet up in this table.
    Lookup(u32),
    /// Refuse the packet (`ENETUNREACH` for a local sender).
    Unreachable,
}

/// One policy rule: a preference, an optional fwmark/mask match, an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) pref: u32,
    pub(crate) mark: Option<(u32, u32)>,
    pub(crate) action: Action,
}

impl Rule {
    pub(crate) const fn new(pref: u32, mark: Option<(u32, u32)>, action: Action) -> Self {
        Self { pref, mark, action }
    }
}

/// An rtnetlink request that failed, before the caller names the operation.
#[derive(Debug)]
pub(crate) enum NlError {
    /// The kernel refused: a positive errno and its extended-ack text, when it gave one.
    Kernel { errno: i32, msg: Option<String> },
    /// The socket itself failed (or no reply came in time).
    Io(io::Error),
    /// The reply could not be read.
    Malformed(&'static str),
}

/// What one received datagram says about request `seq`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Nothing about it (another sequence number, or a data message): keep reading.
    NotOurs,
    /// Done.
    Ack,
    /// Refused with this (positive) errno and, when the kernel gave one, its message.
    Refused { errno: i32, msg: Option<String> },
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The prefix with its host bits cleared (routes are keyed by their network).
pub(crate) fn masked(p: IpPrefix) -> IpPrefix {
    let bits = u32::from(p.bits());
    let addr = match p.addr() {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    };
    IpPrefix::new(addr, p.bits()).unwrap_or(p)
}

pub(crate) fn pad(m: &mut Vec<u8>) {
    m.resize(m.len().next_multiple_of(4), 0);
}

/// A request header (length and sequence number are filled in by [`Socket::request`]) and body.
fn message(ty: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(80);
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(body);
    pad(&mut m);
    m
}

pub(crate) fn attr(m: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(data);
    pad(m);
}

/// RTM_NEWADDR (replacing, so a second add is not an error) or RTM_DELADDR for `p` on `ifindex`.
pub(crate) fn addr_msg(add: bool, ifindex: u32, p: IpPrefix) -> Vec<u8> {
    let (ty, flags) = if add {
        (RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE)
    } else {
        (RTM_DELADDR, 0)
    };
    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    let mut body = [family(p.addr()), p.bits(), 0, RT_SCOPE_UNIVERSE, 0, 0, 0, 0];
    body[4..].copy_from_slice(&ifindex.to_ne_bytes());
    let mut m = message(ty, flags, &body);
    let a = octets(p.addr());
    attr(&mut m, IFA_LOCAL, &a);
    attr(&mut m, IFA_ADDRESS, &a);
    m
}

/// RTM_NEWROUTE (create or replace) or RTM_DELROUTE: `p` (masked) via `ifindex` in `table`.
pub(crate) fn route_msg(add: bool, ifindex: u32, p: IpPrefix, table: u32) -> Vec<u8> {
    // A delete matches any protocol, scope and type, as `ip route del` does.
    route_change(add, Some(ifindex), RTN_UNICAST, p, table)
}

/// RTM_NEWROUTE or RTM_DELROUTE of a `throw` route for `p` (masked) in `table`: a lookup
/// that matches it leaves the table and goes on with the next rule (the main table), as
/// `ip route add throw P table T` does. No device; a delete names the type, so it removes
/// only a throw route.
pub(crate) fn throw_msg(add: bool, p: IpPrefix, table: u32) -> Vec<u8> {
    route_change(add, None, RTN_THROW, p, table)
}

/// The route message both build: of type `kind` when adding (and, for a throw route, when
/// deleting), through `oif` when given.
fn route_change(add: bool, oif: Option<u32>, kind: u8, p: IpPrefix, table: u32) -> Vec<u8> {
    let p = masked(p);
    let (ty, flags, proto, scope) = if add {
        let f = NLM_F_CREATE | NLM_F_REPLACE;
        (RTM_NEWROUTE, f, RTPROT_BOOT, RT_SCOPE_UNIVERSE)
    } else {
        (RTM_DELROUTE, 0, 0, RT_SCOPE_NOWHERE)
    };
    let kind = if add || kind == RTN_THROW { kind } else { 0 };
    let t8 = u8::try_from(table).unwrap_or(0);
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let body = [
        family(p.addr()),
        p.bits(),
        0,
        0,
        t8,
        proto,
        scope,
        kind,
        0,
        0,
        0,
        0,
    ];
    let mut m = message(ty, flags, &body);
    if p.bits() > 0 {
        attr(&mut m, RTA_DST, &octets(p.addr()));
    }
    if let Some(i) = oif {
        attr(&mut m, RTA_OIF, &i.to_ne_bytes());
    }
    attr(&mut m, RTA_TABLE, &table.to_ne_bytes());
    m
}

/// RTM_NEWRULE (exclusive, so a duplicate is EEXIST) or RTM_DELRULE. A delete names the
/// preference and the action only, not the mark, so it also clears a rule left at our
/// preference by an earlier run with other marks (Go deletes the same way).
pub(crate) fn rule_msg(add: bool, v6: bool, r: &Rule) -> Vec<u8> {
    let (ty, flags) = if add {
        (RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL)
    } else {
        (RTM_DELRULE, 0)
    };
    let (table, action) = match r.action {
        Action::Lookup(t) => (t, FR_ACT_TO_TBL),
        Action::Unreachable => (0, FR_ACT_UNREACHABLE),
    };
    let fam = if v6 { AF_INET6 } else { AF_INET };
    let t8 = u8::try_from(table).unwrap_or(0);
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags.
    let body = [fam, 0, 0, 0, t8, 0, 0, action, 0, 0, 0, 0];
    let mut m = message(ty, flags, &body);
    attr(&mut m, FRA_PRIORITY, &r.pref.to_ne_bytes());
    if let (true, Some((mark, mask))) = (add, r.mark) {
        attr(&mut m, FRA_FWMARK, &mark.to_ne_bytes());
        attr(&mut m, FRA_FWMASK, &mask.to_ne_bytes());
    }
    if table != 0 {
        attr(&mut m, FRA_TABLE, &table.to_ne_bytes());
    }
    m
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Reads one datagram from the kernel: every message in it is checked for a sane length, and
/// the NLMSG_ERROR answering `seq` (an error code of 0 is the acknowledgement) is returned.
pub(crate) fn parse_reply(mut buf: &[u8], seq: u32) -> Result<Reply, &'static str> {
    while !buf.is_empty() {
        let len = u32_at(buf, 0).ok_or("truncated message header")? as usize;
        let (ty, flags) = (u16_at(buf, 4), u16_at(buf, 6));
        let (Some(ty), Some(flags), Some(mseq)) = (ty, flags, u32_at(buf, 8)) else {
            return Err("truncated message header");
        };
        let body = buf.get(HDR..len).filter(|_| len >= HDR);
        let body = body.ok_or("message length out of bounds")?;
        if ty == NLMSG_ERROR && mseq == seq {
            let code = u32_at(body, 0).ok_or("truncated error message")? as i32;
            return match code {
                0 => Ok(Reply::Ack),
                c if c < 0 && c > -4096 => Ok(Reply::Refused {
                    errno: -c,
                    msg: ext_ack_msg(body, flags),
                }),
                _ => Err("error code out of range"),
            };
        }
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(Reply::NotOurs)
}

/// One answer in a datagram: the sequence number it answers, 0 for an acknowledgement or the
/// (positive) errno of a refusal, and the kernel's own words when it gave them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ack {
    pub(crate) seq: u32,
    pub(crate) errno: i32,
    pub(crate) msg: Option<String>,
}

/// Reads one datagram from the kernel and returns every NLMSG_ERROR in it (acknowledgements
/// and refusals, whatever their sequence number), in order. Other messages are skipped. Every
/// length is checked as in [`parse_reply`]; a datagram that lies about one is an error.
pub(crate) fn parse_acks(mut buf: &[u8]) -> Result<Vec<Ack>, &'static str> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let len = u32_at(buf, 0).ok_or("truncated message header")? as usize;
        let (ty, flags) = (u16_at(buf, 4), u16_at(buf, 6));
        let (Some(ty), Some(flags), Some(seq)) = (ty, flags, u32_at(buf, 8)) else {
            return Err("truncated message header");
        };
        let body = buf.get(HDR..len).filter(|_| len >= HDR);
        let body = body.ok_or("message length out of bounds")?;
        if ty == NLMSG_ERROR {
            let code = u32_at(body, 0).ok_or("truncated error message")? as i32;
            let errno = match code {
                0 => 0,
                c if c < 0 && c > -4096 => -c,
                _ => return Err("error code out of range"),
            };
            let msg = if errno == 0 {
                None
            } else {
                ext_ack_msg(body, flags)
            };
            out.push(Ack { seq, errno, msg });
        }
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(out)
}

/// The kernel's own explanation (NLMSGERR_ATTR_MSG) in an NLMSG_ERROR body, if present.
fn ext_ack_msg(body: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // The error code, then the request echoed (only its header when capped), then attributes.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        HDR
    } else {
        u32_at(body, 4)? as usize
    };
    // Checked throughout: `echoed` comes from the datagram, and usize is 32 bits on many
    // routers.
    let mut at = 4usize.checked_add(echoed)?.checked_next_multiple_of(4)?;
    while let (Some(len), Some(ty)) = (u16_at(body, at), u16_at(body, at.checked_add(2)?)) {
        let len = usize::from(len);
        let data = body
            .get(at + 4..at.checked_add(len)?)
            .filter(|_| len >= 4)?;
        if ty == NLMSGERR_ATTR_MSG {
            let text = data.split(|&b| b == 0).next().unwrap_or(&[]);
            return Some(String::from_utf8_lossy(text).into_owned()).filter(|s| !s.is_empty());
        }
        at = at.checked_add(len.next_multiple_of(4))?;
    }
    None
}

/// The index of interface `name` in the calling thread's network namespace.
pub(crate) fn ifindex(name: &str) -> io::Result<u32> {
    let bad = |why| io::Error::new(io::ErrorKind::InvalidInput, why);
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(bad("an interface name has 1 to 15 bytes"));
    }
    let c = CString::new(name).map_err(|_| bad("an interface name has no NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i)
}

/// A NETLINK_ROUTE socket that sends one request at a time and waits for its acknowledgement.
pub(crate) struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Socket({:?}, seq {})", self.fd, self.seq)
    }
}

fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data; all zeroes is a valid value (port 0: the kernel).
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    a
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, val: &T) -> io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` points to a live T of `len` bytes for the duration of the call.
    let r = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (val as *const T).cast(), len) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Socket {
    /// Opens a NETLINK_ROUTE socket (in the calling thread's network namespace).
    pub(crate) fn open() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_ROUTE)
    }

    /// Opens a NETLINK_NETFILTER socket (nf_tables), in the calling thread's namespace.
    /// EPROTONOSUPPORT: the kernel has no nfnetlink.
    pub(crate) fn open_netfilter() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_NETFILTER)
    }

    fn open_protocol(protocol: i32) -> io::Result<Self> {
        let (domain, ty) = (libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC);
        // SAFETY: socket(2) takes no pointers; the result is checked before use.
        let raw = unsafe { libc::socket(domain, ty, protocol) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        // The kernel's text for refusals, and acknowledgements without our request echoed
        // back; both optional (older kernels), so failures are ignored.
        let _ = setsockopt(&fd, libc::SOL_NETLINK, libc::NETLINK_EXT_ACK, &1i32);
        let _ = setsockopt(&fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, &1i32);
        let buf = vec![0; 16384];
        Ok(Self { fd, seq: 0, buf })
    }

    /// The next sequence number (never 0, so a reply with 0 is never taken for ours).
    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends one datagram to the kernel, as it is.
    pub(crate) fn send(&self, data: &[u8]) -> Result<(), NlError> {
        let to = kernel_addr();
        let alen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `data` and `to` are live for the call and their lengths are passed with them.
        let n = unsafe {
            let to = (&to as *const libc::sockaddr_nl).cast();
            libc::sendto(
                self.fd.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                0,
                to,
                alen,
            )
        };
        if n < 0 {
            return Err(NlError::Io(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Receives one datagram from the kernel; `Ok(None)` when none came within the socket's
    /// 1 s timeout (or the call was interrupted), or the datagram was not from the kernel.
    pub(crate) fn recv(&mut self) -> Result<Option<&[u8]>, NlError> {
        let alen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        let mut from = kernel_addr();
        let mut flen = alen;
        // SAFETY: `buf` and `from` are live and writable for the lengths passed.
        let n = unsafe {
            let (b, blen) = (self.buf.as_mut_ptr().cast(), self.buf.len());
            let f = (&mut from as *mut libc::sockaddr_nl).cast();
            libc::recvfrom(self.fd.as_raw_fd(), b, blen, 0, f, &mut flen)
        };
        let Ok(n) = usize::try_from(n) else {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted
                | io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut => Ok(None),
                _ => Err(NlError::Io(e)),
            };
        };
        if from.nl_pid != 0 {
            return Ok(None); // not from the kernel
        }
        Ok(Some(self.buf.get(..n).unwrap_or(&[])))
    }

    /// Sends `msg` (from the builders above) and waits for the kernel's answer to it.
    pub(crate) fn request(&mut self, mut msg: Vec<u8>) -> Result<(), NlError> {
        let seq = self.next_seq();
        let len = u32::try_from(msg.len()).map_err(|_| NlError::Malformed("request too long"))?;
        if let Some(h) = msg.get_mut(..12) {
            h[..4].copy_from_slice(&len.to_ne_bytes());
            h[8..].copy_from_slice(&seq.to_ne_bytes());
        }
        self.send(&msg)?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        while Instant::now() < deadline {
            let Some(data) = self.recv()? else {
                continue;
            };
            match parse_reply(data, seq).map_err(NlError::Malformed)? {
                Reply::NotOurs => continue,
                Reply::Ack => return Ok(()),
                Reply::Refused { errno, msg } => return Err(NlError::Kernel { errno, msg }),
            }
        }
        Err(timed_out())
    }
}

/// The error for a kernel that did not answer within [`REPLY_TIMEOUT`].
pub(crate) fn timed_out() -> NlError {
    NlError::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        "no netlink reply from the kernel within 5 s",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }

    /// An NLMSG_ERROR datagram for `seq` with `code`, optionally capped with an ext-ack text.
    fn error_reply(seq: u32, code: i32, text: Option<&str>) -> Vec<u8> {
        let mut body = code.to_ne_bytes().to_vec();
        let mut flags = 0;
        body.extend_from_slice(&[0u8; 16]); // the echoed request header
        if let Some(t) = text {
            flags = NLM_F_CAPPED | NLM_F_ACK_TLVS;
            let mut s = t.as_bytes().to_vec();
            s.push(0);
            attr(&mut body, NLMSGERR_ATTR_MSG, &s);
        }
        let mut m = message(NLMSG_ERROR, 0, &body);
        let len = m.len() as u32;
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m[6..8].copy_from_slice(&flags.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m
    }

    #[test]
    fn route_message_layout() {
        let m = route_msg(true, 7, p("10.1.2.3/24"), 52);
        assert_eq!(m.len(), 16 + 12 + 8 + 8 + 8);
        assert_eq!(u16_at(&m, 4), Some(RTM_NEWROUTE));
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        assert_eq!(u16_at(&m, 6), Some(flags));
        assert_eq!(
            &m[16..24],
            &[AF_INET, 24, 0, 0, 52, RTPROT_BOOT, 0, RTN_UNICAST]
        );
        // RTA_DST carries the masked network.
        assert_eq!(u16_at(&m, 28), Some(8));
        assert_eq!(u16_at(&m, 30), Some(RTA_DST));
        assert_eq!(&m[32..36], &[10, 1, 2, 0]);
        assert_eq!(u32_at(&m, 40), Some(7));
        assert_eq!(u32_at(&m, 48), Some(52));
        // A default route has no destination attribute.
        let d = route_msg(false, 7, p("::/0"), 52);
        assert_eq!(d.len(), 16 + 12 + 8 + 8);
        assert_eq!(&d[16..24], &[AF_INET6, 0, 0, 0, 52, 0, RT_SCOPE_NOWHERE, 0]);
    }

    #[test]
    fn addr_message_layout() {
        let m = addr_msg(true, 3, p("fd7a:115c:a1e0::1/128"));
        assert_eq!(m.len(), 16 + 8 + 20 + 20);
        assert_eq!(&m[16..20], &[AF_INET6, 128, 0, 0]);
        assert_eq!(u32_at(&m, 20), Some(3));
        assert_eq!(u16_at(&m, 26), Some(IFA_LOCAL));
        let want: std::net::Ipv6Addr = "fd7a:115c:a1e0::1".parse().unwrap();
        assert_eq!(m[28..44], want.octets());
        assert_eq!(u16_at(&m, 46), Some(IFA_ADDRESS));
    }

    #[test]
    fn rule_message_layout() {
        let r = Rule {
            pref: 5210,
            mark: Some((0x80000, 0xff0000)),
            action: Action::Lookup(254),
        };
        let m = rule_msg(true, false, &r);
        assert_eq!(u16_at(&m, 4), Some(RTM_NEWRULE));
        assert_eq!(&m[16..24], &[AF_INET, 0, 0, 0, 254, 0, 0, FR_ACT_TO_TBL]);
        assert_eq!(
            (u16_at(&m, 30), u32_at(&m, 32)),
            (Some(FRA_PRIORITY), Some(5210))
        );
        assert_eq!(
            (u16_at(&m, 38), u32_at(&m, 40)),
            (Some(FRA_FWMARK), Some(0x80000))
        );
        assert_eq!(
            (u16_at(&m, 46), u32_at(&m, 48)),
            (Some(FRA_FWMASK), Some(0xff0000))
        );
        assert_eq!(
            (u16_at(&m, 54), u32_at(&m, 56)),
            (Some(FRA_TABLE), Some(254))
        );
        // The delete names no mark; an unreachable rule names no table.
        let u = Rule {
            pref: 5250,
            mark: Some((0x80000, 0xff0000)),
            action: Action::Unreachable,
        };
        let d = rule_msg(false, true, &u);
        assert_eq!(d.len(), 16 + 12 + 8);
        assert_eq!(
            &d[16..24],
            &[AF_INET6, 0, 0, 0, 0, 0, 0, FR_ACT_UNREACHABLE]
        );
    }

    #[test]
    fn masks_host_bits() {
        assert_eq!(masked(p("100.64.1.2/10")), p("100.64.0.0/10"));
        assert_eq!(masked(p("1.2.3.4/0")), p("0.0.0.0/0"));
        assert_eq!(masked(p("fd7a:115c:a1e0::53/48")), p("fd7a:115c:a1e0::/48"));
        assert_eq!(masked(p("fd7a::1/128")), p("fd7a::1/128"));
    }

    #[test]
    fn replies() {
        assert_eq!(parse_reply(&error_reply(9, 0, None), 9), Ok(Reply::Ack));
        assert_eq!(parse_reply(&error_reply(8, 0, None), 9), Ok(Reply::NotOurs));
        assert_eq!(parse_reply(&[], 9), Ok(Reply::NotOurs));
        let refused = Reply::Refused {
            errno: libc::ENETDOWN,
            msg: Some("Nexthop device is not up".into()),
        };
        let r = error_reply(9, -libc::ENETDOWN, Some("Nexthop device is not up"));
        assert_eq!(parse_reply(&r, 9), Ok(refused));
        let plain = error_reply(9, -libc::EEXIST, None);
        let want = Reply::Refused {
            errno: libc::EEXIST,
            msg: None,
        };
        assert_eq!(parse_reply(&plain, 9), Ok(want));
        // Two messages in one datagram (a multipart data message, then our answer).
        let mut multi = message(RTM_NEWROUTE, 0x2, &[0; 12]);
        multi[..4].copy_from_slice(&28u32.to_ne_bytes());
        multi[8..12].copy_from_slice(&9u32.to_ne_bytes());
        multi.extend_from_slice(&error_reply(9, 0, None));
        assert_eq!(parse_reply(&multi, 9), Ok(Reply::Ack));
    }

    #[test]
    fn garbage_replies_are_errors_not_panics() {
        let good = error_reply(9, -libc::ENOENT, Some("no such rule"));
        // Every truncation of a valid reply either parses or is refused, never panics.
        for n in 0..good.len() {
            let _ = parse_reply(&good[..n], 9);
        }
        assert!(parse_reply(&good[..10], 9).is_err());
        assert!(parse_reply(&good[..20], 9).is_err());
        // Lengths that lie: shorter than a header, longer than the datagram, zero.
        for len in [0u32, 4, 15, 1000, u32::MAX] {
            let mut m = good.clone();
            m[..4].copy_from_slice(&len.to_ne_bytes());
            assert!(parse_reply(&m, 9).is_err(), "length {len}");
        }
        // Positive or absurd error codes.
        for code in [1, i32::MIN, -5000] {
            assert!(parse_reply(&error_reply(9, code, None), 9).is_err());
        }
        // Extended-ack attributes that lie about their lengths.
        for alen in [0u16, 2, 3, 200, u16::MAX] {
            let mut m = good.clone();
            m[36..38].copy_from_slice(&alen.to_ne_bytes());
            let r = parse_reply(&m, 9);
            assert!(matches!(
                r,
                Ok(Reply::Refused {
                    errno: libc::ENOENT,
                    ..
                })
            ));
        }
        // Deterministic pseudo-random bytes.
        let mut x = 0x9e37_79b9_u32;
        for round in 0..2000 {
            let mut b = vec![0u8; round % 97];
            for v in &mut b {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *v = x as u8;
            }
            if b.len() >= 4 && round % 2 == 0 {
                let len = (b.len() as u32).min(u32::from(b[0]));
                b[..4].copy_from_slice(&len.to_ne_bytes());
            }
            let _ = parse_reply(&b, u32::from_ne_bytes([0; 4]));
        }
    }
}

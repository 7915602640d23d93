//! The tokio driver that forwards one DNS query to upstream resolvers.
//!
//! [`Forwarder::forward`] takes the query bytes a client sent to quad-100 and the upstreams the
//! resolver chose for the name, and returns the bytes of the first acceptable answer.
//!
//! How a query is sent (the choices and their reasons are in `docs/magicdns.md`, "Forwarding"):
//!
//! - **Staggered race.** The first upstream is asked at once; each further one joins after
//!   [`ForwarderConfig::stagger`] (200 ms by default, the delay tailscaled gives a provider's
//!   backup address), or at once when an attempt fails (no answer but SERVFAIL or REFUSED, an
//!   unreachable port, a failed retry). The first good answer wins and the other attempts are
//!   cancelled.
//! - **UDP first, TCP on truncation.** Every attempt uses a fresh UDP socket bound to port 0, so
//!   the kernel picks a random source port, and connected to the upstream, so only its datagrams
//!   arrive. A reply is accepted only when its ID, opcode and question match the query;
//!   anything else (a wrong ID, another question, garbage) is dropped and the attempt keeps
//!   listening. A reply with TC set, or one bigger than [`UDP_RECEIVE_LIMIT`] bytes, is asked
//!   again over TCP (2-byte length prefix, answers up to 65535 bytes).
//! - **Soft failures wait.** SERVFAIL and REFUSED from one upstream do not end the race; they
//!   are returned only when no upstream gave anything better before the deadline.
//! - **Bounded.** Each UDP or TCP exchange has [`ForwarderConfig::attempt_timeout`] (5 s), the
//!   whole query [`ForwarderConfig::query_timeout`] (10 s, tailscaled's limit), and at most
//!   [`ForwarderConfig::max_in_flight`] queries (256) run at once: beyond that `forward` fails
//!   at once with [`ForwardError::Busy`] instead of queueing.
//! - **Socket mark.** With [`ForwarderConfig::socket_mark`] set, every socket carries that
//!   `SO_MARK` (the engine's bypass mark, `0x80000`), so forwarded DNS leaves through the
//!   host's own routes rather than the tunnel's policy routing.
//!
//! [`Upstream::Https`] is not spoken yet: such upstreams are skipped, and a query that has only
//! those fails with [`ForwardError::Unsupported`].

use crate::Upstream;
use std::future::{Future, poll_fn};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use std::{fmt, io};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::debug;

/// Default time one UDP or TCP exchange with one upstream may take (`dig`'s default, and
/// tailscaled's TCP query timeout).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time a whole query may take, all upstreams together (tailscaled's DNS query
/// timeout).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default delay before the next upstream joins the race.
pub const DEFAULT_STAGGER: Duration = Duration::from_millis(200);
/// Default number of queries that may be forwarded at the same time.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// The biggest UDP answer accepted as is; a bigger datagram counts as truncated and the query
/// is asked again over TCP. 4096 bytes is the usual EDNS buffer size.
pub const UDP_RECEIVE_LIMIT: usize = 4096;

/// The fixed DNS header.
const HEADER_LEN: usize = 12;
/// The longest wire name without its final zero byte.
const MAX_NAME_LABELS_LEN: usize = 254;
/// Header flag bits (third byte) and response codes.
const FLAG_QR: u8 = 0x80;
const FLAG_TC: u8 = 0x02;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_REFUSED: u8 = 5;

/// How a [`Forwarder`] sends queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// Time one exchange with one upstream may take: the UDP wait, then the TCP retry on
    /// truncation, each get this much.
    pub attempt_timeout: Duration,
    /// Time the whole query may take, every upstream and retry included.
    pub query_timeout: Duration,
    /// Delay between starting one upstream and the next while no answer has come.
    pub stagger: Duration,
    /// Queries forwarded at the same time before [`Forwarder::forward`] answers
    /// [`ForwardError::Busy`]. Zero refuses every query.
    pub max_in_flight: usize,
    /// `SO_MARK` set on every socket (Linux; setting it needs `CAP_NET_ADMIN`). `None` sets
    /// nothing.
    pub socket_mark: Option<u32>,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            stagger: DEFAULT_STAGGER,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            socket_mark: None,
        }
    }
}

/// Why a query got no answer from upstream.
#[derive(Debug)]
#[non_exhaustive]
pub enum ForwardError {
    /// The query is not a forwardable DNS query: shorter than a header, a response, not
    /// exactly one question, a malformed question, or longer than 65535 bytes.
    InvalidQuery,
    /// The upstream list is empty.
    NoUpstream,
    /// The in-flight limit is reached; the query was not sent.
    Busy,
    /// No upstream answered in time.
    Timeout,
    /// Only upstreams the forwarder cannot speak yet (DNS over HTTPS).
    Unsupported,
    /// An upstream's TCP answer did not match the query.
    InvalidAnswer,
    /// A socket operation failed (for example, an unreachable upstream, or `SO_MARK` without
    /// the capability).
    Io(io::Error),
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::InvalidQuery => f.write_str("not a forwardable DNS query"),
            ForwardError::NoUpstream => f.write_str("no upstream resolver"),
            ForwardError::Busy => f.write_str("too many queries in flight"),
            ForwardError::Timeout => f.write_str("upstream resolvers did not answer in time"),
            ForwardError::Unsupported => {
                f.write_str("upstream transport not supported (DNS over HTTPS)")
            }
            ForwardError::InvalidAnswer => f.write_str("upstream answer does not match the query"),
            ForwardError::Io(e) => write!(f, "upstream I/O: {e}"),
        }
    }
}

impl std::error::Error for ForwardError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ForwardError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ForwardError {
    fn from(e: io::Error) -> Self {
        ForwardError::Io(e)
    }
}

/// Forwards queries to upstream resolvers. Cheap to clone: clones share the in-flight limit.
#[derive(Debug, Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ForwarderConfig,
    permits: Semaphore,
}

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder::new(ForwarderConfig::default())
    }
}

impl Forwarder {
    /// A forwarder with `config`.
    pub fn new(config: ForwarderConfig) -> Self {
        let permits = Semaphore::new(config.max_in_flight.min(Semaphore::MAX_PERMITS));
        Forwarder {
            inner: Arc::new(Inner { config, permits }),
        }
    }

    /// The configuration this forwarder was built with.
    pub fn config(&self) -> &ForwarderConfig {
        &self.inner.config
    }

    /// Queries being forwarded right now.
    pub fn in_flight(&self) -> usize {
        let limit = self.inner.config.max_in_flight.min(Semaphore::MAX_PERMITS);
        limit.saturating_sub(self.inner.permits.available_permits())
    }

    /// Sends `query` to `upstreams` (in order, staggered) and returns the first acceptable
    /// answer's bytes, unchanged (same ID as the query).
    ///
    /// The answer is, by preference: the first one that is neither SERVFAIL nor REFUSED; else a
    /// truncated answer whose TCP retry failed (TC set, so the client retries over TCP); else
    /// the first SERVFAIL; else the first REFUSED. With none of those it fails: `Timeout` when
    /// some upstream was still silent at its deadline, else the first error seen.
    pub async fn forward(
        &self,
        query: &[u8],
        upstreams: &[Upstream],
    ) -> Result<Vec<u8>, ForwardError> {
        let query = QueryBytes::parse(query).ok_or(ForwardError::InvalidQuery)?;
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let _permit = self
            .inner
            .permits
            .try_acquire()
            .map_err(|_| ForwardError::Busy)?;
        let plain: Vec<SocketAddr> = upstreams
            .iter()
            .filter_map(|u| match u {
                Upstream::Plain(addr) => Some(*addr),
                Upstream::Https(url) => {
                    debug!("forward: skipping DNS-over-HTTPS upstream {url} (not supported)");
                    None
                }
            })
            .collect();
        if plain.is_empty() {
            return Err(ForwardError::Unsupported);
        }
        let config = &self.inner.config;
        let deadline = Instant::now() + config.query_timeout;
        let mut race = Race {
            query: Arc::new(query),
            pending: plain.into_iter(),
            tasks: JoinSet::new(),
            attempt_timeout: config.attempt_timeout,
            mark: config.socket_mark,
            stagger: config.stagger,
            answer: None,
            truncated: None,
            servfail: None,
            refused: None,
            error: None,
            timed_out: false,
        };
        if timeout_at(deadline, race.run()).await.is_err() {
            race.timed_out = true;
        }
        // Dropping the race aborts the attempts still running.
        race.result()
    }
}

/// A validated query and where its question ends.
#[derive(Debug)]
struct QueryBytes {
    bytes: Vec<u8>,
    question_end: usize,
}

impl QueryBytes {
    fn parse(query: &[u8]) -> Option<QueryBytes> {
        if query.len() > usize::from(u16::MAX) {
            return None;
        }
        let flags = *query.get(2)?;
        if flags & FLAG_QR != 0 || qdcount(query)? != 1 {
            return None;
        }
        let question_end = question_end(query)?;
        Some(QueryBytes {
            bytes: query.to_vec(),
            question_end,
        })
    }

    /// Whether `reply` answers this query: same ID and opcode, a response, and the same single
    /// question (the name compared without regard to ASCII case).
    fn is_answered_by(&self, reply: &[u8]) -> bool {
        let (Some(q), Some(r)) = (self.bytes.get(..4), reply.get(..4)) else {
            return false;
        };
        let same_id = q.get(..2) == r.get(..2);
        let (qflags, rflags) = (
            q.get(2).copied().unwrap_or(0),
            r.get(2).copied().unwrap_or(0),
        );
        let same_opcode = (qflags >> 3) & 0x0f == (rflags >> 3) & 0x0f;
        if !same_id || rflags & FLAG_QR == 0 || !same_opcode || qdcount(reply) != Some(1) {
            return false;
        }
        if question_end(reply) != Some(self.question_end) {
            return false;
        }
        let type_class = self.question_end.saturating_sub(4);
        let names = (
            self.bytes.get(HEADER_LEN..type_class),
            reply.get(HEADER_LEN..type_class),
        );
        let rest = (
            self.bytes.get(type_class..self.question_end),
            reply.get(type_class..self.question_end),
        );
        match (names, rest) {
            ((Some(qn), Some(rn)), (Some(qt), Some(rt))) => qn.eq_ignore_ascii_case(rn) && qt == rt,
            _ => false,
        }
    }

    /// A header-and-question answer with TC set, for a reply too big to keep.
    fn truncated_stub(&self, reply: &[u8]) -> Option<Vec<u8>> {
        let mut stub = reply.get(..self.question_end)?.to_vec();
        if let Some(flags) = stub.get_mut(2) {
            *flags |= FLAG_TC;
        }
        if let Some(counts) = stub.get_mut(6..HEADER_LEN) {
            counts.fill(0);
        }
        Some(stub)
    }
}

fn qdcount(msg: &[u8]) -> Option<u16> {
    match msg.get(4..6)? {
        [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

fn rcode(msg: &[u8]) -> u8 {
    msg.get(3).map_or(0, |b| b & 0x0f)
}

fn truncated(msg: &[u8]) -> bool {
    msg.get(2).is_some_and(|b| b & FLAG_TC != 0)
}

/// The offset just past the first question (uncompressed name, type, class), or `None` when
/// the message is too short or the name is malformed or compressed.
fn question_end(msg: &[u8]) -> Option<usize> {
    let mut pos = HEADER_LEN;
    let mut labels_len = 0usize;
    loop {
        let len = usize::from(*msg.get(pos)?);
        if len == 0 {
            pos += 1;
            break;
        }
        // 0b11 is a compression pointer, 0b01 and 0b10 are unused label types. The question
        // comes right after the header, so a valid one never needs a pointer.
        if len > 63 {
            return None;
        }
        labels_len += len + 1;
        if labels_len > MAX_NAME_LABELS_LEN {
            return None;
        }
        pos += len + 1;
    }
    let end = pos + 4;
    (end <= msg.len()).then_some(end)
}

/// How one upstream's attempt ended.
#[derive(Debug)]
enum Outcome {
    /// A good answer.
    Answer(Vec<u8>),
    /// A truncated UDP answer whose TCP retry failed.
    Truncated(Vec<u8>),
    /// A SERVFAIL or REFUSED answer (the code, the bytes).
    Soft(u8, Vec<u8>),
    /// No usable answer.
    Failed(ForwardError),
}

impl Outcome {
    fn from_answer(answer: Vec<u8>) -> Outcome {
        match rcode(&answer) {
            code @ (RCODE_SERVFAIL | RCODE_REFUSED) => Outcome::Soft(code, answer),
            _ => Outcome::Answer(answer),
        }
    }
}

/// The state of one query's race between upstreams.
struct Race {
    query: Arc<QueryBytes>,
    pending: std::vec::IntoIter<SocketAddr>,
    tasks: JoinSet<Outcome>,
    attempt_timeout: Duration,
    mark: Option<u32>,
    stagger: Duration,
    answer: Option<Vec<u8>>,
    truncated: Option<Vec<u8>>,
    servfail: Option<Vec<u8>>,
    refused: Option<Vec<u8>>,
    error: Option<ForwardError>,
    timed_out: bool,
}

enum Event {
    Joined(Result<Outcome, JoinError>),
    Stagger,
    Idle,
}

impl Race {
    /// Runs until a good answer arrives or every upstream has finished; the caller bounds it
    /// with the query deadline.
    async fn run(&mut self) {
        let mut next_start = pin!(sleep_until(Instant::now()));
        loop {
            if self.tasks.is_empty() {
                if !self.start_next() {
                    return;
                }
                next_start.as_mut().reset(Instant::now() + self.stagger);
            }
            let tasks = &mut self.tasks;
            let more = self.pending.len() > 0;
            let event = poll_fn(|cx| {
                match tasks.poll_join_next(cx) {
                    Poll::Ready(Some(joined)) => return Poll::Ready(Event::Joined(joined)),
                    Poll::Ready(None) => return Poll::Ready(Event::Idle),
                    Poll::Pending => {}
                }
                if more && next_start.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Stagger);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Joined(joined) => {
                    if self.record(joined) {
                        return;
                    }
                    // An attempt failed: the next upstream need not wait for its turn.
                    if self.start_next() {
                        next_start.as_mut().reset(Instant::now() + self.stagger);
                    }
                }
                Event::Stagger => {
                    self.start_next();
                    next_start.as_mut().reset(Instant::now() + self.stagger);
                }
                Event::Idle => {}
            }
        }
    }

    /// Starts the next upstream's attempt; false when none is left.
    fn start_next(&mut self) -> bool {
        let Some(upstream) = self.pending.next() else {
            return false;
        };
        let query = Arc::clone(&self.query);
        let (attempt_timeout, mark) = (self.attempt_timeout, self.mark);
        self.tasks
            .spawn(async move { attempt(upstream, &query, attempt_timeout, mark).await });
        true
    }

    /// Records one attempt's outcome; true when it is the answer.
    fn record(&mut self, joined: Result<Outcome, JoinError>) -> bool {
        match joined {
            Ok(Outcome::Answer(answer)) => {
                self.answer = Some(answer);
                return true;
            }
            Ok(Outcome::Truncated(answer)) => {
                self.truncated.get_or_insert(answer);
            }
            Ok(Outcome::Soft(RCODE_SERVFAIL, answer)) => {
                self.servfail.get_or_insert(answer);
            }
            Ok(Outcome::Soft(_, answer)) => {
                self.refused.get_or_insert(answer);
            }
            Ok(Outcome::Failed(ForwardError::Timeout)) => self.timed_out = true,
            Ok(Outcome::Failed(e)) => {
                self.error.get_or_insert(e);
            }
            Err(e) => {
                self.error
                    .get_or_insert(ForwardError::Io(io::Error::other(e.to_string())));
            }
        }
        false
    }

    fn result(self) -> Result<Vec<u8>, ForwardError> {
        if let Some(answer) = self
            .answer
            .or(self.truncated)
            .or(self.servfail)
            .or(self.refused)
        {
            return Ok(answer);
        }
        if self.timed_out {
            return Err(ForwardError::Timeout);
        }
        Err(self.error.unwrap_or(ForwardError::Timeout))
    }
}

/// One upstream: UDP, then TCP when the UDP answer is truncated.
async fn attempt(
    upstream: SocketAddr,
    query: &QueryBytes,
    attempt_timeout: Duration,
    mark: Option<u32>,
) -> Outcome {
    let fallback = match timeout(attempt_timeout, udp_exchange(upstream, query, mark)).await {
        Err(_) => {
            debug!("forward: {upstream} did not answer over UDP in {attempt_timeout:?}");
            return Outcome::Failed(ForwardError::Timeout);
        }
        Ok(Err(e)) => {
            debug!("forward: UDP to {upstream}: {e}");
            return Outcome::Failed(ForwardError::Io(e));
        }
        Ok(Ok(UdpReply::Complete(answer))) if !truncated(&answer) => {
            return Outcome::from_answer(answer);
        }
        Ok(Ok(UdpReply::Complete(answer))) => answer,
        Ok(Ok(UdpReply::Oversized(stub))) => stub,
    };
    match timeout(attempt_timeout, tcp_exchange(upstream, query, mark)).await {
        Ok(Ok(answer)) => Outcome::from_answer(answer),
        Ok(Err(e)) => {
            debug!("forward: TCP retry to {upstream}: {e}; keeping the truncated answer");
            Outcome::Truncated(fallback)
        }
        Err(_) => {
            debug!("forward: TCP retry to {upstream} timed out; keeping the truncated answer");
            Outcome::Truncated(fallback)
        }
    }
}

enum UdpReply {
    /// A matching answer that fit the receive limit.
    Complete(Vec<u8>),
    /// A matching answer bigger than the limit: its header and question with TC set.
    Oversized(Vec<u8>),
}

async fn udp_exchange(
    upstream: SocketAddr,
    query: &QueryBytes,
    mark: Option<u32>,
) -> io::Result<UdpReply> {
    let socket = udp_socket(upstream, mark)?;
    socket.connect(upstream).await?;
    socket.send(&query.bytes).await?;
    // One byte more than the limit tells an oversized datagram from one that just fits.
    let mut buf = vec![0u8; UDP_RECEIVE_LIMIT + 1];
    loop {
        let n = socket.recv(&mut buf).await?;
        let Some(reply) = buf.get(..n) else {
            continue;
        };
        if !query.is_answered_by(reply) {
            debug!(
                "forward: ignoring a {n}-byte datagram from {upstream} that does not answer the query"
            );
            continue;
        }
        if n > UDP_RECEIVE_LIMIT {
            if let Some(stub) = query.truncated_stub(reply) {
                return Ok(UdpReply::Oversized(stub));
            }
            continue;
        }
        return Ok(UdpReply::Complete(reply.to_vec()));
    }
}

async fn tcp_exchange(
    upstream: SocketAddr,
    query: &QueryBytes,
    mark: Option<u32>,
) -> Result<Vec<u8>, ForwardError> {
    let mut stream = tcp_socket(upstream, mark)?.connect(upstream).await?;
    let len = u16::try_from(query.bytes.len()).map_err(|_| ForwardError::InvalidQuery)?;
    let mut framed = Vec::with_capacity(query.bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(&query.bytes);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut answer).await?;
    if !query.is_answered_by(&answer) {
        return Err(ForwardError::InvalidAnswer);
    }
    Ok(answer)
}

/// A UDP socket of `upstream`'s family on an ephemeral port, marked when asked.
fn udp_socket(upstream: SocketAddr, mark: Option<u32>) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(upstream),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    set_mark(&socket, mark)?;
    socket.set_nonblocking(true)?;
    socket.bind(&unspecified(upstream).into())?;
    UdpSocket::from_std(socket.into())
}

/// A TCP socket of `upstream`'s family, marked when asked, ready to connect.
fn tcp_socket(upstream: SocketAddr, mark: Option<u32>) -> io::Result<TcpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(upstream),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    set_mark(&socket, mark)?;
    socket.set_nonblocking(true)?;
    Ok(TcpSocket::from_std_stream(socket.into()))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_mark(socket: &socket2::Socket, mark: Option<u32>) -> io::Result<()> {
    match mark {
        Some(mark) => socket.set_mark(mark),
        None => Ok(()),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_mark(_socket: &socket2::Socket, mark: Option<u32>) -> io::Result<()> {
    match mark {
        Some(_) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_MARK exists only on Linux",
        )),
        None => Ok(()),
    }
}

fn unspecified(upstream: SocketAddr) -> SocketAddr {
    match upstream {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// A query for `example.com. A` with `id`.
    fn query(id: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
        q
    }

    fn reply_to(q: &[u8]) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] |= FLAG_QR;
        r
    }

    #[test]
    fn parses_queries() {
        let q = query(7);
        let parsed = QueryBytes::parse(&q).unwrap();
        assert_eq!(parsed.question_end, q.len());
        assert!(QueryBytes::parse(&q[..11]).is_none());
        assert!(QueryBytes::parse(&reply_to(&q)).is_none(), "a response");
        let mut two = q.clone();
        two[5] = 2;
        assert!(QueryBytes::parse(&two).is_none(), "two questions");
        let mut pointer = q.clone();
        pointer[12] = 0xc0;
        assert!(QueryBytes::parse(&pointer).is_none(), "compressed question");
        assert!(
            QueryBytes::parse(&q[..q.len() - 1]).is_none(),
            "cut question"
        );
        // A name of 128 one-byte labels is 256 bytes on the wire: too long.
        let mut long = q[..HEADER_LEN].to_vec();
        for _ in 0..128 {
            long.extend_from_slice(b"\x01a");
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(QueryBytes::parse(&long).is_none());
    }

    #[test]
    fn matches_answers() {
        let q = query(0x1234);
        let parsed = QueryBytes::parse(&q).unwrap();
        assert!(parsed.is_answered_by(&reply_to(&q)));
        let mut upper = reply_to(&q);
        upper[13] = b'E';
        assert!(parsed.is_answered_by(&upper), "case differs");
        assert!(!parsed.is_answered_by(&q), "not a response");
        let mut id = reply_to(&q);
        id[1] ^= 1;
        assert!(!parsed.is_answered_by(&id));
        let mut qtype = reply_to(&q);
        let at = qtype.len() - 3;
        qtype[at] = 0x1c;
        assert!(!parsed.is_answered_by(&qtype));
        let mut name = reply_to(&q);
        name[14] = b'z';
        assert!(!parsed.is_answered_by(&name));
        let mut opcode = reply_to(&q);
        opcode[2] |= 0x10;
        assert!(!parsed.is_answered_by(&opcode));
        for len in 0..q.len() {
            assert!(!parsed.is_answered_by(&reply_to(&q)[..len]));
        }
    }

    #[test]
    fn stub_keeps_header_and_question() {
        let q = query(9);
        let parsed = QueryBytes::parse(&q).unwrap();
        let mut big = reply_to(&q);
        big[7] = 3;
        big.extend_from_slice(&[0xaa; 100]);
        let stub = parsed.truncated_stub(&big).unwrap();
        assert_eq!(stub.len(), q.len());
        assert!(truncated(&stub));
        assert_eq!(&stub[6..12], &[0; 6]);
    }

    #[test]
    fn error_messages() {
        assert_eq!(ForwardError::Busy.to_string(), "too many queries in flight");
        let io = ForwardError::from(io::Error::other("boom"));
        assert!(io.to_string().contains("boom"));
        assert!(std::error::Error::source(&io).is_some());
    }

    /// The mark reaches the socket (needs CAP_NET_ADMIN: without it the error says so).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn marks_sockets() {
        let upstream: SocketAddr = "127.0.0.1:53".parse().unwrap();
        match udp_socket(upstream, Some(0x80000)) {
            Ok(s) => assert_eq!(socket2::SockRef::from(&s).mark().unwrap(), 0x80000),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}"),
        }
        let unmarked = udp_socket(upstream, None).unwrap();
        assert_eq!(socket2::SockRef::from(&unmarked).mark().unwrap(), 0);
    }
}

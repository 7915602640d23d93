//! The userspace network stack for traffic the node itself answers.
//!
//! Owns a smoltcp interface fed with packets the TUN hook intercepted (to 100.100.100.100 and
//! fd7a:115c:a1e0::53), the UDP and TCP listeners on those service addresses, and the replies
//! injected back into the TUN. It hands DNS payloads to a handler trait and knows nothing of
//! what DNS means: the daemon core plugs the MagicDNS resolver in.
//!
//! Status: crate boundary only; it lands with MagicDNS (issue 5).

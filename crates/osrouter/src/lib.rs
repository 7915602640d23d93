//! Operating-system configuration for a router node.
//!
//! Owns what the node changes in the host: addresses on the TUN device, routes to peers,
//! accepted subnet routes and the exit node's default route in a table of their own with policy
//! rules (so control and DERP traffic never loops into the tunnel), and SNAT and forwarding rules
//! through nftables, iptables or neither. Every change is undone on down and on exit.
//! It speaks netlink and firewall back-ends and knows nothing of Tailscale's protocols.
//!
//! Status (issue 6): [`Router`] sets addresses, routes and policy rules the way Go's Linux
//! router does, over a NETLINK_ROUTE socket spoken by hand (no netlink crate, no `ip` binary),
//! and, once given a [`NetfilterConfig`] ([`Router::set_netfilter`]), Go's forwarding, SNAT
//! and input rules through nftables (netlink again, no `nft` binary), iptables or nothing
//! ([`netfilter`]). [`forwarding`] checks and turns on IP forwarding. docs/osrouter.md has
//! the modes, the exact rules and what the tests prove.
//!
//! For the daemon:
//!
//! ```text
//! Router::new(tun)                      once the TUN device is up
//! router.set_netfilter(&NetfilterConfig { mode, backend, snat_subnet_routes,
//!                      stateful_filtering, magicsock_port, ipv6 })   at start and on change
//! router.set(&RouterConfig { addresses, routes, local_routes })     on every netmap change
//! forwarding::check_ip_forwarding(&advertised_routes)               -> warnings to show
//! router.close()                                                    on shutdown
//! ```
//!
//! What [`Router::set`] installs, for a TUN device `tailscale0`:
//!
//! * each self address as given (the netmap's `/32` and `/128`) on the device;
//! * each route (peers, accepted subnets, an exit node's `0.0.0.0/0` and `::/0`, quad-100)
//!   in table [`TABLE`] (52) through the device, host bits cleared;
//! * each local route as a `throw` route in table 52 (the router's own LANs while an exit
//!   node is in use), so lookups for it fall through to the main table;
//! * once, for IPv4 and for IPv6, Go's four policy rules (base preference 5200):
//!
//! ```text
//! 5210: from all fwmark 0x80000/0xff0000 lookup main
//! 5230: from all fwmark 0x80000/0xff0000 lookup default
//! 5250: from all fwmark 0x80000/0xff0000 unreachable
//! 5270: from all lookup 52
//! ```
//!
//! The node's own sockets carry [`BYPASS_MARK`] and so use the ordinary tables (or fail as
//! unreachable, never falling into table 52); everything else consults table 52 first.
//!
//! The device must exist and be up (`tstun-wrap` brings it up); its link state is not
//! touched. Where IPv6 is off (kernel built without it, `disable_ipv6`), IPv6 changes are
//! skipped with one warning and IPv4 carries on.

use libc::{EACCES, EADDRNOTAVAIL, EAFNOSUPPORT, EEXIST, ENODEV, ENOENT, EOPNOTSUPP};
use libc::{EPROTONOSUPPORT, ESRCH};
use std::collections::BTreeSet;
use std::io;
use tailcfg::IpPrefix;
use tracing::warn;

pub mod forwarding;
pub mod ifaddrs;
#[cfg(feature = "iptables")]
mod iptables;
pub mod netfilter;
mod netlink;
mod nftables;

pub use netfilter::{
    ActiveBackend, IptablesFlavor, Netfilter, NetfilterBackend, NetfilterConfig, NetfilterMode,
};
use netlink::{Action, NlError, Rule};

/// For the fuzz targets only (`fuzz/fuzz_targets/nft_batch_replies.rs`): the readers of kernel
/// replies. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::nftables::{BatchOutcome, BatchReplies};

    /// Runs the rtnetlink acknowledgement reader on `data` for sequence number `seq`; `true`
    /// when it found an answer (acknowledgement or refusal) for it.
    pub fn route_reply(data: &[u8], seq: u32) -> Result<bool, &'static str> {
        crate::netlink::parse_reply(data, seq).map(|r| r != crate::netlink::Reply::NotOurs)
    }

    /// Runs the reader of every answer in a datagram; the (sequence number, errno) of each.
    pub fn acks(data: &[u8]) -> Result<Vec<(u32, i32)>, &'static str> {
        let acks = crate::netlink::parse_acks(data)?;
        Ok(acks.into_iter().map(|a| (a.seq, a.errno)).collect())
    }
}

/// Tailscale's routing table on Linux (the keys above "T" and "S" on a qwerty keyboard).
pub const TABLE: u32 = 52;

/// The firewall mark on the node's own sockets: the engine sets it with `SO_MARK` on its
/// WireGuard UDP, DERP and control sockets. Rules 5210 to 5250 send packets carrying it to the
/// main and default tables, or refuse them, so they never reach table 52. That is what keeps
/// DERP and control traffic out of the tunnel once an exit node's default route sits in table
/// 52 (without it, the tunnel's own packets would be routed into the tunnel).
pub const BYPASS_MARK: u32 = 0x80000;

/// The part of the firewall mark Tailscale uses (the third byte), leaving the rest to others.
pub const FWMARK_MASK: u32 = 0xff0000;

const MAIN: u32 = 254;
const DEFAULT: u32 = 253;
const BYPASS: Option<(u32, u32)> = Some((BYPASS_MARK, FWMARK_MASK));

/// Go's rule list (`router_linux.go`, base preference 5200), in its order.
const RULES: [Rule; 4] = [
    Rule::new(5210, BYPASS, Action::Lookup(MAIN)),
    Rule::new(5230, BYPASS, Action::Lookup(DEFAULT)),
    Rule::new(5250, BYPASS, Action::Unreachable),
    Rule::new(5270, None, Action::Lookup(TABLE)),
];

/// Errnos that mean a delete found nothing to delete (or no device to delete it from).
const GONE: [i32; 4] = [ENOENT, ESRCH, EADDRNOTAVAIL, ENODEV];

/// Errnos an IPv6 request gets where IPv6 is off: no IPv6 in the kernel (EAFNOSUPPORT and
/// kin) or `disable_ipv6` on the device (EACCES).
const NO_V6: [i32; 4] = [EAFNOSUPPORT, EPROTONOSUPPORT, EOPNOTSUPP, EACCES];

/// What one change in [`Router::set`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Addr,
    Route,
    Throw,
}

/// What the OS should look like, computed by the daemon core from the netmap and prefs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterConfig {
    /// The node's own addresses, put on the TUN device as given (`/32` and `/128`).
    pub addresses: Vec<IpPrefix>,
    /// Prefixes routed into the TUN device through table 52.
    pub routes: Vec<IpPrefix>,
    /// Prefixes kept out of the tunnel: `throw` routes in table 52, so lookups for them go on
    /// to the main table. For the LANs a router serves while an exit node's default route is
    /// in table 52. A prefix given here and in `routes` is thrown, not routed.
    pub local_routes: Vec<IpPrefix>,
}

/// Why a change to the OS failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TUN device was not found (in this network namespace) or its name is invalid.
    #[error("looking up interface {name:?}: {source}")]
    Interface {
        /// The name asked for.
        name: String,
        /// Why the lookup failed (ENODEV: no such device).
        source: io::Error,
    },
    /// The kernel refused an operation, or the netlink socket failed.
    #[error("{op}: {source}{}", kernel_text(.kernel))]
    Os {
        /// The operation, e.g. `add route 10.0.0.0/24 dev tailscale0 table 52`.
        op: String,
        /// The errno (or socket error).
        source: io::Error,
        /// The kernel's own explanation (extended ack), when it gave one.
        kernel: Option<String>,
    },
    /// The kernel's reply could not be read.
    #[error("{op}: unreadable netlink reply ({what})")]
    Reply {
        /// The operation.
        op: String,
        /// What was wrong with the reply.
        what: &'static str,
    },
    /// A firewall command (`iptables`, `ip6tables`) could not be run: not installed, or it
    /// hung (10 s).
    #[error("running {command}: {source}")]
    Command {
        /// The command line.
        command: String,
        /// Why it could not run (NotFound: no such binary).
        source: io::Error,
    },
    /// A firewall command ran and failed.
    #[error("{command}: exit status {status}: {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// Something was asked that this build leaves out (its feature tag is off).
    #[error("{what}: this build has no {tag} feature tag")]
    NotBuilt {
        /// What was asked, e.g. `netfilter back-end iptables`.
        what: &'static str,
        /// The feature tag that brings it.
        tag: &'static str,
    },
    /// A kernel setting (`/proc/sys`) could not be written.
    #[error("setting {key}=1: {source}. {hint}")]
    Sysctl {
        /// The setting, e.g. `net.ipv4.ip_forward`.
        key: String,
        /// Why it could not be written (EROFS: a read-only `/proc/sys`).
        source: io::Error,
        /// What to do instead.
        hint: String,
    },
}

fn kernel_text(k: &Option<String>) -> String {
    k.as_ref().map(|k| format!(" ({k})")).unwrap_or_default()
}

fn error(op: String, e: NlError) -> Error {
    match e {
        NlError::Kernel { errno, msg } => Error::Os {
            op,
            source: io::Error::from_raw_os_error(errno),
            kernel: msg,
        },
        NlError::Io(source) => Error::Os {
            op,
            source,
            kernel: None,
        },
        NlError::Malformed(what) => Error::Reply { op, what },
    }
}

/// Keeps the first error of a batch and logs the others.
#[derive(Default)]
struct First(Option<Error>);

impl First {
    fn keep(&mut self, r: Result<(), Error>) {
        match (r, &self.0) {
            (Ok(()), _) => {}
            (Err(e), None) => self.0 = Some(e),
            (Err(e), Some(_)) => warn!("osrouter: {e}"),
        }
    }

    fn result(self) -> Result<(), Error> {
        self.0.map_or(Ok(()), Err)
    }
}

fn describe(r: &Rule) -> String {
    let mark = r.mark.map(|(m, k)| format!("fwmark {m:#x}/{k:#x} "));
    let action = match r.action {
        Action::Lookup(MAIN) => "lookup main".to_owned(),
        Action::Lookup(DEFAULT) => "lookup default".to_owned(),
        Action::Lookup(t) => format!("lookup {t}"),
        Action::Unreachable => "unreachable".to_owned(),
    };
    format!("{}: {}{action}", r.pref, mark.unwrap_or_default())
}

fn family(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

fn verb(add: bool) -> &'static str {
    if add { "add" } else { "remove" }
}

/// Addresses, routes and policy rules for one TUN device, applied as differences from what
/// this router set before, and all removed again by [`Router::close`] (or, best effort, on
/// drop). Blocking: each change waits for the kernel's acknowledgement (at most 5 s).
///
/// Every change happens in the network namespace of the thread that called [`Router::new`].
#[derive(Debug)]
pub struct Router {
    ifname: String,
    ifindex: u32,
    nl: netlink::Socket,
    addrs: BTreeSet<IpPrefix>,
    routes: BTreeSet<IpPrefix>,
    throws: BTreeSet<IpPrefix>,
    /// Whether the rules of [IPv4, IPv6] may be installed (so are removed on close).
    rules: [bool; 2],
    v6_off: bool,
    /// The firewall rules, and their settings once [`Router::set_netfilter`] gave them.
    netfilter: Netfilter,
    nf_cfg: Option<NetfilterConfig>,
}

impl Router {
    /// A router for the existing device `ifname`; changes nothing yet.
    pub fn new(ifname: &str) -> Result<Router, Error> {
        let ifindex = netlink::ifindex(ifname).map_err(|source| Error::Interface {
            name: ifname.to_owned(),
            source,
        })?;
        let nl = netlink::Socket::open().map_err(|source| Error::Os {
            op: "opening a NETLINK_ROUTE socket".to_owned(),
            source,
            kernel: None,
        })?;
        Ok(Router {
            ifname: ifname.to_owned(),
            ifindex,
            nl,
            addrs: BTreeSet::new(),
            routes: BTreeSet::new(),
            throws: BTreeSet::new(),
            rules: [false; 2],
            v6_off: false,
            netfilter: Netfilter::new(ifname),
            nf_cfg: None,
        })
    }

    /// The device's interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Whether IPv6 changes are being skipped because IPv6 is off here.
    pub fn ipv6_disabled(&self) -> bool {
        self.v6_off
    }

    /// The firewall back-end in use: `None` until [`Router::set_netfilter`] needed one.
    pub fn netfilter_backend(&self) -> Option<ActiveBackend> {
        self.netfilter.active()
    }

    /// Sets the firewall settings and applies them at once (with the addresses set so far;
    /// every later [`Router::set`] keeps the rules in step with the addresses). Until this is
    /// called the router touches no firewall rules at all. Calling it again with other
    /// settings converges: the firewall then holds exactly the new rules.
    ///
    /// The first call replaces whatever a run that did not close (a crash) left in our table
    /// or chains. With `NetfilterBackend::Auto` and no usable back-end this logs a warning and
    /// succeeds, installing nothing ([`Router::netfilter_backend`] says `ActiveBackend::None`).
    pub fn set_netfilter(&mut self, cfg: &NetfilterConfig) -> Result<(), Error> {
        self.nf_cfg = Some(*cfg);
        let addrs = self.own_addrs();
        self.netfilter.set(cfg, &addrs)
    }

    fn own_addrs(&self) -> Vec<std::net::IpAddr> {
        self.addrs.iter().map(|p| p.addr()).collect()
    }

    /// Makes the OS match `cfg`: installs the policy rules the first time, adds what is new,
    /// then removes what is gone (adding first, as Go does, so the device never passes through
    /// an empty state). Every change is attempted; the first failure is returned and the others
    /// are logged. Changes already made, including ones that race with others (EEXIST on add,
    /// ENOENT or ESRCH on delete), count as done. Once [`Router::set_netfilter`] was called,
    /// the firewall's loopback rules follow the addresses (rewritten only when they change).
    pub fn set(&mut self, cfg: &RouterConfig) -> Result<(), Error> {
        let mut errs = First::default();
        for v6 in [false, true] {
            if !self.rules[usize::from(v6)] {
                errs.keep(self.add_rules(v6));
            }
        }
        let addrs: BTreeSet<IpPrefix> = cfg.addresses.iter().copied().collect();
        let throws: BTreeSet<IpPrefix> = cfg
            .local_routes
            .iter()
            .map(|p| netlink::masked(*p))
            .collect();
        let routes: BTreeSet<IpPrefix> = cfg
            .routes
            .iter()
            .map(|p| netlink::masked(*p))
            .filter(|p| !throws.contains(p))
            .collect();
        // New addresses, new routes and throws, old throws and routes, old addresses. A
        // prefix that turns from route to throw (or back) is replaced by the addition, so it
        // is not deleted after it.
        let plan: Vec<(Kind, bool, IpPrefix)> = (addrs.difference(&self.addrs))
            .map(|p| (Kind::Addr, true, *p))
            .chain(
                routes
                    .difference(&self.routes)
                    .map(|p| (Kind::Route, true, *p)),
            )
            .chain(
                throws
                    .difference(&self.throws)
                    .map(|p| (Kind::Throw, true, *p)),
            )
            .chain(
                (self.throws.difference(&throws))
                    .filter(|p| !routes.contains(p))
                    .map(|p| (Kind::Throw, false, *p)),
            )
            .chain(
                (self.routes.difference(&routes))
                    .filter(|p| !throws.contains(p))
                    .map(|p| (Kind::Route, false, *p)),
            )
            .chain(
                self.addrs
                    .difference(&addrs)
                    .map(|p| (Kind::Addr, false, *p)),
            )
            .collect();
        for (kind, add, p) in plan {
            errs.keep(self.change(kind, add, p));
        }
        // Replaced ones: recorded under their new kind only.
        self.routes.retain(|p| !throws.contains(p));
        self.throws.retain(|p| !routes.contains(p));
        if let Some(nf) = self.nf_cfg {
            let addrs = self.own_addrs();
            errs.keep(self.netfilter.set(&nf, &addrs));
        }
        errs.result()
    }

    /// Removes everything this router added: the policy rules first (so nothing is steered
    /// into a half-emptied table 52), then the firewall rules, the routes and the addresses.
    pub fn close(mut self) -> Result<(), Error> {
        self.down()
    }

    /// [`Router::close`] without giving the router up (`tailscale down`): the host is as it
    /// was before, and the next [`Router::set_netfilter`] and [`Router::set`] start afresh.
    pub fn down(&mut self) -> Result<(), Error> {
        let r = self.teardown();
        // Whatever could not be removed was reported; nothing retries it (not the drop either).
        self.rules = [false; 2];
        self.routes.clear();
        self.throws.clear();
        self.addrs.clear();
        self.nf_cfg = None;
        r
    }

    fn teardown(&mut self) -> Result<(), Error> {
        let mut errs = First::default();
        for v6 in [false, true] {
            if !self.rules[usize::from(v6)] {
                continue;
            }
            let mut all = true;
            for r in &RULES {
                let op = format!("remove {} rule {}", family(v6), describe(r));
                let res = self.apply(false, v6, netlink::rule_msg(false, v6, r), op);
                all &= res.is_ok();
                errs.keep(res.map(drop));
            }
            self.rules[usize::from(v6)] = !all;
        }
        errs.keep(self.netfilter.remove_installed());
        for p in self.throws.clone() {
            errs.keep(self.change(Kind::Throw, false, p));
        }
        for p in self.routes.clone() {
            errs.keep(self.change(Kind::Route, false, p));
        }
        for p in self.addrs.clone() {
            errs.keep(self.change(Kind::Addr, false, p));
        }
        errs.result()
    }

    /// Installs the four rules of one family. Rules already at our preferences (left by an
    /// earlier run, perhaps with other marks) are removed first, as Go does.
    fn add_rules(&mut self, v6: bool) -> Result<(), Error> {
        let fam = family(v6);
        for r in &RULES {
            let op = format!("remove stale {fam} rule {}", describe(r));
            self.apply(false, v6, netlink::rule_msg(false, v6, r), op)?;
        }
        self.rules[usize::from(v6)] = true;
        for r in &RULES {
            let op = format!("add {fam} rule {}", describe(r));
            if !self.apply(true, v6, netlink::rule_msg(true, v6, r), op)? {
                break; // no IPv6 here
            }
        }
        Ok(())
    }

    /// Adds or removes one address, route or throw route, and records the outcome.
    fn change(&mut self, kind: Kind, add: bool, p: IpPrefix) -> Result<(), Error> {
        let (what, msg) = match kind {
            Kind::Route => (
                format!("route {p} dev {} table {TABLE}", self.ifname),
                netlink::route_msg(add, self.ifindex, p, TABLE),
            ),
            Kind::Throw => (
                format!("route throw {p} table {TABLE}"),
                netlink::throw_msg(add, p, TABLE),
            ),
            Kind::Addr => (
                format!("address {p} on {}", self.ifname),
                netlink::addr_msg(add, self.ifindex, p),
            ),
        };
        let op = format!("{} {what}", verb(add));
        if self.apply(add, p.addr().is_ipv6(), msg, op)? {
            let set = match kind {
                Kind::Route => &mut self.routes,
                Kind::Throw => &mut self.throws,
                Kind::Addr => &mut self.addrs,
            };
            if add {
                set.insert(p);
            } else {
                set.remove(&p);
            }
        }
        Ok(())
    }

    /// Sends one change. `Ok(true)`: made, or already so; `Ok(false)`: an IPv6 addition
    /// skipped because IPv6 is off here (warned about once).
    fn apply(&mut self, add: bool, v6: bool, msg: Vec<u8>, op: String) -> Result<bool, Error> {
        if add && v6 && self.v6_off {
            return Ok(false);
        }
        match self.nl.request(msg) {
            Ok(()) => Ok(true),
            Err(NlError::Kernel { errno, .. }) if add && errno == EEXIST => Ok(true),
            Err(NlError::Kernel { errno, .. }) if !add && GONE.contains(&errno) => Ok(true),
            // Nothing of ours can be left where IPv6 is off.
            Err(NlError::Kernel { errno, .. }) if !add && v6 && NO_V6.contains(&errno) => Ok(true),
            Err(NlError::Kernel { errno, msg }) if v6 && NO_V6.contains(&errno) => {
                self.v6_off = true;
                let e = io::Error::from_raw_os_error(errno);
                let k = kernel_text(&msg);
                warn!("osrouter: IPv6 is unavailable here ({op}: {e}{k}); carrying on with IPv4");
                Ok(false)
            }
            Err(e) => Err(error(op, e)),
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            warn!("osrouter: cleaning up on drop: {e}");
        }
    }
}

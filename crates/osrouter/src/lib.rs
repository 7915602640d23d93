//! Operating-system configuration for a router node.
//!
//! Owns what the node changes in the host: addresses on the TUN device, routes to peers,
//! accepted subnet routes and the exit node's default route in a table of their own with policy
//! rules (so control and DERP traffic never loops into the tunnel), and SNAT and forwarding rules
//! through nftables, iptables or neither. Every change is undone on down and on exit.
//! It speaks netlink and firewall back-ends and knows nothing of Tailscale's protocols.
//!
//! Status (issue 6): [`Router`] sets addresses, routes and policy rules the way Go's Linux
//! router does, over a NETLINK_ROUTE socket spoken by hand (no netlink crate, no `ip` binary).
//! SNAT, forwarding and the netfilter back-ends are to come.
//!
//! What [`Router::set`] installs, for a TUN device `tailscale0`:
//!
//! * each self address as given (the netmap's `/32` and `/128`) on the device;
//! * each route (peers, accepted subnets, an exit node's `0.0.0.0/0` and `::/0`, quad-100)
//!   in table [`TABLE`] (52) through the device, host bits cleared;
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

mod netlink;

use netlink::{Action, NlError, Rule};

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

/// What the OS should look like, computed by the daemon core from the netmap and prefs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterConfig {
    /// The node's own addresses, put on the TUN device as given (`/32` and `/128`).
    pub addresses: Vec<IpPrefix>,
    /// Prefixes routed into the TUN device through table 52.
    pub routes: Vec<IpPrefix>,
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
    /// Whether the rules of [IPv4, IPv6] may be installed (so are removed on close).
    rules: [bool; 2],
    v6_off: bool,
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
            rules: [false; 2],
            v6_off: false,
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

    /// Makes the OS match `cfg`: installs the policy rules the first time, adds what is new,
    /// then removes what is gone (adding first, as Go does, so the device never passes through
    /// an empty state). Every change is attempted; the first failure is returned and the others
    /// are logged. Changes already made, including ones that race with others (EEXIST on add,
    /// ENOENT or ESRCH on delete), count as done.
    pub fn set(&mut self, cfg: &RouterConfig) -> Result<(), Error> {
        let mut errs = First::default();
        for v6 in [false, true] {
            if !self.rules[usize::from(v6)] {
                errs.keep(self.add_rules(v6));
            }
        }
        let addrs: BTreeSet<IpPrefix> = cfg.addresses.iter().copied().collect();
        let routes: BTreeSet<IpPrefix> = cfg.routes.iter().map(|p| netlink::masked(*p)).collect();
        // (is a route, add, prefix): new addresses, new routes, old routes, old addresses.
        let plan: Vec<(bool, bool, IpPrefix)> = (addrs.difference(&self.addrs))
            .map(|p| (false, true, *p))
            .chain(routes.difference(&self.routes).map(|p| (true, true, *p)))
            .chain(self.routes.difference(&routes).map(|p| (true, false, *p)))
            .chain(self.addrs.difference(&addrs).map(|p| (false, false, *p)))
            .collect();
        for (route, add, p) in plan {
            errs.keep(self.change(route, add, p));
        }
        errs.result()
    }

    /// Removes everything this router added: the rules first (so nothing is steered into a
    /// half-emptied table 52), then the routes, then the addresses.
    pub fn close(mut self) -> Result<(), Error> {
        let r = self.teardown();
        // Whatever could not be removed was reported; the drop that follows does not retry.
        self.rules = [false; 2];
        self.routes.clear();
        self.addrs.clear();
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
        for p in self.routes.clone() {
            errs.keep(self.change(true, false, p));
        }
        for p in self.addrs.clone() {
            errs.keep(self.change(false, false, p));
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

    /// Adds or removes one address (`route` false) or route, and records the outcome.
    fn change(&mut self, route: bool, add: bool, p: IpPrefix) -> Result<(), Error> {
        let (what, msg) = if route {
            let what = format!("route {p} dev {} table {TABLE}", self.ifname);
            (what, netlink::route_msg(add, self.ifindex, p, TABLE))
        } else {
            let what = format!("address {p} on {}", self.ifname);
            (what, netlink::addr_msg(add, self.ifindex, p))
        };
        let op = format!("{} {what}", verb(add));
        if self.apply(add, p.addr().is_ipv6(), msg, op)? {
            let set = if route {
                &mut self.routes
            } else {
                &mut self.addrs
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

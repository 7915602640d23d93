//! Which prefixes go where, from the netmap and the routing prefs: each peer's AllowedIPs,
//! the routes the host sends into the TUN device, the prefixes kept local while an exit node
//! is in use, and the destinations the packet filter treats as ours.
//!
//! Go's rules (`wgcfg/nmcfg`, `ipnlocal.routerConfig`), which peers expect of us:
//!
//! * A peer's own addresses are always routed to it.
//! * Its other prefixes are subnet routes, routed to it only with `--accept-routes`
//!   (`RouteAll`), and default routes (`0.0.0.0/0`, `::/0`), routed to it only when it is
//!   the chosen exit node (`--exit-node`), accepted routes or not.
//! * Control hands a subnet only to the peer that is its primary router, so a prefix is
//!   never in two peers' AllowedIPs; if a server did that anyway, the first peer (by node ID)
//!   keeps it, so the engine's lookup stays unambiguous.
//! * The host routes the tailnet's two ranges into the device, plus every accepted subnet and,
//!   with an exit node, the default routes. While an exit node is in use, the subnets this
//!   node advertises itself stay local (routed by the host's main table, not the tunnel),
//!   and with `--exit-node-allow-lan-access` so do the networks of the host's interfaces.
//! * The packet filter's local destinations are our addresses and the routes we advertise.
//!   An exit node's default routes count as "the internet" only: minus the networks of the
//!   host's interfaces (its own addresses stay reachable), the private, link-local,
//!   multicast and Tailscale ranges, like a guest Wi-Fi. A LAN is reached through an exit
//!   node only when it is advertised as a subnet route as well (Go's `shrinkDefaultRoute`).
//!
//! Each job is a feature tag, and a build without it has none of its code here: `useroutes`
//! (accepted subnets), `useexitnode` (choosing an exit node, routes kept local, LAN access),
//! `advertiseroutes` (our subnets as filter destinations) and `advertiseexitnode` (the
//! guest-Wi-Fi set). [`RoutePrefs::from_prefs`] drops the prefs of jobs the build lacks, and
//! [`unbuilt_pref`] names them so the LocalAPI and the CLI can refuse them.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use tailcfg::IpPrefix;
use tailcfg::key::NodePublic;

/// The prefs that decide routing, as the backend holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePrefs {
    /// `--accept-routes` (`RouteAll`).
    pub accept_routes: bool,
    /// `--exit-node` given as a stable ID or a name (`ExitNodeID`); empty: none by ID.
    pub exit_node_id: String,
    /// `--exit-node` given as an address (`ExitNodeIP`).
    pub exit_node_ip: Option<IpAddr>,
    /// `--exit-node-allow-lan-access`.
    pub exit_node_allow_lan_access: bool,
    /// `--advertise-routes` and `--advertise-exit-node` (`AdvertiseRoutes`).
    pub advertise_routes: Vec<IpPrefix>,
    /// `--snat-subnet-routes` (Go's `!NoSNAT`).
    pub snat_subnet_routes: bool,
    /// `--netfilter-mode`: 0 off, 1 nodivert, 2 on (Go's `NetfilterMode`).
    pub netfilter_mode: i64,
    /// `--netfilter-backend`: empty (automatic), `nftables` or `iptables` (`NetfilterKind`).
    pub netfilter_kind: String,
    /// `--stateful-filtering` (Go's `NoStatefulFiltering == false`).
    pub stateful_filtering: bool,
}

impl RoutePrefs {
    /// The routing part of the prefs, less what this build has no tag for (a state file
    /// written by a fuller build, or by Go, may ask for it; [`unbuilt_pref`] says what).
    pub fn from_prefs(p: &localapi::Prefs) -> Self {
        let use_exit = crate::tags::HAS_USEEXITNODE;
        RoutePrefs {
            accept_routes: crate::tags::HAS_USEROUTES && p.route_all,
            exit_node_id: if use_exit {
                p.exit_node_id.clone()
            } else {
                String::new()
            },
            exit_node_ip: p.exit_node_ip.filter(|_| use_exit),
            exit_node_allow_lan_access: use_exit && p.exit_node_allow_lan_access,
            advertise_routes: advertisable(&p.advertise_routes),
            snat_subnet_routes: !p.no_snat,
            netfilter_mode: p.netfilter_mode,
            netfilter_kind: p.netfilter_kind.clone(),
            // Go: unset means the current default, off.
            stateful_filtering: p.no_stateful_filtering == Some(false),
        }
    }

    /// Whether an exit node is asked for (never in a build without `useexitnode`).
    pub fn wants_exit_node(&self) -> bool {
        crate::tags::HAS_USEEXITNODE
            && (!self.exit_node_id.is_empty() || self.exit_node_ip.is_some())
    }

    /// Whether this node offers itself as an exit node (never without `advertiseexitnode`).
    pub fn advertises_exit_node(&self) -> bool {
        crate::tags::HAS_ADVERTISEEXITNODE && self.advertise_routes.iter().any(|r| r.bits() == 0)
    }
}

/// The tag a route to advertise needs: `advertiseexitnode` for a default route, else
/// `advertiseroutes`.
pub fn tag_for_advertised(r: &localapi::types::IpPrefix) -> &'static str {
    if r.bits == 0 {
        "advertiseexitnode"
    } else {
        "advertiseroutes"
    }
}

/// The routes of `routes` this build can advertise (its tags allow), as prefixes: what goes
/// to control and to the filter.
pub fn advertisable(routes: &[localapi::types::IpPrefix]) -> Vec<IpPrefix> {
    routes
        .iter()
        .filter(|r| crate::tags::has(tag_for_advertised(r)))
        .filter_map(|r| IpPrefix::new(r.addr, r.bits))
        .collect()
}

/// The first pref in `p` that needs a feature tag this build lacks: the pref's Go name and
/// the tag. `None` when this build can do all that `p` asks.
pub fn unbuilt_pref(p: &localapi::Prefs) -> Option<(&'static str, &'static str)> {
    use crate::tags;
    let needs = [
        (p.route_all, "RouteAll", "useroutes"),
        (!p.exit_node_id.is_empty(), "ExitNodeID", "useexitnode"),
        (p.exit_node_ip.is_some(), "ExitNodeIP", "useexitnode"),
        (
            p.exit_node_allow_lan_access,
            "ExitNodeAllowLANAccess",
            "useexitnode",
        ),
        (
            p.advertise_routes.iter().any(|r| r.bits != 0),
            "AdvertiseRoutes",
            "advertiseroutes",
        ),
        (
            p.advertise_routes.iter().any(|r| r.bits == 0),
            "AdvertiseRoutes",
            "advertiseexitnode",
        ),
        (p.netfilter_kind == "iptables", "NetfilterKind", "iptables"),
    ];
    needs
        .into_iter()
        .find(|(asked, _, tag)| *asked && !tags::has(tag))
        .map(|(_, pref, tag)| (pref, tag))
}

/// What [`plan`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Each peer's AllowedIPs.
    pub allowed_ips: HashMap<NodePublic, Vec<IpPrefix>>,
    /// Prefixes the host routes into the TUN device.
    pub routes: Vec<IpPrefix>,
    /// Prefixes kept out of the tunnel (routed by the host's own tables) while an exit node
    /// is in use.
    pub local_routes: Vec<IpPrefix>,
    /// Destinations the packet filter counts as this node's.
    pub local_nets: Vec<IpPrefix>,
    /// The exit node in use: its key and name.
    pub exit_node: Option<(NodePublic, String)>,
    /// Why the exit node asked for is not in use, when it is not.
    pub exit_problem: Option<String>,
}

/// Tailscale's IPv4 range (CGNAT) and IPv6 ULA range: routed to the TUN device as two routes,
/// whatever the peer count, so a netmap change never touches the host's routes for peers.
pub fn tailnet_ranges() -> Vec<IpPrefix> {
    [("100.64.0.0", 10), ("fd7a:115c:a1e0::", 48)]
        .into_iter()
        .filter_map(|(a, b)| IpPrefix::new(a.parse().ok()?, b))
        .collect()
}

fn in_tailnet(p: &IpPrefix) -> bool {
    p.is_single_ip() && tailnet_ranges().iter().any(|r| r.contains(p.addr()))
}

/// Whether `p` is the peer asked for as exit node: by stable ID, by address, or by name (the
/// full MagicDNS name, with or without its final dot, or its first label).
#[cfg(feature = "useexitnode")]
fn is_chosen(p: &tailcfg::Node, prefs: &RoutePrefs) -> bool {
    if let Some(ip) = prefs.exit_node_ip {
        return p.addresses.iter().any(|a| a.addr() == ip);
    }
    let want = prefs.exit_node_id.trim_end_matches('.');
    if want.is_empty() {
        return false;
    }
    let name = p.name.trim_end_matches('.');
    p.stable_id == want
        || name.eq_ignore_ascii_case(want)
        || name
            .split('.')
            .next()
            .is_some_and(|h| h.eq_ignore_ascii_case(want))
}

/// Ranges an exit node never forwards to unless they are advertised as subnets.
#[cfg(feature = "advertiseexitnode")]
const NOT_INTERNET: [(&str, u8); 9] = [
    ("192.168.0.0", 16),
    ("172.16.0.0", 12),
    ("10.0.0.0", 8),
    ("169.254.0.0", 16),
    ("224.0.0.0", 4),
    ("100.64.0.0", 10),
    ("fe80::", 10),
    ("ff00::", 8),
    ("fd7a:115c:a1e0::", 48),
];

/// `p` with its host bits cleared.
#[cfg(any(feature = "useexitnode", feature = "advertiseexitnode"))]
fn masked(p: IpPrefix) -> IpPrefix {
    let a = match p.addr() {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(p.bits())).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(p.bits()))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    };
    IpPrefix::new(a, p.bits()).unwrap_or(p)
}

/// The two halves of `p` (which must be shorter than a host route).
#[cfg(feature = "advertiseexitnode")]
fn halves(p: IpPrefix) -> Option<[IpPrefix; 2]> {
    let bits = p.bits() + 1;
    let low = IpPrefix::new(p.addr(), bits)?;
    let high = match p.addr() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) | (1u32 << (32 - u32::from(bits)))).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) | (1u128 << (128 - u32::from(bits)))).into()),
    };
    Some([low, IpPrefix::new(high, bits)?])
}

/// `set` minus `r`, as prefixes: each prefix that holds `r` is split into halves until `r`
/// falls out (at most one prefix per bit of length).
#[cfg(feature = "advertiseexitnode")]
fn subtract(set: Vec<IpPrefix>, r: IpPrefix) -> Vec<IpPrefix> {
    let r = masked(r);
    let mut out = Vec::with_capacity(set.len() + 8);
    let mut work = set;
    while let Some(p) = work.pop() {
        let same_family = p.addr().is_ipv4() == r.addr().is_ipv4();
        if !same_family || !(p.contains(r.addr()) || r.contains(p.addr())) {
            out.push(p);
        } else if r.bits() <= p.bits() && r.contains(p.addr()) {
            // Wholly removed.
        } else if let Some(h) = halves(p) {
            work.extend(h);
        }
    }
    out.sort();
    out
}

/// What an exit node's `route` (`0.0.0.0/0` or `::/0`) lets peers reach: the route minus the
/// host's interface networks (`host`, addresses with their prefix length) plus the host's own
/// addresses, minus [`NOT_INTERNET`].
#[cfg(feature = "advertiseexitnode")]
fn internet(route: IpPrefix, host: &[IpPrefix]) -> Vec<IpPrefix> {
    let v4 = route.addr().is_ipv4();
    let mut set = vec![route];
    let mine = host.iter().filter(|h| h.addr().is_ipv4() == v4);
    for h in mine.clone().filter(|h| !h.is_single_ip()) {
        set = subtract(set, *h);
    }
    for h in mine.filter(|h| !in_tailnet(h)) {
        if let Some(ip) = IpPrefix::new(h.addr(), if v4 { 32 } else { 128 }) {
            set.push(ip);
        }
    }
    for (a, b) in NOT_INTERNET {
        if let Some(r) = a.parse().ok().and_then(|a| IpPrefix::new(a, b)) {
            set = subtract(set, r);
        }
    }
    set.sort();
    set.dedup();
    set
}

/// Computes the plan. `host` is the host's interface addresses with their prefix lengths
/// (for `--exit-node-allow-lan-access` and an exit node's filter).
pub fn plan(nm: &control_client::NetworkMap, prefs: &RoutePrefs, host: &[IpPrefix]) -> RoutePlan {
    let mut out = RoutePlan::default();
    let mut taken: BTreeSet<IpPrefix> = BTreeSet::new();
    let mut routes: BTreeSet<IpPrefix> = tailnet_ranges().into_iter().collect();
    let wants_exit = prefs.wants_exit_node();
    let accept_subnets = crate::tags::HAS_USEROUTES && prefs.accept_routes;
    for p in nm.peers.values().filter(|p| !p.key.is_zero()) {
        let all = p.allowed_ips.as_ref().unwrap_or(&p.addresses);
        #[cfg(feature = "useexitnode")]
        let chosen = wants_exit && out.exit_node.is_none() && is_chosen(p, prefs);
        #[cfg(not(feature = "useexitnode"))]
        let chosen = false;
        #[cfg(feature = "useexitnode")]
        if chosen {
            let offers_exit = all.iter().any(|r| r.bits() == 0);
            if offers_exit && !p.expired {
                out.exit_node = Some((p.key, p.name.trim_end_matches('.').to_string()));
            } else {
                out.exit_problem = Some(format!(
                    "exit node {} does not offer to be one (or its routes are not approved)",
                    p.name.trim_end_matches('.')
                ));
            }
        }
        let use_exit = chosen && out.exit_node.is_some();
        let mut mine = Vec::with_capacity(all.len());
        for r in all {
            let keep = if p.addresses.contains(r) || in_tailnet(r) {
                true
            } else if r.bits() == 0 {
                use_exit
            } else {
                accept_subnets
            };
            if keep && (p.addresses.contains(r) || taken.insert(*r)) {
                mine.push(*r);
                if !in_tailnet(r) && !p.addresses.contains(r) {
                    routes.insert(*r);
                }
            }
        }
        out.allowed_ips.insert(p.key, mine);
    }
    #[cfg(feature = "useexitnode")]
    if wants_exit && out.exit_node.is_none() && out.exit_problem.is_none() {
        out.exit_problem = Some(match prefs.exit_node_ip {
            Some(ip) => format!("exit node {ip} is not a peer in the network map"),
            None => format!(
                "exit node {:?} is not a peer in the network map",
                prefs.exit_node_id
            ),
        });
    }
    #[cfg(not(feature = "useexitnode"))]
    let _ = wants_exit;
    #[cfg(feature = "useexitnode")]
    if out.exit_node.is_some() {
        let mut local: BTreeSet<IpPrefix> = prefs
            .advertise_routes
            .iter()
            .filter(|r| r.bits() != 0)
            .copied()
            .collect();
        if prefs.exit_node_allow_lan_access {
            local.extend(
                host.iter()
                    .filter(|r| r.bits() != 0 && !r.is_single_ip() && !in_tailnet(r))
                    .map(|r| masked(*r)),
            );
        }
        // A prefix kept local is not also routed into the tunnel.
        routes.retain(|r| !local.contains(r));
        out.local_routes = local.into_iter().collect();
    }
    out.routes = routes.into_iter().collect();
    #[cfg_attr(not(feature = "advertiseroutes"), allow(unused_mut))]
    let mut nets: BTreeSet<IpPrefix> = nm
        .self_node
        .iter()
        .flat_map(|n| n.addresses.iter().copied())
        .collect();
    #[cfg(feature = "advertiseroutes")]
    for r in &prefs.advertise_routes {
        if r.bits() != 0 {
            nets.insert(*r);
        } else {
            #[cfg(feature = "advertiseexitnode")]
            nets.extend(internet(*r, host));
        }
    }
    #[cfg(not(any(feature = "useexitnode", feature = "advertiseexitnode")))]
    let _ = host;
    out.local_nets = nets.into_iter().collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailcfg::key::NodePrivate;

    fn pfx(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }

    fn peer(id: i64, name: &str, addr: &str, extra: &[&str]) -> tailcfg::Node {
        let mut n = tailcfg::Node::default();
        n.id = id;
        n.stable_id = format!("n{id}CNTRL");
        n.name = format!("{name}.tail.example.");
        n.key = NodePrivate::generate().public();
        n.addresses = vec![pfx(addr)];
        let mut all = n.addresses.clone();
        all.extend(extra.iter().map(|s| pfx(s)));
        n.allowed_ips = Some(all);
        n
    }

    fn netmap(peers: Vec<tailcfg::Node>) -> control_client::NetworkMap {
        let mut nm = control_client::NetworkMap::new();
        let mut me = tailcfg::Node::default();
        me.addresses = vec![pfx("100.64.0.1/32")];
        nm.self_node = Some(me);
        for p in peers {
            nm.peers.insert(p.id, p);
        }
        nm
    }

    #[test]
    fn by_default_only_addresses_are_routed() {
        let a = peer(
            2,
            "gw",
            "100.64.0.2/32",
            &["192.168.1.0/24", "0.0.0.0/0", "::/0"],
        );
        let key = a.key;
        let p = plan(&netmap(vec![a]), &RoutePrefs::default(), &[]);
        assert_eq!(p.allowed_ips[&key], vec![pfx("100.64.0.2/32")]);
        assert_eq!(p.routes, tailnet_ranges());
        assert!(p.exit_node.is_none() && p.exit_problem.is_none());
        assert!(p.local_routes.is_empty());
        assert_eq!(p.local_nets, vec![pfx("100.64.0.1/32")]);
    }

    #[test]
    #[cfg(feature = "useroutes")]
    fn accept_routes_takes_subnets_but_not_default_routes() {
        let a = peer(
            2,
            "gw",
            "100.64.0.2/32",
            &["192.168.1.0/24", "fd00:1::/64", "0.0.0.0/0"],
        );
        let key = a.key;
        let prefs = RoutePrefs {
            accept_routes: true,
            ..RoutePrefs::default()
        };
        let p = plan(&netmap(vec![a]), &prefs, &[]);
        assert_eq!(
            p.allowed_ips[&key],
            vec![
                pfx("100.64.0.2/32"),
                pfx("192.168.1.0/24"),
                pfx("fd00:1::/64")
            ]
        );
        assert!(p.routes.contains(&pfx("192.168.1.0/24")));
        assert!(p.routes.contains(&pfx("fd00:1::/64")));
        assert!(!p.routes.contains(&pfx("0.0.0.0/0")));
    }

    #[test]
    #[cfg(feature = "useroutes")]
    fn a_subnet_offered_twice_goes_to_one_peer() {
        let a = peer(2, "a", "100.64.0.2/32", &["10.1.0.0/16"]);
        let b = peer(3, "b", "100.64.0.3/32", &["10.1.0.0/16"]);
        let (ka, kb) = (a.key, b.key);
        let prefs = RoutePrefs {
            accept_routes: true,
            ..RoutePrefs::default()
        };
        let p = plan(&netmap(vec![a, b]), &prefs, &[]);
        assert!(p.allowed_ips[&ka].contains(&pfx("10.1.0.0/16")));
        assert!(!p.allowed_ips[&kb].contains(&pfx("10.1.0.0/16")));
    }

    #[test]
    #[cfg(feature = "useexitnode")]
    fn exit_node_by_ip_name_or_id_gets_the_default_routes() {
        for want in [
            "100.64.0.3",
            "exit",
            "exit.tail.example.",
            "n3CNTRL",
            "EXIT",
        ] {
            let a = peer(2, "gw", "100.64.0.2/32", &["0.0.0.0/0", "::/0"]);
            let b = peer(3, "exit", "100.64.0.3/32", &["0.0.0.0/0", "::/0"]);
            let (ka, kb) = (a.key, b.key);
            let mut prefs = RoutePrefs {
                advertise_routes: vec![pfx("192.168.88.0/24")],
                ..RoutePrefs::default()
            };
            match want.parse::<IpAddr>() {
                Ok(ip) => prefs.exit_node_ip = Some(ip),
                Err(_) => prefs.exit_node_id = want.to_string(),
            }
            let p = plan(&netmap(vec![a, b]), &prefs, &[pfx("10.9.0.0/24")]);
            assert_eq!(
                p.exit_node,
                Some((kb, "exit.tail.example".to_string())),
                "{want}"
            );
            assert!(p.exit_problem.is_none());
            assert_eq!(p.allowed_ips[&ka], vec![pfx("100.64.0.2/32")]);
            assert!(p.allowed_ips[&kb].contains(&pfx("0.0.0.0/0")));
            assert!(p.allowed_ips[&kb].contains(&pfx("::/0")));
            assert!(p.routes.contains(&pfx("0.0.0.0/0")) && p.routes.contains(&pfx("::/0")));
            // Our own LAN stays local; the host's other networks only with LAN access.
            assert_eq!(p.local_routes, vec![pfx("192.168.88.0/24")]);
        }
    }

    #[test]
    #[cfg(feature = "useexitnode")]
    fn lan_access_keeps_the_hosts_networks_local() {
        let b = peer(3, "exit", "100.64.0.3/32", &["0.0.0.0/0", "::/0"]);
        let prefs = RoutePrefs {
            exit_node_id: "exit".into(),
            exit_node_allow_lan_access: true,
            ..RoutePrefs::default()
        };
        let host = [pfx("10.9.0.7/24"), pfx("100.64.0.1/32"), pfx("127.0.0.1/8")];
        let p = plan(&netmap(vec![b]), &prefs, &host);
        assert_eq!(p.local_routes, vec![pfx("10.9.0.0/24"), pfx("127.0.0.0/8")]);
    }

    #[test]
    #[cfg(feature = "advertiseexitnode")]
    fn subtraction_splits_prefixes() {
        assert_eq!(
            subtract(vec![pfx("10.0.0.0/8")], pfx("10.128.0.0/9")),
            vec![pfx("10.0.0.0/9")]
        );
        assert_eq!(
            subtract(vec![pfx("10.0.0.0/30")], pfx("10.0.0.1/32")),
            vec![pfx("10.0.0.0/32"), pfx("10.0.0.2/31")]
        );
        assert!(subtract(vec![pfx("10.0.0.0/24")], pfx("10.0.0.0/8")).is_empty());
        assert_eq!(
            subtract(vec![pfx("10.0.0.0/24")], pfx("fd00::/8")),
            vec![pfx("10.0.0.0/24")]
        );
        assert_eq!(
            subtract(vec![pfx("::/0")], pfx("::/1")),
            vec![pfx("8000::/1")]
        );
    }

    #[test]
    #[cfg(feature = "advertiseexitnode")]
    fn an_exit_node_is_a_guest_wifi() {
        let host = [
            pfx("198.51.100.2/30"),
            pfx("192.168.88.1/24"),
            pfx("100.64.0.1/32"),
        ];
        let inet = internet(pfx("0.0.0.0/0"), &host);
        let has = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            inet.iter().any(|p| p.contains(ip))
        };
        // The internet and the host's own public address, yes.
        for ip in [
            "8.8.8.8",
            "203.0.113.2",
            "198.51.100.2",
            "1.1.1.1",
            "223.255.255.255",
        ] {
            assert!(has(ip), "{ip} {inet:?}");
        }
        // The host's own networks, private and special ranges, no.
        for ip in [
            "198.51.100.1",
            "198.51.100.3",
            "192.168.88.20",
            "10.1.2.3",
            "172.16.5.5",
            "169.254.1.1",
            "224.0.0.251",
            "100.64.0.9",
        ] {
            assert!(!has(ip), "{ip} {inet:?}");
        }
        // A LAN advertised as a subnet as well is reachable.
        let prefs = RoutePrefs {
            advertise_routes: vec![pfx("0.0.0.0/0"), pfx("192.168.88.0/24")],
            ..RoutePrefs::default()
        };
        let p = plan(&netmap(vec![]), &prefs, &host);
        assert!(p.local_nets.contains(&pfx("192.168.88.0/24")));
        assert!(
            !p.local_nets
                .iter()
                .any(|n| n.contains("10.1.2.3".parse().unwrap()))
        );
        let six = internet(pfx("::/0"), &[]);
        assert!(
            six.iter()
                .any(|p| p.contains("2001:db8::1".parse().unwrap()))
        );
        assert!(!six.iter().any(|p| p.contains("fe80::1".parse().unwrap())));
    }

    #[test]
    #[cfg(feature = "useexitnode")]
    fn an_exit_node_that_does_not_offer_or_is_absent_is_reported() {
        let a = peer(2, "plain", "100.64.0.2/32", &[]);
        let key = a.key;
        let prefs = RoutePrefs {
            exit_node_id: "plain".into(),
            ..RoutePrefs::default()
        };
        let p = plan(&netmap(vec![a.clone()]), &prefs, &[]);
        assert!(p.exit_node.is_none());
        assert!(
            p.exit_problem
                .as_deref()
                .unwrap()
                .contains("does not offer")
        );
        assert_eq!(p.allowed_ips[&key], vec![pfx("100.64.0.2/32")]);
        assert!(!p.routes.contains(&pfx("0.0.0.0/0")));
        let prefs = RoutePrefs {
            exit_node_ip: Some("100.64.0.9".parse().unwrap()),
            ..RoutePrefs::default()
        };
        let p = plan(&netmap(vec![a]), &prefs, &[]);
        assert!(p.exit_problem.as_deref().unwrap().contains("not a peer"));
    }

    #[test]
    #[cfg(feature = "advertiseexitnode")]
    fn advertised_routes_are_local_to_the_filter() {
        let prefs = RoutePrefs {
            advertise_routes: vec![pfx("192.168.88.0/24"), pfx("0.0.0.0/0"), pfx("::/0")],
            ..RoutePrefs::default()
        };
        assert!(prefs.advertises_exit_node());
        let p = plan(&netmap(vec![]), &prefs, &[]);
        assert!(
            p.local_nets
                .iter()
                .any(|n| n.contains("8.8.8.8".parse().unwrap()))
        );
        assert!(p.local_nets.contains(&pfx("192.168.88.0/24")));
        assert!(p.local_nets.contains(&pfx("100.64.0.1/32")));
    }

    /// Every routing pref of a full build, for the tag tests.
    fn every_router_pref() -> localapi::Prefs {
        localapi::Prefs {
            route_all: true,
            exit_node_id: "gw".into(),
            exit_node_allow_lan_access: true,
            advertise_routes: vec![
                "192.168.88.0/24".parse().unwrap(),
                "0.0.0.0/0".parse().unwrap(),
            ],
            netfilter_kind: "iptables".into(),
            ..localapi::Prefs::default()
        }
    }

    #[test]
    fn prefs_of_missing_tags_are_named_and_dropped() {
        let p = every_router_pref();
        let r = RoutePrefs::from_prefs(&p);
        let has = crate::tags::has;
        assert_eq!(r.accept_routes, has("useroutes"));
        assert_eq!(r.wants_exit_node(), has("useexitnode"));
        assert_eq!(r.exit_node_allow_lan_access, has("useexitnode"));
        assert_eq!(
            r.advertise_routes.contains(&pfx("192.168.88.0/24")),
            has("advertiseroutes")
        );
        assert_eq!(r.advertises_exit_node(), has("advertiseexitnode"));
        let full = [
            "useroutes",
            "useexitnode",
            "advertiseroutes",
            "advertiseexitnode",
            "iptables",
        ]
        .iter()
        .all(|t| has(t));
        assert_eq!(unbuilt_pref(&p).is_none(), full, "{:?}", unbuilt_pref(&p));
        if let Some((_, tag)) = unbuilt_pref(&p) {
            assert!(!has(tag));
        }
        assert_eq!(unbuilt_pref(&localapi::Prefs::default()), None);
    }

    /// Without `useroutes` and `useexitnode` a peer gets only its own addresses whatever
    /// the prefs say; without `advertiseroutes` our subnets are not filter destinations.
    #[test]
    #[cfg(not(any(feature = "useroutes", feature = "advertiseroutes")))]
    fn without_the_router_tags_routing_is_addresses_only() {
        let a = peer(2, "gw", "100.64.0.2/32", &["192.168.1.0/24", "0.0.0.0/0"]);
        let key = a.key;
        let prefs = RoutePrefs {
            accept_routes: true,
            exit_node_id: "gw".into(),
            advertise_routes: vec![pfx("10.1.0.0/16")],
            ..RoutePrefs::default()
        };
        let p = plan(&netmap(vec![a]), &prefs, &[pfx("10.9.0.7/24")]);
        assert_eq!(p.allowed_ips[&key], vec![pfx("100.64.0.2/32")]);
        assert_eq!(p.routes, tailnet_ranges());
        assert!(p.exit_node.is_none() && p.exit_problem.is_none());
        assert_eq!(p.local_nets, vec![pfx("100.64.0.1/32")]);
    }

    #[test]
    fn prefs_follow_go_defaults() {
        let r = RoutePrefs::from_prefs(&localapi::Prefs::default());
        assert!(r.snat_subnet_routes);
        assert!(!r.stateful_filtering);
        assert_eq!(r.netfilter_mode, 2);
        assert!(!r.accept_routes && !r.wants_exit_node());
    }
}

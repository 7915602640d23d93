//! The firewall side of the router: forwarding marks, SNAT and input filtering, installed by
//! one of three back-ends and removed again on close.
//!
//! What is installed is computed once, as data ([`Ruleset`]), from the TUN device's name, the
//! node's own addresses and a [`NetfilterConfig`]; the back-ends only render it: `nftables.rs`
//! into nf_tables netlink messages (a table of our own, replaced in one transaction),
//! `iptables.rs` into `iptables`/`ip6tables` commands (chains of our own, and jumps to them).
//! The rules are Go's (`util/linuxfw`), chain for chain; docs/osrouter.md lists them.
//!
//! [`Netfilter`] picks the back-end (`auto`: nftables if the kernel takes it, else iptables if a
//! binary is there, else none with a warning), applies a changed ruleset as a whole (so a
//! second `set` with another config converges, and one after a crash replaces the leftovers)
//! and removes everything on [`Netfilter::close`].

#[cfg(feature = "iptables")]
use crate::iptables;
use crate::{Error, nftables};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use tailcfg::IpPrefix;
use tracing::{info, warn};

/// The mark set on packets that arrive from the TUN device and are forwarded, so that
/// POSTROUTING (which cannot see the input interface) knows which ones to masquerade. Go's
/// `subnetRouteMark`; it lives in [`crate::FWMARK_MASK`]'s byte, beside [`crate::BYPASS_MARK`].
pub const SUBNET_ROUTE_MARK: u32 = 0x40000;

/// Tailscale's IPv4 range, 100.64.0.0/10 (RFC 6598 shared address space).
const CGNAT: ([u8; 4], u8) = ([100, 64, 0, 0], 10);
/// The part of 100.64.0.0/10 ChromeOS uses for its VMs; Go lets it in on other interfaces.
const CHROMEOS_VM: ([u8; 4], u8) = ([100, 115, 92, 0], 23);

/// Whether tailrouter manages the firewall (Tailscale's `--netfilter-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NetfilterMode {
    /// Install the chains and hook them into INPUT, FORWARD and POSTROUTING (the default).
    #[default]
    On,
    /// Install the chains but hook nothing into them: the owner's own rules jump to them (with
    /// iptables; nftables cannot jump between tables, see docs/osrouter.md).
    NoDivert,
    /// Touch nothing: forwarding and SNAT are the router owner's job.
    Off,
}

impl NetfilterMode {
    /// The flag's spelling: `on`, `nodivert` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            NetfilterMode::On => "on",
            NetfilterMode::NoDivert => "nodivert",
            NetfilterMode::Off => "off",
        }
    }
}

impl fmt::Display for NetfilterMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NetfilterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(NetfilterMode::On),
            "nodivert" => Ok(NetfilterMode::NoDivert),
            "off" => Ok(NetfilterMode::Off),
            _ => Err(format!(
                "unknown netfilter mode {s:?} (want on, nodivert or off)"
            )),
        }
    }
}

/// Which firewall interface to use (our `--netfilter-backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NetfilterBackend {
    /// nftables if the kernel accepts it, else iptables if a binary is on PATH, else none (with
    /// a warning). The default.
    #[default]
    Auto,
    /// nf_tables over netlink, in tables of our own; needs no `nft` binary.
    Nftables,
    /// The `iptables` and `ip6tables` binaries (iptables-nft or legacy, whichever is on PATH).
    Iptables,
}

impl NetfilterBackend {
    /// The flag's spelling: `auto`, `nftables` or `iptables`.
    pub fn as_str(self) -> &'static str {
        match self {
            NetfilterBackend::Auto => "auto",
            NetfilterBackend::Nftables => "nftables",
            NetfilterBackend::Iptables => "iptables",
        }
    }
}

impl fmt::Display for NetfilterBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NetfilterBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(NetfilterBackend::Auto),
            "nftables" => Ok(NetfilterBackend::Nftables),
            "iptables" => Ok(NetfilterBackend::Iptables),
            _ => Err(format!(
                "unknown netfilter back-end {s:?} (want auto, nftables or iptables)"
            )),
        }
    }
}

/// The firewall settings, from the daemon's flags and prefs. The TUN device's name and the
/// node's addresses come from the [`crate::Router`] (or are passed to [`Netfilter::set`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetfilterConfig {
    /// `--netfilter-mode` (default `on`).
    pub mode: NetfilterMode,
    /// `--netfilter-backend` (default `auto`).
    pub backend: NetfilterBackend,
    /// `--snat-subnet-routes` (default true, Go's `!Prefs.NoSNAT`): masquerade what is
    /// forwarded from the tailnet, so LAN hosts (and the internet, for an exit node) see the
    /// router's address and answer through it.
    pub snat_subnet_routes: bool,
    /// `--stateful-filtering` (default false, as in current Tailscale): drop new connections
    /// forwarded *into* the tailnet (out the TUN device) unless conntrack calls them
    /// established or related. Breaks LAN hosts that reach the tailnet through this router.
    pub stateful_filtering: bool,
    /// The magicsock UDP port, accepted in the input chain; 0 for none.
    pub magicsock_port: u16,
    /// Whether to install IPv6 rules as well (skipped with a warning where the kernel or the
    /// tools lack IPv6 filtering or NAT).
    pub ipv6: bool,
}

impl Default for NetfilterConfig {
    fn default() -> Self {
        NetfilterConfig {
            mode: NetfilterMode::On,
            backend: NetfilterBackend::Auto,
            snat_subnet_routes: true,
            stateful_filtering: false,
            magicsock_port: 0,
            ipv6: true,
        }
    }
}

/// The back-end that installed the rules, once one is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ActiveBackend {
    /// nf_tables over netlink: tables `ip tailrouter` and `ip6 tailrouter`.
    Nftables,
    /// The iptables binaries, of this flavour.
    Iptables(IptablesFlavor),
    /// Nothing is installed (mode off, or `auto` found no working back-end).
    None,
}

/// Which iptables is on PATH (from `iptables --version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IptablesFlavor {
    /// iptables-nft: the iptables command line over nf_tables (tables `ip filter`, `ip nat`).
    Nft,
    /// iptables-legacy: the x_tables kernel interface.
    Legacy,
    /// An old iptables that does not say (before 1.8).
    Unknown,
}

impl fmt::Display for ActiveBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActiveBackend::Nftables => f.write_str("nftables"),
            ActiveBackend::Iptables(IptablesFlavor::Nft) => f.write_str("iptables (nf_tables)"),
            ActiveBackend::Iptables(IptablesFlavor::Legacy) => f.write_str("iptables (legacy)"),
            ActiveBackend::Iptables(IptablesFlavor::Unknown) => f.write_str("iptables"),
            ActiveBackend::None => f.write_str("none"),
        }
    }
}

// ---------------------------------------------------------------- the rules, as data

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    V4,
    V6,
}

/// Which built-in hook (iptables: built-in chain) a chain of ours serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Hook {
    Input,
    Forward,
    Postrouting,
}

impl Hook {
    /// Our chain's name: Go's, in both back-ends.
    pub(crate) fn chain(self) -> &'static str {
        match self {
            Hook::Input => "ts-input",
            Hook::Forward => "ts-forward",
            Hook::Postrouting => "ts-postrouting",
        }
    }

    /// The iptables built-in chain that jumps to ours.
    #[cfg(feature = "iptables")]
    pub(crate) fn builtin(self) -> &'static str {
        match self {
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Postrouting => "POSTROUTING",
        }
    }

    /// The iptables table (and nftables chain type) of the chain.
    pub(crate) fn is_nat(self) -> bool {
        self == Hook::Postrouting
    }
}

/// One condition of a rule (all must hold).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Match {
    /// Arrived on this interface (exact name).
    InIface(String),
    /// Arrived on any other interface.
    NotInIface(String),
    /// Leaves through this interface.
    OutIface(String),
    /// The source address is in this prefix (host bits clear).
    Src(IpPrefix),
    /// `mark & mask == value`.
    Mark { value: u32, mask: u32 },
    /// UDP to this port.
    UdpDport(u16),
    /// conntrack state is neither established nor related.
    NotEstablishedOrRelated,
}

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Action {
    Accept,
    Drop,
    /// Leave our chain (and go on with the rest of the hook's rules).
    Return,
    /// `mark = (mark & !mask) | value`, then go on with the next rule.
    SetMark {
        value: u32,
        mask: u32,
    },
    Masquerade,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Rule {
    pub(crate) matches: Vec<Match>,
    pub(crate) action: Action,
}

fn rule(matches: Vec<Match>, action: Action) -> Rule {
    Rule { matches, action }
}

/// One chain of ours with its rules, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Chain {
    pub(crate) hook: Hook,
    pub(crate) rules: Vec<Rule>,
}

/// Everything one back-end installs for one family.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FamilyRules {
    pub(crate) family: Family,
    /// Whether the chains are hooked (mode on) or only created (nodivert).
    pub(crate) divert: bool,
    /// ts-input, ts-forward and, where NAT is available, ts-postrouting.
    pub(crate) chains: Vec<Chain>,
}

impl FamilyRules {
    /// The same without the NAT chain (for kernels or tools without IPv6 NAT).
    pub(crate) fn without_nat(&self) -> FamilyRules {
        let chains = self.chains.iter().filter(|c| !c.hook.is_nat()).cloned();
        FamilyRules {
            chains: chains.collect(),
            ..self.clone()
        }
    }

    pub(crate) fn has_nat(&self) -> bool {
        self.chains.iter().any(|c| c.hook.is_nat())
    }
}

fn prefix(a: [u8; 4], bits: u8) -> Option<IpPrefix> {
    IpPrefix::new(IpAddr::from(a), bits)
}

/// Go's rules for one family (`util/linuxfw` and `wgengine/router`, in the order a steady-state
/// Go router has them):
///
/// ```text
/// ts-input:       iif lo, saddr <each own address> accept
///                 iif <tun> accept
///                 udp dport <magicsock port> accept               (port set)
///                 iif != <tun>, saddr 100.115.92.0/23 return      (IPv4)
///                 iif != <tun>, saddr 100.64.0.0/10 drop          (IPv4)
/// ts-forward:     iif <tun>: mark |= 0x40000 (in 0xff0000)
///                 mark & 0xff0000 == 0x40000 accept
///                 oif <tun>, saddr 100.64.0.0/10 drop             (IPv4)
///                 oif <tun>, ct state not established/related drop (stateful filtering)
///                 oif <tun> accept
/// ts-postrouting: mark & 0xff0000 == 0x40000 masquerade           (SNAT on)
/// ```
pub(crate) fn family_rules(
    family: Family,
    tun: &str,
    cfg: &NetfilterConfig,
    addrs: &[IpAddr],
) -> FamilyRules {
    let v4 = family == Family::V4;
    let tun = tun.to_owned();
    let mark = Match::Mark {
        value: SUBNET_ROUTE_MARK,
        mask: crate::FWMARK_MASK,
    };
    let mut input = Vec::new();
    let mut own: Vec<IpAddr> = (addrs.iter().copied())
        .filter(|a| a.is_ipv4() == v4)
        .collect();
    own.sort();
    own.dedup();
    for a in own {
        let bits = if v4 { 32 } else { 128 };
        if let Some(p) = IpPrefix::new(a, bits) {
            let m = vec![Match::InIface("lo".to_owned()), Match::Src(p)];
            input.push(rule(m, Action::Accept));
        }
    }
    input.push(rule(vec![Match::InIface(tun.clone())], Action::Accept));
    if cfg.magicsock_port != 0 {
        input.push(rule(
            vec![Match::UdpDport(cfg.magicsock_port)],
            Action::Accept,
        ));
    }
    let cgnat = prefix(CGNAT.0, CGNAT.1);
    if let (true, Some(chromeos), Some(cgnat)) = (v4, prefix(CHROMEOS_VM.0, CHROMEOS_VM.1), cgnat) {
        let not_tun = Match::NotInIface(tun.clone());
        let m = vec![not_tun.clone(), Match::Src(chromeos)];
        input.push(rule(m, Action::Return));
        input.push(rule(vec![not_tun, Match::Src(cgnat)], Action::Drop));
    }

    let mut forward = vec![
        rule(
            vec![Match::InIface(tun.clone())],
            Action::SetMark {
                value: SUBNET_ROUTE_MARK,
                mask: crate::FWMARK_MASK,
            },
        ),
        rule(vec![mark.clone()], Action::Accept),
    ];
    if let (true, Some(cgnat)) = (v4, cgnat) {
        let m = vec![Match::OutIface(tun.clone()), Match::Src(cgnat)];
        forward.push(rule(m, Action::Drop));
    }
    if cfg.stateful_filtering {
        let m = vec![Match::OutIface(tun.clone()), Match::NotEstablishedOrRelated];
        forward.push(rule(m, Action::Drop));
    }
    forward.push(rule(vec![Match::OutIface(tun)], Action::Accept));

    let mut post = Vec::new();
    if cfg.snat_subnet_routes {
        post.push(rule(vec![mark], Action::Masquerade));
    }
    FamilyRules {
        family,
        divert: cfg.mode == NetfilterMode::On,
        chains: vec![
            Chain {
                hook: Hook::Input,
                rules: input,
            },
            Chain {
                hook: Hook::Forward,
                rules: forward,
            },
            Chain {
                hook: Hook::Postrouting,
                rules: post,
            },
        ],
    }
}

// ---------------------------------------------------------------- back-ends

/// A back-end error, before [`Netfilter`] decides what it means.
#[derive(Debug)]
pub(crate) enum BackendError {
    /// The family (or the part asked for, e.g. NAT) is not available here: IPv6 degrades.
    Unsupported(Error),
    /// Anything else.
    Failed(Error),
}

impl BackendError {
    pub(crate) fn into_error(self) -> Error {
        match self {
            BackendError::Unsupported(e) | BackendError::Failed(e) => e,
        }
    }
}

/// What each back-end does: replace everything of ours in one family with exactly `rules`, and
/// remove everything of ours in one family (also what an earlier run left; nothing there is
/// not an error).
pub(crate) trait Backend {
    fn replace(&mut self, rules: &FamilyRules) -> Result<(), BackendError>;
    fn remove(&mut self, family: Family) -> Result<(), BackendError>;
    fn kind(&self) -> ActiveBackend;
}

enum Engine {
    /// No back-end chosen yet (nothing was ever asked of us, or mode is off).
    Unchosen,
    Nft(nftables::Nft),
    #[cfg(feature = "iptables")]
    Ipt(iptables::Iptables),
    /// `auto` found no back-end: nothing is installed.
    Nothing,
}

impl Engine {
    fn backend(&mut self) -> Option<&mut dyn Backend> {
        match self {
            Engine::Nft(n) => Some(n),
            #[cfg(feature = "iptables")]
            Engine::Ipt(i) => Some(i),
            Engine::Unchosen | Engine::Nothing => None,
        }
    }
}

/// The firewall rules for one TUN device: applied by [`Netfilter::set`], removed by
/// [`Netfilter::close`] (or, best effort, on drop). Blocking: nftables changes wait for the
/// kernel (5 s at most), iptables ones for each command (10 s at most).
///
/// Changes happen in the network namespace of the thread that calls `set`.
pub struct Netfilter {
    tun: String,
    engine: Engine,
    /// The back-end setting the engine was chosen for.
    chosen_for: Option<NetfilterBackend>,
    /// What is installed, per family ([IPv4, IPv6]); `None`: nothing of ours.
    installed: [Option<FamilyRules>; 2],
    /// Whether IPv6 rules cannot be installed here (found out once, warned about once).
    v6_unavailable: bool,
    /// Whether IPv6 NAT cannot be installed here.
    v6_no_nat: bool,
    /// Whether the "mode off" notice was logged.
    off_logged: bool,
}

impl fmt::Debug for Netfilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netfilter")
            .field("tun", &self.tun)
            .field("backend", &self.active())
            .field("installed", &self.installed)
            .finish()
    }
}

fn slot(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

const OFF_NOTICE: &str = "netfilter mode off: tailrouter installs no firewall rules. \
     Forwarding to and from the tailnet and SNAT (masquerade) of subnet-route and exit-node \
     traffic are the router owner's job, e.g. on RouterOS: /ip firewall nat add chain=srcnat \
     src-address=100.64.0.0/10 action=masquerade (see docs/osrouter.md)";

impl Netfilter {
    /// Rules for the TUN device `tun`; changes nothing yet.
    pub fn new(tun: &str) -> Netfilter {
        Netfilter {
            tun: tun.to_owned(),
            engine: Engine::Unchosen,
            chosen_for: None,
            installed: [None, None],
            v6_unavailable: false,
            v6_no_nat: false,
            off_logged: false,
        }
    }

    /// The back-end in use: `None` before the first `set` that needed one.
    pub fn active(&self) -> Option<ActiveBackend> {
        match &self.engine {
            Engine::Unchosen => None,
            Engine::Nft(n) => Some(n.kind()),
            #[cfg(feature = "iptables")]
            Engine::Ipt(i) => Some(i.kind()),
            Engine::Nothing => Some(ActiveBackend::None),
        }
    }

    /// Whether IPv6 rules are being skipped because this host cannot take them.
    pub fn ipv6_unavailable(&self) -> bool {
        self.v6_unavailable
    }

    /// Makes the firewall match `cfg` for a node with addresses `addrs` (their loopback accept
    /// rules follow them). Only what changed is rewritten, per family, as a whole: our table
    /// (nftables) or our chains (iptables) are replaced, whatever an earlier run left in them.
    /// Mode off removes what this value installed and touches nothing else.
    pub fn set(&mut self, cfg: &NetfilterConfig, addrs: &[IpAddr]) -> Result<(), Error> {
        if cfg.mode == NetfilterMode::Off {
            if !self.off_logged {
                info!("osrouter: {OFF_NOTICE}");
                self.off_logged = true;
            }
            return self.remove_installed();
        }
        self.off_logged = false;
        if self.tun.is_empty() || self.tun.len() >= libc::IFNAMSIZ {
            return Err(Error::Interface {
                name: self.tun.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "an interface name has 1 to 15 bytes",
                ),
            });
        }
        if self.chosen_for.is_some_and(|b| b != cfg.backend) {
            // Another back-end was asked for: take ours out of the old one first.
            self.remove_installed()?;
            self.engine = Engine::Unchosen;
            self.chosen_for = None;
        }
        let v4 = family_rules(Family::V4, &self.tun, cfg, addrs);
        let fresh = matches!(self.engine, Engine::Unchosen);
        if fresh {
            // The first rules of a run replace whatever a crashed run left.
            self.v6_unavailable = false;
            self.v6_no_nat = false;
            self.chosen_for = Some(cfg.backend);
            self.choose(cfg.backend, &v4)?;
        } else {
            self.apply(&v4)?;
        }
        if cfg.ipv6 && !self.v6_unavailable {
            let v6 = family_rules(Family::V6, &self.tun, cfg, addrs);
            self.apply_v6(v6)
        } else if self.installed[1].is_some() || (fresh && !self.v6_unavailable) {
            // IPv6 rules turned off, or perhaps left by an earlier run: take them out.
            let r = self.remove_family(Family::V6);
            self.installed[1] = None;
            r
        } else {
            Ok(())
        }
    }

    /// Removes everything this value installed (and, in the families it used, what an earlier
    /// run left). Safe to call more than once.
    pub fn close(mut self) -> Result<(), Error> {
        let r = self.remove_installed();
        self.engine = Engine::Unchosen;
        r
    }

    /// Chooses the back-end for `want` by installing the IPv4 rules with it.
    fn choose(&mut self, want: NetfilterBackend, v4: &FamilyRules) -> Result<(), Error> {
        match want {
            NetfilterBackend::Nftables => {
                self.engine = Engine::Nft(nftables::Nft::open()?);
                self.apply(v4)
            }
            #[cfg(feature = "iptables")]
            NetfilterBackend::Iptables => {
                self.engine = Engine::Ipt(iptables::Iptables::find()?);
                self.apply(v4)
            }
            #[cfg(not(feature = "iptables"))]
            NetfilterBackend::Iptables => Err(Error::NotBuilt {
                what: "netfilter back-end iptables",
                tag: "iptables",
            }),
            NetfilterBackend::Auto => {
                let nft_err = match nftables::Nft::open() {
                    Ok(n) => {
                        self.engine = Engine::Nft(n);
                        match self.apply(v4) {
                            Ok(()) => return Ok(()),
                            Err(e) => e,
                        }
                    }
                    Err(e) => e,
                };
                self.installed = [None, None]; // a refused nftables batch changed nothing
                #[cfg(feature = "iptables")]
                info!("osrouter: nftables unavailable ({nft_err}); trying iptables");
                #[cfg(feature = "iptables")]
                let ipt_err = match iptables::Iptables::find() {
                    Ok(i) => {
                        self.engine = Engine::Ipt(i);
                        match self.apply(v4) {
                            Ok(()) => return Ok(()),
                            Err(e) => {
                                // Take out whatever the failed attempt left half-made.
                                let _ = self.remove_family(Family::V4);
                                e
                            }
                        }
                    }
                    Err(e) => e,
                };
                #[cfg(not(feature = "iptables"))]
                let ipt_err = "not in this build (no iptables feature tag)";
                warn!(
                    "osrouter: no usable firewall back-end (nftables: {nft_err}; iptables: \
                     {ipt_err}); carrying on without firewall rules. {OFF_NOTICE}"
                );
                self.engine = Engine::Nothing;
                self.installed = [None, None];
                Ok(())
            }
        }
    }

    /// Installs `rules` for its family unless exactly they are installed already.
    fn apply(&mut self, rules: &FamilyRules) -> Result<(), Error> {
        let i = slot(rules.family);
        if self.installed[i].as_ref() == Some(rules) {
            return Ok(());
        }
        let Some(b) = self.engine.backend() else {
            return Ok(());
        };
        match b.replace(rules) {
            Ok(()) => {
                self.installed[i] = Some(rules.clone());
                Ok(())
            }
            Err(e) => {
                // Whatever was installed may be half-replaced now: it is ours either way.
                if self.installed[i].is_none() {
                    self.installed[i] = Some(FamilyRules {
                        chains: Vec::new(),
                        ..rules.clone()
                    });
                }
                Err(e.into_error())
            }
        }
    }

    /// Installs the IPv6 rules, without NAT where the host has no IPv6 NAT, or not at all where
    /// it has no IPv6 filtering (each warned about once).
    fn apply_v6(&mut self, mut v6: FamilyRules) -> Result<(), Error> {
        if self.v6_no_nat {
            v6 = v6.without_nat();
        }
        if self.installed[1].as_ref() == Some(&v6) {
            return Ok(());
        }
        let Some(b) = self.engine.backend() else {
            return Ok(());
        };
        let first = match b.replace(&v6) {
            Ok(()) => {
                self.installed[1] = Some(v6);
                return Ok(());
            }
            Err(BackendError::Failed(e)) => {
                self.installed[1].get_or_insert_with(|| v6.without_nat());
                return Err(e);
            }
            Err(BackendError::Unsupported(e)) => e,
        };
        if v6.has_nat() {
            let filter_only = v6.without_nat();
            if b.replace(&filter_only).is_ok() {
                warn!(
                    "osrouter: no IPv6 NAT here ({first}); IPv6 traffic forwarded from the \
                     tailnet is not masqueraded"
                );
                self.v6_no_nat = true;
                self.installed[1] = Some(filter_only);
                return Ok(());
            }
        }
        let _ = b.remove(Family::V6);
        warn!("osrouter: no IPv6 firewall here ({first}); carrying on with IPv4 rules only");
        self.v6_unavailable = true;
        self.installed[1] = None;
        Ok(())
    }

    fn remove_family(&mut self, f: Family) -> Result<(), Error> {
        let Some(b) = self.engine.backend() else {
            return Ok(());
        };
        match b.remove(f) {
            Ok(()) | Err(BackendError::Unsupported(_)) => Ok(()),
            Err(BackendError::Failed(e)) => Err(e),
        }
    }

    pub(crate) fn remove_installed(&mut self) -> Result<(), Error> {
        let mut first = None;
        for f in [Family::V4, Family::V6] {
            if self.installed[slot(f)].is_none() {
                continue;
            }
            match self.remove_family(f) {
                Ok(()) => self.installed[slot(f)] = None,
                Err(e) if first.is_none() => first = Some(e),
                Err(e) => warn!("osrouter: {e}"),
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Netfilter {
    fn drop(&mut self) {
        if let Err(e) = self.remove_installed() {
            warn!("osrouter: removing firewall rules on drop: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<IpAddr> {
        ["100.64.0.7", "fd7a:115c:a1e0::7", "100.64.0.7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect()
    }

    #[test]
    fn flags_parse_and_print() {
        for m in ["on", "nodivert", "off"] {
            assert_eq!(m.parse::<NetfilterMode>().unwrap().to_string(), m);
        }
        for b in ["auto", "nftables", "iptables"] {
            assert_eq!(b.parse::<NetfilterBackend>().unwrap().to_string(), b);
        }
        assert!("yes".parse::<NetfilterMode>().is_err());
        assert!("nft".parse::<NetfilterBackend>().is_err());
        let d = NetfilterConfig::default();
        assert_eq!(d.mode, NetfilterMode::On);
        assert!(d.snat_subnet_routes && !d.stateful_filtering && d.ipv6);
    }

    #[test]
    fn go_rules_for_ipv4() {
        let cfg = NetfilterConfig {
            magicsock_port: 41641,
            stateful_filtering: true,
            ..Default::default()
        };
        let r = family_rules(Family::V4, "ts0", &cfg, &addrs());
        assert!(r.divert);
        let [input, forward, post] = &r.chains[..] else {
            panic!("{r:?}")
        };
        assert_eq!(input.hook, Hook::Input);
        assert_eq!(input.rules.len(), 5);
        assert_eq!(
            input.rules[0].matches,
            vec![
                Match::InIface("lo".into()),
                Match::Src("100.64.0.7/32".parse().unwrap())
            ]
        );
        assert_eq!(input.rules[2].matches, vec![Match::UdpDport(41641)]);
        assert_eq!(input.rules[3].action, Action::Return);
        assert_eq!(input.rules[4].action, Action::Drop);
        let actions: Vec<Action> = forward.rules.iter().map(|r| r.action).collect();
        assert_eq!(
            actions,
            vec![
                Action::SetMark {
                    value: 0x40000,
                    mask: 0xff0000
                },
                Action::Accept,
                Action::Drop,
                Action::Drop,
                Action::Accept
            ]
        );
        assert_eq!(post.rules.len(), 1);
        assert_eq!(post.rules[0].action, Action::Masquerade);
    }

    #[test]
    fn ipv6_has_no_cgnat_rules_and_snat_off_empties_postrouting() {
        let cfg = NetfilterConfig {
            snat_subnet_routes: false,
            mode: NetfilterMode::NoDivert,
            ..Default::default()
        };
        let r = family_rules(Family::V6, "ts0", &cfg, &addrs());
        assert!(!r.divert);
        assert_eq!(r.chains[0].rules.len(), 2); // lo + own address, iif ts0
        assert_eq!(r.chains[1].rules.len(), 3); // mark, accept marked, oif accept
        assert!(r.chains[2].rules.is_empty());
        assert!(r.has_nat() && !r.without_nat().has_nat());
    }
}

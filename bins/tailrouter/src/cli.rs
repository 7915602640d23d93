//! The `tailscale` personality: the command-line client, in builds with the `cli` tag.
//!
//! Commands keep Tailscale's names, flags and output shapes and talk to the daemon over the
//! LocalAPI socket (`--socket`). `up` and `login` set prefs, call `start`, then follow the
//! notification bus until the node runs, printing the login URL if one comes; errors from the
//! daemon (such as an expired node key) are printed and exit 1.
//!
//! One deviation from Go: `up` without `--reset` keeps the settings of flags it is not given
//! (Go refuses and asks to mention them all); `--reset` returns unmentioned ones to defaults.

use clap::{Args as ClapArgs, Parser, Subcommand};
use ipn::localapi::types::{DEFAULT_CONTROL_URL, watch};
use ipn::localapi::{
    BackendState, Client, ClientError, IpPrefix, MaskedPrefs, Options, PeerStatus, Prefs, Status,
};
use std::ffi::OsString;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "tailscale",
    about = "tailrouter command-line client",
    disable_version_flag = true
)]
struct Args {
    /// Print the version and the feature tags of this build
    #[arg(long)]
    version: bool,

    /// Path of tailscaled's LocalAPI socket
    #[arg(long, global = true, value_name = "PATH", default_value = ipn::localapi::DEFAULT_SOCKET)]
    socket: String,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version and the feature tags of this build
    Version,
    /// Show the state of tailscaled and its connections
    Status {
        /// Print the status as JSON
        #[arg(long)]
        json: bool,
        /// Show peers (with --json, false leaves them out)
        #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true, default_value = "true")]
        peers: bool,
    },
    /// Show this node's Tailscale IP addresses
    Ip {
        /// Only IPv4 addresses
        #[arg(short = '4')]
        v4: bool,
        /// Only IPv6 addresses
        #[arg(short = '6')]
        v6: bool,
        /// Only the first address
        #[arg(short = '1')]
        one: bool,
        /// A peer (host name, MagicDNS name or one of its addresses) instead of this node
        peer: Option<String>,
    },
    /// Connect to Tailscale, logging in if needed
    Up(UpArgs),
    /// Log in to a Tailscale account
    Login(UpArgs),
    /// Disconnect from Tailscale (stay logged in)
    Down,
    /// Disconnect from Tailscale and forget this node's login
    Logout,
    /// Ping a peer at the Tailscale layer (disco), showing the path that answered
    Ping(PingArgs),
    /// Print the daemon's last network report: UDP, public addresses, DERP latencies
    Netcheck {
        /// Output format: empty for text, `json` or `json-line`
        #[arg(long, default_value = "")]
        format: String,
    },
}

/// Flags of `ping`, with Tailscale's names.
#[derive(Debug, Clone, ClapArgs)]
struct PingArgs {
    /// Number of pings (0: until interrupted or direct)
    #[arg(long = "c", default_value_t = 10)]
    count: u32,
    /// Stop once a direct path answers; fail if none did
    #[arg(long = "until-direct", num_args = 0..=1, default_missing_value = "true", require_equals = true, default_value = "true")]
    until_direct: bool,
    /// Send a TSMP ping instead of disco (not supported yet)
    #[arg(long)]
    tsmp: bool,
    /// Send an ICMP ping through the tunnel instead of disco (not supported yet)
    #[arg(long)]
    icmp: bool,
    /// The peer: host name, MagicDNS name or one of its addresses
    peer: String,
}

/// Flags of `up` and `login`, with Tailscale's names. `None` means "not given".
#[derive(Debug, Clone, ClapArgs)]
struct UpArgs {
    /// Node authorization key; `file:PATH` reads it from a file
    #[arg(long = "auth-key", alias = "authkey", value_name = "KEY")]
    auth_key: Option<String>,
    /// Base URL of the control server
    #[arg(long = "login-server", value_name = "URL")]
    login_server: Option<String>,
    /// Hostname to use instead of the one the OS provides
    #[arg(long)]
    hostname: Option<String>,
    /// Reset unspecified settings to their default values
    #[arg(long)]
    reset: bool,
    /// Accept routes advertised by other nodes
    #[arg(long = "accept-routes", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    accept_routes: Option<bool>,
    /// Accept DNS configuration from the admin panel
    #[arg(long = "accept-dns", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    accept_dns: Option<bool>,
    /// Routes to advertise to other nodes (comma-separated, e.g. 10.0.0.0/8,192.168.0.0/24)
    #[arg(long = "advertise-routes", value_name = "ROUTES")]
    advertise_routes: Option<String>,
    /// Offer to be an exit node for internet traffic
    #[arg(long = "advertise-exit-node", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    advertise_exit_node: Option<bool>,
    /// Tailscale exit node (IP, name or stable ID) for internet traffic, or empty for none
    #[arg(long = "exit-node", value_name = "IP|NAME|ID")]
    exit_node: Option<String>,
    /// Allow direct access to the local network when routing through an exit node
    #[arg(long = "exit-node-allow-lan-access", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    exit_node_allow_lan_access: Option<bool>,
    /// Source-NAT traffic to local routes advertised with --advertise-routes
    #[arg(long = "snat-subnet-routes", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    snat_subnet_routes: Option<bool>,
    /// How much of the firewall to manage: on, nodivert (chains only) or off
    #[arg(long = "netfilter-mode", value_name = "MODE")]
    netfilter_mode: Option<String>,
    /// Firewall back-end: auto, nftables or iptables (tailrouter's; Go reads TS_DEBUG_FIREWALL_MODE)
    #[arg(long = "netfilter-backend", value_name = "KIND")]
    netfilter_backend: Option<String>,
    /// Drop forwarded connections into the tailnet that no tailnet peer started
    #[arg(long = "stateful-filtering", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    stateful_filtering: Option<bool>,
    /// Block incoming connections
    #[arg(long = "shields-up", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    shields_up: Option<bool>,
    /// ACL tags to request (comma-separated, e.g. tag:router)
    #[arg(long = "advertise-tags", value_name = "TAGS")]
    advertise_tags: Option<String>,
    /// Maximum time to wait for the node to be running, like 30s or 2m (0: forever)
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    timeout: String,
}

pub(crate) fn main(args: Vec<OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let command = match (args.version, args.command) {
        (true, _) | (false, Some(Command::Version)) => {
            out(&crate::version_text());
            return ExitCode::SUCCESS;
        }
        (false, None) => {
            eprintln!("tailscale: a command is needed; see `tailscale --help`");
            return ExitCode::from(2);
        }
        (false, Some(c)) => c,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tailscale: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = Client::new(&args.socket);
    match rt.block_on(run(&client, command)) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout, ignoring a closed pipe (`tailscale status | head`), as Go's CLI does.
fn out(s: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(s.as_bytes()).and_then(|()| o.flush());
}

fn daemon_err(e: ClientError) -> String {
    match e {
        ClientError::Status { message, .. } => format!("backend error: {message}"),
        other => other.to_string(),
    }
}

async fn run(c: &Client, command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Version => Ok(ExitCode::SUCCESS),
        Command::Status { json, peers } => {
            let st = if peers {
                c.status().await
            } else {
                c.status_without_peers().await
            }
            .map_err(daemon_err)?;
            if json {
                let text = ipn::localapi::status_json(&st).map_err(|e| e.to_string())?;
                out(&format!("{text}\n"));
                return Ok(ExitCode::SUCCESS);
            }
            let (text, ok) = status_text(&st);
            out(&text);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Ip { v4, v6, one, peer } => {
            let st = match &peer {
                None => c.status_without_peers().await,
                Some(_) => c.status().await,
            }
            .map_err(daemon_err)?;
            let addrs = match &peer {
                None => &st.tailscale_ips,
                Some(p) => match find_peer(&st, p) {
                    Some(found) => found,
                    None => return Err(format!("no peer named or addressed {p:?} in the tailnet")),
                },
            };
            let ips: Vec<&IpAddr> = addrs
                .iter()
                .filter(|ip| (!v4 && !v6) || (v4 && ip.is_ipv4()) || (v6 && ip.is_ipv6()))
                .take(if one { 1 } else { usize::MAX })
                .collect();
            if ips.is_empty() {
                return Err(format!(
                    "no current Tailscale IPs; state: {}",
                    st.backend_state
                ));
            }
            for ip in ips {
                out(&format!("{ip}\n"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Up(up) => run_up(c, up, false).await,
        Command::Login(up) => run_up(c, up, true).await,
        Command::Down => {
            // WantRunning false is the zero value; only the flag needs setting.
            let mp = MaskedPrefs {
                want_running_set: true,
                prefs: Prefs {
                    want_running: false,
                    ..Prefs::default()
                },
                ..MaskedPrefs::default()
            };
            c.edit_prefs(&mp).await.map_err(daemon_err)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logout => {
            c.logout().await.map_err(daemon_err)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ping(p) => run_ping(c, p).await,
        Command::Netcheck { format } => {
            let r = c.netcheck().await.map_err(daemon_err)?;
            match format.as_str() {
                "" => out(&netcheck_text(&r)),
                "json" => out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
                )),
                "json-line" => out(&format!(
                    "{}\n",
                    serde_json::to_string(&r).map_err(|e| e.to_string())?
                )),
                f => return Err(format!("--format={f:?}: want json or json-line")),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Go's `tailscale netcheck` text.
fn netcheck_text(r: &ipn::localapi::NetcheckReport) -> String {
    let yes_no = |b: bool, addr: &str| {
        if b {
            format!("yes, {addr}")
        } else {
            "no".to_string()
        }
    };
    let name = |id: &str| {
        r.derp_regions
            .get(id)
            .map(|(code, name)| (code.clone(), name.clone()))
            .unwrap_or_else(|| (id.to_string(), String::new()))
    };
    let mut s = String::from("\nReport:\n");
    s.push_str(&format!("\t* UDP: {}\n", r.udp));
    s.push_str(&format!("\t* IPv4: {}\n", yes_no(r.ipv4, &r.global_v4)));
    s.push_str(&format!("\t* IPv6: {}\n", yes_no(r.ipv6, &r.global_v6)));
    let mv = r
        .mapping_varies_by_dest_ip
        .map(|b| b.to_string())
        .unwrap_or_default();
    s.push_str(&format!("\t* MappingVariesByDestIP: {mv}\n"));
    let home = name(&r.preferred_derp.to_string()).1;
    s.push_str(&format!("\t* Nearest DERP: {home}\n"));
    s.push_str("\t* DERP latency:\n");
    let mut lat: Vec<(&String, &u64)> = r.region_latency.iter().collect();
    lat.sort_by_key(|(_, ns)| **ns);
    for (id, ns) in lat {
        let (code, name) = name(id);
        let ms = *ns as f64 / 1e6;
        s.push_str(&format!("\t\t- {code}: {ms:.1}ms ({name})\n"));
    }
    s
}

/// `tailscale ping`: disco pings until a direct path answers (or `--c` pings), printing each
/// pong the way Go does.
async fn run_ping(c: &Client, a: PingArgs) -> Result<ExitCode, String> {
    if a.icmp {
        return Err(
            "ICMP pings through the tunnel are not supported yet (disco and --tsmp are)".into(),
        );
    }
    let kind = if a.tsmp { "TSMP" } else { "disco" };
    let st = c.status().await.map_err(daemon_err)?;
    let ips = find_peer(&st, &a.peer)
        .ok_or_else(|| format!("no peer named or addressed {:?} in the tailnet", a.peer))?;
    let ip = *ips
        .iter()
        .find(|i| i.is_ipv4())
        .or(ips.first())
        .ok_or_else(|| format!("peer {:?} has no address", a.peer))?;
    let mut n = 0;
    loop {
        n += 1;
        let r = c.ping(ip, kind).await.map_err(daemon_err)?;
        if r.err == "timeout" {
            out(&format!("ping {ip:?} timed out\n"));
        } else if !r.err.is_empty() {
            return Err(r.err);
        } else {
            let via = if !r.endpoint.is_empty() {
                r.endpoint.clone()
            } else if r.derp_region_id != 0 {
                format!("DERP({})", r.derp_region_code)
            } else {
                // Go's CLI names the protocol when the answer says no path (TSMP).
                kind.to_string()
            };
            let ms = r.latency_seconds * 1000.0;
            out(&format!(
                "pong from {} ({}) via {via} in {ms:.0}ms\n",
                r.node_name, r.node_ip
            ));
            // A TSMP pong says nothing of the path: one is the answer, as in Go.
            if a.tsmp || (a.until_direct && !r.endpoint.is_empty()) {
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if a.count != 0 && n >= a.count {
            break;
        }
    }
    if a.until_direct {
        return Err("direct connection not established".into());
    }
    Ok(ExitCode::SUCCESS)
}

/// Go's `tailscale status` text and whether it means "up" (exit 0).
fn status_text(st: &Status) -> (String, bool) {
    let mut out = String::new();
    let health = |out: &mut String| {
        if !st.health.is_empty() {
            out.push_str("# Health check:\n");
            for h in &st.health {
                out.push_str(&format!("#     - {h}\n"));
            }
        }
    };
    match st.state() {
        Some(BackendState::Stopped) => {
            out.push_str("Tailscale is stopped.\n");
            return (out, false);
        }
        Some(BackendState::NeedsLogin) => {
            out.push_str("Logged out.\n");
            if !st.auth_url.is_empty() {
                out.push_str(&format!("\nLog in at: {}\n", st.auth_url));
            }
            health(&mut out);
            return (out, false);
        }
        Some(BackendState::NeedsMachineAuth) => {
            out.push_str("Machine is not yet approved by tailnet admin.\n");
            return (out, false);
        }
        Some(BackendState::Running | BackendState::Starting) => {}
        _ => {
            out.push_str(&format!("unexpected state: {}\n", st.backend_state));
            health(&mut out);
            return (out, false);
        }
    }
    let mut rows: Vec<[String; 5]> = Vec::new();
    if let Some(me) = &st.self_status {
        rows.push(row(st, me, "-".into()));
    }
    let mut peers: Vec<&PeerStatus> = st.peer.values().collect();
    peers.sort_by(|a, b| {
        a.dns_name
            .cmp(&b.dns_name)
            .then(a.host_name.cmp(&b.host_name))
    });
    for p in peers {
        rows.push(row(st, p, peer_activity(p)));
    }
    let mut widths = [0usize; 5];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < r.len() {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if !st.health.is_empty() {
        out.push('\n');
        health(&mut out);
    }
    (out, true)
}

fn row(st: &Status, p: &PeerStatus, activity: String) -> [String; 5] {
    let ip = p
        .tailscale_ips
        .first()
        .map(|i| i.to_string())
        .unwrap_or_else(|| "-".into());
    let name = {
        let dns = p.dns_name.trim_end_matches('.');
        let suffix = st
            .current_tailnet
            .as_ref()
            .map(|t| t.magic_dns_suffix.as_str())
            .unwrap_or(st.magic_dns_suffix.as_str());
        match dns.strip_suffix(suffix).and_then(|d| d.strip_suffix('.')) {
            Some(short) if !suffix.is_empty() => short.to_string(),
            _ if !dns.is_empty() => dns.to_string(),
            _ => p.host_name.clone(),
        }
    };
    let owner = if p.user_id == 0 {
        "-".to_string()
    } else {
        match st.user.get(&p.user_id.to_string()) {
            Some(u) => match u.login_name.find('@') {
                Some(i) => u.login_name[..=i].to_string(),
                None => u.login_name.clone(),
            },
            None => p.user_id.to_string(),
        }
    };
    [ip, name, owner, p.os.clone(), activity]
}

fn peer_activity(p: &PeerStatus) -> String {
    if !p.online {
        return "offline".into();
    }
    let mut s = if p.active {
        if !p.cur_addr.is_empty() {
            format!("active; direct {}", p.cur_addr)
        } else if !p.relay.is_empty() {
            format!("active; relay {:?}", p.relay)
        } else {
            "active".into()
        }
    } else if p.exit_node {
        "idle; exit node".into()
    } else if p.exit_node_option {
        "idle; offers exit node".into()
    } else {
        "-".into()
    };
    if p.active && p.exit_node {
        s.push_str("; exit node");
    }
    if p.tx_bytes > 0 || p.rx_bytes > 0 {
        s.push_str(&format!(", tx {} rx {}", p.tx_bytes, p.rx_bytes));
    }
    s
}

/// Parses Go-style durations: `30s`, `2m`, `1h`, `500ms`, `0`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("--timeout={s:?}: want a duration like 30s, 2m or 0");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

/// Refuses a flag that asks for a router job this build has no feature tag for. The flags
/// exist in every build (so `--help` and scripts see Tailscale's flag set); only turning a
/// job on is refused, turning it off (`--exit-node=`, `--accept-routes=false`) never is.
fn refuse_unbuilt(a: &UpArgs) -> Result<(), String> {
    use ipn::tags::has;
    let asks = [
        (
            a.accept_routes == Some(true),
            "--accept-routes",
            "useroutes",
        ),
        (
            a.advertise_exit_node == Some(true),
            "--advertise-exit-node",
            "advertiseexitnode",
        ),
        (
            a.exit_node.as_deref().is_some_and(|e| !e.is_empty()),
            "--exit-node",
            "useexitnode",
        ),
        (
            a.exit_node_allow_lan_access == Some(true),
            "--exit-node-allow-lan-access",
            "useexitnode",
        ),
        (
            a.netfilter_backend.as_deref() == Some("iptables"),
            "--netfilter-backend=iptables",
            "iptables",
        ),
    ];
    if let Some((_, flag, tag)) = asks.into_iter().find(|(asked, _, tag)| *asked && !has(tag)) {
        return Err(ipn::no_tag(flag, tag));
    }
    // Malformed routes are up_prefs's to report.
    let routes = a.advertise_routes.as_deref().unwrap_or_default().split(',');
    for r in routes.filter_map(|r| r.trim().parse::<IpPrefix>().ok()) {
        let tag = ipn::routing::tag_for_advertised(&r);
        if !has(tag) {
            return Err(ipn::no_tag("--advertise-routes", tag));
        }
    }
    Ok(())
}

/// The prefs `up` asks for: from the current ones (or defaults with `--reset`), with the
/// given flags applied.
fn up_prefs(cur: &Prefs, a: &UpArgs) -> Result<Prefs, String> {
    refuse_unbuilt(a)?;
    let mut p = if a.reset {
        Prefs::default()
    } else {
        let mut p = cur.clone();
        p.config = None;
        p
    };
    p.want_running = true;
    p.logged_out = false;
    if let Some(u) = &a.login_server {
        p.control_url = u.trim_end_matches('/').to_string();
    }
    if p.control_url.is_empty() {
        p.control_url = DEFAULT_CONTROL_URL.to_string();
    }
    if let Some(h) = &a.hostname {
        p.hostname = h.clone();
    }
    if let Some(v) = a.accept_routes {
        p.route_all = v;
    }
    if let Some(v) = a.accept_dns {
        p.corp_dns = v;
    }
    if let Some(v) = a.shields_up {
        p.shields_up = v;
    }
    if let Some(v) = a.snat_subnet_routes {
        p.no_snat = !v;
    }
    if let Some(v) = a.exit_node_allow_lan_access {
        p.exit_node_allow_lan_access = v;
    }
    if let Some(m) = &a.netfilter_mode {
        p.netfilter_mode = match m.as_str() {
            "on" => 2,
            "nodivert" => 1,
            "off" => 0,
            _ => {
                return Err(format!(
                    "--netfilter-mode: {m:?} is not one of on, nodivert, off"
                ));
            }
        };
    }
    if let Some(k) = &a.netfilter_backend {
        p.netfilter_kind = match k.as_str() {
            "auto" | "" => String::new(),
            "nftables" | "iptables" => k.clone(),
            _ => {
                return Err(format!(
                    "--netfilter-backend: {k:?} is not one of auto, nftables, iptables"
                ));
            }
        };
    }
    if let Some(v) = a.stateful_filtering {
        p.no_stateful_filtering = Some(!v);
    }
    let is_default_route = |r: &IpPrefix| r.bits == 0;
    if let Some(list) = &a.advertise_routes {
        let mut routes = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let r: IpPrefix = item
                .parse()
                .map_err(|e| format!("--advertise-routes: {e}"))?;
            routes.push(r);
        }
        let keep_exit: Vec<IpPrefix> = p
            .advertise_routes
            .iter()
            .copied()
            .filter(|r| is_default_route(r) && a.advertise_exit_node.is_none())
            .collect();
        p.advertise_routes = routes;
        for r in keep_exit {
            if !p.advertise_routes.contains(&r) {
                p.advertise_routes.push(r);
            }
        }
    }
    if let Some(exit) = a.advertise_exit_node {
        p.advertise_routes.retain(|r| !is_default_route(r));
        if exit {
            for r in ["0.0.0.0/0", "::/0"] {
                if let Ok(r) = r.parse() {
                    p.advertise_routes.push(r);
                }
            }
        }
    }
    if let Some(e) = &a.exit_node {
        p.exit_node_id.clear();
        p.exit_node_ip = None;
        if !e.is_empty() {
            match e.parse::<IpAddr>() {
                Ok(ip) => p.exit_node_ip = Some(ip),
                Err(_) => p.exit_node_id = e.clone(),
            }
        }
    }
    if let Some(t) = &a.advertise_tags {
        p.advertise_tags = t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if let Some(bad) = p.advertise_tags.iter().find(|t| !t.starts_with("tag:")) {
            return Err(format!(
                "--advertise-tags: {bad:?} does not start with \"tag:\""
            ));
        }
    }
    Ok(p)
}

fn read_auth_key(a: &UpArgs) -> Result<String, String> {
    match a.auth_key.as_deref() {
        None => Ok(String::new()),
        Some(k) => match k.strip_prefix("file:") {
            Some(path) => std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("--auth-key: cannot read {path}: {e}")),
            None => Ok(k.to_string()),
        },
    }
}

async fn run_up(c: &Client, a: UpArgs, interactive: bool) -> Result<ExitCode, String> {
    // Before the daemon is asked anything: a flag this build cannot honour is refused at once.
    refuse_unbuilt(&a)?;
    let timeout = parse_duration(&a.timeout)?;
    let cur = c.prefs().await.map_err(daemon_err)?;
    let prefs = up_prefs(&cur, &a)?;
    let auth_key = read_auth_key(&a)?;
    // Watch before starting, so no notification is missed.
    let mut watcher = c
        .watch_ipn_bus(watch::INITIAL_STATE)
        .await
        .map_err(daemon_err)?;
    let opts = Options {
        update_prefs: Some(prefs),
        auth_key,
        ..Options::default()
    };
    let with_key = !opts.auth_key.is_empty();
    c.start(&opts).await.map_err(daemon_err)?;
    // As Go's `up`: a node that still needs a login after `start` (new, logged out, or with
    // an expired key) and has no auth key logs in interactively.
    let needs_login = !with_key
        && c.status_without_peers()
            .await
            .is_ok_and(|s| s.state() == Some(BackendState::NeedsLogin));
    if interactive || needs_login {
        c.login_interactive().await.map_err(daemon_err)?;
    }
    let follow = async {
        let mut printed = String::new();
        loop {
            let Some(n) = watcher.next().await.map_err(daemon_err)? else {
                return Err("tailscaled closed the notification stream".to_string());
            };
            if let Some(msg) = n.err_message {
                return Err(format!("backend error: {msg}"));
            }
            let state = n.backend_state();
            if let Some(url) = n.browse_to_url {
                if url != printed {
                    out(&format!("\nTo authenticate, visit:\n\n\t{url}\n\n"));
                    printed = url;
                }
            }
            match state {
                Some(BackendState::Running) => {
                    if !printed.is_empty() {
                        out("Success.\n");
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                Some(BackendState::NeedsMachineAuth) => {
                    out("\nTo approve your machine, ask a tailnet admin to authorize it.\n\n");
                }
                _ => {}
            }
        }
    };
    if timeout.is_zero() {
        follow.await
    } else {
        match tokio::time::timeout(timeout, follow).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timeout waiting for Tailscale service to enter a Running state; last state: {}",
                c.status_without_peers()
                    .await
                    .map(|s| s.backend_state)
                    .unwrap_or_else(|_| "unknown".into())
            )),
        }
    }
}

/// The addresses of the peer `name` names: its host name, its MagicDNS name (with or without
/// the trailing dot, or only its first label), or one of its addresses; case-insensitive.
fn find_peer<'a>(st: &'a ipn::localapi::types::Status, name: &str) -> Option<&'a Vec<IpAddr>> {
    let want = name.trim_end_matches('.').to_ascii_lowercase();
    let by_ip: Option<IpAddr> = want.parse().ok();
    st.peer.values().find_map(|p| {
        let dns = p.dns_name.trim_end_matches('.').to_ascii_lowercase();
        let first_label = dns.split('.').next().unwrap_or("");
        let hit = p.host_name.eq_ignore_ascii_case(&want)
            || (!dns.is_empty() && (dns == want || first_label == want))
            || by_ip.is_some_and(|ip| p.tailscale_ips.contains(&ip));
        hit.then_some(&p.tailscale_ips)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(args: &[&str]) -> UpArgs {
        let mut v = vec!["tailscale", "up"];
        v.extend(args);
        match Args::try_parse_from(v).unwrap().command {
            Some(Command::Up(u)) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    #[cfg(all(
        feature = "useroutes",
        feature = "advertiseroutes",
        feature = "advertiseexitnode"
    ))]
    fn up_flags_map_to_prefs() {
        let a = up(&[
            "--login-server=https://hs.example/",
            "--hostname=gw",
            "--accept-routes",
            "--accept-dns=false",
            "--advertise-routes=192.168.88.0/24,10.0.0.0/8",
            "--advertise-exit-node",
            "--snat-subnet-routes=false",
            "--advertise-tags=tag:router",
        ]);
        let p = up_prefs(&Prefs::default(), &a).unwrap();
        assert_eq!(p.control_url, "https://hs.example");
        assert_eq!(p.hostname, "gw");
        assert!(p.route_all && !p.corp_dns && p.no_snat && p.want_running);
        let routes: Vec<String> = p.advertise_routes.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            routes,
            ["192.168.88.0/24", "10.0.0.0/8", "0.0.0.0/0", "::/0"]
        );
        assert_eq!(p.advertise_tags, ["tag:router"]);
    }

    #[test]
    #[cfg(all(feature = "iptables", feature = "useexitnode"))]
    fn firewall_and_exit_flags_map_to_prefs() {
        let p = up_prefs(
            &Prefs::default(),
            &up(&[
                "--netfilter-mode=nodivert",
                "--netfilter-backend=iptables",
                "--stateful-filtering",
                "--exit-node=gw-exit",
                "--exit-node-allow-lan-access",
            ]),
        )
        .unwrap();
        assert_eq!(p.netfilter_mode, 1);
        assert_eq!(p.netfilter_kind, "iptables");
        assert_eq!(p.no_stateful_filtering, Some(false));
        assert_eq!(p.exit_node_id, "gw-exit");
        assert!(p.exit_node_allow_lan_access);
        let p = up_prefs(
            &p,
            &up(&[
                "--netfilter-mode=off",
                "--netfilter-backend=auto",
                "--stateful-filtering=false",
                "--exit-node=100.64.0.7",
            ]),
        )
        .unwrap();
        assert_eq!((p.netfilter_mode, p.netfilter_kind.as_str()), (0, ""));
        assert_eq!(p.no_stateful_filtering, Some(true));
        assert_eq!(p.exit_node_ip, Some("100.64.0.7".parse().unwrap()));
        assert!(p.exit_node_id.is_empty());
        let p = up_prefs(&p, &up(&["--exit-node="])).unwrap();
        assert!(p.exit_node_ip.is_none() && p.exit_node_id.is_empty());
    }

    #[test]
    fn up_keeps_unmentioned_settings_unless_reset() {
        let cur = Prefs {
            hostname: "kept".into(),
            route_all: true,
            ..Prefs::default()
        };
        let p = up_prefs(&cur, &up(&[])).unwrap();
        assert_eq!(p.hostname, "kept");
        assert_eq!(p.control_url, DEFAULT_CONTROL_URL);
        let p = up_prefs(&cur, &up(&["--reset"])).unwrap();
        assert_eq!(p.hostname, "");
        assert!(!p.route_all);
    }

    /// Each router flag is refused, naming its tag, exactly when the build lacks that tag; the
    /// flags that turn a job off are accepted in every build.
    #[test]
    fn router_flags_follow_the_build() {
        let cases: [(&[&str], &str); 8] = [
            (&["--accept-routes"], "useroutes"),
            (&["--advertise-routes=192.168.88.0/24"], "advertiseroutes"),
            (&["--advertise-routes=0.0.0.0/0,::/0"], "advertiseexitnode"),
            (&["--advertise-exit-node"], "advertiseexitnode"),
            (&["--exit-node=gw"], "useexitnode"),
            (&["--exit-node=100.64.0.7"], "useexitnode"),
            (&["--exit-node-allow-lan-access"], "useexitnode"),
            (&["--netfilter-backend=iptables"], "iptables"),
        ];
        for (flags, tag) in cases {
            let r = up_prefs(&Prefs::default(), &up(flags));
            if ipn::tags::has(tag) {
                assert!(r.is_ok(), "{flags:?}: {r:?}");
            } else {
                let e = r.unwrap_err();
                let flag = flags[0].split('=').next().unwrap();
                assert!(e.starts_with(flag), "{flags:?}: {e}");
                assert!(
                    e.ends_with(&format!("this build has no {tag} feature tag")),
                    "{flags:?}: {e}"
                );
            }
        }
        for off in [
            "--accept-routes=false",
            "--advertise-exit-node=false",
            "--exit-node=",
            "--exit-node-allow-lan-access=false",
            "--advertise-routes=",
            "--netfilter-backend=nftables",
        ] {
            let r = up_prefs(&Prefs::default(), &up(&[off]));
            assert!(r.is_ok(), "{off}: {r:?}");
        }
    }

    #[test]
    fn bad_up_flags_are_refused() {
        assert!(up_prefs(&Prefs::default(), &up(&["--advertise-routes=10.0.0.0"])).is_err());
        assert!(up_prefs(&Prefs::default(), &up(&["--advertise-tags=router"])).is_err());
        assert!(up_prefs(&Prefs::default(), &up(&["--netfilter-mode=maybe"])).is_err());
        assert!(up_prefs(&Prefs::default(), &up(&["--netfilter-backend=pf"])).is_err());
        assert!(parse_duration("10x").is_err());
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    }

    #[test]
    fn status_text_has_go_shapes() {
        let mut st = Status {
            backend_state: "NeedsLogin".into(),
            health: vec!["no control client".into()],
            ..Status::default()
        };
        let (t, ok) = status_text(&st);
        assert!(!ok);
        assert!(t.starts_with("Logged out.\n"), "{t}");
        assert!(
            t.contains("# Health check:\n#     - no control client"),
            "{t}"
        );
        st.backend_state = "Stopped".into();
        assert_eq!(status_text(&st).0, "Tailscale is stopped.\n");
        st.backend_state = "Running".into();
        st.health.clear();
        st.self_status = Some(PeerStatus {
            host_name: "gw".into(),
            os: "linux".into(),
            tailscale_ips: vec!["100.64.0.1".parse().unwrap()],
            ..PeerStatus::default()
        });
        st.peer.insert(
            "nodekey:aa".into(),
            PeerStatus {
                host_name: "laptop".into(),
                dns_name: "laptop.tail1.ts.net.".into(),
                os: "macOS".into(),
                user_id: 7,
                tailscale_ips: vec!["100.64.0.22".parse().unwrap()],
                online: true,
                active: true,
                cur_addr: "192.0.2.1:41641".into(),
                ..PeerStatus::default()
            },
        );
        st.user.insert(
            "7".into(),
            ipn::localapi::UserProfile {
                id: 7,
                login_name: "alice@example.com".into(),
                ..Default::default()
            },
        );
        st.magic_dns_suffix = "tail1.ts.net".into();
        let (t, ok) = status_text(&st);
        assert!(ok);
        assert_eq!(
            t,
            "100.64.0.1   gw      -       linux  -\n\
             100.64.0.22  laptop  alice@  macOS  active; direct 192.0.2.1:41641\n"
        );
    }
}

//! The `containerboot` personality: the node configured by environment variables, as a
//! container runtime (RouterOS `/container/envs`) sets them, in one process.
//!
//! The variables keep the names of Tailscale's own container image (`TS_AUTHKEY`,
//! `TS_ROUTES`, `TS_HOSTNAME`, …); docs/container.md lists them with their defaults. The boot:
//!
//! 1. [`from_env`] turns the environment into a [`Boot`]: the daemon's argument vector and the
//!    `tailscale up` flags. It is a pure function; every refusal names its variable.
//! 2. IP forwarding is turned on where `/proc/sys` lets us ([`enable_forwarding`]); where it
//!    does not, one line says so and the boot goes on.
//! 3. The daemon ([`crate::daemon::main`]) runs on a thread of this process: no second
//!    program, no second copy of the binary in memory.
//! 4. Once its LocalAPI answers, `tailscale up` runs through the CLI's own code
//!    ([`crate::cli::main`]), with the auth key only when the node needs a login: a restart
//!    with the same state is the same node and spends no key.
//! 5. Then this process is the daemon: SIGTERM stops it as it stops `tailscaled`, with routes,
//!    rules, firewall and resolv.conf put back.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Where state lives when `TS_STATE_DIR` is not set: a router keeps its node across restarts.
const DEFAULT_STATE_DIR: &str = "/var/lib/tailscale";

/// How long the daemon may take to serve its LocalAPI before the boot gives up.
const SOCKET_WAIT: Duration = Duration::from_secs(30);

/// Variables of Tailscale's image that have no meaning here; setting one is refused rather
/// than silently ignored, so nobody waits for a proxy that never starts.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("TS_DEST_IP", "proxying to a destination"),
    ("TS_TAILNET_TARGET_IP", "proxying to a tailnet target"),
    ("TS_TAILNET_TARGET_FQDN", "proxying to a tailnet target"),
    ("TS_SERVE_CONFIG", "serve configuration"),
    ("TS_SOCKS5_SERVER", "a SOCKS5 proxy (userspace networking)"),
    (
        "TS_OUTBOUND_HTTP_PROXY_LISTEN",
        "an HTTP proxy (userspace networking)",
    ),
    ("TS_KUBE_SECRET", "Kubernetes state"),
    (
        "TS_EXPERIMENTAL_VERSIONED_CONFIG_DIR",
        "a tailscaled config file",
    ),
    ("TS_HEALTHCHECK_ADDR_PORT", "the health-check endpoint"),
    ("TS_ENABLE_HEALTH_CHECK", "the health-check endpoint"),
    ("TS_ENABLE_METRICS", "the metrics endpoint"),
];

/// What the environment asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Boot {
    /// The daemon's argument vector, program name first.
    pub(crate) daemon_args: Vec<OsString>,
    /// The flags given to `tailscale up`, without the auth key.
    pub(crate) up_flags: Vec<String>,
    /// `TS_AUTHKEY` (or `TS_AUTH_KEY`); used only when the node needs a login.
    pub(crate) auth_key: Option<String>,
    /// The LocalAPI socket.
    pub(crate) socket: PathBuf,
}

/// Go's `strconv.ParseBool` spellings, which Tailscale's image accepts; anything else is an
/// error naming the variable. Unset or empty is `None`.
fn env_bool(get: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<bool>, String> {
    match get(name).as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
        Some(v) => Err(format!("{name}={v:?}: want true or false")),
    }
}

/// A variable's value, `None` when unset or empty (RouterOS can leave a value empty).
fn env_str(get: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The flag names (without dashes, before any `=`) among `words`.
fn flag_names(words: &[String]) -> Vec<String> {
    words
        .iter()
        .filter_map(|w| w.strip_prefix("--").or_else(|| w.strip_prefix('-')))
        .map(|w| w.split('=').next().unwrap_or(w).to_string())
        .collect()
}

/// Reads the configuration from the environment (`get` looks a variable up). Pure: the
/// caller passes `std::env::var`, the tests a table.
pub(crate) fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Boot, String> {
    for (name, what) in UNSUPPORTED {
        let set = match env_bool(&get, name) {
            Ok(b) => b.unwrap_or(false),
            Err(_) => env_str(&get, name).is_some(),
        };
        if set {
            return Err(format!(
                "{name} is set, but tailrouter's containerboot has no {what}; unset it"
            ));
        }
    }
    if env_bool(&get, "TS_USERSPACE")? == Some(true) {
        return Err(
            "TS_USERSPACE=true: tailrouter routes through a kernel TUN device only \
                    (a router needs one); set TS_USERSPACE=false or leave it unset, and give \
                    the container /dev/net/tun"
                .into(),
        );
    }
    // Parsed so a malformed value is refused; see docs/container.md for why a logged-in node
    // never spends the key again whatever its value.
    env_bool(&get, "TS_AUTH_ONCE")?;

    let socket = PathBuf::from(
        env_str(&get, "TS_SOCKET").unwrap_or_else(|| ipn::localapi::DEFAULT_SOCKET.into()),
    );
    let state_dir = env_str(&get, "TS_STATE_DIR").unwrap_or_else(|| DEFAULT_STATE_DIR.into());
    if !state_dir.starts_with('/') {
        return Err(format!(
            "TS_STATE_DIR={state_dir:?}: want an absolute directory path"
        ));
    }
    let mut daemon_args: Vec<OsString> = vec![
        "tailscaled".into(),
        format!("--statedir={state_dir}").into(),
        format!("--socket={}", socket.display()).into(),
    ];
    if let Some(extra) = get("TS_TAILSCALED_EXTRA_ARGS") {
        // After ours: the daemon takes a repeated flag's last value, as Go's flag package does.
        daemon_args.extend(extra.split_whitespace().map(OsString::from));
    }

    let extra: Vec<String> = get("TS_EXTRA_ARGS")
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let given = flag_names(&extra);
    let in_extra = |names: &[&str]| names.iter().any(|n| given.iter().any(|g| g == n));

    let mut auth_key = env_str(&get, "TS_AUTHKEY").or_else(|| env_str(&get, "TS_AUTH_KEY"));
    if in_extra(&["authkey", "auth-key"]) {
        if auth_key.is_some() {
            return Err("TS_AUTHKEY and an auth key in TS_EXTRA_ARGS: give one".into());
        }
        // Kept in TS_EXTRA_ARGS as given; the key then goes to every `up`.
        auth_key = None;
    }

    let mut up_flags = Vec::new();
    if let Some(url) = env_str(&get, "TS_LOGIN_SERVER") {
        if in_extra(&["login-server"]) {
            return Err("TS_LOGIN_SERVER and --login-server in TS_EXTRA_ARGS: give one".into());
        }
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!(
                "TS_LOGIN_SERVER={url:?}: want a URL starting with https:// or http://"
            ));
        }
        up_flags.push(format!("--login-server={url}"));
    }
    if let Some(h) = env_str(&get, "TS_HOSTNAME") {
        if h.contains(char::is_whitespace) {
            return Err(format!("TS_HOSTNAME={h:?}: a host name has no spaces"));
        }
        if !in_extra(&["hostname"]) {
            up_flags.push(format!("--hostname={h}"));
        }
    }
    // Set but empty is meaningful: no routes (Tailscale's image treats it the same way).
    if let Some(routes) = get("TS_ROUTES") {
        let routes = routes.trim();
        for r in routes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let p = r
                .parse::<ipn::localapi::IpPrefix>()
                .map_err(|e| format!("TS_ROUTES: {r:?}: {e}"))?;
            // Refused before the daemon starts, naming the variable rather than the flag.
            let tag = ipn::routing::tag_for_advertised(&p);
            if !ipn::tags::has(tag) {
                return Err(ipn::no_tag(&format!("TS_ROUTES: {r}"), tag));
            }
        }
        if !in_extra(&["advertise-routes"]) {
            up_flags.push(format!("--advertise-routes={routes}"));
        }
    }
    // Off unless asked for, as in Tailscale's image: a router keeps its own resolver.
    let accept_dns = env_bool(&get, "TS_ACCEPT_DNS")?.unwrap_or(false);
    if !in_extra(&["accept-dns"]) {
        up_flags.push(format!("--accept-dns={accept_dns}"));
    }
    // Extra flags last and winning, as in Tailscale's image where Go's flag parsing takes the
    // last of a repeated flag: the derived ones they name are left out above.
    up_flags.extend(extra);
    Ok(Boot {
        daemon_args,
        up_flags,
        auth_key,
        socket,
    })
}

/// Turns on IPv4 and IPv6 forwarding under `root` (`/` in production); returns one line per
/// knob that could not be turned on. A knob already on is not written (a read-only
/// `/proc/sys` with forwarding on is fine).
pub(crate) fn enable_forwarding(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for (rel, sysctl) in [
        ("proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
        (
            "proc/sys/net/ipv6/conf/all/forwarding",
            "net.ipv6.conf.all.forwarding",
        ),
    ] {
        let path = root.join(rel);
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        if let Err(e) = std::fs::write(&path, "1\n") {
            problems.push(format!(
                "containerboot: cannot turn on {sysctl} ({}: {e}); until it is 1 in the \
                 container, the router cannot reach the tailnet through it and advertised \
                 routes do not forward: set it in the container runtime (docs/container.md)",
                path.display()
            ));
        }
    }
    problems
}

/// The boot takes no arguments: an image's old `CMD` or a RouterOS `cmd=` with daemon flags
/// would otherwise be dropped without a word. `args` starts with the program name.
fn no_arguments(args: &[OsString]) -> Result<(), String> {
    match args.get(1) {
        None => Ok(()),
        Some(a) => Err(format!(
            "takes no arguments (got {:?}): put daemon flags in TS_TAILSCALED_EXTRA_ARGS and \
             `tailscale up` flags in TS_EXTRA_ARGS, or run the image with the entrypoint \
             /usr/local/bin/tailscaled to pass flags directly",
            a.to_string_lossy()
        )),
    }
}

pub(crate) fn main(args: Vec<OsString>) -> ExitCode {
    if let Err(e) = no_arguments(&args) {
        eprintln!("containerboot: {e}");
        return ExitCode::from(2);
    }
    let boot = match from_env(|k| std::env::var(k).ok()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("containerboot: {e}");
            return ExitCode::from(2);
        }
    };
    for line in enable_forwarding(Path::new("/")) {
        eprintln!("{line}");
    }
    let daemon_args = boot.daemon_args.clone();
    let daemon = match std::thread::Builder::new()
        .name("tailscaled".into())
        .spawn(move || crate::daemon::main(daemon_args))
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("containerboot: cannot start the daemon thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    let finished = |h: &std::thread::JoinHandle<ExitCode>| h.is_finished();
    let join = |h: std::thread::JoinHandle<ExitCode>| h.join().unwrap_or(ExitCode::FAILURE);

    // The daemon serves its LocalAPI once the data plane is up; it may also stop first (bad
    // flags in TS_TAILSCALED_EXTRA_ARGS, no TUN), and then its code is ours.
    let deadline = Instant::now() + SOCKET_WAIT;
    loop {
        if finished(&daemon) {
            return join(daemon);
        }
        if std::os::unix::net::UnixStream::connect(&boot.socket).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "containerboot: the daemon did not serve {} within {}s; it keeps running, without \
                 `tailscale up`: log in by hand inside the container",
                boot.socket.display(),
                SOCKET_WAIT.as_secs()
            );
            return join(daemon);
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    match up_argv(&boot) {
        Ok(argv) => {
            let code = crate::cli::main(argv);
            // A SIGTERM while `up` waits also ends `up` (the daemon closes its stream): give
            // the daemon a moment to finish before calling that a failure.
            let grace = Instant::now() + Duration::from_secs(2);
            while code != ExitCode::SUCCESS && !finished(&daemon) && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(20));
            }
            if code != ExitCode::SUCCESS && !finished(&daemon) {
                eprintln!(
                    "containerboot: `tailscale up` failed (above); the daemon keeps running: \
                     fix the variables and restart, or log in with `tailscale up` inside the \
                     container"
                );
            }
        }
        Err(e) => eprintln!("containerboot: {e}; the daemon keeps running"),
    }
    join(daemon)
}

/// The `tailscale up` argument vector: the auth key only when the daemon says the node needs
/// a login (new, logged out or expired).
fn up_argv(boot: &Boot) -> Result<Vec<OsString>, String> {
    let needs_login = match &boot.auth_key {
        None => false,
        Some(_) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))?;
            let client = ipn::localapi::Client::new(&boot.socket);
            let st = rt
                .block_on(client.status_without_peers())
                .map_err(|e| format!("cannot read the daemon's status: {e}"))?;
            st.state() == Some(ipn::localapi::BackendState::NeedsLogin)
        }
    };
    let mut argv: Vec<OsString> = vec![
        "tailscale".into(),
        format!("--socket={}", boot.socket.display()).into(),
        "up".into(),
    ];
    argv.extend(boot.up_flags.iter().map(OsString::from));
    if let (true, Some(k)) = (needs_login, &boot.auth_key) {
        argv.push(format!("--auth-key={k}").into());
    }
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn boot(vars: &[(&str, &str)]) -> Result<Boot, String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_env(move |k| m.get(k).cloned())
    }

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn ts_routes_follow_the_build() {
        for (routes, tag) in [
            ("192.168.88.0/24", "advertiseroutes"),
            ("0.0.0.0/0", "advertiseexitnode"),
        ] {
            let r = boot(&[("TS_ROUTES", routes)]);
            if ipn::tags::has(tag) {
                assert!(r.is_ok(), "{routes}");
            } else {
                let e = r.err().unwrap();
                assert_eq!(
                    e,
                    format!("TS_ROUTES: {routes}: this build has no {tag} feature tag")
                );
            }
        }
        // No routes is fine in every build.
        assert!(boot(&[("TS_ROUTES", "")]).is_ok());
    }

    #[test]
    fn defaults_keep_state_and_leave_dns_alone() {
        let b = boot(&[]).unwrap();
        assert_eq!(
            b.daemon_args,
            os(&[
                "tailscaled",
                "--statedir=/var/lib/tailscale",
                "--socket=/var/run/tailscale/tailscaled.sock"
            ])
        );
        assert_eq!(b.up_flags, ["--accept-dns=false"]);
        assert_eq!(b.auth_key, None);
    }

    #[test]
    #[cfg(feature = "advertiseroutes")]
    fn variables_map_to_flags() {
        let b = boot(&[
            ("TS_AUTHKEY", "hskey-auth-x"),
            ("TS_HOSTNAME", "gw"),
            ("TS_ROUTES", "192.168.88.0/24, 10.0.0.0/8"),
            ("TS_ACCEPT_DNS", "true"),
            ("TS_LOGIN_SERVER", "https://hs.example/"),
            ("TS_STATE_DIR", "/data"),
            ("TS_SOCKET", "/tmp/ts.sock"),
            (
                "TS_EXTRA_ARGS",
                " --accept-routes  --advertise-tags=tag:router ",
            ),
            ("TS_TAILSCALED_EXTRA_ARGS", "--tun=ts0 --port=0"),
            ("TS_USERSPACE", "false"),
            ("TS_AUTH_ONCE", "1"),
        ])
        .unwrap();
        assert_eq!(
            b.daemon_args,
            os(&[
                "tailscaled",
                "--statedir=/data",
                "--socket=/tmp/ts.sock",
                "--tun=ts0",
                "--port=0"
            ])
        );
        assert_eq!(
            b.up_flags,
            [
                "--login-server=https://hs.example/",
                "--hostname=gw",
                "--advertise-routes=192.168.88.0/24, 10.0.0.0/8",
                "--accept-dns=true",
                "--accept-routes",
                "--advertise-tags=tag:router",
            ]
        );
        assert_eq!(b.auth_key.as_deref(), Some("hskey-auth-x"));
        assert_eq!(b.socket, PathBuf::from("/tmp/ts.sock"));
        let b = boot(&[("TS_AUTH_KEY", "k2")]).unwrap();
        assert_eq!(b.auth_key.as_deref(), Some("k2"), "Go's second spelling");
    }

    #[test]
    fn extra_args_win_over_derived_flags() {
        let b = boot(&[
            ("TS_ACCEPT_DNS", "true"),
            ("TS_HOSTNAME", "a"),
            (
                "TS_EXTRA_ARGS",
                "--accept-dns=false --hostname=b --login-server=http://h:8080",
            ),
        ])
        .unwrap();
        assert_eq!(
            b.up_flags,
            [
                "--accept-dns=false",
                "--hostname=b",
                "--login-server=http://h:8080"
            ]
        );
        let b = boot(&[("TS_EXTRA_ARGS", "--authkey=k")]).unwrap();
        assert_eq!(b.auth_key, None);
        assert_eq!(b.up_flags, ["--accept-dns=false", "--authkey=k"]);
    }

    #[test]
    fn empty_routes_clear_them_and_empty_values_are_unset() {
        let b = boot(&[
            ("TS_ROUTES", ""),
            ("TS_HOSTNAME", ""),
            ("TS_ACCEPT_DNS", ""),
        ])
        .unwrap();
        assert_eq!(b.up_flags, ["--advertise-routes=", "--accept-dns=false"]);
    }

    #[test]
    fn bad_values_are_refused_naming_the_variable() {
        for (vars, word) in [
            (&[("TS_ACCEPT_DNS", "maybe")][..], "TS_ACCEPT_DNS"),
            (&[("TS_AUTH_ONCE", "yes")][..], "TS_AUTH_ONCE"),
            (&[("TS_USERSPACE", "true")][..], "TS_USERSPACE"),
            (&[("TS_USERSPACE", "sometimes")][..], "TS_USERSPACE"),
            (&[("TS_ROUTES", "192.168.88.0/33")][..], "TS_ROUTES"),
            (&[("TS_ROUTES", "lan")][..], "TS_ROUTES"),
            (&[("TS_STATE_DIR", "data")][..], "TS_STATE_DIR"),
            (&[("TS_LOGIN_SERVER", "hs.example")][..], "TS_LOGIN_SERVER"),
            (&[("TS_HOSTNAME", "my gw")][..], "TS_HOSTNAME"),
            (&[("TS_DEST_IP", "10.0.0.1")][..], "TS_DEST_IP"),
            (&[("TS_ENABLE_METRICS", "true")][..], "TS_ENABLE_METRICS"),
            (
                &[
                    ("TS_LOGIN_SERVER", "https://a"),
                    ("TS_EXTRA_ARGS", "--login-server=https://b"),
                ][..],
                "TS_LOGIN_SERVER",
            ),
            (
                &[("TS_AUTHKEY", "a"), ("TS_EXTRA_ARGS", "--auth-key=b")][..],
                "TS_AUTHKEY",
            ),
        ] {
            let e = boot(vars).unwrap_err();
            assert!(e.contains(word), "{vars:?}: {e}");
        }
        // An unsupported switch set to false asks for nothing.
        assert!(boot(&[("TS_ENABLE_METRICS", "false")]).is_ok());
    }

    #[test]
    fn arguments_are_refused_with_where_they_go() {
        assert!(no_arguments(&os(&["/usr/local/bin/containerboot"])).is_ok());
        assert!(no_arguments(&os(&["containerboot"])).is_ok());
        let e = no_arguments(&os(&["containerboot", "--statedir=/var/lib/tailscale"])).unwrap_err();
        assert!(
            e.contains("--statedir") && e.contains("TS_TAILSCALED_EXTRA_ARGS"),
            "{e}"
        );
    }

    #[test]
    fn the_auth_key_never_appears_in_errors() {
        let e = boot(&[
            ("TS_AUTHKEY", "hskey-auth-secret"),
            ("TS_ACCEPT_DNS", "maybe"),
        ])
        .unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn forwarding_is_turned_on_or_reported() {
        let root = std::env::temp_dir().join(format!("cb-fwd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let v4 = root.join("proc/sys/net/ipv4");
        let v6 = root.join("proc/sys/net/ipv6/conf/all");
        std::fs::create_dir_all(&v4).unwrap();
        std::fs::create_dir_all(&v6).unwrap();
        std::fs::write(v4.join("ip_forward"), "0\n").unwrap();
        std::fs::write(v6.join("forwarding"), "1\n").unwrap();
        assert!(enable_forwarding(&root).is_empty());
        assert_eq!(
            std::fs::read_to_string(v4.join("ip_forward")).unwrap(),
            "1\n"
        );
        // A knob that cannot be written (here: its directory is missing) is one clear line.
        std::fs::remove_dir_all(&v6).unwrap();
        let problems = enable_forwarding(&root);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("net.ipv6.conf.all.forwarding"),
            "{problems:?}"
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}

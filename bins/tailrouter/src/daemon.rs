//! The `tailscaled` personality: flags, configuration checks and the daemon's life cycle.
//!
//! Flags keep Tailscale's names. Go's flag package accepts `-state=x` as well as `--state=x`,
//! and router scripts use both, so single-dash long flags are accepted too.

use clap::{CommandFactory, Parser};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Default directory for the state file, as in Tailscale's Linux packages.
const DEFAULT_STATEDIR: &str = "/var/lib/tailscale";

#[derive(Debug, Parser)]
#[command(
    name = "tailscaled",
    about = "tailrouter daemon: joins a tailnet and routes for it",
    disable_version_flag = true,
    // Like Go's flag package: a repeated flag takes its last value, so a container's CMD
    // defaults can be overridden by flags appended after them.
    args_override_self = true
)]
pub(crate) struct Args {
    /// State file path, or `mem:` for an ephemeral node that stores nothing (default:
    /// `<statedir>/tailscaled.state`). The help text is given explicitly, in clap's style.
    #[arg(
        long,
        value_name = "PATH|mem:",
        help = "State file path, or `mem:` for an ephemeral node that stores nothing [default: <statedir>/tailscaled.state]"
    )]
    state: Option<String>,

    /// Directory for the state file
    #[arg(long, value_name = "DIR")]
    statedir: Option<PathBuf>,

    /// Unix socket of the LocalAPI
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/run/tailscale/tailscaled.sock"
    )]
    socket: PathBuf,

    /// Name of the TUN device
    #[arg(long, value_name = "NAME", default_value = "tailscale0")]
    tun: String,

    /// UDP port for WireGuard and peer-to-peer traffic (0 picks one)
    #[arg(long, default_value_t = 41641)]
    port: u16,

    /// The resolv.conf that --accept-dns manages (direct mode); empty: never touch one
    #[arg(long, value_name = "PATH", default_value = "/etc/resolv.conf")]
    resolv_conf: String,

    /// Log verbosity: 0 is quiet, 1 debug, 2 everything [default: $TS_LOG_VERBOSITY or 0]
    #[arg(long, allow_negative_numbers = true)]
    verbose: Option<i64>,

    /// Accepted for compatibility: tailrouter never uploads logs
    #[arg(long)]
    no_logs_no_support: bool,

    /// Print the version and the feature tags of this build, then exit
    #[arg(long)]
    version: bool,
}

/// Where state lives.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StateLocation {
    /// Nothing is stored: the node registers as ephemeral.
    Memory,
    /// One file, written atomically.
    File(PathBuf),
}

/// The daemon's configuration after checking the flags.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) state: StateLocation,
    pub(crate) socket: PathBuf,
    pub(crate) tun: String,
    pub(crate) port: u16,
    /// `None`: DNS settings are never written to the OS.
    pub(crate) resolv_conf: Option<PathBuf>,
}

/// Turns `-name` and `-name=value` into `--name…` for the long flags we know.
fn go_style(args: Vec<OsString>) -> Vec<OsString> {
    let cmd = Args::command();
    let longs: Vec<&str> = cmd.get_arguments().filter_map(|a| a.get_long()).collect();
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let Some(s) = a.to_str().filter(|_| i > 0) else {
                return a;
            };
            match s.strip_prefix('-') {
                Some(rest) if !rest.starts_with('-') => {
                    let name = rest.split('=').next().unwrap_or(rest);
                    if longs.contains(&name) {
                        OsString::from(format!("-{s}"))
                    } else {
                        a
                    }
                }
                _ => a,
            }
        })
        .collect()
}

/// Checks the flags and derives the configuration; every refusal names the flag.
pub(crate) fn config(args: &Args) -> Result<Config, String> {
    let state = match (&args.state, &args.statedir) {
        (Some(s), _) if s == "mem:" => StateLocation::Memory,
        (Some(s), _) if s.starts_with("mem:") => {
            return Err(format!("--state={s}: only `mem:` alone is understood"));
        }
        (Some(s), _) if s.contains(':') && !s.starts_with('/') && !s.starts_with('.') => {
            return Err(format!(
                "--state={s}: state stores other than a file path or `mem:` are not supported"
            ));
        }
        (Some(s), _) if s.is_empty() => return Err("--state must not be empty".into()),
        (Some(s), _) => StateLocation::File(PathBuf::from(s)),
        (None, Some(d)) => StateLocation::File(d.join("tailscaled.state")),
        (None, None) => StateLocation::File(Path::new(DEFAULT_STATEDIR).join("tailscaled.state")),
    };
    check_tun_name(&args.tun)?;
    if args.socket.as_os_str().is_empty() {
        return Err("--socket must not be empty".into());
    }
    Ok(Config {
        state,
        socket: args.socket.clone(),
        tun: args.tun.clone(),
        port: args.port,
        resolv_conf: (!args.resolv_conf.is_empty()).then(|| PathBuf::from(&args.resolv_conf)),
    })
}

/// Linux interface names: 1 to 15 bytes, no `/`, no whitespace, not `.` or `..`.
fn check_tun_name(name: &str) -> Result<(), String> {
    if name == "userspace-networking" {
        return Err(
            "--tun=userspace-networking: tailrouter routes through a kernel TUN device; give a device name"
                .into(),
        );
    }
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "--tun={name:?}: an interface name has 1 to 15 bytes"
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(format!("--tun={name:?} is not a valid interface name"));
    }
    Ok(())
}

pub(crate) fn main(args: Vec<OsString>) -> ExitCode {
    let args = match Args::try_parse_from(go_style(args)) {
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
    if args.version {
        print!("{}", crate::version_text());
        return ExitCode::SUCCESS;
    }
    crate::logging::init(args.verbose);
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tailscaled: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: Config) -> Result<(), String> {
    use ipn::node::{Node, TunSource};
    use ipn::state::{FileStore, MemStore, StateStore};

    tracing::info!(
        "tailrouter {} starting (tags: {})",
        ipn::VERSION,
        ipn::tags_line()
    );
    tracing::debug!(
        state = ?cfg.state,
        socket = %cfg.socket.display(),
        tun = %cfg.tun,
        port = cfg.port,
        "configuration"
    );
    let store: Box<dyn StateStore> = match &cfg.state {
        StateLocation::Memory => Box::new(MemStore::new()),
        StateLocation::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                create_private_dir(dir)?;
            }
            Box::new(FileStore::new(path))
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    // The composition is the core's (ipn::node, the same the embedding example uses): a
    // damaged state file stops the daemon before anything touches the host, then the data
    // plane takes the TUN device and the UDP port, then control and the LocalAPI start.
    let builder = Node::builder()
        .state_store(store)
        .ephemeral(cfg.state == StateLocation::Memory)
        .tun(TunSource::open(&cfg.tun))
        .port(cfg.port)
        .resolv_conf(cfg.resolv_conf.clone())
        .localapi_socket(Some(cfg.socket.clone()));
    rt.block_on(async {
        // Watched from before the start: a signal during start-up stops the node once it is
        // up, with the host put back, instead of killing it half-way.
        let stop = Stopper::new()?;
        let node = builder.start().await.map_err(|e| e.to_string())?;
        stop.wait().await;
        // LocalAPI socket removed, port mapping released, and the addresses, routes and
        // rules added to the host removed on the way out.
        node.shutdown().await;
        Ok::<(), String>(())
    })
}

/// Creates the state directory readable by its owner only, as state holds private keys.
fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create state directory {}: {e}", dir.display()))
}

/// Watches SIGTERM (container stop) and SIGINT (Ctrl-C), installed before serving so a
/// signal is never missed.
struct Stopper {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stopper {
    fn new() -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Stopper {
            term: signal(SignalKind::terminate())
                .map_err(|e| format!("cannot watch SIGTERM: {e}"))?,
            int: signal(SignalKind::interrupt())
                .map_err(|e| format!("cannot watch SIGINT: {e}"))?,
        })
    }

    /// Returns on the first of the two signals.
    async fn wait(mut self) {
        let which = std::future::poll_fn(|cx| {
            if self.term.poll_recv(cx).is_ready() {
                std::task::Poll::Ready("SIGTERM")
            } else if self.int.poll_recv(cx).is_ready() {
                std::task::Poll::Ready("SIGINT")
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        tracing::info!("{which}: shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args, clap::Error> {
        let mut all = vec![OsString::from("tailscaled")];
        all.extend(v.iter().map(OsString::from));
        Args::try_parse_from(go_style(all))
    }

    #[test]
    fn defaults() {
        let c = config(&parse(&[]).unwrap()).unwrap();
        assert_eq!(
            c.state,
            StateLocation::File("/var/lib/tailscale/tailscaled.state".into())
        );
        assert_eq!(c.tun, "tailscale0");
        assert_eq!(c.port, 41641);
        assert_eq!(
            c.socket,
            PathBuf::from("/var/run/tailscale/tailscaled.sock")
        );
        assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
        let off = config(&parse(&["--resolv-conf="]).unwrap()).unwrap();
        assert_eq!(off.resolv_conf, None, "empty: never touch one");
    }

    #[test]
    fn go_style_single_dash_flags() {
        let a = parse(&["-state=mem:", "-tun", "tr0", "-port=0"]).unwrap();
        let c = config(&a).unwrap();
        assert_eq!(c.state, StateLocation::Memory);
        assert_eq!(c.tun, "tr0");
        assert_eq!(c.port, 0);
    }

    #[test]
    fn statedir_places_the_state_file() {
        let c = config(&parse(&["--statedir=/data"]).unwrap()).unwrap();
        assert_eq!(
            c.state,
            StateLocation::File("/data/tailscaled.state".into())
        );
    }

    #[test]
    fn bad_flags_are_refused_with_their_name() {
        assert!(parse(&["--port=70000"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        for (flags, word) in [
            (&["--tun=waytoolonginterfacename"][..], "--tun"),
            (&["--tun=a/b"][..], "--tun"),
            (&["--tun=userspace-networking"][..], "kernel TUN"),
            (&["--state=mem:x"][..], "mem:"),
            (&["--state=kube:secret"][..], "not supported"),
            (&["--state="][..], "--state"),
        ] {
            let e = config(&parse(flags).unwrap()).unwrap_err();
            assert!(e.contains(word), "{flags:?}: {e}");
        }
    }

    #[test]
    fn a_repeated_flag_takes_its_last_value() {
        let c = config(&parse(&["--tun=first0", "-tun=second0"]).unwrap()).unwrap();
        assert_eq!(c.tun, "second0");
    }

    #[test]
    fn negative_single_dash_values_are_not_flags() {
        let a = parse(&["--verbose", "-1"]).unwrap();
        assert_eq!(a.verbose, Some(-1));
    }
}

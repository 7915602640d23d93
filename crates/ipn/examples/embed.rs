//! Embedding the node in firmware: a program that opens its own TUN device and keeps the
//! node's state in its own store, then hands both to the core's builder (`ipn::node`).
//!
//! ```text
//! embed [--login-server=URL] [--auth-key=KEY] [--hostname=NAME] [--tun=NAME]
//!       [--nvram=PATH] [--port=N] [--socket=PATH] [--verbose] [--version]
//! ```
//!
//! - The TUN device is opened here, as firmware does (`/dev/net/tun`, `TUNSETIFF`, MTU, link
//!   up), and only its file descriptor goes to the node ([`TunSource::fd`]).
//! - The state lives in an "NVRAM" partition: one file standing for a flash region, written
//!   whole and atomically, with a callback on every write ([`Nvram`], the [`StateStore`]
//!   trait). Each write prints `nvram: saved N bytes (write #K)`.
//! - With `--login-server` and `--auth-key` the node logs in unattended; without, it waits in
//!   NeedsLogin. It prints its state whenever it changes, and its status once Running, until
//!   SIGINT (Ctrl-C) or SIGTERM; then it shuts down and puts the host back.
//!
//! Build with the tags the firmware wants; with `osrouter` the node puts its addresses and
//! routes on the TUN interface itself:
//!
//! ```text
//! cargo build -p ipn --example embed --features osrouter,dns
//! ```

use ipn::node::{Login, Node, TunConfig, TunSource, open_tun_fd};
use ipn::state::{StateError, StateStore};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

/// The node's state in a firmware "NVRAM" region: here one file, replaced whole and
/// atomically (write a sibling, fsync, rename), as a flash partition with two banks would be.
/// `on_write` is the firmware's hook (commit a bank, bump a counter, log).
struct Nvram {
    path: PathBuf,
    on_write: Box<dyn Fn(usize) + Send + Sync>,
    /// Serialises writes; the core writes rarely (first start, login, key rotation, logout,
    /// prefs change) but may from two tasks.
    lock: Mutex<()>,
}

impl Nvram {
    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> StateError + '_ {
        move |source| StateError::Io {
            path: self.describe(),
            op,
            source,
        }
    }
}

impl StateStore for Nvram {
    fn describe(&self) -> String {
        format!("nvram:{}", self.path.display())
    }

    fn read(&self) -> Result<Option<Vec<u8>>, StateError> {
        match std::fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("read")(e)),
        }
    }

    /// The contract: store `bytes` atomically (a crash leaves the old or the new state,
    /// never a mix), skip the write when they equal what is stored, and say whether it wrote.
    fn write(&self, bytes: &[u8]) -> Result<bool, StateError> {
        let _g = self
            .lock
            .lock()
            .map_err(|_| self.io("lock")(std::io::Error::other("a writer panicked")))?;
        if std::fs::read(&self.path).is_ok_and(|old| old == bytes) {
            return Ok(false);
        }
        let tmp = self.path.with_extension("new");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                // The state holds private keys.
                .mode(0o600)
                .open(&tmp)
                .map_err(self.io("create"))?;
            f.write_all(bytes).map_err(self.io("write"))?;
            f.sync_all().map_err(self.io("sync"))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(self.io("rename"))?;
        (self.on_write)(bytes.len());
        Ok(true)
    }
}

struct Args {
    login: Login,
    tun: String,
    nvram: PathBuf,
    port: u16,
    socket: Option<PathBuf>,
    verbose: bool,
    version: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        login: Login::default(),
        tun: "embed0".into(),
        nvram: PathBuf::from("embed.nvram"),
        port: 0,
        socket: None,
        verbose: false,
        version: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        if name == "--verbose" {
            a.verbose = true;
            continue;
        }
        if name == "--version" {
            a.version = true;
            continue;
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--login-server" => a.login.control_url = Some(value()?),
            "--auth-key" => a.login.auth_key = Some(value()?),
            "--hostname" => a.login.hostname = Some(value()?),
            "--tun" => a.tun = value()?,
            "--nvram" => a.nvram = PathBuf::from(value()?),
            "--port" => {
                a.port = value()?
                    .parse()
                    .map_err(|_| "--port takes a number from 0 to 65535".to_string())?
            }
            "--socket" => a.socket = Some(PathBuf::from(value()?)),
            _ => return Err(format!("unknown argument {arg:?} (see the example's doc)")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("embed: {e}");
            return ExitCode::from(2);
        }
    };
    if args.version {
        // The tags this example was built with, in `tailscaled --version`'s words.
        say(&format!(
            "embed {}\ntags: {}",
            ipn::VERSION,
            ipn::tags_line()
        ));
        return ExitCode::SUCCESS;
    }
    // Logging is the embedder's: here tracing's fmt subscriber on stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(if args.verbose {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        })
        .init();
    // The node needs tokio with I/O and time; one thread is enough for a router.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("embed: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn run(args: Args) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    say(&format!(
        "embed: ipn {} (tags: {})",
        ipn::VERSION,
        ipn::tags_line()
    ));
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;

    // 1. The firmware's own TUN device: opened here, only the descriptor goes to the node.
    let fd = open_tun_fd(&TunConfig {
        name: args.tun.clone(),
        mtu: 1280,
    })
    .map_err(|e| format!("cannot open TUN {}: {e}", args.tun))?;
    say(&format!("embed: opened TUN {}", args.tun));

    // 2. The firmware's own state store.
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = std::sync::Arc::clone(&writes);
    let store = Nvram {
        path: args.nvram.clone(),
        on_write: Box::new(move |len| {
            let k = w.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            say(&format!("nvram: saved {len} bytes (write #{k})"));
        }),
        lock: Mutex::new(()),
    };

    // 3. The node.
    let mut builder = Node::builder()
        .state_store(Box::new(store))
        .tun(TunSource::fd(fd))
        .port(args.port)
        .localapi_socket(args.socket.clone());
    if args.login.control_url.is_some() || args.login.auth_key.is_some() {
        builder = builder.login(args.login.clone());
    }
    let node = builder.start().await.map_err(|e| e.to_string())?;
    say(&format!("embed: node started, UDP port {}", node.port()));

    // 4. Watch it until a signal.
    let mut last = None;
    let mut shown_running = false;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let which = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = tick.tick() => {}
        }
        let state = node.state();
        if last != Some(state) {
            say(&format!("embed: state {}", state.as_str()));
            last = Some(state);
        }
        let st = node.status();
        if !st.auth_url.is_empty() && !shown_running {
            say(&format!("embed: to log in, visit {}", st.auth_url));
        }
        if state == ipn::localapi::BackendState::Running
            && !shown_running
            && !st.tailscale_ips.is_empty()
        {
            shown_running = true;
            let ips: Vec<String> = st.tailscale_ips.iter().map(ToString::to_string).collect();
            say(&format!("embed: addresses {}", ips.join(" ")));
            for p in st.peer.values() {
                let ips: Vec<String> = p.tailscale_ips.iter().map(ToString::to_string).collect();
                say(&format!("embed: peer {} {}", p.host_name, ips.join(" ")));
            }
        }
    };
    say(&format!("embed: {which}: shutting down"));
    node.shutdown().await;
    say(&format!(
        "embed: stopped after {} state writes to {}",
        writes.load(std::sync::atomic::Ordering::Relaxed),
        Path::new(&args.nvram).display()
    ));
    Ok(())
}

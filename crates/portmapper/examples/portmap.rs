//! Maps a UDP port on the default gateway and prints the mapping as one line.
//!
//! ```text
//! portmap [--protocol any|nat-pmp|pcp|upnp] [--port 41641] [--gateway IP] [--local IP]
//!         [--lifetime SECS] [--mark MARK] [--renew] [--hold SECS] [-v]
//! ```
//!
//! Prints `probe ...`, then `mapped protocol=P external=IP:PORT internal=IP:PORT
//! gateway=IP lifetime=SECS`, with `--renew` a `renewed ...` line after renewing at once,
//! then holds the mapping until SIGTERM or SIGINT (at most `--hold` seconds, default 0),
//! releases it and prints `released`. Errors go to stderr with exit status 1.

#![allow(clippy::print_stdout)]

use portmapper::{Client, Config, Mapping, Protocol};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

struct Args {
    config: Config,
    renew: bool,
    hold: Duration,
    verbose: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut config = Config::new(41641);
    let mut renew = false;
    let mut hold = Duration::ZERO;
    let mut verbose = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--protocol" => {
                let v = value("--protocol")?;
                config.protocols = if v == "any" {
                    Protocol::ALL.to_vec()
                } else {
                    vec![v.parse::<Protocol>().map_err(|e| e.to_string())?]
                };
            }
            "--port" => {
                config.internal_port = value("--port")?
                    .parse()
                    .map_err(|e| format!("--port: {e}"))?
            }
            "--gateway" => {
                config.gateway = Some(
                    value("--gateway")?
                        .parse::<Ipv4Addr>()
                        .map_err(|e| format!("--gateway: {e}"))?,
                )
            }
            "--local" => {
                config.local_ip = Some(
                    value("--local")?
                        .parse::<Ipv4Addr>()
                        .map_err(|e| format!("--local: {e}"))?,
                )
            }
            "--lifetime" => {
                let s: u64 = value("--lifetime")?
                    .parse()
                    .map_err(|e| format!("--lifetime: {e}"))?;
                config.lifetime = Duration::from_secs(s);
            }
            "--mark" => {
                let v = value("--mark")?;
                config.socket_mark = match v.strip_prefix("0x") {
                    Some(hex) => u32::from_str_radix(hex, 16),
                    None => v.parse(),
                }
                .map_err(|e| format!("--mark: {e}"))?;
            }
            "--renew" => renew = true,
            "--hold" => {
                let s: u64 = value("--hold")?
                    .parse()
                    .map_err(|e| format!("--hold: {e}"))?;
                hold = Duration::from_secs(s);
            }
            "-v" => verbose = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        config,
        renew,
        hold,
        verbose,
    })
}

fn line(what: &str, m: &Mapping) -> String {
    format!(
        "{what} protocol={} external={} internal={} gateway={} lifetime={}",
        m.protocol,
        m.external,
        m.internal,
        m.gateway,
        m.lifetime.as_secs()
    )
}

async fn run(args: Args) -> Result<(), String> {
    let mut client = Client::new(args.config);
    let p = client.probe().await.map_err(|e| e.to_string())?;
    println!(
        "probe nat-pmp={} pcp={} upnp={} external-ip={}",
        p.nat_pmp,
        p.pcp,
        p.upnp,
        p.external_ip
            .map_or("none".to_string(), |ip| ip.to_string())
    );
    let m = client.map().await.map_err(|e| e.to_string())?;
    println!("{}", line("mapped", &m));
    if args.renew {
        let r = client.renew().await.map_err(|e| e.to_string())?;
        println!("{}", line("renewed", &r));
    }
    if !args.hold.is_zero() {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            () = tokio::time::sleep(args.hold) => {}
        }
    }
    client.release().await.map_err(|e| e.to_string())?;
    println!("released");
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("portmap: {e}");
            return ExitCode::from(2);
        }
    };
    if args.verbose {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portmap: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portmap: {e}");
            ExitCode::FAILURE
        }
    }
}

//! The `tailscale` personality: the command-line client, in builds with the `cli` tag.
//!
//! Commands keep Tailscale's names and output shapes. Those that talk to the daemon go through
//! the LocalAPI socket; they arrive with the LocalAPI (issue 3).

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::process::ExitCode;

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

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version and the feature tags of this build
    Version,
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
    match (args.version, args.command) {
        (true, _) | (false, Some(Command::Version)) => {
            print!("{}", crate::version_text());
            ExitCode::SUCCESS
        }
        (false, None) => {
            eprintln!("tailscale: a command is needed; see `tailscale --help`");
            ExitCode::from(2)
        }
    }
}

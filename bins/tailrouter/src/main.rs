//! The combined `tailscale` + `tailscaled` binary.
//!
//! The personality is chosen by the name it runs under (`argv[0]`), as Tailscale's combined
//! build does: `tailscaled` is the daemon, `tailscale` the CLI (in builds with the `cli` tag).
//! Under any other name (such as `tailrouter`), the first argument picks: `tailrouter
//! tailscaled …` or `tailrouter tailscale …`.

mod daemon;
mod logging;

#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "cli")]
mod containerboot;
#[cfg(feature = "shell")]
mod shell;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

/// Who we are for this run.
#[derive(Debug, PartialEq, Eq)]
enum Personality {
    Daemon,
    Cli,
    /// Configured by environment variables, for containers (docs/container.md).
    Containerboot,
    /// `sh`: a small shell for containers that hold nothing but this binary (`shell` tag).
    #[cfg(feature = "shell")]
    Shell,
}

/// Picks the personality from `argv[0]`, else from the first argument (which is then consumed).
fn personality(args: &mut Vec<OsString>) -> Result<Personality, String> {
    let by_name = |s: &OsString| match Path::new(s).file_name().and_then(|n| n.to_str()) {
        Some("tailscaled") => Some(Personality::Daemon),
        Some("tailscale") => Some(Personality::Cli),
        Some("containerboot") => Some(Personality::Containerboot),
        // `-sh` is how login(1) names a login shell.
        #[cfg(feature = "shell")]
        Some("sh" | "-sh") => Some(Personality::Shell),
        _ => None,
    };
    if let Some(p) = args.first().and_then(by_name) {
        return Ok(p);
    }
    match args.get(1).and_then(|a| a.to_str()) {
        Some("tailscaled" | "daemon") => {
            args.remove(0);
            Ok(Personality::Daemon)
        }
        Some("tailscale" | "cli") => {
            args.remove(0);
            Ok(Personality::Cli)
        }
        Some("containerboot") => {
            args.remove(0);
            Ok(Personality::Containerboot)
        }
        Some("--version" | "-version" | "version") => {
            print!("{}", version_text());
            Err(String::new())
        }
        _ => Err(
            "usage: tailrouter tailscaled [flags] | tailrouter tailscale <command> | tailrouter containerboot | tailrouter --version\n\
             (or run it as `tailscaled` or `tailscale` through a link of that name)"
                .into(),
        ),
    }
}

/// What `--version` prints: the version, then the tags this build has.
pub(crate) fn version_text() -> String {
    format!(
        "{}\n  tags: {}\n  commit: {}\n",
        ipn::VERSION,
        ipn::tags_line(),
        option_env!("TAILROUTER_COMMIT").unwrap_or("unknown")
    )
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    restore_comm(args.first());
    match personality(&mut args) {
        Ok(Personality::Daemon) => daemon::main(args),
        Ok(Personality::Cli) => cli_main(args),
        Ok(Personality::Containerboot) => containerboot_main(args),
        #[cfg(feature = "shell")]
        Ok(Personality::Shell) => shell::main(args),
        Err(msg) if msg.is_empty() => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::from(2)
        }
    }
}

/// Run by the image's launcher (docs/packaging.md, "The packed binary"), the process is named
/// by the kernel after the memfd it was executed from: `memfd:tailroute`, or on older kernels
/// the descriptor's number. `ps`, `pidof`
/// and `killall` expect the name it was run by, so it gets that back, as the kernel would
/// have set it: argv[0]'s last component, at most 15 bytes. Before any thread starts, as
/// threads take their name from the thread that makes them.
fn restore_comm(argv0: Option<&OsString>) {
    let Ok(comm) = std::fs::read_to_string("/proc/self/comm") else {
        return;
    };
    let comm = comm.trim_end();
    let from_memfd = comm.starts_with("memfd:")
        || (!comm.is_empty() && comm.bytes().all(|b| b.is_ascii_digit()));
    if !from_memfd {
        return;
    }
    if let Some(name) = argv0.map(Path::new).and_then(Path::file_name) {
        let b = name.as_encoded_bytes();
        let _ = std::fs::write("/proc/self/comm", &b[..b.len().min(15)]);
    }
}

#[cfg(feature = "cli")]
fn cli_main(args: Vec<OsString>) -> ExitCode {
    cli::main(args)
}

#[cfg(not(feature = "cli"))]
fn cli_main(_args: Vec<OsString>) -> ExitCode {
    eprintln!(
        "tailscale: this build has no CLI (the `cli` feature tag was left out); use the LocalAPI socket"
    );
    ExitCode::from(2)
}

#[cfg(feature = "cli")]
fn containerboot_main(args: Vec<OsString>) -> ExitCode {
    containerboot::main(args)
}

/// The boot runs `tailscale up` through the CLI's code, so it needs the `cli` tag.
#[cfg(not(feature = "cli"))]
fn containerboot_main(_args: Vec<OsString>) -> ExitCode {
    eprintln!(
        "containerboot: this build has no CLI (the `cli` feature tag was left out), which the boot uses for `tailscale up`"
    );
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn argv0_picks_personality() {
        let mut a = os(&["/usr/bin/tailscaled", "--state=mem:"]);
        assert_eq!(personality(&mut a), Ok(Personality::Daemon));
        assert_eq!(a.len(), 2, "argv0 choice consumes nothing");
        let mut a = os(&["tailscale", "status"]);
        assert_eq!(personality(&mut a), Ok(Personality::Cli));
        let mut a = os(&["/usr/local/bin/containerboot"]);
        assert_eq!(personality(&mut a), Ok(Personality::Containerboot));
        let mut a = os(&["tailrouter", "containerboot"]);
        assert_eq!(personality(&mut a), Ok(Personality::Containerboot));
        assert_eq!(a, os(&["containerboot"]));
    }

    #[test]
    fn subcommand_picks_personality_under_other_names() {
        let mut a = os(&["./tailrouter", "tailscaled", "--tun=tr0"]);
        assert_eq!(personality(&mut a), Ok(Personality::Daemon));
        assert_eq!(a, os(&["tailscaled", "--tun=tr0"]));
        let mut a = os(&["tailrouter", "tailscale", "version"]);
        assert_eq!(personality(&mut a), Ok(Personality::Cli));
        assert_eq!(a, os(&["tailscale", "version"]));
    }

    #[test]
    fn unknown_name_without_subcommand_is_a_usage_error() {
        let mut a = os(&["tailrouter", "bogus"]);
        let e = personality(&mut a).unwrap_err();
        assert!(e.starts_with("usage:"), "{e}");
        let mut a = os(&["tailrouter"]);
        assert!(personality(&mut a).is_err());
    }

    #[cfg(feature = "shell")]
    #[test]
    fn sh_by_argv0_is_the_shell() {
        for name in ["/bin/sh", "sh", "-sh"] {
            let mut a = os(&[name, "-c", "true"]);
            assert_eq!(personality(&mut a), Ok(Personality::Shell), "{name}");
            assert_eq!(a.len(), 3, "argv0 choice consumes nothing");
        }
        let mut a = os(&["/bin/shell"]);
        assert!(personality(&mut a).is_err());
    }

    #[test]
    fn names_that_merely_start_alike_do_not_match() {
        let mut a = os(&["tailscaled-old", "tailscale", "version"]);
        assert_eq!(personality(&mut a), Ok(Personality::Cli));
    }

    #[test]
    fn version_lists_tags_of_this_build() {
        let v = version_text();
        assert!(v.starts_with(ipn::VERSION));
        let tags = v
            .lines()
            .find_map(|l| l.trim().strip_prefix("tags: "))
            .unwrap();
        assert_eq!(tags.split(',').any(|t| t == "cli"), cfg!(feature = "cli"));
        assert_eq!(tags.split(',').any(|t| t == "dns"), cfg!(feature = "dns"));
    }
}

//! The iptables back-end: runs the `iptables` and `ip6tables` binaries found on PATH
//! (iptables-nft or iptables-legacy, whichever they are), as Go's router does through
//! go-iptables.
//!
//! Ours are three chains, `ts-input` and `ts-forward` in table `filter` and `ts-postrouting`
//! in table `nat`, plus (mode on) one jump to each at the top of INPUT, FORWARD and
//! POSTROUTING. Replacing a family's rules: create each chain or flush it, put the jumps in
//! (before the chains fill: old iptables-compat refused a jump to a chain holding a mark
//! match) or take them out (nodivert), append the rules. Removing: delete every jump to our
//! chains (however many an earlier run left), then flush and delete the chains. Nothing else
//! else in any table is touched.
//!
//! iptables-nft creates the tables and built-in chains it needs on first use (`ip filter` with
//! only INPUT and FORWARD, say), where iptables-legacy's exist once anything lists them. So
//! that removal leaves iptables-nft's view as it was, this back-end asks the kernel (over
//! nf_tables netlink) which of the tables and built-in chains it will touch are missing before
//! its first change, and on removal deletes those again, each only if it is empty (the kernel
//! checks, atomically: someone else's rule added meanwhile keeps it). iptables-legacy's tables
//! cannot be unloaded from a namespace; they stay, empty.
//!
//! Each command runs with `-w` (wait for the xtables lock) and at most 10 s.

use crate::Error;
use crate::netfilter::{
    Action, ActiveBackend, Backend, BackendError, Family, FamilyRules, Hook, IptablesFlavor, Match,
    Rule,
};
use crate::nftables::{Nft, Object};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to look when PATH lacks the sbin directories (as it may for a service).
const FALLBACK_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Upper bound on jumps removed from one built-in chain (an earlier run may have left several).
const MAX_JUMPS: usize = 16;

/// Finds `name` on PATH, then in the usual system directories.
pub(crate) fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(FALLBACK_DIRS.iter().map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if let Ok(m) = std::fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Some(p);
            }
        }
    }
    None
}

/// What one finished command said.
struct Outcome {
    success: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs `bin args`, waiting at most [`COMMAND_TIMEOUT`] (then killing it).
fn exec(bin: &Path, args: &[String]) -> io::Result<Outcome> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer within 10 s (is the xtables lock held?)",
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    // Our commands print little (far less than a pipe holds), so reading after the exit is
    // safe.
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let code = status
        .code()
        .map_or_else(|| status.to_string(), |c| c.to_string());
    Ok(Outcome {
        success: status.success(),
        status: code,
        stdout,
        stderr: stderr.trim().to_owned(),
    })
}

fn command_line(bin: &Path, args: &[String]) -> String {
    let name = bin.file_name().map_or_else(
        || bin.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    format!("{name} {}", args.join(" "))
}

/// Words in iptables' complaints that mean "this host cannot do that" (no ip6tables table, no
/// NAT module, no IPv6): IPv6 then degrades instead of failing.
const UNSUPPORTED_WORDS: [&str; 5] = [
    "Table does not exist",
    "can't initialize",
    "not supported",
    "No such file or directory",
    "Address family",
];

/// The iptables arguments of one match.
fn match_args(m: &Match, out: &mut Vec<String>) {
    let mut push = |a: &[&str]| out.extend(a.iter().map(|s| (*s).to_owned()));
    match m {
        Match::InIface(n) => push(&["-i", n]),
        Match::NotInIface(n) => push(&["!", "-i", n]),
        Match::OutIface(n) => push(&["-o", n]),
        Match::Src(p) => push(&["-s", &crate::netlink::masked(*p).to_string()]),
        Match::Mark { value, mask } => push(&["-m", "mark", "--mark", &mark(*value, *mask)]),
        Match::UdpDport(p) => push(&["-p", "udp", "--dport", &p.to_string()]),
        Match::NotEstablishedOrRelated => {
            push(&["-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED"])
        }
    }
}

fn mark(value: u32, mask: u32) -> String {
    format!("{value:#x}/{mask:#x}")
}

/// The arguments after `-A <chain>` for one rule.
pub(crate) fn rule_args(r: &Rule) -> Vec<String> {
    let mut out = Vec::new();
    for m in &r.matches {
        match_args(m, &mut out);
    }
    let target: Vec<String> = match r.action {
        Action::Accept => vec!["ACCEPT".into()],
        Action::Drop => vec!["DROP".into()],
        Action::Return => vec!["RETURN".into()],
        Action::Masquerade => vec!["MASQUERADE".into()],
        Action::SetMark { value, mask } => {
            vec!["MARK".into(), "--set-mark".into(), self::mark(value, mask)]
        }
    };
    out.push("-j".into());
    out.extend(target);
    out
}

fn table(h: Hook) -> &'static str {
    if h.is_nat() { "nat" } else { "filter" }
}

const HOOKS: [Hook; 3] = [Hook::Input, Hook::Forward, Hook::Postrouting];

/// The iptables binaries of both families.
#[derive(Debug)]
pub(crate) struct Iptables {
    v4: PathBuf,
    v6: Option<PathBuf>,
    flavor: IptablesFlavor,
    /// iptables-nft only: a netlink socket to see (and later delete) what it creates.
    nft: Option<Nft>,
    /// Per family: whether the objects below were looked up.
    looked: [bool; 2],
    /// iptables-nft tables and built-in chains that were missing before our first change.
    created: Vec<Object>,
}

/// The iptables-nft objects our commands may create: tables first, then their chains.
fn touched(f: Family) -> [Object; 5] {
    let o = |table, chain| Object {
        family: f,
        table,
        chain,
    };
    [
        o("filter", None),
        o("nat", None),
        o("filter", Some("INPUT")),
        o("filter", Some("FORWARD")),
        o("nat", Some("POSTROUTING")),
    ]
}

/// Whether the kernel honours NLM_F_NONREC on a table delete (Linux 4.15 and later); before,
/// a table delete empties the table, so none is sent.
fn kernel_checks_nonrec() -> bool {
    let Ok(rel) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut it = rel.trim().split(['.', '-']).map(|p| p.parse::<u32>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (4, 15),
        _ => false,
    }
}

fn idx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

impl Iptables {
    /// Finds `iptables` (required) and `ip6tables` (optional: IPv6 is skipped without it) and
    /// asks `iptables --version` which flavour they are.
    pub(crate) fn find() -> Result<Iptables, Error> {
        let v4 = find_binary("iptables").ok_or_else(|| Error::Command {
            command: "iptables".to_owned(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "not found on PATH or in /usr/sbin, /sbin, /usr/bin, /bin",
            ),
        })?;
        let args = vec!["--version".to_owned()];
        let out = exec(&v4, &args).map_err(|source| Error::Command {
            command: command_line(&v4, &args),
            source,
        })?;
        if !out.success {
            return Err(Error::CommandFailed {
                command: command_line(&v4, &args),
                status: out.status,
                stderr: out.stderr,
            });
        }
        let flavor = if out.stdout.contains("nf_tables") {
            IptablesFlavor::Nft
        } else if out.stdout.contains("legacy") {
            IptablesFlavor::Legacy
        } else {
            IptablesFlavor::Unknown
        };
        let nft = match flavor {
            IptablesFlavor::Nft => Nft::open().ok(),
            IptablesFlavor::Legacy | IptablesFlavor::Unknown => None,
        };
        Ok(Iptables {
            v4,
            v6: find_binary("ip6tables"),
            flavor,
            nft,
            looked: [false; 2],
            created: Vec::new(),
        })
    }

    /// Notes which iptables-nft objects are missing, once per family, before our first change.
    fn look(&mut self, f: Family) {
        if std::mem::replace(&mut self.looked[idx(f)], true) {
            return;
        }
        let Some(nft) = self.nft.as_mut() else {
            return;
        };
        for o in touched(f) {
            if let Ok(false) = nft.exists(o) {
                self.created.push(o);
            }
        }
    }

    /// Deletes, if empty, the iptables-nft objects of `f` that were missing before us.
    fn unmake(&mut self, f: Family) {
        let Some(nft) = self.nft.as_mut() else {
            return;
        };
        let tables_too = kernel_checks_nonrec();
        // Chains before the tables that hold them.
        let mine: Vec<Object> = (self.created.iter().copied())
            .filter(|o| o.family == f)
            .collect();
        for pass_tables in [false, true] {
            for o in mine.iter().filter(|o| o.chain.is_none() == pass_tables) {
                if o.chain.is_none() && !tables_too {
                    continue;
                }
                if let Err(e) = nft.delete_if_empty(*o) {
                    tracing::debug!("osrouter: {e}");
                }
            }
        }
        self.created.retain(|o| o.family != f);
        self.looked[idx(f)] = false;
    }

    fn bin(&self, f: Family) -> Result<&Path, BackendError> {
        match f {
            Family::V4 => Ok(&self.v4),
            Family::V6 => self.v6.as_deref().ok_or_else(|| {
                BackendError::Unsupported(Error::Command {
                    command: "ip6tables".to_owned(),
                    source: io::Error::new(io::ErrorKind::NotFound, "not found"),
                })
            }),
        }
    }

    /// Runs one command (with `-w`); `Ok(false)` when it ran and failed.
    fn try_run(&self, f: Family, args: &[&str]) -> Result<Outcome, BackendError> {
        let bin = self.bin(f)?;
        let mut all = vec!["-w".to_owned()];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        exec(bin, &all).map_err(|source| {
            BackendError::Failed(Error::Command {
                command: command_line(bin, &all),
                source,
            })
        })
    }

    /// Runs one command that must succeed.
    fn run(&self, f: Family, args: &[&str]) -> Result<(), BackendError> {
        let out = self.try_run(f, args)?;
        if out.success {
            return Ok(());
        }
        let bin = self.bin(f)?;
        let mut all = vec!["-w"];
        all.extend_from_slice(args);
        let all: Vec<String> = all.iter().map(|s| (*s).to_owned()).collect();
        let unsupported = UNSUPPORTED_WORDS.iter().any(|w| out.stderr.contains(w));
        let e = Error::CommandFailed {
            command: command_line(bin, &all),
            status: out.status,
            stderr: out.stderr,
        };
        Err(if unsupported {
            BackendError::Unsupported(e)
        } else {
            BackendError::Failed(e)
        })
    }

    fn chain_exists(&self, f: Family, h: Hook) -> Result<bool, BackendError> {
        Ok(self.try_run(f, &["-t", table(h), "-S", h.chain()])?.success)
    }

    fn delete_jumps(&self, f: Family, h: Hook) -> Result<(), BackendError> {
        for _ in 0..MAX_JUMPS {
            let args = ["-t", table(h), "-D", h.builtin(), "-j", h.chain()];
            if !self.try_run(f, &args)?.success {
                break;
            }
        }
        Ok(())
    }
}

impl Backend for Iptables {
    fn replace(&mut self, rules: &FamilyRules) -> Result<(), BackendError> {
        let f = rules.family;
        self.bin(f)?;
        self.look(f);
        for c in &rules.chains {
            let (t, name) = (table(c.hook), c.hook.chain());
            if self.chain_exists(f, c.hook)? {
                self.run(f, &["-t", t, "-F", name])?;
            } else {
                self.run(f, &["-t", t, "-N", name])?;
            }
        }
        for c in &rules.chains {
            let (t, b, name) = (table(c.hook), c.hook.builtin(), c.hook.chain());
            if rules.divert {
                // Exit status 1 from -C: no such rule (yet).
                if !self.try_run(f, &["-t", t, "-C", b, "-j", name])?.success {
                    self.run(f, &["-t", t, "-I", b, "1", "-j", name])?;
                }
            } else {
                self.delete_jumps(f, c.hook)?;
            }
        }
        for c in &rules.chains {
            let (t, name) = (table(c.hook), c.hook.chain());
            for r in &c.rules {
                let args = rule_args(r);
                let mut all = vec!["-t", t, "-A", name];
                all.extend(args.iter().map(String::as_str));
                self.run(f, &all)?;
            }
        }
        Ok(())
    }

    fn remove(&mut self, f: Family) -> Result<(), BackendError> {
        self.bin(f)?;
        let mut first = None;
        for h in HOOKS {
            let step = self.delete_jumps(f, h).and_then(|()| {
                if self.chain_exists(f, h)? {
                    self.run(f, &["-t", table(h), "-F", h.chain()])?;
                    self.run(f, &["-t", table(h), "-X", h.chain()])?;
                }
                Ok(())
            });
            if let Err(e) = step {
                first.get_or_insert(e);
            }
        }
        if first.is_none() {
            self.unmake(f);
        }
        first.map_or(Ok(()), Err)
    }

    fn kind(&self) -> ActiveBackend {
        ActiveBackend::Iptables(self.flavor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netfilter::{NetfilterConfig, family_rules};

    #[test]
    fn go_rules_as_iptables_arguments() {
        let cfg = NetfilterConfig {
            magicsock_port: 41641,
            stateful_filtering: true,
            ..Default::default()
        };
        let addrs = ["100.64.0.7".parse().unwrap()];
        let r = family_rules(Family::V4, "ts0", &cfg, &addrs);
        let lines: Vec<String> = r
            .chains
            .iter()
            .flat_map(|c| {
                c.rules
                    .iter()
                    .map(|r| format!("-A {} {}", c.hook.chain(), rule_args(r).join(" ")))
            })
            .collect();
        assert_eq!(
            lines,
            [
                "-A ts-input -i lo -s 100.64.0.7/32 -j ACCEPT",
                "-A ts-input -i ts0 -j ACCEPT",
                "-A ts-input -p udp --dport 41641 -j ACCEPT",
                "-A ts-input ! -i ts0 -s 100.115.92.0/23 -j RETURN",
                "-A ts-input ! -i ts0 -s 100.64.0.0/10 -j DROP",
                "-A ts-forward -i ts0 -j MARK --set-mark 0x40000/0xff0000",
                "-A ts-forward -m mark --mark 0x40000/0xff0000 -j ACCEPT",
                "-A ts-forward -o ts0 -s 100.64.0.0/10 -j DROP",
                "-A ts-forward -o ts0 -m conntrack ! --ctstate ESTABLISHED,RELATED -j DROP",
                "-A ts-forward -o ts0 -j ACCEPT",
                "-A ts-postrouting -m mark --mark 0x40000/0xff0000 -j MASQUERADE",
            ]
        );
    }

    #[test]
    fn finds_binaries_on_path_or_not() {
        assert!(find_binary("sh").is_some());
        assert!(find_binary("no-such-binary-here").is_none());
    }
}

//! The `sh` personality (feature tag `shell`): a small shell for a container image that holds
//! nothing but this binary. RouterOS's `/container/shell` runs `/bin/sh`; the image links it
//! here, so a router owner gets a prompt from which `tailscale status` works.
//!
//! What it does: reads commands from `-c STRING`, a script file, or stdin line by line (a
//! prompt when stdin is a terminal or with `-i`); splits words with `'…'`, `"…"` and `\`;
//! expands `$NAME`, `${NAME}`, `$?` and `$$`; runs `;`, `&&`, `||` and newlines; finds
//! programs through `$PATH`; and has the builtins a router owner needs to look around
//! (`help` lists them). What it refuses with a message: pipes, redirection, background jobs,
//! command substitution. There is no globbing, no field splitting of expansions, no job
//! control and no line editing beyond the terminal's own.
//!
//! The parser ([`parse`]) is separate from execution, so it is unit-tested on strings.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `$PATH` when the environment has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const HELP: &str = "tailrouter sh: a small shell for the container.
  sh                 read commands from stdin (a prompt on a terminal, or with -i)
  sh -c 'COMMANDS'   run COMMANDS
  sh FILE            run the commands in FILE
Syntax: words split at blanks; '...' and \"...\" quote, \\ escapes; $NAME, ${NAME}, $? and $$
expand; NAME=value assigns; commands join with ; && || or newlines; # starts a comment.
Not supported: pipes, < > redirection, & background jobs, `...` and $(...), globs.
Builtins: cat [FILE...]  cd [DIR|-]  echo [-n] [WORD...]  env  exit [N]  export [NAME[=V]...]
  false  help  kill [-SIG] PID...  kill -l  ls [-la] [PATH...]  ps  pwd  true  unset NAME...
Programs are found through $PATH: try `tailscale status` or `tailscaled --version`.
";

/// One piece of a word: text as written, or a variable expanded when the command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(String),
}

/// A word before expansion. `quoted` words survive expanding to nothing (`""` is an argument).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Word {
    pieces: Vec<Piece>,
    quoted: bool,
}

impl Word {
    fn push_char(&mut self, c: char) {
        match self.pieces.last_mut() {
            Some(Piece::Text(t)) => t.push(c),
            _ => self.pieces.push(Piece::Text(c.to_string())),
        }
    }

    /// `NAME` and the value's pieces, when the word is an assignment `NAME=value`.
    fn assignment(&self) -> Option<(&str, Word)> {
        let Some(Piece::Text(first)) = self.pieces.first() else {
            return None;
        };
        let (name, rest) = first.split_once('=')?;
        if !is_name(name) {
            return None;
        }
        let mut value = Word {
            pieces: Vec::new(),
            quoted: true,
        };
        if !rest.is_empty() {
            value.pieces.push(Piece::Text(rest.to_string()));
        }
        value.pieces.extend(self.pieces[1..].iter().cloned());
        Some((name, value))
    }
}

/// How a command is joined to the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Join {
    /// First command, `;` or newline: always runs.
    Always,
    /// `&&`: runs if the previous one succeeded.
    IfOk,
    /// `||`: runs if the previous one failed.
    IfFailed,
}

/// One simple command: its words and how it joins the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cmd {
    join: Join,
    words: Vec<Word>,
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Collects words and commands while the parser walks the input.
struct Builder {
    cmds: Vec<Cmd>,
    words: Vec<Word>,
    word: Option<Word>,
    join: Join,
}

impl Builder {
    fn word(&mut self) -> &mut Word {
        self.word.get_or_insert_with(Word::default)
    }

    fn end_word(&mut self) {
        if let Some(w) = self.word.take() {
            self.words.push(w);
        }
    }

    /// Ends the current command at a separator; `next` is how the following one joins.
    fn end_cmd(&mut self, next: Join, sep: &str) -> Result<(), String> {
        self.end_word();
        if self.words.is_empty() {
            if next != Join::Always {
                return Err(format!("syntax error: `{sep}` needs a command before it"));
            }
            if self.join != Join::Always {
                return Err(format!(
                    "syntax error: `{}` needs a command after it",
                    join_str(self.join)
                ));
            }
        } else {
            self.cmds.push(Cmd {
                join: self.join,
                words: std::mem::take(&mut self.words),
            });
        }
        self.join = next;
        Ok(())
    }
}

fn join_str(j: Join) -> &'static str {
    match j {
        Join::Always => ";",
        Join::IfOk => "&&",
        Join::IfFailed => "||",
    }
}

/// Parses a `$` expansion (the `$` already read) into `w`.
fn dollar(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    w: &mut Word,
) -> Result<(), String> {
    match chars.peek().copied() {
        Some('{') => {
            chars.next();
            let mut name = String::new();
            loop {
                match chars.next() {
                    None => return Err("syntax error: unterminated `${`".into()),
                    Some('}') => break,
                    Some(c) => name.push(c),
                }
            }
            if !is_name(&name) && !is_special(&name) {
                return Err(format!("bad substitution: `${{{name}}}`"));
            }
            w.pieces.push(Piece::Var(name));
        }
        Some(c @ ('?' | '$' | '0'..='9')) => {
            chars.next();
            w.pieces.push(Piece::Var(c.to_string()));
        }
        Some('(') => return Err("command substitution `$(...)` is not supported".into()),
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            w.pieces.push(Piece::Var(name));
        }
        // A `$` before anything else is itself.
        _ => w.push_char('$'),
    }
    Ok(())
}

fn is_special(name: &str) -> bool {
    name == "?" || name == "$" || (name.len() == 1 && name.as_bytes()[0].is_ascii_digit())
}

/// Parses a script into simple commands. Every malformed input is an error message.
fn parse(src: &str) -> Result<Vec<Cmd>, String> {
    let mut b = Builder {
        cmds: Vec::new(),
        words: Vec::new(),
        word: None,
        join: Join::Always,
    };
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\r' => b.end_word(),
            '\n' | ';' => b.end_cmd(Join::Always, ";")?,
            '&' if chars.peek() == Some(&'&') => {
                chars.next();
                b.end_cmd(Join::IfOk, "&&")?;
            }
            '|' if chars.peek() == Some(&'|') => {
                chars.next();
                b.end_cmd(Join::IfFailed, "||")?;
            }
            '&' => return Err("background jobs (`&`) are not supported".into()),
            '|' => return Err("pipes (`|`) are not supported".into()),
            '<' | '>' => return Err("redirection (`<`, `>`) is not supported".into()),
            '`' => return Err("command substitution (`...`) is not supported".into()),
            '#' if b.word.is_none() => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '\'' => {
                let w = b.word();
                w.quoted = true;
                loop {
                    match chars.next() {
                        None => return Err("syntax error: unterminated single quote".into()),
                        Some('\'') => break,
                        Some(c) => w.push_char(c),
                    }
                }
            }
            '"' => {
                let w = b.word();
                w.quoted = true;
                loop {
                    match chars.next() {
                        None => return Err("syntax error: unterminated double quote".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return Err("syntax error: unterminated double quote".into()),
                            Some('\n') => {}
                            Some(c @ ('$' | '`' | '"' | '\\')) => w.push_char(c),
                            Some(c) => {
                                w.push_char('\\');
                                w.push_char(c);
                            }
                        },
                        Some('$') => dollar(&mut chars, w)?,
                        Some('`') => {
                            return Err("command substitution (`...`) is not supported".into());
                        }
                        Some(c) => w.push_char(c),
                    }
                }
            }
            '\\' => match chars.next() {
                None => return Err("syntax error: a backslash at the end escapes nothing".into()),
                // A line continuation.
                Some('\n') => {}
                Some(c) => {
                    let w = b.word();
                    w.quoted = true;
                    w.push_char(c);
                }
            },
            '$' => dollar(&mut chars, b.word())?,
            c => b.word().push_char(c),
        }
    }
    b.end_cmd(Join::Always, ";")?;
    Ok(b.cmds)
}

/// What the caller does after a command list.
enum Flow {
    Continue,
    Exit(i32),
}

struct Shell {
    vars: BTreeMap<String, String>,
    exported: BTreeSet<String>,
    status: i32,
}

impl Shell {
    fn from_env() -> Shell {
        let mut vars = BTreeMap::new();
        let mut exported = BTreeSet::new();
        for (k, v) in std::env::vars_os() {
            if let (Ok(k), Ok(v)) = (k.into_string(), v.into_string()) {
                exported.insert(k.clone());
                vars.insert(k, v);
            }
        }
        if !vars.contains_key("PATH") {
            vars.insert("PATH".into(), DEFAULT_PATH.into());
            exported.insert("PATH".into());
        }
        Shell {
            vars,
            exported,
            status: 0,
        }
    }

    fn var(&self, name: &str) -> String {
        match name {
            "?" => self.status.to_string(),
            "$" => std::process::id().to_string(),
            "0" => "sh".into(),
            _ => self.vars.get(name).cloned().unwrap_or_default(),
        }
    }

    /// The word's text, or `None` for an unquoted word that expanded to nothing.
    fn expand(&self, w: &Word) -> Option<String> {
        let mut s = String::new();
        for p in &w.pieces {
            match p {
                Piece::Text(t) => s.push_str(t),
                Piece::Var(v) => s.push_str(&self.var(v)),
            }
        }
        (w.quoted || !s.is_empty()).then_some(s)
    }

    /// Parses and runs a script; a syntax error runs nothing and gives status 2.
    fn run_source(&mut self, src: &str) -> Flow {
        match parse(src) {
            Ok(cmds) => self.run_list(&cmds),
            Err(e) => {
                eprintln!("sh: {e}");
                self.status = 2;
                Flow::Continue
            }
        }
    }

    fn run_list(&mut self, cmds: &[Cmd]) -> Flow {
        for c in cmds {
            let skip = match c.join {
                Join::Always => false,
                Join::IfOk => self.status != 0,
                Join::IfFailed => self.status == 0,
            };
            if skip {
                continue;
            }
            if let Flow::Exit(code) = self.run_cmd(&c.words) {
                return Flow::Exit(code);
            }
        }
        Flow::Continue
    }

    fn run_cmd(&mut self, words: &[Word]) -> Flow {
        let mut assigns = Vec::new();
        let mut rest = words;
        while let Some((first, tail)) = rest.split_first() {
            match first.assignment() {
                Some((name, value)) => {
                    assigns.push((name.to_string(), self.expand(&value).unwrap_or_default()));
                    rest = tail;
                }
                None => break,
            }
        }
        let argv: Vec<String> = rest.iter().filter_map(|w| self.expand(w)).collect();
        let Some((name, args)) = argv.split_first() else {
            // Assignments alone set shell variables (exported ones stay exported).
            for (k, v) in assigns {
                self.vars.insert(k, v);
            }
            self.status = 0;
            return Flow::Continue;
        };
        let status = match self.builtin(name, args) {
            Some(Ok(code)) => code,
            Some(Err(Exit(code))) => return Flow::Exit(code),
            None => self.external(name, args, &assigns),
        };
        self.status = status;
        Flow::Continue
    }

    fn external(&self, name: &str, args: &[String], assigns: &[(String, String)]) -> i32 {
        let Some(path) = self.find(name) else {
            eprintln!("sh: {name}: not found");
            return 127;
        };
        let mut cmd = std::process::Command::new(&path);
        cmd.arg0(name).args(args).env_clear();
        for k in &self.exported {
            if let Some(v) = self.vars.get(k) {
                cmd.env(k, v);
            }
        }
        for (k, v) in assigns {
            cmd.env(k, v);
        }
        match cmd.status() {
            Ok(st) => st
                .code()
                .or_else(|| st.signal().map(|s| 128 + s))
                .unwrap_or(1),
            Err(e) => {
                eprintln!("sh: {name}: {e}");
                if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                }
            }
        }
    }

    /// The program a command name runs: a path as given, else the first executable on `$PATH`.
    fn find(&self, name: &str) -> Option<PathBuf> {
        if name.contains('/') {
            return Some(PathBuf::from(name));
        }
        let path = self.var("PATH");
        path.split(':')
            .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(name))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    }

    /// Runs a builtin; `None` when `name` is not one.
    fn builtin(&mut self, name: &str, args: &[String]) -> Option<Result<i32, Exit>> {
        let mut out = std::io::stdout().lock();
        let code = match name {
            "cat" => cat(args),
            "cd" => self.cd(args),
            "echo" => {
                let (nl, words) = match args.first().map(String::as_str) {
                    Some("-n") => (false, &args[1..]),
                    _ => (true, args),
                };
                let _ = write!(out, "{}{}", words.join(" "), if nl { "\n" } else { "" });
                0
            }
            "env" => {
                if !args.is_empty() {
                    eprintln!("sh: env: only prints; run `NAME=value command` instead");
                    return Some(Ok(2));
                }
                for k in &self.exported {
                    if let Some(v) = self.vars.get(k) {
                        let _ = writeln!(out, "{k}={v}");
                    }
                }
                0
            }
            "exit" => {
                let code = match args.first() {
                    None => self.status,
                    Some(a) => match a.parse::<i32>() {
                        Ok(n) => n & 0xff,
                        Err(_) => {
                            eprintln!("sh: exit: not a number: {a}");
                            2
                        }
                    },
                };
                return Some(Err(Exit(code)));
            }
            "export" => self.export(args, &mut out),
            "false" => 1,
            "help" => {
                let _ = out.write_all(HELP.as_bytes());
                0
            }
            "kill" => kill(args, &mut out),
            "ls" => ls(args, &mut out),
            "ps" => ps(&mut out),
            "pwd" => match std::env::current_dir() {
                Ok(d) => {
                    let _ = writeln!(out, "{}", d.display());
                    0
                }
                Err(e) => {
                    eprintln!("sh: pwd: {e}");
                    1
                }
            },
            "true" => 0,
            "unset" => {
                for a in args {
                    self.vars.remove(a);
                    self.exported.remove(a);
                }
                0
            }
            _ => return None,
        };
        let _ = out.flush();
        Some(Ok(code))
    }

    fn cd(&mut self, args: &[String]) -> i32 {
        let dir = match args.first().map(String::as_str) {
            None => self.vars.get("HOME").cloned().unwrap_or_else(|| "/".into()),
            Some("-") => match self.vars.get("OLDPWD") {
                Some(d) => d.clone(),
                None => {
                    eprintln!("sh: cd: OLDPWD not set");
                    return 1;
                }
            },
            Some(d) => d.to_string(),
        };
        let old = std::env::current_dir().ok();
        if let Err(e) = std::env::set_current_dir(&dir) {
            eprintln!("sh: cd: {dir}: {e}");
            return 1;
        }
        if let Some(o) = old {
            self.vars
                .insert("OLDPWD".into(), o.to_string_lossy().into_owned());
        }
        if let Ok(now) = std::env::current_dir() {
            self.vars
                .insert("PWD".into(), now.to_string_lossy().into_owned());
        }
        0
    }

    fn export(&mut self, args: &[String], out: &mut impl Write) -> i32 {
        if args.is_empty() {
            for k in &self.exported {
                if let Some(v) = self.vars.get(k) {
                    let _ = writeln!(out, "export {k}='{}'", v.replace('\'', "'\\''"));
                }
            }
            return 0;
        }
        let mut code = 0;
        for a in args {
            let (name, value) = match a.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (a.as_str(), None),
            };
            if !is_name(name) {
                eprintln!("sh: export: not a valid name: {name}");
                code = 1;
                continue;
            }
            match value {
                Some(v) => {
                    self.vars.insert(name.into(), v.into());
                }
                None => {
                    self.vars.entry(name.into()).or_default();
                }
            }
            self.exported.insert(name.into());
        }
        code
    }
}

/// `exit` was run, with this status.
struct Exit(i32);

fn cat(args: &[String]) -> i32 {
    let mut out = std::io::stdout().lock();
    let stdin = ["-".to_string()];
    let files = if args.is_empty() { &stdin[..] } else { args };
    let mut code = 0;
    for f in files {
        let r = if f == "-" {
            std::io::copy(&mut std::io::stdin().lock(), &mut out)
        } else {
            std::fs::File::open(f).and_then(|mut file| std::io::copy(&mut file, &mut out))
        };
        if let Err(e) = r {
            eprintln!("sh: cat: {f}: {e}");
            code = 1;
        }
    }
    code
}

/// `ls -l`'s mode column, such as `drwxr-xr-x` or `lrwxrwxrwx`.
fn mode_string(ft: std::fs::FileType, mode: u32) -> String {
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_socket() {
        's'
    } else {
        '-'
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    // (read, write, execute bit) per class, with the class's special bit and its letter.
    for (shift, special, letter) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => letter,
            (true, false) => letter.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn ls(args: &[String], out: &mut impl Write) -> i32 {
    let (mut long, mut all) = (false, false);
    let mut paths = Vec::new();
    for a in args {
        match a.strip_prefix('-') {
            Some(flags) if !flags.is_empty() => {
                for f in flags.chars() {
                    match f {
                        'l' => long = true,
                        'a' => all = true,
                        _ => {
                            eprintln!("sh: ls: unknown option -{f} (ls takes -l and -a)");
                            return 2;
                        }
                    }
                }
            }
            _ => paths.push(a.clone()),
        }
    }
    if paths.is_empty() {
        paths.push(".".into());
    }
    let entry = |out: &mut dyn Write, path: &Path, name: &str| match std::fs::symlink_metadata(path)
    {
        Ok(m) if long => {
            let target = if m.file_type().is_symlink() {
                std::fs::read_link(path)
                    .map(|t| format!(" -> {}", t.display()))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let mode = mode_string(m.file_type(), m.permissions().mode());
            let _ = writeln!(out, "{mode} {:>10} {name}{target}", m.len());
        }
        Ok(_) => {
            let _ = writeln!(out, "{name}");
        }
        Err(e) => eprintln!("sh: ls: {}: {e}", path.display()),
    };
    let mut code = 0;
    let many = paths.len() > 1;
    for p in &paths {
        let path = Path::new(p);
        let is_dir = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
        if !is_dir {
            if std::fs::symlink_metadata(path).is_err() {
                eprintln!("sh: ls: {p}: No such file or directory");
                code = 1;
                continue;
            }
            entry(out, path, p);
            continue;
        }
        let mut names: Vec<String> = match std::fs::read_dir(path) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| all || !n.starts_with('.'))
                .collect(),
            Err(e) => {
                eprintln!("sh: ls: {p}: {e}");
                code = 1;
                continue;
            }
        };
        names.sort();
        if many {
            let _ = writeln!(out, "{p}:");
        }
        for n in &names {
            entry(out, &path.join(n), n);
        }
    }
    code
}

fn ps(out: &mut impl Write) -> i32 {
    let rd = match std::fs::read_dir("/proc") {
        Ok(rd) => rd,
        Err(e) => {
            eprintln!("sh: ps: /proc: {e}");
            return 1;
        }
    };
    let mut pids: Vec<u32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let _ = writeln!(out, "{:>7} {:>8} COMMAND", "PID", "RSS(KiB)");
    for pid in pids {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let rss = std::fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .map(|v| v.trim().trim_end_matches(" kB").to_string())
            })
            .unwrap_or_else(|| "-".into());
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let mut cmd: String = String::from_utf8_lossy(&cmdline)
            .split('\0')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if cmd.is_empty() {
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            cmd = format!("[{}]", comm.trim());
        }
        let _ = writeln!(out, "{pid:>7} {rss:>8} {cmd}");
    }
    0
}

/// The signals `kill` knows by name, with Linux's numbers.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("KILL", 9),
    ("USR1", 10),
    ("USR2", 12),
    ("TERM", 15),
    ("CONT", 18),
    ("STOP", 19),
];

fn signal_number(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    SIGNALS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, n)| n)
}

fn kill(args: &[String], out: &mut impl Write) -> i32 {
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;
    let mut sig = 15;
    let mut rest = args;
    match args.first().map(String::as_str) {
        Some("-l") => {
            let names: Vec<&str> = SIGNALS.iter().map(|(n, _)| *n).collect();
            let _ = writeln!(out, "{}", names.join(" "));
            return 0;
        }
        Some("-s") => {
            let Some(n) = args.get(1).and_then(|s| signal_number(s)) else {
                eprintln!("sh: kill: -s needs a signal name (kill -l lists them)");
                return 2;
            };
            sig = n;
            rest = &args[2..];
        }
        Some(a) if a.starts_with('-') && a.len() > 1 => {
            let Some(n) = signal_number(&a[1..]) else {
                eprintln!("sh: kill: unknown signal {a} (kill -l lists them)");
                return 2;
            };
            sig = n;
            rest = &args[1..];
        }
        _ => {}
    }
    if rest.is_empty() {
        eprintln!("sh: kill: usage: kill [-SIGNAL] PID...");
        return 2;
    }
    let signal = if sig == 0 {
        None
    } else {
        match Signal::try_from(sig) {
            Ok(s) => Some(s),
            Err(_) => {
                eprintln!("sh: kill: unknown signal {sig}");
                return 2;
            }
        }
    };
    let mut code = 0;
    for p in rest {
        match p.parse::<i32>() {
            Ok(pid) => {
                if let Err(e) = nix::sys::signal::kill(Pid::from_raw(pid), signal) {
                    eprintln!("sh: kill: {pid}: {}", e.desc());
                    code = 1;
                }
            }
            Err(_) => {
                eprintln!("sh: kill: not a process id: {p}");
                code = 1;
            }
        }
    }
    code
}

/// Keeps Ctrl-C from ending an interactive shell: a caught SIGINT is reset to the default in
/// each program the shell starts, so the program still stops. The runtime and the signal
/// stream are kept for the shell's life; without them the shell merely dies on Ctrl-C.
fn catch_interrupt() -> Option<(tokio::runtime::Runtime, tokio::signal::unix::Signal)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .ok()?;
    let sig = {
        let _guard = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok()?
    };
    Some((rt, sig))
}

fn interactive(sh: &mut Shell, prompt: bool) -> i32 {
    let _interrupt = catch_interrupt();
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    loop {
        if prompt {
            let cwd = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            eprint!("{cwd} # ");
        }
        line.clear();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => {
                if prompt {
                    eprintln!();
                }
                return sh.status;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("sh: cannot read stdin: {e}");
                return 1;
            }
        }
        let text = String::from_utf8_lossy(&line);
        if let Flow::Exit(code) = sh.run_source(&text) {
            return code;
        }
    }
}

/// Runs the shell: `sh`, `sh -i`, `sh -c 'COMMANDS'` or `sh FILE`.
pub(crate) fn main(args: Vec<OsString>) -> ExitCode {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut sh = Shell::from_env();
    let code = match args.get(1).map(String::as_str) {
        Some("-c") => match args.get(2) {
            Some(script) => match sh.run_source(script) {
                Flow::Exit(code) => code,
                Flow::Continue => sh.status,
            },
            None => {
                eprintln!("sh: -c needs a command string");
                2
            }
        },
        Some("-h" | "--help") => {
            print!("{HELP}");
            0
        }
        // -l (login) and -s (read stdin) change nothing here.
        Some("-i") => interactive(&mut sh, true),
        None | Some("-l" | "-s") => {
            let tty = std::io::stdin().is_terminal();
            interactive(&mut sh, tty)
        }
        Some(flag) if flag.starts_with('-') => {
            eprintln!("sh: unknown option {flag} (sh -h lists the options)");
            2
        }
        Some(file) => {
            let mut text = Vec::new();
            match std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut text)) {
                Ok(_) => match sh.run_source(&String::from_utf8_lossy(&text)) {
                    Flow::Exit(code) => code,
                    Flow::Continue => sh.status,
                },
                Err(e) => {
                    eprintln!("sh: {file}: {e}");
                    127
                }
            }
        }
    };
    ExitCode::from((code & 0xff) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Piece {
        Piece::Text(s.into())
    }

    fn var(s: &str) -> Piece {
        Piece::Var(s.into())
    }

    /// The words of each command, expanded with `vars`, and the joins.
    fn run(src: &str, vars: &[(&str, &str)]) -> Vec<(Join, Vec<String>)> {
        let sh = Shell {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            exported: BTreeSet::new(),
            status: 3,
        };
        parse(src)
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c.join,
                    c.words.iter().filter_map(|w| sh.expand(w)).collect(),
                )
            })
            .collect()
    }

    fn words(src: &str) -> Vec<String> {
        let mut r = run(src, &[("X", "a b"), ("EMPTY", "")]);
        assert_eq!(r.len(), 1, "{src:?} is one command");
        r.remove(0).1
    }

    #[test]
    fn blanks_split_words() {
        assert_eq!(
            words("  tailscale   status\t--json "),
            ["tailscale", "status", "--json"]
        );
    }

    #[test]
    fn quotes_and_backslashes() {
        assert_eq!(
            words(r#"echo 'a  b' "c  d" e\ f"#),
            ["echo", "a  b", "c  d", "e f"]
        );
        assert_eq!(
            words(r#"echo 'it''s' "say \"hi\"" '\n'"#),
            ["echo", "its", "say \"hi\"", "\\n"]
        );
        assert_eq!(words(r#"echo "a\qb" a"b"'c'd"#), ["echo", "a\\qb", "abcd"]);
        assert_eq!(words("echo '' \"\""), ["echo", "", ""]);
        assert_eq!(words("echo a\\\nb"), ["echo", "ab"]);
    }

    #[test]
    fn variables_expand_when_run() {
        assert_eq!(words("echo $X"), ["echo", "a b"]);
        assert_eq!(words("echo ${X}y $Xy \"$X\"z"), ["echo", "a by", "a bz"]);
        assert_eq!(
            words("echo $? $EMPTY \"$EMPTY\" '$X'"),
            ["echo", "3", "", "$X"]
        );
        assert_eq!(words("echo $ a$ $-"), ["echo", "$", "a$", "$-"]);
        let p = parse("echo ${X}y").unwrap();
        assert_eq!(p[0].words[1].pieces, [var("X"), text("y")]);
    }

    #[test]
    fn separators_and_joins() {
        let r = run("a; b && c || d\ne;;", &[]);
        let joins: Vec<Join> = r.iter().map(|(j, _)| *j).collect();
        assert_eq!(
            joins,
            [
                Join::Always,
                Join::Always,
                Join::IfOk,
                Join::IfFailed,
                Join::Always
            ]
        );
        assert_eq!(r[2].1, ["c"]);
        assert!(parse("").unwrap().is_empty());
        assert!(parse("  # only a comment\n\n").unwrap().is_empty());
        assert_eq!(run("echo a#b # c", &[])[0].1, ["echo", "a#b"]);
    }

    #[test]
    fn assignments_are_recognized_before_the_command() {
        let p = parse("A=1 B=\"x y\" cmd C=2").unwrap();
        let w = &p[0].words;
        assert_eq!(w[0].assignment().map(|a| a.0), Some("A"));
        assert_eq!(w[1].assignment().map(|a| a.0), Some("B"));
        assert!(w[2].assignment().is_none());
        assert!(parse("1A=x").unwrap()[0].words[0].assignment().is_none());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for (src, want) in [
            ("echo 'abc", "unterminated single quote"),
            ("echo \"abc", "unterminated double quote"),
            ("echo \"abc\\", "unterminated double quote"),
            ("echo abc\\", "backslash at the end"),
            ("echo ${X", "unterminated `${`"),
            ("echo ${X-y}", "bad substitution"),
            ("&& echo", "needs a command before it"),
            ("echo &&", "needs a command after it"),
            ("a && ; b", "needs a command after it"),
            ("a || || b", "needs a command before it"),
            ("ls | grep x", "pipes"),
            ("echo > f", "redirection"),
            ("sleep 1 &", "background"),
            ("echo `id`", "command substitution"),
            ("echo $(id)", "command substitution"),
        ] {
            match parse(src) {
                Err(e) => assert!(e.contains(want), "{src:?}: {e}"),
                Ok(c) => panic!("{src:?} parsed as {c:?}"),
            }
        }
    }

    #[test]
    fn parser_survives_arbitrary_bytes() {
        // Every prefix of a mixed input: errors are fine, panics are not.
        let src = "a'b\"c\\d$e${f}g&&h||i;j\n#k|l<m>n`o$(p)q${r";
        for (i, _) in src.char_indices() {
            let _ = parse(&src[..i]);
        }
    }

    #[test]
    fn ls_mode_strings() {
        let dir = std::fs::symlink_metadata("/").unwrap().file_type();
        assert_eq!(mode_string(dir, 0o40755), "drwxr-xr-x");
        assert_eq!(mode_string(dir, 0o41777), "drwxrwxrwt");
        assert_eq!(mode_string(dir, 0o40700), "drwx------");
        let file = std::fs::symlink_metadata("/proc/self/status")
            .unwrap()
            .file_type();
        assert_eq!(mode_string(file, 0o104755), "-rwsr-xr-x");
        assert_eq!(mode_string(file, 0o100644), "-rw-r--r--");
    }

    #[test]
    fn signal_names_and_numbers() {
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("SIGkill"), Some(9));
        assert_eq!(signal_number("2"), Some(2));
        assert_eq!(signal_number("BOGUS"), None);
    }
}

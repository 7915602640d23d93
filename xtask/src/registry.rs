//! The feature-tag registry (`featuretags.toml`): parsing, validation and allowlist resolution.
//!
//! Resolution follows Tailscale's `cmd/featuretags`: `--add` keeps a tag and everything it
//! requires (transitively), `--remove` refuses while a kept tag still requires the removed one,
//! and `--min` starts from nothing but the tags marked `min`.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// How far tailrouter implements a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Implemented,
    Partial,
    Scaffold,
    Planned,
    NotPlanned,
}

impl Status {
    /// Whether the tag exists as a Cargo feature of the composition root.
    pub fn has_cargo_feature(self) -> bool {
        matches!(
            self,
            Status::Implemented | Status::Partial | Status::Scaffold
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Implemented => "implemented",
            Status::Partial => "partial",
            Status::Scaffold => "scaffold",
            Status::Planned => "planned",
            Status::NotPlanned => "not-planned",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    pub desc: String,
    #[serde(default)]
    pub deps: Vec<String>,
    #[serde(default)]
    pub ours: Vec<String>,
    pub status: Status,
    pub issue: Option<u32>,
    pub reason: Option<String>,
    #[serde(default)]
    pub min: bool,
    #[serde(default = "yes")]
    pub upstream: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    schema: u32,
    upstream: String,
    #[serde(default)]
    tag: BTreeMap<String, Tag>,
}

/// A registry that passed validation: names are known, the graph is acyclic.
#[derive(Debug)]
pub struct Registry {
    pub upstream: String,
    pub tags: BTreeMap<String, Tag>,
}

/// Every way a registry or a request against it can be wrong. Each message names the problem.
#[derive(Debug, PartialEq, Eq)]
pub struct Error(pub Vec<String>);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl Registry {
    pub fn load(path: &Path) -> Result<Registry, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error(vec![format!("cannot read {}: {e}", path.display())]))?;
        Registry::parse(&text).map_err(|Error(v)| {
            Error(
                v.into_iter()
                    .map(|m| format!("{}: {m}", path.display()))
                    .collect(),
            )
        })
    }

    pub fn parse(text: &str) -> Result<Registry, Error> {
        let raw: RawRegistry = toml::from_str(text).map_err(|e| {
            Error(vec![format!(
                "malformed registry: {}",
                e.to_string().trim()
            )])
        })?;
        let mut problems = Vec::new();
        if raw.schema != 1 {
            problems.push(format!(
                "schema {} is not understood (this xtask reads schema 1)",
                raw.schema
            ));
        }
        if raw.tag.is_empty() {
            problems.push("the registry declares no tags".to_string());
        }
        let names: Vec<&str> = raw.tag.keys().map(String::as_str).collect();
        for (name, tag) in &raw.tag {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                problems.push(format!(
                    "tag name `{name}` must be lower-case letters, digits and `_` (it becomes a Cargo feature)"
                ));
            }
            if tag.desc.trim().is_empty() {
                problems.push(format!("tag `{name}` has an empty description"));
            }
            let mut seen = BTreeSet::new();
            for dep in &tag.deps {
                if !seen.insert(dep) {
                    problems.push(format!("tag `{name}` lists dependency `{dep}` twice"));
                }
                if dep == name {
                    problems.push(format!("tag `{name}` depends on itself"));
                } else if !raw.tag.contains_key(dep) {
                    problems.push(format!(
                        "tag `{name}` depends on unknown tag `{dep}`{}",
                        hint(dep, &names)
                    ));
                } else if tag.status.has_cargo_feature()
                    && !raw.tag[dep].status.has_cargo_feature()
                    && tag.ours.contains(dep)
                {
                    // A dependency we added is one our code needs: it must be built. One that
                    // only Tailscale declares is recorded and kept by the resolver, but not
                    // required while it has no code (docs/decisions.md, "Build and tags").
                    problems.push(format!(
                        "tag `{name}` is built ({}) but its dependency `{dep}` is {}: build the dependency first (it is ours, so our code needs it)",
                        tag.status.as_str(),
                        raw.tag[dep].status.as_str()
                    ));
                }
            }
            for o in &tag.ours {
                if !tag.deps.contains(o) {
                    problems.push(format!(
                        "tag `{name}` marks `{o}` as our dependency but does not list it in deps"
                    ));
                }
            }
            match (tag.status, &tag.reason) {
                (Status::NotPlanned, None) => {
                    problems.push(format!("tag `{name}` is not-planned but gives no reason"))
                }
                (Status::NotPlanned, Some(_)) | (_, None) => {}
                (s, Some(_)) => problems.push(format!(
                    "tag `{name}` gives a reason but is {}; reasons are for not-planned tags",
                    s.as_str()
                )),
            }
            if tag.min && !tag.status.has_cargo_feature() {
                problems.push(format!(
                    "tag `{name}` is kept by --min but has no Cargo feature ({})",
                    tag.status.as_str()
                ));
            }
        }
        if let Some(cycle) = find_cycle(&raw.tag) {
            problems.push(format!("dependency cycle: {}", cycle.join(" -> ")));
        }
        if problems.is_empty() {
            Ok(Registry {
                upstream: raw.upstream,
                tags: raw.tag,
            })
        } else {
            Err(Error(problems))
        }
    }

    /// The tag and everything it needs, transitively (Tailscale's `Requires`).
    pub fn requires(&self, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack = vec![name.to_string()];
        while let Some(t) = stack.pop() {
            if out.insert(t.clone()) {
                if let Some(tag) = self.tags.get(&t) {
                    stack.extend(tag.deps.iter().cloned());
                }
            }
        }
        out
    }

    /// A path of dependencies from `from` to `to`, for explaining why a tag was pulled in.
    fn dep_path(&self, from: &str, to: &str) -> Vec<String> {
        fn walk(r: &Registry, at: &str, to: &str, path: &mut Vec<String>) -> bool {
            path.push(at.to_string());
            if at == to {
                return true;
            }
            if let Some(tag) = r.tags.get(at) {
                for d in &tag.deps {
                    if walk(r, d, to, path) {
                        return true;
                    }
                }
            }
            path.pop();
            false
        }
        let mut path = Vec::new();
        walk(self, from, to, &mut path);
        path
    }

    /// The dependencies of `name` that are enforced in the build: those that have a Cargo
    /// feature. A dependency Tailscale declares on a tag we have no code for is recorded
    /// (and kept by the resolver) but not enforced until that tag is built.
    pub fn built_deps(&self, name: &str) -> Vec<String> {
        self.tags.get(name).map_or_else(Vec::new, |t| {
            t.deps
                .iter()
                .filter(|d| {
                    self.tags
                        .get(*d)
                        .is_some_and(|d| d.status.has_cargo_feature())
                })
                .cloned()
                .collect()
        })
    }

    pub fn cargo_tags(&self) -> BTreeSet<String> {
        self.tags
            .iter()
            .filter(|(_, t)| t.status.has_cargo_feature())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn check_names(&self, names: &[String], flag: &str) -> Result<(), Error> {
        let all: Vec<&str> = self.tags.keys().map(String::as_str).collect();
        let bad: Vec<String> = names
            .iter()
            .filter(|n| !self.tags.contains_key(*n))
            .map(|n| format!("{flag}: unknown tag `{n}`{}", hint(n, &all)))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Error(bad))
        }
    }

    /// Resolve an allowlist request.
    pub fn resolve(&self, req: &Request) -> Result<Resolution, Error> {
        let mut problems = Vec::new();
        for (names, flag) in [(&req.add, "--add"), (&req.remove, "--remove")] {
            if let Err(Error(mut v)) = self.check_names(names, flag) {
                problems.append(&mut v);
            }
        }
        if !problems.is_empty() {
            return Err(Error(problems));
        }
        let removed: BTreeSet<&String> = req.remove.iter().collect();
        let mut kept: BTreeSet<String> = if req.min {
            self.tags
                .iter()
                .filter(|(_, t)| t.min)
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            self.tags.keys().cloned().collect()
        };
        let mut pulled: BTreeMap<String, String> = BTreeMap::new();
        for a in &req.add {
            if removed.contains(a) {
                problems.push(format!("`{a}` is both added and removed"));
                continue;
            }
            for dep in self.requires(a) {
                if removed.contains(&dep) {
                    problems.push(format!(
                        "cannot remove `{dep}`: `{a}` is added and depends on it ({})",
                        self.dep_path(a, &dep).join(" -> ")
                    ));
                }
                let explicit = req.add.contains(&dep);
                if !kept.contains(&dep) && !explicit {
                    let chain = self.dep_path(a, &dep);
                    let by = chain
                        .get(chain.len().saturating_sub(2))
                        .cloned()
                        .unwrap_or_else(|| a.clone());
                    pulled.entry(dep.clone()).or_insert(by);
                }
                kept.insert(dep);
            }
        }
        if !problems.is_empty() {
            return Err(Error(problems));
        }
        for r in &req.remove {
            kept.remove(r);
        }
        for r in &req.remove {
            for k in &kept {
                if self.requires(k).contains(r) {
                    problems.push(format!(
                        "cannot remove `{r}` without also removing `{k}`, which depends on it ({})",
                        self.dep_path(k, r).join(" -> ")
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(Error(problems));
        }
        let explicit: BTreeSet<String> = req.add.iter().flat_map(|a| self.requires(a)).collect();
        Ok(Resolution {
            kept,
            pulled,
            explicit,
            named: req.add.iter().cloned().collect(),
        })
    }
}

/// What the user asked for on the command line.
#[derive(Debug, Default, Clone)]
pub struct Request {
    pub min: bool,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl Request {
    /// `--min --add=<add>`: nothing but `add` and what it needs.
    pub fn min_plus(add: &[&str]) -> Self {
        Request {
            min: true,
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: vec![],
        }
    }
}

/// The resolved allowlist.
#[derive(Debug)]
pub struct Resolution {
    /// Tags kept, sorted.
    pub kept: BTreeSet<String>,
    /// Tags kept only because an added tag needs them: tag -> the tag that needs it directly.
    pub pulled: BTreeMap<String, String>,
    /// Tags that `--add` asked for, with their dependencies.
    pub explicit: BTreeSet<String>,
    /// Tags that `--add` named itself.
    pub named: BTreeSet<String>,
}

fn find_cycle(tags: &BTreeMap<String, Tag>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        n: &str,
        tags: &BTreeMap<String, Tag>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(n).copied().unwrap_or(Mark::New) {
            Mark::Done => return None,
            Mark::Active => {
                let start = stack.iter().position(|s| s == n).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            Mark::New => {}
        }
        marks.insert(n.to_string(), Mark::Active);
        stack.push(n.to_string());
        if let Some(t) = tags.get(n) {
            for d in &t.deps {
                if d != n {
                    if let Some(c) = visit(d, tags, marks, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in tags.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(n, tags, &mut marks, &mut stack) {
            return Some(c);
        }
    }
    None
}

/// " (did you mean `a`, `b`?)" for names close to `name`, or "" when none is close.
pub fn hint(name: &str, candidates: &[&str]) -> String {
    let close = close_matches(name, candidates);
    if close.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = close.iter().map(|c| format!("`{c}`")).collect();
        format!(" (did you mean {}?)", list.join(", "))
    }
}

/// Up to three candidates within a small edit distance of `name`, or containing it.
pub fn close_matches<'a>(name: &str, candidates: &[&'a str]) -> Vec<&'a str> {
    let limit = if name.len() <= 4 { 1 } else { 2 };
    let mut scored: Vec<(usize, &'a str)> = candidates
        .iter()
        .filter_map(|c| {
            let d = levenshtein(name, c);
            if d <= limit || (name.len() >= 3 && (c.contains(name) || name.contains(*c))) {
                Some((d, *c))
            } else {
                None
            }
        })
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, c)| c).collect()
}

/// Edit distance counting a swap of two neighbouring letters as one edit ("dsn" -> "dns").
fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
schema = 1
upstream = "test"
[tag.cli]
desc = "cli"
status = "partial"
min = true
[tag.netstack]
desc = "ns"
status = "scaffold"
[tag.dns]
desc = "dns"
deps = ["netstack"]
ours = ["netstack"]
status = "scaffold"
[tag.gro]
desc = "gro"
deps = ["netstack"]
status = "planned"
[tag.c2n]
desc = "c2n"
status = "planned"
[tag.advertiseroutes]
desc = "ar"
deps = ["c2n"]
status = "planned"
[tag.advertiseexitnode]
desc = "aen"
deps = ["advertiseroutes"]
status = "planned"
"#;

    fn reg() -> Registry {
        Registry::parse(SMALL).expect("small registry is valid")
    }

    fn req(min: bool, add: &[&str], remove: &[&str]) -> Request {
        Request {
            min,
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn add_pulls_dependencies_and_says_why() {
        let r = reg().resolve(&req(true, &["dns"], &[])).unwrap();
        assert_eq!(
            r.kept.iter().map(String::as_str).collect::<Vec<_>>(),
            ["cli", "dns", "netstack"]
        );
        assert_eq!(r.pulled.get("netstack").map(String::as_str), Some("dns"));
    }

    #[test]
    fn transitive_pull_names_the_direct_dependent() {
        let r = reg()
            .resolve(&req(true, &["advertiseexitnode"], &[]))
            .unwrap();
        assert!(r.kept.contains("c2n"));
        assert_eq!(r.pulled["c2n"], "advertiseroutes");
        assert_eq!(r.pulled["advertiseroutes"], "advertiseexitnode");
    }

    #[test]
    fn explicitly_added_dependency_is_not_reported_as_pulled() {
        let r = reg()
            .resolve(&req(true, &["dns", "netstack"], &[]))
            .unwrap();
        assert!(r.pulled.is_empty());
    }

    #[test]
    fn remove_refuses_while_a_kept_tag_depends_on_it() {
        let e = reg().resolve(&req(false, &[], &["netstack"])).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("cannot remove `netstack`"), "{text}");
        assert!(text.contains("`dns`"), "{text}");
        assert!(text.contains("`gro`"), "{text}");
    }

    #[test]
    fn removing_a_tag_with_its_dependents_works() {
        let r = reg()
            .resolve(&req(false, &[], &["netstack", "dns", "gro"]))
            .unwrap();
        assert!(!r.kept.contains("netstack"));
        assert!(r.kept.contains("cli"));
    }

    #[test]
    fn min_remove_drops_cli() {
        let r = reg().resolve(&req(true, &[], &["cli"])).unwrap();
        assert!(r.kept.is_empty());
    }

    #[test]
    fn contradictory_add_and_remove_is_an_error() {
        let e = reg().resolve(&req(true, &["dns"], &["dns"])).unwrap_err();
        assert!(e.to_string().contains("both added and removed"));
        let e = reg()
            .resolve(&req(true, &["dns"], &["netstack"]))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot remove `netstack`: `dns` is added"),
            "{e}"
        );
    }

    #[test]
    fn unknown_tag_lists_close_matches() {
        let e = reg().resolve(&req(true, &["dsn"], &[])).unwrap_err();
        assert!(e.to_string().contains("unknown tag `dsn`"));
        assert!(e.to_string().contains("did you mean `dns`"), "{e}");
        let e = reg().resolve(&req(true, &[], &["netstak"])).unwrap_err();
        assert!(e.to_string().contains("did you mean `netstack`"), "{e}");
        let e = reg().resolve(&req(true, &["zzzzzz"], &[])).unwrap_err();
        assert!(!e.to_string().contains("did you mean"), "{e}");
    }

    #[test]
    fn cycle_is_found_and_named() {
        let text = SMALL.replace(
            "[tag.c2n]\ndesc = \"c2n\"",
            "[tag.c2n]\ndesc = \"c2n\"\ndeps = [\"advertiseexitnode\"]",
        );
        let e = Registry::parse(&text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("dependency cycle"), "{msg}");
        assert!(msg.contains("c2n -> advertiseexitnode"), "{msg}");
    }

    #[test]
    fn unknown_dependency_is_named() {
        let text = SMALL.replace("deps = [\"c2n\"]", "deps = [\"c2m\"]");
        let msg = Registry::parse(&text).unwrap_err().to_string();
        assert!(msg.contains("depends on unknown tag `c2m`"), "{msg}");
        assert!(msg.contains("did you mean `c2n`"), "{msg}");
    }

    #[test]
    fn built_tag_on_unbuilt_dependency_is_refused() {
        let text = SMALL.replace(
            "[tag.netstack]\ndesc = \"ns\"\nstatus = \"scaffold\"",
            "[tag.netstack]\ndesc = \"ns\"\nstatus = \"planned\"",
        );
        let msg = Registry::parse(&text).unwrap_err().to_string();
        assert!(msg.contains("tag `dns` is built"), "{msg}");
    }

    #[test]
    fn built_tag_on_an_upstream_dependency_without_code_is_recorded_not_required() {
        let text = SMALL.replace(
            "deps = [\"c2n\"]\nstatus = \"planned\"",
            "deps = [\"c2n\"]\nstatus = \"implemented\"",
        );
        let r = Registry::parse(&text).expect("an upstream dependency on a planned tag is allowed");
        assert!(r.built_deps("advertiseroutes").is_empty());
        assert_eq!(r.tags["advertiseroutes"].deps, ["c2n"]);
        assert_eq!(r.built_deps("dns"), ["netstack"]);
        // Still kept by the resolver, as upstream's allowlist would.
        let res = r.resolve(&req(true, &["advertiseroutes"], &[])).unwrap();
        assert!(res.kept.contains("c2n"));
        assert!(res.named.contains("advertiseroutes") && !res.named.contains("c2n"));
    }

    #[test]
    fn malformed_toml_is_a_clear_error() {
        let msg = Registry::parse("schema = 1\n[tag.dns\n")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("malformed registry:"), "{msg}");
        let msg = Registry::parse(&SMALL.replace("desc = \"ns\"", "desc = \"ns\"\ncolour = 1"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unknown field `colour`"), "{msg}");
    }

    #[test]
    fn levenshtein_basics() {
        assert_eq!(levenshtein("dns", "dns"), 0);
        assert_eq!(levenshtein("dsn", "dns"), 1);
        assert_eq!(levenshtein("", "abc"), 3);
    }
}

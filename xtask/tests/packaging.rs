//! The packaging files, checked as far as this machine allows: it has no Docker engine, no
//! registry and no Rust target but the host's, so the image is never built here. Instead these
//! tests read the Dockerfile, the Woodpecker pipelines, deny.toml, .dockerignore and
//! docs/packaging.md, and hold them to what the xtask and each other say.
//!
//! YAML is read through python3's PyYAML (the xtask has no YAML crate); without it these tests
//! fail and say how to install it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// Each image platform and the Rust target its binary is built for.
const TARGETS: [(&str, &str); 3] = [
    ("linux/amd64", "x86_64-unknown-linux-musl"),
    ("linux/arm64", "aarch64-unknown-linux-musl"),
    ("linux/arm/v7", "armv7-unknown-linux-musleabihf"),
];

/// The tag set of the router image, as `cargo xtask build` takes it.
const ROUTER_TAGS: &str = "--min --add=osrouter,dns,netstack,advertiseroutes,advertiseexitnode,peerapiserver,useroutes,useexitnode,shell";

fn root() -> PathBuf {
    xtask::workspace_root()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn platforms() -> BTreeSet<String> {
    TARGETS.iter().map(|(p, _)| p.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// A small Dockerfile reader: comments dropped, continuation lines joined, one entry per
// instruction, grouped by stage.

#[derive(Debug)]
struct Instr {
    /// 1-based line where the instruction starts.
    line: usize,
    /// Upper-case keyword (`RUN`, `COPY`, ...).
    op: String,
    /// Everything after the keyword, continuation lines joined with spaces.
    args: String,
}

#[derive(Debug)]
struct Stage {
    name: Option<String>,
    base: String,
    platform: Option<String>,
    instrs: Vec<Instr>,
}

impl Stage {
    /// The stage's first instruction `op`; panics naming it when there is none.
    fn first(&self, op: &str) -> &Instr {
        self.instrs
            .iter()
            .find(|i| i.op == op)
            .unwrap_or_else(|| panic!("the image stage has no {op}"))
    }
}

struct Dockerfile {
    /// Instructions before the first FROM (global ARGs).
    global: Vec<Instr>,
    stages: Vec<Stage>,
}

fn parse_dockerfile(text: &str) -> Dockerfile {
    let mut instrs = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        // BuildKit drops comment lines, also inside a continued instruction.
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continued) = match trimmed.strip_suffix('\\') {
            Some(b) => (b.trim_end(), true),
            None => (trimmed, false),
        };
        match current.as_mut() {
            Some((_, acc)) => {
                acc.push(' ');
                acc.push_str(body);
            }
            None => current = Some((i + 1, body.to_string())),
        }
        if !continued {
            if let Some((line, full)) = current.take() {
                let (op, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
                instrs.push(Instr {
                    line,
                    op: op.to_ascii_uppercase(),
                    args: args.trim().to_string(),
                });
            }
        }
    }
    assert!(
        current.is_none(),
        "the Dockerfile ends inside a continued line"
    );
    let mut df = Dockerfile {
        global: Vec::new(),
        stages: Vec::new(),
    };
    for ins in instrs {
        if ins.op == "FROM" {
            let words: Vec<&str> = ins.args.split_whitespace().collect();
            let platform = words
                .iter()
                .find_map(|w| w.strip_prefix("--platform="))
                .map(String::from);
            let rest: Vec<&str> = words
                .iter()
                .copied()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let (base, name) = match rest.as_slice() {
                [base] => (base.to_string(), None),
                [base, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    (base.to_string(), Some(name.to_string()))
                }
                _ => panic!("line {}: cannot read `FROM {}`", ins.line, ins.args),
            };
            df.stages.push(Stage {
                name,
                base,
                platform,
                instrs: Vec::new(),
            });
        } else if let Some(stage) = df.stages.last_mut() {
            stage.instrs.push(ins);
        } else {
            df.global.push(ins);
        }
    }
    df
}

impl Dockerfile {
    fn load() -> Dockerfile {
        parse_dockerfile(&read("Dockerfile"))
    }

    fn stage(&self, name: &str) -> (usize, &Stage) {
        self.stages
            .iter()
            .enumerate()
            .find(|(_, s)| s.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("the Dockerfile has no stage `{name}`"))
    }

    /// The stage and the stages it is built FROM, nearest first.
    fn chain(&self, name: &str) -> Vec<&Stage> {
        let mut out = Vec::new();
        let mut next = Some(name.to_string());
        while let Some(n) = next.take() {
            let Some((_, s)) = self
                .stages
                .iter()
                .enumerate()
                .find(|(_, s)| s.name.as_deref() == Some(n.as_str()))
            else {
                break;
            };
            out.push(s);
            next = Some(s.base.clone());
        }
        out
    }

    /// Default value of an `ARG NAME=default` (global or in any stage), quotes removed.
    fn arg_default(&self, name: &str) -> Option<String> {
        self.global
            .iter()
            .chain(self.stages.iter().flat_map(|s| s.instrs.iter()))
            .filter(|i| i.op == "ARG")
            .find_map(|i| {
                let (n, v) = i.args.split_once('=')?;
                (n.trim() == name).then(|| v.trim().trim_matches('"').to_string())
            })
    }

    /// The instructions of every stage, in file order.
    fn all(&self) -> impl Iterator<Item = &Instr> {
        self.stages.iter().flat_map(|s| s.instrs.iter())
    }
}

/// The text of a RUN after its `--mount=...`/`--network=...` options.
fn run_script(ins: &Instr) -> String {
    ins.args
        .split_whitespace()
        .skip_while(|w| w.starts_with("--"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The JSON array form of ENTRYPOINT / CMD / VOLUME.
fn json_array(ins: &Instr) -> Vec<String> {
    let v: Value = serde_json::from_str(&ins.args).unwrap_or_else(|e| {
        panic!(
            "line {}: {} must use the JSON array form: {e}",
            ins.line, ins.op
        )
    });
    v.as_array()
        .unwrap_or_else(|| panic!("line {}: {} is not an array", ins.line, ins.op))
        .iter()
        .map(|x| x.as_str().expect("array of strings").to_string())
        .collect()
}

#[test]
fn dockerfile_stages_chain_to_a_scratch_image() {
    let df = Dockerfile::load();
    let names: Vec<&str> = df.stages.iter().filter_map(|s| s.name.as_deref()).collect();
    for want in ["toolchain", "manifests", "deps", "build", "image"] {
        assert!(names.contains(&want), "no stage `{want}` in {names:?}");
    }
    // Every stage reference points to an earlier stage.
    for (i, s) in df.stages.iter().enumerate() {
        let earlier: Vec<&str> = df.stages[..i]
            .iter()
            .filter_map(|s| s.name.as_deref())
            .collect();
        if names.contains(&s.base.as_str()) {
            assert!(
                earlier.contains(&s.base.as_str()),
                "stage {:?} is built FROM {}, which is not an earlier stage",
                s.name,
                s.base
            );
        }
        for ins in &s.instrs {
            for w in ins.args.split_whitespace() {
                if let Some(from) = w.strip_prefix("--from=") {
                    assert!(
                        earlier.contains(&from),
                        "line {}: --from={from} is not an earlier stage",
                        ins.line
                    );
                }
            }
        }
    }
    // The compiling stages run on the build machine's platform: cross-compiled, not emulated.
    for name in ["toolchain", "manifests"] {
        let (_, s) = df.stage(name);
        assert_eq!(
            s.platform.as_deref(),
            Some("$BUILDPLATFORM"),
            "stage `{name}` must be FROM --platform=$BUILDPLATFORM"
        );
    }
    let build_chain = df.chain("build");
    assert_eq!(
        build_chain.last().and_then(|s| s.name.as_deref()),
        Some("toolchain"),
        "the build stage must descend from the toolchain stage"
    );
    // The last stage is the image: FROM scratch, holding only what the build stage assembled.
    let last = df.stages.last().expect("stages");
    assert_eq!(
        last.name.as_deref(),
        Some("image"),
        "the last stage is the image"
    );
    assert_eq!(last.base, "scratch", "the image is FROM scratch");
    let copies: Vec<&Instr> = last.instrs.iter().filter(|i| i.op == "COPY").collect();
    assert!(
        !copies.is_empty() && copies.iter().all(|i| i.args.contains("--from=build")),
        "the image takes its files from the build stage only: {copies:?}"
    );
    assert!(
        !last.instrs.iter().any(|i| i.op == "RUN"),
        "a scratch image has no shell to RUN in"
    );
}

#[test]
fn image_runs_containerboot_with_router_defaults() {
    let df = Dockerfile::load();
    let last = df.stages.last().expect("stages");
    let find = |op: &str| last.first(op);
    // containerboot, configured by environment variables only: it refuses arguments, so the
    // image has no CMD. Its state and socket defaults are the daemon's.
    let entry = json_array(find("ENTRYPOINT"));
    assert_eq!(entry, ["/usr/local/bin/containerboot"]);
    assert!(
        !last.instrs.iter().any(|i| i.op == "CMD"),
        "containerboot takes no arguments: the image stage must have no CMD"
    );
    let volumes = json_array(find("VOLUME"));
    assert!(
        volumes.contains(&"/var/lib/tailscale".to_string()),
        "{volumes:?}"
    );

    // The build stage has `cargo xtask image` write the image's tree (the same files as its
    // archive's layer, xtask/tests/image.rs), and the image stage copies exactly that tree.
    let (_, build) = df.stage("build");
    let script: String = build
        .instrs
        .iter()
        .filter(|i| i.op == "RUN")
        .map(run_script)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        script.contains("cargo xtask image") && script.contains("--rootfs /rootfs"),
        "the build stage must write the rootfs with `cargo xtask image --rootfs /rootfs`"
    );
    assert!(
        last.instrs.iter().any(|i| i.op == "COPY"
            && i.args.split_whitespace().collect::<Vec<_>>() == ["--from=build", "/rootfs/", "/"]),
        "the image stage must be the xtask's rootfs: COPY --from=build /rootfs/ /"
    );
    for name in ["containerboot", "tailscale", "tailscaled"] {
        assert!(
            script.contains("/rootfs/usr/local/bin/$name")
                || script.contains(&format!("/rootfs/usr/local/bin/{name}")),
            "the build stage does not check or create the `{name}` link"
        );
    }
    assert!(
        script.contains("readlink"),
        "the build stage must prove containerboot, tailscale and tailscaled are links to tailrouter"
    );
}

/// `cargo xtask image` and the Dockerfile make the same image: process, environment, tags.
#[test]
fn dockerfile_and_xtask_image_agree() {
    let df = Dockerfile::load();
    let last = df.stages.last().expect("stages");
    let find = |op: &str| last.first(op);
    assert_eq!(json_array(find("ENTRYPOINT")), xtask::image::ENTRYPOINT);
    assert!(!last.instrs.iter().any(|i| i.op == "CMD"));
    assert_eq!(json_array(find("VOLUME")), [xtask::image::STATE_DIR]);
    let env: String = last
        .instrs
        .iter()
        .filter(|i| i.op == "ENV")
        .map(|i| i.args.clone())
        .collect::<Vec<_>>()
        .join(" ");
    for kv in xtask::image::ENV {
        assert!(env.contains(kv), "Dockerfile ENV {env:?} lacks {kv}");
    }
    let add = format!("--min --add={}", xtask::image::DEFAULT_ADD.join(","));
    assert_eq!(add, ROUTER_TAGS);
}

#[test]
fn dependencies_are_fetched_before_sources_are_copied() {
    let df = Dockerfile::load();
    // Walk the build stage's ancestry from the oldest stage: `cargo fetch` must come before the
    // first instruction that copies the whole build context.
    let mut chain = df.chain("build");
    chain.reverse();
    let mut fetched_at = None;
    for s in &chain {
        for ins in &s.instrs {
            if ins.op == "RUN" && run_script(ins).contains("cargo fetch --locked") {
                fetched_at.get_or_insert(ins.line);
            }
            let whole_context = ins.op == "COPY"
                && !ins.args.contains("--from=")
                && matches!(ins.args.split_whitespace().next(), Some("." | "./" | "./."));
            if whole_context {
                assert!(
                    fetched_at.is_some(),
                    "line {}: the sources are copied before `cargo fetch` ran",
                    ins.line
                );
            }
        }
    }
    assert!(
        fetched_at.is_some(),
        "no `cargo fetch --locked` in the build's stages"
    );
    // The fetch sees only manifests: the stage it runs in copies them from `manifests`.
    let (_, deps) = df.stage("deps");
    assert!(
        deps.instrs
            .iter()
            .any(|i| i.op == "COPY" && i.args.contains("--from=manifests")),
        "the deps stage must start from the manifests stage's output"
    );
}

/// The words of the `cargo xtask image` command in the Dockerfile, with `$TAGS` replaced by
/// the ARG's default and every other variable by a placeholder value.
fn dockerfile_build_args(df: &Dockerfile) -> Vec<String> {
    let tags = df
        .arg_default("TAGS")
        .expect("the Dockerfile has an `ARG TAGS=...` with the default tag set");
    let script = df
        .all()
        .filter(|i| i.op == "RUN")
        .map(run_script)
        .find(|s| s.contains("cargo xtask image"))
        .expect("the Dockerfile runs `cargo xtask image`");
    let after = script
        .split("cargo xtask image")
        .nth(1)
        .expect("text after the command");
    let command = after
        .split([';', '\n'])
        .next()
        .unwrap_or("")
        .split("&&")
        .next()
        .unwrap_or("");
    let mut args = Vec::new();
    for word in command.split_whitespace() {
        let word = word.trim_matches(['"', '\'']);
        if word == "$TAGS" || word == "${TAGS}" {
            args.extend(tags.split_whitespace().map(String::from));
        } else if word.contains('$') {
            args.push("placeholder".to_string());
        } else {
            args.push(word.to_string());
        }
    }
    args
}

#[test]
fn dockerfile_builds_through_the_xtask_with_flags_it_accepts() {
    let df = Dockerfile::load();
    assert_eq!(
        df.arg_default("TAGS").as_deref(),
        Some(ROUTER_TAGS),
        "the image's default tag set is the router set"
    );
    let args = dockerfile_build_args(&df);
    for want in ["--target", "--rootfs", "/rootfs"] {
        assert!(
            args.iter().any(|a| a == want),
            "`{want}` missing from {args:?}"
        );
    }
    // Every flag the Dockerfile passes is one `cargo xtask image` takes: with an unknown tag
    // added, the xtask must stop at the tag, having accepted every option before it.
    let mut run = vec!["image".to_string()];
    run.extend(args.iter().cloned());
    run.push("--add=nosuchtag".to_string());
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(&run)
        .output()
        .expect("run xtask");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "xtask {run:?} succeeded");
    assert!(
        !stderr.contains("unknown option") && !stderr.contains("needs a value"),
        "the Dockerfile passes an option `cargo xtask image` does not take: {stderr}"
    );
    assert!(
        stderr.contains("unknown tag `nosuchtag`"),
        "expected the unknown-tag error, got: {stderr}"
    );
    // The default set resolves: the image holds exactly these tags.
    let tags: Vec<&str> = ROUTER_TAGS.split_whitespace().collect();
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("featuretags")
        .args(&tags)
        .output()
        .expect("run xtask");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let set: BTreeSet<String> = String::from_utf8_lossy(&o.stdout)
        .trim()
        .split(',')
        .map(String::from)
        .collect();
    for t in ["osrouter", "dns", "netstack"] {
        assert!(set.contains(t), "router set {set:?} lacks {t}");
    }
}

/// The `platform) echo triple ;;` arms of the Dockerfile's target mapping.
fn dockerfile_target_map(df: &Dockerfile) -> BTreeMap<String, String> {
    let script = df
        .all()
        .filter(|i| i.op == "RUN")
        .map(run_script)
        .find(|s| s.contains("rustup target add"))
        .expect("the Dockerfile adds the Rust target with rustup");
    let mut map = BTreeMap::new();
    for arm in script.split(";;") {
        let Some((pattern, body)) = arm.split_once(')') else {
            continue;
        };
        let pattern = pattern.rsplit(" in ").next().unwrap_or(pattern).trim();
        let Some(triple) = body.split_whitespace().skip_while(|w| *w != "echo").nth(1) else {
            continue;
        };
        for p in pattern.split('|') {
            if p.starts_with("linux/") {
                map.insert(p.trim().to_string(), triple.to_string());
            }
        }
    }
    map
}

#[test]
fn platforms_and_musl_targets_agree_everywhere() {
    let df = Dockerfile::load();
    let map = dockerfile_target_map(&df);
    for (platform, triple) in TARGETS {
        assert_eq!(
            map.get(platform).map(String::as_str),
            Some(triple),
            "Dockerfile maps {platform} to {:?}, expected {triple}",
            map.get(platform)
        );
    }
    let extra: BTreeSet<&String> = map
        .values()
        .filter(|t| !TARGETS.iter().any(|(_, want)| want == t))
        .collect();
    assert!(
        extra.is_empty(),
        "Dockerfile builds other targets: {extra:?}"
    );

    // rustc knows every triple (the list works without the targets installed).
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let o = Command::new(rustc)
        .args(["--print", "target-list"])
        .output()
        .expect("run rustc");
    let known = String::from_utf8_lossy(&o.stdout);
    for (_, triple) in TARGETS {
        assert!(
            known.lines().any(|l| l.trim() == triple),
            "rustc does not know {triple}"
        );
    }

    // The image pipeline builds exactly these platforms, and one RouterOS archive for each.
    let image = yaml("image.yml");
    let steps = steps_of(&image);
    let setting = |step: &Value, key: &str| {
        step.get("settings")
            .and_then(|s| s.get(key))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let multi = steps
        .iter()
        .find(|s| s.get("name").and_then(Value::as_str) == Some("image"))
        .expect("image.yml has a step named `image`");
    let pushed: BTreeSet<String> = setting(multi, "platforms")
        .expect("the image step sets platforms")
        .split(',')
        .map(|p| p.trim().to_string())
        .collect();
    assert_eq!(pushed, platforms(), "platforms of the pushed image");
    let archived: BTreeSet<String> = steps
        .iter()
        .filter(|s| setting(s, "output").is_some_and(|o| o.starts_with("type=docker,")))
        .filter_map(|s| setting(s, "platforms"))
        .collect();
    assert_eq!(archived, platforms(), "platforms with a RouterOS archive");

    // The docs name the same platforms and targets.
    let docs = read("docs/packaging.md");
    for (platform, triple) in TARGETS {
        assert!(
            docs.contains(platform),
            "docs/packaging.md does not name {platform}"
        );
        assert!(
            docs.contains(triple),
            "docs/packaging.md does not name {triple}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Woodpecker pipelines

/// A pipeline file as JSON, read by python3's PyYAML.
fn yaml(name: &str) -> Value {
    let path = root().join(".woodpecker").join(name);
    let script = "import json, sys, yaml\n\
                  with open(sys.argv[1]) as f:\n    \
                  doc = yaml.safe_load(f)\n\
                  print(json.dumps(doc, default=str))";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 ({e}): these tests read YAML with python3 and PyYAML; \
                 install them with `apt-get install python3-yaml` (or `pip install pyyaml`)"
            )
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'yaml'") {
        panic!(
            "python3 has no PyYAML module: install it with `apt-get install python3-yaml` \
             (or `pip install pyyaml` for the python3 on PATH), then run the tests again"
        );
    }
    assert!(
        out.status.success(),
        "{} is not valid YAML: {stderr}",
        path.display()
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// The steps of a pipeline, in either of Woodpecker's forms (a list, or a map by name).
fn steps_of(doc: &Value) -> Vec<Value> {
    match doc.get("steps") {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                if let Value::Object(o) = &mut v {
                    o.entry("name").or_insert(Value::String(k.clone()));
                }
                v
            })
            .collect(),
        other => panic!("pipeline has no steps: {other:?}"),
    }
}

/// The events of a pipeline's `when` (a map or a list of maps; `event` a string or a list).
fn events(doc: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let whens: Vec<&Value> = match doc.get("when") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
        None => vec![],
    };
    for w in whens {
        match w.get("event") {
            Some(Value::String(s)) => {
                out.insert(s.clone());
            }
            Some(Value::Array(a)) => {
                out.extend(a.iter().filter_map(Value::as_str).map(String::from))
            }
            _ => {}
        }
    }
    out
}

fn pipeline_files() -> Vec<String> {
    let dir = root().join(".woodpecker");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".yml") || n.ends_with(".yaml"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_pipeline_is_yaml_with_steps() {
    let names = pipeline_files();
    for want in ["ci.yml", "image.yml"] {
        assert!(
            names.iter().any(|n| n == want),
            ".woodpecker/{want} is missing"
        );
    }
    for name in &names {
        let doc = yaml(name);
        assert!(doc.is_object(), "{name}: the document is not a mapping");
        assert!(!events(&doc).is_empty(), "{name}: no `when: event:`");
        let steps = steps_of(&doc);
        assert!(!steps.is_empty(), "{name}: no steps");
        for s in &steps {
            let step = s.get("name").and_then(Value::as_str).unwrap_or("?");
            assert!(
                s.get("image").and_then(Value::as_str).is_some(),
                "{name}: step `{step}` has no image"
            );
            assert!(
                s.get("commands").is_some() || s.get("settings").is_some(),
                "{name}: step `{step}` has neither commands nor settings"
            );
        }
    }
}

#[test]
fn ci_pipeline_runs_the_suite_with_privileges() {
    let doc = yaml("ci.yml");
    let ev = events(&doc);
    assert!(
        ev.contains("push") && ev.contains("pull_request"),
        "ci.yml events: {ev:?}"
    );
    let steps = steps_of(&doc);
    let suite = steps
        .iter()
        .find(|s| {
            s.get("commands")
                .and_then(Value::as_array)
                .is_some_and(|c| c.iter().any(|c| c.as_str() == Some("cargo xtask test")))
        })
        .expect("ci.yml runs `cargo xtask test`");
    assert_eq!(
        suite.get("privileged"),
        Some(&Value::Bool(true)),
        "the suite's network-namespace tests need a privileged step"
    );
    let image = suite.get("image").and_then(Value::as_str).unwrap_or("");
    assert!(image.starts_with("rust:"), "suite image {image}");
}

#[test]
fn image_pipeline_runs_on_tags_with_secrets_by_name() {
    let doc = yaml("image.yml");
    assert_eq!(events(&doc), BTreeSet::from(["tag".to_string()]));
    let allowed_images = [
        "woodpeckerci/plugin-docker-buildx",
        "woodpeckerci/plugin-release",
        "debian:bookworm-slim",
    ];
    // routeros/upgrade.rsc fetches `<archive>.sha256` (one sha256sum line) for each archive:
    // a step writes them with sha256sum and the release attaches them.
    let steps = steps_of(&doc);
    let by_name = |n: &str| {
        steps
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(n))
            .unwrap_or_else(|| panic!("image.yml has no `{n}` step"))
            .clone()
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let commands = strings(&by_name("checksums")["commands"]);
    assert!(
        commands
            .iter()
            .any(|c| c.contains(r#"sha256sum "$f" > "$f.sha256""#)),
        "the checksums step must write `<archive>.sha256` with sha256sum: {commands:?}"
    );
    let files = strings(&by_name("release")["settings"]["files"]);
    assert!(
        files.iter().any(|f| f == "dist/*.tar") && files.iter().any(|f| f == "dist/*.tar.sha256"),
        "the release must attach the archives and their .sha256 files: {files:?}"
    );
    let rsc = read("routeros/upgrade.rsc");
    assert!(
        rsc.contains(".tar.sha256"),
        "upgrade.rsc no longer reads <archive>.sha256"
    );
    for s in steps_of(&doc) {
        let step = s
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let image = s.get("image").and_then(Value::as_str).unwrap_or("");
        assert!(
            allowed_images.contains(&image),
            "step `{step}` uses {image}, not one of the known public plugins {allowed_images:?}"
        );
        // The buildx plugin runs its own Docker daemon; Woodpecker 3 no longer makes it
        // privileged by default (its linter says so for a step without `privileged: true`).
        if image == "woodpeckerci/plugin-docker-buildx" {
            assert_eq!(
                s.get("privileged"),
                Some(&Value::Bool(true)),
                "step `{step}`: the buildx plugin needs `privileged: true`"
            );
        }
        let settings = s.get("settings").cloned().unwrap_or(Value::Null);
        // Credentials only ever come from secrets.
        for key in ["username", "password", "api_key", "registry"] {
            if let Some(v) = settings.get(key) {
                assert!(
                    v.get("from_secret").and_then(Value::as_str).is_some(),
                    "step `{step}`: `{key}` must be `from_secret: NAME`, not {v}"
                );
            }
        }
        if let Some(out) = settings.get("output").and_then(Value::as_str) {
            assert!(
                out.contains("compression=uncompressed") && out.contains("force-compression=true"),
                "step `{step}`: RouterOS needs uncompressed layers: {out}"
            );
            assert_eq!(
                settings.get("dry_run"),
                Some(&Value::Bool(true)),
                "step `{step}` writes an archive and must not push"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// deny.toml and .dockerignore

/// Whether an SPDX expression is satisfied when exactly `allowed` licenses may be chosen.
fn spdx_allowed(spdx: &str, allowed: &BTreeSet<String>) -> bool {
    fn tokens(s: &str) -> Vec<String> {
        s.replace('(', " ( ")
            .replace(')', " ) ")
            .split_whitespace()
            .map(String::from)
            .collect()
    }
    // expr := term (OR term)* ; term := factor (AND factor)* ;
    // factor := '(' expr ')' | ID [WITH ID]
    fn expr(t: &[String], i: &mut usize, ok: &BTreeSet<String>) -> bool {
        let mut v = term(t, i, ok);
        while t.get(*i).map(String::as_str) == Some("OR") {
            *i += 1;
            v |= term(t, i, ok);
        }
        v
    }
    fn term(t: &[String], i: &mut usize, ok: &BTreeSet<String>) -> bool {
        let mut v = factor(t, i, ok);
        while t.get(*i).map(String::as_str) == Some("AND") {
            *i += 1;
            v &= factor(t, i, ok);
        }
        v
    }
    fn factor(t: &[String], i: &mut usize, ok: &BTreeSet<String>) -> bool {
        let tok = t.get(*i).cloned().unwrap_or_default();
        *i += 1;
        if tok == "(" {
            let v = expr(t, i, ok);
            *i += 1; // ')'
            return v;
        }
        if t.get(*i).map(String::as_str) == Some("WITH") {
            let exception = t.get(*i + 1).cloned().unwrap_or_default();
            *i += 2;
            return ok.contains(&format!("{tok} WITH {exception}"));
        }
        ok.contains(tok.trim_end_matches('+'))
    }
    // Old crates still write `MIT/Apache-2.0`.
    let t = tokens(&spdx.replace('/', " OR "));
    let mut i = 0;
    expr(&t, &mut i, allowed)
}

#[test]
fn deny_toml_allows_the_licenses_in_use_and_nothing_copyleft() {
    let text = read("deny.toml");
    let deny: toml::Table = toml::from_str(&text).expect("deny.toml is TOML");
    let section = |name: &str| {
        deny.get(name)
            .and_then(|v| v.as_table())
            .unwrap_or_else(|| panic!("deny.toml has no [{name}]"))
    };
    let allowed: BTreeSet<String> = section("licenses")
        .get("allow")
        .and_then(|v| v.as_array())
        .expect("[licenses] allow = [...]")
        .iter()
        .map(|v| v.as_str().expect("license ids").to_string())
        .collect();
    for copyleft in [
        "GPL", "LGPL", "AGPL", "MPL", "EPL", "CDDL", "EUPL", "OSL", "CC-BY-SA",
    ] {
        assert!(
            !allowed.iter().any(|a| a.starts_with(copyleft)),
            "deny.toml allows a copyleft license ({copyleft}*): {allowed:?}"
        );
    }
    // Every license expression of the dependency tree is satisfied by the allow list (what
    // `cargo deny check licenses` decides, checked here without cargo-deny installed).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .current_dir(root())
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .expect("run cargo metadata");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md: Value = serde_json::from_slice(&o.stdout).expect("metadata JSON");
    let ignored_private = section("licenses")
        .get("private")
        .and_then(|p| p.get("ignore"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let mut refused = Vec::new();
    for p in md["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().unwrap_or("?");
        let private = p["publish"].as_array().is_some_and(|a| a.is_empty());
        if private && ignored_private {
            continue;
        }
        let Some(lic) = p["license"].as_str() else {
            refused.push(format!("{name}: no license field"));
            continue;
        };
        // Stricter than cargo-deny, which skips crates [graph] targets prune: every crate of
        // the lock file must pass here.
        if !spdx_allowed(lic, &allowed) {
            refused.push(format!(
                "{name} {}: {lic}",
                p["version"].as_str().unwrap_or("")
            ));
        }
    }
    assert!(
        refused.is_empty(),
        "deny.toml does not allow the licenses of: {refused:#?}"
    );

    // Sources: crates.io only.
    let sources = section("sources");
    assert_eq!(
        sources.get("unknown-registry").and_then(|v| v.as_str()),
        Some("deny")
    );
    assert_eq!(
        sources.get("unknown-git").and_then(|v| v.as_str()),
        Some("deny")
    );
    // Bans: duplicates are not silently accepted.
    let bans = section("bans");
    let mv = bans.get("multiple-versions").and_then(|v| v.as_str());
    assert!(
        matches!(mv, Some("deny" | "warn")),
        "bans.multiple-versions = {mv:?}"
    );
    // The graph covers the router targets.
    let targets: Vec<String> = section("graph")
        .get("targets")
        .and_then(|v| v.as_array())
        .expect("[graph] targets")
        .iter()
        .filter_map(|v| {
            v.as_str()
                .map(String::from)
                .or_else(|| v.get("triple").and_then(|t| t.as_str()).map(String::from))
        })
        .collect();
    for (_, triple) in TARGETS {
        assert!(
            targets.iter().any(|t| t == triple),
            "[graph] targets lacks {triple}"
        );
    }
    // Advisories are configured (checked where the RustSec database can be fetched).
    section("advisories");
}

#[test]
fn spdx_reader_decides_like_cargo_deny() {
    let ok: BTreeSet<String> = ["MIT", "Apache-2.0", "Unicode-3.0"]
        .into_iter()
        .map(String::from)
        .collect();
    assert!(spdx_allowed("MIT OR Apache-2.0", &ok));
    assert!(spdx_allowed("(MIT OR Apache-2.0) AND Unicode-3.0", &ok));
    assert!(spdx_allowed(
        "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT",
        &ok
    ));
    assert!(spdx_allowed("MIT/Apache-2.0", &ok));
    assert!(!spdx_allowed("GPL-3.0-only", &ok));
    assert!(!spdx_allowed("MIT AND GPL-2.0-or-later", &ok));
    assert!(!spdx_allowed("Apache-2.0 WITH LLVM-exception", &ok));
}

#[test]
fn dockerignore_keeps_the_build_inputs() {
    let text = read(".dockerignore");
    let rules: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for must in [".git", "target"] {
        assert!(rules.contains(&must), ".dockerignore must exclude {must}");
    }
    // What the xtask reads while building must stay in the context.
    for keep in [
        "Cargo.toml",
        "Cargo.lock",
        ".cargo",
        "featuretags.toml",
        "crates",
        "bins",
        "xtask",
        "rustfmt.toml",
    ] {
        assert!(
            !rules
                .iter()
                .any(|r| r.trim_start_matches('/') == keep || *r == "*"),
            ".dockerignore excludes {keep}, which the build needs"
        );
    }
}

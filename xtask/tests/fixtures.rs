//! Every check of `cargo xtask check` must FAIL on a registry or a feature table that breaks
//! its rule. Each directory under `tests/fixtures/` holds a registry, the crates' features as
//! `cargo metadata` would report them, and in `expect.txt` the problems that must be named
//! (empty for the one fixture that must pass).

use std::path::{Path, PathBuf};
use xtask::check::{check_features, check_generated, check_guards, features_from_toml};
use xtask::codegen::tags_rs;
use xtask::registry::Registry;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn problems_of(dir: &Path) -> Vec<String> {
    let reg = match Registry::load(&dir.join("featuretags.toml")) {
        Ok(r) => r,
        Err(e) => return e.0,
    };
    let text = std::fs::read_to_string(dir.join("features.toml")).expect("features.toml");
    let feats = features_from_toml(&text).expect("features fixture parses");
    check_features(&reg, &feats)
}

#[test]
fn every_fixture_gets_exactly_its_verdict() {
    let all = fixtures();
    assert!(all.len() >= 20, "fixtures went missing: {}", all.len());
    let mut passing = 0;
    for dir in &all {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let expect = std::fs::read_to_string(dir.join("expect.txt")).expect("expect.txt");
        let wanted: Vec<&str> = expect.lines().filter(|l| !l.trim().is_empty()).collect();
        let got = problems_of(dir);
        if wanted.is_empty() {
            passing += 1;
            assert!(got.is_empty(), "fixture {name} must pass, got: {got:#?}");
        } else {
            assert!(!got.is_empty(), "fixture {name} must fail but passed");
            for w in wanted {
                assert!(
                    got.iter().any(|g| g.contains(w)),
                    "fixture {name}: no problem says {w:?}; got: {got:#?}"
                );
            }
        }
    }
    assert_eq!(passing, 1, "exactly one fixture (good) passes");
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("tags.rs");
    std::fs::write(&p, text).unwrap();
    p
}

fn good_registry() -> Registry {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/good");
    Registry::load(&dir.join("featuretags.toml")).unwrap()
}

#[test]
fn generated_guards_refuse_dns_without_netstack() {
    let reg = good_registry();
    let p = temp_file("guards-ok", &tags_rs(&reg));
    assert_eq!(check_generated(&reg, &p), Vec::<String>::new());
}

#[test]
fn a_tags_file_without_guards_fails_the_check() {
    let reg = good_registry();
    let without: String = tags_rs(&reg)
        .lines()
        .filter(|l| !l.starts_with("#[cfg(all(") && !l.starts_with("compile_error!"))
        .map(|l| format!("{l}\n"))
        .collect();
    let p = temp_file("guards-missing", &without);
    let problems = check_guards(&reg, &p);
    assert!(
        problems
            .iter()
            .any(|m| m.contains("did not refuse `dns` without `netstack`")),
        "{problems:#?}"
    );
}

#[test]
fn a_stale_tags_file_fails_the_check() {
    let reg = good_registry();
    let p = temp_file("stale", &tags_rs(&reg).replace("HAS_DNS", "HAS_DNS_OLD"));
    let problems = check_generated(&reg, &p);
    assert!(problems[0].contains("is stale"), "{problems:#?}");
}

#[test]
fn the_real_workspace_passes() {
    let problems = xtask::check::run(&xtask::workspace_root());
    assert!(problems.is_empty(), "{problems:#?}");
}

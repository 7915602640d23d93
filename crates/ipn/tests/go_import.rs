//! Importing Go tailscaled's state file, from fixtures shaped like Go's `ipn/store` output.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ipn::backend::{LocalBackend, Opened};
use ipn::localapi::Backend;
use ipn::state::{self, FileStore, Loaded, StateStore};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tailcfg::key::{MachinePrivate, NodePrivate};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ipn-go-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const MACHINE: &str = "privkey:1011111111111111111111111111111111111111111111111111111111111151";
const NODE: &str = "privkey:2022222222222222222222222222222222222222222222222222222222222262";
const OLD_NODE: &str = "privkey:3033333333333333333333333333333333333333333333333333333333333373";

#[test]
fn go_state_is_imported_backed_up_and_replaced() {
    let dir = temp_dir("import");
    let path = dir.join("tailscaled.state");
    let go = fixture("go-tailscaled.state");
    std::fs::write(&path, &go).unwrap();

    let (b, opened) = LocalBackend::open(Box::new(FileStore::new(&path)), None, "test").unwrap();
    let backup = format!("{}.go-backup", path.display());
    assert_eq!(opened, Opened::ImportedFromGo(Some(backup.clone())));
    assert_eq!(
        std::fs::read(&backup).unwrap(),
        go,
        "Go file kept byte for byte"
    );
    assert_eq!(std::fs::metadata(&backup).unwrap().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);

    let st = match state::load(&FileStore::new(&path)).unwrap() {
        Loaded::Ours(s) => s,
        other => panic!("{other:?}"),
    };
    let mk = MachinePrivate::from_text(MACHINE).unwrap();
    assert_eq!(st.machine_key.as_ref().unwrap().public(), mk.public());
    let nk = NodePrivate::from_text(NODE).unwrap();
    assert_eq!(st.node_key.as_ref().unwrap().public(), nk.public());
    let ok = NodePrivate::from_text(OLD_NODE).unwrap();
    assert_eq!(st.old_node_key.as_ref().unwrap().public(), ok.public());
    assert_eq!(st.profile.login_name, "router@example.net");
    assert_eq!(st.profile.user_id, 3);
    assert_eq!(st.profile.node_id, "nABCDEF1CNTRL");
    assert_eq!(st.profile.control_url, "https://headscale.example.net");
    assert_eq!(st.profile.tailnet_domain, "example.net");
    assert_eq!(st.profile.magic_dns_suffix, "tail1234.ts.net");
    assert_eq!(st.prefs.hostname, "mikrotik-gw");
    assert!(st.prefs.want_running && st.prefs.route_all && !st.prefs.corp_dns);
    assert_eq!(st.prefs.advertise_routes.len(), 3);

    let status = b.status(true);
    assert!(status.have_node_key);
    assert_eq!(
        status.self_status.unwrap().public_key,
        nk.public().to_string()
    );
    drop(b);

    // Opening again finds our own format and writes nothing.
    let ino = std::fs::metadata(&path).unwrap().ino();
    let (_, opened) = LocalBackend::open(Box::new(FileStore::new(&path)), None, "test").unwrap();
    assert_eq!(opened, Opened::Existing);
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn legacy_daemon_key_layout_is_imported() {
    let dir = temp_dir("legacy");
    let path = dir.join("tailscaled.state");
    std::fs::write(&path, fixture("go-legacy-daemon.state")).unwrap();
    let store = FileStore::new(&path);
    match state::load(&store).unwrap() {
        Loaded::FromGo { state, .. } => {
            assert!(state.node_key.is_some());
            assert!(state.old_node_key.is_none(), "zero key means none");
            assert_eq!(state.prefs.hostname, "mikrotik-gw");
        }
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broken_go_state_is_refused_and_left_alone() {
    let dir = temp_dir("broken");
    let path = dir.join("tailscaled.state");
    let bytes = fixture("go-missing-profile.state");
    std::fs::write(&path, &bytes).unwrap();
    let store = FileStore::new(&path);
    let e = LocalBackend::open(Box::new(store.clone()), None, "test")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("profile-ffff") && e.contains(&path.display().to_string()),
        "{e}"
    );
    assert_eq!(store.read().unwrap().unwrap(), bytes);
    assert!(!Path::new(&format!("{}.go-backup", path.display())).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

//! The node's persisted state: one file holding the machine key, the node key (and the old one
//! during rotation), the login profile and the prefs.
//!
//! # Format: versioned JSON
//!
//! ```json
//! {
//!   "Version": 1,
//!   "MachineKey": "privkey:…",
//!   "NodeKey": "privkey:…",
//!   "OldNodeKey": null,
//!   "Profile": { "ControlURL": "…", "LoginName": "…", "DisplayName": "…", "UserID": 1,
//!                "NodeID": "…", "TailnetDomain": "…", "MagicDNSSuffix": "…" },
//!   "Prefs": { "ControlURL": "…", "WantRunning": true, "Hostname": "…", … }
//! }
//! ```
//!
//! JSON rather than postcard: the file is under 2 KiB and written only when something changes,
//! so compactness buys nothing on flash, while a router owner can read it with `cat` when a
//! node misbehaves. `serde_json` is linked anyway (LocalAPI), so it costs no bytes, and the
//! prefs keep Go's field names, the same ones `GET prefs` shows. `Version` is checked before
//! anything else is read: a file written by a newer tailrouter (a higher version) is refused,
//! never half-understood and then overwritten by a downgrade.
//!
//! # Writing
//!
//! [`FileStore`] writes atomically: a temporary file in the same directory created with mode
//! 0600 (never readable by others, not even for a moment), the bytes, `fsync`, `rename` over
//! the old file, `fsync` of the directory. It first compares the new bytes with the file and
//! writes nothing when they are equal, so an unchanged save causes no flash write; it reads
//! with `O_NOATIME`, so neither that compare nor the read at start rewrites the inode's
//! access time (docs/flash.md).
//!
//! # Refusing bad files
//!
//! A file that is empty, truncated, not JSON, of an unknown version or with a malformed key is
//! refused with an error naming the path and the problem, and left untouched. The daemon then
//! refuses to start, rather than registering a new node and losing the old identity.
//!
//! # Importing Go tailscaled's state
//!
//! Go's file (same default path, `/var/lib/tailscale/tailscaled.state`) is a JSON object whose
//! values are base64: `_machinekey` (`privkey:…` text), `_current-profile` (the state key of
//! the current profile, like `profile-1ab3`), `_profiles` (JSON: profile ID → `LoginProfile`
//! with `Key`, `ControlURL`, `UserProfile`, `NodeID`, `NetworkProfile`) and, under the current
//! profile's key, its `ipn.Prefs` JSON whose `Config` is the `persist.Persist` with
//! `PrivateNodeKey` and `OldPrivateNodeKey`. Older files keep the prefs under `_daemon`.
//!
//! A router switching images keeps its `--state` flag, so the Go file is read in place, at the
//! path we are told to use. Before our format replaces it there, its exact bytes are copied to
//! `<path>.go-backup` (0600, fsynced; an existing different backup is kept and a timestamped
//! name used). Going back to Go tailscaled is then `mv tailscaled.state.go-backup
//! tailscaled.state`. Any part missing or malformed refuses the whole import, untouched.
//! Only the current profile is imported (a router has one); other profiles stay in the backup.
//!
//! A state file found readable by group or others (copied by hand) is made 0600 when read.

use crate::localapi::types::{Prefs, UserProfile};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tailcfg::key::{MachinePrivate, NodePrivate};
use zeroize::Zeroizing;

/// The state format this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A file system operation failed.
    #[error("state {path}: cannot {op}: {source}")]
    Io {
        /// The store (its path).
        path: String,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The content is damaged; it is left as it is.
    #[error(
        "state {path} is unusable: {problem}; it was left untouched for inspection (move it away to start as a new node)"
    )]
    Corrupt {
        /// The store (its path).
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The file was written by a format this build does not know.
    #[error(
        "state {path} has format version {found}, this build reads only version {FORMAT_VERSION}; it was left untouched (was it written by a newer tailrouter?)"
    )]
    Version {
        /// The store (its path).
        path: String,
        /// The version found.
        found: u64,
    },
}

/// Where state lives. Firmware may implement this to keep state elsewhere (NVRAM, a config
/// partition); the core only ever reads and writes one blob.
pub trait StateStore: Send + Sync {
    /// A name for messages, such as the file's path.
    fn describe(&self) -> String;
    /// The stored bytes, or `None` if nothing was ever stored.
    fn read(&self) -> Result<Option<Vec<u8>>, StateError>;
    /// Stores `bytes` unless they equal what is stored; returns whether it wrote.
    fn write(&self, bytes: &[u8]) -> Result<bool, StateError>;
    /// Keeps a copy of a foreign (Go tailscaled) state before it is replaced; returns where.
    fn back_up_foreign(&self, _bytes: &[u8]) -> Result<Option<String>, StateError> {
        Ok(None)
    }
}

/// State kept in memory only (`--state=mem:`): an ephemeral node.
#[derive(Debug, Default)]
pub struct MemStore {
    bytes: Mutex<Option<Zeroizing<Vec<u8>>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StateStore for MemStore {
    fn describe(&self) -> String {
        "mem:".into()
    }
    fn read(&self) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .bytes
            .lock()
            .map_err(|_| poisoned())?
            .as_ref()
            .map(|b| b.to_vec()))
    }
    fn write(&self, bytes: &[u8]) -> Result<bool, StateError> {
        let mut g = self.bytes.lock().map_err(|_| poisoned())?;
        if g.as_ref().is_some_and(|b| b.as_slice() == bytes) {
            return Ok(false);
        }
        *g = Some(Zeroizing::new(bytes.to_vec()));
        Ok(true)
    }
}

fn poisoned() -> StateError {
    StateError::Io {
        path: "mem:".into(),
        op: "lock",
        source: std::io::Error::other("lock poisoned"),
    }
}

/// State in one file, written atomically with mode 0600.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Reads a whole file without updating its access time: with the default `relatime` mount
/// option, the first read after each write would otherwise rewrite the inode, a flash write
/// for a read (the compare before an unchanged save, every start). `O_NOATIME` needs the
/// file's owner (or CAP_FOWNER); without it, a plain read.
fn read_noatime(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let open = |flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
    };
    let mut f = match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0)?,
        r => r?,
    };
    // Sized up front, like std::fs::read: no reallocation leaves a stray copy of the keys.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

impl FileStore {
    /// A store at `path` (the file need not exist yet; its directory must).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> StateError + '_ {
        move |source| StateError::Io {
            path: self.path.display().to_string(),
            op,
            source,
        }
    }

    /// Takes group and world access away from an existing file (such as one copied by hand);
    /// only its mode changes, never its content.
    fn make_private(&self) -> Result<(), StateError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&self.path).map_err(self.io("inspect"))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "state {} was readable by others (mode {:o}); making it 0600",
                self.path.display(),
                mode & 0o777
            );
            std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))
                .map_err(self.io("make it private"))?;
        }
        Ok(())
    }

    /// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync of the directory).
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), StateError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".into());
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(self.io("create a temporary file"))?;
            f.write_all(bytes).map_err(self.io("write"))?;
            f.sync_all().map_err(self.io("fsync"))?;
            drop(f);
            std::fs::rename(&tmp, path).map_err(self.io("rename into place"))?;
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(self.io("fsync its directory"))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

impl StateStore for FileStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn read(&self) -> Result<Option<Vec<u8>>, StateError> {
        match read_noatime(&self.path) {
            Ok(b) => {
                self.make_private()?;
                Ok(Some(b))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("read")(e)),
        }
    }

    fn write(&self, bytes: &[u8]) -> Result<bool, StateError> {
        match read_noatime(&self.path) {
            Ok(old) => {
                let old = Zeroizing::new(old);
                if old.as_slice() == bytes {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("read before writing")(e)),
        }
        self.write_atomic(&self.path, bytes)?;
        Ok(true)
    }

    fn back_up_foreign(&self, bytes: &[u8]) -> Result<Option<String>, StateError> {
        let mut backup = PathBuf::from(format!("{}.go-backup", self.path.display()));
        match read_noatime(&backup) {
            Ok(old) if old == bytes => return Ok(Some(backup.display().to_string())),
            Ok(_) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                backup = PathBuf::from(format!("{}.go-backup.{secs}", self.path.display()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("read the backup")(e)),
        }
        self.write_atomic(&backup, bytes)?;
        Ok(Some(backup.display().to_string()))
    }
}

/// Who the node is logged in as, and where.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    /// The control server the node is registered with.
    #[serde(rename = "ControlURL")]
    pub control_url: String,
    /// The user's login name.
    #[serde(rename = "LoginName")]
    pub login_name: String,
    /// The user's display name.
    #[serde(rename = "DisplayName")]
    pub display_name: String,
    /// The user's numeric ID.
    #[serde(rename = "UserID")]
    pub user_id: i64,
    /// The node's stable ID.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// The tailnet's domain (its name).
    #[serde(rename = "TailnetDomain")]
    pub tailnet_domain: String,
    /// The tailnet's MagicDNS suffix.
    #[serde(rename = "MagicDNSSuffix")]
    pub magic_dns_suffix: String,
}

impl Profile {
    /// The user as the status JSON shows it.
    pub fn user_profile(&self) -> UserProfile {
        UserProfile {
            id: self.user_id,
            login_name: self.login_name.clone(),
            display_name: self.display_name.clone(),
            profile_pic_url: String::new(),
        }
    }
}

/// Everything the node remembers across restarts. `Debug` never shows private keys.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    /// Always [`FORMAT_VERSION`] when written.
    #[serde(rename = "Version")]
    version: u64,
    /// The machine key: the device's identity towards control.
    #[serde(rename = "MachineKey")]
    pub machine_key: Option<MachinePrivate>,
    /// The node key (WireGuard key), once registered.
    #[serde(rename = "NodeKey")]
    pub node_key: Option<NodePrivate>,
    /// The previous node key, while a rotation is pending.
    #[serde(rename = "OldNodeKey")]
    pub old_node_key: Option<NodePrivate>,
    /// The login profile.
    #[serde(rename = "Profile", default)]
    pub profile: Profile,
    /// The prefs.
    #[serde(rename = "Prefs", default)]
    pub prefs: Prefs,
}

impl fmt::Debug for PersistedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys' own Debug shows only their public halves.
        f.debug_struct("PersistedState")
            .field("machine_key", &self.machine_key)
            .field("node_key", &self.node_key)
            .field("old_node_key", &self.old_node_key)
            .field("profile", &self.profile)
            .field("prefs", &self.prefs)
            .finish()
    }
}

impl Default for PersistedState {
    fn default() -> Self {
        PersistedState {
            version: FORMAT_VERSION,
            machine_key: None,
            node_key: None,
            old_node_key: None,
            profile: Profile::default(),
            prefs: Prefs::default(),
        }
    }
}

impl PersistedState {
    /// A new node: a fresh machine key and default prefs.
    pub fn new_node() -> Self {
        PersistedState {
            machine_key: Some(MachinePrivate::generate()),
            ..Self::default()
        }
    }

    /// The bytes written to the store (indented JSON, ending in a newline).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut s = self.clone();
        s.version = FORMAT_VERSION;
        s.prefs.config = None;
        // Serializing plain structs of strings, numbers and keys cannot fail; an empty blob
        // would be refused on the next read rather than silently accepted.
        let mut v = serde_json::to_vec_pretty(&s).unwrap_or_default();
        v.push(b'\n');
        Zeroizing::new(v)
    }
}

/// What [`load`] found.
#[derive(Debug)]
#[non_exhaustive]
pub enum Loaded {
    /// Nothing stored yet.
    Empty,
    /// Our own format.
    Ours(PersistedState),
    /// Go tailscaled's state, converted; the original bytes are kept for the backup.
    FromGo {
        /// The converted state.
        state: PersistedState,
        /// The Go file's exact bytes.
        original: Zeroizing<Vec<u8>>,
    },
}

/// Reads and checks the stored state. Never writes.
pub fn load(store: &dyn StateStore) -> Result<Loaded, StateError> {
    let Some(bytes) = store.read()? else {
        return Ok(Loaded::Empty);
    };
    let bytes = Zeroizing::new(bytes);
    let path = store.describe();
    let corrupt = |problem: String| StateError::Corrupt {
        path: path.clone(),
        problem,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(corrupt("the file is empty (truncated?)".into()));
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(format!("not valid JSON (truncated or damaged?): {e}")))?;
    let serde_json::Value::Object(map) = &value else {
        return Err(corrupt("not a JSON object".into()));
    };
    if let Some(v) = map.get("Version") {
        let found = v
            .as_u64()
            .ok_or_else(|| corrupt(format!("Version is {v}, not a number")))?;
        if found != FORMAT_VERSION {
            return Err(StateError::Version { path, found });
        }
        let st: PersistedState =
            serde_json::from_value(value).map_err(|e| corrupt(format!("bad content: {e}")))?;
        if st.machine_key.is_none() {
            return Err(corrupt("no MachineKey".into()));
        }
        return Ok(Loaded::Ours(st));
    }
    if map.contains_key("_machinekey") {
        let state = import_go(map).map_err(|p| corrupt(format!("Go tailscaled state: {p}")))?;
        return Ok(Loaded::FromGo {
            state,
            original: bytes,
        });
    }
    Err(corrupt(
        "neither a tailrouter state file (no Version) nor a Go tailscaled one (no _machinekey)"
            .into(),
    ))
}

fn go_value(
    map: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    match map.get(key) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(|b| Some(Zeroizing::new(b)))
            .map_err(|e| format!("{key}: not base64: {e}")),
        Some(_) => Err(format!("{key}: not a base64 string")),
    }
}

/// Go writes a zero private key as `privkey:` and 64 zeros; that means "none".
fn go_private_text(s: &str) -> Option<&str> {
    let hex = s.strip_prefix(tailcfg::key::PRIVATE_PREFIX)?;
    (!hex.bytes().all(|b| b == b'0')).then_some(s)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GoNetworkProfile {
    #[serde(rename = "MagicDNSName")]
    magic_dns_name: String,
    #[serde(rename = "DomainName")]
    domain_name: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GoLoginProfile {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "NetworkProfile")]
    network_profile: GoNetworkProfile,
    #[serde(rename = "UserProfile")]
    user_profile: UserProfile,
    #[serde(rename = "NodeID")]
    node_id: String,
    #[serde(rename = "ControlURL")]
    control_url: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GoPersist {
    #[serde(rename = "PrivateNodeKey")]
    private_node_key: String,
    #[serde(rename = "OldPrivateNodeKey")]
    old_private_node_key: String,
    #[serde(rename = "UserProfile")]
    user_profile: UserProfile,
    #[serde(rename = "NodeID")]
    node_id: String,
}

fn import_go(map: &serde_json::Map<String, serde_json::Value>) -> Result<PersistedState, String> {
    let mk = go_value(map, "_machinekey")?.ok_or("no _machinekey")?;
    let mk = std::str::from_utf8(&mk).map_err(|_| "_machinekey: not text")?;
    let machine_key = go_private_text(mk.trim())
        .ok_or("_machinekey is zero or not a privkey")
        .and_then(|t| MachinePrivate::from_text(t).map_err(|_| "_machinekey: bad key"))?;

    let mut st = PersistedState {
        machine_key: Some(machine_key),
        ..PersistedState::default()
    };

    let current = go_value(map, "_current-profile")?;
    let (prefs_key, login) = match current {
        Some(k) => {
            let k = String::from_utf8(k.to_vec()).map_err(|_| "_current-profile: not text")?;
            let profiles: std::collections::BTreeMap<String, GoLoginProfile> =
                match go_value(map, "_profiles")? {
                    Some(b) => serde_json::from_slice(&b).map_err(|e| format!("_profiles: {e}"))?,
                    None => Default::default(),
                };
            let login = profiles.into_values().find(|p| p.key == k);
            (k, login)
        }
        None => ("_daemon".to_string(), None),
    };
    let Some(prefs_bytes) = go_value(map, &prefs_key)? else {
        if map.contains_key("_current-profile") {
            return Err(format!("current profile {prefs_key:?} has no prefs"));
        }
        // A machine key alone: registered nowhere yet.
        return Ok(st);
    };
    st.prefs = serde_json::from_slice(&prefs_bytes).map_err(|e| format!("{prefs_key}: {e}"))?;
    let raw: serde_json::Value =
        serde_json::from_slice(&prefs_bytes).map_err(|e| format!("{prefs_key}: {e}"))?;
    let mut persist: GoPersist = match raw.get("Config") {
        Some(c) if !c.is_null() => {
            serde_json::from_value(c.clone()).map_err(|e| format!("{prefs_key}: Config: {e}"))?
        }
        _ => GoPersist::default(),
    };
    let node_key = |s: &str, what: &str| -> Result<Option<NodePrivate>, String> {
        match go_private_text(s) {
            None if s.is_empty() || s.starts_with(tailcfg::key::PRIVATE_PREFIX) => Ok(None),
            None => Err(format!("{prefs_key}: {what}: not a privkey")),
            Some(t) => NodePrivate::from_text(t)
                .map(Some)
                .map_err(|_| format!("{prefs_key}: {what}: bad key")),
        }
    };
    let keys = (
        node_key(&persist.private_node_key, "PrivateNodeKey"),
        node_key(&persist.old_private_node_key, "OldPrivateNodeKey"),
    );
    {
        use zeroize::Zeroize;
        persist.private_node_key.zeroize();
        persist.old_private_node_key.zeroize();
    }
    st.node_key = keys.0?;
    st.old_node_key = keys.1?;
    let user = if persist.user_profile.login_name.is_empty() {
        login
            .as_ref()
            .map(|l| l.user_profile.clone())
            .unwrap_or_default()
    } else {
        persist.user_profile.clone()
    };
    st.profile = Profile {
        control_url: login
            .as_ref()
            .map(|l| l.control_url.clone())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| st.prefs.control_url.clone()),
        login_name: user.login_name,
        display_name: user.display_name,
        user_id: user.id,
        node_id: if persist.node_id.is_empty() {
            login
                .as_ref()
                .map(|l| l.node_id.clone())
                .unwrap_or_default()
        } else {
            persist.node_id.clone()
        },
        tailnet_domain: login
            .as_ref()
            .map(|l| l.network_profile.domain_name.clone())
            .unwrap_or_default(),
        magic_dns_suffix: login
            .as_ref()
            .map(|l| l.network_profile.magic_dns_name.clone())
            .unwrap_or_default(),
    };
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ipn-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn sample() -> PersistedState {
        let mut s = PersistedState::new_node();
        s.node_key = Some(NodePrivate::generate());
        s.profile.login_name = "alice@example.com".into();
        s.prefs.hostname = "gw".into();
        s.prefs.advertise_routes = vec!["192.168.88.0/24".parse().unwrap()];
        s
    }

    #[test]
    fn round_trips_through_a_file_with_mode_0600() {
        let dir = temp_dir("roundtrip");
        let store = FileStore::new(dir.join("tailscaled.state"));
        assert!(matches!(load(&store).unwrap(), Loaded::Empty));
        let s = sample();
        assert!(store.write(&s.to_bytes()).unwrap());
        let meta = std::fs::metadata(store.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        match load(&store).unwrap() {
            Loaded::Ours(back) => assert_eq!(back, s),
            other => panic!("{other:?}"),
        }
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(text.contains("\"Version\": 1"), "{text}");
        assert!(text.contains("\"Hostname\": \"gw\""), "{text}");
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unchanged_save_does_not_touch_the_file() {
        let dir = temp_dir("nochange");
        let store = FileStore::new(dir.join("s"));
        let s = sample();
        assert!(store.write(&s.to_bytes()).unwrap());
        let before = std::fs::metadata(store.path()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!store.write(&s.to_bytes()).unwrap());
        let after = std::fs::metadata(store.path()).unwrap();
        assert_eq!(before.ino(), after.ino());
        assert_eq!(before.mtime_nsec(), after.mtime_nsec());
        assert_eq!(before.mtime(), after.mtime());
        let mut changed = s.clone();
        changed.prefs.hostname = "other".into();
        assert!(store.write(&changed.to_bytes()).unwrap());
        assert_ne!(std::fs::metadata(store.path()).unwrap().ino(), before.ino());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_files_are_refused_naming_path_and_problem_and_left_untouched() {
        let dir = temp_dir("bad");
        let good = sample().to_bytes();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (Vec::new(), "empty"),
            (good[..good.len() / 2].to_vec(), "not valid JSON"),
            (b"[1,2]".to_vec(), "not a JSON object"),
            (b"{\"Version\": 2}".to_vec(), "format version 2"),
            (b"{\"Version\": \"x\"}".to_vec(), "not a number"),
            (
                b"{\"Version\": 1, \"MachineKey\": \"privkey:zz\"}".to_vec(),
                "bad content",
            ),
            (b"{\"Version\": 1}".to_vec(), "no MachineKey"),
            (b"{\"hello\": 1}".to_vec(), "neither"),
            (b"{\"_machinekey\": \"!!!\"}".to_vec(), "not base64"),
        ];
        for (i, (bytes, want)) in cases.into_iter().enumerate() {
            let path = dir.join(format!("state{i}"));
            std::fs::write(&path, &bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let store = FileStore::new(&path);
            let e = load(&store).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "left untouched");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_world_readable_file_is_made_private_without_changing_it() {
        let dir = temp_dir("private");
        let path = dir.join("s");
        let bytes = sample().to_bytes();
        std::fs::write(&path, &bytes[..]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = FileStore::new(&path);
        assert!(matches!(load(&store).unwrap(), Loaded::Ours(_)));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), bytes.as_slice());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_leave_the_access_time_alone() {
        use std::os::unix::fs::MetadataExt;
        let d = temp_dir("noatime");
        let path = d.join("tailscaled.state");
        let store = FileStore::new(&path);
        let bytes = sample().to_bytes();
        store.write(&bytes).unwrap();
        // An access time older than the mtime: relatime would update it on the next read.
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_accessed(old))
            .unwrap();
        store.read().unwrap();
        assert!(!store.write(&bytes).unwrap(), "an unchanged save wrote");
        let atime = std::fs::metadata(&path).unwrap().atime();
        assert_eq!(atime, 1_000_000, "a read updated the access time");
    }

    #[test]
    fn mem_store_compares_too() {
        let m = MemStore::new();
        assert!(matches!(load(&m).unwrap(), Loaded::Empty));
        let b = sample().to_bytes();
        assert!(m.write(&b).unwrap());
        assert!(!m.write(&b).unwrap());
        assert!(matches!(load(&m).unwrap(), Loaded::Ours(_)));
    }

    #[test]
    fn debug_never_shows_private_keys() {
        let s = sample();
        let text = format!("{s:?}");
        let secret = s.machine_key.as_ref().unwrap().to_text();
        assert!(!text.contains(&secret[8..]), "{text}");
        assert!(!text.contains("privkey:"), "{text}");
    }
}

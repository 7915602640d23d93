//! Messages of the ts2021 handshake and of registration (`/key`, early Noise payload,
//! `/machine/register`).

use crate::UserId;
use crate::de::{is_default, null_default};
use crate::key::{ChallengePublic, MachinePublic, NodePublic};
use crate::net::Time;
use crate::node::Hostinfo;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The answer to `GET /key?v=N`: the server's Noise static key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct OverTlsPublicKeyResponse {
    /// Key of the retired NaCl protocol; zero for new clients.
    #[serde(rename = "legacyPublicKey")]
    pub legacy_public_key: MachinePublic,
    /// The server's Noise static public key. Zero means the server is too old.
    #[serde(rename = "publicKey")]
    pub public_key: MachinePublic,
}

/// The early payload the server sends inside Noise before HTTP/2.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct EarlyNoise {
    /// Challenge for proving possession of the node key.
    #[serde(rename = "nodeKeyChallenge")]
    pub node_key_challenge: ChallengePublic,
}

/// A registration request (`POST /machine/register`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct RegisterRequest {
    /// The capability version.
    pub version: i32,
    /// The node key to register.
    pub node_key: NodePublic,
    /// The previous node key when rotating; zero otherwise (always written, as Go does).
    pub old_node_key: NodePublic,
    /// Tailnet-lock public key (`nlpub:`), if any.
    #[serde(rename = "NLKey", skip_serializing_if = "String::is_empty")]
    pub nl_key: String,
    /// Non-interactive credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegisterAuth>,
    /// Requested expiry; `None` (Go's zero time) means no request. A past time logs out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry: Option<Time>,
    /// The `AuthURL` of a previous answer: wait for the user to finish logging in.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub followup: String,
    /// The node's Hostinfo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<Hostinfo>,
    /// Delete the node when it goes inactive.
    #[serde(skip_serializing_if = "is_default")]
    pub ephemeral: bool,
    /// Request time (rounded to the second, as Go sends it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Time>,
    /// Tailnet selection hint.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tailnet: String,
}

/// Credentials in a [`RegisterRequest`]. `Debug` hides the auth key.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct RegisterAuth {
    /// A pre-authorized key. For a tailnet-lock wrapped key (`<key>--TL<sig>-<priv>`) only
    /// the part before `--TL` goes here; see [`RegisterAuth::with_auth_key`].
    #[serde(skip_serializing_if = "String::is_empty")]
    pub auth_key: String,
}

impl RegisterAuth {
    /// Credentials from an auth key as the user gave it (a wrapped key is unwrapped).
    pub fn with_auth_key(key: &str) -> Self {
        let key = key.split_once("--TL").map_or(key, |(k, _)| k);
        Self {
            auth_key: key.to_owned(),
        }
    }
}

impl fmt::Debug for RegisterAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterAuth")
            .field(
                "auth_key",
                &if self.auth_key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

/// The answer to a [`RegisterRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct RegisterResponse {
    /// The user the node belongs to.
    pub user: User,
    /// The login used.
    pub login: Login,
    /// The node key has expired: make a new one and register again.
    #[serde(skip_serializing_if = "is_default")]
    pub node_key_expired: bool,
    /// False means an admin still has to approve the device.
    #[serde(skip_serializing_if = "is_default")]
    pub machine_authorized: bool,
    /// Non-empty: interactive login is pending at this URL.
    #[serde(rename = "AuthURL", skip_serializing_if = "String::is_empty")]
    pub auth_url: String,
    /// Tailnet-lock signature to re-sign (base64), kept opaque.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub node_key_signature: String,
    /// Non-empty means failure; everything else is then meaningless.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// A user of the tailnet (`tailcfg.User`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct User {
    /// User ID.
    #[serde(rename = "ID")]
    pub id: UserId,
    /// Display name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    /// Avatar URL.
    #[serde(rename = "ProfilePicURL", skip_serializing_if = "String::is_empty")]
    pub profile_pic_url: String,
    /// Creation time.
    #[serde(skip_serializing_if = "Time::is_zero")]
    pub created: Time,
}

/// A login of a user (`tailcfg.Login`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
#[non_exhaustive]
pub struct Login {
    /// Login ID.
    #[serde(rename = "ID")]
    pub id: i64,
    /// Identity provider.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// Login name, e.g. an e-mail address.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub login_name: String,
    /// Display name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    /// Avatar URL.
    #[serde(rename = "ProfilePicURL", skip_serializing_if = "String::is_empty")]
    pub profile_pic_url: String,
}

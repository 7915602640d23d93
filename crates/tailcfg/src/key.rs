//! Curve25519 keys and their text forms.
//!
//! Three key pairs identify a node: the machine key (the device, towards control: the static
//! key of the ts2021 Noise session), the node key (the WireGuard key, towards peers and DERP;
//! it rotates) and the disco key (path discovery; fresh on every start).
//!
//! Public keys are written as a type prefix and 64 lower-case hex digits (`nodekey:3f…`);
//! parsing accepts upper-case hex too. Private keys are written `privkey:…` and are never
//! printed by `Debug`, so a key cannot reach a log line by accident.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use zeroize::Zeroize;

/// Why a key's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyParseError {
    /// The text does not start with the expected prefix.
    Prefix {
        /// The prefix that was expected, such as `nodekey:`.
        want: &'static str,
    },
    /// The part after the prefix is not 64 hex digits.
    Hex,
}

impl fmt::Display for KeyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyParseError::Prefix { want } => write!(f, "key does not start with {want:?}"),
            KeyParseError::Hex => f.write_str("key is not 64 hexadecimal digits after its prefix"),
        }
    }
}

impl std::error::Error for KeyParseError {}

fn parse_hex(s: &str, prefix: &'static str) -> Result<[u8; 32], KeyParseError> {
    let rest = s
        .strip_prefix(prefix)
        .ok_or(KeyParseError::Prefix { want: prefix })?;
    let mut out = [0u8; 32];
    if rest.len() != 64 {
        return Err(KeyParseError::Hex);
    }
    hex::decode_to_slice(rest, &mut out).map_err(|_| KeyParseError::Hex)?;
    Ok(out)
}

/// The text prefix of private keys of every kind.
pub const PRIVATE_PREFIX: &str = "privkey:";

macro_rules! public_key {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The text prefix of this key type.
            pub const PREFIX: &'static str = $prefix;

            /// The key from its 32 raw bytes.
            pub const fn from_bytes(b: [u8; 32]) -> Self {
                Self(b)
            }

            /// The 32 raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Whether this is the all-zero key (Go's "zero value": no key).
            pub fn is_zero(&self) -> bool {
                self.0 == [0u8; 32]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($prefix)?;
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = KeyParseError;
            fn from_str(s: &str) -> Result<Self, KeyParseError> {
                parse_hex(s, $prefix).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

macro_rules! private_key {
    ($(#[$doc:meta])* $name:ident, $public:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name([u8; 32]);

        impl $name {
            /// A fresh random key from the operating system's generator, clamped for X25519.
            pub fn generate() -> Self {
                use rand_core::RngCore;
                let mut b = [0u8; 32];
                rand_core::OsRng.fill_bytes(&mut b);
                Self::from_bytes(b)
            }

            /// The key from 32 raw bytes, clamped as X25519 requires.
            pub fn from_bytes(mut b: [u8; 32]) -> Self {
                b[0] &= 248;
                b[31] &= 127;
                b[31] |= 64;
                Self(b)
            }

            /// The 32 raw (clamped) bytes. Handle with care: this is the secret.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The matching public key.
            pub fn public(&self) -> $public {
                $public(x25519_dalek::x25519(self.0, x25519_dalek::X25519_BASEPOINT_BYTES))
            }

            /// X25519 Diffie-Hellman with a peer's public key.
            pub fn shared_secret(&self, peer: &[u8; 32]) -> [u8; 32] {
                x25519_dalek::x25519(self.0, *peer)
            }

            /// The `privkey:…` text form, for the state file only.
            pub fn to_text(&self) -> String {
                let mut s = String::with_capacity(72);
                s.push_str(PRIVATE_PREFIX);
                s.push_str(&hex::encode(self.0));
                s
            }

            /// Parses the `privkey:…` text form.
            pub fn from_text(s: &str) -> Result<Self, KeyParseError> {
                parse_hex(s, PRIVATE_PREFIX).map(Self::from_bytes)
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.0.zeroize();
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "(public {})"), self.public())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_text())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let mut s = String::deserialize(d)?;
                let r = Self::from_text(&s).map_err(serde::de::Error::custom);
                s.zeroize();
                r
            }
        }
    };
}

public_key!(
    /// A machine's public key (`mkey:`): identifies the device to the control server.
    MachinePublic,
    "mkey:"
);
public_key!(
    /// A node's public key (`nodekey:`): its WireGuard key, seen by peers and DERP.
    NodePublic,
    "nodekey:"
);
public_key!(
    /// A disco public key (`discokey:`): authenticates path-discovery messages.
    DiscoPublic,
    "discokey:"
);
public_key!(
    /// The control server's node-key challenge (`chalpub:`), from the early Noise payload.
    ChallengePublic,
    "chalpub:"
);

private_key!(
    /// A machine's private key; persisted in the state file.
    MachinePrivate,
    MachinePublic
);
private_key!(
    /// A node's private key (the WireGuard private key); persisted, rotated on re-login.
    NodePrivate,
    NodePublic
);
private_key!(
    /// A disco private key; generated on every start, never persisted.
    DiscoPrivate,
    DiscoPublic
);

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7748 section 6.1: Alice's private key and its public key.
    const ALICE_PRIV: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PUB: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const BOB_PUB: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
    const SHARED: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";

    fn alice() -> NodePrivate {
        NodePrivate::from_text(&format!("privkey:{ALICE_PRIV}")).unwrap()
    }

    #[test]
    fn rfc7748_public_key_and_shared_secret() {
        let a = alice();
        assert_eq!(a.public().to_string(), format!("nodekey:{ALICE_PUB}"));
        let mut bob = [0u8; 32];
        hex::decode_to_slice(BOB_PUB, &mut bob).unwrap();
        assert_eq!(hex::encode(a.shared_secret(&bob)), SHARED);
    }

    #[test]
    fn text_forms_round_trip_and_accept_upper_case() {
        let k: NodePublic = format!("nodekey:{}", ALICE_PUB.to_uppercase())
            .parse()
            .unwrap();
        assert_eq!(k.to_string(), format!("nodekey:{ALICE_PUB}"));
        let m = MachinePrivate::generate();
        assert_eq!(MachinePrivate::from_text(&m.to_text()).unwrap(), m);
    }

    #[test]
    fn wrong_prefix_or_hex_is_refused() {
        let e = format!("mkey:{ALICE_PUB}")
            .parse::<NodePublic>()
            .unwrap_err();
        assert_eq!(e, KeyParseError::Prefix { want: "nodekey:" });
        assert_eq!("nodekey:abc".parse::<NodePublic>(), Err(KeyParseError::Hex));
        let bad = format!("nodekey:{}", "zz".repeat(32));
        assert_eq!(bad.parse::<NodePublic>(), Err(KeyParseError::Hex));
        // A multi-byte character must not cause a slicing panic.
        let odd = format!("nodekey:{}é", "a".repeat(62));
        assert_eq!(odd.parse::<NodePublic>(), Err(KeyParseError::Hex));
    }

    #[test]
    fn private_keys_never_show_in_debug() {
        let k = alice();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(ALICE_PRIV), "{dbg}");
        assert!(dbg.contains(ALICE_PUB), "{dbg}");
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = DiscoPrivate::generate();
        let b = DiscoPrivate::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes()[0] & 7, 0);
        assert_eq!(a.as_bytes()[31] & 0xc0, 0x40);
    }

    #[test]
    fn json_form_is_the_text_form() {
        let k: NodePublic = format!("nodekey:{ALICE_PUB}").parse().unwrap();
        let j = serde_json::to_string(&k).unwrap();
        assert_eq!(j, format!("\"nodekey:{ALICE_PUB}\""));
        assert_eq!(serde_json::from_str::<NodePublic>(&j).unwrap(), k);
        assert!(serde_json::from_str::<NodePublic>("\"nodekey:00\"").is_err());
        assert!(NodePublic::default().is_zero());
    }
}

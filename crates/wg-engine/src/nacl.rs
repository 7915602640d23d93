//! NaCl `crypto_box` with a precomputed key, as Tailscale uses it for DERP and disco.
//!
//! The primitive is X25519, then HSalsa20 over the shared point with a zero input (NaCl's
//! `crypto_box_beforenm`), then XSalsa20-Poly1305 (`crypto_secretbox`). Tailscale writes a
//! sealed message as the 24-byte nonce, the 16-byte Poly1305 tag, then the ciphertext
//! (protocol.md §1). A [`SharedKey`] is computed once per peer and reused for every message.

use crypto_secretbox::aead::AeadInPlace;
use crypto_secretbox::{KeyInit, XSalsa20Poly1305};
use rand_core::RngCore;
use salsa20::cipher::consts::U10;
use std::fmt;
use tailcfg::key::{DiscoPrivate, DiscoPublic, NodePrivate, NodePublic};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of the random nonce in front of every sealed message.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext: nonce and tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Why a sealed message could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Shorter than a nonce and a tag.
    #[error("sealed message of {len} bytes is shorter than nonce and tag ({OVERHEAD})")]
    Short {
        /// The length that was given.
        len: usize,
    },
    /// The tag did not verify: wrong key, or the bytes were altered.
    #[error("sealed message failed authentication")]
    Authentication,
}

/// A precomputed `crypto_box` key between one private key and one peer's public key.
///
/// The same value results on both sides (`box(a, B) == box(b, A)`). Zeroed on drop; `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SharedKey([u8; 32]);

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedKey(redacted)")
    }
}

impl SharedKey {
    /// The box key from an X25519 shared point (`crypto_box_beforenm` after the scalar
    /// multiplication): HSalsa20 with a zero 16-byte input.
    pub fn from_dh(mut shared_point: [u8; 32]) -> Self {
        let zero = [0u8; 16];
        let out = salsa20::hsalsa::<U10>(&shared_point.into(), &zero.into());
        shared_point.zeroize();
        let mut k = [0u8; 32];
        k.copy_from_slice(&out);
        Self(k)
    }

    /// The box key between our node key and a peer's (or a DERP server's) node key.
    pub fn node(private: &NodePrivate, peer: &NodePublic) -> Self {
        Self::from_dh(private.shared_secret(peer.as_bytes()))
    }

    /// The box key between our disco key and a peer's disco key.
    pub fn disco(private: &DiscoPrivate, peer: &DiscoPublic) -> Self {
        Self::from_dh(private.shared_secret(peer.as_bytes()))
    }

    fn cipher(&self) -> XSalsa20Poly1305 {
        XSalsa20Poly1305::new(&self.0.into())
    }

    /// Appends `nonce ‖ tag ‖ ciphertext` of `plaintext` to `out`, with the given nonce.
    ///
    /// A nonce must never repeat under one key; use [`SharedKey::seal`] unless a test needs a
    /// fixed one.
    pub fn seal_with_nonce(&self, nonce: &[u8; NONCE_LEN], plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(OVERHEAD + plaintext.len());
        out.extend_from_slice(nonce);
        out.extend_from_slice(&[0u8; TAG_LEN]);
        out.extend_from_slice(plaintext);
        let body_at = start + OVERHEAD;
        let (head, body) = out.split_at_mut(body_at);
        // XSalsa20-Poly1305 fails only for messages longer than 2^38 bytes or so, which no
        // caller can build in memory; an empty tag would then fail to open on the far side.
        if let Ok(tag) = self
            .cipher()
            .encrypt_in_place_detached(nonce.into(), b"", body)
        {
            head[start + NONCE_LEN..].copy_from_slice(&tag);
        }
    }

    /// Appends `nonce ‖ tag ‖ ciphertext` of `plaintext` to `out`, with a random nonce from
    /// the operating system.
    pub fn seal(&self, plaintext: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        rand_core::OsRng.fill_bytes(&mut nonce);
        self.seal_with_nonce(&nonce, plaintext, out);
    }

    /// Opens `nonce ‖ tag ‖ ciphertext`, returning the plaintext.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < OVERHEAD {
            return Err(OpenError::Short { len: sealed.len() });
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (tag, ciphertext) = rest.split_at(TAG_LEN);
        let mut plain = ciphertext.to_vec();
        self.cipher()
            .decrypt_in_place_detached(nonce.into(), b"", &mut plain, tag.into())
            .map_err(|_| OpenError::Authentication)?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn a32(s: &str) -> [u8; 32] {
        h(s).try_into().unwrap()
    }

    // NaCl's tests/box.c vector (also libsodium test/default/box.c): Alice's secret key,
    // Bob's public key, the nonce, the message and the expected box (tag then ciphertext).
    const ALICE_SK: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PK: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const BOB_SK: &str = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
    const BOB_PK: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
    const FIRSTKEY: &str = "1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389";
    const NONCE: &str = "69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37";
    const MSG: &str = "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffce5ecbaaf33bd751a1ac728d45e6c61296cdc3c01233561f41db66cce314adb310e3be8250c46f06dceea3a7fa1348057e2f6556ad6b1318a024a838f21af1fde048977eb48f59ffd4924ca1c60902e52f0a089bc76897040e082f937763848645e0705";
    const BOX: &str = "f3ffc7703f9400e52a7dfb4b3d3305d98e993b9f48681273c29650ba32fc76ce48332ea7164d96a4476fb8c531a1186ac0dfc17c98dce87b4da7f011ec48c97271d2c20f9b928fe2270d6fb863d51738b48eeee314a7cc8ab932164548e526ae90224368517acfeabd6bb3732bc0e9da99832b61ca01b6de56244a9e88d5f9b37973f622a43d14a6599b1f654cb45a74e355a5";

    #[test]
    fn nacl_box_known_vector() {
        let alice = NodePrivate::from_bytes(a32(ALICE_SK));
        let bob = NodePrivate::from_bytes(a32(BOB_SK));
        assert_eq!(alice.public().as_bytes(), &a32(ALICE_PK));
        assert_eq!(bob.public().as_bytes(), &a32(BOB_PK));

        let k = SharedKey::node(&alice, &bob.public());
        assert_eq!(k.0, a32(FIRSTKEY), "crypto_box_beforenm");
        assert_eq!(k, SharedKey::node(&bob, &alice.public()));

        let nonce: [u8; 24] = h(NONCE).try_into().unwrap();
        let mut out = Vec::new();
        k.seal_with_nonce(&nonce, &h(MSG), &mut out);
        assert_eq!(&out[..24], &nonce);
        assert_eq!(hex::encode(&out[24..]), BOX);
        assert_eq!(k.open(&out).unwrap(), h(MSG));
    }

    // golang.org/x/crypto/nacl/box TestBox: keys of all 1s and 2s, message of 64 3s, nonce
    // of 24 4s; the expected box was made with NaCl's C code.
    #[test]
    fn go_nacl_box_vector() {
        let k1 = NodePrivate::from_bytes([1; 32]);
        let k2 = NodePrivate::from_bytes([2; 32]);
        let k = SharedKey::node(&k2, &k1.public());
        let mut out = Vec::new();
        k.seal_with_nonce(&[4; 24], &[3; 64], &mut out);
        assert_eq!(
            hex::encode(&out[24..]),
            "78ea30b19d2341ebbdba54180f821eec265cf86312549bea8a37652a8bb94f07b78a73ed1708085e6ddd0e943bbdeb8755079a37eb31d86163ce241164a47629c0539f330b4914cd135b3855bc2a2dfc"
        );
    }

    #[test]
    fn open_rejects_short_and_tampered() {
        let k = SharedKey::from_dh([9; 32]);
        assert_eq!(k.open(&[0; 39]), Err(OpenError::Short { len: 39 }));
        let mut out = Vec::new();
        k.seal(b"hello", &mut out);
        assert_eq!(k.open(&out).unwrap(), b"hello");
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert_eq!(k.open(&bad), Err(OpenError::Authentication), "byte {i}");
        }
        let other = SharedKey::from_dh([8; 32]);
        assert_eq!(other.open(&out), Err(OpenError::Authentication));
        // An empty plaintext still carries a tag.
        let mut empty = Vec::new();
        k.seal(b"", &mut empty);
        assert_eq!(empty.len(), OVERHEAD);
        assert_eq!(k.open(&empty).unwrap(), b"");
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(
            format!("{:?}", SharedKey::from_dh([7; 32])),
            "SharedKey(redacted)"
        );
    }
}

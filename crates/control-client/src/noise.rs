//! The ts2021 Noise channel, sans-IO: `Noise_IK_25519_ChaChaPoly_BLAKE2s` as the initiator,
//! and the record layer with Tailscale's **big-endian** nonce.
//!
//! ```text
//! initiation (client -> server, 101 bytes, sent base64 in the HTTP upgrade header):
//!   version u16 BE | type 0x01 | len u16 BE = 96 | e.pub (32) | enc(machine pub) (48) | tag (16)
//! response   (server -> client, 51 bytes):
//!   type 0x02 | len u16 BE = 48 | re.pub (32) | tag (16)
//! error      (instead of a response): type 0x03 | len u16 BE | UTF-8 text (unauthenticated)
//! record     (both ways, afterwards): type 0x04 | len u16 BE | ciphertext (plaintext + 16-byte tag)
//! ```
//!
//! A record is at most 4096 bytes with its header, so at most 4077 bytes of plaintext; longer
//! writes are split and empty records are skipped. The nonce is 4 zero bytes and the record
//! counter as a big-endian `u64` (the Noise specification says little-endian: an off-the-shelf
//! Noise library fails from the second record on). The counter value `u64::MAX` is never used.
//!
//! Use: [`Initiator::new`] gives the initiation bytes; feed what the server answers to
//! [`Initiator::read_response`] until it returns [`Handshake::Done`] with a [`Transport`];
//! then [`Transport::encrypt`] what you send and [`Transport::push`] / [`Transport::decrypt`]
//! what you receive. Any error leaves the transport unusable: close the connection.

use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hmac::{Mac, SimpleHmac};
use tailcfg::key::{MachinePrivate, MachinePublic};
use zeroize::{Zeroize, Zeroizing};

/// The Noise protocol name, hashed into the initial state.
const PROTOCOL_NAME: &[u8] = b"Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// The prologue is this followed by the protocol version in decimal.
const PROLOGUE_PREFIX: &str = "Tailscale Control Protocol v";

/// Length of the initiation message.
pub const INITIATION_LEN: usize = 101;
/// Length of the response message.
pub const RESPONSE_LEN: usize = 51;
/// Length of a frame header: type and big-endian length.
pub const HEADER_LEN: usize = 3;
/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// The largest frame, header included.
pub const MAX_FRAME_LEN: usize = 4096;
/// The largest ciphertext of a record.
pub const MAX_CIPHERTEXT_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;
/// The largest plaintext of a record.
pub const MAX_PLAINTEXT_LEN: usize = MAX_CIPHERTEXT_LEN - TAG_LEN;

const TYPE_INITIATION: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
const TYPE_ERROR: u8 = 3;
const TYPE_RECORD: u8 = 4;

/// The most of a server's error text we keep.
const MAX_ERROR_TEXT: usize = 512;

/// Why the Noise handshake or a record failed. After any of these the channel is dead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoiseError {
    /// The server refused the handshake with an error frame; its text, unauthenticated.
    #[error("control server refused the Noise handshake: {0}")]
    Refused(String),
    /// A frame of a type that is not allowed here.
    #[error("unexpected Noise frame type {got} (expected {want})")]
    UnexpectedType {
        /// The type received.
        got: u8,
        /// The type expected.
        want: u8,
    },
    /// A frame whose length field is wrong for its type or exceeds 4096 bytes.
    #[error("Noise frame of type {kind} has bad length {len}")]
    BadLength {
        /// The frame type.
        kind: u8,
        /// The length field.
        len: usize,
    },
    /// Authentication failed: wrong keys, or corrupt, replayed or reordered data.
    #[error("Noise decryption failed (corrupt data or wrong keys)")]
    Decrypt,
    /// A Diffie-Hellman result was all zeros (a low-order public key).
    #[error("Noise key exchange produced a zero secret (bad public key)")]
    WeakKey,
    /// The record counter reached its last value.
    #[error("Noise record counter exhausted")]
    CounterExhausted,
    /// The channel failed before and cannot be used.
    #[error("Noise channel already failed")]
    Broken,
}

/// BLAKE2s of `parts`, concatenated.
fn hash(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC zero-pads a short key to the hash's 64-byte block; doing it here lets us use the
    // infallible fixed-size constructor.
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    let mut m = <SimpleHmac<Blake2s256> as KeyInit>::new((&*block).into());
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Noise's HKDF with two outputs.
fn hkdf(ck: &[u8; 32], ikm: &[u8]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let prk = Zeroizing::new(hmac(ck, &[ikm]));
    let o1 = Zeroizing::new(hmac(&prk, &[&[1u8]]));
    let o2 = Zeroizing::new(hmac(&prk, &[&*o1, &[2u8]]));
    (o1, o2)
}

fn dh(secret: &[u8; 32], public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, NoiseError> {
    let s = Zeroizing::new(x25519_dalek::x25519(*secret, *public));
    if *s == [0u8; 32] {
        return Err(NoiseError::WeakKey);
    }
    Ok(s)
}

/// The symmetric state of the handshake: chaining key and handshake hash.
struct Symmetric {
    ck: [u8; 32],
    h: [u8; 32],
}

impl Drop for Symmetric {
    fn drop(&mut self) {
        self.ck.zeroize();
    }
}

impl Symmetric {
    fn new(version: u16, server: &MachinePublic) -> Self {
        // The name is longer than the hash, so it is hashed.
        let h = hash(&[PROTOCOL_NAME]);
        let mut s = Self { ck: h, h };
        s.mix_hash(format!("{PROLOGUE_PREFIX}{version}").as_bytes());
        s.mix_hash(server.as_bytes());
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = hash(&[&self.h, data]);
    }

    /// Mixes a DH result into the chaining key and returns the one-use cipher key.
    fn mix_key(&mut self, dh: &[u8; 32]) -> Zeroizing<[u8; 32]> {
        let (ck, k) = hkdf(&self.ck, dh);
        self.ck = *ck;
        k
    }

    /// Encrypts `buf` in place (zero nonce, `h` as associated data), appends the tag and
    /// mixes the ciphertext into `h`.
    fn encrypt_and_hash(&mut self, k: &[u8; 32], buf: &mut Vec<u8>) {
        let c = ChaCha20Poly1305::new(Key::from_slice(k));
        // Encryption only fails for inputs larger than the cipher's limit (256 GiB).
        if let Ok(tag) = c.encrypt_in_place_detached(&Nonce::default(), &self.h, buf) {
            buf.extend_from_slice(&tag);
        }
        self.mix_hash(buf);
    }

    /// Opens `ciphertext` (with its tag) and mixes it into `h`.
    fn decrypt_and_hash(&mut self, k: &[u8; 32], ciphertext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let split = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(NoiseError::Decrypt)?;
        let (body, tag) = ciphertext.split_at(split);
        let mut out = body.to_vec();
        let c = ChaCha20Poly1305::new(Key::from_slice(k));
        c.decrypt_in_place_detached(&Nonce::default(), &self.h, &mut out, Tag::from_slice(tag))
            .map_err(|_| NoiseError::Decrypt)?;
        self.mix_hash(ciphertext);
        Ok(out)
    }

    fn split(&self) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
        hkdf(&self.ck, &[])
    }
}

/// The client side of the handshake, between sending the initiation and reading the response.
pub struct Initiator {
    sym: Symmetric,
    ephemeral: Zeroizing<[u8; 32]>,
    machine: MachinePrivate,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator").finish_non_exhaustive()
    }
}

/// What reading the server's answer gave.
#[derive(Debug)]
pub enum Handshake {
    /// Not enough bytes yet: call again with more.
    NeedMore(Initiator),
    /// The handshake is complete; `consumed` bytes of the input were the response, the rest
    /// are already transport records.
    Done {
        /// The channel.
        transport: Transport,
        /// How many input bytes the response took.
        consumed: usize,
    },
}

impl Initiator {
    /// Starts a handshake with a fresh ephemeral key. `version` is the protocol version the
    /// prologue names: Tailscale clients use their capability version.
    pub fn new(
        machine: &MachinePrivate,
        server: &MachinePublic,
        version: u16,
    ) -> Result<(Self, [u8; INITIATION_LEN]), NoiseError> {
        use rand_core::RngCore;
        let mut e = Zeroizing::new([0u8; 32]);
        rand_core::OsRng.fill_bytes(&mut *e);
        Self::with_ephemeral(machine, server, version, e)
    }

    /// As [`Initiator::new`] with a given ephemeral private key (deterministic tests).
    pub fn with_ephemeral(
        machine: &MachinePrivate,
        server: &MachinePublic,
        version: u16,
        ephemeral: Zeroizing<[u8; 32]>,
    ) -> Result<(Self, [u8; INITIATION_LEN]), NoiseError> {
        let mut sym = Symmetric::new(version, server);
        let e_pub = x25519_dalek::x25519(*ephemeral, x25519_dalek::X25519_BASEPOINT_BYTES);
        sym.mix_hash(&e_pub);
        let k = sym.mix_key(&*dh(&ephemeral, server.as_bytes())?);
        let mut s = machine.public().as_bytes().to_vec();
        sym.encrypt_and_hash(&k, &mut s);
        let ss = Zeroizing::new(machine.shared_secret(server.as_bytes()));
        if *ss == [0u8; 32] {
            return Err(NoiseError::WeakKey);
        }
        let k = sym.mix_key(&ss);
        let mut tag = Vec::new();
        sym.encrypt_and_hash(&k, &mut tag);

        let mut msg = [0u8; INITIATION_LEN];
        msg[0..2].copy_from_slice(&version.to_be_bytes());
        msg[2] = TYPE_INITIATION;
        msg[3..5].copy_from_slice(&((INITIATION_LEN - 5) as u16).to_be_bytes());
        msg[5..37].copy_from_slice(&e_pub);
        msg[37..85].copy_from_slice(&s);
        msg[85..101].copy_from_slice(&tag);
        let init = Self {
            sym,
            ephemeral,
            machine: machine.clone(),
        };
        Ok((init, msg))
    }

    /// Reads the server's answer from the start of `input`: the 51-byte response (which
    /// completes the handshake) or an error frame (an error with the server's text).
    pub fn read_response(mut self, input: &[u8]) -> Result<Handshake, NoiseError> {
        let Some(&kind) = input.first() else {
            return Ok(Handshake::NeedMore(self));
        };
        match kind {
            TYPE_RESPONSE => {}
            TYPE_ERROR => {
                let Some(len) = input.get(1..3) else {
                    return Ok(Handshake::NeedMore(self));
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let Some(text) = input.get(HEADER_LEN..HEADER_LEN + len) else {
                    return Ok(Handshake::NeedMore(self));
                };
                return Err(NoiseError::Refused(sanitize(text)));
            }
            other => {
                return Err(NoiseError::UnexpectedType {
                    got: other,
                    want: TYPE_RESPONSE,
                });
            }
        }
        if let Some(len) = input.get(1..3) {
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            if len != RESPONSE_LEN - HEADER_LEN {
                return Err(NoiseError::BadLength { kind, len });
            }
        }
        let Some(msg) = input.get(..RESPONSE_LEN) else {
            return Ok(Handshake::NeedMore(self));
        };
        let mut re = [0u8; 32];
        re.copy_from_slice(&msg[3..35]);
        self.sym.mix_hash(&re);
        let k = self.sym.mix_key(&*dh(&self.ephemeral, &re)?);
        let _ = k; // ee's key is superseded by se's before any use, as in the pattern.
        let k = self.sym.mix_key(&*dh(self.machine.as_bytes(), &re)?);
        self.sym.decrypt_and_hash(&k, &msg[35..51])?;
        let (k1, k2) = self.sym.split();
        Ok(Handshake::Done {
            transport: Transport::new(&k1, &k2, self.sym.h),
            consumed: RESPONSE_LEN,
        })
    }
}

/// A server's error text, cut to a sane length and stripped of control characters.
fn sanitize(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_TEXT)
        .collect()
}

/// One direction's cipher and record counter.
struct CipherState {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl CipherState {
    fn new(k: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(k)),
            counter: 0,
        }
    }

    /// The next nonce: 4 zero bytes and the counter, big-endian.
    fn next_nonce(&mut self) -> Result<Nonce, NoiseError> {
        if self.counter == u64::MAX {
            return Err(NoiseError::CounterExhausted);
        }
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        Ok(n.into())
    }
}

/// An established Noise channel: encrypts outgoing bytes into records and decrypts incoming
/// records, buffering partial ones.
pub struct Transport {
    tx: CipherState,
    rx: CipherState,
    handshake_hash: [u8; 32],
    inbuf: Vec<u8>,
    broken: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("tx_counter", &self.tx.counter)
            .field("rx_counter", &self.rx.counter)
            .field("buffered", &self.inbuf.len())
            .finish_non_exhaustive()
    }
}

impl Transport {
    fn new(tx: &[u8; 32], rx: &[u8; 32], handshake_hash: [u8; 32]) -> Self {
        Self {
            tx: CipherState::new(tx),
            rx: CipherState::new(rx),
            handshake_hash,
            inbuf: Vec::new(),
            broken: false,
        }
    }

    /// An established channel from raw keys, skipping the handshake: for fuzzing and for
    /// tests that need both ends of a session. Real sessions come from [`Initiator`].
    pub fn with_keys(tx: &[u8; 32], rx: &[u8; 32]) -> Self {
        Self::new(tx, rx, [0; 32])
    }

    /// The handshake hash, which binds other messages to this session.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    /// Encrypts `plaintext` into as many records as it needs, appended to `out`. Nothing is
    /// written for an empty input.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        if self.broken {
            return Err(NoiseError::Broken);
        }
        for chunk in plaintext.chunks(MAX_PLAINTEXT_LEN) {
            let nonce = match self.tx.next_nonce() {
                Ok(n) => n,
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            };
            let start = out.len();
            out.push(TYPE_RECORD);
            // chunk.len() + TAG_LEN <= MAX_CIPHERTEXT_LEN < 2^16.
            out.extend_from_slice(&((chunk.len() + TAG_LEN) as u16).to_be_bytes());
            out.extend_from_slice(chunk);
            let body = &mut out[start + HEADER_LEN..];
            match self.tx.cipher.encrypt_in_place_detached(&nonce, &[], body) {
                Ok(tag) => out.extend_from_slice(&tag),
                Err(_) => {
                    self.broken = true;
                    return Err(NoiseError::Decrypt);
                }
            }
        }
        Ok(())
    }

    /// Buffers received bytes; [`Transport::decrypt`] then opens the complete records.
    pub fn push(&mut self, ciphertext: &[u8]) {
        self.inbuf.extend_from_slice(ciphertext);
    }

    /// Bytes buffered that do not yet make a whole record.
    pub fn buffered(&self) -> usize {
        self.inbuf.len()
    }

    /// Decrypts every complete record buffered, appending the plaintext to `out`; returns how
    /// many plaintext bytes were appended (0 also when only empty records came).
    pub fn decrypt(&mut self, out: &mut Vec<u8>) -> Result<usize, NoiseError> {
        if self.broken {
            return Err(NoiseError::Broken);
        }
        let before = out.len();
        let mut pos = 0;
        let result = loop {
            let rest = &self.inbuf[pos..];
            if rest.len() < HEADER_LEN {
                break Ok(());
            }
            if rest[0] != TYPE_RECORD {
                break Err(NoiseError::UnexpectedType {
                    got: rest[0],
                    want: TYPE_RECORD,
                });
            }
            let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
            if !(TAG_LEN..=MAX_CIPHERTEXT_LEN).contains(&len) {
                break Err(NoiseError::BadLength {
                    kind: TYPE_RECORD,
                    len,
                });
            }
            let Some(frame) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
                break Ok(());
            };
            let nonce = match self.rx.next_nonce() {
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            let (body, tag) = frame.split_at(len - TAG_LEN);
            let start = out.len();
            out.extend_from_slice(body);
            if self
                .rx
                .cipher
                .decrypt_in_place_detached(&nonce, &[], &mut out[start..], Tag::from_slice(tag))
                .is_err()
            {
                out.truncate(start);
                break Err(NoiseError::Decrypt);
            }
            pos += HEADER_LEN + len;
        };
        self.inbuf.drain(..pos);
        match result {
            Ok(()) => Ok(out.len() - before),
            Err(e) => {
                self.broken = true;
                self.inbuf.clear();
                Err(e)
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn set_counters_for_test(&mut self, tx: u64, rx: u64) {
        self.tx.counter = tx;
        self.rx.counter = rx;
    }
}

/// The server side of the handshake, for tests that run whole sessions in memory.
#[cfg(test)]
pub(crate) mod responder {
    use super::*;

    /// Answers an initiation as a control server would; returns the response bytes, the
    /// server's transport and the client's machine key it learnt.
    pub(crate) fn respond(
        server: &MachinePrivate,
        initiation: &[u8],
    ) -> Result<([u8; RESPONSE_LEN], Transport, MachinePublic), NoiseError> {
        if initiation.len() != INITIATION_LEN || initiation[2] != TYPE_INITIATION {
            return Err(NoiseError::BadLength {
                kind: initiation.get(2).copied().unwrap_or(0),
                len: initiation.len(),
            });
        }
        let version = u16::from_be_bytes([initiation[0], initiation[1]]);
        let mut sym = Symmetric::new(version, &server.public());
        let mut e = [0u8; 32];
        e.copy_from_slice(&initiation[5..37]);
        sym.mix_hash(&e);
        let k = sym.mix_key(&*dh(server.as_bytes(), &e)?);
        let s = sym.decrypt_and_hash(&k, &initiation[37..85])?;
        let mut machine = [0u8; 32];
        machine.copy_from_slice(&s);
        let k = sym.mix_key(&*dh(server.as_bytes(), &machine)?);
        sym.decrypt_and_hash(&k, &initiation[85..101])?;

        let re = MachinePrivate::generate();
        let re_pub = re.public();
        sym.mix_hash(re_pub.as_bytes());
        let _ = sym.mix_key(&*dh(re.as_bytes(), &e)?);
        let k = sym.mix_key(&*dh(re.as_bytes(), &machine)?);
        let mut tag = Vec::new();
        sym.encrypt_and_hash(&k, &mut tag);
        let mut msg = [0u8; RESPONSE_LEN];
        msg[0] = TYPE_RESPONSE;
        msg[1..3].copy_from_slice(&48u16.to_be_bytes());
        msg[3..35].copy_from_slice(re_pub.as_bytes());
        msg[35..].copy_from_slice(&tag);
        let (k1, k2) = sym.split();
        Ok((
            msg,
            Transport::new(&k2, &k1, sym.h),
            MachinePublic::from_bytes(machine),
        ))
    }

    /// An error frame as a server sends it to refuse a handshake.
    pub(crate) fn error_frame(text: &str) -> Vec<u8> {
        let mut v = vec![TYPE_ERROR];
        v.extend_from_slice(&(text.len() as u16).to_be_bytes());
        v.extend_from_slice(text.as_bytes());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::responder::{error_frame, respond};
    use super::*;

    struct Pair {
        client: Transport,
        server: Transport,
    }

    fn handshake(version: u16) -> Pair {
        let machine = MachinePrivate::generate();
        let server_key = MachinePrivate::generate();
        let (init, msg) = Initiator::new(&machine, &server_key.public(), version).unwrap();
        assert_eq!(msg.len(), 101);
        assert_eq!(&msg[..5], &[(version >> 8) as u8, version as u8, 1, 0, 96]);
        let (resp, server, learnt) = respond(&server_key, &msg).unwrap();
        assert_eq!(learnt, machine.public());
        assert_eq!(&resp[..3], &[2, 0, 48]);
        match init.read_response(&resp).unwrap() {
            Handshake::Done {
                transport,
                consumed,
            } => {
                assert_eq!(consumed, 51);
                assert_eq!(transport.handshake_hash(), server.handshake_hash());
                Pair {
                    client: transport,
                    server,
                }
            }
            Handshake::NeedMore(_) => panic!("whole response not accepted"),
        }
    }

    #[test]
    fn padded_key_hmac_equals_plain_hmac() {
        let key = [7u8; 32];
        let mut m = <SimpleHmac<Blake2s256> as Mac>::new_from_slice(&key).unwrap();
        m.update(b"abc");
        let want: [u8; 32] = m.finalize().into_bytes().into();
        assert_eq!(hmac(&key, &[b"a", b"bc"]), want);
    }

    #[test]
    fn whole_handshake_then_records_both_ways() {
        let mut p = handshake(130);
        let mut wire = Vec::new();
        p.client.encrypt(b"hello", &mut wire).unwrap();
        p.client.encrypt(b"world", &mut wire).unwrap();
        assert_eq!(wire.len(), 2 * (3 + 5 + 16));
        assert_eq!(&wire[..3], &[4, 0, 21]);
        p.server.push(&wire);
        let mut out = Vec::new();
        assert_eq!(p.server.decrypt(&mut out).unwrap(), 10);
        assert_eq!(out, b"helloworld");

        let mut back = Vec::new();
        p.server.encrypt(b"pong", &mut back).unwrap();
        p.client.push(&back);
        let mut out = Vec::new();
        p.client.decrypt(&mut out).unwrap();
        assert_eq!(out, b"pong");
    }

    #[test]
    fn nonce_is_big_endian_counter() {
        // Record 1 sealed by hand with a big-endian nonce must open; a little-endian one not.
        let mut p = handshake(130);
        let mut w = Vec::new();
        p.client.encrypt(b"zero", &mut w).unwrap();
        p.server.push(&w);
        p.server.decrypt(&mut Vec::new()).unwrap();
        // Build record 1 with the client's cipher directly.
        let seal = |nonce: [u8; 12], c: &ChaCha20Poly1305| {
            let mut body = b"one".to_vec();
            let tag = c
                .encrypt_in_place_detached(&nonce.into(), &[], &mut body)
                .unwrap();
            body.extend_from_slice(&tag);
            let mut f = vec![4, 0, body.len() as u8];
            f.extend_from_slice(&body);
            f
        };
        let mut be = [0u8; 12];
        be[11] = 1;
        let mut le = [0u8; 12];
        le[4] = 1;
        let good = seal(be, &p.client.tx.cipher);
        let bad = seal(le, &p.client.tx.cipher);
        let mut other = handshake(130);
        let _ = &mut other;
        p.server.push(&good);
        let mut out = Vec::new();
        p.server.decrypt(&mut out).unwrap();
        assert_eq!(out, b"one");
        p.server.push(&bad);
        assert_eq!(p.server.decrypt(&mut out), Err(NoiseError::Decrypt));
    }

    #[test]
    fn large_writes_split_at_4077_bytes() {
        let mut p = handshake(130);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        p.client.encrypt(&data, &mut wire).unwrap();
        // 4077 + 4077 + 1846 bytes of plaintext.
        assert_eq!(&wire[..3], &[4, 0x0f, 0xfd]);
        assert_eq!(wire.len(), 3 * 19 + 10_000);
        // Feed one byte at a time: partial records wait for the rest.
        let mut out = Vec::new();
        for b in &wire {
            p.server.push(std::slice::from_ref(b));
            p.server.decrypt(&mut out).unwrap();
        }
        assert_eq!(out, data);
        assert_eq!(p.server.buffered(), 0);
    }

    #[test]
    fn empty_records_are_skipped_and_empty_writes_send_nothing() {
        let mut p = handshake(130);
        let mut wire = Vec::new();
        p.client.encrypt(&[], &mut wire).unwrap();
        assert!(wire.is_empty());
        // A peer may still send an empty record (just a tag): it yields nothing.
        let nonce = p.client.tx.next_nonce().unwrap();
        let tag = p
            .client
            .tx
            .cipher
            .encrypt_in_place_detached(&nonce, &[], &mut [])
            .unwrap();
        let mut rec = vec![4, 0, 16];
        rec.extend_from_slice(&tag);
        p.client.encrypt(b"x", &mut rec).unwrap();
        p.server.push(&rec);
        let mut out = Vec::new();
        assert_eq!(p.server.decrypt(&mut out).unwrap(), 1);
        assert_eq!(out, b"x");
    }

    #[test]
    fn bad_tag_breaks_the_channel() {
        let mut p = handshake(130);
        let mut wire = Vec::new();
        p.client.encrypt(b"secret", &mut wire).unwrap();
        let last = wire.len() - 1;
        wire[last] ^= 1;
        p.server.push(&wire);
        assert_eq!(p.server.decrypt(&mut Vec::new()), Err(NoiseError::Decrypt));
        assert_eq!(p.server.decrypt(&mut Vec::new()), Err(NoiseError::Broken));
        assert_eq!(
            p.server.encrypt(b"x", &mut Vec::new()),
            Err(NoiseError::Broken)
        );
    }

    #[test]
    fn replayed_or_reordered_records_fail() {
        let mut p = handshake(130);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        p.client.encrypt(b"first", &mut a).unwrap();
        p.client.encrypt(b"second", &mut b).unwrap();
        // Reordered.
        p.server.push(&b);
        assert_eq!(p.server.decrypt(&mut Vec::new()), Err(NoiseError::Decrypt));
        // Replayed.
        let mut p = handshake(130);
        let mut a = Vec::new();
        p.client.encrypt(b"first", &mut a).unwrap();
        p.server.push(&a);
        p.server.decrypt(&mut Vec::new()).unwrap();
        p.server.push(&a);
        assert_eq!(p.server.decrypt(&mut Vec::new()), Err(NoiseError::Decrypt));
    }

    #[test]
    fn oversized_short_or_mistyped_frames_are_refused() {
        for (frame, want) in [
            (
                vec![4, 0x10, 0x00],
                NoiseError::BadLength { kind: 4, len: 4096 },
            ),
            (
                vec![4, 0xff, 0xff],
                NoiseError::BadLength {
                    kind: 4,
                    len: 65535,
                },
            ),
            (vec![4, 0, 15], NoiseError::BadLength { kind: 4, len: 15 }),
            (
                vec![3, 0, 1, b'x'],
                NoiseError::UnexpectedType { got: 3, want: 4 },
            ),
            (
                vec![0, 0, 0],
                NoiseError::UnexpectedType { got: 0, want: 4 },
            ),
        ] {
            let mut p = handshake(130);
            p.client.push(&frame);
            assert_eq!(p.client.decrypt(&mut Vec::new()), Err(want));
        }
    }

    #[test]
    fn counter_exhaustion_is_an_error_not_a_wrap() {
        let mut p = handshake(130);
        p.client.set_counters_for_test(u64::MAX - 1, 0);
        p.server.set_counters_for_test(0, u64::MAX - 1);
        let mut w = Vec::new();
        p.client.encrypt(b"last", &mut w).unwrap();
        p.server.push(&w);
        p.server.decrypt(&mut Vec::new()).unwrap();
        assert_eq!(
            p.client.encrypt(b"one too many", &mut Vec::new()),
            Err(NoiseError::CounterExhausted)
        );
        // The receiver refuses to open anything at u64::MAX as well.
        p.server.push(&[4, 0, 16]);
        p.server.push(&[0; 16]);
        assert_eq!(
            p.server.decrypt(&mut Vec::new()),
            Err(NoiseError::CounterExhausted)
        );
    }

    #[test]
    fn response_in_pieces_and_followed_by_records() {
        let machine = MachinePrivate::generate();
        let server_key = MachinePrivate::generate();
        let (mut init, msg) = Initiator::new(&machine, &server_key.public(), 130).unwrap();
        let (resp, mut server, _) = respond(&server_key, &msg).unwrap();
        let mut input = resp.to_vec();
        server.encrypt(b"early", &mut input).unwrap();
        for cut in [0, 1, 2, 3, 50] {
            init = match init.read_response(&input[..cut]).unwrap() {
                Handshake::NeedMore(i) => i,
                Handshake::Done { .. } => panic!("done after {cut} bytes"),
            };
        }
        let Handshake::Done {
            mut transport,
            consumed,
        } = init.read_response(&input).unwrap()
        else {
            panic!("not done");
        };
        transport.push(&input[consumed..]);
        let mut out = Vec::new();
        transport.decrypt(&mut out).unwrap();
        assert_eq!(out, b"early");
    }

    #[test]
    fn error_frame_is_reported_with_its_text() {
        let machine = MachinePrivate::generate();
        let server = MachinePrivate::generate().public();
        let frame = error_frame("unsupported\u{7} client version");
        let (init, _) = Initiator::new(&machine, &server, 130).unwrap();
        let init = match init.read_response(&frame[..5]).unwrap() {
            Handshake::NeedMore(i) => i,
            Handshake::Done { .. } => panic!("done on an error frame"),
        };
        assert_eq!(
            init.read_response(&frame).unwrap_err(),
            NoiseError::Refused("unsupported client version".into())
        );
    }

    #[test]
    fn wrong_server_key_or_tampered_response_fails() {
        let machine = MachinePrivate::generate();
        let real = MachinePrivate::generate();
        let wrong = MachinePrivate::generate();
        // The client believes the server's key is `wrong`: the server cannot open the
        // initiation.
        let (_, msg) = Initiator::new(&machine, &wrong.public(), 130).unwrap();
        assert_eq!(respond(&real, &msg).unwrap_err(), NoiseError::Decrypt);
        // A response with a flipped tag bit.
        let (init, msg) = Initiator::new(&machine, &real.public(), 130).unwrap();
        let (mut resp, _, _) = respond(&real, &msg).unwrap();
        resp[50] ^= 0x80;
        assert_eq!(init.read_response(&resp).unwrap_err(), NoiseError::Decrypt);
        // Bad type and bad length.
        let (init, _) = Initiator::new(&machine, &real.public(), 130).unwrap();
        assert_eq!(
            init.read_response(&[9, 0, 48]).unwrap_err(),
            NoiseError::UnexpectedType { got: 9, want: 2 }
        );
        let (init, _) = Initiator::new(&machine, &real.public(), 130).unwrap();
        assert_eq!(
            init.read_response(&[2, 0, 47]).unwrap_err(),
            NoiseError::BadLength { kind: 2, len: 47 }
        );
        // A zero (low-order) server key is refused before anything is sent.
        assert_eq!(
            Initiator::new(&machine, &MachinePublic::default(), 130).unwrap_err(),
            NoiseError::WeakKey
        );
    }

    #[test]
    fn version_is_in_the_prologue() {
        // A server that reads a different version than the client put in its prologue fails.
        let machine = MachinePrivate::generate();
        let server = MachinePrivate::generate();
        let (_, mut msg) = Initiator::new(&machine, &server.public(), 130).unwrap();
        msg[1] = 131;
        assert_eq!(respond(&server, &msg).unwrap_err(), NoiseError::Decrypt);
    }
}

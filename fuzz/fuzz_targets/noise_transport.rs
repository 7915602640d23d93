//! Noise transport records on an established control channel. The first byte picks a mode:
//! even, the rest is raw bytes from the wire; odd, the rest is plaintext that the other end
//! seals, optionally with one byte flipped (second byte = position), fed in chunks of varying
//! size. Untouched records must decrypt to exactly the plaintext; touched ones must fail.
#![no_main]

use control_client::noise::Transport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (k1, k2) = ([1u8; 32], [2u8; 32]);
    let mut rx = Transport::with_keys(&k2, &k1);
    let mut out = Vec::new();
    if mode % 2 == 0 {
        rx.push(rest);
        let _ = rx.decrypt(&mut out);
        return;
    }
    let Some((&flip, plain)) = rest.split_first() else { return };
    let mut tx = Transport::with_keys(&k1, &k2);
    let mut wire = Vec::new();
    if tx.encrypt(plain, &mut wire).is_err() {
        return;
    }
    let touched = mode & 2 == 2 && !wire.is_empty();
    if touched {
        let at = usize::from(flip) * wire.len() / 256;
        wire[at] ^= 0x55;
    }
    let step = usize::from(mode >> 2).max(1);
    let mut ok = true;
    for chunk in wire.chunks(step) {
        rx.push(chunk);
        if rx.decrypt(&mut out).is_err() {
            ok = false;
            break;
        }
    }
    if !touched {
        assert!(ok, "an untouched record failed to decrypt");
        assert_eq!(out, plain, "decrypted bytes differ from what was sealed");
        assert_eq!(rx.buffered(), 0);
    } else {
        assert!(!ok || out != plain || rx.buffered() != 0, "a flipped byte went unnoticed");
    }
});

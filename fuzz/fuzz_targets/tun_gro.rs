//! The TUN write path's merge step: a batch of decrypted packets, as peers may send them
//! (authenticated but otherwise arbitrary), handed to tun-rs's GRO table exactly as
//! `Tun::send_batch` hands it with offload on. It must refuse or merge, never panic.
//!
//! Input: packets, each a 2-byte big-endian length and that many bytes (cut short at the
//! end); the first byte's low bit says whether the kernel takes UDP GRO.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The room in front of each packet for the virtio header, as `Tun::tx_headroom` gives it.
const HEAD: usize = tun_rs::VIRTIO_NET_HDR_LEN;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    while rest.len() >= 2 && bufs.len() < 128 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let body = &rest[2..];
        let take = len.min(body.len());
        if take == 0 {
            // `Tun::send_batch` never hands tun-rs an empty packet.
            rest = body;
            continue;
        }
        let mut b = vec![0u8; HEAD];
        b.extend_from_slice(&body[..take]);
        bufs.push(b);
        rest = &body[take..];
    }
    if bufs.is_empty() {
        return;
    }
    // Buffers merged into another keep their bytes (they are just not written), so there is
    // no size to compare after the call: refusing or merging without a panic is the property.
    let mut table = tun_rs::GROTable::new();
    let _ = table.apply_gro(&mut bufs, HEAD, flags & 1 == 1);
});

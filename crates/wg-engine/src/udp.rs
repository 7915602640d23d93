//! UDP generic receive offload (`UDP_GRO`, Linux 5.0): with it on, one `recvmsg` returns a
//! train of datagrams of one flow, glued together, and a `SOL_UDP`/`UDP_GRO` control message
//! that names the size of each (the last may be shorter). A peer that sends with UDP
//! segmentation offload (Go tailscaled does; so does our send path) hands over 40-odd
//! WireGuard datagrams per system call this way, and where the kernel coalesces on receive
//! (GRO on the interface) even a peer that sends one by one does.
//!
//! The pure parts ([`gro_segment_size`], [`segments`]) read bytes and never panic, whatever
//! the kernel (or a fuzzer) puts in the buffers. The system calls are in [`sys`], the one
//! place of this crate with `unsafe` code: `setsockopt(2)`, which neither tokio nor socket2
//! offers for `UDP_GRO`, and the view of an initialised buffer as the `MaybeUninit` one
//! socket2's `recvmsg` asks for.

use std::net::SocketAddr;

/// `SOL_UDP`, the level of UDP's socket options and control messages.
const SOL_UDP: i32 = 17;
/// `UDP_GRO`: the socket option, and the control message type that carries `gso_size`.
const UDP_GRO: i32 = 104;
/// The size of a `cmsghdr`: a `size_t` (the kernel's `__kernel_size_t`) and two `int`s.
const CMSG_HDR: usize = std::mem::size_of::<usize>() + 8;
/// Control message space for one `UDP_GRO` message (`CMSG_SPACE(sizeof(int))`) and room for
/// a few others the kernel might add; more than enough for what this socket turns on.
pub const CONTROL_LEN: usize = 64;

/// `CMSG_ALIGN`: control messages start on `size_t` boundaries.
fn cmsg_align(n: usize) -> Option<usize> {
    const W: usize = std::mem::size_of::<usize>();
    Some(n.checked_add(W - 1)? & !(W - 1))
}

/// The segment size of a coalesced receive, from the control bytes `recvmsg` returned (the
/// first `msg_controllen` bytes of the control buffer): `None` when there is no `UDP_GRO`
/// message (the datagram came alone) or it is malformed. Parsed by hand in the layout of
/// `CMSG_FIRSTHDR`/`CMSG_NXTHDR`, native byte order; a truncated or short message ends the
/// walk; a size of 0 or one past 65,535 counts as none.
pub fn gro_segment_size(control: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    loop {
        let hdr = control.get(at..at.checked_add(CMSG_HDR)?)?;
        let (len, rest) = hdr.split_at(std::mem::size_of::<usize>());
        let len = usize::from_ne_bytes(len.try_into().ok()?);
        let level = i32::from_ne_bytes(rest.get(..4)?.try_into().ok()?);
        let kind = i32::from_ne_bytes(rest.get(4..8)?.try_into().ok()?);
        if len < CMSG_HDR {
            return None;
        }
        let data = control.get(at + CMSG_HDR..at.checked_add(len)?)?;
        if level == SOL_UDP && kind == UDP_GRO {
            let size = i32::from_ne_bytes(data.get(..4)?.try_into().ok()?);
            return usize::try_from(size)
                .ok()
                .filter(|s| (1..=usize::from(u16::MAX)).contains(s));
        }
        at = cmsg_align(at.checked_add(len)?)?;
    }
}

/// The datagrams of one receive: `buf` cut into `seg`-byte pieces, the last possibly
/// shorter; all of `buf` as one datagram when `seg` is `None`, 0, or not smaller than it.
/// An empty `buf` is one empty datagram (UDP allows those; the classifier rejects them).
pub fn segments(buf: &[u8], seg: Option<usize>) -> impl Iterator<Item = &[u8]> {
    let size = match seg {
        Some(s) if s > 0 && s < buf.len() => s,
        _ => buf.len().max(1),
    };
    // `chunks` yields nothing for an empty slice; an empty datagram is still one.
    let empty = buf.is_empty().then_some(buf);
    buf.chunks(size).chain(empty)
}

/// What one [`sys::recv`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recv {
    /// Bytes in the buffer: one datagram, or several of `segment` bytes each.
    pub len: usize,
    /// The sender.
    pub src: SocketAddr,
    /// The segment size when the kernel coalesced datagrams ([`gro_segment_size`]).
    pub segment: Option<usize>,
    /// The datagram (train) was larger than the buffer and was cut (`MSG_TRUNC`).
    pub truncated: bool,
}

/// The system calls. Linux only for `UDP_GRO`; `recv` works on any Unix.
#[allow(unsafe_code)]
pub mod sys {
    use super::Recv;
    use std::io;
    use std::mem::MaybeUninit;
    use std::net::{Ipv6Addr, SocketAddrV6};
    use std::os::fd::AsRawFd;

    /// Turns `UDP_GRO` on (or off) for `socket`. Fails with the kernel's error where it lacks
    /// the option (before 5.0: `ENOPROTOOPT`).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub fn set_udp_gro(socket: &impl AsRawFd, on: bool) -> io::Result<()> {
        let value = libc::c_int::from(on);
        // SAFETY: the descriptor is borrowed from a live socket for the duration of the call;
        // `value` is a `c_int` on the stack that outlives the call, and the length passed is
        // its size, so the kernel reads exactly that int and writes nothing.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `UDP_GRO` exists on Linux only.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub fn set_udp_gro(_socket: &impl AsRawFd, _on: bool) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    /// One non-blocking `recvmsg` into `buf`, with `control` for the control messages
    /// (at least [`super::CONTROL_LEN`] bytes to see the segment size). `WouldBlock` when
    /// nothing waits; to be called from tokio's `try_io`/`async_io`.
    pub fn recv(
        socket: &tokio::net::UdpSocket,
        buf: &mut [u8],
        control: &mut [u8],
    ) -> io::Result<Recv> {
        // The largest address either family returns; the kernel overwrites it (family
        // included) and socket2 reads it back by family.
        let mut addr = socket2::SockAddr::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
        let (len, control_len, truncated) = {
            let mut bufs = [socket2::MaybeUninitSlice::new(as_uninit(buf))];
            let mut msg = socket2::MsgHdrMut::new()
                .with_addr(&mut addr)
                .with_buffers(&mut bufs)
                .with_control(as_uninit(control));
            let len = socket2::SockRef::from(socket).recvmsg(&mut msg, 0)?;
            (len, msg.control_len(), msg.flags().is_truncated())
        };
        let src = addr.as_socket().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "recvmsg: not an IP sender")
        })?;
        let segment = control.get(..control_len).and_then(super::gro_segment_size);
        Ok(Recv {
            len: len.min(buf.len()),
            src,
            segment,
            truncated,
        })
    }

    /// An initialised buffer as the `MaybeUninit` one socket2's `recvmsg` takes.
    fn as_uninit(buf: &mut [u8]) -> &mut [MaybeUninit<u8>] {
        // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, so the slice is the same memory
        // with the same length and lifetime. The one way this could go wrong is writing an
        // uninitialised value through the result, which would then be read as `u8`: it is
        // only handed to `recvmsg(2)`, where the kernel writes received bytes (initialised)
        // or nothing, and never escapes this module.
        unsafe { &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [MaybeUninit<u8>]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: usize = std::mem::size_of::<usize>();

    /// One control message as the kernel lays it out, padded to `CMSG_SPACE`.
    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let mut c = Vec::new();
        c.extend_from_slice(&(CMSG_HDR + data.len()).to_ne_bytes());
        c.extend_from_slice(&level.to_ne_bytes());
        c.extend_from_slice(&kind.to_ne_bytes());
        c.extend_from_slice(data);
        while c.len() % W != 0 {
            c.push(0);
        }
        c
    }

    #[test]
    fn segment_size_from_the_gro_message() {
        assert_eq!(
            gro_segment_size(&cmsg(17, 104, &1312i32.to_ne_bytes())),
            Some(1312)
        );
        // After another message (IP_TOS, level 0, type 1, one byte: padded).
        let mut c = cmsg(0, 1, &[0x10]);
        c.extend(cmsg(17, 104, &1452i32.to_ne_bytes()));
        assert_eq!(gro_segment_size(&c), Some(1452));
    }

    #[test]
    fn no_or_other_messages_are_none() {
        assert_eq!(gro_segment_size(&[]), None);
        assert_eq!(gro_segment_size(&cmsg(0, 1, &[1, 2, 3, 4])), None);
        // UDP_SEGMENT (103), not UDP_GRO.
        assert_eq!(
            gro_segment_size(&cmsg(17, 103, &1312i32.to_ne_bytes())),
            None
        );
    }

    #[test]
    fn bogus_sizes_are_none() {
        for size in [0i32, -1, i32::MIN, 65_536, i32::MAX] {
            assert_eq!(
                gro_segment_size(&cmsg(17, 104, &size.to_ne_bytes())),
                None,
                "{size}"
            );
        }
        assert_eq!(
            gro_segment_size(&cmsg(17, 104, &65_535i32.to_ne_bytes())),
            Some(65_535)
        );
        // Too short for an int.
        assert_eq!(gro_segment_size(&cmsg(17, 104, &[1, 2])), None);
    }

    #[test]
    fn malformed_headers_end_the_walk() {
        let good = cmsg(17, 104, &1312i32.to_ne_bytes());
        // Cut anywhere: never a panic, never a size read past the end.
        for n in 0..good.len() {
            let got = gro_segment_size(&good[..n]);
            assert!(got.is_none() || n >= CMSG_HDR + 4, "{n}: {got:?}");
        }
        // A length shorter than the header (would loop forever if trusted), zero, huge.
        for len in [0usize, 1, CMSG_HDR - 1, usize::MAX, usize::MAX - 3] {
            let mut c = good.clone();
            c[..W].copy_from_slice(&len.to_ne_bytes());
            assert_eq!(gro_segment_size(&c), None, "{len}");
        }
        // A first message whose length runs past the buffer.
        let mut c = cmsg(0, 1, &[0; 4]);
        c[..W].copy_from_slice(&1000usize.to_ne_bytes());
        c.extend(good);
        assert_eq!(gro_segment_size(&c), None);
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: xorshift bytes, with a GRO header planted now and then.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000 {
            let mut c = Vec::new();
            let n = (i % 97) as usize;
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.push(x as u8);
            }
            if i % 3 == 0 && c.len() >= CMSG_HDR {
                let len = (x as usize) % 64;
                c[..W].copy_from_slice(&len.to_ne_bytes());
                c[W..W + 4].copy_from_slice(&17i32.to_ne_bytes());
                c[W + 4..W + 8].copy_from_slice(&104i32.to_ne_bytes());
            }
            if let Some(s) = gro_segment_size(&c) {
                assert!((1..=65_535).contains(&s));
            }
        }
    }

    #[test]
    fn segments_cut_the_train() {
        let buf: Vec<u8> = (0..10).collect();
        let cut = |seg| segments(&buf, seg).map(<[u8]>::to_vec).collect::<Vec<_>>();
        assert_eq!(
            cut(Some(4)),
            vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
        );
        assert_eq!(cut(Some(5)), vec![vec![0, 1, 2, 3, 4], vec![5, 6, 7, 8, 9]]);
        assert_eq!(cut(Some(1)).len(), 10);
        // None, zero or not smaller than the buffer: one datagram.
        for seg in [None, Some(0), Some(10), Some(11), Some(usize::MAX)] {
            assert_eq!(cut(seg), vec![buf.clone()], "{seg:?}");
        }
        assert_eq!(
            segments(&[], Some(4)).collect::<Vec<_>>(),
            vec![&[] as &[u8]]
        );
        assert_eq!(segments(&[], None).count(), 1);
    }
}

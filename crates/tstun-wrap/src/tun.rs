//! The kernel TUN device: open it with a name and an MTU, read and write IP packets on tokio.
//!
//! Built on `tun-rs` without its address management (addresses and routes are osrouter's
//! job): the device is created, given its MTU and brought up, nothing more. Reads and writes
//! are non-blocking and driven by tokio's reactor; [`Tun::recv_batch`] and [`Tun::send_batch`]
//! move every packet that is ready per wake-up, so a burst costs one wait, not one per packet.
//!
//! Offload (Linux, on by default, as Go tailscaled has it): the device is opened with
//! `IFF_VNET_HDR` and TCP segmentation offload (and UDP's where the kernel has it), so the
//! kernel hands over a TCP burst as one super-packet of up to 64 KiB instead of ~50 packets,
//! one read instead of ~50 and one queue slot instead of ~50. The device splits it into
//! MTU-sized packets (checksums filled in) and hands them out one per [`Tun::recv`] or
//! [`Tun::try_recv`], so callers still see plain IP packets. Writes go the other way
//! ([`Tun::send_batch`]): a batch of packets is handed to tun-rs's GRO table, which merges
//! consecutive TCP segments (and UDP datagrams, where the kernel takes them) of one flow into
//! one super-packet, so the kernel's TCP stack takes ~40 packets in one write and one pass.
//! Packets that merge with nothing go out one per write with a "no offload" virtio header.
use std::io;
use std::sync::Mutex;

/// Tailscale's default TUN MTU.
pub const DEFAULT_MTU: u16 = 1280;

/// Tailscale's default interface name on Linux.
pub const DEFAULT_NAME: &str = "tailscale0";

/// How the device is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// The interface name (at most 15 bytes on Linux).
    pub name: String,
    /// The MTU.
    pub mtu: u16,
}

impl Default for TunConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            mtu: DEFAULT_MTU,
        }
    }
}

/// An open kernel TUN device carrying raw IP packets (no packet-information header).
pub struct Tun {
    dev: tun_rs::AsyncDevice,
    name: String,
    mtu: u16,
    /// With offload: the packets split from the last super-packet read, handed out in turn.
    /// Locked only for synchronous work, never across an `await`.
    rx: Option<Mutex<Segments>>,
    /// With offload: tun-rs's GRO table, reused between batches (only its allocations are
    /// kept). Taken out for the length of a write and put back, never locked across an
    /// `await`.
    gro: Mutex<Option<tun_rs::GROTable>>,
}

/// One super-packet read with offload and the packets split from it.
struct Segments {
    /// The raw read: virtio header and up to 64 KiB of packet.
    raw: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    /// The next packet to hand out, and how many there are.
    next: usize,
    count: usize,
}

impl Segments {
    fn new(mtu: u16) -> Self {
        // A split packet is at most the MTU; a larger MTU set later than the device was
        // opened is covered up to Ethernet's 1500.
        let seg = usize::from(mtu).max(1500);
        Self {
            raw: vec![0u8; tun_rs::VIRTIO_NET_HDR_LEN + usize::from(u16::MAX)],
            bufs: vec![vec![0u8; seg]; tun_rs::IDEAL_BATCH_SIZE],
            sizes: vec![0; tun_rs::IDEAL_BATCH_SIZE],
            next: 0,
            count: 0,
        }
    }

    /// Copies the next split packet into `buf` (truncated to it, as a read would be).
    fn pop(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.next >= self.count {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let p = self.bufs.get(i)?.get(..*self.sizes.get(i)?)?;
        let n = p.len().min(buf.len());
        buf.get_mut(..n)?.copy_from_slice(p.get(..n)?);
        Some(n)
    }
}

/// The virtio header of a packet written with offload: no segmentation, checksum complete.
const PLAIN_VNET_HDR: [u8; tun_rs::VIRTIO_NET_HDR_LEN] = [0; tun_rs::VIRTIO_NET_HDR_LEN];

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("mtu", &self.mtu)
            .field("offload", &self.rx.is_some())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Tun {
    /// Creates (or attaches to) the interface `config.name`, sets its MTU and brings it up,
    /// with offload where the kernel has it (see the module docs). Must be called inside a
    /// tokio runtime with I/O enabled; needs `CAP_NET_ADMIN`.
    pub fn open(config: &TunConfig) -> io::Result<Self> {
        match Self::open_with(config, true) {
            Ok(t) => Ok(t),
            Err(_) => Self::open_with(config, false),
        }
    }

    /// [`Tun::open`] with offload on or off as asked: no fallback.
    pub fn open_with(config: &TunConfig, offload: bool) -> io::Result<Self> {
        let dev = builder(config, offload)?
            .build_async()
            .map_err(|e| io::Error::new(e.kind(), format!("TUN {}: {e}", config.name)))?;
        let name = dev.name().unwrap_or_else(|_| config.name.clone());
        let mtu = dev.mtu().unwrap_or(config.mtu);
        let on = offload && dev.tcp_gso();
        Ok(Self {
            dev,
            name,
            mtu,
            rx: on.then(|| Mutex::new(Segments::new(mtu))),
            gro: Mutex::new(None),
        })
    }

    /// Whether the device runs with offload (virtio headers, super-packets).
    pub fn offload(&self) -> bool {
        self.rx.is_some()
    }

    /// The interface name the kernel gave.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The MTU as set.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// The interface index.
    pub fn index(&self) -> io::Result<u32> {
        self.dev.if_index()
    }

    /// Reads one IP packet, waiting for it. Cancel-safe.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rx.is_none() {
            return self.dev.recv(buf).await;
        }
        loop {
            match self.try_recv(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.dev.readable().await?,
                r => return r,
            }
        }
    }

    /// Writes one IP packet, waiting until the device accepts it.
    pub async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        if self.rx.is_none() {
            return self.dev.send(packet).await;
        }
        let bufs = [io::IoSlice::new(&PLAIN_VNET_HDR), io::IoSlice::new(packet)];
        let n = self.dev.send_vectored(&bufs).await?;
        Ok(n.saturating_sub(PLAIN_VNET_HDR.len()))
    }

    /// Reads one IP packet if one is ready (`WouldBlock` otherwise).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(rx) = &self.rx else {
            return self.dev.try_recv(buf);
        };
        let mut rx = lock(rx);
        loop {
            if let Some(n) = rx.pop(buf) {
                return Ok(n);
            }
            let Segments {
                raw, bufs, sizes, ..
            } = &mut *rx;
            match self.dev.try_recv_multiple(raw, bufs, sizes, 0) {
                Ok(count) => {
                    rx.next = 0;
                    rx.count = count;
                }
                // A super-packet that cannot be split (malformed, too many segments) is
                // dropped like a corrupt frame; errors of the device itself are returned.
                Err(e) if e.raw_os_error().is_none() && e.kind() != io::ErrorKind::WouldBlock => {
                    rx.next = 0;
                    rx.count = 0;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes one IP packet if the device can take it now (`WouldBlock` otherwise).
    pub fn try_send(&self, packet: &[u8]) -> io::Result<usize> {
        if self.rx.is_none() {
            return self.dev.try_send(packet);
        }
        let bufs = [io::IoSlice::new(&PLAIN_VNET_HDR), io::IoSlice::new(packet)];
        let n = self.dev.try_send_vectored(&bufs)?;
        Ok(n.saturating_sub(PLAIN_VNET_HDR.len()))
    }

    /// Waits for at least one packet, then reads every packet already waiting, up to
    /// `bufs.len()`. `sizes[i]` is the length of the packet in `bufs[i]`; returns how many.
    pub async fn recv_batch<B: AsMut<[u8]>>(
        &self,
        bufs: &mut [B],
        sizes: &mut [usize],
    ) -> io::Result<usize> {
        let n = bufs.len().min(sizes.len());
        let (Some(first), Some(first_size)) = (bufs.first_mut(), sizes.first_mut()) else {
            return Ok(0);
        };
        *first_size = self.recv(first.as_mut()).await?;
        let mut got = 1;
        while got < n {
            match self.try_recv(bufs[got].as_mut()) {
                Ok(len) => {
                    sizes[got] = len;
                    got += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// How many bytes [`Tun::send_batch`] wants free in front of each packet: room for the
    /// virtio header with offload, none without.
    pub fn tx_headroom(&self) -> usize {
        if self.rx.is_some() {
            tun_rs::VIRTIO_NET_HDR_LEN
        } else {
            0
        }
    }

    /// Writes a batch of packets, each in its own buffer after [`Tun::tx_headroom`] bytes
    /// (their content does not matter), waiting only when the device pushes back. With
    /// offload, packets of one TCP flow are merged first (so buffers may grow and change);
    /// without, each is written as it is. A packet the kernel refuses is skipped and the
    /// others still written; the last such error is returned after all were tried.
    pub async fn send_batch(&self, bufs: &mut [Vec<u8>]) -> io::Result<()> {
        if self.rx.is_none() {
            let mut err = None;
            for b in bufs.iter() {
                if let Err(e) = self.dev.send(b).await {
                    err = Some(e);
                }
            }
            return err.map_or(Ok(()), Err);
        }
        // Every buffer must hold a packet after the header room, or tun-rs refuses the batch.
        let head = tun_rs::VIRTIO_NET_HDR_LEN;
        if bufs.iter().any(|b| b.len() <= head) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty packet in a TUN batch",
            ));
        }
        let mut table = lock(&self.gro).take().unwrap_or_default();
        let r = self.dev.send_multiple(&mut table, bufs, head).await;
        *lock(&self.gro) = Some(table);
        r.map(|_| ())
    }
}

/// The device as `config` and `offload` ask, name checked first: Linux takes 1 to 15 bytes.
fn builder(config: &TunConfig, offload: bool) -> io::Result<tun_rs::DeviceBuilder> {
    if config.name.is_empty() || config.name.len() > 15 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TUN name {:?} must be 1 to 15 bytes", config.name),
        ));
    }
    Ok(tun_rs::DeviceBuilder::new()
        .name(config.name.as_str())
        .mtu(config.mtu)
        .packet_information(false)
        .offload(offload)
        .enable(true))
}

/// Opens a TUN device the way router firmware usually does, and hands back only its file
/// descriptor: `/dev/net/tun` with `TUNSETIFF` (`IFF_TUN | IFF_NO_PI`, no offload), MTU set,
/// link up. For embedders and tests that want to show the "caller-provided device" path
/// ([`FdTun::from_fd`]) without unsafe code of their own. Needs `CAP_NET_ADMIN`; no runtime.
pub fn open_fd(config: &TunConfig) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd;
    let dev = builder(config, false)?
        .build_sync()
        .map_err(|e| io::Error::new(e.kind(), format!("TUN {}: {e}", config.name)))?;
    // A duplicate refers to the same open device; tun-rs's own descriptor closes on drop and
    // the interface lives on as long as ours is open.
    dev.as_fd().try_clone_to_owned()
}

/// A TUN device the caller opened (firmware often opens `/dev/net/tun` itself and issues
/// `TUNSETIFF`), given as its file descriptor and driven by tokio's reactor.
///
/// The descriptor must be a Linux TUN device opened with `IFF_TUN | IFF_NO_PI` and without
/// `IFF_VNET_HDR`: every read and write carries one bare IP packet. Its MTU and link state are
/// the caller's (set before or after; the node does not change them). No offload, no batching
/// beyond what the engine drains per wake-up.
pub struct FdTun {
    // tokio 1.54 made `AsyncFd` registration `unsafe` (I/O safety of an arbitrary `AsRawFd`);
    // its pipe halves take an `OwnedFd` safely and do nothing but readiness-driven read(2) and
    // write(2), which is all a TUN descriptor needs. One half per direction, on a duplicate
    // descriptor each (epoll registers a descriptor once).
    rx: tokio::net::unix::pipe::Receiver,
    tx: tokio::net::unix::pipe::Sender,
    name: String,
}

impl std::fmt::Debug for FdTun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdTun").field("name", &self.name).finish()
    }
}

/// The interface name of a TUN descriptor, from the `iff:` line the kernel's TUN driver adds
/// to `/proc/self/fdinfo/<fd>`; `None` for a descriptor that is not an attached TUN device.
fn tun_name_of(fd: std::os::fd::RawFd) -> io::Result<Option<String>> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("iff:"))
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty()))
}

impl FdTun {
    /// Takes over an open TUN descriptor: checks it is an attached TUN device (its name comes
    /// from the kernel), makes it non-blocking and registers it with tokio. Must be called
    /// inside a tokio runtime with I/O enabled. The descriptor is closed when this is dropped.
    ///
    /// Checked: that the descriptor is a TUN device attached to an interface. Not checked
    /// (the kernel does not tell without an ioctl): `IFF_NO_PI` and the absence of
    /// `IFF_VNET_HDR`; a descriptor opened otherwise yields packets with a header in front,
    /// which the filter drops as malformed.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        let name = tun_name_of(fd.as_raw_fd())?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the descriptor is not a TUN device attached to an interface (no iff: in its fdinfo)",
            )
        })?;
        // socket2's fcntl(F_SETFL, O_NONBLOCK) works on any descriptor; it spares this crate
        // an unsafe libc call. The descriptor is unwrapped again at once.
        let s = socket2::Socket::from(fd);
        s.set_nonblocking(true)?;
        let fd = std::os::fd::OwnedFd::from(s);
        let dup = fd.try_clone()?;
        Ok(Self {
            rx: tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd)?,
            tx: tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(dup)?,
            name,
        })
    }

    /// The interface name the kernel gave the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one IP packet, waiting for it. Cancel-safe.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.rx.readable().await?;
            match self.rx.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// Reads one IP packet if one is ready (`WouldBlock` otherwise).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.rx.try_read(buf)
    }

    /// Writes one IP packet, waiting until the device accepts it.
    pub async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        loop {
            self.tx.writable().await?;
            match self.tx.try_write(packet) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
}

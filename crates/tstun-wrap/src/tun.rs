//! The kernel TUN device: open it with a name and an MTU, read and write IP packets on tokio.
//!
//! Built on `tun-rs` without its address management (addresses and routes are osrouter's
//! job): the device is created, given its MTU and brought up, nothing more. Reads and writes
//! are non-blocking and driven by tokio's reactor; [`Tun::recv_batch`] and [`Tun::send_batch`]
//! move every packet that is ready per wake-up, so a burst costs one wait, not one per packet.
//!
//! Not yet used: tun-rs's Linux offload mode (`IFF_VNET_HDR` with TCP/UDP segmentation and
//! its GRO table), where one read returns up to 64 KiB that it splits into MTU-sized packets
//! and one write carries coalesced segments. That is the next step for throughput.

use std::io;

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
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("mtu", &self.mtu)
            .finish()
    }
}

impl Tun {
    /// Creates (or attaches to) the interface `config.name`, sets its MTU and brings it up.
    /// Must be called inside a tokio runtime with I/O enabled; needs `CAP_NET_ADMIN`.
    pub fn open(config: &TunConfig) -> io::Result<Self> {
        if config.name.is_empty() || config.name.len() > 15 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TUN name {:?} must be 1 to 15 bytes", config.name),
            ));
        }
        let dev = tun_rs::DeviceBuilder::new()
            .name(config.name.as_str())
            .mtu(config.mtu)
            .packet_information(false)
            .enable(true)
            .build_async()
            .map_err(|e| io::Error::new(e.kind(), format!("TUN {}: {e}", config.name)))?;
        let name = dev.name().unwrap_or_else(|_| config.name.clone());
        let mtu = dev.mtu().unwrap_or(config.mtu);
        Ok(Self { dev, name, mtu })
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

    /// Reads one IP packet, waiting for it.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf).await
    }

    /// Writes one IP packet, waiting until the device accepts it.
    pub async fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.dev.send(packet).await
    }

    /// Reads one IP packet if one is ready (`WouldBlock` otherwise).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.try_recv(buf)
    }

    /// Writes one IP packet if the device can take it now (`WouldBlock` otherwise).
    pub fn try_send(&self, packet: &[u8]) -> io::Result<usize> {
        self.dev.try_send(packet)
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
        *first_size = self.dev.recv(first.as_mut()).await?;
        let mut got = 1;
        while got < n {
            match self.dev.try_recv(bufs[got].as_mut()) {
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

    /// Writes every packet, waiting only when the device pushes back. A packet the kernel
    /// refuses (for example a malformed one) is counted as an error and skipped; the first
    /// such error is returned after all others were tried.
    pub async fn send_batch<B: AsRef<[u8]>>(&self, packets: &[B]) -> io::Result<usize> {
        let mut first_err = None;
        let mut sent = 0;
        for p in packets {
            match self.dev.send(p.as_ref()).await {
                Ok(_) => sent += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) if sent == 0 => Err(e),
            _ => Ok(sent),
        }
    }
}

//! The in-memory `phy::Device` smoltcp runs on: one intercepted packet in, a bounded queue of
//! packets out. Medium IP: no link layer, no neighbour discovery.

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;

/// The device: `rx` holds the packet being fed in (at most one: `Netstack::input` runs the
/// stack on each packet before taking the next), `tx` what the stack wrote, to be drained.
pub(crate) struct Phy {
    rx: Option<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    tx_cap: usize,
    mtu: usize,
    /// Packets the stack produced while `tx` was full (replies to ingress, and the RSTs of
    /// aborted connections removed before they could go: other sockets are refused a token
    /// instead and keep their data).
    pub(crate) tx_dropped: u64,
    /// A socket was refused a token since the last [`Phy::take_held_back`]: it holds a
    /// packet that will go once `tx` has room.
    held_back: bool,
}

impl Phy {
    pub(crate) fn new(mtu: usize, tx_cap: usize) -> Self {
        Self {
            rx: None,
            tx: VecDeque::new(),
            tx_cap,
            mtu,
            tx_dropped: 0,
            held_back: false,
        }
    }

    /// Puts the next intercepted packet in (replacing one the stack did not take).
    pub(crate) fn feed(&mut self, packet: Vec<u8>) {
        self.rx = Some(packet);
    }

    /// Takes the oldest packet the stack wrote.
    pub(crate) fn pop(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// Whether nothing is waiting in `tx`.
    pub(crate) fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// Whether a socket was refused a token since the last call (and clears it).
    pub(crate) fn take_held_back(&mut self) -> bool {
        std::mem::take(&mut self.held_back)
    }
}

pub(crate) struct Rx(Vec<u8>);

pub(crate) struct Tx<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    cap: usize,
    dropped: &'a mut u64,
}

impl phy::Device for Phy {
    type RxToken<'a>
        = Rx
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Rx, Tx<'_>)> {
        let packet = self.rx.take()?;
        Some((
            Rx(packet),
            Tx {
                queue: &mut self.tx,
                cap: self.tx_cap,
                dropped: &mut self.tx_dropped,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Tx<'_>> {
        if self.tx.len() >= self.tx_cap {
            self.held_back = true;
            return None;
        }
        Some(Tx {
            queue: &mut self.tx,
            cap: self.tx_cap,
            dropped: &mut self.tx_dropped,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = None;
        caps
    }
}

impl phy::RxToken for Rx {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        if self.queue.len() < self.cap {
            self.queue.push_back(buf);
        } else {
            *self.dropped += 1;
        }
        r
    }
}

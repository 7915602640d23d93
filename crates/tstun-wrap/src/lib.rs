//! The TUN device and the hooks every packet passes through.
//!
//! Owns the kernel TUN device (name and MTU), batched reads and writes, and the hook chain:
//! the outbound intercept that hands quad-100 traffic to the netstack (only in builds with the
//! `netstack` tag; without it the hook does not exist at all), the packet filter in both
//! directions with connection tracking, and injection of packets the node itself generates.
//! No feature combination may make a hook panic.
//!
//! Status: crate boundary only; the device and hooks land with issue 4.

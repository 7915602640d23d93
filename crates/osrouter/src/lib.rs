//! Operating-system configuration for a router node.
//!
//! Owns what the node changes in the host: addresses on the TUN device, routes to peers,
//! accepted subnet routes and the exit node's default route in a table of their own with policy
//! rules (so control and DERP traffic never loops into the tunnel), and SNAT and forwarding rules
//! through nftables, iptables or neither. Every change is undone on down and on exit.
//! It speaks netlink and firewall back-ends and knows nothing of Tailscale's protocols.
//!
//! Status: crate boundary only; it lands with issue 6.

//! A mapping the gateway granted, and when to renew it (no I/O, no clock of its own).

use crate::pcp::Nonce;
use crate::upnp::ControlPoint;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The longest lifetime the schedule trusts: a gateway granting more is renewed as if it had
/// granted this (it costs one datagram a half-day and bounds every deadline).
pub const MAX_SCHEDULED_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A port-mapping protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// NAT-PMP, RFC 6886.
    NatPmp,
    /// PCP, RFC 6887.
    Pcp,
    /// UPnP Internet Gateway Device (SSDP and SOAP).
    Upnp,
}

impl Protocol {
    /// Every protocol, in the order the client prefers them (Tailscale's: NAT-PMP first, PCP
    /// when only PCP answers, UPnP last).
    pub const ALL: [Protocol; 3] = [Protocol::NatPmp, Protocol::Pcp, Protocol::Upnp];

    /// Its name in logs and on the command line: `nat-pmp`, `pcp`, `upnp`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::NatPmp => "nat-pmp",
            Protocol::Pcp => "pcp",
            Protocol::Upnp => "upnp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown port-mapping protocol {0:?} (nat-pmp, pcp or upnp)")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;
    fn from_str(s: &str) -> Result<Protocol, UnknownProtocol> {
        match s.to_ascii_lowercase().as_str() {
            "nat-pmp" | "natpmp" | "pmp" => Ok(Protocol::NatPmp),
            "pcp" => Ok(Protocol::Pcp),
            "upnp" | "igd" => Ok(Protocol::Upnp),
            _ => Err(UnknownProtocol(s.to_string())),
        }
    }
}

/// What renewing or deleting needs, per protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Detail {
    NatPmp { epoch: u32 },
    Pcp { nonce: Nonce, epoch: u32 },
    Upnp { control: ControlPoint },
}

/// A UDP port mapping held on the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The protocol that made it.
    pub protocol: Protocol,
    /// The address and port peers reach this node at: for control, endpoint type 3.
    pub external: SocketAddrV4,
    /// Where the gateway forwards to: this host's address and the internal port.
    pub internal: SocketAddrV4,
    /// The gateway that holds it.
    pub gateway: Ipv4Addr,
    /// How long it holds from `obtained` (what the gateway granted, at most
    /// [`MAX_SCHEDULED_LIFETIME`]; for UPnP, which does not report it, what was asked).
    pub lifetime: Duration,
    /// When the gateway's answer arrived.
    pub obtained: Instant,
    pub(crate) detail: Detail,
}

impl Mapping {
    /// When it lapses unless renewed.
    pub fn expires_at(&self) -> Instant {
        self.obtained
            .checked_add(self.lifetime)
            .unwrap_or(self.obtained)
    }

    /// When to renew it: half its lifetime after it was obtained.
    pub fn renew_at(&self) -> Instant {
        self.obtained
            .checked_add(self.lifetime / 2)
            .unwrap_or(self.obtained)
    }

    /// Whether it still holds at `now`.
    pub fn is_live(&self, now: Instant) -> bool {
        now < self.expires_at()
    }

    /// Whether `now` is past the renewal time.
    pub fn wants_renewal(&self, now: Instant) -> bool {
        now >= self.renew_at()
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {} via {} for {} s",
            self.protocol,
            self.external,
            self.internal,
            self.gateway,
            self.lifetime.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(lifetime: Duration, obtained: Instant) -> Mapping {
        Mapping {
            protocol: Protocol::NatPmp,
            external: "11.77.0.1:41641".parse().unwrap(),
            internal: "192.168.77.2:41641".parse().unwrap(),
            gateway: Ipv4Addr::new(192, 168, 77, 1),
            lifetime,
            obtained,
            detail: Detail::NatPmp { epoch: 1 },
        }
    }

    #[test]
    fn renews_at_half_the_lifetime() {
        let t0 = Instant::now();
        let m = mapping(Duration::from_secs(7200), t0);
        assert_eq!(m.renew_at(), t0 + Duration::from_secs(3600));
        assert_eq!(m.expires_at(), t0 + Duration::from_secs(7200));
        assert!(!m.wants_renewal(t0 + Duration::from_secs(3599)));
        assert!(m.wants_renewal(t0 + Duration::from_secs(3600)));
        assert!(m.is_live(t0 + Duration::from_secs(7199)));
        assert!(!m.is_live(t0 + Duration::from_secs(7200)));
        assert_eq!(
            m.to_string(),
            "nat-pmp 11.77.0.1:41641 -> 192.168.77.2:41641 via 192.168.77.1 for 7200 s"
        );
    }

    #[test]
    fn protocol_names() {
        for p in Protocol::ALL {
            assert_eq!(p.name().parse::<Protocol>().unwrap(), p);
        }
        assert_eq!("NATPMP".parse::<Protocol>().unwrap(), Protocol::NatPmp);
        assert!("smtp".parse::<Protocol>().is_err());
    }
}

//! The crate's error.

use crate::mapping::Protocol;
use crate::upnp::{UrlError, soap, xml};
use crate::{http, natpmp, pcp, route};
use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Why a probe, mapping, renewal or release failed.
///
/// Refusals (`*Refused`, `UpnpFault`) are answers from the gateway; `Malformed*` and
/// `Unexpected` are protocol violations; `Io` and `Timeout` are the network's doing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done (for example "setting SO_MARK 0x80000").
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// `/proc/net/route` could not be read.
    #[error(transparent)]
    RouteTable(#[from] route::ParseError),
    /// No default IPv4 route with a gateway.
    #[error("no default IPv4 gateway in {}", route::PROC_NET_ROUTE)]
    NoGateway,
    /// The OS random generator failed (PCP nonce).
    #[error("random generator: {0}")]
    Random(String),
    /// None of the enabled protocols answered the probe.
    #[error("no port-mapping service ({protocols}) answered on gateway {gateway}")]
    NoService {
        /// The gateway asked.
        gateway: Ipv4Addr,
        /// The protocols asked, comma-separated.
        protocols: String,
    },
    /// The gateway did not answer in time.
    #[error("{protocol}: gateway {gateway} did not answer within {after:?}")]
    Timeout {
        /// The protocol.
        protocol: Protocol,
        /// The gateway.
        gateway: Ipv4Addr,
        /// How long was waited.
        after: Duration,
    },
    /// A NAT-PMP gateway refused.
    #[error("NAT-PMP gateway refused: {0}")]
    NatPmpRefused(natpmp::ResultCode),
    /// A PCP gateway refused.
    #[error("PCP gateway refused: {0}")]
    PcpRefused(pcp::ResultCode),
    /// A UPnP device answered a SOAP call with a fault.
    #[error("UPnP {action} refused: {fault}")]
    UpnpFault {
        /// The action called.
        action: &'static str,
        /// The device's error.
        fault: soap::Fault,
    },
    /// A malformed HTTP answer from a UPnP device.
    #[error("UPnP HTTP: {0}")]
    Http(#[from] http::Error),
    /// A UPnP device answered with an HTTP error status (outside a SOAP fault).
    #[error("UPnP: HTTP {status} from {url}")]
    HttpStatus {
        /// What was fetched.
        url: String,
        /// The status.
        status: u16,
    },
    /// A malformed device description.
    #[error("UPnP device description: {0}")]
    Xml(#[from] xml::Error),
    /// A malformed SOAP answer.
    #[error("UPnP: {0}")]
    Soap(#[from] soap::ParseError),
    /// An unusable URL in discovery or a description.
    #[error("UPnP: {0}")]
    Url(#[from] UrlError),
    /// No description offered a connection service that can map ports.
    #[error("UPnP: no WANIPConnection or WANPPPConnection service at {0}")]
    NoUpnpService(String),
    /// An answer that parses but makes no sense (port 0, unspecified address, wrong nonce…).
    #[error("{protocol}: {what}")]
    Unexpected {
        /// The protocol.
        protocol: Protocol,
        /// What was wrong.
        what: String,
    },
    /// Every protocol that answered the probe failed to map; each failure in order.
    #[error("no protocol made a mapping: {}", list(.0))]
    AllFailed(Vec<(Protocol, Error)>),
}

fn list(failures: &[(Protocol, Error)]) -> String {
    failures
        .iter()
        .map(|(p, e)| format!("{p}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn unexpected(protocol: Protocol, what: impl Into<String>) -> Error {
        Error::Unexpected {
            protocol,
            what: what.into(),
        }
    }
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

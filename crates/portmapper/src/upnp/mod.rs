//! UPnP Internet Gateway Device, without I/O: SSDP discovery ([`ssdp`]), the root device
//! description ([`xml`]), SOAP control calls ([`soap`]), and the URL and service choice that
//! tie them together.
//!
//! The flow: an SSDP answer names a `LOCATION` (the root description's URL); the description
//! lists services; the best connection service's `controlURL` receives the SOAP calls
//! `AddAnyPortMapping` (WANIPConnection:2) or `AddPortMapping`, `GetExternalIPAddress` and
//! `DeletePortMapping`.

pub mod soap;
pub mod ssdp;
pub mod xml;

use std::fmt;
use std::net::Ipv4Addr;

/// A connection service that can map ports, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKind {
    /// `WANIPConnection:2`: has `AddAnyPortMapping`, which picks a free port itself.
    WanIp2,
    /// `WANIPConnection:1`.
    WanIp1,
    /// `WANPPPConnection:1` (DSL modems).
    WanPpp1,
}

impl ServiceKind {
    /// Every kind, best first.
    pub const ALL: [ServiceKind; 3] = [
        ServiceKind::WanIp2,
        ServiceKind::WanIp1,
        ServiceKind::WanPpp1,
    ];

    /// The service type URN.
    pub fn urn(self) -> &'static str {
        match self {
            ServiceKind::WanIp2 => "urn:schemas-upnp-org:service:WANIPConnection:2",
            ServiceKind::WanIp1 => "urn:schemas-upnp-org:service:WANIPConnection:1",
            ServiceKind::WanPpp1 => "urn:schemas-upnp-org:service:WANPPPConnection:1",
        }
    }

    /// The kind a service type names, if any.
    pub fn from_urn(urn: &str) -> Option<ServiceKind> {
        Self::ALL.into_iter().find(|k| k.urn() == urn.trim())
    }
}

/// A plain `http://` URL with its host as written and its port and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host as written (an IPv4 literal on every gateway seen; names are not resolved).
    pub host: String,
    /// Port (80 when absent).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Why a URL is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Not `http://host[:port][/path]` (https and others are not spoken here).
    #[error("not a plain http URL: {0:?}")]
    NotHttp(String),
    /// The port is not a number from 1 to 65535.
    #[error("bad port in URL {0:?}")]
    Port(String),
}

impl HttpUrl {
    /// Parses an absolute `http://` URL.
    pub fn parse(url: &str) -> Result<HttpUrl, UrlError> {
        let url = url.trim();
        let not_http = || UrlError::NotHttp(url.chars().take(200).collect());
        let scheme = url.get(..7).ok_or_else(not_http)?;
        if !scheme.eq_ignore_ascii_case("http://") {
            return Err(not_http());
        }
        let rest = url.get(7..).ok_or_else(not_http)?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
            None => (rest, "/"),
        };
        // No userinfo, no IPv6 literals (IGD on IPv4 only here).
        if authority.is_empty() || authority.contains(['@', '[', ']', ' ']) {
            return Err(not_http());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p
                    .parse()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| UrlError::Port(url.chars().take(200).collect()))?;
                (h, port)
            }
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(not_http());
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(HttpUrl {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// Resolves `reference` (absolute, absolute-path or relative) against this URL.
    pub fn join(&self, reference: &str) -> Result<HttpUrl, UrlError> {
        let r = reference.trim();
        if r.get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        {
            return HttpUrl::parse(r);
        }
        if r.contains("://") {
            return Err(UrlError::NotHttp(r.chars().take(200).collect()));
        }
        let path = if r.starts_with('/') {
            r.to_string()
        } else {
            // Relative to the directory of this URL's path (query removed).
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = base.rsplit_once('/').map_or("", |(d, _)| d);
            format!("{dir}/{r}")
        };
        Ok(HttpUrl {
            host: self.host.clone(),
            port: self.port,
            path,
        })
    }

    /// The same URL aimed at `ip`, keeping port and path. The client only ever speaks HTTP
    /// to the gateway it found, whatever host a description names.
    pub fn at(&self, ip: Ipv4Addr) -> HttpUrl {
        HttpUrl {
            host: ip.to_string(),
            port: self.port,
            path: self.path.clone(),
        }
    }

    /// `host:port`, for the Host header.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// The connection service chosen from a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPoint {
    /// Which service.
    pub kind: ServiceKind,
    /// Where its SOAP calls go.
    pub control: HttpUrl,
}

/// Picks the best connection service of `root`, fetched from `location`: WANIPConnection:2,
/// then :1, then WANPPPConnection:1 (first in document order within a kind). Control URLs
/// resolve against `URLBase` when the description has one, else against `location`.
pub fn choose_service(
    root: &xml::RootDevice,
    location: &HttpUrl,
) -> Result<Option<ControlPoint>, UrlError> {
    let base = match root.url_base.as_deref().filter(|b| !b.trim().is_empty()) {
        Some(b) => HttpUrl::parse(b)?,
        None => location.clone(),
    };
    for kind in ServiceKind::ALL {
        if let Some(s) = root
            .services
            .iter()
            .find(|s| ServiceKind::from_urn(&s.service_type) == Some(kind))
        {
            if s.control_url.is_empty() {
                continue;
            }
            return Ok(Some(ControlPoint {
                kind,
                control: base.join(&s.control_url)?,
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://192.168.77.1:5000/rootDesc.xml").unwrap();
        assert_eq!(
            u,
            HttpUrl {
                host: "192.168.77.1".into(),
                port: 5000,
                path: "/rootDesc.xml".into()
            }
        );
        assert_eq!(u.to_string(), "http://192.168.77.1:5000/rootDesc.xml");
        assert_eq!(HttpUrl::parse("HTTP://r").unwrap().port, 80);
        assert_eq!(HttpUrl::parse("http://r?x").unwrap().path, "/?x");
        assert_eq!(u.join("/ctl/IPConn").unwrap().path, "/ctl/IPConn");
        assert_eq!(u.join("ctl/IPConn").unwrap().path, "/ctl/IPConn");
        let deep = HttpUrl::parse("http://r:1/a/b/desc.xml?q=1").unwrap();
        assert_eq!(deep.join("c").unwrap().path, "/a/b/c");
        assert_eq!(
            u.join("http://10.0.0.1:2/x").unwrap().authority(),
            "10.0.0.1:2"
        );
        assert_eq!(
            u.at(Ipv4Addr::new(10, 1, 1, 1)).to_string(),
            "http://10.1.1.1:5000/rootDesc.xml"
        );
        for bad in [
            "https://r/",
            "ftp://r",
            "http://",
            "http://:80/",
            "http://u@r/",
            "http://[::1]/",
            "http://r:0/",
            "http://r:99999/",
            "http://r:x/",
            "",
            "h",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(u.join("https://x/").is_err());
    }

    #[test]
    fn chooses_the_best_service() {
        let root = xml::parse_root(include_str!("testdata/miniupnpd-rootDesc.xml")).unwrap();
        let loc = HttpUrl::parse("http://192.168.77.1:5000/rootDesc.xml").unwrap();
        let cp = choose_service(&root, &loc).unwrap().unwrap();
        assert_eq!(cp.kind, ServiceKind::WanIp2);
        assert_eq!(
            cp.control.to_string(),
            "http://192.168.77.1:5000/ctl/IPConn"
        );

        let v1 = xml::RootDevice {
            url_base: Some("http://10.0.0.1:49152/".into()),
            services: vec![
                xml::Service {
                    service_type: ServiceKind::WanPpp1.urn().into(),
                    control_url: "/ppp".into(),
                },
                xml::Service {
                    service_type: ServiceKind::WanIp1.urn().into(),
                    control_url: "ip".into(),
                },
            ],
        };
        let cp = choose_service(&v1, &loc).unwrap().unwrap();
        assert_eq!(cp.kind, ServiceKind::WanIp1);
        assert_eq!(cp.control.to_string(), "http://10.0.0.1:49152/ip");
        assert_eq!(
            choose_service(&xml::RootDevice::default(), &loc).unwrap(),
            None
        );
    }
}

//! UPnP control: SOAP 1.1 requests over HTTP POST and their answers, without I/O.
//!
//! A call is an envelope whose body holds `<u:ACTION xmlns:u="SERVICE-TYPE">` with one child
//! per argument; the answer is `<u:ACTIONResponse>` with one child per output argument (HTTP
//! 200), or a SOAP fault carrying a `UPnPError` with a numeric code (HTTP 500).

use super::xml;
use crate::http;

/// A UPnP error from a SOAP fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `errorCode` (for example 718 ConflictInMappingEntry, 725 OnlyPermanentLeasesSupported).
    pub code: Option<u16>,
    /// `errorDescription`, if sent.
    pub description: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(c) => write!(f, "UPnP error {c}")?,
            None => f.write_str("SOAP fault")?,
        }
        if !self.description.is_empty() {
            write!(f, " ({})", self.description)?;
        }
        Ok(())
    }
}

/// UPnP error codes this client acts on.
pub mod codes {
    /// The action is not implemented.
    pub const INVALID_ACTION: u16 = 401;
    /// Invalid arguments (some devices say this for a lease they dislike).
    pub const INVALID_ARGS: u16 = 402;
    /// Optional action not implemented.
    pub const NOT_IMPLEMENTED: u16 = 602;
    /// The external port is mapped to another client.
    pub const CONFLICT_IN_MAPPING_ENTRY: u16 = 718;
    /// Only permanent leases (duration 0) are supported.
    pub const ONLY_PERMANENT_LEASES: u16 = 725;
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The body is not UTF-8.
    #[error("SOAP answer is not UTF-8")]
    NotText,
    /// The body is not well-formed.
    #[error("SOAP answer: {0}")]
    Xml(#[from] xml::Error),
    /// A 200 answer without the `ACTIONResponse` element.
    #[error("SOAP answer lacks {0}Response")]
    NoResponse(String),
    /// A non-200 status without a fault in the body.
    #[error("SOAP call answered HTTP {0} without a fault")]
    Status(u16),
}

/// The answer to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Success: the output arguments, in order.
    Ok(Vec<(String, String)>),
    /// The device refused.
    Fault(Fault),
}

/// The envelope for `action` of `service_type` with `args` (escaped here).
pub fn envelope(service_type: &str, action: &str, args: &[(&str, &str)]) -> String {
    let mut s = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action} xmlns:u=\"{}\">",
        xml::escape(service_type)
    );
    for (name, value) in args {
        s.push_str(&format!("<{name}>{}</{name}>", xml::escape(value)));
    }
    s.push_str(&format!("</u:{action}></s:Body></s:Envelope>\r\n"));
    s
}

/// The whole HTTP request for a call to the control URL at `host` (`ip:port`) and `path`.
pub fn request(
    host: &str,
    path: &str,
    service_type: &str,
    action: &str,
    args: &[(&str, &str)],
) -> Vec<u8> {
    let body = envelope(service_type, action, args);
    let soap_action = format!("\"{service_type}#{action}\"");
    http::request(
        "POST",
        host,
        path,
        &[
            ("Content-Type", "text/xml; charset=\"utf-8\""),
            ("SOAPAction", &soap_action),
        ],
        body.as_bytes(),
    )
}

/// Reads the answer to `action` from its HTTP status and body.
pub fn parse_response(status: u16, body: &[u8], action: &str) -> Result<Outcome, ParseError> {
    let doc = std::str::from_utf8(body).map_err(|_| ParseError::NotText)?;
    if status == 200 {
        let name = format!("{action}Response");
        return match xml::children_of(doc, &name)? {
            Some(args) => Ok(Outcome::Ok(args)),
            None => Err(ParseError::NoResponse(action.to_string())),
        };
    }
    match xml::children_of(doc, "UPnPError") {
        Ok(Some(fields)) => {
            let get = |n: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            Ok(Outcome::Fault(Fault {
                code: get("errorCode").parse().ok(),
                description: get("errorDescription"),
            }))
        }
        // A fault without UPnP detail still says the call failed.
        _ if doc.contains("Fault>") => Ok(Outcome::Fault(Fault {
            code: None,
            description: format!("HTTP {status}"),
        })),
        _ => Err(ParseError::Status(status)),
    }
}

/// The value of output argument `name`, if present.
pub fn arg<'a>(args: &'a [(String, String)], name: &str) -> Option<&'a str> {
    args.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPCONN2: &str = "urn:schemas-upnp-org:service:WANIPConnection:2";

    // Bodies captured from miniupnpd 2.3.1 (Debian bookworm) in a test namespace.
    const EXTERNAL_IP: &str = "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:GetExternalIPAddressResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:2\"><NewExternalIPAddress>11.77.0.1</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>\r\n";
    const ADD_ANY: &str = "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:AddAnyPortMappingResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:2\"><NewReservedPort>41641</NewReservedPort></u:AddAnyPortMappingResponse></s:Body></s:Envelope>\r\n";
    const ADD: &str = "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:AddPortMappingResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:2\"/></s:Body></s:Envelope>\r\n";
    const CONFLICT: &str = "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>\r\n";

    #[test]
    fn reads_miniupnpd_answers() {
        let Outcome::Ok(a) =
            parse_response(200, EXTERNAL_IP.as_bytes(), "GetExternalIPAddress").unwrap()
        else {
            panic!()
        };
        assert_eq!(arg(&a, "NewExternalIPAddress"), Some("11.77.0.1"));
        let Outcome::Ok(a) = parse_response(200, ADD_ANY.as_bytes(), "AddAnyPortMapping").unwrap()
        else {
            panic!()
        };
        assert_eq!(arg(&a, "NewReservedPort"), Some("41641"));
        assert_eq!(
            parse_response(200, ADD.as_bytes(), "AddPortMapping").unwrap(),
            Outcome::Ok(vec![])
        );
        assert_eq!(
            parse_response(500, CONFLICT.as_bytes(), "AddPortMapping").unwrap(),
            Outcome::Fault(Fault {
                code: Some(codes::CONFLICT_IN_MAPPING_ENTRY),
                description: "ConflictInMappingEntry".into()
            })
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_response(200, ADD.as_bytes(), "DeletePortMapping"),
            Err(ParseError::NoResponse("DeletePortMapping".into()))
        );
        assert_eq!(
            parse_response(404, b"<html>nope</html>", "X"),
            Err(ParseError::Status(404))
        );
        assert_eq!(parse_response(200, b"\xff", "X"), Err(ParseError::NotText));
        assert!(matches!(
            parse_response(200, b"<a><b></a>", "X"),
            Err(ParseError::Xml(_))
        ));
        let bare = "<s:Envelope><s:Body><s:Fault><faultcode>s:Server</faultcode></s:Fault></s:Body></s:Envelope>";
        assert_eq!(
            parse_response(500, bare.as_bytes(), "X").unwrap(),
            Outcome::Fault(Fault {
                code: None,
                description: "HTTP 500".into()
            })
        );
    }

    #[test]
    fn builds_a_call() {
        let r = request(
            "192.168.77.1:5000",
            "/ctl/IPConn",
            IPCONN2,
            "AddPortMapping",
            &[
                ("NewExternalPort", "41641"),
                ("NewPortMappingDescription", "a<b"),
            ],
        );
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("POST /ctl/IPConn HTTP/1.1\r\nHost: 192.168.77.1:5000\r\n"));
        assert!(text.contains(
            "SOAPAction: \"urn:schemas-upnp-org:service:WANIPConnection:2#AddPortMapping\"\r\n"
        ));
        assert!(text.contains("<u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:2\"><NewExternalPort>41641</NewExternalPort><NewPortMappingDescription>a&lt;b</NewPortMappingDescription></u:AddPortMapping>"));
        let (head, len) = crate::http::parse_head(b"HTTP/1.1 200 OK\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((head.status, len), (200, 19));
        // The body length is what Content-Length says.
        let body_at = text.find("\r\n\r\n").unwrap() + 4;
        let cl: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(text.len() - body_at, cl);
    }
}

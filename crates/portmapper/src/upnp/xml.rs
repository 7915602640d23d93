//! Just enough XML for UPnP: a pull tokenizer over a string (start tags, end tags, text), and
//! readers for the root device description and SOAP bodies built on it.
//!
//! Namespaces are ignored by comparing local names (`u:AddPortMappingResponse` matches
//! `AddPortMappingResponse`); attributes are skipped; comments, processing instructions and
//! declarations are skipped; CDATA is text; the five predefined entities and numeric
//! character references are decoded. Malformed input ends the scan with an error, never a
//! panic, and nesting deeper than [`MAX_DEPTH`] is refused.

/// The deepest element nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// Why a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `<` without its `>`, or a comment, CDATA or declaration without its end.
    #[error("XML: unterminated markup")]
    Unterminated,
    /// A tag without a name, or an end tag that does not match the open element.
    #[error("XML: malformed or mismatched tag")]
    Tag,
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("XML nested too deeply")]
    TooDeep,
}

/// One step of the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token<'a> {
    /// `<name ...>` (also `<name/>`, followed by its [`Token::End`]).
    Start(&'a str),
    /// `</name>`, or the end of an empty element.
    End(&'a str),
    /// Character data between tags, entities decoded.
    Text(String),
}

/// The part of a qualified name after its prefix.
pub fn local(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(_, l)| l)
}

/// A pull tokenizer that checks nesting.
pub struct Tokenizer<'a> {
    rest: &'a str,
    stack: Vec<&'a str>,
    pending_end: Option<&'a str>,
}

impl<'a> Tokenizer<'a> {
    /// Starts at the beginning of `doc`.
    pub fn new(doc: &'a str) -> Self {
        Tokenizer {
            rest: doc,
            stack: Vec::new(),
            pending_end: None,
        }
    }

    /// How many elements are open.
    pub fn depth(&self) -> usize {
        self.stack.len()
    }

    fn skip_past(&mut self, end: &str) -> Result<(), Error> {
        let at = self.rest.find(end).ok_or(Error::Unterminated)?;
        self.rest = self.rest.get(at + end.len()..).ok_or(Error::Unterminated)?;
        Ok(())
    }

    /// The next token, or `None` at the end of the document.
    pub fn next_token(&mut self) -> Result<Option<Token<'a>>, Error> {
        if let Some(name) = self.pending_end.take() {
            self.stack.pop();
            return Ok(Some(Token::End(name)));
        }
        loop {
            if self.rest.is_empty() {
                return if self.stack.is_empty() {
                    Ok(None)
                } else {
                    Err(Error::Unterminated)
                };
            }
            if !self.rest.starts_with('<') {
                let end = self.rest.find('<').unwrap_or(self.rest.len());
                let (raw, rest) = self.rest.split_at(end);
                self.rest = rest;
                if raw.trim().is_empty() {
                    continue;
                }
                return Ok(Some(Token::Text(decode_entities(raw))));
            }
            if let Some(after) = self.rest.strip_prefix("<!--") {
                self.rest = after;
                self.skip_past("-->")?;
                continue;
            }
            if let Some(after) = self.rest.strip_prefix("<![CDATA[") {
                let end = after.find("]]>").ok_or(Error::Unterminated)?;
                let text = after.get(..end).ok_or(Error::Unterminated)?;
                self.rest = after.get(end + 3..).ok_or(Error::Unterminated)?;
                return Ok(Some(Token::Text(text.to_string())));
            }
            if self.rest.starts_with("<?") {
                self.skip_past("?>")?;
                continue;
            }
            if self.rest.starts_with("<!") {
                // DOCTYPE and the like; internal subsets with nested '>' are not supported.
                self.skip_past(">")?;
                continue;
            }
            let close = self.rest.find('>').ok_or(Error::Unterminated)?;
            let inner = self.rest.get(1..close).ok_or(Error::Tag)?;
            self.rest = self.rest.get(close + 1..).ok_or(Error::Unterminated)?;
            if let Some(name) = inner.strip_prefix('/') {
                let name = name.trim();
                return match self.stack.pop() {
                    Some(open) if open == name => Ok(Some(Token::End(name))),
                    _ => Err(Error::Tag),
                };
            }
            let (inner, empty) = match inner.strip_suffix('/') {
                Some(i) => (i, true),
                None => (inner, false),
            };
            let name = inner
                .split(|c: char| c.is_ascii_whitespace())
                .next()
                .unwrap_or("");
            if name.is_empty() || name.contains(['<', '"', '\'', '=']) {
                return Err(Error::Tag);
            }
            if self.stack.len() >= MAX_DEPTH {
                return Err(Error::TooDeep);
            }
            self.stack.push(name);
            if empty {
                self.pending_end = Some(name);
            }
            return Ok(Some(Token::Start(name)));
        }
    }
}

/// Decodes `&lt;` `&gt;` `&amp;` `&quot;` `&apos;` and `&#N;` / `&#xN;`; anything else is
/// kept as written.
pub fn decode_entities(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        let (before, from_amp) = rest.split_at(amp);
        out.push_str(before);
        let semi = from_amp
            .get(..12.min(from_amp.len()))
            .and_then(|w| w.find(';'));
        let decoded = semi.and_then(|semi| {
            let name = from_amp.get(1..semi)?;
            let c = match name {
                "lt" => '<',
                "gt" => '>',
                "amp" => '&',
                "quot" => '"',
                "apos" => '\'',
                _ => {
                    let num = name.strip_prefix('#')?;
                    let v = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => num.parse::<u32>().ok()?,
                    };
                    char::from_u32(v)?
                }
            };
            Some((c, semi + 1))
        });
        match decoded {
            Some((c, used)) => {
                out.push(c);
                rest = from_amp.get(used..).unwrap_or("");
            }
            None => {
                out.push('&');
                rest = from_amp.get(1..).unwrap_or("");
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes text for an XML element's content.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// One `<service>` of a device description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    /// `serviceType`, such as `urn:schemas-upnp-org:service:WANIPConnection:1`.
    pub service_type: String,
    /// `controlURL`, as written (absolute, or relative to the base URL).
    pub control_url: String,
}

/// What this client needs from a root device description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RootDevice {
    /// `URLBase` (UPnP 1.0 devices), if present.
    pub url_base: Option<String>,
    /// Every service of the root device and its embedded devices, in document order.
    pub services: Vec<Service>,
}

/// The most services read from one description.
pub const MAX_SERVICES: usize = 64;

/// Reads a root device description: `URLBase` and every `service` element's type and
/// control URL.
pub fn parse_root(doc: &str) -> Result<RootDevice, Error> {
    let mut t = Tokenizer::new(doc);
    let mut root = RootDevice::default();
    // The element whose text is being read, and the service being filled in.
    let mut field: Option<&str> = None;
    let mut service: Option<(usize, Service)> = None;
    while let Some(tok) = t.next_token()? {
        match tok {
            Token::Start(name) => {
                let l = local(name);
                if l == "service" && service.is_none() {
                    service = Some((t.depth(), Service::default()));
                }
                field = Some(l);
            }
            Token::End(name) => {
                field = None;
                if local(name) == "service" {
                    if let Some((depth, s)) = service.take_if(|(d, _)| *d == t.depth() + 1) {
                        let _ = depth;
                        if root.services.len() < MAX_SERVICES {
                            root.services.push(s);
                        }
                    }
                }
            }
            Token::Text(text) => match (field, service.as_mut()) {
                (Some("serviceType"), Some((_, s))) => s.service_type = text.trim().to_string(),
                (Some("controlURL"), Some((_, s))) => s.control_url = text.trim().to_string(),
                (Some("URLBase"), None) => root.url_base = Some(text.trim().to_string()),
                _ => {}
            },
        }
    }
    Ok(root)
}

/// The direct children (local name, text) of the first element whose local name is
/// `element`, or `None` if there is none. A child with no text has an empty value.
pub fn children_of(doc: &str, element: &str) -> Result<Option<Vec<(String, String)>>, Error> {
    let mut t = Tokenizer::new(doc);
    let mut inside: Option<usize> = None;
    let mut out: Vec<(String, String)> = Vec::new();
    while let Some(tok) = t.next_token()? {
        match (tok, inside) {
            (Token::Start(name), None) if local(name) == element => inside = Some(t.depth()),
            (Token::Start(name), Some(d)) if t.depth() == d + 1 => {
                out.push((local(name).to_string(), String::new()));
            }
            (Token::Text(text), Some(d)) if t.depth() == d + 1 => {
                if let Some((_, v)) = out.last_mut() {
                    v.push_str(text.trim());
                }
            }
            (Token::End(_), Some(d)) if t.depth() < d => return Ok(Some(out)),
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// miniupnpd 2.3.1's rootDesc.xml (Debian bookworm), captured in a test namespace.
    pub(crate) const MINIUPNPD_ROOT: &str = include_str!("testdata/miniupnpd-rootDesc.xml");

    #[test]
    fn reads_miniupnpd_root_description() {
        let root = parse_root(MINIUPNPD_ROOT).unwrap();
        assert_eq!(root.url_base, None);
        let types: Vec<&str> = root
            .services
            .iter()
            .map(|s| s.service_type.as_str())
            .collect();
        assert_eq!(
            types,
            [
                "urn:schemas-upnp-org:service:Layer3Forwarding:1",
                "urn:schemas-upnp-org:service:DeviceProtection:1",
                "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1",
                "urn:schemas-upnp-org:service:WANIPConnection:2",
                "urn:schemas-upnp-org:service:WANIPv6FirewallControl:1",
            ]
        );
        assert_eq!(root.services[3].control_url, "/ctl/IPConn");
    }

    #[test]
    fn igd_v1_with_urlbase_prefixes_and_entities() {
        let doc = r#"<?xml version="1.0"?>
<!-- a comment <service> -->
<!DOCTYPE root>
<r:root xmlns:r="urn:schemas-upnp-org:device-1-0">
 <r:URLBase>http://10.0.0.1:49152/</r:URLBase>
 <r:device><r:serviceList>
  <r:service>
   <r:serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</r:serviceType>
   <r:controlURL>/upnp/control?a=1&amp;b=2</r:controlURL>
   <r:eventSubURL/>
  </r:service>
 </r:serviceList></r:device>
</r:root>"#;
        let root = parse_root(doc).unwrap();
        assert_eq!(root.url_base.as_deref(), Some("http://10.0.0.1:49152/"));
        assert_eq!(root.services.len(), 1);
        assert_eq!(root.services[0].control_url, "/upnp/control?a=1&b=2");
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            "<a>",
            "<a></b>",
            "</a>",
            "<a><!-- x",
            "<a><![CDATA[x",
            "<?xml",
            "<>",
            "<a<b>x</a<b>",
            "<a",
        ] {
            assert!(parse_root(bad).is_err(), "{bad}");
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert_eq!(parse_root(&deep), Err(Error::TooDeep));
        for n in 0..MINIUPNPD_ROOT.len() {
            if let Some(prefix) = MINIUPNPD_ROOT.get(..n) {
                let _ = parse_root(prefix);
            }
        }
    }

    #[test]
    fn entities() {
        assert_eq!(decode_entities("a&lt;b&gt;&amp;&quot;&apos;"), "a<b>&\"'");
        assert_eq!(decode_entities("&#65;&#x42;&#X43;"), "ABC");
        assert_eq!(
            decode_entities("&bogus; & &#xffffffff; &"),
            "&bogus; & &#xffffffff; &"
        );
        assert_eq!(escape("<a&'\">"), "&lt;a&amp;&apos;&quot;&gt;");
        assert_eq!(decode_entities(&escape("x<&>y")), "x<&>y");
    }

    #[test]
    fn children() {
        let doc = "<s:Envelope><s:Body><u:R xmlns:u=\"x\"><A>1</A><B/><C> two </C><D><E>no</E></D></u:R></s:Body></s:Envelope>";
        let c = children_of(doc, "R").unwrap().unwrap();
        assert_eq!(
            c,
            [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), String::new()),
                ("C".to_string(), "two".to_string()),
                ("D".to_string(), String::new()),
            ]
        );
        assert_eq!(children_of(doc, "Missing").unwrap(), None);
    }
}

//! TLS for `https://` control URLs: rustls on ring, TLS 1.3 only, trusting the system's CA
//! bundle.
//!
//! Roots come from `SSL_CERT_FILE` when it is set (and then only from there, as OpenSSL and
//! Go do), else from the first of [`SYSTEM_BUNDLES`] that holds a certificate. A bundle is
//! either PEM or a tailrouter anchor file ([`tailcfg::anchors`], told apart by its magic
//! bytes). The bundle is read on each dial, so a replaced bundle takes effect on the next
//! connection.

use crate::Error;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, Der, ServerName, TrustAnchor};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub(crate) use tailcfg::anchors::SYSTEM_BUNDLES;

/// The most bytes read from a bundle file (Mozilla's whole bundle is about 220 KB).
const MAX_BUNDLE: u64 = 8 << 20;

/// The bundle files to try, given the value of `SSL_CERT_FILE`.
pub(crate) fn bundle_candidates(ssl_cert_file: Option<PathBuf>) -> Vec<PathBuf> {
    match ssl_cert_file {
        Some(p) if !p.as_os_str().is_empty() => vec![p],
        _ => SYSTEM_BUNDLES.iter().map(PathBuf::from).collect(),
    }
}

fn no_roots(detail: String) -> Error {
    Error::Io {
        context: "loading TLS root certificates",
        source: io::Error::new(io::ErrorKind::NotFound, detail),
    }
}

/// The roots of one bundle: a tailrouter anchor file, which must parse as a whole, or PEM,
/// whose unparsable blocks are skipped.
fn read_bundle(path: &Path) -> io::Result<rustls::RootCertStore> {
    use std::io::Read as _;
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_BUNDLE)
        .read_to_end(&mut data)?;
    let mut store = rustls::RootCertStore::empty();
    if tailcfg::anchors::is_anchor_file(&data) {
        let anchors = tailcfg::anchors::parse(&data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        store.extend(anchors.into_iter().map(|a| TrustAnchor {
            subject: Der::from(a.subject),
            subject_public_key_info: Der::from(a.spki),
            name_constraints: a.name_constraints.map(Der::from),
        }));
    } else {
        store.add_parsable_certificates(
            CertificateDer::pem_slice_iter(&data).filter_map(Result::ok),
        );
    }
    Ok(store)
}

/// The root store from the first candidate that yields at least one usable certificate.
pub(crate) fn load_roots(candidates: &[PathBuf]) -> Result<rustls::RootCertStore, Error> {
    let mut tried = Vec::new();
    for path in candidates {
        match read_bundle(path) {
            Ok(store) => {
                let added = store.len();
                if added > 0 {
                    tracing::debug!(path = %path.display(), added, "TLS roots loaded");
                    return Ok(store);
                }
                tried.push(format!("{} (no certificates)", path.display()));
            }
            Err(e) => tried.push(format!("{} ({e})", path.display())),
        }
    }
    Err(no_roots(format!(
        "no CA certificates found for https:// control URLs: tried {}; \
         install a CA bundle or set SSL_CERT_FILE to a PEM bundle or tailrouter anchor file",
        tried.join(", ")
    )))
}

/// A client configuration for control: ring, TLS 1.3, ALPN `http/1.1` (the `/key` fetch and
/// the ts2021 upgrade are HTTP/1.1), the given roots.
pub(crate) fn config_with(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Io {
            context: "setting up TLS",
            source: io::Error::other(e),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The configuration trusting only the roots of one bundle (PEM or tailrouter anchor file).
pub(crate) fn config_from_file(bundle: &Path) -> Result<Arc<rustls::ClientConfig>, Error> {
    config_with(load_roots(&[bundle.to_path_buf()])?)
}

/// The configuration with the roots `SSL_CERT_FILE` or the system bundle gives.
pub(crate) fn system_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    config_with(load_roots(&bundle_candidates(env))?)
}

/// The TLS handshake over `tcp`, checking the certificate against `host` (a DNS name or an
/// IP literal without brackets).
pub(crate) async fn connect(
    tcp: TcpStream,
    host: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, Error> {
    let name = ServerName::try_from(host.to_owned()).map_err(|_| Error::Io {
        context: "TLS to control",
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a valid TLS server name"),
        ),
    })?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(Error::io("TLS handshake with control"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str, body: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("trtls-{}-{name}", std::process::id()));
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn candidates_follow_ssl_cert_file() {
        assert_eq!(
            bundle_candidates(Some("/x.pem".into())),
            vec![PathBuf::from("/x.pem")]
        );
        let sys: Vec<PathBuf> = SYSTEM_BUNDLES.iter().map(PathBuf::from).collect();
        assert_eq!(bundle_candidates(None), sys);
        assert_eq!(bundle_candidates(Some(PathBuf::new())), sys);
    }

    #[test]
    fn no_roots_is_a_clear_error() {
        let empty = tmp("empty.pem", "nothing here\n");
        let missing = PathBuf::from("/nonexistent/tailrouter-ca.pem");
        let e = load_roots(&[missing, empty.clone()]).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("loading TLS root certificates: no CA certificates found"));
        assert!(text.contains("/nonexistent/tailrouter-ca.pem ("), "{text}");
        assert!(text.contains("(no certificates)"), "{text}");
        assert!(text.contains("SSL_CERT_FILE"), "{text}");
        let _ = std::fs::remove_file(empty);
    }

    #[test]
    fn system_bundle_loads_when_present() {
        // Where the machine has a bundle, it yields roots; elsewhere the error says so.
        match load_roots(&bundle_candidates(None)) {
            Ok(store) => assert!(!store.is_empty()),
            Err(e) => assert!(e.to_string().contains("no CA certificates"), "{e}"),
        }
    }

    /// The first root of the system bundle, as the anchor it loads to.
    fn system_anchor() -> tailcfg::anchors::Anchor {
        let path = SYSTEM_BUNDLES[0];
        let pem = std::fs::read(path).unwrap_or_else(|e| {
            panic!(
                "this test needs a real CA certificate from {path}: {e} (install ca-certificates)"
            )
        });
        let mut store = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok) {
            if store.add(cert).is_ok() {
                break;
            }
        }
        let ta = store
            .roots
            .first()
            .unwrap_or_else(|| panic!("{path} holds no usable certificate"));
        tailcfg::anchors::Anchor {
            subject: ta.subject.to_vec(),
            spki: ta.subject_public_key_info.to_vec(),
            name_constraints: ta.name_constraints.as_ref().map(|n| n.to_vec()),
        }
    }

    #[test]
    fn anchor_file_loads() {
        let anchor = system_anchor();
        let file = tailcfg::anchors::encode(std::slice::from_ref(&anchor)).unwrap();
        let path = std::env::temp_dir().join(format!("trtls-{}-roots.anchors", std::process::id()));
        std::fs::write(&path, &file).unwrap();
        let store = load_roots(&[PathBuf::from("/nonexistent"), path.clone()]).unwrap();
        assert_eq!(store.len(), 1);
        assert_eq!(store.roots[0].subject.as_ref(), anchor.subject.as_slice());
        assert_eq!(
            store.roots[0].subject_public_key_info.as_ref(),
            anchor.spki.as_slice()
        );
        assert!(config_with(store).is_ok());

        // A damaged anchor file is reported like an unreadable one, not read as PEM.
        std::fs::write(&path, &file[..file.len() - 1]).unwrap();
        let text = load_roots(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert!(text.contains("anchor file truncated"), "{text}");
        // An anchor file without records holds no certificates.
        std::fs::write(&path, tailcfg::anchors::MAGIC).unwrap();
        let text = load_roots(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert!(text.contains("(no certificates)"), "{text}");
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn bad_server_name_is_refused_before_dialing_tls() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let cfg = config_with(rustls::RootCertStore::empty()).unwrap();
        let e = connect(tcp, "bad name!", cfg).await.unwrap_err();
        assert!(e.to_string().contains("not a valid TLS server name"), "{e}");
    }
}

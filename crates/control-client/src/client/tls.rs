//! TLS for `https://` control URLs: rustls on ring, TLS 1.3 only, trusting the system's PEM
//! bundle.
//!
//! Roots come from `SSL_CERT_FILE` when it is set (and then only from there, as OpenSSL and
//! Go do), else from the first of [`SYSTEM_BUNDLES`] that holds a certificate. The bundle is
//! read on each dial, so a replaced bundle takes effect on the next connection.

use crate::Error;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Where the system bundle is looked for, in order, when `SSL_CERT_FILE` is not set:
/// Debian/Ubuntu/Alpine/OpenWrt, then the BSD/macOS style path.
pub(crate) const SYSTEM_BUNDLES: [&str; 2] =
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/cert.pem"];

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

/// Reads the certificates of one PEM bundle; unparsable blocks are skipped.
fn read_bundle(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    use std::io::Read as _;
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_BUNDLE)
        .read_to_end(&mut data)?;
    Ok(CertificateDer::pem_slice_iter(&data)
        .filter_map(Result::ok)
        .collect())
}

/// The root store from the first candidate that yields at least one usable certificate.
pub(crate) fn load_roots(candidates: &[PathBuf]) -> Result<rustls::RootCertStore, Error> {
    let mut tried = Vec::new();
    for path in candidates {
        match read_bundle(path) {
            Ok(certs) => {
                let mut store = rustls::RootCertStore::empty();
                let (added, _) = store.add_parsable_certificates(certs);
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
         install a CA bundle or set SSL_CERT_FILE to a PEM file",
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

/// The configuration trusting only the certificates of one PEM bundle.
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

    #[tokio::test]
    async fn bad_server_name_is_refused_before_dialing_tls() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let cfg = config_with(rustls::RootCertStore::empty()).unwrap();
        let e = connect(tcp, "bad name!", cfg).await.unwrap_err();
        assert!(e.to_string().contains("not a valid TLS server name"), "{e}");
    }
}

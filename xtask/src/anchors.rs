//! Turns a PEM CA bundle into a tailrouter anchor file (`tailcfg::anchors`), the compact form
//! the node reads in place of the bundle: each root shrinks to its subject, public key and
//! name constraints, which is all rustls keeps of it.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tailcfg::anchors::{Anchor, encode};

/// Converts the certificates of `pem` into an anchor file, returning its bytes and how many
/// roots it holds.
///
/// Certificates that webpki cannot read as trust anchors (and PEM blocks that do not decode)
/// are left out, and their number goes to stderr; a bundle that yields no anchor at all is an
/// error, since a node trusting nothing cannot reach anything over TLS.
pub fn from_pem(pem: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut anchors = Vec::new();
    let mut skipped = 0usize;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let Ok(cert) = cert else {
            skipped += 1;
            continue;
        };
        match webpki::anchor_from_trusted_cert(&cert) {
            Ok(ta) => anchors.push(Anchor {
                subject: ta.subject.to_vec(),
                spki: ta.subject_public_key_info.to_vec(),
                name_constraints: ta.name_constraints.as_ref().map(|n| n.to_vec()),
            }),
            Err(_) => skipped += 1,
        }
    }
    if skipped > 0 {
        eprintln!("CA anchors: skipped {skipped} certificate(s) webpki cannot use");
    }
    if anchors.is_empty() {
        return Err(format!(
            "the CA bundle yields no trust anchors ({skipped} certificate(s) unusable)"
        ));
    }
    let file = encode(&anchors).map_err(|e| format!("cannot write the anchor file: {e}"))?;
    Ok((file, anchors.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

    #[test]
    fn system_bundle_shrinks() {
        let pem = std::fs::read(SYSTEM_BUNDLE).unwrap_or_else(|e| {
            panic!("this test needs the CA bundle {SYSTEM_BUNDLE}: {e} (install ca-certificates)")
        });
        let (file, roots) = from_pem(&pem).unwrap();
        eprintln!(
            "{SYSTEM_BUNDLE}: {} bytes PEM -> {} bytes anchor file, {roots} roots ({:.1}%)",
            pem.len(),
            file.len(),
            file.len() as f64 * 100.0 / pem.len() as f64
        );
        assert!(roots > 100, "only {roots} roots");
        assert!(
            file.len() * 10 < pem.len() * 4,
            "{} bytes is not under 40% of {}",
            file.len(),
            pem.len()
        );
        let parsed = tailcfg::anchors::parse(&file).unwrap();
        assert_eq!(parsed.len(), roots);
        assert!(
            parsed
                .iter()
                .all(|a| !a.subject.is_empty() && !a.spki.is_empty())
        );
    }

    #[test]
    fn nothing_usable_is_an_error() {
        let e = from_pem(b"no certificates here\n").unwrap_err();
        assert!(e.contains("no trust anchors"), "{e}");
        let junk = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = from_pem(junk).unwrap_err();
        assert!(e.contains("1 certificate(s) unusable"), "{e}");
    }
}

//! TLS for the REST server, with rustls and its `ring` crypto provider.
//!
//! As in the original (`tls-pemfile`), one PEM file may hold the certificate chain and
//! the private key; they may also be in separate files. With a client CA file
//! (`tls-clientverifyfile`), every client must present a certificate that chains to one
//! of its certificates; the handshake fails otherwise.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnection, WebPkiClientVerifier};

/// A TLS set-up problem; every message names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Unreadable {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} is not valid PEM: {reason}")]
    InvalidPem { what: &'static str, path: String, reason: String },
    #[error("no certificate found in {what} {path} (expected a PEM \"CERTIFICATE\" section)")]
    NoCertificate { what: &'static str, path: String },
    #[error(
        "no private key found in {path} (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" section)"
    )]
    NoPrivateKey { path: String },
    #[error("client CA file {path} has no usable CA certificate: {reason}")]
    InvalidClientCa { path: String, reason: String },
    #[error("certificate {cert} and private key {key} cannot be used: {reason}")]
    CertificateOrKey { cert: String, key: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable { what, path: path.display().to_string(), source })
}

fn pem_error(what: &'static str, path: &Path, e: pem::Error) -> TlsError {
    TlsError::InvalidPem { what, path: path.display().to_string(), reason: e.to_string() }
}

fn certificates(what: &'static str, path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs =
        CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>().map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what, path: path.display().to_string() });
    }
    Ok(certs)
}

/// The one crypto provider used for every TLS configuration of this crate.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server's TLS configuration.
///
/// * `cert_pem`: the certificate chain (server certificate first); when `key_pem` is
///   `None` it must also hold the private key (the original's single PEM file).
/// * `client_ca`: when given, client certificates are required and verified against
///   the CA certificates in this file.
///
/// ALPN offers `http/1.1`.
pub fn server_config(
    cert_pem: &Path,
    key_pem: Option<&Path>,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_bytes = read("certificate file", cert_pem)?;
    let chain = certificates("certificate file", cert_pem, &cert_bytes)?;

    let key_path = key_pem.unwrap_or(cert_pem);
    let key_bytes = match key_pem {
        Some(p) => read("private key file", p)?,
        None => cert_bytes,
    };
    let key = match PrivateKeyDer::from_pem_slice(&key_bytes) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoPrivateKey { path: key_path.display().to_string() });
        }
        Err(e) => return Err(pem_error("private key file", key_path, e)),
    };

    let provider = crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;

    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let ca_bytes = read("client CA file", ca_path)?;
            let ca_certs = certificates("client CA file", ca_path, &ca_bytes)?;
            let invalid = |reason: String| TlsError::InvalidClientCa { path: ca_path.display().to_string(), reason };
            let mut roots = RootCertStore::empty();
            for cert in ca_certs {
                roots.add(cert).map_err(|e| invalid(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };

    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError::CertificateOrKey {
        cert: cert_pem.display().to_string(),
        key: key_path.display().to_string(),
        reason: e.to_string(),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The subject common name of the peer's end-entity certificate, when the peer
/// presented one (with a client CA configured, rustls only completes the handshake
/// for a certificate it verified).
pub fn peer_common_name(conn: &ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    common_name(cert.as_ref())
}

/// The first subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "unit-test");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        let mut f = std::fs::File::create(&p).expect("create");
        f.write_all(content.as_bytes()).expect("write");
        p
    }

    #[test]
    fn single_and_separate_pem_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed();
        let both = write(dir.path(), "both.pem", &format!("{cert}{key}"));
        let cfg = server_config(&both, None, None).expect("single pem");
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let c = write(dir.path(), "cert.pem", &cert);
        let k = write(dir.path(), "key.pem", &key);
        server_config(&c, Some(&k), None).expect("separate files");
        server_config(&c, Some(&k), Some(&c)).expect("with a client CA");
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed();
        let c = write(dir.path(), "cert-only.pem", &cert);
        let k = write(dir.path(), "key-only.pem", &key);
        let missing = dir.path().join("missing.pem");

        let e = server_config(&c, None, None).expect_err("no key").to_string();
        assert!(e.contains("no private key") && e.contains("cert-only.pem"), "{e}");

        let e = server_config(&k, None, None).expect_err("no cert").to_string();
        assert!(e.contains("no certificate") && e.contains("key-only.pem"), "{e}");

        let e = server_config(&missing, None, None).expect_err("missing").to_string();
        assert!(e.contains("cannot read") && e.contains("missing.pem"), "{e}");

        let e = server_config(&c, Some(&missing), None).expect_err("missing key").to_string();
        assert!(e.contains("private key file") && e.contains("missing.pem"), "{e}");

        let e = server_config(&c, Some(&k), Some(&k)).expect_err("CA without cert").to_string();
        assert!(e.contains("no certificate") && e.contains("client CA file"), "{e}");

        let (_, other_key) = self_signed();
        let k2 = write(dir.path(), "other-key.pem", &other_key);
        let e = server_config(&c, Some(&k2), None).expect_err("mismatch").to_string();
        assert!(e.contains("cert-only.pem") && e.contains("other-key.pem"), "{e}");
    }

    #[test]
    fn common_name_is_read_from_der() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "node-7.example");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(common_name(cert.der()).as_deref(), Some("node-7.example"));
        assert_eq!(common_name(b"not a certificate"), None);
    }
}

//! A throw-away certificate (rcgen, `ring`) for serving `wss://` and `https://` on loopback, with
//! the root store a client needs to trust it.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Errors making the test identity.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls rejected the certificate or key.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A self-signed certificate for `localhost` / `127.0.0.1` and its key.
#[derive(Debug, Clone)]
pub struct TestIdentity {
    cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

impl TestIdentity {
    /// Generates a fresh self-signed certificate for the given names (DNS names or IPs).
    pub fn generate(names: &[&str]) -> Result<Self, TlsError> {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let ck = rcgen::generate_simple_self_signed(names)?;
        Ok(TestIdentity {
            cert: ck.cert.der().clone(),
            key_pkcs8: ck.signing_key.serialize_der(),
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
        })
    }

    /// For `localhost` and `127.0.0.1`.
    pub fn localhost() -> Result<Self, TlsError> {
        Self::generate(&["localhost", "127.0.0.1"])
    }

    /// The certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate, PEM (a server's `tls_cert` file, or a client's CA file: it is self-signed).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM (PKCS#8; a server's `tls_key` file).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A rustls client config (ring provider) trusting only this certificate.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.root_store()?)
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }

    /// A root store holding only this certificate (give it to the client).
    pub fn root_store(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone())?;
        Ok(Arc::new(roots))
    }

    /// A rustls server config (ring provider) presenting this certificate.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()));
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], key)?;
        Ok(Arc::new(cfg))
    }
}

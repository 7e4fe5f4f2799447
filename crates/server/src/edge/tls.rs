//! TLS termination with a certificate that can be replaced while the server runs.
//!
//! Certificates are short-lived now (ACME renews every 60–90 days, some every few days), so a
//! restart per renewal would drop every SSE stream; instead the host calls [`TlsFiles::reload`]
//! (the CLI does on SIGHUP, as nginx does) and new handshakes use the new pair while
//! established connections keep theirs. A reload that fails (a half-written file, a key that
//! does not match) keeps the old pair and says why.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// Why a certificate and key could not be loaded.
#[derive(Debug)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// A PEM certificate chain and private key on disk, and the pair currently served from them.
pub struct TlsFiles {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles").field("cert_path", &self.cert_path).field("key_path", &self.key_path).finish()
    }
}

impl TlsFiles {
    /// Loads the pair once; a server must not start with a certificate it cannot serve.
    pub fn load(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Result<Arc<TlsFiles>, TlsError> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = read_pair(&cert_path, &key_path, &provider)?;
        Ok(Arc::new(TlsFiles { cert_path, key_path, provider, current: RwLock::new(Arc::new(pair)) }))
    }

    /// Reads the files again; on success new handshakes use the new pair, on failure the old
    /// one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = read_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(pair);
        Ok(())
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The rustls configuration of the listener: TLS 1.2 and 1.3, HTTP/1.1 by ALPN, the
    /// certificate from `self` at each handshake.
    pub fn server_config(self: &Arc<TlsFiles>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError(format!("TLS configuration: {error}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

#[derive(Debug)]
struct Resolver(Arc<TlsFiles>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

fn read_pair(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError(format!("cannot read certificates from {}: {error}", cert_path.display())))?;
    if chain.is_empty() {
        return Err(TlsError(format!("{} holds no PEM certificate", cert_path.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|error| TlsError(format!("cannot read a private key from {}: {error}", key_path.display())))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|error| {
        TlsError(format!("{} and {} are not a usable pair: {error}", cert_path.display(), key_path.display()))
    })
}

//! TLS for client connections: the `tls { ... }` options and the rustls server configuration
//! built from them (certificate chain, private key, and with `verify` the client CA).
//!
//! The record layer itself runs on the shard that owns the connection (`server` drives a
//! `rustls::ServerConnection` between the socket and the protocol parser); this module only
//! reads the PEM files and builds the shared, immutable `ServerConfig`, once at start-up.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a client has to complete the TLS handshake (nats-server's default).
pub const DEFAULT_TLS_TIMEOUT: Duration = Duration::from_secs(2);

/// `tls { cert_file, key_file, ca_file, verify, timeout, handshake_first }` and the `--tls*`
/// flags.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsOptions {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// Require and check client certificates against `ca_file`.
    pub verify: bool,
    pub timeout: Option<Duration>,
    /// TLS before the INFO line (no plaintext INFO first).
    pub handshake_first: bool,
}

impl TlsOptions {
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TLS_TIMEOUT)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("error loading certificate file {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("error parsing certificate file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

/// Builds the rustls configuration; the errors name the file and what is wrong with it.
pub fn server_config(o: &TlsOptions) -> Result<Arc<rustls::ServerConfig>, String> {
    let cert_file = o
        .cert_file
        .as_deref()
        .ok_or("missing 'cert_file' in TLS configuration")?;
    let key_file = o
        .key_file
        .as_deref()
        .ok_or("missing 'key_file' in TLS configuration")?;
    let certs = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("error loading key file {}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if o.verify {
        let ca = o
            .ca_file
            .as_deref()
            .ok_or("'verify' needs 'ca_file' in TLS configuration")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(ca)? {
            roots
                .add(c)
                .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(Arc::new(config))
}

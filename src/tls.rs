//! TLS for client and route connections: the `tls { ... }` options and the rustls
//! configurations built from them (certificate chain, private key, with `verify` the client
//! CA; for routes this server dials, the CA their certificates are checked against).
//!
//! The record layer itself runs on the shard that owns the connection (`server` drives a
//! `rustls::ServerConnection` between the socket and the protocol parser); this module only
//! reads the PEM files and builds the shared, immutable `ServerConfig`, once at start-up, and
//! names the identities a client certificate may be mapped to (`verify_and_map`).

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
    /// `verify`, and the certificate names the user (no password).
    pub verify_and_map: bool,
    pub timeout: Option<Duration>,
    /// TLS before the INFO line (no plaintext INFO first).
    pub handshake_first: bool,
    /// Routes only: do not check the certificate of a server this one dials.
    pub insecure: bool,
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

fn read_roots(ca: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| format!("bad CA certificate in {}: {e}", ca.display()))?;
    }
    Ok(roots)
}

fn read_cert_and_key(
    o: &TlsOptions,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
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
    Ok((certs, key))
}

/// The rustls configuration for dialling routes (cluster `tls {}`): this server presents its
/// own certificate, and checks the peer's against `ca_file` and the route URL's host unless
/// `insecure` is set.
pub fn route_client_config(o: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, String> {
    let (certs, key) = read_cert_and_key(o)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if o.insecure {
        tracing::warn!("TLS certificate chain and hostname of solicited routes will not be verified. DO NOT USE IN PRODUCTION!");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
    } else {
        let ca = o.ca_file.as_deref().ok_or(
            "cluster TLS needs 'ca_file' to check the servers it dials (or 'insecure: true')",
        )?;
        builder.with_root_certificates(read_roots(ca)?)
    };
    let config = builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(Arc::new(config))
}

/// `insecure: true`: any server certificate is taken (its handshake signatures are still
/// checked, so the peer holds the key of the certificate it shows).
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The AEAD of a cipher suite, as far as choosing between suites goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
    Other,
}

fn aead_of(s: rustls::CipherSuite) -> Aead {
    use rustls::CipherSuite as C;
    match s {
        C::TLS13_AES_128_GCM_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Aead::Aes128Gcm,
        C::TLS13_AES_256_GCM_SHA384
        | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Aead::Aes256Gcm,
        C::TLS13_CHACHA20_POLY1305_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Aead::ChaCha20Poly1305,
        _ => Aead::Other,
    }
}

/// Whether this machine encrypts AES-GCM in hardware (AES and carry-less multiply).
fn aes_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The TLS configurations a server accepts clients with, one per order of preference
/// between cipher suites. rustls takes the client's order by default, and rustls and
/// OpenSSL clients list AES-256-GCM first; nats-server (Go's crypto/tls) picks by its own
/// order: AES-128-GCM, then AES-256-GCM, then ChaCha20-Poly1305, unless the machine has no
/// AES hardware or the client prefers ChaCha20 (its first known suite is one), when
/// ChaCha20 comes first. So does this: the client's preference comes from its ClientHello
/// ([`ServerTls::for_client`]). With AES-128 a 16 KiB pub/sub message took 4 % fewer
/// instructions than with AES-256 (callgrind).
pub struct ServerTls {
    /// AES first where the machine has AES hardware, else ChaCha20 first.
    default: Arc<rustls::ServerConfig>,
    chacha: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// The configuration for a client whose ClientHello offered `suites`, in its order.
    pub fn for_client(&self, suites: &[rustls::CipherSuite]) -> &Arc<rustls::ServerConfig> {
        let first = suites
            .iter()
            .map(|&s| aead_of(s))
            .find(|&a| a != Aead::Other);
        if first == Some(Aead::ChaCha20Poly1305) {
            &self.chacha
        } else {
            &self.default
        }
    }

    /// The configuration before a ClientHello says anything.
    pub fn default(&self) -> &Arc<rustls::ServerConfig> {
        &self.default
    }
}

/// Builds the server's TLS configurations (see [`ServerTls`]); the errors name the file and
/// what is wrong with it.
pub fn server_tls(o: &TlsOptions) -> Result<ServerTls, String> {
    Ok(ServerTls {
        default: server_config(o)?,
        chacha: server_config_ordered(o, true)?,
    })
}

/// The configuration in the server's own order (see [`ServerTls`]), as routes use it.
pub fn server_config(o: &TlsOptions) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config_ordered(o, !aes_hardware())
}

/// The configuration with its cipher suites in the server's order: TLS 1.3 before 1.2, and
/// within each AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305, or ChaCha20 first.
fn server_config_ordered(
    o: &TlsOptions,
    chacha_first: bool,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let (certs, key) = read_cert_and_key(o)?;
    let mut suites = rustls::crypto::ring::default_provider();
    suites.cipher_suites.sort_by_key(|s| {
        let rank = match aead_of(s.suite()) {
            Aead::ChaCha20Poly1305 if chacha_first => 0,
            Aead::Aes128Gcm => 1,
            Aead::Aes256Gcm => 2,
            Aead::ChaCha20Poly1305 => 3,
            Aead::Other => 4,
        };
        (!matches!(s, rustls::SupportedCipherSuite::Tls13(_)), rank)
    });
    let provider = Arc::new(suites);
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if o.verify || o.verify_and_map {
        let ca = o
            .ca_file
            .as_deref()
            .ok_or("'verify' needs 'ca_file' in TLS configuration")?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(read_roots(ca)?),
            provider,
        )
        .build()
        .map_err(|e| e.to_string())?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The names a client certificate may be mapped to a user by, in nats-server's order: its
/// e-mail addresses, DNS names and URIs (subject alternative names), then its subject as
/// Go prints an RDN sequence (`CN=alice,OU=Eng,O=Acme,C=US`: last RDN first). Empty if the
/// certificate cannot be parsed.
pub fn cert_identities(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut emails = Vec::new();
    let mut dns = Vec::new();
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::RFC822Name(e) => emails.push(e.to_string()),
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::URI(u) => uris.push(u.to_string()),
                _ => {}
            }
        }
    }
    let mut out = emails;
    out.extend(dns);
    out.extend(uris);
    out.push(rdn_string(cert.subject()));
    out
}

/// A distinguished name as Go's `pkix.RDNSequence.String` writes it.
fn rdn_string(name: &x509_parser::x509::X509Name) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type().to_id_string();
                    let key = match oid.as_str() {
                        "2.5.4.6" => "C",
                        "2.5.4.10" => "O",
                        "2.5.4.11" => "OU",
                        "2.5.4.3" => "CN",
                        "2.5.4.5" => "SERIALNUMBER",
                        "2.5.4.7" => "L",
                        "2.5.4.8" => "ST",
                        "2.5.4.9" => "STREET",
                        "2.5.4.17" => "POSTALCODE",
                        other => other,
                    };
                    let value = atv.as_str().map(escape_rdn_value).unwrap_or_else(|_| {
                        let hex: String = atv
                            .attr_value()
                            .data
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        format!("#{hex}")
                    });
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// Escapes an attribute value as RFC 4514 (and Go) do.
fn escape_rdn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, ch) in v.chars().enumerate() {
        let special = matches!(ch, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (ch == ' ' || ch == '#'))
            || (i == last && ch == ' ');
        if special {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// Whether two distinguished names hold the same attributes, in any order (nats-server
/// matches a mapped user's DN this way too).
pub fn same_dn(a: &str, b: &str) -> bool {
    fn parts(s: &str) -> Option<Vec<String>> {
        if !s.contains('=') {
            return None;
        }
        let mut v: Vec<String> = s.split([',', '+']).map(|p| p.trim().to_string()).collect();
        v.sort();
        Some(v)
    }
    matches!((parts(a), parts(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_of_a_client_certificate() {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["alice.acme.io".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::Rfc822Name("alice@acme.io".try_into().unwrap()));
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CountryName, "US");
        p.distinguished_name
            .push(DnType::OrganizationName, "Acme, Inc");
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, "Eng");
        p.distinguished_name.push(DnType::CommonName, "alice");
        let cert = p.self_signed(&key).unwrap();
        let ids = cert_identities(cert.der());
        assert_eq!(
            ids,
            [
                "alice@acme.io",
                "alice.acme.io",
                "CN=alice,OU=Eng,O=Acme\\, Inc,C=US"
            ]
        );
        assert!(same_dn("CN=alice,OU=Eng,C=US", "C=US, OU=Eng, CN=alice"));
        assert!(!same_dn("CN=alice", "CN=bob") && !same_dn("alice", "alice"));
        assert!(cert_identities(b"junk").is_empty());
    }
}

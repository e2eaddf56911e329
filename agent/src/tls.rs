//! Builds the rustls client configuration for mutual TLS (AWS IoT Core, or Mosquitto with
//! `require_certificate true`) from PEM files, with the `ring` crypto provider.
//!
//! Every failure names the file and what to check, because a wrong path or a key that does not
//! belong to its certificate is the most common first-day problem on a gateway.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Mutual TLS settings (validated `[mqtt.tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tls {
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    pub ca: PathBuf,
    /// The device's certificate and key; `None` for server-authenticated TLS only.
    pub client: Option<ClientIdentity>,
    /// ALPN protocol to offer, e.g. `x-amzn-mqtt-ca` for AWS IoT Core on port 443.
    pub alpn: Option<String>,
}

impl Tls {
    /// Server-authenticated TLS trusting the CA in `ca`.
    pub fn new(ca: PathBuf) -> Tls {
        Tls {
            ca,
            client: None,
            alpn: None,
        }
    }

    /// Adds the device's certificate and key (mutual TLS).
    pub fn with_client(mut self, cert: PathBuf, key: PathBuf) -> Tls {
        self.client = Some(ClientIdentity { cert, key });
        self
    }

    /// Offers ALPN protocol `alpn`.
    pub fn with_alpn(mut self, alpn: &str) -> Tls {
        self.alpn = Some(alpn.to_owned());
        self
    }
}

/// The device's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// PEM file with the device certificate (and any intermediates after it).
    pub cert: PathBuf,
    /// PEM file with the device's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read the {what} file {path}")]
    Read {
        /// Which file this is (`CA certificate`, `device certificate`, `private key`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no PEM block of the expected kind.
    #[error(
        "the {what} file {path} contains no {expected} PEM block (is it DER, or the wrong file?)"
    )]
    NoPem {
        /// Which file this is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for, e.g. `-----BEGIN CERTIFICATE-----`.
        expected: &'static str,
    },
    /// The CA certificate is not usable as a trust anchor.
    #[error("the CA certificate in {path} is not usable as a trust anchor")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What rustls reported.
        source: rustls::Error,
    },
    /// The certificate and key cannot be used together.
    #[error("{}", client_auth_message(cert, key, source))]
    ClientAuth {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What rustls reported.
        source: rustls::Error,
    },
    /// The crypto provider refused the default protocol versions (a build problem).
    #[error("the TLS provider does not support TLS 1.2/1.3: {0}")]
    Provider(rustls::Error),
}

/// The message for [`TlsError::ClientAuth`]: says which file to look at.
fn client_auth_message(cert: &Path, key: &Path, source: &rustls::Error) -> String {
    let (cert, key) = (cert.display(), key.display());
    match source {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            format!("the private key {key} does not belong to the device certificate {cert}")
        }
        rustls::Error::InvalidCertificate(_) => format!(
            "the device certificate {cert} cannot be used (it must be an X.509 v3 certificate; \
             `openssl x509 -req` makes v1 unless given extensions)"
        ),
        _ => format!(
            "the device certificate {cert} and private key {key} cannot be used together (the \
             key must be an ECDSA P-256/P-384, RSA or Ed25519 key in PKCS#8, PKCS#1 or SEC1 PEM)"
        ),
    }
}

/// Loads the PEM files named in `tls` and builds a client configuration using `ring`.
/// Blocking (reads files); call it before starting the runtime's tasks.
pub fn client_config(tls: &Tls) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&tls.ca, "CA certificate")? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: tls.ca.clone(),
            source,
        })?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Provider)?
            .with_root_certificates(roots);
    let mut config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = read_certs(&id.cert, "device certificate")?;
            let key = read_key(&id.key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| TlsError::ClientAuth {
                    cert: id.cert.clone(),
                    key: id.key.clone(),
                    source,
                })?
        }
    };
    if let Some(alpn) = &tls.alpn {
        config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    }
    Ok(Arc::new(config))
}

fn open(path: &Path, what: &'static str) -> Result<BufReader<File>, TlsError> {
    let read_err = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    Ok(BufReader::new(File::open(path).map_err(read_err)?))
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(path, what)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            what,
            path: path.to_owned(),
            expected: "-----BEGIN CERTIFICATE-----",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "private key";
    rustls_pemfile::private_key(&mut open(path, WHAT)?)
        .map_err(|source| TlsError::Read {
            what: WHAT,
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPem {
            what: WHAT,
            path: path.to_owned(),
            expected: "-----BEGIN PRIVATE KEY----- (or EC/RSA PRIVATE KEY)",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/tls")
            .join(name)
    }

    #[test]
    fn mutual_tls_config_builds_with_alpn() {
        let tls = Tls::new(fixture("ca.pem"))
            .with_client(fixture("device.pem"), fixture("device.key"))
            .with_alpn("x-amzn-mqtt-ca");
        let config = client_config(&tls).unwrap();
        assert_eq!(config.alpn_protocols, [b"x-amzn-mqtt-ca".to_vec()]);
        assert!(config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn key_of_another_certificate_is_named() {
        let tls =
            Tls::new(fixture("ca.pem")).with_client(fixture("device.pem"), fixture("other.key"));
        let msg = client_config(&tls).unwrap_err().to_string();
        assert!(msg.contains("other.key does not belong"), "{msg}");
    }

    #[test]
    fn x509_v1_certificate_gets_a_hint() {
        let tls = Tls::new(fixture("ca.pem"))
            .with_client(fixture("device-v1.pem"), fixture("device.key"));
        let msg = client_config(&tls).unwrap_err().to_string();
        assert!(msg.contains("device-v1.pem"), "{msg}");
        assert!(msg.contains("X.509 v3"), "{msg}");
    }

    #[test]
    fn certificate_file_given_as_key_is_reported() {
        let tls = Tls::new(fixture("ca.pem")).with_client(fixture("device.pem"), fixture("ca.pem"));
        let err = client_config(&tls).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::NoPem {
                    what: "private key",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn missing_ca_file_is_named() {
        let err = client_config(&Tls::new(PathBuf::from("/nonexistent/ca.pem"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("CA certificate"), "{msg}");
        assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
    }

    #[test]
    fn file_without_pem_blocks_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = client_config(&Tls::new(ca.clone())).unwrap_err();
        assert!(matches!(err, TlsError::NoPem { .. }), "{err:?}");
        assert!(err.to_string().contains(&*ca.to_string_lossy()));
    }
}

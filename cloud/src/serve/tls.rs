//! TLS for the API (`--tls-cert`, `--tls-key`): a rustls server configuration (ring provider,
//! TLS 1.2 and 1.3, HTTP/1.1 by ALPN) from PEM files. The key file is refused if the group or
//! others can read it, like every secret ([`crate::secret`]).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::secret::{self, FileRule, SecretError};

/// The certificate chain and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The key file is readable by others or unreadable.
    #[error(transparent)]
    KeyFile(#[from] SecretError),
    /// A PEM file cannot be read or parsed.
    #[error("cannot read PEM file {path}: {cause}")]
    ReadPem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        cause: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS setup failed: {0} (does --tls-key belong to --tls-cert?)")]
    Rustls(rustls::Error),
}

impl TlsFiles {
    /// The acceptor for these files. Blocking (reads two small files).
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        secret::check_mode(&self.key, "TLS key", FileRule::OwnerOnly)?;
        fn pem(path: &std::path::Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
            move |cause| TlsError::ReadPem {
                path: path.to_owned(),
                cause,
            }
        }
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .map_err(pem(&self.cert))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem(&self.cert))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(pem(&self.key))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(TlsError::Rustls)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

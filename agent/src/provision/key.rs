//! The device's private key and its certificate signing request, made with rcgen on ring (the
//! crypto provider rustls already uses here, so nothing new is cross-compiled).
//!
//! The key is EC P-256 in PKCS#8 PEM, which AWS IoT accepts for CreateCertificateFromCsr and
//! the agent's TLS loads. A new key file is created with mode 0600 in one step (never written
//! first and narrowed after), and an existing one is never replaced unless asked: replacing it
//! silently would strand the certificate issued for it.

use std::io::Write as _;
use std::path::Path;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use super::ProvisionError;

/// Where `keygen` and `provision` keep the key by default: the agent's state directory, owned
/// by the service user, so the agent can read a 0600 key without root.
pub const DEFAULT_KEY_PATH: &str = "/var/lib/osprey-agent/certs/private.pem.key";

/// A new EC P-256 key pair.
pub fn generate() -> Result<KeyPair, ProvisionError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| ProvisionError::Crypto {
        what: "cannot generate an EC P-256 key".into(),
        source,
    })
}

/// Writes `key` to `path` (PKCS#8 PEM, mode 0600), creating the directory (0700) if needed.
/// Refuses an existing file unless `overwrite`.
pub fn write(key: &KeyPair, path: &Path, overwrite: bool) -> Result<(), ProvisionError> {
    let pem = pem("PRIVATE KEY", key.serialized_der());
    write_secret(path, pem.as_bytes(), overwrite)
}

/// `der` as a PEM block with `label` (RFC 7468: base64 in lines of 64 characters).
fn pem(label: &str, der: &[u8]) -> String {
    let base64 = aws_smithy_types::base64::encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in base64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes secret `bytes` to a new 0600 file at `path` (or replaces it, with `overwrite`).
pub(crate) fn write_secret(
    path: &Path,
    bytes: &[u8],
    overwrite: bool,
) -> Result<(), ProvisionError> {
    let fail = |source| ProvisionError::File {
        action: "write the private key to",
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(fail)?;
        }
    }
    if overwrite {
        return crate::atomic_file::replace(path, bytes, true).map_err(fail);
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ProvisionError::KeyExists {
                path: path.to_owned(),
            })
        }
        Err(e) => return Err(fail(e)),
    };
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(fail)
}

/// Reads a PEM private key (PKCS#8; what [`write`] makes).
pub fn load(path: &Path) -> Result<KeyPair, ProvisionError> {
    let bytes = std::fs::read(path).map_err(|source| ProvisionError::File {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    let not_a_key = |source| ProvisionError::Crypto {
        what: format!(
            "{} is not a PKCS#8 PEM key this agent can sign a CSR with",
            path.display()
        ),
        source,
    };
    match rustls_pemfile::private_key(&mut bytes.as_slice()) {
        Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(der))) => {
            KeyPair::try_from(der.secret_pkcs8_der()).map_err(not_a_key)
        }
        _ => Err(not_a_key(rcgen::Error::CouldNotParseKeyPair)),
    }
}

/// A PKCS#10 certificate signing request in PEM for `key`, with subject CN = `device_id`.
pub fn csr_pem(key: &KeyPair, device_id: &str) -> Result<String, ProvisionError> {
    if !osprey_protocol::valid_device_id(device_id) {
        return Err(ProvisionError::DeviceId(device_id.to_owned()));
    }
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, device_id);
    params.distinguished_name = name;
    let crypto = |source| ProvisionError::Crypto {
        what: "cannot make the certificate signing request".into(),
        source,
    };
    let csr = params.serialize_request(key).map_err(crypto)?;
    Ok(pem("CERTIFICATE REQUEST", csr.der()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn new_key_is_0600_and_is_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs/private.pem.key");
        let key = generate().unwrap();
        write(&key, &path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o077, 0);
        let before = std::fs::read(&path).unwrap();

        let other = generate().unwrap();
        let err = write(&other, &path, false).unwrap_err();
        assert!(matches!(err, ProvisionError::KeyExists { .. }), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "key changed");

        write(&other, &path, true).unwrap();
        assert_ne!(std::fs::read(&path).unwrap(), before);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The replaced key loads back as the same key.
        assert_eq!(
            load(&path).unwrap().public_key_raw(),
            other.public_key_raw()
        );
    }

    #[test]
    fn csr_is_pem_and_refuses_an_invalid_device_id() {
        let key = generate().unwrap();
        let pem = csr_pem(&key, "pump-7").unwrap();
        assert!(
            pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
            "{pem}"
        );
        let err = csr_pem(&key, "pump/7").unwrap_err();
        assert!(matches!(err, ProvisionError::DeviceId(_)), "{err}");
    }

    #[test]
    fn load_refuses_a_file_that_is_not_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, "hello").unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("is not a PKCS#8 PEM key"), "{err}");
    }
}

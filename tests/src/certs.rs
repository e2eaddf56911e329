//! Test PKI made with the `openssl` command: a CA, a broker certificate, device certificates,
//! and a rogue device certificate from a different CA.
//!
//! ```text
//!   Osprey Test CA ──┬── server  (CN localhost, SAN DNS:localhost, IP:127.0.0.1, serverAuth)
//!                    └── client  (CN = device id, clientAuth)   … and more with issue_client()
//!   Osprey Rogue CA ──── rogue   (CN = same device id, clientAuth): must be refused
//! ```
//!
//! All keys are EC P-256 in PKCS#8 PEM; certificates are X.509 v3 PEM. The broker accepts a
//! device by its certificate chain and (with `use_identity_as_username`) takes the CN as its
//! user name, like AWS IoT Core takes a thing name. rustls ignores the CN of server
//! certificates, hence the subjectAltName.
//!
//! Mosquitto started as root drops to the `mosquitto` user before it reads its keys, so the
//! directory is world-readable and -searchable and every file, keys included, is mode 0644.
//! These are throwaway test keys in a temp dir removed on drop.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// The extensions used for each kind of certificate.
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// A client (device) certificate and its key.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The certificate's common name: the device id.
    pub cn: String,
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, EC P-256, unless issued with another [`KeyForm`]).
    pub key: PathBuf,
}

/// The PEM forms a device's private key arrives in on real gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyForm {
    /// `BEGIN PRIVATE KEY`, EC P-256 (`openssl genpkey`; what [`Certs::generate`] issues).
    Pkcs8P256,
    /// `BEGIN PRIVATE KEY`, EC P-384.
    Pkcs8P384,
    /// `BEGIN EC PARAMETERS` then `BEGIN EC PRIVATE KEY`, P-256: `openssl ecparam -genkey`
    /// without `-noout`, the form many provisioning guides produce.
    Sec1P256WithParams,
    /// `BEGIN EC PRIVATE KEY`, P-384.
    Sec1P384,
    /// `BEGIN RSA PRIVATE KEY`, 2048 bits: what AWS IoT's CreateKeysAndCertificate returns.
    Pkcs1Rsa2048,
}

impl KeyForm {
    /// Every form, for tests that loop over them.
    pub const ALL: [KeyForm; 5] = [
        KeyForm::Pkcs8P256,
        KeyForm::Pkcs8P384,
        KeyForm::Sec1P256WithParams,
        KeyForm::Sec1P384,
        KeyForm::Pkcs1Rsa2048,
    ];

    /// The first PEM line of a key in this form.
    pub fn pem_header(self) -> &'static str {
        match self {
            KeyForm::Pkcs8P256 | KeyForm::Pkcs8P384 => "-----BEGIN PRIVATE KEY-----",
            KeyForm::Sec1P256WithParams => "-----BEGIN EC PARAMETERS-----",
            KeyForm::Sec1P384 => "-----BEGIN EC PRIVATE KEY-----",
            KeyForm::Pkcs1Rsa2048 => "-----BEGIN RSA PRIVATE KEY-----",
        }
    }

    /// The `openssl` arguments that write a key in this form to `out`.
    fn openssl_args(self, out: &str) -> Vec<&str> {
        let mut args = match self {
            KeyForm::Pkcs8P256 => vec![
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
            KeyForm::Pkcs8P384 => vec![
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
            ],
            KeyForm::Sec1P256WithParams => vec!["ecparam", "-name", "prime256v1", "-genkey"],
            KeyForm::Sec1P384 => vec!["ecparam", "-name", "secp384r1", "-genkey", "-noout"],
            KeyForm::Pkcs1Rsa2048 => vec!["genrsa", "-traditional"],
        };
        args.extend(["-out", out]);
        if self == KeyForm::Pkcs1Rsa2048 {
            args.push("2048");
        }
        args
    }
}

/// A throwaway PKI in a temporary directory, removed on drop (keep it alive as long as any
/// broker or process uses its files, including across [`crate::Mosquitto::restart`]).
#[derive(Debug)]
pub struct Certs {
    /// The trusted CA certificate (give it to the broker and to devices).
    pub ca: PathBuf,
    /// The broker's certificate, for `localhost` and `127.0.0.1`.
    pub server_cert: PathBuf,
    /// The broker's private key.
    pub server_key: PathBuf,
    /// The device certificate for the device id given to [`Certs::generate`].
    pub client: ClientCert,
    /// A certificate with the same device id, signed by [`Certs::rogue_ca`]: must be refused.
    pub rogue: ClientCert,
    /// The other CA, which the broker does not trust.
    pub rogue_ca: PathBuf,
    dir: TempDir,
}

impl Certs {
    /// Make the CA, the server certificate, a client certificate with CN `device_id`, and the
    /// rogue CA and client certificate.
    ///
    /// # Panics
    ///
    /// When `openssl` is missing or fails (with its output), or `device_id` contains `/`.
    pub fn generate(device_id: &str) -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("osprey-certs-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for certificates: {e}"));
        let d = dir.path();
        write(&d.join("openssl.cnf"), OPENSSL_CONFIG);

        make_ca(d, "ca", "Osprey Test CA");
        make_ca(d, "rogue-ca", "Osprey Rogue CA");
        let (server_cert, server_key) = issue(d, "ca", "server", "localhost", "server_ext");
        let (cert, key) = issue(d, "ca", "client", device_id, "client_ext");
        let (rogue_cert, rogue_key) = issue(d, "rogue-ca", "rogue", device_id, "client_ext");

        let certs = Certs {
            ca: d.join("ca.pem"),
            server_cert,
            server_key,
            client: ClientCert {
                cn: device_id.to_string(),
                cert,
                key,
            },
            rogue: ClientCert {
                cn: device_id.to_string(),
                cert: rogue_cert,
                key: rogue_key,
            },
            rogue_ca: d.join("rogue-ca.pem"),
            dir,
        };
        certs.open_up_permissions();
        certs
    }

    /// Issue one more device certificate from the trusted CA, e.g. for a second device.
    pub fn issue_client(&self, device_id: &str) -> ClientCert {
        self.issue_client_with_key(device_id, KeyForm::Pkcs8P256)
    }

    /// [`Certs::issue_client`] with the private key in `form`.
    pub fn issue_client_with_key(&self, device_id: &str, form: KeyForm) -> ClientCert {
        let name = match form {
            KeyForm::Pkcs8P256 => format!("client-{}", sanitize(device_id)),
            other => format!(
                "client-{}-{}",
                sanitize(device_id),
                format!("{other:?}").to_lowercase()
            ),
        };
        let (cert, key) = issue_with_key(self.dir(), "ca", &name, device_id, "client_ext", form);
        self.open_up_permissions();
        ClientCert {
            cn: device_id.to_string(),
            cert,
            key,
        }
    }

    /// Signs the PEM CSR `csr_pem` with the trusted CA as a device (clientAuth) certificate
    /// with the CSR's subject, written as `<name>.pem`; returns its PEM text. An unreadable or
    /// badly signed CSR is an `Err` with openssl's message (a stand-in service answers it with
    /// an error instead of panicking).
    pub fn sign_csr(&self, csr_pem: &str, name: &str) -> Result<String, String> {
        let d = self.dir();
        let name = sanitize(name);
        let csr = format!("{name}.csr");
        let cert = format!("{name}.pem");
        fs::write(d.join(&csr), csr_pem).map_err(|e| e.to_string())?;
        run_openssl(d, &["req", "-in", &csr, "-noout", "-verify"])?;
        run_openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAserial",
                "ca.srl",
                "-CAcreateserial",
                "-days",
                "30",
                "-sha256",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                "client_ext",
                "-out",
                &cert,
            ],
        )?;
        self.open_up_permissions();
        fs::read_to_string(d.join(&cert)).map_err(|e| e.to_string())
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Directory 0755 and files 0644, so that Mosquitto can read them after dropping root.
    fn open_up_permissions(&self) {
        set_mode(self.dir(), 0o755);
        let entries = fs::read_dir(self.dir())
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", self.dir().display()));
        for entry in entries.flatten() {
            set_mode(&entry.path(), 0o644);
        }
    }
}

fn make_ca(d: &Path, name: &str, cn: &str) {
    let key = format!("{name}.key");
    genkey(d, &key);
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-config",
            "openssl.cnf",
            "-extensions",
            "ca_ext",
            "-key",
            &key,
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            "3650",
            "-sha256",
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// Key, CSR and certificate `<name>.pem` signed by CA `<ca>`; returns (cert, key) paths.
fn issue(d: &Path, ca: &str, name: &str, cn: &str, extensions: &str) -> (PathBuf, PathBuf) {
    issue_with_key(d, ca, name, cn, extensions, KeyForm::Pkcs8P256)
}

/// [`issue`] with the private key in `form`.
fn issue_with_key(
    d: &Path,
    ca: &str,
    name: &str,
    cn: &str,
    extensions: &str,
    form: KeyForm,
) -> (PathBuf, PathBuf) {
    assert!(
        !cn.contains('/'),
        "a certificate CN must not contain '/': {cn:?}"
    );
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let cert = format!("{name}.pem");
    openssl(d, &form.openssl_args(&key));
    openssl(
        d,
        &[
            "req",
            "-new",
            "-config",
            "openssl.cnf",
            "-key",
            &key,
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &csr,
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAserial",
            &format!("{ca}.srl"),
            "-CAcreateserial",
            "-days",
            "825",
            "-sha256",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            extensions,
            "-out",
            &cert,
        ],
    );
    (d.join(cert), d.join(key))
}

fn genkey(d: &Path, out: &str) {
    openssl(d, &KeyForm::Pkcs8P256.openssl_args(out));
}

/// Run `openssl ARGS` in directory `d`; its stdout, or what went wrong.
fn run_openssl(d: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(d)
        .output()
        .map_err(|e| format!("cannot run openssl ({e}): run tests/run.sh, which installs it"))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(format!(
            "openssl {} failed ({}): {}",
            args.first().unwrap_or(&""),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Run `openssl ARGS` in directory `d`.
fn openssl(d: &Path, args: &[&str]) {
    if let Err(e) = run_openssl(d, args) {
        panic!("{e}\n(openssl {})", args.join(" "));
    }
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

/// A device id as a file name.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

//! Device identity on the gateway: the private key is made here and never leaves the device.
//!
//! ```text
//!  keygen:  EC P-256 key (0600) ─► PKCS#10 CSR (CN = device id) ─► operator
//!           operator: provision-device.sh --csr  ─► certificate ─► device
//!
//!  fleet (by claim), for many devices flashed with one image:
//!   claim cert ─► MQTT $aws/certificates/create-from-csr/json  ─► certificate + ownership token
//!   (or create/json: AWS makes the key, sent over the TLS link)
//!              ─► $aws/provisioning-templates/<T>/provision/json {token, parameters}
//!              ─► thingName ─► certificate (and key) written, device_id = thingName
//! ```
//!
//! [`key`] makes and loads the device key and its CSR; [`fleet`] speaks AWS IoT's fleet
//! provisioning MQTT API; [`device_id`] writes the thing name into the agent's config file.

pub mod device_id;
pub mod fleet;
pub mod key;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::tls::{self, Tls};

/// Why making or provisioning the device identity failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The key file exists and overwriting was not asked for.
    #[error(
        "{path} already exists: this device already has a key (pass --force to replace it; the \
         certificate issued for the old key then stops working)"
    )]
    KeyExists {
        /// The key file.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {path}")]
    File {
        /// What was being done (`write the private key to`, `read`).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key could not be generated or parsed, or the CSR could not be made.
    #[error("{what}: {source}")]
    Crypto {
        /// What was being done.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// The device id is not a valid thing name.
    #[error(
        "invalid device id {0:?}: use 1 to 128 characters of A-Z a-z 0-9 _ - : (it becomes the \
         certificate's CN and the thing name)"
    )]
    DeviceId(String),
    /// The config file's device_id could not be located or replaced.
    #[error("cannot set device_id in {path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The fleet provisioning exchange failed.
    #[error(transparent)]
    Fleet(#[from] fleet::FleetError),
    /// The agent config could not be loaded.
    #[error("cannot load the agent config")]
    LoadConfig(#[from] crate::ConfigError),
    /// The agent config does not say where the device certificate and key go.
    #[error(
        "{0}: [mqtt.tls] must set ca, cert and key: cert and key are where provisioning writes \
         the device's certificate and key, ca is the broker's CA"
    )]
    NoTlsPaths(PathBuf),
    /// The claim credentials cannot be used.
    #[error("the claim certificate or key cannot be used")]
    ClaimTls(#[source] tls::TlsError),
    /// `CreateKeysAndCertificate` was asked for but a key is already on the device.
    #[error(
        "{0} already exists: provisioning with a key made by AWS would replace it; drop \
         --aws-key to get a certificate for this key instead (CreateCertificateFromCsr)"
    )]
    KeyWouldBeReplaced(PathBuf),
}

/// The template parameter that carries the device's serial number (the thing name in
/// deploy/aws/template.yaml's provisioning template derives from it).
pub const SERIAL_PARAMETER: &str = "SerialNumber";

/// What `osprey-agent provision` is asked to do.
#[derive(Debug, Clone)]
pub struct ClaimPlan {
    /// The agent config file: its `[mqtt]` endpoint and CA are used for the exchange, its
    /// `[mqtt.tls]` cert and key name where the device's own ones go, and its `device_id` is
    /// set to the thing name.
    pub config: PathBuf,
    /// The claim certificate (shared by the fleet; it may only provision).
    pub claim_cert: PathBuf,
    /// The claim certificate's key.
    pub claim_key: PathBuf,
    /// The provisioning template's name.
    pub template: String,
    /// The template parameters (`SerialNumber` and any others).
    pub parameters: BTreeMap<String, String>,
    /// `CreateKeysAndCertificate` (AWS makes the key) instead of a CSR from a key made here.
    pub aws_key: bool,
    /// The longest wait for each answer.
    pub timeout: Duration,
}

/// What `by_claim` did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The device already holds its certificate and key: nothing was done.
    AlreadyProvisioned {
        /// The config's device id.
        device_id: String,
        /// The certificate file found.
        cert: PathBuf,
    },
    /// Provisioned now.
    Provisioned {
        /// The registered thing: the config's device_id now.
        thing_name: String,
        /// The new certificate's id.
        certificate_id: String,
        /// Where the certificate was written.
        cert: PathBuf,
        /// Where the key is.
        key: PathBuf,
    },
}

/// Fleet provisioning by claim for the device whose config is `plan.config`. Idempotent: when
/// the config's certificate and key files both exist it returns
/// [`Outcome::AlreadyProvisioned`] without connecting.
///
/// Order of writes: the key (when made here, before any request, so a re-run after a failure
/// reuses it), then `device_id` in the config, then the certificate last, because the
/// certificate's presence is what marks the device provisioned.
pub async fn by_claim(plan: &ClaimPlan) -> Result<Outcome, ProvisionError> {
    let config = Config::load(&plan.config)?;
    let tls_config = config
        .mqtt
        .tls
        .as_ref()
        .filter(|t| t.client.is_some())
        .ok_or_else(|| ProvisionError::NoTlsPaths(plan.config.clone()))?;
    let Some(device) = tls_config.client.clone() else {
        return Err(ProvisionError::NoTlsPaths(plan.config.clone()));
    };
    if device.cert.is_file() && device.key.is_file() {
        return Ok(Outcome::AlreadyProvisioned {
            device_id: config.device_id,
            cert: device.cert,
        });
    }
    let serial = plan
        .parameters
        .get(SERIAL_PARAMETER)
        .cloned()
        .unwrap_or_else(|| config.device_id.clone());
    let request = if plan.aws_key {
        if device.key.exists() {
            return Err(ProvisionError::KeyWouldBeReplaced(device.key));
        }
        fleet::CertificateRequest::CreateKeys
    } else {
        let key_pair = if device.key.exists() {
            key::load(&device.key)?
        } else {
            let made = key::generate()?;
            key::write(&made, &device.key, false)?;
            made
        };
        fleet::CertificateRequest::Csr(key::csr_pem(&key_pair, &serial)?)
    };

    let claim = Tls {
        alpn: tls_config.alpn.clone(),
        ..Tls::new(tls_config.ca.clone())
    }
    .with_client(plan.claim_cert.clone(), plan.claim_key.clone());
    let rustls = tls::client_config(&claim).map_err(ProvisionError::ClaimTls)?;
    let mut options = rumqttc::MqttOptions::new(
        claim_client_id(&serial),
        &config.mqtt.host,
        config.mqtt.port,
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(64 * 1024, 64 * 1024)
        .set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::clone(&rustls)),
        ));
    let issued = fleet::provision(
        options,
        &request,
        &plan.template,
        &plan.parameters,
        plan.timeout,
    )
    .await?;

    if let Some(secret) = &issued.private_key {
        key::write_secret(&device.key, secret.expose().as_bytes(), false)?;
    }
    device_id::set_in_file(&plan.config, &issued.thing_name)?;
    crate::atomic_file::replace(&device.cert, issued.certificate_pem.as_bytes(), false).map_err(
        |source| ProvisionError::File {
            action: "write the device certificate to",
            path: device.cert.clone(),
            source,
        },
    )?;
    Ok(Outcome::Provisioned {
        thing_name: issued.thing_name,
        certificate_id: issued.certificate_id,
        cert: device.cert,
        key: device.key,
    })
}

/// The MQTT client id of the claim connection: one per device, so that many devices
/// provisioning at once do not knock each other off (AWS drops a duplicate client id).
fn claim_client_id(serial: &str) -> String {
    format!("provision-{serial}")
}

/// This machine's serial number, as a thing-name-safe string: the Raspberry Pi's
/// (`/proc/device-tree/serial-number`), else the systemd machine id (`/etc/machine-id`).
/// `root` is `/` on a device (another directory in tests).
pub fn machine_serial(root: &Path) -> Option<String> {
    ["proc/device-tree/serial-number", "etc/machine-id"]
        .iter()
        .filter_map(|rel| std::fs::read(root.join(rel)).ok())
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':'))
                .collect::<String>()
        })
        .find(|s| osprey_protocol::valid_device_id(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_serial_prefers_the_pi_serial_and_strips_the_nul() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(machine_serial(root.path()), None);
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/machine-id"), "0123abcd\n").unwrap();
        assert_eq!(machine_serial(root.path()).as_deref(), Some("0123abcd"));
        std::fs::create_dir_all(root.path().join("proc/device-tree")).unwrap();
        std::fs::write(
            root.path().join("proc/device-tree/serial-number"),
            "10000000deadbeef\0",
        )
        .unwrap();
        assert_eq!(
            machine_serial(root.path()).as_deref(),
            Some("10000000deadbeef")
        );
    }
}

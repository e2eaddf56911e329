//! A stand-in for AWS IoT's fleet provisioning service (the device provisioning MQTT API),
//! over a test's mutual-TLS Mosquitto: it answers on the topics AWS documents with the payloads
//! AWS documents (JSON payload format), signing certificates with the test CA, so the agent's
//! `provision` command can be tested without AWS.
//!
//! ```text
//!  device ─► $aws/certificates/create-from-csr/json {"certificateSigningRequest"}
//!             ─► …/accepted {"certificateId","certificatePem","certificateOwnershipToken"}
//!              | …/rejected {"statusCode":400,"errorCode":"InvalidCsr",…} (CSR unreadable)
//!  device ─► $aws/certificates/create/json {}
//!             ─► …/accepted {… and "privateKey"}
//!  device ─► $aws/provisioning-templates/<name>/provision/json
//!             {"certificateOwnershipToken","parameters":{…}}
//!             ─► …/accepted {"thingName": prefix + parameters.SerialNumber,
//!                            "deviceConfiguration": {}}
//!              | …/rejected 404 unknown template, 400 unknown/used ownership token,
//!                           400 missing SerialNumber or an invalid thing name
//! ```
//!
//! The certificate it issues has the CSR's subject (CreateKeysAndCertificate: CN = the
//! certificate id), because the test broker's identity is the certificate's CN
//! (`use_identity_as_username`). AWS instead ignores the CSR's subject and ties the certificate
//! to the thing by attaching it as the thing's principal; so a provisioned device is accepted
//! by the test broker under its thing name only when the CSR's CN is that name (the agent
//! puts the serial number there, and the test templates name the thing after it).
//!
//! Checked against AWS's own client: `tests/sdk/provisioning_check.py` (awsiotsdk's
//! `awsiot.iotidentity`) runs both certificate calls and RegisterThing through it.
//!
//! Not modelled (say so when a test would depend on it): answers go to every subscriber of the
//! answer topics (AWS answers only the connection that asked; here any client allowed to read
//! them would see another device's answer, and with CreateKeysAndCertificate its key); the
//! one-hour expiry of ownership tokens and the deletion of certificates never registered; the
//! certificate states (PENDING_ACTIVATION → ACTIVE), thing groups, policies, attributes and
//! the template body language (a template here is a name and a thing-name prefix);
//! pre-provisioning hooks; the CBOR payload format; throttling.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use osprey_agent::tls::{self, Tls};
use rumqttc::{Client, MqttOptions, QoS, TlsConfiguration, Transport};
use serde_json::{json, Value};

use crate::{Certs, ClientCert};

const CREATE_FROM_CSR: &str = "$aws/certificates/create-from-csr/json";
const CREATE_KEYS: &str = "$aws/certificates/create/json";
const REGISTER: &str = "$aws/provisioning-templates/+/provision/json";

/// The common name of the stand-in's own certificate (the test ACL lets it use `$aws/#`).
pub const SERVICE_CN: &str = "osprey-fleet-provisioning";
/// The common name of the fleet's claim certificate in tests.
pub const CLAIM_CN: &str = "osprey-claim";

/// A thing the service registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The thing name it answered.
    pub thing_name: String,
    /// The certificate the ownership token belonged to.
    pub certificate_id: String,
    /// The template used.
    pub template: String,
    /// The parameters sent.
    pub parameters: BTreeMap<String, String>,
}

/// An issued certificate waiting for RegisterThing.
struct Pending {
    certificate_id: String,
    used: bool,
}

struct Shared {
    link: crate::stand_in::Link,
    certs: Arc<Certs>,
    /// Template name → thing-name prefix.
    templates: BTreeMap<String, String>,
    tokens: Mutex<BTreeMap<String, Pending>>,
    registered: Mutex<Vec<Registered>>,
    issued: AtomicU64,
}

/// The service: a thread with its own MQTT client (certificate CN [`SERVICE_CN`]) on the
/// broker. Dropping it disconnects.
pub struct FleetProvisioning {
    shared: Arc<Shared>,
}

impl FleetProvisioning {
    /// Connects to the mutual-TLS broker at localhost:`port` with a certificate issued from
    /// `certs` and serves the `templates` (name, thing-name prefix) until dropped; returns once
    /// it is subscribed.
    ///
    /// # Panics
    ///
    /// When it is not subscribed within 10 s, or its TLS setup fails.
    pub fn start(port: u16, certs: Arc<Certs>, templates: &[(&str, &str)]) -> FleetProvisioning {
        let me = certs.issue_client(SERVICE_CN);
        let rustls = tls::client_config(&Tls::new(certs.ca.clone()).with_client(me.cert, me.key))
            .unwrap_or_else(|e| panic!("stand-in TLS setup: {e}"));
        let mut options = MqttOptions::new(SERVICE_CN, "localhost", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true)
            .set_max_packet_size(1024 * 1024, 1024 * 1024)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(rustls)));
        let (client, connection) = Client::new(options, 256);
        let shared = Arc::new(Shared {
            link: crate::stand_in::Link::new(client),
            certs,
            templates: templates
                .iter()
                .map(|(n, p)| ((*n).to_owned(), (*p).to_owned()))
                .collect(),
            tokens: Mutex::new(BTreeMap::new()),
            registered: Mutex::new(Vec::new()),
            issued: AtomicU64::new(0),
        });
        crate::stand_in::spawn(
            "fleet provisioning stand-in",
            connection,
            Arc::clone(&shared),
            &[CREATE_FROM_CSR, CREATE_KEYS, REGISTER],
        );
        FleetProvisioning { shared }
    }

    /// Every thing registered so far, in order.
    pub fn registered(&self) -> Vec<Registered> {
        lock(&self.shared.registered).clone()
    }

    /// How many certificates it issued (CreateCertificateFromCsr and CreateKeysAndCertificate).
    pub fn issued(&self) -> u64 {
        self.shared.issued.load(Ordering::SeqCst)
    }
}

impl Drop for FleetProvisioning {
    fn drop(&mut self) {
        self.shared.link.close();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// AWS's error document.
fn refusal(status: u16, code: &str, message: &str) -> Value {
    json!({ "statusCode": status, "errorCode": code, "errorMessage": message })
}

impl crate::stand_in::Service for Shared {
    fn link(&self) -> &crate::stand_in::Link {
        &self.link
    }
    fn serve(&self, topic: &str, payload: &[u8]) {
        self.handle(topic, payload);
    }
}

impl Shared {
    fn handle(&self, topic: &str, payload: &[u8]) {
        let answer = match topic {
            CREATE_FROM_CSR => self.create_from_csr(payload),
            CREATE_KEYS => self.create_keys(),
            _ => match template_of(topic) {
                Some(template) => self.register(template, payload),
                None => return,
            },
        };
        let (suffix, body) = match answer {
            Ok(body) => ("accepted", body),
            Err(body) => ("rejected", body),
        };
        let _ = self.link.client.try_publish(
            format!("{topic}/{suffix}"),
            QoS::AtLeastOnce,
            false,
            body.to_string(),
        );
    }

    fn next_id(&self) -> String {
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{nanos:048x}{n:016x}")
    }

    fn token_for(&self, certificate_id: &str) -> String {
        let token = format!("token-{}", self.next_id());
        lock(&self.tokens).insert(
            token.clone(),
            Pending {
                certificate_id: certificate_id.to_owned(),
                used: false,
            },
        );
        token
    }

    fn create_from_csr(&self, payload: &[u8]) -> Result<Value, Value> {
        let request: Value = serde_json::from_slice(payload)
            .map_err(|_| refusal(400, "InvalidJson", "the request is not JSON"))?;
        let Some(csr) = request["certificateSigningRequest"].as_str() else {
            return Err(refusal(
                400,
                "InvalidRequest",
                "certificateSigningRequest is required",
            ));
        };
        let id = self.next_id();
        let pem = self
            .certs
            .sign_csr(csr, &format!("fleet-{id}"))
            .map_err(|e| refusal(400, "InvalidCsr", &e))?;
        let token = self.token_for(&id);
        Ok(json!({
            "certificateId": id,
            "certificatePem": pem,
            "certificateOwnershipToken": token,
        }))
    }

    fn create_keys(&self) -> Result<Value, Value> {
        let id = self.next_id();
        let ClientCert { cert, key, .. } = self.certs.issue_client(&id);
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| refusal(500, "InternalFailure", &e.to_string()))
        };
        let (pem, key_pem) = (read(&cert)?, read(&key)?);
        let token = self.token_for(&id);
        Ok(json!({
            "certificateId": id,
            "certificatePem": pem,
            "privateKey": key_pem,
            "certificateOwnershipToken": token,
        }))
    }

    fn register(&self, template: &str, payload: &[u8]) -> Result<Value, Value> {
        let Some(prefix) = self.templates.get(template) else {
            return Err(refusal(
                404,
                "ResourceNotFoundException",
                &format!("provisioning template {template} not found"),
            ));
        };
        let request: Value = serde_json::from_slice(payload)
            .map_err(|_| refusal(400, "InvalidJson", "the request is not JSON"))?;
        let token = request["certificateOwnershipToken"].as_str().unwrap_or("");
        let parameters: BTreeMap<String, String> = request["parameters"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let certificate_id = {
            let mut tokens = lock(&self.tokens);
            match tokens.get_mut(token) {
                Some(pending) if !pending.used => {
                    pending.used = true;
                    pending.certificate_id.clone()
                }
                _ => {
                    return Err(refusal(
                        400,
                        "InvalidCertificateOwnershipToken",
                        "the certificate ownership token is not valid",
                    ))
                }
            }
        };
        let Some(serial) = parameters.get("SerialNumber") else {
            lock(&self.tokens)
                .entry(token.to_owned())
                .and_modify(|p| p.used = false);
            return Err(refusal(
                400,
                "InvalidParameters",
                "the template needs the parameter SerialNumber",
            ));
        };
        let thing_name = format!("{prefix}{serial}");
        if !osprey_protocol::valid_device_id(&thing_name) {
            return Err(refusal(
                400,
                "InvalidParameters",
                &format!("invalid thing name {thing_name}"),
            ));
        }
        lock(&self.registered).push(Registered {
            thing_name: thing_name.clone(),
            certificate_id,
            template: template.to_owned(),
            parameters,
        });
        Ok(json!({ "thingName": thing_name, "deviceConfiguration": {} }))
    }
}

/// `<name>` of `$aws/provisioning-templates/<name>/provision/json`.
fn template_of(topic: &str) -> Option<&str> {
    topic
        .strip_prefix("$aws/provisioning-templates/")?
        .strip_suffix("/provision/json")
        .filter(|name| !name.contains('/'))
}

/// Mosquitto ACL lines to append to the shipped ACL (`deploy/mosquitto/acl`) for fleet
/// provisioning: the claim certificate ([`CLAIM_CN`]) may only publish the requests and read
/// the answers (the claim policy of deploy/aws/template.yaml): its `deny` lines override the
/// shipped ACL's `pattern` lines, which would otherwise let it publish under
/// `dt/osprey/osprey-claim/`. The stand-in ([`SERVICE_CN`]) may use every `$aws/` topic.
pub const ACL_ADDITIONS: &str = "
user osprey-claim
topic deny dt/#
topic deny cmd/#
topic write $aws/certificates/create-from-csr/json
topic read $aws/certificates/create-from-csr/json/+
topic write $aws/certificates/create/json
topic read $aws/certificates/create/json/+
topic write $aws/provisioning-templates/+/provision/json
topic read $aws/provisioning-templates/+/provision/json/+

user osprey-fleet-provisioning
topic readwrite $aws/#
";

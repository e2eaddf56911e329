//! AWS IoT fleet provisioning by claim, over MQTT: the documented device provisioning API
//! (`CreateCertificateFromCsr` or `CreateKeysAndCertificate`, then `RegisterThing`), JSON
//! payload format, spoken with rumqttc on a connection authenticated by the claim certificate.
//!
//! ```text
//!  CONNECT (claim cert) ─► SUBSCRIBE the four answer topics (before any request, as AWS asks)
//!  ─► $aws/certificates/create-from-csr/json {"certificateSigningRequest"}
//!       /accepted {"certificateId","certificatePem","certificateOwnershipToken"}
//!     | $aws/certificates/create/json {}                       (key made by AWS)
//!       /accepted {… and "privateKey"}
//!       /rejected {"statusCode","errorCode","errorMessage"}    ─► FleetError::Rejected
//!  ─► $aws/provisioning-templates/<template>/provision/json
//!       {"certificateOwnershipToken","parameters":{…}}
//!       /accepted {"thingName","deviceConfiguration"}
//!       /rejected {"statusCode","errorCode","errorMessage"}    ─► FleetError::Rejected
//!  ─► DISCONNECT
//! ```
//!
//! Each answer is awaited with a deadline; a request that gets none names the topic and what
//! usually causes it (a claim policy that does not allow the topic). The private key returned
//! by `CreateKeysAndCertificate` is held in a [`SecretPem`], which never prints.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde::Deserialize;

/// How the device certificate is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateRequest {
    /// `CreateCertificateFromCsr` with this PEM CSR: the key stays on the device (preferred).
    Csr(String),
    /// `CreateKeysAndCertificate`: AWS makes the key and sends it over the TLS connection.
    CreateKeys,
}

impl CertificateRequest {
    /// The request topic; answers come on `<topic>/accepted` and `<topic>/rejected`.
    pub fn topic(&self) -> &'static str {
        match self {
            CertificateRequest::Csr(_) => "$aws/certificates/create-from-csr/json",
            CertificateRequest::CreateKeys => "$aws/certificates/create/json",
        }
    }

    fn operation(&self) -> &'static str {
        match self {
            CertificateRequest::Csr(_) => "CreateCertificateFromCsr",
            CertificateRequest::CreateKeys => "CreateKeysAndCertificate",
        }
    }

    fn payload(&self) -> serde_json::Value {
        match self {
            CertificateRequest::Csr(csr) => serde_json::json!({ "certificateSigningRequest": csr }),
            CertificateRequest::CreateKeys => serde_json::json!({}),
        }
    }
}

/// The `RegisterThing` request topic for `template`.
pub fn register_topic(template: &str) -> String {
    format!("$aws/provisioning-templates/{template}/provision/json")
}

/// Whether `name` is a provisioning template name AWS accepts (1 to 36 of A-Z a-z 0-9 _ -),
/// so that it is safe inside a topic.
pub fn valid_template_name(name: &str) -> bool {
    (1..=36).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A PEM private key received from AWS; `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretPem(String);

impl SecretPem {
    /// The PEM text, to write to a 0600 file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretPem(***)")
    }
}

/// What fleet provisioning gave the device.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Issued {
    /// The new certificate's id.
    pub certificate_id: String,
    /// The new device certificate (PEM).
    pub certificate_pem: String,
    /// The key AWS made, with [`CertificateRequest::CreateKeys`].
    pub private_key: Option<SecretPem>,
    /// The thing the template registered: the device's id from now on.
    pub thing_name: String,
    /// The template's `DeviceConfiguration`, as sent.
    pub device_configuration: serde_json::Map<String, serde_json::Value>,
}

/// Why fleet provisioning failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The template name cannot be a provisioning template name.
    #[error("invalid template name {0:?}: use 1 to 36 characters of A-Z a-z 0-9 _ -")]
    TemplateName(String),
    /// The connection with the claim certificate failed or dropped.
    #[error(
        "the connection with the claim certificate failed ({source}): check the endpoint, the CA \
         file, and that the claim certificate is active and its policy allows iot:Connect"
    )]
    Connect {
        /// rumqttc's error (boxed: it is large).
        source: Box<rumqttc::ConnectionError>,
    },
    /// The broker refused a subscription to an answer topic.
    #[error(
        "the broker refused the subscription to {topic}: the claim policy must allow \
         iot:Subscribe and iot:Receive on the fleet provisioning answer topics"
    )]
    Subscribe {
        /// The refused topic filter.
        topic: String,
    },
    /// The service answered on `/rejected`.
    #[error(
        "{operation} rejected: {status_code} {error_code}: {error_message}{hint}",
        hint = rejection_hint(operation, *status_code)
    )]
    Rejected {
        /// `CreateCertificateFromCsr`, `CreateKeysAndCertificate` or `RegisterThing`.
        operation: &'static str,
        /// HTTP-style status code.
        status_code: u16,
        /// AWS's error code.
        error_code: String,
        /// AWS's message.
        error_message: String,
    },
    /// No answer came in time.
    #[error(
        "no answer to {operation} on {topic}/accepted or /rejected within {waited:?}: check that \
         the claim policy allows iot:Publish on {topic} and iot:Receive on its answers{extra}"
    )]
    Timeout {
        /// The operation.
        operation: &'static str,
        /// Its request topic.
        topic: String,
        /// How long it waited.
        waited: Duration,
        /// More advice for this operation.
        extra: &'static str,
    },
    /// An answer that is not the documented JSON.
    #[error("the answer to {operation} is not the documented JSON: {reason}")]
    BadAnswer {
        /// The operation.
        operation: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The MQTT client's request queue is closed (the event loop stopped).
    #[error("the MQTT client stopped: {0}")]
    Client(#[from] rumqttc::ClientError),
}

fn rejection_hint(operation: &str, status: u16) -> &'static str {
    match (operation, status) {
        ("RegisterThing", 400 | 404) => {
            " (is the template name right, does it exist and is it enabled, and are the \
             parameters it needs given with --param or --serial?)"
        }
        ("RegisterThing", 401 | 403) => {
            " (the template's pre-provisioning hook or the ownership token refused this device)"
        }
        _ => "",
    }
}

/// An answer on `/rejected`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rejection {
    status_code: u16,
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    error_message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertificateAnswer {
    certificate_id: String,
    certificate_pem: String,
    certificate_ownership_token: String,
    #[serde(default)]
    private_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterAnswer {
    thing_name: String,
    #[serde(default)]
    device_configuration: serde_json::Map<String, serde_json::Value>,
}

/// Runs the exchange on a new connection made from `options` (the claim certificate's TLS
/// transport, a client id of its own): the certificate, then `RegisterThing` with `template`
/// and `parameters`. `timeout` bounds each wait (connection, subscription, each answer).
pub async fn provision(
    options: MqttOptions,
    request: &CertificateRequest,
    template: &str,
    parameters: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<Issued, FleetError> {
    if !valid_template_name(template) {
        return Err(FleetError::TemplateName(template.to_owned()));
    }
    let (client, mut events) = AsyncClient::new(options, 10);
    let cert_topic = request.topic();
    let register = register_topic(template);
    let filters: Vec<String> = [cert_topic, register.as_str()]
        .iter()
        .flat_map(|t| [format!("{t}/accepted"), format!("{t}/rejected")])
        .collect();
    for filter in &filters {
        client.subscribe(filter, QoS::AtLeastOnce).await?;
        wait_suback(&mut events, filter, timeout).await?;
    }

    let operation = request.operation();
    client
        .publish(
            cert_topic,
            QoS::AtLeastOnce,
            false,
            request.payload().to_string(),
        )
        .await?;
    let answer = wait_answer(&mut events, operation, cert_topic, timeout, "").await?;
    let cert: CertificateAnswer = parse(operation, &answer)?;
    let private_key = match (request, cert.private_key) {
        (CertificateRequest::CreateKeys, Some(key)) => Some(SecretPem(key)),
        (CertificateRequest::CreateKeys, None) => {
            return Err(FleetError::BadAnswer {
                operation,
                reason: "no privateKey".into(),
            })
        }
        (CertificateRequest::Csr(_), _) => None,
    };
    tracing::info!(certificate_id = %cert.certificate_id, "{operation} accepted");

    let body = serde_json::json!({
        "certificateOwnershipToken": cert.certificate_ownership_token,
        "parameters": parameters,
    });
    client
        .publish(register.as_str(), QoS::AtLeastOnce, false, body.to_string())
        .await?;
    let answer = wait_answer(
        &mut events,
        "RegisterThing",
        &register,
        timeout,
        " (and that the template exists)",
    )
    .await?;
    let registered: RegisterAnswer = parse("RegisterThing", &answer)?;
    if !osprey_protocol::valid_device_id(&registered.thing_name) {
        return Err(FleetError::BadAnswer {
            operation: "RegisterThing",
            reason: format!(
                "thing name {:?} cannot be an Osprey device id (A-Z a-z 0-9 _ - :)",
                registered.thing_name
            ),
        });
    }
    tracing::info!(thing = %registered.thing_name, "RegisterThing accepted");
    // A clean goodbye; the answers are in hand, so a failure here changes nothing.
    if client.disconnect().await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while events.poll().await.is_ok() {}
        })
        .await;
    }
    Ok(Issued {
        certificate_id: cert.certificate_id,
        certificate_pem: cert.certificate_pem,
        private_key,
        thing_name: registered.thing_name,
        device_configuration: registered.device_configuration,
    })
}

/// Polls until the SubAck for the one pending subscription.
async fn wait_suback(
    events: &mut EventLoop,
    filter: &str,
    timeout: Duration,
) -> Result<(), FleetError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match next_event(events, deadline).await? {
            Some(Event::Incoming(Packet::SubAck(ack))) => {
                return if ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                {
                    Ok(())
                } else {
                    Err(FleetError::Subscribe {
                        topic: filter.to_owned(),
                    })
                };
            }
            Some(_) => {}
            None => {
                return Err(FleetError::Timeout {
                    operation: "SUBSCRIBE",
                    topic: filter.to_owned(),
                    waited: timeout,
                    extra: "",
                })
            }
        }
    }
}

/// Polls until a message on `<topic>/accepted` (its payload) or `<topic>/rejected` (an error).
async fn wait_answer(
    events: &mut EventLoop,
    operation: &'static str,
    topic: &str,
    timeout: Duration,
    extra: &'static str,
) -> Result<bytes::Bytes, FleetError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let accepted = format!("{topic}/accepted");
    let rejected = format!("{topic}/rejected");
    loop {
        match next_event(events, deadline).await? {
            Some(Event::Incoming(Packet::Publish(p))) if p.topic == accepted => {
                return Ok(p.payload)
            }
            Some(Event::Incoming(Packet::Publish(p))) if p.topic == rejected => {
                let r: Rejection = parse(operation, &p.payload)?;
                return Err(FleetError::Rejected {
                    operation,
                    status_code: r.status_code,
                    error_code: r.error_code,
                    error_message: r.error_message,
                });
            }
            Some(_) => {}
            None => {
                return Err(FleetError::Timeout {
                    operation,
                    topic: topic.to_owned(),
                    waited: timeout,
                    extra,
                })
            }
        }
    }
}

/// The next event, `None` at the deadline; a connection error ends the exchange (the
/// ownership token is bound to this connection, so reconnecting would not help).
async fn next_event(
    events: &mut EventLoop,
    deadline: tokio::time::Instant,
) -> Result<Option<Event>, FleetError> {
    match tokio::time::timeout_at(deadline, events.poll()).await {
        Err(_) => Ok(None),
        Ok(Ok(event)) => Ok(Some(event)),
        Ok(Err(source)) => Err(FleetError::Connect {
            source: Box::new(source),
        }),
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    operation: &'static str,
    payload: &[u8],
) -> Result<T, FleetError> {
    serde_json::from_slice(payload).map_err(|e| FleetError::BadAnswer {
        operation,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_payloads_follow_the_documented_api() {
        let csr = CertificateRequest::Csr("PEM".into());
        assert_eq!(csr.topic(), "$aws/certificates/create-from-csr/json");
        assert_eq!(
            csr.payload(),
            serde_json::json!({"certificateSigningRequest": "PEM"})
        );
        assert_eq!(
            CertificateRequest::CreateKeys.topic(),
            "$aws/certificates/create/json"
        );
        assert_eq!(
            register_topic("osprey-fleet"),
            "$aws/provisioning-templates/osprey-fleet/provision/json"
        );
    }

    #[test]
    fn template_names_that_would_break_the_topic_are_refused() {
        assert!(valid_template_name("osprey_fleet-1"));
        for bad in ["", "a/b", "a+b", "#", &"x".repeat(37)] {
            assert!(!valid_template_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_rejection_names_the_operation_and_a_fix() {
        let err = FleetError::Rejected {
            operation: "RegisterThing",
            status_code: 404,
            error_code: "ResourceNotFoundException".into(),
            error_message: "Template not found".into(),
        };
        let text = err.to_string();
        assert!(text.contains("RegisterThing rejected: 404"), "{text}");
        assert!(text.contains("template name"), "{text}");
    }

    #[test]
    fn a_received_private_key_never_prints() {
        let key = SecretPem("-----BEGIN PRIVATE KEY-----secret".into());
        assert_eq!(format!("{key:?}"), "SecretPem(***)");
    }
}

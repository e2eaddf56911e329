//! Turns a connection error into a sentence that says what to check.
//!
//! rumqttc reports a failed TLS handshake as an I/O error wrapping the rustls error, several
//! layers down; an operator needs "the broker rejected your certificate, check device.pem", not
//! "I/O: invalid peer certificate". Note that `io::Error::source` skips the error it wraps, so
//! the wrapped error is reached through `get_ref`.

use std::error::Error as StdError;
use std::io;

use rumqttc::{ConnectReturnCode, ConnectionError, StateError};

use crate::config::Mqtt;

/// A one-line explanation of `err` with a hint, naming the files and address involved.
pub(crate) fn explain(err: &ConnectionError, mqtt: &Mqtt) -> String {
    let addr = format!("{}:{}", mqtt.host, mqtt.port);
    if let Some(tls_err) = find_rustls(err) {
        return explain_tls(tls_err, mqtt);
    }
    match err {
        ConnectionError::ConnectionRefused(code) => explain_refused(*code, mqtt),
        ConnectionError::NetworkTimeout => format!(
            "no answer from {addr} in time: check the host name, the firewall{}",
            if mqtt.tls.as_ref().is_some_and(|t| t.alpn.is_some()) {
                ""
            } else {
                " and, for AWS IoT Core on port 443, set mqtt.tls.alpn = \"x-amzn-mqtt-ca\""
            }
        ),
        ConnectionError::MqttState(StateError::ConnectionAborted) => format!(
            "{addr} closed the connection (broker restart, network drop, or a refusal: check \
             the broker's log; AWS IoT Core also drops a connection whose policy does not allow \
             client id {:?} to connect or publish to dt/osprey/<device>/*)",
            mqtt.client_id
        ),
        _ => match find_io(err) {
            Some(e) if e.kind() == io::ErrorKind::ConnectionRefused => format!(
                "nothing is listening at {addr}: is the broker running, and is mqtt.port right?"
            ),
            Some(e) if e.kind() == io::ErrorKind::NotFound => {
                format!("cannot resolve {:?}: check mqtt.host", mqtt.host)
            }
            Some(e) => format!("network error with {addr}: {e}"),
            None => format!("connection to {addr} failed: {err}"),
        },
    }
}

fn explain_tls(err: &rustls::Error, mqtt: &Mqtt) -> String {
    let tls = mqtt.tls.as_ref();
    let ca = tls.map_or_else(|| "(none)".to_owned(), |t| t.ca.display().to_string());
    match err {
        rustls::Error::InvalidCertificate(reason) => format!(
            "TLS: the broker's certificate was rejected ({reason:?}): check that mqtt.tls.ca \
             ({ca}) is the CA that signed it, and that it names {:?} in its subjectAltName",
            mqtt.host
        ),
        rustls::Error::AlertReceived(alert) => {
            let client = tls.and_then(|t| t.client.as_ref()).map_or_else(
                || "no device certificate is configured (mqtt.tls.cert and key)".to_owned(),
                |c| {
                    format!(
                        "check that the device certificate {} is signed by a CA the broker \
                             trusts (AWS IoT Core: registered and ACTIVE, with a policy attached) \
                             and that {} is its key",
                        c.cert.display(),
                        c.key.display()
                    )
                },
            );
            format!("TLS: the broker refused the handshake ({alert:?}): {client}")
        }
        other => format!(
            "TLS handshake with {}:{} failed: {other}",
            mqtt.host, mqtt.port
        ),
    }
}

fn explain_refused(code: ConnectReturnCode, mqtt: &Mqtt) -> String {
    let hint = match code {
        ConnectReturnCode::BadUserNamePassword => {
            "the user name or password is wrong: check mqtt.username and the password in \
             mqtt.password_file (or $OSPREY_MQTT_PASSWORD)"
        }
        ConnectReturnCode::NotAuthorized if mqtt.username.is_some() => {
            "the broker refused the login: check mqtt.username, the password in \
             mqtt.password_file (or $OSPREY_MQTT_PASSWORD) and the broker's access rules"
        }
        ConnectReturnCode::NotAuthorized if mqtt.tls.is_none() => {
            "the broker requires a login: set mqtt.username and mqtt.password_file"
        }
        ConnectReturnCode::NotAuthorized => {
            "check the broker's access rules (AWS IoT Core: the certificate's policy)"
        }
        ConnectReturnCode::BadClientId => "check mqtt.client_id",
        _ => "check the broker's log",
    };
    format!(
        "{}:{} refused the MQTT connection ({code:?}) for client id {:?}: {hint}",
        mqtt.host, mqtt.port, mqtt.client_id
    )
}

/// The first rustls error in the chain, including ones wrapped inside I/O errors.
fn find_rustls(err: &ConnectionError) -> Option<&rustls::Error> {
    chain(err).find_map(|e| {
        e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        })
    })
}

fn find_io(err: &ConnectionError) -> Option<&io::Error> {
    chain(err).find_map(|e| e.downcast_ref::<io::Error>())
}

fn chain<'a>(err: &'a ConnectionError) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    let first: &'a (dyn StdError + 'static) = err;
    std::iter::successors(Some(first), |&e| e.source())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::sim::Scenario;
    use crate::tls::Tls;
    use std::path::PathBuf;

    fn mqtt() -> Mqtt {
        let mut config = Config::simulated(
            "pump-7",
            1,
            Scenario::Steady,
            "/tmp/j",
            "broker.local",
            8883,
        )
        .unwrap();
        config.mqtt.tls = Some(Tls::new(PathBuf::from("/etc/osprey/ca.pem")).with_client(
            PathBuf::from("/etc/osprey/device.pem"),
            PathBuf::from("/etc/osprey/device.key"),
        ));
        config.mqtt
    }

    fn tls_io(err: rustls::Error) -> ConnectionError {
        ConnectionError::Tls(rumqttc::TlsError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            err,
        )))
    }

    #[test]
    fn untrusted_server_certificate_names_the_ca_file() {
        let err = tls_io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let msg = explain(&err, &mqtt());
        assert!(msg.contains("/etc/osprey/ca.pem"), "{msg}");
        assert!(msg.contains("broker.local"), "{msg}");
    }

    #[test]
    fn rejected_client_certificate_names_cert_and_key() {
        let err = ConnectionError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        ));
        let msg = explain(&err, &mqtt());
        assert!(msg.contains("/etc/osprey/device.pem"), "{msg}");
        assert!(msg.contains("/etc/osprey/device.key"), "{msg}");
    }

    #[test]
    fn refused_tcp_connection_asks_if_the_broker_runs() {
        let err = ConnectionError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        let msg = explain(&err, &mqtt());
        assert!(msg.contains("broker.local:8883"), "{msg}");
        assert!(msg.contains("is the broker running"), "{msg}");
    }

    #[test]
    fn mqtt_refusal_names_the_client_id() {
        let err = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        let msg = explain(&err, &mqtt());
        assert!(msg.contains("\"pump-7\""), "{msg}");
        assert!(msg.contains("policy"), "{msg}");
    }
}

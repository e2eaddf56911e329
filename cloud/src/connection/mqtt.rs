//! MQTT client settings and a reconnecting QoS 1 subscriber.
//!
//! Both MQTT readers (the `serve` source and the bridge) use a **persistent session**
//! (`clean_session = false`, unless [`MqttConfig::persistent_session`] is off) and **manual
//! acknowledgements**: a publish is acknowledged only
//! after its effect is safe (stored, or accepted by Kinesis). If the cloud stops in between,
//! the broker redelivers the message on the next connection, and dedup on `(device, seq)`
//! absorbs the repeat. The session is keyed by the client id, so two running instances need
//! two ids.
//!
//! ```text
//!   poll ─► ConnAck ─► subscribe(filter, QoS 1) ─► SubAck ─► Subscribed
//!     ▲                                                        │
//!     │ error: wait (exponential backoff), poll again          ▼
//!     └──────────────────────────────────────────────── Publish ... (caller acks)
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use crate::backoff::Backoff;
use crate::shutdown::{SetReady, Shutdown};

/// Largest MQTT packet accepted: MQTT's own maximum (remaining length 268,435,455 bytes).
///
/// Osprey messages are at most 128 KiB, but a bigger packet must still be read: refusing it
/// drops the connection, and the broker redelivers the same message to the persistent session
/// for ever. Read, it is dead-lettered (serve) or dropped with a log line (bridge). Brokers
/// cap message sizes far lower (AWS IoT Core: 128 KB; Mosquitto: `message_size_limit`).
pub const MAX_INCOMING_PACKET_BYTES: usize = 268_435_455 + 5;

/// Largest MQTT packet sent (the clients here only send acks and subscriptions).
const MAX_OUTGOING_PACKET_BYTES: usize = 64 * 1024;

/// Requests (acks, subscribes) that may queue for the event loop. Acks are bounded by the
/// unacknowledged publishes the broker allows in flight, far below this.
const REQUEST_CAPACITY: usize = 10_000;

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port (1883 plain, 8883 TLS).
    pub port: u16,
    /// Client id; it names the persistent session, so it must be unique per running process.
    pub client_id: String,
    /// TLS settings; `None` for plain TCP.
    pub tls: Option<MqttTls>,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Ask the broker to keep the session (subscription and unacknowledged messages) while
    /// we are disconnected (`clean_session = false`). On by default; turn it off for
    /// throw-away clients that must not leave sessions behind on a shared broker.
    pub persistent_session: bool,
    /// User name and password sent in CONNECT (Mosquitto `password_file`); `None` for none.
    pub login: Option<MqttLogin>,
}

/// An MQTT user name and its password (from `--mqtt-password-file` or
/// `$OSPREY_MQTT_PASSWORD`, read by [`crate::secret`]; never logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttLogin {
    /// The user name.
    pub username: String,
    /// The password, if any.
    pub password: Option<crate::secret::Secret>,
}

/// TLS settings: the CA that signed the broker's certificate and, for mutual TLS (AWS IoT
/// Core, Mosquitto with `require_certificate`), a client certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTls {
    /// PEM file with the CA certificate(s) to trust.
    pub ca: PathBuf,
    /// PEM file with the client certificate chain.
    pub client_cert: Option<PathBuf>,
    /// PEM file with the client's private key.
    pub client_key: Option<PathBuf>,
}

/// Why MQTT client settings could not be turned into a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttConfigError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read PEM file {path}: {cause}")]
    ReadPem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        cause: rustls::pki_types::pem::Error,
    },
    /// The CA file holds no certificate rustls accepts.
    #[error("no usable CA certificate in {path}")]
    NoCaCertificate {
        /// The file.
        path: PathBuf,
    },
    /// Only one of the client certificate and key was given.
    #[error("mutual TLS needs both a client certificate and a client key")]
    HalfClientAuth,
    /// rustls refused the settings (e.g. the key does not match the certificate).
    #[error("TLS setup failed: {0}")]
    Tls(rustls::Error),
}

/// What the subscriber saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The broker confirmed the subscription (after every (re)connect).
    Subscribed,
    /// A message; acknowledge it with [`Subscriber::ack`] once it is safe.
    Publish(Publish),
}

impl MqttConfig {
    /// Plain TCP to `host:port` as `client_id`, 30 s keep-alive, persistent session.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> MqttConfig {
        MqttConfig {
            host: host.into(),
            port,
            client_id: client_id.into(),
            tls: None,
            keep_alive: Duration::from_secs(30),
            persistent_session: true,
            login: None,
        }
    }

    /// Whether this configuration sends in clear to another machine: TLS off and a host that
    /// is not a loopback name or address (a password would cross the network readable).
    pub fn is_plaintext_to_remote(&self) -> bool {
        if self.tls.is_some() {
            return false;
        }
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        !loopback
    }

    /// Connection options: manual acks, the session kind, TLS if configured.
    pub fn options(&self) -> Result<MqttOptions, MqttConfigError> {
        let mut options = MqttOptions::new(&self.client_id, &self.host, self.port);
        options
            .set_keep_alive(self.keep_alive)
            .set_clean_session(!self.persistent_session)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_INCOMING_PACKET_BYTES, MAX_OUTGOING_PACKET_BYTES)
            .set_request_channel_capacity(REQUEST_CAPACITY);
        if let Some(login) = &self.login {
            let password = login.password.as_ref().map_or("", |p| p.expose());
            options.set_credentials(&login.username, password);
        }
        if let Some(tls) = &self.tls {
            let config = tls.client_config()?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(config),
            )));
        }
        Ok(options)
    }

    /// `mqtt://host:port` or `mqtts://host:port`, for logs.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

impl MqttTls {
    /// The rustls client configuration (ring provider, safe default protocol versions).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, MqttConfigError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&self.ca)? {
            roots.add(cert).map_err(MqttConfigError::Tls)?;
        }
        if roots.is_empty() {
            return Err(MqttConfigError::NoCaCertificate {
                path: self.ca.clone(),
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(MqttConfigError::Tls)?
            .with_root_certificates(roots);
        match (&self.client_cert, &self.client_key) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|cause| {
                    MqttConfigError::ReadPem {
                        path: key.clone(),
                        cause,
                    }
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(MqttConfigError::Tls)
            }
            _ => Err(MqttConfigError::HalfClientAuth),
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttConfigError> {
    let err = |cause| MqttConfigError::ReadPem {
        path: path.to_owned(),
        cause,
    };
    CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)
}

/// What a [`Subscriber::receive`] handler wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next message.
    Continue,
    /// Stop receiving (shutdown came while the handler waited).
    Stop,
}

/// Acknowledges publishes on a [`Subscriber`]'s connection; cheap to clone.
#[derive(Debug, Clone)]
pub struct Acker(AsyncClient);

impl Acker {
    /// Queues the PUBACK of `publish`, telling the broker it may forget it.
    pub fn ack(&self, publish: &Publish) {
        if let Err(e) = self.0.try_ack(publish) {
            // Only possible if the request queue is full; the broker will redeliver the
            // message and dedup will drop the copy.
            tracing::warn!(error = %e, pkid = publish.pkid, "could not queue a PUBACK; the broker will redeliver");
        }
    }
}

/// A QoS 1 subscription that survives disconnects.
pub struct Subscriber {
    client: AsyncClient,
    eventloop: EventLoop,
    filter: String,
    /// Filters subscribed in the same SUBSCRIBE whose refusal is only logged.
    optional: Vec<String>,
    url: String,
    backoff: Backoff,
    subscribe_pending: bool,
    on_link: Option<Box<dyn Fn(bool) + Send + Sync>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("filter", &self.filter)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// A subscriber to `filter`; it connects on the first [`Subscriber::next`].
    pub fn new(cfg: &MqttConfig, filter: &str) -> Result<Subscriber, MqttConfigError> {
        let (client, eventloop) = AsyncClient::new(cfg.options()?, REQUEST_CAPACITY);
        Ok(Subscriber {
            client,
            eventloop,
            filter: filter.to_owned(),
            optional: Vec::new(),
            url: cfg.url(),
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(10)),
            subscribe_pending: false,
            on_link: None,
        })
    }

    /// Also subscribes to `filters`, in the same SUBSCRIBE as the main filter. A broker that
    /// refuses one of them (its ACL) gets a warning, not a retry: the main filter is what the
    /// subscriber is for.
    pub fn with_optional(mut self, filters: &[&str]) -> Subscriber {
        self.optional = filters.iter().map(|f| (*f).to_owned()).collect();
        self
    }

    /// Calls `observer(true)` on every confirmed subscription and `observer(false)` when the
    /// connection fails or the broker refuses it (serve's `/readyz` watches this).
    pub fn observe_link(mut self, observer: impl Fn(bool) + Send + Sync + 'static) -> Subscriber {
        self.on_link = Some(Box::new(observer));
        self
    }

    fn link(&self, up: bool) {
        if let Some(observer) = &self.on_link {
            observer(up);
        }
    }

    /// The next subscription confirmation or message. Connection errors are logged and
    /// retried with backoff; this only returns with something received.
    pub async fn next(&mut self) -> Received {
        loop {
            if self.subscribe_pending {
                let filters = std::iter::once(&self.filter)
                    .chain(&self.optional)
                    .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                match self.client.try_subscribe_many(filters) {
                    Ok(()) => self.subscribe_pending = false,
                    Err(e) => tracing::warn!(error = %e, "could not queue the subscription yet"),
                }
            }
            match self.eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        tracing::warn!(broker = %self.url, code = ?ack.code, "broker refused the connection");
                        self.link(false);
                        continue;
                    }
                    tracing::info!(broker = %self.url, session_present = ack.session_present, "mqtt connected");
                    self.backoff.reset();
                    // Subscribe on every connect: cheap, and right even if the broker lost
                    // the session.
                    self.subscribe_pending = true;
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused =
                        |c: &SubscribeReasonCode| matches!(c, SubscribeReasonCode::Failure);
                    if ack.return_codes.first().is_none_or(refused) {
                        tracing::error!(broker = %self.url, filter = %self.filter,
                            "broker refused the subscription (check its ACL); retrying");
                        self.retry_subscription_later().await;
                        continue;
                    }
                    for (filter, _) in self
                        .optional
                        .iter()
                        .zip(ack.return_codes.iter().skip(1))
                        .filter(|(_, c)| refused(c))
                    {
                        tracing::warn!(broker = %self.url, filter = %filter,
                            "broker refused this subscription (check its ACL); going on without it");
                    }
                    tracing::info!(filter = %self.filter, also = ?self.optional, "mqtt subscribed");
                    self.link(true);
                    return Received::Subscribed;
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => return Received::Publish(publish),
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    self.link(false);
                    let delay = self.backoff.next_delay();
                    let hint = match code {
                        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
                            "check --mqtt-username and the password (--mqtt-password-file or $OSPREY_MQTT_PASSWORD)"
                        }
                        _ => "see the broker's log",
                    };
                    tracing::error!(broker = %self.url, code = ?code, hint, retry_in_ms = delay.as_millis() as u64,
                        "broker refused the connection");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    self.link(false);
                    let delay = self.backoff.next_delay();
                    tracing::warn!(broker = %self.url, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "mqtt connection failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The receive loop both MQTT readers share: sets `ready` on every subscription and hands
    /// each publish to `on_publish`, one at a time (the next message is not polled until the
    /// handler returns, so a slow handler is backpressure on the broker). Returns on shutdown
    /// or when the handler says [`Flow::Stop`]; the caller then calls
    /// [`Subscriber::disconnect`].
    pub async fn receive<F, Fut>(
        &mut self,
        ready: &SetReady,
        shutdown: &mut Shutdown,
        mut on_publish: F,
    ) where
        F: FnMut(Publish) -> Fut,
        Fut: Future<Output = Flow>,
    {
        loop {
            let received = tokio::select! {
                biased;
                _ = shutdown.wait() => return,
                received = self.next() => received,
            };
            match received {
                Received::Subscribed => ready.set(),
                Received::Publish(publish) => {
                    if on_publish(publish).await == Flow::Stop {
                        return;
                    }
                }
            }
        }
    }

    /// Acknowledges a publish (QoS 1 PUBACK), telling the broker it may forget it.
    pub fn ack(&self, publish: &Publish) {
        self.acker().ack(publish);
    }

    /// A handle that acknowledges publishes from another task.
    pub fn acker(&self) -> Acker {
        Acker(self.client.clone())
    }

    /// Sends DISCONNECT and polls briefly so that queued acks and the disconnect go out.
    pub async fn disconnect(mut self) {
        if self.client.try_disconnect().is_err() {
            return;
        }
        let drain = async {
            while let Ok(event) = self.eventloop.poll().await {
                if let Event::Outgoing(rumqttc::Outgoing::Disconnect) = event {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }

    async fn retry_subscription_later(&mut self) {
        let delay = self.backoff.next_delay();
        tokio::time::sleep(delay).await;
        self.subscribe_pending = true;
    }
}

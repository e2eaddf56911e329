//! The webhook alert output: an HTTP(S) `POST` of each notice's JSON body, signed.
//!
//! Headers of every delivery:
//!
//! | header | value |
//! |---|---|
//! | `Content-Type` | `application/json` |
//! | `X-Osprey-Delivery` | the notice id, `device/epoch/seq` (the same on every retry) |
//! | `X-Osprey-Event` | `raise` or `clear` |
//! | `X-Osprey-Timestamp` | seconds since the Unix epoch when this attempt was signed |
//! | `X-Osprey-Signature` | `sha256=` + hex HMAC-SHA256 of `"{timestamp}.{body}"` with the shared secret (only with a secret) |
//!
//! A receiver recomputes the HMAC over the timestamp header, a dot and the raw body, compares
//! in constant time, and refuses timestamps older than a few minutes (replay). A 2xx answer
//! delivers the notice; 408, 429, 5xx, timeouts and connection errors are retried by the
//! outbox; any other status is permanent (a wrong URL or a refused signature does not fix
//! itself by retrying): the notice is given up at once and counted.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ring::hmac;

use super::{Notice, OutputError};

/// How long one delivery may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Fewest bytes of a signing secret.
pub const MIN_SECRET_BYTES: usize = 16;

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// Posts notices to one URL.
#[derive(Clone)]
pub struct WebhookOutput {
    url: hyper::Uri,
    key: Option<hmac::Key>,
    client: Client<Https, Full<Bytes>>,
}

impl std::fmt::Debug for WebhookOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key, nor the query string (it may hold a token).
        f.debug_struct("WebhookOutput")
            .field("url", &self.name())
            .field("signed", &self.key.is_some())
            .finish()
    }
}

/// Why a webhook cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The URL is not an absolute http(s) URL.
    #[error("--alerts-webhook {url:?} is not an http:// or https:// URL")]
    Url {
        /// As given.
        url: String,
    },
    /// The signing secret is unusable.
    #[error("{0}")]
    BadSecret(String),
    /// The system's CA certificates cannot be loaded.
    #[error("cannot load the system CA certificates for https webhooks: {0}")]
    Roots(String),
}

/// Checks a signing secret (from `--alerts-webhook-secret-file` or
/// `$OSPREY_ALERTS_WEBHOOK_SECRET`, read by [`crate::secret::load`]): surrounding whitespace
/// is not part of it, and it must have at least [`MIN_SECRET_BYTES`].
pub fn check_secret(secret: &str) -> Result<&[u8], String> {
    let text = secret.trim().as_bytes();
    if text.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "the webhook secret has {} bytes; use at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
            text.len()
        ));
    }
    Ok(text)
}

/// `sha256=` + hex HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    sign(&key, timestamp, body)
}

fn sign(key: &hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

impl WebhookOutput {
    /// An output posting to `url`, signing with `secret` when given.
    pub fn new(url: &str, secret: Option<&[u8]>) -> Result<WebhookOutput, WebhookError> {
        let bad_url = || WebhookError::Url {
            url: url.to_owned(),
        };
        let uri: hyper::Uri = url.parse().map_err(|_| bad_url())?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(bad_url());
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| WebhookError::Roots(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(WebhookOutput {
            url: uri,
            key: secret.map(|s| hmac::Key::new(hmac::HMAC_SHA256, s)),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The output's name for logs and the outbox: `webhook:<url>` (no query string, which
    /// may hold a token).
    pub fn name(&self) -> String {
        let mut url = format!(
            "{}://{}{}",
            self.url.scheme_str().unwrap_or("http"),
            self.url.authority().map(|a| a.as_str()).unwrap_or(""),
            self.url.path()
        );
        if self.url.query().is_some() {
            url.push_str("?…");
        }
        format!("webhook:{url}")
    }

    /// Delivers one notice.
    pub async fn publish(&self, notice: &Notice) -> Result<(), OutputError> {
        let body = notice.body();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut request = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("osprey/", env!("CARGO_PKG_VERSION")),
            )
            .header("X-Osprey-Delivery", &notice.id)
            .header("X-Osprey-Event", &notice.event)
            .header("X-Osprey-Timestamp", timestamp.to_string());
        if let Some(key) = &self.key {
            request = request.header("X-Osprey-Signature", sign(key, timestamp, body.as_bytes()));
        }
        let fail = |message: String, permanent: bool| OutputError::Failed {
            output: self.name(),
            message,
            permanent,
        };
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(e.to_string(), true))?;
        let response = tokio::time::timeout(TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| fail(format!("no answer within {} s", TIMEOUT.as_secs()), false))?
            .map_err(|e| fail(crate::fleet::api::error_chain(&e), false))?;
        let status = response.status();
        // Read (and drop) a little of the body so the connection can be reused.
        let _ = tokio::time::timeout(Duration::from_secs(2), response.into_body().collect()).await;
        if status.is_success() {
            return Ok(());
        }
        let retry = status.is_server_error()
            || status == hyper::StatusCode::REQUEST_TIMEOUT
            || status == hyper::StatusCode::TOO_MANY_REQUESTS;
        Err(fail(format!("answered {status}"), !retry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 checks ring's HMAC; here: the framing and encoding.
        let sig = signature(b"0123456789abcdef", 1_767_225_600, b"{\"id\":\"a/0/1\"}");
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), "sha256=".len() + 64);
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef");
        let tag = hex::decode(&sig["sha256=".len()..]).unwrap();
        assert!(hmac::verify(&key, b"1767225600.{\"id\":\"a/0/1\"}", &tag).is_ok());
        // Another timestamp or body gives another signature.
        assert_ne!(
            sig,
            signature(b"0123456789abcdef", 1_767_225_601, b"{\"id\":\"a/0/1\"}")
        );
    }

    #[test]
    fn short_secrets_and_bad_urls_are_refused_with_what_to_do() {
        assert!(check_secret("  short \n")
            .unwrap_err()
            .contains("openssl rand"));
        assert_eq!(
            check_secret(" 0123456789abcdef\n").unwrap(),
            b"0123456789abcdef"
        );
        for url in ["ftp://x/y", "not a url", "/relative"] {
            assert!(WebhookOutput::new(url, None).is_err(), "{url}");
        }
    }

    #[test]
    fn the_name_hides_the_query_string() {
        let w = WebhookOutput::new("https://hooks.example.com/osprey?token=s3cret", None).unwrap();
        assert_eq!(w.name(), "webhook:https://hooks.example.com/osprey?…");
        assert!(!format!("{w:?}").contains("s3cret"));
    }
}

//! The fleet from a running `osprey serve`: `GET /api/devices`, `/api/devices/{id}` and its
//! windows (and `POST` for the routes that record something), over HTTP/1.1 or HTTPS (rustls: the CA of `--ca-file`, or else the system's
//! roots), with the API token as `Authorization: Bearer` when one is given.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{pem::PemObject, CertificateDer};

use super::{FleetDevice, FleetError, FleetWindow};
use crate::secret::Secret;
use crate::store::DeviceEvent;
use crate::window::WindowKind;

/// Longest a request may take, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read (a fleet of thousands of devices with their latest windows fits).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Windows asked for per kind when looking for each series' newest.
const WINDOW_LIMIT: u32 = 1000;

/// How to reach a protected serve: its token and, for https with a private CA, that CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiAccess {
    /// Sent as `Authorization: Bearer <token>` (from `--api-token-file` or
    /// `$OSPREY_API_TOKEN`).
    pub token: Option<Secret>,
    /// PEM CA certificate(s) that signed the serve's certificate; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl ApiAccess {
    /// The connector: rustls with the CA file's certificates, or (for https) the system's
    /// roots; plain http never uses them, so it needs none.
    fn tls_connector(&self, https: bool) -> Result<HttpsConnector<HttpConnector>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let with_roots = |roots: rustls::RootCertStore| -> Result<_, String> {
            Ok(
                rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        };
        let builder = match &self.ca_file {
            Some(path) => {
                let bad = |e: &dyn std::fmt::Display| format!("--ca-file {}: {e}", path.display());
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                    roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
                }
                if roots.is_empty() {
                    return Err(bad(&"no certificate in the file"));
                }
                HttpsConnectorBuilder::new().with_tls_config(with_roots(roots)?)
            }
            None if !https => HttpsConnectorBuilder::new()
                .with_tls_config(with_roots(rustls::RootCertStore::empty())?),
            None => HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)
                .map_err(|e| {
                    format!("no system CA certificates ({e}); pass --ca-file with the serve's CA")
                })?,
        };
        Ok(builder.https_or_http().enable_http1().build())
    }
}

/// Reads a serve's JSON API.
#[derive(Debug, Clone)]
pub struct ApiReader {
    /// `http(s)://host:port` plus any path prefix, without a trailing slash.
    base: String,
    /// `Bearer <token>`, if any.
    authorization: Option<Secret>,
    /// hyper's pooled HTTP/1.1 client (TLS by rustls for https).
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ApiReader {
    /// A reader for the serve at `url` (`http://host:port`, optionally with a path prefix),
    /// without token.
    pub fn new(url: &str) -> Result<ApiReader, FleetError> {
        ApiReader::with_access(url, &ApiAccess::default())
    }

    /// A reader for the serve at `url` (`http://` or `https://host:port`, optionally with a
    /// path prefix) with `access`'s token and CA.
    pub fn with_access(url: &str, access: &ApiAccess) -> Result<ApiReader, FleetError> {
        let bad = |reason: &str| FleetError::ApiUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            ("https", rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            ("http", rest)
        } else {
            return Err(bad("it must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', '?', '#', ' ']) {
            return Err(bad(&format!("no host:port after {scheme}://")));
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let default_port = if scheme == "https" { 443 } else { 80 };
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:{default_port}")
        };
        let prefix = path.trim_end_matches('/');
        let base = format!("{scheme}://{authority}{prefix}");
        base.parse::<hyper::Uri>()
            .map_err(|e| bad(&format!("not a URL ({e})")))?;
        let connector = access
            .tls_connector(scheme == "https")
            .map_err(|e| bad(&e))?;
        Ok(ApiReader {
            base,
            authorization: access
                .token
                .as_ref()
                .map(|t| Secret::new(format!("Bearer {}", t.expose().trim()))),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// `GET path` and its JSON body.
    pub async fn get(&self, path: &str) -> Result<Value, FleetError> {
        self.call(hyper::Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, and the JSON answer (200 or 201).
    pub async fn post(&self, path: &str, body: Vec<u8>) -> Result<Value, FleetError> {
        self.call(hyper::Method::POST, path, Some(Bytes::from(body)))
            .await
    }

    /// One call: the JSON answer of a 2xx, or the error the serve gave.
    async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Value, FleetError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |cause: String| FleetError::ApiUnreachable {
            url: url.clone(),
            cause,
        };
        let (status, body) = tokio::time::timeout(TIMEOUT, self.exchange(method, &url, body))
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", TIMEOUT.as_secs())))?
            .map_err(unreachable)?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&body).into_owned();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            let message = if status == 401 {
                format!(
                    "{message} (give the serve's token with --api-token-file or ${})",
                    crate::api::auth::TOKEN_ENV
                )
            } else {
                message
            };
            return Err(FleetError::ApiStatus {
                url,
                status,
                body: message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| FleetError::ApiBody {
            url,
            reason: format!("not JSON: {e}"),
        })
    }

    /// One request: the status code and the whole body (at most [`MAX_BODY`] bytes).
    async fn exchange(
        &self,
        method: hyper::Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes), String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(authorization) = &self.authorization {
            let mut value = hyper::header::HeaderValue::from_str(authorization.expose())
                .map_err(|_| "the API token has characters a header cannot carry".to_owned())?;
            value.set_sensitive(true);
            request = request.header(hyper::header::AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// Every device, by id.
    pub async fn fleet(&self) -> Result<Vec<FleetDevice>, FleetError> {
        let url = format!("{}/api/devices", self.base);
        let value = self.get("/api/devices").await?;
        let list = value.as_array().ok_or_else(|| FleetError::ApiBody {
            url: url.clone(),
            reason: "not a list of devices".to_owned(),
        })?;
        list.iter()
            .map(|d| {
                summary(d).ok_or_else(|| FleetError::ApiBody {
                    url: url.clone(),
                    reason: format!("a device without the expected fields: {d}"),
                })
            })
            .collect()
    }

    /// One device with its newest window of each series and kind, or `None` if unknown.
    pub async fn device(&self, device: &str) -> Result<Option<FleetDevice>, FleetError> {
        let path = format!("/api/devices/{device}");
        let value = match self.get(&path).await {
            Ok(v) => v,
            Err(FleetError::ApiStatus { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |reason: String| FleetError::ApiBody {
            url: format!("{}{path}", self.base),
            reason,
        };
        let mut d = summary(&value).ok_or_else(|| bad(format!("unexpected device: {value}")))?;
        if let Some(events) = value["events"].as_array() {
            d.events = events
                .iter()
                .map(|e| event(e).ok_or_else(|| bad(format!("unexpected event: {e}"))))
                .collect::<Result<_, _>>()?;
        }
        for kind in WindowKind::ALL {
            let rows = self
                .get(&format!(
                    "{path}/windows?kind={}&limit={WINDOW_LIMIT}",
                    kind.as_str()
                ))
                .await?;
            let rows = rows
                .as_array()
                .ok_or_else(|| bad("windows: not a list".to_owned()))?;
            // Newest first: the first row of each series is its newest window.
            let mut newest: Vec<FleetWindow> = Vec::new();
            for row in rows {
                let w = window(row).ok_or_else(|| bad(format!("unexpected window: {row}")))?;
                if !newest
                    .iter()
                    .any(|n| n.sensor == w.sensor && n.metric == w.metric)
                {
                    newest.push(w);
                }
            }
            newest.sort_by(|a, b| (&a.sensor, &a.metric).cmp(&(&b.sensor, &b.metric)));
            d.latest.extend(newest);
        }
        Ok(Some(d))
    }
}

/// A `DeviceSummary` of the API as a fleet line.
fn summary(v: &Value) -> Option<FleetDevice> {
    Some(FleetDevice {
        device: v["device"].as_str()?.to_owned(),
        status: v["status"].as_str()?.to_owned(),
        last_seen_ms: v["last_seen_ms"].as_i64(),
        readings: v["readings"].as_u64()?,
        active_alerts: v["active_alerts"].as_u64()?,
        health: v["health"]["score"]
            .as_u64()
            .and_then(|s| u32::try_from(s).ok()),
        latest: Vec::new(),
        events: Vec::new(),
    })
}

/// A `DeviceEvent` of the API.
fn event(v: &Value) -> Option<DeviceEvent> {
    Some(DeviceEvent {
        kind: v["kind"].as_str()?.to_owned(),
        time_ms: v["time_ms"].as_i64()?,
        old_epoch: v["old_epoch"].as_u64()?,
        new_epoch: v["new_epoch"].as_u64()?,
    })
}

/// A `WindowRow` of the API.
fn window(v: &Value) -> Option<FleetWindow> {
    Some(FleetWindow {
        sensor: v["sensor"].as_str()?.to_owned(),
        metric: v["metric"].as_str()?.to_owned(),
        kind: v["kind"].as_str()?.to_owned(),
        unit: v["unit"].as_str().unwrap_or_default().to_owned(),
        start_ms: v["start_ms"].as_i64()?,
        end_ms: v["end_ms"].as_i64()?,
        count: v["count"].as_u64()?,
        mean: v["mean"].as_f64(),
        min: v["min"].as_f64(),
        max: v["max"].as_f64(),
        p95: v["p95"].as_f64(),
        version: v["version"].as_u64()?,
    })
}

/// An error with its sources ("client error (Connect): tcp connect error: Connection refused").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

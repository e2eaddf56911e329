//! The fleet from a running `osprey serve`: `GET /api/devices`, `/api/devices/{id}` and its
//! windows, over plain HTTP/1.1 on loopback or a private network (serve has no TLS; put a
//! proxy in front of it and this reader behind the proxy's plain side).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{FleetDevice, FleetError, FleetWindow};
use crate::window::WindowKind;

/// Longest a request may take, connect to last byte.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read (a fleet of thousands of devices with their latest windows fits).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Windows asked for per kind when looking for each series' newest.
const WINDOW_LIMIT: u32 = 1000;

/// Reads a serve's JSON API.
#[derive(Debug, Clone)]
pub struct ApiReader {
    /// `host:port` to connect to.
    authority: String,
    /// `http://host:port` plus any path prefix, without a trailing slash.
    base: String,
    /// Path prefix (empty or `/something`).
    prefix: String,
}

impl ApiReader {
    /// A reader for the serve at `url` (`http://host:port`, optionally with a path prefix).
    pub fn new(url: &str) -> Result<ApiReader, FleetError> {
        let bad = |reason: &str| FleetError::ApiUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if url.starts_with("https://") {
            return Err(bad(
                "https is not supported (osprey serve speaks plain HTTP)",
            ));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("it must start with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', '?', '#', ' ']) {
            return Err(bad("no host:port after http://"));
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let prefix = path.trim_end_matches('/').to_owned();
        Ok(ApiReader {
            base: format!("http://{}{prefix}", authority),
            authority,
            prefix,
        })
    }

    /// `GET path` and its JSON body.
    async fn get(&self, path: &str) -> Result<Value, FleetError> {
        let url = format!("{}{path}", self.base);
        let body = tokio::time::timeout(TIMEOUT, self.exchange(path))
            .await
            .map_err(|_| FleetError::ApiUnreachable {
                url: url.clone(),
                cause: format!("no answer within {} s", TIMEOUT.as_secs()),
            })?
            .map_err(|e| FleetError::ApiUnreachable {
                url: url.clone(),
                cause: e.to_string(),
            })?;
        let (status, body) = parse_response(&body).map_err(|reason| FleetError::ApiBody {
            url: url.clone(),
            reason,
        })?;
        if status != 200 {
            let text = String::from_utf8_lossy(&body).into_owned();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
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

    async fn exchange(&self, path: &str) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(&self.authority).await?;
        let request = format!(
            "GET {}{path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            self.prefix, self.authority
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_BODY as u64 + 64 * 1024)
            .read_to_end(&mut response)
            .await?;
        Ok(response)
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

/// The status code and body of an HTTP/1.1 response read to its end (`Content-Length`,
/// chunked, or until the connection closed).
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "header is not text")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP/1.x status line: {status_line:?}"))?;
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Ok((status, dechunk(body)?));
    }
    match header("content-length") {
        Some(len) => {
            let len: usize = len.parse().map_err(|_| "bad Content-Length")?;
            let got = body
                .get(..len)
                .ok_or("body shorter than its Content-Length")?;
            Ok((status, got.to_vec()))
        }
        None => Ok((status, body.to_vec())),
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("cut chunk")?;
        let size_text = std::str::from_utf8(&body[..end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        body = &body[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or("cut chunk")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).ok_or("cut chunk")?;
    }
}

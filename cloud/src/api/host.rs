//! The Host check of loopback listeners, a defence against DNS rebinding.
//!
//! A web page on `evil.example` can make its name resolve to 127.0.0.1 and then read a
//! loopback API from the victim's browser as same-origin. The browser still sends
//! `Host: evil.example`, so a loopback listener accepts only the names that really mean this
//! machine (`localhost`, `127.0.0.1`, `[::1]`, any port) and those given with
//! `--allowed-host`; anything else is answered 421 Misdirected Request. Listeners on other
//! addresses are reached by many names (and need a token anyway), so they are not checked.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::HOST;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The Host names a loopback listener answers to.
#[derive(Debug, Clone)]
pub struct AllowedHosts(Arc<Vec<String>>);

impl AllowedHosts {
    /// `localhost`, `127.0.0.1`, `[::1]` and `extra` (names without port, any case).
    pub fn loopback(extra: &[String]) -> AllowedHosts {
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        names.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        AllowedHosts(Arc::new(names))
    }

    /// Whether a Host header value names an allowed host (with or without a port).
    pub fn allows(&self, host: &str) -> bool {
        let name = if host.starts_with('[') {
            // [v6]:port
            host.find(']').map_or(host, |end| &host[..=end])
        } else {
            host.rsplit_once(':').map_or(host, |(name, _port)| name)
        };
        self.0
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
    }
}

/// Middleware: 421 unless the request's Host is allowed.
pub async fn check_host(
    State(allowed): State<AllowedHosts>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    match host {
        Some(h) if allowed.allows(h) => next.run(request).await,
        _ => (
            StatusCode::MISDIRECTED_REQUEST,
            Json(serde_json::json!({
                "error": "this loopback API answers only to Host localhost, 127.0.0.1 or [::1] \
                          (add names with osprey serve --allowed-host)"
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_with_any_port_and_extra_names_are_allowed() {
        let a = AllowedHosts::loopback(&["Osprey.Lan".to_owned()]);
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:8080",
            "osprey.lan:80",
        ] {
            assert!(a.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "127.0.0.2",
            "[::2]:80",
            "",
        ] {
            assert!(!a.allows(bad), "{bad}");
        }
    }
}

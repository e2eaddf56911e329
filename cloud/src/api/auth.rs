//! Bearer-token authentication of the API (a tower layer, not handler code).
//!
//! ```text
//!  request ─► open route? (/healthz, /readyz, the dashboard's pages, scripts, style) ─► handler
//!                │ no
//!                ▼
//!        Authorization: Bearer T ─► SHA-256(T) == SHA-256(token), constant time ─► handler
//!                │ missing / wrong
//!                ▼
//!        401 {"error": …}, WWW-Authenticate: Bearer
//! ```
//!
//! Both sides are hashed before comparing so that the comparison neither stops at the first
//! differing byte nor depends on the presented token's length; `subtle` does the comparison
//! without branches on the data. The token is never logged: [`ApiToken`] prints as `***`.

use std::path::Path;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::{self, FileRule, Secret, SecretError};

/// The environment variable that, when set, gives the API token (instead of a file).
pub const TOKEN_ENV: &str = "OSPREY_API_TOKEN";

/// Shortest token accepted, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

/// Routes served without a token: liveness and readiness probes (they tell nothing about the
/// fleet) and the dashboard's static pages, scripts and style (a page asks for the token).
pub const OPEN_ROUTES: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/",
    "/alerts",
    "/dashboard.js",
    "/dashboard.css",
];

/// Path prefixes served without a token: the device page (the same static page for every id)
/// and the pages' files.
pub const OPEN_PREFIXES: [&str; 2] = ["/devices/", "/assets/"];

/// Whether `path` is served without a token.
pub fn is_open(path: &str) -> bool {
    OPEN_ROUTES.contains(&path) || OPEN_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// The API's bearer token; only its SHA-256 is kept in memory after start.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

/// Why the token cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token file is unusable.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The token is too short to resist guessing.
    #[error(
        "the API token is {len} bytes; use at least {MIN_TOKEN_BYTES} \
         (e.g. `openssl rand -hex 32 > token && chmod 600 token`)"
    )]
    TooShort {
        /// Its length.
        len: usize,
    },
}

impl ApiToken {
    /// A token from its text; refused if shorter than [`MIN_TOKEN_BYTES`].
    pub fn new(secret: &Secret) -> Result<ApiToken, TokenError> {
        let text = secret.expose().trim();
        if text.len() < MIN_TOKEN_BYTES {
            return Err(TokenError::TooShort { len: text.len() });
        }
        Ok(ApiToken {
            digest: Sha256::digest(text.as_bytes()).into(),
        })
    }

    /// The token from `env` (the value of [`TOKEN_ENV`], if set) or else from `file` (refused
    /// if the group or others can read it); `None` when neither is given. Blocking.
    pub fn load(env: Option<String>, file: Option<&Path>) -> Result<Option<ApiToken>, TokenError> {
        secret::load(env, file, "API token", FileRule::OwnerOnly)?
            .map(|s| ApiToken::new(&s))
            .transpose()
    }

    /// Whether `presented` is the token, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// The bearer token of an `Authorization` header value (scheme case-insensitive).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let (scheme, rest) = bytes.split_at(bytes.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

/// Middleware: lets open routes through, and any other request only with the token.
pub async fn require_token(
    State(token): State<ApiToken>,
    request: Request,
    next: Next,
) -> Response {
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request.headers().get(AUTHORIZATION).and_then(bearer);
    match presented {
        Some(t) if token.matches(t) => next.run(request).await,
        other => {
            let reason = if other.is_some() {
                "wrong API token"
            } else {
                "this route needs `Authorization: Bearer <token>` (osprey serve --api-token-file)"
            };
            let mut response = (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({ "error": reason })),
            )
                .into_response();
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_tokens_are_refused_and_the_token_never_shows() {
        let err = ApiToken::new(&Secret::new("short")).unwrap_err();
        assert!(matches!(err, TokenError::TooShort { len: 5 }), "{err}");
        let token = ApiToken::new(&Secret::new("0123456789abcdef")).unwrap();
        assert!(token.matches(b"0123456789abcdef"));
        assert!(!token.matches(b"0123456789abcdeF"));
        assert!(!token.matches(b""));
        assert!(!format!("{token:?}").contains("0123"));
    }

    #[test]
    fn only_probes_pages_and_their_files_are_open() {
        for open in [
            "/",
            "/alerts",
            "/devices/pump-1",
            "/assets/uPlot.min.js",
            "/readyz",
        ] {
            assert!(is_open(open), "{open}");
        }
        for closed in [
            "/api/devices",
            "/api/devices/pump-1",
            "/api/fleet/events",
            "/metrics",
        ] {
            assert!(!is_open(closed), "{closed}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let v = HeaderValue::from_static("bearer  abc ");
        assert_eq!(bearer(&v), Some(&b"abc"[..]));
        assert_eq!(bearer(&HeaderValue::from_static("Basic abc")), None);
        assert_eq!(bearer(&HeaderValue::from_static("Bearer")), None);
    }
}

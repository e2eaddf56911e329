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
//! without branches on the data, against every token. The token is never logged: [`ApiToken`]
//! prints as `***`.
//!
//! Who calls: the token file holds one token, or one `NAME TOKEN` per line (`#` comments), so
//! that several people or tools each have their own. A request with a valid token carries the
//! token's name as a [`Caller`] extension; the routes that record something (a rules change)
//! record that name, as the server authenticated it, never what the body claims.

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

/// Name of the token of a file that holds a single token (no `NAME TOKEN` lines).
pub const SINGLE_TOKEN_NAME: &str = "api-token";

/// Longest token name.
pub const MAX_NAME_BYTES: usize = 64;

/// The API's bearer tokens, each with its name; only their SHA-256 is kept in memory after
/// start.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    tokens: Vec<(String, [u8; 32])>,
}

/// Who made a request, as the token it presented names it ([`require_token`] adds it to the
/// request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tokens.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "ApiToken({} = ***)", names.join(", "))
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
    /// A line of a file of named tokens is not `NAME TOKEN`.
    #[error(
        "API token file line {line}: {reason} (one token alone, or one `NAME TOKEN` per line; \
         names are 1 to {MAX_NAME_BYTES} of A-Z a-z 0-9 . _ @ -)"
    )]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl ApiToken {
    /// A token from its text, or named tokens from `NAME TOKEN` lines (`#` comments, blank
    /// lines skipped); refused if a token is shorter than [`MIN_TOKEN_BYTES`], a name is
    /// repeated or malformed, or two names share a token.
    pub fn new(secret: &Secret) -> Result<ApiToken, TokenError> {
        let lines: Vec<(usize, &str)> = secret
            .expose()
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let single = match lines.as_slice() {
            [(_, only)] if !only.contains(char::is_whitespace) => Some(*only),
            [] => Some(""),
            _ => None,
        };
        if let Some(text) = single {
            if text.len() < MIN_TOKEN_BYTES {
                return Err(TokenError::TooShort { len: text.len() });
            }
            return Ok(ApiToken {
                tokens: vec![(SINGLE_TOKEN_NAME.to_owned(), Sha256::digest(text).into())],
            });
        }
        let mut tokens: Vec<(String, [u8; 32])> = Vec::with_capacity(lines.len());
        for (line, text) in lines {
            let bad = |reason: &str| TokenError::BadLine {
                line,
                reason: reason.to_owned(),
            };
            let mut fields = text.split_whitespace();
            let (Some(name), Some(token), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected a name and a token"));
            };
            if name.len() > MAX_NAME_BYTES
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
            {
                return Err(bad(
                    "the name has characters other than A-Z a-z 0-9 . _ @ -",
                ));
            }
            if token.len() < MIN_TOKEN_BYTES {
                return Err(bad(&format!(
                    "the token of {name} is {} bytes; use at least {MIN_TOKEN_BYTES}",
                    token.len()
                )));
            }
            let digest: [u8; 32] = Sha256::digest(token).into();
            if tokens.iter().any(|(n, _)| n == name) {
                return Err(bad(&format!("{name} is named twice")));
            }
            if tokens.iter().any(|(_, d)| *d == digest) {
                return Err(bad(&format!("{name} has the same token as another name")));
            }
            tokens.push((name.to_owned(), digest));
        }
        Ok(ApiToken { tokens })
    }

    /// The token from `env` (the value of [`TOKEN_ENV`], if set) or else from `file` (refused
    /// if the group or others can read it); `None` when neither is given. Blocking.
    pub fn load(env: Option<String>, file: Option<&Path>) -> Result<Option<ApiToken>, TokenError> {
        secret::load(env, file, "API token", FileRule::OwnerOnly)?
            .map(|s| ApiToken::new(&s))
            .transpose()
    }

    /// The name of the token `presented` is, if any: every token is compared, in time
    /// independent of which one matches and where the others differ.
    pub fn caller(&self, presented: &[u8]) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (name, d) in &self.tokens {
            if bool::from(digest.ct_eq(d)) {
                found = Some(name.as_str());
            }
        }
        found
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
    match presented.map(|t| token.caller(t)) {
        Some(Some(name)) => {
            let caller = Caller(name.to_owned());
            let mut request = request;
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
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
        assert!(token.caller(b"0123456789abcdef").is_some());
        assert!(token.caller(b"0123456789abcdeF").is_none());
        assert!(token.caller(b"").is_none());
        assert!(!format!("{token:?}").contains("0123"));
    }

    #[test]
    fn named_tokens_say_who_calls_and_bad_files_say_which_line() {
        let file = "# operators\nalice 0123456789abcdef-alice\n\nci-bot  0123456789abcdef-bot\n";
        let tokens = ApiToken::new(&Secret::new(file)).unwrap();
        assert_eq!(tokens.caller(b"0123456789abcdef-alice"), Some("alice"));
        assert_eq!(tokens.caller(b"0123456789abcdef-bot"), Some("ci-bot"));
        assert_eq!(tokens.caller(b"alice"), None);
        assert_eq!(tokens.caller(b"0123456789abcdef-alicE"), None);
        assert!(!format!("{tokens:?}").contains("0123"));
        let single = ApiToken::new(&Secret::new("0123456789abcdef\n")).unwrap();
        assert_eq!(single.caller(b"0123456789abcdef"), Some(SINGLE_TOKEN_NAME));
        for (bad, line, says) in [
            ("alice 0123456789abcdef\nbob short\n", 2, "at least"),
            (
                "alice 0123456789abcdef\nalice 0123456789abcdeg\n",
                2,
                "named twice",
            ),
            (
                "alice 0123456789abcdef\nbob 0123456789abcdef\n",
                2,
                "same token",
            ),
            ("al/ice 0123456789abcdef\n", 1, "characters"),
            ("alice 0123456789abcdef extra\n", 1, "a name and a token"),
        ] {
            let err = ApiToken::new(&Secret::new(bad)).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, TokenError::BadLine { line: l, .. } if l == line),
                "{bad:?}: {text}"
            );
            assert!(text.contains(says), "{bad:?}: {text}");
            assert!(!text.contains("0123"), "a token in an error: {text}");
        }
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

//! The dashboard's pages and files, built into the binary (no CDN: plants and gateways are
//! often offline).
//!
//! | route | page or file |
//! |---|---|
//! | `GET /` | the fleet page (`dashboard.html`, `fleet.js`) |
//! | `GET /devices/{device}` | a device's page (`device.html`, `device.js`; the id is read from the path) |
//! | `GET /alerts` | the alerts page (`alerts.html`, `alerts.js`) |
//! | `GET /dashboard.js`, `GET /dashboard.css` | what every page shares: the API token, fetch, units, style |
//! | `GET /assets/{file}` | the pages' scripts and uPlot 1.6.32 (MIT, `vendor/uplot/`: its minified script, style and licence as released on npm) |
//!
//! Pages hold no inline script or style (the CSP forbids them) and no data: they fetch it from
//! the API with the token the user gave ([`super::auth`]), so any state backend that serves the
//! same API serves the same pages. They are open routes: they tell nothing about the fleet.

use axum::extract::Path;
use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};

use super::error::ApiError;

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The files under `/assets/`: name, content type, body.
pub const ASSETS: [(&str, &str, &str); 6] = [
    ("fleet.js", JS, include_str!("fleet.js")),
    ("device.js", JS, include_str!("device.js")),
    ("alerts.js", JS, include_str!("alerts.js")),
    (
        "uPlot.min.js",
        JS,
        include_str!("vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        CSS,
        include_str!("vendor/uplot/uPlot.min.css"),
    ),
    (
        "uPlot-LICENSE.txt",
        TEXT,
        include_str!("vendor/uplot/LICENSE"),
    ),
];

/// `GET /`: the fleet page.
pub async fn fleet() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

/// `GET /devices/{device}`: a device's page (the same page for every id).
pub async fn device() -> Html<&'static str> {
    Html(include_str!("device.html"))
}

/// `GET /alerts`: the alerts page.
pub async fn alerts() -> Html<&'static str> {
    Html(include_str!("alerts.html"))
}

/// `GET /dashboard.js`: what every page's script shares.
pub async fn dashboard_js() -> Response {
    ([(CONTENT_TYPE, JS)], include_str!("dashboard.js")).into_response()
}

/// `GET /dashboard.css`: the pages' style.
pub async fn dashboard_css() -> Response {
    ([(CONTENT_TYPE, CSS)], include_str!("dashboard.css")).into_response()
}

/// `GET /assets/{file}`.
pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, kind, body)| ([(CONTENT_TYPE, *kind)], *body).into_response())
        .ok_or_else(|| ApiError::not_found(format!("no such file: /assets/{file}")))
}

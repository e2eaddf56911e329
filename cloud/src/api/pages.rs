//! The dashboard's pages and files, built into the binary (no CDN: plants and gateways are
//! often offline).
//!
//! | route | page or file |
//! |---|---|
//! | `GET /` | the fleet page (`fleet.html`, `fleet.js`) |
//! | `GET /devices/{device}` | a device's page (`device.html`, `device.js`; the id is read from the path) |
//! | `GET /alerts` | the alerts page (`alerts.html`, `alerts.js`) |
//! | `GET /dashboard.js`, `GET /dashboard.css` | what every page shares: the API token, fetch, units, style |
//! | `GET /assets/{file}` | the pages' scripts and uPlot 1.6.32 (MIT, `vendor/uplot/`: its minified script, style and licence as released on npm) |
//!
//! Each page is `shell.html` (head, navigation, token form, error box) around its own part of
//! `<main>`, put together once. Pages hold no inline script or style (the CSP forbids them) and no data: they fetch it from
//! the API with the token the user gave ([`super::auth`]), so any state backend that serves the
//! same API serves the same pages. They are open routes: they tell nothing about the fleet.

use std::sync::LazyLock;

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

/// One page: the shell (`shell.html`: head, navigation, login form, error box, the shared
/// script) around its own `main` content and script (`/assets/<name>.js`).
struct Page {
    /// `fleet`, `device` or `alerts`: its script and its entry in the navigation.
    name: &'static str,
    /// Title and heading (the device page puts the device id in both).
    title: &'static str,
    /// Stylesheets and scripts it needs before its own (uPlot).
    styles: &'static str,
    scripts: &'static str,
    /// Its part of `<main>`.
    main: &'static str,
}

impl Page {
    fn render(&self) -> String {
        let current = |name: &str| {
            if name == self.name {
                r#" aria-current="page""#
            } else {
                ""
            }
        };
        include_str!("shell.html")
            .replace("{title}", self.title)
            .replace("{styles}", self.styles)
            .replace("{fleet}", current("fleet"))
            .replace("{alerts}", current("alerts"))
            .replace("{main}", self.main)
            .replace("{scripts}", self.scripts)
            .replace("{page}", self.name)
    }
}

const UPLOT_CSS: &str = "<link rel=\"stylesheet\" href=\"/assets/uPlot.min.css\">\n";
const UPLOT_JS: &str = "<script src=\"/assets/uPlot.min.js\"></script>\n";

static FLEET: LazyLock<String> = LazyLock::new(|| {
    Page {
        name: "fleet",
        title: "Fleet",
        styles: "",
        scripts: "",
        main: include_str!("fleet.html"),
    }
    .render()
});

static DEVICE: LazyLock<String> = LazyLock::new(|| {
    Page {
        name: "device",
        title: "Device",
        styles: UPLOT_CSS,
        scripts: UPLOT_JS,
        main: include_str!("device.html"),
    }
    .render()
});

static ALERTS: LazyLock<String> = LazyLock::new(|| {
    Page {
        name: "alerts",
        title: "Alerts",
        styles: "",
        scripts: "",
        main: include_str!("alerts.html"),
    }
    .render()
});

/// `GET /`: the fleet page.
pub async fn fleet() -> Html<&'static str> {
    Html(FLEET.as_str())
}

/// `GET /devices/{device}`: a device's page (the same page for every id).
pub async fn device() -> Html<&'static str> {
    Html(DEVICE.as_str())
}

/// `GET /alerts`: the alerts page.
pub async fn alerts() -> Html<&'static str> {
    Html(ALERTS.as_str())
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

#[cfg(test)]
mod tests {
    /// The colour of `--name` in dashboard.css's `:root`, as RGB.
    fn var(css: &str, name: &str) -> [f64; 3] {
        let root = css.split_once(":root {").map(|(_, r)| r).unwrap_or("");
        let value = root
            .split_once(&format!("--{name}:"))
            .and_then(|(_, rest)| rest.split_once(';'))
            .map(|(v, _)| v.trim())
            .unwrap_or_else(|| panic!("--{name} is not in :root"));
        hex(value)
    }

    /// `#rrggbb` or `#rgb` as RGB.
    fn hex(value: &str) -> [f64; 3] {
        let short = value.trim_start_matches('#');
        let h: String = if short.len() == 3 {
            short.chars().flat_map(|c| [c, c]).collect()
        } else {
            short.to_owned()
        };
        assert_eq!(h.len(), 6, "not #rrggbb or #rgb: {value}");
        let byte = |i: usize| f64::from(u8::from_str_radix(&h[i..i + 2], 16).unwrap());
        [byte(0), byte(2), byte(4)]
    }

    /// WCAG 2 contrast ratio of two colours.
    fn contrast(a: [f64; 3], b: [f64; 3]) -> f64 {
        let lum = |c: [f64; 3]| {
            let f = |v: f64| {
                let v = v / 255.0;
                if v <= 0.03928 {
                    v / 12.92
                } else {
                    ((v + 0.055) / 1.055).powf(2.4)
                }
            };
            0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2])
        };
        let (x, y) = (lum(a), lum(b));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    }

    #[test]
    fn the_text_colours_meet_aa_contrast_on_their_backgrounds() {
        let css = include_str!("dashboard.css");
        let pairs = [
            ("ink", "bg"),
            ("ink", "card"),
            ("muted", "bg"),
            ("muted", "card"),
            ("link", "bg"),
            ("link", "card"),
            ("ok", "ok-bg"),
            ("bad", "bad-bg"),
            ("warn", "warn-bg"),
            ("idle", "idle-bg"),
        ];
        for (fg, bg) in pairs {
            let ratio = contrast(var(css, fg), var(css, bg));
            assert!(ratio >= 4.5, "--{fg} on --{bg}: {ratio:.2} < 4.5");
        }
        // Table headers (--muted on #fafbfc) and disabled buttons (#6b7280 on white).
        assert!(contrast(var(css, "muted"), hex("#fafbfc")) >= 4.5);
        assert!(contrast(hex("#6b7280"), hex("#ffffff")) >= 4.5);
        // The check can fail: light grey on white does not pass.
        assert!(contrast(hex("#999999"), hex("#ffffff")) < 4.5);
    }
}

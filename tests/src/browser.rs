//! Headless Chromium: the dashboard as a browser renders it (scripts run, fetches made), as a
//! DOM to assert on or as a screenshot to look at.
//!
//! Screenshots go to [`screenshot_dir`] (`target/screenshots/`, next to the build), named by
//! the test, so a run leaves the pages it checked for a person to look at.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The name of headless Chromium from Debian (tests/run.sh installs it).
///
/// # Panics
///
/// When no `chromium` or `chromium-browser` is on the PATH.
pub fn chromium() -> String {
    for name in ["chromium", "chromium-browser"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if found {
            return name.to_owned();
        }
    }
    panic!("chromium not found: run tests/run.sh, which installs Debian's chromium");
}

/// A browser window: its size and how much virtual time its scripts get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Width in CSS pixels.
    pub width: u32,
    /// Height in CSS pixels.
    pub height: u32,
    /// Virtual time the page's scripts get before the DOM or screenshot is taken (ms).
    pub budget_ms: u32,
}

impl Window {
    /// A desktop window, 1440 × 1000.
    pub const DESKTOP: Window = Window {
        width: 1440,
        height: 1000,
        budget_ms: 5_000,
    };
    /// A phone, 390 × 844 (an iPhone 12 to 15 in CSS pixels).
    pub const PHONE: Window = Window {
        width: 390,
        height: 844,
        budget_ms: 5_000,
    };
}

/// The arguments every headless Chromium of the suite gets: no sandbox (root in a container),
/// no GPU, nothing fetched from the network on its own, one pixel per CSS pixel.
pub(crate) const HEADLESS_ARGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
];

/// The first tag of `dom` that contains `marker` (e.g. `<tr data-device=` or
/// `data-series="bearing/temperature"`), from the marker to the tag's end: its attributes to
/// assert on; `None` when no tag has it.
pub fn tag_with<'a>(dom: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &dom[dom.find(marker)?..];
    Some(rest.split_once('>').map_or(rest, |(attrs, _)| attrs))
}

/// Runs headless Chromium on `url` with `extra` arguments; its stdout.
fn run(url: &str, window: Window, extra: &[String]) -> String {
    let profile =
        tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a chromium profile dir: {e}"));
    let out = Command::new(chromium())
        .args(HEADLESS_ARGS)
        .arg(format!("--virtual-time-budget={}", window.budget_ms))
        .arg(format!("--window-size={},{}", window.width, window.height))
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run chromium: {e}"));
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page's DOM after its scripts ran (up to 5 s of virtual time), as Chromium renders it.
///
/// # Panics
///
/// When Chromium is missing or fails, with its stderr.
pub fn rendered_dom(url: &str) -> String {
    rendered_dom_in(url, Window::DESKTOP)
}

/// [`rendered_dom`] in a window of the given size and budget.
///
/// # Panics
///
/// When Chromium is missing or fails, with its stderr.
pub fn rendered_dom_in(url: &str, window: Window) -> String {
    run(url, window, &["--dump-dom".to_owned()])
}

/// Where screenshots go: `target/screenshots/` (created if missing).
///
/// # Panics
///
/// When the directory cannot be created.
pub fn screenshot_dir() -> PathBuf {
    let dir = crate::target_profile_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
        .join("screenshots");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Saves a PNG of `url` in `window` as `<screenshot_dir>/<name>.png` and returns its path.
///
/// # Panics
///
/// When Chromium is missing or fails, or writes no file.
pub fn screenshot(url: &str, window: Window, name: &str) -> PathBuf {
    let path = screenshot_dir().join(format!("{name}.png"));
    let _ = std::fs::remove_file(&path);
    run(url, window, &[format!("--screenshot={}", path.display())]);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 0,
        "chromium wrote no screenshot at {}",
        path.display()
    );
    path
}

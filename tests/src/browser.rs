//! Headless Chromium: the dashboard as a browser renders it (scripts run, fetches made).

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

/// The page's DOM after its scripts ran (up to 5 s of virtual time), as Chromium renders it.
///
/// # Panics
///
/// When Chromium is missing or fails, with its stderr.
pub fn rendered_dom(url: &str) -> String {
    let profile =
        tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a chromium profile dir: {e}"));
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
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

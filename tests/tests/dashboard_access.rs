//! The dashboard as a person uses it, in headless Chromium driven over the DevTools protocol
//! (`osprey_tests::Browser`): behind the API token, typed into the login form; and an
//! accessibility audit of the fleet, device and alerts pages (text alternatives of charts,
//! labels of form controls, every control reached by the Tab key with a visible focus ring at
//! desktop and phone width, text contrast ≥ 4.5:1 from the computed CSS colours, and the same
//! for the text drawn inside charts, recorded as the page draws it). Screenshots go to
//! `target/screenshots/` (token-login-1440.png, token-fleet-1440.png, token-device-1440.png).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use osprey_tests::{bin, demo_broker_port, start_demo, wait_until, Browser, Proc, Window};
use serde_json::Value;

const DEVICES: usize = 4;
const TOKEN: &str = "0123456789abcdef-dashboard-token";
/// The demo's second machine, whose bearing fails (`osprey_cloud::demo::fleet`).
const FAILING: &str = "compressor-02";

/// `GET path` with the token; the status and the JSON body.
fn get_with_token(addr: &str, path: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // Chunked or not: the JSON is between the first '{' and the last '}'.
    let json = body
        .find('{')
        .zip(body.rfind('}'))
        .map(|(a, b)| &body[a..=b])
        .unwrap_or("null");
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

/// `osprey serve` with an API token, reading the demo's broker; its `host:port`.
fn serve_with_token(dir: &std::path::Path, port: u16) -> (Proc, String) {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut serve = Proc::spawn(
        Command::new(bin("osprey"))
            .arg("serve")
            .arg("--db")
            .arg(dir.join("osprey.db"))
            .args(["--listen", "127.0.0.1:0", "--mqtt-host", "127.0.0.1"])
            .args(["--mqtt-port", &port.to_string()])
            .arg("--api-token-file")
            .arg(&token)
            .env("NO_COLOR", "1")
            .env_remove("OSPREY_API_TOKEN"),
    );
    let line = serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(60));
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    let addr = url.split_once("://").unwrap().1.to_owned();
    (serve, addr)
}

const LOGIN_SHOWN: &str = "!document.getElementById('login').hidden";

#[test]
fn the_pages_work_with_the_api_token_typed_into_the_login_form_and_ask_for_it_without() {
    let (demo, _) = start_demo(DEVICES, 50);
    let dir = tempfile::tempdir().unwrap();
    let (serve, addr) = serve_with_token(dir.path(), demo_broker_port(&demo));
    let url = format!("http://{addr}");
    wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
        let (status, page) = get_with_token(&addr, "/api/fleet");
        (status == 200 && page["total"] == DEVICES).then_some(())
    })
    .unwrap_or_else(|| panic!("serve never saw the demo's fleet\n{}", serve.logs()));

    // Without the token: the login form, focused, and no data.
    let mut browser = Browser::launch(Window::DESKTOP);
    browser.goto(&format!("{url}/"));
    browser.wait_for(LOGIN_SHOWN, "the fleet page did not ask for the token");
    assert_eq!(
        browser.eval("document.querySelectorAll('tr[data-device]').length"),
        0
    );
    assert_eq!(browser.eval("document.activeElement.id"), "token");
    let shot = browser.screenshot("token-login-1440");
    eprintln!("screenshot: {}", shot.display());

    // A wrong token is refused: the form comes back, nothing is kept.
    browser.type_text("not-the-token-0123456789");
    browser.press("Enter", false);
    browser.wait_for(
        &format!("{LOGIN_SHOWN} && sessionStorage.getItem('osprey-api-token') === null"),
        "a wrong token did not bring the form back",
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('tr[data-device]').length"),
        0
    );

    // The token, typed and entered: the fleet.
    browser.eval("document.getElementById('token').focus()");
    browser.type_text(TOKEN);
    browser.press("Enter", false);
    browser.wait_for(
        &format!("document.querySelectorAll('tr[data-device]').length === {DEVICES}"),
        "the fleet did not load with the token",
    );
    assert_eq!(browser.eval(LOGIN_SHOWN), false);
    // The live stream (read with fetch, which sends the token) is connected too.
    browser.wait_for(
        "document.getElementById('live').classList.contains('on')",
        "the live stream did not connect with the token",
    );
    let dom = browser.dom();
    assert!(
        dom.contains(&format!("<tr data-device=\"{FAILING}\"")),
        "{dom}"
    );
    let shot = browser.screenshot("token-fleet-1440");
    eprintln!("screenshot: {}", shot.display());

    // The same tab keeps it for the device page: charts with data, the status strip.
    browser.goto(&format!("{url}/devices/{FAILING}"));
    browser.wait_for(
        "document.body.dataset.loaded === 'true' && document.querySelector('figure.chart[data-rendered]') && document.getElementById('strip').dataset.drawn === 'true'",
        "the device page did not load with the token",
    );
    assert_eq!(browser.eval(LOGIN_SHOWN), false);
    let points = browser.eval(
        "Math.max(...[...document.querySelectorAll('figure.chart')].map((f) => +f.dataset.points))",
    );
    assert!(
        points.as_u64().unwrap_or(0) >= 1,
        "no chart has data: {points}"
    );
    // The strip is drawn (what it shows depends on whether serve subscribed before the demo's
    // gateways said they were online: their birth statuses are not retained).
    let spans = browser.eval("document.getElementById('strip').dataset.spans");
    assert!(
        !spans.as_str().unwrap_or("").is_empty(),
        "status strip: {spans}"
    );
    let shot = browser.screenshot("token-device-1440");
    eprintln!("screenshot: {}", shot.display());
    drop(browser);

    // A new browser (no token) on the device page and the alerts page: the form, no data.
    let mut browser = Browser::launch(Window::DESKTOP);
    for path in [format!("/devices/{FAILING}"), "/alerts".to_owned()] {
        browser.goto(&format!("{url}{path}"));
        browser.wait_for(LOGIN_SHOWN, &format!("{path} did not ask for the token"));
        assert_eq!(
            browser.eval(
                "document.querySelectorAll('figure.chart[data-rendered], tr[data-device]').length"
            ),
            0,
            "{path} shows data without the token"
        );
    }
}

/// The audit run in each page: a list of problems (empty when it passes). Checks charts' text
/// alternatives, labels, names of controls, positive tabindex, and the contrast of every piece
/// of visible text against its background (WCAG: 4.5:1, 3:1 for large text).
const AUDIT_JS: &str = r##"(() => {
  const problems = [];
  const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (typeof el.className === "string" && el.className.trim() ? "." + el.className.trim().split(/\s+/).join(".") : "");
  const visible = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden";
  for (const c of document.querySelectorAll("canvas, svg")) {
    if (!visible(c)) continue;
    const holder = c.closest('[role="img"]');
    const label = holder ? (holder.getAttribute("aria-label") || "").trim() : "";
    if (label.length < 20) problems.push("chart without a text alternative: " + name(c.parentElement));
  }
  for (const f of document.querySelectorAll("input, select, textarea")) {
    if (f.type === "hidden") continue;
    const byLabel = f.labels && [...f.labels].some((l) => l.textContent.trim());
    const byAria = (f.getAttribute("aria-label") || "").trim();
    const ref = f.getAttribute("aria-labelledby");
    const byRef = ref && document.getElementById(ref) && document.getElementById(ref).textContent.trim();
    if (!byLabel && !byAria && !byRef) problems.push("form control without a label: " + name(f));
  }
  for (const b of document.querySelectorAll("button, a[href], summary")) {
    if (!(b.textContent.trim() || (b.getAttribute("aria-label") || "").trim())) problems.push("control without a name: " + name(b));
  }
  for (const el of document.querySelectorAll("[tabindex]")) {
    if (+el.getAttribute("tabindex") > 0) problems.push("positive tabindex: " + name(el));
  }
  const rgba = (s) => { const m = s.match(/[\d.]+/g) || [0, 0, 0, 0]; return [+m[0], +m[1], +m[2], m.length > 3 ? +m[3] : 1]; };
  const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat(1);
  const background = (el) => {
    const layers = [];
    for (let n = el; n && n.nodeType === 1; n = n.parentElement) {
      const c = rgba(getComputedStyle(n).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let bg = [255, 255, 255, 1];
    for (const c of layers.reverse()) bg = over(c, bg);
    return bg;
  };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }; return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const seen = new Set();
  for (const el of document.body.querySelectorAll("*")) {
    if (!visible(el) || el.closest("svg")) continue;
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const st = getComputedStyle(el);
    if (el.matches(":disabled")) continue;
    const bg = background(el);
    const fg = over(rgba(st.color), bg);
    const [a, b] = [lum(fg), lum(bg)];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(st.fontSize), bold = +st.fontWeight >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    const key = name(el) + " " + st.color + " on " + bg.join(",");
    if (ratio < need && !seen.has(key)) { seen.add(key); problems.push("contrast " + ratio.toFixed(2) + " < " + need + ": " + key); }
  }
  // Text drawn inside charts: its colour against the canvas's background (needs CANVAS_TEXT_HOOK).
  const hex = (s) => s.startsWith("#") ? [1, 3, 5].map((i) => parseInt(s.slice(i, i + 2), 16)).concat(1) : rgba(s);
  for (const t of window.__canvasText || []) {
    if (!t.canvas.isConnected || !visible(t.canvas) || !t.text.trim()) continue;
    const bg = background(t.canvas);
    const c = hex(t.color);
    const fg = over([c[0], c[1], c[2], c[3] * t.alpha], bg);
    const [a, b] = [lum(fg), lum(bg)];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const px = parseFloat((t.font.match(/([\d.]+)px/) || [0, 10])[1]) / (devicePixelRatio || 1);
    const need = px >= 24 ? 3 : 4.5;
    const key = "chart text " + JSON.stringify(t.text.slice(0, 30)) + " in " + name(t.canvas) + " " + t.color;
    if (ratio < need && !seen.has(key)) { seen.add(key); problems.push("contrast " + ratio.toFixed(2) + " < " + need + ": " + key); }
    if (px < 9 && !seen.has(key + " size")) { seen.add(key + " size"); problems.push("chart text under 9 px (" + px + "): " + key); }
  }
  return problems;
})()"##;

/// Installed before any page script runs: records every piece of text drawn on a canvas (chart
/// axes, rule labels) with its colour and font, so the audit can check text no DOM holds.
const CANVAS_TEXT_HOOK: &str = r#"(() => {
  const drawn = [];
  Object.defineProperty(window, "__canvasText", { value: drawn });
  const fillText = CanvasRenderingContext2D.prototype.fillText;
  CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
    if (drawn.length > 2000) drawn.splice(0, 1000);
    drawn.push({ canvas: this.canvas, text: String(text), color: String(this.fillStyle), font: this.font, alpha: this.globalAlpha });
    return fillText.call(this, text, ...rest);
  };
})()"#;

/// A browser whose pages record the text drawn on canvases ([`CANVAS_TEXT_HOOK`]).
fn audited_browser(window: Window) -> Browser {
    let mut browser = Browser::launch(window);
    browser.call(
        "Page.addScriptToEvaluateOnNewDocument",
        serde_json::json!({ "source": CANVAS_TEXT_HOOK }),
    );
    browser
}

/// What names a control across re-renders (the fleet page replaces rows as they change):
/// tag, id, link target and text.
const DESCRIBE_JS: &str = r#"const describe = (el) => [el.tagName.toLowerCase(), el.id, el.getAttribute("href") || "", el.getAttribute("data-range") || "", el.textContent.trim().slice(0, 40)].join("|");"#;

/// The visible controls a keyboard must reach.
const FOCUSABLE_JS: &str = r#"[...document.querySelectorAll("a[href], button:not(:disabled), input:not([type=hidden]), select, textarea, summary, [tabindex]:not([tabindex='-1'])")]
  .filter((el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden")
  .map(describe)"#;

/// Presses Tab through the page from the top; every control of [`FOCUSABLE_JS`] must be
/// reached, each with a focus ring (an outline at least 2 px wide). Returns the problems.
fn keyboard_problems(browser: &mut Browser, page: &str) -> Vec<String> {
    let wanted: std::collections::BTreeSet<String> = serde_json::from_value(browser.eval(
        &format!("(() => {{ {DESCRIBE_JS} return {FOCUSABLE_JS}; }})()"),
    ))
    .unwrap();
    browser.eval("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)");
    let mut reached = std::collections::BTreeSet::new();
    let mut problems = std::collections::BTreeSet::new();
    // A live re-render may take the focus back to the top: go round more than once if so.
    for _ in 0..wanted.len() * 3 + 10 {
        if wanted.is_subset(&reached) {
            break;
        }
        browser.press("Tab", false);
        let now = browser.eval(&format!(
            r#"(() => {{ {DESCRIBE_JS} const el = document.activeElement; if (!el || el === document.body) return null;
                 const st = getComputedStyle(el);
                 return {{ id: describe(el), ring: st.outlineStyle !== "none" && parseFloat(st.outlineWidth) >= 2 }}; }})()"#
        ));
        let Some(id) = now["id"].as_str() else {
            continue;
        };
        if now["ring"] != true {
            problems.insert(format!("{page}: no visible focus ring on {id}"));
        }
        reached.insert(id.to_owned());
    }
    eprintln!(
        "{page}: Tab reached {} of {} controls",
        reached.intersection(&wanted).count(),
        wanted.len()
    );
    for id in wanted.difference(&reached) {
        problems.insert(format!("{page}: Tab never reaches {id}"));
    }
    problems.into_iter().collect()
}

/// The audit can fail: planted faults on the fleet page are each reported.
fn audit_finds_what_it_looks_for(url: &str) {
    let mut browser = audited_browser(Window::DESKTOP);
    browser.goto(&format!("{url}/"));
    browser.wait_for(
        "document.querySelectorAll('tr[data-device]').length > 0",
        "fleet",
    );
    browser.eval(
        r##"(() => { const m = document.getElementById("main");
            const p = document.createElement("p"); p.textContent = "faint text"; p.style.color = "#aaaaaa"; p.style.background = "#ffffff";
            const i = document.createElement("input"); i.id = "unlabelled";
            const c = document.createElement("canvas"); c.id = "bare-chart";
            const g = c.getContext("2d"); g.fillStyle = "#bbbbbb"; g.font = "12px sans-serif"; g.fillText("faint chart text", 4, 20);
            const a = document.createElement("a"); a.href = "#x"; a.textContent = "unreachable"; a.tabIndex = -1;
            const b = document.createElement("button"); b.textContent = "ringless"; b.style.outline = "none";
            m.prepend(p, i, c, a, b); })()"##,
    );
    let audit: Vec<String> = serde_json::from_value(browser.eval(AUDIT_JS)).unwrap();
    let text = audit.join("\n");
    for planted in [
        "contrast 2.32 < 4.5: p",
        "form control without a label: input#unlabelled",
        "chart without a text alternative: main#main",
        "< 4.5: chart text \"faint chart text\" in canvas#bare-chart #bbbbbb",
    ] {
        assert!(
            text.contains(planted),
            "the audit missed {planted:?}:\n{text}"
        );
    }
    let keys = keyboard_problems(&mut browser, "/").join("\n");
    for planted in [
        "Tab never reaches a||#x||unreachable",
        "no visible focus ring on button||||ringless",
    ] {
        assert!(
            keys.contains(planted),
            "the keyboard check missed {planted:?}:\n{keys}"
        );
    }
}

#[test]
fn the_fleet_device_and_alerts_pages_pass_the_accessibility_audit() {
    let (mut demo, url) = start_demo(DEVICES, 50);
    wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
        let (status, page) = get_with_token(url.trim_start_matches("http://"), "/api/fleet");
        (status == 200 && page["total"] == DEVICES).then_some(())
    })
    .unwrap_or_else(|| panic!("the demo never showed its fleet\n{}", demo.logs()));
    audit_finds_what_it_looks_for(&url);
    let mut problems = Vec::new();
    for window in [Window::DESKTOP, Window::PHONE] {
        let mut browser = audited_browser(window);
        for (page, ready) in [
            ("/", "document.querySelectorAll('tr[data-device]').length > 0"),
            (
                &format!("/devices/{FAILING}")[..],
                "document.body.dataset.loaded === 'true' && document.querySelector('figure.chart[data-rendered]')",
            ),
            ("/alerts", "!document.querySelector('#alerts td.empty') || document.querySelector('#alerts td.empty').textContent !== 'Loading…'"),
        ] {
            browser.goto(&format!("{url}{page}"));
            browser.wait_for(ready, &format!("{page} did not load"));
            let audit: Vec<String> = serde_json::from_value(browser.eval(AUDIT_JS)).unwrap();
            problems.extend(audit.into_iter().map(|p| format!("{page} at {}: {p}", window.width)));
            let at = format!("{page} at {}", window.width);
            problems.extend(keyboard_problems(&mut browser, &at));
        }
    }
    assert!(
        problems.is_empty(),
        "accessibility problems:\n{}",
        problems.join("\n")
    );
    let status = demo.terminate(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{}", demo.logs());
}

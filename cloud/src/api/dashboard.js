"use strict";
const REFRESH_MS = 2000;
const STALE_MS = 60000;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function age(ms) {
  if (ms < 0) ms = 0;
  const s = Math.round(ms / 1000);
  if (s < 60) return s + " s ago";
  const m = Math.round(s / 60);
  if (m < 60) return m + " min ago";
  const h = Math.round(m / 60);
  if (h < 48) return h + " h ago";
  return Math.round(h / 24) + " d ago";
}

function fmt(x) {
  if (x === null || x === undefined || !isFinite(x)) return "–";
  const a = Math.abs(x);
  return a !== 0 && (a >= 1e6 || a < 1e-3) ? x.toExponential(3) : x.toFixed(a >= 100 ? 1 : 2);
}

function seriesCell(latest) {
  const td = el("td");
  if (!latest.length) { td.append(el("span", "series-none", "–")); return td; }
  const grid = el("div", "series");
  for (const w of latest) {
    grid.append(el("span", "name", w.sensor + " / " + w.metric));
    const value = el("span", "value", fmt(w.mean) + (w.unit ? " " + w.unit : ""));
    value.append(el("span", "range", "  (" + fmt(w.min) + " … " + fmt(w.max) + ", n=" + w.count + ")"));
    value.title = "window " + new Date(w.start_ms).toLocaleTimeString() + "–" + new Date(w.end_ms).toLocaleTimeString();
    grid.append(value);
  }
  td.append(grid);
  return td;
}

function row(d, now) {
  const tr = el("tr");
  tr.append(el("td", "device", d.device));
  const status = el("td");
  const state = ["online", "offline"].includes(d.status) ? d.status : "unknown";
  status.append(el("span", "badge " + state, state));
  tr.append(status);
  const since = now - d.last_seen_ms;
  const seen = el("td", since > STALE_MS ? "stale" : "", age(since));
  seen.title = new Date(d.last_seen_ms).toLocaleString();
  tr.append(seen);
  tr.append(el("td", "num", d.readings.toLocaleString()));
  tr.append(el("td", "num" + (d.active_alerts > 0 ? " alerts" : ""), String(d.active_alerts)));
  tr.append(healthCell(d.health));
  tr.append(breachCell(d.next_breach));
  tr.append(seriesCell(d.latest || []));
  return tr;
}

function hours(ms) {
  return (ms / 3600000).toFixed(1) + " h";
}

function healthCell(h) {
  const score = h ? h.score : 100;
  const td = el("td", "num health" + (score < 50 ? " alerts" : score < 80 ? " warn" : ""), String(score));
  td.title = h && h.reasons.length ? h.reasons.map((r) => "−" + r.points + ": " + r.reason).join("\n") : "no known problem";
  return td;
}

function breachCell(b) {
  const td = el("td", "breach");
  if (!b) { td.append(el("span", "series-none", "–")); return td; }
  const high = b.remaining_high_ms === null ? "?" : hours(b.remaining_high_ms);
  td.append(el("span", b.maintenance_alert ? "alerts" : "",
    b.sensor + " / " + b.metric + " reaches " + fmt(b.threshold) + " in " + hours(b.remaining_ms)));
  td.append(el("span", "range", "  (" + hours(b.remaining_low_ms) + " – " + high + ", rule " + b.rule + ")"));
  td.title = "predicted at " + new Date(b.crossing_ms).toLocaleString();
  return td;
}

function render(devices) {
  const now = Date.now();
  const body = document.getElementById("fleet");
  body.replaceChildren();
  if (!devices.length) {
    const tr = el("tr");
    const td = el("td", "empty", "No device has reported yet.");
    td.colSpan = 6;
    tr.append(td);
    body.append(tr);
  }
  devices.sort((a, b) => a.device.localeCompare(b.device, undefined, { numeric: true }));
  for (const d of devices) body.append(row(d, now));
  const online = devices.filter(d => d.status === "online").length;
  const alerts = devices.reduce((n, d) => n + d.active_alerts, 0);
  const summary = document.getElementById("summary");
  summary.replaceChildren();
  summary.append(el("b", "", String(devices.length)), " devices · ",
    el("b", "", String(online)), " online · ",
    el("b", "", String(alerts)), " active alerts");
  document.getElementById("updated").textContent = "updated " + new Date(now).toLocaleTimeString();
}

// The API token, asked for once per browser tab and kept in sessionStorage (gone when the tab
// closes). A server without a token ignores the header.
const TOKEN_KEY = "osprey-api-token";
let timer = null;

function askForToken() {
  const login = document.getElementById("login");
  login.style.display = "block";
  document.getElementById("token").focus();
}

function onLogin(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, input.value.trim());
  input.value = "";
  document.getElementById("login").style.display = "none";
  clearTimeout(timer);
  refresh();
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers["Authorization"] = "Bearer " + token;
    const response = await fetch("/api/devices", { cache: "no-store", headers });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      error.style.display = "none";
      askForToken();
      return;
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    error.style.display = "none";
  } catch (e) {
    error.textContent = "Cannot reach the Osprey API (" + e.message + "); retrying…";
    error.style.display = "block";
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

document.getElementById("login").addEventListener("submit", onLogin);
refresh();

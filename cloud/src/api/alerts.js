"use strict";
// The alerts page: episodes (a raise and its clear) from /api/alerts/episodes, filtered by
// device, rule, severity, state and time; reloaded when the live stream reports a new alert
// event. Filters live in the URL.
(() => {
  const O = Osprey;
  const SINCE = { "1h": 3600000, "24h": 86400000, "7d": 7 * 86400000, "30d": 30 * 86400000 };
  const FIELDS = ["device", "rule", "severity", "state", "since"];
  let reloadTimer = null;

  function readUrl() {
    const p = new URLSearchParams(location.search);
    for (const k of FIELDS) {
      const v = p.get(k);
      if (v !== null) document.getElementById(k).value = v;
    }
  }

  function filters() {
    const f = {};
    for (const k of FIELDS) f[k] = document.getElementById(k).value.trim();
    if (!SINCE[f.since]) f.since = "7d";
    return f;
  }

  function cell(text, label, cls) {
    const td = O.el("td", cls || "", text);
    td.dataset.label = label;
    return td;
  }

  function row(e) {
    const tr = O.el("tr");
    tr.dataset.device = e.device;
    tr.dataset.rule = e.rule;
    tr.dataset.active = String(e.active);
    const state = O.el("td");
    state.dataset.label = "State";
    state.append(O.badge(e.active ? "active" : "ended", e.active ? e.severity : "ended"), " ", O.badge(e.severity, e.severity));
    const device = O.el("td");
    device.dataset.label = "Device";
    device.append(O.deviceLink(e.device));
    const raised = e.raised_ms === null ? "before this range" : O.time(e.raised_ms) + " at " + O.num(e.raised_value);
    const cleared = e.cleared_ms !== null ? O.time(e.cleared_ms) + " at " + O.num(e.cleared_value) : e.active ? "not yet" : "after this range";
    const dur = e.duration_ms === null ? "–" : O.duration(e.duration_ms) + (e.active ? " so far" : "");
    tr.append(state, device, cell(e.rule, "Rule"), cell(O.series(e.sensor, e.metric) + " (level " + O.num(e.threshold) + ")", "Series"),
      cell(raised, "Raised"), cell(cleared, "Cleared"), cell(dur, "Duration", "num"));
    return tr;
  }

  async function load() {
    const f = filters();
    history.replaceState(null, "", location.pathname + O.query({ device: f.device, rule: f.rule, severity: f.severity, state: f.state, since: f.since === "7d" ? "" : f.since }));
    try {
      const list = await O.api("/api/alerts/episodes" + O.query({ device: f.device, rule: f.rule, severity: f.severity, state: f.state, from_ms: Date.now() - SINCE[f.since], limit: 1000 }), load);
      const body = document.getElementById("alerts");
      body.replaceChildren();
      if (!list.length) {
        const tr = O.el("tr");
        const td = O.el("td", "empty", "No alert matches these filters.");
        td.colSpan = 7;
        tr.append(td);
        body.append(tr);
      }
      for (const e of list) body.append(row(e));
      const active = list.filter((e) => e.active).length;
      document.getElementById("summary").replaceChildren(O.el("b", "", String(active)), " active · ", O.el("b", "", String(list.length - active)), " ended");
      document.body.dataset.rows = String(list.length);
      O.fit();
      O.showError("");
    } catch (e) {
      if (e instanceof O.LoginNeeded) return;
      O.showError(e.message);
    }
  }

  function setLive(state) {
    const live = document.getElementById("live");
    live.className = "live" + (state === "live" ? " on" : "");
    live.textContent = state === "live" ? "live" : "reconnecting…";
  }

  O.setUpLogin();
  readUrl();
  document.getElementById("filters").addEventListener("submit", (e) => { e.preventDefault(); load(); });
  for (const k of ["severity", "state", "since"]) document.getElementById(k).addEventListener("change", load);
  load();
  // New alert events arrive on the fleet's live stream (one-row page: only its alerts matter).
  O.stream(() => "/api/fleet/events?limit=1", (name) => {
    if (name !== "alert") return;
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(load, 500);
  }, setLive);
})();

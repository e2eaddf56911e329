"use strict";
// The fleet page: one page of devices from /api/fleet (worst first by default), then kept live
// by /api/fleet/events (changed rows, order and counts; new alerts). Filters and the page
// offset live in the URL, so a reload or a shared link shows the same view.
(() => {
  const O = Osprey;
  const PAGE = 50;
  const view = { q: "", status: "", severity: "", sort: "worst", offset: 0 };
  let rows = new Map();
  let order = [];
  let total = 0;
  let stop = null;
  let searchTimer = null;

  function readUrl() {
    const p = new URLSearchParams(location.search);
    for (const k of ["q", "status", "severity", "sort"]) view[k] = p.get(k) || (k === "sort" ? "worst" : "");
    view.offset = Math.max(0, parseInt(p.get("offset") || "0", 10) || 0);
    for (const k of ["q", "status", "severity", "sort"]) document.getElementById(k).value = view[k];
  }

  function params() {
    return { q: view.q, status: view.status, severity: view.severity, sort: view.sort === "worst" ? "" : view.sort, offset: view.offset || "", limit: PAGE };
  }

  function alertsCell(d) {
    const td = O.el("td");
    td.dataset.label = "Active alerts";
    const a = d.alerts;
    if (!a.critical && !a.warning && !a.info) { td.append(O.el("span", "muted", "none")); return td; }
    if (a.critical) td.append(O.badge(a.critical + " critical", "critical"), " ");
    if (a.warning) td.append(O.badge(a.warning + " warning", "warning"), " ");
    if (a.info) td.append(O.badge(a.info + " info", "info"), " ");
    td.append(O.el("div", "small", d.active_rules.join(", ")));
    return td;
  }

  function healthCell(h) {
    const td = O.el("td", "health");
    td.dataset.label = "Health and reasons";
    const cls = h.score < 50 ? "bad" : h.score < 80 ? "warn" : "good";
    td.append(O.el("span", "score " + cls, h.score + " / 100"));
    if (!h.reasons.length) { td.append(O.el("div", "muted small", "no known problem")); return td; }
    const list = O.el("ul", "reasons small");
    for (const r of h.reasons) list.append(O.el("li", "", "−" + r.points + ": " + r.reason));
    td.append(list);
    return td;
  }

  function breachCell(b, latest) {
    const td = O.el("td", "breach");
    td.dataset.label = "Predicted breach";
    if (!b) { td.append(O.el("span", "muted", "none predicted")); return td; }
    const w = (latest || []).find((x) => x.sensor === b.sensor && x.metric === b.metric);
    const u = w ? w.unit : "";
    const what = O.series(b.sensor, b.metric);
    if (b.remaining_ms === 0) {
      td.append(O.el("span", b.severity === "critical" ? "score bad" : "score warn", what + " is across " + O.quantity(b.threshold, u)));
    } else {
      const high = b.remaining_high_ms === null ? "?" : O.duration(b.remaining_high_ms);
      td.append(O.el("span", b.maintenance_alert ? "score bad" : "", what + " reaches " + O.quantity(b.threshold, u) + " in about " + O.duration(b.remaining_ms)));
      td.append(O.el("div", "muted small", "between " + O.duration(b.remaining_low_ms) + " and " + high + " (rule " + b.rule + ")"));
    }
    return td;
  }

  function latestCell(latest) {
    const td = O.el("td");
    td.dataset.label = "Latest (1-min mean)";
    if (!latest.length) { td.append(O.el("span", "muted", "–")); return td; }
    const grid = O.el("div", "values");
    for (const w of latest) {
      const name = O.el("span", "name", O.series(w.sensor, w.metric));
      name.title = O.series(w.sensor, w.metric);
      grid.append(name, O.el("span", "value", O.quantity(w.mean, w.unit)));
    }
    td.append(grid);
    return td;
  }

  function row(d, now) {
    const tr = O.el("tr");
    tr.dataset.device = d.device;
    const name = O.el("td");
    name.dataset.label = "Device";
    name.append(O.deviceLink(d.device));
    tr.append(name);
    const status = O.el("td");
    status.dataset.label = "Status";
    const state = ["online", "offline"].includes(d.status) ? d.status : "unknown";
    status.append(O.badge(state, state));
    tr.append(status, alertsCell(d), healthCell(d.health), breachCell(d.next_breach, d.latest), latestCell(d.latest || []));
    const seen = O.el("td", "", O.age(now - d.last_seen_ms));
    seen.dataset.label = "Last heard from";
    seen.title = O.time(d.last_seen_ms);
    tr.append(seen);
    return tr;
  }

  function render(counts) {
    const now = Date.now();
    const body = document.getElementById("fleet");
    body.replaceChildren();
    if (!order.length) {
      const tr = O.el("tr");
      const td = O.el("td", "empty", total === 0 && !view.q && !view.status && !view.severity ? "No device has reported yet." : "No device matches these filters.");
      td.colSpan = 7;
      tr.append(td);
      body.append(tr);
    }
    for (const id of order) if (rows.has(id)) body.append(row(rows.get(id), now));
    if (counts) {
      const summary = document.getElementById("summary");
      summary.replaceChildren(
        O.el("b", "", counts.devices.toLocaleString()), " devices · ",
        O.el("b", "", counts.online.toLocaleString()), " online · ",
        O.el("b", "", counts.critical.toLocaleString()), " critical · ",
        O.el("b", "", counts.warning.toLocaleString()), " warning");
    }
    const first = total ? view.offset + 1 : 0;
    document.getElementById("range").textContent = first + "–" + (view.offset + order.length) + " of " + total.toLocaleString();
    document.getElementById("prev").disabled = view.offset === 0;
    document.getElementById("next").disabled = view.offset + PAGE >= total;
    document.body.dataset.rows = String(order.length);
    O.fit();
  }

  function addAlert(a) {
    const feed = document.getElementById("feed");
    document.getElementById("feed-title").hidden = false;
    const li = O.el("li");
    li.dataset.rule = a.rule;
    li.dataset.device = a.device;
    const kind = a.event === "raise" ? a.severity : "ok";
    li.append(O.badge(a.event === "raise" ? a.severity : "cleared", kind), " ", O.deviceLink(a.device),
      " " + a.rule + " " + (a.event === "raise" ? "raised" : "cleared") + ": " + O.series(a.sensor, a.metric) + " " + O.num(a.value) +
      " (level " + O.num(a.threshold) + ") at " + new Date(a.time_ms).toLocaleTimeString());
    feed.prepend(li);
    while (feed.children.length > 5) feed.lastElementChild.remove();
  }

  function setLive(state) {
    const live = document.getElementById("live");
    live.className = "live" + (state === "live" ? " on" : "");
    live.textContent = state === "live" ? "live" : "reconnecting…";
  }

  let cursor = null;
  function streamPath() {
    const p = params();
    if (cursor !== null) p.after = cursor;
    return "/api/fleet/events" + O.query(p);
  }

  async function load() {
    if (stop) { stop(); stop = null; }
    const p = params();
    history.replaceState(null, "", location.pathname + O.query({ q: view.q, status: view.status, severity: view.severity, sort: p.sort, offset: p.offset }));
    try {
      const page = await O.api("/api/fleet" + O.query(p), load);
      rows = new Map(page.rows.map((r) => [r.device, r]));
      order = page.rows.map((r) => r.device);
      total = page.total;
      render(page.counts);
      O.showError("");
    } catch (e) {
      if (e instanceof O.LoginNeeded) return;
      O.showError("Cannot reach the Osprey API (" + e.message + "); retrying…");
      setTimeout(load, 3000);
      return;
    }
    stop = O.stream(streamPath, (name, data, id) => {
      if (name === "alert") {
        if (id !== null) cursor = id;
        addAlert(data);
      } else if (name === "fleet") {
        for (const r of data.rows) rows.set(r.device, r);
        order = data.order;
        for (const k of [...rows.keys()]) if (!order.includes(k)) rows.delete(k);
        total = data.total;
        render(data.counts);
      }
    }, setLive);
  }

  function onFilter() {
    for (const k of ["q", "status", "severity", "sort"]) view[k] = document.getElementById(k).value.trim();
    view.offset = 0;
    load();
  }

  O.setUpLogin();
  readUrl();
  document.getElementById("filters").addEventListener("submit", (e) => { e.preventDefault(); onFilter(); });
  for (const k of ["status", "severity", "sort"]) document.getElementById(k).addEventListener("change", onFilter);
  document.getElementById("q").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(onFilter, 300); });
  document.getElementById("prev").addEventListener("click", () => { view.offset = Math.max(0, view.offset - PAGE); load(); });
  document.getElementById("next").addEventListener("click", () => { view.offset += PAGE; load(); });
  // Ages ("12 s ago") move on without new data.
  setInterval(() => render(null), 10000);
  load();
})();

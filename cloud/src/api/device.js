"use strict";
// A device's page: health with its reasons, alert episodes, the status timeline (a strip of
// online/offline and clock state with marks for drops, journal resets and reboots, and the same
// in words), and a chart
// per series over 1 h / 24 h / 7 d / 30 d from /api/devices/{id}/history (downsampled on the
// server): the mean with its p5–p95 band inside its min–max band, rule levels, raise/clear markers, and the predicted
// breach drawn forward with its range. Each chart has a text summary and a table of its
// numbers for screen readers; once drawn, its <figure> carries data-rendered and data-points.
// The rules the device reports it runs (/api/devices/{id}/rules): each with its levels, units
// and source, a notice of a document set for it that it has not applied yet, and of the last
// document it refused with the reason.
(() => {
  const O = Osprey;
  const RANGES = { "1h": 3600000, "24h": 86400000, "7d": 7 * 86400000, "30d": 30 * 86400000 };
  const RANGE_WORDS = { "1h": "hour", "24h": "24 hours", "7d": "7 days", "30d": "30 days" };
  const COLORS = { critical: "#a3190f", warning: "#b36200", info: "#3f4a5c" };
  const id = decodeURIComponent(location.pathname.replace(/^\/devices\//, "").replace(/\/+$/, ""));
  let range = new URLSearchParams(location.search).get("range") || "1h";
  if (!RANGES[range]) range = "1h";
  let plots = [];
  let timer = null;

  document.title = id + " · Osprey";
  document.getElementById("title").textContent = id;

  function healthView(summary) {
    const box = document.getElementById("health");
    box.replaceChildren();
    const h = summary.health;
    const cls = h.score < 50 ? "bad" : h.score < 80 ? "warn" : "good";
    box.append(O.el("p", "", ""));
    box.firstChild.append(O.el("span", "score " + cls, h.score + " / 100"), " ",
      O.badge(summary.status, ["online", "offline"].includes(summary.status) ? summary.status : "unknown"));
    if (!h.reasons.length) {
      box.append(O.el("p", "muted", "No known problem: no active alert, no trend towards a rule level, nothing unusual."));
      return;
    }
    const list = O.el("ul", "reasons");
    for (const r of h.reasons) list.append(O.el("li", "", "−" + r.points + " points: " + r.reason));
    box.append(list);
  }

  function episodeItem(e) {
    const li = O.el("li");
    li.dataset.rule = e.rule;
    li.append(O.badge(e.active ? e.severity + ", active" : e.severity, e.active ? e.severity : "ended"), " ",
      O.el("b", "", e.rule), " on " + O.series(e.sensor, e.metric) + ": ");
    const raised = e.raised_ms === null ? "raised before this range" : "raised " + O.time(e.raised_ms) + " at " + O.num(e.raised_value);
    const how = e.active ? ", active for " + O.duration(e.duration_ms)
      : e.cleared_ms !== null ? ", cleared " + O.time(e.cleared_ms) + (e.duration_ms !== null ? " after " + O.duration(e.duration_ms) : "")
      : ", no clear yet";
    li.append(raised + " (level " + O.num(e.threshold) + ")" + how);
    return li;
  }

  function alertsView(episodes) {
    const box = document.getElementById("alerts");
    box.replaceChildren();
    if (!episodes.length) { box.append(O.el("p", "muted", "No alert in this range.")); }
    else {
      const list = O.el("ul", "reasons small");
      for (const e of episodes) list.append(episodeItem(e));
      box.append(list);
    }
    const more = O.el("a", "small", "All alerts of " + id);
    more.href = "/alerts" + O.query({ device: id });
    box.append(more);
  }

  // A rule's levels in words, with the unit of its series: [threshold, clear].
  function levels(r) {
    const q = (x) => O.quantity(x, r.unit);
    const rate = (x) => O.num(x) + " " + (O.unit(r.unit) ? O.unit(r.unit) + "/s" : "per s");
    switch (r.when) {
      case "above": return ["≥ " + q(r.threshold), "below " + q(r.clear !== undefined ? r.clear : r.threshold)];
      case "below": return ["≤ " + q(r.threshold), "above " + q(r.clear !== undefined ? r.clear : r.threshold)];
      case "outside": return ["≤ " + q(r.low) + " or ≥ " + q(r.high),
        "between " + q(r.clear_low !== undefined ? r.clear_low : r.low) + " and " + q(r.clear_high !== undefined ? r.clear_high : r.high)];
      case "rate_above": return ["rate ≥ " + rate(r.threshold), "rate below " + rate(r.clear !== undefined ? r.clear : r.threshold)];
      case "rate_below": return ["rate ≤ " + rate(r.threshold), "rate above " + rate(r.clear !== undefined ? r.clear : r.threshold)];
      case "no_data": return ["no reading for " + O.duration(r.timeout_ms), "a reading arrives"];
      default: return ["–", "–"];
    }
  }

  const SOURCES = { document: "cloud document", local: "device config", server: "server (predictions only)" };

  function rulesTable(rules, caption) {
    const table = O.el("table", "cards rules");
    table.append(O.el("caption", "", caption));
    const head = O.el("tr");
    for (const h of ["Rule", "Series", "When", "Threshold", "Clears", "Severity", "Source"]) { const th = O.el("th", "", h); th.scope = "col"; head.append(th); }
    const thead = O.el("thead"); thead.append(head);
    const body = O.el("tbody");
    for (const r of rules) {
      const tr = O.el("tr");
      tr.dataset.ruleId = r.id;
      tr.dataset.source = r.source;
      const [raise, clear] = levels(r);
      const cells = [["Rule", O.el("b", "", r.id)], ["Series", O.series(r.sensor, r.metric)], ["When", r.when.replace("_", " ")],
        ["Threshold", raise], ["Clears", clear], ["Severity", O.badge(r.severity, r.severity)], ["Source", SOURCES[r.source] || r.source]];
      for (const [label, content] of cells) {
        const td = O.el("td");
        td.dataset.label = label;
        td.append(content);
        tr.append(td);
      }
      body.append(tr);
    }
    table.append(thead, body);
    return table;
  }

  function docName(d) {
    return (d.source || "a document") + (d.version !== null && d.version !== undefined ? ", version " + d.version : "");
  }

  function rulesView(view) {
    const box = document.getElementById("rules");
    const card = document.getElementById("rules-card");
    box.replaceChildren();
    if (view instanceof Error) {
      card.dataset.state = "unavailable";
      box.append(O.el("p", "muted", "The device's rules cannot be shown: " + view.message));
      return;
    }
    card.dataset.state = view.state;
    if (view.pending) {
      const p = O.el("p", "notice warn", "Pending change: a new rule document was set for this device" + (view.pending.set_ms ? " " + O.time(view.pending.set_ms) : "") +
        " and it has not applied it yet (it may be offline). It runs the rules below until it does. Document ");
      p.id = "rules-pending";
      p.append(O.el("code", "", view.pending.hash), ".");
      box.append(p);
    }
    if (view.rejected) {
      const j = view.rejected;
      const current = view.state === "rejected";
      const p = O.el("p", "notice bad", (current ? "Refused: the device refused the document set for it" : "Last refused document") +
        " (" + docName(j) + (j.time_ms ? ", " + O.time(j.time_ms) : "") + "). Reason: ");
      p.id = "rules-rejected";
      p.append(O.el("b", "", j.field + ": " + j.reason), current ? ". It keeps running the rules below." : ".");
      box.append(p);
    }
    if (view.last_change) {
      const c = view.last_change;
      const results = { applied: "applied it", rejected: "refused it", no_report: "did not report on it in time",
        not_waited: "was not waited for", not_attempted: "was not reached (the canary stopped the rollout)", unknown: "is unknown (the connection failed)" };
      const p = O.el("p", "small", "Last change from the cloud: " + c.id + ", " + O.time(c.time_ms) + ", by " + c.recorded_by +
        (c.by && c.by !== c.recorded_by ? " (" + c.by + ")" : "") + "; the device " + (results[c.result] || c.result) + ".");
      p.id = "rules-last-change";
      box.append(p);
    }
    if (view.state === "no_report") {
      box.append(O.el("p", "muted", "This device has not reported the rules it runs (remote configuration is off, or it has not connected since serve started keeping reports)."));
      if (view.server_rules.length) box.append(rulesTable(view.server_rules, "The server's rules, whose crossings are predicted for this device"));
      return;
    }
    const a = view.applied;
    const about = O.el("p", "small", a ? "Document in effect: " + docName(a) + (a.time_ms ? ", applied " + O.time(a.time_ms) : "") + "; " : "No cloud document applied: the device runs its own config; ");
    if (a) { about.append(O.el("code", "", a.hash), ". "); }
    about.append("Reported " + O.time(view.reported_ms) + ". Maintenance predictions use these rules.");
    box.append(about);
    if (!view.rules.length) box.append(O.el("p", "muted", "The device runs no rules."));
    else box.append(rulesTable(view.rules, view.rules.length + (view.rules.length === 1 ? " rule" : " rules") + " in effect"));
  }

  function gaps(hist) {
    // Buckets with no reading in any series, between the first and the last bucket with data.
    const n = hist.series.length ? hist.series[0].t.length : 0;
    const has = [];
    for (let i = 0; i < n; i++) has.push(hist.series.some((s) => s.count[i] > 0));
    const first = has.indexOf(true), last = has.lastIndexOf(true);
    const out = [];
    for (let i = first; first >= 0 && i <= last; i++) {
      if (has[i]) continue;
      let j = i;
      while (j + 1 <= last && !has[j + 1]) j++;
      out.push([hist.series[0].t[i], hist.series[0].t[j] + hist.bucket_ms]);
      i = j;
    }
    return out;
  }

  // The device's statuses over the range as [start, end, state] spans: "unknown" before the
  // first status in force, then online/offline as the statuses it held (cloud clock).
  function spans(points, from, to, stateOf) {
    const out = [];
    let cur = "unknown", start = from;
    for (const p of points) {
      const at = Math.min(Math.max(p.at_ms, from), to);
      const state = stateOf(p);
      if (state === null || state === cur) continue;
      if (at > start) out.push([start, at, cur]);
      cur = state; start = at;
    }
    if (to > start) out.push([start, to, cur]);
    return out;
  }

  // Marks to draw over the strip: drops, journal resets and replacements, reboots, clock changes.
  function statusMarks(hist) {
    const t = hist.timeline, out = [];
    for (const p of t.statuses) {
      if (p.at_ms < hist.from_ms) continue;
      if (p.changes.includes("drops")) out.push([p.at_ms, "drops", p.new_drops + " reading(s) dropped by the gateway (" + p.dropped + " counted so far" + (p.dropped_quota ? ", " + p.dropped_quota + " by the journal quota" : "") + ")"]);
      if (p.changes.includes("journal_reset")) out.push([p.at_ms, "reset", "The gateway found its journal corrupt and started a fresh one (" + p.new_resets + " time(s))"]);
      if (p.changes.includes("reboot")) out.push([p.at_ms, "reboot", "The gateway rebooted (new boot id)"]);
      if (p.changes.includes("clock")) out.push([p.at_ms, "clock", "Clock " + (p.clock === "unsynced" ? "unsynchronised: reading times may be off" : p.clock === "synced" ? "synchronised" : "state unknown")]);
    }
    for (const e of t.events) {
      if (e.time_ms >= hist.from_ms && e.time_ms < hist.to_ms) out.push([e.time_ms, "reset", "Journal replaced (epoch " + e.old_epoch + " → " + e.new_epoch + ")"]);
    }
    return out.sort((a, b) => a[0] - b[0]);
  }

  function stripView(hist) {
    const t = hist.timeline;
    const from = hist.from_ms, to = Math.max(from + 1, Math.min(hist.to_ms, Date.now()));
    const conn = spans(t.statuses, from, to, (p) => p.state);
    const clock = spans(t.statuses, from, to, (p) => p.source === "status" ? p.clock : null);
    const marks = statusMarks(hist);
    const W = 1000, H = 64;
    const x = (ms) => ((ms - from) / (hist.to_ms - from)) * W;
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    const rect = (x0, x1, y, h, cls) => {
      const r = document.createElementNS(NS, "rect");
      r.setAttribute("x", x0); r.setAttribute("y", y);
      r.setAttribute("width", Math.max(1, x1 - x0)); r.setAttribute("height", h);
      r.setAttribute("class", cls);
      svg.append(r);
    };
    for (const [a, b, st] of conn) rect(x(a), x(b), 4, 24, "s-" + st);
    for (const [a, b, st] of clock) rect(x(a), x(b), 32, 10, st === "unsynced" ? "s-unsynced" : st === "synced" ? "s-synced" : "s-unknown");
    for (const [at, kind] of marks) rect(x(at) - 2, x(at) + 2, 44, 18, "m-" + kind);
    const plot = document.getElementById("strip-plot");
    plot.replaceChildren(svg);

    // The same in words, for everyone.
    const dur = { online: 0, offline: 0, unknown: 0 };
    for (const [a, b, st] of conn) dur[st] += b - a;
    const outages = conn.filter((s) => s[2] === "offline").length;
    const unsynced = clock.filter((s) => s[2] === "unsynced").reduce((n, [a, b]) => n + b - a, 0);
    const drops = t.statuses.filter((p) => p.at_ms >= from).reduce((n, p) => n + p.new_drops, 0);
    const parts = [];
    if (!t.statuses.length) parts.push("No status recorded for this range" + (t.recorded_since_ms === null ? ": the device has sent none since the store began keeping them." : "."));
    else {
      parts.push("Last " + RANGE_WORDS[range] + " (cloud clock): online " + O.duration(dur.online) + ", offline " + O.duration(dur.offline) + " in " + outages + (outages === 1 ? " period" : " periods") + (dur.unknown ? ", no status known " + O.duration(dur.unknown) : "") + ".");
      parts.push(unsynced ? "Clock unsynchronised for " + O.duration(unsynced) + "." : "Clock never reported unsynchronised.");
      parts.push(drops ? drops + " reading(s) dropped." : "No readings dropped.");
      const last = [...t.statuses].reverse().find((p) => p.source === "status");
      if (last) parts.push("Journal backlog at the last status: " + last.backlog + " message(s)" + (last.backlog_bytes ? ", " + last.backlog_bytes + " bytes" : "") + ".");
    }
    if (t.recorded_since_ms !== null && t.recorded_since_ms > from) parts.push("Status history starts " + O.time(t.recorded_since_ms) + ".");
    if (t.statuses_truncated) parts.push("Too many changes in this range: the oldest are left out.");
    const text = parts.join(" ");
    plot.setAttribute("aria-label", "Status over the range. " + text);
    document.getElementById("strip-summary").textContent = text;
    const fig = document.getElementById("strip");
    fig.dataset.drawn = "true";
    fig.dataset.spans = conn.map((s) => s[2]).join(",");
    fig.dataset.clock = clock.map((s) => s[2]).join(",");
    fig.dataset.marks = marks.map((m) => m[1]).join(",");
    return marks;
  }

  function timelineView(hist, marks) {
    const t = hist.timeline;
    const items = [];
    const now = Date.now();
    const state = t.status === "unknown" ? "no status message received yet" : t.status;
    items.push([t.status_ms || now, "Status: " + state + (t.status_ms ? " (received " + O.time(t.status_ms) + ")" : ""), t.status === "offline" ? "bad" : t.status === "online" ? "good" : ""]);
    items.push([t.last_seen_ms, "Last message received " + O.time(t.last_seen_ms) + " (" + O.age(now - t.last_seen_ms) + ")", ""]);
    if (t.last_event_ms !== null) {
      const lag = t.last_seen_ms - t.last_event_ms;
      const off = Math.abs(lag) > 5 * 60000;
      items.push([t.last_event_ms, "Newest reading time (device clock) " + O.time(t.last_event_ms) + "; received " + O.duration(Math.abs(lag)) + (lag >= 0 ? " later" : " earlier") + (off ? ": the device clock may be off, or it is sending a backlog" : ""), off ? "bad" : ""]);
    }
    for (const p of t.statuses) {
      if (p.at_ms >= hist.from_ms && p.changes.includes("state")) items.push([p.at_ms, (p.state === "online" ? "Online" : "Offline") + " from " + O.time(p.at_ms) + (p.source === "presence" ? " (broker connection event)" : ""), p.state === "offline" ? "bad" : "good"]);
    }
    for (const [at, kind, text] of marks) items.push([at, O.time(at) + ": " + text, kind === "clock" && text.includes("synchronised:") ? "bad" : kind === "clock" ? "" : "bad"]);
    for (const e of t.events) {
      if (e.time_ms < hist.from_ms) items.push([e.time_ms, e.kind === "journal_replaced" ? "Journal replaced (epoch " + e.old_epoch + " → " + e.new_epoch + "): the device numbers its messages anew (re-flashed card or replaced gateway); nothing it sent before is lost" : e.kind, "bad"]);
    }
    for (const [from, to] of gaps(hist)) items.push([from, "No data from " + O.time(from) + " for " + O.duration(to - from), "bad"]);
    items.push([t.first_seen_ms, "First message received " + O.time(t.first_seen_ms), ""]);
    items.sort((a, b) => b[0] - a[0]);
    const list = document.getElementById("timeline");
    list.replaceChildren(...items.slice(0, 40).map(([, text, cls]) => O.el("li", cls, text)));
    document.getElementById("not-recorded").replaceChildren(...t.not_recorded.map((x) => O.el("li", "", x)));
  }

  function summaryText(s, hist) {
    const u = s.unit;
    const means = s.mean.filter((x) => x !== null);
    const parts = [];
    const readings = s.count.reduce((a, b) => a + b, 0);
    if (!means.length) parts.push("No data in the last " + RANGE_WORDS[range] + ".");
    else {
      let lo = Infinity, hi = -Infinity, sum = 0;
      s.min.forEach((x) => { if (x !== null) lo = Math.min(lo, x); });
      s.max.forEach((x) => { if (x !== null) hi = Math.max(hi, x); });
      s.mean.forEach((x, i) => { if (x !== null) sum += x * s.count[i]; });
      parts.push("Last " + RANGE_WORDS[range] + ": " + s.windows.toLocaleString() + (s.windows === 1 ? " one-minute window, " : " one-minute windows, ") + readings.toLocaleString() + " readings, mean " + O.quantity(sum / readings, u) + ", lowest " + O.quantity(lo, u) + ", highest " + O.quantity(hi, u) + "; newest " + O.quantity(means[means.length - 1], u) + ".");
    }
    if (means.length && s.p95.every((x) => x === null)) parts.push("The range is too long for a p5–p95 band; the band shows min–max.");
    const fixes = s.corrections.reduce((a, b) => a + b, 0);
    parts.push(s.corrected_windows ? s.corrected_windows + " window(s) corrected by late data (" + fixes + " correction(s))." : "No window corrected by late data.");
    for (const th of s.thresholds) parts.push(th.severity + " level " + O.quantity(th.level, u) + " (rule " + th.rule + ").");
    const p = s.signals && s.signals.predictions.length ? s.signals.predictions[0] : null;
    if (p) {
      if (p.remaining_ms === 0) parts.push("Already across the " + p.severity + " level " + O.quantity(p.threshold, u) + " (rule " + p.rule + ").");
      else {
        const low = O.duration(p.remaining_low_ms);
        const high = p.remaining_high_ms === null ? "an unknown time" : O.duration(p.remaining_high_ms);
        const range = low === high ? "" : "between " + low + " and " + high + ", ";
        parts.push("Predicted to reach the " + p.severity + " level " + O.quantity(p.threshold, u) + " in about " + O.duration(p.remaining_ms) + " (" + range + "rule " + p.rule + ").");
      }
    }
    return parts.join(" ");
  }

  function dataTable(s, hist) {
    const details = O.el("details");
    details.append(O.el("summary", "", "Numbers"));
    const wrap = O.el("div", "scroll");
    const table = O.el("table");
    const idx = [];
    for (let i = s.t.length - 1; i >= 0 && idx.length < 60; i--) if (s.count[i] > 0) idx.push(i);
    table.append(O.el("caption", "", "Newest " + idx.length + " buckets of " + O.duration(hist.bucket_ms) + ", unit " + (O.unit(s.unit) || "none")));
    const head = O.el("tr");
    for (const h of ["Start", "Mean", "Min", "p5", "p95", "Max", "Readings", "Corrections"]) { const th = O.el("th", h === "Start" ? "" : "num", h); th.scope = "col"; head.append(th); }
    const thead = O.el("thead"); thead.append(head);
    const body = O.el("tbody");
    for (const i of idx) {
      const tr = O.el("tr");
      tr.append(O.el("td", "", O.time(s.t[i])), O.el("td", "num", O.num(s.mean[i])), O.el("td", "num", O.num(s.min[i])),
        O.el("td", "num", O.num(s.p5[i])), O.el("td", "num", O.num(s.p95[i])), O.el("td", "num", O.num(s.max[i])), O.el("td", "num", String(s.count[i])), O.el("td", "num", String(s.corrections[i])));
      body.append(tr);
    }
    table.append(thead, body);
    wrap.append(table);
    details.append(wrap);
    return details;
  }

  function markers(hist, s) {
    return hist.alerts.filter((a) => a.sensor === s.sensor && a.metric === s.metric);
  }

  function chart(s, hist) {
    const fig = O.el("figure", "chart");
    fig.dataset.series = s.sensor + "/" + s.metric;
    const caption = O.el("figcaption", "", O.series(s.sensor, s.metric) + (O.unit(s.unit) ? " (" + O.unit(s.unit) + ")" : ""));
    caption.title = caption.textContent;
    const plot = O.el("div", "plot");
    const text = summaryText(s, hist);
    plot.setAttribute("role", "img");
    plot.setAttribute("aria-label", "Chart of " + O.series(s.sensor, s.metric) + ". " + text);
    fig.append(caption, plot, O.el("p", "small", text), dataTable(s, hist));

    const half = hist.bucket_ms / 2;
    const xs = s.t.map((t) => (t + half) / 1000);
    const p = s.signals && s.signals.predictions.length ? s.signals.predictions[0] : null;
    const trend = s.signals ? s.signals.trend : null;
    const span = hist.to_ms - hist.from_ms;
    let xmax = hist.to_ms;
    if (p && p.remaining_ms > 0) {
      const far = p.remaining_high_ms === null ? p.crossing_ms : s.signals.as_of_ms + p.remaining_high_ms;
      // Room for the crossing's marker past the latest crossing time.
      xmax = Math.max(xmax, Math.min(far + span / 30, hist.to_ms + span / 2));
    }
    const levels = s.thresholds.map((t) => t.level);
    if (p) levels.push(p.threshold);
    let lo = Infinity, hi = -Infinity;
    for (const arr of [s.min, s.max]) for (const v of arr) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    for (const v of levels) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    const pad = (hi - lo) * 0.08 || 1;
    const marks = markers(hist, s);
    let points = 0;
    for (const v of s.mean) if (v !== null) points++;

    function draw(u) {
      const ctx = u.ctx;
      const { left, top, width, height } = u.bbox;
      ctx.save();
      ctx.beginPath();
      ctx.rect(left, top, width, height);
      ctx.clip();
      const dpr = devicePixelRatio || 1;
      ctx.lineWidth = 1.5 * dpr;
      for (const th of s.thresholds) {
        const y = u.valToPos(th.level, "y", true);
        ctx.strokeStyle = COLORS[th.severity] || COLORS.info;
        ctx.setLineDash([6 * dpr, 4 * dpr]);
        ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + width, y); ctx.stroke();
        ctx.setLineDash([]);
        ctx.fillStyle = ctx.strokeStyle;
        ctx.font = (11 * dpr) + "px system-ui, sans-serif";
        ctx.textAlign = "left";
        ctx.textBaseline = "bottom";
        // Above the line, or below it when the line is at the top of the plot.
        const labelY = y - 16 * dpr < top ? y + 14 * dpr : y - 4 * dpr;
        ctx.fillText(th.rule + " " + O.num(th.level), left + 4 * dpr, labelY);
      }
      for (const a of marks) {
        const x = u.valToPos(a.time_ms / 1000, "x", true);
        ctx.strokeStyle = a.event === "raise" ? "#a3190f" : "#0d6b4c";
        ctx.setLineDash(a.event === "raise" ? [] : [3 * dpr, 3 * dpr]);
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
        ctx.setLineDash([]);
        ctx.fillStyle = ctx.strokeStyle;
        ctx.beginPath(); ctx.arc(x, top + 6 * dpr, 4 * dpr, 0, 2 * Math.PI); ctx.fill();
      }
      if (p && p.remaining_ms > 0 && trend) {
        ctx.strokeStyle = "#6b21a8";
        ctx.fillStyle = "rgba(107, 33, 168, 0.18)";
        const x0 = u.valToPos(s.signals.as_of_ms / 1000, "x", true), y0 = u.valToPos(trend.level, "y", true);
        const x1 = u.valToPos(p.crossing_ms / 1000, "x", true), y1 = u.valToPos(p.threshold, "y", true);
        const lowX = u.valToPos((s.signals.as_of_ms + p.remaining_low_ms) / 1000, "x", true);
        const highX = p.remaining_high_ms === null ? left + width : u.valToPos((s.signals.as_of_ms + p.remaining_high_ms) / 1000, "x", true);
        // The range of crossing times: a cone from now to the earliest and latest crossing.
        ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(lowX, y1); ctx.lineTo(highX, y1); ctx.closePath(); ctx.fill();
        ctx.setLineDash([4 * dpr, 3 * dpr]);
        ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
        ctx.setLineDash([]);
        ctx.beginPath(); ctx.arc(x1, y1, 4 * dpr, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      }
      ctx.restore();
      fig.dataset.rendered = "true";
      fig.dataset.points = String(points);
      fig.dataset.thresholds = String(s.thresholds.length);
      fig.dataset.markers = String(marks.length);
      fig.dataset.prediction = p && p.remaining_ms > 0 ? "true" : "false";
    }

    const opts = {
      width: 600, height: 220,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: () => [hist.from_ms / 1000, xmax / 1000] }, y: { range: () => [lo - pad, hi + pad] } },
      axes: [{ stroke: "#4f596b", grid: { stroke: "#eceef2" } }, { stroke: "#4f596b", grid: { stroke: "#eceef2" }, size: 56, values: (u, v) => v.map((x) => O.num(x)) }],
      series: [
        {},
        { label: "mean", stroke: "#1a4fb5", width: 2, spanGaps: false, points: { show: points < 3 } },
        { label: "min", stroke: "rgba(26, 79, 181, 0.25)", width: 1, points: { show: false } },
        { label: "max", stroke: "rgba(26, 79, 181, 0.25)", width: 1, points: { show: false } },
        { label: "p5", stroke: "rgba(26, 79, 181, 0)", width: 0, points: { show: false } },
        { label: "p95", stroke: "rgba(26, 79, 181, 0)", width: 0, points: { show: false } },
      ],
      bands: [{ series: [3, 2], fill: "rgba(26, 79, 181, 0.10)" }, { series: [5, 4], fill: "rgba(26, 79, 181, 0.22)" }],
      hooks: { draw: [draw] },
    };
    return { fig, plot, opts, data: [xs, s.mean, s.min, s.max, s.p5, s.p95] };
  }

  function chartsView(hist) {
    for (const u of plots) u.destroy();
    plots = [];
    const box = document.getElementById("charts");
    box.replaceChildren();
    if (!hist.series.length) { box.append(O.el("p", "empty", "This device has sent no readings yet.")); return; }
    const made = hist.series.map((s) => chart(s, hist));
    for (const c of made) box.append(c.fig);
    for (const c of made) {
      c.opts.width = Math.max(200, c.plot.clientWidth || 600);
      plots.push(new uPlot(c.opts, c.data, c.plot));
    }
  }

  function resize() {
    for (const u of plots) {
      const w = u.root.parentElement.clientWidth;
      if (w && Math.abs(w - u.width) > 4) u.setSize({ width: Math.max(200, w), height: 220 });
    }
  }

  async function load() {
    clearTimeout(timer);
    for (const b of document.querySelectorAll("[data-range]")) b.setAttribute("aria-pressed", String(b.dataset.range === range));
    try {
      // The rules are shown or explained on their own: a state without them (DynamoDB) still
      // shows the rest of the page.
      const rules = O.api(O.devicePath(id, "/rules"), load).catch((e) => e);
      const [summary, hist] = await Promise.all([
        O.api(O.devicePath(id), load),
        O.api(O.devicePath(id, "/history" + O.query({ range, points: 240 })), load),
      ]);
      const episodes = await O.api("/api/alerts/episodes" + O.query({ device: id, from_ms: hist.from_ms, limit: 50 }), load);
      healthView(summary);
      alertsView(episodes);
      const view = await rules;
      if (view instanceof O.LoginNeeded) return;
      rulesView(view);
      timelineView(hist, stripView(hist));
      chartsView(hist);
      document.getElementById("live").textContent = "updated " + new Date().toLocaleTimeString();
      O.showError("");
      document.body.dataset.loaded = "true";
      O.fit();
    } catch (e) {
      if (e instanceof O.LoginNeeded) return;
      O.showError(e.message.includes("has reported") ? e.message : "Cannot load this device (" + e.message + "); retrying…");
    }
    // The 1-hour view follows the device; longer ranges change slowly.
    timer = setTimeout(load, range === "1h" ? 15000 : 120000);
  }

  O.setUpLogin();
  for (const b of document.querySelectorAll("[data-range]")) {
    b.addEventListener("click", () => {
      range = b.dataset.range;
      history.replaceState(null, "", location.pathname + O.query({ range: range === "1h" ? "" : range }));
      load();
    });
  }
  window.addEventListener("resize", resize);
  load();
})();

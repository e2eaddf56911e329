"use strict";
// What every page of the dashboard shares: the API token, fetching, reading a server-sent
// event stream, units and number formats, small DOM helpers. Pages load this file first, then
// their own script (/assets/fleet.js, device.js, alerts.js).
//
// The API token is asked for once per browser tab and kept in sessionStorage (gone when the
// tab closes); every request sends it as `Authorization: Bearer`. A server without a token
// ignores the header. Event streams are read with fetch, not EventSource, because EventSource
// cannot send that header.
const Osprey = (() => {
  const TOKEN_KEY = "osprey-api-token";

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  // UCUM codes as people write them (the API keeps the codes devices send).
  const UNITS = { "Cel": "°C", "[degF]": "°F", "K": "K", "m/s2": "m/s²", "[ppm]": "ppm", "[psi]": "psi", "kPa": "kPa", "%": "%", "mm/s": "mm/s", "1": "" };
  function unit(code) {
    if (!code) return "";
    return Object.prototype.hasOwnProperty.call(UNITS, code) ? UNITS[code] : code;
  }

  function num(x) {
    if (x === null || x === undefined || !isFinite(x)) return "–";
    const a = Math.abs(x);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return x.toExponential(2);
    const digits = a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
    return x.toFixed(digits);
  }

  function quantity(x, code) {
    const u = unit(code);
    return u ? num(x) + " " + u : num(x);
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return "–";
    const min = ms / 60000;
    if (min < 1) return Math.max(0, Math.round(ms / 1000)) + " s";
    if (min < 120) return Math.round(min) + " min";
    if (min < 48 * 60) return (min / 60).toFixed(1) + " h";
    return (min / 1440).toFixed(1) + " days";
  }

  function age(ms) {
    return duration(Math.max(0, ms)) + " ago";
  }

  function time(ms) {
    return ms === null || ms === undefined ? "–" : new Date(ms).toLocaleString();
  }

  function series(sensor, metric) {
    return sensor + " " + metric;
  }

  function deviceLink(id) {
    const a = el("a", "device", id);
    a.href = "/devices/" + encodeURIComponent(id);
    return a;
  }

  function badge(text, kind) {
    return el("span", "badge " + kind, text);
  }

  function headers() {
    const h = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) h["Authorization"] = "Bearer " + token;
    return h;
  }

  // The login form: shown when the API answers 401; what asked runs again once a token is
  // given (each function once, however many of its requests were refused).
  const retries = new Set();
  function askForToken(then) {
    if (then) retries.add(then);
    sessionStorage.removeItem(TOKEN_KEY);
    const login = document.getElementById("login");
    login.hidden = false;
    document.getElementById("token").focus();
  }

  function setUpLogin() {
    const login = document.getElementById("login");
    if (!login) return;
    login.addEventListener("submit", (event) => {
      event.preventDefault();
      const input = document.getElementById("token");
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      input.value = "";
      login.hidden = true;
      const again = [...retries];
      retries.clear();
      for (const r of again) r();
    });
  }

  class LoginNeeded extends Error {}

  function showError(message) {
    const box = document.getElementById("error");
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
  }

  // GET an API path as JSON; a 401 shows the login form (and `then` runs after it).
  async function api(path, then) {
    const response = await fetch(path, { cache: "no-store", headers: headers() });
    if (response.status === 401) {
      askForToken(then);
      throw new LoginNeeded("the API needs its token");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
    return body;
  }

  // Reads the server-sent events of `path` and calls onEvent(name, data, id) for each; when the
  // stream ends or fails, reconnects after a pause with `pathFor()` (which may carry a cursor).
  // Returns a function that stops it. onState("live" | "reconnecting") reports the connection.
  function stream(pathFor, onEvent, onState) {
    const controller = new AbortController();
    let pause = 1000;
    async function run() {
      while (!controller.signal.aborted) {
        try {
          const response = await fetch(pathFor(), { cache: "no-store", headers: headers(), signal: controller.signal });
          if (response.status === 401) { askForToken(run); return; }
          if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
          onState("live");
          pause = 1000;
          const reader = response.body.getReader();
          const decoder = new TextDecoder();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true });
            let end;
            while ((end = buffer.indexOf("\n\n")) >= 0) {
              dispatch(buffer.slice(0, end), onEvent);
              buffer = buffer.slice(end + 2);
            }
          }
        } catch (e) {
          if (controller.signal.aborted) return;
        }
        onState("reconnecting");
        await new Promise((r) => setTimeout(r, pause));
        pause = Math.min(pause * 2, 15000);
      }
    }
    run();
    return () => controller.abort();
  }

  function dispatch(block, onEvent) {
    let name = "message", id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
    if (!data.length) return;
    let parsed;
    try { parsed = JSON.parse(data.join("\n")); } catch (e) { parsed = data.join("\n"); }
    onEvent(name, parsed, id);
  }

  // The query string of `params`, without empty values.
  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v !== null && v !== undefined && v !== "") q.set(k, v);
    }
    const s = q.toString();
    return s ? "?" + s : "";
  }

  // The API path of a device's resources.
  function devicePath(id, rest) {
    return "/api/devices/" + encodeURIComponent(id) + (rest || "");
  }

  // Marks the page with whether it is wider than the window (data-overflow on <html>): the
  // phone layout must never scroll sideways. Pages call it after they render.
  function fit() {
    const root = document.documentElement;
    const wide = root.scrollWidth > root.clientWidth + 1;
    root.dataset.overflow = String(wide);
    if (!wide) { delete root.dataset.overflowAt; return; }
    // Name the innermost element that sticks out, for whoever has to fix it.
    let found = null;
    for (const node of document.body.querySelectorAll("*")) {
      if (node.getBoundingClientRect().right > root.clientWidth + 1) found = node;
    }
    if (found) root.dataset.overflowAt = found.tagName.toLowerCase() + (found.id ? "#" + found.id : "") + (found.className && typeof found.className === "string" ? "." + found.className.split(" ").join(".") : "");
  }

  return { fit, el, unit, num, quantity, duration, age, time, series, deviceLink, badge, api, stream, query, devicePath, setUpLogin, showError, LoginNeeded };
})();

// The dashboard's core: the shared state, the controls, loading and the
// live updates. What the page shows is drawn by the views in views/, each
// owning one <section class="view"> of index.html.
//
// A view is an object:
//
//   id       its section's id in index.html
//   load     optional, async (state) => data: the view's own JSON, fetched
//            beside the series on every refresh
//   render   (state, data): draws the section from state.data (the series
//            of the chosen range) and its own data; called after every
//            refresh, on control changes, and every 5 s (times "ago" move)
//
// To add a view: a module in views/, its section in index.html, and one
// line in the views list below.

import { $, getJSON, hhmm, RANGE_LABEL } from "./lib.js";
import health from "./views/health.js";
import attention from "./views/attention.js";
import flows from "./views/flows.js";
import table from "./views/table.js";
import malformed from "./views/malformed.js";
import paths from "./views/paths.js";

const views = [attention, flows, table, paths, malformed];

const state = {
  range: "1h", mode: "lines", filter: "", data: null, lastOK: 0,
  // matches tells whether the filter keeps a flow (metric undefined) or one
  // of its metrics.
  matches(flow, metric) {
    const q = state.filter;
    return !q || flow.toLowerCase().includes(q) || (metric !== undefined && metric.toLowerCase().includes(q));
  },
};
const loaded = new Map(); // view -> its data

// Render timings, and the series drawn last, read by the browser test.
const stats = window.__flowmetricsRender = { renders: 0, lastMs: 0, maxMs: 0, totalMs: 0, data: null };
function render() {
  const t = performance.now();
  stats.data = state.data;
  $("empty").hidden = state.data.flows.length > 0;
  for (const v of views) v.render(state, loaded.get(v));
  const ms = performance.now() - t;
  stats.renders++; stats.lastMs = ms; stats.totalMs += ms; stats.maxMs = Math.max(stats.maxMs, ms);
}

// Loading --------------------------------------------------------------
let inflight = false, again = false;
async function refresh() {
  if (inflight) { again = true; return; }
  inflight = true;
  try {
    const [data, ...own] = await Promise.all([getJSON("series?range=" + state.range), ...views.map((v) => v.load ? v.load(state) : null)]);
    if (data.range !== state.range) { again = true; return; }
    state.data = data; state.lastOK = Date.now();
    views.forEach((v, i) => loaded.set(v, own[i]));
    render();
    setStatus(true);
  } catch (e) {
    setStatus(false, e);
  } finally {
    inflight = false;
    if (again) { again = false; refresh(); }
  }
}
async function refreshHealth() {
  try {
    health.render(state, await health.load(state));
  } catch (e) { setStatus(false, e); }
}
function setStatus(ok, err) {
  const st = $("status");
  st.classList.toggle("bad", !ok);
  st.textContent = ok ? "live · updated " + hhmm(Date.now(), true) : "cannot reach the server (" + (err && err.message || err) + "); retrying";
}

// Controls ---------------------------------------------------------------
function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  if (RANGE_LABEL[p.get("range")]) state.range = p.get("range");
  if (p.get("mode") === "stacked") state.mode = "stacked";
  state.filter = (p.get("q") || "").toLowerCase();
  $("filter").value = p.get("q") || "";
}
function writeHash() {
  const p = new URLSearchParams();
  p.set("range", state.range);
  if (state.mode !== "lines") p.set("mode", state.mode);
  if ($("filter").value) p.set("q", $("filter").value);
  history.replaceState(null, "", "#" + p.toString());
}
function pressed() {
  for (const b of $("ranges").children) b.setAttribute("aria-pressed", String(b.dataset.range === state.range));
  for (const b of $("modes").children) b.setAttribute("aria-pressed", String(b.dataset.mode === state.mode));
}
$("ranges").addEventListener("click", (ev) => {
  const b = ev.target.closest("button");
  if (!b || b.dataset.range === state.range) return;
  state.range = b.dataset.range;
  pressed(); writeHash(); refresh();
});
$("modes").addEventListener("click", (ev) => {
  const b = ev.target.closest("button");
  if (!b) return;
  state.mode = b.dataset.mode;
  pressed(); writeHash();
  if (state.data) render();
});
$("filter").addEventListener("input", () => {
  state.filter = $("filter").value.trim().toLowerCase();
  writeHash();
  if (state.data) render();
});
let resizeTimer = 0;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => { if (state.data) render(); }, 150);
});
// A view asks for a redraw (e.g. after a click inside it).
document.addEventListener("flowmetrics:render", () => { if (state.data) render(); });

// Live -----------------------------------------------------------------
// The server pushes "change" on every delivery; polling is the fallback.
let es = null, failures = 0, lastRefresh = 0, timer = 0;
// At most two refreshes a second, however often the server announces.
function soon() {
  if (timer) return;
  const wait = Math.max(0, lastRefresh + 500 - Date.now());
  timer = setTimeout(() => { timer = 0; lastRefresh = Date.now(); refresh(); }, wait);
}
// The server ends each stream after its lifetime (10 min) and the browser
// reconnects by itself a second later. When the server refuses a stream
// (every slot taken), or it keeps failing, the page polls and tries again
// in 30 s.
function connect() {
  if (!window.EventSource) return;
  es = new EventSource("api/v1/stream");
  es.addEventListener("change", () => { failures = 0; soon(); });
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED || ++failures > 5) {
      es.close(); es = null; failures = 0;
      setTimeout(connect, 30000);
    }
  };
}
readHash(); pressed();
refresh(); refreshHealth(); connect();
setInterval(refreshHealth, 2000);
// Time moves on even when nothing arrives: shift the axes, and poll when
// there is no event stream.
setInterval(() => { if (!es || Date.now() - state.lastOK > 5000) refresh(); }, 1000);
setInterval(() => { if (state.data) render(); }, 5000);

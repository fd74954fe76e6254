// A chart per flow: its metrics' occurrences per bucket of attribute time,
// with a legend (click to hide a metric) and values under the pointer.

import { $, el, sv, nf, nf1, hhmm, nice, order, visibleFlows, RANGE_LABEL } from "../lib.js";

const DASHES = ["", "7 3", "2 2.5", "9 3 2 3", "4 4"];
const MARKERS = ["circle", "square", "triangle", "diamond"];
const NCOLORS = 8;
const cards = new Map(); // flow -> {el, svg, legend, tip, sig, ...}
const hidden = {};       // flow\0metric -> true when hidden
let state = null;

export default {
  id: "flows-view",
  render(s) {
    state = s;
    const vis = visibleFlows(s);
    $("charts-head").hidden = s.data.flows.length === 0;
    const want = new Set(vis.map((v) => v.f.flow));
    for (const [flow, c] of cards) if (!want.has(flow)) { c.el.remove(); cards.delete(flow); }
    const els = [];
    for (const v of vis) {
      let c = cards.get(v.f.flow);
      if (!c) { c = makeCard(v.f.flow); cards.set(v.f.flow, c); }
      els.push(c.el);
    }
    order($("charts"), els); // the order of the API (by flow name)
    for (const v of vis) drawCard(cards.get(v.f.flow), v);
  },
};

function makeCard(flow) {
  const e = el("section", { class: "flow" });
  e.dataset.flow = flow;
  const h = el("h3");
  h.append(el("span", { class: "name" }, flow), el("span", { class: "sum" }));
  const svg = sv("svg", { class: "chart", role: "img" });
  const legend = el("ul", { class: "legend" });
  const tip = el("div", { class: "tip", role: "tooltip" });
  tip.hidden = true;
  e.append(h, svg, legend, tip);
  const c = { el: e, svg, legend, tip, sig: "", flow, hover: -1, view: null };
  svg.addEventListener("pointermove", (ev) => hover(c, ev));
  svg.addEventListener("pointerdown", (ev) => hover(c, ev));
  svg.addEventListener("pointerleave", () => hover(c, null));
  legend.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); ev.target.closest("li")?.click(); }
  });
  legend.addEventListener("click", (ev) => {
    const li = ev.target.closest("li");
    if (!li) return;
    const k = flow + "\0" + li.dataset.metric;
    hidden[k] = !hidden[k];
    c.sig = "";
    document.dispatchEvent(new Event("flowmetrics:render"));
  });
  return c;
}
function styleOf(i) {
  return { color: "var(--c" + (i % NCOLORS) + ")", dash: DASHES[i % DASHES.length], marker: MARKERS[i % MARKERS.length] };
}
function marker(kind, x, y, color, r) {
  r = r || 3.2;
  let e;
  if (kind === "circle") e = sv("circle", { cx: x, cy: y, r: r });
  else if (kind === "square") e = sv("rect", { x: x - r, y: y - r, width: 2 * r, height: 2 * r });
  else if (kind === "triangle") e = sv("path", { d: `M${x},${y - r * 1.2}L${x + r * 1.1},${y + r * .9}L${x - r * 1.1},${y + r * .9}Z` });
  else e = sv("path", { d: `M${x},${y - r * 1.3}L${x + r * 1.1},${y}L${x},${y + r * 1.3}L${x - r * 1.1},${y}Z` });
  e.setAttribute("fill", color);
  e.setAttribute("stroke", "var(--card)");
  e.setAttribute("stroke-width", "1");
  return e;
}
function drawCard(c, v) {
  const d = state.data;
  const width = Math.max(220, Math.round(c.svg.clientWidth || c.el.clientWidth || 400));
  const height = Math.round(c.svg.clientHeight || 190);
  const shown = v.metrics.filter(({ m }) => !hidden[v.f.flow + "\0" + m.metric]);
  const sig = [d.range, d.start, state.mode, width, height, v.metrics.map(({ m }) => m.metric + (hidden[v.f.flow + "\0" + m.metric] ? "-" : "+") + (m.counts ? m.counts.join(",") : "")).join(";")].join("|");
  let inRange = 0;
  for (const { m } of v.metrics) inRange += m.in_range;
  c.el.querySelector(".sum").textContent = nf.format(inRange) + " in " + RANGE_LABEL[d.range];
  if (sig === c.sig) return;
  c.sig = sig;
  const n = d.buckets, step = d.step_seconds * 1000, t0 = Date.parse(d.start);
  const L = 46, R = 10, T = 8, B = 22, W = width - L - R, H = height - T - B;
  const series = shown.map(({ m, i }) => ({ m, i, st: styleOf(i), vals: m.counts || new Array(n).fill(0) }));
  // Stacked: each series sits on the sum of those before it.
  const base = new Array(n).fill(0);
  for (const s of series) {
    s.lo = base.slice();
    if (state.mode === "stacked") for (let k = 0; k < n; k++) base[k] += s.vals[k];
    s.hi = state.mode === "stacked" ? base.slice() : s.vals;
  }
  let ymax = 0;
  for (const s of series) for (const x of s.hi) if (x > ymax) ymax = x;
  // Whole-number ticks: about four of a round step.
  const tstep = Math.max(1, nice(ymax / 4));
  const yTicks = Math.max(2, Math.ceil(ymax / tstep));
  const top = tstep * yTicks;
  const xs = (k) => L + (n <= 1 ? W / 2 : (k * W) / (n - 1));
  const ys = (y) => T + H - (y / top) * H;
  c.view = { n, t0, step, xs, ys, L, W, T, H, series, width };

  const svg = c.svg;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("aria-label", `${v.f.flow}: occurrences per ${d.step_seconds >= 60 ? d.step_seconds / 60 + " min" : d.step_seconds + " s"} over the last ${RANGE_LABEL[d.range]}, ${shown.length} metrics`);
  const grid = sv("g", { class: "grid" }), yax = sv("g", { class: "axis y-axis" }), xax = sv("g", { class: "axis x-axis" });
  for (let k = 0; k <= yTicks; k++) {
    const val = (top * k) / yTicks, y = ys(val);
    grid.append(sv("line", { x1: L, x2: L + W, y1: y, y2: y }));
    const t = sv("text", { x: L - 5, y: y + 3.5, "text-anchor": "end" });
    t.textContent = val >= 1000 ? nf1.format(val / 1000) + "k" : nf1.format(val);
    yax.append(t);
  }
  // Time ticks at round times: about one per 90 px.
  const span = (n - 1) * step, want = Math.max(2, Math.floor(W / 90));
  const choices = [60e3, 120e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3, 10800e3, 21600e3];
  let tick = choices[choices.length - 1];
  for (const ch of choices) if (span / ch <= want) { tick = ch; break; }
  const tz = new Date(t0).getTimezoneOffset() * 60e3;
  for (let t = Math.ceil((t0 - tz) / tick) * tick + tz; t <= t0 + span; t += tick) {
    const x = L + ((t - t0) / (span || 1)) * W;
    grid.append(sv("line", { x1: x, x2: x, y1: T, y2: T + H }));
    const tx = sv("text", { x: x, y: T + H + 15, "text-anchor": "middle" });
    tx.textContent = hhmm(t);
    xax.append(tx);
  }
  xax.append(sv("line", { x1: L, x2: L + W, y1: T + H, y2: T + H }));
  yax.append(sv("line", { x1: L, x2: L, y1: T, y2: T + H }));
  svg.append(grid, xax, yax);
  const plot = sv("g", { class: "plot" });
  const every = Math.max(1, Math.round(n / 8)); // markers: a few per line
  series.forEach((s, j) => {
    const g = sv("g", { class: "series" });
    g.dataset.metric = s.m.metric;
    let dl = "";
    for (let k = 0; k < n; k++) dl += (k ? "L" : "M") + xs(k).toFixed(1) + "," + ys(s.hi[k]).toFixed(1);
    if (state.mode === "stacked") {
      let da = dl;
      for (let k = n - 1; k >= 0; k--) da += "L" + xs(k).toFixed(1) + "," + ys(s.lo[k]).toFixed(1);
      g.append(sv("path", { class: "area", d: da + "Z", fill: s.st.color, stroke: "none" }));
    }
    g.append(sv("path", { class: "s", d: dl, stroke: s.st.color, "stroke-dasharray": s.st.dash }));
    for (let k = (j * 3) % every; k < n; k += every) g.append(marker(s.st.marker, xs(k), ys(s.hi[k]), s.st.color));
    plot.append(g);
  });
  svg.append(plot);
  c.cross = sv("line", { class: "cross", y1: T, y2: T + H, visibility: "hidden" });
  c.dots = sv("g");
  svg.append(c.cross, c.dots);
  drawLegend(c, v);
  if (c.hover >= 0) showHover(c, c.hover);
}
function drawLegend(c, v) {
  const items = [];
  for (const { m, i } of v.metrics) {
    const li = el("li");
    li.dataset.metric = m.metric;
    const off = !!hidden[v.f.flow + "\0" + m.metric];
    li.classList.toggle("off", off);
    li.setAttribute("role", "button");
    li.tabIndex = 0;
    li.setAttribute("aria-pressed", String(!off));
    li.title = off ? "show " + m.metric : "hide " + m.metric;
    const st = styleOf(i);
    const sw = sv("svg", { viewBox: "0 0 26 12", "aria-hidden": "true" });
    sw.append(sv("line", { x1: 1, x2: 25, y1: 6, y2: 6, stroke: st.color, "stroke-width": 2, "stroke-dasharray": st.dash }), marker(st.marker, 13, 6, st.color, 3.4));
    li.append(sw, el("span", { class: "m" }, m.metric), el("span", { class: "v" }, nf.format(m.in_range)));
    items.push(li);
  }
  c.legend.replaceChildren(...items);
}
function hover(c, ev) {
  if (!c.view) return;
  if (!ev) { c.hover = -1; hideHover(c); return; }
  const r = c.svg.getBoundingClientRect();
  const x = ((ev.clientX - r.left) / r.width) * c.view.width;
  const { n, L, W } = c.view;
  const k = Math.round(((x - L) / W) * (n - 1));
  if (k < 0 || k >= n) { c.hover = -1; hideHover(c); return; }
  c.hover = k;
  showHover(c, k);
}
function hideHover(c) {
  c.tip.hidden = true;
  if (c.cross) c.cross.setAttribute("visibility", "hidden");
  if (c.dots) c.dots.replaceChildren();
  for (const li of c.legend.children) {
    const m = state.data && findMetric(c.flow, li.dataset.metric);
    if (m) li.querySelector(".v").textContent = nf.format(m.in_range);
  }
}
function findMetric(flow, metric) {
  const f = state.data.flows.find((f) => f.flow === flow);
  return f && f.metrics.find((m) => m.metric === metric);
}
function showHover(c, k) {
  const v = c.view;
  if (k >= v.n) return;
  const x = v.xs(k);
  c.cross.setAttribute("x1", x); c.cross.setAttribute("x2", x);
  c.cross.setAttribute("visibility", "visible");
  c.dots.replaceChildren(...v.series.map((s) => marker(s.st.marker, x, v.ys(s.hi[k]), s.st.color, 4.2)));
  const from = v.t0 + k * v.step, to = from + v.step;
  const withSec = v.step < 60e3;
  const tip = c.tip;
  const head = el("div", { class: "t" }, hhmm(from, withSec) + "–" + hhmm(to, withSec));
  const tb = el("table");
  const vals = new Map();
  for (const s of v.series) vals.set(s.m.metric, s.vals[k]);
  [...v.series].sort((a, b) => b.vals[k] - a.vals[k]).forEach((s) => {
    const tr = el("tr");
    const sw = sv("svg", { viewBox: "0 0 12 12", width: 12, height: 12, "aria-hidden": "true" });
    sw.append(marker(s.st.marker, 6, 6, s.st.color, 4));
    const td0 = el("td"); td0.append(sw);
    tr.append(td0, el("td", null, s.m.metric), el("td", { class: "n" }, nf.format(s.vals[k])));
    tb.append(tr);
  });
  tip.replaceChildren(head, tb);
  tip.hidden = false;
  // Place the tip beside the cross, inside the card.
  const sr = c.svg.getBoundingClientRect(), cr = c.el.getBoundingClientRect();
  const px = sr.left - cr.left + (x / v.width) * sr.width;
  const tw = tip.offsetWidth;
  tip.style.left = (px + 12 + tw > cr.width ? Math.max(4, px - 12 - tw) : px + 12) + "px";
  tip.style.top = (sr.top - cr.top + 6) + "px";
  for (const li of c.legend.children) {
    const val = vals.get(li.dataset.metric);
    li.querySelector(".v").textContent = val === undefined ? "–" : nf.format(val);
  }
}


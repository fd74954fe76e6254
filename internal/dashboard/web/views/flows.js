// A chart per flow: its metrics' rates (occurrences per minute) by
// attribute time, one metric highlighted at a time — the flow's metric
// furthest from usual (the attention list's order), else its busiest, or
// the one picked in the legend — the others thin and faint behind it. The
// current bucket is unfinished: it is drawn dotted at its rate so far, in a
// shaded band, not as a plunge to zero.

import { $, el, sv, nf, nf1, hhmm, nice, order, visibleFlows, RANGE_LABEL } from "../lib.js";

const NCOLORS = 8;
const cards = new Map(); // flow -> {el, svg, legend, tip, sig, ...}
const picked = {};       // flow -> the metric picked in its legend
let state = null;

export default {
  id: "flows-view",
  render(s) {
    state = s;
    const vis = visibleFlows(s);
    $("charts-head").hidden = s.data.flows.length === 0;
    $("charts").classList.toggle("stacked", s.mode === "stacked");
    $("charts-head").textContent = "Occurrences per minute, by attribute time (" + stepLabel(s.data.step_seconds) + " buckets)";
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
  // highlight makes metric the highlighted one of flow's chart and brings
  // the chart into view (the attention list's links use it).
  highlight(flow, metric) {
    picked[flow] = metric;
    document.dispatchEvent(new Event("flowmetrics:render"));
    cards.get(flow)?.el.scrollIntoView({ block: "nearest" });
  },
};

function stepLabel(sec) { return sec >= 60 ? sec / 60 + " min" : sec + " s"; }
const perMin = (count, seconds) => (count * 60) / seconds;

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
    // Picking the highlighted metric again goes back to the automatic one.
    picked[flow] = c.top === li.dataset.metric && picked[flow] ? undefined : li.dataset.metric;
    c.sig = "";
    document.dispatchEvent(new Event("flowmetrics:render"));
  });
  return c;
}

const colorOf = (i) => "var(--c" + (i % NCOLORS) + ")";

// The metric to highlight: the one picked, else the flow's first on the
// attention list, else its busiest in the range.
function topMetric(v) {
  const names = v.metrics.map(({ m }) => m.metric);
  const p = picked[v.f.flow];
  if (p && names.includes(p)) return p;
  const a = (state.data.attention || []).find((a) => a.flow === v.f.flow && names.includes(a.metric));
  if (a) return a.metric;
  let best = v.metrics[0].m;
  for (const { m } of v.metrics) if (m.in_range > best.in_range) best = m;
  return best.metric;
}

function drawCard(c, v) {
  const d = state.data;
  const width = Math.max(220, Math.round(c.svg.clientWidth || c.el.clientWidth || 400));
  const height = Math.round(c.svg.clientHeight || 190);
  const top = topMetric(v);
  c.top = top;
  const sig = [d.range, d.start, d.generated_at, state.mode, width, height, top, v.metrics.map(({ m }) => m.metric + (m.counts ? m.counts.join(",") : "")).join(";")].join("|");
  let inRange = 0;
  for (const { m } of v.metrics) inRange += m.in_range;
  c.el.querySelector(".sum").textContent = nf.format(inRange) + " in " + RANGE_LABEL[d.range];
  if (sig === c.sig) return;
  c.sig = sig;
  const n = d.buckets, stepS = d.step_seconds, step = stepS * 1000, t0 = Date.parse(d.start);
  // The last bucket holds generated_at: its rate is over the time so far,
  // shown once a quarter of the bucket has passed (a rate over a few
  // seconds says little).
  const elapsed = Math.min(stepS, Math.max(0, (Date.parse(d.generated_at) - (t0 + (n - 1) * step)) / 1000));
  const partial = elapsed >= stepS / 4;
  const L = 44, R = 10, T = 16, B = 22, W = width - L - R, H = height - T - B;
  const series = v.metrics.map(({ m, i }) => {
    const counts = m.counts || new Array(n).fill(0);
    const vals = counts.map((x, k) => k < n - 1 ? perMin(x, stepS) : partial ? perMin(x, elapsed) : null);
    return { m, i, color: colorOf(i), counts, vals, top: m.metric === top };
  });
  // Stacked: each series sits on the sum of those before it.
  const base = new Array(n).fill(0);
  for (const s of series) {
    s.lo = base.slice();
    if (state.mode === "stacked") for (let k = 0; k < n; k++) base[k] += s.vals[k] || 0;
    s.hi = state.mode === "stacked" ? base.map((x, k) => s.vals[k] === null ? null : x) : s.vals;
  }
  let ymax = 0;
  for (const s of series) for (const x of s.hi) if (x > ymax) ymax = x;
  // About four ticks of a round step.
  const tstep = nice(Math.max(ymax, 0.4) / 4);
  const yTicks = Math.max(2, Math.ceil(ymax / tstep));
  const ytop = tstep * yTicks;
  const xs = (k) => L + (n <= 1 ? W / 2 : (k * W) / (n - 1));
  const ys = (y) => T + H - (y / ytop) * H;
  c.view = { n, t0, step, stepS, xs, ys, L, W, T, H, series, width };

  const svg = c.svg;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("aria-label", `${v.f.flow}: occurrences per minute in ${stepLabel(stepS)} buckets over the last ${RANGE_LABEL[d.range]}, ${v.metrics.length} metrics, ${top} highlighted`);
  const grid = sv("g", { class: "grid" }), yax = sv("g", { class: "axis y-axis" }), xax = sv("g", { class: "axis x-axis" });
  for (let k = 0; k <= yTicks; k++) {
    const val = (ytop * k) / yTicks, y = ys(val);
    grid.append(sv("line", { x1: L, x2: L + W, y1: y, y2: y }));
    const t = sv("text", { x: L - 5, y: y + 3.5, "text-anchor": "end" });
    t.textContent = val >= 1000 ? nf1.format(val / 1000) + "k" : nf1.format(val);
    yax.append(t);
  }
  const unit = sv("text", { class: "unit", x: 2, y: 10, "text-anchor": "start" });
  unit.textContent = "per min";
  yax.append(unit);
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
  // The unfinished bucket's band.
  const bandX = xs(n - 2);
  grid.append(sv("rect", { class: "unfinished", x: bandX, y: T, width: L + W - bandX, height: H }));
  svg.append(grid, xax, yax);
  const plot = sv("g", { class: "plot" });
  const path = (pts) => pts.map(([k, y], j) => (j ? "L" : "M") + xs(k).toFixed(1) + "," + ys(y).toFixed(1)).join("");
  // The highlighted metric last, so it is drawn on top.
  for (const s of [...series.filter((s) => !s.top), ...series.filter((s) => s.top)]) {
    const g = sv("g", { class: "series" + (s.top ? " top" : "") });
    g.dataset.metric = s.m.metric;
    const done = [];
    for (let k = 0; k < n - 1; k++) done.push([k, s.hi[k]]);
    if (state.mode === "stacked" || s.top) {
      const lo = [];
      for (let k = n - 2; k >= 0; k--) lo.push([k, state.mode === "stacked" ? s.lo[k] : 0]);
      g.append(sv("path", { class: "area", d: path(done.concat(lo)) + "Z", fill: s.color }));
    }
    g.append(sv("path", { class: "s", d: path(done), stroke: s.color }));
    if (s.hi[n - 1] !== null) g.append(sv("path", { class: "s now", d: path([[n - 2, s.hi[n - 2]], [n - 1, s.hi[n - 1]]]), stroke: s.color }));
    plot.append(g);
  }
  svg.append(plot);
  c.cross = sv("line", { class: "cross", y1: T, y2: T + H, visibility: "hidden" });
  c.dots = sv("g");
  svg.append(c.cross, c.dots);
  drawLegend(c, v, top);
  if (c.hover >= 0) showHover(c, c.hover);
}

function drawLegend(c, v, top) {
  const items = [];
  for (const { m, i } of v.metrics) {
    const li = el("li");
    li.dataset.metric = m.metric;
    const on = m.metric === top;
    li.classList.toggle("top", on);
    li.setAttribute("role", "button");
    li.tabIndex = 0;
    li.setAttribute("aria-pressed", String(on));
    li.title = on ? m.metric + " is highlighted" : "highlight " + m.metric;
    const sw = sv("svg", { viewBox: "0 0 18 10", "aria-hidden": "true" });
    sw.append(sv("rect", { x: 0, y: 2, width: 18, height: 6, rx: 2, fill: colorOf(i) }));
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
  c.dots.replaceChildren(...v.series.filter((s) => s.hi[k] !== null).map((s) => sv("circle", { cx: x, cy: v.ys(s.hi[k]), r: s.top ? 4 : 3, fill: s.color })));
  const from = v.t0 + k * v.step, to = from + v.step;
  const withSec = v.step < 60e3;
  const last = k === v.n - 1;
  const head = el("div", { class: "t" }, hhmm(from, withSec) + "–" + hhmm(to, withSec) + (last ? " (unfinished)" : ""));
  const tb = el("table");
  const hr = el("tr");
  hr.append(el("th"), el("th", null, "metric"), el("th", { class: "n" }, "count"), el("th", { class: "n" }, "/min"));
  tb.append(hr);
  const vals = new Map();
  for (const s of v.series) vals.set(s.m.metric, s.counts[k]);
  [...v.series].sort((a, b) => b.counts[k] - a.counts[k]).forEach((s) => {
    const tr = el("tr");
    tr.dataset.metric = s.m.metric;
    if (s.top) tr.className = "top";
    const sw = sv("svg", { viewBox: "0 0 10 10", width: 10, height: 10, "aria-hidden": "true" });
    sw.append(sv("rect", { width: 10, height: 10, rx: 2, fill: s.color }));
    const td0 = el("td"); td0.append(sw);
    tr.append(td0, el("td", null, s.m.metric), el("td", { class: "n" }, nf.format(s.counts[k])), el("td", { class: "n" }, s.vals[k] === null ? "–" : nf1.format(s.vals[k])));
    tb.append(tr);
  });
  c.tip.replaceChildren(head, tb);
  c.tip.hidden = false;
  // Place the tip beside the cross, inside the card.
  const sr = c.svg.getBoundingClientRect(), cr = c.el.getBoundingClientRect();
  const px = sr.left - cr.left + (x / v.width) * sr.width;
  const tw = c.tip.offsetWidth;
  c.tip.style.left = (px + 12 + tw > cr.width ? Math.max(4, px - 12 - tw) : px + 12) + "px";
  c.tip.style.top = (sr.top - cr.top + 6) + "px";
  for (const li of c.legend.children) {
    const val = vals.get(li.dataset.metric);
    li.querySelector(".v").textContent = val === undefined ? "–" : nf.format(val);
  }
}

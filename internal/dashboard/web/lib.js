// Helpers shared by the views. Every name from the data is written with
// textContent (el's text), never as markup: flow and metric names come from
// whoever can post events.

export const API = "api/v1/";
export const RANGE_LABEL = { "15m": "15 min", "1h": "1 h", "6h": "6 h", "24h": "24 h" };
const SVG = "http://www.w3.org/2000/svg";

export const $ = (id) => document.getElementById(id);
export const nf = new Intl.NumberFormat();
export const nf1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

export function el(tag, attrs, text) {
  const e = document.createElement(tag);
  if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}

export function sv(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
  return e;
}

export async function getJSON(path) {
  const r = await fetch(API + path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

export function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return Math.round(s) + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return nf1.format(s / 3600) + " h ago";
  return nf1.format(s / 86400) + " d ago";
}

export function hhmm(t, withSec) {
  const d = new Date(t);
  const p = (n) => String(n).padStart(2, "0");
  return p(d.getHours()) + ":" + p(d.getMinutes()) + (withSec ? ":" + p(d.getSeconds()) : "");
}

// A round number ≥ v: 1, 2 or 5 times a power of ten.
export function nice(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// Keeps the children of box in the order of want (elements), moving only
// those out of place.
export function order(box, want) {
  let prev = null;
  for (const e of want) {
    const at = prev ? prev.nextSibling : box.firstChild;
    if (at !== e) box.insertBefore(e, at);
    prev = e;
  }
}

// The flows and metrics of the series the filter keeps: [{f, metrics:
// [{m, i}]}], i being the metric's index in its flow (its colour).
export function visibleFlows(state) {
  if (!state.data) return [];
  const out = [];
  for (const f of state.data.flows) {
    const flowHit = state.matches(f.flow);
    const metrics = f.metrics.map((m, i) => ({ m, i })).filter(({ m }) => flowHit || state.matches(f.flow, m.metric));
    if (metrics.length) out.push({ f, metrics });
  }
  return out;
}

// trendLabel is how a flow metric compares with its usual rate, as the
// server judged it (trend) with the ratio it judged on (already rounded to
// one decimal, so the figure shown is the figure compared), and its class.
export function trendLabel(trend, ratio) {
  const r = ratio === null ? "" : nf1.format(ratio) + "×";
  switch (trend) {
    case "up": return [ratio === null ? "▲ new activity" : "▲ " + r + " usual", "up"];
    case "down": return ["▼ " + r + " usual", "down"];
    case "usual": return ["≈ usual (" + r + ")", ""];
    case "low": return ["too few to tell" + (r ? " (" + r + ")" : ""), "muted"];
    case "quiet": return ["≈ quiet as usual", ""];
    default: return ["new: no usual rate yet", ""];
  }
}

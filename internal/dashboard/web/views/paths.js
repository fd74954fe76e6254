// Conversation paths: per flow, where conversations left it (a bar per exit
// step and its share) and its step timings; each funnel with its
// conversion per step; each experiment's variants side by side with a 95 %
// interval and the test's verdict. Every number lists the last few
// conversations behind it, linked to Genesys Cloud when the org's region is
// configured (paths.genesys_region).

import { $, el, nf, nf1, getJSON, sv } from "../lib.js";

const pct = (x) => nf1.format(100 * x) + " %";

function secs(s) {
  if (s < 60) return nf1.format(s) + " s";
  if (s < 3600) return nf1.format(s / 60) + " min";
  return nf1.format(s / 3600) + " h";
}

// bar draws a share (0–1) as a small SVG bar: no inline style, so the
// page's Content-Security-Policy holds.
function bar(share) {
  const s = sv("svg", { class: "pathbar", viewBox: "0 0 100 8", preserveAspectRatio: "none", role: "img", "aria-label": pct(share) });
  s.append(sv("rect", { x: 0, y: 0, width: 100, height: 8, class: "track" }));
  s.append(sv("rect", { x: 0, y: 0, width: Math.max(0.5, 100 * share), height: 8, class: "fill" }));
  return s;
}

// examples lists the conversations behind a number.
function examples(list) {
  const td = el("td", { class: "examples" });
  for (const e of list || []) {
    const label = e.id.slice(0, 8) + "…";
    const a = e.url ? el("a", { href: e.url, target: "_blank", rel: "noopener noreferrer", title: e.id + " at " + e.time }, label) : el("code", { title: e.id + " at " + e.time }, label);
    td.append(a, " ");
  }
  return td;
}

function table(head, rows) {
  const t = el("table", { class: "list" });
  const th = el("thead"); const hr = el("tr");
  for (const [h, c] of head) hr.append(el("th", { scope: "col", class: c || "" }, h));
  th.append(hr);
  const tb = el("tbody");
  tb.append(...rows);
  t.append(th, tb);
  const w = el("div", { class: "wrap" }); w.append(t);
  return w;
}

function durationRows(list) {
  return list.map((d) => {
    const tr = el("tr");
    tr.dataset.name = d.name;
    tr.append(el("td", null, d.name), el("td", { class: "n" }, nf.format(d.count)), el("td", { class: "n" }, secs(d.p50)), el("td", { class: "n" }, secs(d.p90)), el("td", { class: "n" }, secs(d.p99)), examples(d.examples));
    return tr;
  });
}
const durationHead = [["step", ""], ["conversations", "n"], ["p50", "n"], ["p90", "n"], ["p99", "n"], ["latest conversations", ""]];

function stepRows(steps) {
  return steps.map((s) => {
    const tr = el("tr");
    tr.dataset.step = s.step;
    const b = el("td"); b.append(bar(s.conversion));
    tr.append(el("td", null, s.step), el("td", { class: "n" }, nf.format(s.count)), el("td", { class: "n" }, pct(s.conversion)), b, examples(s.examples));
    return tr;
  });
}
const stepHead = [["step", ""], ["conversations", "n"], ["of the first", "n"], ["", ""], ["latest conversations", ""]];

export default {
  id: "paths-view",
  load: () => getJSON("paths"),
  render(state, p) {
    const parts = [];
    if (!p || (p.flows.length === 0 && p.funnels.length === 0 && p.experiments.length === 0)) {
      $("paths").replaceChildren(el("p", { class: "none" }, "no closed conversation yet — a path closes after its customer.end event and paths.grace, or after paths.idle_timeout"));
      return;
    }
    for (const x of p.experiments) {
      const sec = el("section", { class: "experiment" });
      sec.dataset.experiment = x.name;
      sec.append(el("h3", null, "Experiment " + x.name));
      sec.append(el("p", { class: "verdict" }, x.verdict));
      sec.append(table([["variant", ""], ["entered", "n"], ["converted", "n"], ["conversion", "n"], ["95 % interval", "n"], ["", ""]], x.variants.map((v) => {
        const tr = el("tr");
        tr.dataset.variant = v.name;
        const b = el("td"); b.append(bar(v.rate));
        tr.append(el("td", null, v.name), el("td", { class: "n" }, nf.format(v.entered)), el("td", { class: "n" }, nf.format(v.converted)), el("td", { class: "n" }, pct(v.rate)), el("td", { class: "n" }, pct(v.ci_low) + " – " + pct(v.ci_high)), b);
        return tr;
      })));
      parts.push(sec);
    }
    for (const f of p.funnels) {
      const sec = el("section", { class: "funnel" });
      sec.dataset.funnel = f.name;
      sec.append(el("h3", null, "Funnel " + f.name));
      sec.append(table(stepHead, stepRows(f.steps)));
      parts.push(sec);
    }
    for (const f of p.flows) {
      if (!state.matches(f.flow) && !f.exits.some((e) => state.matches(f.flow, e.metric))) continue;
      const sec = el("section", { class: "pathflow" });
      sec.dataset.flow = f.flow;
      sec.append(el("h3", null, f.flow + " — where " + nf.format(f.conversations) + " conversations left it"));
      sec.append(table([["last step", ""], ["conversations", "n"], ["share", "n"], ["", ""], ["latest conversations", ""]], f.exits.map((e) => {
        const tr = el("tr");
        tr.dataset.metric = e.metric;
        const b = el("td"); b.append(bar(e.share));
        tr.append(el("td", null, e.metric), el("td", { class: "n" }, nf.format(e.count)), el("td", { class: "n" }, pct(e.share)), b, examples(e.examples));
        return tr;
      })));
      if (f.steps.length) {
        sec.append(el("h4", null, "Time from the flow's first step"));
        sec.append(table(durationHead, durationRows(f.steps)));
      }
      parts.push(sec);
    }
    if (p.timings.length) {
      const sec = el("section", { class: "timings" });
      sec.append(el("h3", null, "Timings"));
      sec.append(table([["timing", ""], ...durationHead.slice(1)], durationRows(p.timings)));
      parts.push(sec);
    }
    $("paths").replaceChildren(...parts);
  },
};

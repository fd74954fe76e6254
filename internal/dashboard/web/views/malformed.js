// Malformed attribute names per flow: the distinct shapes, with the latest
// name as written, why it was refused, sightings and last seen.

import { $, el, nf, ago, getJSON } from "../lib.js";

export default {
  id: "malformed-view",
  load: () => getJSON("malformed"),
  render(state, mal) {
    const parts = [];
    if (!mal || mal.flows.length === 0) {
      parts.push(el("p", { class: "none" }, "none seen"));
    } else {
      parts.push(el("p", { class: "muted" }, nf.format(mal.distinct) + (mal.distinct === 1 ? " distinct name" : " distinct names") + (mal.not_kept ? "; " + nf.format(mal.not_kept) + " sightings of further names not kept" : "")));
      for (const f of mal.flows) {
        if (!state.matches(f.flow) && !f.names.some((n) => state.matches(f.flow, n.name))) continue;
        const sec = el("section");
        sec.dataset.flow = f.flow;
        sec.append(el("h3", null, f.flow === "" ? "(no flow name before Metric_)" : f.flow));
        const tb = el("table", { class: "list" });
        const th = el("thead"); const hr = el("tr");
        for (const [h, c] of [["name (time as …)", ""], ["latest as written", ""], ["why", ""], ["sightings", "n"], ["last seen", ""]]) hr.append(el("th", { scope: "col", class: c }, h));
        th.append(hr);
        const body = el("tbody");
        for (const n of f.names) {
          const tr = el("tr");
          tr.dataset.name = n.name;
          const td = el("td"); td.append(el("code", null, n.name));
          const ex = el("td"); ex.append(el("code", null, n.example));
          const last = el("td", null, ago(n.last_seen)); last.title = n.last_seen;
          tr.append(td, ex, el("td", null, n.reason), el("td", { class: "n" }, nf.format(n.count)), last);
          body.append(tr);
        }
        tb.append(th, body);
        const wrap = el("div", { class: "wrap" }); wrap.append(tb);
        sec.append(wrap);
        if (f.not_kept) sec.append(el("p", { class: "muted" }, nf.format(f.not_kept) + " sightings of further names not kept"));
        parts.push(sec);
      }
    }
    $("malformed").replaceChildren(...parts);
  },
};

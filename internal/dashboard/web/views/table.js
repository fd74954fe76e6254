// The flow metrics table: each metric's count in the range, its rate now
// against its usual rate (the server's judgement, as in the attention
// list), and when it was last seen. On a narrow screen the flow moves
// under the metric's name and the count, usual rate and last seen hide.

import { $, el, nf, nf1, ago, order, trendLabel, visibleFlows, RANGE_LABEL } from "../lib.js";

const rows = new Map(); // flow\0metric -> tr

export default {
  id: "table-view",
  render(state) {
    $("range-head").textContent = "last " + RANGE_LABEL[state.data.range];
    const keep = new Set();
    const ordered = [];
    for (const { f, metrics } of visibleFlows(state)) for (const { m } of metrics) {
      const k = f.flow + "\0" + m.metric;
      keep.add(k);
      let tr = rows.get(k);
      if (!tr) {
        tr = el("tr");
        tr.dataset.flow = f.flow; tr.dataset.metric = m.metric;
        const name = el("td", { class: "name" });
        name.append(el("span", { class: "me" }, m.metric), el("span", { class: "fl" }, f.flow));
        tr.append(el("td", { class: "flow" }, f.flow), name, el("td", { class: "n wide" }), el("td", { class: "n" }), el("td", { class: "n wide" }), el("td", { class: "trend" }), el("td", { class: "wide" }));
        rows.set(k, tr);
      }
      const cells = tr.cells;
      cells[2].textContent = nf.format(m.in_range);
      cells[3].textContent = nf1.format(m.rate_now);
      cells[4].textContent = m.rate_usual === null ? "–" : nf1.format(m.rate_usual);
      const [txt, cls] = trendLabel(m.trend, m.ratio);
      cells[5].textContent = txt; cells[5].className = "trend " + cls;
      cells[6].textContent = ago(m.last_seen);
      cells[6].title = m.last_seen || "";
      ordered.push(tr);
    }
    for (const [k, tr] of rows) if (!keep.has(k)) { tr.remove(); rows.delete(k); }
    order(document.querySelector("#table tbody"), ordered);
  },
};

// The flow metrics table: each metric's count in the range, its rate now
// against its usual rate, and when it was last seen.

import { $, el, nf, nf1, ago, order, visibleFlows, RANGE_LABEL } from "../lib.js";

const rows = new Map(); // flow\0metric -> tr

function trend(now, usual) {
  if (usual === null) return ["new: no usual rate yet", ""];
  if (usual === 0) return now > 0 ? ["▲ new activity", "up"] : ["≈ quiet as usual", ""];
  const r = now / usual;
  if (r >= 1.5) return ["▲ " + nf1.format(r) + "× usual", "up"];
  if (r <= 0.5) return ["▼ " + nf1.format(r) + "× usual", "down"];
  return ["≈ usual (" + nf1.format(r) + "×)", ""];
}

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
        tr.append(el("td", null, f.flow), el("td", null, m.metric), el("td", { class: "n" }), el("td", { class: "n" }), el("td", { class: "n" }), el("td"), el("td"));
        rows.set(k, tr);
      }
      const cells = tr.cells;
      cells[2].textContent = nf.format(m.in_range);
      cells[3].textContent = nf1.format(m.rate_now);
      cells[4].textContent = m.rate_usual === null ? "–" : nf1.format(m.rate_usual);
      const [txt, cls] = trend(m.rate_now, m.rate_usual);
      cells[5].textContent = txt; cells[5].className = cls;
      cells[6].textContent = ago(m.last_seen);
      cells[6].title = m.last_seen || "";
      ordered.push(tr);
    }
    for (const [k, tr] of rows) if (!keep.has(k)) { tr.remove(); rows.delete(k); }
    order(document.querySelector("#table tbody"), ordered);
  },
};

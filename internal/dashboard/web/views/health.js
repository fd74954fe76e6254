// Pipeline health: events/s, the record counters since start and each sink
// the user configured (not the dashboard itself). Loaded every 2 s, apart
// from the series.

import { $, el, nf, nf1, ago, getJSON } from "../lib.js";

export default {
  id: "health-view",
  load: () => getJSON("health"),
  render(state, h) {
    const items = [];
    const item = (label, value, bad, title) => {
      const li = el("li");
      li.append(label + " ", el("b", null, value));
      if (bad) { li.classList.add("bad"); li.prepend("⚠ "); }
      if (title) li.title = title;
      return li;
    };
    items.push(item("events/s", h.events_per_second === null ? "–" : nf1.format(h.events_per_second)));
    items.push(item("read", nf.format(h.records_read)));
    const reasons = Object.entries(h.rejected_by_reason).filter(([, n]) => n > 0).map(([r, n]) => r + ": " + n).join(", ");
    items.push(item("rejected", nf.format(h.records_rejected) + (reasons ? " (" + reasons + ")" : ""), false));
    items.push(item("skipped", nf.format(h.records_skipped)));
    items.push(item("occurrences", nf.format(h.occurrences)));
    items.push(item("malformed", nf.format(h.malformed)));
    for (const s of h.sinks) {
      const failing = s.last_error && (!s.last_success || Date.parse(s.last_error) > Date.parse(s.last_success));
      const li = item(s.name + ":", "pending " + nf.format(s.pending), failing || s.dropped > 0);
      li.dataset.sink = s.name;
      li.append(" · ok " + ago(s.last_success));
      if (s.dropped) li.append(" · dropped " + nf.format(s.dropped));
      if (s.last_error) li.append(el("span", { class: "err" }, "last error " + ago(s.last_error) + ": " + s.error));
      items.push(li);
    }
    $("health").replaceChildren(...items);
  },
};

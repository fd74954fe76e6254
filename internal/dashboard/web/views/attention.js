// What is wrong first: the flow metrics furthest from their usual rate,
// as the server ranks them (see Assess in attention.go): rate now over the
// last minute against the hour before, flagged at 1.5× or 0.5× of it on
// the rounded ratio shown, and only when the difference is beyond chance.

import { $, el, nf1, trendLabel } from "../lib.js";
import flows from "./flows.js";

export default {
  id: "attention-view",
  render(state) {
    const list = (state.data.attention || []).filter((a) => state.matches(a.flow, a.metric));
    $("attention-view").classList.toggle("alert", list.length > 0);
    $("attention-head").textContent = list.length ? "Needs attention now (" + list.length + ")" : "Nothing unusual right now";
    const items = list.map((a) => {
      const li = el("li");
      li.dataset.flow = a.flow; li.dataset.metric = a.metric; li.dataset.trend = a.trend;
      const [txt, cls] = trendLabel(a.trend, a.ratio);
      const b = el("button", { type: "button", title: "highlight in the " + a.flow + " chart" });
      b.append(el("span", { class: "tr " + cls }, txt), " ", el("span", { class: "fl" }, a.flow), " ", el("b", { class: "me" }, a.metric));
      b.addEventListener("click", () => flows.highlight(a.flow, a.metric));
      li.append(b, el("span", { class: "rates" }, nf1.format(a.rate_now) + "/min now · usually " + nf1.format(a.rate_usual) + "/min"));
      return li;
    });
    if (!items.length) items.push(el("li", { class: "none" }, "Every metric is within 0.5× to 1.5× of its usual rate, or too few occurrences to tell."));
    $("attention").replaceChildren(...items);
  },
};

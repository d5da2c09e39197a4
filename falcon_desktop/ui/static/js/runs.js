// Runs tab: the runs table; ticked runs side by side with card, loss curve, scores, eval and merge.
import {$, api, bus, el, fmt, pick, runJob, showError, table} from "./common.js";
import {lineChart} from "./chart.js";

export let runs = [];
const ticked = new Set();

function scores(metrics) {
  const row = (label, s) => [label, s && s.total !== undefined ? fmt.num(s.exact) : "-", s && s.total !== undefined ? fmt.num(s.f1) : "-"];
  const box = el("table", {class: "grid compact"});
  table(box, ["held-out", "EM %", "F1 %"], [row("before", metrics.eval_before), row("after", metrics.eval_after)]);
  return box;
}

function actions(run) {
  const output = el("div", {class: "job"});
  const data = el("input", {placeholder: "SQuAD .json with answers", id: `eval-data-${run.replace(/\W/g, "_")}`});
  const limit = el("input", {type: "number", min: 1, value: 50, class: "short", title: "questions"});
  const target = el("input", {placeholder: "folder for the merged model", id: `merge-out-${run.replace(/\W/g, "_")}`});
  const cancel = el("button", {hidden: true}, "Cancel");
  async function job(path, body, done) {
    showError(output, null);
    output.hidden = false;
    output.replaceChildren(el("span", {class: "muted"}, "Working…"));
    try {
      const result = await runJob(path, body, {cancelButton: cancel, onUpdate: (j) => output.replaceChildren(el("pre", {}, j.log.slice(-3).join("\n")))});
      output.replaceChildren(result.state === "cancelled" ? "Cancelled." : done(result.result));
    } catch (error) {
      output.className = "error";
      showError(output, error);
    }
  }
  return el("div", {class: "actions"},
    el("div", {class: "row"}, data, el("button", {onclick: () => pick(data)}, "Browse…"), limit,
      el("button", {onclick: () => job("/api/runs/eval", {run, data: data.value, limit: Number(limit.value)},
        (s) => `EM ${fmt.num(s.exact)} %, F1 ${fmt.num(s.f1)} % on ${s.total} questions`)}, "Evaluate")),
    el("div", {class: "row"}, target, el("button", {onclick: () => job("/api/runs/merge", {run, output: target.value},
      (r) => `Merged: ${(r.output || []).join(" ")}`)}, "Merge and export")),
    el("div", {class: "row"}, cancel, el("button", {onclick: () => { bus.dispatchEvent(new CustomEvent("ask-run", {detail: run})); }}, "Ask this run")),
    output);
}

async function card(name) {
  const detail = await api(`/api/runs/detail?run=${encodeURIComponent(name)}`);
  const c = detail.card || {};
  const chart = el("div", {class: "chart"});
  const measured = c.measured || {};
  const facts = [["model", c.model || "?"], ["status", c.status || "?"], ["steps", `${fmt.int(c.steps)} of ${fmt.int(c.total_steps)}`],
    ["trainable params", fmt.int(c.trainable_params)], ["data", c.data ? `${c.data.source || ""} (${fmt.int((c.data.summary || {}).records)} records)` : "-"],
    ["tokens/s", fmt.int(measured.tokens_per_second)], ["peak VRAM", measured.peak_vram_reserved_bytes ? fmt.gib(measured.peak_vram_reserved_bytes) : "-"],
    ["device", measured.device || "-"]];
  const factTable = el("table", {class: "grid compact"});
  table(factTable, null, facts);
  const node = el("article", {class: "card"}, el("h3", {}, name), chart, scores(c.metrics || {}), factTable, actions(name));
  requestAnimationFrame(() => lineChart(chart, [{name, points: detail.curve.map((r) => [r.step, r.loss])}]));
  return node;
}

async function renderCompare() {
  const cards = await Promise.all([...ticked].map(card));
  $("runs-compare").replaceChildren(...cards);
}

export async function refreshRuns() {
  const listing = await api("/api/runs");
  runs = listing.runs;
  $("runs-root").textContent = listing.root;
  $("runs-table").tBodies[0].replaceChildren(...runs.map((run) => el("tr", {},
    el("td", {}, el("input", {type: "checkbox", checked: ticked.has(run.name), onchange: (event) => {
      if (event.target.checked) ticked.add(run.name); else ticked.delete(run.name);
      renderCompare();
    }})),
    el("td", {}, run.name), el("td", {}, run.model || "?"), el("td", {}, (run.date || "-").slice(0, 16).replace("T", " ")),
    el("td", {}, fmt.int(run.steps)), el("td", {}, fmt.num(run.final_loss, 3)),
    el("td", {}, run.exact === null ? "-" : `${fmt.num(run.exact, 1)} / ${fmt.num(run.f1, 1)}`),
    el("td", {}, run.has_adapter ? run.status : `${run.status} (no adapter)`))));
  bus.dispatchEvent(new Event("runs-listed"));
  if (ticked.size) renderCompare();
}

export function initRuns() {
  $("runs-refresh").onclick = refreshRuns;
  bus.addEventListener("runs", refreshRuns);
  return refreshRuns();
}

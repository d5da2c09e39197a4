// Train tab: check the data, start a run with the Plan tab's settings, watch it live, stop and resume it.
import {$, api, bus, el, fmt, runJob, showError, table} from "./common.js";
import {choices, lastPlan, planSettings} from "./plan.js";
import {lineChart} from "./chart.js";

let checkedSource = null;   // the data source whose check passed: Start waits for one
let watching = null;        // {run, source: EventSource, records, status}

function trainValues() {
  const values = {...planSettings, data: $("data-source").value.trim()};
  for (const input of $("train-form").elements) {
    const raw = input.value.trim();
    if (raw !== "") values[input.name] = input.type === "number" ? Number(raw) : raw;
  }
  if (planSettings.method === "lora") values.no_quantize = true;  // `train` takes the base precision as a flag
  return values;
}

function renderReport(report) {
  const rows = [["format", report.format], ["read", fmt.int(report.read)], ["records kept", fmt.int(report.records)],
    ["  answerable", fmt.int(report.answerable)], ["  unanswerable", fmt.int(report.unanswerable)],
    ["repaired answer spans", fmt.int(report.repaired)], ["dropped", fmt.int(report.dropped)],
    ...Object.entries(report.drop_reasons || {}).map(([reason, count]) => [`  ${reason.replaceAll("_", " ")}`, fmt.int(count)])];
  const summary = el("table", {class: "grid compact"});
  table(summary, null, rows);
  const problems = report.problems.length
    ? [el("h3", {}, `Problems (${report.problems.length})`), el("ul", {class: "problems"}, report.problems.slice(0, 10).map((p) => el("li", {}, p)))]
    : [el("p", {class: "good"}, "No problems found.")];
  $("data-report").replaceChildren(summary, ...problems);
}

async function inspect() {
  const source = $("data-source").value.trim();
  checkedSource = null;
  $("train-start").disabled = true;
  $("data-report").replaceChildren(el("p", {class: "muted"}, `Reading ${source}…`));
  try {
    const job = await runJob("/api/data/inspect", {source}, {cancelButton: $("data-cancel")});
    if (job.state === "cancelled") { $("data-report").replaceChildren(el("p", {class: "muted"}, "Cancelled.")); return; }
    renderReport(job.result);
    checkedSource = source;
    $("train-start").disabled = false;
    $("train-start").title = "";
  } catch (error) {
    const box = el("div", {class: "error"});
    showError(box, error);
    $("data-report").replaceChildren(box);
  }
}

function describePlan() {
  if (!lastPlan) return;
  const s = planSettings;
  $("train-plan").textContent = `From the Plan tab: ${s.model || "falcon-7b"}, ${lastPlan.method}, LoRA r=${lastPlan.lora_r} on ` +
    `${lastPlan.lora_targets.join(", ")}, sequence ${lastPlan.max_seq_len}, micro-batch ${lastPlan.micro_batch_size}` +
    (lastPlan.gpu ? ` on ${lastPlan.gpu.name}.` : ".");
}

function drawCharts() {
  const records = watching ? watching.records : [];
  const points = (key, scale = 1) => records.map((r) => [r.step, r[key] / scale]);
  lineChart($("chart-loss"), [{name: "loss", points: points("loss")}]);
  lineChart($("chart-speed"), [{name: "tokens/s", points: points("tokens_per_second")}], {format: (v) => fmt.int(v)});
  const onCpu = records.length && records.every((r) => !r.vram_peak_bytes);  // the trainer logs 0 without CUDA
  lineChart($("chart-vram"), onCpu ? [] : [{name: "reserved", points: points("vram_reserved_bytes", 2 ** 30)},
    {name: "peak", points: points("vram_peak_bytes", 2 ** 30)}], {format: (v) => v.toFixed(1), empty: onCpu ? "training on the CPU: no VRAM" : "no data yet"});
}

function renderStatus() {
  const {status, records} = watching;
  if (!status) return;
  const last = records[records.length - 1];
  const total = status.total_steps;
  let text = `${status.run}: ${status.status}`;
  if (last) {
    const recent = records.slice(-20);
    const perStep = recent.reduce((sum, r) => sum + r.seconds, 0) / recent.length;
    text += ` · step ${last.step}${total ? ` of ${total}` : ""} · loss ${fmt.num(last.loss, 4)} · ${fmt.int(last.tokens_per_second)} tok/s`;
    if (status.alive && status.status === "running" && total) text += ` · ETA ${fmt.duration(perStep * (total - last.step))}`;
  }
  if (status.problem) text += ` · ${status.problem.error || ""} ${status.problem.hint ? `Hint: ${status.problem.hint}` : ""}`;
  $("train-status").textContent = text;
  $("train-status").className = `verdict ${status.status === "finished" ? "good" : status.problem ? "bad" : ""}`;
  $("train-progress").style.width = total && last ? `${(100 * last.step) / total}%` : "0";
  $("train-log").textContent = status.log.join("\n");
  $("train-stop").disabled = !status.alive;
  $("train-resume").disabled = status.alive || status.status === "finished";
}

export function watch(run) {
  if (watching) watching.source.close();
  if (![...$("train-run").options].some((o) => o.value === run)) $("train-run").append(el("option", {value: run}, run));
  $("train-run").value = run;
  const source = new EventSource(`/api/train/events?run=${encodeURIComponent(run)}`);
  watching = {run, source, records: [], status: null};
  const mine = watching;
  source.addEventListener("reset", () => { mine.records = []; });
  source.addEventListener("metrics", (event) => { mine.records.push(...JSON.parse(event.data)); drawCharts(); renderStatus(); });
  source.addEventListener("status", (event) => { mine.status = JSON.parse(event.data); renderStatus(); });
  source.addEventListener("end", (event) => {
    mine.status = JSON.parse(event.data);
    source.close();  // else EventSource reconnects to a stream that has ended
    renderStatus();
    drawCharts();
    bus.dispatchEvent(new Event("runs"));
  });
  drawCharts();
}

async function start() {
  showError($("train-error"), null);
  if ($("data-source").value.trim() !== checkedSource) { await inspect(); if (!checkedSource) return; }
  try {
    const {run} = await api("/api/train/start", trainValues());
    watch(run);
  } catch (error) {
    showError($("train-error"), error);
  }
}

async function control(action) {
  showError($("train-error"), null);
  try {
    await api(`/api/train/${action}`, {run: $("train-run").value});
    if (action === "resume") watch($("train-run").value);
  } catch (error) {
    showError($("train-error"), error);
  }
}

export async function initTrain() {
  $("data-inspect").onclick = inspect;
  $("data-source").addEventListener("input", () => { $("train-start").disabled = $("data-source").value.trim() !== checkedSource; });
  $("train-start").onclick = start;
  $("train-stop").onclick = () => control("stop");
  $("train-resume").onclick = () => control("resume");
  $("train-run").onchange = () => watch($("train-run").value);
  for (const input of $("train-form").elements) input.value = choices.train_defaults[input.name] ?? "";
  bus.addEventListener("plan", describePlan);
  describePlan();
  const {runs} = await api("/api/train/active");  // a run still training from before: reattach to it
  if (runs.length) watch(runs[0]);
  else drawCharts();
}

// Plan tab: the planner's answer for the settings on the page, recomputed as they change.
import {$, api, bus, el, fmt, showError, table} from "./common.js";

const COMPONENT_COLORS = ["#2f6fdf", "#6aa0f7", "#e0692a", "#f2a65a", "#2a9d5c", "#8fd19e", "#9b4dca", "#c9354b", "#6b7a8f", "#b8a04a"];
let chosenTargets = null;   // null: the planner's default for the model
let timer = null;
export let planSettings = {};  // the Plan form in the CLI's vocabulary; the Train tab starts runs with it
export let lastPlan = null;
export let choices = null;     // presets, methods, GPUs and the verbs' defaults, from the server

function formValues() {
  const form = $("plan-form");
  const values = {};
  for (const name of ["model", "method", "gpu", "vram", "seq_len", "batch_size", "lora_r", "examples", "epochs"]) {
    const raw = form.elements[name].value.trim();
    if (raw === "") continue;
    values[name] = form.elements[name].type === "number" ? Number(raw) : raw;
  }
  if (values.gpu === "detected") delete values.gpu;
  if (chosenTargets) values.lora_targets = chosenTargets;
  return values;
}

function renderTargets(valid, inUse) {
  const box = $("lora-targets");
  box.replaceChildren(el("legend", {}, "LoRA targets"), ...valid.map((name) => el("label", {class: "check"},
    el("input", {type: "checkbox", value: name, checked: inUse.includes(name), onchange: () => {
      chosenTargets = [...box.querySelectorAll("input:checked")].map((input) => input.value);
      schedule();
    }}), name)));
}

function memoryBar(plan) {
  const scale = Math.max(plan.vram_budget_bytes || 0, plan.peak_vram_bytes, 1);
  const parts = Object.entries(plan.breakdown).filter(([, size]) => size > 0);
  const bar = el("div", {class: "bar"}, parts.map(([name, size], i) => el("div", {
    class: "segment", title: `${name}: ${fmt.gib(size)}`,
    style: `width:${(100 * size) / scale}%;background:${COMPONENT_COLORS[i % COMPONENT_COLORS.length]}`,
  })));
  if (plan.vram_budget_bytes) {
    bar.append(el("div", {class: "budget", style: `left:${(100 * plan.vram_budget_bytes) / scale}%`, title: "budget"}));
  }
  const legend = el("div", {class: "legend"}, parts.map(([name, size], i) => el("span", {},
    el("i", {style: `background:${COMPONENT_COLORS[i % COMPONENT_COLORS.length]}`}), `${name.replaceAll("_", " ")} ${fmt.gib(size)}`)));
  const verdict = plan.vram_budget_bytes
    ? `Predicted peak ${fmt.gib(plan.peak_vram_bytes)} of a ${fmt.gib(plan.vram_budget_bytes)} budget: ${plan.fits ? "fits" : "does not fit"}. ${plan.reasons.fits || ""}`
    : `Predicted peak ${fmt.gib(plan.peak_vram_bytes)} (no GPU: choose one above).`;
  $("memory-bar").replaceChildren(el("p", {class: `verdict ${plan.fits ? "good" : "bad"}`}, verdict), bar, legend);
}

function render(plan) {
  lastPlan = plan;
  const gpu = plan.gpu ? `${plan.gpu.name} (${plan.gpu.source})` : "no GPU detected";
  $("plan-title").textContent = `${plan.model} (${plan.model_type}), ${plan.method} on ${gpu}`;
  memoryBar(plan);
  const choice = [["compute dtype", plan.compute_dtype], ["max seq len", plan.max_seq_len]];
  const reasonKey = {"compute dtype": "compute_dtype", "max seq len": "max_seq_len", "micro-batch": "micro_batch_size",
    "gradient accumulation": "gradient_accumulation_steps", "checkpointed layers": "checkpoint_layers", optimizer: "optimizer",
    "learning rate": "learning_rate"};
  choice.push(["micro-batch", plan.micro_batch_size]);
  if (plan.method !== "inference") {
    choice.push(["gradient accumulation", plan.gradient_accumulation_steps], ["checkpointed layers", plan.checkpoint_layers], ["optimizer", plan.optimizer]);
  }
  if (plan.learning_rate != null) choice.push(["learning rate", plan.learning_rate]);
  table($("plan-choice"), ["setting", "value", "why"], choice.map(([label, value]) => [label, String(value), plan.reasons[reasonKey[label]] || ""]));
  const params = Object.entries(plan.params).map(([kind, count]) => [kind, fmt.int(count), `${((100 * count) / plan.total_params).toFixed(1)}%`]);
  params.push([el("strong", {}, "total"), el("strong", {}, fmt.int(plan.total_params)), "100%"]);
  if (plan.trainable_params) {
    params.push([`trainable (LoRA r=${plan.lora_r})`, fmt.int(plan.trainable_params), `${((100 * plan.trainable_params) / plan.total_params).toFixed(2)}%`]);
  }
  table($("plan-params"), ["kind", "parameters", "share"], params);
  table($("plan-methods"), ["method", "predicted peak"], Object.entries(plan.methods).map(([name, size]) => [name, fmt.gib(size)]));
  renderTime(plan);
  $("plan-alternatives").replaceChildren(...(plan.alternatives.length ? [el("h3", {}, "Nearest settings that fit"),
    el("ul", {}, plan.alternatives.map((a) => el("li", {}, `${a.summary}: `, el("code", {}, a.flags), ` (${fmt.gib(a.peak_vram_bytes)})`)))] : []));
  renderTargets(plan.valid_lora_targets, plan.lora_targets);
}

function renderTime(plan) {
  const costs = plan.costs;
  if (plan.estimated_tokens_per_second === null) {
    $("plan-time").textContent = plan.reasons.estimated_tokens_per_second || "No time estimate.";
  } else {
    const hours = plan.estimated_hours === null ? "give Examples for hours" : `${fmt.num(plan.estimated_hours, 1)} h for the dataset`;
    const power = costs && costs.electricity ? `; electricity ${fmt.num(costs.electricity.kwh, 1)} kWh = ${fmt.num(costs.electricity.cost)} at ${costs.electricity.price_per_kwh} per kWh (the GPU alone)` : "";
    $("plan-time").textContent = `~${fmt.int(plan.estimated_tokens_per_second)} tokens/s, ${hours} (${plan.reasons.estimated_tokens_per_second})${power}.`;
  }
  const rows = (costs && costs.cloud) || [];
  table($("plan-cloud"), rows.length ? ["cloud instance", "GPUs", "$/h", "tokens/s", "hours", "cost"] : null, rows.map((row) => [
    `${row.provider} ${row.instance}`, `${row.gpu_count}x ${row.gpu}`, fmt.num(row.usd_per_hour),
    row.fits ? fmt.int(row.tokens_per_second) : "does not fit", row.hours === null ? "" : fmt.num(row.hours, 1),
    row.usd === null ? "" : `$${fmt.num(row.usd)}`]));
}

export async function updatePlan() {
  const values = formValues();
  try {
    const plan = await api("/api/plan", values);
    planSettings = values;
    showError($("plan-error"), null);
    render(plan);
    bus.dispatchEvent(new Event("plan"));
  } catch (error) {
    showError($("plan-error"), error);
  }
}

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(updatePlan, 250);
}

export async function initPlan() {
  choices = await api("/api/plan/choices");
  const form = $("plan-form");
  $("presets").replaceChildren(...Object.entries(choices.presets).map(([name, summary]) => el("option", {value: name}, summary)));
  form.elements.method.replaceChildren(...choices.methods.map((m) => el("option", {value: m, selected: m === choices.defaults.method}, m)));
  const detected = choices.detected_gpu ? `detected: ${choices.detected_gpu}` : "none detected";
  form.elements.gpu.replaceChildren(el("option", {value: "detected"}, detected),
    ...choices.gpus.map((gpu) => el("option", {value: gpu.name}, `${gpu.name} (${gpu.vram_gib} GB)`)));
  if (!choices.detected_gpu) form.elements.gpu.value = "RTX 4090";
  for (const name of ["seq_len", "batch_size", "lora_r", "epochs"]) form.elements[name].value = choices.defaults[name];
  form.addEventListener("input", (event) => {
    if (event.target.name === "model") chosenTargets = null;  // another model has other layer names
    schedule();
  });
  await updatePlan();
}

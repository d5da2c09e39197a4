// Ask tab: load a run's adapter (or a base model), paste a passage, ask; answers stream with TTFT and tokens/s.
import {$, api, bus, el, fmt, postEvents, showError} from "./common.js";
import {runs} from "./runs.js";

let answering = null;  // AbortController of the answer in progress

function fillRunSelects() {
  const usable = runs.filter((run) => run.has_adapter);
  for (const [id, blank] of [["ask-run", "(none: base model)"], ["ask-adapter", "none (base model)"]]) {
    const select = $(id), keep = select.value;
    select.replaceChildren(el("option", {value: ""}, blank), ...usable.map((run) => el("option", {value: run.name}, run.name)));
    select.value = usable.some((run) => run.name === keep) ? keep : (id === "ask-run" && usable.length ? usable[usable.length - 1].name : "");
  }
}

function renderState(state) {
  $("ask-state").textContent = state.loaded ? `Loaded ${state.model}; adapter: ${state.adapter}` : "Nothing loaded.";
}

async function call(fn) {
  showError($("ask-error"), null);
  try { await fn(); } catch (error) { showError($("ask-error"), error); }
}

function load() {
  return call(async () => {
    $("ask-state").textContent = "Loading…";
    try {
      renderState(await api("/api/ask/load", {adapter: $("ask-run").value, model: $("ask-model").value.trim()}));
    } catch (error) {
      $("ask-state").textContent = "Nothing loaded.";
      throw error;
    }
    $("ask-adapter").value = $("ask-run").value;
  });
}

async function ask(event) {
  event.preventDefault();
  const question = $("ask-question").value.trim();
  if (!question || answering) return;
  const context = $("ask-context").value;
  const answer = el("div", {class: "answer streaming"});
  const stats = el("div", {class: "stats muted"});
  $("ask-log").append(el("div", {class: "question"}, question), answer, stats);
  $("ask-question").value = "";
  $("ask-cancel").hidden = false;
  answering = new AbortController();
  await call(async () => {
    await postEvents("/api/ask/answer", {question, context}, (name, data) => {
      if (name === "text") answer.textContent += data;
      if (name === "error") showError($("ask-error"), data && {message: data.error, hint: data.hint});
      if (name === "done") {
        answer.classList.remove("streaming");
        if (data.abstained) { answer.textContent = data.display; answer.classList.add("abstained"); }
        else answer.textContent = data.display;
        stats.textContent = [`TTFT ${fmt.int(data.first_token_seconds * 1000)} ms`,
          data.tokens_per_second ? `${fmt.num(data.tokens_per_second, 1)} tok/s` : null, `${data.new_tokens} tokens`,
          `stop: ${data.stop_reason}`, data.closed_book].filter(Boolean).join(" · ");
      }
      $("ask-log").scrollTop = $("ask-log").scrollHeight;
    }, answering.signal).catch((error) => { if (error.name !== "AbortError") throw error; });
  });
  answer.classList.remove("streaming");
  answering = null;
  $("ask-cancel").hidden = true;
}

export async function initAsk() {
  $("ask-load").onclick = load;
  $("ask-switch").onclick = () => call(async () => renderState(await api("/api/ask/adapter", {adapter: $("ask-adapter").value})));
  $("ask-form").addEventListener("submit", ask);
  $("ask-cancel").onclick = () => api("/api/ask/cancel", {});
  bus.addEventListener("runs-listed", fillRunSelects);
  bus.addEventListener("ask-run", (event) => { $("ask-run").value = event.detail; document.querySelector('[data-tab="ask"]').click(); });
  fillRunSelects();
  renderState(await api("/api/ask/state"));
}

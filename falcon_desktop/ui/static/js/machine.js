// Machine tab: the doctor's checks, each with its fix.
import {$, api, el} from "./common.js";

export async function refreshDoctor() {
  const body = $("doctor-checks").tBodies[0];
  $("doctor-verdict").textContent = "Checking the GPU, driver, PyTorch and bitsandbytes…";
  body.replaceChildren();
  try {
    const report = await api("/api/doctor");
    $("doctor-verdict").textContent = report.verdict;
    $("doctor-verdict").className = `verdict ${report.ok ? "good" : "bad"}`;
    body.replaceChildren(...report.checks.map((check) => el("tr", {},
      el("td", {}, check.name), el("td", {}, el("span", {class: `badge ${check.status.toLowerCase()}`}, check.status)),
      el("td", {}, check.value), el("td", {}, check.hint || ""))));
  } catch (error) {
    $("doctor-verdict").textContent = `The checks failed: ${error.message}`;
  }
}

export function initMachine() {
  $("doctor-run").onclick = refreshDoctor;
}

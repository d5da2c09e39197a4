// The page: tabs, the file picker buttons, and each tab's start-up.
import {$, api, pick} from "./common.js";
import {initMachine, refreshDoctor} from "./machine.js";
import {initPlan} from "./plan.js";
import {initTrain} from "./train.js";
import {initRuns} from "./runs.js";
import {initAsk} from "./ask.js";

let doctorRan = false;

function showTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== name;
  if (name === "machine" && !doctorRan) { doctorRan = true; refreshDoctor(); }  // seconds of work: only when asked
  history.replaceState(null, "", `#${name}`);
}

async function main() {
  for (const button of document.querySelectorAll("#tabs button")) button.onclick = () => showTab(button.dataset.tab);
  for (const button of document.querySelectorAll("button.pick")) button.onclick = () => pick($(button.dataset.target));
  showTab(location.hash.slice(1) || "plan");
  api("/api/about").then((about) => { $("version").textContent = `v${about.version}`; });
  initMachine();
  await initPlan();
  await initRuns();
  await Promise.all([initTrain(), initAsk()]);
  document.body.dataset.ready = "true";  // for the browser test
}

main();

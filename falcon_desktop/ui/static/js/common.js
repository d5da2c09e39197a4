// Shared by every tab: JSON calls, errors as Error/Hint, jobs, server-sent events over fetch, formatting.

export class ApiError extends Error {
  constructor(message, hint) { super(message); this.hint = hint || ""; }
}

export async function api(path, body, options = {}) {
  const init = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  };
  const response = await fetch(path, {...init, ...options});
  const data = await response.json().catch(() => ({error: `${response.status} ${response.statusText}`}));
  if (!response.ok) throw new ApiError(data.error, data.hint);
  return data;
}

export function $(id) { return document.getElementById(id); }

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function showError(box, error) {
  if (!error) { box.hidden = true; box.replaceChildren(); return; }
  box.hidden = false;
  box.replaceChildren(el("strong", {}, "Error: "), error.message || String(error),
                      error.hint ? el("div", {}, el("strong", {}, "Hint: "), error.hint) : null);
}

export function table(target, headers, rows) {
  const head = headers ? el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))) : null;
  target.replaceChildren(...[head, el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell) => el("td", {}, cell)))))].filter(Boolean));
}

export const fmt = {
  gib: (bytes) => `${(bytes / 2 ** 30).toFixed(1)} GiB`,
  int: (n) => (n === null || n === undefined ? "-" : Math.round(n).toLocaleString("en-US")),
  num: (n, digits = 2) => (n === null || n === undefined ? "-" : Number(n).toFixed(digits)),
  duration: (seconds) => {
    if (!isFinite(seconds)) return "-";
    const s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
  },
};

// A falcon-desktop process started by the server (data inspect, eval, merge): poll until it ends.
export async function runJob(path, body, {onUpdate = () => {}, cancelButton = null} = {}) {
  let job = await api(path, body);
  const cancel = () => api(`/api/jobs/${job.id}/cancel`, {});
  if (cancelButton) { cancelButton.hidden = false; cancelButton.onclick = cancel; }
  try {
    while (job.state === "running") {
      onUpdate(job);
      await new Promise((resolve) => setTimeout(resolve, 400));
      job = await api(`/api/jobs/${job.id}`);
    }
  } finally {
    if (cancelButton) cancelButton.hidden = true;
  }
  if (job.state === "failed") throw new ApiError(job.error, job.hint);
  return job;
}

// Server-sent events from a POST (EventSource only does GET): calls onEvent(name, data) for each.
export async function postEvents(path, body, onEvent, signal) {
  const response = await fetch(path, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body), signal,
  });
  if (!response.ok) {
    const data = await response.json().catch(() => ({error: response.statusText}));
    throw new ApiError(data.error, data.hint);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const name = (block.match(/^event: (.*)$/m) || [])[1] || "message";
      const data = (block.match(/^data: (.*)$/m) || [])[1];
      onEvent(name, data === undefined ? null : JSON.parse(data));
    }
  }
}

// The file picker: folders under the roots the UI was started with; a click on a file fills `input`.
export async function pick(input) {
  const dialog = $("picker");
  async function open(path) {
    let listing;
    try { listing = await api(`/api/files?path=${encodeURIComponent(path || "")}`); }
    catch (error) { $("picker-path").textContent = error.message; return; }
    $("picker-path").textContent = listing.path || "Folders you can browse";
    const items = [];
    if (listing.path) items.push(el("li", {class: "dir", onclick: () => open(listing.parent)}, ".."));
    for (const entry of listing.entries) {
      items.push(el("li", {
        class: entry.dir ? "dir" : "file",
        onclick: () => (entry.dir ? open(entry.path) : (input.value = entry.path, input.dispatchEvent(new Event("input")), dialog.close())),
      }, entry.name, entry.dir ? "/" : "", entry.size !== null && entry.size !== undefined ? el("span", {class: "muted"}, ` ${fmt.int(entry.size / 1024)} KB`) : null));
    }
    if (input.dataset.folders !== undefined && listing.path) {
      items.unshift(el("li", {class: "choose", onclick: () => { input.value = listing.path; dialog.close(); }}, "Use this folder"));
    }
    $("picker-list").replaceChildren(...items);
  }
  $("picker-close").onclick = () => dialog.close();
  await open("");
  dialog.showModal();
}

export const bus = new EventTarget();  // tabs tell each other: "plan" (settings changed), "runs" (a run changed)

// The quantledger web console: pages over the HTTP/JSON API (/api/v1/...). Every rule shown here
// (types, estimates, verdicts, recommendations) is the server's answer; this file only draws it.
// Text from the server is always set as text (never as HTML).

import { sha256Stream } from "/console/sha256.js";

const TOKEN_KEY = "quantledger.token";
const WEB_CRYPTO_LIMIT = 512 * 1024 * 1024; // larger files are hashed in slices (sha256.js)
const PAGE_SIZE = 10;
const TERMINAL = new Set(["STATE_SUCCEEDED", "STATE_FAILED", "STATE_CANCELLED"]);
// which field of the wizard an error reason concerns, when the error names no field itself
const REASON_FIELD = {
  SOURCE_NOT_FOUND: "source", SOURCE_INVALID: "source", PATH_NOT_ALLOWED: "source",
  UNSUPPORTED_ARCHITECTURE: "source", REQUANTIZE_REFUSED: "source", HUB_UNAVAILABLE: "source",
  UNKNOWN_QUANT_TYPE: "quant_types", IMATRIX_REQUIRED: "quant_types", IMATRIX_INVALID: "imatrix_path",
  LORA_INVALID: "lora", OUTPUT_EXISTS: "output_dir", REQUEST_TOO_LARGE: "source",
};
const FIELD_ALIASES = { "job.source": "source", lora_dir: "lora", "options.lora_dir": "lora",
  "options.imatrix_path": "imatrix_path", "options.output_dir": "output_dir", quant_type: "quant_types" };

// ---------------------------------------------------------------- small helpers

const $ = (selector, root = document) => root.querySelector(selector);
// replaceChildren without the absent parts (replaceChildren itself would write "null")
const fill = (node, ...children) => node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  for (const child of children.flat(Infinity)) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

export function formatBytes(value) {
  const bytes = Number(value || 0);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let size = bytes;
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit += 1; }
  return `${size.toFixed(unit === 0 ? 0 : size < 10 ? 2 : 1)} ${units[unit]}`;
}

function seconds(duration) { // proto JSON Duration: "12.5s"
  return duration ? Number(String(duration).replace(/s$/, "")) : 0;
}

function formatDuration(duration) {
  const total = Math.round(seconds(duration));
  if (!total) return "under a second";
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  return [h && `${h} h`, m && `${m} min`, s && !h && `${s} s`].filter(Boolean).join(" ");
}

const label = (enumName, prefix) => String(enumName || "").replace(prefix, "");
const jobId = (name) => String(name).replace(/^jobs\//, "");

// ---------------------------------------------------------------- the API

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    const info = (this.body.details || []).find((d) => String(d["@type"] || "").endsWith("google.rpc.ErrorInfo"));
    this.reason = (info && info.reason) || "";
    this.metadata = (info && info.metadata) || {};
  }
}

function authHeaders() {
  const token = localStorage.getItem(TOKEN_KEY);
  return token ? { authorization: `Bearer ${token}` } : {};
}

async function answerOf(response) {
  const text = await response.text();
  let body = {};
  try { body = text ? JSON.parse(text) : {}; } catch { body = { message: text }; }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

async function call(verb, path, body) {
  const headers = { accept: "application/json", ...authHeaders() };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { method: verb, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return answerOf(response);
}

// WatchQuantizeJob as Server-Sent Events read from a fetch stream (EventSource cannot send a token).
async function watchJob(name, onSnapshot, signal) {
  const response = await fetch(`/api/v1/quantize/${name}:watch`, {
    headers: { accept: "text/event-stream", ...authHeaders() }, signal,
  });
  if (!response.ok) await answerOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (!data.length) continue;
      const body = JSON.parse(data.join("\n"));
      if (event === "error") throw new ApiError(0, body);
      onSnapshot(body);
    }
  }
}

function upload(file, onProgress) { // POST /api/v1/uploads: XMLHttpRequest reports upload progress
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", `/api/v1/uploads?filename=${encodeURIComponent(file.name)}`);
    for (const [key, value] of Object.entries(authHeaders())) request.setRequestHeader(key, value);
    request.setRequestHeader("content-type", "application/octet-stream");
    request.upload.onprogress = (event) => event.lengthComputable && onProgress(event.loaded / event.total);
    request.onload = () => {
      let body = {};
      try { body = JSON.parse(request.responseText || "{}"); } catch { body = { message: request.responseText }; }
      if (request.status === 200) resolve(body);
      else reject(new ApiError(request.status, body));
    };
    request.onerror = () => reject(new ApiError(0, { message: "the upload did not reach the server" }));
    request.send(file);
  });
}

// ---------------------------------------------------------------- errors beside their fields

function errorText(error) {
  const reason = error.reason || (error.status ? `HTTP ${error.status}` : "ERROR");
  return [el("span", { class: "reason" }, reason), error.message];
}

function showError(id, error) {
  const node = document.getElementById(id);
  if (!node) return showGlobal(error);
  node.replaceChildren(...errorText(error));
  node.hidden = false;
  const input = document.querySelector(`[aria-describedby~="${id}"]`);
  if (input) input.setAttribute("aria-invalid", "true");
}

function clearErrors(root) {
  for (const node of root.querySelectorAll(".field-error")) { node.hidden = true; node.replaceChildren(); }
  for (const node of root.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

function showGlobal(error) {
  const node = $("#global-error");
  if (!error) { node.hidden = true; return; }
  node.replaceChildren(...errorText(error));
  node.hidden = false;
}

function fieldOf(error, fallback) {
  if (error.field) return error.field; // an upload's refusal concerns the field of its file
  const named = error.metadata.field;
  const field = named && (FIELD_ALIASES[named] || named.replace(/^options\./, ""));
  return (field && document.getElementById(`${field}-error`) && field) || REASON_FIELD[error.reason] || fallback;
}

// ---------------------------------------------------------------- the catalogue (wizard and page)

let catalogue = null;
async function quantTypes() {
  if (!catalogue) catalogue = await call("GET", "/api/v1/quantize/types?page_size=1000");
  return catalogue;
}

async function showCatalogue() {
  const answer = await quantTypes();
  $("#catalogue-version").textContent = `${answer.llama_cpp_build || "llama.cpp"}, through ${answer.llama_cpp_version || "?"}`;
  const rows = (answer.quant_types || []).map((t) => el("tr", { dataset: { quantType: t.name } },
    el("td", { class: "mono" }, t.name), el("td", { class: "num" }, t.file_type ?? 0), el("td", {}, t.family || ""),
    el("td", { class: "num" }, Number(t.typical_bits_per_weight || 0).toFixed(2)),
    el("td", {}, t.requires_imatrix ? "yes" : ""), el("td", {}, t.description || ""), el("td", {}, t.use_for || "")));
  $("#catalogue-table").replaceChildren(el("table", { id: "catalogue" },
    el("thead", {}, el("tr", {}, ["Type", "ftype", "Family", "Bits/weight", "Needs imatrix", "What it is", "Use it for"]
      .map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows)));
}

// ---------------------------------------------------------------- new job wizard

let estimated = null; // the request the shown estimate answers
const uploaded = new Map(); // File → its path on the server

async function fillTypeTable() {
  const answer = await quantTypes();
  $("#llama-version").textContent = answer.llama_cpp_version ? `(${answer.llama_cpp_version})` : "";
  const body = $("#type-table tbody");
  if (body.children.length) return;
  for (const t of answer.quant_types || []) {
    const id = `type-${t.name}`;
    body.append(el("tr", {},
      el("td", {}, el("input", { type: "checkbox", id, value: t.name, name: "quant_type", checked: t.name === "Q4_K_M" })),
      el("td", {}, el("label", { for: id, class: "mono" }, t.name)),
      el("td", { class: "num" }, Number(t.typical_bits_per_weight || 0).toFixed(2)),
      el("td", {}, t.use_for || t.description || "", t.use_for && el("div", { class: "hint" }, t.description || ""))));
  }
}

function sourceKind() { return document.querySelector('input[name="source-kind"]:checked').value; }

function syncSourceKind() {
  const kind = sourceKind();
  $("#source-text-field").hidden = kind === "upload";
  $("#source-file-field").hidden = kind !== "upload";
  $("#source-label").textContent = kind === "hub" ? "Hub id (owner/name@revision)" : "GGUF file or Hugging Face model folder";
  $("#source").placeholder = kind === "hub" ? "meta-llama/Llama-3.2-1B@main" : "/models/llama-3.2-1b-f16.gguf";
}

async function uploadOnce(file, field) { // the same File is sent once; its server path is kept
  if (uploaded.has(file)) return uploaded.get(file);
  const bar = $("#upload-progress");
  bar.hidden = false;
  try {
    const answer = await upload(file, (fraction) => { bar.value = fraction; });
    uploaded.set(file, answer.path);
    return answer.path;
  } catch (error) {
    error.field = field;
    throw error;
  } finally {
    bar.hidden = true;
  }
}

async function sourceValue() {
  if (sourceKind() !== "upload") return $("#source").value.trim();
  const file = $("#source-file").files[0];
  if (!file) throw Object.assign(new ApiError(400, { message: "choose a GGUF file to upload" }), { reason: "SOURCE_NOT_FOUND" });
  return uploadOnce(file, "source");
}

function jobFromForm(source, imatrix) {
  const options = {};
  const text = (id) => $(`#opt-${id}`).value.trim();
  for (const id of ["output_dir", "imatrix_path", "output_tensor_type", "token_embedding_type", "intermediate_type"]) {
    if (text(id)) options[id] = text(id);
  }
  if (Number(text("threads"))) options.threads = Number(text("threads"));
  if (Number(text("max_kl_divergence"))) options.max_kl_divergence = Number(text("max_kl_divergence"));
  for (const id of ["skip_quality", "allow_requantize", "leave_output_tensor", "pure", "overwrite"]) {
    if ($(`#opt-${id}`).checked) options[id] = true;
  }
  if (imatrix) options.imatrix_path = imatrix;
  if ($("#lora").value.trim()) options.lora_dir = $("#lora").value.trim();
  const quant_types = [...document.querySelectorAll('input[name="quant_type"]:checked')].map((c) => c.value);
  return { source, quant_types, options };
}

function showEstimate(answer) {
  const rows = (answer.outputs || []).map((o) => el("tr", { dataset: { quantType: o.quant_type } },
    el("td", { class: "mono" }, o.quant_type), el("td", { class: "num" }, formatBytes(o.size_bytes)),
    el("td", { class: "num" }, Number(o.bits_per_weight || 0).toFixed(2)),
    el("td", { class: "num" }, formatDuration(o.duration))));
  const fits = answer.fits_on_disk;
  const info = answer.source_info || {};
  $("#estimate-result").replaceChildren(
    el("h3", {}, "Estimate"),
    el("p", { class: "hint" }, [info.architecture, info.parameter_count && `${Number(info.parameter_count).toLocaleString()} parameters`,
      info.size_bytes && `source ${formatBytes(info.size_bytes)}`].filter(Boolean).join(" · ")),
    el("div", { class: "table-wrap" }, el("table", { id: "estimate-table" },
      el("thead", {}, el("tr", {}, ["Type", "Size", "Bits/weight", "Time"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows))),
    el("p", { id: "estimate-disk", class: fits ? "" : "error" },
      `Disk: ${formatBytes(answer.disk_bytes_needed)} needed, ${formatBytes(answer.disk_bytes_free)} free in `,
      el("code", {}, answer.output_dir || ""), fits ? " — fits." : " — does not fit."),
    el("p", { id: "estimate-time" }, `Time: about ${formatDuration(answer.duration)}.`));
  $("#estimate-result").hidden = false;
}

async function runEstimate() {
  const form = $("#new-job");
  clearErrors(form);
  $("#create").disabled = true;
  try {
    const source = await sourceValue();
    const imatrixFile = $("#opt-imatrix_file").files[0];
    const job = jobFromForm(source, imatrixFile ? await uploadOnce(imatrixFile, "imatrix_path") : "");
    const answer = await call("POST", "/api/v1/quantize/estimate", job);
    showEstimate(answer);
    estimated = JSON.stringify(job);
    $("#create").disabled = !answer.fits_on_disk;
    return job;
  } catch (error) {
    $("#estimate-result").hidden = true;
    showError(`${fieldOf(error, "form")}-error`, error);
    return null;
  }
}

async function createJob(event) {
  event.preventDefault();
  const job = estimated ? JSON.parse(estimated) : await runEstimate();
  if (!job) return;
  clearErrors($("#new-job"));
  try {
    const created = await call("POST", `/api/v1/quantize/jobs?request_id=${crypto.randomUUID()}`, job);
    estimated = null;
    $("#create").disabled = true;
    freshJob = created.name;
    location.hash = "#/jobs";
  } catch (error) {
    showError(`${fieldOf(error, "form")}-error`, error);
  }
}

function wireWizard() {
  const form = $("#new-job");
  const invalidate = () => { estimated = null; $("#create").disabled = true; };
  form.addEventListener("input", invalidate);
  form.addEventListener("change", (event) => {
    invalidate();
    if (event.target.name === "source-kind") syncSourceKind();
  });
  $("#estimate").addEventListener("click", runEstimate);
  form.addEventListener("submit", createJob);
}

// ---------------------------------------------------------------- jobs

let freshJob = null;
let pageTokens = [""]; // the token of each page seen, for "first page" and "next page"
let watchers = new AbortController();

function qualityText(quality) {
  if (!quality) return "";
  if (quality.error) return `not measured: ${quality.error.message || ""}`;
  if (quality.kind === "embedding") return `cosine ${Number(quality.mean_cosine_similarity || 0).toFixed(4)}`;
  if (quality.kind === "reranker") return `NDCG@5 ${Number(quality.ndcg_at_5 || 0).toFixed(4)}`;
  const kl = `KL ${Number(quality.mean_kl_divergence || 0).toFixed(4)}`;
  return quality.perplexity_delta !== undefined ? `${kl} · Δppl ${Number(quality.perplexity_delta).toFixed(3)}` : kl;
}

function copyButton(text) {
  return el("button", { type: "button", class: "secondary copy", "aria-label": "Copy the SHA-256",
    onclick: async (event) => {
      const button = event.currentTarget;
      try { await navigator.clipboard.writeText(text); button.textContent = "Copied"; } catch { button.textContent = "Select"; }
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    } }, "Copy");
}

function outputsTable(outputs) {
  if (!outputs || !outputs.length) return null;
  const headings = ["Type", "Size", "Bits/weight", "Ratio", "Quality", "SHA-256", "Registry"];
  return el("div", { class: "table-wrap" }, el("table", { class: "outputs" },
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, outputs.map((o) => {
      const registry = o.registry || {};
      const tx = String(registry.tx_hash || "");
      const registryText = [label(registry.state, "STATE_"), tx && `tx ${tx.slice(0, 10)}…${tx.slice(-6)}`].filter(Boolean).join(" · ");
      const cells = [
        el("span", { class: "mono" }, o.quant_type), formatBytes(o.size_bytes), Number(o.bits_per_weight || 0).toFixed(2),
        o.compression_ratio ? `${Number(o.compression_ratio).toFixed(2)}×` : "", qualityText(o.quality),
        el("span", { class: "sha" }, el("code", { title: o.sha256 }, String(o.sha256 || "").slice(0, 16) + "…"), copyButton(o.sha256)),
        el("span", { class: "mono registry", title: tx || undefined }, registryText),
      ];
      return el("tr", { dataset: { quantType: o.quant_type, sha256: o.sha256 } },
        cells.map((cell, i) => el("td", { "data-label": headings[i] }, cell)));
    }))));
}

function progressLine(job) {
  if (TERMINAL.has(job.state) || job.state !== "STATE_RUNNING") return null;
  const p = job.progress || {};
  const parts = [label(job.stage, "STAGE_"), p.current_quant_type, p.current_tensor && el("code", {}, p.current_tensor),
    p.outputs_total && `${p.outputs_done || 0}/${p.outputs_total} outputs`, p.eta && `ETA ${formatDuration(p.eta)}`];
  return el("div", { class: "progress-line" },
    el("progress", { max: 1, value: Number(p.fraction || 0), "aria-label": "progress" }),
    el("span", { class: "percent" }, `${Math.round(Number(p.fraction || 0) * 100)}%`),
    parts.filter(Boolean).map((part) => el("span", {}, part)));
}

function renderCard(card, job) {
  const id = jobId(job.name);
  const cancel = !TERMINAL.has(job.state) && el("button", { type: "button", class: "danger cancel",
    onclick: async (event) => {
      event.currentTarget.disabled = true;
      try { renderCard(card, await call("POST", `/api/v1/quantize/${job.name}:cancel`, {})); } catch (error) { showGlobal(error); }
    } }, "Cancel");
  const compare = job.outputs && job.outputs.length && el("a", { class: "button secondary compare", href: `#/jobs/${id}/compare` }, "Compare");
  card.dataset.state = job.state;
  fill(card,
    el("header", { class: "card-head" },
      el("h3", {}, el("code", {}, id.slice(0, 12))),
      el("span", { class: `state ${job.state}` }, label(job.state, "STATE_")),
      el("span", { class: "types mono" }, (job.quant_types || []).join(" ")),
      el("span", { class: "card-actions" }, compare, cancel)),
    el("p", { class: "source" }, job.source, job.create_time && ` · created ${new Date(job.create_time).toLocaleString()}`),
    progressLine(job),
    job.error && el("p", { class: "error job-error" }, ...errorText(new ApiError(0, job.error))),
    outputsTable(job.outputs));
}

async function followCard(card, job) {
  try {
    await watchJob(job.name, (snapshot) => renderCard(card, snapshot), watchers.signal);
  } catch (error) {
    if (error.name !== "AbortError") card.append(el("p", { class: "error" }, ...errorText(error)));
  }
}

async function showJobs(page = 0) {
  watchers.abort();
  watchers = new AbortController();
  const answer = await call("GET", `/api/v1/quantize/jobs?page_size=${PAGE_SIZE}&page_token=${encodeURIComponent(pageTokens[page])}`);
  pageTokens = pageTokens.slice(0, page + 1);
  if (answer.next_page_token) pageTokens.push(answer.next_page_token);
  const cards = (answer.jobs || []).map((job) => {
    const card = el("article", { class: `card${job.name === freshJob ? " fresh" : ""}`, id: `job-${jobId(job.name)}`,
      dataset: { name: job.name }, "aria-label": `job ${jobId(job.name)}` });
    renderCard(card, job);
    if (!TERMINAL.has(job.state)) followCard(card, job);
    return card;
  });
  $("#job-cards").replaceChildren(...(cards.length ? cards : [el("p", { class: "hint" }, "No jobs yet. ",
    el("a", { href: "#/new" }, "Create one."))]));
  $("#first-page").disabled = page === 0;
  $("#next-page").disabled = !answer.next_page_token;
  $("#next-page").onclick = () => showJobs(page + 1);
  $("#first-page").onclick = () => showJobs(0);
}

// ---------------------------------------------------------------- compare: size against quality

function qualityAxis(outputs) {
  const embedding = outputs.some((o) => o.quality && o.quality.kind === "embedding");
  if (outputs.some((o) => o.quality && o.quality.kind === "reranker")) {
    return { title: "NDCG@5 against the unquantized model (higher is better)", value: (q) => q.ndcg_at_5 };
  }
  return embedding
    ? { title: "mean cosine similarity (higher is better)", value: (q) => q.mean_cosine_similarity }
    : { title: "mean KL divergence (lower is better)", value: (q) => q.mean_kl_divergence };
}

function modelOf(job) {
  const source = String(job.source || "");
  if (source.endsWith(".gguf")) return { gguf_path: source };
  if (source.startsWith("/") || source.startsWith(".")) return { hf_folder: source };
  return { hf_repo: source.replace(/^hf:\/\//, "") };
}

function niceTicks(low, high, count = 5) {
  if (!(high > low)) { high = low + (Math.abs(low) || 1); }
  const step = 10 ** Math.floor(Math.log10((high - low) / count));
  const multiple = [1, 2, 5, 10].find((m) => (high - low) / (m * step) <= count) * step;
  const ticks = [];
  for (let t = Math.floor(low / multiple) * multiple; t <= high + multiple / 2; t += multiple) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

export function drawChart(outputs, recommendedType, axis) {
  const width = 720, height = 400, left = 80, right = 110, top = 30, bottom = 56;
  const points = outputs.filter((o) => o.quality && !o.quality.error && axis.value(o.quality) !== undefined)
    .map((o) => ({ type: o.quant_type, x: Number(o.size_bytes) / 2 ** 20, y: Number(axis.value(o.quality)) }));
  const xs = niceTicks(0, Math.max(...points.map((p) => p.x), 1));
  const ys = niceTicks(Math.min(...points.map((p) => p.y), 0), Math.max(...points.map((p) => p.y), 1e-6));
  const sx = (x) => left + ((x - xs[0]) / (xs.at(-1) - xs[0])) * (width - left - right);
  const sy = (y) => height - bottom - ((y - ys[0]) / (ys.at(-1) - ys[0])) * (height - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", id: "chart",
    "aria-label": `size against ${axis.title}, one point per output` });
  for (const x of xs) chart.append(svg("line", { class: "grid-line", x1: sx(x), x2: sx(x), y1: top, y2: height - bottom }),
    svg("text", { x: sx(x), y: height - bottom + 18, "text-anchor": "middle" }, `${x}`));
  for (const y of ys) chart.append(svg("line", { class: "grid-line", x1: left, x2: width - right, y1: sy(y), y2: sy(y) }),
    svg("text", { x: left - 8, y: sy(y) + 4, "text-anchor": "end" }, `${y}`));
  chart.append(
    svg("g", { class: "axis" }, svg("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }),
      svg("line", { x1: left, x2: left, y1: top, y2: height - bottom })),
    svg("text", { x: (left + width - right) / 2, y: height - 12, "text-anchor": "middle" }, "file size (MiB)"),
    svg("text", { x: 16, y: (top + height - bottom) / 2, "text-anchor": "middle",
      transform: `rotate(-90 16 ${(top + height - bottom) / 2})` }, axis.title));
  for (const p of points) {
    const marked = p.type === recommendedType;
    const group = svg("g", { class: "output", "data-quant-type": p.type });
    if (marked) group.append(svg("circle", { class: "ring", cx: sx(p.x), cy: sy(p.y), r: 12 }));
    group.append(svg("circle", { class: `point${marked ? " recommended" : ""}`, cx: sx(p.x), cy: sy(p.y), r: 6,
      "data-quant-type": p.type }, svg("title", {}, `${p.type}: ${p.x.toFixed(1)} MiB, ${p.y}`)),
    svg("text", { x: sx(p.x) + 10, y: sy(p.y) - 10 }, marked ? `${p.type} (recommended)` : p.type));
    chart.append(group);
  }
  return { chart, plotted: points.length };
}

async function showCompare(id) {
  const name = `jobs/${id}`;
  const job = await call("GET", `/api/v1/quantize/${name}`);
  $("#compare-job").replaceChildren("Job ", el("code", {}, id.slice(0, 12)), ` · ${job.source}`);
  const outputs = job.outputs || [];
  const axis = qualityAxis(outputs);
  $("#compare-error").hidden = true;
  let recommended = "";
  let reasons = [];
  try {
    const answer = await call("POST", "/api/v1/recommend", {
      model: modelOf(job), hardware: { tier: $("#compare-tier").value }, preference: $("#compare-preference").value,
      max_options: 50,
    });
    const types = new Set(outputs.map((o) => o.quant_type));
    const best = (answer.options || []).find((o) => types.has(o.quant_type) && o.fits);
    if (best) { recommended = best.quant_type; reasons = best.reasons || []; }
  } catch (error) {
    $("#compare-error").replaceChildren("No recommendation: ", ...errorText(error));
    $("#compare-error").hidden = false;
  }
  const { chart, plotted } = drawChart(outputs, recommended, axis);
  $("#compare-chart").replaceChildren(chart);
  $("#compare-caption").textContent = `${plotted} of ${outputs.length} outputs have a quality report. `
    + (recommended ? `Recommended here: ${recommended}. ${reasons.join(" ")}` : "None of these outputs is recommended for this machine.");
  fill($("#compare-table"), outputsTable(outputs));
}

// ---------------------------------------------------------------- recommend

function recommendRequest() {
  const kind = $("#rec-model-kind").value;
  const gib = (id) => Math.round(Number($(id).value || 0) * 2 ** 30);
  const request = { model: { [kind]: $("#rec-model").value.trim() }, hardware: { ram_bytes: String(gib("#rec-ram")) },
    preference: $("#rec-preference").value };
  if (gib("#rec-vram") > 0) request.hardware.devices = [{ kind: "KIND_CUDA", memory_bytes: String(gib("#rec-vram")) }];
  else request.hardware.cpu_only = true;
  if (Number($("#rec-context").value) > 0) request.context_length = Number($("#rec-context").value);
  return request;
}

async function recommend(event) {
  event.preventDefault();
  clearErrors($("#recommend-form"));
  try {
    const answer = await call("POST", "/api/v1/recommend", recommendRequest());
    const rows = (answer.options || []).map((o, i) => el("tr", { class: o.fits ? "" : "no-fit", dataset: { quantType: o.quant_type } },
      el("td", { class: "num" }, i + 1), el("td", { class: "mono" }, o.quant_type), el("td", { class: "num" }, formatBytes(o.size_bytes)),
      el("td", {}, o.fits ? "yes" : "no"), el("td", { class: "num" }, `${o.gpu_layers || 0}/${o.total_layers || 0}`),
      el("td", {}, (o.devices || []).map((d) => el("div", {}, `${d.device}: ${formatBytes(d.bytes_used)} of ${formatBytes(d.bytes_available)}`))),
      el("td", { class: "num" }, o.tokens_per_second ? Number(o.tokens_per_second).toFixed(1) : ""),
      el("td", { class: "num" }, o.quality && o.quality.mean_kl_divergence !== undefined ? Number(o.quality.mean_kl_divergence).toFixed(4) : ""),
      el("td", {}, el("ul", { class: "reasons" }, (o.reasons || []).map((r) => el("li", {}, r))))));
    $("#recommend-result").replaceChildren(
      el("p", { class: "hint" }, [answer.model_summary, answer.hardware_summary].filter(Boolean).join(" · ")),
      el("div", { class: "table-wrap" }, el("table", { id: "recommend-table" },
        el("thead", {}, el("tr", {}, ["#", "Type", "Size", "Fits", "GPU layers", "Memory per device", "Tokens/s", "KL", "Why"]
          .map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows))));
  } catch (error) {
    showError(error.metadata.field || error.reason === "SOURCE_NOT_FOUND" || error.reason === "SOURCE_INVALID"
      ? "rec-model-error" : "recommend-error", error);
  }
}

// ---------------------------------------------------------------- verify

let hashed = null; // { sha256, size } of the dropped file

async function hashFile(file) {
  const bar = $("#hash-progress");
  bar.hidden = false;
  bar.value = 0;
  let hex;
  if (file.size <= WEB_CRYPTO_LIMIT) {
    const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
    hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  } else {
    hex = await sha256Stream(file, (fraction) => { bar.value = fraction; });
  }
  bar.value = 1;
  return hex;
}

async function takeFile(file) {
  if (!file) return;
  $("#verify-result").replaceChildren(el("p", { class: "hint" }, `Hashing ${file.name} (${formatBytes(file.size)})…`));
  const sha = await hashFile(file);
  hashed = { sha256: sha, size: file.size, name: file.name };
  $("#verify-sha").value = sha;
  await verify();
}

function recordFacts(record) {
  const facts = [["Attester", record.attester], ["Quant type", record.quant_type], ["Source", record.source_digest],
    ["Revision", record.source_revision], ["Provenance SHA-256", record.provenance_sha256], ["Tool", record.tool_version],
    ["Size", record.quantized_size_bytes && formatBytes(record.quantized_size_bytes)],
    ["Compression", record.compression_ratio && `${Number(record.compression_ratio).toFixed(2)}×`],
    ["Flags", (record.flags || []).join(", ")], ["Attested", record.attest_time], ["Revoked", record.revoke_time]];
  return el("dl", { class: "facts" }, facts.filter(([, v]) => v).map(([k, v]) => [el("dt", {}, k), el("dd", { class: "mono" }, v)]));
}

async function verify(event) {
  if (event) event.preventDefault();
  clearErrors($("#verify-form"));
  const sha = $("#verify-sha").value.trim().toLowerCase();
  const size = hashed && hashed.sha256 === sha ? `?size_bytes=${hashed.size}` : "";
  try {
    const answer = await call("GET", `/api/v1/registry/files/${encodeURIComponent(sha)}:verify${size}`);
    const valid = answer.valid_records || [];
    const revoked = answer.revoked_records || [];
    fill($("#verify-result"),
      el("p", { id: "verdict", class: `verdict ${answer.verdict}` }, label(answer.verdict, "VERDICT_")),
      el("p", { class: "hint" }, `${hashed && hashed.sha256 === sha ? `${hashed.name}: ` : ""}${sha}`,
        answer.chain_id ? ` · chain ${answer.chain_id}, registry ${answer.contract}` : ""),
      valid.length ? el("h3", {}, `Attested by ${valid.length}`) : null, valid.map(recordFacts),
      revoked.length ? el("h3", {}, `Revoked by ${revoked.length}`) : null, revoked.map(recordFacts));
  } catch (error) {
    $("#verify-result").replaceChildren();
    showError("verify-error", error);
  }
}

function wireVerify() {
  const zone = $("#drop-zone");
  const input = $("#verify-file");
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); } });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => { event.preventDefault(); zone.classList.remove("over"); takeFile(event.dataTransfer.files[0]); });
  input.addEventListener("change", () => takeFile(input.files[0]));
  $("#verify-form").addEventListener("submit", verify);
}

// ---------------------------------------------------------------- pages

const PAGES = {
  new: async () => { await fillTypeTable(); syncSourceKind(); },
  jobs: () => showJobs(0),
  compare: (id) => showCompare(id),
  recommend: async () => {},
  verify: async () => {},
  catalogue: () => showCatalogue(),
};

async function route() {
  const [, page = "jobs", id = "", sub = ""] = location.hash.replace(/^#/, "").split("/");
  const name = page === "jobs" && sub === "compare" ? "compare" : PAGES[page] ? page : "jobs";
  if (name !== "jobs") watchers.abort();
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.dataset.page !== name;
  for (const link of document.querySelectorAll("header nav a")) {
    if (link.dataset.page === (name === "compare" ? "jobs" : name)) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  showGlobal(null);
  document.body.dataset.page = name;
  document.body.dataset.ready = "";
  try {
    await PAGES[name](id);
  } catch (error) {
    showGlobal(error);
  }
  document.body.dataset.ready = name;
}

function wireToken() {
  $("#token").value = localStorage.getItem(TOKEN_KEY) || "";
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("#token").value.trim();
    if (token) localStorage.setItem(TOKEN_KEY, token); else localStorage.removeItem(TOKEN_KEY);
    catalogue = null;
    $("#token-state").textContent = token ? "saved" : "cleared";
    route();
  });
}

wireToken();
wireWizard();
wireVerify();
$("#recommend-form").addEventListener("submit", recommend);
$("#compare-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const [, , id] = location.hash.split("/");
  showCompare(id).catch(showGlobal);
});
window.addEventListener("hashchange", route);
route();

// visattn serve: the page. Plain JavaScript, no framework, no build step, nothing fetched from elsewhere.
// It asks the server for predictions (/api/predict/NAME) and draws every attention map itself: the grid
// values are up-sampled bilinearly to the canvas and coloured with the inferno colour map.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  models: [],
  model: null,        // the selected entry of /api/models
  blob: null,         // the image last sent, so that changed options can run again
  filename: null,
  img: null,          // the decoded image (null when the browser cannot show its format)
  result: null,       // the Predictor's JSON
  refs: null,         // a sample's references
  hyp: 0,             // caption: which n-best hypothesis
  word: 0,            // caption: which word's map is shown
  glimpse: 0,         // classify: which glimpse's map is shown
  det: -1,            // detect: which detection's query map is shown (-1: boxes only)
  timer: null,        // the play button's interval
  request: 0,         // id of the newest request; answers to older ones are dropped
};

// ------------------------------------------------------------------------------------------- colour map
// Inferno (matplotlib), 9 stops; values in [0, 1] are interpolated linearly between them.
const INFERNO = [[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
                 [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]];

function inferno(v) {
  const x = Math.min(Math.max(v, 0), 1) * (INFERNO.length - 1);
  const i = Math.min(Math.floor(x), INFERNO.length - 2);
  const t = x - i, a = INFERNO[i], b = INFERNO[i + 1];
  return [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t];
}

// A grid map (rows of numbers) up-sampled to width x height, bilinear with pixel centres aligned as
// PyTorch's align_corners=False, then divided by its maximum so the brightest cell is 1.
function upsample(grid, width, height) {
  const gh = grid.length, gw = grid[0].length;
  const out = new Float32Array(width * height);
  let max = 0;
  for (let y = 0; y < height; y++) {
    const sy = Math.min(Math.max((y + 0.5) * gh / height - 0.5, 0), gh - 1);
    const y0 = Math.floor(sy), y1 = Math.min(y0 + 1, gh - 1), fy = sy - y0;
    for (let x = 0; x < width; x++) {
      const sx = Math.min(Math.max((x + 0.5) * gw / width - 0.5, 0), gw - 1);
      const x0 = Math.floor(sx), x1 = Math.min(x0 + 1, gw - 1), fx = sx - x0;
      const top = grid[y0][x0] * (1 - fx) + grid[y0][x1] * fx;
      const bottom = grid[y1][x0] * (1 - fx) + grid[y1][x1] * fx;
      const v = top * (1 - fy) + bottom * fy;
      out[y * width + x] = v;
      if (v > max) max = v;
    }
  }
  if (max > 0) for (let i = 0; i < out.length; i++) out[i] /= max;
  return out;
}

function paintMap(ctx, grid, width, height, opacity) {
  const values = upsample(grid, width, height);
  const image = ctx.createImageData(width, height);
  const alpha = Math.round(opacity * 255);
  for (let i = 0; i < values.length; i++) {
    const [r, g, b] = inferno(values[i]);
    image.data[4 * i] = r; image.data[4 * i + 1] = g; image.data[4 * i + 2] = b; image.data[4 * i + 3] = alpha;
  }
  ctx.putImageData(image, 0, 0);
}

// ------------------------------------------------------------------------------------------- the API
class ApiError extends Error {
  constructor(status, message, field) { super(message); this.status = status; this.field = field; }
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {
    throw new ApiError(0, `cannot reach the server (${error.message}); is visattn serve still running?`);
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: the status says it */ }
  if (!response.ok) {
    const message = (body && (body.error || body.detail)) || response.statusText || "request failed";
    throw new ApiError(response.status, typeof message === "string" ? message : JSON.stringify(message),
                       body && body.field);
  }
  return body;
}

function showError(error) {
  const box = $("error");
  box.replaceChildren();
  box.append(el("strong", "", error.status ? `Error ${error.status}` : "Error"), document.createTextNode(error.message));
  box.hidden = false;
}

function clearError() { $("error").hidden = true; $("error").replaceChildren(); }

function setStatus(text, busy = false) {
  $("status").textContent = text;
  $("status").classList.toggle("busy", busy);
}

// ------------------------------------------------------------------------------------------- models
async function loadModels() {
  try { state.models = await api("/api/models"); } catch (error) { showError(error); return; }
  $("model").replaceChildren(...state.models.map((m) => {
    const option = el("option", "", `${m.name} — ${m.task}, ${m.image_size} px`);
    option.value = m.name;
    return option;
  }));
  selectModel(state.models[0] && state.models[0].name);
}

function selectModel(name) {
  stopPlaying();
  state.model = state.models.find((m) => m.name === name) || null;
  state.result = state.refs = null;
  render();
  if (!state.model) return;
  $("sample").disabled = !state.model.sample;
  $("sample").title = state.model.sample ? "draw a fresh procedural scene" : state.model.sample_note;
  $("note").textContent = state.model.sample_note;
  setStatus(state.blob ? "Running the new model on the same image…" : "Pick an image to start.");
  if (state.blob) predict(state.blob, state.filename, null);
}

// ------------------------------------------------------------------------------------------- requests
function loadImage(blob) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => resolve(null);
    img.src = URL.createObjectURL(blob);
  });
}

function options() {
  const form = {};
  if (!state.model) return form;
  if (state.model.task === "caption") {
    const beam = clampInput($("beam-size"));
    form.beam_size = beam;
    form.n_best = Math.min(clampInput($("n-best")), beam);
  } else if (state.model.task === "detect") {
    form.score_threshold = $("threshold").value;
  }
  return form;
}

function clampInput(input) {
  const value = Math.round(Number(input.value) || 1);
  const clamped = Math.min(Math.max(value, Number(input.min)), Number(input.max));
  input.value = clamped;
  return clamped;
}

async function predict(blob, filename, refs) {
  if (!state.model) return;
  const id = ++state.request;
  const name = state.model.name;
  stopPlaying();
  clearError();
  setStatus(`Asking ${name}…`, true);
  const image = loadImage(blob);
  const form = new FormData();
  form.append("file", blob, filename);
  for (const [key, value] of Object.entries(options())) form.append(key, value);
  const started = performance.now();
  let result;
  try {
    result = await api(`/api/predict/${encodeURIComponent(name)}`, { method: "POST", body: form });
  } catch (error) {
    if (id !== state.request) return;
    showError(error);
    setStatus(state.result ? "Showing the previous image; the server refused this one." : "Nothing to show yet.");
    return;
  }
  const img = await image;
  if (id !== state.request) return;
  const ms = Math.round(performance.now() - started);
  Object.assign(state, { blob, filename, img, result, refs, hyp: 0, word: 0, glimpse: 0, det: -1 });
  const [gh, gw] = result.grid;
  const [h, w] = result.image_size;
  setStatus(`${filename}: ${w}×${h} px · ${gh}×${gw} attention grid · answered in ${ms} ms` +
            (img ? "" : " · this browser cannot display the image's format, so the maps are drawn alone"));
  render();
}

async function trySample() {
  if (!state.model) return;
  clearError();
  setStatus("Drawing a procedural scene…", true);
  let sample;
  try { sample = await api(`/api/sample/${encodeURIComponent(state.model.name)}`); } catch (error) {
    showError(error); setStatus(""); return;
  }
  const blob = await (await fetch(sample.image)).blob();
  predict(blob, `sample-${sample.seed}.png`, sample.references);
}

// ------------------------------------------------------------------------------------------- drawing
const BOX_COLOURS = ["#ff6b6b", "#4dabf7", "#69db7c", "#ffd43b", "#da77f2", "#ff922b", "#3bc9db", "#f783ac"];

function sizeCanvases() {
  const base = $("image"), overlay = $("overlay"), stage = $("stage");
  const [h, w] = state.result ? state.result.image_size : [1, 1];
  const width = 512, height = Math.max(1, Math.round(512 * h / w));
  for (const canvas of [base, overlay]) {
    if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  }
  stage.style.aspectRatio = `${width} / ${height}`;
  return [width, height];
}

function drawStage() {
  const base = $("image").getContext("2d"), overlay = $("overlay").getContext("2d");
  $("stage").classList.toggle("empty", !state.result);
  if (!state.result) {
    base.clearRect(0, 0, $("image").width, $("image").height);
    overlay.clearRect(0, 0, $("overlay").width, $("overlay").height);
    return;
  }
  const [width, height] = sizeCanvases();
  base.fillStyle = "#11131a";
  base.fillRect(0, 0, width, height);
  // small images (procedural scenes) are shown as crisp pixels, photographs smoothed
  base.imageSmoothingEnabled = !state.img || state.img.naturalWidth >= 256;
  if (state.img) base.drawImage(state.img, 0, 0, width, height);
  overlay.clearRect(0, 0, width, height);
  const map = currentMap();
  if (map) paintMap(overlay, map, width, height, Number($("opacity").value));
  if (state.result.task === "detect") drawBoxes(overlay, width, height);
}

function currentMap() {
  const r = state.result;
  if (!r) return null;
  if (r.task === "caption") {
    const hyp = r.captions[state.hyp];
    return hyp && hyp.attention.length ? hyp.attention[Math.min(state.word, hyp.attention.length - 1)] : null;
  }
  if (r.task === "classify") return r.attention[state.glimpse] || null;
  if (r.task === "detect") return state.det >= 0 ? r.detections[state.det].attention : null;
  return null;
}

function drawBoxes(ctx, width, height) {
  const [h, w] = state.result.image_size;
  const sx = width / w, sy = height / h;
  ctx.font = "600 13px system-ui, sans-serif";
  state.result.detections.forEach((d, i) => {
    const [x1, y1, x2, y2] = d.box;
    const colour = BOX_COLOURS[i % BOX_COLOURS.length];
    const active = i === state.det;
    ctx.lineWidth = active ? 3 : 2;
    ctx.strokeStyle = colour;
    ctx.globalAlpha = state.det >= 0 && !active ? 0.45 : 1;
    ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
    const label = `${d.label} ${d.score.toFixed(2)}`;
    const tw = ctx.measureText(label).width + 8;
    const ty = Math.max(y1 * sy - 18, 0);
    ctx.fillStyle = colour;
    ctx.fillRect(x1 * sx, ty, tw, 18);
    ctx.fillStyle = "#11131a";
    ctx.fillText(label, x1 * sx + 4, ty + 13);
    ctx.globalAlpha = 1;
  });
}

// ------------------------------------------------------------------------------------------- panels
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render() {
  const r = state.result;
  const task = state.model ? state.model.task : null;
  $("caption-panel").hidden = !(r && r.task === "caption");
  $("classify-panel").hidden = !(r && r.task === "classify");
  $("detect-panel").hidden = task !== "detect";
  if (r && r.task === "caption") renderCaption();
  if (r && r.task === "classify") renderClassify();
  if (task === "detect") renderDetect();
  renderRefs();
  drawStage();
}

function renderCaption() {
  const r = state.result;
  const hyp = r.captions[state.hyp];
  const words = $("words");
  words.replaceChildren(...hyp.words.map((word, i) => {
    const button = el("button", "word" + (i === state.word ? " active" : ""));
    button.type = "button";
    button.dataset.index = i;
    button.setAttribute("aria-pressed", String(i === state.word));
    button.tabIndex = i === state.word ? 0 : -1;
    const p = Math.exp(hyp.word_scores[i]);
    button.title = `p(${word}) = ${p.toFixed(3)}`;
    button.append(el("span", "", word), el("small", "", Number.isFinite(p) ? p.toFixed(2) : "–"));
    button.addEventListener("mouseenter", () => showWord(i));
    button.addEventListener("focus", () => showWord(i));
    return button;
  }));
  if (!hyp.words.length) words.append(el("span", "empty-note", "(an empty caption)"));
  $("nbest").replaceChildren(...r.captions.map((c, i) => {
    const li = el("li", i === state.hyp ? "selected" : "");
    const button = el("button");
    button.type = "button";
    button.append(el("span", "text", c.text || "(empty)"),
                  el("span", "score", `${c.score.toFixed(3)}${c.finished ? "" : " · cut"}`));
    button.title = "log-probability score of this caption; click to show its words";
    button.addEventListener("click", () => { stopPlaying(); state.hyp = i; state.word = 0; render(); });
    li.append(button);
    return li;
  }));
}

function showWord(i) {
  if (!state.result || state.result.task !== "caption" || i === state.word) return;
  state.word = i;
  for (const button of $("words").querySelectorAll(".word")) {
    const on = Number(button.dataset.index) === i;
    button.classList.toggle("active", on);
    button.setAttribute("aria-pressed", String(on));
    button.tabIndex = on ? 0 : -1;
  }
  drawStage();
}

function stepWord(delta, focus = true) {
  const hyp = state.result && state.result.task === "caption" && state.result.captions[state.hyp];
  if (!hyp || !hyp.words.length) return false;
  const next = Math.min(Math.max(state.word + delta, 0), hyp.words.length - 1);
  showWord(next);
  if (focus) $("words").querySelectorAll(".word")[next].focus();
  return true;
}

function togglePlay() {
  if (state.timer) { stopPlaying(); return; }
  const hyp = state.result && state.result.task === "caption" && state.result.captions[state.hyp];
  if (!hyp || !hyp.words.length) return;
  if (state.word >= hyp.words.length - 1) showWord(0);
  $("play").textContent = "❚❚ Pause";
  state.timer = setInterval(() => {
    if (state.word >= hyp.words.length - 1) { stopPlaying(); return; }
    stepWord(1, false);
  }, 750);
}

function stopPlaying() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  $("play").textContent = "▶ Play";
}

function renderClassify() {
  const r = state.result;
  $("bars").replaceChildren(...r.top_k.map((entry) => {
    const li = el("li");
    const track = el("span", "track");
    const fill = el("span", "fill");
    fill.style.width = `${(100 * entry.probability).toFixed(1)}%`;
    fill.style.display = "block";
    track.append(fill);
    li.append(el("span", "label", entry.label), track, el("span", "score", `${(100 * entry.probability).toFixed(1)}%`));
    return li;
  }));
  $("glimpses").replaceChildren(...r.attention.map((map, g) => {
    const button = el("button", "thumb" + (g === state.glimpse ? " active" : ""));
    button.type = "button";
    const canvas = el("canvas");
    canvas.width = 96; canvas.height = 96;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#11131a"; ctx.fillRect(0, 0, 96, 96);
    ctx.imageSmoothingEnabled = !state.img || state.img.naturalWidth >= 256;  // as on the main canvas
    if (state.img) ctx.drawImage(state.img, 0, 0, 96, 96);
    const layer = el("canvas");
    layer.width = 96; layer.height = 96;
    paintMap(layer.getContext("2d"), map, 96, 96, 0.7);
    ctx.drawImage(layer, 0, 0);
    button.append(canvas, el("span", "", `glimpse ${g + 1}`));
    const show = () => { state.glimpse = g; renderClassify(); drawStage(); };
    button.addEventListener("mouseenter", show);
    button.addEventListener("focus", show);
    return button;
  }));
}

function renderDetect() {
  const list = $("detections");
  const r = state.result && state.result.task === "detect" ? state.result : null;
  if (!r) { list.replaceChildren(); return; }
  if (!r.detections.length) {
    list.replaceChildren(el("li", "empty-note", `No detection scores ${Number($("threshold").value).toFixed(2)} or more; lower the threshold.`));
    return;
  }
  list.replaceChildren(...r.detections.map((d, i) => {
    const li = el("li", i === state.det ? "active" : "");
    li.tabIndex = 0;
    const swatch = el("span", "swatch");
    swatch.style.background = BOX_COLOURS[i % BOX_COLOURS.length];
    li.append(swatch, el("span", "", `${d.label} · query ${d.query}`), el("span", "score", d.score.toFixed(3)));
    li.addEventListener("mouseenter", () => showDetection(i));
    li.addEventListener("focus", () => showDetection(i));
    return li;
  }));
}

function showDetection(i) {
  if (i === state.det) return;
  state.det = i;
  $("detections").querySelectorAll("li").forEach((li, j) => li.classList.toggle("active", j === i));
  drawStage();
}

function boxAt(event) {
  const r = state.result;
  if (!r || r.task !== "detect") return -1;
  const rect = $("overlay").getBoundingClientRect();
  const [h, w] = r.image_size;
  const x = (event.clientX - rect.left) / rect.width * w, y = (event.clientY - rect.top) / rect.height * h;
  let best = -1, area = Infinity;
  r.detections.forEach((d, i) => {
    const [x1, y1, x2, y2] = d.box;
    const a = (x2 - x1) * (y2 - y1);
    if (x >= x1 && x <= x2 && y >= y1 && y <= y2 && a < area) { best = i; area = a; }
  });
  return best;
}

function renderRefs() {
  const refs = state.refs;
  $("refs-panel").hidden = !refs;
  if (!refs) return;
  const items = [];
  if (refs.captions) items.push(...refs.captions);
  if (refs.label) items.push(`label: ${refs.label}`);
  if (refs.boxes) refs.boxes.forEach((b, i) => items.push(`${refs.labels[i]} at [${b.map((v) => Math.round(v)).join(", ")}]`));
  if (!refs.captions && refs.objects) {
    items.push("objects: " + refs.objects.map((o) => `${o.size} ${o.colour} ${o.class_name}`).join(", "));
  }
  $("refs").replaceChildren(...items.map((text) => el("li", "", text)));
}

// ------------------------------------------------------------------------------------------- events
function takeFile(file) {
  if (!file) return;
  predict(file, file.name || "upload", null);
}

function wire() {
  $("model").addEventListener("change", (e) => selectModel(e.target.value));
  $("file").addEventListener("change", (e) => { takeFile(e.target.files[0]); e.target.value = ""; });
  $("sample").addEventListener("click", trySample);
  $("opacity").addEventListener("input", drawStage);
  $("play").addEventListener("click", togglePlay);
  for (const id of ["beam-size", "n-best"]) {
    $(id).addEventListener("change", () => { if (state.blob) predict(state.blob, state.filename, state.refs); });
  }
  $("threshold").addEventListener("input", () => { $("threshold-value").textContent = Number($("threshold").value).toFixed(2); });
  $("threshold").addEventListener("change", () => { if (state.blob) predict(state.blob, state.filename, state.refs); });
  $("words").addEventListener("keydown", (e) => {
    const moves = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1, Home: -1e9, End: 1e9 };
    if (e.key in moves && stepWord(moves[e.key])) e.preventDefault();
  });
  document.addEventListener("keydown", (e) => {  // arrows anywhere outside a form control move the word too
    if (e.target.closest && e.target.closest("input, select, textarea, #words")) return;
    if (e.key === "ArrowRight" && stepWord(1)) e.preventDefault();
    if (e.key === "ArrowLeft" && stepWord(-1)) e.preventDefault();
  });
  const stage = $("stage");
  stage.addEventListener("mousemove", (e) => { const i = boxAt(e); if (i >= 0) showDetection(i); });
  stage.addEventListener("mouseleave", () => { if (state.result && state.result.task === "detect") showDetection(-1); });
  stage.addEventListener("dragover", (e) => { e.preventDefault(); stage.classList.add("dragging"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
  stage.addEventListener("drop", (e) => {
    e.preventDefault();
    stage.classList.remove("dragging");
    takeFile(e.dataTransfer.files[0]);
  });
  stage.addEventListener("click", () => { if (!state.result) $("file").click(); });
}

wire();
loadModels();

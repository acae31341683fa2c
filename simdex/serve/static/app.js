// The simdex page: query by an image (or a region of it) or by an object id; results as a grid of
// thumbnails with P and the per-layer parts of P. Talks only to this server's /api.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, file: null, image: null, box: null, lastQuery: null, seq: 0 };
const COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"];

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => ({ detail: res.statusText }));
  if (!res.ok) throw new Error(body.detail || res.statusText);
  return body;
}

function options() {
  const o = { k: parseInt($("k").value, 10) || 10, membership: $("membership").value, explain: true,
              exact: $("exact").checked };
  if ($("omega").value) o.omega = $("omega").value;
  if ($("tau").value) o.tau = parseFloat($("tau").value);
  if ($("where").value.trim()) o.where = $("where").value.trim();
  return o;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadInfo() {
  const info = await api("/api/info");
  state.info = info;
  const b = info.build;
  $("catalog-info").textContent = `${info.catalog.name}: ${b.objects.toLocaleString()} objects, build ${b.version}, `
    + `${b.kept} kept features, Ω ${b.omega}, τ ${b.tau}`;
  $("membership").replaceChildren(...info.memberships.map((m) => new Option(m, m)));
  $("omega").replaceChildren(new Option(`build's (${b.omega})`, ""), ...b.omegas.filter((o) => o !== b.omega)
    .map((o) => new Option(o, o)));
  $("columns").textContent = "columns: " + info.columns.filter((c) => c !== "features").join(", ");
}

async function searchIds(ids) {
  showError("");
  state.lastQuery = { ids };
  setQueryStrip(ids.map((id) => thumbUrl(id, 64)), `object${ids.length > 1 ? "s" : ""} ${ids.join(", ")}`);
  const my = ++state.seq;  // only the newest request may draw: answers can arrive out of order
  try {
    const answer = await api("/api/search", { method: "POST", headers: { "content-type": "application/json" },
                                              body: JSON.stringify({ ids, ...options() }) });
    if (my === state.seq) render(answer);
  } catch (e) { if (my === state.seq) fail(e); }
}

async function searchImage() {
  if (!state.file) return;
  showError("");
  state.lastQuery = { image: true };
  const form = new FormData();
  form.append("image", state.file, state.file.name || "upload.png");
  for (const [key, value] of Object.entries(options())) form.append(key, String(value));
  if (state.box) form.append("box", state.box.join(","));
  setQueryStrip([URL.createObjectURL(state.file)], state.box ? `region ${state.box.join(",")} of ${state.file.name}`
                                                             : state.file.name);
  const my = ++state.seq;
  try {
    const answer = await api("/api/search/image", { method: "POST", body: form });
    if (my === state.seq) render(answer);
  } catch (e) { if (my === state.seq) fail(e); }
}

function fail(e) {
  showError(e.message);
  $("results").replaceChildren();
  $("legend").replaceChildren();
  $("status").textContent = "";
}

function rerun() {
  if (!state.lastQuery) return;
  if (state.lastQuery.ids) searchIds(state.lastQuery.ids); else searchImage();
}

function thumbUrl(id, size) { return `/api/objects/${id}/thumbnail?size=${size}`; }

function setQueryStrip(urls, caption) {
  const strip = $("query-strip");
  strip.replaceChildren(...urls.map((u) => Object.assign(document.createElement("img"), { src: u, alt: "query" })));
  strip.append(Object.assign(document.createElement("span"), { textContent: "query: " + caption }));
}

function render(answer) {
  const n = answer.results.length;
  $("status").textContent = `${n} result${n === 1 ? "" : "s"} in ${answer.took_ms.toFixed(1)} ms`
    + (answer.model_ms !== undefined ? ` (model ${answer.model_ms.toFixed(1)} ms)` : "") + ` · build ${answer.version}`
    + (answer.query.where ? ` · where ${answer.query.where}` : "");
  const layerNames = Object.keys(answer.layer_most || {});
  const cards = answer.results.map((r) => card(r, answer, layerNames));
  $("results").replaceChildren(...cards);
  $("legend").replaceChildren(...(layerNames.length ? [document.createTextNode("parts of P by layer: ")] : []),
    ...layerNames.map((name, i) => {
      const item = document.createElement("span");
      item.style.setProperty("--swatch", COLOURS[i % COLOURS.length]);
      item.textContent = name;
      return item;
    }));
}

function card(r, answer, layerNames) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  node.dataset.objectId = r.object_id;
  const img = node.querySelector("img");
  img.src = thumbUrl(r.object_id, 128);
  img.alt = `object ${r.object_id}`;
  img.title = "search from this object";
  img.addEventListener("click", () => { $("ids").value = r.object_id; searchIds([r.object_id]); });
  node.querySelector(".p").textContent = `P ${r.score.toFixed(4)}`;
  const label = r.label !== undefined && r.label !== null ? r.label : "";
  node.querySelector(".meta").textContent = `#${r.object_id} ${label}`;
  node.querySelector(".meta").title = r.source || "";
  const bar = node.querySelector(".layers");
  const body = node.querySelector("tbody");
  if (r.layers) {
    layerNames.forEach((name, i) => {
      const part = r.layers[name] || 0;
      const most = answer.layer_most[name] || 0;
      const seg = document.createElement("span");
      seg.style.width = `${(100 * part).toFixed(2)}%`;
      seg.style.background = COLOURS[i % COLOURS.length];
      seg.title = `${name}: ${part.toFixed(4)}`;
      bar.append(seg);
      const row = document.createElement("tr");
      for (const text of [name, part.toFixed(4), most > 0 ? (part / most).toFixed(2) : "–"]) {
        row.append(Object.assign(document.createElement("td"), { textContent: text }));
      }
      body.append(row);
    });
  }
  if (answer.query.ids && answer.query.ids.length && state.info.model.loaded) {
    const link = node.querySelector("a.map");
    const q = answer.query.ids.map((id) => `query=${id}`).join("&");
    link.href = `/api/explain.png?${q}&answer=${r.object_id}&membership=${answer.query.membership}`;
    link.hidden = false;
  }
  return node;
}

// ------------------------------------------------------------------ image input and its box

function setFile(file) {
  if (!file) return;
  state.file = file;
  state.box = null;
  const img = new Image();
  img.onload = () => { state.image = img; drawPreview(); searchImage(); };
  img.onerror = () => showError(`${file.name}: the browser cannot show this file (the server may still read it)`);
  img.src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("box-help").hidden = false;
}

function previewScale() {
  const img = state.image;
  return Math.min($("preview").width / img.width, $("preview").height / img.height);
}

function drawPreview(drag) {
  const c = $("preview"), ctx = c.getContext("2d"), img = state.image;
  if (!img) return;
  const s = previewScale();
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, c.width, c.height);
  ctx.drawImage(img, 0, 0, img.width * s, img.height * s);
  const b = drag || state.box;
  if (b) {
    ctx.strokeStyle = "#b3412b";
    ctx.lineWidth = 2;
    ctx.strokeRect(b[0] * s, b[1] * s, (b[2] - b[0]) * s, (b[3] - b[1]) * s);
  }
}

function imagePoint(event) {
  const rect = $("preview").getBoundingClientRect();
  const s = previewScale() * rect.width / $("preview").width;
  const x = Math.round((event.clientX - rect.left) / s), y = Math.round((event.clientY - rect.top) / s);
  return [Math.max(0, Math.min(state.image.width, x)), Math.max(0, Math.min(state.image.height, y))];
}

let dragStart = null;
$("preview").addEventListener("mousedown", (e) => { if (state.image) dragStart = imagePoint(e); });
$("preview").addEventListener("mousemove", (e) => {
  if (!dragStart) return;
  const p = imagePoint(e);
  drawPreview([Math.min(dragStart[0], p[0]), Math.min(dragStart[1], p[1]), Math.max(dragStart[0], p[0]),
               Math.max(dragStart[1], p[1])]);
});
window.addEventListener("mouseup", (e) => {
  if (!dragStart) return;
  const p = imagePoint(e);
  const box = [Math.min(dragStart[0], p[0]), Math.min(dragStart[1], p[1]), Math.max(dragStart[0], p[0]),
               Math.max(dragStart[1], p[1])];
  dragStart = null;
  if (box[2] - box[0] >= 1 && box[3] - box[1] >= 1) { state.box = box; drawPreview(); searchImage(); }
});
$("clear-box").addEventListener("click", () => { state.box = null; drawPreview(); searchImage(); });

$("file").addEventListener("change", (e) => setFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  setFile(e.dataTransfer.files[0]);
});

$("id-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const ids = $("ids").value.split(/[\s,]+/).filter(Boolean).map(Number);
  if (!ids.length || ids.some((v) => !Number.isInteger(v) || v < 0)) { showError("object ids are whole numbers, e.g. 42 or 42,43"); return; }
  searchIds(ids);
});
for (const id of ["k", "membership", "omega", "tau", "exact"]) $(id).addEventListener("change", rerun);
$("where").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); rerun(); } });

loadInfo().catch((e) => showError(`cannot reach the service: ${e.message}`));

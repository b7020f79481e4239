// The saliency web page: pick or drop an image, choose methods and a style, compare the maps.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, original: null, target: null, titles: {}, shownStyle: null };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(message) { $("status").textContent = message; }

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${url}: HTTP ${response.status}`);
  return body;
}

function choice(container, type, name, value, text, checked, title) {
  const label = document.createElement("label");
  const input = document.createElement("input");
  Object.assign(input, { type, name, value, checked });
  label.title = title || "";
  label.append(input, " ", text);
  container.append(label);
}

async function loadOptions() {
  try {
    const [methods, models] = await Promise.all([getJSON("v1/methods"), getJSON("v1/models")]);
    // methods that run many passes of their own (samples, steps) start unticked: they are slower
    for (const m of methods.methods) state.titles[m.name] = m.title;
    const costly = (m) => "samples" in m.options || "steps" in m.options;
    for (const m of methods.methods) choice($("methods"), "checkbox", "method", m.name, m.title, !costly(m), `${m.summary}\n${m.citation}`);
    methods.styles.forEach((s, i) => choice($("styles"), "radio", "style", s.name, s.name, i === 0, s.convention));
    $("model-line").textContent = `Model: ${models.serving.name} (${models.serving.classes} classes). Drop an image to compare methods.`;
  } catch (err) {
    showError(`Cannot reach the service: ${err.message}`);
  }
}

function selected(name) {
  return [...document.querySelectorAll(`input[name=${name}]:checked`)].map((input) => input.value);
}

function pickFile(file) {
  if (!file) return;
  state.file = file;
  state.target = null;
  state.original = null;
  const image = new Image();
  image.onload = () => { state.original = image; };
  image.src = URL.createObjectURL(file);
  $("run").disabled = false;
  explain();
}

async function explain() {
  if (!state.file) return;
  const methods = selected("method");
  if (methods.length === 0) { showError("Choose at least one method."); return; }
  showError("");
  setStatus("Explaining…");
  $("run").disabled = true;
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  const style = selected("style")[0] || "heatmap";
  const query = new URLSearchParams({ method: methods.join(","), style });
  // overlay pictures are blended by the service, at the slider's opacity; other styles by the page
  if (style === "overlay") query.set("alpha", $("opacity").value);
  if (state.target !== null) query.set("target", state.target);
  try {
    const response = await fetch(`v1/explain?${query}`, { method: "POST", body: form });
    const body = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
    if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
    await show(body);
    setStatus(`Done in ${(body.timing.total ?? sum(body.timing)).toFixed(2)} s (model: ${body.timing.explain.toFixed(2)} s).`);
  } catch (err) {
    showError(err.message);
    setStatus("");
    for (const id of ["gallery", "predictions"]) $(id).hidden = true;  // nothing stale next to the error
    $("convention").textContent = "";
  } finally {
    $("run").disabled = false;
  }
}

function sum(timing) { return ["decode", "preprocess", "explain", "render", "encode"].reduce((s, k) => s + (timing[k] || 0), 0); }

function whenLoaded(image) {
  return image.complete && image.naturalWidth ? Promise.resolve() : new Promise((resolve, reject) => {
    image.onload = resolve;
    image.onerror = () => reject(new Error("the browser cannot display this image"));
  });
}

// The whole picture, with the centre crop the model saw outlined where it is not the whole picture.
function drawInput(canvas, caption, box) {
  const image = state.original;
  if (!image) return;
  const [width, height] = [image.naturalWidth, image.naturalHeight];
  drawOriginal(canvas, null);
  const [left, top, right, bottom] = box || [0, 0, width, height];
  const whole = left === 0 && top === 0 && right === width && bottom === height;
  if (!whole) {
    const pen = canvas.getContext("2d");
    pen.lineWidth = Math.max(2, Math.round(width / 128));
    pen.strokeStyle = "#0a66c2";
    pen.strokeRect(left, top, right - left, bottom - top);
  }
  caption.textContent = `Original, ${width} × ${height} px` +
    (whole ? " (the model saw all of it)" : `: the box is the centre crop the model saw (${right - left} × ${bottom - top} px)`);
}

function drawOriginal(canvas, box) {
  const image = state.original;
  if (!image) return;
  const [left, top, right, bottom] = box || [0, 0, image.naturalWidth, image.naturalHeight];
  canvas.width = right - left;
  canvas.height = bottom - top;
  canvas.getContext("2d").drawImage(image, left, top, right - left, bottom - top, 0, 0, canvas.width, canvas.height);
}

async function show(body) {
  const result = body.results[0];
  const explanation = result.explanations[0];
  const list = $("prediction-list");
  list.replaceChildren();
  for (const p of result.predictions) {
    const item = document.createElement("li");
    item.textContent = `${p.label} — ${(100 * p.probability).toFixed(1)} %`;
    item.dataset.index = p.index;
    if (p.index === explanation.target.index) item.classList.add("explained");
    item.addEventListener("click", () => { state.target = p.index; explain(); });
    list.append(item);
  }
  $("predictions").hidden = false;

  if (state.original) await whenLoaded(state.original).catch(() => {});
  const gallery = $("gallery");
  gallery.querySelectorAll(".map-panel").forEach((panel) => panel.remove());
  drawInput($("original"), $("original-caption"), result.box);
  const opacity = $("opacity").value;
  const blended = body.style === "overlay";  // the service drew the map over the image already
  for (const method of body.methods) {
    const figure = document.createElement("figure");
    figure.className = "panel map-panel";
    figure.dataset.method = method;
    const stack = document.createElement("div");
    stack.className = "stack";
    const map = document.createElement("img");
    map.className = blended ? "map opaque" : "map";
    map.alt = `${method} map`;
    map.src = explanation.maps[method].png;
    if (blended) {
      stack.append(map);
    } else {
      const base = document.createElement("canvas");
      drawOriginal(base, result.box);
      map.style.opacity = opacity;
      stack.append(base, map);
    }
    const caption = document.createElement("figcaption");
    const ms = body.timing.methods && body.timing.methods[method];
    caption.textContent = `${state.titles[method] || method} — ${explanation.target.label}` +
      (ms !== undefined ? ` (${(1000 * ms).toFixed(0)} ms)` : "");
    figure.append(stack, caption);
    gallery.append(figure);
  }
  gallery.hidden = false;
  $("convention").textContent = `Convention: ${body.convention}` + (blended ? "." :
    `; shown at ${Math.round(100 * opacity)} % opacity over the centre crop the model saw.`);
  state.shownStyle = body.style;
  $("warnings").replaceChildren(...body.warnings.map((w) => Object.assign(document.createElement("li"), { textContent: w })));
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => pickFile(event.target.files[0]));
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("file").click(); });
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => { event.preventDefault(); pickFile(event.dataTransfer.files[0]); });
  $("run").addEventListener("click", explain);
  $("opacity").addEventListener("input", (event) => {
    if (state.shownStyle === "overlay") return;  // the service blends overlays: redrawn on release ("change")
    document.querySelectorAll("img.map").forEach((img) => { img.style.opacity = event.target.value; });
    $("convention").textContent = $("convention").textContent.replace(/shown at \d+ %/, `shown at ${Math.round(100 * event.target.value)} %`);
  });
  $("opacity").addEventListener("change", () => { if (state.shownStyle === "overlay") explain(); });
  document.addEventListener("change", (event) => { if (["method", "style"].includes(event.target.name)) explain(); });
  loadOptions();
}

setUp();

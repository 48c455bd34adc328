// sr4 compare: the page of `sr4 serve`. Plain JS, no dependencies, everything from this server.
"use strict";

const METRICS = [
  ["niqe", "NIQE", -1], ["clipiqa", "CLIP-IQA", 1], ["maniqa", "MANIQA", 1], ["musiq", "MUSIQ", 1],
  ["psnr", "PSNR", 1], ["ssim", "SSIM", 1], ["lpips", "LPIPS", -1], ["dists", "DISTS", -1], ["score", "score", 1],
];
const METRIC_LABEL = Object.fromEntries(METRICS.map(([k, l]) => [k, l]));
const $ = (id) => document.getElementById(id);

const app = {
  config: null, workspace: null, data: {images: [], jobs: [], queue: {}, metrics: {}},
  current: null,            // id of the image shown
  picks: {left: null, right: null},
  mode: "compare",
  view: {zoom: "fit", z: 1, cx: 0, cy: 0, split: 50, W: 0, H: 0},
  reportedErrors: new Set(), lastState: "", pollTimer: null,
};
window.sr4App = app;  // read by the browser tests and handy in the console

// ------------------------------------------------------------------ server calls

async function api(method, url, body, headers) {
  const opts = {method, headers: headers || {}};
  if (body !== undefined) {
    if (body instanceof Blob) opts.body = body;
    else { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  }
  let resp;
  try { resp = await fetch(url, opts); } catch (e) { throw new Error("the sr4 server cannot be reached (is it still running?)"); }
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : {}; } catch (e) { json = null; }
  if (!resp.ok) {
    const err = new Error((json && json.error) || `the server answered ${resp.status} ${resp.statusText}`);
    err.status = resp.status;
    throw err;
  }
  return json;
}

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}
function clearError() { $("error").hidden = true; $("error-text").textContent = ""; }

const wsUrl = (path) => `/api/w/${app.workspace}${path}`;

async function openWorkspace() {
  const saved = sessionStorage.getItem("sr4-workspace");
  if (saved) {
    app.workspace = saved;
    try { await refresh(); return; } catch (e) { if (e.status !== 404) throw e; }
  }
  app.workspace = (await api("POST", "/api/w")).workspace;
  sessionStorage.setItem("sr4-workspace", app.workspace);
  await refresh();
}

// ------------------------------------------------------------------ uploads and jobs

async function uploadImages(files) {
  clearError();
  for (const file of files) {
    try {
      const res = await api("POST", wsUrl("/images"), file, {"X-File-Name": encodeURIComponent(file.name)});
      if (!app.current) app.current = res.image;
      else if (files.length === 1) app.current = res.image;
    } catch (e) { showError(e.message); }
  }
  await refresh();
}

async function uploadReference(file) {
  if (!app.current) { showError("open an image first, then its HR reference"); return; }
  clearError();
  try {
    await api("POST", wsUrl(`/images/${app.current}/reference`), file, {"X-File-Name": encodeURIComponent(file.name)});
  } catch (e) { showError(e.message); }
  await refresh();
}

async function runCandidates() {
  const chosen = [...document.querySelectorAll("#candidates input:checked")].map((el) => el.value);
  if (!chosen.length) { showError("choose at least one candidate"); return; }
  const seed = Number($("seed").value);
  if (!Number.isInteger(seed) || seed < 0) { showError("the seed must be a whole number, 0 or more"); return; }
  const targets = $("run-all").checked ? app.data.images.map((im) => im.id) : [app.current];
  clearError();
  for (const image of targets) {
    try { await api("POST", wsUrl("/jobs"), {image, candidates: chosen, seed}); } catch (e) { showError(e.message); }
  }
  await refresh();
}

async function cancelJob(id) {
  try { await api("POST", wsUrl(`/jobs/${id}/cancel`)); } catch (e) { showError(e.message); }
  await refresh();
}

async function removeImage(id) {
  try { await api("DELETE", wsUrl(`/images/${id}`)); } catch (e) { showError(e.message); }
  if (app.current === id) app.current = null;
  await refresh();
}

// ------------------------------------------------------------------ state and rendering

async function refresh() {
  const data = await api("GET", wsUrl("/state"));
  app.data = data;
  const key = JSON.stringify(data);
  if (key === app.lastState) return;
  app.lastState = key;
  if (!app.current || !data.images.some((im) => im.id === app.current)) {
    app.current = data.images.length ? data.images[0].id : null;
  }
  for (const job of data.jobs) {
    if (job.state === "failed" && !app.reportedErrors.has(job.id)) {
      app.reportedErrors.add(job.id);
      showError(job.error);
    }
  }
  render();
}

function schedulePoll() {
  clearTimeout(app.pollTimer);
  const busy = app.data.jobs.some((j) => j.state === "queued" || j.state === "running");
  app.pollTimer = setTimeout(async () => {
    try { await refresh(); } catch (e) { showError(e.message); }
    schedulePoll();
  }, busy ? 300 : 1500);
}

function currentImage() { return app.data.images.find((im) => im.id === app.current) || null; }

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node[k] = v;
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

function render() {
  renderImages();
  renderJobs();
  renderVariants();
  renderScores();
  const im = currentImage();
  $("run").disabled = !im;
  $("ref-info").textContent = im && im.reference
    ? `HR ${im.reference.width}x${im.reference.height}: PSNR, SSIM, LPIPS and DISTS are computed`
    : "for PSNR, SSIM, LPIPS and DISTS";
  const anyResult = app.data.images.some((i) => i.results.length);
  setLink($("zip-all"), anyResult ? wsUrl("/results.zip") : null);
  setLink($("zip-image"), im && im.results.length ? wsUrl(`/results.zip?image=${im.id}`) : null);
  const q = app.data.queue || {};
  $("queue-summary").textContent = `${q.running || 0} running, ${q.waiting || 0} waiting (all tabs)`;
}

function setLink(a, href) {
  if (href) { a.href = href; a.classList.remove("disabled"); } else { a.removeAttribute("href"); a.classList.add("disabled"); }
}

function renderImages() {
  const list = $("images");
  list.replaceChildren(...app.data.images.map((im) => el("li", {
    class: im.id === app.current ? "current" : "", dataset: {id: im.id},
    onclick: () => { app.current = im.id; app.picks = {left: null, right: null}; render(); },
  },
  el("img", {src: im.lr, alt: ""}),
  el("span", {class: "name", title: im.name, textContent: im.name}),
  el("span", {class: "muted small", textContent: `${im.width}x${im.height}`}),
  el("button", {type: "button", textContent: "×", title: "remove", onclick: (e) => { e.stopPropagation(); removeImage(im.id); }}))));
}

function renderJobs() {
  const names = Object.fromEntries(app.data.images.map((im) => [im.id, im.name]));
  const jobs = [...app.data.jobs].reverse().slice(0, 30);
  $("jobs").replaceChildren(...jobs.map((j) => {
    let status = j.state;
    if (j.state === "queued") status = j.position ? `waiting (#${j.position})` : "waiting";
    if (j.state === "running") status = j.cancelling ? "cancelling" : `${j.stage}${j.total > 1 ? ` ${j.done}/${j.total} tiles` : ""}`;
    const what = j.kind === "score" ? `${j.label} (scores vs HR)` : `${j.label}, seed ${j.seed}`;
    return el("li", {dataset: {id: j.id, state: j.state}},
      el("div", {class: "row"},
        el("span", {textContent: what}),
        (j.state === "queued" || j.state === "running")
          ? el("button", {type: "button", textContent: "cancel", class: "cancel", onclick: () => cancelJob(j.id)}) : null),
      el("div", {class: "row muted"},
        el("span", {textContent: names[j.image] || "(removed image)"}),
        el("span", {class: `state-${j.state}`, textContent: status})),
      j.error ? el("div", {class: "state-failed", textContent: j.error}) : null,
      el("div", {class: "bar"}, el("span")));
  }));
  // Progress widths set through the CSSOM (the page's CSP allows no inline style attributes).
  [...$("jobs").children].forEach((li, i) => {
    const j = jobs[i];
    const pct = j.state === "done" ? 100 : (j.total ? (100 * j.done) / j.total : 0);
    li.querySelector(".bar span").style.width = `${pct}%`;
  });
}

// Every image the two sides of the slider (or the grid) can show.
function variants() {
  const im = currentImage();
  if (!im) return [];
  const list = [{key: "nearest", label: "LR (nearest)", url: im.lr, nearest: true}];
  const seeds = {};
  for (const r of im.results) seeds[r.candidate] = (seeds[r.candidate] || 0) + 1;
  for (const r of im.results) {
    list.push({key: r.id, label: seeds[r.candidate] > 1 ? `${r.label} (seed ${r.seed})` : r.label, url: r.url,
      result: r, candidate: r.candidate});
  }
  if (im.reference) list.push({key: "hr", label: "HR reference", url: im.reference.url});
  return list;
}

function defaultPicks(list) {
  const results = list.filter((v) => v.result);
  const bicubic = results.find((v) => v.candidate === "bicubic");
  const others = results.filter((v) => v !== bicubic);
  const left = bicubic && others.length ? bicubic.key : "nearest";
  const right = others.length ? others[others.length - 1].key : (bicubic ? bicubic.key : (list.find((v) => v.key === "hr") || list[0]).key);
  return {left, right};
}

function renderVariants() {
  const list = variants();
  const im = currentImage();
  $("placeholder").hidden = !!im;
  // Rebuilt only when the set of images changes, so polling does not close an open menu.
  const signature = JSON.stringify([app.current, app.mode, list.map((v) => [v.key, v.label])]);
  if (signature === app.variantSignature) return;
  app.variantSignature = signature;
  const keys = new Set(list.map((v) => v.key));
  const defaults = defaultPicks(list);
  for (const side of ["left", "right"]) {
    if (!keys.has(app.picks[side]) || app.picks[side + "Auto"]) {
      app.picks[side] = list.length ? defaults[side] : null;
      app.picks[side + "Auto"] = true;
    }
    const select = $(side);
    select.replaceChildren(...list.map((v) => el("option", {value: v.key, textContent: v.label})));
    if (app.picks[side]) select.value = app.picks[side];
  }
  // The stage: the size every variant is drawn at (the HR size, else 4x the LR).
  let W = 0, H = 0;
  if (im) {
    if (im.reference) { W = im.reference.width; H = im.reference.height; }
    else if (im.results.length) { W = Math.max(...im.results.map((x) => x.width)); H = Math.max(...im.results.map((x) => x.height)); }
    else { W = im.width * 4; H = im.height * 4; }
  }
  const resized = W !== app.view.W || H !== app.view.H;
  app.view.W = W; app.view.H = H;
  if (resized) { app.view.cx = W / 2; app.view.cy = H / 2; }
  setImage($("img-left"), list.find((v) => v.key === app.picks.left));
  setImage($("img-right"), list.find((v) => v.key === app.picks.right));
  $("tag-left").textContent = labelOf(list, app.picks.left);
  $("tag-right").textContent = labelOf(list, app.picks.right);
  if (app.mode === "grid") renderGrid(list);
  applyView();
}

function labelOf(list, key) { const v = list.find((x) => x.key === key); return v ? v.label : ""; }

function setImage(img, variant) {
  const url = variant ? variant.url : "";
  if (url && img.getAttribute("src") !== url) img.src = url;
  if (!url) img.removeAttribute("src");
  img.classList.toggle("nearest", !!(variant && variant.nearest));
  img.hidden = !url;
}

function renderGrid(list) {
  const grid = $("grid");
  const cols = Math.ceil(Math.sqrt(list.length || 1));
  grid.style.gridTemplateColumns = `repeat(${cols}, 1fr)`;
  const have = [...grid.children].map((c) => c.dataset.key).join("|");
  if (have !== list.map((v) => v.key).join("|")) {
    grid.replaceChildren(...list.map((v) => {
      const img = el("img", {alt: "", draggable: false});
      setImage(img, v);
      const cell = el("div", {class: "cell viewport", dataset: {key: v.key}}, img, el("span", {class: "tag", textContent: v.label}));
      attachPan(cell);
      return cell;
    }));
  }
}

// ------------------------------------------------------------------ zoom, pan, slider (all views synced)

function viewports() {
  return app.mode === "grid" ? [...$("grid").children] : [$("compare")];
}

function fitScale() {
  const {W, H} = app.view;
  if (!W || !H) return 1;
  return Math.min(...viewports().map((vp) => Math.min(vp.clientWidth / W, vp.clientHeight / H))) || 1;
}

function setZoom(level) {
  app.view.zoom = level;
  const dpr = window.devicePixelRatio || 1;
  app.view.z = level === "fit" ? fitScale() : Number(level) / dpr;
  if (level === "fit") { app.view.cx = app.view.W / 2; app.view.cy = app.view.H / 2; }
  for (const b of document.querySelectorAll("[data-zoom]")) b.classList.toggle("on", b.dataset.zoom === String(level));
  applyView();
}

function clampCenter() {
  const v = app.view;
  v.cx = Math.min(Math.max(v.cx, 0), v.W);
  v.cy = Math.min(Math.max(v.cy, 0), v.H);
}

function applyView() {
  const v = app.view;
  if (v.zoom === "fit") v.z = fitScale();
  clampCenter();
  const pixelated = v.z * (window.devicePixelRatio || 1) >= 1.5;
  for (const vp of viewports()) {
    const tx = vp.clientWidth / 2 - v.cx * v.z, ty = vp.clientHeight / 2 - v.cy * v.z;
    for (const img of vp.querySelectorAll("img")) {
      img.style.width = `${v.W}px`; img.style.height = `${v.H}px`;
      img.style.transform = `translate(${tx}px, ${ty}px) scale(${v.z})`;
    }
    vp.classList.toggle("pixelated", pixelated);
  }
  $("layer-right").style.clipPath = `inset(0 0 0 ${v.split}%)`;
  $("divider").style.left = `${v.split}%`;
  if (Number($("slider").value) !== v.split) $("slider").value = v.split;
  const pct = Math.round(v.z * (window.devicePixelRatio || 1) * 100);
  $("zoom-label").textContent = v.zoom === "fit" ? `fit (${pct}%)` : `${v.zoom}:1 (${pct}%)`;
}

function attachPan(vp) {
  let last = null;
  vp.addEventListener("pointerdown", (e) => {
    if (e.target.id === "divider" || e.target.parentElement?.id === "divider") return;
    last = [e.clientX, e.clientY];
    vp.setPointerCapture(e.pointerId);
    vp.classList.add("panning");
  });
  vp.addEventListener("pointermove", (e) => {
    if (!last) return;
    app.view.cx -= (e.clientX - last[0]) / app.view.z;
    app.view.cy -= (e.clientY - last[1]) / app.view.z;
    last = [e.clientX, e.clientY];
    applyView();
  });
  const stop = () => { last = null; vp.classList.remove("panning"); };
  vp.addEventListener("pointerup", stop);
  vp.addEventListener("pointercancel", stop);
  vp.addEventListener("wheel", (e) => {
    e.preventDefault();
    const rect = vp.getBoundingClientRect();
    const v = app.view;
    const px = e.clientX - rect.left - vp.clientWidth / 2, py = e.clientY - rect.top - vp.clientHeight / 2;
    const x = v.cx + px / v.z, y = v.cy + py / v.z;  // image point under the cursor stays there
    const z = Math.min(Math.max(v.z * (e.deltaY < 0 ? 1.25 : 0.8), 0.02), 32);
    v.z = z; v.zoom = "free"; v.cx = x - px / z; v.cy = y - py / z;
    for (const b of document.querySelectorAll("[data-zoom]")) b.classList.remove("on");
    applyView();
    $("zoom-label").textContent = `${Math.round(z * (window.devicePixelRatio || 1) * 100)}%`;
  }, {passive: false});
}

function attachDivider() {
  const divider = $("divider"), vp = $("compare");
  let dragging = false;
  divider.addEventListener("pointerdown", (e) => { dragging = true; divider.setPointerCapture(e.pointerId); e.stopPropagation(); });
  divider.addEventListener("pointermove", (e) => {
    if (!dragging) return;
    const rect = vp.getBoundingClientRect();
    app.view.split = Math.min(100, Math.max(0, (100 * (e.clientX - rect.left)) / rect.width));
    applyView();
  });
  divider.addEventListener("pointerup", () => { dragging = false; });
  $("slider").addEventListener("input", () => { app.view.split = Number($("slider").value); applyView(); });
}

// ------------------------------------------------------------------ scores

function fmt(key, value) {
  if (value === undefined || value === null) return "";
  if (key === "psnr") return value.toFixed(2);
  if (key === "musiq") return value.toFixed(2);
  return value.toFixed(4);
}

function renderScores() {
  const im = currentImage();
  const status = app.data.metrics || {};
  const unavailable = status.unavailable || {};
  const hasRef = !!(im && im.reference);
  const cols = METRICS.filter(([k]) => k === "score" || ((hasRef || !["psnr", "ssim", "lpips", "dists"].includes(k)) && !unavailable[k]));
  const scoreCol = im && im.results.some((r) => r.scores.score !== undefined);
  const shown = cols.filter(([k]) => k !== "score" || scoreCol);
  $("scores-head").replaceChildren(el("th", {textContent: "result"}), el("th", {textContent: "seed"}),
    el("th", {textContent: "size"}), el("th", {textContent: "time"}),
    ...shown.map(([k, label, dir]) => el("th", {textContent: label + (dir > 0 ? " ↑" : " ↓"), dataset: {metric: k}})),
    el("th", {textContent: ""}));
  const rows = im ? im.results : [];
  const best = {};
  for (const [k, , dir] of shown) {
    const vals = rows.map((r) => r.scores[k]).filter((x) => typeof x === "number");
    if (vals.length > 1) best[k] = dir > 0 ? Math.max(...vals) : Math.min(...vals);
  }
  const body = [];
  for (const r of rows) {
    body.push(el("tr", {dataset: {result: r.id, candidate: r.candidate}},
      el("td", {textContent: r.label}), el("td", {textContent: String(r.seed)}),
      el("td", {textContent: `${r.width}x${r.height}`}), el("td", {textContent: `${r.seconds.toFixed(2)} s`}),
      ...shown.map(([k]) => {
        const v = r.scores[k];
        const text = typeof v === "number" ? fmt(k, v) : (r.scored ? "n/a" : "…");
        return el("td", {textContent: text, class: best[k] !== undefined && v === best[k] ? "best" : "",
          dataset: {metric: k, value: typeof v === "number" ? String(v) : ""}});
      }),
      el("td", {}, el("a", {class: "button download", href: `${r.url}?download=1`, download: r.download_name, textContent: "download"}))));
    if (r.notes.length) body.push(el("tr", {}, el("td", {class: "note", colSpan: shown.length + 5, textContent: r.notes.join("; ")})));
  }
  $("scores-body").replaceChildren(...body);
  const missing = Object.entries(unavailable).map(([k, why]) => `${METRIC_LABEL[k] || k} unavailable: ${why}`);
  if (!hasRef) missing.push("PSNR, SSIM, LPIPS and DISTS need an HR reference (choose one on the left)");
  $("metrics-note").textContent = missing.join(". ") + (missing.length ? "." : "");
}

// ------------------------------------------------------------------ start

function renderCandidates() {
  const box = $("candidates");
  box.replaceChildren(...app.config.candidates.map((c) => {
    const input = el("input", {type: "checkbox", value: c.id, disabled: !!c.unavailable,
      checked: !c.unavailable && (c.id === "bicubic" || c.id === "default")});
    return el("label", {class: c.unavailable ? "unavailable" : "", title: c.source || ""}, input, " " + c.label,
      c.unavailable ? el("span", {class: "why", textContent: c.unavailable}) : null);
  }));
}

async function start() {
  $("error-close").addEventListener("click", clearError);
  $("file").addEventListener("change", (e) => { uploadImages([...e.target.files]); e.target.value = ""; });
  $("ref-file").addEventListener("change", (e) => { if (e.target.files[0]) uploadReference(e.target.files[0]); e.target.value = ""; });
  $("run").addEventListener("click", runCandidates);
  $("seed-random").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 31); });
  for (const side of ["left", "right"]) {
    $(side).addEventListener("change", (e) => {
      app.picks[side] = e.target.value; app.picks[side + "Auto"] = false; app.variantSignature = null; renderVariants();
    });
  }
  for (const b of document.querySelectorAll("[data-zoom]")) b.addEventListener("click", () => setZoom(b.dataset.zoom === "fit" ? "fit" : Number(b.dataset.zoom)));
  $("mode-compare").addEventListener("click", () => setMode("compare"));
  $("mode-grid").addEventListener("click", () => setMode("grid"));
  window.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
  window.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dragging"); });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    const files = [...(e.dataTransfer?.files || [])];
    if (files.length) uploadImages(files);
  });
  window.addEventListener("resize", () => applyView());
  attachPan($("compare"));
  attachDivider();
  try {
    app.config = await api("GET", "/api/config");
    const lim = app.config.limits;
    $("limits").textContent = `PNG, JPEG, WebP, TIFF, BMP; up to ${Math.round(lim.max_upload_bytes / 2 ** 20)} MiB and ${(lim.max_pixels / 1e6).toFixed(1)} MP`;
    $("server-info").textContent = `sr4 ${app.config.version} · device ${app.config.device} · one job at a time`;
    renderCandidates();
    await openWorkspace();
  } catch (e) { showError(e.message); }
  schedulePoll();
}

function setMode(mode) {
  app.mode = mode;
  document.body.classList.toggle("grid-mode", mode === "grid");
  $("grid").hidden = mode !== "grid";
  $("mode-compare").classList.toggle("on", mode === "compare");
  $("mode-grid").classList.toggle("on", mode === "grid");
  renderVariants();
  setZoom(app.view.zoom === "free" ? "fit" : app.view.zoom);
}

document.addEventListener("DOMContentLoaded", start);

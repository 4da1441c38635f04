// The BiLRP viewer: explains a pair through the server's JSON API (POST /v1/explain with the
// matrix), or shows a pair embedded in the page by `bilrp explain --html`. No dependencies, no
// network beyond the server that served the page.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const GAP = 24, T1 = 0.25, T2 = 12.75, MIN_WIDTH = 384;
  const RED = [204, 0, 0], BLUE = [0, 64, 217];
  const state = { report: null, R: null, P: 0, Q: 0, grids: [null, null], backdrops: [null, null], scale: 1,
                  order: [], opacity: null, pinned: null, npy: null };

  // MARK: data

  function base64ToBytes(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  function bytesToBase64(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  // A float32 little-endian C-order NPY (what the server and --npy write).
  function parseNPY(bytes) {
    const magic = String.fromCharCode(...bytes.subarray(1, 6));
    if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error("not an NPY file");
    const major = bytes[6];
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const hlen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
    const start = major === 1 ? 10 : 12;
    const header = new TextDecoder().decode(bytes.subarray(start, start + hlen));
    if (!/'descr':\s*'<f4'/.test(header) || /'fortran_order':\s*True/.test(header)) throw new Error("R must be float32 in C order: " + header);
    const shape = header.match(/'shape':\s*\(([^)]*)\)/)[1].split(",").map((v) => v.trim()).filter((v) => v).map(Number);
    const offset = start + hlen, count = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(bytes.slice(offset, offset + 4 * count).buffer);
    return { shape, data };
  }

  function grid(input, patch) {
    return { rows: input.patch_rows, cols: input.patch_columns, H: input.shape[1], W: input.shape[2], patch };
  }

  function rect(g, p) {
    const r = Math.floor(p / g.cols), c = p % g.cols;
    return { x0: c * g.patch, y0: r * g.patch, x1: Math.min(g.W, (c + 1) * g.patch), y1: Math.min(g.H, (r + 1) * g.patch) };
  }

  // The paper's opacity: R / (mean R^4)^(1/4), soft threshold t1, clip t2, divided by t2, squared.
  function opacities(R) {
    let m4 = 0;
    for (let i = 0; i < R.length; i++) m4 += R[i] ** 4;
    const norm = Math.pow(m4 / Math.max(1, R.length), 0.25), out = new Float32Array(R.length);
    if (!(norm > 0)) return out;
    for (let i = 0; i < R.length; i++) {
      let v = R[i] / norm;
      v -= Math.max(-T1, Math.min(T1, v));
      v = Math.max(-T2, Math.min(T2, v)) / T2;
      out[i] = v < 0 ? -v * v : v * v;
    }
    return out;
  }

  // MARK: images

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("the browser cannot decode this image"));
      img.src = src;
    });
  }

  // The image as the explanation saw it (resized to cover H x W and centre-cropped, as the server
  // does), in light grey so that the curves and heatmaps are the only colour.
  function backdrop(img, H, W) {
    const c = document.createElement("canvas");
    c.width = W; c.height = H;
    const ctx = c.getContext("2d");
    ctx.fillStyle = "#ccc";
    ctx.fillRect(0, 0, W, H);
    if (img) {
      const s = Math.max(W / img.naturalWidth, H / img.naturalHeight);
      const w = img.naturalWidth * s, h = img.naturalHeight * s;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(img, (W - w) / 2, (H - h) / 2, w, h);
    }
    const d = ctx.getImageData(0, 0, W, H);
    for (let i = 0; i < d.data.length; i += 4) {
      const lum = (0.299 * d.data[i] + 0.587 * d.data[i + 1] + 0.114 * d.data[i + 2]) / 255;
      const v = Math.round(255 * (0.45 + 0.55 * lum));
      d.data[i] = d.data[i + 1] = d.data[i + 2] = v;
    }
    ctx.putImageData(d, 0, 0);
    return c;
  }

  // MARK: drawing

  function drawBackdrop(k) {
    const canvas = k === 0 ? $("view-first") : $("view-second"), g = state.grids[k], s = state.scale;
    canvas.width = g.W * s; canvas.height = g.H * s;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(state.backdrops[k], 0, 0, g.W * s, g.H * s);
    return ctx;
  }

  function center(k, p) {
    const r = rect(state.grids[k], p), s = state.scale;
    const x = ((r.x0 + r.x1) / 2) * s + (k === 1 ? state.grids[0].W * s + GAP : 0);
    return [x, ((r.y0 + r.y1) / 2) * s];
  }

  function stroke(ctx, i, alpha, width) {
    const [x0, y0] = center(0, Math.floor(i / state.Q)), [x2, y2] = center(1, i % state.Q);
    const lift = 0.1 * Math.hypot(x2 - x0, y2 - y0);
    const c = state.R[i] > 0 ? RED : BLUE;
    ctx.strokeStyle = `rgba(${c[0]}, ${c[1]}, ${c[2]}, ${alpha})`;
    ctx.lineWidth = width;
    ctx.beginPath();
    ctx.moveTo(x0, y0);
    ctx.quadraticCurveTo((x0 + x2) / 2, (y0 + y2) / 2 - lift, x2, y2);
    ctx.stroke();
  }

  function curvesContext() {
    const c = $("curves"), g0 = state.grids[0], g1 = state.grids[1], s = state.scale;
    c.width = g0.W * s + GAP + g1.W * s;
    c.height = Math.max(g0.H, g1.H) * s;
    const ctx = c.getContext("2d");
    ctx.lineCap = "round";
    return ctx;
  }

  // The n strongest pairs (by |R|, among those with an opacity), the weakest drawn first.
  function drawCurves(n) {
    const ctx = curvesContext();
    for (let k = n - 1; k >= 0; k--) {
      const i = state.order[k], o = Math.min(1, Math.abs(state.opacity[i]));
      stroke(ctx, i, o, 3 * (0.25 + 0.75 * Math.sqrt(o)));
    }
    $("pairs-count").value = `${n} of ${state.order.length}`;
  }

  function outline(ctx, r, color) {
    const s = state.scale;
    ctx.strokeStyle = color;
    ctx.lineWidth = Math.max(2, s / 2 + 1);
    ctx.strokeRect(r.x0 * s + ctx.lineWidth / 2, r.y0 * s + ctx.lineWidth / 2, (r.x1 - r.x0) * s - ctx.lineWidth, (r.y1 - r.y0) * s - ctx.lineWidth);
  }

  // Patch p of input k: its row (k = 0) or column (k = 1) of R as a heatmap over the other input,
  // one symmetric scale (the largest |R| of that row), and its strongest curves.
  function showPatch(k, p) {
    const other = 1 - k, g = state.grids[other], s = state.scale, P = state.P, Q = state.Q;
    const n = other === 1 ? Q : P, values = new Float32Array(n);
    for (let j = 0; j < n; j++) values[j] = k === 0 ? state.R[p * Q + j] : state.R[j * Q + p];
    let maxAbs = 0, sum = 0;
    for (const v of values) { maxAbs = Math.max(maxAbs, Math.abs(v)); sum += v; }
    const own = drawBackdrop(k);
    outline(own, rect(state.grids[k], p), "rgb(140, 0, 0)");
    const ctx = drawBackdrop(other);
    for (let j = 0; j < n; j++) {
      const t = maxAbs > 0 ? values[j] / maxAbs : 0;
      if (t === 0) continue;
      const c = t > 0 ? RED : BLUE, r = rect(g, j);
      ctx.fillStyle = `rgba(${c[0]}, ${c[1]}, ${c[2]}, ${0.85 * Math.abs(t)})`;
      ctx.fillRect(r.x0 * s, r.y0 * s, (r.x1 - r.x0) * s, (r.y1 - r.y0) * s);
    }
    // The row's ten strongest pairs as curves.
    const idx = Array.from(values.keys()).sort((a, b) => Math.abs(values[b]) - Math.abs(values[a])).slice(0, 10);
    const cc = curvesContext();
    for (const j of idx.reverse()) {
      if (values[j] === 0) continue;
      stroke(cc, k === 0 ? p * Q + j : j * Q + p, Math.min(1, 0.3 + Math.abs(values[j]) / maxAbs), 3);
    }
    const r = rect(state.grids[k], p), which = k === 0 ? "first" : "second", otherName = k === 0 ? "second" : "first";
    const status = $("heat-status");
    status.dataset.input = which;
    status.dataset.patch = String(p);
    status.dataset.max = String(maxAbs);
    status.textContent = `patch ${p} of the ${which} image (${r.x0}, ${r.y0})-(${r.x1}, ${r.y1}): its ${k === 0 ? "row" : "column"} of R over the ${otherName} image, ` +
      `sum ${fmt(sum)} (${fmt(100 * sum / state.report.similarity)} % of y), largest |R| ${fmt(maxAbs)}` + (state.pinned ? " (pinned: click again to release)" : "");
  }

  function showPairs() {
    drawBackdrop(0); drawBackdrop(1);
    drawCurves(Number($("pairs-slider").value));
    const status = $("heat-status");
    delete status.dataset.patch; delete status.dataset.input; delete status.dataset.max;
    status.textContent = "Hover a patch: its row of R over the other image. Click to pin it.";
  }

  function showPair(pair) {
    drawBackdrop(0); drawBackdrop(1);
    const a = $("view-first").getContext("2d"), b = $("view-second").getContext("2d");
    outline(a, pair.first, "rgb(140, 0, 0)"); outline(b, pair.second, "rgb(140, 0, 0)");
    const ctx = curvesContext();
    stroke(ctx, pair.first.index * state.Q + pair.second.index, 1, 4);
  }

  function patchAt(k, event) {
    const canvas = k === 0 ? $("view-first") : $("view-second"), b = canvas.getBoundingClientRect(), g = state.grids[k];
    const x = ((event.clientX - b.left) / b.width) * g.W, y = ((event.clientY - b.top) / b.height) * g.H;
    if (x < 0 || y < 0 || x >= g.W || y >= g.H) return null;
    return Math.floor(y / g.patch) * g.cols + Math.floor(x / g.patch);
  }

  function fmt(v) {
    if (v === 0 || !isFinite(v)) return String(v);
    const a = Math.abs(v);
    return a >= 1e4 || a < 1e-3 ? v.toExponential(3) : v.toPrecision(4);
  }

  // MARK: showing a result

  function show(report, npyBytes, images) {
    const M = parseNPY(npyBytes);
    if (M.shape.length !== 2) throw new Error("R must be a matrix");
    state.report = report; state.R = M.data; state.P = M.shape[0]; state.Q = M.shape[1]; state.npy = npyBytes;
    state.grids = [grid(report.inputs[0], report.patch), grid(report.inputs[1], report.patch)];
    if (state.grids[0].rows * state.grids[0].cols !== state.P || state.grids[1].rows * state.grids[1].cols !== state.Q) {
      throw new Error(`R is ${state.P} x ${state.Q}, the patch grids say otherwise`);
    }
    state.backdrops = [backdrop(images[0], state.grids[0].H, state.grids[0].W), backdrop(images[1], state.grids[1].H, state.grids[1].W)];
    state.scale = Math.max(1, Math.ceil(MIN_WIDTH / Math.min(state.grids[0].W, state.grids[1].W)));
    state.opacity = opacities(state.R);
    state.order = [];
    for (let i = 0; i < state.R.length; i++) if (state.opacity[i] !== 0) state.order.push(i);
    state.order.sort((a, b) => Math.abs(state.R[b]) - Math.abs(state.R[a]));
    const slider = $("pairs-slider");
    slider.max = String(state.order.length);
    slider.value = String(Math.min(state.order.length, 4000));
    state.pinned = null;

    const c = report.conservation;
    $("similarity").textContent = `y = ${fmt(report.similarity)} (${report.model.similarity})`;
    $("similarity").dataset.value = String(report.similarity);
    $("conservation").textContent = `sum of R = ${fmt(c.relevance_sum)}, relative error ${fmt(c.relative_error)}; ` +
      `${state.P} x ${state.Q} patch pairs of ${report.patch} px`;
    const src = (s) => s.split("/").pop();
    $("setup").textContent = `${src(report.inputs[0].source)} and ${src(report.inputs[1].source)} · model ${src(report.model.source)} · ` +
      `head ${report.model.head} · rules ${report.model.rules}`;
    const tbody = $("top-pairs").querySelector("tbody");
    tbody.replaceChildren();
    report.top_positive.forEach((pair, k) => {
      const tr = document.createElement("tr");
      const cells = [String(k + 1), fmt(pair.value), `${fmt(100 * pair.value / report.similarity)} %`,
        `(${pair.first.x0}, ${pair.first.y0})-(${pair.first.x1}, ${pair.first.y1})`,
        `(${pair.second.x0}, ${pair.second.y0})-(${pair.second.x1}, ${pair.second.y1})`];
      for (const text of cells) { const td = document.createElement("td"); td.textContent = text; tr.append(td); }
      tr.addEventListener("mouseenter", () => { tr.classList.add("active"); showPair(pair); });
      tr.addEventListener("mouseleave", () => { tr.classList.remove("active"); if (!state.pinned) showPairs(); });
      tbody.append(tr);
    });
    const trimmed = Object.assign({}, report);
    delete trimmed.pair_png; delete trimmed.heatmap_png; delete trimmed.matrix_npy;
    $("download-json").href = URL.createObjectURL(new Blob([JSON.stringify(trimmed, null, 2)], { type: "application/json" }));
    $("download-npy").href = URL.createObjectURL(new Blob([npyBytes], { type: "application/octet-stream" }));
    $("result").hidden = false;
    showPairs();
  }

  // MARK: the server

  function readBase64(file) {
    return new Promise((resolve, reject) => {
      const r = new FileReader();
      r.onload = () => resolve(String(r.result).replace(/^data:[^,]*,/, ""));
      r.onerror = () => reject(new Error(`cannot read ${file.name}`));
      r.readAsDataURL(file);
    });
  }

  async function input(which) {
    const file = $(`${which}-file`).files[0], id = $(`${which}-id`).value.trim();
    if (file) return { body: { image: await readBase64(file) }, image: await loadImage(URL.createObjectURL(file)) };
    if (id) return { body: { factors: id }, image: null };
    throw new Error(`choose the ${which} image (or give a factor id)`);
  }

  function setStatus(text, error) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", !!error);
  }

  async function explain() {
    const button = $("explain");
    button.disabled = true;
    try {
      const a = await input("first"), b = await input("second");
      const settings = {};
      if ($("rules").value.trim()) settings.rules = $("rules").value.trim();
      if ($("patch").value) settings.patch = Number($("patch").value);
      if ($("top-k").value) settings.top_k = Number($("top-k").value);
      const headers = { "Content-Type": "application/json" }, token = $("token").value.trim();
      if (token) { headers.Authorization = `Bearer ${token}`; sessionStorage.setItem("bilrp-token", token); }
      setStatus("explaining…");
      const t0 = performance.now();
      const response = await fetch("v1/explain", { method: "POST", headers,
        body: JSON.stringify({ first: a.body, second: b.body, settings, matrix: true }) });
      const answer = await response.json().catch(() => ({ error: `answer ${response.status} is not JSON` }));
      if (!response.ok) throw new Error(`${response.status}: ${answer.error || "error"}`);
      show(answer, base64ToBytes(answer.matrix_npy), [a.image, b.image]);
      setStatus(`explained in ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    } catch (e) {
      setStatus(e.message, true);
    } finally {
      button.disabled = false;
    }
  }

  // MARK: wiring

  function wire() {
    $("pairs-slider").addEventListener("input", () => { if (!state.pinned) showPairs(); });
    for (const [k, id] of [[0, "view-first"], [1, "view-second"]]) {
      const canvas = $(id);
      canvas.addEventListener("mousemove", (e) => {
        if (state.pinned || !state.R) return;
        const p = patchAt(k, e);
        if (p !== null) showPatch(k, p);
      });
      canvas.addEventListener("mouseleave", () => { if (!state.pinned && state.R) showPairs(); });
      canvas.addEventListener("click", (e) => {
        const p = patchAt(k, e);
        if (p === null) return;
        if (state.pinned && state.pinned[0] === k && state.pinned[1] === p) { state.pinned = null; showPairs(); return; }
        state.pinned = [k, p];
        showPatch(k, p);
      });
    }
    for (const which of ["first", "second"]) {
      const drop = $(`${which}-drop`), file = $(`${which}-file`);
      drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
      drop.addEventListener("dragleave", () => drop.classList.remove("over"));
      drop.addEventListener("drop", (e) => {
        e.preventDefault(); drop.classList.remove("over");
        if (e.dataTransfer.files.length) file.files = e.dataTransfer.files;
      });
    }
    $("explain").addEventListener("click", explain);
    const saved = sessionStorage.getItem("bilrp-token");
    if (saved) $("token").value = saved;
  }

  async function start() {
    wire();
    const embedded = $("bilrp-data");
    if (!embedded) return;
    // A page written by `bilrp explain --html`: the pair is in the page, no server.
    $("form").hidden = true;
    try {
      const data = JSON.parse(embedded.textContent);
      const images = await Promise.all(data.images.map((b64) => loadImage(`data:image/png;base64,${b64}`)));
      show(data.report, base64ToBytes(data.matrix_npy), images);
    } catch (e) {
      $("form").hidden = false;
      setStatus(`cannot show the embedded explanation: ${e.message}`, true);
    }
  }

  window.bilrpViewer = { state, show, parseNPY, bytesToBase64 };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();

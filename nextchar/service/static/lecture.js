// The lecture you can watch (/lecture): four views over the text being typed, each drawn from
// one JSON route (/api/lecture/machine, state, distribution, bptt; nextchar/service/lecture.py).
// Every number comes from the server, which computes it with nextchar/lecture/. Plain
// JavaScript, no build step, nothing from the internet.
"use strict";

const $ = (id) => document.getElementById(id);
const input = $("lecture-text");
const statusLine = $("lecture-status");

// How the lecture writes a character in a table: a space as _, a newline as ⏎.
function show(ch) {
  return ch === null || ch === undefined ? "" : ch.replace(/ /g, "_").replace(/\n/g, "⏎");
}

function fmt(x, digits) {
  if (x === null || x === undefined) return "overflow";
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(digits === undefined ? 2 : digits);
  return x.toFixed(digits === undefined ? 3 : digits);
}

// Red for positive, blue for negative, white for 0; v in [-1, 1].
function colour(v) {
  const a = Math.max(-1, Math.min(1, v));
  const fade = Math.round(255 * (1 - Math.abs(a)));
  return a >= 0 ? `rgb(255,${fade},${fade})` : `rgb(${fade},${fade},255)`;
}

function element(tag, attrs, text) {
  const e = document.createElement(tag);
  // Styles through the CSSOM: the page's Content-Security-Policy refuses inline style attributes.
  for (const [k, v] of Object.entries(attrs || {})) { if (k === "style") e.style.cssText = v; else e.setAttribute(k, v); }
  if (text !== undefined) e.textContent = text;
  return e;
}

// One request stream per view: only the answer to the latest request is drawn.
function view(path, draw) {
  let sent = 0;
  return function request(params) {
    const seq = ++sent;
    return fetch(path + "?" + new URLSearchParams(params), {headers: {Accept: "application/json"}})
      .then((r) => r.json().then((body) => (r.ok ? body : Promise.reject(new Error(body.detail || "HTTP " + r.status)))))
      .then((body) => { if (seq === sent) draw(body); })
      .catch((err) => { if (seq === sent) statusLine.textContent = path + ": " + err.message; });
  };
}

// ------------------------------------------------------------------------------ 1. the state machine

function blockTable(table, blocks) {
  table.replaceChildren();
  for (const row of blocks) {
    const tr = element("tr");
    for (const name of row) tr.append(element("td", {class: name === "I" ? "I" : "zero"}, name));
    table.append(tr);
  }
}

function drawMatrix(canvas, rows, cell) {
  const n = rows.length, m = n ? rows[0].length : 0;
  canvas.width = m * cell; canvas.height = n * cell;
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff"; g.fillRect(0, 0, canvas.width, canvas.height);
  g.fillStyle = "#202122";
  rows.forEach((row, i) => row.forEach((v, j) => { if (v) g.fillRect(j * cell, i * cell, cell, cell); }));
}

const machine = view("/api/lecture/machine", (d) => {
  const body = $("machine-table").tBodies[0];
  body.replaceChildren();
  d.rows.forEach((r, i) => {
    const tr = element("tr", {"data-t": r.t, "data-x": r.x === null ? "" : r.x, "data-s": r.s});
    if (i === d.rows.length - 1) tr.className = "latest";
    for (const cell of [String(r.t), show(r.x), show(r.s), show(r.output)]) tr.append(element("td", {}, cell));
    body.append(tr);
  });
  body.lastChild.scrollIntoView({block: "nearest"});
  $("machine-summary").textContent =
    `alphabet of ℓ = ${d.ell} characters {${d.alphabet.map(show).join(" ")}}, one-hot; m·ℓ = ${d.context}·${d.ell} = ` +
    `${d.m} state units. The RNN's states equal the table's at every step: ${d.states_equal_table ? "yes" : "NO"}.`;
  blockTable($("w-sx"), d.W_sx_blocks);
  blockTable($("w-ss"), d.W_ss_blocks);
  const full = $("w-ss-full");
  full.hidden = d.W_ss === null;
  if (d.W_ss !== null) drawMatrix(full, d.W_ss, Math.max(2, Math.floor(180 / d.m)));
  // s_t: one row per t, the m·ℓ units in blocks of ℓ, the lit unit of each block black.
  const cell = d.ell > 40 ? 3 : 6;
  const canvas = $("machine-states");
  canvas.width = d.m * cell; canvas.height = d.hot.length * cell;
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff"; g.fillRect(0, 0, canvas.width, canvas.height);
  d.hot.forEach((blocks, t) => blocks.forEach((k, b) => {
    g.fillStyle = "#202122"; g.fillRect((b * d.ell + k) * cell, t * cell, cell, cell);
  }));
  g.fillStyle = "#36c";
  for (let b = 1; b < d.context; b++) g.fillRect(b * d.ell * cell - 1, 0, 1, canvas.height);
});

// ------------------------------------------------------------------------------ 2. the state

let state = null;  // the last state view drawn
const CELL_W = 12;

function unitRows(m) { return m > 256 ? 1 : m > 64 ? 2 : 5; }

function drawHeatmap(d) {
  const canvas = $("state-heatmap");
  const h = unitRows(d.units_shown);
  canvas.width = d.states.length * CELL_W; canvas.height = d.units_shown * h + 14;
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff"; g.fillRect(0, 0, canvas.width, canvas.height);
  const limit = d.limit || 1;
  d.states.forEach((s, t) => s.forEach((v, u) => { g.fillStyle = colour(v / limit); g.fillRect(t * CELL_W, u * h, CELL_W, h); }));
  g.fillStyle = "#202122"; g.font = "10px monospace";
  d.inputs.forEach((x, t) => g.fillText(show(x), t * CELL_W + 2, d.units_shown * h + 11));
}

function cellAt(event) {
  const canvas = $("state-heatmap");
  const rect = canvas.getBoundingClientRect();
  const t = Math.floor((event.clientX - rect.left) / CELL_W);
  const u = Math.floor((event.clientY - rect.top) / unitRows(state.units_shown));
  return t >= 0 && t < state.states.length && u >= 0 && u < state.units_shown ? {t, u} : null;
}

function drawUnit() {
  const out = $("unit-text");
  out.replaceChildren();
  if (!state) return;
  const u = Math.max(0, Math.min(state.units_shown - 1, Number($("unit").value) || 0));
  // Scaled by this unit's own largest |activation|, so that a quiet unit shows its pattern too.
  const limit = Math.max(...state.states.map((s) => Math.abs(s[u])), 1e-12);
  // c_i is coloured by the state after reading it: states[i] (states[0] is after ^).
  [...state.text].forEach((ch, i) => {
    const v = state.states[i + 1][u];
    out.append(element("span", {"data-value": v, title: `unit ${u}: ${v}`, style: `background:${colour(v / limit)}`}, ch));
  });
}

function pickUnit(u) { $("unit").value = u; drawUnit(); }

const stateView = view("/api/lecture/state", (d) => {
  state = d;
  $("unit").max = d.units_shown - 1;
  drawHeatmap(d);
  drawUnit();
  const list = $("features");
  list.replaceChildren();
  for (const f of d.features) {
    const li = element("li", {"data-feature": f.name}, f.name + ": ");
    if (!f.units.length) li.append(element("span", {class: "muted"}, "needs 3 characters and a feature that varies"));
    for (const {unit, r} of f.units) {
      const b = element("button", {type: "button", "data-unit": unit}, `unit ${unit} r=${r.toFixed(2)}`);
      b.addEventListener("click", () => pickUnit(unit));
      li.append(b);
    }
    list.append(li);
  }
});

// ------------------------------------------------------------------------------ 3. p_t

const distribution = view("/api/lecture/distribution", (d) => {
  const strip = $("dist-strip");
  strip.replaceChildren();
  for (const r of d.rows) {
    const pos = element("div", {class: "pos" + (r.unknown ? " unknown" : ""), "data-t": r.t, "data-p": r.p,
      "data-bits": r.bits, title: `p_${r.t}[${show(r.y)}] = ${r.p}, −log2 p = ${fmt(r.bits)} bits`});
    for (const [sym, p] of r.top.slice(0, 3)) {
      pos.append(element("span", {class: "guess", style: `opacity:${Math.max(0.15, Math.min(1, 3 * p))}`}, show(sym)));
    }
    pos.append(element("span", {class: "char"}, show(r.y)));
    const box = element("div", {class: "bar-box"});
    box.append(element("div", {class: "bar", style: `height:${Math.max(1, Math.round(40 * r.p))}px`}));
    pos.append(box, element("span", {class: "bits"}, r.bits.toFixed(1)));
    strip.append(pos);
  }
  const n = d.rows.length;
  $("lseq").textContent = n
    ? `L_seq = Σ −log2 p_t[y_t] = ${d.L_seq_bits.toFixed(3)} bits (${d.L_seq_nats.toFixed(3)} nats) over n = ${n}; ` +
      `BPC = ${d.BPC.toFixed(3)}`
    : "L_seq = 0 (nothing typed yet)";
  $("lseq").dataset.bits = d.L_seq_bits;
  $("lseq").dataset.bpc = d.BPC === null ? "" : d.BPC;
  $("dist-next").textContent = d.next.map(([s, p]) => `${show(s)} ${(100 * p).toFixed(1)}%`).join("   ");
});

// ------------------------------------------------------------------------------ 4. BPTT

function drawBptt(d) {
  const canvas = $("bptt-chart");
  const w = 16, top = 10, height = 160;
  canvas.width = Math.max(200, (d.n + 1) * w + 40); canvas.height = height + 30;
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff"; g.fillRect(0, 0, canvas.width, canvas.height);
  const logs = d.dL_ds_norms.concat(d.accumulated_norms).filter((v) => v !== null && v > 0).map(Math.log10);
  const lo = Math.min(...logs, 0) - 0.5, hi = Math.max(...logs, 0) + 0.5;
  const y = (v) => top + height * (1 - (Math.log10(v) - lo) / (hi - lo));
  g.fillStyle = "#36c";
  d.dL_ds_norms.forEach((v, t) => {
    if (v === null) { g.fillStyle = "#b32424"; g.fillRect(40 + t * w, top, w - 3, height); g.fillStyle = "#36c"; return; }
    if (v > 0) g.fillRect(40 + t * w, y(v), w - 3, top + height - y(v));
  });
  g.strokeStyle = "#b32424"; g.beginPath();
  d.accumulated_norms.forEach((v, i) => { if (v !== null && v > 0) g.lineTo(40 + (i + 1) * w + w / 2, y(v)); });
  g.stroke();
  g.fillStyle = "#202122"; g.font = "10px monospace";
  ["s0", ...d.inputs].forEach((x, t) => g.fillText(t ? show(x) : "s₀", 40 + t * w + 2, top + height + 14));
  g.fillText(`1e${Math.round(hi)}`, 0, top + 8);
  g.fillText(`1e${Math.round(lo)}`, 0, top + height - 2);
}

const bptt = view("/api/lecture/bptt", (d) => {
  const mismatch = d.f1 !== d.trained_f1 ? ` (trained with f1 = ${d.trained_f1}, run here with ${d.f1})` : "";
  $("bptt-source").textContent = `Weights: ${d.source}${mismatch}; the text as its alphabet reads it: "${d.text}".`;
  drawBptt(d);
  const list = $("bptt-norms");
  list.replaceChildren(...d.dL_ds_norms.map((v, t) => element("li", {"data-t": t, "data-norm": v === null ? "" : v},
    `‖∂L_seq/∂s_${t}‖ = ${fmt(v)}`)));
  const upto = $("bptt-upto");
  upto.max = d.n; upto.value = d.upto; $("upto-value").textContent = d.upto;
  const limit = Math.max(...d.dJ_dW_ss.flat().map((v) => (v === null ? 0 : Math.abs(v))), 1e-300);
  const canvas = $("bptt-matrix"), cell = Math.max(2, Math.floor(256 / d.m));
  canvas.width = d.m * cell; canvas.height = d.m * cell;
  const g = canvas.getContext("2d");
  d.dJ_dW_ss.forEach((row, i) => row.forEach((v, j) => {
    g.fillStyle = v === null ? "#000" : colour(v / limit); g.fillRect(j * cell, i * cell, cell, cell);
  }));
  const checks = [
    ["check-accumulated", "Σ_t (dJ/dz_t¹) s_{t−1}ᵀ against backward's dJ/dW^ss: relative error", d.accumulated_error],
    ["check-autograd", "against PyTorch autograd (convert.autograd_check), worst array", d.autograd_error],
    ["check-fd", "finite difference along a random direction", d.fd_error],
    ["check-lseq", "L_seq (nats)", d.L_seq],
    ["check-norm", "‖α W^ss‖₂, the largest stretch one step back can give", d.W_ss_norm],
  ];
  $("bptt-checks").replaceChildren(...checks.map(([id, label, v]) =>
    element("li", {id, "data-value": v === null ? "" : v}, `${label}: ${v === null ? "— (overflow)" : fmt(v, 2)}`)));
});

// ------------------------------------------------------------------------------ wiring

let timer = 0;

function bpttParams(upto) {
  const p = {text: input.value, f1: $("f1").value, scale: $("scale").value};
  if (upto) p.upto = upto;
  return p;
}

function update() {
  statusLine.textContent = "";
  const text = input.value;
  machine({text, m: $("machine-m").value});
  stateView({text});
  distribution({text, k: 5});
  if (text.length) bptt(bpttParams()); else $("bptt-checks").replaceChildren();
}

input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(update, 60); });
$("machine-m").addEventListener("change", () => machine({text: input.value, m: $("machine-m").value}));
$("unit").addEventListener("input", drawUnit);
$("f1").addEventListener("change", () => input.value && bptt(bpttParams()));
$("scale").addEventListener("input", () => {
  $("scale-value").textContent = Number($("scale").value).toFixed(2);
  if (input.value) bptt(bpttParams());
});
$("bptt-upto").addEventListener("input", () => {
  $("upto-value").textContent = $("bptt-upto").value;
  if (input.value) bptt(bpttParams($("bptt-upto").value));
});
const heat = $("state-heatmap");
heat.addEventListener("mousemove", (event) => {
  const at = state && cellAt(event);
  const out = $("state-readout");
  if (!at) return;
  const v = state.states[at.t][at.u];
  out.dataset.unit = at.u; out.dataset.t = at.t + 1; out.dataset.value = v;
  out.textContent = `s_${at.t + 1}[${at.u}] = ${v} after reading x_${at.t + 1} = ${show(state.inputs[at.t])}`;
});
heat.addEventListener("click", (event) => { const at = state && cellAt(event); if (at) pickUnit(at.u); });

fetch("/api/lecture/info").then((r) => r.json()).then((d) => {
  $("model-info").textContent = `Views 2–3: ${d.model} (${d.kind}, s_t of ${d.m} units, ${d.v} symbols); ` +
    `view 4: ${d.bptt}.`;
  input.maxLength = d.max_text;
  if (d.service) $("lecture-footer").prepend(element("a", {href: "/"}, "the search box and email page"), " · ");
});
const initial = new URLSearchParams(location.search).get("q");
if (initial) input.value = initial.slice(0, 200);
update();

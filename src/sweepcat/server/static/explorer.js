/* sweepcat explorer: plain JavaScript (no library), canvas for data, SVG for axes and labels.
 *
 * State lives in the URL (dataset, query, brushes, 2-D axes, sort, page, open Hamiltonians, log scale),
 * never the API key: that is kept in sessionStorage, sent as "Authorization: Apikey ...".
 * The page marks its progress on <body data-state="loading|ready|error" data-seq="N"> (tests and the
 * benchmark wait on it) and records timings in window.sweepcatTimings.
 */
(() => {
  "use strict";

  const API = document.querySelector('meta[name="sweepcat-api"]').content || "/api/v1";
  const SERVER = location.origin + API.replace(/\/api\/v1$/, "");
  const KEY_STORE = "sweepcat.apiKey";
  const MAX_OPEN = 4;
  const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706"];
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs = {}, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  };
  const SVGNS = "http://www.w3.org/2000/svg";
  const svgEl = (tag, attrs = {}, text) => {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };

  const timings = window.sweepcatTimings = { firstReady: null, updates: [], opens: [] };
  const state = { ds: null, q: "", brushes: {}, x: null, y: null, sort: null, desc: false, page: 0,
                  open: [], log: false, shared: false };
  const PAGE = 25;
  let datasets = [], info = null, summary = null, seq = 0, controller = null;
  const pinned = new Set();  // Hamiltonians ticked for comparison (a row click replaces the others)
  const axisCache = new Map();

  // ------------------------------------------------------------------ formatting

  const fmt = (v, p = 4) => {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e9) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(p - 1);
    return String(Number(v.toPrecision(p)));
  };
  const qnum = (v) => String(Number(v.toPrecision(7)));  // a number the query language reads
  const thousands = (n) => n.toLocaleString("en-US");

  function niceTicks(lo, hi, count = 5) {
    if (!(isFinite(lo) && isFinite(hi))) return [];
    if (hi === lo) return [lo];
    const span = hi - lo, raw = span / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count + 0.5) || 10 * mag;
    const out = [];
    for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
      out.push(Math.abs(t) < step * 1e-9 ? 0 : Number(t.toPrecision(12)));
    }
    return out;
  }

  // viridis (matplotlib's, CC0), 9 control points, linearly interpolated
  const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                   [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  const LUT = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = i / 255 * (VIRIDIS.length - 1), k = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - k;
    for (let c = 0; c < 3; c++) LUT[i * 3 + c] = VIRIDIS[k][c] * (1 - f) + VIRIDIS[k + 1][c] * f;
  }
  const lutColor = (t) => {
    const i = Math.max(0, Math.min(255, Math.round(t * 255))) * 3;
    return `rgb(${LUT[i]},${LUT[i + 1]},${LUT[i + 2]})`;
  };

  // ------------------------------------------------------------------ auth and requests

  class ApiError extends Error {
    constructor(status, detail) {
      const message = typeof detail === "string" ? detail : (detail && detail.message) || `HTTP ${status}`;
      super(message);
      this.status = status;
      this.hint = detail && typeof detail === "object" ? detail.hint || "" : "";
    }
  }

  const apiKey = () => sessionStorage.getItem(KEY_STORE);

  function takeKeyFromUrl() {  // a link with ?api_key= (as the banner prints): kept for this tab, then dropped
    const url = new URL(location.href);
    const key = url.searchParams.get("api_key");
    if (key !== null) {
      if (key) sessionStorage.setItem(KEY_STORE, key);
      url.searchParams.delete("api_key");
      history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
  }

  async function request(path, params = {}, { accept = "application/json", signal, raw = false } = {}) {
    const url = new URL(API + path, location.origin);
    for (const [k, v] of Object.entries(params)) {
      if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, String(v));
    }
    const headers = { Accept: accept };
    const key = apiKey();
    if (key) headers.Authorization = "Apikey " + key;
    const response = await fetch(url, { headers, signal, credentials: "same-origin" });
    if (!response.ok) {
      let detail = null;
      try { detail = (await response.json()).detail; } catch (e) { detail = response.statusText; }
      const err = new ApiError(response.status, detail);
      if (response.status === 401) askForKey(err.message);
      throw err;
    }
    return raw ? response : response.json();
  }

  function askForKey(message) {
    $("#auth").hidden = false;
    $("#main").hidden = true;
    $("#auth-message").textContent = apiKey()
      ? `The server refused the key (${message}). Enter the key sweepcat serve printed.`
      : "This server needs an API key (the one `sweepcat serve` printed).";
    document.body.dataset.state = "auth";
  }

  function showAuthStatus() {
    const key = apiKey();
    $("#auth-status").textContent = key ? "API key set for this tab" : "no API key (anonymous access)";
    $("#forget-key").hidden = !key;
  }

  // ------------------------------------------------------------------ URL state

  function readUrl() {
    const p = new URLSearchParams(location.search);
    state.ds = p.get("ds");
    state.q = p.get("q") || "";
    state.brushes = {};
    for (const b of p.getAll("b")) {
      const m = /^(.+):([^:]+):([^:]+)$/.exec(b);
      if (m && isFinite(+m[2]) && isFinite(+m[3])) state.brushes[m[1]] = [+m[2], +m[3]];
    }
    state.x = p.get("x"); state.y = p.get("y");
    state.sort = p.get("sort"); state.desc = p.get("desc") === "1";
    state.page = Math.max(0, parseInt(p.get("page") || "0", 10) || 0);
    state.open = p.getAll("open").slice(0, MAX_OPEN);
    state.log = p.get("log") === "1"; state.shared = p.get("shared") === "1";
  }

  function writeUrl() {
    const p = new URLSearchParams();
    if (state.ds) p.set("ds", state.ds);
    if (state.q) p.set("q", state.q);
    for (const [n, [lo, hi]] of Object.entries(state.brushes)) p.append("b", `${n}:${qnum(lo)}:${qnum(hi)}`);
    if (state.x) p.set("x", state.x);
    if (state.y) p.set("y", state.y);
    if (state.sort) { p.set("sort", state.sort); if (state.desc) p.set("desc", "1"); }
    if (state.page) p.set("page", String(state.page));
    for (const k of state.open) p.append("open", k);
    if (state.log) p.set("log", "1");
    if (state.shared) p.set("shared", "1");
    const search = p.toString();
    history.replaceState(null, "", location.pathname + (search ? "?" + search : ""));
  }

  function effectiveQuery() {
    const parts = [];
    const brushes = Object.entries(state.brushes);
    const q = state.q.trim();
    if (q) parts.push(brushes.length ? `(${q})` : q);
    for (const [name, [lo, hi]] of brushes) parts.push(`${name} between ${qnum(lo)} and ${qnum(hi)}`);
    return parts.join(" and ");
  }

  // ------------------------------------------------------------------ datasets

  async function loadDatasets() {
    datasets = await request("/sweepcat/datasets");
    const select = $("#dataset");
    select.replaceChildren(...datasets.map((d) => el("option", { value: d.key, text: `${d.label || d.key} (${thousands(d.hamiltonians)})` })));
    if (!datasets.length) {
      $("#info").replaceChildren(el("p", { text: "No datasets in this catalog yet: add one with sweepcat ingest." }));
      document.body.dataset.state = "ready";
      return;
    }
    if (!datasets.some((d) => d.key === state.ds)) state.ds = datasets[0].key;
    select.value = state.ds;
    selectDataset(false);
  }

  function numericParams() { return Object.entries(info.parameters || {}).filter(([, p]) => typeof p.min === "number").map(([n]) => n); }

  function selectDataset(reset) {
    info = datasets.find((d) => d.key === state.ds);
    if (reset) { state.q = ""; state.brushes = {}; state.sort = null; state.page = 0; state.open = []; state.x = state.y = null; }
    const numeric = numericParams();
    if (!numeric.includes(state.x)) state.x = numeric[0] || null;
    if (!numeric.includes(state.y)) state.y = numeric[1] || numeric[0] || null;
    for (const [id, value] of [["#xparam", state.x], ["#yparam", state.y]]) {
      const s = $(id);
      s.replaceChildren(...numeric.map((n) => el("option", { value: n, text: n })));
      s.value = value;
    }
    $("#download-type").replaceChildren(el("option", { value: "", text: "all types" }),
      ...Object.keys(info.artifacts || {}).map((t) => el("option", { value: t, text: t })));
    $("#query").value = state.q;
    renderInfo();
    update();
    if (state.open.length) openHamiltonians(state.open, performance.now());
  }

  function renderInfo() {
    const arts = Object.entries(info.artifacts || {}).map(([t, a]) =>
      el("tr", {}, el("td", { text: t }), el("td", { text: `(${(a.shape || []).join(", ")})` }),
        el("td", { text: a.dtype || "" }), el("td", { text: (a.axes || []).map((x) => x || "index").join(" × ") })));
    const params = Object.entries(info.parameters || {}).map(([n, p]) =>
      el("tr", {}, el("td", { text: n }), el("td", { text: p.dtype || "" }), el("td", { text: fmt(p.min) }),
        el("td", { text: fmt(p.max) })));
    $("#info").replaceChildren(
      el("h2", { text: `${info.label || info.key}` }),
      el("dl", {},
        el("dt", { text: "Hamiltonians" }), el("dd", { id: "info-size", text: thousands(info.hamiltonians) }),
        el("dt", { text: "dataset" }), el("dd", { text: `${info.key} (version ${info.version})` }),
        el("dt", { text: "root" }), el("dd", { text: info.root || "–" }),
        el("dt", { text: "artifacts" }), el("dd", {}, el("table", { id: "info-artifacts" },
          el("tr", {}, el("th", { text: "type" }), el("th", { text: "shape" }), el("th", { text: "dtype" }), el("th", { text: "axes" })), ...arts)),
        el("dt", { text: "parameters" }), el("dd", {}, el("table", { id: "info-params" },
          el("tr", {}, el("th", { text: "name" }), el("th", { text: "dtype" }), el("th", { text: "min" }), el("th", { text: "max" })), ...params))));
  }

  // ------------------------------------------------------------------ the selection: one update of every view

  async function update() {
    const mine = ++seq;
    if (controller) controller.abort();
    controller = new AbortController();
    const signal = controller.signal;
    const q = effectiveQuery();
    const t0 = performance.now();
    document.body.dataset.state = "loading";
    writeUrl();
    renderBrushes();
    $("#effective-query").textContent = q ? `where ${q}` : "(all Hamiltonians)";
    $("#effective-query").dataset.query = q;
    const ds = encodeURIComponent(state.ds);
    const jobs = [
      request(`/sweepcat/explorer/summary/${ds}`, { q }, { signal }).then((s) => {
        if (mine !== seq) return;
        summary = s;
        renderCount(s); renderHistograms(s);
        timings.lastSummaryMs = performance.now() - t0;
      }),
      request(`/sweepcat/explorer/parallel/${ds}`, { q }, { signal }).then((p) => { if (mine === seq) renderParallel(p); }),
      loadDensity(q, signal, mine),
      loadTable(q, signal, mine),
    ];
    const results = await Promise.allSettled(jobs);
    if (mine !== seq) return;
    const failed = results.find((r) => r.status === "rejected");
    if (failed) {
      const err = failed.reason;
      if (err && err.name === "AbortError") return;
      if (err instanceof ApiError && err.status === 401) return;  // the key form is up
      showQueryError(err);
      document.body.dataset.state = "error";
    } else {
      $("#query-error").hidden = true;
      document.body.dataset.state = "ready";
    }
    const ms = performance.now() - t0;
    timings.updates.push(ms);
    // first paint: every view drawn, in ms since navigation start (performance.now() counts from it)
    if (timings.firstReady === null && !failed) timings.firstReady = performance.now();
    if (!failed) prefetchAxes();  // after the first paint, so that a first click pays only for its arrays
    document.body.dataset.seq = String(mine);
  }

  function showQueryError(err) {
    const box = $("#query-error");
    box.textContent = err instanceof ApiError ? err.message + (err.hint ? `\n${err.hint}` : "") : String(err);
    box.hidden = false;
  }

  function renderCount(s) {
    const c = $("#count");
    c.textContent = `${thousands(s.count)} of ${thousands(s.total)} Hamiltonians`;
    c.dataset.count = String(s.count);
  }

  function renderBrushes() {
    const box = $("#brushes");
    box.replaceChildren(...Object.entries(state.brushes).map(([n, [lo, hi]]) => {
      const x = el("button", { type: "button", title: "remove", text: "×" });
      x.addEventListener("click", () => { delete state.brushes[n]; state.page = 0; update(); });
      return el("span", { class: "chip", "data-param": n, text: `${qnum(lo)} ≤ ${n} ≤ ${qnum(hi)}` }, x);
    }));
  }

  function setBrush(name, lo, hi) {
    if (lo === null) delete state.brushes[name];
    else state.brushes[name] = [Math.min(lo, hi), Math.max(lo, hi)];
    state.page = 0;
    update();
  }

  // ------------------------------------------------------------------ histograms

  function canvasFor(canvas, width, height) {
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * dpr); canvas.height = Math.round(height * dpr);
    canvas.style.width = width + "px"; canvas.style.height = height + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return ctx;
  }

  function renderHistograms(s) {
    const box = $("#histograms");
    const existing = new Map([...box.children].map((c) => [c.dataset.param, c]));
    const cards = s.params.map((p) => {
      let card = existing.get(p.name);
      if (!card || card.dataset.kind !== p.kind) card = makeHistCard(p);
      card.data = p;
      return card;
    });
    box.replaceChildren(...cards);
    cards.forEach((card) => drawHistogram(card));  // attached first: their width is the grid's
  }

  function makeHistCard(p) {
    const card = el("div", { class: "hist", "data-param": p.name, "data-kind": p.kind });
    card.append(el("div", { class: "name" }, el("span", { text: p.name }), el("span", { class: "muted sel-range" })));
    if (p.kind !== "number") { card.append(el("ul")); return card; }
    const canvas = el("canvas", { "data-param": p.name, "aria-label": `histogram of ${p.name}` });
    card.append(canvas, el("div", { class: "range" }, el("span", { class: "lo" }), el("span", { class: "hi" })));
    let start = null;
    const valueAt = (ev) => {
      const d = card.data, r = canvas.getBoundingClientRect();
      const f = Math.max(0, Math.min(1, (ev.clientX - r.left) / r.width));
      return d.edges[0] + f * (d.edges[d.edges.length - 1] - d.edges[0]);
    };
    canvas.addEventListener("mousedown", (ev) => { ev.preventDefault(); start = { x: ev.clientX, v: valueAt(ev) }; });
    canvas.addEventListener("mousemove", (ev) => { if (start) drawHistogram(card, [start.v, valueAt(ev)]); });
    const finish = (ev) => {
      if (!start) return;
      const s0 = start; start = null;
      if (Math.abs(ev.clientX - s0.x) < 3) setBrush(p.name, null);  // a click clears
      else setBrush(p.name, s0.v, valueAt(ev));
    };
    canvas.addEventListener("mouseup", finish);
    canvas.addEventListener("mouseleave", (ev) => { if (start) finish(ev); });
    return card;
  }

  function drawHistogram(card, dragging) {
    const p = card.data;
    const brush = state.brushes[p.name];
    card.querySelector(".sel-range").textContent = brush ? `${fmt(brush[0])} – ${fmt(brush[1])}` : "";
    if (p.kind !== "number") {
      const items = p.identifier ? [el("li", { class: "muted", text: `${thousands(p.distinct)} distinct values (an identifier)` })]
        : Object.entries(p.sel).map(([v, c]) => el("li", { text: `${v}: ${thousands(c)}` }));
      card.querySelector("ul").replaceChildren(...items);
      return;
    }
    const canvas = card.querySelector("canvas");
    const width = Math.max(120, card.clientWidth - 12 || 218), height = 70;
    const ctx = canvasFor(canvas, width, height);
    ctx.clearRect(0, 0, width, height);
    card.querySelector(".lo").textContent = fmt(p.min);
    card.querySelector(".hi").textContent = fmt(p.max);
    if (!p.edges.length) return;
    const n = p.all.length, bw = width / n;
    const top = Math.max(1, ...p.all);
    const h = (c) => (c > 0 ? Math.max(1, (c / top) * (height - 4)) : 0);
    ctx.fillStyle = "#c9ced8";
    p.all.forEach((c, i) => ctx.fillRect(i * bw + 0.5, height - h(c), Math.max(1, bw - 1), h(c)));
    ctx.fillStyle = "#2563eb";
    p.sel.forEach((c, i) => ctx.fillRect(i * bw + 0.5, height - h(c), Math.max(1, bw - 1), h(c)));
    const lo = p.edges[0], hi = p.edges[p.edges.length - 1];
    const px = (v) => ((v - lo) / (hi - lo)) * width;
    for (const [range, color] of [[brush, "rgba(37,99,235,0.12)"], [dragging, "rgba(234,88,12,0.2)"]]) {
      if (!range) continue;
      const a = px(Math.min(...range)), b = px(Math.max(...range));
      ctx.fillStyle = color; ctx.fillRect(a, 0, Math.max(1, b - a), height);
    }
  }

  // ------------------------------------------------------------------ plot frame: canvas for data, SVG axes

  class Frame {
    constructor(parent, { width, height, margin = { l: 56, r: 14, t: 10, b: 40 }, xrange, yrange, xlabel, ylabel,
                          title, extraRight = 0, span = null }) {
      this.width = width; this.height = height; this.m = margin; this.span = span;
      this.pw = width - margin.l - margin.r - extraRight; this.ph = height - margin.t - margin.b;
      this.xr = xrange; this.yr = yrange;
      this.root = el("div", { class: "plot" });
      this.root.style.width = width + "px"; this.root.style.height = height + "px";
      this.canvas = el("canvas", { class: "data" });
      this.canvas.style.left = margin.l + "px"; this.canvas.style.top = margin.t + "px";
      this.ctx = canvasFor(this.canvas, this.pw, this.ph);
      this.svg = svgEl("svg", { width, height });
      this.root.append(this.canvas, this.svg);
      parent.append(this.root);
      if (title) this.svg.append(svgEl("text", { x: margin.l, y: 9, class: "plot-title" }, title));
      this.axis("x", xlabel); this.axis("y", ylabel);
    }
    x(v) { return ((v - this.xr[0]) / (this.xr[1] - this.xr[0] || 1)) * this.pw; }
    y(v) { return this.ph - ((v - this.yr[0]) / (this.yr[1] - this.yr[0] || 1)) * this.ph; }
    xv(px) { return this.xr[0] + (px / this.pw) * (this.xr[1] - this.xr[0]); }
    yv(py) { return this.yr[0] + ((this.ph - py) / this.ph) * (this.yr[1] - this.yr[0]); }
    axis(which, label) {
      const { l, t } = this.m;
      const [lo, hi] = which === "x" ? this.xr : this.yr;
      const g = svgEl("g", { class: `axis ${which}`, "data-lo": String(lo), "data-hi": String(hi), "data-label": label || "" });
      if (which === "x") {
        g.append(svgEl("line", { x1: l, x2: l + this.pw, y1: t + this.ph, y2: t + this.ph }));
        for (const v of niceTicks(lo, hi, Math.max(2, Math.floor(this.pw / 70)))) {
          const px = l + this.x(v);
          g.append(svgEl("line", { x1: px, x2: px, y1: t + this.ph, y2: t + this.ph + 4 }));
          g.append(svgEl("text", { x: px, y: t + this.ph + 15, "text-anchor": "middle", class: "tick x" }, fmt(v)));
        }
        g.append(this.title({ x: l + this.pw / 2, y: t + this.ph + 32, "text-anchor": "middle", class: "axis-title x" }, label, this.xr));
      } else {
        g.append(svgEl("line", { x1: l, x2: l, y1: t, y2: t + this.ph }));
        for (const v of niceTicks(lo, hi, Math.max(2, Math.floor(this.ph / 40)))) {
          const py = t + this.y(v);
          g.append(svgEl("line", { x1: l - 4, x2: l, y1: py, y2: py }));
          g.append(svgEl("text", { x: l - 6, y: py + 4, "text-anchor": "end", class: "tick y" }, fmt(v)));
        }
        g.append(this.title({ x: 12, y: t + this.ph / 2, "text-anchor": "middle", class: "axis-title y",
                              transform: `rotate(-90 12 ${t + this.ph / 2})` }, label, this.yr));
      }
      this.svg.append(g);
    }
    title(attrs, label, range) {  // the axis name, and the values the data spans (when the caller gave them)
      const text = svgEl("text", attrs);
      text.append(svgEl("tspan", { class: "axis-name" }, label || ""));
      if (this.span && this.span[attrs.class.slice(-1)]) {
        const [a, b] = this.span[attrs.class.slice(-1)];
        text.append(svgEl("tspan", { class: "axis-range", "data-lo": String(a), "data-hi": String(b), fill: "#6b7280" },
                          `  ${fmt(a)} … ${fmt(b)}`));
      }
      return text;
    }
    colorbar(lo, hi, log, label) {  // to the right of the plot area
      const x0 = this.m.l + this.pw + 14, w = 12, { t } = this.m;
      const bar = el("canvas", { class: "colorbar" });
      bar.style.position = "absolute"; bar.style.left = x0 + "px"; bar.style.top = t + "px";
      const ctx = canvasFor(bar, w, this.ph);
      for (let i = 0; i < this.ph; i++) { ctx.fillStyle = lutColor(1 - i / (this.ph - 1)); ctx.fillRect(0, i, w, 1); }
      this.root.append(bar);
      const g = svgEl("g", { class: "colorbar-axis", "data-lo": String(lo), "data-hi": String(hi), "data-log": log ? "1" : "0" });
      const decades = [];
      for (let k = Math.ceil(lo); k <= Math.floor(hi); k++) decades.push(k);
      const marks = log && decades.length >= 2 ? decades : niceTicks(lo, hi, Math.max(2, Math.floor(this.ph / 40)));
      for (const v of marks) {
        const py = t + this.ph - ((v - lo) / (hi - lo || 1)) * this.ph;
        g.append(svgEl("line", { x1: x0 + w, x2: x0 + w + 3, y1: py, y2: py }));
        g.append(svgEl("text", { x: x0 + w + 5, y: py + 4, class: "tick c" }, log ? `1e${fmt(v, 2)}` : fmt(v)));
      }
      if (label) g.append(svgEl("text", { x: x0, y: t - 2, class: "muted" }, label));
      this.svg.append(g);
    }
    brushRect(a, b) {  // a drag rectangle in plot coordinates (pixels)
      let r = this.svg.querySelector("rect.drag");
      if (!a) { if (r) r.remove(); return; }
      if (!r) { r = svgEl("rect", { class: "drag", fill: "rgba(234,88,12,0.15)", stroke: "#ea580c" }); this.svg.append(r); }
      r.setAttribute("x", this.m.l + Math.min(a[0], b[0])); r.setAttribute("y", this.m.t + Math.min(a[1], b[1]));
      r.setAttribute("width", Math.abs(a[0] - b[0])); r.setAttribute("height", Math.abs(a[1] - b[1]));
    }
  }

  const localPoint = (canvas, ev) => { const r = canvas.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; };

  // ------------------------------------------------------------------ parallel coordinates

  function renderParallel(p) {
    const box = $("#parallel");
    $("#parallel-mode").textContent = p.mode === "lines" ? `${thousands(p.count)} lines`
      : `${thousands(p.count)} matches, density-binned on the server (${p.bins} bins per axis)`;
    const width = Math.max(420, box.clientWidth || 700), height = 300;
    const m = { l: 30, r: 30, t: 28, b: 26 };
    const root = el("div", { class: "plot" });
    root.style.width = width + "px"; root.style.height = height + "px";
    const canvas = el("canvas", { class: "data", "aria-label": "parallel coordinates" });
    canvas.style.left = "0px"; canvas.style.top = "0px";
    const ctx = canvasFor(canvas, width, height);
    const svg = svgEl("svg", { width, height });
    root.append(canvas, svg);
    box.replaceChildren(root);
    const n = p.params.length;
    if (!n) return;
    const ax = (i) => m.l + (n === 1 ? 0 : (i * (width - m.l - m.r)) / (n - 1));
    const ph = height - m.t - m.b;
    const yOf = (i, v) => { const [lo, hi] = p.ranges[i]; return m.t + ph - ((v - lo) / ((hi - lo) || 1)) * ph; };
    const yBin = (i, b) => m.t + ph - ((b + 0.5) / p.bins) * ph;
    if (p.mode === "lines") {
      const rows = p.keys.length;
      ctx.strokeStyle = `rgba(37,99,235,${Math.min(0.7, Math.max(0.04, 20 / Math.max(1, rows)))})`;
      ctx.lineWidth = 1;
      for (let r = 0; r < rows; r++) {
        ctx.beginPath();
        let pen = false;
        for (let i = 0; i < n; i++) {
          const v = p.values[i][r];
          if (v === null) { pen = false; continue; }
          const y = yOf(i, v);
          if (pen) ctx.lineTo(ax(i), y); else ctx.moveTo(ax(i), y);
          pen = true;
        }
        ctx.stroke();
      }
    } else {
      for (let k = 0; k < n - 1; k++) {
        const counts = p.pairs[k];
        let total = 0;
        for (const c of counts) total += c;
        // opacity per band ~ its share of the matches: a uniform pair fills lightly, structure stands out
        for (let a = 0; a < p.bins; a++) {
          for (let b = 0; b < p.bins; b++) {
            const c = counts[a * p.bins + b];
            if (!c) continue;
            ctx.strokeStyle = `rgba(37,99,235,${Math.min(0.85, 0.01 + (60 * c) / Math.max(1, total)).toFixed(3)})`;
            ctx.beginPath(); ctx.moveTo(ax(k), yBin(k, a)); ctx.lineTo(ax(k + 1), yBin(k + 1, b)); ctx.stroke();
          }
        }
      }
    }
    p.params.forEach((name, i) => {
      const x = ax(i), [lo, hi] = p.ranges[i];
      svg.append(svgEl("line", { x1: x, x2: x, y1: m.t, y2: m.t + ph, stroke: "#374151" }));
      svg.append(svgEl("text", { x, y: 12, "text-anchor": "middle", class: "axis-title" }, name));
      svg.append(svgEl("text", { x, y: m.t - 4, "text-anchor": "middle", class: "tick" }, fmt(hi, 3)));
      svg.append(svgEl("text", { x, y: m.t + ph + 14, "text-anchor": "middle", class: "tick" }, fmt(lo, 3)));
      const brush = state.brushes[name];
      if (brush && lo !== null) {
        const y1 = yOf(i, Math.min(brush[1], hi)), y2 = yOf(i, Math.max(brush[0], lo));
        svg.append(svgEl("rect", { x: x - 6, y: Math.min(y1, y2), width: 12, height: Math.max(2, Math.abs(y2 - y1)),
                                   fill: "rgba(234,88,12,0.25)", stroke: "#ea580c", class: "brush" }));
      }
    });
    // brushing: drag vertically along an axis
    let drag = null;
    const nearest = (x) => { let best = 0; for (let i = 1; i < n; i++) if (Math.abs(ax(i) - x) < Math.abs(ax(best) - x)) best = i; return best; };
    const valueAt = (i, y) => { const [lo, hi] = p.ranges[i]; const f = Math.max(0, Math.min(1, (m.t + ph - y) / ph)); return lo + f * (hi - lo); };
    canvas.addEventListener("mousedown", (ev) => {
      const [x, y] = localPoint(canvas, ev);
      const i = nearest(x);
      if (Math.abs(ax(i) - x) > 24 || p.ranges[i][0] === null) return;
      ev.preventDefault();
      drag = { i, y0: y, rect: svgEl("rect", { x: ax(i) - 7, y, width: 14, height: 0, fill: "rgba(234,88,12,0.2)" }) };
      svg.append(drag.rect);
    });
    canvas.addEventListener("mousemove", (ev) => {
      if (!drag) return;
      const y = localPoint(canvas, ev)[1];
      drag.rect.setAttribute("y", Math.min(y, drag.y0)); drag.rect.setAttribute("height", Math.abs(y - drag.y0));
    });
    const finish = (ev) => {
      if (!drag) return;
      const d = drag; drag = null;
      const y = localPoint(canvas, ev)[1];
      const name = p.params[d.i];
      if (Math.abs(y - d.y0) < 3) setBrush(name, null);
      else setBrush(name, valueAt(d.i, d.y0), valueAt(d.i, y));
    };
    canvas.addEventListener("mouseup", finish);
    canvas.addEventListener("mouseleave", (ev) => { if (drag) finish(ev); });
  }

  // ------------------------------------------------------------------ 2-D view

  async function loadDensity(q, signal, mine) {
    if (!state.x || !state.y) return;
    const d = await request(`/sweepcat/explorer/density/${encodeURIComponent(state.ds)}`,
                            { q, x: state.x, y: state.y, bins: 64, points: 3000 }, { signal });
    if (mine === seq) renderDensity(d);
  }

  function renderDensity(d) {
    const box = $("#density");
    box.replaceChildren();
    $("#density-mode").textContent = d.mode === "points" ? `${thousands(d.count)} points (click one to open it)`
      : `${thousands(d.count)} matches, ${d.bins}×${d.bins} bins computed on the server`;
    const pad = (r) => (r[0] === null ? [0, 1] : r[0] === r[1] ? [r[0] - 0.5, r[1] + 0.5] : r);
    const f = new Frame(box, { width: Math.max(320, Math.min(520, box.clientWidth || 440)), height: 320,
                               xrange: pad(d.xrange), yrange: pad(d.yrange), xlabel: d.x, ylabel: d.y });
    const ctx = f.ctx;
    if (d.mode === "points") {
      ctx.fillStyle = `rgba(37,99,235,${Math.min(0.9, Math.max(0.25, 60 / Math.max(1, d.count)))})`;
      for (let i = 0; i < d.xs.length; i++) {
        if (d.xs[i] === null || d.ys[i] === null) continue;
        ctx.beginPath(); ctx.arc(f.x(d.xs[i]), f.y(d.ys[i]), 2.2, 0, 2 * Math.PI); ctx.fill();
      }
    } else {
      let top = 1;
      for (const c of d.counts) if (c > top) top = c;
      const cw = f.pw / d.bins, ch = f.ph / d.bins;
      for (let i = 0; i < d.bins; i++) {
        for (let j = 0; j < d.bins; j++) {
          const c = d.counts[i * d.bins + j];
          if (!c) continue;
          ctx.fillStyle = lutColor(Math.log1p(c) / Math.log1p(top));
          ctx.fillRect(i * cw, f.ph - (j + 1) * ch, Math.ceil(cw), Math.ceil(ch));
        }
      }
    }
    for (const [name, axis] of [[d.x, "x"], [d.y, "y"]]) {  // current brushes as outlines
      const b = state.brushes[name];
      if (!b) continue;
      ctx.strokeStyle = "#ea580c"; ctx.setLineDash([4, 3]);
      if (axis === "x") ctx.strokeRect(f.x(b[0]), 0, f.x(b[1]) - f.x(b[0]), f.ph);
      else ctx.strokeRect(0, f.y(b[1]), f.pw, f.y(b[0]) - f.y(b[1]));
      ctx.setLineDash([]);
    }
    let start = null;
    f.canvas.addEventListener("mousedown", (ev) => { ev.preventDefault(); start = localPoint(f.canvas, ev); });
    f.canvas.addEventListener("mousemove", (ev) => { if (start) f.brushRect(start, localPoint(f.canvas, ev)); });
    const finish = (ev) => {
      if (!start) return;
      const a = start, b = localPoint(f.canvas, ev);
      start = null; f.brushRect(null);
      if (Math.abs(a[0] - b[0]) < 3 && Math.abs(a[1] - b[1]) < 3) {
        if (d.mode === "points") {  // open the nearest point
          let best = -1, dist = 64;
          for (let i = 0; i < d.xs.length; i++) {
            if (d.xs[i] === null || d.ys[i] === null) continue;
            const dd = (f.x(d.xs[i]) - a[0]) ** 2 + (f.y(d.ys[i]) - a[1]) ** 2;
            if (dd < dist) { dist = dd; best = i; }
          }
          if (best >= 0) openOne(d.keys[best], false);
        }
        return;
      }
      const [x0, x1] = [f.xv(a[0]), f.xv(b[0])], [y0, y1] = [f.yv(a[1]), f.yv(b[1])];
      state.brushes[d.x] = [Math.min(x0, x1), Math.max(x0, x1)];
      state.brushes[d.y] = [Math.min(y0, y1), Math.max(y0, y1)];
      state.page = 0;
      update();
    };
    f.canvas.addEventListener("mouseup", finish);
    f.canvas.addEventListener("mouseleave", (ev) => { if (start) finish(ev); });
  }

  // ------------------------------------------------------------------ table

  async function loadTable(q, signal, mine) {
    const t = await request(`/sweepcat/explorer/table/${encodeURIComponent(state.ds)}`,
      { q, sort: state.sort, descending: state.desc ? "true" : null, offset: state.page * PAGE, limit: PAGE }, { signal });
    if (mine === seq) renderTable(t);
  }

  function renderTable(t) {
    const head = el("tr", {}, el("th", { text: "compare", title: "show side by side (up to four)" }));
    t.columns.forEach((c) => {
      const arrow = state.sort === c ? (state.desc ? " ▼" : " ▲") : "";
      const th = el("th", { class: c === "key" ? "key" : "", "data-col": c, text: c + arrow });
      th.addEventListener("click", () => {
        if (state.sort !== c) { state.sort = c; state.desc = false; } else if (!state.desc) state.desc = true;
        else { state.sort = null; state.desc = false; }
        state.page = 0;
        refreshTable();
      });
      head.append(th);
    });
    $("#table thead").replaceChildren(head);
    $("#table tbody").replaceChildren(...t.rows.map((r) => {
      const key = r[0];
      const box = el("input", { type: "checkbox", "aria-label": `compare ${key}` });
      box.checked = pinned.has(key) && state.open.includes(key);
      box.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (box.checked) { if (!openOne(key, true)) box.checked = false; } else closeOne(key);
      });
      const tr = el("tr", { "data-key": key, class: state.open.includes(key) ? "open" : "" }, el("td", {}, box),
        ...r.map((v, i) => el("td", { class: i === 0 ? "key" : "", text: i === 0 ? v : fmt(v, 5) })));
      tr.addEventListener("click", () => { openOne(key, false); $("#detail").scrollIntoView({ block: "start" }); });
      return tr;
    }));
    const first = t.count ? t.offset + 1 : 0, last = Math.min(t.count, t.offset + t.rows.length);
    $("#page-info").textContent = `${thousands(first)}–${thousands(last)} of ${thousands(t.count)}`;
    $("#prev").disabled = t.offset === 0;
    $("#next").disabled = last >= t.count;
  }

  async function refreshTable() {
    const mine = ++seq;
    document.body.dataset.state = "loading";
    writeUrl();
    try {
      await loadTable(effectiveQuery(), undefined, mine);
      if (mine === seq) document.body.dataset.state = "ready";
    } catch (err) {
      if (mine === seq) { showQueryError(err); document.body.dataset.state = "error"; }
    }
    if (mine === seq) document.body.dataset.seq = String(mine);
  }

  // ------------------------------------------------------------------ one Hamiltonian (or up to four)

  function openOne(key, pin) {
    let keys = state.open.filter((k) => k !== key);
    if (pin) {  // added beside what is shown; past four, the oldest unticked one makes room
      if (keys.length >= MAX_OPEN) {
        const loose = keys.find((k) => !pinned.has(k));
        if (loose === undefined) { $("#takeaway-status").textContent = `compare at most ${MAX_OPEN}`; return false; }
        keys = keys.filter((k) => k !== loose);
      }
      pinned.add(key);
      keys.push(key);
    } else {  // shown instead of the unticked ones
      keys = [...keys.filter((k) => pinned.has(k)).slice(-(MAX_OPEN - 1)), key];
    }
    state.open = keys;
    writeUrl();
    openHamiltonians(keys, performance.now());
    return true;
  }

  function closeOne(key) {
    pinned.delete(key);
    state.open = state.open.filter((k) => k !== key);
    writeUrl();
    openHamiltonians(state.open, performance.now());
  }

  const enc = (parts) => parts.map(encodeURIComponent).join("/");

  async function axisValues(name) {
    const id = `${state.ds}/${name}`;
    if (!axisCache.has(id)) {
      axisCache.set(id, request(`/array/full/${enc(["_axes", state.ds, name])}`, { format: "application/json" })
        .then((v) => Float64Array.from(v.flat ? v.flat(Infinity) : v)).catch(() => null));
    }
    return axisCache.get(id);
  }

  function prefetchAxes() {
    for (const [, a] of Object.entries(info.artifacts || {})) for (const name of a.axes || []) if (name) axisValues(name);
  }

  function decode(buffer, dtype) {
    let spec = String(dtype);
    const names = { float64: "<f8", float32: "<f4", float16: "<f2", int64: "<i8", int32: "<i4", int16: "<i2", int8: "|i1",
                    uint64: "<u8", uint32: "<u4", uint16: "<u2", uint8: "|u1", bool: "|b1", complex128: "<c16", complex64: "<c8" };
    spec = names[spec] || spec;
    const m = /^([<>|=]?)([fiucb])(\d+)$/.exec(spec);
    if (!m) throw new Error(`cannot draw dtype ${dtype}`);
    const little = m[1] !== ">", kind = m[2], size = +m[3];
    const view = new DataView(buffer);
    const complex = kind === "c", step = complex ? size / 2 : size, count = buffer.byteLength / step;
    const out = new Float64Array(count);
    const get = {
      f8: (o) => view.getFloat64(o, little), f4: (o) => view.getFloat32(o, little),
      i8: (o) => Number(view.getBigInt64(o, little)), i4: (o) => view.getInt32(o, little), i2: (o) => view.getInt16(o, little),
      i1: (o) => view.getInt8(o), u8: (o) => Number(view.getBigUint64(o, little)), u4: (o) => view.getUint32(o, little),
      u2: (o) => view.getUint16(o, little), u1: (o) => view.getUint8(o), b1: (o) => view.getUint8(o),
      c16: (o) => view.getFloat64(o, little), c8: (o) => view.getFloat32(o, little),
    }[kind + size];
    if (!get) throw new Error(`cannot draw dtype ${dtype}`);
    if (kind === "f" && size === 8 && little) return { values: new Float64Array(buffer), complex: false };
    if (kind === "f" && size === 4 && little) return { values: Float64Array.from(new Float32Array(buffer)), complex: false };
    for (let i = 0; i < count; i++) out[i] = get(i * step);
    return { values: out, complex };
  }

  async function fetchArray(key, type, art) {
    const shape = art.shape || [];
    const limit = shape.length === 2 ? 1024 : 20000;  // what is drawn: larger arrays are read strided
    const strides = shape.map((n) => Math.max(1, Math.ceil(n / limit)));
    const params = strides.some((s) => s > 1) ? { slice: strides.map((s) => `::${s}`).join(",") } : {};
    const r = await request(`/array/full/${enc([state.ds, key, type])}`, params, { accept: "application/octet-stream", raw: true });
    const decoded = decode(await r.arrayBuffer(), art.dtype);
    return { values: decoded.values, complex: decoded.complex, shape: shape.map((n, i) => Math.ceil(n / strides[i])), strides };
  }

  async function openHamiltonians(keys, t0) {
    const detail = $("#detail");
    detail.dataset.state = "loading";
    detail.dataset.keys = keys.join(",");
    document.querySelectorAll("#table tbody tr").forEach((tr) => tr.classList.toggle("open", keys.includes(tr.dataset.key)));
    if (!keys.length) { detail.hidden = true; detail.dataset.state = "empty"; return; }
    detail.hidden = false;
    const arts = Object.entries(info.artifacts || {});
    const axesNeeded = new Set(arts.flatMap(([, a]) => (a.axes || []).filter(Boolean)));
    const axes = Object.fromEntries(await Promise.all([...axesNeeded].map(async (n) => [n, await axisValues(n)])));
    const loaded = await Promise.all(keys.map(async (key) => {
      const meta = request(`/metadata/${enc([state.ds, key])}`).then((m) => m.data.attributes.metadata).catch((e) => ({ error: e.message }));
      const arrays = Object.fromEntries(await Promise.all(arts.map(async ([t, a]) => {
        try { return [t, await fetchArray(key, t, a)]; } catch (e) { return [t, { error: e.message }]; }
      })));
      return { key, params: await meta, arrays };
    }));
    if (keys.join(",") !== state.open.join(",")) return;  // superseded by another click
    const plots = el("div", { class: "artifacts" });
    $("#detail-body").replaceChildren(paramsTable(loaded), plots);  // parameters beside the arrays
    for (const [type, art] of arts) plots.append(artifactView(type, art, loaded, axes));
    const ms = performance.now() - t0;
    timings.opens.push(ms);
    detail.dataset.ms = ms.toFixed(1);
    detail.dataset.state = "ready";
  }

  function paramsTable(loaded) {
    const names = [...new Set(loaded.flatMap((h) => Object.keys(h.params || {})))];
    const head = el("tr", {}, el("th", { text: "" }), ...loaded.map((h, i) => {
      const close = el("button", { type: "button", text: "×", title: "close" });
      close.addEventListener("click", () => closeOne(h.key));
      return el("th", {}, el("span", { class: "swatch", style: `background:${COLORS[i]}` }), el("code", { text: h.key }), close);
    }));
    return el("table", { class: "params-table", id: "detail-params" }, head,
      ...names.map((n) => el("tr", {}, el("td", { text: n }), ...loaded.map((h) => el("td", { text: fmt(h.params[n], 6) })))));
  }

  function axisFor(name, n, stride, axes) {
    const values = name ? axes[name] : null;
    if (values && values.length >= n * stride - (stride - 1) && values.length >= n) {
      return { name, values: stride > 1 ? values.filter((_, i) => i % stride === 0).slice(0, n) : values.slice(0, n) };
    }
    return { name: name ? `${name} (index)` : "index", values: Float64Array.from({ length: n }, (_, i) => i * stride) };
  }

  function extent(v) {
    const n = v.length, a = v[0], b = v[n - 1];
    const half = n > 1 ? (b - a) / (n - 1) / 2 : 0.5;
    return a <= b ? [a - half, b + half] : [b + half, a - half];
  }

  function artifactView(type, art, loaded, axes) {
    const box = el("div", { class: "artifact", "data-type": type });
    const shape = art.shape || [];
    box.append(el("h3", { text: `${type} (${shape.join(", ")}) ${art.dtype || ""}` }));
    const row = el("div", { class: "row" });
    box.append(row);
    const dims = art.axes || [];
    if (shape.length === 2) {
      let shared = null;
      if (state.shared) {
        const all = loaded.map((h) => h.arrays[type]).filter((a) => a && a.values);
        shared = all.length ? colourRange(all.map((a) => a.values)) : null;
      }
      loaded.forEach((h, i) => {
        const a = h.arrays[type];
        if (!a || a.error) { row.append(el("div", { class: "error", text: `${h.key}/${type}: ${a ? a.error : "missing"}` })); return; }
        heatmap(row, a, axisFor(dims[1], a.shape[1], a.strides[1], axes), axisFor(dims[0], a.shape[0], a.strides[0], axes),
                `${h.key}`, COLORS[i], shared);
      });
    } else if (shape.length === 1) {
      lines(row, type, loaded, axisFor(dims[0], Math.ceil(shape[0] / 1), 1, axes));
    } else if (shape.length === 0) {
      row.append(el("p", { text: loaded.map((h) => `${h.key}: ${h.arrays[type] && h.arrays[type].values ? fmt(h.arrays[type].values[0], 6) : "–"}`).join("; ") }));
    } else {
      row.append(el("p", { class: "muted", text: `${shape.length}-D arrays are not drawn here; read them with sweepcat.client (copy Python).` }));
    }
    return box;
  }

  function colourRange(arrays) {
    let lo = Infinity, hi = -Infinity, lpos = Infinity;
    for (const v of arrays) {
      for (let i = 0; i < v.length; i++) {
        const x = v[i];
        if (!Number.isFinite(x)) continue;
        if (x < lo) lo = x; if (x > hi) hi = x;
        if (x > 0 && x < lpos) lpos = x;
      }
    }
    return { lo, hi, lpos };
  }

  function heatmap(parent, a, xaxis, yaxis, title, color, shared) {
    const [rows, cols] = a.shape;
    const v = a.complex ? Float64Array.from({ length: rows * cols }, (_, i) => Math.hypot(a.values[2 * i], a.values[2 * i + 1])) : a.values;
    const r = shared || colourRange([v]);
    const log = state.log && r.lpos < Infinity;
    const LOG_DECADES = 6;  // a log scale spans at most six decades below the maximum (tails of ~1e-300 are floor)
    const hi = log ? Math.log10(Math.max(r.hi, r.lpos)) : r.hi;
    const lo = log ? Math.max(Math.log10(r.lpos), hi - LOG_DECADES) : r.lo;
    const ends = (v) => [v[0], v[v.length - 1]];
    const f = new Frame(parent, { width: 380, height: 330, xrange: extent(xaxis.values), yrange: extent(yaxis.values),
                                  xlabel: xaxis.name, ylabel: yaxis.name, title, extraRight: 58,
                                  span: { x: ends(xaxis.values), y: ends(yaxis.values) } });
    f.root.classList.add("heatmap");
    f.root.dataset.title = title;
    f.canvas.setAttribute("aria-label", `heatmap ${title}`);
    f.canvas.classList.add("heatmap-canvas");
    const img = new ImageData(cols, rows);
    const xUp = xaxis.values[cols - 1] >= xaxis.values[0], yUp = yaxis.values[rows - 1] >= yaxis.values[0];
    for (let i = 0; i < rows; i++) {
      const py = yUp ? rows - 1 - i : i;
      for (let j = 0; j < cols; j++) {
        const px = xUp ? j : cols - 1 - j;
        let x = v[i * cols + j];
        const o = (py * cols + px) * 4;
        if (!Number.isFinite(x)) { img.data[o + 3] = 0; continue; }
        if (log) x = x > 0 ? Math.log10(x) : lo;
        const t = hi > lo ? (x - lo) / (hi - lo) : 0.5;
        const k = Math.max(0, Math.min(255, Math.round(t * 255))) * 3;
        img.data[o] = LUT[k]; img.data[o + 1] = LUT[k + 1]; img.data[o + 2] = LUT[k + 2]; img.data[o + 3] = 255;
      }
    }
    const off = document.createElement("canvas");
    off.width = cols; off.height = rows;
    off.getContext("2d").putImageData(img, 0, 0);
    f.ctx.imageSmoothingEnabled = false;
    f.ctx.drawImage(off, 0, 0, f.pw, f.ph);
    f.colorbar(lo, hi, log, log ? "log10" : "");
    f.svg.querySelector(".plot-title").setAttribute("fill", color);
    return f;
  }

  function lines(parent, type, loaded, xaxis) {
    const series = [];
    loaded.forEach((h, i) => {
      const a = h.arrays[type];
      if (!a || a.error) { parent.append(el("div", { class: "error", text: `${h.key}/${type}: ${a ? a.error : "missing"}` })); return; }
      const n = a.shape[0];
      const x = a.strides[0] > 1 ? Float64Array.from({ length: n }, (_, k) => xaxis.values[k * a.strides[0]] ?? k) : xaxis.values;
      if (a.complex) {
        series.push({ key: h.key, label: `${h.key} (real)`, x, y: Float64Array.from({ length: n }, (_, k) => a.values[2 * k]), color: COLORS[i] });
        series.push({ key: h.key, label: `${h.key} (imag)`, x, y: Float64Array.from({ length: n }, (_, k) => a.values[2 * k + 1]), color: COLORS[i], dash: true });
      } else series.push({ key: h.key, label: h.key, x, y: a.values, color: COLORS[i] });
    });
    if (!series.length) return;
    let lo = Infinity, hi = -Infinity;
    for (const s of series) for (const y of s.y) if (Number.isFinite(y)) { if (y < lo) lo = y; if (y > hi) hi = y; }
    if (!(hi > lo)) { lo -= 0.5; hi += 0.5; }
    const padY = (hi - lo) * 0.05;
    const xs = series[0].x;
    const f = new Frame(parent, { width: 620, height: 280, xrange: [Math.min(xs[0], xs[xs.length - 1]), Math.max(xs[0], xs[xs.length - 1])],
                                  yrange: [lo - padY, hi + padY], xlabel: xaxis.name, ylabel: type,
                                  span: { x: [xs[0], xs[xs.length - 1]] } });
    f.root.classList.add("lineplot");
    for (const s of series) {
      f.ctx.strokeStyle = s.color; f.ctx.lineWidth = 1.3; f.ctx.setLineDash(s.dash ? [4, 3] : []);
      f.ctx.beginPath();
      let pen = false;
      for (let k = 0; k < s.y.length; k++) {
        if (!Number.isFinite(s.y[k])) { pen = false; continue; }
        const px = f.x(s.x[k]), py = f.y(s.y[k]);
        if (pen) f.ctx.lineTo(px, py); else f.ctx.moveTo(px, py);
        pen = true;
      }
      f.ctx.stroke();
    }
    f.ctx.setLineDash([]);
    if (series.length > 1) {
      series.forEach((s, i) => f.svg.append(svgEl("text", { x: f.m.l + 8, y: f.m.t + 14 + 13 * i, fill: s.color, class: "legend" }, s.label)));
    }
  }

  // ------------------------------------------------------------------ take it away: Python, locators

  function pythonSnippet() {
    const q = effectiveQuery();
    const arts = Object.entries(info.artifacts || {});
    const two = arts.find(([, a]) => (a.shape || []).length === 2);
    const lines = [
      "import os",
      "import sweepcat.client",
      "",
      "# the key: set SWEEPCAT_API_KEY (None for a --public server); this page never copies it",
      `cat = sweepcat.client.open(${JSON.stringify(SERVER)}, api_key=os.environ.get("SWEEPCAT_API_KEY"))`,
      `ds = cat[${JSON.stringify(state.ds)}]`,
      q ? `res = ds.find(${JSON.stringify(q)})` : "res = ds.all()",
    ];
    if (state.sort) lines.push(`res = res.sort_by(${JSON.stringify(state.sort)}${state.desc ? ", ascending=False" : ""})`);
    lines.push("len(res), res.params          # count, parameters (pandas)", "res.locators                  # where each array lives (file, dataset, index)");
    for (const [t, a] of arts) lines.push(`${t} = res.read(${JSON.stringify(t)})${" ".repeat(Math.max(1, 20 - t.length * 2))}# (n, ${(a.shape || []).join(", ")}) ${a.dtype || ""}`);
    if (two) lines.push(`res.plot(${JSON.stringify(two[0])}, n=4)          # sweepcat[plot]: maps on their axes`);
    if (state.open.length) lines.push(`shown = ds.find(${JSON.stringify(`key in (${state.open.map((k) => JSON.stringify(k)).join(", ")})`)})`);
    return lines.join("\n") + "\n";
  }

  async function copyPython() {
    const text = pythonSnippet();
    const pre = $("#snippet");
    pre.textContent = text; pre.hidden = false;
    let copied = false;
    try { await navigator.clipboard.writeText(text); copied = true; } catch (e) {
      const area = el("textarea"); area.value = text; document.body.append(area); area.select();
      try { copied = document.execCommand("copy"); } catch (e2) { copied = false; }
      area.remove();
    }
    $("#takeaway-status").textContent = copied ? "copied to the clipboard" : "select the text below to copy it";
  }

  async function download(format) {
    const type = $("#download-type").value;
    const status = $("#takeaway-status");
    status.textContent = `preparing ${format}…`;
    status.dataset.state = "loading";
    try {
      const r = await request(`/sweepcat/explorer/locators/${encodeURIComponent(state.ds)}`,
                              { q: effectiveQuery(), type, format }, { accept: "*/*", raw: true });
      const blob = await r.blob();
      const name = `${state.ds}-locators${type ? "-" + type : ""}.${format}`;
      const a = el("a", { href: URL.createObjectURL(blob), download: name });
      document.body.append(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 60000);
      status.textContent = `${name}: ${thousands(+r.headers.get("x-sweepcat-count") || 0)} locators`;
      status.dataset.state = "ready";
      status.dataset.file = name;
    } catch (err) {
      status.textContent = `download failed: ${err.message}`;
      status.dataset.state = "error";
    }
  }

  // ------------------------------------------------------------------ wiring

  function start() {
    takeKeyFromUrl();
    readUrl();
    if (state.open.length > 1) state.open.forEach((k) => pinned.add(k));
    showAuthStatus();
    $("#auth-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("#apikey").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORE, key);
      $("#apikey").value = "";
      $("#auth").hidden = true;
      begin();
    });
    $("#forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORE); location.reload(); });
    $("#dataset").addEventListener("change", (ev) => { state.ds = ev.target.value; selectDataset(true); });
    $("#query-form").addEventListener("submit", (ev) => { ev.preventDefault(); state.q = $("#query").value.trim(); state.page = 0; update(); });
    $("#clear").addEventListener("click", () => { state.q = ""; state.brushes = {}; state.page = 0; $("#query").value = ""; update(); });
    $("#xparam").addEventListener("change", (ev) => { state.x = ev.target.value; update(); });
    $("#yparam").addEventListener("change", (ev) => { state.y = ev.target.value; update(); });
    $("#prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); refreshTable(); });
    $("#next").addEventListener("click", () => { state.page += 1; refreshTable(); });
    $("#log").checked = state.log;
    $("#shared-scale").checked = state.shared;
    $("#log").addEventListener("change", (ev) => { state.log = ev.target.checked; writeUrl(); openHamiltonians(state.open, performance.now()); });
    $("#shared-scale").addEventListener("change", (ev) => { state.shared = ev.target.checked; writeUrl(); openHamiltonians(state.open, performance.now()); });
    $("#close-detail").addEventListener("click", () => { pinned.clear(); state.open = []; writeUrl(); openHamiltonians([], performance.now()); });
    $("#copy-python").addEventListener("click", copyPython);
    $("#download-csv").addEventListener("click", () => download("csv"));
    $("#download-parquet").addEventListener("click", () => download("parquet"));
    window.addEventListener("resize", () => { if (summary) renderHistograms(summary); });
    begin();
  }

  async function begin() {
    showAuthStatus();
    try {
      $("#main").hidden = false;
      await loadDatasets();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      $("#main").hidden = false;
      $("#info").replaceChildren(el("div", { class: "error", text: `cannot list datasets: ${err.message}` }));
      document.body.dataset.state = "error";
    }
  }

  window.sweepcatExplorer = { state, effectiveQuery, pythonSnippet, update };
  start();
})();

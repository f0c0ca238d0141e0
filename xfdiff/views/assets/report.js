// xfdiff HTML report: the module table, the layer detail and the plots.
//
// The page's summary, findings and unmatched modules are plain HTML and need
// none of this. Everything taken from a model reaches the page through
// textContent, never innerHTML. plotly.js and the per-layer data are stored
// gzip-compressed (base64) inside the file so that one file stays small and
// opens offline; DecompressionStream unpacks them.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const meta = JSON.parse($("xf-meta").textContent);
  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };
  const SMALL = { displayModeBar: false, responsive: true };
  const FIGS = ["hist", "heatmap", "scatter", "profile"];
  const state = { layers: null, selected: meta.first, which: "local", sortKey: "order", sortDir: 1 };

  function el(tag, cls, ...kids) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  }
  const fmt = (v) => (v == null ? "—" : v === 0 ? "0" : Number(v).toExponential(2));

  const COLUMNS = [
    ["order", "#", "num"], ["status", "status", "st"], ["own", "own", "st"], ["layer", "layer", "path"],
    ["types", "torch / flax", "types"], ["max_abs", "max |err|", "num"], ["local_max_abs", "own |err|", "num"],
    ["shape", "shape", ""],
  ];

  function visibleRows() {
    const q = $("xf-search").value.trim().toLowerCase();
    const allowed = new Set([...document.querySelectorAll(".xf-status:checked")].map((c) => c.value));
    const ownOnly = $("xf-own-only").checked;
    const rows = meta.rows.filter((r) => allowed.has(r.status)
      && (!ownOnly || (r.own !== "ok" && r.own !== "—"))
      && (!q || [r.layer, r.torch_path, r.flax_path, r.types].some((s) => String(s || "").toLowerCase().includes(q))));
    const k = state.sortKey, d = state.sortDir;
    return rows.sort((a, b) => {
      const x = a[k], y = b[k];
      if (x == null) return 1;
      if (y == null) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * d;
    });
  }

  function renderHead() {
    const tr = el("tr");
    for (const [key, label, cls] of COLUMNS) {
      const th = el("th", cls === "num" ? "num" : "", label);
      if (key === state.sortKey) th.classList.add("sorted", ...(state.sortDir < 0 ? ["desc"] : []));
      th.addEventListener("click", () => {
        state.sortDir = state.sortKey === key ? -state.sortDir : (cls === "num" && key !== "order" ? -1 : 1);
        state.sortKey = key;
        renderHead();
        renderTable();
      });
      tr.append(th);
    }
    $("xf-thead").replaceChildren(tr);
  }

  function renderTable() {
    const rows = visibleRows();
    const trs = rows.map((r) => {
      const tr = el("tr");
      tr.dataset.order = r.order;
      if (r.order === state.selected) tr.className = "sel";
      for (const [key, , cls] of COLUMNS) {
        const v = r[key];
        const td = el("td", cls === "st" ? "s-" + v : cls, cls === "num" && key !== "order" ? fmt(v) : v == null ? "—" : v);
        if (cls === "types") td.title = String(v);
        tr.append(td);
      }
      tr.addEventListener("click", () => select(r.order, false));
      return tr;
    });
    $("xf-tbody").replaceChildren(...trs);
    $("xf-row-count").textContent = rows.length + " of " + meta.rows.length + " rows";
  }

  function findingCard(f) {
    const head = el("div", "", el("span", "pid", f.pitfall), " at ", el("span", "where", f.where));
    const card = el("div", "xf-finding", head, el("div", "", f.message));
    if (f.evidence.length) {
      card.append(el("div", "xf-ev", ...f.evidence.map(([k, v]) => el("span", "", el("i", "", k), v))));
    }
    if (f.fix) card.append(el("div", "fix", el("b", "", "Fix: "), f.fix));
    return card;
  }

  function worstTable(rows) {
    if (!rows || !rows.length) return el("div", "xf-muted", "No element-level data recorded.");
    const t = el("table", "xf-worst", el("tr", "", ...["index", "reference", "port", "port − ref"].map((h) => el("th", "", h))));
    for (const r of rows) {
      t.append(el("tr", "", el("td", "", r.index), el("td", "", Number(r.ref).toPrecision(7)),
        el("td", "", Number(r.port).toPrecision(7)), el("td", "", (r.diff >= 0 ? "+" : "") + r.diff.toExponential(2))));
    }
    return t;
  }

  function plot(id, fig, config) {
    const f = structuredClone(fig);
    window.Plotly.react(id, f.data, f.layout, config);
  }

  function renderDetail() {
    const row = meta.rows[state.selected];
    if (!row) return;
    const lyr = state.layers ? state.layers.base[String(row.order)] : null;
    const title = [el("span", "", row.layer), " ", el("span", "badge st-" + row.status, row.status)];
    if (row.order === meta.first) title.push(" ", el("span", "badge st-diverged", "first divergence"));
    $("xf-detail-title").replaceChildren(...title);
    if (!lyr) return;
    $("xf-facts").replaceChildren(...lyr.facts.map(([k, v]) => el("tr", "", el("td", "", k), el("td", "", v))));
    $("xf-detail-findings").replaceChildren(...lyr.findings.map((i) => findingCard(meta.findings[i])));
    $("xf-worst").replaceChildren(worstTable(lyr.worst[state.which] || lyr.worst.propagated));
    const all = state.layers.figs[String(row.order)];
    const figs = all ? all[state.which] || all.propagated : null;
    $("xf-no-figs").style.display = figs ? "none" : "";
    $("xf-figs").style.display = figs ? "" : "none";
    if (figs && window.Plotly) for (const k of FIGS) plot("xf-fig-" + k, figs[k], SMALL);
  }

  function markDepth() {
    const div = $("xf-depth");
    if (!window.Plotly || !div.data) return;
    const shapes = meta.depth.layout.shapes.slice();
    if (state.selected != null && state.selected !== meta.first) {
      shapes.push({ type: "line", xref: "x", x0: state.selected, x1: state.selected, yref: "paper", y0: 0, y1: 1,
        line: { color: "#1c7ed6", dash: "dot", width: 1.5 } });
    }
    window.Plotly.relayout(div, { shapes: shapes });
  }

  function select(order, scroll) {
    if (order == null || !meta.rows[order]) return;
    state.selected = order;
    const wrap = $("xf-tablewrap");
    for (const tr of document.querySelectorAll("#xf-tbody tr")) {
      tr.classList.toggle("sel", Number(tr.dataset.order) === order);
      // Scroll the table only; scrollIntoView would move the whole page too.
      if (scroll && Number(tr.dataset.order) === order) wrap.scrollTop = tr.offsetTop - wrap.clientHeight / 2;
    }
    renderDetail();
    markDepth();
  }

  async function unpack(id) {
    const bin = atob($(id).textContent.trim());
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Response(stream).text();
  }

  function problem(text) {
    const box = $("xf-problem");
    box.textContent = text;
    box.style.display = "";
  }

  async function main() {
    renderHead();
    renderTable();
    for (const id of ["xf-search"]) $(id).addEventListener("input", renderTable);
    for (const c of document.querySelectorAll(".xf-status, #xf-own-only")) c.addEventListener("change", renderTable);
    for (const b of document.querySelectorAll("[data-goto]")) b.addEventListener("click", () => select(Number(b.dataset.goto), true));
    for (const r of document.querySelectorAll("input[name=xf-variant]")) {
      r.addEventListener("change", () => { state.which = r.value; renderDetail(); });
    }
    if (!("DecompressionStream" in window)) {
      problem("This browser cannot unpack the plots stored in this file (it needs DecompressionStream: "
        + "Chrome 80+, Firefox 113+, Safari 16.4+). The summary and the table above are complete.");
      return;
    }
    const [plotlySrc, layerJson] = await Promise.all([unpack("xf-plotly"), unpack("xf-layers")]);
    const s = document.createElement("script");
    s.text = plotlySrc;
    document.head.append(s);
    state.layers = JSON.parse(layerJson);
    plot("xf-depth", meta.depth, CONFIG);
    $("xf-depth").on("plotly_click", (ev) => select(ev.points[0].customdata, true));
    select(state.selected, true);
    document.body.dataset.readyMs = String(Math.round(performance.now()));
    document.body.dataset.ready = "1";
  }

  main().catch((err) => { problem("Could not draw the plots: " + err); throw err; });
})();

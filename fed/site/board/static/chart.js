/* A small SVG line chart for the board's metrics: one chart per metric name, one line
   per party and task. Written for this board; no library, no network. */
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f5bd3", "#1e8e4e", "#c8372d", "#b7791f", "#7a4cc2", "#138a99", "#d0498a", "#56606f"];
  const W = 560, H = 260, PAD = { l: 52, r: 16, t: 12, b: 34 };

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const k in attrs) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }

  /* Round tick steps: 1, 2 or 5 times a power of ten. */
  function ticks(lo, hi, count) {
    if (hi === lo) { hi = lo + 1; lo = lo - (lo === 0 ? 0 : 1); }
    const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw);
    const out = [];
    for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    if (out[out.length - 1] < hi) out.push(+(out[out.length - 1] + step).toPrecision(12));
    return out;
  }

  function fmt(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
    return String(+v.toPrecision(4));
  }

  function draw(title, series) {
    const box = document.createElement("div");
    box.className = "chart";
    box.setAttribute("data-metric", title);
    const h = document.createElement("h3");
    h.textContent = title;
    box.appendChild(h);
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title }, box);
    const pts = series.flatMap(s => s.points);
    const xs = ticks(Math.min(...pts.map(p => p[0])), Math.max(...pts.map(p => p[0])), 6);
    const ys = ticks(Math.min(...pts.map(p => p[1])), Math.max(...pts.map(p => p[1])), 5);
    const x0 = xs[0], x1 = xs[xs.length - 1], y0 = ys[0], y1 = ys[ys.length - 1];
    const sx = v => PAD.l + (v - x0) / (x1 - x0) * (W - PAD.l - PAD.r);
    const sy = v => H - PAD.b - (v - y0) / (y1 - y0) * (H - PAD.t - PAD.b);
    ys.forEach(v => {
      el("line", { x1: PAD.l, x2: W - PAD.r, y1: sy(v), y2: sy(v), class: "gridline" }, svg);
      el("text", { x: PAD.l - 6, y: sy(v) + 3.5, "text-anchor": "end", class: "tick" }, svg).textContent = fmt(v);
    });
    xs.forEach(v => {
      el("text", { x: sx(v), y: H - PAD.b + 15, "text-anchor": "middle", class: "tick" }, svg).textContent = fmt(v);
    });
    el("text", { x: (PAD.l + W - PAD.r) / 2, y: H - 4, "text-anchor": "middle", class: "tick" }, svg).textContent = "step";
    el("line", { x1: PAD.l, x2: PAD.l, y1: PAD.t, y2: H - PAD.b, class: "axis" }, svg);
    el("line", { x1: PAD.l, x2: W - PAD.r, y1: H - PAD.b, y2: H - PAD.b, class: "axis" }, svg);
    const legend = document.createElement("div");
    legend.className = "legend";
    series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const sorted = s.points.slice().sort((a, b) => a[0] - b[0]);
      const d = sorted.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
      el("path", { d: d, class: "line", stroke: color, "data-series": s.label }, svg);
      sorted.forEach(p => el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.6, fill: color }, svg));
      const item = document.createElement("span");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = color;
      item.appendChild(sw);
      item.appendChild(document.createTextNode(s.label));
      legend.appendChild(item);
    });
    box.appendChild(legend);
    return box;
  }

  /* Metrics logged without a step (a count, a final score) have nothing to draw a line
     along: they are listed with their latest value instead. */
  function valuesTable(rows) {
    const box = document.createElement("div");
    box.className = "metric-values";
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    ["metric", "party", "value"].forEach(t => {
      const th = document.createElement("th");
      th.textContent = t;
      head.appendChild(th);
    });
    const body = table.createTBody();
    rows.forEach(r => {
      const tr = body.insertRow();
      tr.setAttribute("data-metric", r.name);
      [r.name, r.label, fmt(r.value)].forEach(t => { tr.insertCell().textContent = t; });
    });
    box.appendChild(table);
    return box;
  }

  function stepless(series) {
    return series.every(s => s.points.every(p => p[0] === null || p[0] === undefined));
  }

  /* metrics: [{party, task, name, points: [[step, value, at], ...]}] (GET /v1/jobs/ID/metrics). */
  function render(container, metrics) {
    const byName = new Map();
    const tasks = new Set(metrics.map(m => m.task));
    metrics.filter(m => m.points && m.points.length).forEach(m => {
      const label = tasks.size > 1 ? `${m.party} · ${m.task}` : m.party;
      if (!byName.has(m.name)) byName.set(m.name, []);
      byName.get(m.name).push({ label: label, points: m.points });
    });
    const names = [...byName.keys()].sort();
    const values = [], charts = [];
    names.forEach(name => {
      const series = byName.get(name);
      if (stepless(series)) {
        series.forEach(s => {
          const last = s.points.reduce((a, b) => (Number(b[2]) >= Number(a[2]) ? b : a));
          values.push({ name: name, label: s.label, value: Number(last[1]) });
        });
      } else {
        const lines = series.map(s => ({
          label: s.label,
          points: s.points.filter(p => p[0] !== null && p[0] !== undefined).map(p => [Number(p[0]), Number(p[1])]),
        })).filter(s => s.points.length);
        charts.push(draw(name, lines));
      }
    });
    container.replaceChildren(...(values.length ? [valuesTable(values)] : []), ...charts);
    return byName.size;
  }

  window.RayfedChart = { render: render };
})();

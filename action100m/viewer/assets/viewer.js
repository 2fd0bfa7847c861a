"use strict";
(function () {
  const D = JSON.parse(document.getElementById("a100m-data").textContent);
  const N = D.nodes, n = N.id.length, AXIS = 22;
  const LABELS = { brief_action: "Brief action", detailed_action: "Detailed action", actor: "Actor",
    brief_caption: "Brief caption", detailed_caption: "Detailed caption", caption: "Caption", error: "Error" };
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas"), ctx = canvas.getContext("2d"), timeline = $("timeline");
  const tooltip = $("tooltip"), panel = $("panel");

  // -- tree structure ------------------------------------------------------------------------
  const children = Array.from({ length: n }, () => []);
  const stop = new Int32Array(n);  // subtree of i = rows [i, stop[i]) (depth-first pre-order)
  const byLevel = [];
  const rowOf = new Map();
  for (let i = 0; i < n; i++) {
    stop[i] = i + 1;
    rowOf.set(N.id[i], i);
    if (N.parent[i] >= 0) children[N.parent[i]].push(i);
    (byLevel[N.level[i]] = byLevel[N.level[i]] || []).push(i);
  }
  for (let i = n - 1; i > 0; i--) { const p = N.parent[i]; if (p >= 0 && stop[i] > stop[p]) stop[p] = stop[i]; }
  byLevel.forEach((rows) => rows && rows.sort((a, b) => N.start[a] - N.start[b]));
  const hasThumb = D.thumbs.mode === "url" ? new Set(D.thumbs.has) : null;

  let cur = 0, hover = -1, t0 = 0, t1 = 1, levels = [0, 0], rowH = 20, drag = null, frame = 0;
  let pointer = null;  // the mouse over the canvas (client x, y), or null: the tooltip follows it

  // -- helpers -------------------------------------------------------------------------------
  const long = (N.end[0] || 0) >= 3600;
  function fmt(t) {
    t = Number(t.toFixed(1));  // round first, so 59.96 s carries into the minutes: 1:00.0
    const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), s = (t % 60).toFixed(1).padStart(4, "0");
    return long ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
  }
  function label(i) {
    const a = N.ann[i];
    return (a && (a[0] || a[3])) || N.caption[i] || "";
  }
  function thumb(i) {
    for (let j = i; j >= 0; j = N.parent[j]) {
      if (D.thumbs.mode === "embedded" && D.thumbs.data[j]) return { src: "data:image/jpeg;base64," + D.thumbs.data[j], from: j };
      if (hasThumb && hasThumb.has(j)) return { src: D.thumbs.url.replace("{node_id}", encodeURIComponent(N.id[j])), from: j };
    }
    return null;
  }
  function colour(level, lit) {
    return `hsl(${(level * 47 + 200) % 360}, ${lit ? 70 : 52}%, ${lit ? 62 : 56}%)`;
  }
  const X = (t, w) => ((t - t0) / (t1 - t0)) * w;

  // -- drawing -------------------------------------------------------------------------------
  function layout() {
    let deepest = N.level[cur];
    for (let i = cur; i < stop[cur]; i++) if (N.level[i] > deepest) deepest = N.level[i];
    levels = [N.level[cur], deepest];
    const rows = deepest - N.level[cur] + 1;
    rowH = Math.max(8, Math.min(28, Math.floor((timeline.clientHeight - AXIS - 6) / rows)));
  }
  function firstVisible(rows, t) {  // rows at one level are disjoint and sorted: bisect on end
    let lo = 0, hi = rows.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (N.end[rows[mid]] <= t) lo = mid + 1; else hi = mid; }
    return lo;
  }
  function draw() {
    frame = 0;
    // Whatever moved the view (wheel, keys, a click in the panel), the tooltip and the lit bar
    // describe what is under the mouse now, not what was under it before.
    hover = pointer ? hit(pointer) : -1;
    showTooltip(hover, pointer);
    const w = timeline.clientWidth, rows = levels[1] - levels[0] + 1, h = AXIS + rows * rowH + 6;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
      canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); canvas.style.height = h + "px";
    }
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    drawAxis(w, h);
    ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "middle";
    for (let level = levels[0]; level <= levels[1]; level++) {
      const list = byLevel[level] || [], y = AXIS + (level - levels[0]) * rowH;
      for (let k = firstVisible(list, t0); k < list.length && N.start[list[k]] < t1; k++) {
        const i = list[k];
        if (i < cur || i >= stop[cur]) continue;
        const x0 = Math.max(0, X(N.start[i], w)), x1 = Math.min(w, X(N.end[i], w));
        const bw = Math.max(1, x1 - x0 - (x1 - x0 > 4 ? 1 : 0));
        ctx.fillStyle = colour(level, i === hover);
        ctx.fillRect(x0, y + 1, bw, rowH - 2);
        if (N.error[i]) { ctx.fillStyle = "#b3261e"; ctx.fillRect(x0, y + rowH - 4, bw, 3); }
        if (i === cur) { ctx.strokeStyle = "#1d2228"; ctx.lineWidth = 2; ctx.strokeRect(x0 + 1, y + 2, bw - 2, rowH - 4); }
        if (bw > 40 && rowH >= 14) {
          const text = label(i), fit = Math.floor((bw - 8) / 6);
          ctx.fillStyle = "#10151b";
          ctx.fillText(text.length > fit ? text.slice(0, Math.max(0, fit - 1)) + "…" : text, x0 + 4, y + rowH / 2);
        }
      }
    }
  }
  function drawAxis(w, h) {
    const span = t1 - t0, target = span / Math.max(2, w / 110);
    const steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
    const step = steps.find((s) => s >= target) || 7200;
    ctx.fillStyle = "#6b7480"; ctx.strokeStyle = "#e3e6ea"; ctx.lineWidth = 1;
    ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "middle";
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      const x = Math.round(X(t, w)) + 0.5;
      ctx.beginPath(); ctx.moveTo(x, AXIS - 4); ctx.lineTo(x, h); ctx.stroke();
      ctx.fillText(fmt(t).replace(/\.0$/, ""), x + 3, AXIS / 2);
    }
  }
  const redraw = () => { if (!frame) frame = requestAnimationFrame(draw); };

  // -- focus, breadcrumb, side panel --------------------------------------------------------
  function focus(i, opts) {
    if (i < 0 || i >= n) return;
    cur = i; t0 = N.start[i]; t1 = Math.max(N.end[i], N.start[i] + 1e-3);
    layout(); breadcrumb(); showPanel(i); draw();
    if (!(opts && opts.keepHash)) history.replaceState(null, "", "#node=" + N.id[i]);
  }
  function breadcrumb() {
    const nav = $("breadcrumb"), path = [];
    for (let j = cur; j >= 0; j = N.parent[j]) path.unshift(j);
    nav.replaceChildren();
    path.forEach((j, k) => {
      if (k) nav.append(Object.assign(document.createElement("span"), { className: "sep", textContent: "›" }));
      const b = document.createElement("button");
      const text = k === 0 ? (D.video.title || D.video.uid || "video") : label(j);
      b.textContent = `${text.length > 28 ? text.slice(0, 27) + "…" : text} (${fmt(N.start[j])}–${fmt(N.end[j])})`;
      b.dataset.index = j; b.dataset.nodeId = N.id[j];
      if (j === cur) b.setAttribute("aria-current", "true"); else b.onclick = () => focus(j);
      nav.append(b);
    });
    nav.scrollLeft = nav.scrollWidth;
  }
  function row(dl, name, value) {
    dl.append(Object.assign(document.createElement("dt"), { textContent: name }));
    dl.append(Object.assign(document.createElement("dd"), { textContent: value }));
  }
  function field(box, key, text) {
    const div = document.createElement("div");
    div.className = "field" + (key === "error" ? " error" : ""); div.id = "f-" + key; div.dataset.field = key;
    div.append(Object.assign(document.createElement("h3"), { textContent: LABELS[key] || key }));
    div.append(Object.assign(document.createElement("p"), { textContent: text }));
    box.append(div);
  }
  function noAnnotation(i) {
    // The recorded reason first: one voice with the run report and the status record.
    const p = D.pipeline || {}, from = p.annotate_from, skipped = (p.skipped || {}).aggregate;
    if (typeof from === "number" && N.end[i] - N.start[i] < from - 1e-3)
      return `No annotation: shorter than ${from} s, the annotation threshold.`;
    if (!children[i].length && !p.annotate_leaves)
      return "No annotation: leaves are not annotated, as in the release (aggregate.targets=all annotates them).";
    if (skipped) return `No annotation: published without annotations (${skipped}).`;
    if (N.error[i]) return "No annotation: no valid answer for this node (see the error below).";
    return "No annotation.";
  }
  function showPanel(i) {
    panel.dataset.nodeId = N.id[i]; panel.dataset.index = i;
    const img = $("thumb").querySelector("img"), cap = $("thumb").querySelector("figcaption"), t = thumb(i);
    if (t) { img.src = t.src; cap.textContent = t.from === i ? `middle frame (${fmt((N.start[i] + N.end[i]) / 2)})` : "middle frame of the enclosing span"; }
    else { img.removeAttribute("src"); cap.textContent = "no thumbnail (source video not available)"; }
    const dl = $("facts"); dl.replaceChildren();
    row(dl, "Time", `${fmt(N.start[i])} – ${fmt(N.end[i])}`);
    row(dl, "Duration", `${(N.end[i] - N.start[i]).toFixed(2)} s`);
    row(dl, "Level", String(N.level[i]));
    row(dl, "Children", String(children[i].length));
    if (N.kind[i]) row(dl, "Caption kind", N.kind[i]);
    row(dl, "Node", N.id[i]);
    const box = $("fields"); box.replaceChildren();
    const a = N.ann[i];
    if (a) D.fields.forEach((key, k) => field(box, key, a[k] || "—"));
    else box.append(Object.assign(document.createElement("p"), { className: "muted", id: "no-annotation",
      textContent: noAnnotation(i) }));
    if (N.caption[i]) field(box, "caption", N.caption[i]);
    if (N.error[i]) field(box, "error", N.error[i]);
    const ul = $("children"); ul.replaceChildren();
    $("children-title").hidden = !children[i].length;
    children[i].forEach((c) => {
      const b = document.createElement("button");
      b.textContent = `${fmt(N.start[c])}–${fmt(N.end[c])} ${label(c).slice(0, 60)}`;
      b.dataset.index = c; b.onclick = () => focus(c);
      const li = document.createElement("li"); li.append(b); ul.append(li);
    });
  }

  // -- mouse and keyboard --------------------------------------------------------------------
  function hit(ev) {
    const r = canvas.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top;
    const level = levels[0] + Math.floor((y - AXIS) / rowH);
    if (y < AXIS || level > levels[1]) return -1;
    const list = byLevel[level] || [], w = r.width, t = t0 + (x / w) * (t1 - t0), slack = (3 / w) * (t1 - t0);
    for (let k = firstVisible(list, t - slack); k < list.length && N.start[list[k]] <= t + slack; k++) {
      const i = list[k];
      if (i >= cur && i < stop[cur]) return i;
    }
    return -1;
  }
  canvas.addEventListener("mousemove", (ev) => {
    if (drag && !(ev.buttons & 1)) drag = null;  // released outside the window: no longer dragging
    if (drag) {
      const dx = ev.clientX - drag.x, span = t1 - t0;
      if (Math.abs(dx) > 3) drag.moved = true;
      const shift = (-dx / canvas.clientWidth) * span;
      t0 = Math.max(N.start[cur], Math.min(drag.t0 + shift, N.end[cur] - span)); t1 = t0 + span;
      pointer = { clientX: ev.clientX, clientY: ev.clientY };
      redraw(); return;
    }
    pointer = { clientX: ev.clientX, clientY: ev.clientY };
    const i = hit(ev);
    if (i !== hover) { hover = i; redraw(); }
    showTooltip(i, ev);
  });
  canvas.addEventListener("mouseleave", () => { pointer = null; hover = -1; tooltip.hidden = true; redraw(); });
  canvas.addEventListener("mousedown", (ev) => { drag = { x: ev.clientX, t0, moved: false }; });
  // Cleared after the click that ends a drag has been ignored; a drag begun since is left alone.
  window.addEventListener("mouseup", () => { const ended = drag; setTimeout(() => { if (drag === ended) drag = null; }, 0); });
  canvas.addEventListener("click", (ev) => {
    if (drag && drag.moved) return;
    const i = hit(ev);
    if (i >= 0) { focus(i); timeline.focus(); }
  });
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = canvas.getBoundingClientRect(), tc = t0 + ((ev.clientX - r.left) / r.width) * (t1 - t0);
    zoom(Math.exp(ev.deltaY * 0.0015), tc);
  }, { passive: false });
  function zoom(factor, tc) {
    const full = N.end[cur] - N.start[cur], span = Math.min(full, Math.max(full / 2000, 0.02, (t1 - t0) * factor));
    t0 = Math.max(N.start[cur], Math.min(tc - (tc - t0) * (span / (t1 - t0)), N.end[cur] - span)); t1 = t0 + span;
    redraw();
  }
  function showTooltip(i, ev) {
    if (i < 0 || !ev) { tooltip.hidden = true; return; }
    const t = thumb(i), img = tooltip.querySelector("img");
    if (t && t.from === i) img.src = t.src; else img.removeAttribute("src");
    tooltip.querySelector(".tt-time").textContent = `L${N.level[i]} · ${fmt(N.start[i])} – ${fmt(N.end[i])}`;
    tooltip.querySelector(".tt-text").textContent = label(i).slice(0, 160);
    const r = timeline.getBoundingClientRect();
    tooltip.style.left = Math.min(ev.clientX - r.left + 14, r.width - 290) + "px";
    tooltip.style.top = ev.clientY - r.top + timeline.scrollTop + 14 + "px";
    tooltip.hidden = false;
  }
  function neighbour(step) {
    const list = byLevel[N.level[cur]], k = list.indexOf(cur) + step;
    if (k >= 0 && k < list.length) focus(list[k]);
  }
  document.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLInputElement || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const keys = {
      ArrowUp: () => focus(N.parent[cur]), Escape: () => focus(N.parent[cur]), Backspace: () => focus(N.parent[cur]),
      ArrowDown: () => children[cur].length && focus(children[cur][0]),
      ArrowLeft: () => neighbour(-1), ArrowRight: () => neighbour(1), Home: () => focus(0),
      "0": () => focus(cur), "+": () => zoom(0.7, (t0 + t1) / 2), "-": () => zoom(1 / 0.7, (t0 + t1) / 2),
    };
    if (keys[ev.key]) { ev.preventDefault(); keys[ev.key](); }
  });
  new ResizeObserver(() => { layout(); redraw(); }).observe(timeline);
  window.addEventListener("hashchange", () => fromHash());
  function fromHash() {
    const m = /node=([^&]+)/.exec(location.hash), i = m ? rowOf.get(decodeURIComponent(m[1])) : undefined;
    focus(i === undefined ? 0 : i, { keepHash: !m });
  }

  // -- header and a small API for tests and embedding ----------------------------------------
  $("title").textContent = D.video.title || D.video.uid || "video";
  const models = Object.entries(D.pipeline.models || {}).map(([k, v]) => `${k}: ${v}`).join(" · ");
  $("meta").textContent = `${D.video.uid || ""} · ${fmt(N.end[0] || 0)} · ${n} nodes${models ? " · " + models : ""}`;
  window.a100m = {
    data: D, focus: (i) => focus(i), current: () => cur, find: (id) => rowOf.get(id),
    barCenter(i) {  // client coordinates of a visible bar's centre, or null
      if (i < cur || i >= stop[cur] || N.end[i] <= t0 || N.start[i] >= t1) return null;
      const r = canvas.getBoundingClientRect(), a = Math.max(N.start[i], t0), b = Math.min(N.end[i], t1);
      return { x: r.left + X((a + b) / 2, r.width), y: r.top + AXIS + (N.level[i] - levels[0] + 0.5) * rowH };
    },
  };
  if (n) fromHash();
})();

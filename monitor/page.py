"""The live view: a mosaic of the sources (MJPEG tiles: a plain <img>, no plug-in), each with its label, score, fps
and a stale marker, and a summary line; the text comes from /api/state, polled twice a second."""

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fusionrt site</title>
<style>
body { margin: 0; font: 14px system-ui, sans-serif; background: #111; color: #eee; }
header { padding: 8px 12px; background: #222; display: flex; gap: 18px; flex-wrap: wrap; }
header b { color: #8cf; }
#ready.no { color: #f66; } #ready.yes { color: #6f6; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 8px; padding: 8px; }
.tile { position: relative; background: #000; border: 2px solid #333; }
.tile.stale { border-color: #f44; }
.tile img { width: 100%; display: block; min-height: 120px; }
.caption { display: flex; justify-content: space-between; padding: 4px 6px; background: #1a1a1a; }
.label { font-weight: bold; color: #ff6; }
.flag { display: none; position: absolute; top: 6px; right: 6px; background: #f44; color: #fff; padding: 2px 6px; }
.tile.stale .flag { display: block; }
</style></head>
<body>
<header><span>fusionrt</span><span id="model"></span><span>fps <b id="fps">-</b></span>
<span>p50 <b id="p50">-</b> ms</span><span>p99 <b id="p99">-</b> ms</span><span>text cache <b id="cache">-</b></span>
<span id="ready" class="no">not ready</span></header>
<div id="grid"></div>
<script>
const grid = document.getElementById("grid");
function tile(n, source) {
  let t = document.getElementById("tile-" + n);
  if (t) return t;
  t = document.createElement("div");
  t.className = "tile"; t.id = "tile-" + n; t.dataset.source = source;
  const img = document.createElement("img"); img.src = "/mjpeg/" + n; img.alt = source;
  const flag = document.createElement("div"); flag.className = "flag"; flag.textContent = "STALE";
  const cap = document.createElement("div"); cap.className = "caption";
  for (const k of ["name", "label", "meta"]) { const s = document.createElement("span"); s.className = k; cap.appendChild(s); }
  cap.querySelector(".name").textContent = source;
  t.append(img, flag, cap); grid.appendChild(t);
  return t;
}
function fmt(v, d) { return v === null || v === undefined ? "-" : Number(v).toFixed(d); }
async function refresh() {
  try {
    const s = await (await fetch("/api/state", {cache: "no-store"})).json();
    document.getElementById("model").textContent = s.model.backend + " " + s.model.precision;
    document.getElementById("fps").textContent = fmt(s.summary.fps, 1);
    document.getElementById("p50").textContent = fmt(s.summary.latency_ms_p50, 1);
    document.getElementById("p99").textContent = fmt(s.summary.latency_ms_p99, 1);
    const c = s.summary.text_cache;
    document.getElementById("cache").textContent = c ? c.hits + " hits / " + c.misses + " misses" : "off";
    const r = document.getElementById("ready");
    r.textContent = s.ready ? "ready" : "not ready: " + s.reasons.join("; ");
    r.className = s.ready ? "yes" : "no";
    s.sources.forEach((src, n) => {
      const t = tile(n, src.source);
      t.querySelector(".label").textContent = src.label === null ? "(waiting)" : src.label + " " + fmt(src.score, 2);
      t.querySelector(".meta").textContent = fmt(src.fps, 1) + " fps";
      t.classList.toggle("stale", src.stale);
    });
  } catch (e) { document.getElementById("ready").textContent = "no answer: " + e; }
}
refresh(); setInterval(refresh, 500);
</script></body></html>
"""

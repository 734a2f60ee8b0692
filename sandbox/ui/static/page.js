// rolling-sandbox live page: reads /events (server-sent events) and draws the state. No dependencies.
"use strict";
const $ = (id) => document.getElementById(id);
let updates = 0;
let lastState = null;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(n, digits) {
  if (n === null || n === undefined) return "–";
  return Number(n).toFixed(digits || 0);
}

function renderHeader(s) {
  const run = s.run || {};
  const title = [run.strategy, run.batch > 1 ? "batch " + run.batch : "", (run.from || "") + " → " + (run.to || "")]
    .filter(Boolean).join(" · ");
  $("title").textContent = s.table ? "rolling-sandbox · compare · " + s.table.length + " strategies"
    : "rolling-sandbox" + (run.strategy ? " · " + title : "");
  const phase = $("phase");
  phase.textContent = s.phase === "waiting" ? "starting the fleet"
    : s.phase === "paused" && run.paused_by ? "paused by " + run.paused_by : s.phase;
  if (run.canary_weight !== undefined && run.canary_weight !== null && s.phase === "rolling") {
    phase.textContent += " · canary " + run.canary_weight + " %";  // --strategy canary: the weight now
  }
  phase.className = "pill " + String(s.phase).replace(/ /g, "-");
}

function renderWhere(s) {
  const b = s.batch || {};
  $("batch-text").textContent = !b.total ? "no batch yet"
    : b.current > 0 ? "Batch " + b.current + " of " + b.total : b.total + (b.total > 1 ? " batches" : " batch") + " planned";
  const done = s.phase === "ended" || s.phase === "finishing" ? b.total : Math.max(0, b.current - 1);
  $("batch-bar").style.width = (b.total ? (100 * done / b.total) : 0) + "%";
  $("promise").textContent = s.promise ? "Promise: " + s.promise.text : "";
  const stepper = $("stepper");
  if (stepper.children.length !== s.steps.length) {
    stepper.replaceChildren(...s.steps.map((label) => el("li", "", label)));
  }
  const now = s.step ? s.step.number : 0;
  [...stepper.children].forEach((li, i) => {
    li.className = i + 1 === now ? "now" : (i + 1 < now ? "done" : "");
  });
  const n = $("narration");
  n.hidden = !s.narration || s.phase === "ended";
  n.textContent = s.narration || "";
}

function serverText(sv) {
  if (sv.state === "draining" && sv.in_flight !== null && sv.in_flight !== undefined) {
    return "draining · " + sv.in_flight + " in flight";
  }
  return sv.state;
}

function renderSlots(s) {
  const box = $("slots");
  const active = new Set((s.step && s.step.slots) || []);
  const cards = new Map([...box.children].map((c) => [c.dataset.slot, c]));
  const wanted = s.slots.map((slot) => String(slot.slot));
  for (const [key, card] of cards) if (!wanted.includes(key)) card.remove();
  // few slots: big cards in one row; up to 16: two rows; more: as many as fit
  const n = s.slots.length;
  box.style.gridTemplateColumns = n <= 5 ? "repeat(" + Math.max(n, 1) + ", minmax(0, 1fr))"
    : n <= 16 ? "repeat(" + Math.ceil(n / 2) + ", minmax(0, 1fr))" : "";
  s.slots.forEach((slot) => {
    let card = cards.get(String(slot.slot));
    if (!card) {
      card = el("div", "slot");
      card.dataset.slot = slot.slot;
      card.append(el("div", "slot-no", "slot " + slot.slot), el("div", "servers"));
      box.append(card);
    }
    card.classList.toggle("active", active.has(slot.slot));
    renderServers(card.querySelector(".servers"), slot.servers);
  });
}

// several Swarm nodes (sandbox cluster up): one column per node, its servers in it
function renderNodes(s) {
  const nodes = s.nodes || [];
  $("nodes-box").hidden = nodes.length === 0;
  if (!nodes.length) return;
  const box = $("nodes");
  const cols = new Map([...box.children].map((c) => [c.dataset.node, c]));
  for (const [node, col] of cols) if (!nodes.includes(node)) col.remove();
  const servers = s.slots.flatMap((slot) => slot.servers);
  nodes.forEach((node) => {
    let col = cols.get(node);
    if (!col) {
      col = el("div", "node-col");
      col.dataset.node = node;
      col.append(el("div", "slot-no", node), el("div", "servers"));
      box.append(col);
    }
    renderServers(col.querySelector(".servers"), servers.filter((sv) => sv.node === node));
  });
}

function renderServers(box, servers) {
  const rows = new Map([...box.children].map((r) => [r.dataset.name, r]));
  const names = servers.map((sv) => sv.name);
  for (const [name, row] of rows) if (!names.includes(name)) row.remove();
  servers.forEach((sv) => {
    let row = rows.get(sv.name);
    if (!row) {
      row = el("div", "server");
      row.dataset.name = sv.name;
      row.title = sv.name;
      row.append(el("div", "ver"), el("div", "st"));
      box.append(row);
    }
    row.className = "server " + sv.state + " " + colour(sv.version);
    row.querySelector(".ver").textContent = sv.version || "?";
    row.querySelector(".ver").className = "ver " + colour(sv.version);
    row.querySelector(".st").textContent = serverText(sv);
  });
}

function renderFigures(s) {
  const live = s.live || {};
  const rps = live.rps || {};
  $("count-v1").textContent = (s.versions || {})[names[0]] || 0;
  $("count-v2").textContent = (s.versions || {})[names[1]] || 0;
  $("rps-v1").textContent = fmt(rps[names[0]] || 0);
  $("rps-v2").textContent = fmt(rps[names[1]] || 0);
  // open WebSockets and event streams per version (the dynamic LB's count), only when some ran
  const ll = live.long_lived;
  document.querySelectorAll(".ll").forEach((el) => { el.hidden = !ll; });
  if (ll) {
    $("ll-v1").textContent = ll[names[0]] || 0;
    $("ll-v2").textContent = ll[names[1]] || 0;
  }
  $("p99").textContent = live.p99_ms === null || live.p99_ms === undefined ? "–" : fmt(live.p99_ms) + " ms";
  $("dropped").textContent = live.dropped || 0;
  $("dropped").parentElement.classList.toggle("bad", (live.dropped || 0) > 0);
}

function area(points, x, y0, y1) {
  if (!points.length) return "";
  const top = points.map((p) => x(p[0]) + "," + y1(p)).join(" ");
  const bottom = points.slice().reverse().map((p) => x(p[0]) + "," + y0(p)).join(" ");
  return top + " " + bottom;
}

function renderChart(s) {
  const svg = $("share");
  const pts = ((s.live || {}).share || []).map((p) => {
    const v1 = p[1][names[0]] || 0, v2 = p[1][names[1]] || 0, sum = v1 + v2 || 1;
    return [p[0], v1 / sum, v2 / sum];
  });
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  if (!pts.length) { $("share-now").textContent = ""; return; }
  const t0 = pts[0][0], t1 = Math.max(pts[pts.length - 1][0], t0 + 30);
  const x = (t) => (1000 * (t - t0) / (t1 - t0)).toFixed(1);
  const y = (f) => (300 - 300 * f).toFixed(1);
  const v1 = document.createElementNS(ns, "polygon");
  v1.setAttribute("points", area(pts, x, () => y(0), (p) => y(p[1])));
  v1.setAttribute("fill", "var(--v1)");
  const v2 = document.createElementNS(ns, "polygon");
  v2.setAttribute("points", area(pts, x, (p) => y(p[1]), () => y(1)));
  v2.setAttribute("fill", "var(--v2)");
  const mid = document.createElementNS(ns, "line");
  Object.entries({ x1: 0, x2: 1000, y1: 150, y2: 150, stroke: "#ffffff55", "stroke-dasharray": "6 6" })
    .forEach(([k, v]) => mid.setAttribute(k, v));
  svg.append(v1, v2, mid);
  const last = pts[pts.length - 1];
  $("share-now").textContent = "now: " + names[0] + " " + fmt(100 * last[1]) + "% · " + names[1] + " "
    + fmt(100 * last[2]) + "%";
  $("chart-sub").textContent = "(last " + fmt(last[0] - t0) + " s)";
}

function renderResult(s) {
  const box = $("result");
  const r = s.result;
  box.hidden = !r;
  if (!r) return;
  box.className = "result " + (r.passed ? "pass" : "fail");
  $("verdict").textContent = r.verdict + (r.outcome && r.outcome !== "completed" ? "" : " · rollout completed");
  const f = r.figures || {};
  const by = f.by_version || {};
  const items = [
    ["requests", f.total], ["dropped", f.dropped], ["rollout took", fmt(f.duration_s, 1) + " s"],
    ["peak containers", f.peak_instances], ["p99", fmt(f.p99_ms) + " ms"],
    [names[0] + " / " + names[1] + " answers", (by[names[0]] || 0) + " / " + (by[names[1]] || 0)], ["mixed window", fmt(f.mixed_window_s, 1) + " s"],
  ];
  $("result-figures").replaceChildren(...items.map(([k, v]) => {
    const span = el("span", "", k + " ");
    span.append(el("b", "", String(v === undefined || v === null ? "–" : v)));
    return span;
  }));
  const files = r.files || {};
  const links = Object.entries(files).map(([key, path]) => {
    const a = el("a", "", path.split("/").pop());
    a.href = "/files/" + key;
    a.target = "_blank";
    return a;
  });
  const dir = Object.values(files)[0];
  if (dir) links.push(el("span", "path", "in " + dir.slice(0, dir.lastIndexOf("/"))));
  $("result-files").replaceChildren(...links);
}

function renderCompare(s) {
  const box = $("compare");
  box.hidden = !(s.compare && s.compare.length);
  if (box.hidden) return;
  $("panels").replaceChildren(...s.compare.map((p) => {
    const d = el("div", "panel " + (p.passed ? "pass" : "fail"));
    const f = p.figures || {};
    d.append(el("h3", "", p.strategy + (p.batch > 1 ? ":" + p.batch : "")), el("div", "pv", p.verdict),
      el("div", "pv", "took " + fmt(f.duration_s, 1) + " s · peak " + f.peak_instances + " containers"));
    return d;
  }));
  const table = $("compare-table");
  if (!s.table) { table.replaceChildren(); return; }
  const cols = ["strategy", "batch", "outcome", "duration_s", "peak_instances", "dropped", "stall_s",
    "mixed_window_s", "users_saw_both"];
  const head = el("tr");
  cols.forEach((c) => head.append(el("th", "", c.replace(/_/g, " "))));
  table.replaceChildren(head, ...s.table.map((row) => {
    const tr = el("tr");
    cols.forEach((c) => {
      const v = row[c];
      tr.append(el("td", "", v === null || v === undefined ? "–" : typeof v === "number" && !Number.isInteger(v)
        ? v.toFixed(1) : String(v)));
    });
    return tr;
  }));
}

// The rollout's two versions, old then new, as the plan names them (v1/v2, blue/green, old/new...);
// before a plan, the versions the fleet serves. The page colours the old one as "v1", the new one as "v2".
let names = ["", ""];

function versionsOf(s) {
  const run = s.run || {};
  if (run.from && run.to) return [run.from, run.to];
  const seen = Object.keys(s.versions || {}).sort();
  return [seen[0] || "", seen[1] || ""];
}

function colour(version) {
  return version === names[0] ? "v1" : version === names[1] ? "v2" : "";
}

function render(s) {
  lastState = s;
  names = versionsOf(s);
  ["v1", "v2"].forEach((k, i) => {
    $("name-" + k).textContent = names[i] || "–";
    $("legend-" + k).textContent = "■ " + (names[i] || "–");
  });
  updates += 1;
  document.body.dataset.phase = s.phase;
  document.body.classList.toggle("compare-only", Boolean(s.table));
  document.body.dataset.updates = updates;
  renderHeader(s);
  renderWhere(s);
  renderSlots(s);
  renderNodes(s);
  renderFigures(s);
  renderChart(s);
  renderResult(s);
  renderCompare(s);
  $("log").textContent = (s.log || []).join("\n");
}

function connect() {
  const source = new EventSource("/events");
  source.onopen = () => { $("conn").textContent = "live"; };
  source.onmessage = (msg) => render(JSON.parse(msg.data));
  source.onerror = () => {
    const ended = lastState && lastState.phase === "ended";
    $("conn").textContent = ended ? "run over: this is the final state" : "disconnected: showing the last state";
    if (ended) source.close();
  };
}
connect();

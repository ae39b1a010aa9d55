// The onceflow dashboard: reads /v1/dashboard/stream (server-sent snapshots) and draws them.
// Plain JavaScript, no build step. The stream is read with fetch, not EventSource, so that
// a bearer token (ONCEFLOW_API_TOKEN) can travel in the Authorization header.
"use strict";

const STATES = ["submitted", "queued", "waiting", "scheduled", "running", "completed",
  "needs_operator", "failed", "cancelled", "rejected"];
const $ = (sel) => document.querySelector(sel);
const color = (state) => `var(--${state}, #999)`;
let latest = null;
let selectedSession = null;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = sessionStorage.getItem("onceflow-token");
  if (token) h["Authorization"] = `Bearer ${token}`;
  return h;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.setAttribute("style", v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function cell(value, cls) {
  return el("td", cls ? { class: cls } : {}, value);
}

function ago(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  return s < 120 ? `${s}s ago` : `${Math.round(s / 60)}m ago`;
}

function setConnection(state, text) {
  const pill = $("#connection");
  pill.dataset.state = state;
  pill.textContent = text;
}

// -- the stream -------------------------------------------------------------------------------

async function connect() {
  try {
    const response = await fetch("/v1/dashboard/stream", { headers: headers() });
    if (response.status === 401) {
      setConnection("error", "needs a token");
      $("#token-form").hidden = false;
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    setConnection("live", "live");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = frame.split("\n").filter((l) => l.startsWith("data: "))
          .map((l) => l.slice(6)).join("\n");
        if (data) render(JSON.parse(data));
      }
    }
  } catch (err) {
    setConnection("error", `reconnecting (${err.message})`);
  }
  setTimeout(connect, 2000);
}

$("#token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("onceflow-token", $("#token").value);
  $("#token-form").hidden = true;
  connect();
});

// -- drawing ----------------------------------------------------------------------------------

function render(snap) {
  latest = snap;
  document.body.dataset.version = snap.version;
  $("#updated").textContent = `updated ${new Date(snap.at).toLocaleTimeString()}`;
  const cap = snap.capacity || {};
  $("#capacity").textContent = `admission ${cap.mode || "-"}, replicas wanted ` +
    `${cap.replicas ?? "-"}`;
  renderUnits(snap);
  renderHistory(snap.history || []);
  renderInbox(snap);
  renderNodes(snap);
  renderSessions(snap);
  renderMoney(snap);
  renderLimits(snap.limits || {});
}

function renderUnits(snap) {
  const units = snap.units || {};
  const byState = units.by_state || {};
  $("#units-total").textContent = `${units.total ?? 0} in all`;
  const states = STATES.filter((s) => s in byState)
    .concat(Object.keys(byState).filter((s) => !STATES.includes(s)).sort());
  fill($("#units"), states.map((s) => el("div",
    { class: "card", "data-state": s, style: `--c: ${color(s)}` },
    el("b", {}, byState[s]), el("span", {}, s.replace("_", " ")))));
}

function renderHistory(history) {
  const svg = $("#history");
  const legend = $("#history-legend");
  if (history.length < 2) { svg.replaceChildren(); legend.replaceChildren(); return; }
  const states = STATES.filter((s) => history.some((h) => (h.by_state[s] || 0) > 0));
  const t0 = history[0].at, t1 = history[history.length - 1].at;
  const top = Math.max(1, ...history.flatMap((h) => states.map((s) => h.by_state[s] || 0)));
  const x = (t) => ((t - t0) / Math.max(1, t1 - t0)) * 800;
  const y = (v) => 155 - (v / top) * 150;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren(...states.map((s) => {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", history.map((h) => `${x(h.at)},${y(h.by_state[s] || 0)}`)
      .join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color(s));
    line.setAttribute("stroke-width", "2");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    line.dataset.state = s;
    return line;
  }));
  legend.replaceChildren(...states.map((s) => el("span", { style: `--c: ${color(s)}` },
    el("i"), s.replace("_", " "))), el("span", {},
    `${Math.round((t1 - t0) / 1000)} s shown, top ${top}`));
}

const ACTIONS = {
  approval: ["approve", "deny", "cancel"],
  needs_operator: ["retry", "abandon", "cancel"],
  input: ["cancel"],
  session_limit: ["cancel"],
};

function renderInbox(snap) {
  const items = snap.inbox || [];
  $("#inbox-count").textContent = `${items.length} waiting`;
  fill($("#inbox tbody"), items.map((w) => el("tr",
    { "data-unit": w.work_unit_id, "data-kind": w.kind },
    cell(ago(w.since, snap.at)), cell(w.kind.replace("_", " ")), cell(w.tenant_id),
    cell(w.work_unit_id || "-"), cell(w.session_id || "-"), cell((w.reason || "").slice(0, 80)),
    cell(w.deadline ? new Date(w.deadline).toLocaleTimeString() : "-"),
    el("td", {}, ...(ACTIONS[w.kind] || []).map((action) => el("button", {
      "data-action": action, onclick: () => act(action, w),
    }, action))))));
}

async function act(action, item) {
  const tenant = { "X-Onceflow-Tenant": item.tenant_id, "Content-Type": "application/json" };
  let url, body;
  if (action === "retry" || action === "abandon") {
    url = "/v1/control/resolutions";
    body = { work_unit_id: item.work_unit_id, resolution: action, operator: "dashboard" };
  } else {
    url = "/v1/control/actions";
    body = { action, requested_by: "dashboard" };
    if (item.work_unit_id) body.work_unit_id = item.work_unit_id;
    else body.session_id = item.session_id;
    if (action === "deny") body.reason = "denied from the dashboard";
  }
  const out = $("#action-result");
  out.textContent = `${action} ${item.work_unit_id || item.session_id}: sending`;
  try {
    const response = await fetch(url, { method: "POST", headers: headers(tenant),
      body: JSON.stringify(body) });
    const answer = await response.json();
    out.textContent = response.ok
      ? `${action} ${item.work_unit_id || item.session_id}: applied`
      : `${action} refused: ${answer.detail}`;
    out.dataset.outcome = response.ok ? "applied" : "refused";
  } catch (err) {
    out.textContent = `${action} failed: ${err.message}`;
    out.dataset.outcome = "failed";
  }
}

function renderNodes(snap) {
  const completed = (snap.units || {}).completed_by_node || {};
  fill($("#nodes tbody"), (snap.nodes || []).map((n) => el("tr", { "data-node": n.node_id },
    cell(n.node_id), cell(n.health), cell(n.trust == null ? "-" : n.trust.toFixed(2), "num"),
    cell(n.breaker), cell(n.region || "-"), cell((n.kinds || []).join(", ")),
    cell(n.queue_depth, "num"), cell(`${Math.round(n.utilization * 100)}%`, "num"),
    cell(n.free_slots, "num"), cell(completed[n.node_id] || 0, "num"),
    cell(`${n.heartbeat_age_s}s`, "num"))));
}

function renderSessions(snap) {
  const sessions = snap.sessions || [];
  $("#sessions-count").textContent = `${snap.sessions_total ?? sessions.length} in all`;
  fill($("#sessions tbody"), sessions.map((s) => {
    const key = `${s.tenant_id}/${s.session_id}`;
    const limits = Object.entries(s.limits || {}).filter(([, v]) => v != null && v !== "")
      .map(([k, v]) => `${k}=${v}`).join(" ");
    return el("tr", { class: "clickable" + (key === selectedSession ? " selected" : ""),
      "data-session": key, onclick: () => { selectedSession = key; render(latest); } },
    cell(s.tenant_id), cell(s.session_id),
    el("td", { class: "state", style: `--c: ${color(s.state)}` }, s.state),
    cell(`${s.done}/${s.steps}`, "num"), cell(s.cost_usd, "num"),
    cell(limits + (s.at_limit ? ` (at ${s.at_limit})` : "")));
  }));
  const chosen = sessions.find((s) => `${s.tenant_id}/${s.session_id}` === selectedSession)
    || sessions[0];
  $("#dag-panel").hidden = !chosen;
  if (chosen) drawDag(chosen);
}

function drawDag(session) {
  // Steps in columns by depth (a step sits right of everything it depends on).
  const steps = session.dag || [];
  const byId = Object.fromEntries(steps.map((s) => [s.work_unit_id, s]));
  const depth = {};
  const depthOf = (id, seen = new Set()) => {
    if (id in depth) return depth[id];
    if (seen.has(id) || !byId[id]) return 0;
    seen.add(id);
    const d = Math.max(-1, ...byId[id].depends_on.map((p) => depthOf(p, seen))) + 1;
    depth[id] = d;
    return d;
  };
  steps.forEach((s) => depthOf(s.work_unit_id));
  const columns = [];
  for (const s of steps) (columns[depth[s.work_unit_id]] ||= []).push(s);
  const W = 210, H = 46, BOX = 180, pos = {};
  columns.forEach((col, c) => col.forEach((s, r) => { pos[s.work_unit_id] = [c * W + 10, r * H + 10]; }));
  const rows = Math.max(1, ...columns.map((c) => c.length));
  const svg = $("#dag");
  svg.setAttribute("viewBox", `0 0 ${Math.max(1, columns.length) * W + 20} ${rows * H + 20}`);
  svg.style.height = `${rows * H + 20}px`;
  $("#dag-title").textContent = `${session.tenant_id}/${session.session_id}: ${session.state}, ` +
    `${session.cost_usd} USD`;
  const ns = "http://www.w3.org/2000/svg";
  const make = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text != null) n.textContent = text;
    return n;
  };
  const parts = [];
  for (const s of steps) for (const p of s.depends_on) if (pos[p]) {
    const [x1, y1] = pos[p], [x2, y2] = pos[s.work_unit_id];
    parts.push(make("line", { x1: x1 + BOX, y1: y1 + 16, x2, y2: y2 + 16, stroke: "#999" }));
  }
  for (const s of steps) {
    const [x, y] = pos[s.work_unit_id];
    const g = make("g", { "data-step": s.work_unit_id, "data-state": s.state });
    g.append(make("rect", { x, y, width: BOX, height: 34, rx: 4, fill: "#fff",
      stroke: color(s.state), "stroke-width": 2 }));
    g.append(make("text", { x: x + 6, y: y + 14 }, s.work_unit_id.slice(0, 28)));
    g.append(make("text", { x: x + 6, y: y + 28, fill: color(s.state) },
      `${s.state} · ${s.attempts}× · ${s.node || "-"} · $${Number(s.cost_usd).toFixed(4)}`));
    parts.push(g);
  }
  svg.replaceChildren(...parts);
}

function renderMoney(snap) {
  fill($("#wallets tbody"), (snap.wallets || []).map((w) => el("tr", { "data-wallet": w.wallet_id },
    cell(w.wallet_id), cell(w.prepaid ? "yes" : "no"), cell(w.credit_usd, "num"),
    cell(w.debit_usd, "num"), cell(w.reserved_usd, "num"), cell(w.balance_usd, "num"),
    cell(w.line_items, "num"), cell(w.leakage_usd, "num"))));
  fill($("#spend tbody"), (snap.spend || []).map((s) => el("tr", {},
    cell(s.tenant_id), cell(s.model), cell(s.spend_usd, "num"), cell(s.tokens, "num"),
    cell(s.line_items, "num"))));
}

function renderLimits(limits) {
  fill($("#slots tbody"), (limits.slots || []).map((s) => el("tr", {},
    cell(s.scope), cell(s.in_use, "num"), cell(s.limit ?? "-", "num"), cell(s.waiting, "num"))));
  fill($("#budgets tbody"), (limits.budgets || []).map((b) => el("tr", {},
    cell(b.scope), cell(b.budget_usd ?? "-", "num"), cell(b.charged_usd ?? "-", "num"),
    cell(b.reserved_usd ?? "-", "num"), cell(b.available_usd ?? "-", "num"),
    cell(b.waiting, "num"))));
  const notes = (limits.pauses || []).map((p) => `provider pause ${p.scope}: ` +
    `${Math.round(p.remaining_ms / 1000)} s left`).concat((limits.breakers || []).map(
    (b) => `breaker ${b.breaker} on ${b.node_id}`));
  fill($("#pauses"), notes.map((n) => el("li", {}, n)));
}

connect();

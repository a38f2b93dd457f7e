// The otpy sessions dashboard: plain DOM, one EventSource, no framework.
// Everything that comes from a session (model output, prompts, tool calls, names) is
// untrusted: it goes into the page with textContent only, never innerHTML.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const state = { tree: null, restarts: new Map(), sessions: new Map(), metrics: [] };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

async function post(path) {
  const response = await fetch(path, { method: "POST", headers: { "X-CSRF-Token": csrf } });
  return response.ok ? response.json() : Promise.reject(await response.json());
}

function statusClass(status) {
  return "badge status-" + String(status).replace(/\s+/g, "-");
}

// --- the tree --------------------------------------------------------------------------

function renderTree(root) {
  const container = document.getElementById("tree");
  const flashed = [];
  const list = el("ul", { class: "tree" });
  if (root) list.append(treeItem(root, flashed));
  container.replaceChildren(list);
  for (const node of flashed) {
    node.classList.add("flash");
  }
}

function treeItem(node, flashed) {
  const before = state.restarts.get(node.key);
  state.restarts.set(node.key, node.restarts);
  const title = node.id ?? node.name ?? (node.pid != null ? "#" + node.pid : "?");
  const row = el(
    "div",
    { class: "node", "data-key": node.key },
    el("span", { class: "title", text: String(title) }),
    el("span", { class: "label", text: node.label + (node.strategy ? " " + node.strategy : "") }),
    el("span", { class: statusClass(node.status), text: node.status }),
    el("span", { class: "restarts", text: "restarts " + node.restarts }),
  );
  if (node.pid != null && node.status === "running") {
    row.append(
      el("button", {
        class: "kill",
        text: "kill",
        title: "kill this process (its supervisor restarts it)",
        onclick: () => post("/api/processes/" + node.pid + "/kill").catch(showError),
      }),
    );
  }
  if (node.info) row.append(el("span", { class: "info", text: node.info }));
  if (before !== undefined && node.restarts > before) flashed.push(row);
  const item = el("li", {}, row);
  if (node.children.length) {
    const children = el("ul");
    for (const child of node.children) children.append(treeItem(child, flashed));
    item.append(children);
  }
  return item;
}

// --- the sessions ------------------------------------------------------------------------

function sessionCard(name) {
  let entry = state.sessions.get(name);
  if (entry) return entry;
  const dl = el("dl");
  const text = el("div", { class: "live-text" });
  const tools = el("ul", { class: "tools" });
  const badge = el("span", { class: "badge" });
  const link = el("a", { href: "#session=" + encodeURIComponent(name), text: name });
  const card = el(
    "div",
    { class: "session", "data-session": name },
    el(
      "h3",
      {},
      link,
      badge,
      el("button", { text: "interrupt", onclick: () => post(sessionPath(name) + "/interrupt").catch(showError) }),
    ),
    dl,
    text,
    tools,
  );
  entry = { card, dl, text, tools, badge, summary: {}, turn: null };
  state.sessions.set(name, entry);
  const holder = document.getElementById("sessions");
  holder.append(card);
  return entry;
}

function sessionPath(name) {
  return "/api/sessions/" + encodeURIComponent(name);
}

function renderSummary(entry, summary) {
  entry.summary = summary;
  entry.badge.className = statusClass(summary.status);
  entry.badge.textContent = summary.status + (summary.turn ? " turn " + summary.turn : "");
  const cost = summary.cost_usd == null ? "?" : "$" + Number(summary.cost_usd).toFixed(4);
  const last = summary.last_activity ? new Date(summary.last_activity * 1000).toLocaleTimeString() : "-";
  const rows = [
    ["turns", summary.turns ?? "?"],
    ["cost", cost],
    ["tokens", summary.tokens ?? "?"],
    ["restarts", summary.restarts],
    ["last activity", last],
  ];
  entry.dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
}

function renderTurn(entry, turn) {
  entry.turn = turn;
  entry.text.textContent = turn ? turn.text || "" : "";
  entry.tools.replaceChildren();
  for (const call of (turn && turn.tool_calls) || []) addToolCall(entry, call);
}

function addToolCall(entry, call) {
  entry.tools.append(el("li", { "data-call": call.id, text: call.name + " " + JSON.stringify(call.arguments) }));
}

function onSessionEvent(data) {
  const entry = sessionCard(data.name);
  switch (data.type) {
    case "turn_started":
      renderTurn(entry, { turn: data.turn, prompt: data.prompt, text: "", tool_calls: [] });
      break;
    case "snapshot":
      renderTurn(entry, data.turn);
      break;
    case "text_delta":
      entry.text.append(document.createTextNode(data.text));
      entry.text.scrollTop = entry.text.scrollHeight;
      break;
    case "tool_call_requested":
      addToolCall(entry, data.call);
      break;
    case "tool_call_finished":
      for (const item of entry.tools.children) {
        if (item.dataset.call === data.result.tool_call_id) item.textContent += " → " + data.result.content;
      }
      break;
    case "turn_finished":
      entry.text.textContent = data.result.text;
      break;
  }
  if (currentDetail() === data.name) onDetailEvent(data);
}

// --- charts (inline SVG) -----------------------------------------------------------------

function drawChart(id, key) {
  const svg = document.getElementById(id);
  const samples = state.metrics;
  svg.replaceChildren();
  if (samples.length < 2) return;
  const t0 = samples[0].t, t1 = samples[samples.length - 1].t;
  const max = Math.max(...samples.map((s) => s[key]), key === "cost_usd" ? 0.0001 : 1);
  const points = samples.map((s) => {
    const x = ((s.t - t0) / Math.max(t1 - t0, 1)) * 300;
    const y = 96 - (s[key] / max) * 90;
    return x.toFixed(1) + "," + y.toFixed(1);
  });
  const ns = "http://www.w3.org/2000/svg";
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "4");
  label.setAttribute("y", "10");
  label.textContent = key === "cost_usd" ? "$" + max.toFixed(4) : String(max);
  svg.append(line, label);
}

function drawCharts() {
  drawChart("chart-cost", "cost_usd");
  drawChart("chart-turns", "turns");
  drawChart("chart-restarts", "restarts");
}

// --- the session page ----------------------------------------------------------------------

function currentDetail() {
  const match = location.hash.match(/^#session=(.+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

async function showDetail() {
  const name = currentDetail();
  document.getElementById("overview").hidden = name !== null;
  document.getElementById("detail").hidden = name === null;
  if (name === null) return;
  document.getElementById("detail-title").textContent = name;
  const live = document.getElementById("detail-live");
  const entry = state.sessions.get(name);
  live.textContent = entry ? entry.text.textContent : "";
  await loadHistory(name);
}

async function loadHistory(name) {
  const [history, transcript] = await Promise.all([
    fetch(sessionPath(name) + "/history?limit=500").then((r) => r.json()),
    fetch(sessionPath(name) + "/messages?limit=500").then((r) => r.json()),
  ]);
  document.getElementById("history").replaceChildren(
    ...(history.items || []).map((r) =>
      el("li", { text: "turn " + r.turn + " · " + r.finish_reason + " · $" + r.cost_usd.toFixed(4) + "\n" + r.text }),
    ),
  );
  document.getElementById("transcript").replaceChildren(
    ...(transcript.items || []).map((m) => el("li", { class: "role-" + m.role, text: m.role + ": " + m.content })),
  );
}

function onDetailEvent(data) {
  const live = document.getElementById("detail-live");
  if (data.type === "turn_started") live.textContent = "";
  else if (data.type === "text_delta") live.append(document.createTextNode(data.text));
  else if (data.type === "snapshot") live.textContent = data.turn ? data.turn.text : "";
  else if (data.type === "turn_finished") {
    live.textContent = data.result.text;
    loadHistory(data.name);
  }
}

document.getElementById("send-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = currentDetail();
  const input = document.getElementById("prompt");
  const status = document.getElementById("send-status");
  status.textContent = "sending…";
  const response = await fetch(sessionPath(name) + "/messages", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify({ prompt: input.value }),
  });
  const body = await response.json();
  status.textContent = response.ok ? "turn " + body.turn + " done" : body.title + ": " + body.detail;
  if (response.ok) input.value = "";
});
document.getElementById("detail-interrupt").addEventListener("click", () => {
  post(sessionPath(currentDetail()) + "/interrupt").catch(showError);
});

function showError(problem) {
  const badge = document.getElementById("connection");
  badge.textContent = (problem && problem.title) || "error";
}

// --- the stream ------------------------------------------------------------------------------

function connect() {
  const source = new EventSource("/api/events");
  const badge = document.getElementById("connection");
  source.onopen = () => {
    badge.textContent = "live";
    badge.className = "badge status-running";
  };
  source.onerror = () => {
    badge.textContent = "reconnecting";
    badge.className = "badge status-restarting";
  };
  source.addEventListener("hello", (event) => {
    const data = JSON.parse(event.data);
    renderTree(data.tree);
    for (const snapshot of data.sessions) {
      const entry = sessionCard(snapshot.session.name);
      renderSummary(entry, snapshot.session);
      renderTurn(entry, snapshot.turn);
    }
    state.metrics = data.metrics;
    drawCharts();
  });
  source.addEventListener("tree", (event) => renderTree(JSON.parse(event.data)));
  source.addEventListener("session", (event) => {
    const summary = JSON.parse(event.data);
    renderSummary(sessionCard(summary.name), summary);
  });
  source.addEventListener("session_gone", (event) => {
    const name = JSON.parse(event.data).name;
    const entry = state.sessions.get(name);
    if (entry) entry.card.remove();
    state.sessions.delete(name);
  });
  source.addEventListener("session_event", (event) => onSessionEvent(JSON.parse(event.data)));
  source.addEventListener("sample", (event) => {
    state.metrics.push(JSON.parse(event.data));
    if (state.metrics.length > 720) state.metrics.shift();
    drawCharts();
  });
}

window.addEventListener("hashchange", showDetail);
connect();
showDetail();

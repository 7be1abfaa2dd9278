// The jetpack dashboard: pods from GET /v1/pods, kept current by the /v1/events websocket
// (every event or heartbeat re-reads the pods; nothing polls on a timer). Text from pods
// (names, log lines) is only ever set as textContent, never parsed as markup.
"use strict";

const FEED_SIZE = 200;
const LOG_LINES = 200;
const CSRF = { "X-Jetpack-CSRF": "1" };

let lastSeq = null;
let pods = [];
let logsPod = null;
let refreshing = null;

const $ = (selector) => document.querySelector(selector);

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

async function api(method, path) {
  const response = await fetch(path, { method, headers: method === "GET" ? {} : CSRF });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showError(message) {
  const node = $("#error");
  node.textContent = message || "";
  node.hidden = !message;
}

function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function formatUptime(pod) {
  if (pod.state !== "running" || !pod.started) return "–";
  let seconds = Math.max(0, Math.floor((Date.now() - Date.parse(pod.started)) / 1000));
  const parts = [];
  for (const [size, unit] of [[86400, "d"], [3600, "h"], [60, "m"]]) {
    if (seconds >= size) { parts.push(`${Math.floor(seconds / size)}${unit}`); seconds %= size; }
  }
  if (parts.length < 2) parts.push(`${seconds}s`);
  return parts.slice(0, 2).join(" ");
}

function actionButton(uuid, action) {
  const button = el("button", action, { type: "button", "data-action": action });
  button.addEventListener("click", async () => {
    const pod = pods.find((p) => p.uuid === uuid);
    if (!pod) return;
    if (action === "logs") { openLogs(pod); return; }
    button.disabled = true;
    try {
      await api("POST", `/v1/pods/${uuid}/${action}`);
      showError("");
    } catch (error) {
      showError(`${action} ${pod.name}: ${error.message}`);
    }
    scheduleRefresh();
  });
  return button;
}

const COLUMNS = ["name", "uuid", "state", "ip", "apps", "uptime", "restarts", "memory",
                 "actions"];

// A pod's row is made once and updated in place: the buttons under the pointer stay put.
function makeRow(pod) {
  const row = el("tr", null, { "data-pod": pod.uuid });
  for (const column of COLUMNS) row.append(el("td", null, { class: column }));
  row.querySelector("td.state").append(el("span", null, { class: "badge" }));
  row.querySelector("td.uuid").title = pod.uuid;
  row.querySelector("td.actions").append(
    ...["start", "stop", "restart", "logs"].map((action) => actionButton(pod.uuid, action)));
  return row;
}

function updateRow(row, pod) {
  const cell = (column) => row.querySelector(`td.${column}`);
  const setText = (column, text) => {
    const value = String(text);
    if (cell(column).textContent !== value) cell(column).textContent = value;
  };
  row.dataset.name = pod.name;
  row.dataset.state = pod.state;
  setText("name", pod.name);
  setText("uuid", pod.uuid.slice(0, 8));
  const badge = cell("state").firstChild;
  badge.textContent = pod.state;
  badge.dataset.state = pod.state;
  setText("ip", pod.ip || "–");
  setText("apps", pod.apps.map((a) => `${a.name}: ${a.state}` +
    (a.exit_status !== null && a.exit_status !== undefined ? ` (${a.exit_status})` : ""))
    .join(", "));
  setText("uptime", formatUptime(pod));
  setText("restarts", pod.apps.reduce((sum, a) => sum + (a.restarts || 0), 0));
  setText("memory", formatBytes(pod.memory_bytes));
  const running = pod.state === "running";
  const busy = pod.state === "starting" || pod.state === "stopping";
  const enabled = { start: !running && !busy, stop: running, restart: running, logs: true };
  for (const button of cell("actions").querySelectorAll("button")) {
    button.disabled = !enabled[button.dataset.action];
  }
}

function renderPods() {
  const body = $("#pods tbody");
  const rows = new Map([...body.children].map((row) => [row.dataset.pod, row]));
  pods.forEach((pod, index) => {
    const row = rows.get(pod.uuid) || makeRow(pod);
    rows.delete(pod.uuid);
    updateRow(row, pod);
    if (body.children[index] !== row) body.insertBefore(row, body.children[index] || null);
  });
  for (const gone of rows.values()) gone.remove();
  $("#no-pods").hidden = pods.length > 0;
}

async function refresh() {
  try {
    pods = await api("GET", "/v1/pods");
    renderPods();
    if (logsPod) await loadLogs();
  } catch (error) {
    showError(`cannot list pods: ${error.message}`);
  }
}

// Events come in bursts (a start is several): one re-read per burst.
function scheduleRefresh() {
  if (refreshing) return;
  refreshing = setTimeout(async () => { await refresh(); refreshing = null; }, 50);
}

function openLogs(pod) {
  logsPod = pod;
  $("#logs-pod").textContent = pod.name;
  $("#logs-section").hidden = false;
  loadLogs();
}

async function loadLogs() {
  const pod = logsPod;
  try {
    const answer = await api("GET", `/v1/pods/${pod.uuid}/logs?lines=${LOG_LINES}`);
    const names = Object.keys(answer.apps);
    $("#logs").textContent = names.map((name) => names.length > 1
      ? answer.apps[name].split("\n").map((line) => `${name}| ${line}`).join("\n")
      : answer.apps[name]).join("\n");
  } catch (error) {
    $("#logs").textContent = `(${error.message})`;
  }
}

function addEvent(event) {
  const item = el("li", null, { "data-seq": event.seq, "data-type": event.type });
  const time = event.time ? new Date(event.time).toLocaleTimeString([], { hour12: false }) : "";
  item.append(el("span", event.seq, { class: "seq" }), el("span", time, { class: "time" }),
              el("span", event.type, { class: "type" }));
  const about = [event.pod_name, event.app, event.exit_status !== undefined
    ? `exit ${event.exit_status}` : null, event.signal ? `signal ${event.signal}` : null,
    event.reason].filter((part) => part !== undefined && part !== null);
  item.append(el("span", about.join(" "), { class: "about" }));
  item.title = event.time;
  const list = $("#events");
  list.prepend(item);
  while (list.children.length > FEED_SIZE) list.lastChild.remove();
}

function setConnection(state) {
  const node = $("#connection");
  node.dataset.state = state;
  node.textContent = state;
}

function follow() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const since = lastSeq === null ? "" : `?since=${lastSeq}`;
  const socket = new WebSocket(`${scheme}://${location.host}/v1/events${since}`);
  socket.addEventListener("open", () => { setConnection("live"); scheduleRefresh(); });
  socket.addEventListener("message", (message) => {
    const event = JSON.parse(message.data);
    if (event.type !== "heartbeat") {
      lastSeq = event.seq;
      addEvent(event);
    }
    scheduleRefresh();  // heartbeats keep memory and uptime current while nothing happens
  });
  socket.addEventListener("close", (closed) => {
    setConnection("offline");
    // 4410: our position left the retained log; follow from now on (the pods are re-read).
    if (closed.code === 4410) lastSeq = null;
    setTimeout(follow, 1000);
  });
}

async function start() {
  $("#logs-close").addEventListener("click", () => {
    logsPod = null;
    $("#logs-section").hidden = true;
  });
  try {
    const info = await api("GET", "/v1/info");
    $("#supervisor").textContent = `jetpack ${info.version}, supervisor pid ${info.pid}`;
    lastSeq = Math.max(0, info.events.last_seq - 50);  // the feed starts with recent history
  } catch (error) {
    showError(`cannot reach the supervisor: ${error.message}`);
  }
  await refresh();
  follow();
  setInterval(() => {  // the clock only: redraw uptimes, no request
    for (const cell of document.querySelectorAll("#pods td.uptime")) {
      const pod = pods.find((p) => p.uuid === cell.parentElement.dataset.pod);
      if (pod) cell.textContent = formatUptime(pod);
    }
  }, 1000);
}

start();

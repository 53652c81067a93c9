// The status page's poller: every PERIOD_MS it reads GET /v1/status and GET /health
// (paths relative to /ui, so the page also works behind a path prefix) and writes what
// they say into the elements by id. It keeps the last SAMPLES accuracy readings for
// the chart and the previous reading for the rates; nothing else is remembered.
"use strict";

const PERIOD_MS = 1500;
const TIMEOUT_MS = 4000;
const SAMPLES = 120;

const history = [];
let previous = null;
let lastSuccess = null;

const $ = (id) => document.getElementById(id);

function set(id, text) {
  $(id).textContent = text;
}

function count(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
}

function percent(x) {
  return x === null || x === undefined ? "–" : (x * 100).toFixed(1) + "%";
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 120) return s + " s";
  if (s < 7200) return Math.floor(s / 60) + " min";
  if (s < 172800) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d";
}

function light(el, status) {
  el.dataset.status = status || "unknown";
}

// GET `path` as JSON, whatever the status (/health answers 503 with its body when
// red); a failure names the path and what went wrong.
async function getJson(path) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, { cache: "no-store", signal: abort.signal });
    return { code: response.status, body: await response.json() };
  } catch (e) {
    if (e.name === "AbortError") throw new Error(path + " did not answer within " + TIMEOUT_MS + " ms");
    if (response) throw new Error(path + " answered " + response.status + " without JSON");
    throw new Error(path + ": " + e.message);
  } finally {
    clearTimeout(timer);
  }
}

// One row per voter, created the first time the voter appears.
function voterRow(name) {
  const id = "voter-" + name;
  let row = $(id);
  if (row) return row;
  row = document.createElement("tr");
  row.id = id;
  row.dataset.voter = name;
  for (const [cls, suffix] of [["name", null], ["weight", "weight-"], ["accuracy", "accuracy-"]]) {
    const cell = document.createElement("td");
    cell.className = cls;
    if (suffix) cell.id = suffix + name;
    else cell.textContent = name;
    row.appendChild(cell);
  }
  $("voters").appendChild(row);
  return row;
}

function renderVote(vote) {
  const names = new Set([...Object.keys(vote.weights), ...Object.keys(vote.accuracy)]);
  for (const name of names) {
    voterRow(name);
    const w = vote.weights[name];
    set("weight-" + name, w === undefined ? "–" : w.toFixed(3));
    set("accuracy-" + name, percent(vote.accuracy[name]));
  }
  for (const row of [...$("voters").children]) {
    if (!names.has(row.dataset.voter)) row.remove();
  }
}

// Per-second rates from the counters' change since the previous reading; none after
// a restart of the server (a counter went back) or on the first reading.
function renderRates(status, now) {
  const current = { at: now, rows: status.request_ids.next, labels: status.labels.received };
  if (previous && current.rows >= previous.rows && current.labels >= previous.labels) {
    const seconds = Math.max((current.at - previous.at) / 1000, 0.001);
    set("infer-rate", ((current.rows - previous.rows) / seconds).toFixed(1));
    set("label-rate", ((current.labels - previous.labels) / seconds).toFixed(1));
  } else {
    set("infer-rate", "–");
    set("label-rate", "–");
  }
  previous = current;
}

function renderChart(accuracy) {
  if (accuracy !== null && accuracy !== undefined) {
    history.push(accuracy);
    if (history.length > SAMPLES) history.shift();
  }
  // The samples held span the plot (x 50..1000, right of the axis labels); once
  // SAMPLES are held the oldest drop off.
  const step = 950 / Math.max(history.length - 1, 1);
  const points = history.map((a, i) => (50 + i * step).toFixed(1) + "," + (140 - a * 130).toFixed(1));
  $("accuracy-line").setAttribute("points", points.join(" "));
  $("accuracy-chart").dataset.samples = String(history.length);
  set("accuracy-samples", String(history.length));
}

function renderHealth(health) {
  const overall = $("overall");
  light(overall, health.status);
  overall.textContent = health.status;
  const list = $("components");
  const seen = new Set();
  for (const [name, component] of Object.entries(health.components || {})) {
    seen.add(name);
    const id = "component-" + name;
    let item = $(id);
    if (!item) {
      item = document.createElement("li");
      item.id = id;
      item.dataset.component = name;
      const badge = document.createElement("span");
      badge.className = "light";
      const detail = document.createElement("span");
      detail.className = "detail";
      item.append(badge, detail);
      list.appendChild(item);
    }
    const [badge, detail] = item.children;
    light(item, component.status);
    light(badge, component.status);
    badge.textContent = name;
    detail.textContent = component.detail;
  }
  for (const item of [...list.children]) {
    if (!seen.has(item.dataset.component)) item.remove();
  }
  const p99 = health.health_metrics ? health.health_metrics.inference_latency_p99_ms : null;
  set("p99", p99 === null || p99 === undefined ? "–" : p99.toFixed(2) + " ms");
}

function render(status, health, now) {
  set("version", status.version);
  set("uptime", duration(status.uptime_seconds));
  set("model-version", String(status.model_version));
  set("mode", status.mode);
  set("experiences", count(status.experiences));
  set("lambda", status.vote.lambda.toFixed(3));
  set("breaker", status.vote.breaker);
  renderVote(status.vote);

  const worker = status.worker;
  set("worker-state", worker.state);
  light($("worker-state"), worker.state === "running" ? "green" : "yellow");
  set("worker-pid", worker.pid === null ? "none" : String(worker.pid));
  set("worker-restarts", count(worker.restarts));
  set("worker-crash-streak", count(worker.crash_streak));

  set("ring-depth", count(status.ring.depth));
  set("ring-capacity", count(status.ring.capacity));
  set("wal-bytes", count(status.wal_bytes));
  set("updates-sent", count(status.updates.sent));
  set("updates-applied", count(status.updates.applied));
  set("queued", count(status.batcher.queued));
  set("queue-capacity", count(status.batcher.capacity));

  set("accuracy", percent(status.labels.accuracy));
  set("labels-scored", count(status.labels.scored));
  renderRates(status, now);
  renderChart(status.labels.accuracy);
  renderHealth(health);
}

function connected(ok, error) {
  const body = document.body;
  if (ok) {
    lastSuccess = new Date();
    body.classList.remove("stale");
    $("disconnected").hidden = true;
    body.dataset.refreshes = String(Number(body.dataset.refreshes) + 1);
    set("updated", lastSuccess.toLocaleTimeString("en-GB"));
  } else {
    body.classList.add("stale");
    $("disconnected").hidden = false;
    set("error", String(error && error.message ? error.message : error));
    set("stale-since", lastSuccess ? lastSuccess.toLocaleTimeString("en-GB") : "never");
    body.dataset.failures = String(Number(body.dataset.failures) + 1);
    // The server's colour is not known while it cannot be reached.
    light($("overall"), "unknown");
    $("overall").textContent = "unreachable";
    previous = null;
  }
}

async function refresh() {
  try {
    const [status, health] = await Promise.all([getJson("v1/status"), getJson("health")]);
    if (status.code !== 200) throw new Error("/v1/status answered " + status.code);
    if (!health.body || typeof health.body.status !== "string") {
      throw new Error("/health answered " + health.code + " without a status");
    }
    render(status.body, health.body, performance.now());
    connected(true);
  } catch (e) {
    connected(false, e);
  } finally {
    setTimeout(refresh, PERIOD_MS);
  }
}

refresh();

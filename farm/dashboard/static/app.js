// The dashboard page: reads /api/status every few seconds and draws it. Every value from the
// farm goes into the page through textContent or setAttribute, never innerHTML: payloads,
// exceptions and names are whatever a job put there.
"use strict";

const REFRESH_MS = 3000;
const TOKEN_KEY = "farm.dashboard.token";
const SVG = "http://www.w3.org/2000/svg";
const state = { queue: "", job: "", page: 0, pages: 1, failedTotal: null, selected: null };

function $(sel) { return document.querySelector(sel); }

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function row(cells, attrs) {
  const tr = el("tr", null, attrs);
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

function td(text, cls) { return el("td", text === null || text === undefined ? "-" : text, cls ? { class: cls } : {}); }

function fill(section, rows) {
  const body = $(section + " tbody");
  body.replaceChildren(...rows);
  const empty = $(section + " > .empty");
  if (empty) empty.hidden = rows.length > 0;
}

function show(id, text) {
  const node = $(id);
  node.textContent = text || "";
  node.hidden = !text;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined || isNaN(seconds)) return "-";
  seconds = Math.max(0, seconds);
  if (seconds < 90) return Math.round(seconds) + "s";
  if (seconds < 5400) return Math.round(seconds / 60) + "m";
  return (seconds / 3600).toFixed(1) + "h";
}

// ---- status -------------------------------------------------------------------------------

async function refresh() {
  let doc;
  try {
    const r = await fetch("/api/status", { cache: "no-store" });
    doc = await r.json();
    if (!r.ok) throw new Error(doc.error || r.statusText);
  } catch (e) {
    show("#error", "dashboard not reachable: " + e.message);
    return;
  }
  show("#error", doc.error ? "the farm could not be read (figures may be old): " + doc.error : "");
  $("#as-of").textContent = doc.as_of ? "as of " + new Date(doc.as_of * 1000).toLocaleTimeString() : "loading…";
  $("#notes").replaceChildren(...(doc.notes || []).map((n) => el("li", "warning: " + n)));
  drawQueues(doc);
  drawChart(doc.throughput || []);
  drawWorkers(doc);
  drawBatches(doc.batches || []);
  drawSchedule(doc.schedule || []);
  const failed = Object.values(doc.queues || {}).reduce((n, q) => n + (q.failed || 0), 0);
  if (doc.as_of && failed !== state.failedTotal) {
    state.failedTotal = failed;
    loadFailed();
  }
}

function drawQueues(doc) {
  const rows = [], paused = new Set(doc.paused || []);
  for (const conn of Object.keys(doc.connections || {}).sort()) {
    const queues = doc.connections[conn];
    for (const name of Object.keys(queues).sort()) {
      const q = queues[name], name_td = td(name, "name");
      if (paused.has(name)) name_td.appendChild(el("span", "paused", { class: "paused", title: "farmctl resume " + name }));
      const toggle = el("td");
      toggle.appendChild(el("button", paused.has(name) ? "resume" : "pause",
                            { type: "button", class: paused.has(name) ? "resume" : "pause", "data-queue": name }));
      rows.push(row([td(conn), name_td, ...["ready", "delayed", "reserved", "failed"].map((k) => td(q[k], "n " + k)),
                     toggle], { "data-connection": conn, "data-queue": name }));
    }
  }
  fill("#queues", rows);
}

function minuteOf(m) {
  if (typeof m === "number") return m < 1e12 ? m * 1000 : m;
  return Date.parse(m);
}

function drawChart(rows) {
  const now = Date.now(), start = now - 3600e3, width = 600, height = 120, top = 8, bottom = 16;
  const bins = Array.from({ length: 60 }, () => ({ done: 0, failed: 0, other: 0 }));
  for (const r of rows) {
    const i = Math.floor((minuteOf(r.minute) - start) / 60e3);
    if (i < 0 || i >= 60) continue;
    const kind = r.outcome === "done" || r.outcome === "failed" ? r.outcome : "other";
    bins[i][kind] += Number(r.n) || 0;
  }
  const most = Math.max(1, ...bins.map((b) => b.done + b.failed + b.other));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const scale = (height - top - bottom) / most, w = width / 60;
  const base = document.createElementNS(SVG, "line");
  for (const [k, v] of Object.entries({ x1: 0, x2: width, y1: height - bottom, y2: height - bottom })) base.setAttribute(k, v);
  svg.appendChild(base);
  bins.forEach((b, i) => {
    let y = height - bottom;
    for (const kind of ["done", "failed", "other"]) {
      if (!b[kind]) continue;
      const h = b[kind] * scale, rect = document.createElementNS(SVG, "rect");
      y -= h;
      for (const [k, v] of Object.entries({ x: i * w + 1, y, width: w - 2, height: h, class: kind })) rect.setAttribute(k, v);
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${new Date(start + i * 60e3).toLocaleTimeString()}: ${b[kind]} ${kind}`;
      rect.appendChild(title);
      svg.appendChild(rect);
    }
  });
  for (const [x, label, anchor] of [[0, "-60 min", "start"], [width / 2, "-30 min", "middle"], [width, "now", "end"]]) {
    const t = document.createElementNS(SVG, "text");
    for (const [k, v] of Object.entries({ x, y: height - 3, class: "axis", "text-anchor": anchor })) t.setAttribute(k, v);
    t.textContent = label;
    svg.appendChild(t);
  }
  const peak = document.createElementNS(SVG, "text");
  for (const [k, v] of Object.entries({ x: 2, y: top + 2, class: "axis" })) peak.setAttribute(k, v);
  peak.textContent = rows.length ? `peak ${most}/min` : "no counts in the last hour";
  svg.appendChild(peak);
  $("#chart").replaceChildren(svg);
}

function drawWorkers(doc) {
  const now = Date.now() / 1000;
  fill("#workers", (doc.workers || []).map((w) => {
    const job = w.job ? w.job + (w.jobs > 1 ? ` (+${w.jobs - 1})` : "") : "-";
    return row([td(w.pipeline), td(w.host), td(w.pid, "n"), td(w.state, "state state-" + w.state), td(job, "job"),
                td(w.job_seconds === null || w.job_seconds === undefined ? "-" : ago(w.job_seconds), "n"),
                td(w.done, "n"), td(w.rss_mb === undefined ? null : w.rss_mb + " MB", "n"),
                td(ago(now - w.heartbeat) + " ago", "n"), td(w.stale ? "STALE" : "current", w.stale ? "stale" : "")],
               { "data-pid": w.pid, "data-host": w.host });
  }));
  const sup = doc.supervisor;
  $("#supervisor").hidden = !sup;
  $("#supervisor-none").hidden = !!sup;
  if (sup) {
    $("#supervisor tbody").replaceChildren(...sup.map((p) =>
      row([td(p.group + ":" + p.name), td(p.state, "state-" + p.state), td(p.pid || "-", "n")])));
  }
}

function drawBatches(batches) {
  const list = $("#batches .list");
  list.replaceChildren(...batches.map((b) => {
    const box = el("div", null, { class: "batch", "data-id": b.id });
    const pct = Math.max(0, Math.min(100, Number(b.progress) || 0));
    box.appendChild(el("div", `${b.name || b.id}: ${b.total - b.pending} of ${b.total} finished` +
                              (b.failed ? `, ${b.failed} failed` : "") + (b.cancelled ? " (cancelled)" : "")));
    const bar = el("div", null, { class: "bar" }), fillBar = el("div");
    fillBar.style.width = pct + "%";
    bar.appendChild(fillBar);
    box.appendChild(bar);
    return box;
  }));
  $("#batches > .empty").hidden = batches.length > 0;
}

function drawSchedule(entries) {
  fill("#schedule", entries.map((s) => row([
    td(s.name), td(s.cron), td(s.job), td(s.queue), td(s.timezone),
    td((s.next || []).map((t) => new Date(t).toLocaleString()).join("\n"), "next"),
  ], { "data-name": s.name })));
}

// ---- failed jobs --------------------------------------------------------------------------

async function loadFailed() {
  const params = new URLSearchParams({ queue: state.queue, job: state.job, page: state.page });
  let doc;
  try {
    const r = await fetch("/api/failed?" + params, { cache: "no-store" });
    doc = await r.json();
    if (!r.ok) throw new Error(doc.error || r.statusText);
  } catch (e) {
    show("#message", "failed jobs could not be read: " + e.message);
    return;
  }
  state.pages = doc.pages;
  if (state.page >= doc.pages && doc.pages > 0 && state.page > 0) {
    state.page = doc.pages - 1;
    return loadFailed();
  }
  $("#failed-total").textContent = `(${doc.total})`;
  $("#page").textContent = `page ${doc.page + 1} of ${doc.pages}`;
  $("#prev").disabled = doc.page === 0;
  $("#next").disabled = doc.page + 1 >= doc.pages;
  fill("#failed", doc.items.map((f) => {
    const actions = el("td");
    actions.appendChild(el("button", "retry", { type: "button", class: "retry", "data-id": f.id }));
    actions.appendChild(el("button", "forget", { type: "button", class: "forget", "data-id": f.id }));
    const tr = row([td(String(f.id).slice(0, 8), "id"), td(f.queue, "queue"), td(f.job, "job"), td(f.attempts, "n"),
                    td(new Date(f.failed_at).toLocaleString(), "when"), td(f.exception, "exception"), actions],
                   { "data-id": f.id, class: "clickable" + (f.id === state.selected ? " selected" : "") });
    tr.querySelector("td.exception").setAttribute("title", f.exception || "");
    tr.querySelector("td.id").setAttribute("title", f.id);
    return tr;
  }));
}

async function showDetails(id) {
  state.selected = id;
  const r = await fetch("/api/failed/" + encodeURIComponent(id), { cache: "no-store" });
  const doc = await r.json();
  if (!r.ok) {
    show("#message", doc.error);
    $("#details").hidden = true;
    return;
  }
  $("#details-id").textContent = doc.id;
  $("#details-payload").textContent = typeof doc.payload === "string" ? doc.payload : JSON.stringify(doc.payload, null, 2);
  $("#details-exception").textContent = doc.exception;
  $("#details").hidden = false;
  for (const tr of document.querySelectorAll("#failed tbody tr")) tr.classList.toggle("selected", tr.dataset.id === id);
}

// POST an action with the token the person typed; true when it was done.
async function post(url, what, done) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    show("#message", `enter the dashboard's token (FARM_DASHBOARD_TOKEN) to ${what}`);
    $("#token").focus();
    return false;
  }
  const r = await fetch(url, { method: "POST", headers: { Authorization: "Bearer " + token } });
  const doc = await r.json().catch(() => ({}));
  if (r.status === 401) show("#message", "the token was refused: " + doc.error);
  else if (r.status === 403) show("#message", "this dashboard is read-only: " + doc.error);
  else if (!r.ok) show("#message", `${what}: ${doc.error || r.statusText}`);
  else show("#message", done);
  return r.ok;
}

async function act(id, verb) {
  const ok = await post(`/api/failed/${encodeURIComponent(id)}/${verb}`, `${verb} job ${id}`,
                        verb === "retry" ? `job ${id} is back on its queue` : `job ${id} forgotten`);
  if (id === state.selected && ok) { state.selected = null; $("#details").hidden = true; }
  await loadFailed();
  refresh();
}

async function toggleQueue(queue, verb) {
  await post(`/api/queues/${encodeURIComponent(queue)}/${verb}`, `${verb} queue ${queue}`,
             verb === "pause" ? `queue ${queue} paused: workers take no more of its jobs`
                              : `queue ${queue} resumed`);
  refresh();
}

// ---- one job ------------------------------------------------------------------------------

async function lookUp(id) {
  const table = $("#lookup-result");
  if (!id) { table.hidden = true; return; }
  const r = await fetch("/api/jobs/" + encodeURIComponent(id), { cache: "no-store" });
  const doc = await r.json().catch(() => ({}));
  if (!r.ok) {
    show("#message", r.status === 404 ? `no job with id ${id}` : `looking up ${id}: ${doc.error || r.statusText}`);
    table.hidden = true;
    return;
  }
  const actions = el("td");
  if (doc.state === "ready" || doc.state === "delayed") {
    actions.appendChild(el("button", "cancel", { type: "button", class: "cancel", "data-id": doc.id }));
  }
  $("#lookup-result tbody").replaceChildren(row([td(doc.id, "id"), td(doc.state, "state state-" + doc.state),
    td(doc.queue, "queue"), td(doc.job, "job"), td(doc.attempts, "n"), td(doc.worker, "worker"), actions],
    { "data-id": doc.id }));
  table.hidden = false;
}

async function cancelJob(id) {
  if (await post(`/api/jobs/${encodeURIComponent(id)}/cancel`, `cancel job ${id}`, `job ${id} cancelled`)) {
    $("#lookup-result").hidden = true;
  }
  refresh();
}

function tokenState() {
  $("#token-state").textContent = sessionStorage.getItem(TOKEN_KEY) ? "token set for this tab" : "no token: read-only";
}

function start() {
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("#token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("#token").value = "";
    tokenState();
  });
  $("#token-clear").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); tokenState(); });
  $("#failed-search").addEventListener("submit", (e) => {
    e.preventDefault();
    state.queue = $("#search-queue").value.trim();
    state.job = $("#search-job").value.trim();
    state.page = 0;
    loadFailed();
  });
  $("#prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); loadFailed(); });
  $("#next").addEventListener("click", () => { state.page += 1; loadFailed(); });
  $("#failed tbody").addEventListener("click", (e) => {
    const button = e.target.closest("button");
    if (button) return act(button.dataset.id, button.classList.contains("retry") ? "retry" : "forget");
    const tr = e.target.closest("tr");
    if (tr) showDetails(tr.dataset.id);
  });
  $("#queues tbody").addEventListener("click", (e) => {
    const button = e.target.closest("button");
    if (button) toggleQueue(button.dataset.queue, button.classList.contains("pause") ? "pause" : "resume");
  });
  $("#lookup-form").addEventListener("submit", (e) => {
    e.preventDefault();
    lookUp($("#lookup-id").value.trim());
  });
  $("#lookup-result tbody").addEventListener("click", (e) => {
    const button = e.target.closest("button.cancel");
    if (button) cancelJob(button.dataset.id);
  });
  tokenState();
  refresh();
  setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);

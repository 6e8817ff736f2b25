// The page: forms to submit jobs and a table of them. The socket, reconnects and the protocol are the
// client's (client.js); the draw calendar is the server's; this module keeps the rows and renders them.
import { Client } from "./client.js";
import { drawDaysInMonth, latestDraw } from "./draws.js";
import { formatDuration, formatElapsed, formatRate, weekdayDate } from "./format.js";

const STORAGE_KEY = "ami.jobs.v2";
const OLD_STORAGE_KEY = "ami.jobs.v1";  // kept display labels as states; read once, then dropped
const TOKEN_KEY = "ami.token";  // sessionStorage: this tab only, never in the URL, history or server logs
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const QUEUE_POLL_MS = 2000;
const LABELS = { sending: "sending", queued: "queued", running: "running", succeeded: "done", failed: "failed",
                 cancelled: "cancelled" };
const FROM_LABEL = { done: "succeeded" };
const KIND_LABELS = { "audio.length": "Audio length", "euro.results": "EuroMillions" };

const $ = (selector) => document.querySelector(selector);
const rows = new Map(load().map((row) => [row.key, row]));  // by the ref the page submitted it with
const byJob = new Map([...rows.values()].filter((row) => row.job).map((row) => [row.job, row]));
const elements = new Map();
let client = null;
let calendar = null;

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "null");
    if (Array.isArray(saved)) return saved;
    const old = JSON.parse(localStorage.getItem(OLD_STORAGE_KEY) || "[]");
    localStorage.removeItem(OLD_STORAGE_KEY);
    return Array.isArray(old) ? old.map((row) => ({ ...row, state: FROM_LABEL[row.state] || row.state })) : [];
  } catch {
    return [];
  }
}

function save() {
  localStorage.setItem(STORAGE_KEY, JSON.stringify([...rows.values()]));
}

// --- the connection ---------------------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function setConnection(state, text) {
  const badge = $("#connection");
  badge.dataset.state = state;
  badge.textContent = text;
  for (const button of document.querySelectorAll(".forms form button")) button.disabled = state !== "open";
}

function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  setConnection("closed", "This server needs a token");
  $("#token-message").textContent = message;
  $("#token-form").hidden = false;
  $("#token").focus();
}

// Ask the server what the page needs (401 when it has tokens and this tab has none that is valid).
async function start() {
  let response = null;
  try {
    response = await fetch("/config.json", { headers: token() ? { Authorization: `Bearer ${token()}` } : {} });
  } catch {
    response = null;
  }
  if (response && response.status === 401) {
    askForToken(token() ? "That token was refused." : "");
    return;
  }
  if (response && response.ok) {
    const config = await response.json();
    if (config.dashboard_url) Object.assign($("#dashboard"), { href: config.dashboard_url, hidden: false });
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  client = new Client({
    url: `${scheme}://${location.host}/ws`,
    token: token(),
    unfinished: () => [...rows.values()].filter((row) => row.job && !TERMINAL.has(row.state)).map((row) => row.job),
  });
  client.addEventListener("connection", ({ detail }) => {
    if (detail.state === "unauthorized") askForToken(token() ? "That token was refused." : "");
    else setConnection(detail.state, detail.text);
    if (detail.state === "open" && !calendar) loadCalendar();
  });
  client.addEventListener("dropped", () => {
    for (const row of rows.values()) {
      if (row.state === "sending") update(row, { state: "failed", error: "The connection dropped before the server accepted this job; submit it again." });
    }
  });
  client.addEventListener("accepted", ({ detail }) => {
    const row = rows.get(detail.ref);
    if (!row) return;
    byJob.set(detail.job, row);
    update(row, { job: detail.job, state: "queued", position: detail.position, etaMs: detail.etaMs });
  });
  client.addEventListener("state", ({ detail }) => {
    const row = byJob.get(detail.job);
    if (row && !TERMINAL.has(row.state)) update(row, { state: detail.state, position: detail.position, etaMs: detail.etaMs });
  });
  // A queued job's place in the queue changes as the jobs ahead of it start: ask again every few seconds.
  setInterval(() => {
    if (!client.open) return;
    for (const row of rows.values()) if (row.job && row.state === "queued") client.status(row.job);
  }, QUEUE_POLL_MS);
  client.addEventListener("result", ({ detail }) => {
    const row = byJob.get(detail.job);
    if (row) update(row, { state: detail.state, result: detail.result, error: detail.error, elapsedMs: detail.elapsedMs });
  });
  client.addEventListener("refused", ({ detail }) => {
    const row = (detail.job && byJob.get(detail.job)) || rows.get(detail.ref);
    if (!row) return;
    const error = detail.code === "not_found" ? "The server no longer knows this job." : detail.message;
    update(row, { state: "failed", error });
  });
  client.connect();
}

async function loadCalendar() {
  const answer = await client.kinds();
  const euro = (answer.kinds || []).find((kind) => kind.kind === "euro.results");
  if (!euro || !euro.calendar) return;
  calendar = euro.calendar;
  const latest = latestDraw(calendar);
  const month = $("#euro-month");
  month.min = calendar.first_draw.slice(0, 7);
  month.max = latest.slice(0, 7);
  month.value = latest.slice(0, 7);
  fillDraws(latest);
}

// --- jobs -------------------------------------------------------------------------------------------

function submit(kind, args, input) {
  const ref = client && client.open ? client.submit(kind, args) : null;
  const key = ref || `local-${Date.now().toString(36)}`;
  const row = { key, kind, input, job: null, state: "sending", result: null, error: null, elapsedMs: null };
  rows.set(key, row);
  update(row, ref ? {} : { state: "failed", error: "Not connected; submit again once connected." });
}

function update(row, changes) {
  Object.assign(row, changes);
  save();
  render(row);
}

function render(row) {
  let tr = elements.get(row.key);
  if (!tr) {
    tr = document.createElement("tr");
    tr.dataset.key = row.key;
    tr.innerHTML = `<td data-label="Kind" class="kind"></td><td data-label="Input" class="input"></td>
      <td data-label="State" class="state" aria-live="polite"></td><td data-label="Time" class="time"></td>
      <td data-label="Result" class="result"></td><td class="actions"></td>`;
    $("#jobs tbody").prepend(tr);
    elements.set(row.key, tr);
  }
  tr.dataset.job = row.job || "";
  tr.querySelector(".kind").textContent = KIND_LABELS[row.kind] || row.kind;
  tr.querySelector(".input").textContent = row.input;
  const state = tr.querySelector(".state");
  state.textContent = LABELS[row.state] || row.state;
  if (row.state === "queued" && row.position != null) state.textContent += ` (${queuePlace(row)})`;
  state.dataset.state = row.state;
  tr.querySelector(".time").textContent = formatElapsed(row.elapsedMs);
  renderResult(tr.querySelector(".result"), row);
  const actions = tr.querySelector(".actions");
  actions.replaceChildren();
  if (row.job && !TERMINAL.has(row.state)) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary cancel";
    button.textContent = "Cancel";
    button.setAttribute("aria-label", `Cancel ${KIND_LABELS[row.kind] || row.kind} job for ${row.input}`);
    button.addEventListener("click", () => client && client.cancel(row.job));
    actions.append(button);
  }
  $("#empty").hidden = rows.size > 0;
}

// "next" or "3 ahead", and "about 2 s" once the server can tell.
function queuePlace(row) {
  const place = row.position === 0 ? "next" : `${row.position} ahead`;
  return row.etaMs == null ? place : `${place}, about ${formatElapsed(row.etaMs)}`;
}

function renderResult(cell, row) {
  cell.replaceChildren();
  if (row.error) {
    cell.innerHTML = `<span class="error"></span>`;
    cell.firstChild.textContent = row.error;
  } else if (row.result && row.kind === "audio.length") {
    const r = row.result;
    cell.innerHTML = `<strong class="duration"></strong> <span class="muted"></span>`;
    cell.querySelector(".duration").textContent = formatDuration(r.duration);
    cell.querySelector(".muted").textContent =
      `${formatRate(r.sample_rate)} · ${r.channels} ch · ${r.format} · ${r.frames.toLocaleString("en")} frames`;
  } else if (row.result && row.kind === "euro.results") {
    const list = document.createElement("ul");
    list.className = "balls";
    list.setAttribute("aria-label", `Numbers ${row.result.numbers.join(", ")}; lucky stars ${row.result.stars.join(", ")}`);
    for (const number of row.result.numbers) list.append(Object.assign(document.createElement("li"), { textContent: number, className: "ball" }));
    for (const star of row.result.stars) list.append(Object.assign(document.createElement("li"), { textContent: star, className: "star" }));
    cell.append(list);
  } else if (row.result) {
    cell.textContent = JSON.stringify(row.result);
  }
}

// --- forms ------------------------------------------------------------------------------------------

function fillDraws(selected) {
  const month = $("#euro-month").value;
  const select = $("#euro-date");
  select.replaceChildren();
  const days = calendar && month ? drawDaysInMonth(calendar, month) : [];
  for (const day of days) select.append(new Option(weekdayDate(day), day, false, day === selected));
  if (!days.length) select.append(new Option(calendar ? "No draws that month" : "Loading draws…", ""));
}

function setUp() {
  $("#euro-month").addEventListener("change", () => fillDraws());
  fillDraws();
  $("#audio-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const url = $("#audio-url").value.trim();
    submit("audio.length", { url }, url);
    $("#audio-url").select();
  });
  $("#euro-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const date = $("#euro-date").value;
    if (date) submit("euro.results", { date }, weekdayDate(date));
  });
  $("#clear").addEventListener("click", () => {
    for (const row of [...rows.values()]) {
      if (TERMINAL.has(row.state)) {
        rows.delete(row.key);
        byJob.delete(row.job);
        elements.get(row.key)?.remove();
        elements.delete(row.key);
      }
    }
    save();
    $("#empty").hidden = rows.size > 0;
  });
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
    $("#token").value = "";
    $("#token-form").hidden = true;
    start();
  });
  const fromUrl = new URLSearchParams(location.search).get("token");  // an old bookmark: take it, drop it
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    history.replaceState(null, "", location.pathname);
  }
  for (const row of rows.values()) {
    if (row.state === "sending") Object.assign(row, { state: "failed", error: "The page closed before the server accepted this job; submit it again." });
    render(row);
  }
  $("#empty").hidden = rows.size > 0;
  start();
}

setUp();

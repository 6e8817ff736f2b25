// The page: submit jobs, watch results arrive, survive dropped connections and reloads.
import { FIRST_DRAW, drawDaysInMonth, isoDate } from "./draws.js";
import { formatDuration, formatElapsed, formatRate, weekdayDate } from "./format.js";

const STORAGE_KEY = "ami.jobs.v1";
const TOKEN_KEY = "ami.token";  // sessionStorage: this tab only, never in the URL, history or server logs
const TERMINAL = new Set(["done", "failed", "cancelled"]);
const STATES = { queued: "queued", running: "running", succeeded: "done", failed: "failed", cancelled: "cancelled" };
const KIND_LABELS = { "audio.length": "Audio length", "euro.results": "EuroMillions" };

const $ = (selector) => document.querySelector(selector);
const rows = new Map(load().map((row) => [row.key, row]));
const elements = new Map();
let socket = null;
let attempt = 0;
let counter = 0;

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "[]");
    return Array.isArray(saved) ? saved : [];
  } catch {
    return [];
  }
}

function save() {
  localStorage.setItem(STORAGE_KEY, JSON.stringify([...rows.values()]));
}

// --- the connection -----------------------------------------------------------------------------

function setConnection(state, text) {
  const badge = $("#connection");
  badge.dataset.state = state;
  badge.textContent = text;
  for (const button of document.querySelectorAll(".forms form button")) button.disabled = state !== "open";
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function authHeaders() {
  return token() ? { Authorization: `Bearer ${token()}` } : {};
}

// The token form: shown when the server asks for a token, or refused the one given.
function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  setConnection("closed", "This server needs a token");
  $("#token-message").textContent = message;
  $("#token-form").hidden = false;
  $("#token").focus();
}

function connect() {
  setConnection("connecting", attempt ? "Reconnecting…" : "Connecting…");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${scheme}://${location.host}/ws`);
  socket.addEventListener("open", () => {
    attempt = 0;
    if (token()) send({ op: "auth", token: token(), ref: "auth" });  // first frame: no secret in the URL
    else ready();
  });
  socket.addEventListener("message", (event) => receive(JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    if (event.code === 4001) {
      askForToken(token() ? "That token was refused." : "");
      return;
    }
    for (const row of rows.values()) {
      if (row.state === "sending") update(row, { state: "failed", error: "The connection dropped before the server accepted this job; submit it again." });
    }
    const delay = Math.min(10000, 500 * 2 ** attempt) * (0.8 + Math.random() * 0.4);
    attempt += 1;
    setConnection("closed", `Disconnected; reconnecting in ${Math.ceil(delay / 1000)} s`);
    setTimeout(connect, delay);
  });
}

function send(frame) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

function ready() {
  setConnection("open", "Connected");
  const unfinished = [...rows.values()].filter((row) => row.job && !TERMINAL.has(row.state)).map((row) => row.job);
  if (unfinished.length) send({ op: "watch", jobs: unfinished, ref: "resume" });
}

function receive(frame) {
  if (frame.type === "authorized") {
    ready();
    return;
  }
  if (frame.type === "error" && frame.code === "unauthorized") return;  // the server closes next (4001)
  const byJob = frame.job && [...rows.values()].find((row) => row.job === frame.job);
  if (frame.type === "accepted") {
    const row = rows.get(frame.ref);
    if (!row) return;
    update(row, { job: frame.job, state: "queued" });
    send({ op: "status", job: frame.job });
  } else if (frame.type === "status" && byJob && !TERMINAL.has(byJob.state)) {
    update(byJob, { state: STATES[frame.state] || frame.state });
  } else if (frame.type === "result" && byJob) {
    update(byJob, {
      state: STATES[frame.status], result: frame.result ?? null, error: frame.error ? frame.error.message : null,
      elapsedMs: frame.elapsed_ms ?? null,
    });
  } else if (frame.type === "error") {
    const row = byJob || rows.get(frame.ref);
    if (!row) return;
    const error = frame.code === "not_found" ? "The server no longer knows this job." : frame.message;
    update(row, { state: "failed", error });
  }
}

// --- jobs -------------------------------------------------------------------------------------------

function submit(kind, args, input) {
  const key = `p${Date.now().toString(36)}-${(counter++).toString(36)}`;
  const row = { key, kind, input, job: null, state: "sending", result: null, error: null, elapsedMs: null };
  rows.set(key, row);
  update(row, {});
  if (!send({ op: "submit", kind, args, ref: key })) {
    update(row, { state: "failed", error: "Not connected; submit again once connected." });
  }
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
  state.textContent = row.state;
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
    button.addEventListener("click", () => send({ op: "cancel", job: row.job }));
    actions.append(button);
  }
  $("#empty").hidden = rows.size > 0;
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

function fillDraws() {
  const month = $("#euro-month").value;
  const select = $("#euro-date");
  select.replaceChildren();
  const days = month ? drawDaysInMonth(month) : [];
  for (const day of days) select.append(new Option(weekdayDate(day), day));
  if (!days.length) select.append(new Option("No draws that month", ""));
}

function setUp() {
  const today = isoDate(new Date());
  const month = $("#euro-month");
  month.min = FIRST_DRAW.slice(0, 7);
  month.max = today.slice(0, 7);
  month.value = today.slice(0, 7);
  if (!drawDaysInMonth(month.value).length) {
    const previous = new Date();
    previous.setUTCDate(0);
    month.value = isoDate(previous).slice(0, 7);
  }
  month.addEventListener("change", fillDraws);
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

// Ask the server what the page needs (it answers 401 when it has tokens and we have none that is valid).
async function start() {
  let response;
  try {
    response = await fetch("/config.json", { headers: authHeaders() });
  } catch {
    response = null;
  }
  if (response && response.status === 401) {
    askForToken(token() ? "That token was refused." : "");
    return;
  }
  if (response && response.ok) {
    const config = await response.json();
    if (config.dashboard_url) {
      const link = $("#dashboard");
      link.href = config.dashboard_url;
      link.hidden = false;
    }
  }
  connect();
}

setUp();

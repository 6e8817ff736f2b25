// The page: forms to submit jobs and a table of them. The socket, reconnects and the protocol are the
// client's (client.js); the forms and the draw calendar are the server's (each kind declares its form); this
// module keeps the rows and renders them, each result by its shape (a timeline for segments).
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
const titles = new Map();  // kind -> its form's title, once the server has described its kinds

const $ = (selector) => document.querySelector(selector);
const rows = new Map(load().map((row) => [row.key, row]));  // by the ref the page submitted it with
const byJob = new Map([...rows.values()].filter((row) => row.job).map((row) => [row.job, row]));
const elements = new Map();
let client = null;
let calendar = null;
let described = false;

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
    seen: (job) => byJob.get(job)?.seq || 0,
  });
  client.addEventListener("connection", ({ detail }) => {
    if (detail.state === "unauthorized") askForToken(token() ? "That token was refused." : "");
    else setConnection(detail.state, detail.text);
    if (detail.state === "open" && !described) describeKinds();
  });
  client.addEventListener("progress", ({ detail }) => {
    const row = byJob.get(detail.job);
    if (!row || TERMINAL.has(row.state) || detail.seq <= (row.seq || 0)) return;
    const data = detail.data || {};
    update(row, { state: "running", seq: detail.seq, segments: [...(row.segments || []), ...(data.segments || [])],
                  doneSeconds: data.done_seconds ?? row.doneSeconds ?? null });
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

async function describeKinds() {
  described = true;
  const answer = await client.kinds();
  const kinds = (answer.kinds || []).filter((kind) => kind.form && kind.form.fields);
  for (const kind of kinds) titles.set(kind.kind, kind.form.title || kind.kind);
  renderForms(kinds);
  setConnection(client.state, $("#connection").textContent);
  for (const row of rows.values()) render(row);
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
  tr.querySelector(".kind").textContent = titles.get(row.kind) || row.kind;
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
    button.setAttribute("aria-label", `Cancel ${titles.get(row.kind) || row.kind} job for ${row.input}`);
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
  } else if (row.result?.segments || row.segments) {
    renderTimeline(cell, row);
  } else if (row.result && "frames" in row.result && "sample_rate" in row.result) {
    const r = row.result;
    cell.innerHTML = `<strong class="duration"></strong> <span class="muted"></span>`;
    cell.querySelector(".duration").textContent = formatDuration(r.duration);
    cell.querySelector(".muted").textContent =
      `${formatRate(r.sample_rate)} · ${r.channels} ch · ${r.format} · ${r.frames.toLocaleString("en")} frames`;
  } else if (row.result?.numbers && row.result?.stars) {
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

// Stretches found (speech) on a bar of the audio's length, filled in as progress frames arrive: while the job
// runs the bar spans what has been listened to so far.
function renderTimeline(cell, row) {
  const segments = row.result?.segments || row.segments || [];
  const done = row.result?.duration ?? row.doneSeconds ?? 0;
  const span = Math.max(done, ...segments.map((segment) => segment.end), 0.001);
  const bar = document.createElement("div");
  bar.className = "timeline";
  bar.setAttribute("role", "img");
  const spoken = segments.reduce((total, segment) => total + segment.end - segment.start, 0);
  const words = segments.map((segment) => `${formatDuration(segment.start)} to ${formatDuration(segment.end)}`);
  bar.setAttribute("aria-label", segments.length ? `Speech ${words.join(", ")}` : "No speech found yet");
  for (const segment of segments) {
    const mark = document.createElement("span");
    mark.className = "segment";
    mark.style.left = `${(100 * segment.start) / span}%`;
    mark.style.width = `${Math.max((100 * (segment.end - segment.start)) / span, 0.3)}%`;
    bar.append(mark);
  }
  const summary = document.createElement("span");
  summary.className = "muted";
  const finished = row.result ? ` of ${formatDuration(row.result.duration)}` : ` in the first ${formatDuration(done)}`;
  summary.textContent = `${segments.length} ${segments.length === 1 ? "stretch" : "stretches"} of speech, ` +
    `${formatDuration(spoken)}${finished}`;
  cell.append(bar, summary);
}

// --- forms ------------------------------------------------------------------------------------------

// One form per kind, from the fields it declares: url, text and number inputs, and draw-date (a month, then the
// draw days of that month from the kind's calendar).
function renderForms(kinds) {
  const section = $(".forms");
  section.replaceChildren();
  for (const kind of kinds) {
    const prefix = kind.kind.replace(/[^A-Za-z0-9]+/g, "-");
    const form = document.createElement("form");
    form.id = `${prefix}-form`;
    form.append(Object.assign(document.createElement("h2"), { textContent: kind.form.title || kind.kind }));
    const row = Object.assign(document.createElement("div"), { className: "row" });
    const readers = [];
    for (const field of kind.form.fields) readers.push(addField(row, prefix, field, kind));
    const button = Object.assign(document.createElement("button"), { type: "submit", textContent: kind.form.button || "Submit" });
    row.append(button);
    form.append(row);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const values = readers.map((read) => read());
      if (values.some((value) => value == null)) return;
      const args = Object.fromEntries(values.map(({ arg, value }) => [arg, value]));
      submit(kind.kind, args, values.map(({ shown }) => shown).join(" "));
      form.querySelector("input[type=url], input[type=text]")?.select();
    });
    section.append(form);
  }
}

// A field's inputs in `row`; returns a reader of its value ({arg, value, shown}, or null when it has none).
function addField(row, prefix, field, kind) {
  const id = `${prefix}-${field.arg}`;
  const labelled = (label, input) => {
    const box = document.createElement("div");
    box.append(Object.assign(document.createElement("label"), { htmlFor: input.id, textContent: label }), input);
    row.append(box);
    return input;
  };
  if (field.input === "draw-date" && kind.calendar) {
    calendar = kind.calendar;
    const month = labelled("Month", Object.assign(document.createElement("input"), { id: `${prefix}-month`, type: "month", required: true }));
    const select = labelled(field.label, Object.assign(document.createElement("select"), { id, required: true }));
    const latest = latestDraw(calendar);
    Object.assign(month, { min: calendar.first_draw.slice(0, 7), max: latest.slice(0, 7), value: latest.slice(0, 7) });
    month.addEventListener("change", () => fillDraws(month, select));
    fillDraws(month, select, latest);
    return () => (select.value ? { arg: field.arg, value: select.value, shown: weekdayDate(select.value) } : null);
  }
  const input = labelled(field.label, Object.assign(document.createElement("input"), {
    id, type: field.input === "number" ? "number" : field.input === "url" ? "url" : "text", required: true,
    placeholder: field.placeholder || "", autocomplete: field.input === "url" ? "url" : "off" }));
  row.lastChild.classList.add("grow");
  return () => {
    const text = input.value.trim();
    return text ? { arg: field.arg, value: field.input === "number" ? Number(text) : text, shown: text } : null;
  };
}

function fillDraws(month, select, selected) {
  select.replaceChildren();
  const days = calendar && month.value ? drawDaysInMonth(calendar, month.value) : [];
  for (const day of days) select.append(new Option(weekdayDate(day), day, false, day === selected));
  if (!days.length) select.append(new Option(calendar ? "No draws that month" : "Loading draws…", ""));
}

function setUp() {
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

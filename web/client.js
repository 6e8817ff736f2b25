// A client of protocol v1: it owns the socket, reconnects with backoff, presents the token in the first
// frame, watches unfinished jobs again after a drop, and matches answers to requests by `ref`.
// The page only listens to its events and renders.

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export class Client extends EventTarget {
  constructor({ url, token = null, unfinished = () => [], seen = () => 0 }) {
    super();
    this.url = url;
    this.token = token;
    this.unfinished = unfinished;  // the job ids to watch again after a (re)connect
    this.seen = seen;  // a job's last progress seq the page has: only later ones are sent again
    this.socket = null;
    this.attempt = 0;
    this.counter = 0;
    this.pending = new Map();  // ref -> resolve, for requests answered once (kinds)
  }

  connect() {
    this.#state("connecting", this.attempt ? "Reconnecting…" : "Connecting…");
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.attempt = 0;
      if (this.token) this.#send({ op: "auth", token: this.token, ref: "auth" });  // no secret in the URL
      else this.#ready();
    });
    socket.addEventListener("message", (event) => this.#receive(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      if (socket !== this.socket) return;
      if (event.code === 4001) {
        this.#state("unauthorized", "This server needs a token");
        return;
      }
      this.#emit("dropped", {});
      const delay = Math.min(10000, 500 * 2 ** this.attempt) * (0.8 + Math.random() * 0.4);
      this.attempt += 1;
      this.#state("closed", `Disconnected; reconnecting in ${Math.ceil(delay / 1000)} s`);
      setTimeout(() => this.connect(), delay);
    });
  }

  get open() {
    return this.state === "open";
  }

  // A new ref for a submission; `accepted` and `refused` events carry it back.
  submit(kind, args) {
    const ref = `p${Date.now().toString(36)}-${(this.counter++).toString(36)}`;
    return this.#send({ op: "submit", kind, args, ref }) ? ref : null;
  }

  cancel(job) {
    this.#send({ op: "cancel", job });
  }

  // Ask where a job stands; the answer comes as a `state` event (with its place in the queue while queued).
  status(job) {
    this.#send({ op: "status", job });
  }

  watch(jobs) {
    if (!jobs.length) return;
    const seen = Object.fromEntries(jobs.map((job) => [job, this.seen(job)]).filter(([, seq]) => seq > 0));
    this.#send({ op: "watch", jobs, ref: "watch", ...(Object.keys(seen).length ? { seen } : {}) });
  }

  kinds() {
    return this.#ask({ op: "kinds" });
  }

  #ask(frame) {
    const ref = `q${(this.counter++).toString(36)}`;
    return new Promise((resolve) => {
      this.pending.set(ref, resolve);
      this.#send({ ...frame, ref });
    });
  }

  #ready() {
    this.#state("open", "Connected");
    this.watch(this.unfinished());
  }

  #receive(frame) {
    if (frame.ref && this.pending.has(frame.ref)) {
      this.pending.get(frame.ref)(frame);
      this.pending.delete(frame.ref);
      return;
    }
    switch (frame.type) {
      case "authorized":
        this.#ready();
        break;
      case "accepted":
        this.#emit("accepted", { ref: frame.ref, job: frame.job, position: frame.position ?? null,
                                 etaMs: frame.eta_ms ?? null });
        this.#send({ op: "status", job: frame.job });
        break;
      case "status":
        if (!TERMINAL.has(frame.state)) {
          this.#emit("state", { job: frame.job, state: frame.state, position: frame.position ?? null,
                                etaMs: frame.eta_ms ?? null });
        }
        break;
      case "progress":
        this.#emit("progress", { job: frame.job, seq: frame.seq, data: frame.data });
        break;
      case "result":
        this.#emit("result", { job: frame.job, state: frame.status, result: frame.result ?? null,
                               error: frame.error ? frame.error.message : null, elapsedMs: frame.elapsed_ms ?? null });
        break;
      case "error":
        if (frame.code === "unauthorized") return;  // the server closes next, with 4001
        this.#emit("refused", { ref: frame.ref ?? null, job: frame.job ?? null, code: frame.code,
                                message: frame.message });
        break;
      default:
        break;
    }
  }

  #send(frame) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  #state(state, text) {
    this.state = state;
    this.#emit("connection", { state, text });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

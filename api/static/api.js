// The API and its token, and Server-Sent Events read with fetch (EventSource cannot send a
// bearer token): resumed with Last-Event-ID = the last stream sequence seen.
import { $ } from "./dom.js";

export const TOKEN_KEY = "vigil.apiToken";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export const auth = {
  token: localStorage.getItem(TOKEN_KEY),
  asking: null,
  headers() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  },
  /** Ask for a token once (several callers may wait on the same question). */
  ask(reason) {
    if (this.token) {
      this.token = null;
      localStorage.removeItem(TOKEN_KEY);
    }
    if (!this.asking) {
      this.asking = new Promise((resolve) => {
        const dialog = $("token-dialog");
        $("token-reason").textContent = reason;
        const form = $("token-form");
        form.addEventListener("submit", () => {
          this.token = $("token-input").value.trim();
          localStorage.setItem(TOKEN_KEY, this.token);
          $("token-input").value = "";
          this.asking = null;
          resolve();
        }, { once: true });
        dialog.showModal();
      });
    }
    return this.asking;
  },
};

export async function detailOf(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

/** A JSON request to the API; a 401 asks for a token and tries again. */
export async function api(path, options = {}) {
  for (;;) {
    const headers = { Accept: "application/json", ...(options.headers || {}), ...auth.headers() };
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) {
      await auth.ask(await detailOf(response));
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await detailOf(response));
    return response.json();
  }
}

export function post(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

/** The messages of an SSE body: {id, event, data}; comments (keep-alives) skipped. */
export async function* sseMessages(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let message = { id: null, event: null, data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      for (;;) {
        const end = buffer.search(/\r\n|\r|\n/);
        if (end < 0) break;
        if (buffer[end] === "\r" && end === buffer.length - 1) break; // maybe \r\n: wait
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        if (line === "") {
          if (message.data.length) yield { ...message, data: message.data.join("\n") };
          message = { id: null, event: null, data: [] };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") message.data.push(text);
        else if (field === "id") message.id = text;
        else if (field === "event") message.event = text;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

export function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

/** Follow an SSE route until `signal` aborts, reconnecting with Last-Event-ID = the last
 *  sequence seen, so no event is missed or shown twice across a reconnect. */
export async function follow(path, { after, onEvent, signal, resumeFrom }) {
  let last = after;
  let wait = 500;
  while (!signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream", ...auth.headers() };
      // A stream that has sent nothing yet resumes from what the page saw elsewhere.
      const from = last ?? (resumeFrom ? resumeFrom() : null);
      if (from !== null && from !== undefined) headers["Last-Event-ID"] = String(from);
      const response = await fetch(path, { headers, signal, cache: "no-store" });
      if (response.status === 401) {
        await auth.ask(await detailOf(response));
        continue;
      }
      if (!response.ok) throw new ApiError(response.status, await detailOf(response));
      connection.set(path, true);
      wait = 500;
      for await (const message of sseMessages(response.body)) {
        const event = JSON.parse(message.data);
        if (message.id !== null && /^\d+$/.test(message.id)) last = Number(message.id);
        else if (Number.isInteger(event.seq)) last = event.seq;
        saw(event);
        onEvent(event);
      }
    } catch (error) {
      if (signal.aborted) return;
      console.warn(`${path}: ${error.message}; reconnecting`);
    }
    connection.set(path, false);
    await pause(wait, signal);
    wait = Math.min(wait * 2, 10000);
  }
}

// The highest stream sequence the page has received, from any route: every event has one.
let seen = null;
export function lastSeen() {
  return seen;
}

export function saw(event) {
  if (Number.isInteger(event.seq) && (seen === null || event.seq > seen)) seen = event.seq;
}

const connection = {
  down: new Set(),
  set(path, live) {
    if (live) this.down.delete(path);
    else this.down.add(path);
    const node = $("connection");
    node.textContent = this.down.size ? "reconnecting…" : "live";
    node.className = `connection ${this.down.size ? "down" : "live"}`;
  },
};

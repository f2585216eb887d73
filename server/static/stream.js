// One answer's stream: read /chat's events and, when the connection drops, reattach to a resumable stream
// with GET /chat/streams/{id} and Last-Event-ID, so every event is seen exactly once.

import { SSEParser } from "./sse.js";

export const MAX_BACKOFF_MS = 5000;
const FIRST_BACKOFF_MS = 250;
const MAX_TRIES = 30; // about two and a half minutes at the cap: past the gateway's default grace period

/** An HTTP error answered instead of a stream: not worth retrying. `message` is one readable line. */
export class HttpError extends Error {
  constructor(message, requestId) {
    super(message);
    this.requestId = requestId;
  }

  static async from(response) {
    const requestId = response.headers.get("X-Request-ID");
    try {
      const body = await response.json();
      return new HttpError(`${body.message} (HTTP ${response.status}, ${body.error_type})`, body.request_id ?? requestId);
    } catch {
      return new HttpError(`HTTP ${response.status} ${response.statusText}`.trim(), requestId);
    }
  }
}

const isStream = (response) => response.ok && (response.headers.get("Content-Type") || "").startsWith("text/event-stream");
// a gateway restarting behind a proxy, or a momentary limit: worth another try; 404, 410, 401 are final
const retriable = (response) => response.status >= 500 || response.status === 429;

/** Wait before the next try (doubling, capped at MAX_BACKOFF_MS); coming back online cuts it short. */
function backoff(attempt, signal) {
  return new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer);
      window.removeEventListener("online", done);
      signal.removeEventListener("abort", done);
      if (signal.aborted) reject(signal.reason);
      else resolve();
    };
    const timer = setTimeout(done, Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** attempt));
    window.addEventListener("online", done);
    signal.addEventListener("abort", done);
  });
}

/**
 * Read the answer until its terminal event (`done` or `error`, returned). `open(signal)` makes the first
 * request (POST /chat); without it the stream is resumed from `cursor` ({streamId, lastEventId}, kept up to date).
 * `on.response(response)` sees each response, `on.event(message)` each new event, `on.reconnecting()` each
 * drop. Throws HttpError, the abort reason, or the network error when the stream cannot be resumed.
 */
export async function follow(open, cursor, headers, on, signal) {
  open ??= () => resume(cursor, headers, signal);
  for (let attempt = 0; ; attempt++) {
    let failure;
    try {
      const response = await open(signal);
      on.response(response);
      if (!isStream(response)) {
        if (!cursor.streamId || !retriable(response)) throw await HttpError.from(response);
        failure = await HttpError.from(response);
      } else {
        const seen = cursor.lastEventId;
        const terminal = await read(response, cursor, on.event);
        if (terminal) return terminal;
        if (cursor.lastEventId !== seen) attempt = 0; // progress: the next drop starts the backoff afresh
        failure = new Error("the stream ended before the answer was complete");
      }
    } catch (error) {
      if (signal.aborted || error instanceof HttpError) throw error;
      failure = error;
    }
    if (!cursor.streamId || attempt >= MAX_TRIES) throw failure;
    on.reconnecting();
    await backoff(attempt, signal);
    open = () => resume(cursor, headers, signal);
  }
}

/** GET the stream's events after the last one seen. */
function resume(cursor, headers, signal) {
  const sent = { ...headers, Accept: "text/event-stream" };
  if (cursor.lastEventId !== null) sent["Last-Event-ID"] = String(cursor.lastEventId);
  return fetch(`/chat/streams/${encodeURIComponent(cursor.streamId)}`, { headers: sent, signal, cache: "no-store" });
}

/** The response's events until the terminal one (returned) or the end of the body (null). */
async function read(response, cursor, onEvent) {
  const parser = new SSEParser();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    for (const event of parser.feed(value)) {
      if (event.lastEventId !== "") {
        const id = Number(event.lastEventId);
        if (cursor.lastEventId !== null && id <= cursor.lastEventId) continue; // already shown
        cursor.lastEventId = id;
      }
      const message = JSON.parse(event.data);
      if (message.type === "connected" && message.stream_id) cursor.streamId = message.stream_id;
      onEvent(message);
      if (message.type === "done" || message.type === "error") {
        reader.cancel().catch(() => {});
        return message;
      }
    }
  }
}

/** Cancel the stream (Stop): the gateway closes the upstream call at once. */
export function cancel(streamId, headers) {
  return fetch(`/chat/streams/${encodeURIComponent(streamId)}`, { method: "DELETE", headers, keepalive: true });
}

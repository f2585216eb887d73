// The chat page: POST /chat with fetch, read the SSE stream from response.body, show it as it arrives.
// EventSource cannot POST, so the stream is parsed here. Text is only ever inserted as text nodes.

/** The WHATWG event-stream parser: feed decoded text in any split, get back the events it completes. */
export class SSEParser {
  #buffer = "";
  #data = "";
  #type = "";
  #lastId = "";
  #started = false;

  /** @param {string} text @returns {{type: string, data: string, lastEventId: string}[]} */
  feed(text) {
    if (!this.#started && text) {
      this.#started = true;
      if (text.startsWith("\uFEFF")) text = text.slice(1);
    }
    const buffer = this.#buffer + text;
    const events = [];
    const lineEnd = /\r\n|\r|\n/g;
    let position = 0;
    for (let match; (match = lineEnd.exec(buffer)) !== null; ) {
      // A CR as the very last character may be the first half of a CRLF: wait for the next chunk.
      if (match[0] === "\r" && lineEnd.lastIndex === buffer.length) break;
      this.#line(buffer.slice(position, match.index), events);
      position = lineEnd.lastIndex;
    }
    this.#buffer = buffer.slice(position);
    return events;
  }

  #line(line, events) {
    if (line === "") {
      if (this.#data !== "") {
        events.push({ type: this.#type || "message", data: this.#data.slice(0, -1), lastEventId: this.#lastId });
      }
      this.#data = "";
      this.#type = "";
      return;
    }
    if (line.startsWith(":")) return; // a comment, such as the server's ": ping" heartbeat
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.#data += value + "\n";
    else if (field === "event") this.#type = value;
    else if (field === "id" && !value.includes("\0")) this.#lastId = value;
  }
}

const KEY_STORAGE = "tornado-ai-stream.client-key";
const byId = (id) => document.getElementById(id);
const ui = {
  form: byId("chat"),
  prompt: byId("prompt"),
  key: byId("key"), // only on the page when the server requires client keys
  send: byId("send"),
  stop: byId("stop"),
  status: byId("status"),
  requestId: byId("request-id"),
  ttft: byId("ttft"),
  error: byId("error"),
  answer: byId("answer"),
};
let controller = null;

function setState(state, label = state) {
  ui.status.dataset.state = state;
  ui.status.textContent = label;
  const busy = state === "connecting" || state === "streaming";
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
}

function showError(message, requestId) {
  ui.error.textContent = requestId ? `${message} (request id ${requestId})` : message;
  ui.error.hidden = false;
  setState("error");
}

/** The JSON error the gateway sends before a stream starts, as one readable line. */
async function httpError(response) {
  const fallback = `HTTP ${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    return [`${body.message} (HTTP ${response.status}, ${body.error_type})`, body.request_id];
  } catch {
    return [fallback, null];
  }
}

async function chat(prompt) {
  controller = new AbortController();
  const text = document.createTextNode("");
  ui.answer.replaceChildren(text);
  ui.error.hidden = true;
  ui.error.textContent = "";
  ui.requestId.textContent = "\u2013";
  ui.ttft.textContent = "\u2013";
  setState("connecting", "connecting\u2026");
  const started = performance.now();
  let answered = false;
  const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
  const key = ui.key?.value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  try {
    const response = await fetch("/chat", {
      method: "POST",
      headers,
      body: JSON.stringify({ prompt }),
      signal: controller.signal,
      cache: "no-store",
    });
    const requestId = response.headers.get("X-Request-ID");
    if (requestId) ui.requestId.textContent = requestId;
    if (!response.ok || !(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
      showError(...(await httpError(response)));
      return;
    }
    setState("streaming", "streaming\u2026");
    const parser = new SSEParser();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const event of parser.feed(value)) {
        const message = JSON.parse(event.data);
        if (message.type === "content") {
          if (!answered) ui.ttft.textContent = `${Math.round(performance.now() - started)} ms`;
          answered = true;
          text.appendData(message.content);
        } else if (message.type === "done") {
          setState("done");
          return;
        } else if (message.type === "error") {
          showError(`${message.content} (${message.error_type})`, message.request_id);
          return;
        }
      }
    }
    showError("the stream ended before the answer was complete", requestId);
  } catch (error) {
    if (controller.signal.aborted) setState("stopped");
    else showError(`request failed: ${error.message}`);
  } finally {
    controller = null;
  }
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!controller) chat(ui.prompt.value);
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.form.requestSubmit();
  }
});
ui.stop.addEventListener("click", () => controller?.abort());
if (ui.key) {
  ui.key.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
  ui.key.addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, ui.key.value));
}

// The chat page: a conversation sent as `messages`, answers streamed with fetch and resumed after a drop or a
// reload (sse.js parses, stream.js reads and reconnects, render.js shows text, conversation.js remembers,
// attachment.js holds the picture to send).

import { Attachment } from "./attachment.js";
import { Conversation, pictureOf, textOf, userMessage } from "./conversation.js";
import { renderAnswer } from "./render.js";
import { HttpError, cancel, follow } from "./stream.js";

const KEY_STORAGE = "tornado-ai-stream.client-key";
const MODEL_STORAGE = "tornado-ai-stream.model";
const byId = (id) => document.getElementById(id);
const ui = {
  form: byId("chat"),
  prompt: byId("prompt"),
  key: byId("key"), // only on the page when the server requires client keys
  model: byId("model"),
  newChat: byId("new-chat"),
  send: byId("send"),
  stop: byId("stop"),
  status: byId("status"),
  requestId: byId("request-id"),
  ttft: byId("ttft"),
  error: byId("error"),
  thread: byId("thread"),
};
const conversation = new Conversation();
const attachment = new Attachment(
  { input: byId("attach"), shown: byId("attached"), name: byId("attached-name"), remove: byId("detach") },
  updateButtons,
  showMessage,
);
let controller = null; // the answer in flight
let cursor = null; // its {streamId, lastEventId}
let running = Promise.resolve(); // settles when the answer in flight has been put in the history

function setState(state, label = state) {
  ui.status.dataset.state = state;
  ui.status.textContent = label;
  updateButtons();
}

/** Send waits while an answer is in flight or a chosen picture is still being read. */
function updateButtons() {
  const busy = ["connecting", "streaming", "reconnecting"].includes(ui.status.dataset.state);
  ui.send.disabled = busy || attachment.reading;
  ui.stop.disabled = !busy;
}

function showMessage(message) {
  ui.error.textContent = message;
  ui.error.hidden = false;
}

function showError(message, requestId) {
  showMessage(requestId ? `${message} (request id ${requestId})` : message);
  setState("error");
}

function authHeaders() {
  const key = ui.key?.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** A turn of the thread, with a marker naming its picture if it has one; returns the element its text goes into. */
function addTurn(role, content, picture) {
  const turn = document.createElement("li");
  turn.className = `turn ${role}`;
  const body = turn.appendChild(document.createElement("div"));
  body.className = "body";
  if (role === "assistant") renderAnswer(body, content);
  else body.textContent = content;
  if (picture) {
    const marker = turn.appendChild(document.createElement("div"));
    marker.className = "picture";
    marker.textContent = `[picture: ${picture}]`;
  }
  ui.thread.append(turn);
  turn.scrollIntoView({ block: "end" });
  return body;
}

/** Stream the pending answer into a new assistant turn: `open(signal)` makes the first request, else it resumes. */
async function answer(open, started) {
  const pending = conversation.pending;
  const body = addTurn("assistant", pending.text);
  controller = new AbortController();
  cursor = { streamId: pending.streamId, lastEventId: pending.lastEventId };
  ui.error.hidden = true;
  ui.requestId.textContent = pending.requestId ?? "\u2013";
  const on = {
    response(response) {
      pending.requestId ??= response.headers.get("X-Request-ID");
      if (pending.requestId) ui.requestId.textContent = pending.requestId;
      if (response.ok) setState("streaming", "streaming\u2026");
    },
    event(message) {
      if (message.type === "content") {
        if (started && !pending.text) ui.ttft.textContent = `${Math.round(performance.now() - started)} ms`;
        pending.text += message.content;
        renderAnswer(body, pending.text);
      }
      Object.assign(pending, cursor);
      conversation.savePending();
    },
    reconnecting: () => setState("reconnecting", "reconnecting\u2026"),
  };
  let ended = "error";
  try {
    const terminal = await follow(open, cursor, authHeaders(), on, controller.signal);
    if (terminal.type === "done") ended = "done";
    else showError(`${terminal.content} (${terminal.error_type})`, terminal.request_id);
  } catch (error) {
    if (controller.signal.aborted) ended = "stopped";
    else if (error instanceof HttpError) showError(error.message, error.requestId);
    else showError(`request failed: ${error.message}`, pending.requestId);
  } finally {
    controller = null;
  }
  settle(body, ended);
}

/** The answer is over: keep what was said in the history; an unanswered prompt goes back to the prompt box. */
function settle(body, state) {
  const { text } = conversation.pending;
  conversation.pending = null;
  conversation.savePending();
  if (text) {
    conversation.messages.push({ role: "assistant", content: text });
  } else {
    body.closest("li").remove();
    unsend();
  }
  conversation.saveMessages();
  if (state !== "error") setState(state);
}

/** Take back the unanswered last message: its text into the box (unless something new is there), its picture attached again. */
function unsend() {
  ui.thread.lastElementChild?.remove();
  const message = conversation.messages.pop();
  if (!ui.prompt.value) ui.prompt.value = textOf(message);
  const picture = pictureOf(message);
  if (picture && !attachment.picture) attachment.set(picture);
}

function send(prompt) {
  const { picture } = attachment;
  conversation.messages.push(userMessage(prompt, picture));
  conversation.saveMessages();
  conversation.pending = { streamId: null, lastEventId: null, requestId: null, text: "" };
  addTurn("user", prompt, picture?.name);
  ui.prompt.value = "";
  attachment.set(null);
  ui.ttft.textContent = "\u2013";
  setState("connecting", "connecting\u2026");
  const body = { messages: conversation.payload(), resumable: true };
  if (ui.model.value) body.model = ui.model.value;
  const headers = { ...authHeaders(), "Content-Type": "application/json", Accept: "text/event-stream" };
  const post = (signal) => fetch("/chat", { method: "POST", headers, body: JSON.stringify(body), signal, cache: "no-store" });
  running = answer(post, performance.now());
}

function stop() {
  if (!controller) return;
  if (cursor.streamId) cancel(cursor.streamId, authHeaders()).catch(() => {});
  controller.abort();
}

/** The models the gateway lists at /v1/models; the choice is kept for the tab. */
async function loadModels() {
  const chosen = sessionStorage.getItem(MODEL_STORAGE) ?? "";
  let models = [];
  try {
    const response = await fetch("/v1/models", { headers: authHeaders(), cache: "no-store" });
    if (response.ok) models = (await response.json()).data.map((model) => model.id);
  } catch {
    // no list: the server's default model still answers
  }
  ui.model.replaceChildren(ui.model.options[0], ...models.map((id) => new Option(id, id)));
  ui.model.value = models.includes(chosen) ? chosen : "";
}

function restore() {
  for (const message of conversation.messages) addTurn(message.role, textOf(message), message.picture);
  const pending = conversation.pending;
  if (pending?.streamId) {
    setState("reconnecting", "reconnecting\u2026"); // a reload mid-answer: pick it up after the last event shown
    running = answer(null, null);
  } else if (conversation.messages.at(-1)?.role === "user") {
    // reloaded before the answer had a stream id: nothing to resume, so the prompt goes back to the box
    unsend();
    conversation.pending = null;
    conversation.savePending();
    conversation.saveMessages();
  }
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const prompt = ui.prompt.value;
  if (!ui.send.disabled && prompt.trim()) send(prompt);
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.form.requestSubmit();
  }
});
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", async () => {
  stop();
  await running;
  conversation.clear();
  ui.thread.replaceChildren();
  ui.error.hidden = true;
  ui.requestId.textContent = "\u2013";
  ui.ttft.textContent = "\u2013";
  setState("idle");
});
ui.model.addEventListener("change", () => sessionStorage.setItem(MODEL_STORAGE, ui.model.value));
if (ui.key) {
  ui.key.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
  ui.key.addEventListener("input", () => sessionStorage.setItem(KEY_STORAGE, ui.key.value));
  ui.key.addEventListener("change", loadModels);
}
loadModels();
restore();

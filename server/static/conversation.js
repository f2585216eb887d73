// The conversation, kept in the tab's sessionStorage so a reload shows it and resumes an answer in flight.

const MESSAGES = "tornado-ai-stream.messages";
const PENDING = "tornado-ai-stream.pending";

function read(key, fallback) {
  try {
    return JSON.parse(sessionStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback; // unreadable: start afresh rather than break the page
  }
}

export class Conversation {
  /** The turns sent as `messages`: {role: "user" | "assistant", content: string}. */
  messages = read(MESSAGES, []);
  /** The answer being streamed: {streamId, lastEventId, requestId, text}, or null. */
  pending = read(PENDING, null);

  saveMessages() {
    sessionStorage.setItem(MESSAGES, JSON.stringify(this.messages));
  }

  /** Written after every event, so a reload resumes right after the last one shown. */
  savePending() {
    if (this.pending) sessionStorage.setItem(PENDING, JSON.stringify(this.pending));
    else sessionStorage.removeItem(PENDING);
  }

  clear() {
    this.messages = [];
    this.pending = null;
    this.saveMessages();
    this.savePending();
  }
}

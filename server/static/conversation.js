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

/** A user turn: a string, or with a picture ({name, url}) a text part and an image_url part. */
export function userMessage(text, picture) {
  if (!picture) return { role: "user", content: text };
  const content = [{ type: "text", text }, { type: "image_url", image_url: { url: picture.url } }];
  return { role: "user", content, picture: picture.name };
}

/** The text a turn shows (its parts' text for a turn with a picture). */
export function textOf(message) {
  if (typeof message.content === "string") return message.content;
  return message.content.map((part) => part.text ?? "").join("");
}

/** The turn's picture as {name, url}, when it is still held (a stored copy may have dropped it). */
export function pictureOf(message) {
  const url = Array.isArray(message.content) ? message.content.find((part) => part.image_url)?.image_url.url : undefined;
  return url ? { name: message.picture, url } : null;
}

// The picture's name is for the page only: the gateway would forward it upstream.
const sent = ({ role, content }) => ({ role, content });
// Too big for the tab's storage: keep the text (and the picture's name for its marker), drop the picture.
const withoutPicture = (message) => (message.picture ? { ...message, content: textOf(message) } : message);

export class Conversation {
  /** The turns: {role: "user" | "assistant", content: string | parts, picture?: file name}. */
  messages = read(MESSAGES, []);
  /** The answer being streamed: {streamId, lastEventId, requestId, text}, or null. */
  pending = read(PENDING, null);

  /** The turns as sent as `messages`. */
  payload() {
    return this.messages.map(sent);
  }

  saveMessages() {
    this.#store(MESSAGES, this.messages);
  }

  /** Written after every event, so a reload resumes right after the last one shown. */
  savePending() {
    if (this.pending) this.#store(PENDING, this.pending);
    else sessionStorage.removeItem(PENDING);
  }

  /** When the tab's storage is full, the stored copy of the conversation drops its pictures, then `value` goes in. */
  #store(key, value) {
    try {
      sessionStorage.setItem(key, JSON.stringify(value));
    } catch {
      sessionStorage.setItem(MESSAGES, JSON.stringify(this.messages.map(withoutPicture)));
      if (key !== MESSAGES) sessionStorage.setItem(key, JSON.stringify(value));
    }
  }

  clear() {
    this.messages = [];
    this.pending = null;
    this.saveMessages();
    this.savePending();
  }
}

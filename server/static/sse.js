// The event-stream parser the page reads /chat with: EventSource cannot POST, send a client key, or resume after a reload.

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

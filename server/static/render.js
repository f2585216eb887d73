// An answer as DOM nodes. Model output is text, never HTML: it only ever reaches the page through textContent.

const FENCE = /^ {0,3}(`{3,})(.*)$/;

/** Split text into prose and fenced code blocks (``` lang ... ```); an unclosed fence runs to the end (still streaming). */
export function segments(text) {
  const out = [];
  let prose = [];
  let code = null;
  for (const line of text.split("\n")) {
    const fence = FENCE.exec(line);
    if (code) {
      if (fence && fence[1].length >= code.fence && !fence[2].trim()) {
        out.push({ code: code.lines.join("\n"), lang: code.lang });
        code = null;
      } else {
        code.lines.push(line);
      }
    } else if (fence && !fence[2].includes("`")) {
      if (prose.length) out.push({ text: prose.join("\n") });
      prose = [];
      code = { fence: fence[1].length, lang: fence[2].trim(), lines: [] };
    } else {
      prose.push(line);
    }
  }
  if (code) out.push({ code: code.lines.join("\n"), lang: code.lang });
  if (prose.length) out.push({ text: prose.join("\n") });
  return out;
}

/** Replace `container`'s children with `text`: prose as text nodes, code blocks as <pre><code>. */
export function renderAnswer(container, text) {
  container.replaceChildren(
    ...segments(text).map((segment) => {
      if (segment.text !== undefined) return document.createTextNode(segment.text);
      const pre = document.createElement("pre");
      const code = pre.appendChild(document.createElement("code"));
      code.textContent = segment.code;
      if (segment.lang) pre.dataset.lang = segment.lang;
      return pre;
    }),
  );
}

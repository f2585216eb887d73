"""Server-Sent Events: an incremental parser for upstream bytes and the encoder for what we send.

The parser follows the WHATWG event-stream rules and is correct for any split of the byte stream:
lines are cut on bytes (LF, CRLF or CR) before decoding, so a UTF-8 sequence split across reads is
whole again by the time its line is decoded, and a CR at the very end of a read is held back until
the next byte tells whether it starts a CRLF. A line longer than `max_line_bytes` raises
`LineTooLongError`, and an event whose `data:` lines add up to more than `max_event_bytes` (many lines and
no blank line to end them) raises `EventTooLargeError`, instead of buffering without bound.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_LINE_END = re.compile(rb"\r\n|\r|\n")

DONE = "[DONE]"


class LineTooLongError(ValueError):
    """The upstream sent a line longer than the parser's cap."""


class EventTooLargeError(ValueError):
    """The upstream's `data:` lines for one event add up to more than the parser's cap."""


class SSEEvent(NamedTuple):
    """Immutable like a frozen dataclass, but about half the cost to build: one is made per relayed event."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """Feed bytes in any split; get back the complete events they finish."""

    __slots__ = ("_buffer", "_data", "_data_bytes", "_event", "_last_id", "comments", "max_event_bytes", "max_line_bytes")

    def __init__(self, max_line_bytes: int = 1024 * 1024, max_event_bytes: int = 1024 * 1024) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_event_bytes = max_event_bytes
        self._buffer = b""
        self._data: list[str] = []
        self._data_bytes = 0  # wire bytes of the `data:` lines in `_data`
        self._event = ""
        self._last_id: str | None = None
        self.comments = 0  # comment lines seen so far (keep-alives such as ": OPENROUTER PROCESSING")

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            return self._feed_any(buffer)
        # LF-only input (what providers send): bytes.split in C, and `data: ` lines without the general path.
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()  # the unfinished last line (b"" when the input ended with LF)
        events: list[SSEEvent] = []
        data = self._data
        for raw in lines:
            if raw[:6] == b"data: ":
                data.append(raw[6:].decode("utf-8", "replace"))
                self._data_bytes += len(raw) + 1
            else:
                self._line(raw, events)
                data = self._data  # a blank line starts a new event's list
        self._check_sizes()
        return events

    def _feed_any(self, buffer: bytes) -> list[SSEEvent]:
        """Any mix of CRLF, CR and LF, including a CR at the end that may be half a CRLF."""
        events: list[SSEEvent] = []
        position = 0
        size = len(buffer)
        for match in _LINE_END.finditer(buffer):
            if match.end() == size and buffer[-1] == 13:  # lone CR at the end: maybe half a CRLF
                break
            self._line(buffer[position : match.start()], events)
            position = match.end()
        self._buffer = buffer[position:]
        self._check_sizes()
        return events

    def _check_sizes(self) -> None:
        """After each feed: the unfinished line and the unfinished event, each against its cap."""
        if len(self._buffer) > self.max_line_bytes:
            self._buffer = b""
            raise LineTooLongError(f"upstream line longer than {self.max_line_bytes} bytes")
        if self._data_bytes > self.max_event_bytes:
            self._event_too_large()

    def _event_too_large(self) -> None:
        self._data, self._data_bytes = [], 0
        raise EventTooLargeError(f"upstream event too large (over {self.max_event_bytes} bytes)")

    def close(self) -> list[SSEEvent]:
        """End of stream: a trailing CR ends its line; an event without its blank line is dropped (spec)."""
        events: list[SSEEvent] = []
        if self._buffer.endswith(b"\r"):
            self._line(self._buffer[:-1], events)
        self._buffer = b""
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data_bytes > self.max_event_bytes:  # whatever the split: a whole event over the cap fails too
                self._event_too_large()
            if self._data:
                events.append(SSEEvent("\n".join(self._data), self._event or "message", self._last_id))
            self._data = []
            self._data_bytes = 0
            self._event = ""
            return
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            self.comments += 1
            return
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_bytes += len(raw) + 1
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value


def encode_data(data: str | bytes) -> bytes:
    """One `data:` event; multi-line data becomes several `data:` lines, as the spec requires."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if b"\n" in payload or b"\r" in payload:
        lines = _LINE_END.split(payload)
        return b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
    return b"data: " + payload + b"\n\n"


def encode_comment(text: str) -> bytes:
    return b": " + text.encode("utf-8") + b"\n\n"

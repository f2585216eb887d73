"""What one stream has seen so far, and what one upstream read holds: kept apart from any handler or sink."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from server.completions import Chunk, parse_chunk
from server.sse import SSEEvent
from server.upstream import UpstreamCall, UpstreamError


class Found(NamedTuple):
    """One upstream read's parsed chunks (malformed lines skipped), and the provider error that ended it, if any."""

    chunks: list[tuple[SSEEvent, Chunk]]
    failure: UpstreamError | None


def read_chunks(events: list[SSEEvent], call: UpstreamCall) -> Found:
    """Parse one read; stop at a provider error inside the stream (what came before it is still relayed)."""
    chunks = []
    for event in events:
        chunk = parse_chunk(event.data)
        if chunk is None:
            continue
        if chunk.error is not None:
            return Found(chunks, UpstreamError("upstream_error", f"upstream error: {call.redact(chunk.error)}", call.status))
        chunks.append((event, chunk))
    return Found(chunks, None)


@dataclass(slots=True)
class StreamState:
    """Per-stream facts the outcome line and the terminal event report."""

    events: int = 0  # events relayed
    ttft: float | None = None  # seconds from request arrival to the first content
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    answer: list[str] | None = None  # only with LOG_PROMPTS
    relayed_chars: int = 0  # answer text relayed: the estimate's base when the provider reports no usage

    def note(self, found: Found, elapsed: float) -> None:
        """Take in one read: the last finish_reason and usage win; the first content sets the TTFT."""
        for _, chunk in found.chunks:
            if chunk.finish_reason is not None:
                self.finish_reason = chunk.finish_reason
            if chunk.usage is not None:
                self.usage = chunk.usage
            if chunk.content:
                self.relayed_chars += len(chunk.content)
                if self.ttft is None:
                    self.ttft = elapsed
                if self.answer is not None:
                    self.answer.append(chunk.content)

"""What an OpenAI-format `chat.completion.chunk` says: text, finish reason, usage, or an error.

The one place that reads the provider's chunk JSON; handlers turn the result into their client's format.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NamedTuple

import orjson

log = logging.getLogger("gateway.upstream")


def _decode(data: str) -> Any:
    """orjson, about 4x faster than the stdlib for one call per relayed event; the stdlib for the little it
    refuses that json.loads accepts (NaN, a lone surrogate escape from a provider that split an emoji)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def encode_json_string(text: str) -> bytes:
    """`text` as a UTF-8 JSON string. A lone surrogate (half of a split emoji) stays a \\uXXXX escape, so the
    client's JSON parser can join the halves again, instead of failing to encode."""
    try:
        return orjson.dumps(text)
    except TypeError:
        return json.dumps(text).encode("ascii")


class Chunk(NamedTuple):
    """Immutable and cheap to build (a NamedTuple costs about half a frozen dataclass): one per relayed event."""

    content: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error: str | None = None


def parse_chunk(data: str) -> Chunk | None:
    """The chunk's meaning, or None for a malformed line (logged at WARN and skipped)."""
    try:
        value = _decode(data)
    except ValueError:
        log.warning("skipping malformed upstream data line (%d chars)", len(data))
        return None
    if not isinstance(value, dict):
        log.warning("skipping upstream data line that is not a JSON object")
        return None
    error = value.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, dict) else str(error)
        return Chunk(error=str(message or "upstream reported an error"))
    content = ""
    finish_reason = None
    choices = value.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            content = delta["content"]
        finish_reason = choice.get("finish_reason")
        if finish_reason == "error":
            return Chunk(content=content, finish_reason=finish_reason, error="upstream provider failed mid-stream")
    usage = value.get("usage")
    return Chunk(content, finish_reason, usage if isinstance(usage, dict) else None)

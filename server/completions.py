"""What an OpenAI-format `chat.completion.chunk` (or a whole `chat.completion`) says: text, finish reason, usage, or an error.

The one place that reads the provider's chunk JSON; handlers turn the result into their client's format.
Whatever the provider got wrong is dropped here, so nothing downstream (the client's `done`, the log line,
the token counters) sees a non-string finish reason or a usage value that is not a finite count.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from server.jsonio import NestingTooDeepError, decode, strict_text

log = logging.getLogger("gateway.upstream")

_MAX_COUNT = 2**53  # past it a JSON number loses integer precision, and a counter creeps toward +Inf


class Chunk(NamedTuple):
    """Immutable and cheap to build (a NamedTuple costs about half a frozen dataclass): one per relayed event."""

    content: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    strict_data: str | None = None  # the data line with NaN/Infinity as null, when it had them (relay this instead)


def error_text(error: Any) -> str:
    """The provider's message from an `error` field (`{"message": "..."}` or a plain string); "" when it has none."""
    message = error.get("message") if isinstance(error, dict) else error
    return message if isinstance(message, str) else ""


def clean_usage(usage: Any) -> dict[str, Any] | None:
    """`usage` with only what can be trusted: finite counts 0..2**53, booleans, and objects of those one level
    down (the `*_details`); negative, NaN, Infinity, non-numeric and deeper values are dropped."""
    if not isinstance(usage, dict):
        return None
    return _clean(usage, nested=True) or None


def _clean(values: dict[str, Any], nested: bool) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, bool) or (isinstance(value, int | float) and 0 <= value <= _MAX_COUNT):
            kept[key] = value
        elif nested and isinstance(value, dict):
            kept[key] = _clean(value, nested=False)
    return kept


def _first_choice(value: dict[str, Any]) -> dict[str, Any]:
    choices = value.get("choices")
    return choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}


def _finish_reason(choice: dict[str, Any]) -> str | None:
    reason = choice.get("finish_reason")
    return reason if isinstance(reason, str) else None


def parse_chunk(data: str) -> Chunk | None:
    """The chunk's meaning, or None for a malformed line (logged at WARN and skipped)."""
    try:
        value, strict = decode(data)
    except NestingTooDeepError:
        return Chunk(error="data line nested too deeply")
    except ValueError:
        log.warning("skipping malformed upstream data line (%d chars)", len(data))
        return None
    if not isinstance(value, dict):
        log.warning("skipping upstream data line that is not a JSON object")
        return None
    error = value.get("error")
    if error is not None:
        return Chunk(error=error_text(error) or "upstream reported an error")
    choice = _first_choice(value)
    delta = choice.get("delta")
    content = delta["content"] if isinstance(delta, dict) and isinstance(delta.get("content"), str) else ""
    finish_reason = _finish_reason(choice)
    if finish_reason == "error":
        return Chunk(content=content, finish_reason=finish_reason, error="upstream provider failed mid-stream")
    return Chunk(content, finish_reason, clean_usage(value.get("usage")), strict_data=None if strict else strict_text(data))


def summarize_completion(answer: dict[str, Any]) -> Chunk:
    """A non-streaming `chat.completion`'s text, finish reason and usage, for the outcome line, metrics and budgets."""
    choice = _first_choice(answer)
    message = choice.get("message")
    content = message["content"] if isinstance(message, dict) and isinstance(message.get("content"), str) else ""
    return Chunk(content, _finish_reason(choice), clean_usage(answer.get("usage")))

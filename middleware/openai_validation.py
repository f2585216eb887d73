"""`POST /v1/chat/completions` bodies: OpenAI's request shape, checked field by field before any upstream call.

Failures are the same 400 `ApiError`s as /chat (the /v1 handlers render them in OpenAI's error shape, with
`param` naming the field). `null` for an optional field means "not given", as in OpenAI's API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from middleware.validation import (
    MAX_MESSAGES,
    check_characters,
    check_messages,
    check_model,
    check_number,
    check_text,
    invalid,
    parse_json_object,
    reject_unknown,
)
from server.config import Settings

_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "user",
        "stream_options",
        "n",
    }
)
# field -> (low, high): plain numbers forwarded unchanged
_RANGES = {"temperature": (0, 2), "top_p": (0, 1), "presence_penalty": (-2, 2), "frequency_penalty": (-2, 2)}
MAX_STOP_SEQUENCES = 4
MAX_USER_LENGTH = 256
_SEED_LIMIT = 2**63


@dataclass(frozen=True)
class OpenAIChatRequest:
    """A validated request: the upstream payload (without `stream`/`stream_options`) and what the client asked for."""

    payload: dict[str, Any]
    stream: bool
    include_usage: bool  # the client asked for the usage chunk (`stream_options.include_usage`)

    @property
    def model(self) -> str:
        return str(self.payload["model"])

    @property
    def prompt_chars(self) -> int:
        return sum(len(message["content"]) for message in self.payload["messages"])


def message_text(field: str, value: Any, limit: int) -> str:
    """A message's content: a string, or a list of `{"type": "text", "text": ...}` parts joined into one string."""
    if isinstance(value, list):
        if not value:
            raise invalid(field, f"'{field}' must not be an empty array", "empty_prompt")
        texts = []
        for index, part in enumerate(value):
            part_field = f"{field}[{index}]"
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                message = f'\'{part_field}\' must be a text part {{"type": "text", "text": "..."}}'
                raise invalid(part_field, message, "unsupported_content")
            texts.append(check_characters(part_field, part["text"]))
        value = "".join(texts)
    return check_text(field, value, limit)


def validate_openai_chat(body: bytes, settings: Settings) -> OpenAIChatRequest:
    data = {name: value for name, value in parse_json_object(body).items() if value is not None}
    reject_unknown(data, _FIELDS)
    if "messages" not in data:
        raise invalid("messages", "'messages' is required: an array of {role, content}", "missing_prompt")
    # each message may use the whole budget; check_messages caps the sum at MAX_PROMPT_LENGTH x MAX_MESSAGES
    limit = settings.max_prompt_length * MAX_MESSAGES
    messages = check_messages(data["messages"], settings, lambda field, value: message_text(field, value, limit))
    model = check_model(data["model"], settings) if "model" in data else settings.model
    payload: dict[str, Any] = {"model": model, "messages": messages}
    for name, (low, high) in _RANGES.items():
        if name in data:
            payload[name] = check_number(name, data[name], low, high)
    if "max_tokens" in data and "max_completion_tokens" in data:
        raise invalid("max_completion_tokens", "send only one of 'max_tokens' or 'max_completion_tokens'", "invalid_request")
    for name in ("max_tokens", "max_completion_tokens"):
        if name in data:
            # OpenRouter-compatible upstreams all understand max_tokens
            payload["max_tokens"] = check_number(name, data[name], 1, settings.max_tokens_limit, integer=True)
    if "stop" in data:
        payload["stop"] = _check_stop(data["stop"])
    if "seed" in data:
        payload["seed"] = check_number("seed", data["seed"], -_SEED_LIMIT, _SEED_LIMIT - 1, integer=True)
    if "user" in data:
        payload["user"] = check_text("user", data["user"], MAX_USER_LENGTH)
    if "n" in data and (isinstance(data["n"], bool) or data["n"] != 1):
        # SDKs such as LangChain send n=1 by default; more choices than one are not relayed
        raise invalid("n", "'n' must be 1: the gateway relays one choice", "unsupported_value")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream", "'stream' must be true or false", "invalid_type")
    include_usage = _check_stream_options(data["stream_options"], stream) if "stream_options" in data else False
    return OpenAIChatRequest(payload, stream, include_usage)


def _check_stop(value: Any) -> str | list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in items):
        message = f"'stop' must be a non-empty string or an array of 1 to {MAX_STOP_SEQUENCES} non-empty strings"
        raise invalid("stop", message, "invalid_type")
    for index, item in enumerate(items):
        check_characters("stop" if isinstance(value, str) else f"stop[{index}]", item)
    return value  # type: ignore[no-any-return]


def _check_stream_options(value: Any, stream: bool) -> bool:
    if not stream:
        raise invalid("stream_options", "'stream_options' is only allowed when 'stream' is true", "invalid_request")
    if not isinstance(value, dict):
        raise invalid("stream_options", "'stream_options' must be an object", "invalid_type")
    extra = sorted(set(value) - {"include_usage"})
    if extra:
        raise invalid(f"stream_options.{extra[0]}", f"unknown field 'stream_options.{extra[0]}'", "unknown_field")
    include_usage = value.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise invalid("stream_options.include_usage", "'stream_options.include_usage' must be true or false", "invalid_type")
    return include_usage

"""Request bodies: decode, parse and check every field before any upstream call.

Each failure is an `ApiError` with status 400 (or 413/415 from the edge), an `error_type` and a message
naming the field, so a client can fix its request without guessing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from middleware.errors import ApiError
from server.config import Settings

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MODEL = re.compile(r"[A-Za-z0-9._~:-]+/[A-Za-z0-9._~:@/-]+")
ROLES = frozenset({"system", "user", "assistant"})
# /v1 accepts up to this many messages; their text together may be MAX_PROMPT_LENGTH x this long at most
MAX_MESSAGES = 64


def invalid(field: str | None, message: str, error_type: str = "invalid_request") -> ApiError:
    return ApiError(400, error_type, message, field=field)


class _NotJson(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    """`NaN`, `Infinity` and `-Infinity` are not JSON, though Python's parser accepts them."""
    raise _NotJson(f"{name} is not a JSON value")


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(None, "request body is not valid UTF-8", "invalid_encoding") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise invalid(None, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", "invalid_json") from None
    except _NotJson as exc:
        raise invalid(None, f"request body is not valid JSON: {exc}", "invalid_json") from None
    except RecursionError:
        raise invalid(None, "request body is not valid JSON: nested too deeply", "invalid_json") from None
    except ValueError:  # an integer literal beyond Python's 4300-digit conversion limit
        raise invalid(None, "request body is not valid JSON: a number has too many digits", "invalid_json") from None
    if not isinstance(value, dict):
        raise invalid(None, "request body must be a JSON object", "invalid_json")
    return value


def reject_unknown(body: dict[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise invalid(unknown[0], f"unknown field '{unknown[0]}'; expected some of: {', '.join(sorted(known))}", "unknown_field")


def check_text(field: str, value: Any, max_length: int) -> str:
    """A prompt-like text: a string, not blank, at most `max_length` code points, no control characters."""
    if not isinstance(value, str):
        raise invalid(field, f"'{field}' must be a string", "invalid_type")
    if not value.strip():
        raise invalid(field, f"'{field}' must not be empty or blank", "empty_prompt")
    if len(value) > max_length:
        raise invalid(field, f"'{field}' is {len(value)} characters; the limit is {max_length}", "prompt_too_long")
    if _CONTROL.search(value):
        raise invalid(field, f"'{field}' contains control characters (only tab, CR and LF are allowed)", "invalid_characters")
    return value


def check_number(field: str, value: Any, low: float, high: float, *, integer: bool = False) -> float | int:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise invalid(field, f"'{field}' must be {'an integer' if integer else 'a number'}", "invalid_type")
    if not low <= value <= high:
        raise invalid(field, f"'{field}' must be between {low:g} and {high:g}", "out_of_range")
    return value


def check_model(value: Any, settings: Settings, field: str = "model") -> str:
    if not isinstance(value, str):
        raise invalid(field, f"'{field}' must be a string", "invalid_type")
    if settings.allowed_models:
        if value not in settings.allowed_models and value != settings.model:
            raise invalid(field, f"model '{value}' is not allowed; allowed: {', '.join(settings.allowed_models)}", "model_not_allowed")
    elif not _MODEL.fullmatch(value):
        raise invalid(field, f"'{field}' must look like vendor/name", "invalid_model")
    return value


def check_messages(value: Any, settings: Settings, content: Callable[[str, Any], str]) -> list[dict[str, str]]:
    """`messages`: 1..MAX_MESSAGES of {role, content}; returns them normalised to string content."""
    if not isinstance(value, list) or not value:
        raise invalid("messages", "'messages' must be a non-empty array", "invalid_type")
    if len(value) > MAX_MESSAGES:
        raise invalid("messages", f"'messages' has {len(value)} items; the limit is {MAX_MESSAGES}", "too_many_messages")
    messages = []
    total = 0
    for index, message in enumerate(value):
        field = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid(field, f"'{field}' must be an object", "invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or object here is unhashable: check the type first
            raise invalid(f"{field}.role", f"'{field}.role' must be one of system, user, assistant", "invalid_role")
        extra = sorted(set(message) - {"role", "content", "name"})
        if extra:
            raise invalid(f"{field}.{extra[0]}", f"unknown field '{field}.{extra[0]}'", "unknown_field")
        text = content(f"{field}.content", message.get("content"))
        total += len(text)
        normalised = {"role": role, "content": text}
        if "name" in message:
            if not isinstance(message["name"], str):
                raise invalid(f"{field}.name", f"'{field}.name' must be a string", "invalid_type")
            normalised["name"] = message["name"]
        messages.append(normalised)
    if total > settings.max_prompt_length * MAX_MESSAGES:
        raise invalid(
            "messages", f"messages total {total} characters; the limit is {settings.max_prompt_length * MAX_MESSAGES}", "prompt_too_long"
        )
    return messages


@dataclass(frozen=True)
class ChatRequest:
    """A validated /chat request, ready to become an upstream payload."""

    messages: list[dict[str, str]]
    model: str
    options: dict[str, Any]
    resumable: bool = False  # the client can reattach with GET /chat/streams/{stream_id}

    @property
    def prompt_chars(self) -> int:
        return sum(len(message["content"]) for message in self.messages)


_CHAT_FIELDS = frozenset({"prompt", "messages", "model", "temperature", "max_tokens", "system", "resumable"})


def validate_chat(body: bytes, settings: Settings) -> ChatRequest:
    data = parse_json_object(body)
    reject_unknown(data, _CHAT_FIELDS)
    limit = settings.max_prompt_length
    if ("prompt" in data) == ("messages" in data):
        raise invalid(
            "prompt", "send exactly one of 'prompt' or 'messages'", "missing_prompt" if "prompt" not in data else "invalid_request"
        )
    if "prompt" in data:
        messages = [{"role": "user", "content": check_text("prompt", data["prompt"], limit)}]
    else:
        messages = check_messages(data["messages"], settings, lambda field, value: check_text(field, value, limit))
    if "system" in data:
        messages.insert(0, {"role": "system", "content": check_text("system", data["system"], limit)})
    options: dict[str, Any] = {}
    if "temperature" in data:
        options["temperature"] = check_number("temperature", data["temperature"], 0, 2)
    if "max_tokens" in data:
        options["max_tokens"] = check_number("max_tokens", data["max_tokens"], 1, settings.max_tokens_limit, integer=True)
    model = check_model(data["model"], settings) if "model" in data else settings.model
    resumable = data.get("resumable", False)
    if not isinstance(resumable, bool):
        raise invalid("resumable", "'resumable' must be true or false", "invalid_type")
    return ChatRequest(messages, model, options, resumable)

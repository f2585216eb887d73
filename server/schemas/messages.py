"""`messages`: the conversation both APIs accept, checked in place and forwarded unchanged.

Roles, content (a string or an array of parts), tool calls and tool results are checked by type; every
error names the exact path (`messages[2].content[1].image_url.url`). Only text counts against
MAX_PROMPT_LENGTH: pictures, audio and files are bounded by MAX_BODY_BYTES alone. `MessageRules` says what
each API allows: /chat keeps its small schema (text and image parts, no tools), /v1 takes OpenAI's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from server.config import Settings
from server.schemas.common import check_text, invalid

# /v1 accepts up to this many messages; their text together may be MAX_PROMPT_LENGTH x this long at most
MAX_MESSAGES = 64
_IMAGE_DATA_URL = re.compile(r"data:image/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,[A-Za-z0-9+/\s]*=*\s*")
_IMAGE_DETAILS = ("auto", "low", "high")


@dataclass(frozen=True)
class MessageRules:
    roles: tuple[str, ...]  # in the order error messages list them
    user_parts: frozenset[str]  # part types a user message may carry (other roles: text, assistant also refusal)
    message_limit: int  # text characters per message
    open_keys: bool  # unknown keys in a message are forwarded (/v1) or rejected (/chat)


def chat_rules(settings: Settings) -> MessageRules:
    return MessageRules(("system", "user", "assistant"), frozenset({"text", "image_url"}), settings.max_prompt_length, False)


def openai_rules(settings: Settings) -> MessageRules:
    # each message may use the whole budget; check_messages caps the sum at MAX_PROMPT_LENGTH x MAX_MESSAGES
    return MessageRules(
        ("system", "developer", "user", "assistant", "tool"),
        frozenset({"text", "image_url", "input_audio", "file"}),
        settings.max_prompt_length * MAX_MESSAGES,
        True,
    )


def check_messages(value: Any, settings: Settings, rules: MessageRules) -> int:
    """Check `messages` (1..MAX_MESSAGES) in place; return the number of text characters they hold."""
    if not isinstance(value, list) or not value:
        raise invalid("messages", "'messages' must be a non-empty array", "invalid_type")
    if len(value) > MAX_MESSAGES:
        raise invalid("messages", f"'messages' has {len(value)} items; the limit is {MAX_MESSAGES}", "too_many_messages")
    total = sum(_check_message(f"messages[{index}]", message, rules) for index, message in enumerate(value))
    budget = settings.max_prompt_length * MAX_MESSAGES
    if total > budget:
        raise invalid("messages", f"messages total {total} characters; the limit is {budget}", "prompt_too_long")
    return total


def _check_message(field: str, message: Any, rules: MessageRules) -> int:
    if not isinstance(message, dict):
        raise invalid(field, f"'{field}' must be an object", "invalid_type")
    role = message.get("role")
    if not isinstance(role, str) or role not in rules.roles:  # a list or object here is unhashable: check the type first
        raise invalid(f"{field}.role", f"'{field}.role' must be one of {', '.join(rules.roles)}", "invalid_role")
    if not rules.open_keys:
        extra = sorted(set(message) - {"role", "content", "name"})
        if extra:
            raise invalid(f"{field}.{extra[0]}", f"unknown field '{field}.{extra[0]}'", "unknown_field")
    _optional_string(message, "name", field)
    if role == "assistant" and message.get("tool_calls") is not None:
        _check_tool_calls(f"{field}.tool_calls", message["tool_calls"])
        if message.get("content") is None:
            return 0  # a call without words
    if role == "tool":
        _required_string(message, "tool_call_id", field)
    parts = {"user": rules.user_parts, "assistant": frozenset({"text", "refusal"})}.get(role, frozenset({"text"}))
    # a tool's result and an assistant turn that only calls tools may be empty
    may_be_empty = role == "tool" or (role == "assistant" and "tool_calls" in message)
    return _check_content(f"{field}.content", message.get("content"), parts, rules.message_limit, may_be_empty)


def _check_content(field: str, content: Any, parts: frozenset[str], limit: int, may_be_empty: bool) -> int:
    if isinstance(content, str):
        return len(content) if may_be_empty and content == "" else len(check_text(field, content, limit))
    if not isinstance(content, list):
        raise invalid(field, f"'{field}' must be a string or an array of content parts", "invalid_type")
    if not content:
        raise invalid(field, f"'{field}' must not be an empty array", "empty_prompt")
    texts: list[str] = []
    other = False  # a picture, sound, file or refusal: content even without text
    for index, part in enumerate(content):
        kind = _check_part(f"{field}[{index}]", part, parts, limit)
        if kind == "text":
            texts.append(part["text"])
        other = other or kind != "text"
    text = "".join(texts)
    if len(text) > limit:
        raise invalid(field, f"'{field}' has {len(text)} characters of text; the limit is {limit}", "prompt_too_long")
    if not text.strip() and not other and not may_be_empty:
        raise invalid(field, f"'{field}' must not be empty or blank", "empty_prompt")
    return len(text)


def _check_part(field: str, part: Any, allowed: frozenset[str], limit: int) -> str:
    """One content part; returns its type. Keys the gateway does not know (cache_control...) pass unchanged."""
    if not isinstance(part, dict):
        raise invalid(field, f"'{field}' must be a content part object", "invalid_type")
    kind = part.get("type")
    if not isinstance(kind, str) or kind not in allowed:
        expected = ", ".join(sorted(allowed))
        raise invalid(f"{field}.type", f"'{field}.type' must be one of {expected} here", "unsupported_content")
    if kind == "text":
        text = _required_string(part, "text", field)
        if text.strip():
            check_text(f"{field}.text", text, limit)
    elif kind == "refusal":
        _required_string(part, "refusal", field)
    elif kind == "image_url":
        image = _required_object(part, "image_url", field)
        url = _required_string(image, "url", f"{field}.image_url")
        if not (url.startswith("https://") or _IMAGE_DATA_URL.fullmatch(url)):
            message = f"'{field}.image_url.url' must be an https:// URL or a data:image/...;base64,... URL"
            raise invalid(f"{field}.image_url.url", message, "invalid_url")
        detail = image.get("detail")
        if detail is not None and (not isinstance(detail, str) or detail not in _IMAGE_DETAILS):
            raise invalid(f"{field}.image_url.detail", f"'{field}.image_url.detail' must be one of auto, low, high", "unsupported_value")
    elif kind == "input_audio":
        audio = _required_object(part, "input_audio", field)
        _required_string(audio, "data", f"{field}.input_audio")
        _required_string(audio, "format", f"{field}.input_audio")
    else:  # file: inline data (a data: URL) or a provider file id, optionally named
        file = _required_object(part, "file", field)
        if file.get("file_data") is None and file.get("file_id") is None:
            raise invalid(f"{field}.file", f"'{field}.file' needs 'file_data' or 'file_id'", "missing_field")
        for key in ("file_data", "file_id", "filename"):
            _optional_string(file, key, f"{field}.file")
    return kind


def _check_tool_calls(field: str, calls: Any) -> None:
    if not isinstance(calls, list):
        raise invalid(field, f"'{field}' must be an array", "invalid_type")
    for index, call in enumerate(calls):
        path = f"{field}[{index}]"
        if not isinstance(call, dict):
            raise invalid(path, f"'{path}' must be an object", "invalid_type")
        _required_string(call, "id", path)
        if call.get("type", "function") != "function":
            raise invalid(f"{path}.type", f"'{path}.type' must be 'function'", "unsupported_value")
        function = _required_object(call, "function", path)
        _required_string(function, "name", f"{path}.function")
        _required_string(function, "arguments", f"{path}.function")


def _required_object(parent: dict[str, Any], key: str, field: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        raise invalid(f"{field}.{key}", f"'{field}.{key}' is required", "missing_field")
    if not isinstance(value, dict):
        raise invalid(f"{field}.{key}", f"'{field}.{key}' must be an object", "invalid_type")
    return value


def _required_string(parent: dict[str, Any], key: str, field: str) -> str:
    if parent.get(key) is None:
        raise invalid(f"{field}.{key}", f"'{field}.{key}' is required", "missing_field")
    return _optional_string(parent, key, field) or ""


def _optional_string(parent: dict[str, Any], key: str, field: str) -> str | None:
    value = parent.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid(f"{field}.{key}", f"'{field}.{key}' must be a string", "invalid_type")
    return value


def content_text(content: Any) -> str:
    """A message's text for logs: its string, or its text parts joined, other parts as `[type]`."""
    if not isinstance(content, list):
        return "" if content is None else str(content)
    return "".join(part.get("text", "") if part.get("type") == "text" else f"[{part.get('type')}]" for part in content)

"""`POST /chat` bodies: the simple schema (a prompt, or messages with text and image parts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.config import Settings
from server.schemas.common import check_model, check_number, check_text, invalid, parse_json_object, reject_unknown
from server.schemas.messages import chat_rules, check_messages

_CHAT_FIELDS = frozenset({"prompt", "messages", "model", "temperature", "max_tokens", "system", "resumable"})


@dataclass(frozen=True)
class ChatRequest:
    """A validated /chat request, ready to become an upstream payload."""

    messages: list[dict[str, Any]]
    model: str
    options: dict[str, Any]
    prompt_chars: int  # text characters only: pictures are bounded by MAX_BODY_BYTES
    resumable: bool = False  # the client can reattach with GET /chat/streams/{stream_id}


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
        chars = len(messages[0]["content"])
    else:
        messages = data["messages"]
        chars = check_messages(messages, settings, chat_rules(settings))
    if "system" in data:
        messages.insert(0, {"role": "system", "content": check_text("system", data["system"], limit)})
        chars += len(data["system"])
    options: dict[str, Any] = {}
    if "temperature" in data:
        options["temperature"] = check_number("temperature", data["temperature"], 0, 2)
    if "max_tokens" in data:
        options["max_tokens"] = check_number("max_tokens", data["max_tokens"], 1, settings.max_tokens_limit, integer=True)
    model = check_model(data["model"], settings) if "model" in data else settings.model
    resumable = data.get("resumable", False)
    if not isinstance(resumable, bool):
        raise invalid("resumable", "'resumable' must be true or false", "invalid_type")
    return ChatRequest(messages, model, options, chars, resumable)

"""`POST /v1/chat/completions` bodies: OpenAI's (and OpenRouter's) request shape, checked before any upstream call.

Every documented field is checked by type (and range where the API defines one) and forwarded exactly as
sent: nothing renamed, nothing dropped. A top-level field outside the set is a 400 naming it, so a typo
never passes silently; inside messages, parts and tools, keys the gateway does not know (provider
extensions such as `cache_control`) pass unchanged. Failures are the same 400 `ApiError`s as /chat (the
/v1 handlers render them in OpenAI's error shape, `param` naming the exact path). `null` for an optional
top-level field means "not given", as in OpenAI's API.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.config import Settings
from server.schemas.common import check_model, check_number, check_text, invalid, parse_json_object, reject_unknown
from server.schemas.messages import check_messages, openai_rules

MAX_STOP_SEQUENCES = 4
MAX_USER_LENGTH = 256
MAX_TOOLS = 128
MAX_TOP_LOGPROBS = 20
_SEED_LIMIT = 2**63
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOOL_CHOICES = ("none", "auto", "required")
_RESPONSE_FORMATS = ("text", "json_object", "json_schema")

Check = Callable[[str, Any, Settings], None]


def _number(low: float, high: float, *, integer: bool = False) -> Check:
    def check(field: str, value: Any, settings: Settings) -> None:
        check_number(field, value, low, high, integer=integer)

    return check


def _kind(kind: type, name: str) -> Check:
    def check(field: str, value: Any, settings: Settings) -> None:
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise invalid(field, f"'{field}' must be {name}", "invalid_type")

    return check


def _max_tokens(field: str, value: Any, settings: Settings) -> None:
    check_number(field, value, 1, settings.max_tokens_limit, integer=True)


def _stop(field: str, value: Any, settings: Settings) -> None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in items):
        message = f"'stop' must be a non-empty string or an array of 1 to {MAX_STOP_SEQUENCES} non-empty strings"
        raise invalid(field, message, "invalid_type")


def _user(field: str, value: Any, settings: Settings) -> None:
    check_text(field, value, MAX_USER_LENGTH)


def _n(field: str, value: Any, settings: Settings) -> None:
    if isinstance(value, bool) or value != 1:
        # SDKs such as LangChain send n=1 by default; more choices than one are not relayed
        raise invalid(field, "'n' must be 1: the gateway relays one choice", "unsupported_value")


def _logit_bias(field: str, value: Any, settings: Settings) -> None:
    _kind(dict, "an object of token id -> bias")(field, value, settings)
    for token, bias in value.items():
        if not token.isdigit():
            raise invalid(f"{field}.{token}", f"'{field}' keys must be token ids (digits)", "invalid_type")
        check_number(f"{field}.{token}", bias, -100, 100)


def _models(field: str, value: Any, settings: Settings) -> None:
    if not isinstance(value, list) or not value:
        raise invalid(field, f"'{field}' must be a non-empty array of model ids", "invalid_type")
    for index, model in enumerate(value):
        check_model(model, settings, f"{field}[{index}]")


def _strings(field: str, value: Any, settings: Settings) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise invalid(field, f"'{field}' must be an array of strings", "invalid_type")


def _plugins(field: str, value: Any, settings: Settings) -> None:
    _kind(list, "an array of plugin objects")(field, value, settings)
    for index, plugin in enumerate(value):
        _object(f"{field}[{index}]", plugin)
        _string(f"{field}[{index}].id", plugin.get("id"))


def _usage(field: str, value: Any, settings: Settings) -> None:
    _object(field, value)
    _flag(f"{field}.include", value.get("include"))


def _reasoning(field: str, value: Any, settings: Settings) -> None:
    _object(field, value)
    _string(f"{field}.effort", value.get("effort"), required=False)
    if value.get("max_tokens") is not None:
        check_number(f"{field}.max_tokens", value["max_tokens"], 0, math.inf, integer=True)
    _flag(f"{field}.exclude", value.get("exclude"))
    _flag(f"{field}.enabled", value.get("enabled"))


def _tools(field: str, value: Any, settings: Settings) -> None:
    if not isinstance(value, list):
        raise invalid(field, f"'{field}' must be an array of tools", "invalid_type")
    if len(value) > MAX_TOOLS:
        raise invalid(field, f"'{field}' has {len(value)} items; the limit is {MAX_TOOLS}", "out_of_range")
    for index, tool in enumerate(value):
        path = f"{field}[{index}]"
        _object(path, tool)
        if tool.get("type") != "function":
            raise invalid(f"{path}.type", f"'{path}.type' must be 'function'", "unsupported_value")
        _named_schema(f"{path}.function", tool.get("function"), "parameters")


def _tool_choice(field: str, value: Any, settings: Settings) -> None:
    if isinstance(value, str):
        if value not in _TOOL_CHOICES:
            raise invalid(field, f"'{field}' must be one of {', '.join(_TOOL_CHOICES)} or a function choice", "unsupported_value")
        return
    _object(field, value)
    _string(f"{field}.type", value.get("type"))
    if value["type"] == "function":
        _object(f"{field}.function", value.get("function"))
        _function_name(f"{field}.function.name", value["function"].get("name"))


def _response_format(field: str, value: Any, settings: Settings) -> None:
    _object(field, value)
    kind = value.get("type")
    if not isinstance(kind, str) or kind not in _RESPONSE_FORMATS:
        raise invalid(f"{field}.type", f"'{field}.type' must be one of {', '.join(_RESPONSE_FORMATS)}", "unsupported_value")
    if kind == "json_schema":
        _named_schema(f"{field}.json_schema", value.get("json_schema"), "schema")


def _named_schema(field: str, value: Any, schema_key: str) -> None:
    """A tool's `function` or a `json_schema` format: a name, an optional description, a JSON Schema, `strict`."""
    _object(field, value)
    _function_name(f"{field}.name", value.get("name"))
    _string(f"{field}.description", value.get("description"), required=False)
    if value.get(schema_key) is not None:
        _object(f"{field}.{schema_key}", value[schema_key])
    _flag(f"{field}.strict", value.get("strict"))


def _object(field: str, value: Any, settings: Settings | None = None) -> None:
    if value is None:
        raise invalid(field, f"'{field}' is required", "missing_field")
    if not isinstance(value, dict):
        raise invalid(field, f"'{field}' must be an object", "invalid_type")


def _string(field: str, value: Any, *, required: bool = True) -> None:
    if value is None and required:
        raise invalid(field, f"'{field}' is required", "missing_field")
    if value is not None and not isinstance(value, str):
        raise invalid(field, f"'{field}' must be a string", "invalid_type")


def _flag(field: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise invalid(field, f"'{field}' must be true or false", "invalid_type")


def _function_name(field: str, value: Any) -> None:
    _string(field, value)
    if not _FUNCTION_NAME.fullmatch(value):
        raise invalid(field, f"'{field}' must be 1 to 64 letters, digits, _ or -", "invalid_value")


# field -> its check; `model`, `messages`, `stream` and `stream_options` are handled on their own
_CHECKS: dict[str, Check] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "top_k": _number(0, math.inf, integer=True),
    "frequency_penalty": _number(-2, 2),
    "presence_penalty": _number(-2, 2),
    "repetition_penalty": _number(0, 2),
    "min_p": _number(0, 1),
    "top_a": _number(0, 1),
    "seed": _number(-_SEED_LIMIT, _SEED_LIMIT - 1, integer=True),
    "max_tokens": _max_tokens,
    "max_completion_tokens": _max_tokens,
    "logprobs": _kind(bool, "true or false"),
    "top_logprobs": _number(0, MAX_TOP_LOGPROBS, integer=True),
    "logit_bias": _logit_bias,
    "stop": _stop,
    "user": _user,
    "n": _n,
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _kind(bool, "true or false"),
    "response_format": _response_format,
    "models": _models,
    "provider": _object,
    "reasoning": _reasoning,
    "transforms": _strings,
    "plugins": _plugins,
    "usage": _usage,
}
FIELDS = frozenset({"model", "messages", "stream", "stream_options", *_CHECKS})


@dataclass(frozen=True)
class OpenAIChatRequest:
    """A validated request: the upstream payload (the client's fields without `stream`/`stream_options`),
    what the client asked for, and how much text it sent."""

    payload: dict[str, Any]
    stream: bool
    include_usage: bool  # the client asked for the usage chunk (`stream_options.include_usage`)
    prompt_chars: int  # text characters only: pictures and files are bounded by MAX_BODY_BYTES

    @property
    def model(self) -> str:
        return str(self.payload["model"])


def validate_openai_chat(body: bytes, settings: Settings) -> OpenAIChatRequest:
    data = {name: value for name, value in parse_json_object(body).items() if value is not None}
    reject_unknown(data, FIELDS)
    if "messages" not in data:
        raise invalid("messages", "'messages' is required: an array of {role, content}", "missing_prompt")
    prompt_chars = check_messages(data["messages"], settings, openai_rules(settings))
    data["model"] = check_model(data["model"], settings) if "model" in data else settings.model
    for name, check in _CHECKS.items():
        if name in data:
            check(name, data[name], settings)
    if "max_tokens" in data and "max_completion_tokens" in data:
        raise invalid("max_completion_tokens", "send only one of 'max_tokens' or 'max_completion_tokens'", "invalid_request")
    stream = data.pop("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream", "'stream' must be true or false", "invalid_type")
    include_usage = _check_stream_options(data.pop("stream_options"), stream) if "stream_options" in data else False
    return OpenAIChatRequest(data, stream, include_usage, prompt_chars)


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

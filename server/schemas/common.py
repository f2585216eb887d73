"""Request bodies: decode, parse and check every field before any upstream call.

Each failure is an `ApiError` with status 400 (or 413/415 from the edge), an `error_type` and a message
naming the field, so a client can fix its request without guessing.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from server.config import Settings
from server.errors import ApiError

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # only a lone one survives JSON decoding (a pair becomes one character)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_MODEL = re.compile(r"[A-Za-z0-9._~:-]+/[A-Za-z0-9._~:@/-]+")


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
    if _SURROGATE_ESCAPE.search(text):  # rare: only then walk the value for the string that holds it
        try:
            _reject_lone_surrogates(value, "")
        except RecursionError:
            raise invalid(None, "request body is not valid JSON: nested too deeply", "invalid_json") from None
    return value


def _reject_lone_surrogates(value: Any, field: str) -> None:
    """A lone surrogate (`"\\ud800"`) is valid JSON but no character: it cannot be sent upstream as UTF-8."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise invalid(field, f"'{field}' contains a lone surrogate (\\ud800-\\udfff): half a character", "invalid_characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            path = f"{field}.{key}" if field else key
            _reject_lone_surrogates(key, path)
            _reject_lone_surrogates(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_lone_surrogates(item, f"{field}[{index}]")


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
        expected = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
        raise invalid(field, f"'{field}' must be {expected}", "out_of_range")
    return value


def allowed_models(settings: Settings) -> tuple[str, ...]:
    """The models clients may choose when ALLOWED_MODELS is set: OPENROUTER_MODEL first, then that list; else ()."""
    if not settings.allowed_models:
        return ()
    return (settings.model, *(model for model in settings.allowed_models if model != settings.model))


def check_model(value: Any, settings: Settings, field: str = "model") -> str:
    if not isinstance(value, str):
        raise invalid(field, f"'{field}' must be a string", "invalid_type")
    allowed = allowed_models(settings)
    if allowed:
        if value not in allowed:
            raise invalid(field, f"model '{value}' is not allowed; allowed: {', '.join(allowed)}", "model_not_allowed")
    elif not _MODEL.fullmatch(value):
        raise invalid(field, f"'{field}' must look like vendor/name", "invalid_model")
    return value

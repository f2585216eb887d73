"""Logging: one configuration for our loggers and Tornado's, as colored console lines or JSON lines.

Every record gets the current request id from `server.context` (a filter), so lines logged by the
upstream client while serving a request carry it without passing it around. Structured fields travel
as `extra={...}`; the console shows one readable line, JSON shows every known field.

Nothing a client sends can break a line: JSON escapes every control character and every line
separator (`str.splitlines()` included), the console escapes them as `\\n`, `\\x1b`, ...; lone surrogates
(from a JSON `"\\ud800"` escape) are written as `\\ud800` instead of failing the UTF-8 encoding.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

import colorama
from colorama import Fore, Style

from server.context import request_id_var
from server.schemas.messages import content_text

FIELDS = (
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "client_ip",
    "key_id",
    "model",
    "upstream_status",
    "ttfb_ms",
    "ttft_ms",
    "events",
    "prompt_chars",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "usage_estimated",
    "outcome",
    "attempt",
    "error_type",
    "finish_reason",
    "resumes",
    "prompt",
    "answer",
)

# Tornado's loggers: routed through our handler, never through one of their own.
TORNADO_LOGGERS = ("tornado.access", "tornado.application", "tornado.general")

_LEVEL_COLORS = {"DEBUG": Fore.CYAN, "INFO": Fore.GREEN, "WARNING": Fore.YELLOW, "ERROR": Fore.RED, "CRITICAL": Fore.RED + Style.BRIGHT}
_METHOD_COLORS = {
    "GET": Fore.BLUE,
    "HEAD": Fore.BLUE,
    "POST": Fore.GREEN,
    "PUT": Fore.YELLOW,
    "PATCH": Fore.YELLOW,
    "DELETE": Fore.RED,
    "OPTIONS": Fore.MAGENTA,
}

# C0/C1 controls, DEL, and the separators `str.splitlines()` also splits on; plus lone surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")  # json.dumps escapes C0 itself
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def safe_text(text: str) -> str:
    """`text` with everything that could split a line, recolor a terminal or fail UTF-8 escaped."""
    return _UNSAFE.sub(_escape_char, text)


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: value for name in FIELDS if (value := getattr(record, name, None)) is not None}


def _iso_utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """Exactly one JSON object per line: `ts` (ISO 8601 UTC, ms), `level`, `logger`, `msg`, known fields, `exc`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # The characters left raw by ensure_ascii=False only occur inside strings, where \uXXXX is valid JSON.
        return _JSON_UNSAFE.sub(_escape_char, json.dumps(entry, ensure_ascii=False, default=str))


class ConsoleFormatter(logging.Formatter):
    """`time LEVEL [request-id] METHOD path status duration message key=value...`, colored on request."""

    def __init__(self, color: bool) -> None:
        super().__init__()
        self.color = color

    def _part(self, color: str, text: str) -> str:
        text = safe_text(text)
        return f"{color}{text}{Style.RESET_ALL}" if self.color and color else text

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        when = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        level = "WARN" if record.levelname == "WARNING" else record.levelname
        parts = [when, self._part(_LEVEL_COLORS.get(record.levelname, ""), f"{level:<5}")]
        if request_id := fields.pop("request_id", None):
            parts.append(self._part(Fore.MAGENTA, f"[{request_id}]"))
        if method := fields.pop("method", None):
            parts.append(self._part(_METHOD_COLORS.get(str(method), ""), str(method)))
        if path := fields.pop("path", None):
            parts.append(self._part("", str(path)))
        if (status := fields.pop("status", None)) is not None:
            parts.append(self._part(status_color(int(status)), str(status)))
        if (duration := fields.pop("duration_ms", None)) is not None:
            parts.append(f"{duration}ms")
        parts.append(self._part("", record.getMessage()))
        parts.extend(self._part("", f"{name}={_console_value(value)}") for name, value in fields.items())
        if record.exc_info:
            parts.append(self._part("", "exc=" + json.dumps(self.formatException(record.exc_info), ensure_ascii=False)))
        return " ".join(parts)


def _console_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def status_color(status: int) -> str:
    if status >= 500:
        return Fore.RED
    if status >= 400:
        return Fore.YELLOW
    if status >= 300:
        return Fore.CYAN
    return Fore.GREEN


def build_formatter(log_format: str, log_color: str, stream: IO[str], no_color: bool = False) -> logging.Formatter:
    """`auto` is console on a TTY and JSON otherwise; colors follow the TTY unless NO_COLOR or LOG_COLOR say otherwise."""
    tty = bool(getattr(stream, "isatty", None) and stream.isatty())
    if log_format == "json" or (log_format == "auto" and not tty):
        return JsonFormatter()
    if log_color == "always":
        color = True
    elif log_color == "never" or no_color:
        color = False
    else:
        color = tty
    return ConsoleFormatter(color)


def configure_logging(
    log_format: str = "auto",
    log_color: str = "auto",
    level: str = "INFO",
    stream: IO[str] | None = None,
    *,
    no_color: bool = False,
) -> logging.Handler:
    """Route the root logger (ours and Tornado's access/application/general loggers) through one handler.

    Called again, it replaces the previous configuration. Returns the handler (tests read its stream).
    """
    if stream is None:
        stream = sys.stderr
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(encoding="utf-8", errors="backslashreplace")  # JSON lines are UTF-8 whatever the locale
    colorama.just_fix_windows_console()  # ANSI colors on old Windows consoles; a no-op elsewhere
    handler = logging.StreamHandler(stream)
    handler.setFormatter(build_formatter(log_format, log_color, stream, no_color))
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in TORNADO_LOGGERS:  # e.g. tornado.options' enable_pretty_logging would add a second, different format
        tornado_logger = logging.getLogger(name)
        for existing in list(tornado_logger.handlers):
            tornado_logger.removeHandler(existing)
        tornado_logger.setLevel(logging.NOTSET)
        tornado_logger.propagate = True
    return handler


def prompt_fields(log_prompts: bool, messages: Sequence[Mapping[str, Any]], answer: str | None = None) -> dict[str, str]:
    """The `prompt` (and `answer`) log fields when LOG_PROMPTS=true, else none: prompts and answers are user data.

    Use as `extra={..., **prompt_fields(settings.log_prompts, messages, answer)}`. One message logs its
    content; several log one `role: content` line each.
    """
    if not log_prompts:
        return {}
    if len(messages) == 1:
        prompt = content_text(messages[0].get("content"))
    else:
        prompt = "\n".join(f"{m.get('role', '')}: {content_text(m.get('content'))}" for m in messages)
    fields = {"prompt": prompt}
    if answer is not None:
        fields["answer"] = answer
    return fields

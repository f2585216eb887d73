"""Logging: one configuration for our loggers and Tornado's, as colored console lines or JSON lines.

Every record gets the current request id from `server.context` (a filter), so lines logged by the
upstream client while serving a request carry it without passing it around. Structured fields travel
as `extra={...}`; the console shows the seed's layout, JSON shows every known field.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import IO, Any

from colorama import Fore, Style

from server.context import request_id_var

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
    "ttft_ms",
    "events",
    "prompt_chars",
    "completion_tokens",
    "outcome",
    "attempt",
    "error_type",
    "finish_reason",
    "prompt",
    "answer",
)

_LEVEL_COLORS = {"DEBUG": Fore.CYAN, "INFO": Fore.GREEN, "WARNING": Fore.YELLOW, "ERROR": Fore.RED, "CRITICAL": Fore.RED + Style.BRIGHT}
_METHOD_COLORS = {"GET": Fore.BLUE, "POST": Fore.GREEN, "PUT": Fore.YELLOW, "DELETE": Fore.RED, "OPTIONS": Fore.MAGENTA}


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: value for name in FIELDS if (value := getattr(record, name, None)) is not None}


class JsonFormatter(logging.Formatter):
    """Exactly one JSON object per line; json.dumps escapes anything a client could send."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class ConsoleFormatter(logging.Formatter):
    """`time LEVEL [request-id] METHOD path status duration message key=value...`, colored on request."""

    def __init__(self, color: bool) -> None:
        super().__init__()
        self.color = color

    def _paint(self, color: str, text: str) -> str:
        return f"{color}{text}{Style.RESET_ALL}" if self.color and color else text

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        when = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        level = record.levelname if record.levelname != "WARNING" else "WARN"
        parts = [when, self._paint(_LEVEL_COLORS.get(record.levelname, ""), f"{level:<5}")]
        request_id = fields.pop("request_id", None)
        if request_id:
            parts.append(self._paint(Fore.MAGENTA, f"[{request_id}]"))
        method = fields.pop("method", None)
        if method:
            parts.append(self._paint(_METHOD_COLORS.get(method, ""), str(method)))
        path = fields.pop("path", None)
        if path:
            parts.append(str(path))
        status = fields.pop("status", None)
        if status is not None:
            parts.append(self._paint(_status_color(int(status)), str(status)))
        duration = fields.pop("duration_ms", None)
        if duration is not None:
            parts.append(f"{duration}ms")
        parts.append(record.getMessage())
        parts.extend(
            f"{name}={json.dumps(value, ensure_ascii=False) if isinstance(value, str) else value}" for name, value in fields.items()
        )
        line = " ".join(parts)
        if record.exc_info:
            line += " exc=" + json.dumps(self.formatException(record.exc_info))
        return line.replace("\n", "\\n").replace("\r", "\\r")


def _status_color(status: int) -> str:
    if status >= 500:
        return Fore.RED
    if status >= 400:
        return Fore.YELLOW
    if status >= 300:
        return Fore.CYAN
    return Fore.GREEN


def build_formatter(log_format: str, log_color: str, stream: IO[str], environ: dict[str, str] | None = None) -> logging.Formatter:
    environ = dict(os.environ) if environ is None else environ
    tty = hasattr(stream, "isatty") and stream.isatty()
    if log_format == "json" or (log_format == "auto" and not tty):
        return JsonFormatter()
    if log_color == "always":
        color = True
    elif log_color == "never" or "NO_COLOR" in environ:
        color = False
    else:
        color = tty
    return ConsoleFormatter(color)


def configure_logging(log_format: str = "auto", log_color: str = "auto", level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Route the root logger (ours and Tornado's access/application/general loggers) through one handler."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(build_formatter(log_format, log_color, stream))
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)

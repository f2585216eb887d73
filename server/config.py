"""Settings: the one place that reads the environment.

`load_settings()` loads `.env` (the real environment wins), validates every value and returns one frozen
`Settings`. A bad value raises `ConfigError` naming the variable and the expected form; `run.py` turns
that into one line on stderr and exit code 2, so a typo never starts a half-configured gateway.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

T = TypeVar("T")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and the expected form."""

    def __init__(self, variable: str, expected: str, got: str | None = None) -> None:
        shown = "" if got is None else f" (got {got!r})"
        super().__init__(f"{variable} must be {expected}{shown}")
        self.variable = variable


@dataclass(frozen=True)
class Settings:
    api_key: str = field(default="", repr=False)
    base_url: str = "https://openrouter.ai/api/v1"
    model: str = "anthropic/claude-3.5-sonnet"
    host: str = "127.0.0.1"
    port: int = 8080
    demo: bool = False
    app_url: str = ""
    app_title: str = ""
    # edge
    rate_limit: float = 10.0
    rate_limit_burst: float = 10.0
    max_prompt_length: int = 4000
    max_body_bytes: int = 64 * 1024
    max_tokens_limit: int = 32768
    allowed_models: tuple[str, ...] = ()
    client_api_keys: tuple[str, ...] = field(default=(), repr=False)
    cors_allowed_origins: tuple[str, ...] = ("*",)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_streams_per_client: int = 8
    max_concurrent_streams: int = 1000
    hsts_enabled: bool = True
    hsts_max_age: int = 31536000
    # server timeouts (seconds)
    read_timeout: float = 15.0
    write_timeout: float = 15.0
    idle_timeout: float = 60.0
    shutdown_timeout: float = 30.0
    # upstream resilience (seconds)
    upstream_connect_timeout: float = 10.0
    first_token_timeout: float = 120.0
    upstream_idle_timeout: float = 60.0
    stream_max: float = 600.0
    heartbeat: float = 15.0
    upstream_retries: int = 2
    retry_max_wait: float = 5.0
    fallback_models: tuple[str, ...] = ()
    max_upstream_line_bytes: int = 1024 * 1024
    max_upstream_event_bytes: int = 1024 * 1024
    max_upstream_body_bytes: int = 8 * 1024 * 1024
    # observability
    log_format: str = "auto"
    log_color: str = "auto"
    log_level: str = "INFO"
    log_prompts: bool = False
    no_color: bool = False
    metrics_enabled: bool = True
    metrics_token: str = field(default="", repr=False)
    web_ui_enabled: bool = True
    demo_delay: float = 0.03
    # scale-out
    workers: int = 1
    rate_limit_backend: str = "memory"
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    rate_limit_fail_mode: str = "open"
    # token budgets (0 = off)
    token_budget: int = 0
    cost_budget_usd: float = 0.0
    budget_window: int = 86400
    # key -> (token budget, cost budget); None keeps the default for that column
    budget_overrides: tuple[tuple[str, int | None, float | None], ...] = field(default=(), repr=False)

    @property
    def open_relay(self) -> bool:
        """True when anyone who can reach the port can spend the upstream key."""
        return not self.client_api_keys and self.host not in LOOPBACK_HOSTS


def _number(parse: Callable[[str], T], expected: str, low: float, high: float) -> Callable[[str, str], T]:
    def convert(name: str, raw: str) -> T:
        try:
            value = parse(raw.strip())
        except ValueError:
            raise ConfigError(name, expected, raw) from None
        if not (low <= value <= high) or (isinstance(value, float) and math.isnan(value)):  # type: ignore[operator]
            raise ConfigError(name, expected, raw)
        return value

    return convert


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, "true or false", raw)


def _choice(*options: str) -> Callable[[str, str], str]:
    def convert(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ConfigError(name, "one of " + "|".join(options), raw)
        return value

    return convert


def _port(name: str, raw: str) -> int:
    """Accept `8080` and the Go seed's `:8080`."""
    return _number(int, "a port 1-65535 such as 8080 or :8080", 1, 65535)(name, raw.strip().removeprefix(":"))


def _url(name: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, "an http:// or https:// URL", raw)
    return value


def _list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _networks(name: str, raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in _list(name, raw))
    except ValueError:
        raise ConfigError(name, "a comma list of IPs or CIDRs such as 10.0.0.0/8,127.0.0.1", raw) from None


def _log_level(name: str, raw: str) -> str:
    value = raw.strip().upper()
    if value == "WARN":
        value = "WARNING"
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(name, "one of DEBUG|INFO|WARNING|ERROR", raw)
    return value


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _present(name: str, raw: str) -> bool:
    """no-color.org: any non-empty value counts (empty values never reach a converter)."""
    return True


def _redis_url(name: str, raw: str) -> str:
    value = raw.strip()
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(name, "a redis://, rediss:// or unix:// URL such as redis://127.0.0.1:6379/0")  # no echo: may hold a password
    return value


_seconds = _number(float, "a number of seconds > 0", 0.001, 1e7)
_count = _number(int, "a whole number >= 1", 1, 1 << 40)

# variable -> (Settings field, converter). Order is the order of `.env.example`.
_VARIABLES: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "OPENROUTER_API_KEY": ("api_key", _text),
    "OPENROUTER_BASE_URL": ("base_url", _url),
    "OPENROUTER_MODEL": ("model", _text),
    "HOST": ("host", _text),
    "PORT": ("port", _port),
    "APP_URL": ("app_url", _text),
    "APP_TITLE": ("app_title", _text),
    "RATE_LIMIT": ("rate_limit", _number(float, "a number of requests/second > 0 such as 10 or 0.5", 1e-6, 1e9)),
    "RATE_LIMIT_BURST": ("rate_limit_burst", _number(float, "a number >= 1", 1, 1e9)),
    "MAX_PROMPT_LENGTH": ("max_prompt_length", _count),
    "MAX_BODY_BYTES": ("max_body_bytes", _number(int, "a number of bytes between 64 and 67108864", 64, 1 << 26)),
    "MAX_TOKENS_LIMIT": ("max_tokens_limit", _count),
    "ALLOWED_MODELS": ("allowed_models", _list),
    "TOKEN_BUDGET": ("token_budget", _number(int, "a whole number of tokens >= 0 (0 = off)", 0, 1 << 62)),
    "COST_BUDGET_USD": ("cost_budget_usd", _number(float, "a number of US dollars >= 0 (0 = off)", 0, 1e12)),
    "BUDGET_WINDOW_SECS": ("budget_window", _number(int, "a whole number of seconds >= 1", 1, 1 << 31)),
    "CORS_ALLOWED_ORIGINS": ("cors_allowed_origins", _list),
    "TRUSTED_PROXIES": ("trusted_proxies", _networks),
    "MAX_STREAMS_PER_CLIENT": ("max_streams_per_client", _count),
    "MAX_CONCURRENT_STREAMS": ("max_concurrent_streams", _count),
    "HSTS_ENABLED": ("hsts_enabled", _bool),
    "HSTS_MAX_AGE": ("hsts_max_age", _number(int, "a number of seconds >= 0", 0, 1 << 31)),
    "READ_TIMEOUT_SECS": ("read_timeout", _seconds),
    "WRITE_TIMEOUT_SECS": ("write_timeout", _seconds),
    "IDLE_TIMEOUT_SECS": ("idle_timeout", _seconds),
    "SHUTDOWN_TIMEOUT_SECS": ("shutdown_timeout", _number(float, "a number of seconds >= 0", 0, 1e7)),
    "UPSTREAM_CONNECT_TIMEOUT_SECS": ("upstream_connect_timeout", _seconds),
    "FIRST_TOKEN_TIMEOUT_SECS": ("first_token_timeout", _seconds),
    "UPSTREAM_IDLE_TIMEOUT_SECS": ("upstream_idle_timeout", _seconds),
    "STREAM_MAX_SECS": ("stream_max", _seconds),
    "HEARTBEAT_SECS": ("heartbeat", _seconds),
    "UPSTREAM_RETRIES": ("upstream_retries", _number(int, "a whole number 0-10", 0, 10)),
    "RETRY_MAX_WAIT_SECS": ("retry_max_wait", _number(float, "a number of seconds >= 0", 0, 3600)),
    "FALLBACK_MODELS": ("fallback_models", _list),
    "MAX_UPSTREAM_LINE_BYTES": ("max_upstream_line_bytes", _number(int, "a number of bytes >= 1024", 1024, 1 << 30)),
    "MAX_UPSTREAM_EVENT_BYTES": ("max_upstream_event_bytes", _number(int, "a number of bytes >= 1024", 1024, 1 << 30)),
    "MAX_UPSTREAM_BODY_BYTES": ("max_upstream_body_bytes", _number(int, "a number of bytes >= 1024", 1024, 1 << 30)),
    "LOG_FORMAT": ("log_format", _choice("auto", "console", "json")),
    "LOG_COLOR": ("log_color", _choice("auto", "always", "never")),
    "LOG_LEVEL": ("log_level", _log_level),
    "LOG_PROMPTS": ("log_prompts", _bool),
    "NO_COLOR": ("no_color", _present),
    "METRICS_ENABLED": ("metrics_enabled", _bool),
    "METRICS_TOKEN": ("metrics_token", _text),
    "WEB_UI_ENABLED": ("web_ui_enabled", _bool),
    "WORKERS": ("workers", _number(int, "a whole number of processes >= 0 (0 = one per core)", 0, 1024)),
    "RATE_LIMIT_BACKEND": ("rate_limit_backend", _choice("memory", "redis")),
    "REDIS_URL": ("redis_url", _redis_url),
    "RATE_LIMIT_FAIL_MODE": ("rate_limit_fail_mode", _choice("open", "closed")),
    "DEMO_DELAY_MS": ("demo_delay", lambda n, raw: _number(float, "a number of milliseconds >= 0", 0, 1e6)(n, raw) / 1000),
}

_MODEL_FORM = "a model id of the form vendor/name"


_KEY_LINE_FORM = "one key a line, optionally followed by a token budget and a cost budget in USD (- keeps the default)"
KeyLine = tuple[str, int | None, float | None]


def _keys_from_file(path: str) -> tuple[KeyLine, ...]:
    """`key [token_budget [cost_budget_usd]]` a line; blank lines and `#` comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError("CLIENT_API_KEYS_FILE", f"a readable file with one key a line ({exc.strerror})") from None
    entries = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            entries.append(_key_line(line.split(), number))
    return tuple(entries)


def _key_line(columns: list[str], number: int) -> KeyLine:
    if len(columns) > 3:
        raise ConfigError("CLIENT_API_KEYS_FILE", f"{_KEY_LINE_FORM} (line {number} has {len(columns)} columns)")
    tokens, cost = [*columns[1:], "-", "-"][:2]
    try:
        token_budget = None if tokens == "-" else int(tokens)
        cost_budget = None if cost == "-" else float(cost)
    except ValueError:
        raise ConfigError("CLIENT_API_KEYS_FILE", f"{_KEY_LINE_FORM} (line {number})") from None  # no echo: the line holds a key
    if (token_budget is not None and token_budget < 0) or (cost_budget is not None and not 0 <= cost_budget < math.inf):
        raise ConfigError("CLIENT_API_KEYS_FILE", f"{_KEY_LINE_FORM}; budgets >= 0 (line {number})")
    return columns[0], token_budget, cost_budget


def load_settings(environ: Mapping[str, str] | None = None, *, demo: bool = False, env_file: str | None = ".env") -> Settings:
    """Build the settings from `environ` (default: `.env` overlaid by the real environment)."""
    if environ is None:
        merged = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file else {}
        merged.update(os.environ)
        environ = merged
    values: dict[str, object] = {"demo": demo}
    for variable, (attribute, convert) in _VARIABLES.items():
        raw = environ.get(variable)
        if raw is not None and raw.strip() != "":
            values[attribute] = convert(variable, raw)
    keys = tuple(_list("CLIENT_API_KEYS", environ.get("CLIENT_API_KEYS", "")))
    if environ.get("CLIENT_API_KEYS_FILE", "").strip():
        lines = _keys_from_file(environ["CLIENT_API_KEYS_FILE"].strip())
        keys += tuple(key for key, _, _ in lines)
        values["budget_overrides"] = tuple(line for line in lines if line[1:] != (None, None))
    values["client_api_keys"] = keys
    settings = Settings(**values)  # type: ignore[arg-type]
    if "rate_limit_burst" not in values:  # default: RATE_LIMIT, at least 1
        settings = replace(settings, rate_limit_burst=max(1.0, settings.rate_limit))
    return _check(settings)


def _check(settings: Settings) -> Settings:
    if not settings.demo and not settings.api_key:
        raise ConfigError("OPENROUTER_API_KEY", "set to your OpenRouter key (or start with --demo for simulated answers)")
    if "/" not in settings.model:
        raise ConfigError("OPENROUTER_MODEL", _MODEL_FORM, settings.model)
    for model in settings.fallback_models:
        if "/" not in model:
            raise ConfigError("FALLBACK_MODELS", "a comma list of " + _MODEL_FORM + " ids", model)
    if settings.max_upstream_event_bytes < settings.max_upstream_line_bytes:
        expected = f"at least MAX_UPSTREAM_LINE_BYTES ({settings.max_upstream_line_bytes})"
        raise ConfigError("MAX_UPSTREAM_EVENT_BYTES", expected, str(settings.max_upstream_event_bytes))
    for origin in settings.cors_allowed_origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ConfigError("CORS_ALLOWED_ORIGINS", "* or a comma list of origins such as https://app.example", origin)
    return settings

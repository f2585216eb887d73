"""Settings: the one place that reads the environment, and the one definition of every variable.

Each `Settings` field names its variable, default, parser and help in one `setting(...)` line; loading,
`.env.example` and docs/configuration.md (written by `make docs`, see server/config_docs.py) all derive from
it. `load_settings()` loads `.env` (the real environment wins), validates every value and returns one frozen
`Settings`. A bad value raises `ConfigError` naming the variable and the expected form; `run.py` turns
that into one line on stderr and exit code 2, so a typo never starts a half-configured gateway.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

T = TypeVar("T")
Parser = Callable[[str, str], Any]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and the expected form."""

    def __init__(self, variable: str, expected: str, got: str | None = None) -> None:
        shown = "" if got is None else f" (got {got!r})"
        super().__init__(f"{variable} must be {expected}{shown}")
        self.variable = variable


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
    """Accept `8080` and the Go original's `:8080`."""
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
_seconds_or_zero = _number(float, "a number of seconds >= 0", 0, 1e7)
_count = _number(int, "a whole number >= 1", 1, 1 << 40)


def _milliseconds(name: str, raw: str) -> float:
    """Milliseconds in the environment, seconds in `Settings`."""
    return _number(float, "a number of milliseconds >= 0", 0, 1e6)(name, raw) / 1000


_KEY_LINE_FORM = "one key a line, optionally followed by a token budget and a cost budget in USD (- keeps the default)"
KeyLine = tuple[str, int | None, float | None]  # key, token budget, cost budget; None keeps the default


def _keys_file(name: str, raw: str) -> tuple[KeyLine, ...]:
    """`key [token_budget [cost_budget_usd]]` a line; blank lines and `#` comments are skipped."""
    try:
        lines = Path(raw.strip()).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(name, f"a readable file with one key a line ({exc.strerror})") from None
    entries = enumerate(lines, 1)
    return tuple(_key_line(name, line.split(), number) for number, line in entries if line.strip() and not line.lstrip().startswith("#"))


def _key_line(name: str, columns: list[str], number: int) -> KeyLine:
    if len(columns) > 3:
        raise ConfigError(name, f"{_KEY_LINE_FORM} (line {number} has {len(columns)} columns)")
    tokens, cost = [*columns[1:], "-", "-"][:2]
    try:
        token_budget = None if tokens == "-" else int(tokens)
        cost_budget = None if cost == "-" else float(cost)
    except ValueError:
        raise ConfigError(name, f"{_KEY_LINE_FORM} (line {number})") from None  # no echo: the line holds a key
    if (token_budget is not None and token_budget < 0) or (cost_budget is not None and not 0 <= cost_budget < math.inf):
        raise ConfigError(name, f"{_KEY_LINE_FORM}; budgets >= 0 (line {number})")
    return columns[0], token_budget, cost_budget


@dataclass(frozen=True)
class Variable:
    """One environment variable as loaded and documented: derived from its `Settings` field."""

    name: str
    field: str
    default: object
    parse: Parser
    help: str
    heading: str | None = None  # starts a section of `.env.example` and of the docs table
    example: str | None = None  # what `.env.example` writes when the default is not written as itself

    @property
    def written_default(self) -> str:
        """The default as one would write it in `.env` ("" = unset)."""
        return self.example if self.example is not None else _written(self.default)


def _written(value: object) -> str:
    """How `.env` spells a value: true/false, 10 rather than 10.0, comma lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(_written(item) for item in value)
    return str(value)


def setting(
    variable: str, default: T, parse: Parser, help: str, *, heading: str | None = None, example: str | None = None, secret: bool = False
) -> T:
    """A `Settings` field read from `variable`; `secret` keeps it out of `repr` (and so out of logs)."""
    spec = {"name": variable, "parse": parse, "help": help, "heading": heading, "example": example}
    return field(default=default, repr=not secret, metadata={"variable": spec})


@dataclass(frozen=True)
class Settings:
    """Every setting; each `setting(...)` line is the one definition of its variable (section, default, parser, help)."""

    demo: bool = False  # the `--demo` flag, not a variable

    api_key: str = setting(
        "OPENROUTER_API_KEY", "", _text, "upstream key; required unless you start with `--demo`; never logged, never echoed",
        heading="Upstream", secret=True,
    )
    base_url: str = setting(
        "OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1", _url, "any OpenAI-compatible base URL, e.g. `http://localhost:11434/v1`",
    )
    model: str = setting("OPENROUTER_MODEL", "anthropic/claude-3.5-sonnet", _text, "default model (`vendor/name`)")
    app_url: str = setting("APP_URL", "", _text, "sent upstream as `HTTP-Referer` when set")
    app_title: str = setting("APP_TITLE", "", _text, "sent upstream as `X-Title` when set")

    host: str = setting("HOST", "127.0.0.1", _text, "listen address", heading="Server")
    port: int = setting("PORT", 8080, _port, "listen port; the Go original's `:8080` form works too")
    read_timeout: float = setting("READ_TIMEOUT_SECS", 15.0, _seconds, "seconds to receive a request body")
    write_timeout: float = setting(
        "WRITE_TIMEOUT_SECS", 15.0, _seconds,
        "seconds a single flush may stall (client not reading) before the client counts as gone; never cuts a healthy stream",
    )
    idle_timeout: float = setting("IDLE_TIMEOUT_SECS", 60.0, _seconds, "seconds a keep-alive connection may idle before it is closed")
    header_timeout: float = setting(
        "HEADER_TIMEOUT_SECS", 10.0, _seconds,
        "seconds a new connection gets to send its first request head; a silent or dribbling client is closed then",
    )
    max_connections: int | None = setting(
        "MAX_CONNECTIONS", None, _count,
        "open client connections per process; past it a new one is closed at once; empty = (soft NOFILE limit - 64) // 2",
        example="",
    )
    shutdown_timeout: float = setting(
        "SHUTDOWN_TIMEOUT_SECS", 30.0, _seconds_or_zero, "seconds open streams get to finish after SIGTERM/SIGINT",
    )
    web_ui_enabled: bool = setting(
        "WEB_UI_ENABLED", True, _bool, "`false` turns off the chat page: `/` and `/static/*` answer the JSON 404",
    )

    listed_client_keys: tuple[str, ...] = setting(
        "CLIENT_API_KEYS", (), _list,
        "comma list of keys clients must send as `Authorization: Bearer <key>` on `/chat` and `/v1/*`; empty = open (a WARN at "
        "start-up when `HOST` is not loopback); never logged: logs show a key id, the first 8 hex digits of its SHA-256",
        heading="Edge: client keys, rate limits, validation, headers", secret=True,
    )
    file_client_keys: tuple[KeyLine, ...] = setting(
        "CLIENT_API_KEYS_FILE", (), _keys_file,
        "a file of keys added to `CLIENT_API_KEYS`, one a line as `key [token_budget [cost_budget_usd]]`: `-` keeps the "
        "default budget, `0` is none for that key; blank lines and `#` comments ignored",
        secret=True,
    )
    rate_limit: float = setting(
        "RATE_LIMIT", 10.0, _number(float, "a number of requests/second > 0 such as 10 or 0.5", 1e-6, 1e9),
        "requests/second per client (its key id when client keys are on, else its IP); fractions such as `0.5` work",
    )
    rate_limit_burst: float = setting(
        "RATE_LIMIT_BURST", 10.0, _number(float, "a number >= 1", 1, 1e9),
        "token-bucket capacity: how many requests a quiet client may send at once; empty = `RATE_LIMIT`, at least 1", example="",
    )
    max_streams_per_client: int = setting("MAX_STREAMS_PER_CLIENT", 8, _count, "concurrent streams per client; one more is a 429")
    max_concurrent_streams: int = setting(
        "MAX_CONCURRENT_STREAMS", 1000, _count, "concurrent streams in the process; one more is a 503 with `Retry-After`",
    )
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = setting(
        "TRUSTED_PROXIES", (), _networks,
        "comma list of the IPs/CIDRs of your reverse proxies (e.g. `10.0.0.0/8,127.0.0.1`); only their `X-Forwarded-For` and "
        "`X-Real-IP` are believed",
    )
    cors_allowed_origins: tuple[str, ...] = setting(
        "CORS_ALLOWED_ORIGINS", ("*",), _list, "`*` or a comma list of origins such as `https://app.example,https://admin.example`",
    )
    hsts_enabled: bool = setting(
        "HSTS_ENABLED", True, _bool,
        "send `Strict-Transport-Security` on every response (browsers honour it over HTTPS only, e.g. behind a TLS proxy)",
    )
    hsts_max_age: int = setting("HSTS_MAX_AGE", 31536000, _number(int, "a number of seconds >= 0", 0, 1 << 31), "its `max-age`, seconds")
    max_body_bytes: int = setting(
        "MAX_BODY_BYTES", 64 * 1024, _number(int, "a number of bytes between 64 and 67108864", 64, 1 << 26),
        "largest request body in bytes (64 B to 64 MiB); larger is a 413",
    )
    max_prompt_length: int = setting("MAX_PROMPT_LENGTH", 4000, _count, "longest `prompt` / `system` in code points (inclusive)")
    max_tokens_limit: int = setting("MAX_TOKENS_LIMIT", 32768, _count, "highest `max_tokens` a client may ask for")
    allowed_models: tuple[str, ...] = setting(
        "ALLOWED_MODELS", (), _list,
        "comma list of the only models clients may pick and `/v1/models` lists (`OPENROUTER_MODEL` is always allowed); "
        "empty = any `vendor/name`",
    )
    models_cache_secs: float = setting(
        "MODELS_CACHE_SECS", 300.0, _seconds_or_zero,
        "seconds `/v1/models` serves one copy of the provider's catalogue (one upstream call per period)",
    )

    token_budget: int = setting(
        "TOKEN_BUDGET", 0, _number(int, "a whole number of tokens >= 0 (0 = off)", 0, 1 << 62),
        "tokens each client (its key id, else its IP) may spend per window: the provider's `total_tokens`, else an estimate "
        "of 4 characters a token; 0 = off",
        heading="Budgets",
    )
    cost_budget_usd: float = setting(
        "COST_BUDGET_USD", 0.0, _number(float, "a number of US dollars >= 0 (0 = off)", 0, 1e12),
        "US dollars each client may spend per window, as the provider reports them (OpenRouter's `usage.cost`); 0 = off",
    )
    budget_window: int = setting(
        "BUDGET_WINDOW_SECS", 86400, _number(int, "a whole number of seconds >= 1", 1, 1 << 31),
        "the budget window in seconds: fixed windows aligned to the epoch (by Redis's clock with `RATE_LIMIT_BACKEND=redis`)",
    )

    upstream_connect_timeout: float = setting(
        "UPSTREAM_CONNECT_TIMEOUT_SECS", 10.0, _seconds, "seconds to connect to the upstream", heading="Resilience",
    )
    first_token_timeout: float = setting(
        "FIRST_TOKEN_TIMEOUT_SECS", 120.0, _seconds,
        "seconds from sending the request to the first data line (SSE comments do not count); non-streaming: to the first "
        "byte that is not blank keep-alive space",
    )
    upstream_idle_timeout: float = setting(
        "UPSTREAM_IDLE_TIMEOUT_SECS", 60.0, _seconds,
        "longest gap between data lines once streaming (comments do not count), or between reads of a non-streaming "
        "answer, seconds",
    )
    stream_max: float = setting("STREAM_MAX_SECS", 600.0, _seconds, "hard cap on one whole stream or non-streaming answer, seconds")
    heartbeat: float = setting("HEARTBEAT_SECS", 15.0, _seconds, "write `: ping` to the client after this many seconds without any write")
    upstream_retries: int = setting(
        "UPSTREAM_RETRIES", 2, _number(int, "a whole number 0-10", 0, 10),
        "extra attempts before any text reached the client (connect failure, 429, 5xx, cut)",
    )
    retry_max_wait: float = setting(
        "RETRY_MAX_WAIT_SECS", 5.0, _number(float, "a number of seconds >= 0", 0, 3600),
        "cap on one backoff in seconds, an upstream `Retry-After` included",
    )
    fallback_models: tuple[str, ...] = setting(
        "FALLBACK_MODELS", (), _list,
        "comma list of models tried once each, in order, after the primary model's retries, e.g. `openai/gpt-4o-mini`",
    )
    max_upstream_line_bytes: int = setting(
        "MAX_UPSTREAM_LINE_BYTES", 1024 * 1024, _number(int, "a number of bytes >= 1024", 1024, 1 << 30),
        "longest upstream SSE line in bytes; a longer one fails the stream cleanly",
    )
    max_upstream_event_bytes: int = setting(
        "MAX_UPSTREAM_EVENT_BYTES", 1024 * 1024, _number(int, "a number of bytes >= 1024", 1024, 1 << 30),
        "largest upstream SSE event (all its data lines) in bytes, at least `MAX_UPSTREAM_LINE_BYTES`; a larger one fails the stream",
    )
    max_upstream_body_bytes: int = setting(
        "MAX_UPSTREAM_BODY_BYTES", 8 * 1024 * 1024, _number(int, "a number of bytes >= 1024", 1024, 1 << 30),
        "largest non-streaming upstream answer in bytes; a larger one is a 502 `upstream_error`",
    )
    demo_delay: float = setting(
        "DEMO_DELAY_MS", 0.03, _milliseconds, "milliseconds between words of the demo upstream (`--demo`)", example="30",
    )

    log_format: str = setting(
        "LOG_FORMAT", "auto", _choice("auto", "console", "json"),
        "`auto` (colored console lines on a terminal, JSON lines otherwise), `console` or `json`", heading="Observability",
    )
    log_color: str = setting(
        "LOG_COLOR", "auto", _choice("auto", "always", "never"),
        "console colors: `auto` (on a terminal, unless `NO_COLOR`), `always`, `never`",
    )
    no_color: bool = setting(
        "NO_COLOR", False, _present, "any non-empty value turns console colors off (https://no-color.org); `LOG_COLOR=always` wins",
        example="",
    )
    log_level: str = setting("LOG_LEVEL", "INFO", _log_level, "`DEBUG`, `INFO`, `WARN` or `ERROR`")
    log_prompts: bool = setting(
        "LOG_PROMPTS", False, _bool, "`true` adds each stream's `prompt` and `answer` to its outcome line (user data: off by default)",
    )
    metrics_enabled: bool = setting("METRICS_ENABLED", True, _bool, "`false` makes `GET /metrics` a 404")
    metrics_token: str = setting(
        "METRICS_TOKEN", "", _text, "when set, `/metrics` needs `Authorization: Bearer <token>`; never logged", secret=True,
    )

    workers: int = setting(
        "WORKERS", 1, _number(int, "a whole number of processes >= 0 (0 = one per core)", 0, 1024),
        "processes serving one port: `1` = this process, N = a supervisor and N pre-forked workers, `0` = one per core",
        heading="Scale-out",
    )
    rate_limit_backend: str = setting(
        "RATE_LIMIT_BACKEND", "memory", _choice("memory", "redis"),
        "`memory` (each process counts alone) or `redis` (rate limits, stream slots and budgets shared by every worker and host)",
    )
    redis_url: str = setting(
        "REDIS_URL", "redis://127.0.0.1:6379/0", _redis_url,
        "Redis for `RATE_LIMIT_BACKEND=redis` and resumable streams (`redis://`, `rediss://` for TLS, `unix://`); empty = "
        "`redis://127.0.0.1:6379/0`; setting it makes `redis` the default `RESUME_BACKEND`; never logged",
        secret=True, example="",
    )
    rate_limit_fail_mode: str = setting(
        "RATE_LIMIT_FAIL_MODE", "open", _choice("open", "closed"),
        "when Redis is unreachable: `open` serves without limits, `closed` answers 503 with `Retry-After`",
    )
    stream_slot_ttl: float = setting(
        "STREAM_SLOT_TTL_SECS", 60.0, _number(float, "a number of seconds >= 1", 1, 1e7),
        "with Redis: a stream slot whose release was lost (outage, crashed worker) frees itself within this many seconds",
    )

    resume_backend: str = setting(
        "RESUME_BACKEND", "memory", _choice("memory", "redis"),
        "where resumable streams live: `memory` (one process) or `redis` (any worker or host resumes); empty = `redis` when "
        "`REDIS_URL` is set, else `memory`",
        heading="Resumable streams", example="",
    )
    resume_grace: float = setting(
        "RESUME_GRACE_SECS", 60.0, _seconds_or_zero,
        "seconds a resumable stream's upstream call keeps running after its last reader left; then it is cancelled",
    )
    resume_ttl: float = setting("RESUME_TTL_SECS", 600.0, _seconds_or_zero, "seconds an ended resumable stream stays readable")
    resume_max_bytes: int = setting(
        "RESUME_MAX_BYTES", 1024 * 1024, _number(int, "a number of bytes between 1024 and 1073741824", 1024, 1 << 30),
        "events one resumable stream keeps, in bytes; the oldest are dropped, and a resume that needs them gets 410",
    )

    @property
    def resumable_streams(self) -> bool:
        """False when streams live in one process's memory but several processes serve the port."""
        return self.resume_backend == "redis" or self.workers == 1

    @property
    def client_api_keys(self) -> tuple[str, ...]:
        """Every key a client may send: `CLIENT_API_KEYS`, then the keys of `CLIENT_API_KEYS_FILE`."""
        return self.listed_client_keys + tuple(key for key, _, _ in self.file_client_keys)

    @property
    def budget_overrides(self) -> tuple[KeyLine, ...]:
        """The keys of `CLIENT_API_KEYS_FILE` with a budget of their own."""
        return tuple(line for line in self.file_client_keys if line[1:] != (None, None))

    @property
    def open_relay(self) -> bool:
        """True when anyone who can reach the port can spend the upstream key."""
        return not self.client_api_keys and self.host not in LOOPBACK_HOSTS


# Every variable, in the order of `.env.example` and the docs.
VARIABLES: tuple[Variable, ...] = tuple(
    Variable(field=f.name, default=f.default, **f.metadata["variable"]) for f in fields(Settings) if "variable" in f.metadata
)

_MODEL_FORM = "a model id of the form vendor/name"


def load_settings(environ: Mapping[str, str] | None = None, *, demo: bool = False, env_file: str | None = ".env") -> Settings:
    """Build the settings from `environ` (default: `.env` overlaid by the real environment)."""
    if environ is None:
        merged = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file else {}
        merged.update(os.environ)
        environ = merged
    values: dict[str, object] = {"demo": demo}
    for variable in VARIABLES:
        raw = environ.get(variable.name)
        if raw is not None and raw.strip() != "":
            values[variable.field] = variable.parse(variable.name, raw)
    settings = Settings(**values)  # type: ignore[arg-type]
    if "rate_limit_burst" not in values:  # default: RATE_LIMIT, at least 1
        settings = replace(settings, rate_limit_burst=max(1.0, settings.rate_limit))
    if "resume_backend" not in values:
        settings = replace(settings, resume_backend="redis" if "redis_url" in values else "memory")
    elif settings.resume_backend == "memory" and settings.workers != 1:
        raise ConfigError("RESUME_BACKEND", "redis when WORKERS is not 1 (memory streams live in one process)", "memory")
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

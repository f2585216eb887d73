"""Settings: defaults, parsing, and one clear line for every bad value."""

from __future__ import annotations

import pytest

from server.config import ConfigError, load_settings

BASE = {"OPENROUTER_API_KEY": "sk-x"}


def settings(**env: str):
    return load_settings({**BASE, **env})


def test_defaults() -> None:
    s = settings()
    assert (s.host, s.port, s.model, s.base_url) == ("127.0.0.1", 8080, "anthropic/claude-3.5-sonnet", "https://openrouter.ai/api/v1")
    assert (s.rate_limit, s.rate_limit_burst, s.max_prompt_length) == (10.0, 10.0, 4000)
    assert (s.read_timeout, s.write_timeout, s.idle_timeout, s.shutdown_timeout) == (15, 15, 60, 30)
    assert (s.first_token_timeout, s.upstream_idle_timeout, s.stream_max, s.heartbeat) == (120, 60, 600, 15)
    assert (s.max_upstream_line_bytes, s.max_upstream_event_bytes, s.max_upstream_body_bytes) == (1 << 20, 1 << 20, 8 << 20)
    assert (s.header_timeout, s.max_connections) == (10, None)  # None: derived from the NOFILE limit at start
    assert "sk-x" not in repr(s)


def test_seed_port_form_and_fractional_rate() -> None:
    s = settings(PORT=":9090", RATE_LIMIT="0.5", OPENROUTER_BASE_URL="http://localhost:11434/v1/")
    assert s.port == 9090
    assert s.rate_limit == 0.5 and s.rate_limit_burst == 1.0
    assert s.base_url == "http://localhost:11434/v1"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "http"),
        ("PORT", "70000"),
        ("RATE_LIMIT", "-1"),
        ("RATE_LIMIT", "nan"),
        ("MAX_PROMPT_LENGTH", "0"),
        ("READ_TIMEOUT_SECS", "soon"),
        ("OPENROUTER_BASE_URL", "ftp://x"),
        ("OPENROUTER_MODEL", "no-slash"),
        ("HSTS_ENABLED", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("CORS_ALLOWED_ORIGINS", "example.com"),
        ("FALLBACK_MODELS", "bad"),
        ("MAX_UPSTREAM_EVENT_BYTES", "2048"),  # below MAX_UPSTREAM_LINE_BYTES (default 1 MiB)
        ("MAX_UPSTREAM_BODY_BYTES", "10"),
        ("MAX_CONNECTIONS", "0"),
        ("HEADER_TIMEOUT_SECS", "0"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**{variable: value})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable} must be")


def test_event_cap_may_equal_the_line_cap() -> None:
    s = settings(MAX_UPSTREAM_LINE_BYTES="4096", MAX_UPSTREAM_EVENT_BYTES="4096")
    assert (s.max_upstream_line_bytes, s.max_upstream_event_bytes) == (4096, 4096)


def test_key_required_unless_demo() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({})
    assert "OPENROUTER_API_KEY" in str(caught.value) and "--demo" in str(caught.value)
    assert load_settings({}, demo=True).demo


def test_client_keys_from_list_and_file(tmp_path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# comment\nk-file-1\n\nk-file-2\n")
    s = settings(CLIENT_API_KEYS="k1, k2", CLIENT_API_KEYS_FILE=str(keys))
    assert s.client_api_keys == ("k1", "k2", "k-file-1", "k-file-2")
    with pytest.raises(ConfigError) as caught:
        settings(CLIENT_API_KEYS_FILE=str(tmp_path / "missing"))
    assert caught.value.variable == "CLIENT_API_KEYS_FILE"


def test_dotenv_is_loaded_and_environment_wins(tmp_path, monkeypatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("OPENROUTER_API_KEY=from-file\nPORT=7000\nRATE_LIMIT=3\n")
    for name in ("OPENROUTER_API_KEY", "RATE_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PORT", "7001")
    s = load_settings(env_file=str(env_file))
    assert (s.api_key, s.port, s.rate_limit) == ("from-file", 7001, 3.0)


def test_open_relay_only_off_loopback() -> None:
    assert not settings().open_relay
    assert settings(HOST="0.0.0.0").open_relay
    assert not settings(HOST="0.0.0.0", CLIENT_API_KEYS="k").open_relay

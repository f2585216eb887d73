"""The benchmark harness, end to end with tiny counts, so `python -m bench` cannot rot unnoticed.

It starts the real processes (demo upstreams, gateways, both bare relays) on loopback, runs every phase
for a fraction of a second and checks the table it writes; the numbers themselves are not judged here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.__main__ import main, parse_args  # noqa: E402
from bench.lag import parse_lag, quantile  # noqa: E402
from bench.peers import litellm_config  # noqa: E402

TINY = [
    "--ttft-count", "3", "--seconds", "0.3", "--concurrency", "1,4", "--answer-words", "20",
    "--streams", "6", "--hold", "0.6", "--slow-delay-ms", "200", "--limiter-clients", "3000",
]  # fmt: skip


def test_tiny_run_writes_one_table_with_every_measure(tmp_path: Path) -> None:
    output = tmp_path / "latest.md"
    assert main([*TINY, "--output", str(output)]) == 0
    table = output.read_text()
    assert table.startswith("## Benchmark\n\nMachine: ")
    assert "| measure | measured | baseline | ratio / added | target | met |" in table
    for measure in (
        "TTFT p50, 3 sequential streams: gateway vs direct",
        "TTFT p99, 3 sequential streams: gateway vs direct",
        "CPU per 1,000 events, c=1: gateway vs bare relay (keep-alive)",
        "events/s, c=4, 20-chunk answers: gateway vs bare relay (keep-alive)",
        "keep-alive gain, c=4: bare relay pooled vs new connection per request",
        "TTFT p50 over a TLS upstream, 3 sequential streams: bare relay new connection vs keep-alive",
        "keep-alive gain over TLS, c=4: bare relay pooled vs new connection per request",
        "RSS per open stream, 6 streams: gateway vs bare relay (keep-alive)",
        "event-loop lag p99 while 6 streams stream",
        "rate limiter memory after 3,000 client ids, after eviction",
    ):
        assert measure in table
    assert "streams failed" not in table


def test_lag_p99_is_interpolated_inside_its_bucket() -> None:
    text = (
        "# TYPE event_loop_lag_seconds histogram\n"
        'event_loop_lag_seconds_bucket{le="0.001"} 90.0\n'
        'event_loop_lag_seconds_bucket{le="0.01"} 100.0\n'
        'event_loop_lag_seconds_bucket{le="+Inf"} 100.0\n'
        "event_loop_lag_seconds_count 100.0\n"
        "event_loop_lag_seconds_sum 0.1\n"
    )
    after = parse_lag(text)
    p99, samples = quantile({0.001: 0.0, 0.01: 0.0, float("inf"): 0.0}, after, 0.99)
    assert samples == 100
    assert p99 == pytest.approx(0.001 + 0.009 * 0.9)


def test_litellm_peer_needs_its_venv_and_points_at_the_same_upstream() -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--peer", "litellm"])
    assert exit_info.value.code == 2
    assert "api_base: http://127.0.0.1:9123/api/v1" in litellm_config(9123)

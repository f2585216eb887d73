"""Event-loop lag from the gateway's own `event_loop_lag_seconds` histogram on /metrics.

Two scrapes bracket a window; the bucket counts' difference is the window's histogram, and its p99 is
interpolated inside the bucket the way Prometheus' `histogram_quantile` does.
"""

from __future__ import annotations

import math
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Buckets = dict[float, float]  # upper bound -> cumulative count


def scrape_lag(port: int) -> Buckets:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return parse_lag(text)


def parse_lag(text: str) -> Buckets:
    for family in text_string_to_metric_families(text):
        if family.name == "event_loop_lag_seconds":
            return {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
    raise ValueError("no event_loop_lag_seconds histogram on /metrics")


def quantile(before: Buckets, after: Buckets, q: float) -> tuple[float, int]:
    """The q-quantile (seconds) of the samples taken between two scrapes (inf: beyond the top bucket), and how many."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if not total:
        return 0.0, 0
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if math.isinf(bound):
                return math.inf, int(total)  # beyond the last finite bucket: no upper bound is known
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0), int(total)
        lower, below = bound, cumulative
    return lower, int(total)

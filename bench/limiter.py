"""Rate-limiter memory under a flood of distinct client ids, measured in-process with tracemalloc."""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import dataclass

from server.rate_limit import MemoryStore

_MB = 1024 * 1024


@dataclass(frozen=True)
class LimiterMemory:
    clients: int
    tracked: int  # buckets held right after the flood (the store's cap bounds it)
    flood_mb: float  # memory held right after the flood
    peak_mb: float
    evicted_mb: float  # memory held after the idle buckets were evicted


def limiter_memory(clients: int, rate: float = 10.0, burst: float = 10.0) -> LimiterMemory:
    """`clients` distinct ids each take one token within one refill period, then all go idle.

    A fake clock keeps the flood inside one refill period (the worst case: only the size cap evicts);
    then it moves past the refill time and one more request lets the store evict every idle bucket.
    """
    now = [0.0]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        store = MemoryStore(clock=lambda: now[0])
        for index in range(clients):
            store.take_now(f"ip:10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}#{index >> 24}", rate, burst)
        flood, peak = tracemalloc.get_traced_memory()
        tracked = len(store)
        now[0] += burst / rate + 1.0
        store.take_now("ip:127.0.0.1", rate, burst)
        gc.collect()
        evicted = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return LimiterMemory(clients, tracked, (flood - base) / _MB, (peak - base) / _MB, (evicted - base) / _MB)

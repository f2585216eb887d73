"""The measurements: added time to first token, relay throughput and CPU, open streams. Each returns numbers only."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench import lag, loadgen, procs


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


@dataclass
class TTFT:
    direct: list[float]
    gateway: list[float]

    @property
    def paired(self) -> list[float]:
        """Per pair (run back to back), gateway minus direct."""
        return [g - d for g, d in zip(self.gateway, self.direct, strict=True)]

    def added(self, q: float) -> float:
        """What the gateway adds at percentile q: its percentile minus direct's."""
        return percentile(self.gateway, q) - percentile(self.direct, q)


async def ttft_added(direct: loadgen.Target, gateway: loadgen.Target, count: int, warmup: int = 20) -> TTFT:
    """`count` sequential streams each way, alternating direct and gateway so drift hits both alike."""
    await loadgen.sequential(direct, warmup)
    await loadgen.sequential(gateway, warmup)
    pairs: list[tuple[float, float]] = []
    connections: dict[str, loadgen.Connection | None] = {"direct": None, "gateway": None}
    for _ in range(count):
        d, connections["direct"] = await loadgen.stream_once(connections["direct"], direct)
        g, connections["gateway"] = await loadgen.stream_once(connections["gateway"], gateway)
        if d.ttft is None or g.ttft is None or not (d.complete and g.complete):
            raise RuntimeError(f"a TTFT stream failed: direct={d} gateway={g}")
        pairs.append((d.ttft, g.ttft))
    for connection in connections.values():
        if connection is not None:
            connection.close()
    return TTFT([d for d, _ in pairs], [g for _, g in pairs])


@dataclass(frozen=True)
class Throughput:
    concurrency: int
    events_per_second: float
    cpu_ms_per_1k: float  # user+sys CPU of the relaying process per 1,000 relayed content events
    streams: int
    failed: int


async def throughput(service: procs.Service, target: loadgen.Target, concurrency: int, seconds: float, events: int) -> Throughput:
    """Closed-loop load for `seconds`; the relaying process's CPU time over exactly that window."""
    await loadgen.closed_loop(target, concurrency, min(1.0, seconds / 4), events)  # warm the pools at this concurrency
    before = service.cpu()
    result = await loadgen.closed_loop(target, concurrency, seconds, events)
    cpu = service.cpu() - before
    per_1k = cpu / result.events * 1e6 if result.events else float("nan")
    return Throughput(concurrency, result.events_per_second, per_1k, result.streams, result.failed)


@dataclass
class OpenStreamsResult:
    requested: int
    streaming: int  # streams open and past their first token when the window started
    still_open: int  # streams still open when the window ended
    rss_base_mb: float
    rss_open_mb: float
    lag_p99_ms: float  # inf when beyond the histogram's top bucket
    lag_samples: int
    ramp_seconds: float
    cpu_share: float  # the gateway's CPU seconds per second during the window

    @property
    def kb_per_stream(self) -> float:
        return (self.rss_open_mb - self.rss_base_mb) * 1024 / max(1, self.streaming)


async def open_streams(
    gateway: procs.Service, count: int, hold: float, target: loadgen.Target | None = None, ramp_timeout: float = 180.0
) -> OpenStreamsResult:
    """Hold `count` slow streams open through `gateway`; RSS per stream, and loop lag p99 while they stream from
    the gateway's /metrics. With `target` (the bare relay, which has no /metrics) the lag is not measured."""
    watch_lag = target is None
    target = target or loadgen.gateway_target(gateway.port)
    warm = await loadgen.open_streams(target, min(20, count))  # import-time and first-use allocations are not per stream
    await _wait_streaming(warm, len(warm.connections), ramp_timeout)
    await warm.close()
    await asyncio.sleep(0.5)
    base = gateway.rss()
    started = time.perf_counter()
    held = await loadgen.open_streams(target, count)
    await _wait_streaming(held, count, ramp_timeout)
    ramp = time.perf_counter() - started
    streaming = held.streaming()
    before = await asyncio.to_thread(lag.scrape_lag, gateway.port) if watch_lag else None
    cpu = gateway.cpu()
    window = time.perf_counter()
    await asyncio.sleep(hold)
    cpu_share = (gateway.cpu() - cpu) / (time.perf_counter() - window)
    rss = gateway.rss()
    still_open = sum(1 for c in held.connections if c.usable)
    p99, samples = float("nan"), 0
    if before is not None:
        p99, samples = lag.quantile(before, await asyncio.to_thread(lag.scrape_lag, gateway.port), 0.99)
    await held.close()
    mb = 1024 * 1024
    return OpenStreamsResult(count, streaming, still_open, base / mb, rss / mb, p99 * 1000, samples, ramp, cpu_share)


async def _wait_streaming(held: loadgen.OpenStreams, count: int, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while held.streaming() < count and time.perf_counter() < deadline:
        if held.ended():
            raise RuntimeError(f"{held.ended()} of the held streams ended early")
        await asyncio.sleep(0.1)

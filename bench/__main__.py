"""`python -m bench [--quick] [--streams N] [--peer litellm --litellm-venv DIR]`: run, print and write the table.

Phases, each against freshly started processes on 127.0.0.1:
1. added time to first token: sequential streams, direct to the upstream and through the gateway, alternating;
2. relay throughput and CPU per 1,000 events: the gateway, the bare relay with a keep-alive upstream client
   and the bare relay with a new upstream connection per request, at each concurrency;
3. open streams: many slow streams held open through a fresh gateway: RSS per stream, event-loop lag p99;
4. rate-limiter memory for many distinct client ids (in-process);
5. optionally the same 1 and 2 through LiteLLM's proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen, peers, procs, report, scenarios
from bench.limiter import limiter_memory
from bench.report import Row, ms, ratio

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"
MODEL = "anthropic/claude-3.5-sonnet"
_SCRAPE_ROOM = 8  # connections left under MAX_CONNECTIONS for the lag and RSS scrapes
_FD_MARGIN = 64  # descriptors a gateway needs besides two sockets per stream


@dataclass(frozen=True)
class Plan:
    title: str
    ttft_count: int
    concurrency: tuple[int, ...]
    seconds: float
    answer_words: int
    streams: int
    hold: float
    slow_delay_ms: float
    limiter_clients: int
    pin: bool
    peer: str | None
    litellm_venv: str | None
    output: Path


def parse_args(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute: fewer streams, shorter windows")
    parser.add_argument("--streams", type=int, help="slow streams held open in phase 3 (default 10000, quick 1000)")
    parser.add_argument("--ttft-count", type=int, help="sequential streams each way in phase 1 (default 500, quick 100)")
    parser.add_argument("--seconds", type=float, help="load window per throughput point (default 6, quick 1.5)")
    parser.add_argument("--concurrency", default="1,16,64,256", help="comma list (default 1,16,64,256)")
    parser.add_argument("--answer-words", type=int, default=200, help="chunks per answer (default 200)")
    parser.add_argument("--hold", type=float, help="seconds the open streams are watched (default 20, quick 5)")
    parser.add_argument("--slow-delay-ms", type=float, default=5000.0, help="delay between chunks of the slow streams (default 5000)")
    parser.add_argument("--limiter-clients", type=int, help="distinct client ids for phase 4 (default 1000000, quick 200000)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--peer", choices=("litellm",), help="also measure this peer against the same upstream")
    parser.add_argument("--litellm-venv", help="virtualenv holding litellm[proxy]==" + peers.LITELLM_VERSION)
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"markdown file to write (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.peer == "litellm" and not args.litellm_venv:
        parser.error("--peer litellm needs --litellm-venv DIR")
    quick = args.quick

    def pick(value: float | None, full: float, fast: float) -> float:
        return value if value is not None else (fast if quick else full)

    return Plan(
        title="Benchmark (quick)" if quick else "Benchmark",
        ttft_count=int(pick(args.ttft_count, 500, 100)),
        concurrency=tuple(int(c) for c in args.concurrency.split(",") if c.strip()),
        seconds=pick(args.seconds, 6.0, 1.5),
        answer_words=args.answer_words,
        streams=int(pick(args.streams, 10_000, 1000)),
        hold=pick(args.hold, 20.0, 5.0),
        slow_delay_ms=args.slow_delay_ms,
        limiter_clients=int(pick(args.limiter_clients, 1_000_000, 200_000)),
        pin=not args.no_pin and (os.cpu_count() or 1) >= 2,
        peer=args.peer,
        litellm_venv=args.litellm_venv,
        output=args.output,
    )


class Bench:
    """Runs the phases of one plan and collects table rows and notes."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.rows: list[Row] = []
        self.notes: list[str] = []
        # the relaying process alone on core 0; the upstream and the load generator share core 1
        self.sut = {0} if plan.pin else None
        self.driver = {1} if plan.pin else None

    @contextmanager
    def services(self, *started: procs.Service) -> Iterator[None]:
        try:
            yield
        finally:
            for service in started:
                service.stop()

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    async def run(self) -> str:
        plan = self.plan
        hard = procs.raise_fd_limit()
        load = os.getloadavg()[0]
        self.notes.append(f"Load average (1 min) at the start: {load:.2f}; anything else running on the two cores skews every number.")
        if plan.pin:
            procs.pin(os.getpid(), self.driver)
            self.notes.append(
                "Pinning: the process under test (gateway or bare relay) on core 0; the demo upstream and the load generator "
                "(this process, asyncio sockets) share core 1. Phase 1 runs unpinned with the load generator at nice -10 (when allowed): "
                "one stream at a time needs no isolation, but on two cores a client that waits for its turn on a CPU adds its own delay."
            )
        upstream = procs.start_upstream(0, plan.answer_words, cpus=self.driver)
        with self.services(upstream):
            await self.ttft_and_throughput(upstream)
        await self.open_streams(hard)
        self.rate_limiter()
        return report.render(plan.title, self.rows, self.notes)

    # -- phases 1, 2 and 5 --------------------------------------------------------------------------
    async def ttft_and_throughput(self, upstream: procs.Service) -> None:
        plan = self.plan
        direct = loadgen.openai_target("direct", upstream.port, "/api/v1/chat/completions", MODEL, "bench")
        gateway = procs.start_gateway(upstream, cpus=self.sut)
        with self.services(gateway):
            self.log(f"phase 1: {plan.ttft_count} sequential streams each way")
            with self.unpinned(upstream, gateway):
                ttft = await scenarios.ttft_added(direct, loadgen.gateway_target(gateway.port), plan.ttft_count)
            self.ttft_rows("gateway", ttft)
            self.log("phase 2: throughput through the gateway")
            through_gateway = await self.sweep(gateway, loadgen.gateway_target(gateway.port))
        relays = {}
        for client in ("pooled", "simple"):
            relay = procs.start_relay(upstream, client, cpus=self.sut)
            with self.services(relay):
                self.log(f"phase 2: throughput through the bare relay ({client} upstream client)")
                relays[client] = await self.sweep(relay, loadgen.openai_target("relay", relay.port, "/chat", MODEL, "bench"))
        self.throughput_rows(through_gateway, relays["pooled"], relays["simple"])
        await self.keep_alive_over_tls()
        if plan.peer == "litellm" and plan.litellm_venv:
            await self.litellm(upstream, direct, through_gateway)

    @contextmanager
    def unpinned(self, *services: procs.Service) -> Iterator[None]:
        """Sequential streams: every process may use either core, and the load generator runs at a higher
        priority (when allowed) so that reading a token never waits behind the process it is timing."""
        everything = set(range(os.cpu_count() or 1))
        for pid in [os.getpid(), *(s.pid for s in services)]:
            procs.pin(pid, everything if self.plan.pin else None)
        raised = procs.set_niceness(-10)
        try:
            yield
        finally:
            if raised:
                procs.set_niceness(0)
            procs.pin(os.getpid(), self.driver)
            for service in services:
                procs.pin(service.pid, self.driver if service.name == "upstream" else self.sut)

    async def sweep(self, service: procs.Service, target: loadgen.Target) -> dict[int, scenarios.Throughput]:
        results = {}
        for concurrency in self.plan.concurrency:
            results[concurrency] = await scenarios.throughput(service, target, concurrency, self.plan.seconds, self.plan.answer_words)
            point = results[concurrency]
            self.log(f"  c={concurrency}: {point.events_per_second:,.0f} events/s, {point.cpu_ms_per_1k:.1f} ms CPU per 1k events")
            if point.failed:
                self.notes.append(f"{service.name} at concurrency {concurrency}: {point.failed} streams failed or came back short")
        return results

    def ttft_rows(self, name: str, ttft: scenarios.TTFT, targets: bool = True) -> None:
        """`targets`: the issue's added-TTFT targets are the gateway's; a peer's rows are for comparison only."""
        self.ttft_percentile_rows("", f"{name} vs direct", ttft, targets)
        paired = ttft.paired
        self.rows.append(
            Row(
                f"TTFT paired difference ({name} - direct, back to back) p50 / p99",
                f"{ms(scenarios.percentile(paired, 0.5))} / {ms(scenarios.percentile(paired, 0.99))}",
            )
        )

    def throughput_rows(self, gateway: dict[int, scenarios.Throughput], pooled: dict[int, scenarios.Throughput], simple: dict) -> None:
        words = self.plan.answer_words
        for c, point in gateway.items():
            floor = pooled[c]
            self.rows.append(
                Row(
                    f"CPU per 1,000 events, c={c}: gateway vs bare relay (keep-alive)",
                    f"{point.cpu_ms_per_1k:.1f} ms",
                    f"{floor.cpu_ms_per_1k:.1f} ms",
                    ratio(point.cpu_ms_per_1k, floor.cpu_ms_per_1k),
                    "≤ 1.25x",
                    point.cpu_ms_per_1k <= 1.25 * floor.cpu_ms_per_1k,
                )
            )
        for c, point in gateway.items():
            floor = pooled[c]
            met = point.events_per_second >= 0.8 * floor.events_per_second if c == 64 else None
            self.rows.append(
                Row(
                    f"events/s, c={c}, {words}-chunk answers: gateway vs bare relay (keep-alive)",
                    f"{point.events_per_second:,.0f}",
                    f"{floor.events_per_second:,.0f}",
                    ratio(point.events_per_second, floor.events_per_second),
                    "≥ 0.80x" if c == 64 else "—",
                    met,
                )
            )
        self.keep_alive_rows("keep-alive gain", pooled, simple)
        self.notes.append(
            "Throughput: events/s are bounded by core 1 (the demo upstream writes and flushes each of its 200 chunks, and the "
            "load generator reads them); CPU per 1,000 events of the relaying process is the efficiency measure."
        )
        self.notes.append(
            "Bare relay: bench/relay.py, Tornado `RequestHandler` forwarding the body and every upstream read unparsed; "
            "keep-alive = the gateway's `PooledAsyncHTTPClient`, new connection = Tornado's `SimpleAsyncHTTPClient`. "
            "It runs on the gateway's own loop (uvloop) and GC settings, and sets TCP_NODELAY on the client socket as the gateway does "
            "(a streaming relay must: with Nagle's algorithm its small writes wait for the client's delayed ACK)."
        )
        self.notes.append(
            "An event is one content chunk of the answer; CPU is user+sys of the relaying process from /proc/<pid>/stat over the window."
        )

    def ttft_percentile_rows(self, where: str, comparison: str, ttft: scenarios.TTFT, targets: bool) -> None:
        """p50 and p99 of `ttft` (measured side vs baseline side) and what it adds; with `targets`, the issue's."""
        count = len(ttft.gateway)
        for q, target in ((0.5, 0.001), (0.99, 0.005)):
            added = ttft.added(q)
            self.rows.append(
                Row(
                    f"TTFT p{round(q * 100)}{where}, {count} sequential streams: {comparison}",
                    ms(scenarios.percentile(ttft.gateway, q)),
                    ms(scenarios.percentile(ttft.direct, q)),
                    f"+{ms(added)}",
                    f"≤ +{ms(target)}" if targets else "—",
                    added <= target if targets else None,
                )
            )

    def keep_alive_rows(self, label: str, pooled: dict[int, scenarios.Throughput], simple: dict[int, scenarios.Throughput]) -> None:
        for c, point in pooled.items():
            fresh = simple[c]
            self.rows.append(
                Row(
                    f"{label}, c={c}: bare relay pooled vs new connection per request (events/s; CPU per 1k)",
                    f"{point.events_per_second:,.0f}; {point.cpu_ms_per_1k:.1f} ms",
                    f"{fresh.events_per_second:,.0f}; {fresh.cpu_ms_per_1k:.1f} ms",
                    f"{ratio(point.events_per_second, fresh.events_per_second)}; {ratio(point.cpu_ms_per_1k, fresh.cpu_ms_per_1k)}",
                )
            )

    async def keep_alive_over_tls(self) -> None:
        """What the pool saves against a real provider: a TLS handshake per request. The bare relay, pooled and
        with a new connection per request, in front of the demo upstream over HTTPS (a self-signed certificate
        for 127.0.0.1, trusted through SSL_CERT_FILE)."""
        plan = self.plan
        with tempfile.TemporaryDirectory(prefix="bench-tls-") as directory:
            tls = procs.SelfSigned.make(directory)
            upstream = procs.start_upstream(0, plan.answer_words, cpus=self.driver, tls=tls)
            with self.services(upstream):
                relays = {client: procs.start_relay(upstream, client, cpus=self.sut, tls=tls) for client in ("pooled", "simple")}
                with self.services(*relays.values()):
                    targets = {client: loadgen.openai_target("relay", r.port, "/chat", MODEL, "bench") for client, r in relays.items()}
                    count = min(plan.ttft_count, 200)
                    self.log(f"phase 2: the bare relay over a TLS upstream: {count} sequential streams each way, then throughput")
                    with self.unpinned(upstream, *relays.values()):
                        ttft = await scenarios.ttft_added(targets["pooled"], targets["simple"], count)
                    points = {client: await self.sweep(relays[client], targets[client]) for client in relays}
        self.ttft_percentile_rows(" over a TLS upstream", "bare relay new connection vs keep-alive", ttft, targets=False)
        self.keep_alive_rows("keep-alive gain over TLS", points["pooled"], points["simple"])

    async def litellm(self, upstream: procs.Service, direct: loadgen.Target, gateway: dict[int, scenarios.Throughput]) -> None:
        assert self.plan.litellm_venv is not None
        self.log("phase 5: LiteLLM proxy")
        proxy = peers.start_litellm(self.plan.litellm_venv, upstream, cpus=self.sut)
        with self.services(proxy):
            target = peers.litellm_target(proxy.port)
            with self.unpinned(upstream, proxy):
                self.ttft_rows("LiteLLM", await scenarios.ttft_added(direct, target, self.plan.ttft_count), targets=False)
            points = await self.sweep(proxy, target)
        for c, point in points.items():
            ours = gateway[c]
            # events per CPU-second is the inverse of CPU per event: their CPU per 1k over ours
            self.rows.append(
                Row(
                    f"vs LiteLLM {peers.LITELLM_VERSION}, c={c}: events per CPU-second, gateway vs LiteLLM (events/s; CPU per 1k)",
                    f"{ours.events_per_second:,.0f}; {ours.cpu_ms_per_1k:.1f} ms",
                    f"{point.events_per_second:,.0f}; {point.cpu_ms_per_1k:.1f} ms",
                    ratio(point.cpu_ms_per_1k, ours.cpu_ms_per_1k),
                    "≥ 30x, no truncation",
                    point.cpu_ms_per_1k >= 30 * ours.cpu_ms_per_1k and not point.failed and not ours.failed,
                )
            )

    # -- phase 3 ------------------------------------------------------------------------------------
    async def open_streams(self, fd_limit: int) -> None:
        plan = self.plan
        count = plan.streams
        # the gateway holds a client socket and an upstream socket per stream; MAX_CONNECTIONS defaults to this same
        # bound, so a few connections stay free for the /metrics scrapes
        most = (fd_limit - _FD_MARGIN) // 2 - _SCRAPE_ROOM
        if count > most:
            self.notes.append(
                f"Open streams: asked for {count:,}, but the hard NOFILE limit here is {fd_limit:,} and cannot be raised "
                f"(no CAP_SYS_RESOURCE); a gateway needs two sockets per stream, so {most:,} streams were held."
            )
            count = most
        words = int((plan.hold + 240) * 1000 / plan.slow_delay_ms) + 10  # outlives the ramp and the window
        self.log(f"phase 3: {count} slow streams ({plan.slow_delay_ms:g} ms between chunks) held for {plan.hold:g} s")
        upstream = procs.start_upstream(plan.slow_delay_ms, words, cpus=self.driver)
        with self.services(upstream):
            gateway = procs.start_gateway(upstream, cpus=self.sut)
            with self.services(gateway):
                held = await scenarios.open_streams(gateway, count, plan.hold)
            self.log(f"phase 3: the same {count} streams through the bare relay (its memory floor)")
            relay = procs.start_relay(upstream, "pooled", cpus=self.sut)
            with self.services(relay):
                floor = await scenarios.open_streams(relay, count, 2.0, loadgen.openai_target("relay", relay.port, "/chat", MODEL, "bench"))
        lag_text = f"{held.lag_p99_ms:.1f} ms" if math.isfinite(held.lag_p99_ms) else "> 1 s (top bucket)"
        rate = held.streaming * 1000 / plan.slow_delay_ms
        self.log(f"  ramp {held.ramp_seconds:.1f} s, {held.kb_per_stream:.1f} KB per stream, lag p99 {lag_text}")
        self.log(f"  bare relay: {floor.kb_per_stream:.1f} KB per stream")
        self.rows.append(
            Row(
                f"RSS per open stream, {held.streaming:,} streams: gateway vs bare relay (keep-alive)",
                f"{held.kb_per_stream:.1f} KB ({held.rss_base_mb:.0f} MB idle, {held.rss_open_mb:.0f} MB open)",
                f"{floor.kb_per_stream:.1f} KB ({floor.rss_base_mb:.0f} MB idle, {floor.rss_open_mb:.0f} MB open)",
                ratio(held.kb_per_stream, floor.kb_per_stream),
                "≤ 20 KB",
                held.kb_per_stream <= 20,
            )
        )
        self.rows.append(
            Row(
                f"event-loop lag p99 while {held.streaming:,} streams stream (a chunk every {plan.slow_delay_ms:g} ms each: "
                f"{rate:,.0f} events/s; {held.lag_samples} samples)",
                lag_text,
                f"gateway CPU {held.cpu_share:.0%} of a core",
                target="≤ 20 ms",
                met=held.lag_p99_ms <= 20,
            )
        )
        if held.streaming < count or held.still_open < held.streaming:
            self.notes.append(
                f"Open streams: {held.streaming:,} of {count:,} reached their first token; {held.still_open:,} were open at the end."
            )

    # -- phase 4 ------------------------------------------------------------------------------------
    def rate_limiter(self) -> None:
        clients = self.plan.limiter_clients
        self.log(f"phase 4: rate limiter with {clients:,} distinct client ids")
        memory = limiter_memory(clients)
        self.rows.append(
            Row(
                f"rate limiter memory after {clients:,} client ids, after eviction",
                f"{memory.evicted_mb:.1f} MB",
                f"{memory.flood_mb:.1f} MB held after the flood ({memory.tracked:,} buckets)",
                f"peak {memory.peak_mb:.1f} MB",
                "≤ 50 MB",
                memory.evicted_mb <= 50,
            )
        )


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    table = asyncio.run(Bench(plan).run())
    print(table)
    plan.output.parent.mkdir(parents=True, exist_ok=True)
    plan.output.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The framework floor: a bare Tornado pass-through relay with no parsing, no edge, no metrics, no logs.

It runs on the gateway's loop (uvloop) with its GC settings and sets TCP_NODELAY as the gateway does, so the
comparison isolates what the gateway's handler adds, not a different loop or Nagle batching its writes.

`POST /chat` forwards the client's body to `{upstream}/chat/completions` and writes every upstream read
straight back, flushed. `--client pooled` reuses keep-alive upstream connections (the gateway's own
`PooledAsyncHTTPClient`, so the comparison isolates what the gateway adds on top of Tornado and its
upstream client); `--client simple` is Tornado's `SimpleAsyncHTTPClient`, one new connection per request.
Run: `python -m bench.relay --port 9100 --upstream http://127.0.0.1:9000/api/v1 --client pooled`.
"""

from __future__ import annotations

import argparse
import asyncio

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from app.lifecycle import run
from server.http_client import PooledAsyncHTTPClient


class RelayHandler(web.RequestHandler):
    def initialize(self, client: AsyncHTTPClient, url: str) -> None:
        self.client = client
        self.url = url

    async def post(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.request.connection.stream.set_nodelay(True)  # type: ignore[attr-defined]  # as any streaming relay must
        request = HTTPRequest(
            self.url,
            method="POST",
            body=self.request.body,
            headers={"Content-Type": "application/json", "Authorization": "Bearer bench"},
            streaming_callback=self.relay,
        )
        await self.client.fetch(request)

    def relay(self, chunk: bytes) -> asyncio.Future[None]:
        self.write(chunk)
        return self.flush()


def make_app(upstream: str, client_kind: str) -> web.Application:
    if client_kind == "pooled":
        client: AsyncHTTPClient = PooledAsyncHTTPClient(force_instance=True)
    else:
        client = SimpleAsyncHTTPClient(force_instance=True, max_clients=100_000)
    routes = [(r"/chat", RelayHandler, {"client": client, "url": upstream + "/chat/completions"})]
    return web.Application(routes, log_function=lambda h: None)


def main() -> None:
    parser = argparse.ArgumentParser(description="bare Tornado pass-through relay (benchmark floor)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000/api/v1")
    parser.add_argument("--client", choices=("pooled", "simple"), default="pooled")
    args = parser.parse_args()

    async def serve() -> None:
        make_app(args.upstream, args.client).listen(args.port, "127.0.0.1")
        await asyncio.Event().wait()

    run(serve())  # the gateway's own loop (uvloop) and GC settings: the floor differs from it only in the handler


if __name__ == "__main__":
    main()

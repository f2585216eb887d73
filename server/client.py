"""The terminal client: `python run.py chat "prompt"` or `python -m server.client` (prompt from stdin when none given).

It POSTs to `{url}/chat` and writes each `content` event to stdout the moment it arrives. Errors (an
HTTP error before the stream, an `error` event, a stream cut short, no connection) go to stderr with the
request id, and the exit code is 1. Everything comes from flags: the client reads no environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

from tornado import httputil
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from server.sse import SSEParser

DEFAULT_URL = "http://127.0.0.1:8080"


class ChatError(Exception):
    """The chat failed; `str()` is the line for stderr, with the request id when the server gave one."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{message} (request id {request_id})" if request_id else message)


class _Reply:
    """One response as it arrives: headers first, then the body fed to the SSE parser or kept for a JSON error."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.status = 0
        self.headers = httputil.HTTPHeaders()
        self.parser = SSEParser()
        self.error_body = b""
        self.ended: dict[str, Any] | None = None  # the terminal event
        self.wrote_newline = True

    def on_header(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if line.startswith("HTTP/"):
            self.status = httputil.parse_response_start_line(line).code
            self.headers = httputil.HTTPHeaders()  # a fresh block after a 1xx
        elif line:
            self.headers.parse_line(line)

    @property
    def streaming(self) -> bool:
        return self.status == 200 and self.headers.get("Content-Type", "").startswith("text/event-stream")

    def on_chunk(self, chunk: bytes) -> None:
        if not self.streaming:
            self.error_body += chunk
            return
        for event in self.parser.feed(chunk):
            message = json.loads(event.data)
            if message.get("type") == "content" and self.ended is None:
                text = message.get("content", "")
                self.out.write(text)
                self.out.flush()
                if text:
                    self.wrote_newline = text.endswith("\n")
            elif message.get("type") in ("done", "error"):
                self.ended = message

    def outcome(self) -> None:
        """Raise ChatError unless the stream ended with `done`."""
        request_id = self.headers.get("X-Request-ID")
        if not self.streaming:
            try:
                body = json.loads(self.error_body)
                message = f"{body['message']} (HTTP {self.status}, {body['error_type']})"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {self.status} {httputil.responses.get(self.status, '')}".rstrip()
            raise ChatError(message, request_id)
        if self.ended is None:
            raise ChatError("the stream ended before the answer was complete", request_id)
        if self.ended.get("type") == "error":
            raise ChatError(f"{self.ended.get('content')} ({self.ended.get('error_type')})", self.ended.get("request_id") or request_id)


async def stream_chat(url: str, prompt: str, out: TextIO, key: str | None = None, timeout: float = 600.0) -> None:
    """Stream the answer to `out`; raise ChatError on any failure (the text received so far stays written)."""
    reply = _Reply(out)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = HTTPRequest(
        url.rstrip("/") + "/chat",
        method="POST",
        headers=headers,
        body=json.dumps({"prompt": prompt}),
        connect_timeout=10.0,
        request_timeout=timeout,
        header_callback=reply.on_header,
        streaming_callback=reply.on_chunk,
        follow_redirects=False,
    )
    client = AsyncHTTPClient(force_instance=True)
    failure: Exception | None = None
    try:
        await client.fetch(request, raise_error=False)  # still raises when no whole HTTP response arrived
    except (OSError, HTTPClientError, ValueError) as error:  # refused, timed out, cut off, or not our JSON
        failure = error
    finally:
        client.close()
    try:
        if failure is not None and reply.ended is None:
            raise ChatError(f"request to {request.url} failed: {failure}", reply.headers.get("X-Request-ID"))
        reply.outcome()
    finally:
        if not reply.wrote_newline:  # leave the shell prompt on a line of its own
            out.write("\n")
            out.flush()


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Stream an answer from a tornado-ai-stream gateway to stdout.")
    parser.add_argument("prompt", nargs="*", help="the prompt (default: read from stdin)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the gateway's base URL (default {DEFAULT_URL})")
    parser.add_argument("--key", default=None, help="a client key, sent as Authorization: Bearer <key>")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default 600)")
    args = parser.parse_args(argv)
    prompt = " ".join(args.prompt) if args.prompt else sys.stdin.read().strip()
    if not prompt:
        parser.error("no prompt: pass it as an argument or on stdin")
    try:
        asyncio.run(stream_chat(args.url, prompt, sys.stdout, args.key, args.timeout))
    except ChatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

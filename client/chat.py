"""The terminal client: `python run.py chat "prompt"` or `python -m client.chat` (prompt from stdin when none given).

`--image PATH` (repeatable) sends pictures with the prompt, as `data:` URLs in an `image_url` part.

It POSTs to `{url}/chat` and writes each `content` event to stdout the moment it arrives. The stream is
requested resumable: when the connection drops mid-answer it reattaches with `GET /chat/streams/{id}` and
`Last-Event-ID` (backoff capped at 5 s, a bounded number of tries), so no text is lost or printed twice;
Ctrl-C cancels the stream (`DELETE`) before exiting 130. `--no-resume` sends a plain stream. Errors (an
HTTP error before the stream, an `error` event, a stream cut short past resuming, no connection, a
timeout) go to stderr with the request id, and the exit code is 1. It uses the gateway's own `PooledAsyncHTTPClient`
(an `AsyncHTTPClient`) because it can `abort()` a request at once: on `--timeout`, and when stdout is
closed (`| head`), so the gateway stops the upstream instead of generating an answer nobody reads.
Everything comes from flags: the client reads no environment.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import mimetypes
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from tornado import httputil
from tornado.httpclient import HTTPRequest
from tornado.ioloop import IOLoop

from server.http_client import PooledAsyncHTTPClient
from server.sse import SSEParser

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell tool killed by a closed pipe would report
RESUME_TRIES = 8  # reattachments in a row without a new event before giving up
FIRST_BACKOFF = 0.25  # seconds before the first reattachment, doubling up to MAX_BACKOFF
MAX_BACKOFF = 5.0
CANCEL_TIMEOUT = 2.0  # seconds Ctrl-C waits for the DELETE before exiting anyway


class ChatError(Exception):
    """The chat failed; `str()` is the line for stderr, with the request id when the server gave one."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{message} (request id {request_id})" if request_id else message)


class _Reply:
    """The answer as it arrives, over one response or several (resumes): for each, headers first, then the
    body fed to the SSE parser or kept for a JSON error.

    Callbacks never raise (the HTTP client would only see the error at its next read); a problem is
    recorded in `failure` and the request is aborted.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.abort: Callable[[], None] = lambda: None  # aborts the response being read
        self.ended: dict[str, Any] | None = None  # the terminal event
        self.failure: str | None = None
        self.stopped = asyncio.Event()  # set with `failure`: cuts a wait between resumes short
        self.stdout_closed = False
        self.at_line_start = True
        self.stream_id: str | None = None  # a resumable stream's, from `connected`
        self.last_event_id = -1
        self.answer_request_id: str | None = None  # the request that started the stream
        self.next_response()

    def next_response(self) -> None:
        self.status = 0
        self.headers = httputil.HTTPHeaders()
        self.parser = SSEParser()
        self.error_body = b""

    def on_header(self, line: str) -> None:
        line = line.rstrip("\r\n")
        if line.startswith("HTTP/"):
            self.status = httputil.parse_response_start_line(line).code
            self.headers = httputil.HTTPHeaders()  # a fresh block after a 1xx
        elif line:
            self.headers.parse_line(line)

    @property
    def request_id(self) -> str | None:
        return self.answer_request_id or self.headers.get("X-Request-ID")

    @property
    def streaming(self) -> bool:
        return self.status == 200 and self.headers.get("Content-Type", "").startswith("text/event-stream")

    def stop(self, failure: str) -> None:
        self.failure = failure
        self.stopped.set()
        self.abort()

    def resumable(self) -> bool:
        """The connection dropped before the end, and the stream can be picked up again."""
        if self.stream_id is None or self.ended is not None or self.failure is not None:
            return False
        return self.status in (0, 429) or self.status >= 500 or self.streaming

    def on_chunk(self, chunk: bytes) -> None:
        if self.failure is not None or self.ended is not None:
            return
        if not self.streaming:
            self.error_body += chunk
            return
        try:
            for event in self.parser.feed(chunk):
                if event.id is not None:
                    if int(event.id) <= self.last_event_id:
                        continue  # already written
                    self.last_event_id = int(event.id)
                self._on_event(json.loads(event.data))
        except BrokenPipeError:
            self.stdout_closed = True
            self.stop("stdout was closed")
        except ValueError as error:  # not the gateway's SSE: bad JSON, or a line past the parser's cap
            self.stop(f"unreadable event stream: {error}")

    def _on_event(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "connected":
            self.stream_id = message.get("stream_id")
            self.answer_request_id = message.get("request_id")
        elif kind == "content" and message.get("content"):
            text = message["content"]
            self.out.write(text)
            self.out.flush()
            self.at_line_start = text.endswith("\n")
        elif kind in ("done", "error"):
            self.ended = message

    def outcome(self) -> None:
        """Raise ChatError unless the stream ended with `done`."""
        if self.ended is not None and self.ended.get("type") == "error":
            message = f"{self.ended.get('content')} ({self.ended.get('error_type')})"
            raise ChatError(message, self.ended.get("request_id") or self.request_id)
        if self.ended is not None:
            return
        if self.failure is not None:
            raise ChatError(self.failure, self.request_id)
        if not self.streaming:
            try:
                body = json.loads(self.error_body)
                message = f"{body['message']} (HTTP {self.status}, {body['error_type']})"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {self.status} {httputil.responses.get(self.status, '')}".rstrip()
            raise ChatError(message, self.request_id)
        raise ChatError("the stream ended before the answer was complete", self.request_id)


def image_data_url(path: str) -> str:
    """A picture file as a `data:image/...;base64,` URL; ValueError when it is not a picture or cannot be read."""
    kind, _ = mimetypes.guess_type(path)
    if not kind or not kind.startswith("image/"):
        raise ValueError(f"{path} is not a picture (.png, .jpg, .gif, .webp...)")
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def chat_body(prompt: str, images: Sequence[str] = (), resumable: bool = False) -> dict[str, Any]:
    """/chat's body: the prompt alone, or one user message with the prompt and the pictures (data: URLs)."""
    body: dict[str, Any] = {"prompt": prompt}
    if images:
        parts = [{"type": "text", "text": prompt}, *({"type": "image_url", "image_url": {"url": url}} for url in images)]
        body = {"messages": [{"role": "user", "content": parts}]}
    if resumable:
        body["resumable"] = True
    return body


async def stream_chat(
    url: str,
    prompt: str,
    out: TextIO,
    key: str | None = None,
    timeout: float = 600.0,
    images: Sequence[str] = (),
    resume: bool = True,
) -> None:
    """Stream the answer to `out`, resuming after dropped connections; raise ChatError on any failure (the
    text received so far stays written).

    Raises BrokenPipeError when `out` was closed by its reader; the request is aborted then. Cancelled
    (Ctrl-C), it cancels the stream on the gateway first.
    """
    base = url.rstrip("/")
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    client = PooledAsyncHTTPClient(force_instance=True)
    reply = _Reply(out)
    request = HTTPRequest(
        base + "/chat",
        method="POST",
        headers={**auth, "Content-Type": "application/json", "Accept": "text/event-stream"},
        body=json.dumps(chat_body(prompt, images, resume)),
    )
    timer = IOLoop.current().call_later(timeout, reply.stop, f"no complete answer within {timeout:g} seconds")
    try:
        error = await _read(client, request, reply, timeout)
        tries = 0
        while reply.resumable() and tries < RESUME_TRIES:
            seen = reply.last_event_id
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(reply.stopped.wait(), min(MAX_BACKOFF, FIRST_BACKOFF * 2**tries))
            if reply.failure is not None:
                break
            reply.next_response()
            headers = {**auth, "Accept": "text/event-stream", "Last-Event-ID": str(reply.last_event_id)}
            request = HTTPRequest(f"{base}/chat/streams/{reply.stream_id}", headers=headers)
            error = await _read(client, request, reply, timeout)
            tries = 0 if reply.last_event_id != seen else tries + 1
        await _cancel(client, base, reply, auth)  # given up (timeout, stdout closed...): nobody will read the rest
    except asyncio.CancelledError:  # Ctrl-C
        await _cancel(client, base, reply, auth)
        raise
    finally:
        IOLoop.current().remove_timeout(timer)
        client.close()
    if reply.stdout_closed:
        raise BrokenPipeError("stdout was closed")
    try:
        if error is not None and reply.failure is None and reply.ended is None:
            raise ChatError(f"request to {request.url} failed: {_describe(error)}", reply.request_id)
        reply.outcome()
    finally:
        if not reply.at_line_start:  # leave the shell prompt on a line of its own
            out.write("\n")
            out.flush()


async def _read(client: PooledAsyncHTTPClient, request: HTTPRequest, reply: _Reply, timeout: float) -> Exception | None:
    """One response into `reply`; the error when there was no whole HTTP response (refused, cut off, aborted)."""
    reply.abort = lambda: client.abort(request)
    request.header_callback = reply.on_header
    request.streaming_callback = reply.on_chunk
    request.connect_timeout = min(timeout, 10.0)
    fetching = client.fetch(request, raise_error=False)
    try:
        await asyncio.shield(fetching)
    except asyncio.CancelledError:  # Ctrl-C: end the request here, not in a future nobody awaits any more
        client.abort(request)
        with contextlib.suppress(Exception):
            await fetching
        raise
    except Exception as exc:  # the client's 599 errors
        return exc
    return None


async def _cancel(client: PooledAsyncHTTPClient, base: str, reply: _Reply, headers: dict[str, str]) -> None:
    """DELETE a resumable stream nobody will read, which would otherwise run on for RESUME_GRACE_SECS; best
    effort, so Ctrl-C exits even when the gateway is gone."""
    if reply.stream_id is None or reply.ended is not None:
        return
    url = f"{base}/chat/streams/{reply.stream_id}"
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.fetch(url, method="DELETE", headers=headers, raise_error=False), CANCEL_TIMEOUT)


def _describe(error: Exception) -> str:
    """`Connection refused` rather than the loop's `[Errno 111] Connect call failed ('127.0.0.1', 8080)`."""
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    return str(error)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Stream an answer from a tornado-ai-stream gateway to stdout.")
    parser.add_argument("prompt", nargs="*", help="the prompt (default: read from stdin)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the gateway's base URL (default {DEFAULT_URL})")
    parser.add_argument("--key", default=None, help="a client key, sent as Authorization: Bearer <key>")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default 600)")
    parser.add_argument("--image", action="append", default=[], metavar="PATH", help="send this picture with the prompt (repeatable)")
    parser.add_argument("--no-resume", action="store_true", help="a plain stream: a dropped connection ends the answer")
    args = parser.parse_args(argv)
    prompt = " ".join(args.prompt) if args.prompt else sys.stdin.read().strip()
    if not prompt:
        parser.error("no prompt: pass it as an argument or on stdin")
    if not args.timeout > 0:
        parser.error("--timeout must be a number of seconds > 0")
    try:
        images = [image_data_url(path) for path in args.image]
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(stream_chat(args.url, prompt, sys.stdout, args.key, args.timeout, images, not args.no_resume))
    except ChatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Whoever read stdout is gone (`| head`): exit quietly, and keep Python's final flush from complaining.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

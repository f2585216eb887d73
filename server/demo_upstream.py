"""An offline OpenRouter-compatible upstream: the real wire format over real HTTP, simulated answers.

`python run.py --demo` starts it in-process on an ephemeral loopback port; tests and benchmarks start it
the same way (or as its own process: `python -m server.demo_upstream --port 9000 --delay-ms 0`).
It speaks what OpenRouter speaks: `POST {base}/chat/completions` answering `text/event-stream` with a
`: OPENROUTER PROCESSING` comment, `chat.completion.chunk` JSON lines, a finish chunk, a usage chunk and
`data: [DONE]` (or one `chat.completion` JSON when `stream` is false), and `GET {base}/models`. Usage counts
words as tokens and, when the request asks `"usage": {"include": true}`, carries a made-up `cost`.
The answer quotes the prompt and continues with fixed sentences, so it is deterministic. When `tools` are
sent it calls one (streamed as OpenAI does: the id and name first, then the arguments in pieces; finish
reason `tool_calls`), and a `json_schema` or `json_object` response_format gets JSON that fits it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tornado import httpserver, web
from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets

from server.demo_json import instance

BASE_PATH = "/api/v1"

FILLER = (
    "This answer comes from the demo upstream of tornado-ai-stream, so no API key was spent. "
    "Each word you see arrives as its own server-sent event, flushed the moment it is produced. "
    "Point OPENROUTER_BASE_URL at a real provider and set OPENROUTER_API_KEY to get real answers."
)
DEMO_USD_PER_TOKEN = 0.000002  # the demo's made-up price, reported as OpenRouter reports cost
_WORD = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class DemoOptions:
    delay: float = 0.03  # seconds between chunks
    words_per_chunk: int = 1
    answer_words: int = 0  # 0: quote the prompt, then the filler; N: exactly N filler words (benchmarks)


def answer_for(prompt: str, options: DemoOptions) -> str:
    if options.answer_words:
        words = _WORD.findall(FILLER + " ")
        return "".join(words[i % len(words)] for i in range(options.answer_words))
    return f'You said: "{prompt}". {FILLER}'


def chunk_answer(answer: str, words_per_chunk: int) -> list[str]:
    words = _WORD.findall(answer)
    return ["".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]


def _last_user_text(messages: object) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return content if isinstance(content, str) else ""
    return ""


def _error(handler: web.RequestHandler, status: int, message: str) -> None:
    handler.set_status(status)
    handler.set_header("Content-Type", "application/json")
    handler.finish(json.dumps({"error": {"message": message, "code": status}}))


def tool_call_for(body: dict[str, Any]) -> dict[str, Any] | None:
    """The call the demo makes when `tools` are sent (the chosen or the first function, arguments fitting its
    schema); None when the turn answers a tool result, no tools are sent or tool_choice is "none"."""
    tools = [tool for tool in body.get("tools") or () if isinstance(tool, dict) and isinstance(tool.get("function"), dict)]
    last = (body.get("messages") or [None])[-1]
    choice = body.get("tool_choice")
    if not tools or choice == "none" or (isinstance(last, dict) and last.get("role") == "tool"):
        return None
    chosen = choice.get("function") if isinstance(choice, dict) else None
    chosen = chosen.get("name") if isinstance(chosen, dict) else None
    function = next((tool["function"] for tool in tools if tool["function"].get("name") == chosen), tools[0]["function"])
    arguments = json.dumps(instance(function.get("parameters") or {"type": "object"}) or {})
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": function.get("name"), "arguments": arguments}}


def text_for(body: dict[str, Any], prompt: str, options: DemoOptions) -> str:
    """JSON fitting `response_format` when one asks for JSON, else the echo answer."""
    response_format = body.get("response_format") if isinstance(body.get("response_format"), dict) else {}
    if response_format.get("type") == "json_schema":
        return json.dumps(instance((response_format.get("json_schema") or {}).get("schema") or {"type": "object"}))
    if response_format.get("type") == "json_object":
        return json.dumps({"answer": prompt})
    return answer_for(prompt, options)


class ChatCompletionsHandler(web.RequestHandler):
    def initialize(self, options: DemoOptions) -> None:
        self.options = options
        self.closed = False

    def on_connection_close(self) -> None:
        self.closed = True

    async def post(self) -> None:
        if not self.request.headers.get("Authorization", "").startswith("Bearer "):
            return _error(self, 401, "No auth credentials found")
        try:
            body = json.loads(self.request.body)
        except ValueError:
            return _error(self, 400, "Invalid JSON body")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(self, 400, "messages: expected an array")
        model = str(body.get("model") or "demo/model")
        prompt = _last_user_text(body["messages"])
        call = tool_call_for(body)
        text = call["function"]["arguments"] if call else text_for(body, prompt, self.options)
        pieces = chunk_answer(text, self.options.words_per_chunk) if not call else _slices(text, 8)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        finish_reason = "tool_calls" if call else "stop"
        if not call and isinstance(max_tokens, int) and 0 < max_tokens < len(pieces):
            pieces, finish_reason = pieces[:max_tokens], "length"
        usage = {"prompt_tokens": len(_WORD.findall(prompt)), "completion_tokens": len(pieces)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if isinstance(body.get("usage"), dict) and body["usage"].get("include"):  # OpenRouter adds the cost in credits (USD)
            usage["cost"] = round(usage["total_tokens"] * DEMO_USD_PER_TOKEN, 10)
        ident = f"gen-{int(time.time())}-{uuid.uuid4().hex[:20]}"
        if body.get("stream"):
            await self._stream(ident, model, _deltas(pieces, call), finish_reason, usage)
            return
        message: dict[str, Any] = {"role": "assistant", "content": None if call else "".join(pieces)}
        if call:
            message["tool_calls"] = [call]
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps(
                {
                    "id": ident,
                    "provider": "Demo",
                    "model": model,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                    "usage": usage,
                }
            )
        )

    async def _stream(self, ident: str, model: str, deltas: list[dict[str, Any]], finish_reason: str, usage: dict) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.request.connection.stream.set_nodelay(True)  # type: ignore[attr-defined]
        created = int(time.time())
        head = f'{{"id":"{ident}","provider":"Demo","model":{json.dumps(model)},"object":"chat.completion.chunk","created":{created},'

        def chunk(delta: dict[str, Any], reason: str | None) -> str:
            choice = {"index": 0, "delta": {"role": "assistant", **delta}, "finish_reason": reason}
            return f'data: {head}"choices":[{json.dumps(choice, ensure_ascii=False)}]}}\n\n'

        try:
            self.write(": OPENROUTER PROCESSING\n\n")
            await self.flush()
            for delta in deltas:
                if self.options.delay:
                    await asyncio.sleep(self.options.delay)
                if self.closed:
                    return
                self.write(chunk(delta, None))
                await self.flush()
            self.write(chunk({"content": ""}, finish_reason))
            self.write(f'data: {head}"choices":[],"usage":{json.dumps(usage)}}}\n\n')
            self.write("data: [DONE]\n\n")
            self.finish()
        except StreamClosedError:
            return


def _slices(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _deltas(pieces: list[str], call: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Text deltas, or a tool call as OpenAI streams one: id and name first, then the arguments in pieces."""
    if call is None:
        return [{"content": piece} for piece in pieces]
    opening = {"index": 0, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
    return [{"content": None, "tool_calls": [opening]}] + [
        {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces
    ]


# the catalogue GET {base}/models answers, in OpenRouter's shape (no owned_by: the gateway adds it)
CATALOGUE = [
    {
        "id": "anthropic/claude-3.5-sonnet",
        "name": "Anthropic: Claude 3.5 Sonnet",
        "created": 1718841600,
        "context_length": 200000,
        "pricing": {"prompt": "0.000003", "completion": "0.000015"},
    },
    {
        "id": "openai/gpt-4o-mini",
        "name": "OpenAI: GPT-4o-mini",
        "created": 1721260800,
        "context_length": 128000,
        "pricing": {"prompt": "0.00000015", "completion": "0.0000006"},
    },
    {
        "id": "meta-llama/llama-3.1-8b-instruct",
        "name": "Meta: Llama 3.1 8B Instruct",
        "created": 1721692800,
        "context_length": 131072,
        "pricing": {"prompt": "0.00000002", "completion": "0.00000005"},
    },
    {"id": "demo/echo", "name": "Demo echo", "created": 0, "context_length": 8192, "pricing": {"prompt": "0", "completion": "0"}},
]


class ModelsHandler(web.RequestHandler):
    def get(self) -> None:
        self.write({"data": CATALOGUE})


def make_app(options: DemoOptions) -> web.Application:
    return web.Application(
        [
            (BASE_PATH + "/chat/completions", ChatCompletionsHandler, {"options": options}),
            (BASE_PATH + "/models", ModelsHandler),
        ],
        log_function=lambda handler: None,  # the gateway's own access lines are the ones that matter
    )


def start_demo_upstream(
    options: DemoOptions, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None
) -> tuple[httpserver.HTTPServer, str]:
    """Listen on `host:port` (0: an ephemeral port) on the current loop, over TLS with `tls`; return the server
    and its base URL."""
    sockets = bind_sockets(port, host)
    server = httpserver.HTTPServer(make_app(options), ssl_options=tls)
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()[1]
    return server, f"{'https' if tls else 'http'}://{host}:{bound}{BASE_PATH}"


def main() -> None:
    parser = argparse.ArgumentParser(description="Offline OpenRouter-compatible upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--delay-ms", type=float, default=30.0)
    parser.add_argument("--words-per-chunk", type=int, default=1)
    parser.add_argument("--answer-words", type=int, default=0)
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (the benchmark's self-signed upstream)")
    parser.add_argument("--tls-key", help="the certificate's PEM private key")
    args = parser.parse_args()
    options = DemoOptions(args.delay_ms / 1000, args.words_per_chunk, args.answer_words)
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)

    async def serve() -> None:
        _, url = start_demo_upstream(options, args.host, args.port, tls)
        print(f"demo upstream at {url}", flush=True)
        await asyncio.Event().wait()

    IOLoop.current().run_sync(serve)


if __name__ == "__main__":
    main()

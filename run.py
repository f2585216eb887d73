"""Start the gateway: `python run.py` (needs OPENROUTER_API_KEY) or `python run.py --demo` (offline).

`python run.py chat "prompt" [--url URL] [--key KEY]` is the terminal client (client/chat.py) instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

from app.lifecycle import run, serve
from app.workers import run_workers
from client import chat
from server.config import ConfigError, load_settings
from server.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["chat"]:
        return chat.main(argv[1:], prog="run.py chat")
    parser = argparse.ArgumentParser(
        description="tornado-ai-stream: an SSE gateway for OpenRouter-compatible LLM APIs",
        epilog='terminal client: run.py chat "prompt" [--url URL] [--key KEY] (see run.py chat --help)',
    )
    parser.add_argument("--demo", action="store_true", help="answer from the built-in demo upstream (no API key, no network)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(demo=args.demo)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_color, settings.log_level, no_color=settings.no_color)
    if not settings.resumable_streams:
        logging.getLogger("gateway").warning(
            'WORKERS=%d with RESUME_BACKEND=memory: "resumable" requests are served as plain streams; set REDIS_URL to resume them',
            settings.workers,
        )
    if settings.workers != 1:
        return run_workers(settings)
    run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Our secrets out of upstream text: a provider that quotes the key it was sent (`Invalid API key: Bearer sk-...`)
must not hand OPENROUTER_API_KEY, or a client key, to every client and every log reader.

Applied to all upstream text that reaches a client or a log line (error bodies, in-stream error chunks).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from server.config import Settings

REDACTED = "[redacted]"


class Redactor:
    """Replaces every occurrence of any of the secrets with `[redacted]`; a no-op when there are none."""

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[str]) -> None:
        # longest first, so a secret that contains another is replaced whole
        unique = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, unique))) if unique else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text) if self._pattern is not None else text


@lru_cache(maxsize=8)
def redactor_for(settings: Settings) -> Redactor:
    """Built once per Settings (and looked up only when an upstream error has text to show)."""
    return Redactor((settings.api_key, *settings.client_api_keys))

"""Request ids: accept a well-formed inbound `X-Request-ID`, otherwise make a UUID4.

Anything outside `[A-Za-z0-9._:-]{1,128}` could inject into log lines and response headers, so it is
replaced rather than cleaned.
"""

from __future__ import annotations

import re
import uuid

_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def resolve_request_id(inbound: str | None) -> str:
    if inbound is not None and _VALID.fullmatch(inbound):
        return inbound
    return str(uuid.uuid4())

"""Why an upstream request failed below HTTP, in words an operator can act on.

The pooled client raises whatever broke: an `ssl` error, its own framing checks, a reset or a refused
connect. The client is told the class of failure (a certificate problem is fixed differently from a
refused port); the WARN log line carries the exception itself.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

from server.http_client import ConnectionClosedError, ProtocolError

TLS_VERIFICATION = "upstream TLS certificate verification failed"
TLS_OTHER = "upstream TLS handshake failed"
INVALID_HTTP = "invalid HTTP from upstream"
RESET = "upstream connection reset"
CLOSED_EARLY = "upstream connection closed before the stream finished"
CLOSED_BEFORE_ANSWER = "upstream closed the connection before answering"
NO_CONNECTION = "could not connect to the upstream"


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and what caused it (a ConnectionClosedError carries the socket's own error as its cause)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def failure_message(error: BaseException | None, answered: bool) -> str:
    """The client's message for a request that failed with `error`; `answered`: a response head had arrived."""
    chain = list(_chain(error)) if error is not None else []
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        return TLS_VERIFICATION
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return TLS_OTHER
    if any(isinstance(e, ProtocolError) for e in chain):
        return INVALID_HTTP
    if any(isinstance(e, ConnectionResetError) for e in chain):
        return RESET
    if answered:
        return CLOSED_EARLY
    if any(isinstance(e, ConnectionClosedError) for e in chain):
        return CLOSED_BEFORE_ANSWER
    return NO_CONNECTION

"""Why an upstream request failed below HTTP, in words an operator can act on.

The pooled client raises whatever broke: an `ssl` error, its own framing checks, a reset or a refused
connect. The client is told the class of failure (a certificate problem is fixed differently from a
refused port); the WARN log line carries the exception itself.
"""

from __future__ import annotations

import ssl

from server.http_client import ConnectionClosedError, ProtocolError

TLS_VERIFICATION = "upstream TLS certificate verification failed"
TLS_OTHER = "upstream TLS handshake failed"
INVALID_HTTP = "invalid HTTP from upstream"
RESET = "upstream connection reset"
CLOSED_EARLY = "upstream connection closed before the stream finished"
CLOSED_BEFORE_ANSWER = "upstream closed the connection before answering"
NO_CONNECTION = "could not connect to the upstream"


def failure_message(error: BaseException | None, answered: bool) -> str:
    """The client's message for a request that failed with `error`; `answered`: a response head had arrived."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return TLS_VERIFICATION
    if isinstance(error, ssl.SSLError):
        return TLS_OTHER
    if isinstance(error, ProtocolError):
        return INVALID_HTTP
    if isinstance(error, ConnectionResetError):
        return RESET
    if answered:
        return CLOSED_EARLY
    if isinstance(error, ConnectionClosedError):
        return CLOSED_BEFORE_ANSWER
    return NO_CONNECTION

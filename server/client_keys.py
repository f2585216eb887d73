"""Client keys: who may spend the upstream key. Logs only ever see a short, non-reversible key id."""

from __future__ import annotations

import hashlib
import hmac


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class ClientKeys:
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = [(key.encode("utf-8"), key_id(key)) for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, authorization: str | None) -> str | None:
        """The key id for a valid `Bearer` key, else None. Compares against every key in constant time."""
        token = bearer_token(authorization)
        if token is None:
            return None
        presented = token.encode("utf-8")
        found = None
        for key, ident in self._keys:
            if hmac.compare_digest(presented, key):
                found = ident
        return found

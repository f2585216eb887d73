"""The client's IP: the socket peer, or a forwarded address only when the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(address.strip())
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, proxies: Sequence[Network]) -> bool:
    return any(address in network for network in proxies)


def client_ip(peer: str, forwarded_for: str | None, real_ip: str | None, proxies: Sequence[Network]) -> str:
    """Walk `X-Forwarded-For` from the right, skipping trusted proxies; the first other address is the client.

    A client can prepend anything to the header, but cannot forge what our own proxies appended, so the
    right-most untrusted address is the one a proxy actually saw.
    """
    peer_address = _parse(peer)
    if not proxies or peer_address is None or not _trusted(peer_address, proxies):
        return peer
    if forwarded_for:
        hops = [hop for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                break  # garbage in the chain: trust nothing further left
            if not _trusted(address, proxies):
                return str(address)
        return peer
    if real_ip:
        address = _parse(real_ip)
        if address is not None:
            return str(address)
    return peer

"""Whose bucket a request counts against: the socket peer, or a forwarded address only via a trusted proxy."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from middleware.client_ip import client_ip
from tests.conftest import chat
from tests.fault_upstream import FaultUpstream

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "real_ip", "expected"),
    [
        ("203.0.113.7", "1.1.1.1", "2.2.2.2", "203.0.113.7"),  # untrusted peer: headers ignored
        ("10.1.2.3", "1.1.1.1", None, "1.1.1.1"),
        ("10.1.2.3", "6.6.6.6, 1.1.1.1", None, "1.1.1.1"),  # a client-forged left part is never reached
        ("10.1.2.3", "6.6.6.6, 1.1.1.1, 10.9.9.9", None, "1.1.1.1"),  # our own proxies are skipped
        ("10.1.2.3", "10.4.4.4, 10.5.5.5", None, "10.1.2.3"),  # all trusted: the peer
        ("10.1.2.3", "6.6.6.6, not-an-ip, 10.9.9.9", None, "10.1.2.3"),  # garbage: trust nothing left of it
        ("10.1.2.3", " , ", "2.2.2.2", "10.1.2.3"),  # present but empty: X-Real-IP is not consulted
        ("10.1.2.3", None, "2.2.2.2", "2.2.2.2"),
        ("10.1.2.3", None, "bogus", "10.1.2.3"),
        ("10.1.2.3", "2001:db8::1", None, "2001:db8::1"),
        ("not-an-ip", "1.1.1.1", None, "not-an-ip"),
    ],
)
def test_client_ip(peer: str, forwarded_for: str | None, real_ip: str | None, expected: str) -> None:
    assert client_ip(peer, forwarded_for, real_ip, PROXIES) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_ip("127.0.0.1", "1.1.1.1", "2.2.2.2", ()) == "127.0.0.1"


def started_ips(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.client_ip for record in caplog.records if record.getMessage() == "started"]  # type: ignore[attr-defined]


async def test_rotating_forwarded_headers_does_not_escape_the_bucket(
    start_gateway, upstream: FaultUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = start_gateway(RATE_LIMIT="1")  # TRUSTED_PROXIES empty: the socket peer is the client
    with caplog.at_level(logging.INFO, "gateway.access"):
        assert (await chat(gateway.port, {"prompt": "hi"}, {"X-Forwarded-For": "1.1.1.1"})).status == 200
        for fake in ("2.2.2.2", "3.3.3.3, 4.4.4.4"):
            assert (await chat(gateway.port, {"prompt": "hi"}, {"X-Forwarded-For": fake})).status == 429
        assert (await chat(gateway.port, {"prompt": "hi"}, {"X-Real-IP": "5.5.5.5"})).status == 429
    assert set(started_ips(caplog)) == {"127.0.0.1"}


async def test_trusted_proxy_forwards_the_client_address(start_gateway, upstream: FaultUpstream, caplog: pytest.LogCaptureFixture) -> None:
    gateway = start_gateway(RATE_LIMIT="1", TRUSTED_PROXIES="127.0.0.1,10.0.0.0/8")
    with caplog.at_level(logging.INFO, "gateway.access"):
        assert (await chat(gateway.port, {"prompt": "hi"}, {"X-Forwarded-For": "198.51.100.1"})).status == 200
        assert (await chat(gateway.port, {"prompt": "hi"}, {"X-Forwarded-For": "198.51.100.2, 10.0.0.9"})).status == 200
        # the same client prepending a fake hop (our proxy appended the real one): still its own, empty bucket
        spoofed = await chat(gateway.port, {"prompt": "hi"}, {"X-Forwarded-For": "192.0.2.99, 198.51.100.1"})
        assert spoofed.status == 429
        assert (await chat(gateway.port, {"prompt": "hi"}, {"X-Real-IP": "198.51.100.3"})).status == 200
    assert started_ips(caplog) == ["198.51.100.1", "198.51.100.2", "198.51.100.1", "198.51.100.3"]

"""The pooled client's chunked-body decoder: any split of the wire bytes decodes to the same body."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.http_client import ChunkedDecoder, ProtocolError


def encode(pieces: list[bytes], trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece)
    return body + b"0\r\n" + trailer + b"\r\n"


def decode(wire: bytes, cuts: list[int]) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    out, start = [], 0
    for cut in [*sorted(set(cuts)), len(wire)]:
        if not decoder.done:
            out.append(decoder.feed(wire[start:cut]))
        start = cut
    return b"".join(out), decoder


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=50), max_size=8), st.sampled_from([b"", b"X-Trailer: 1\r\n"]), st.data())
def test_any_split_decodes_the_same_body(pieces: list[bytes], trailer: bytes, data: st.DataObject) -> None:
    wire = encode(pieces, trailer)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=len(wire)))
    body, decoder = decode(wire, cuts)
    assert body == b"".join(pieces)
    assert decoder.done and not decoder.trailing


def test_bytes_after_the_last_chunk_make_the_connection_unusable() -> None:
    body, decoder = decode(encode([b"abc"]) + b"HTTP/1.1 200 OK", [])
    assert body == b"abc" and decoder.done and decoder.trailing


@pytest.mark.parametrize("wire", [b"zz\r\n", b"-1\r\n", b"0x3\r\nabc\r\n", b"3\r\nabcXX", b"1" * 70000])
def test_malformed_framing_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        ChunkedDecoder().feed(wire)

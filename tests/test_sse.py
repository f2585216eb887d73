"""The incremental SSE parser: any split of a valid stream yields the same events (property-tested)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.sse import EventTooLargeError, LineTooLongError, SSEEvent, SSEParser, encode_comment, encode_data

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40)


def render(payloads: list[str], newline: str) -> bytes:
    out = ": OPENROUTER PROCESSING" + newline + newline
    for payload in payloads:
        out += f"data: {payload}{newline}{newline}"
    return out.encode("utf-8")


def feed_split(data: bytes, cuts: list[int]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    start = 0
    for cut in sorted(set(cuts)):
        events += parser.feed(data[start:cut])
        start = cut
    events += parser.feed(data[start:])
    events += parser.close()
    return events


@settings(max_examples=300, deadline=None)
@given(st.lists(texts, max_size=8), st.sampled_from(["\n", "\r\n", "\r"]), st.data())
def test_any_split_yields_the_same_events(payloads: list[str], newline: str, data: st.DataObject) -> None:
    stream = render(payloads, newline)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=len(stream) + 1))
    assert [event.data for event in feed_split(stream, cuts)] == payloads


def test_every_byte_its_own_chunk_with_emoji_and_cjk() -> None:
    stream = render(["👋🏽 世界", '{"a": "é"}', "[DONE]"], "\r\n")
    parser = SSEParser()
    events = [event for index in range(len(stream)) for event in parser.feed(stream[index : index + 1])]
    assert [event.data for event in events] == ["👋🏽 世界", '{"a": "é"}', "[DONE]"]
    assert parser.comments == 1


def test_multiline_data_event_and_field_rules() -> None:
    parser = SSEParser()
    events = parser.feed(b"event: update\nid: 7\ndata: one\ndata:two\ndata\nretry: 5\nunknown: x\n\n")
    assert events == [SSEEvent("one\ntwo\n", "update", "7")]


def test_cr_at_chunk_end_waits_for_a_possible_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r\n") == [SSEEvent("a")]


def test_event_without_blank_line_at_eof_is_dropped() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: partial\n") == []
    assert parser.close() == []


def test_line_cap() -> None:
    parser = SSEParser(max_line_bytes=1024)
    parser.feed(b"data: " + b"x" * 1000)
    with pytest.raises(LineTooLongError):
        parser.feed(b"x" * 100)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_event_cap_counts_all_data_lines_of_one_event(newline: bytes) -> None:
    """Many short lines and no blank line: each line is under the line cap, the event is not."""
    parser = SSEParser(max_line_bytes=1024, max_event_bytes=4096)
    line = b"data: " + b"x" * 94 + newline  # 101 bytes counted a line (its LF or CRLF as one)
    assert parser.feed(line * 40) == []  # 4040 bytes: still under
    with pytest.raises(EventTooLargeError, match="upstream event too large"):
        parser.feed(line)


def test_event_cap_holds_whatever_the_split() -> None:
    """An event over the cap fails even when it arrives whole, blank line included, in one read."""
    event = b"data: " + b"y" * 1000 + b"\n"
    with pytest.raises(EventTooLargeError):
        SSEParser(max_line_bytes=1024, max_event_bytes=4096).feed(event * 5 + b"\n")
    parser = SSEParser(max_line_bytes=1024, max_event_bytes=4096)
    assert [len(e.data) for e in parser.feed(event * 4 + b"\n" + event * 4 + b"\n")] == [4003, 4003]


def test_encoders() -> None:
    assert encode_data('{"a": 1}') == b'data: {"a": 1}\n\n'
    assert encode_data("two\nlines") == b"data: two\ndata: lines\n\n"
    assert encode_comment("ping") == b": ping\n\n"

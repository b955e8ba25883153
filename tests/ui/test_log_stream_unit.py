"""The live log's pure parts (no browser, no primary): where a piece of log may end, the
event format, the cap on open streams, and the formatters the run pages use."""

import datetime
import json

import pytest

from primary.ui.format import bytes_text, seconds_between
from primary.ui.log_stream import StreamSlots, sse_event, utf8_complete_end

EURO = "€".encode()  # 3 bytes
SMILE = "😀".encode()  # 4 bytes


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"", 0),
        (b"plain ascii\n", 12),
        (b"a" + EURO, 4),
        (b"a" + EURO[:1], 1),
        (b"a" + EURO[:2], 1),
        (b"a" + SMILE[:3], 1),
        (b"a" + SMILE, 5),
        (b"a" + "é".encode()[:1], 1),
        (b"a\xff", 2),  # not UTF-8 at all: shown replaced, never held back
        (b"a\x80\x80\x80", 4),  # continuation bytes with no lead byte: invalid, complete
        (b"\xe2", 0),
    ],
)
def test_a_piece_of_log_never_ends_inside_a_character(data, end):
    assert utf8_complete_end(data) == end


def test_a_log_growing_a_few_bytes_at_a_time_shows_its_whole_text():
    """As the follower reads it: whatever has arrived past what was sent, up to where a
    character may still be cut off; the rest when the log is complete."""
    text = "naïve café ✓ 😀 done\n" * 20
    data = text.encode()
    for arrival in range(1, 8):
        shown, sent = "", 0
        for arrived in range(arrival, len(data) + arrival, arrival):
            piece = data[sent:arrived]
            piece = piece[: utf8_complete_end(piece)]
            shown += piece.decode("utf-8", "replace")
            sent += len(piece)
        shown += data[sent:].decode("utf-8", "replace")
        assert shown == text


def test_an_event_is_one_line_of_json_with_its_byte_offset():
    event = sse_event("log", {"text": "a\r\nb\rc\u2028"}, 1234)
    lines = event.decode().split("\n")
    assert lines[:2] == ["id: 1234", "event: log"]
    assert lines[2].startswith("data: ") and lines[3:] == ["", ""]
    assert json.loads(lines[2][len("data: ") :]) == {"text": "a\r\nb\rc\u2028"}
    assert "\r" not in event.decode()
    assert sse_event("state", {"state": "running"}).startswith(b"event: state\n")


def test_stream_slots_refuse_past_the_cap_and_free_on_give_back():
    slots = StreamSlots(2)
    assert [slots.take(), slots.take(), slots.take()] == [True, True, False]
    slots.give_back()
    assert slots.take() is True
    assert slots.take() is False


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (4300, "4.2 KiB"), (17 << 20, "17.0 MiB")],
)
def test_bytes_text(size, text):
    assert bytes_text(size) == text


def test_seconds_between():
    start = "2026-01-02T12:00:00.000+00:00"
    assert seconds_between(start, "2026-01-02T12:00:12.500+00:00") == 12.5
    now = datetime.datetime(2026, 1, 2, 12, 1, 0, tzinfo=datetime.UTC)
    assert seconds_between(start, None, now) == 60.0
    assert seconds_between(None, None) is None

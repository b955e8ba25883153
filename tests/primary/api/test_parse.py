"""load_json: what it refuses, whichever way a lone surrogate or deep nesting comes in;
the common body (a poll's) skips the walk over its strings and is taken as it is."""

import json

import pytest

from primary.api.parse import load_json
from primary.errors import BadRequest

POLL = {
    "version": "1.0",
    "slots": 1,
    "draining": False,
    "load": {"cpu": 0.5},
    "runs": [],
    "session": "abc",
    "job_identity": {"mode": "shared", "uid": 1000},
    "wait": True,
}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "\\ud800"}',  # the escape, lower case
        b'{"a": "\\uDFFF"}',  # upper case
        b'{"\\udc00": 1}',  # in a key
        b'{"a": "\xed\xa0\x80"}',  # the bytes a surrogate would have in UTF-8
        '{"a": "\ud800"}'.encode("utf-16-le", "surrogatepass"),  # json.loads takes UTF-16
        '{"a": ["\udfff"]}'.encode("utf-32", "surrogatepass"),  # and UTF-32, with a BOM
    ],
)
def test_a_lone_surrogate_is_refused_however_it_is_written(raw):
    with pytest.raises(BadRequest, match="lone surrogate"):
        load_json(raw)


def test_json_nested_too_deep_is_refused():
    with pytest.raises(BadRequest, match="nested deeper than 32"):
        load_json(b'{"a": ' + b"[" * 32 + b"]" * 32 + b"}")
    value = load_json(b"[" * 32 + b"]" * 32)  # 32 levels: the most it takes
    for _ in range(31):
        [value] = value
    assert value == []


def test_what_only_looks_like_a_surrogate_and_a_poll_body_are_taken():
    # A backslash, then "ud800": text, not an escape.
    assert load_json(b'{"a": "\\\\ud800"}') == {"a": "\\ud800"}
    assert load_json(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}  # a pair: one char
    assert load_json(json.dumps(POLL).encode()) == POLL
    assert load_json(json.dumps(POLL).encode("utf-16")) == POLL

"""What clients send, as the API's views take it: JSON bodies, whole numbers in query
strings and paths. One place per kind of input, so hostile values (deep nesting, lone
surrogates, integers SQLite cannot hold, NaN) get a 400 here instead of a 500 somewhere
below."""

import json
import math
import re

from flask import request
from werkzeug.routing import IntegerConverter

from primary.errors import BadRequest

# SQLite integers are signed 64-bit: a larger id, attempt or offset would raise
# OverflowError in the driver. Nothing the primary stores comes close.
MAX_INT = 2**63 - 1
MIN_INT = -(2**63)
# The deepest JSON any endpoint takes is about 4 levels; 32 leaves room.
MAX_JSON_DEPTH = 32
WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")
# Where a lone surrogate can come from in UTF-8: a \uD800-\uDFFF escape, or its
# UTF-8-like bytes (json.loads decodes with "surrogatepass"). A match only means "check
# the strings"; so does a NUL byte, which UTF-16 and UTF-32 JSON (json.loads takes them) has.
MAYBE_SURROGATE = re.compile(rb"\\u[dD][89abcdefABCDEF]|\xed[\xa0-\xbf]")


def _json_int(text: str) -> int:
    value = int(text)
    if not MIN_INT <= value <= MAX_INT:
        raise ValueError(f"the number {text[:30]} is out of range (at most 2^63 - 1)")
    return value


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:30]} is out of range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def load_json(raw: bytes):
    """Parse a JSON document strictly: integers within 64 bits, finite numbers, no NaN or
    Infinity, nesting at most MAX_JSON_DEPTH, strings that are valid Unicode (no lone
    surrogates: they cannot be stored or sent on). BadRequest says what is wrong."""
    try:
        value = json.loads(
            raw,
            parse_int=_json_int,
            parse_float=_json_float,
            parse_constant=_no_constant,
        )
    except RecursionError:
        raise BadRequest(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, and ours above
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    # Most bodies (every poll) can be neither too deep nor hold a surrogate: no walk then.
    if (
        raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH
        or b"\0" in raw
        or MAYBE_SURROGATE.search(raw)
    ):
        _check_tree(value)
    return value


def _check_tree(value) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH and isinstance(item, dict | list):
            raise BadRequest(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            "the JSON holds a string that is not valid Unicode (a lone surrogate)"
        ) from None


def json_body() -> dict:
    """The request's JSON object, or 400."""
    body = load_json(request.get_data(cache=True))
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def whole_number(raw: str | None, field: str) -> int:
    """A query-string number: ASCII digits only (int() would also take '1_0' and '١٠'),
    at most 2^63 - 1. BadRequest names the field."""
    if raw is None or not WHOLE_NUMBER.fullmatch(raw) or int(raw) > MAX_INT:
        raise BadRequest(f"{field}: must be a whole number from 0 to {MAX_INT}")
    return int(raw)


class Int64Converter(IntegerConverter):
    """`<int:...>` path segments: ASCII digits, within SQLite's 64 bits; anything else does
    not match the route (404), where werkzeug's own would take '١' and any length."""

    regex = r"[0-9]{1,19}"

    def __init__(self, url_map, *args, **kwargs) -> None:
        kwargs.setdefault("max", MAX_INT)
        super().__init__(url_map, *args, **kwargs)


def check_request_text() -> None:
    """Refuse a request whose path or query string is not valid UTF-8 once decoded
    (werkzeug would hand the views U+FFFD in its place, and a file would be stored under
    a name nobody sent)."""
    environ = request.environ
    for name in ("PATH_INFO", "QUERY_STRING"):
        raw = environ.get(name, "")
        try:
            data = raw.encode("latin-1")  # WSGI: the bytes as sent, one char per byte
        except UnicodeEncodeError:
            continue  # a server that decoded it already
        if name == "QUERY_STRING":
            from urllib.parse import unquote_to_bytes

            data = unquote_to_bytes(data.replace(b"+", b" "))
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            what = "path" if name == "PATH_INFO" else "query string"
            raise BadRequest(f"the {what} is not valid UTF-8") from None

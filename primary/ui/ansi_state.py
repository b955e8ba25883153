"""The colours a run log has set at a byte offset: what ansi.js would hold there, so the run
page can show lines from the middle of a log ("Load earlier", a search result, a long
log's tail) in the colours a terminal would, without reading from the start.

Pure: bytes in, a state out. The state is ansi.js's (`fresh()` without `pending`):
{"fg", "bg", "bold", "underline"}, fg/bg an SGR code (30-37, 90-97, 40-47, 100-107), a
"#rrggbb" string, or None. Each SGR sequence sets some of the four to constants (a reset
sets all), so the state at an offset is, for each of the four, what the last sequence
before it that set it set: read backwards, a reader can stop once all four are known.
"""

import re
from collections.abc import Callable

SGR = re.compile(rb"\x1b\[([0-9;]*)m")
ATTRIBUTES = ("fg", "bg", "bold", "underline")
CUBE = (0, 95, 135, 175, 215, 255)
# A window is read this far past its end, so a sequence that starts in it is read whole.
LONGEST_SEQUENCE = 4096


def fresh() -> dict:
    return {"fg": None, "bg": None, "bold": False, "underline": False}


def _hex(r: int, g: int, b: int) -> str:
    return f"#{r:02x}{g:02x}{b:02x}"


def _colour256(n: int, base: int, bright: int) -> int | str:
    if n < 8:
        return base + n
    if n < 16:
        return bright + n - 8
    if n < 232:
        c = n - 16
        return _hex(CUBE[c // 36], CUBE[c // 6 % 6], CUBE[c % 6])
    grey = 8 + 10 * (n - 232)
    return _hex(grey, grey, grey)


def _extended(codes: list[int], k: int, base: int, bright: int) -> tuple[int | str | None, int]:
    """The colour of 38/48's arguments after codes[k], and how many arguments it took."""
    mode = codes[k + 1] if k + 1 < len(codes) else None
    if mode == 5:
        n = codes[k + 2] if k + 2 < len(codes) else None
        return (_colour256(n, base, bright) if n is not None and n <= 255 else None), 2
    if mode == 2:
        rgb = codes[k + 2 : k + 5]
        return (_hex(*rgb) if len(rgb) == 3 and all(v <= 255 for v in rgb) else None), 4
    return None, 0


def _number(param: bytes) -> int:
    # Digits past the 20th make a number no code is (as JavaScript's Number does), and keep
    # int() under its digit limit.
    digits = param.lstrip(b"0")
    return int(digits[:21]) if digits else 0


def effect(params: bytes) -> dict:
    """What one SGR sequence (its parameters, b"1;31") sets: {attribute: value}, as ansi.js's
    applySgr does, left to right."""
    codes = [_number(p) for p in params.split(b";")] if params else [0]
    out: dict = {}
    k = 0
    while k < len(codes):
        code = codes[k]
        if code == 0:
            out.update(fresh())
        elif code == 1:
            out["bold"] = True
        elif code == 22:
            out["bold"] = False
        elif code == 4:
            out["underline"] = True
        elif code == 24:
            out["underline"] = False
        elif code == 39:
            out["fg"] = None
        elif code == 49:
            out["bg"] = None
        elif 30 <= code <= 37 or 90 <= code <= 97:
            out["fg"] = code
        elif 40 <= code <= 47 or 100 <= code <= 107:
            out["bg"] = code
        elif code in (38, 48):
            colour, used = _extended(codes, k, *((30, 90) if code == 38 else (40, 100)))
            if colour is not None:
                out["fg" if code == 38 else "bg"] = colour
            k += used  # its arguments are no codes of their own
        elif code == 58:
            k += _extended(codes, k, 0, 0)[1]  # underline colour: not shown
        k += 1
    return out


def state_before(read: Callable[[int, int], bytes], end: int, window: int = 1 << 20) -> dict:
    """The state at byte `end` of a log, `read(start, size)` giving its bytes: windows are read
    backwards from `end` until all four attributes are known or the log's start is reached."""
    known: dict = {}
    high = end
    while high > 0 and len(known) < len(ATTRIBUTES):
        low = max(0, high - window)
        data = read(low, min(end, high + LONGEST_SEQUENCE) - low)
        # A sequence read again past `high` sets nothing new: a later window knew it.
        for params in reversed(SGR.findall(data)):
            for name, value in effect(params).items():
                known.setdefault(name, value)
            if len(known) == len(ATTRIBUTES):
                break
        high = low
    return {**fresh(), **known}

"""Log storage by offset: resends never duplicate, gaps are refused."""

import pytest

from primary.logs import LogGap, LogStore


def test_append_by_offset(tmp_path):
    logs = LogStore(tmp_path)
    assert logs.append(1, 1, "job", 0, b"hello ") == 6
    assert logs.append(1, 1, "job", 0, b"hello ") == 6  # full resend: nothing new
    assert logs.append(1, 1, "job", 3, b"lo world") == 11  # overlapping resend
    with pytest.raises(LogGap) as gap:
        logs.append(1, 1, "job", 20, b"x")
    assert gap.value.size == 11
    assert logs.path(1, 1, "job").read_bytes() == b"hello world"
    assert b"".join(logs.iter_bytes(1, 1, "job", 6)) == b"world"
    assert b"".join(logs.iter_bytes(1, 1, "job", 0, 5)) == b"hello"
    assert logs.size(1, 2, "job") == 0  # attempts are kept apart

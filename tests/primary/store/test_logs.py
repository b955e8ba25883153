"""Log storage by offset: resends never duplicate, gaps are refused."""

import io
import os

import pytest

from primary.store.logs import LogGap, LogStore, ShortBody


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


def test_append_from_streams_pieces_and_skips_what_it_has(tmp_path):
    logs = LogStore(tmp_path)
    data = bytes(range(256)) * 3000  # 768,000 bytes: three pieces of WRITE_PIECE and a bit
    assert logs.append(1, 1, "job", 0, data[:300_000]) == 300_000
    # A resend from 0 whose known part spans more than one piece: only the rest is written.
    body = io.BytesIO(data)
    assert logs.append_from(1, 1, "job", 0, len(data), body.read) == len(data)
    assert body.read() == b""  # the whole body was consumed
    assert logs.path(1, 1, "job").read_bytes() == data


def test_a_short_chunk_keeps_the_bytes_that_came(tmp_path):
    logs = LogStore(tmp_path)
    with pytest.raises(ShortBody):
        logs.append_from(1, 1, "job", 0, 1000, io.BytesIO(b"x" * 600).read)
    assert logs.path(1, 1, "job").read_bytes() == b"x" * 600
    assert logs.append(1, 1, "job", 0, b"x" * 1000) == 1000  # the resend completes it


def test_sync_fsyncs_the_log_and_the_directories_that_lead_to_it(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    logs = LogStore(tmp_path)
    logs.sync(1, 1, "job")  # nothing was written: nothing to sync, no file made
    assert synced == []
    assert not logs.path(1, 1, "job").exists()
    logs.append(1, 1, "job", 0, b"done\n")
    logs.sync(1, 1, "job")
    assert synced == [
        str(tmp_path / "1/1/job.log"),
        str(tmp_path / "1/1"),
        str(tmp_path / "1"),
        str(tmp_path),
    ]
    assert logs.path(1, 1, "job").read_bytes() == b"done\n"

"""Log storage by offset, in files (SQLite installs) and in PostgreSQL (a shared fleet):
resends never duplicate, gaps are refused, every byte comes back as it was sent."""

import io
import os
import threading

import pytest
from pgcluster import both_engines

from primary.store.logs import LogGap, LogStore, ShortBody
from primary.store.pg_logs import MERGE_BELOW, PostgresLogStore
from primary.store.postgres import PostgresStore


@pytest.fixture
def logs(engine, store_url, tmp_path):
    if engine == "sqlite":
        yield LogStore(tmp_path)
        return
    store = PostgresStore(store_url)
    store.migrate()
    pg_logs = PostgresLogStore(store)
    yield pg_logs
    pg_logs.close()
    store.close()


def stored(logs, run_id: int = 1, attempt: int = 1, job: str = "job") -> bytes:
    return b"".join(logs.iter_bytes(run_id, attempt, job, 0))


@both_engines
def test_append_by_offset(logs):
    assert logs.append(1, 1, "job", 0, b"hello ") == 6
    assert logs.append(1, 1, "job", 0, b"hello ") == 6  # full resend: nothing new
    assert logs.append(1, 1, "job", 3, b"lo world") == 11  # overlapping resend
    with pytest.raises(LogGap) as gap:
        logs.append(1, 1, "job", 20, b"x")
    assert gap.value.size == 11
    assert stored(logs) == b"hello world"
    assert b"".join(logs.iter_bytes(1, 1, "job", 6)) == b"world"
    assert b"".join(logs.iter_bytes(1, 1, "job", 0, 5)) == b"hello"
    assert logs.size(1, 2, "job") == 0  # attempts are kept apart
    assert logs.last_byte(1, 1, "job") == b"d"
    assert logs.last_byte(1, 2, "job") == b""
    logs.append(1, 2, "other", 0, b"x")
    assert logs.sizes(1) == {(1, "job"): 11, (2, "other"): 1}


@both_engines
def test_append_from_streams_pieces_and_skips_what_it_has(logs):
    data = bytes(range(256)) * 3000  # 768,000 bytes: three pieces of WRITE_PIECE and a bit
    assert logs.append(1, 1, "job", 0, data[:300_000]) == 300_000
    # A resend from 0 whose known part spans more than one piece: only the rest is written.
    body = io.BytesIO(data)
    assert logs.append_from(1, 1, "job", 0, len(data), body.read) == len(data)
    assert body.read() == b""  # the whole body was consumed
    assert stored(logs) == data
    # Any window reads back exactly, whichever chunks it starts and ends in.
    for start, end in ((0, 1), (262_143, 262_145), (299_999, 700_001), (767_999, 768_000)):
        assert b"".join(logs.iter_bytes(1, 1, "job", start, end)) == data[start:end]


@both_engines
def test_a_short_chunk_keeps_the_bytes_that_came(logs):
    with pytest.raises(ShortBody):
        logs.append_from(1, 1, "job", 0, 1000, io.BytesIO(b"x" * 600).read)
    assert stored(logs) == b"x" * 600
    assert logs.append(1, 1, "job", 0, b"x" * 1000) == 1000  # the resend completes it


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_sync_fsyncs_the_log_and_the_directories_that_lead_to_it(engine, tmp_path, monkeypatch):
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


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_a_log_written_a_line_at_a_time_is_kept_in_few_chunks(logs):
    lines = [b"%06d a line of output\n" % i for i in range(5000)]  # 24 bytes each
    at = 0
    for line in lines:
        at = logs.append(1, 1, "job", at, line)
    assert stored(logs) == b"".join(lines)
    chunks = logs.store.query("SELECT length(data) AS n FROM log_chunks ORDER BY start")
    first = MERGE_BELOW - MERGE_BELOW % 24  # the lines that fit in one chunk
    assert [r["n"] for r in chunks] == [first, 5000 * 24 - first]
    assert b"".join(logs.iter_bytes(1, 1, "job", 65_500, 65_540)) == b"".join(lines)[65_500:65_540]


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_two_primaries_sending_one_log_at_once_store_it_once(logs, store_url):
    """The same output sent through two primaries at overlapping offsets (an agent's resend
    on a second connection): every byte once, in order."""
    other_store = PostgresStore(store_url)
    other = PostgresLogStore(other_store)
    data = bytes(range(251)) * 4000  # a prime period: a misplaced byte shows
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def send(target, piece_size: int) -> None:
        barrier.wait()
        at = 0
        try:
            while at < len(data):
                at = target.append(1, 1, "job", at, data[at : at + piece_size])
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [
        threading.Thread(target=send, args=(logs, 7_000)),
        threading.Thread(target=send, args=(other, 11_000)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert stored(logs) == data == stored(other)
    other.close()
    other_store.close()

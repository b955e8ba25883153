"""The primary's storage fails for real: its data dir on a small tmpfs that fills up, and
its log directory turned read-only by a bind mount. Writes are refused with a clear error
(507 or 503, and a line in the primary's log), reads go on, nothing stored is damaged, and
once there is room again everything the agents kept is delivered.

Both need root allowed to mount (CI runs as root on a fresh machine). File permissions
would not do: root ignores them.
"""

import contextlib
import dataclasses
import errno
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from fault_fleet import HEARTBEAT
from fleet import init_primary, wait_for

from agent import __version__, keys
from primary.errors import StorageFull
from primary.store.sqlite import SqliteStore as Store

pytestmark = pytest.mark.faults

DISK_BYTES = 16 << 20
STORE_FULL = "the primary's disk is full: could not store the change (nothing was written)"


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.fail(
            f"this test needs root allowed to mount: `mount {' '.join(args)}` failed: "
            f"{result.stderr.strip()}"
        )


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(disk: Path) -> Path:
    """Write a file until the disk has not one byte left; return it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = 1 << 20
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk //= 2
    finally:
        os.close(fd)
    return filler


def lease_left(primary, run_id: int) -> float:
    """Seconds until the run's lease expires, read from the store."""
    uri = f"file:{primary.data_dir / 'cifleet.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        (expires,) = db.execute("SELECT lease_expires FROM runs WHERE id = ?", (run_id,)).fetchone()
    return expires - time.time()


def seq(first: int, last: int) -> bytes:
    return b"".join(f"{i}\n".encode() for i in range(first, last + 1))


@contextlib.contextmanager
def small_disk(path: Path, size: int):
    """A tmpfs of `size` bytes mounted at `path` for the duration."""
    path.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    try:
        yield path
    finally:
        _umount(path)


@pytest.fixture
def primary_on_small_disk(fleet_root):
    """A serving primary whose data dir is on a tmpfs of DISK_BYTES; its own log is kept
    elsewhere, so it can still say what went wrong."""
    with small_disk(fleet_root / "disk", DISK_BYTES) as disk:
        primary = init_primary(
            disk, "--heartbeat-timeout", str(HEARTBEAT), "--primary-worker-slots", "0"
        )
        primary = dataclasses.replace(primary, log_path=fleet_root / "primary.log")
        try:
            primary.start()
            yield primary, disk
        finally:
            primary.close()


@pytest.fixture
def read_only():
    """read_only(path): a read-only bind mount over `path`, removed after the test (or by
    calling the function it returns)."""
    mounted: list[Path] = []

    def cover(path: Path):
        _mount("--bind", str(path), str(path))
        mounted.append(path)
        _mount("-o", "remount,bind,ro", str(path))

        def uncover() -> None:
            _umount(path)
            mounted.remove(path)

        return uncover

    yield cover
    for path in mounted:
        _umount(path)


def gated_pipeline(name: str, gate: Path) -> str:
    """500 lines; when `gate`/go exists, 4,500 more (more than the page of the log file
    already holds, so they need new space on the disk); it ends when `gate`/end exists."""
    wait = "while [ ! -e {} ]; do sleep 0.05; done"
    step = f"seq 1 500; {wait.format(gate / 'go')}; seq 501 5000; {wait.format(gate / 'end')}"
    return f"name: {name}\njobs:\n  - name: w\n    steps: ['{step}']\n"


def before_and_during(primary, fleet) -> tuple[tuple[int, bytes, bytes], Path, int]:
    """An agent; a run done before the fault (its id, job log and run log); and a run that
    has shipped its first 500 lines and waits at its gate (the gate's folder, its id)."""
    fleet.add("keeper")
    primary.pipeline("name: before\njobs:\n  - name: w\n    steps: ['seq 1 1000']\n")
    done = primary.wait_run(primary.trigger("before"))
    assert done["state"] == "success", done
    _, _, run_log = primary.client.request("GET", f"/api/v1/runs/{done['id']}/log")
    gate = fleet.root / "gate"
    gate.mkdir()
    primary.pipeline(gated_pipeline("during", gate))
    run_id = primary.trigger("during")
    wait_for(lambda: primary.job_log(run_id, "w") == seq(1, 500), 30, "the first 500 lines")
    return (done["id"], primary.job_log(done["id"], "w"), run_log), gate, run_id


def assert_reads_work(primary, run_id: int, job_log: bytes, run_log: bytes) -> None:
    assert primary.job_log(run_id, "w") == job_log == seq(1, 1000)
    assert primary.client.request("GET", f"/api/v1/runs/{run_id}/log")[2] == run_log
    assert primary.client.request("GET", "/api/v1/runs")[0] == 200
    assert primary.client.request("GET", "/api/v1/status")[0] == 200
    assert primary.client.request("GET", "/healthz")[0] == 200


def test_a_full_disk_refuses_writes_clearly_and_loses_nothing(primary_on_small_disk, fleet_of):
    primary, disk = primary_on_small_disk
    fleet = fleet_of(primary)
    done, gate, run_id = before_and_during(primary, fleet)

    filler = fill(disk)
    (gate / "go").touch()  # the job writes the rest now, onto nothing
    wait_for(
        lambda: f"run {run_id}: the primary answered HTTP 507; retrying" in fleet.log("keeper"),
        30,
        "the agent to be told 507 and keep the output",
    )
    status, _, body = primary.client.request("POST", "/api/v1/pipelines/before/runs")
    assert (status, json.loads(body)) == (
        507,
        {
            "error": STORE_FULL,
            "code": "storage_full",
        },
    )
    assert_reads_work(primary, *done)
    assert primary.run(run_id)["state"] == "running"
    # The outage outlasts the heartbeat timeout: the primary cannot record polls, so the
    # worker looks gone and the run's lease runs out; the run must not be lost for that.
    wait_for(
        lambda: (
            primary.worker("keeper")["state"] == "inactive" and lease_left(primary, run_id) < -1
        ),
        4 * HEARTBEAT,
        "the worker's contacts to go unrecorded until the run's lease has run out",
    )
    filler.unlink()
    wait_for(
        lambda: (
            "the store takes writes again; 1 lease(s) now run 6 s" in primary.log_path.read_text()
        ),
        30,
        "the lease sweeper to extend the leases",
    )
    (gate / "end").touch()  # only now: the run was going all along

    run = primary.wait_run(run_id, timeout=60)
    assert run["state"] == "success", run
    assert [(a["worker_name"], a["outcome"]) for a in run["attempts"]] == [("keeper", "success")]
    assert primary.job_log(run_id, "w") == seq(1, 5000)
    fleet.wait_active("keeper")
    assert primary.wait_run(primary.trigger("before"))["state"] == "success"
    assert_reads_work(primary, *done)
    with contextlib.closing(sqlite3.connect(primary.data_dir / "cifleet.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    said = primary.log_path.read_text()
    assert f"cannot store the log {primary.data_dir}/logs/{run_id}/1/w.log" in said
    assert "[Errno 28] No space left on device" in said
    assert "database or disk is full (SQLITE_FULL)" in said


def test_a_read_only_log_dir_refuses_log_writes_until_it_is_writable(serve, fleet_of, read_only):
    primary = serve()
    fleet = fleet_of(primary)
    done, gate, run_id = before_and_during(primary, fleet)

    writable_again = read_only(primary.data_dir / "logs")
    (gate / "go").touch()
    (gate / "end").touch()
    wait_for(
        lambda: f"run {run_id}: the primary answered HTTP 503; retrying" in fleet.log("keeper"),
        30,
        "the agent to be told 503 and keep the output",
    )
    assert_reads_work(primary, *done)
    # The store is fine: a run can still be queued, and everything else goes on.
    queued = primary.trigger("before")
    said = primary.log_path.read_text()
    assert f"cannot store the log {primary.data_dir}/logs/{run_id}/1/w.log" in said
    assert "[Errno 30] Read-only file system" in said
    writable_again()

    for rid, expected in ((run_id, seq(1, 5000)), (queued, seq(1, 1000))):
        run = primary.wait_run(rid, timeout=60)
        assert (run["state"], len(run["attempts"])) == ("success", 1), run
        assert primary.job_log(rid, "w") == expected
    assert_reads_work(primary, *done)


def test_a_transaction_cut_short_by_a_full_disk_is_refused_as_storage_full(fleet_root):
    """When a statement inside a transaction finds the disk full, SQLite rolls the whole
    transaction back by itself; the store must report that (StorageFull), not trip over
    its own ROLLBACK, and the same connection must work once there is room."""
    with small_disk(fleet_root / "disk", 1 << 20) as disk:
        store = Store(disk / "store.db")
        store.migrate()
        store.connection().execute("PRAGMA cache_size = 10")  # spill to the WAL early
        filler = fill(disk)
        insert = "INSERT INTO tokens (name, role, token_hash, created_at) VALUES (?, ?, ?, 0)"
        with pytest.raises(StorageFull), store.transaction() as conn:
            for i in range(100):
                conn.execute(insert, ("x" * 4000, "viewer", f"hash-{i}"))
        filler.unlink()
        with store.transaction() as conn:
            conn.execute(insert, ("kept", "viewer", "hash-kept"))
        assert [tuple(r) for r in store.query("SELECT name FROM tokens")] == [("kept",)]
        store.close()


def test_registrations_a_full_disk_refuses_count_in_the_limiter(primary_on_small_disk):
    """A registration that fails in the primary (507: the store cannot take the worker)
    is a refusal like a wrong secret: ten of them, and the source waits, even with the
    right secret and room on the disk again. Nothing of the refused ones was stored."""
    primary, disk = primary_on_small_disk
    secret = primary.secret()

    def register(name: str) -> tuple[int, dict, dict]:
        body = {
            "secret": secret,
            "name": name,
            "tags": [],
            "slots": 1,
            "version": __version__,
            "csr": keys.csr_pem(keys.new_key(), name),
        }
        status, headers, raw = primary.client.request(
            "POST", "/api/v1/workers/register", json.dumps(body).encode()
        )
        return status, headers, json.loads(raw)

    filler = fill(disk)
    refused = [register(f"full-{i}")[::2] for i in range(10)]
    assert refused == [(507, {"error": STORE_FULL, "code": "storage_full"})] * 10
    filler.unlink()
    status, headers, answer = register("room-again")
    assert (status, answer.get("code")) == (429, "rate_limited"), answer
    assert 0 < int(headers["retry-after"]) <= 300
    assert primary.workers() == []
    assert "database or disk is full (SQLITE_FULL)" in primary.log_path.read_text()

"""The partial logs of an attempt closed without its worker (lost, taken back) are fsynced
once the closing commits, outside the store's write lock; a finish by the worker (whose
final job statuses synced them already) adds no fsync."""

import os
import time

import pytest
from fleet import init_primary

from primary.config import PrimaryConfig
from primary.context import open_primary
from primary.pipelines.pipelines import save_pipeline
from primary.runs import runs, transitions


@pytest.fixture
def running(tmp_path, monkeypatch):
    """(primary, run id, fsynced paths): a run held by attempt 1, with a partial log."""
    data_dir = init_primary(tmp_path).data_dir
    primary = open_primary(PrimaryConfig(data_dir=data_dir, primary_worker_slots=0))
    save_pipeline(primary, "name: p\njobs:\n  - name: build\n    steps: ['true']\n")
    run_id = runs.create_run(primary, "p")
    with primary.store.transaction() as conn:
        conn.execute("UPDATE runs SET state = 'running', attempt = 1 WHERE id = ?", (run_id,))
        conn.execute(
            "INSERT INTO attempts (run_id, attempt, worker_id, worker_name, assigned_at)"
            " VALUES (?, 1, 'w-id', 'w', ?)",
            (run_id, time.time()),
        )
    primary.logs.append(run_id, 1, "build", 0, b"half a li")

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        # Outside the write lock: a slow disk holds up no other writer.
        assert not primary.store._write_lock.locked()
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return primary, run_id, synced


@pytest.mark.parametrize("lost", [True, False])
def test_a_lost_or_taken_back_attempt_has_its_logs_synced_after_the_commit(running, lost):
    primary, run_id, synced = running
    with primary.store.transaction() as conn:
        transitions.requeue(conn, run_id, "its worker went away", time.time(), lost=lost)
        assert synced == []  # not while the transaction holds the write lock
    log = primary.logs.path(run_id, 1, "build")
    assert synced == [str(log), str(log.parent), str(log.parent.parent), str(primary.logs.root)]


def test_a_rolled_back_loss_syncs_nothing(running):
    primary, run_id, synced = running
    with pytest.raises(RuntimeError), primary.store.transaction() as conn:
        transitions.requeue(conn, run_id, "its worker went away", time.time(), lost=True)
        raise RuntimeError("something after it failed")
    assert synced == []


def test_a_run_finished_by_its_worker_adds_no_sync(running):
    primary, run_id, synced = running
    with primary.store.transaction() as conn:
        transitions.end_run(conn, run_id, "success", time.time(), by_worker=True)
    assert synced == []

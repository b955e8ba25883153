"""`cifleet-agent update-worker` as a real process against the fake primary (mutual TLS)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def update_worker(home, *args):
    return subprocess.run(
        [sys.executable, "-m", "agent", "update-worker", "--home", str(home), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def config(home):
    return json.loads((home / "config.json").read_text())


def test_drain(agent_home, fake_primary):
    result = update_worker(agent_home, "--drain")
    assert result.returncode == 0, result.stderr
    assert fake_primary.worker_requests == [{"draining": True}]
    assert result.stdout == "worker test-worker (w-1): active, draining; tags: none; slots: 2\n"


def test_flood_and_slots_update_the_record_and_config(agent_home, fake_primary):
    fake_primary.worker["draining"] = True
    fake_primary.worker["tags"] = ["linux", "gpu"]  # an admin set them
    result = update_worker(agent_home, "--flood", "--slots", "3")
    assert result.returncode == 0, result.stderr
    assert fake_primary.worker_requests == [{"draining": False, "slots": 3}]
    assert result.stdout == (
        "worker test-worker (w-1): active, taking work; tags: linux,gpu; slots: 3\n"
    )
    assert config(agent_home)["tags"] == ["linux", "gpu"]  # the record's, kept for reference
    assert config(agent_home)["slots"] == 3
    assert config(agent_home)["worker_id"] == "w-1"  # the rest is kept


def _one_line_error(result, text):
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("cifleet-agent: error: ")
    assert text in result.stderr


def test_primary_unreachable(agent_home, fake_primary):
    fake_primary.stop()
    result = update_worker(agent_home, "--drain")
    _one_line_error(result, f"cannot reach the primary at {fake_primary.url}")


def test_unknown_worker(agent_home, fake_primary):
    fake_primary.unknown_worker = True
    result = update_worker(agent_home, "--slots", "4")
    _one_line_error(result, "the primary no longer knows this worker")
    assert config(agent_home)["slots"] == 2


def test_primary_refuses_a_field(agent_home, fake_primary):
    fake_primary.worker_error = (400, {"error": "slots: the limit is 8", "code": "bad_request"})
    result = update_worker(agent_home, "--slots", "9")
    _one_line_error(result, "the primary refused the update: slots: the limit is 8")
    assert config(agent_home)["slots"] == 2


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ((), "nothing to change"),
        (("--slots", "0"), "slots must be between 1 and 64"),
        # Tags decide which pipelines (and their secrets) a worker receives: an admin's.
        (("--tags", "linux"), "a worker's tags are set by an admin"),
        (("--drain", "--tags", ""), "PUT /api/v1/workers/NAME/tags"),
    ],
)
def test_bad_options_send_nothing(agent_home, fake_primary, args, text):
    _one_line_error(update_worker(agent_home, *args), text)
    assert fake_primary.worker_requests == []


def test_drain_and_flood_exclude_each_other(agent_home, fake_primary):
    result = update_worker(agent_home, "--drain", "--flood")
    assert result.returncode == 2 and "not allowed with" in result.stderr
    assert fake_primary.worker_requests == []


def test_unregistered_home(tmp_path, fake_primary):
    result = update_worker(tmp_path / "empty", "--drain")
    _one_line_error(result, "is not registered")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_run_as_root_on_the_agent_user_s_home_config_json_stays_the_agent_user_s(
    agent_home, fake_primary
):
    """The installer runs update-worker as root; the agent (another user) must still be
    able to read config.json when it starts again."""
    os.chown(agent_home / "config.json", 65534, 65534)
    result = update_worker(agent_home, "--slots", "4")
    assert result.returncode == 0, result.stderr
    stat = (agent_home / "config.json").stat()
    assert (stat.st_uid, stat.st_gid, stat.st_mode & 0o777) == (65534, 65534, 0o600)
    assert config(agent_home)["slots"] == 4

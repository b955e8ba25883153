"""remove-worker.yml and update-worker.yml against real SSH hosts and a real primary.

They run after test_add_worker.py (file order) and use its session lab: w2 is drained and
flooded, w2 is removed last.
"""

import http.client
import json
import shutil
import ssl

import pytest
from conftest import recap
from fleet import wait_for

pytestmark = pytest.mark.ansible


@pytest.fixture(scope="module")
def workers_added(lab):
    # test_add_worker.py normally did this already; run it only when needed (-k, -x).
    if not all((w := lab.primary.worker(name)) and w["state"] == "active" for name in lab.hosts):
        lab.playbook("add-worker.yml")
    for host in lab.hosts.values():
        wait_for(
            lambda h=host: (w := lab.primary.worker(h.name)) and w["state"] == "active",
            30,
            f"{host.name} to be active",
        )


def test_update_worker_drains_and_floods(lab, workers_added):
    result = lab.playbook("update-worker.yml", "--limit", "w2", "-e", "cifleet_worker_drain=true")
    assert recap(result.stdout)["w2"]["changed"] == 1
    assert lab.primary.worker("w2")["draining"] is True
    assert lab.primary.worker("w3")["draining"] is False
    again = lab.playbook("update-worker.yml", "--limit", "w2", "-e", "cifleet_worker_drain=true")
    assert recap(again.stdout)["w2"]["changed"] == 0
    lab.playbook("update-worker.yml", "--limit", "w2", "-e", "cifleet_worker_drain=false")
    worker = lab.primary.worker("w2")
    assert worker["draining"] is False
    assert worker["state"] == "active"


def test_update_worker_applies_new_slots_and_tags_rolling(lab, workers_added, tmp_path):
    inventory = tmp_path / "inventory"
    text = lab.inventory.read_text().replace(
        'w3 ansible_host=127.0.0.3 cifleet_worker_tags=\'["beta", "linux"]\'',
        'w3 ansible_host=127.0.0.3 cifleet_worker_tags=\'["beta", "big"]\' cifleet_worker_slots=3',
    )
    assert text != lab.inventory.read_text()
    inventory.write_text(text)
    result = lab.playbook("update-worker.yml", "-i", str(inventory))
    counts = recap(result.stdout)
    assert set(counts) == set(lab.hosts)
    worker = lab.primary.worker("w3")
    assert sorted(worker["tags"]) == ["beta", "big"]
    assert worker["slots"] == 3
    assert worker["draining"] is False
    assert all(not w["draining"] for w in lab.primary.workers())
    # Back to the session's inventory for the tests after this one.
    lab.playbook("update-worker.yml", "--limit", "w3")
    assert sorted(lab.primary.worker("w3")["tags"]) == ["beta", "linux"]


def _agent_port_status(lab, cert, key) -> str:
    """What the agent port answers to a request with this certificate."""
    ctx = ssl.create_default_context(cafile=str(lab.primary.ca_file))
    ctx.load_cert_chain(str(cert), str(key))
    conn = http.client.HTTPSConnection("127.0.0.1", lab.primary.agent_port, context=ctx, timeout=10)
    try:
        conn.request(
            "POST",
            "/agent/v1/worker",
            body=json.dumps({}),
            headers={"Content-Type": "application/json"},
        )
        return str(conn.getresponse().status)
    except (ssl.SSLError, OSError) as e:
        return f"refused: {e}"
    finally:
        conn.close()


def test_remove_worker_deregisters_stops_and_wipes(lab, workers_added, tmp_path):
    host = lab.hosts["w2"]
    shutil.copy(host.home / "worker.crt", tmp_path / "old.crt")
    shutil.copy(host.home / "worker.key", tmp_path / "old.key")
    assert _agent_port_status(lab, tmp_path / "old.crt", tmp_path / "old.key") == "200"
    pid = host.agent_pid()
    assert pid is not None

    result = lab.playbook("remove-worker.yml", "--limit", "w2")
    assert recap(result.stdout)["w2"]["changed"] > 0

    assert lab.primary.worker("w2") is None
    assert {w["name"] for w in lab.primary.workers()} == {"w3", "w4"}
    for name in ("worker.key", "worker.crt", "config.json"):
        assert not (host.home / name).exists(), name
    assert host.agent_pid() is None
    status = _agent_port_status(lab, tmp_path / "old.crt", tmp_path / "old.key")
    assert status == "403" or status.startswith("refused"), status
    # The install stays (remove_all is false); a second removal changes nothing.
    assert (host.root / "opt" / "venv" / "bin" / "cifleet-agent").exists()
    again = lab.playbook("remove-worker.yml", "--limit", "w2")
    assert recap(again.stdout)["w2"]["changed"] == 0

    all_gone = lab.playbook(
        "remove-worker.yml", "--limit", "w2", "-e", "cifleet_worker_remove_all=true"
    )
    assert recap(all_gone.stdout)["w2"]["changed"] > 0
    assert not (host.root / "opt").exists()
    assert not host.home.exists()

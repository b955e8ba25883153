"""The worker secret never shows up in a log, an error message or a process's argv."""

import contextlib
import subprocess
import threading
from pathlib import Path

from fleet import BIN, register_agent


def _snapshot_cmdlines(found: list[bytes], stop: threading.Event) -> None:
    while not stop.wait(0.02):
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):  # the process may have ended meanwhile
                found.append(cmdline.read_bytes())


def test_the_secret_is_in_no_log_argv_or_error(primary, start_agent, fleet_root):
    secrets = {primary.secret()}
    cmdlines: list[bytes] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_snapshot_cmdlines, args=(cmdlines, stop), daemon=True)
    watcher.start()
    try:
        start_agent("clean-a")
        start_agent("clean-b", tags="x")
        primary.pipeline("name: p\njobs:\n  - name: a\n    steps: ['env; echo done']\n")
        run = primary.wait_run(primary.trigger("p"))
        assert run["state"] == "success"
        outputs = [primary.job_log(run["id"], "a")]
        # A failed registration and a rotation, from the CLI and the API.
        wrong = register_agent(primary, fleet_root, "wrong", secret="x" + primary.secret())
        outputs += [wrong.stdout.encode(), wrong.stderr.encode()]
        secrets.add("x" + primary.secret())
        secrets.add(primary.client.json("POST", "/api/v1/worker-secret/rotate")["secret"])
        rotated = subprocess.run(
            [str(BIN / "cifleet-primary"), "secret", "rotate", "--data-dir", str(primary.data_dir)],
            capture_output=True,
        )
        outputs += [rotated.stdout, rotated.stderr]
        secrets.add(primary.secret())
    finally:
        stop.set()
        watcher.join()
    assert len(cmdlines) > 100, "the watcher saw processes"
    logs = [p.read_bytes() for p in fleet_root.glob("*.log")]
    logs += [p.read_bytes() for p in fleet_root.rglob("spool/**/*") if p.is_file()]
    assert len(logs) >= 3  # the primary's and both agents'
    for secret in secrets:
        needle = secret.encode()
        assert not any(needle in blob for blob in logs + outputs), "a log or output"
        assert not any(needle in c for c in cmdlines), "a process's argv"
    # The secret files the test itself wrote are the only place it was put on disk by hand.
    assert b"done" in outputs[0]

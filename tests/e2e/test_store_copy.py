"""`cifleet-primary store copy`: a primary that ran on SQLite moves into PostgreSQL and goes
on as it was: the same runs, byte-exact logs, tokens, secrets, and its agents keep
working without registering again."""

import json
import subprocess

from fleet import BIN, wait_for

from primary.store.copy import BEFORE_COPY

# Bytes no text codec would keep, CRs, no final newline.
ODD_BYTES = (
    "printf 'caf\\351 \\377\\376\\r\\n'; head -c 300000 /dev/zero | tr '\\0' 'z'; printf 'end'"
)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "cifleet-primary"), *args], capture_output=True, text=True, timeout=120
    )


def snapshot(primary, run_ids: list[int]) -> dict:
    """What an admin sees of the fleet, for comparing before and after."""
    return {
        "runs": primary.client.json("GET", "/api/v1/runs"),
        "pipelines": primary.client.json("GET", "/api/v1/pipelines"),
        "logs": {
            run_id: (
                primary.client.request("GET", f"/api/v1/runs/{run_id}/log")[2],
                primary.job_log(run_id, "w"),
            )
            for run_id in run_ids
        },
        "workers": [
            {k: v for k, v in w.items() if k not in ("last_contact", "load", "state")}
            for w in primary.workers()
        ],
        "secret": primary.secret(),
    }


def test_a_primary_moves_from_sqlite_into_postgres_and_goes_on(primary, start_agent, pg_url):
    start_agent("mover")
    primary.pipeline(f"name: odd\njobs:\n  - name: w\n    steps:\n      - |\n        {ODD_BYTES}\n")
    primary.pipeline(
        "name: secretive\njobs:\n  - name: w\n    secrets: [TOKEN]\n"
        "    steps: ['echo \"token=$TOKEN\"']\n"
    )
    primary.client.request("PUT", "/api/v1/pipelines/secretive/secrets/TOKEN", b"s3cr3t-value")
    static = bytes(range(256)) * 5000  # 1.28 MB: two chunks in the database
    status, _, _ = primary.client.request("PUT", "/api/v1/pipelines/odd/files/bin/data", static)
    assert status in (200, 201)
    run_ids = [primary.trigger("odd"), primary.trigger("secretive")]
    for run_id in run_ids:
        assert primary.wait_run(run_id)["state"] == "success"
    viewer = cli("token", "create", "--name", "ro", "--role", "viewer", "--data-dir",
                 str(primary.data_dir)).stdout.strip()  # fmt: skip
    before = snapshot(primary, run_ids)
    assert before["logs"][run_ids[0]][1].startswith(b"caf\xe9 \xff\xfe\r\nzzz")

    refused = cli("store", "copy", "--to", pg_url, "--data-dir", str(primary.data_dir))
    assert refused.returncode == 2 and "stop it first" in refused.stderr, refused.stderr
    primary.stop()
    copied = cli("store", "copy", "--to", pg_url, "--data-dir", str(primary.data_dir))
    assert copied.returncode == 0, copied.stderr
    # 300,012 bytes of the odd log and "token=***\n".
    assert "2 job logs (300022 bytes) and 1 static files" in copied.stdout, copied.stdout
    config = json.loads((primary.data_dir / "config.json").read_text())
    assert config["store"] == pg_url
    assert (primary.data_dir / BEFORE_COPY / "cifleet.db").exists()
    assert not (primary.data_dir / "cifleet.db").exists()

    primary.start()
    after = snapshot(primary, run_ids)
    assert after == before
    status, _, body = primary.client.request("GET", "/api/v1/pipelines/odd/files/bin/data")
    assert (status, body) == (200, static)  # from the database: files/ moved aside
    assert (primary.data_dir / BEFORE_COPY / "files" / "odd" / "bin" / "data").exists()
    # The agent goes on with its certificate; new runs take new ids, after the copied ones.
    wait_for(lambda: primary.worker("mover")["state"] == "active", 30, "the agent back")
    again = primary.trigger("secretive")
    assert again == max(run_ids) + 1
    assert primary.wait_run(again)["state"] == "success"
    assert primary.job_log(again, "w") == b"token=***\n"
    status, _, _ = primary.client.request("GET", "/api/v1/runs")
    assert status == 200
    tokens = cli("token", "list", "--data-dir", str(primary.data_dir)).stdout
    assert ["2", "viewer", "live", "ro"] in [line.split()[:4] for line in tokens.splitlines()]
    assert viewer.startswith("cft_")

    # Nothing is copied twice: the data dir is on PostgreSQL now.
    primary.stop()
    twice = cli("store", "copy", "--to", pg_url, "--data-dir", str(primary.data_dir))
    assert twice.returncode == 2
    assert f"{primary.data_dir} keeps its fleet in a database already" in twice.stderr

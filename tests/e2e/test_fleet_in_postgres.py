"""A fleet in PostgreSQL: `init --store` makes it in an empty database, a second data dir
joins it with the fleet's vault key (and only with it), and two primaries serve it at once:
either one's API sees the other's runs, logs, secrets and workers. The database holds no
secret in clear."""

import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from fleet import BIN, Agent, Primary, register_agent, wait_for

from primary.store.vault import new_key


def init(data_dir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "cifleet-primary"), "init", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def names_in(cert: Path) -> list[str]:
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n.value) for n in san]


@pytest.fixture
def two_primaries(tmp_path, pg_url):
    first, second = tmp_path / "one", tmp_path / "two"
    made = init(first, "--store", pg_url, "--hostname", "ci1.example")
    assert made.returncode == 0, made.stderr
    primaries = []
    for data_dir in (first, second):
        primaries.append(
            Primary(
                data_dir=data_dir,
                serve_args=["--heartbeat-timeout", "6"],
                log_path=tmp_path / f"{data_dir.name}.log",
            )
        )
    try:
        yield primaries
    finally:
        for primary in primaries:
            primary.close()


def test_a_second_primary_joins_only_with_the_fleets_vault_key(two_primaries, pg_url, tmp_path):
    one, two = two_primaries
    refused = init(two.data_dir, "--store", pg_url)
    assert refused.returncode == 2
    assert "holds a cifleet fleet already; to add a primary to it, give its vault key" in (
        refused.stderr
    )
    wrong = tmp_path / "wrong.key"
    wrong.write_text(new_key().hex() + "\n")
    refused = init(two.data_dir, "--store", pg_url, "--vault-key-file", str(wrong))
    assert refused.returncode == 2 and "wrong vault key" in refused.stderr, refused.stderr
    assert not two.data_dir.exists()  # nothing half-made
    joined = init(
        two.data_dir, "--store", pg_url, "--vault-key-file", str(one.data_dir / "vault.key"),
        "--hostname", "ci2.example", "--name", "second",
    )  # fmt: skip
    assert joined.returncode == 0, joined.stderr
    assert (two.data_dir / "ca.pem").read_bytes() == (one.data_dir / "ca.pem").read_bytes()
    assert names_in(one.data_dir / "server.pem")[0] == "ci1.example"
    assert names_in(two.data_dir / "server.pem")[0] == "ci2.example"
    assert (two.data_dir / "admin.token").read_text() != (one.data_dir / "admin.token").read_text()
    for path in ("vault.key", "vault.bin", "admin.token", "config.json"):
        assert (two.data_dir / path).stat().st_mode & 0o777 == 0o600, path
    assert not (two.data_dir / "cifleet.db").exists()
    assert init(one.data_dir, "--store", pg_url).returncode == 0  # a second init: no change


def files_holding(folder: Path, texts: list[bytes]) -> list[str]:
    """The files under `folder` that hold any of `texts`."""
    return [
        str(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and any(t in path.read_bytes() for t in texts)
    ]


def test_a_primary_joins_with_the_vault_key_in_the_environment_and_keeps_it_off_its_disk(
    two_primaries, pg_url, tmp_path
):
    one, two = two_primaries
    key = (one.data_dir / "vault.key").read_text().strip()
    # Its text in either case, and its 32 bytes: none of them may be anywhere.
    forms = [key.encode(), key.upper().encode(), bytes.fromhex(key)]
    wrong = init(two.data_dir, "--store", pg_url, env={"CIFLEET_VAULT_KEY": new_key().hex()})
    assert wrong.returncode == 2 and "wrong vault key" in wrong.stderr, wrong.stderr
    assert not two.data_dir.exists()  # nothing half-made
    # Given twice (the environment and a file), it is refused: which one was meant?
    both = init(
        two.data_dir, "--store", pg_url, "--vault-key-file", str(one.data_dir / "vault.key"),
        env={"CIFLEET_VAULT_KEY": key},
    )  # fmt: skip
    assert both.returncode == 2, both.stderr
    assert "give the vault key once: CIFLEET_VAULT_KEY or --vault-key-file" in both.stderr
    assert not two.data_dir.exists()
    joined = init(
        two.data_dir, "--store", pg_url, "--name", "second", env={"CIFLEET_VAULT_KEY": key}
    )
    assert joined.returncode == 0, joined.stderr
    assert not any(f in (joined.stdout + joined.stderr).encode() for f in forms)
    assert not (two.data_dir / "vault.key").exists()
    assert (two.data_dir / "ca.pem").read_bytes() == (one.data_dir / "ca.pem").read_bytes()
    assert files_holding(two.data_dir, forms) == []

    # It serves with the key from the environment only: its own token is good, it reads
    # the fleet's worker secret, and a worker registered through the first primary is its.
    one.start()
    two.env = {"CIFLEET_VAULT_KEY": key}
    two.start()
    assert two.secret() == one.secret()
    assert register_agent(one, tmp_path, "joiner").returncode == 0
    assert "joiner" in [w["name"] for w in two.workers()]
    cmdline = Path(f"/proc/{two.proc.pid}/cmdline").read_bytes()
    assert b"--data-dir" in cmdline and not any(f in cmdline for f in forms)
    two.stop()  # its whole log written
    assert b"cifleet primary serving" in two.log_path.read_bytes()
    assert files_holding(two.data_dir, forms) == []
    assert files_holding(tmp_path, forms) == [str(one.data_dir / "vault.key")]
    # Without the key it does not start, and says why without a secret.
    two.env = {}
    refused = subprocess.run(
        [str(BIN / "cifleet-primary"), "serve", "--data-dir", str(two.data_dir),
         "--api-port", "0", "--agent-port", "0"],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "CIFLEET_VAULT_KEY"},
    )  # fmt: skip
    assert refused.returncode != 0
    assert "CIFLEET_VAULT_KEY is not set" in refused.stderr, refused.stderr


def test_two_primaries_serve_one_fleet(two_primaries, pg_url, pg_cluster, tmp_path):
    one, two = two_primaries
    joined = init(
        two.data_dir, "--store", pg_url, "--vault-key-file", str(one.data_dir / "vault.key")
    )
    assert joined.returncode == 0, joined.stderr
    one.serve_args += ["--primary-worker-slots", "0"]
    one.start()
    two.start()  # with its built-in worker, named for it
    wait_for(
        lambda: any(w["name"].startswith("primary-") and w["state"] == "active"
                    for w in one.workers()),
        30,
        "the second primary's built-in worker, seen through the first",
    )  # fmt: skip
    [builtin] = [w for w in one.workers() if w["name"].startswith("primary-")]
    two.client.json("POST", f"/api/v1/workers/{builtin['name']}/lock")

    # An agent registered and polling through the first primary runs a run queued through
    # the second, and its log, written through the first, reads the same through both.
    assert register_agent(one, tmp_path, "shared").returncode == 0
    agent = Agent(name="shared", home=tmp_path / "shared", log_path=tmp_path / "shared.log")
    agent.start()
    try:
        two.pipeline(
            "name: across\njobs:\n  - name: w\n    secrets: [TOKEN]\n"
            "    steps: ['seq 1 20000', 'echo \"token=$TOKEN\"']\n"
        )
        two.client.request("PUT", "/api/v1/pipelines/across/secrets/TOKEN", b"t0ps3cret-value")
        run_id = two.trigger("across")
        run = one.wait_run(run_id, timeout=60)
        assert (run["state"], run["worker_name"]) == ("success", "shared"), run
        expected = b"".join(b"%d\n" % i for i in range(1, 20001)) + b"token=***\n"
        assert one.job_log(run_id, "w") == expected == two.job_log(run_id, "w")
        assert (
            one.client.request("GET", f"/api/v1/runs/{run_id}/log")[2]
            == (two.client.request("GET", f"/api/v1/runs/{run_id}/log")[2])
        )
    finally:
        agent.stop()

    # A rotation through one primary holds in the other at once.
    before = one.secret()
    rotated = two.client.json("POST", "/api/v1/worker-secret/rotate")["secret"]
    assert rotated != before and one.secret() == rotated

    # The database holds the secrets only sealed.
    dump = subprocess.run(
        [str(pg_cluster.bindir / "pg_dump"), pg_url], capture_output=True, timeout=60, check=True
    ).stdout
    assert b"COPY public.vault_entries" in dump
    for secret in (rotated, before, "t0ps3cret-value"):
        assert secret.encode() not in dump, secret


def test_init_leaves_a_foreign_database_alone_and_refuses_a_password_on_the_command_line(
    tmp_path, pg_url, pg_cluster
):
    pg_cluster.sql(pg_url, "CREATE TABLE invoices (id int)")
    refused = init(tmp_path / "d", "--store", pg_url)
    assert refused.returncode == 2
    assert "is not empty (invoices, ...) and holds no cifleet fleet" in refused.stderr
    assert pg_cluster.sql(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")[
        0
    ] == (1,)
    with_password = pg_url.replace("cifleet@", "cifleet:hunter2@")
    refused = init(tmp_path / "d", "--store", with_password)
    assert refused.returncode == 2 and "leave the password out of the URL" in refused.stderr
    assert "hunter2" not in refused.stderr
    assert not (tmp_path / "d").exists()

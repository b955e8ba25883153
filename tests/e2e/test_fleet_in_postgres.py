"""A fleet in PostgreSQL: `init --store` makes it in an empty database, a second data dir
joins it with the fleet's vault key (and only with it), and two primaries serve it at once:
either one's API sees the other's runs, logs, secrets and workers. The database holds no
secret in clear."""

import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from fleet import BIN, Agent, Primary, register_agent, wait_for

from primary.store.vault import new_key


def init(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "cifleet-primary"), "init", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
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
    yield primaries
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

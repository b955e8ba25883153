"""Admin API tokens: roles, revocation, stored only as hashes."""

import subprocess

import pytest
from fleet import BIN

from primary.cli.client import AdminClient, ApiFailure


def _token_cli(primary, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "cifleet-primary"), "token", *args, "--data-dir", str(primary.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_viewer_reads_but_changes_nothing_and_revoked_tokens_stop_working(primary):
    created = _token_cli(primary, "create", "--name", "dashboard", "--role", "viewer")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    viewer = AdminClient(primary.url, primary.ca_file, token)
    primary.pipeline("name: p\njobs:\n  - name: a\n    steps: ['true']\n")
    assert viewer.json("GET", "/api/v1/workers") == {"workers": []}
    assert viewer.json("GET", "/api/v1/pipelines/p")["name"] == "p"
    assert "queue_length" in viewer.json("GET", "/api/v1/status")
    for method, path in [
        ("GET", "/api/v1/worker-secret"),
        ("POST", "/api/v1/worker-secret/rotate"),
        ("POST", "/api/v1/pipelines/p/runs"),
        ("POST", "/api/v1/workers/any/drain"),
        ("DELETE", "/api/v1/workers/any"),
    ]:
        with pytest.raises(ApiFailure) as refused:
            viewer.json(method, path)
        assert refused.value.status == 403, (method, path)
    assert primary.client.json("GET", "/api/v1/runs") == {"runs": []}  # nothing was triggered

    listing = _token_cli(primary, "list")
    assert "viewer   live      dashboard" in listing.stdout
    assert token not in listing.stdout
    token_id = next(line.split()[0] for line in listing.stdout.splitlines() if "dashboard" in line)
    assert _token_cli(primary, "revoke", token_id).returncode == 0
    with pytest.raises(ApiFailure) as revoked:
        viewer.json("GET", "/api/v1/workers")
    assert revoked.value.status == 401
    # Stored as hashes only: neither token appears in the store's files.
    stored = b"".join(p.read_bytes() for p in primary.data_dir.glob("cifleet.db*"))
    assert token.encode() not in stored and primary.token.encode() not in stored


def test_users_are_created_with_the_password_on_stdin(primary):
    def user_cli(*args, stdin=""):
        return subprocess.run(
            [str(BIN / "cifleet-primary"), "user", *args, "--data-dir", str(primary.data_dir)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert user_cli("create", "ada", "--role", "admin", stdin="a long passphrase\n").returncode == 0
    short = user_cli("create", "bob", stdin="short\n")
    assert short.returncode == 2 and "at least 12 characters" in short.stderr
    assert user_cli("list").stdout == "ada  admin  active\n"
    from primary.fleet.users import check_password
    from primary.store.sqlite import SqliteStore as Store

    store = Store(primary.data_dir / "cifleet.db")
    assert check_password(store, "ada", "a long passphrase") == "admin"
    assert user_cli("disable", "ada").returncode == 0
    assert check_password(store, "ada", "a long passphrase") is None

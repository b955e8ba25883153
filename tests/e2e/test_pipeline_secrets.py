"""Pipeline secrets: set by admins, kept in the vault, given only to the jobs that name
them, masked as *** in the stored logs."""

import pytest

from primary.cli.client import ApiFailure

DEPLOY_KEY = "dk-4f9a1c77e2"
DB_PASS = "pw with spaces & symbols $!"


def test_secrets_reach_only_their_jobs_and_never_the_stored_log(primary, start_agent):
    start_agent("secretive")
    primary.pipeline("""
name: deploy
secrets: [DEPLOY_KEY]
jobs:
  - name: build
    steps:
      - 'echo "key=$DEPLOY_KEY"; echo "db=${DB_PASS:-unset}"'
      # The secret printed in two writes is masked too.
      - 'printf "%s" "$DEPLOY_KEY" | cut -c1-5; printf "split:dk-4f9"; printf "a1c77e2\\n"'
  - name: ship
    secrets: [DB_PASS]
    steps:
      - 'echo "db=$DB_PASS" >&2; test "$DB_PASS" = "pw with spaces & symbols \\$!" && echo same'
""")
    with pytest.raises(ApiFailure) as unset:
        primary.trigger("deploy")
    assert unset.value.status == 400 and "DB_PASS, DEPLOY_KEY not set" in unset.value.body["error"]
    for name, value in (("DEPLOY_KEY", DEPLOY_KEY), ("DB_PASS", DB_PASS)):
        primary.client.json(
            "PUT",
            f"/api/v1/pipelines/deploy/secrets/{name}",
            raw=value.encode(),
            content_type="text/plain",
        )
    assert primary.client.json("GET", "/api/v1/pipelines/deploy/secrets") == {
        "secrets": ["DB_PASS", "DEPLOY_KEY"]
    }

    run = primary.wait_run(primary.trigger("deploy"))
    assert run["state"] == "success", run
    assert primary.job_log(run["id"], "build") == b"key=***\ndb=unset\ndk-4f\nsplit:***\n"
    assert primary.job_log(run["id"], "ship") == b"db=***\nsame\n"
    # Nowhere on the primary's disk in the clear: logs, store, anything but the sealed vault.
    for path in primary.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert DEPLOY_KEY.encode() not in data and DB_PASS.encode() not in data, path
    # Nobody can read a value back: there is no such route.
    status, _, _ = primary.client.request("GET", "/api/v1/pipelines/deploy/secrets/DEPLOY_KEY")
    assert status == 405


def test_secret_values_are_validated(primary):
    primary.pipeline("name: p\njobs:\n  - name: a\n    steps: ['true']\n")
    for name, value, text in [
        ("1BAD", b"x", "name:"),
        ("OK", b"", "value:"),
        ("OK", b"\xff", "UTF-8"),
    ]:
        with pytest.raises(ApiFailure) as bad:
            primary.client.json(
                "PUT", f"/api/v1/pipelines/p/secrets/{name}", raw=value, content_type="text/plain"
            )
        assert bad.value.status == 400 and text in bad.value.body["error"]
    assert primary.client.json("GET", "/api/v1/pipelines/p/secrets") == {"secrets": []}

"""Pipeline caches and static files with real agents: files arrive byte-exact and are not
fetched again when unchanged; clearing the cache empties or moves it; hosts drain themselves."""

import hashlib
import subprocess

from fleet import BIN, wait_for

from primary.cli.client import ApiFailure

BLOB = bytes(range(256)) * 4096 + b"\x00tail without newline"  # 1 MiB and a bit, binary
INI = b"[app]\nname = demo\n"


def _put(primary, pipeline: str, path: str, data: bytes) -> dict:
    return primary.client.json(
        "PUT",
        f"/api/v1/pipelines/{pipeline}/files/{path}",
        raw=data,
        content_type="application/octet-stream",
    )


def test_static_files_arrive_exact_and_are_not_fetched_again(primary, start_agent):
    start_agent("files-host")
    primary.pipeline("""
name: with-files
jobs:
  - name: check
    steps: ['sha256sum conf/app.ini data.bin; ls -i data.bin | cut -d" " -f1']
""")
    info = _put(primary, "with-files", "data.bin", BLOB)
    assert info == {
        "path": "data.bin",
        "size": len(BLOB),
        "sha256": hashlib.sha256(BLOB).hexdigest(),
        "updated_at": info["updated_at"],
    }
    _put(primary, "with-files", "./conf//app.ini", INI)
    listing = primary.client.json("GET", "/api/v1/pipelines/with-files/files")["files"]
    assert [(f["path"], f["size"]) for f in listing] == [
        ("conf/app.ini", 18),
        ("data.bin", len(BLOB)),
    ]

    first = primary.wait_run(primary.trigger("with-files"))
    assert first["state"] == "success", primary.job_log(first["id"], "check")
    out1 = primary.job_log(first["id"], "check").decode()
    assert f"{hashlib.sha256(BLOB).hexdigest()}  data.bin" in out1
    assert f"{hashlib.sha256(INI).hexdigest()}  conf/app.ini" in out1
    _, _, log1 = primary.client.request("GET", f"/api/v1/runs/{first['id']}/log")
    assert b"fetched data.bin" in log1 and b"fetched conf/app.ini" in log1

    second = primary.wait_run(primary.trigger("with-files"))
    _, _, log2 = primary.client.request("GET", f"/api/v1/runs/{second['id']}/log")
    assert b"fetched" not in log2.split(b"=== job check")[0]
    assert b"unchanged data.bin" in log2
    # Same inode: the file was not rewritten.
    inode = out1.strip().splitlines()[-1]
    assert primary.job_log(second["id"], "check").decode().strip().splitlines()[-1] == inode

    _put(primary, "with-files", "data.bin", b"changed")
    third = primary.wait_run(primary.trigger("with-files"))
    _, _, log3 = primary.client.request("GET", f"/api/v1/runs/{third['id']}/log")
    assert b"fetched data.bin (7 bytes)" in log3 and b"unchanged conf/app.ini" in log3


def test_static_file_paths_that_leave_the_tree_are_refused(primary):
    primary.pipeline("name: guarded\njobs:\n  - name: a\n    steps: ['true']\n")
    for bad in ("../escape", "a/../../b", "a/%2E%2E/b"):
        try:
            _put(primary, "guarded", bad, b"x")
        except ApiFailure as exc:
            assert exc.status == 400 and exc.body["error"] == "path: must not contain '..'"
        else:
            raise AssertionError(f"accepted {bad!r}")
    assert primary.client.json("GET", "/api/v1/pipelines/guarded/files")["files"] == []
    assert not (primary.data_dir / "escape").exists()
    # An encoded slash is not decoded by the server: it is a (strange) name inside the tree.
    assert _put(primary, "guarded", "%2Fetc%2Fpasswd", b"x")["path"] == "%2Fetc%2Fpasswd"
    assert (primary.data_dir / "files" / "guarded" / "%2Fetc%2Fpasswd").read_bytes() == b"x"
    # A link planted inside the tree cannot lead out of it.
    outside = primary.data_dir.parent / "outside"
    outside.mkdir()
    (primary.data_dir / "files" / "guarded" / "link").symlink_to(outside)
    try:
        _put(primary, "guarded", "link/evil", b"x")
    except ApiFailure as exc:
        assert exc.status == 400 and "leads out" in exc.body["error"]
    else:
        raise AssertionError("wrote through a link")
    assert list(outside.iterdir()) == []


def test_clearing_the_cache_starts_the_next_run_from_an_empty_workspace(primary, start_agent):
    start_agent("cache-a")
    start_agent("cache-b")
    primary.pipeline("""
name: cached
jobs:
  - name: w
    steps: ['if [ -e marker ]; then echo warm; else echo cold; fi; touch marker']
""")
    runs = [primary.wait_run(primary.trigger("cached")) for _ in range(2)]
    home = runs[0]["worker_name"]
    assert [primary.job_log(r["id"], "w") for r in runs] == [b"cold\n", b"warm\n"]
    assert runs[1]["worker_name"] == home
    primary.client.json("POST", "/api/v1/pipelines/cached/cache/clear")
    after = primary.wait_run(primary.trigger("cached"))
    assert after["placement"][0].endswith("(cache cleared)")
    assert primary.job_log(after["id"], "w") == b"cold\n"
    if after["worker_name"] != home:  # moved: the old home deletes its copy
        old = primary.data_dir.parent / home / "workspaces" / "cached"
        wait_for(lambda: not old.exists(), 30, "the old home to delete the workspace")


def test_a_home_that_loses_its_pipeline_deletes_its_copy_at_once(primary, start_agent):
    """An idle agent's poll is held for minutes (300 s): when a pipeline's home moves to
    another worker (its tags changed), the old home's held poll is answered, and it deletes
    its copy now, not a hold later."""
    old_home = start_agent("moving-a", tags="first")
    start_agent("moving-b", tags="second")
    primary.pipeline("name: moving\ntags: [first]\njobs:\n  - name: w\n    steps: ['touch mark']\n")
    assert primary.wait_run(primary.trigger("moving"))["worker_name"] == "moving-a"
    copy = old_home.home / "workspaces" / "moving"
    assert (copy / "mark").exists()
    primary.client.json(
        "PUT",
        "/api/v1/pipelines/moving",
        raw=b"name: moving\ntags: [second]\njobs:\n  - name: w\n    steps: ['touch mark']\n",
        content_type="application/yaml",
    )
    moved = primary.wait_run(primary.trigger("moving"))
    assert moved["worker_name"] == "moving-b"
    assert moved["placement"][0].endswith("(moved: tags changed)")
    wait_for(lambda: not copy.exists(), 20, "the old home to delete its copy")


def test_update_worker_on_the_host_drains_and_floods(primary, start_agent):
    agent = start_agent("self-managed")

    def update(*args):
        return subprocess.run(
            [str(BIN / "cifleet-agent"), "update-worker", "--home", str(agent.home), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    drained = update("--drain")
    assert drained.returncode == 0, drained.stderr
    wait_for(lambda: primary.worker("self-managed")["state"] == "draining", 10, "draining")
    assert update("--flood").returncode == 0
    wait_for(lambda: primary.worker("self-managed")["state"] == "active", 10, "active again")
    assert update("--slots", "3").returncode == 0
    assert primary.worker("self-managed")["slots"] == 3
    # Tags are an admin's: the agent refuses to send them (the primary would refuse too).
    refused = update("--tags", "linux,big")
    assert refused.returncode == 2 and "set by an admin" in refused.stderr
    assert primary.worker("self-managed")["tags"] == []

"""Workspaces and static files on real directories: listing, deleting, cleaning, syncing."""

import hashlib
import json
import os
import time

import pytest

from agent.assignment import StaticFile, parse_assignment
from agent.workspace import (
    PrepareFailed,
    delete_workspace,
    delete_workspaces,
    empty_trash,
    list_workspaces,
    prepare_workspace,
    safe_path,
    sync_files,
)


def sf(path: str, data: bytes) -> StaticFile:
    return StaticFile(path, hashlib.sha256(data).hexdigest(), len(data))


class Served:
    """A fetch callable serving `files`, counting what was asked for."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []

    def __call__(self, path: str) -> bytes:
        self.requests.append(path)
        return self.files[path]


@pytest.fixture
def home(tmp_path):
    (tmp_path / "workspaces").mkdir()
    return tmp_path


def test_list_workspaces_reports_only_pipeline_directories(home):
    for name in ("b", "a.x", ".hidden", ".trash"):
        (home / "workspaces" / name).mkdir()
    (home / "workspaces" / "stray-file").write_text("x")
    assert list_workspaces(home / "workspaces") == ["a.x", "b"]
    assert list_workspaces(home / "nowhere") == []


def test_delete_workspace_removes_the_directory_and_its_record(home):
    ws = home / "workspaces" / "p"
    (ws / "deep").mkdir(parents=True)
    (ws / "deep" / "f").write_text("x")
    (home / "files").mkdir()
    (home / "files" / "p.json").write_text("{}")
    (home / "files" / "q.json").write_text("{}")
    assert delete_workspace(home, home / "workspaces", "p") is True
    assert not ws.exists() and not (home / "files" / "p.json").exists()
    assert (home / "files" / "q.json").exists()
    assert delete_workspace(home, home / "workspaces", "p") is False  # idempotent
    # removed in the background
    wait_until(lambda: os.listdir(home / "workspaces" / ".trash") == [])


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_empty_trash_removes_what_an_earlier_process_left(home):
    # In the work dir, and in HOME/trash, where agents before the work dir kept it.
    for trash in (home / "workspaces" / ".trash", home / "trash"):
        (trash / "p.123" / "deep").mkdir(parents=True)
        (trash / "p.123" / "deep" / "f").write_text("x")
    empty_trash(home, home / "workspaces")
    wait_until(lambda: os.listdir(home / "workspaces" / ".trash") == [])
    wait_until(lambda: os.listdir(home / "trash") == [])
    empty_trash(home / "no-such-home", home / "no-such-work")  # nothing to do, no error


def test_delete_workspace_never_follows_a_link_out(home, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep").write_text("x")
    (home / "workspaces" / "p").symlink_to(outside)
    assert delete_workspace(home, home / "workspaces", "p") is True
    assert (outside / "keep").read_text() == "x"
    assert not (home / "workspaces" / "p").exists()


@pytest.mark.parametrize("name", ["..", ".", "../home", "a/b", "", "/etc"])
def test_delete_workspaces_ignores_names_outside_workspaces(home, name):
    (home / "keep").write_text("x")
    (home / "workspaces" / "a").mkdir()
    (home / "workspaces" / "a" / "b").mkdir()
    delete_workspaces(home, home / "workspaces", [name, 7, None], busy=set())
    assert (home / "keep").exists() and (home / "workspaces" / "a" / "b").is_dir()


def test_delete_workspaces_skips_busy_pipelines(home):
    for name in ("busy", "idle"):
        (home / "workspaces" / name).mkdir()
    deleted: list[str] = []
    delete_workspaces(
        home, home / "workspaces", ["busy", "idle", "missing"], {"busy"}, deleted.append
    )
    assert list_workspaces(home / "workspaces") == ["busy"]
    assert deleted == ["idle", "missing"]  # the job uid of each is freed (idempotent)


@pytest.mark.parametrize(
    "rel", ["/etc/passwd", "../x", "a/../../x", "a/..", ".", "", "a/\0b", "link/x", "link"]
)
def test_safe_path_refuses_paths_out_of_the_workspace(home, tmp_path, rel):
    ws = home / "workspaces" / "p"
    ws.mkdir()
    (ws / "link").symlink_to(tmp_path)  # a job left a link pointing out
    with pytest.raises(PrepareFailed, match="not inside the workspace"):
        safe_path(ws, rel)


def test_safe_path_accepts_nested_paths(home):
    ws = home / "workspaces" / "p"
    ws.mkdir()
    assert safe_path(ws, "conf/app.ini") == ws / "conf" / "app.ini"
    assert safe_path(ws, "a..b") == ws / "a..b"


def test_sync_fetches_then_skips_unchanged_then_refetches_and_deletes(home):
    ws, record = home / "workspaces" / "p", home / "files" / "p.json"
    ws.mkdir()
    data = {"conf/app.ini": b"[a]\nx=1\n", "data.bin": bytes(range(256)), "old.txt": b"old"}
    served = Served(dict(data))
    lines: list[str] = []
    sync_files(ws, record, [sf(p, d) for p, d in data.items()], served, lines)
    assert sorted(served.requests) == sorted(data)
    assert all((ws / p).read_bytes() == d for p, d in data.items())
    assert "static files: fetched conf/app.ini (8 bytes)" in lines
    assert json.loads(record.read_text())["data.bin"] == sf("data.bin", data["data.bin"]).sha256

    # Second run: nothing changed, nothing fetched.
    served.requests.clear()
    lines = []
    sync_files(ws, record, [sf(p, d) for p, d in data.items()], served, lines)
    assert served.requests == []
    assert "static files: unchanged data.bin" in lines

    # Third run: one file changed, one dropped, one whose copy a job deleted.
    served.files["conf/app.ini"] = b"[a]\nx=2\n"
    (ws / "data.bin").unlink()
    served.requests.clear()
    lines = []
    files = [sf("conf/app.ini", b"[a]\nx=2\n"), sf("data.bin", data["data.bin"])]
    sync_files(ws, record, files, served, lines)
    assert sorted(served.requests) == ["conf/app.ini", "data.bin"]
    assert (ws / "conf/app.ini").read_bytes() == b"[a]\nx=2\n"
    assert not (ws / "old.txt").exists()
    assert lines[0] == "static files: deleted old.txt"
    assert set(json.loads(record.read_text())) == {"conf/app.ini", "data.bin"}


def test_sync_never_deletes_files_it_did_not_fetch(home):
    ws, record = home / "workspaces" / "p", home / "files" / "p.json"
    ws.mkdir()
    (ws / "build-output").write_text("cache")
    lines: list[str] = []
    sync_files(ws, record, [], Served({}), lines)
    assert lines == ["static files: none"]
    assert (ws / "build-output").read_text() == "cache"


def test_sync_sha_mismatch_fails_and_records_nothing(home):
    ws, record = home / "workspaces" / "p", home / "files" / "p.json"
    ws.mkdir()
    served = Served({"a.txt": b"tampered"})
    with pytest.raises(PrepareFailed, match="a.txt: the bytes fetched do not match"):
        sync_files(ws, record, [sf("a.txt", b"expected")], served, [])
    assert not (ws / "a.txt").exists()
    assert not record.exists()


def test_sync_refuses_a_bad_path_before_changing_anything(home, tmp_path):
    ws, record = home / "workspaces" / "p", home / "files" / "p.json"
    ws.mkdir()
    served = Served({"ok.txt": b"ok", "../escape.txt": b"bad"})
    files = [sf("ok.txt", b"ok"), sf("../escape.txt", b"bad")]
    with pytest.raises(PrepareFailed, match="refusing the path '../escape.txt'"):
        sync_files(ws, record, files, served, [])
    assert served.requests == []
    assert not (ws / "ok.txt").exists()
    assert not (home / "workspaces" / "escape.txt").exists()


def test_prepare_cleans_first_when_asked(home):
    ws = home / "workspaces" / "p"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "stale").write_text("x")
    (ws / "stale-link").symlink_to(home / "keep-me")
    (home / "keep-me").write_text("outside")
    (home / "files").mkdir()
    (home / "files" / "p.json").write_text(json.dumps({"a.txt": hashlib.sha256(b"A").hexdigest()}))
    (ws / "a.txt").write_bytes(b"A")
    run = parse_assignment(
        {
            "run_id": 1,
            "attempt": 1,
            "pipeline": "p",
            "jobs": [],
            "clean_workspace": True,
            "files": [{"path": "a.txt", "sha256": hashlib.sha256(b"A").hexdigest(), "size": 1}],
        }
    )
    served = Served({"a.txt": b"A"})
    lines: list[str] = []
    prepare_workspace(home, ws, run, served, lines)
    # The record was forgotten with the contents, so the file is fetched again.
    assert served.requests == ["a.txt"]
    assert sorted(os.listdir(ws)) == ["a.txt"]
    assert (home / "keep-me").read_text() == "outside"
    assert lines == [
        "workspace: cleaned (first run of this pipeline on this worker as its home)",
        "static files: fetched a.txt (1 bytes)",
    ]


def test_assignment_defaults_and_bad_files():
    base = {"run_id": 1, "attempt": 1, "pipeline": "p", "jobs": []}
    run = parse_assignment(base)
    assert run.clean_workspace is False and run.files == []
    for files in (
        [{"path": "a", "sha256": "zz", "size": 1}],
        [{"path": "", "sha256": "0" * 64, "size": 1}],
        [{"path": "a", "sha256": "0" * 64, "size": -1}],
        [{"path": "a", "sha256": "0" * 64, "size": 1}] * 2,
        "a",
    ):
        with pytest.raises(ValueError):
            parse_assignment({**base, "files": files})
    with pytest.raises(ValueError):
        parse_assignment({**base, "clean_workspace": "yes"})


def test_prepare_lines_fit_the_primary_limit_and_keep_the_last():
    from agent.reporter import fit_lines

    lines = [f"static files: unchanged f{i}" for i in range(1500)] + ["static files: boom"]
    fitted = fit_lines(lines)
    assert len(fitted) == 1000
    assert fitted[-1] == "static files: boom"
    assert fitted[-2] == "... and 502 more lines"
    assert fitted[:998] == lines[:998]
    assert fit_lines(lines[:3]) == lines[:3]

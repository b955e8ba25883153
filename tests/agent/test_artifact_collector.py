"""Collecting a job's artifacts (agent/artifacts.py) on real files: what goes in, and what
stops the collector (a cancel, the size limit). As the agent's own uid here; the e2e test
runs it as a job's."""

import os
import tarfile
import threading

import psutil
import pytest

from agent.artifacts import NoArtifacts, collect
from agent.identity import JobIdentity


def names(path) -> dict[str, bytes]:
    with tarfile.open(path, mode="r:") as tar:
        assert all(m.isreg() for m in tar.getmembers())
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.fixture
def workspace(tmp_path):
    ws = tmp_path / "ws"
    (ws / "out" / "sub").mkdir(parents=True)
    (ws / "out" / "a.txt").write_bytes(b"a")
    (ws / "out" / "sub" / "b.bin").write_bytes(bytes(range(256)))
    secret = tmp_path / "secret"
    secret.write_text("agent only")
    (ws / "out" / "link").symlink_to(secret)
    os.mkfifo(ws / "out" / "fifo")  # opened, it would block a reader for ever
    return ws


def test_regular_files_go_in_links_and_fifos_stay_out(workspace, tmp_path):
    out = tmp_path / "a.tar"
    size = collect(
        workspace, ["out/**", "out/link", "missing"], JobIdentity(), out, threading.Event()
    )
    assert size == out.stat().st_size
    assert names(out) == {"out/a.txt": b"a", "out/sub/b.bin": bytes(range(256))}
    assert psutil.Process().children() == []  # the collector was waited for


def test_a_cancel_or_the_size_limit_stops_it_and_leaves_nothing(workspace, tmp_path):
    out = tmp_path / "a.tar"
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(NoArtifacts, match="the run was cancelled"):
        collect(workspace, ["out/**"], JobIdentity(), out, cancelled)
    assert not out.exists()
    with pytest.raises(NoArtifacts, match="they come to more than 1000 bytes"):
        collect(workspace, ["out/**"], JobIdentity(), out, threading.Event(), max_bytes=1000)
    assert not out.exists()
    assert psutil.Process().children() == []

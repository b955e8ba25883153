"""The workspace disk cap on real directories: what a workspace takes, which go first."""

import os
import subprocess

import pytest

from agent.workspace import mark_used, used_path
from agent.workspace_cap import disk_use, evict, parse_size


@pytest.fixture
def dirs(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    return home, work


def workspace(home, work, name: str, size: int, used_at: float | None) -> None:
    folder = work / name
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "blob").write_bytes(os.urandom(size))
    if used_at is not None:
        mark_used(home, name)
        os.utime(used_path(home, name), (used_at, used_at))
    else:
        os.utime(folder, (1000.0, 1000.0))  # no record: the folder's mtime counts


def test_sizes_are_what_du_counts():
    assert parse_size("500M") == 500 << 20 and parse_size("2g") == 2 << 30
    assert parse_size("4096") == 4096
    for bad in ("", "0", "1.5G", "-1", "10P", "G"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_disk_use_counts_blocks_once_per_hard_link_and_follows_no_link(dirs, tmp_path):
    home, work = dirs
    workspace(home, work, "a", 100_000, 5.0)
    alone = disk_use(work / "a")
    assert alone >= 100_000
    os.link(work / "a" / "sub" / "blob", work / "a" / "again")
    (work / "a" / "out").symlink_to(tmp_path)  # the whole tmp dir: must not be counted
    link_blocks = (work / "a" / "out").lstat().st_blocks * 512
    assert disk_use(work / "a") == alone + link_blocks
    # As du counts it (less the top folder itself, which is the work dir's, not the cache's).
    du = subprocess.run(["du", "-s", "-B1", str(work / "a")], capture_output=True, text=True)
    top = (work / "a").stat().st_blocks * 512
    assert int(du.stdout.split()[0]) == disk_use(work / "a") + top


def test_the_least_recently_used_go_first_and_a_busy_one_stays(dirs):
    home, work = dirs
    workspace(home, work, "oldest", 200_000, None)  # mtime 1000: the oldest use
    workspace(home, work, "old", 200_000, 2000.0)
    workspace(home, work, "busy", 200_000, 1500.0)
    workspace(home, work, "new", 200_000, 3000.0)
    sizes = {n: disk_use(work / n) for n in ("oldest", "old", "busy", "new")}
    cap = sizes["busy"] + sizes["new"]
    assert evict(home, work, cap, busy={"busy"}) == ["oldest", "old"]
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith(".")) == [
        "busy",
        "new",
    ]
    assert not used_path(home, "old").exists()
    assert evict(home, work, cap, busy=set()) == []  # under the cap now: nothing more


def test_nothing_goes_under_the_cap_and_busy_ones_are_never_deleted(dirs):
    home, work = dirs
    workspace(home, work, "a", 100_000, 1.0)
    assert evict(home, work, 10 << 20, busy=set()) == []
    assert evict(home, work, 1, busy={"a"}) == []
    assert (work / "a" / "sub" / "blob").exists()

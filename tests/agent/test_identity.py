"""Job identities as root, on real files and processes, with a registry of the test's own:
a uid per pipeline workspace, never shared between agents of one host, freed with its
workspace, and taken over from a stale claim only after its leftovers are cleared."""

import errno
import os
import stat
import subprocess
import time

import pytest

from agent.identity import IdentityError, JobIdentities, parse_uid_range
from agent.uid_registry import UidRegistry
from agent.workspace import write_inside

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

# Far from the default range, so these tests never meet the uids of real agents' tests.
RANGE = [4_000_000_000, 4_000_000_002]


@pytest.fixture
def registry(tmp_path):
    return UidRegistry(tmp_path / "registry")


def identities(tmp_path, registry, name="home", uids=RANGE, **config):
    home = tmp_path / name
    home.mkdir(exist_ok=True, mode=0o700)
    return JobIdentities(home, home / "workspaces", {"job_uids": uids, **config}, registry)


def test_each_pipeline_gets_a_uid_of_its_own_and_agents_of_a_host_never_share_one(
    tmp_path, registry
):
    one, two = identities(tmp_path, registry, "one"), identities(tmp_path, registry, "two")
    for ids in (one, two):
        ids.prepare()
    a = one.for_run("build")
    b = one.for_run("test")
    c = two.for_run("build")  # the same pipeline name on another agent of the host
    uids = {a.uid, b.uid, c.uid}
    assert len(uids) == 3 and uids <= set(range(RANGE[0], RANGE[1] + 1))
    assert one.for_run("build") == a  # stable
    assert (a.gid, a.groups, a.home, a.dedicated) == (a.uid, (), str(one.work_dir / "build"), True)
    st = os.stat(one.work_dir / "build")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (a.uid, a.uid, 0o700)
    # The home: passable (its work dir is inside), not listable, still root's.
    home = os.stat(one.home)
    assert (home.st_uid, stat.S_IMODE(home.st_mode)) == (0, 0o711)
    assert stat.S_IMODE(os.stat(one.work_dir).st_mode) == 0o711
    with pytest.raises(IdentityError, match="no free job uid in 4000000000-4000000002"):
        two.for_run("third-pipeline-of-a-full-range")


def test_a_freed_uid_ends_its_processes_and_temporary_files_first(tmp_path, registry):
    ids = identities(tmp_path, registry)
    ids.prepare()
    job = ids.for_run("p")
    marker = f"/tmp/cifleet-identity-test-{os.getpid()}"
    left = subprocess.Popen(
        ["/bin/sh", "-c", f"touch {marker}; exec sleep 300"],
        start_new_session=True,
        **job.popen_kwargs(),
    )
    wait = time.monotonic() + 10
    while not os.path.exists(marker):
        assert time.monotonic() < wait, "the job did not start"
        time.sleep(0.02)
    (ids.work_dir / "p").rename(tmp_path / "p.deleted")  # its workspace goes
    ids.release("p")
    assert left.wait(10) is not None
    assert not os.path.exists(marker)
    with registry.locked() as claims:
        assert claims.of(str(ids.home), "p") is None


def test_a_late_release_spares_a_run_that_made_the_workspace_again(tmp_path, registry):
    # The deletion's release runs in the background; a run of the pipeline accepted
    # meanwhile made the workspace again under the same claim, and its job runs.
    ids = identities(tmp_path, registry)
    ids.prepare()
    first = ids.for_run("p")
    (ids.work_dir / "p").rename(tmp_path / "p.deleted")  # deleted: no longer its home
    again = ids.for_run("p")  # the next run, before the release got to it
    assert again.uid == first.uid
    job = subprocess.Popen(["sleep", "300"], start_new_session=True, **again.popen_kwargs())
    try:
        ids.release("p")
        assert job.poll() is None  # still running
        with registry.locked() as claims:
            assert claims.of(str(ids.home), "p") == again.uid
    finally:
        job.kill()
        job.wait()


def test_a_stale_claim_is_taken_over_after_its_leftovers_are_cleared(tmp_path, registry):
    gone = identities(tmp_path, registry, "gone", uids=[RANGE[0], RANGE[0]])
    gone.prepare()
    old = gone.for_run("p")
    left = subprocess.Popen(["sleep", "300"], start_new_session=True, **old.popen_kwargs())
    # The agent's home and work dir are deleted without freeing anything (rm -rf, say).
    os.rename(gone.home, tmp_path / "deleted-home")
    new = identities(tmp_path, registry, "new", uids=[RANGE[0], RANGE[0]])
    new.prepare()
    job = new.for_run("q")
    assert job.uid == old.uid  # the only one of its range, so the stale claim is taken over
    assert left.wait(10) is not None  # but only after what it ran was ended
    with registry.locked() as claims:
        assert claims.of(str(new.home), "q") == job.uid
        assert claims.of(str(gone.home), "p") is None


def test_a_workspace_of_another_owner_becomes_the_jobs_without_following_links(tmp_path, registry):
    ids = identities(tmp_path, registry)
    ids.prepare()
    outside = tmp_path / "outside.txt"
    outside.write_text("not the job's")
    ws = ids.work_dir / "p"
    (ws / "deep").mkdir(parents=True)  # as an agent before job identities left it (root)
    (ws / "deep" / "file").write_text("x")
    (ws / "link").symlink_to(outside)
    job = ids.for_run("p")
    for path in (ws, ws / "deep", ws / "deep" / "file", ws / "link"):
        assert os.lstat(path).st_uid == job.uid, path
    assert os.stat(outside).st_uid == 0


def test_root_runs_as_root_and_a_missing_job_user_is_refused(tmp_path, registry):
    ids = identities(tmp_path, registry)
    ids.prepare()
    root = ids.for_run("deploy", as_root=True)
    assert (root.uid, root.user, root.dedicated) == (0, "root", False)
    assert os.stat(ids.work_dir / "deploy").st_uid == 0
    named = identities(tmp_path, registry, "named", job_user="no-such-user-here")
    with pytest.raises(IdentityError, match="the job user 'no-such-user-here' does not exist"):
        named.prepare()


def test_a_work_dir_jobs_could_not_reach_is_refused_at_start(tmp_path, registry):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    home = tmp_path / "home"
    home.mkdir()
    ids = JobIdentities(home, private / "work", {"job_uids": RANGE}, registry)
    with pytest.raises(IdentityError, match=f"{private} is mode 0700.*chmod o\\+x"):
        ids.prepare()


def test_static_file_writes_never_go_through_a_link(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws / "conf").symlink_to(outside)  # planted by a job between the check and the write
    with pytest.raises(OSError) as refused:
        write_inside(ws, "conf/app.ini", b"x", None)
    assert refused.value.errno in (errno.ENOTDIR, errno.ELOOP)
    assert list(outside.iterdir()) == []
    write_inside(ws, "a/b/c.txt", b"data", (4_000_000_001, 4_000_000_001))
    assert (ws / "a" / "b" / "c.txt").read_bytes() == b"data"
    assert os.stat(ws / "a" / "b").st_uid == os.stat(ws / "a/b/c.txt").st_uid == 4_000_000_001


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("65536", "START-END"),
        ("10-20", "from 1000 up"),
        ("60000-70000", "65534"),
        ("70000-60000", "at least one uid"),
    ],
)
def test_bad_uid_ranges_are_refused(text, error):
    with pytest.raises(ValueError, match=error):
        parse_uid_range(text)
    assert parse_uid_range("65536-66535") == (65536, 66535)


def test_workspaces_left_open_by_an_older_agent_are_closed_at_start(tmp_path, registry):
    ids = identities(tmp_path, registry)
    old = ids.work_dir / "old-pipeline"
    old.mkdir(parents=True, mode=0o755)
    os.chmod(old, 0o755)
    (old / "cache.txt").write_text("another pipeline's")
    legacy_trash = ids.home / "trash"
    legacy_trash.mkdir(mode=0o755)
    os.chmod(legacy_trash, 0o755)
    ids.prepare()
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(legacy_trash).st_mode) == 0o700

"""Pipelines that build a repository, against real git servers: git daemon (git://),
git http-backend behind basic auth (a token), and sshd (a deploy key). A real primary and
a root agent, whose jobs run as the pipeline's own uid: the job's `git rev-parse HEAD`
prints the commit the run records, a second run fetches only the new objects into the
clone it kept, and no credential shows in a log, an argv or the primary's files."""

import contextlib
import datetime
import json
import sqlite3
import threading
from pathlib import Path

import pytest
from fleet import wait_for
from git_servers import HttpGit, fleet_with_builder, git
from sshd import SSHD, start_sshd, stop_sshd

TOKEN = "glpat-s3cr3t-t0ken-for-the-test"
JOB = """
jobs:
  - name: build
    steps: ["git rev-parse HEAD", "git log -1 --format=%s", "stat -c %u .git; id -u"]
"""


@pytest.fixture(scope="module")
def http_git(repos):
    server = HttpGit(repos.root, "ci", TOKEN)
    yield server
    server.close()


@pytest.fixture(scope="module")
def fleet(git_root):
    with fleet_with_builder(git_root) as both:
        yield both


def run_log(primary, run_id: int) -> str:
    status, _, body = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
    assert status == 200
    return body.decode()


def set_secret(primary, pipeline: str, name: str, value: str) -> None:
    status, _, body = primary.client.request(
        "PUT", f"/api/v1/pipelines/{pipeline}/secrets/{name}", value.encode(), "text/plain"
    )
    assert status == 200, body


def test_git_daemon_clone_then_incremental_fetch(fleet, repos, daemon):
    primary, _ = fleet
    repos.create("app")
    first = repos.commit("app", "README", "one\n", "first commit")
    url = daemon.url("app")
    primary.pipeline(f"name: daemon\nsource: {{git: '{url}', ref: main}}\n{JOB}")
    run = primary.wait_run(primary.trigger("daemon"))
    assert run["state"] == "success", run_log(primary, run["id"])
    out = primary.job_log(run["id"], "build").decode().split("\n")
    assert out[:2] == [first, "first commit"]
    assert out[2] == out[3] and int(out[2]) >= 65536, "the clone belongs to the job's own uid"
    assert run["source"] == {
        "git": url,
        "ref": "refs/heads/main",
        "sha": first,
        "commit": first,
        "subject": "first commit",
        "author": "Ada Lovelace <ada@example.com>",
    }
    assert run["trigger"] == {"kind": "api", "token": "initial admin"}
    log = run_log(primary, run["id"])
    assert "    triggered by: the API (API token initial admin)\n" in log
    assert f"    source: {url} refs/heads/main at {first}\n" in log
    assert f"on builder: git: cloned {url} (3 objects)\n" in log
    assert f"on builder: git: checked out {first} (refs/heads/main): first commit (Ada" in log

    # A second commit: the clone the first run left is fetched into, not made again.
    second = repos.commit("app", "README", "two\n", "second commit")
    run = primary.wait_run(primary.trigger("daemon"))
    assert run["state"] == "success", run_log(primary, run["id"])
    assert primary.job_log(run["id"], "build").decode().split("\n")[:2] == [second, "second commit"]
    log = run_log(primary, run["id"])
    # One commit, its tree and the changed file: 3 objects, next to the first run's 3.
    assert "git: fetched 3 new objects into the clone kept from earlier runs (6 in all)\n" in log

    # A cleared cache starts from an empty workspace: a fresh clone.
    primary.client.json("POST", "/api/v1/pipelines/daemon/cache/clear")
    run = primary.wait_run(primary.trigger("daemon"))
    assert run["state"] == "success"
    assert f"git: cloned {url} (6 objects)\n" in run_log(primary, run["id"])


def test_an_unknown_ref_or_server_is_refused_at_trigger(fleet, repos, daemon):
    primary, _ = fleet
    repos.create("refs")
    repos.commit("refs", "a", "a\n", "a")
    primary.pipeline(f"name: noref\nsource: {{git: '{daemon.url('refs')}', ref: nope}}\n{JOB}")
    status, _, body = primary.client.request("POST", "/api/v1/pipelines/noref/runs")
    assert status == 400
    assert json.loads(body)["error"] == (
        f"ref: 'nope' is neither a branch nor a tag of {daemon.url('refs')}"
    )
    primary.pipeline(f"name: noserver\nsource: {{git: 'git://127.0.0.1:1/x.git'}}\n{JOB}")
    status, _, body = primary.client.request("POST", "/api/v1/pipelines/noserver/runs")
    assert status == 502
    assert json.loads(body)["code"] == "source_unavailable"
    assert primary.client.json("GET", "/api/v1/runs?pipeline=noserver")["runs"] == []


def _watch_cmdlines(found: list[bytes], stop: threading.Event) -> None:
    while not stop.wait(0.005):
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                found.append(cmdline.read_bytes())


def _files_hold(folder: Path, needle: bytes) -> list[str]:
    return [
        str(p) for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
        and needle in p.read_bytes()
    ]  # fmt: skip


def test_https_token_from_a_secret_in_no_log_argv_or_file(fleet, repos, http_git, git_root):
    primary, agent = fleet
    repos.create("private")
    first = repos.commit("private", "main.c", "int main;\n", "private code")
    url = http_git.url("private")
    primary.pipeline(
        f"name: https\nsource: {{git: '{url}', ref: main, token: GIT_TOKEN, username: ci,"
        f" ca: {json.dumps(http_git.ca)}}}\n"
        "jobs:\n  - name: build\n    steps: ['git rev-parse HEAD', 'env']\n"
    )
    cmdlines: list[bytes] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_cmdlines, args=(cmdlines, stop), daemon=True)
    watcher.start()
    try:
        # Not set yet: refused before the repository is asked.
        status, _, body = primary.client.request("POST", "/api/v1/pipelines/https/runs")
        assert status == 400 and "GIT_TOKEN not set" in json.loads(body)["error"]
        set_secret(primary, "https", "GIT_TOKEN", "wrong-" + TOKEN)
        status, _, body = primary.client.request("POST", "/api/v1/pipelines/https/runs")
        assert status == 502, body
        error = json.loads(body)["error"]
        assert "Authentication failed" in error and TOKEN not in error
        set_secret(primary, "https", "GIT_TOKEN", TOKEN)
        refused = http_git.refused
        run = primary.wait_run(primary.trigger("https"))
    finally:
        stop.set()
        watcher.join()
    assert run["state"] == "success", run_log(primary, run["id"])
    out = primary.job_log(run["id"], "build").decode()
    assert out.startswith(first + "\n")
    assert "CIFLEET_GIT" not in out, "the job's environment has nothing of the checkout's"
    # The server saw the token (git answered its challenge), so the checks below mean something.
    assert http_git.refused > refused
    assert any(a.startswith("Basic ") for a in http_git.authorizations)
    needles = [TOKEN.encode(), ("wrong-" + TOKEN).encode()]
    assert len(cmdlines) > 1000, "the watcher saw the clone's processes"
    logs = b"".join(p.read_bytes() for p in git_root.glob("*.log"))
    logs += run_log(primary, run["id"]).encode() + out.encode()
    for needle in needles:
        assert needle not in logs, "a log"
        assert not any(needle in c for c in cmdlines), "an argv"
        assert _files_hold(primary.data_dir, needle) == [], "the primary's files"
        assert _files_hold(agent.home, needle) == [], "the agent's home"


@pytest.fixture(scope="module")
def ssh_server(git_root):
    if not Path(SSHD).exists():
        pytest.skip("sshd is not installed (tests/run.sh installs openssh-server)")
    server = start_sshd(git_root / "sshd", ("127.0.0.1",))
    yield server
    stop_sshd(server)


def test_ssh_deploy_key_from_a_secret(fleet, repos, ssh_server, git_root):
    primary, agent = fleet
    repos.create("deploy")
    first = repos.commit("deploy", "x", "x\n", "over ssh")
    url = f"ssh://root@127.0.0.1:{ssh_server.port}{repos.root}/deploy.git"
    known_hosts = ssh_server.known_hosts.read_text().strip()
    key = ssh_server.client_key.read_text()
    primary.pipeline(
        f"name: ssh\nsource:\n  git: '{url}'\n  ssh_key: DEPLOY_KEY\n"
        f"  known_hosts: '{known_hosts}'\n{JOB}"
    )
    set_secret(primary, "ssh", "DEPLOY_KEY", key)
    cmdlines: list[bytes] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_cmdlines, args=(cmdlines, stop), daemon=True)
    watcher.start()
    try:
        run = primary.wait_run(primary.trigger("ssh"))
    finally:
        stop.set()
        watcher.join()
    assert run["state"] == "success", run_log(primary, run["id"])
    assert primary.job_log(run["id"], "build").decode().startswith(first + "\n")
    assert run["source"]["sha"] == first
    body = "".join(key.strip().splitlines()[1:3]).encode()  # a piece of the key's base64
    assert any(b"ssh-agent" in c for c in cmdlines), "the watcher saw the clone"
    logs = b"".join(p.read_bytes() for p in git_root.glob("*.log"))
    for needle in (body, key.strip().splitlines()[1].encode()):
        assert needle not in logs + run_log(primary, run["id"]).encode()
        assert not any(needle in c for c in cmdlines)
        assert _files_hold(primary.data_dir, needle) == []
        assert _files_hold(agent.home, needle) == []
    assert not list(Path("/tmp").glob("cifleet-ssh-*")), "the key's agent folder is gone"


PARAMETERS = """
parameters:
  TARGET: {type: string, default: x86, choices: [x86, arm]}
  COUNT: {type: integer, default: 1, min: 1, max: 10}
  DEBUG: {type: boolean, default: false}
jobs:
  - name: build
    steps: ['echo "$TARGET $COUNT $DEBUG $(git rev-parse HEAD)"']
"""


def test_parameters_are_typed_and_run_again_builds_the_same_commit(fleet, repos, daemon):
    primary, _ = fleet
    repos.create("params")
    first = repos.commit("params", "a", "1\n", "one")
    url = daemon.url("params")
    primary.pipeline(f"name: params\nsource: {{git: '{url}'}}\n{PARAMETERS}")
    refusals = {
        json.dumps({"env": {"TARGET": "mips"}}): "env.TARGET: must be one of x86, arm",
        json.dumps({"env": {"COUNT": 11}}): "env.COUNT: must be a whole number from 1 to 10",
        json.dumps({"env": {"COUNT": "1e3"}}): "env.COUNT: must be a whole number from 1 to 10",
        json.dumps({"env": {"DEBUG": "yes"}}): "env.DEBUG: must be true or false",
        json.dumps({"env": {"PATH": "/tmp"}}): (
            "env.PATH: not a parameter of this pipeline (declared: COUNT, DEBUG, TARGET)"
        ),
        json.dumps({"env": ["TARGET"]}): "env: must be an object of parameter names to values",
        json.dumps({"colour": "red"}): "colour: unknown field; expected env or ref",
        json.dumps({"ref": "-x"}): "ref: must be a branch name or refs/tags/NAME",
        json.dumps([1]): "the body must be a JSON object",
    }
    for body, message in refusals.items():
        status, _, answer = primary.client.request(
            "POST", "/api/v1/pipelines/params/runs", body.encode()
        )
        assert (status, json.loads(answer)["error"]) == (400, message), body
    assert primary.client.json("GET", "/api/v1/runs?pipeline=params")["runs"] == []

    given = {"env": {"TARGET": "arm", "COUNT": 3, "DEBUG": True}}
    run_id = primary.client.json("POST", "/api/v1/pipelines/params/runs", given)["id"]
    run = primary.wait_run(run_id)
    assert primary.job_log(run_id, "build").decode() == f"arm 3 true {first}\n"
    assert run["parameters"] == {"TARGET": "arm", "COUNT": "3", "DEBUG": "true"}
    assert "    parameters: COUNT=3, DEBUG=true, TARGET=arm\n" in run_log(primary, run_id)
    defaults = primary.wait_run(primary.trigger("params"))["id"]
    assert primary.job_log(defaults, "build").decode() == f"x86 1 false {first}\n"

    # The branch moves on; run again builds the first run's commit with its parameters.
    second = repos.commit("params", "a", "2\n", "two")
    again = primary.client.json("POST", f"/api/v1/runs/{run_id}/again")["id"]
    assert primary.wait_run(again)["state"] == "success"
    assert primary.job_log(again, "build").decode() == f"arm 3 true {first}\n"
    assert primary.run(again)["trigger"] == {
        "kind": "run again",
        "token": "initial admin",
        "of_run": run_id,
    }
    latest = primary.wait_run(primary.trigger("params"))["id"]
    assert primary.job_log(latest, "build").decode() == f"x86 1 false {second}\n"

    # Only a finished run runs again.
    primary.client.json("POST", "/api/v1/workers/builder/lock")
    try:
        waiting = primary.trigger("params")
        status, _, answer = primary.client.request("POST", f"/api/v1/runs/{waiting}/again")
        assert (status, json.loads(answer)["code"]) == (409, "not_finished")
        primary.client.json("POST", f"/api/v1/runs/{waiting}/cancel")
    finally:
        primary.client.json("POST", "/api/v1/workers/builder/unlock")
    status, _, _ = primary.client.request("POST", "/api/v1/runs/999999/again")
    assert status == 404


def test_definition_errors_name_the_field(fleet):
    primary, _ = fleet
    cases = {
        "source: {git: 'ext::sh -c touch% /tmp/x'}": "source.git: must be an https",
        "source: {git: 'https://u:p@example.com/r.git'}": "source.git: must be an https",
        "source: {git: 'https://example.com/r.git', ssh_key: K}": "source.ssh_key: is for ssh",
        "source: {git: 'http://example.com/r.git', token: T}": "source.token: is sent only over",
        "source: {git: 'git://example.com/r.git', ca: x}": "source.ca: is for https",
        "source: {git: 'https://example.com/r.git', ca: x}": "source.ca: must be PEM",
        "source: {git: 'ssh://git@example.com/r.git'}": "source.known_hosts: an ssh source needs",
        "source: {git: 'https://example.com/r.git', ref: 'a..b'}": "source.ref: must be a branch",
        "source: {git: 'https://example.com/r.git', colour: 1}": "source.colour: unknown field",
        "parameters: {N: {type: integer, default: x}}": "parameters.N.default: must be a whole",
        "parameters: {N: {type: float, default: 1}}": "parameters.N.type: must be one of",
        "parameters: {N: {type: string}}": "parameters.N.default: is required",
    }
    for field, message in cases.items():
        text = f"name: bad\n{field}\njobs:\n  - name: a\n    steps: ['true']\n"
        status, _, answer = primary.client.request(
            "POST", "/api/v1/pipelines", text.encode(), "application/yaml"
        )
        assert status == 400, field
        assert json.loads(answer)["error"].startswith(message), (field, answer)


PLANT = r"""
set -e
[ -e .planted ] && exit 0  # the first run plants; the second checks what it finds
touch .planted
m="$MARKERS"
hook='#!/bin/sh
env > "'"$m"'/$(basename "$0").$$"; cat /proc/self/environ >> "'"$m"'/environ.$$" || true
'
# (1) hooks in every .git the job can reach, and settings that would run its commands.
for name in reference-transaction post-checkout post-merge post-index-change pre-auto-gc \
    post-rewrite pre-push fsmonitor-watchman push-to-checkout; do
  printf '%s' "$hook" > ".git/hooks/$name"; chmod +x ".git/hooks/$name"
done
mkdir -p evil-hooks; cp .git/hooks/* evil-hooks/
git config core.hooksPath "$PWD/evil-hooks"
git config core.fsmonitor "$PWD/evil-hooks/fsmonitor-watchman"
git config url.http://127.0.0.1:1/.insteadOf "$SOURCE"
# (3, first) every object it can reach: garbage.
find .git/objects -type f | while read -r f; do chmod u+w "$f"; printf 'garbage' > "$f"; done
# (2) a commondir and alternates of its own: another config, another object store.
mkdir -p evil-common/objects; cp .git/config evil-common/config
git config -f evil-common/config protocol.ext.allow always
echo "$PWD/evil-common" > .git/commondir
echo "$PWD/evil-common/objects" > .git/objects/info/alternates
# (3) the tracked files: overwritten, deleted, replaced by a link.
printf 'forged\n' > README
rm lib/util.c
mkdir -p /tmp/evil-src-$$; printf 'int evil;\n' > /tmp/evil-src-$$/main.c
rm -rf src; ln -s /tmp/evil-src-$$ src
mkdir -p build; printf 'object\n' > build/out.o
# The agent's own clone is out of reach: not listed, not read, not written.
clones="$CIFLEET_WORKSPACE/../../git"
ls "$clones" 2>&1 | sed "s|$clones|CLONES|" || true
cat "$clones/tamper.git/config" 2>&1 | sed "s|$clones|CLONES|" || true
touch "$clones/tamper.git/hooks/reference-transaction" 2>&1 | sed "s|$clones|CLONES|" || true
"""
CHECK = r"""
# The second run waits (30 s at most) until the test's watcher has seen this process.
[ -e .planted ] && for i in $(seq 3000); do [ -e "$MARKERS/../seen" ] && break; sleep 0.01; done
git rev-parse HEAD
git status --porcelain --untracked-files=no | sed 's/^/changed: /'
cat README src/main.c lib/util.c docs/guide.txt
test -L src && echo "src is a link"; test -e old.txt && echo "old.txt is back"; ls build
test -e evil-hooks && echo "untracked evil-hooks stays"; ls .git/hooks | grep -v sample || true
"""


def _environs_of_uid_processes(found: list[bytes], stop: threading.Event, seen: Path) -> None:
    """Every environment of a job uid's process (from 65536) while the run goes; `seen` is
    made once one of them is the check job's (it waits for that)."""
    while not stop.wait(0.005):
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                uid = int(status.read_text().split("\nUid:\t", 1)[1].split("\t", 1)[0])
                if uid >= 65536:
                    found.append((status.parent / "environ").read_bytes())
                    if b"MARKERS=" in found[-1]:
                        seen.touch()


def test_a_job_cannot_tamper_with_the_next_runs_checkout(fleet, repos, http_git, git_root):
    """A job plants hooks, fsmonitor and insteadOf settings, a commondir and alternates in
    the .git it sees, garbage in its objects, forged and deleted tracked files and a link
    for a folder; the agent's clone is out of its reach. The next run fetches with the
    token (nothing the job left runs, nothing of the token reaches a job's process or
    file) and builds exactly the pushed commit, incrementally."""
    primary, agent = fleet
    markers = git_root / "markers"
    markers.mkdir(mode=0o777)
    markers.chmod(0o1777)
    repos.create("tamper")
    repos.commit("tamper", "src/main.c", "int main;\n", "main")
    repos.commit("tamper", "lib/util.c", "int util;\n", "util")
    repos.commit("tamper", "old.txt", "old\n", "old")
    repos.commit("tamper", "docs/guide.txt", "guide\n", "guide")
    repos.commit("tamper", "README", "one\n", "first")
    url = http_git.url("tamper")
    plant = PLANT.replace("\n", "\n      ").strip()
    check = CHECK.replace("\n", "\n      ").strip()
    definition = (
        f"name: tamper\nsource: {{git: '{url}', ref: main, token: GIT_TOKEN, username: ci,"
        f" ca: {json.dumps(http_git.ca)}}}\n"
        f"env: {{MARKERS: '{markers}', SOURCE: '{url}'}}\n"
        "jobs:\n"
        f"  - name: check\n    steps:\n    - |\n      {check}\n"
        f"  - name: plant\n    steps:\n    - |\n      {plant}\n"
    )
    primary.pipeline(definition)
    set_secret(primary, "tamper", "GIT_TOKEN", TOKEN)
    first = primary.wait_run(primary.trigger("tamper"))
    assert first["state"] == "success", run_log(primary, first["id"])
    assert primary.job_log(first["id"], "plant").decode() == (
        "ls: cannot open directory 'CLONES': Permission denied\n"
        "cat: CLONES/tamper.git/config: Permission denied\n"
        "touch: cannot touch 'CLONES/tamper.git/hooks/reference-transaction': Permission denied\n"
    )
    workspace = agent.home / "workspaces" / "tamper"
    untouched = (workspace / "docs" / "guide.txt").stat()
    clone = agent.home / "git" / "tamper.git"
    assert (clone.stat().st_uid, clone.stat().st_mode & 0o777) == (0, 0o700)
    assert (clone.parent.stat().st_uid, clone.parent.stat().st_mode & 0o777) == (0, 0o700)

    # A new commit: README changes, old.txt goes.
    work = repos.root / "tamper.work"
    git("rm", "-q", "old.txt", cwd=work)
    second = repos.commit("tamper", "README", "two\n", "second")
    environs: list[bytes] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=_environs_of_uid_processes, args=(environs, stop, git_root / "seen")
    )
    watcher.start()
    try:
        run = primary.wait_run(primary.trigger("tamper"))
    finally:
        stop.set()
        watcher.join()
    assert run["state"] == "success", run_log(primary, run["id"])
    assert primary.job_log(run["id"], "check").decode() == (
        f"{second}\ntwo\nint main;\nint util;\nguide\nout.o\nuntracked evil-hooks stays\n"
    )
    assert sorted(p.name for p in markers.iterdir()) == [], "no hook or fsmonitor ran"
    log = run_log(primary, run["id"])
    # The commit, its tree, README's new blob (old.txt's removal changes only the tree).
    assert "git: fetched 3 new objects into the clone kept from earlier runs (21 in all)\n" in log
    # The workspace's tracked files are exactly the commit's; what nobody changed was not
    # written again (same inode, same modification time: make stays incremental).
    bare = repos.root / "tamper.git"
    listed = git("ls-tree", "-r", "--name-only", second, cwd=bare).split("\n")
    assert listed == ["README", "docs/guide.txt", "lib/util.c", "src/main.c"]
    again = (workspace / "docs" / "guide.txt").stat()
    assert (again.st_ino, again.st_mtime_ns) == (untouched.st_ino, untouched.st_mtime_ns)
    for path in listed:
        assert (workspace / path).read_bytes() == git(
            "cat-file", "blob", f"{second}:{path}", cwd=bare
        ).encode() + b"\n", path
    assert not (workspace / "src").is_symlink()
    # The token reached no process of a job's uid (the checkout's tar and .git ones
    # included) and no file the job can read.
    assert (git_root / "seen").exists(), "the watcher saw the check job's processes"
    assert not any(TOKEN.encode() in e for e in environs)
    assert _files_hold(workspace, TOKEN.encode()) == []


def test_a_scheduled_run_builds_the_commit_its_ref_names_when_it_fires(fleet, repos, daemon):
    """The schedule's slot is due at once: the definition is made to look saved a day ago."""
    primary, _ = fleet
    repos.create("cron")
    head = repos.commit("cron", "a", "1\n", "nightly build")
    hour = (datetime.datetime.now(datetime.UTC).hour + 12) % 24  # no slot while it runs
    primary.pipeline(
        f"name: cron\nsource: {{git: '{daemon.url('cron')}'}}\n"
        f"schedule: {{cron: '0 {hour} * * *', timezone: UTC}}\n{JOB}"
    )
    with contextlib.closing(sqlite3.connect(primary.data_dir / "cifleet.db")) as db, db:
        db.execute("UPDATE pipelines SET updated_at = updated_at - 86400 WHERE name = 'cron'")
    wait_for(lambda: primary.client.json("GET", "/api/v1/runs?pipeline=cron")["runs"], 30, "fire")
    [listed] = primary.client.json("GET", "/api/v1/runs?pipeline=cron")["runs"]
    run = primary.wait_run(listed["id"])
    assert run["state"] == "success", run_log(primary, run["id"])
    assert run["trigger"]["kind"] == "schedule" and run["source"]["sha"] == head
    assert primary.job_log(run["id"], "build").decode().split("\n")[:2] == [head, "nightly build"]
    assert "    triggered by: the schedule '0 " in run_log(primary, run["id"])

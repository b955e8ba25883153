"""A job reaches no further than its own workspace: real primary, real agents as root, real
uid switching. Also root jobs (only where an admin allows them) and an agent that cannot
switch users (it says so, and so does the primary)."""

import base64
import json
import os
import pwd
import secrets
import subprocess
from pathlib import Path

import psutil
import pytest
from fleet import AS_NOBODY, BIN, NOBODY, Agent, init_primary, register_agent, wait_for

from primary.cli.client import AdminClient

REGISTRY = Path("/var/lib/cifleet-job-uids/claims.json")

# Each probe prints one line: what the job could do. A job that reads nothing it must not
# prints exactly the expected lines, so the log is compared byte for byte.
PROBES = {
    "agent key": '"$CIFLEET_WORKSPACE/../../worker.key"',
    "agent config": '"$CIFLEET_WORKSPACE/../../config.json"',
    "agent certificate": '"$CIFLEET_WORKSPACE/../../worker.crt"',
    "other workspace": '"$CIFLEET_WORKSPACE/../victim/secret.txt"',
}
AGENT_FILES = {what: path for what, path in PROBES.items() if what.startswith("agent ")}


def _attempt(command: str, what: str) -> str:
    """A step line: `no WHAT` when the command fails, `DID WHAT` when it works."""
    return f'{command} >/dev/null 2>&1 && echo "DID {what}" || echo "no {what}"'


def _probe_steps(extra: dict[str, str] | None = None) -> list[str]:
    steps = ['echo "uid $(id -u) gid $(id -g) groups $(id -G)"']
    steps += [_attempt(f"cat {path}", what) for what, path in {**PROBES, **(extra or {})}.items()]
    steps += [
        _attempt('ls "$CIFLEET_WORKSPACE/.."', "listing"),
        _attempt('ls "$CIFLEET_WORKSPACE/../../spool"', "spool"),
        'echo "home $HOME"',
        'touch own-file && echo "wrote own workspace"',
    ]
    return steps


def _pipeline(name: str, steps: list[str], tags: list[str], extra: str = "") -> str:
    lines = [
        f"name: {name}",
        f"tags: {json.dumps(tags)}",
        extra,
        "jobs:",
        "  - name: probe",
        "    steps:",
    ]
    lines += [f"      - {json.dumps(step)}" for step in steps]
    return "\n".join(line for line in lines if line) + "\n"


def _expected(uid: int, workspace: str, extra: tuple[str, ...] = ()) -> bytes:
    lines = [f"uid {uid} gid {uid} groups {uid}"]
    lines += [f"no {what}" for what in (*PROBES, *extra)]
    lines += ["no listing", "no spool", f"home {workspace}", "wrote own workspace"]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def fleet(tmp_path):
    """A primary with its built-in worker (untagged) and one remote agent tagged `remote`,
    both as root, as the role runs them."""
    primary = init_primary(tmp_path, "--heartbeat-timeout", "6", "--primary-worker-slots", "1")
    primary.start()
    agents = []
    try:
        assert register_agent(primary, tmp_path, "remote", tags="remote").returncode == 0
        agent = Agent(name="remote", home=tmp_path / "remote", log_path=tmp_path / "remote.log")
        agent.start()
        agents.append(agent)
        wait_for(
            lambda: all(
                (w := primary.worker(n)) and w["state"] == "active" for n in ("remote", "primary")
            ),
            30,
            "the remote and the built-in worker to be active",
        )
        yield primary, agent
    finally:
        for agent in agents:
            agent.stop()
        primary.stop()


def test_a_malicious_job_reads_neither_the_agent_nor_another_pipeline(fleet):
    primary, agent = fleet
    victim_secret = "victim-workspace-secret"
    primary.pipeline(
        _pipeline(
            "victim", [f"echo {victim_secret} > secret.txt; chmod 644 secret.txt"], ["remote"]
        )
    )
    victim = primary.wait_run(primary.trigger("victim"))
    assert victim["state"] == "success", victim
    primary.pipeline(_pipeline("attacker", _probe_steps(), ["remote"]))
    run = primary.wait_run(primary.trigger("attacker"))
    assert run["state"] == "success" and run["worker_name"] == "remote", run

    workspaces = agent.home / "workspaces"
    attacker_ws, victim_ws = workspaces / "attacker", workspaces / "victim"
    uid = os.stat(attacker_ws).st_uid
    assert uid != 0 and uid != os.stat(victim_ws).st_uid  # a uid per pipeline
    assert primary.job_log(run["id"], "probe") == _expected(uid, str(attacker_ws))
    # The workspaces are the jobs' own (0700), the agent's files stay root's (0600).
    assert oct(os.stat(attacker_ws).st_mode & 0o777) == "0o700"
    assert os.stat(attacker_ws / "own-file").st_uid == uid
    assert (victim_ws / "secret.txt").read_text() == victim_secret + "\n"
    for private in ("worker.key", "config.json", "worker.crt"):
        st = os.stat(agent.home / private)
        assert (st.st_uid, st.st_mode & 0o077) == (0, 0), private
    claims = json.loads(REGISTRY.read_text())
    assert claims[str(uid)] == {
        "home": str(agent.home),
        "pipeline": "attacker",
        "workspace": str(attacker_ws),
    }
    assert "each pipeline's jobs run as a uid of their own" in agent.log_path.read_text()
    worker = primary.worker("remote")
    assert worker["job_identity"] == {"mode": "pipeline-uids", "uids": [65536, 66535]}
    assert (
        worker["job_identity_text"]
        == "each pipeline's jobs run as a uid of their own (65536-66535)"
    )


def test_a_job_on_the_built_in_worker_cannot_read_the_primary_data_dir(fleet):
    primary, _ = fleet
    data = primary.data_dir
    extra = {
        "vault key": f'"{data}/vault.key"',
        "vault": f'"{data}/vault.bin"',
        "store": f'"{data}/cifleet.db"',
        "admin token": f'"{data}/admin.token"',
        "built-in worker key": f'"{data}/builtin-worker/worker.key"',
    }
    primary.pipeline(_pipeline("snoop", _probe_steps(extra), []))
    run = primary.wait_run(primary.trigger("snoop"))
    assert run["state"] == "success" and run["worker_name"] == "primary", run
    workspace = data.parent / "builtin-work" / "snoop"
    uid = os.stat(workspace).st_uid
    assert uid != 0
    assert primary.job_log(run["id"], "probe") == _expected(uid, str(workspace), tuple(extra))
    assert oct(os.stat(data).st_mode & 0o777) == "0o700"  # the data dir stayed private


def test_root_jobs_only_where_an_admin_allows_them(fleet):
    primary, _ = fleet
    primary.pipeline(_pipeline("as-root", ['echo "uid $(id -u)"'], ["remote"], "run_as_root: true"))
    run_id = primary.trigger("as-root")
    waiting = wait_for(
        lambda: (r := primary.run(run_id))["reason"] and r["state"] == "queued" and r,
        30,
        "the root run to say why it waits",
    )
    assert waiting["reason"] == (
        "waiting: the pipeline runs as root, and no worker with matching tags allows root"
        " jobs (an admin allows them: PUT /api/v1/workers/ID/root-jobs)"
    )
    assert "remote: passed over, root jobs are not allowed here" in waiting["placement"]
    # A viewer may not allow them; an admin may, through the API or the primary CLI.
    token = subprocess.run(
        [str(BIN / "cifleet-primary"), "token", "create", "--name", "v", "--role", "viewer"]
        + ["--data-dir", str(primary.data_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    viewer = AdminClient(primary.url, primary.ca_file, token)
    status, _, _ = viewer.request("PUT", "/api/v1/workers/remote/root-jobs", b'{"allowed": true}')
    assert status == 403
    assert primary.worker("remote")["root_jobs"] is False
    allowed = subprocess.run(
        [
            str(BIN / "cifleet-primary"),
            "worker",
            "root-jobs",
            "remote",
            "--allow",
            "--data-dir",
            str(primary.data_dir),
        ],
        capture_output=True,
        text=True,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "root-jobs=allowed" in allowed.stdout
    run = primary.wait_run(run_id)
    assert run["state"] == "success" and run["worker_name"] == "remote", run
    assert primary.job_log(run_id, "probe") == b"uid 0\n"
    primary.client.json("PUT", "/api/v1/workers/remote/root-jobs", {"allowed": False})
    again = primary.trigger("as-root")
    wait_for(lambda: primary.run(again)["reason"] == waiting["reason"], 30, "waiting again")


@pytest.fixture
def job_user():
    """A throwaway system account (its own group, no home folder), removed after the test
    (and after its agent: ask for it before start_agent)."""
    name = f"cifleet-ju-{secrets.token_hex(4)}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home"]
        + ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True, timeout=60)


def test_an_agent_with_a_job_user_runs_every_job_as_that_user(primary, job_user, start_agent):
    """`--job-user NAME` (the role's cifleet_worker_job_user): every pipeline's jobs run as
    that account, with its group and home; the agent's files stay out of their reach."""
    name, uid, gid = job_user.pw_name, job_user.pw_uid, job_user.pw_gid
    agent = start_agent("named", register_args=("--job-user", name))
    assert agent.config()["job_user"] == name
    worker = primary.worker("named")
    assert worker["job_identity"] == {"mode": "job-user", "user": name}
    shared = f"jobs run as the user {name}, shared by every pipeline"
    assert worker["job_identity_text"] == shared
    steps = [
        'echo "uid $(id -u) $(id -un) gid $(id -g) groups $(id -G)"',
        'echo "user $USER $LOGNAME home $HOME"',
        *(_attempt(f"cat {path}", what) for what, path in AGENT_FILES.items()),
        _attempt('ls "$CIFLEET_WORKSPACE/.."', "listing"),
        _attempt('ls "$CIFLEET_WORKSPACE/../../spool"', "spool"),
        'touch own-file && echo "wrote own workspace"',
    ]
    logs = {}
    for pipeline in ("first", "second"):
        primary.pipeline(_pipeline(pipeline, steps, []))
        run = primary.wait_run(primary.trigger(pipeline))
        assert run["state"] == "success" and run["worker_name"] == "named", run
        logs[pipeline] = primary.job_log(run["id"], "probe")
    expected = (
        f"uid {uid} {name} gid {gid} groups {gid}\n"
        f"user {name} {name} home /nonexistent\n"
        "no agent key\nno agent config\nno agent certificate\nno listing\nno spool\n"
        "wrote own workspace\n"
    ).encode()
    assert logs == {"first": expected, "second": expected}  # one identity for all pipelines
    for pipeline in ("first", "second"):
        workspace = agent.home / "workspaces" / pipeline
        st = os.stat(workspace)
        assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (uid, gid, "0o700"), pipeline
        assert os.stat(workspace / "own-file").st_uid == uid
    for private in ("worker.key", "config.json", "worker.crt"):
        st = os.stat(agent.home / private)
        assert (st.st_uid, st.st_mode & 0o077) == (0, 0), private
    # No uid of the job range was claimed for this home: the named account is the identity.
    claims = json.loads(REGISTRY.read_text()) if REGISTRY.exists() else {}
    assert not [c for c in claims.values() if c["home"] == str(agent.home)]
    assert f"jobs run as the user {name} (all pipelines share it)" in agent.log_path.read_text()


def test_an_agent_that_cannot_switch_users_says_so(primary, start_agent):
    """Not root: jobs share its identity, and the agent and the API say so. The agent runs
    as nobody in a user namespace of its own (fleet.AS_NOBODY): it cannot switch users, as
    a plain user cannot."""
    agent = start_agent("plain-user", prefix=AS_NOBODY)  # active: it said who jobs run as
    worker = primary.worker("plain-user")
    assert worker["job_identity"] == {"mode": "shared", "uid": NOBODY}
    assert worker["job_identity_text"] == "jobs share the agent's identity"
    assert "jobs share the agent's identity (uid 65534)" in agent.log_path.read_text()
    primary.pipeline(_pipeline("shared", ['echo "uid $(id -u)"'], []))
    run = primary.wait_run(primary.trigger("shared"))
    assert run["state"] == "success", run
    assert primary.job_log(run["id"], "probe") == b"uid 65534\n"


# A daemon that, told to stop, hands over to an heir in a session of its own and exits: the
# heir was on no list of the job's processes when the SIGKILLs went out.
HEIR = """
import os, signal, time
ws = os.environ["CIFLEET_WORKSPACE"]
def handover(*_):
    if os.fork() == 0:
        os.setsid()
        with open(os.path.join(ws, "heir.pid.tmp"), "w") as f:
            f.write(str(os.getpid()))
        os.rename(os.path.join(ws, "heir.pid.tmp"), os.path.join(ws, "heir.pid"))
        time.sleep(300)
    os._exit(0)
signal.signal(signal.SIGTERM, handover)
open(os.path.join(ws, "daemon.pid"), "w").write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


def test_a_process_that_hands_over_to_an_heir_when_told_to_stop_ends_with_the_job(fleet):
    primary, agent = fleet
    encoded = base64.b64encode(HEIR.encode()).decode()
    steps = [
        f"echo {encoded} | base64 -d > heir.py",
        "(setsid python3 heir.py &)",
        "while [ ! -s daemon.pid ]; do sleep 0.05; done; echo started",
    ]
    primary.pipeline(_pipeline("heirs", steps, ["remote"]))
    run = primary.wait_run(primary.trigger("heirs"))
    assert run["state"] == "success" and primary.job_log(run["id"], "probe") == b"started\n"
    workspace = agent.home / "workspaces" / "heirs"
    uid = os.stat(workspace).st_uid
    heir = workspace / "heir.pid"
    # Whether the heir got as far as writing its pid or not, none of the uid's processes
    # outlives the job (dead ones may stay zombies here: PID 1 does not reap them).
    survivors = [
        p.pid
        for p in psutil.process_iter(["uids", "status"])
        if p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE
    ]
    assert survivors == [], (survivors, heir.exists() and heir.read_text())


def test_what_a_job_leaves_running_ends_with_it_and_its_uid_is_freed_with_its_workspace(
    fleet, tmp_path
):
    """A daemon that left the job's process groups (setsid, parent gone) still belongs to the
    pipeline's uid: it ends with the job. Clearing the cache deletes the workspace and frees
    the uid, with what it left in /tmp."""
    primary, agent = fleet
    marker = f"/tmp/cifleet-leftover-{tmp_path.name}"
    Path(marker).unlink(missing_ok=True)  # left by an earlier run that failed: another uid's
    steps = [
        f"echo left > {marker}",
        "(setsid sh -c 'echo $$ > \"$CIFLEET_WORKSPACE/daemon.pid\"; exec sleep 300' &)",
        "while [ ! -s daemon.pid ]; do sleep 0.05; done; echo started",
    ]
    primary.pipeline(_pipeline("leaver", steps, ["remote"]))
    run = primary.wait_run(primary.trigger("leaver"))
    assert run["state"] == "success" and primary.job_log(run["id"], "probe") == b"started\n"
    workspace = agent.home / "workspaces" / "leaver"
    uid = os.stat(workspace).st_uid
    daemon = int((workspace / "daemon.pid").read_text())
    # Killed before the job's final status was sent: dead (or an unreaped zombie) by now.
    assert not psutil.pid_exists(daemon) or psutil.Process(daemon).status() == "zombie"
    assert os.stat(marker).st_uid == uid

    primary.client.json("POST", "/api/v1/pipelines/leaver/cache/clear")
    wait_for(lambda: not workspace.exists(), 30, "the workspace to be deleted")

    def freed() -> bool:
        claims = json.loads(REGISTRY.read_text()).values()
        return not any(c["workspace"] == str(workspace) for c in claims)

    wait_for(freed, 30, "the uid to be freed")
    assert not os.path.exists(marker)

"""Fixtures for the playbook tests: a real sshd on loopback serving three "hosts"
(127.0.0.2-4, one port), a real primary, and a generated inventory.

Every host lives in its own folder under the session's tmp dir (install, home, config,
logs, pidfile), so the role's paths point there and nothing touches the real system.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from fleet import Primary, init_primary, passable
from sshd import SSHD, Sshd, start_sshd, stop_sshd

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
HOST_TAGS = {"w2": ["alpha", "linux"], "w3": ["beta", "linux"], "w4": ["gamma", "linux"]}


def pytest_configure(config):
    config.addinivalue_line("markers", "ansible: playbook tests against a real sshd and primary")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the playbook tests connect as root to a local sshd; run them as root"
    if not Path(SSHD).exists():
        return "sshd is not installed (tests/run.sh installs openssh-server)"
    if shutil.which("ansible-playbook", path=str(BIN)) is None:
        return "ansible-core is not installed in the venv"
    return None


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    server = start_sshd(tmp_path_factory.mktemp("sshd"), ADDRESSES)
    yield server
    stop_sshd(server)


@dataclass
class Host:
    name: str
    address: str
    root: Path
    tags: list[str]

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def pidfile(self) -> Path:
        return self.root / "run" / "agent.pid"

    @property
    def log(self) -> Path:
        return self.root / "log" / "agent.log"

    def agent_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None


@dataclass
class Lab:
    primary: Primary
    hosts: dict[str, Host]
    inventory: Path
    root: Path
    env: dict

    def playbook(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                str(self.inventory),
                str(REPO / "playbooks" / name),
                *args,
            ],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=600,
            cwd=self.root,
        )
        with open(self.root / "ansible-output.log", "a") as f:
            f.write(f"=== {name} {args}\n{result.stdout}\n{result.stderr}\n")
        if check:
            assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
        return result


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP as {host: {"ok": n, "changed": n, ...}}."""
    hosts = {}
    for line in output.split("PLAY RECAP", 1)[1].splitlines():
        m = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if m:
            hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return hosts


def write_inventory(
    path: Path, sshd: Sshd, primary: Primary, hosts: dict[str, Host], wheelhouse: Path
):
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    lines = ["[workers]"]
    for h in hosts.values():
        lines.append(
            f"{h.name} ansible_host={h.address} "
            f"cifleet_worker_tags='{json.dumps(h.tags)}' "
            f"cifleet_worker_install_dir={h.root}/opt "
            f"cifleet_worker_home={h.home} "
            f"cifleet_worker_config_dir={h.root}/etc "
            f"cifleet_worker_log_dir={h.root}/log "
            f"cifleet_worker_pidfile={h.pidfile}"
        )
    lines += [
        "",
        "[workers:vars]",
        "ansible_user=root",
        f"ansible_port={sshd.port}",
        f"ansible_ssh_private_key_file={sshd.client_key}",
        # Host keys stay checked: known_hosts holds the generated host key.
        "ansible_ssh_common_args='-o StrictHostKeyChecking=yes "
        f"-o UserKnownHostsFile={sshd.known_hosts}'",
        f"ansible_python_interpreter={python}",
        f"cifleet_worker_python={python}",
        f"cifleet_worker_primary_url={primary.url}",
        f"cifleet_worker_ca_file={primary.ca_file}",
        "cifleet_worker_secret_source=api",
        f"cifleet_worker_admin_token_file={primary.data_dir / 'admin.token'}",
        f"cifleet_worker_source_dir={REPO}",
        f"cifleet_worker_wheelhouse={wheelhouse}",
        f"cifleet_worker_controller_python={sys.executable}",
        "cifleet_worker_user=root",
        "cifleet_worker_group=root",
        "cifleet_worker_create_user=false",
        "cifleet_worker_service_manager=none",
        "cifleet_worker_stop_timeout=30",
        "cifleet_worker_wait_for_runs_timeout=60",
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def lab(sshd, tmp_path_factory):
    """A primary, three hosts and an inventory; every agent is stopped afterwards, and the
    SSH connections Ansible keeps open (ControlPersist) are closed."""
    root = passable(tmp_path_factory.mktemp("lab"))  # the agents' jobs run as their own uids
    primary = init_primary(root, "--primary-worker-slots", "0", "--heartbeat-timeout", "10")
    hosts = {}
    for (name, tags), address in zip(HOST_TAGS.items(), ADDRESSES, strict=True):
        hosts[name] = Host(name, address, root / "hosts" / name, tags)
        hosts[name].root.mkdir(parents=True)
    inventory = root / "inventory"
    write_inventory(inventory, sshd, primary, hosts, root / "wheelhouse")
    control_dir = root / "ssh-control"
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_LOCAL_TEMP": str(root / "ansible-local"),
        # This lab's own, not ~/.ansible/cp: the masters are closed at the end.
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    try:
        primary.start()
        yield Lab(primary, hosts, inventory, root, env)
    finally:
        stop_agents(hosts.values())
        close_ssh_masters(control_dir)
        primary.close()


def stop_agents(hosts) -> None:
    """SIGQUIT (stop now) to the agents the playbooks started; SIGKILL to any still up
    after 20 s."""
    agents = []
    for host in hosts:
        pid = host.agent_pid()
        if pid:
            with contextlib.suppress(psutil.Error):
                agents.append(psutil.Process(pid))
                agents[-1].send_signal(signal.SIGQUIT)
    _, alive = psutil.wait_procs(agents, timeout=20)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


def close_ssh_masters(control_dir: Path) -> None:
    if not control_dir.is_dir():
        return
    for socket_path in control_dir.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "lab"],
            capture_output=True,
            timeout=30,
        )

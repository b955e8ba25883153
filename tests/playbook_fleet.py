"""A primary, container hosts (tests/containers.py) and ansible-playbook runs against them,
with inventories that leave every role variable at its default (systemd unit, the `cifleet`
user, /opt/cifleet, /var/lib/cifleet) except the fleet's own: primary URL, CA, token. Used by
tests/ansible and bench/add_workers.py."""

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import containers
from fleet import Primary, init_primary

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The playbook tests' fleet: host name -> (Debian release, tags at the primary).
FLEET = {
    "w1": ("bookworm", ["alpha", "linux"]),
    "w2": ("bookworm", ["beta", "linux"]),
    "w3": ("trixie", ["gamma", "linux"]),
}
# Seconds without a poll before the primary counts a worker inactive (and its runs lost).
HEARTBEAT_TIMEOUT = 20


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP as {host: {"ok": n, "changed": n, ...}}."""
    hosts = {}
    for line in output.split("PLAY RECAP", 1)[1].splitlines():
        m = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if m:
            hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return hosts


@dataclass
class Fleet:
    """The session's primary, hosts and the environment ansible-playbook runs in."""

    primary: Primary
    lab: containers.HostLab
    root: Path
    env: dict
    inventory: Path
    # Each host's tags at the primary (cifleet_worker_tags in the inventory).
    tags: dict[str, list[str]] = field(default_factory=dict)
    # The cifleet source the playbooks install (a test may roll out a bumped copy).
    source_dir: Path = REPO

    @property
    def hosts(self) -> dict[str, containers.TestHost]:
        return self.lab.hosts

    def inventory_for(self, names: list[str], path: Path | None = None, **host_vars) -> Path:
        """An inventory of these hosts in the `workers` group, the role left at its defaults."""
        path = path or self.root / f"inventory-{'-'.join(names)}"
        lines = ["[workers]"]
        for name in names:
            host = self.hosts[name]
            tags = self.tags.get(name, [])
            extra = "".join(f" {k}={v}" for k, v in host_vars.get(name, {}).items())
            tags_var = f"cifleet_worker_tags='{json.dumps(tags)}'"
            lines.append(f"{name} ansible_host={host.address} {tags_var}{extra}")
        lines += [
            "",
            "[workers:vars]",
            "ansible_user=root",
            f"ansible_ssh_private_key_file={self.lab.client_key}",
            # Host keys stay checked: known_hosts holds each host's generated key.
            "ansible_ssh_common_args='-o StrictHostKeyChecking=yes "
            f"-o UserKnownHostsFile={self.lab.known_hosts}'",
            "ansible_python_interpreter=/usr/bin/python3",
            f"cifleet_worker_primary_url={self.primary.url}",
            f"cifleet_worker_ca_file={self.primary.ca_file}",
            f"cifleet_worker_admin_token_file={self.primary.data_dir / 'admin.token'}",
            # The session's own wheelhouse cache (the default is .wheelhouse in the source).
            f"cifleet_worker_wheelhouse={self.root / 'wheelhouse'}",
        ]
        if self.source_dir != REPO:
            lines.append(f"cifleet_worker_source_dir={self.source_dir}")
        path.write_text("\n".join(lines) + "\n")
        return path

    def log(self, run_id: int, job: str) -> bytes:
        """A job's log so far (b"" while the job has none)."""
        status, _, body = self.primary.client.request(
            "GET", f"/api/v1/runs/{run_id}/jobs/{job}/log"
        )
        return body if status == 200 else b""

    def use_source(self, source: Path) -> None:
        """Install from `source` from now on (the session's inventory is rewritten)."""
        self.source_dir = source
        self.inventory_for(list(self.tags), self.inventory)

    def playbook(
        self, name: str, *args: str, inventory: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self._argv(name, args, inventory),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=600,
            cwd=self.root,
        )
        self._record(name, args, result.stdout, result.stderr)
        if check:
            assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
        return result

    def start_playbook(
        self, name: str, *args: str, inventory: Path | None = None
    ) -> subprocess.Popen:
        """A playbook run in the background (finish it with finish_playbook)."""
        return subprocess.Popen(
            self._argv(name, args, inventory),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=self.root,
        )

    def finish_playbook(self, proc: subprocess.Popen, name: str) -> str:
        stdout, stderr = proc.communicate(timeout=600)
        self._record(name, ("background",), stdout, stderr)
        assert proc.returncode == 0, stdout[-6000:] + stderr[-3000:]
        return stdout

    def _argv(self, name: str, args, inventory: Path | None) -> list[str]:
        inventory = inventory or self.inventory
        playbook = REPO / "playbooks" / name
        return [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), *args]

    def _record(self, name: str, args, stdout: str, stderr: str) -> None:
        with open(self.root / "ansible-output.log", "a") as f:
            f.write(f"=== {name} {args}\n{stdout}\n{stderr}\n")

    def forget_connections(self, host: containers.TestHost) -> None:
        """Close Ansible's SSH master to a host that went down: a reused one to a host that
        came back at the same address fails in odd ways."""
        socket_path = self.root / "ssh" / f"{host.address}-22-root"
        if socket_path.exists():
            subprocess.run(
                ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", host.address],
                capture_output=True,
                timeout=30,
            )
            socket_path.unlink(missing_ok=True)

    def close(self) -> None:
        for host in self.hosts.values():
            self.forget_connections(host)


def start_fleet(
    root: Path, lab: containers.HostLab, tags: dict[str, list[str]], *serve_args: str
) -> Fleet:
    """Serve a primary on the hosts' bridge and write the inventory of the hosts in `tags`.

    The primary listens on this machine's address on the bridge, at ports reserved there:
    the hosts reach it there, and its certificate names it."""
    primary = init_primary(root, "--primary-worker-slots", "0", *serve_args, host=lab.gateway)
    try:
        primary.start()
    except BaseException:
        primary.close()
        raise
    (root / "ssh").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_LOCAL_TEMP": str(root / "ansible-local"),
        # One master per host in the session's folder, so it can be closed by name.
        "ANSIBLE_SSH_CONTROL_PATH": str(root / "ssh") + "/%%h-%%p-%%r",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    fleet = Fleet(primary, lab, root, env, root / "inventory", tags)
    fleet.inventory_for(list(tags), fleet.inventory)
    return fleet

"""Real test hosts: systemd containers (`systemd-nspawn`) booted from a cached minimal Debian
tree, each in its own network namespace, on a bridge of this session's own subnet.

- The tree is built once per machine by `mmdebstrap` (Debian's package) and cached under
  CACHE, keyed by everything that goes into it; every host boots from an overlay on it (its
  own upper folder on disk), so the tree stays pristine and a host keeps its changes across
  a reboot.
- A session takes one /24 (10.231.S.0/24, S locked by a file for the session's lifetime):
  the bridge `cfbrS` holds 10.231.S.1, where the session's primary listens; host i gets
  10.231.S.(10+i) in its namespace `cfS-NAME`, behind a veth pair. The subnet is this
  session's alone, so nothing else binds its addresses or ports. Forwarding stays off: the
  hosts reach this machine and each other, nothing else.
- Each host gets its own SSH host key (known_hosts is written from it, so host keys stay
  checked) and the session's client key for root.
- Everything is torn down at the end: containers powered off (or killed), cgroups removed
  depth-first, namespaces, links and mounts removed; `HostLab.close` then looks for any of
  them still there (the fixture fails the run if it finds one). A session that died
  without tearing down is cleaned up by the next one that takes its subnet.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("CIFLEET_TEST_CACHE", "/var/cache/cifleet-tests"))
LOCKS = Path("/run/cifleet-tests")
MIRROR = os.environ.get("CIFLEET_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What a minimal host needs: systemd as PID 1, sshd, python3 (the role's requirements; no
# python3-venv: the role makes its venv without pip), ip and ps for the tests.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "iproute2",
    "procps",
)
# Run inside the finished tree (as $1). Host keys are per host (written before each first
# boot); timers that would wake up apt in the middle of a test are masked.
CUSTOMIZE = (
    'rm -f "$1"/etc/ssh/ssh_host_*',
    'printf "HostKey /etc/ssh/ssh_host_ed25519_key\\nUseDNS no\\n" '
    '> "$1"/etc/ssh/sshd_config.d/cifleet-test.conf',
    "for t in apt-daily apt-daily-upgrade dpkg-db-backup e2scrub_all fstrim; do "
    'ln -sf /dev/null "$1/etc/systemd/system/$t.timer"; done',
    'mkdir -p -m 0700 "$1"/root/.ssh',
)
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
SUBNET_PREFIX = "10.231"


def skip_reason() -> str | None:
    """Why container hosts cannot run here, or None."""
    if os.geteuid() != 0:
        return "container hosts need root"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("mmdebstrap", "mmdebstrap")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (tests/run.sh installs {package})"
    if not all(root.is_dir() for root in CGROUP_ROOTS):
        return "this machine's cgroup layout is not the hybrid one the hosts are made for"
    return None


def keygen(path: Path, comment: str = "") -> None:
    """A new ed25519 key pair at `path` and `path`.pub (replacing any there)."""
    for old in (path, path.with_name(path.name + ".pub")):
        old.unlink(missing_ok=True)
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))


def _run(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


# -- The tree -------------------------------------------------------------------------------


def tree(release: str) -> Path:
    """The cached tree for a Debian release, built on first use (about 30-40 s, 270 MB)."""
    recipe = {"release": release, "mirror": MIRROR, "packages": PACKAGES, "hooks": CUSTOMIZE}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    trees = CACHE / "trees"
    trees.mkdir(parents=True, exist_ok=True)
    path = trees / f"{release}-{key}"
    with open(trees / f".{release}-{key}.lock", "w") as lock:
        # Two sessions that need the same tree: the second waits for the first's build.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / "etc" / "os-release").exists():
            return path
        staging = trees / f".{release}-{key}.building"
        shutil.rmtree(staging, ignore_errors=True)
        args = [
            "mmdebstrap",
            "--variant=minbase",
            "--include=" + ",".join(PACKAGES),
            *[f"--customize-hook={hook}" for hook in CUSTOMIZE],
            release,
            str(staging),
            MIRROR,
        ]
        result = subprocess.run(args, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"mmdebstrap {release} failed:\n{result.stderr[-4000:]}")
        (staging / "etc" / "cifleet-test-tree.json").write_text(json.dumps(recipe) + "\n")
        staging.rename(path)
    return path


# -- The session's network ------------------------------------------------------------------


class Subnet:
    """This session's 10.231.S.0/24 and its bridge; S held by a lock file."""

    def __init__(self) -> None:
        LOCKS.mkdir(parents=True, exist_ok=True)
        for index in range(256):
            lock = open(LOCKS / f"subnet-{index}.lock", "w")  # noqa: SIM115 - held until close()
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self.index, self._lock = index, lock
            break
        else:
            raise RuntimeError("no free test subnet (256 sessions at once?)")
        self.bridge = f"cfbr{self.index}"
        self.gateway = f"{SUBNET_PREFIX}.{self.index}.1"
        reclaim(self.index)
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def address(self, number: int) -> str:
        return f"{SUBNET_PREFIX}.{self.index}.{10 + number}"

    def close_bridge(self) -> None:
        _run("ip", "link", "del", self.bridge, check=False)

    def close(self) -> None:
        """Remove the bridge and give the subnet back."""
        self.close_bridge()
        self._lock.close()


def _cgroup_name(index: int, name: str) -> str:
    return f"cifleet-test-{index}-{name}"


def leftovers(index: int) -> list[str]:
    """What exists of subnet `index`'s hosts: processes, cgroups, mounts, namespaces, links.
    One line each; none once its session tore down."""
    found = []
    hosts_dir = f"/cifleet-test-hosts-{index}/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"systemd-nspawn") and hosts_dir.encode() in b" ".join(argv):
                found.append(f"process {proc.name}: {b' '.join(argv).decode(errors='replace')}")
    for root in CGROUP_ROOTS:
        found += [f"cgroup {group}" for group in root.glob(_cgroup_name(index, "") + "*")]
    for line in Path("/proc/self/mounts").read_text().splitlines():
        if hosts_dir in line.split()[1]:
            found.append(f"mount {line.split()[1]}")
    netns = Path("/run/netns")
    if netns.exists():
        found += [f"netns {ns.name}" for ns in netns.glob(f"cf{index}-*")]
    for link in json.loads(_run("ip", "-j", "link", "show").stdout or "[]"):
        name = link["ifname"]
        if name == f"cfbr{index}" or name.startswith(f"cf{index}h"):
            found.append(f"link {name}")
    return found


def reclaim(index: int) -> None:
    """Remove what a dead session left behind on subnet `index`."""
    prefix = _cgroup_name(index, "")
    for root in CGROUP_ROOTS:
        for group in root.glob(prefix + "*"):
            _kill_cgroup(group)
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    for line in mounts:
        target = line.split()[1]
        if f"/cifleet-test-hosts-{index}/" in target:
            _run("umount", "-l", target, check=False)
    for netns in Path("/run/netns").glob(f"cf{index}-*") if Path("/run/netns").exists() else []:
        _run("ip", "netns", "del", netns.name, check=False)
    links = _run("ip", "-j", "link", "show").stdout
    for link in json.loads(links or "[]"):
        if link["ifname"] == f"cfbr{index}" or link["ifname"].startswith(f"cf{index}h"):
            _run("ip", "link", "del", link["ifname"], check=False)


def _kill_cgroup(group: Path) -> None:
    """SIGKILL everything in a cgroup subtree and remove it, deepest first."""
    for _ in range(100):
        pids = [
            int(pid) for procs in group.rglob("cgroup.procs") for pid in procs.read_text().split()
        ]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    for sub in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        group.rmdir()


# -- Hosts ------------------------------------------------------------------------------------


@dataclass
class TestHost:
    """One container host. `boot()` starts it (systemd, or just sshd when `systemd` is
    false: a host without systemd), `poweroff()` shuts it down cleanly, `kill()` is a hard
    crash (network cut first, so not even a FIN gets out, then SIGKILL to everything)."""

    name: str
    release: str
    address: str
    subnet: Subnet
    number: int
    root: Path
    client_key: Path
    systemd: bool = True
    proc: subprocess.Popen | None = None
    boots: int = 0
    host_key_line: str = ""
    ssh_args: list[str] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return f"cf{self.subnet.index}-{self.name}"

    @property
    def veth(self) -> str:
        return f"cf{self.subnet.index}h{self.number}"

    @property
    def merged(self) -> Path:
        """The host's root filesystem as this machine sees it."""
        return self.root / "fs"

    @property
    def cgroup(self) -> str:
        return _cgroup_name(self.subnet.index, self.name)

    def create(self, known_hosts: Path) -> None:
        """Overlay on the tree, network namespace and link, host key, authorized_keys."""
        base = tree(self.release)
        for sub in ("upper", "work", "fs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        _run(
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={base},upperdir={self.root / 'upper'},workdir={self.root / 'work'}",
            str(self.merged),
        )
        _run("ip", "netns", "add", self.netns)
        peer = f"cf{self.subnet.index}c{self.number}"
        _run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", self.veth, "master", self.subnet.bridge)
        _run("ip", "link", "set", self.veth, "up")
        _run("ip", "link", "set", peer, "netns", self.netns)
        inside = ("ip", "-n", self.netns)
        _run(*inside, "link", "set", peer, "name", "host0")
        _run(*inside, "addr", "add", f"{self.address}/24", "dev", "host0")
        _run(*inside, "link", "set", "host0", "up")
        _run(*inside, "link", "set", "lo", "up")
        _run(*inside, "route", "add", "default", "via", self.subnet.gateway)

        ssh_dir = self.merged / "etc" / "ssh"
        key = ssh_dir / "ssh_host_ed25519_key"
        keygen(key, self.name)
        public = key.with_name(key.name + ".pub").read_text().split()
        self.host_key_line = f"{self.address} {public[0]} {public[1]}\n"
        with open(known_hosts, "a") as f:
            f.write(self.host_key_line)
        (self.merged / "etc" / "hostname").write_text(self.name + "\n")
        authorized = self.merged / "root" / ".ssh" / "authorized_keys"
        authorized.write_text(self.client_key.with_name(self.client_key.name + ".pub").read_text())
        authorized.chmod(0o600)
        self.ssh_args = [
            "ssh",
            "-i",
            str(self.client_key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "ConnectTimeout=5",
            # One connection per host for the tests' many commands; closed when it goes down.
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={self.root / 'ssh-control'}",
            "-o",
            "ControlPersist=120",
            f"root@{self.address}",
        ]

    def boot(self, timeout: float = 60) -> None:
        """Start the container and wait until sshd answers (and systemd is up)."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        _run("ip", "link", "set", self.veth, "up")
        for root in CGROUP_ROOTS:
            (root / self.cgroup).mkdir(exist_ok=True)
        procs = [str(root / self.cgroup / "cgroup.procs") for root in CGROUP_ROOTS]

        def own_cgroup() -> None:
            # nspawn puts its payload and supervisor groups below the cgroup it starts in.
            for path in procs:
                with open(path, "w") as f:
                    f.write(str(os.getpid()))

        if self.systemd:
            payload = ["-b"]
        else:
            # A host without systemd: sshd is PID 1 (as in many application containers).
            payload = ["--", "/bin/sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e"]
        log = open(self.root / "console.log", "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "-D",
                str(self.merged),
                f"--machine={self.name}",
                "--register=no",
                "--keep-unit",
                "--console=pipe",
                f"--network-namespace-path=/run/netns/{self.netns}",
                *payload,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=own_cgroup,  # noqa: PLW1509 - only writes its own pid
        )
        log.close()
        self.boots += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.console()[-3000:]}")
            probe = "systemctl is-system-running --wait" if self.systemd else "true"
            result = subprocess.run(
                [*self.ssh_args, probe], capture_output=True, text=True, timeout=timeout
            )
            if result.returncode == 0 or result.stdout.strip() in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} did not come up: {result.stdout}{result.stderr}"
                    f"{self.console()[-3000:]}"
                )
            time.sleep(0.2)

    def console(self) -> str:
        return (self.root / "console.log").read_text(errors="replace")

    def ssh(self, command: str, check: bool = True, timeout: float = 60) -> str:
        """Run a shell command on the host as root; its stdout."""
        result = subprocess.run(
            [*self.ssh_args, command], capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.name}: {command!r}: exit {result.returncode}: {result.stderr}"
            )
        return result.stdout

    def close_ssh(self) -> None:
        if (self.root / "ssh-control").exists():
            subprocess.run(
                [*self.ssh_args[:-1], "-O", "exit", self.ssh_args[-1]],
                capture_output=True,
                timeout=30,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poweroff(self, timeout: float = 30) -> None:
        """Clean shutdown: SIGTERM to nspawn makes the container's systemd power off."""
        if not self.running():
            return
        self.close_ssh()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._clean_cgroups()

    def kill(self) -> None:
        """A hard crash: the link goes down first, so nothing the dying processes send
        (FIN, RST) gets out; then every process of the container is SIGKILLed at once."""
        self.close_ssh()
        _run("ip", "link", "set", self.veth, "down")
        group = CGROUP_ROOTS[1] / self.cgroup
        if (group / "cgroup.kill").exists():
            (group / "cgroup.kill").write_text("1")
        if self.proc is not None:
            self.proc.wait(30)
        self._clean_cgroups()

    def _clean_cgroups(self) -> None:
        for root in CGROUP_ROOTS:
            _kill_cgroup(root / self.cgroup)

    def destroy(self) -> None:
        self.close_ssh()
        if self.running():
            self.poweroff()
        self._clean_cgroups()
        _run("umount", str(self.merged), check=False)
        _run("ip", "link", "del", self.veth, check=False)
        _run("ip", "netns", "del", self.netns, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _each(hosts: list[TestHost], action, suppress: bool = False) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(action, host) for host in hosts]
    for future in futures:
        if not suppress:
            future.result()


class HostLab:
    """The session's hosts: a subnet, a client key, a known_hosts file, and the hosts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.hosts: dict[str, TestHost] = {}
        self._numbers = 0
        self.client_key = root / "client_ed25519"
        keygen(self.client_key, "cifleet-tests")
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text("")
        self.subnet = Subnet()
        # The overlays live under a folder named by the subnet, so reclaim() finds them.
        self.hosts_dir = CACHE / "run" / f"cifleet-test-hosts-{self.subnet.index}"
        shutil.rmtree(self.hosts_dir, ignore_errors=True)

    @property
    def gateway(self) -> str:
        """This machine's address as the hosts reach it (the primary listens here)."""
        return self.subnet.gateway

    def prepare(self, releases: list[str]) -> None:
        """Build the trees these releases need side by side (a no-op once cached)."""
        with ThreadPoolExecutor(max_workers=len(releases)) as pool:
            list(pool.map(tree, sorted(set(releases))))

    def add(self, name: str, release: str = "bookworm", systemd: bool = True) -> TestHost:
        # Never reused in a session: an address (and its known_hosts line) is one host's.
        self._numbers += 1
        number = self._numbers
        host = TestHost(
            name=name,
            release=release,
            address=self.subnet.address(number),
            subnet=self.subnet,
            number=number,
            root=self.hosts_dir / name,
            client_key=self.client_key,
            systemd=systemd,
        )
        self.hosts[name] = host
        host.create(self.known_hosts)
        return host

    def boot(self, hosts: list[TestHost] | None = None) -> None:
        """Boot hosts side by side."""
        _each(hosts or list(self.hosts.values()), TestHost.boot)

    def close(self) -> list[str]:
        """Tear everything down; what was still there afterwards (removed now), one line
        each: a non-empty list is a teardown bug."""
        _each(list(self.hosts.values()), TestHost.destroy, suppress=True)
        self.subnet.close_bridge()
        left = leftovers(self.subnet.index)
        if left:
            reclaim(self.subnet.index)
        shutil.rmtree(self.hosts_dir, ignore_errors=True)
        self.subnet.close()
        return left

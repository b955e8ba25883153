"""Build the agent's wheelhouse for each kind of worker host, on the controller.

    wheelhouse.py --source DIR --cache DIR --version V --host 3.13,x86_64,2.41 [--host ...]

prints one JSON list, an object per --host (Python major.minor, machine, glibc version):
{"host", "key", "archive", "sha256", "built"}; the archives are built side by side. Each
archive (one tar of wheels: the agent, its dependencies for that interpreter and platform,
and pip, unpacked, which the host runs from there) is cached under its key, so it is built once
per agent version, dependency list (pyproject.toml), interpreter and platform, and its
checksum stays the same until one of them changes. Other versions' archives are removed
from the cache.

The dependency wheels are downloaded for the host's interpreter (`pip download
--python-version --platform --only-binary=:all:`), not built for the controller's, so the
controller needs a package index (or pip's find-links) but not the hosts' Pythons; the
agent itself is pure Python and built from the source tree.
"""

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OLDEST_GLIBC_MINOR = 5  # manylinux1
# The legacy manylinux names and the glibc version each one stands for (PEP 600).
LEGACY_MANYLINUX = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


def platform_tags(machine: str, glibc: str) -> list[str]:
    """Every wheel platform tag a host with this glibc and machine can install, newest
    first (pip's --platform takes each one literally)."""
    major, minor = (int(part) for part in glibc.split(".")[:2])
    if major != 2:
        raise ValueError(f"glibc {glibc}: only glibc 2.x hosts are supported")
    tags = [f"manylinux_2_{m}_{machine}" for m in range(minor, OLDEST_GLIBC_MINOR - 1, -1)]
    tags += [f"{name}_{machine}" for name, m in LEGACY_MANYLINUX.items() if m <= minor]
    return tags


def python_tag(version: str) -> str:
    """ "3.13" -> "cp313" (CPython only: the agent's dependencies ship CPython wheels)."""
    major, minor = version.split(".")[:2]
    return f"cp{int(major)}{int(minor)}"


# Part of the cache key: an archive laid out differently is another archive.
ARCHIVE_FORMAT = 2


def cache_key(version: str, pyproject: bytes, python: str, machine: str, glibc: str) -> str:
    deps = hashlib.sha256(pyproject).hexdigest()[:12]
    major, minor = glibc.split(".")[:2]
    platform = f"manylinux_{major}_{minor}_{machine}"
    return f"cifleet-{version}-{python_tag(python)}-{platform}-{deps}-f{ARCHIVE_FORMAT}"


# Where the archive holds pip, unpacked: the host runs it from there (PYTHONPATH), which is
# faster than from its wheel and needs no pip in the venv.
PIP_FOLDER = "_pip"


def write_archive(wheels: list[Path], archive: Path, pip_wheel: Path | None = None) -> None:
    """A tar of the wheels (and pip's wheel unpacked under PIP_FOLDER) with fixed metadata:
    the same wheels give the same bytes."""

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for wheel in sorted(wheels, key=lambda p: p.name):
            add(tar, wheel.name, wheel.read_bytes())
        if pip_wheel is not None:
            with zipfile.ZipFile(pip_wheel) as z:
                for member in sorted(z.namelist()):
                    if not member.endswith("/"):
                        add(tar, f"{PIP_FOLDER}/{member}", z.read(member))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        raise SystemExit(f"pip {args[0]} failed:\n{result.stderr[-3000:]}")


def agent_wheel(source: Path, version: str, cache: Path, deps: str) -> Path:
    """The agent's wheel (pure Python), built once per version and dependency list."""
    folder = cache / f"agent-{version}-{deps}"
    found = sorted(folder.glob("cifleet-*.whl"))
    if found:
        return found[0]
    staging = Path(tempfile.mkdtemp(prefix=".agent-", dir=cache))
    try:
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(staging), str(source))
        built = sorted(staging.glob("cifleet-*.whl"))
        if len(built) != 1:
            raise SystemExit(f"pip wheel made {built} from {source}, not one cifleet wheel")
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(folder.glob("cifleet-*.whl"))[0]


def build(source: Path, cache: Path, version: str, python: str, machine: str, glibc: str):
    cache.mkdir(parents=True, exist_ok=True)
    pyproject = (source / "pyproject.toml").read_bytes()
    key = cache_key(version, pyproject, python, machine, glibc)
    archive = cache / f"{key}.tar"
    with open(cache / f".{key}.lock", "w") as lock:
        # Two playbooks at once build each archive once.
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = False
        if not archive.exists():
            deps = hashlib.sha256(pyproject).hexdigest()[:12]
            wheel = agent_wheel(source, version, cache, deps)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
            try:
                platforms = [
                    arg for tag in platform_tags(machine, glibc) for arg in ("--platform", tag)
                ]
                pip(
                    "download",
                    "--quiet",
                    "--only-binary=:all:",
                    "--dest",
                    str(staging),
                    "--python-version",
                    python,
                    "--implementation",
                    "cp",
                    "--abi",
                    python_tag(python),
                    *platforms,
                    str(wheel),
                    "pip",
                )
                wheels = sorted(staging.glob("*.whl"))
                pips = [w for w in wheels if w.name.startswith("pip-")]
                if wheel.name not in [w.name for w in wheels] or len(pips) != 1:
                    raise SystemExit(f"the wheelhouse for {key} lacks the agent or pip: {wheels}")
                partial = archive.with_name(archive.name + ".partial")
                write_archive([w for w in wheels if w not in pips], partial, pips[0])
                os.replace(partial, archive)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            built = True
    return {"key": key, "archive": str(archive), "sha256": sha256_of(archive), "built": built}


def prune(cache: Path, version: str) -> None:
    """Remove other agent versions' archives and wheels: they are rebuilt when needed."""
    for path in cache.iterdir():
        name = path.name.lstrip(".")  # the lock files too
        if name.startswith(("cifleet-", "agent-")) and not name.startswith(
            (f"cifleet-{version}-", f"agent-{version}-")
        ):
            with contextlib.suppress(OSError):
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the cifleet source tree")
    parser.add_argument("--cache", type=Path, required=True, help="the wheelhouse cache folder")
    parser.add_argument("--version", required=True, help="the agent version in the source")
    parser.add_argument(
        "--host",
        action="append",
        required=True,
        metavar="PYTHON,MACHINE,GLIBC",
        help="a kind of host, e.g. 3.13,x86_64,2.41 (repeat for more)",
    )
    args = parser.parse_args()
    source = args.source.resolve()
    args.cache.mkdir(parents=True, exist_ok=True)
    # The agent's wheel first (all archives share it), then the downloads side by side.
    pyproject = (source / "pyproject.toml").read_bytes()
    agent_wheel(source, args.version, args.cache, hashlib.sha256(pyproject).hexdigest()[:12])
    kinds = [tuple(kind.split(",")) for kind in args.host]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda k: build(source, args.cache, args.version, *k), kinds))
    prune(args.cache, args.version)
    print(json.dumps([dict(r, host=kind) for r, kind in zip(results, args.host, strict=False)]))


if __name__ == "__main__":
    main()

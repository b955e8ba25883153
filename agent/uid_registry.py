"""The host's job uids: which uid of a job-uid range belongs to which pipeline workspace.

Every agent running as root on a host gives each pipeline's jobs a uid of their own
(agent.identity). Several agents may share a host, each with its own home, so the claims
live in one host-wide file, changed only under an flock: two agents never hand out the same
uid, whatever ranges they were given.

A claim names the workspace it is for. The workspace is created in the same locked step as
the claim and removed before the claim is dropped, so a claim whose workspace is gone is
stale (an agent died between the two steps, or its home and work dir were deleted): it may
be taken over, after the uid's leftovers (processes, files in the shared temporary folders)
are cleared.
"""

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.home import write_atomic

REGISTRY_DIR = Path("/var/lib/cifleet-job-uids")
CLAIMS_FILE = "claims.json"
LOCK_FILE = "lock"


@dataclass(frozen=True)
class Claim:
    home: str  # the agent home that holds it
    pipeline: str
    workspace: str  # absolute; the claim is stale once this is gone

    def stale(self) -> bool:
        return not os.path.lexists(self.workspace)


class Claims:
    """The claims, read under the registry's lock. Every change is written at once
    (atomically), before the caller acts on it: a crash never leaves a workspace owned by
    a uid that no claim names."""

    def __init__(self, claims: dict[int, Claim], path: Path) -> None:
        self._claims = claims
        self._path = path

    def items(self) -> list[tuple[int, Claim]]:
        return sorted(self._claims.items())

    def get(self, uid: int) -> Claim | None:
        return self._claims.get(uid)

    def of(self, home: str, pipeline: str) -> int | None:
        """The uid claimed for this home's pipeline, if any."""
        return next(
            (u for u, c in self._claims.items() if c.home == home and c.pipeline == pipeline), None
        )

    def of_home(self, home: str) -> dict[str, int]:
        return {c.pipeline: u for u, c in self._claims.items() if c.home == home}

    def put(self, uid: int, claim: Claim) -> None:
        self._claims[uid] = claim
        self._save()

    def drop(self, uid: int) -> None:
        if self._claims.pop(uid, None) is not None:
            self._save()

    def _save(self) -> None:
        try:
            write_atomic(self._path, self.to_json())
        except OSError as e:
            raise RegistryError(f"cannot write the job uid registry {self._path}: {e}") from e

    def to_json(self) -> bytes:
        data = {
            str(u): {"home": c.home, "pipeline": c.pipeline, "workspace": c.workspace}
            for u, c in sorted(self._claims.items())
        }
        return (json.dumps(data, indent=1) + "\n").encode()


class RegistryError(Exception):
    """The registry cannot be read or written; the message says where and why."""


class UidRegistry:
    def __init__(self, directory: Path = REGISTRY_DIR) -> None:
        self.directory = Path(directory)

    @contextlib.contextmanager
    def locked(self) -> Iterator[Claims]:
        """The claims, under the host-wide lock while the block runs."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise RegistryError(f"cannot open the job uid registry {self.directory}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield Claims(self._read(), self.directory / CLAIMS_FILE)
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> dict[int, Claim]:
        path = self.directory / CLAIMS_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            # Refusing is safer than guessing: an empty registry would hand out uids in use.
            raise RegistryError(f"cannot read the job uid registry {path}: {e}") from e
        claims = {}
        for key, value in data.items() if isinstance(data, dict) else []:
            if key.isdigit() and isinstance(value, dict):
                fields = [value.get(k) for k in ("home", "pipeline", "workspace")]
                if all(isinstance(f, str) for f in fields):
                    claims[int(key)] = Claim(*fields)
        return claims

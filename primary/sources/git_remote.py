"""Which commit a ref names now: `git ls-remote` on the primary, when a run is triggered by
hand or through the API (a push names its commit itself). The run records that commit, so
it builds exactly it, wherever the branch is by the time a worker starts.

The credentials reach git through agent.git_auth (environment, a private ssh-agent), never
argv or the primary's disk; what git says is scrubbed of them before anyone sees it.
"""

import subprocess
import tempfile

from agent.git_auth import GitAuthError, base_env, remote_env, scrub, ssh_env
from primary.errors import ApiError, BadRequest
from primary.pipelines.source_spec import url_kind

LS_REMOTE_SECONDS = 30.0
MAX_OUTPUT_BYTES = 1 << 20


class SourceUnavailable(ApiError):
    """The repository could not be asked (down, refused the credentials, no such repo)."""

    status = 502
    code = "source_unavailable"


def full_ref(ref: str) -> list[str]:
    """The refs a source's `ref` may name: itself when it is a full ref, else the branch,
    then the tag."""
    if ref.startswith("refs/"):
        return [ref]
    return [f"refs/heads/{ref}", f"refs/tags/{ref}"]


def resolve(settings: dict, ref: str, secrets: dict[str, str]) -> tuple[str, str]:
    """(full ref, commit id) of `ref` in the source `settings` describe; `secrets`: the
    pipeline's secret values by name. BadRequest when the ref is not there,
    SourceUnavailable when the repository cannot be asked."""
    candidates = full_ref(ref)
    listed = _ls_remote(settings, candidates, secrets)
    for candidate in candidates:
        if candidate in listed:
            return candidate, listed[candidate]
    raise BadRequest(f"ref: {ref!r} is neither a branch nor a tag of {settings['git']}")


def _ls_remote(settings: dict, refs: list[str], secrets: dict[str, str]) -> dict[str, str]:
    url = settings["git"]
    values = [secrets[settings[k]] for k in ("token", "ssh_key") if settings.get(k) in secrets]
    with tempfile.TemporaryDirectory(prefix="cifleet-ls-remote-") as home:
        env = base_env(home)
        ca_file = None
        if settings.get("ca"):
            ca_file = f"{home}/ca.pem"  # certificates, no secret; gone with the folder
            with open(ca_file, "w") as f:
                f.write(settings["ca"])
        try:
            if "token" in settings:
                token = secrets[settings["token"]]
                env |= remote_env(url, settings["username"], token, ca_file)
                return _run(url, refs, env, home, values)
            env |= remote_env(url, ca_file=ca_file)
            if url_kind(url) == "ssh":
                key = secrets.get(settings["ssh_key"]) if "ssh_key" in settings else None
                with ssh_env(settings["known_hosts"], key) as extra:
                    return _run(url, refs, env | extra, home, values)
            return _run(url, refs, env, home, values)
        except GitAuthError as e:
            raise SourceUnavailable(f"git: {scrub(str(e), values)}") from None


def _run(url: str, refs: list[str], env: dict, cwd: str, secrets: list[str]) -> dict[str, str]:
    try:
        result = subprocess.run(
            ["git", "ls-remote", "--", url, *refs],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=LS_REMOTE_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise SourceUnavailable(
            f"git ls-remote {url}: no answer within {LS_REMOTE_SECONDS:.0f} s"
        ) from None
    except OSError as e:
        raise SourceUnavailable(f"git: cannot run git on the primary: {e.strerror}") from None
    if result.returncode != 0:
        said = scrub(result.stderr.decode(errors="replace"), secrets)
        lines = [line.strip() for line in said.splitlines() if line.strip()][-3:]
        raise SourceUnavailable(f"git ls-remote {url} failed: {' / '.join(lines)[:1000]}")
    listed = {}
    for line in result.stdout[:MAX_OUTPUT_BYTES].decode(errors="replace").splitlines():
        sha, _, name = line.partition("\t")
        listed[name] = sha
    return listed

"""Pipeline secrets: values kept in the vault, set by admins, named in the pipeline YAML
(`secrets: [DEPLOY_KEY]`), sent only to the worker running the run, inside its assignment,
and masked as `***` in the job log by the agent before it is shipped."""

from primary.context import Primary
from primary.errors import BadRequest, NotFound
from primary.pipelines.pipelines import get_spec
from primary.pipelines.source_spec import source_secrets

MAX_SECRET_BYTES = 64 << 10
VAULT_KEY = "pipeline_secrets"
# The pipeline's webhook secret (primary/sources/webhooks.py makes and checks it); named
# here, with the pipeline's other vault entries, so a rename or delete moves it too.
HOOK_SECRET_ENTRY = "hook_secret/{pipeline}"


def _all(primary: Primary) -> dict[str, dict[str, str]]:
    try:
        return primary.vault.get(VAULT_KEY)
    except KeyError:
        return {}


def set_secret(primary: Primary, pipeline: str, name: str, value: bytes) -> dict:
    get_spec(primary, pipeline)
    if not (name.isidentifier() and name.isascii()):
        raise BadRequest("name: must be an environment variable name")
    if not value or len(value) > MAX_SECRET_BYTES:
        raise BadRequest(f"value: must be 1 to {MAX_SECRET_BYTES} bytes")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("value: must be UTF-8 text") from None
    if "\x00" in text:
        raise BadRequest("value: must not contain NUL")

    def add(secrets: dict) -> dict:
        secrets.setdefault(pipeline, {})[name] = text
        return secrets

    # One read-change-write with no other change in between (another primary's included).
    primary.vault.update(VAULT_KEY, add, {})
    return {"pipeline": pipeline, "name": name}


def names(primary: Primary, pipeline: str) -> list[str]:
    get_spec(primary, pipeline)
    return sorted(_all(primary).get(pipeline, {}))


def delete_secret(primary: Primary, pipeline: str, name: str) -> None:
    def remove(secrets: dict) -> dict:
        if name not in secrets.get(pipeline, {}):
            raise NotFound(f"pipeline {pipeline!r} has no secret {name!r}")
        del secrets[pipeline][name]
        return secrets

    primary.vault.update(VAULT_KEY, remove, {})


def missing(primary: Primary, spec: dict) -> list[str]:
    """Secrets the pipeline names that have no value."""
    have = _all(primary).get(spec["name"], {})
    return sorted(_wanted(spec) - set(have))


def overview(primary: Primary, pipeline: str) -> list[dict]:
    """Every secret the pipeline names or has, with whether it is set and used (never its
    value): [{"name", "set", "used"}] by name."""
    spec = get_spec(primary, pipeline)
    have, wanted = set(_all(primary).get(pipeline, {})), _wanted(spec)
    return [{"name": n, "set": n in have, "used": n in wanted} for n in sorted(have | wanted)]


def _wanted(spec: dict) -> set[str]:
    """The secrets a run of `spec` needs: its jobs', and its git source's credentials (which
    the agent masks like any other, and gives to no job that does not name it)."""
    return {n for job in spec["jobs"] for n in job.get("secrets", [])} | set(source_secrets(spec))


def value(primary: Primary, pipeline: str, name: str) -> str | None:
    return _all(primary).get(pipeline, {}).get(name)


def values_for(primary: Primary, spec: dict) -> dict[str, str]:
    """The values an assignment of this pipeline carries: only the names its jobs use."""
    have = _all(primary).get(spec["name"], {})
    return {n: have[n] for n in sorted(_wanted(spec)) if n in have}


def move_all(primary: Primary, old: str, new: str | None) -> None:
    """The pipeline's secrets and hook secret go to `new` (None: they are dropped). For a
    rename or delete, after the store's rows moved."""

    def move(secrets: dict) -> dict:
        values = secrets.pop(old, None)
        if new is not None and values:
            secrets[new] = values
        return secrets

    primary.vault.update(VAULT_KEY, move, {})
    taken: list = []

    def take(value):
        taken.append(value)
        return None  # the vault keeps no empty entry's value: None reads as "none made yet"

    primary.vault.update(HOOK_SECRET_ENTRY.format(pipeline=old), take)
    if new is not None and taken[0] is not None:
        primary.vault.update(HOOK_SECRET_ENTRY.format(pipeline=new), lambda _: taken[0])

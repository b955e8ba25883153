"""Parse and validate a pipeline definition (YAML) into a normalised spec. Pure functions.

Errors name the field and, where YAML knows it, the line, e.g.
`jobs[1].needs: unknown job 'biuld' (line 9)`.
"""

from typing import Any

import yaml

from agent.protocol import NAME_RE

DEFAULT_JOB_TIMEOUT = 3600
MAX_JOB_TIMEOUT = 7 * 24 * 3600
PIPELINE_KEYS = {"name", "tags", "env", "secrets", "jobs", "retries_on_lost"}
JOB_KEYS = {"name", "steps", "env", "secrets", "timeout", "needs"}


class SpecError(ValueError):
    def __init__(self, field: str, message: str, line: int | None = None):
        where = f" (line {line})" if line else ""
        super().__init__(f"{field}: {message}{where}")
        self.field = field
        self.line = line


def _line_index(node: yaml.Node, path: str, index: dict[str, int]) -> None:
    """Map field paths like `jobs[0].steps` to 1-based line numbers."""
    index[path or "(document)"] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = str(key.value)
            _line_index(value, f"{path}.{name}" if path else name, index)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, f"{path}[{i}]", index)


def parse_pipeline(text: str) -> dict[str, Any]:
    """YAML text → normalised spec dict. Raises SpecError."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise SpecError("yaml", str(exc.problem or exc), mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise SpecError("yaml", str(exc)) from None
    lines: dict[str, int] = {}
    if node is not None:
        _line_index(node, "", lines)
    return validate_pipeline(data, lines)


def validate_pipeline(data: Any, lines: dict[str, int] | None = None) -> dict[str, Any]:
    lines = lines or {}

    def fail(field: str, message: str) -> SpecError:
        return SpecError(field, message, lines.get(field))

    if not isinstance(data, dict):
        raise fail("(document)", "a pipeline is a mapping with name and jobs")
    for key in data:
        if key not in PIPELINE_KEYS:
            raise fail(
                str(key), f"unknown field; expected one of {', '.join(sorted(PIPELINE_KEYS))}"
            )
    name = _name(data.get("name"), "name", fail)
    tags = _names(data.get("tags", []), "tags", fail)
    env = _env(data.get("env", {}), "env", fail)
    secrets = _secret_names(data.get("secrets", []), "secrets", fail)
    retries = data.get("retries_on_lost", 1)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 10:
        raise fail("retries_on_lost", "must be a whole number from 0 to 10")
    raw_jobs = data.get("jobs")
    if not isinstance(raw_jobs, list) or not raw_jobs:
        raise fail("jobs", "must be a non-empty list of jobs")
    jobs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_jobs):
        where = f"jobs[{i}]"
        if not isinstance(raw, dict):
            raise fail(where, "a job is a mapping with name and steps")
        for key in raw:
            if key not in JOB_KEYS:
                raise fail(
                    f"{where}.{key}",
                    f"unknown field; expected one of {', '.join(sorted(JOB_KEYS))}",
                )
        job_name = _name(raw.get("name"), f"{where}.name", fail)
        if job_name in seen:
            raise fail(f"{where}.name", f"duplicate job name {job_name!r}")
        seen.add(job_name)
        steps = raw.get("steps")
        if (
            not isinstance(steps, list)
            or not steps
            or not all(isinstance(s, str) and s.strip() for s in steps)
        ):
            raise fail(f"{where}.steps", "must be a non-empty list of non-empty strings")
        for s, step in enumerate(steps):
            if "\x00" in step:
                raise fail(f"{where}.steps[{s}]", "contains a NUL character")
        timeout = raw.get("timeout", DEFAULT_JOB_TIMEOUT)
        if (
            not isinstance(timeout, int)
            or isinstance(timeout, bool)
            or not 1 <= timeout <= MAX_JOB_TIMEOUT
        ):
            raise fail(f"{where}.timeout", f"must be whole seconds from 1 to {MAX_JOB_TIMEOUT}")
        needs = _names(raw.get("needs", []), f"{where}.needs", fail)
        jobs.append(
            {
                "name": job_name,
                "steps": list(steps),
                "env": _env(raw.get("env", {}), f"{where}.env", fail),
                # Pipeline-wide secrets go to every job; the values come with the assignment.
                "secrets": sorted(
                    set(secrets)
                    | set(_secret_names(raw.get("secrets", []), f"{where}.secrets", fail))
                ),
                "timeout": timeout,
                "needs": needs,
            }
        )
    for i, job in enumerate(jobs):
        for need in job["needs"]:
            if need not in seen:
                raise fail(f"jobs[{i}].needs", f"unknown job {need!r}")
            if need == job["name"]:
                raise fail(f"jobs[{i}].needs", "a job cannot need itself")
    ordered = execution_order(jobs)
    if ordered is None:
        raise fail("jobs", "the needs form a cycle")
    return {"name": name, "tags": tags, "env": env, "retries_on_lost": retries, "jobs": ordered}


def execution_order(jobs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Jobs in a stable topological order (definition order where free), or None on a cycle."""
    done: set[str] = set()
    ordered: list[dict[str, Any]] = []
    pending = list(jobs)
    while pending:
        ready = next((j for j in pending if set(j["needs"]) <= done), None)
        if ready is None:
            return None
        pending.remove(ready)
        ordered.append(ready)
        done.add(ready["name"])
    return ordered


def _name(value: Any, field: str, fail) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise fail(
            field,
            "must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a "
            "letter or digit",
        )
    return value


def _names(value: Any, field: str, fail) -> list[str]:
    if not isinstance(value, list):
        raise fail(field, "must be a list")
    names = [_name(v, f"{field}[{i}]", fail) for i, v in enumerate(value)]
    if len(set(names)) != len(names):
        raise fail(field, "has duplicates")
    return names


def _secret_names(value: Any, field: str, fail) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and v.isidentifier() and v.isascii() for v in value
    ):
        raise fail(field, "must be a list of environment variable names")
    return list(value)


def _env(value: Any, field: str, fail) -> dict[str, str]:
    if not isinstance(value, dict):
        raise fail(field, "must be a mapping of variable names to values")
    env: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not key.isidentifier() or not key.isascii():
            raise fail(f"{field}.{key}", "is not a valid environment variable name")
        if isinstance(val, bool) or not isinstance(val, str | int | float):
            raise fail(f"{field}.{key}", "must be a string or a number")
        if "\x00" in str(val):
            raise fail(f"{field}.{key}", "contains a NUL character")
        env[key] = str(val)
    return env

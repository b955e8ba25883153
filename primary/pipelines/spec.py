"""Parse and validate a pipeline definition (YAML) into a normalised spec. Pure functions.

Errors name the field and, where YAML knows it, the line, e.g.
`jobs[1].needs: unknown job 'biuld' (line 9)`.

YAML aliases let a few hundred bytes stand for millions of nodes (the "billion laughs"), or
for a list that contains itself. Before anything is built, the definition must stay within
a budget: nesting depth, aliases, and the size it expands to (nodes and characters), each
measured without expanding anything.
"""

from typing import Any

import yaml

from agent.protocol import NAME_RE
from primary.pipelines.keep_spec import validate_keep
from primary.pipelines.notify_spec import validate_notify
from primary.pipelines.schedule_spec import validate_schedule
from primary.pipelines.source_spec import validate_parameters, validate_source

# libyaml's parser (in PyYAML's wheels) when present: the pure-Python one scans a whole flow
# collection before its first event, seconds for a megabyte of "[a,a,...". Both are safe.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 32  # a pipeline needs about 5 levels
MAX_ALIASES = 1000
MAX_NODES = 100_000  # after expanding aliases; a large real pipeline has a few thousand
MAX_CHARS = 4 << 20  # characters in scalars after expanding aliases (definitions are <= 1 MiB)
DEFAULT_JOB_TIMEOUT = 3600
MAX_JOB_TIMEOUT = 7 * 24 * 3600
PIPELINE_KEYS = {"name", "tags", "env", "secrets", "jobs", "retries_on_lost", "run_as_root"}
PIPELINE_KEYS |= {"source", "parameters", "notify", "keep", "schedule"}
JOB_KEYS = {"name", "steps", "env", "secrets", "timeout", "needs", "artifacts"}
MAX_ARTIFACT_PATTERNS = 32


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


def _check_events(text: str) -> None:
    """Depth, aliases and nodes, from the parser's events, before anything is built: the
    parser keeps its own stack, while composing recurses once per level (thousands of levels
    would be a RecursionError) and builds every node."""
    depth = aliases = nodes = 0
    for event in yaml.parse(text, Loader=LOADER):
        if isinstance(event, yaml.NodeEvent):
            nodes += 1
            if nodes > MAX_NODES:
                raise SpecError("yaml", f"more than {MAX_NODES} nodes", event.start_mark.line + 1)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError(
                    "yaml", f"nested deeper than {MAX_DEPTH} levels", event.start_mark.line + 1
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise SpecError(
                    "yaml", f"more than {MAX_ALIASES} aliases", event.start_mark.line + 1
                )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """What the document expands to, in nodes and characters, counted once per distinct
    node (so a bomb costs its size, not its expansion); a node inside itself is refused."""
    sizes: dict[int, tuple[int, int]] = {}
    below: set[int] = set()  # the nodes being measured: the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, measured_children = stack.pop()
        key = id(node)
        if measured_children:
            below.discard(key)
            nodes, chars = 1, 0
            if isinstance(node, yaml.ScalarNode):
                chars = len(node.value)
                if not _is_unicode(node.value):
                    line = node.start_mark.line + 1
                    raise SpecError("yaml", "a string is not valid Unicode (a surrogate)", line)
            for child in _children(node):
                nodes, chars = nodes + sizes[id(child)][0], chars + sizes[id(child)][1]
            if nodes > MAX_NODES or chars > MAX_CHARS:
                raise SpecError(
                    "yaml",
                    f"expands to more than {MAX_NODES} nodes or {MAX_CHARS} characters (aliases)",
                    node.start_mark.line + 1,
                )
            sizes[key] = (nodes, chars)
            continue
        if key in sizes:
            continue
        below.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in below:
                raise SpecError(
                    "yaml", "an alias refers to a node it is part of", child.start_mark.line + 1
                )
            if id(child) not in sizes:
                stack.append((child, False))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_pipeline(text: str) -> dict[str, Any]:
    """YAML text → normalised spec dict. Raises SpecError."""
    try:
        _check_events(text)
        loader = LOADER(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expansion(node)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
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
    as_root = data.get("run_as_root", False)
    if not isinstance(as_root, bool):
        raise fail("run_as_root", "must be true or false")
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
        if "artifacts" in raw:  # only when given, so specs stored before it compare equal
            jobs[-1]["artifacts"] = _artifact_patterns(raw["artifacts"], f"{where}.artifacts", fail)
    for i, job in enumerate(jobs):
        for need in job["needs"]:
            if need not in seen:
                raise fail(f"jobs[{i}].needs", f"unknown job {need!r}")
            if need == job["name"]:
                raise fail(f"jobs[{i}].needs", "a job cannot need itself")
    ordered = execution_order(jobs)
    if ordered is None:
        raise fail("jobs", "the needs form a cycle")
    spec = {"name": name, "tags": tags, "env": env, "retries_on_lost": retries, "jobs": ordered}
    if as_root:  # only when asked for, so specs stored before it existed compare equal
        spec["run_as_root"] = True
    if "source" in data:  # likewise
        spec["source"] = validate_source(data["source"], fail)
    if "parameters" in data:
        spec["parameters"] = validate_parameters(data["parameters"], env, fail)
    if "notify" in data:
        spec["notify"] = validate_notify(data["notify"], fail)
    if "keep" in data:  # the retention policy of this pipeline, instead of the fleet's
        spec["keep"] = validate_keep(data["keep"], fail)
    if "schedule" in data:
        spec["schedule"] = validate_schedule(data["schedule"], fail)
    return spec


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


def _artifact_patterns(value: Any, field: str, fail) -> list[str]:
    """Globs relative to the workspace (`dist/*.whl`, `reports/**`); never out of it."""
    if (
        not isinstance(value, list)
        or not 0 < len(value) <= MAX_ARTIFACT_PATTERNS
        or not all(isinstance(p, str) for p in value)
    ):
        raise fail(field, f"must be a list of 1 to {MAX_ARTIFACT_PATTERNS} paths or globs")
    for i, pattern in enumerate(value):
        parts = pattern.split("/")
        if (
            not 0 < len(pattern) <= 256
            or not pattern.isprintable()
            or "\\" in pattern
            or pattern.startswith("/")
            or ".." in parts
        ):
            raise fail(
                f"{field}[{i}]",
                "must be a path or glob inside the workspace (relative, no '..', at most 256"
                " printable characters)",
            )
    return list(value)

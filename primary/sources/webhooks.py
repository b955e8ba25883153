"""Push webhooks: a forge's delivery for one pipeline, verified with the pipeline's hook
secret, turned into a run of the pushed commit, once per delivery id.

What a push does (docs/api.md, "Webhooks"):
- a branch in the pipeline's `branches` (default: its ref): a run of the pushed commit
  (`after`), also after a force-push; the run checks out exactly that commit even when the
  branch has moved on by the time a worker starts it;
- a tag in its `tags`: a run of the tag;
- a deleted branch or tag, a branch or tag it does not list, any other ref: no run;
- the same delivery id again (a redelivery): no second run, the first answer's run id.

The answer says which, so the forge's delivery log shows why nothing ran. The work is
bounded before the body is parsed: its size is capped by the view, the signature is one
HMAC over those bytes, and nothing is parsed until it matches.
"""

import json
import secrets
import time

from primary.context import Primary
from primary.errors import ApiError, BadRequest, NotFound, Unauthorized
from primary.pipelines import pipelines
from primary.pipelines.secrets import HOOK_SECRET_ENTRY as SECRET_ENTRY
from primary.pipelines.source_spec import branch_matches, parameter_values
from primary.runs import runs
from primary.runs.scheduler import plan
from primary.sources import forges

MAX_HOOK_BYTES = 1 << 20  # a push of many commits is some tens of KiB


class BadSignature(Unauthorized):
    code = "bad_signature"


class UnknownRepository(NotFound):
    code = "unknown_repository"


def hook_secret(primary: Primary, pipeline: str) -> str:
    """The pipeline's hook secret, made on first use (once, also with several primaries)."""
    pipelines.get_spec(primary, pipeline)
    return primary.vault.setdefault(SECRET_ENTRY.format(pipeline=pipeline), secrets.token_hex(32))


def rotate_hook_secret(primary: Primary, pipeline: str) -> str:
    """A new hook secret; deliveries signed with the old one are refused from now on."""
    pipelines.get_spec(primary, pipeline)
    new = secrets.token_hex(32)
    primary.vault.update(SECRET_ENTRY.format(pipeline=pipeline), lambda old: new)
    return new


def _stored_secret(primary: Primary, pipeline: str) -> str | None:
    try:
        return primary.vault.get(SECRET_ENTRY.format(pipeline=pipeline))
    except KeyError:
        return None


def receive(primary: Primary, pipeline: str, headers, body: bytes) -> tuple[int, dict]:
    """One delivery: (HTTP status, answer). Raises 400 (not a forge's delivery, a push
    without its fields), 401 (bad signature), 404 (no such pipeline with a git source, or
    the push is of another repository)."""
    spec = _spec_with_source(primary, pipeline)
    try:
        delivery = forges.identify(headers)
    except forges.NotAWebhook as e:
        raise BadRequest(str(e)) from None
    secret = _stored_secret(primary, pipeline)
    if secret is None or not forges.verify(delivery.forge, headers, body, secret):
        raise BadSignature(
            f"the delivery is not signed with pipeline {pipeline!r}'s hook secret"
            f" (GET /api/v1/pipelines/{pipeline}/hook shows it)"
        )
    if delivery.kind == "ping":
        return 200, {"ok": True, "answer": "pong", "pipeline": pipeline}
    if delivery.kind != "push":
        return 200, {"ignored": f"a {delivery.forge} {delivery.event!r} event is not a push"}
    try:
        push = forges.parse_push(delivery.forge, json.loads(body))
    except (ValueError, RecursionError) as e:  # NotAWebhook, or not JSON at all
        raise BadRequest(f"not a push event: {e}") from None
    source = spec["source"]
    if forges.normalise_url(source["git"]) not in push.repository_urls:
        raise UnknownRepository(
            f"repository {push.repository} is not pipeline {pipeline!r}'s source ({source['git']})"
        )
    ignored = _ignored(source, push)
    return _record(primary, spec, delivery, push, ignored)


def _spec_with_source(primary: Primary, pipeline: str) -> dict:
    try:
        spec = pipelines.get_spec(primary, pipeline)
    except NotFound:
        spec = None
    if spec is None or not spec.get("source"):
        raise NotFound(f"no pipeline {pipeline!r} with a git source")
    return spec


def _ignored(source: dict, push: forges.Push) -> str | None:
    """Why the push makes no run, or None when it does."""
    for prefix, kind, filters in (
        ("refs/heads/", "branch", "branches"),
        ("refs/tags/", "tag", "tags"),
    ):
        if push.ref.startswith(prefix):
            name = push.ref.removeprefix(prefix)
            if push.deleted:
                return f"{kind} {name} was deleted: nothing to build"
            if not branch_matches(name, source[filters]):
                return f"{kind} {name} is not in the pipeline's {filters} {source[filters]}"
            return None
    return f"{push.ref} is neither a branch nor a tag"


def _record(
    primary: Primary, spec: dict, delivery, push: forges.Push, ignored: str | None
) -> tuple[int, dict]:
    """Record the delivery and, unless it is ignored, queue its run, in one transaction:
    the delivery row is inserted first, so of two copies of one delivery arriving together
    (through two primaries too) one inserts it and the other finds it."""
    name = spec["name"]
    run_id = None
    with primary.store.transaction() as conn:
        inserted = conn.execute(
            "INSERT INTO hook_deliveries (pipeline, delivery, forge, received_at, outcome)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (pipeline, delivery) DO NOTHING"
            " RETURNING pipeline",
            (name, delivery.delivery, delivery.forge, time.time(), ignored or "run"),
        ).fetchone()
        if inserted is None:
            row = conn.execute(
                "SELECT run_id, outcome FROM hook_deliveries WHERE pipeline = ? AND delivery = ?",
                (name, delivery.delivery),
            ).fetchone()
            answer = {"duplicate": True, "delivery": delivery.delivery, "run_id": row["run_id"]}
            if row["outcome"] != "run":
                answer["ignored"] = row["outcome"]
            return 200, answer
        if ignored is not None:
            return 200, {"ignored": ignored, "delivery": delivery.delivery}
        trigger = {
            "kind": "webhook",
            "forge": delivery.forge,
            "event": delivery.event,
            "delivery": delivery.delivery,
            "pusher": push.pusher,
            "forced": push.forced,
        }
        source = {"git": spec["source"]["git"], "ref": push.ref, "sha": push.after}
        if push.subject or push.author:
            source |= {"subject": push.subject, "author": push.author}
        try:
            parameters = parameter_values(spec.get("parameters", {}), None)
        except ValueError as e:  # defaults were checked when the pipeline was saved
            raise ApiError(str(e)) from None
        run_id = runs.create_run(
            primary, name, trigger, source, parameters or None, spec=spec, conn=conn
        )
        conn.execute(
            "UPDATE hook_deliveries SET run_id = ? WHERE pipeline = ? AND delivery = ?",
            (run_id, name, delivery.delivery),
        )
    plan(primary)
    runs.notify(primary)
    return 201, {"run_id": run_id, "ref": push.ref, "sha": push.after}

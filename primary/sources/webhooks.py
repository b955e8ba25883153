"""Push webhooks: a forge's delivery for one pipeline, verified with the pipeline's hook
secret, turned into a run of the pushed commit, once per delivery.

What a push does (docs/api.md, "Webhooks"):
- a branch in the pipeline's `branches` (default: its ref): a run of the pushed commit
  (`after`), also after a force-push; the run checks out exactly that commit even when the
  branch has moved on by the time a worker starts it;
- a tag in its `tags`: a run of the tag;
- a deleted branch or tag, a branch or tag it does not list, any other ref: no run;
- the same delivery again (a redelivery: its id; or its body under another id, since the
  id is not signed and a captured body could be replayed): no second run, the first
  answer's run id.

Two steps, so the view can rate-limit only what is not signed: `authenticate` (bounded:
the body's size is capped by the view, the signature is one HMAC over those bytes, and
nothing is parsed until it matches) refuses every delivery not signed with the pipeline's
hook secret with the same 401, whether or not that pipeline exists, so an outsider learns
no pipeline names; `receive` acts on a signed one.
"""

import hashlib
import json
import secrets
import time
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Signed:
    """A delivery that carries its pipeline's hook secret's signature."""

    spec: dict
    delivery: forges.Delivery


def authenticate(primary: Primary, pipeline: str, headers, body: bytes) -> Signed:
    """The delivery, if it is signed with the hook secret of `pipeline` (which has a git
    source). 400 when it is no forge's delivery at all; otherwise one 401 for every
    delivery that is not signed, whatever the pipeline: an unknown pipeline, one without a
    git source or without a secret yet cost the same HMAC and read the same."""
    try:
        delivery = forges.identify(headers)
    except forges.NotAWebhook as e:
        raise BadRequest(str(e)) from None
    spec = _spec_with_source(primary, pipeline)
    secret = _stored_secret(primary, pipeline) if spec is not None else None
    signed = forges.verify(delivery.forge, headers, body, secret or _NO_SECRET)
    if secret is None or not signed:
        raise BadSignature(
            f"the delivery is not signed with the hook secret of pipeline {pipeline!r}"
            " (an admin's GET /api/v1/pipelines/NAME/hook shows it)"
        )
    return Signed(spec, delivery)


_NO_SECRET = secrets.token_hex(32)  # verified against when there is none: the same work


def receive(primary: Primary, signed: Signed, body: bytes) -> tuple[int, dict]:
    """Act on a signed delivery: (HTTP status, answer). Raises 400 (a push without its
    fields) and 404 (the push is of another repository than the pipeline's source)."""
    spec, delivery = signed.spec, signed.delivery
    pipeline = spec["name"]
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
    digest = hashlib.sha256(body).hexdigest()
    return _record(primary, spec, delivery, digest, push, ignored)


def _spec_with_source(primary: Primary, pipeline: str) -> dict | None:
    try:
        spec = pipelines.get_spec(primary, pipeline)
    except (NotFound, BadRequest):  # no such pipeline, or a name that cannot be one
        return None
    return spec if spec and spec.get("source") else None


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
    primary: Primary, spec: dict, delivery, digest: str, push: forges.Push, ignored: str | None
) -> tuple[int, dict]:
    """Record the delivery and, unless it is ignored, queue its run, in one transaction:
    the delivery row is inserted first, unique by (pipeline, delivery id) and by (pipeline,
    body digest), so of two copies of one delivery arriving together (through two primaries
    too, under two ids too) one inserts it and the other finds it."""
    name = spec["name"]
    run_id = None
    with primary.store.transaction() as conn:
        inserted = conn.execute(
            "INSERT INTO hook_deliveries"
            " (pipeline, delivery, forge, received_at, outcome, body_sha256)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING pipeline",
            (name, delivery.delivery, delivery.forge, time.time(), ignored or "run", digest),
        ).fetchone()
        if inserted is None:
            row = conn.execute(
                "SELECT delivery, run_id, outcome FROM hook_deliveries WHERE pipeline = ?"
                " AND (delivery = ? OR body_sha256 = ?) ORDER BY delivery = ? DESC LIMIT 1",
                (name, delivery.delivery, digest, delivery.delivery),
            ).fetchone()
            answer = {"duplicate": True, "delivery": delivery.delivery, "run_id": row["run_id"]}
            if row["delivery"] != delivery.delivery:
                answer["same_body_as"] = row["delivery"]
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

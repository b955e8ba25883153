"""`cifleet-agent update-worker`: the worker changes its own record on the primary (drain,
flood, slots), authenticated by its own certificate over the agent port. Not its tags: they
decide which pipelines (and secrets) it may receive, so only an admin sets them."""

import ssl
from pathlib import Path
from typing import Any

from agent.client import TransportError, agent_context, post_to_any
from agent.home import load_config, update_config
from agent.protocol import CODE_UNKNOWN_WORKER, MAX_SLOTS, MIN_SLOTS, WORKER_PATH
from agent.worker import UNKNOWN_WORKER_MESSAGE


class UpdateError(Exception):
    """The update did not happen; str(e) is a one-line message for the operator."""


def check_slots(slots: int) -> int:
    if not MIN_SLOTS <= slots <= MAX_SLOTS:
        raise UpdateError(f"slots must be between {MIN_SLOTS} and {MAX_SLOTS}, not {slots}")
    return slots


def update_worker(home: Path, changes: dict[str, Any]) -> dict[str, Any]:
    """POST `changes` to the primary's worker record; return the record it answers with.

    config.json follows the record's tags and slots, so a restarted agent polls with them.
    Raises UpdateError (and ConfigError for an unusable home).
    """
    config = load_config(home)
    try:
        context = agent_context(Path(home))
    except (ssl.SSLError, OSError) as e:
        raise UpdateError(f"cannot load the worker certificate or key from {home}: {e}") from None
    try:
        resp = post_to_any(config, context, WORKER_PATH, changes)
    except TransportError as e:
        raise UpdateError(f"cannot reach the primary at {config['agent_url']}: {e}") from None
    if resp.status == 403 and resp.code == CODE_UNKNOWN_WORKER:
        raise UpdateError(UNKNOWN_WORKER_MESSAGE)
    if resp.status in (400, 403):
        raise UpdateError(f"the primary refused the update: {resp.message}")
    if resp.status != 200:
        raise UpdateError(f"unexpected answer from the primary: HTTP {resp.status}: {resp.message}")
    worker = resp.json()
    tags, slots = worker.get("tags"), worker.get("slots")
    # What we asked for, should the answer lack a usable value: config.json must stay valid.
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        tags = config["tags"]
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < MIN_SLOTS:
        slots = changes.get("slots", config["slots"])
    try:
        update_config(home, tags=tags, slots=slots)
    except OSError as e:
        # The primary has the change; only the local copy is behind (polls correct it).
        raise UpdateError(f"updated on the primary, but cannot save config.json: {e}") from None
    return worker


def describe(worker: dict[str, Any]) -> str:
    """The worker record in one line."""
    tags = worker.get("tags") or []
    return (
        f"worker {worker.get('name')} ({worker.get('id')}): {worker.get('state')}, "
        f"{'draining' if worker.get('draining') else 'taking work'}; "
        f"tags: {','.join(tags) if tags else 'none'}; slots: {worker.get('slots')}"
    )

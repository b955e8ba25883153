"""A pipeline's end and its new name: delete, and replace with a definition that may rename.

Both refuse (409 `runs_active`) while the pipeline has a run that is queued, assigned or
running: those carry its name to a worker, whose workspace is named after it. Cancel them
or let them end first.

Delete: the definition, the static files (rows and bytes), the secrets, the hook secret
(and its deliveries' records) and its schedule's fires go. Its finished runs stay, with
their logs, artifacts and notifications, in the history
(they carry their own copy of the definition) until retention removes them; a pipeline made
later with the same name lists them as its own. Each worker's workspace of it is deleted
on the worker's next poll: no pipeline names that worker its home any more
(`long_poll._stale_workspaces`).

Rename: everything moves to the new name (runs, static files, secrets, hook secret and
deliveries, schedule fires, notifications, tombstones of pruned runs), and the pipeline
starts from an empty workspace on its next run, as after Clear cache (the old workspace is
deleted as above). The webhook's URL names the pipeline: the forge's hook must be given
the new one.
"""

import json
import shutil
import time

from primary.context import Primary
from primary.errors import BadRequest, conflict
from primary.pipelines import secrets as pipeline_secrets
from primary.pipelines import static_files
from primary.pipelines.pipelines import get_pipeline, get_spec, home_of, wake_old_home
from primary.pipelines.spec import SpecError, parse_pipeline

ACTIVE_STATES = ("queued", "assigned", "running")
# Rows that name the pipeline, besides `pipelines` itself.
NAMED_BY = (
    ("runs", "pipeline"),
    ("pipeline_files", "pipeline"),
    ("hook_deliveries", "pipeline"),
    ("schedule_fires", "pipeline"),  # so a renamed schedule does not fire its slot again
    ("notifications", "pipeline"),  # its runs' outgoing webhooks, delivered or not
    ("pruned_runs", "pipeline"),  # tombstones: a pruned run's 410 names the new name
)


def _refuse_if_active(conn, name: str, doing: str) -> None:
    marks = ",".join("?" * len(ACTIVE_STATES))
    active = conn.execute(
        f"SELECT id, state FROM runs WHERE pipeline = ? AND state IN ({marks}) ORDER BY id",
        (name, *ACTIVE_STATES),
    ).fetchall()
    if active:
        listed = ", ".join(f"{r['id']} ({r['state']})" for r in active[:10])
        raise conflict(
            "runs_active",
            f"pipeline {name!r} cannot be {doing} while it has runs not finished: {listed};"
            " cancel them or wait for them to end",
        )


def delete_pipeline(primary: Primary, name: str) -> dict:
    """Delete the pipeline (see the module's docstring for what goes and what stays)."""
    get_spec(primary, name)  # 404
    with primary.store.transaction() as conn:
        conn.lock(f"pipeline {name}")
        _refuse_if_active(conn, name, "deleted")
        home = home_of(conn, name)
        blobs = [
            r["blob"]
            for r in conn.execute(
                "SELECT blob FROM pipeline_files WHERE pipeline = ?", (name,)
            ).fetchall()
            if r["blob"]
        ]
        for blob in blobs:
            conn.execute("DELETE FROM file_chunks WHERE blob = ?", (blob,))
        conn.execute("DELETE FROM pipeline_files WHERE pipeline = ?", (name,))
        conn.execute("DELETE FROM hook_deliveries WHERE pipeline = ?", (name,))
        conn.execute("DELETE FROM schedule_fires WHERE pipeline = ?", (name,))
        conn.execute("DELETE FROM pipelines WHERE name = ?", (name,))
        kept = conn.execute("SELECT COUNT(*) AS n FROM runs WHERE pipeline = ?", (name,)).fetchone()
    shutil.rmtree(static_files.folder(primary, name), ignore_errors=True)
    pipeline_secrets.move_all(primary, name, None)
    wake_old_home(primary, home)
    return {"name": name, "deleted": True, "runs_kept": kept["n"]}


def replace_pipeline(primary: Primary, name: str, text: str) -> dict:
    """Replace pipeline `name` with the definition `text`; when the text names another
    pipeline, `name` is renamed to it (409 if that name is taken). Nothing invalid is
    stored: the text is validated first."""
    get_spec(primary, name)  # 404
    try:
        spec = parse_pipeline(text)
    except SpecError as exc:
        raise BadRequest(str(exc), field=exc.field, line=exc.line) from None
    new = spec["name"]
    now = time.time()
    if new == name:
        with primary.store.transaction() as conn:
            conn.execute(
                "UPDATE pipelines SET definition = ?, spec = ?, updated_at = ? WHERE name = ?",
                (text, json.dumps(spec), now, name),
            )
        return get_pipeline(primary, name)
    old_files, new_files = static_files.folder(primary, name), static_files.folder(primary, new)
    moved_files = False
    try:
        with primary.store.transaction() as conn:
            conn.lock(f"pipeline {name}")
            conn.lock(f"pipeline {new}")
            if conn.execute("SELECT 1 FROM pipelines WHERE name = ?", (new,)).fetchone():
                raise conflict("exists", f"name: a pipeline {new!r} exists already")
            _refuse_if_active(conn, name, "renamed")
            home = home_of(conn, name)
            conn.execute(
                "UPDATE pipelines SET name = ?, definition = ?, spec = ?, updated_at = ?,"
                " home_worker_id = NULL, cache_cleared = 1 WHERE name = ?",
                (new, text, json.dumps(spec), now, name),
            )
            for table, column in NAMED_BY:
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (new, name))
            # Files on disk move inside the transaction: if they cannot, nothing is renamed.
            if old_files.exists():
                shutil.rmtree(new_files, ignore_errors=True)  # left by a pipeline deleted
                old_files.rename(new_files)
                moved_files = True
    except BaseException:
        if moved_files:
            new_files.rename(old_files)
        raise
    pipeline_secrets.move_all(primary, name, new)
    wake_old_home(primary, home)
    return get_pipeline(primary, new)

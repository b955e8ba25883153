"""The schema: a list of migrations both engines apply in order.

Written in the SQL both engines accept, with the types TEXT, INTEGER, REAL and BLOB as
SQLite names them; the PostgreSQL engine reads INTEGER as BIGINT, REAL as DOUBLE PRECISION
(its REAL has 24 bits, too few for a timestamp), BLOB as BYTEA and `INTEGER PRIMARY KEY
AUTOINCREMENT` as an identity column (`postgres_ddl`). tests/primary/store/test_store.py
applies every entry to both and compares what they made.
"""

import re
import sqlite3

# Each entry moves the schema one version up; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        tags TEXT NOT NULL,             -- JSON list
        slots INTEGER NOT NULL,
        version TEXT NOT NULL,
        cert_serial TEXT NOT NULL,      -- hex; only this certificate is accepted
        cert_not_after REAL NOT NULL,
        locked INTEGER NOT NULL DEFAULT 0,
        draining INTEGER NOT NULL DEFAULT 0,
        load TEXT,                      -- JSON from the last poll
        created_at REAL NOT NULL,
        last_contact REAL
    );
    CREATE TABLE pipelines (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,       -- the YAML as submitted
        spec TEXT NOT NULL,             -- normalised JSON
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        pipeline TEXT NOT NULL,
        spec TEXT NOT NULL,             -- the pipeline's spec when the run was created
        tags TEXT NOT NULL,             -- JSON list, copied from spec for the planner
        state TEXT NOT NULL,
        reason TEXT,                    -- why it waits, or how it ended
        placement TEXT,                 -- JSON list: the scheduler's reasons
        worker_id TEXT,
        worker_name TEXT,
        attempt INTEGER NOT NULL DEFAULT 0,
        lost_count INTEGER NOT NULL DEFAULT 0,
        lease_expires REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        finished_by_worker INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        assigned_at REAL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX runs_by_state ON runs (state, id);
    CREATE INDEX runs_by_worker ON runs (worker_id, state);
    CREATE TABLE jobs (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        state TEXT NOT NULL,
        exit_code INTEGER,
        started_at REAL,
        finished_at REAL,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    """,
    # 2: sticky homes, cache clearing, static files, prepare notes.
    """
    ALTER TABLE pipelines ADD COLUMN home_worker_id TEXT;
    ALTER TABLE pipelines ADD COLUMN cache_cleared INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN queued_at REAL;
    ALTER TABLE runs ADD COLUMN clean_workspace INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN prepare_notes TEXT;
    UPDATE runs SET queued_at = created_at;
    CREATE TABLE pipeline_files (
        pipeline TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (pipeline, path)
    );
    """,
    # 3: one row per assignment, so a run's history (and who may still write what) is known.
    """
    CREATE TABLE attempts (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        attempt INTEGER NOT NULL,
        worker_id TEXT NOT NULL,
        worker_name TEXT NOT NULL,
        assigned_at REAL NOT NULL,
        ended_at REAL,
        outcome TEXT,                   -- a final run state, or taken back / lost
        PRIMARY KEY (run_id, attempt)
    );
    INSERT INTO attempts (run_id, attempt, worker_id, worker_name, assigned_at)
        SELECT id, attempt, worker_id, worker_name, COALESCE(assigned_at, created_at)
        FROM runs WHERE attempt > 0 AND worker_id IS NOT NULL;
    """,
    # 4: certificate renewal keeps the previous certificate valid until it expires.
    """
    ALTER TABLE workers ADD COLUMN prev_cert_serial TEXT;
    ALTER TABLE workers ADD COLUMN prev_cert_not_after REAL;
    """,
    # 5: people who log in to the web UI, with the same roles as API tokens.
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,    -- scrypt$N$r$p$salt$hash
        created_at REAL NOT NULL,
        disabled_at REAL
    );
    """,
    # 6: faults. The agent process a worker runs (a new one means the old one's runs are
    # gone), and what the run log showed of an attempt that was lost or taken back, so the
    # log still shows it after the next attempt replaced the run's placement and job states.
    """
    ALTER TABLE workers ADD COLUMN session TEXT;
    ALTER TABLE attempts ADD COLUMN reason TEXT;
    ALTER TABLE attempts ADD COLUMN placement TEXT;     -- JSON list, as runs.placement
    ALTER TABLE attempts ADD COLUMN prepare_notes TEXT; -- JSON list, as runs.prepare_notes
    ALTER TABLE attempts ADD COLUMN jobs TEXT;          -- JSON: [{name, state, exit_code, started}]
    """,
    # 7: web UI sessions, so logging out (or a restart) ends a session for good: a copied
    # cookie of an ended session is refused. Only a hash of the session id is kept.
    """
    CREATE TABLE ui_sessions (
        sid_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 8: a fleet in a shared database (PostgreSQL): the vault's entries, each sealed with the
    # vault key, and the job logs, in chunks. SQLite installs keep both in files and leave
    # these empty; they exist there too so that both engines have one schema.
    """
    CREATE TABLE vault_entries (
        name TEXT PRIMARY KEY,
        sealed BLOB NOT NULL            -- nonce + AES-256-GCM of the JSON value; AAD: the name
    );
    CREATE TABLE job_logs (
        run_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        job TEXT NOT NULL,
        size INTEGER NOT NULL,          -- bytes stored
        last_start INTEGER NOT NULL,    -- where the last chunk starts
        PRIMARY KEY (run_id, attempt, job)
    );
    CREATE TABLE log_chunks (
        run_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        job TEXT NOT NULL,
        start INTEGER NOT NULL,         -- the offset of its first byte in the job's log
        data BLOB NOT NULL,
        PRIMARY KEY (run_id, attempt, job, start)
    );
    """,
    # 9: a job, or a stolen worker key, reaches no further than its own runs (issue 11).
    # Who a worker's jobs run as (reported by its agent), whether an admin allows root jobs
    # there, when its certificate was renewed (the superseded one is accepted only for the
    # switch-over after), and why its credentials are in conflict (a copied key was used).
    # Names: none may look like a worker id, and none may differ from another only in
    # case. Existing rows that break either are renamed (docs/api.md): a name in the form of
    # an id (w- and 16 hex digits: what is left once the hex digits are removed is '')
    # becomes renamed-ID; of names equal but for case, the oldest keeps its name and the
    # others become NAME-ID (cut to 45 characters first), so every name stays unique.
    """
    ALTER TABLE workers ADD COLUMN job_identity TEXT;       -- JSON from the agent's polls
    ALTER TABLE workers ADD COLUMN root_jobs INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE workers ADD COLUMN cert_renewed_at REAL;
    ALTER TABLE workers ADD COLUMN conflict_at REAL;
    ALTER TABLE workers ADD COLUMN conflict_reason TEXT;
    ALTER TABLE runs ADD COLUMN run_as_root INTEGER NOT NULL DEFAULT 0;
    UPDATE workers SET name = 'renamed-' || id WHERE length(name) = 18
        AND substr(lower(name), 1, 2) = 'w-'
        AND replace(replace(replace(replace(replace(replace(replace(replace(replace(replace(
            replace(replace(replace(replace(replace(replace(substr(lower(name), 3),
            '0', ''), '1', ''), '2', ''), '3', ''), '4', ''), '5', ''), '6', ''), '7', ''),
            '8', ''), '9', ''), 'a', ''), 'b', ''), 'c', ''), 'd', ''), 'e', ''), 'f', '') = '';
    UPDATE workers SET name = substr(name, 1, 45) || '-' || id WHERE EXISTS (
        SELECT 1 FROM workers AS older WHERE lower(older.name) = lower(workers.name)
        AND (older.created_at < workers.created_at
             OR (older.created_at = workers.created_at AND older.id < workers.id)));
    CREATE UNIQUE INDEX workers_by_lower_name ON workers (lower(name));
    """,
    # 10: pipelines that build a repository (issue 17). What a run builds (its git source at
    # an exact commit: JSON {git, ref, sha, commit, subject, author}), what started it (JSON
    # {kind: api|ui|webhook|rerun|..., by, token, forge, delivery, of_run}) and the
    # parameters it was given (JSON {NAME: value}). A webhook delivery is recorded once per
    # pipeline and delivery id, so a repeated delivery makes no second run; schedules will
    # record their slots the same way (a unique key per fire).
    """
    ALTER TABLE runs ADD COLUMN source TEXT;
    ALTER TABLE runs ADD COLUMN triggered_by TEXT;
    ALTER TABLE runs ADD COLUMN parameters TEXT;
    CREATE TABLE hook_deliveries (
        pipeline TEXT NOT NULL,
        delivery TEXT NOT NULL,         -- the forge's delivery id
        forge TEXT NOT NULL,
        received_at REAL NOT NULL,
        run_id INTEGER,                 -- null: the delivery made no run (outcome says why)
        outcome TEXT NOT NULL,
        PRIMARY KEY (pipeline, delivery)
    );
    """,
    # 11: the primaries serving the fleet (several share a PostgreSQL store), so agents
    # learn where else to go.
    """
    CREATE TABLE primaries (
        name TEXT PRIMARY KEY,
        agent_url TEXT NOT NULL,
        api_url TEXT NOT NULL,
        started_at REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    """,
    # 12: static files in the store of a shared fleet (PostgreSQL), so every primary
    # serves them; on SQLite they stay in DATA/files (blob NULL).
    """
    ALTER TABLE pipeline_files ADD COLUMN blob TEXT;   -- its chunks in file_chunks
    CREATE TABLE file_chunks (
        blob TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (blob, seq)
    );
    """,
    # 13: retention (issue 20). Settings of the whole fleet an admin sets (JSON values; the
    # retention policy is one), a tombstone per run the janitor pruned (so its log answers
    # 410 with the date instead of a 404), and the janitor's lease (one pass at a time
    # across the primaries of a shared store).
    """
    CREATE TABLE fleet_settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL             -- JSON
    );
    CREATE TABLE pruned_runs (
        run_id INTEGER PRIMARY KEY,
        pipeline TEXT NOT NULL,
        pruned_at REAL NOT NULL
    );
    CREATE TABLE janitor_lease (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX runs_by_pipeline ON runs (pipeline, id);
    """,
    # 14: outgoing webhooks of run state changes (an outbox): a row is written in the
    # transaction that changes the run, and any primary's sender delivers it once it has
    # claimed it (claimed_until), retrying with backoff.
    """
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY AUTOINCREMENT,   -- the delivery id the receiver sees
        run_id INTEGER NOT NULL,
        pipeline TEXT NOT NULL,
        event TEXT NOT NULL,                    -- started, finished
        url TEXT NOT NULL,
        secret TEXT,                            -- the name of the pipeline secret that signs it
        body TEXT NOT NULL,                     -- the JSON posted, fixed when it was queued
        created_at REAL NOT NULL,
        next_at REAL NOT NULL,                  -- when the next attempt is due
        attempts INTEGER NOT NULL DEFAULT 0,
        claimed_until REAL,                     -- a sender is delivering it until then
        delivered_at REAL,
        gave_up_at REAL,
        last_status INTEGER,                    -- the receiver's last HTTP status
        last_error TEXT
    );
    CREATE INDEX notifications_due ON notifications (next_at)
        WHERE delivered_at IS NULL AND gave_up_at IS NULL;
    CREATE INDEX notifications_run ON notifications (run_id);
    """,
    # 15: a job's artifacts, one tar per job and attempt: on SQLite in DATA/artifacts (blob
    # NULL), in a shared fleet in file_chunks under `blob`, so every primary serves them.
    """
    CREATE TABLE artifacts (
        run_id INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        job TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        files TEXT NOT NULL,            -- JSON: [{"path", "size"}] of the tar's members
        blob TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (run_id, attempt, job)
    );
    """,
    # 16: a webhook delivery is also unique by its body's digest: a captured signed body
    # resent under a new delivery id (the id is not signed) makes no second run. Rows from
    # before have none (NULL never conflicts).
    """
    ALTER TABLE hook_deliveries ADD COLUMN body_sha256 TEXT;
    CREATE UNIQUE INDEX hook_deliveries_by_body ON hook_deliveries (pipeline, body_sha256);
    """,
    # 17: a pipeline schedule's fires, one per (pipeline, slot): whichever primary inserts
    # the row makes the run in the same transaction, so a slot fires once with several
    # primaries and across restarts.
    """
    CREATE TABLE schedule_fires (
        pipeline TEXT NOT NULL,
        slot REAL NOT NULL,             -- the cron slot's time (Unix seconds)
        fired_at REAL NOT NULL,
        run_id INTEGER,                 -- null: no run (outcome says why)
        outcome TEXT NOT NULL,
        PRIMARY KEY (pipeline, slot)
    );
    """,
    # 18: a worker's history of states (active, inactive, locked, draining, in conflict...),
    # as the planner sees it: the last one recorded is on the worker, so a change is written
    # once whichever primary notices it first.
    """
    ALTER TABLE workers ADD COLUMN recorded_state TEXT;
    CREATE TABLE worker_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        worker_id TEXT NOT NULL,
        at REAL NOT NULL,
        state TEXT NOT NULL,
        by_whom TEXT,                   -- an admin action's caller; null: the fleet itself
        why TEXT
    );
    CREATE INDEX worker_events_by_worker ON worker_events (worker_id, id);
    """,
]

# Statements only PostgreSQL runs, after the migration of that number.
POSTGRES_AFTER: dict[int, list[str]] = {
    # Logs compress well, and lz4 costs little CPU (pglz, the default, is several times slower).
    8: ["ALTER TABLE log_chunks ALTER COLUMN data SET COMPRESSION lz4"],
}


_PG_TYPES = [
    (
        re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
]


def postgres_ddl(statement: str) -> str:
    """A migration statement as PostgreSQL must read it (see the module's docstring)."""
    for pattern, replacement in _PG_TYPES:
        statement = pattern.sub(replacement, statement)
    return statement


def statements(script: str) -> list[str]:
    """Split a migration into statements (sqlite3's lexer knows where one ends, and the
    SQL of both engines ends them alike). Not executescript(): it would COMMIT."""
    found, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            found.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        found.append(buffer.strip())
    return found

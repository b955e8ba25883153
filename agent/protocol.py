"""Wire constants shared by the primary and the agent.

This is the one place both sides agree on. The primary may import it; the agent never
imports the primary.
"""

import re

# Agent port (mutual TLS). Paths are relative to the agent URL the primary hands out at
# registration, e.g. https://primary.example:8444.
POLL_PATH = "/agent/v1/poll"
RUN_START_PATH = "/agent/v1/runs/{run_id}/start"
JOB_LOG_PATH = "/agent/v1/runs/{run_id}/jobs/{job}/log"
JOB_STATUS_PATH = "/agent/v1/runs/{run_id}/jobs/{job}/status"
# A job's artifacts, one tar per job and attempt (?attempt=A), before its final status.
JOB_ARTIFACTS_PATH = "/agent/v1/runs/{run_id}/jobs/{job}/artifacts"
RUN_FINISH_PATH = "/agent/v1/runs/{run_id}/finish"
RUN_PREPARE_PATH = "/agent/v1/runs/{run_id}/prepare"
# {path} is the static file's path, URL-quoted with "/" kept; ?attempt=A follows.
RUN_FILE_PATH = "/agent/v1/runs/{run_id}/files/{path}"
WORKER_PATH = "/agent/v1/worker"  # the worker changes its own record (update-worker)

# Public port (server TLS only).
REGISTER_PATH = "/api/v1/workers/register"

# The primary holds a poll open at most this long; the agent's read timeout must exceed it.
POLL_HOLD_SECONDS = 30.0
POLL_CLIENT_TIMEOUT_SECONDS = POLL_HOLD_SECONDS + 15.0
# An agent with no runs says in its poll (`max_hold`) that it waits this long; the primary
# may hold that poll as long (--idle-poll-hold), and the agent reads for 15 s more. TCP
# keep-alives on both ends find a vanished peer sooner (docs/design.md, "Idle polls").
IDLE_POLL_MAX_HOLD_SECONDS = 300.0
IDLE_POLL_CLIENT_TIMEOUT_SECONDS = IDLE_POLL_MAX_HOLD_SECONDS + 15.0

# Largest log chunk the agent sends in one request, and the largest the primary accepts.
# Fewer, larger chunks: the primary streams each to disk, so size costs it no memory.
LOG_CHUNK_BYTES = 4 << 20
MAX_LOG_CHUNK_BYTES = 4 << 20

# Most lines one prepare call carries (the primary refuses more).
MAX_PREPARE_LINES = 1000
# Workspaces the agent deleted for its disk cap, named in one poll (the rest in the next).
MAX_EVICTED_WORKSPACES = 1000

# Error codes in JSON error bodies ({"error": message, "code": CODE}) the agent acts on.
CODE_STALE_ATTEMPT = "stale_attempt"  # 409: this attempt was taken back; stop the run
CODE_LOG_GAP = "log_gap"  # 416: offset beyond what is stored; resend from "size"
CODE_LOG_INCOMPLETE = "log_incomplete"  # 409: final job status before all log bytes arrived
CODE_UNKNOWN_WORKER = "unknown_worker"  # 403: certificate no longer belongs to a worker
# 403: a certificate a renewal had superseded was used again, so two agents hold this
# worker's key. Every certificate of the worker is refused until an admin registers it anew.
CODE_CREDENTIALS_CONFLICT = "credentials_conflict"
# 403: the worker's certificate cannot change its tags; an admin does (POST /agent/v1/worker).
CODE_TAGS_ADMIN_ONLY = "tags_admin_only"
REFUSED_CODES = (CODE_UNKNOWN_WORKER, CODE_CREDENTIALS_CONFLICT)
# 507 / 503: the primary heard the call but could not store it. It lets no lease expire for
# contacts it could not record (a heartbeat timeout of grace once it can write again), so a
# poll answered so still counts as a renewal for the agent's fence.
CODE_STORAGE_FULL = "storage_full"
CODE_STORAGE_UNAVAILABLE = "storage_unavailable"

# Job states the agent reports. Run states are derived by the primary.
JOB_RUNNING = "running"
JOB_FINAL_STATES = ("success", "failed", "timed_out", "cancelled", "skipped")

# Worker slots, as registration and the worker record accept them.
MIN_SLOTS = 1
MAX_SLOTS = 64

# Names of pipelines, jobs and workers: safe in URLs, file names and log headers.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RENEW_PATH = "/agent/v1/renew"  # a new certificate for the worker, over mutual TLS

"""Output an earlier agent process of this home spooled and never delivered (it was
stopped, killed or fenced before it could): sent at start, before the first poll, while
the primary may still hold the attempt open (it ends it once this process polls without
it), so that no log byte it would still take is lost; then removed."""

import logging
import re
import shutil
import threading
import time
from pathlib import Path

from agent.assignment import Assignment
from agent.calls import Refused, Stale, Stopped, UnknownWorker
from agent.client import ClientPool
from agent.home import SPOOL_DIR
from agent.reporter import Fenced, RunReporter

log = logging.getLogger(__name__)

# How long all leftovers together may take: the primary may be down, and work waits.
DELIVERY_SECONDS = 10.0
_RUN_ATTEMPT = re.compile(r"([0-9]{1,18})-([0-9]{1,18})")


def deliver_and_remove(
    home: Path, pool: ClientPool, stop: threading.Event, seconds: float = DELIVERY_SECONDS
) -> None:
    spool = home / SPOOL_DIR
    deadline = time.monotonic() + seconds
    for folder in sorted(spool.iterdir()) if spool.is_dir() else []:
        match = _RUN_ATTEMPT.fullmatch(folder.name)
        if match and folder.is_dir() and time.monotonic() < deadline:
            _deliver(folder, int(match[1]), int(match[2]), pool, stop, deadline)
        log.warning("removing the spool of an earlier run: %s", folder)
        shutil.rmtree(folder, ignore_errors=True)


def _deliver(
    folder: Path,
    run_id: int,
    attempt: int,
    pool: ClientPool,
    stop: threading.Event,
    deadline: float,
) -> None:
    client = pool.acquire()
    reporter = RunReporter(client, Assignment(run_id, attempt, "", []), folder, stop)
    done = threading.Event()

    def fence_at_deadline() -> None:  # a request blackholed by a cut is aborted too
        while not done.wait(0.2):
            if stop.is_set() or time.monotonic() > deadline:
                reporter.fence()
                return

    watcher = threading.Thread(target=fence_at_deadline, name="leftovers", daemon=True)
    watcher.start()
    try:
        held = reporter.send_spooled_logs()
        log.info(
            "run %s attempt %s: the primary holds %d byte(s) of its log, with what an earlier"
            " agent process left undelivered",
            run_id,
            attempt,
            held,
        )
    except (Refused, Stale, UnknownWorker) as e:
        log.warning(
            "run %s attempt %s: the primary takes no more of its log (%s)",
            run_id,
            attempt,
            e or type(e).__name__,
        )
    except (Fenced, Stopped):
        log.warning("run %s attempt %s: gave up delivering its spooled log", run_id, attempt)
    except Exception:  # a spool it cannot read must not keep the agent from starting
        log.exception("run %s attempt %s: its spooled log could not be sent", run_id, attempt)
    finally:
        done.set()
        watcher.join()
        pool.release(client)

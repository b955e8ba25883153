"""What the runs layer notes for after its commits (`store.after_commit`): events that
listeners count once the change that made them has committed (primary/metrics), and never
when it rolled back. Plain data; this module imports nothing."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RunEnded:
    """A run got its final state. `started_at` is None when it never started (cancelled
    while queued or assigned)."""

    pipeline: str
    state: str
    started_at: float | None
    finished_at: float


@dataclass(frozen=True)
class FirstStepStarted:
    """The first job of a run's attempt started on its worker (the primary took its
    `running` status): the end of the run's dispatch, which began when it was queued."""

    queued_at: float
    started_at: float


@dataclass(frozen=True)
class RunsPruned:
    """The janitor deleted runs (primary/runs/janitor.py): their rows, attempts and job
    logs. Counted once, by the primary whose transaction deleted them."""

    runs: int
    attempts: int
    log_bytes: int

"""The primary's settings. Every timeout is a setting, so tests shorten them the same way
an operator would, never through a test-only code path."""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PrimaryConfig:
    data_dir: Path
    bind: str = "127.0.0.1"
    api_port: int = 8443
    agent_port: int = 8444
    # A worker not heard from for this long is inactive, and the lease of a run it holds
    # expires: the run is lost and re-queued. 60 s, not 30: idle polls are held for half of
    # it, so 1,000 idle agents cost ~5 % of a core instead of ~10 %, and an agent fences its
    # jobs after half of it, so a primary restart under 30 s stops no job (docs/design.md).
    heartbeat_timeout: float = 60.0
    # An assignment the agent does not confirm within this time is taken back and re-planned.
    confirm_timeout: float = 10.0
    # A pipeline whose home worker is busy waits this long for it, then moves elsewhere.
    home_busy_wait: float = 5.0
    worker_cert_days: float = 30.0
    # After a renewal, the superseded certificate is still accepted this long (requests the
    # agent sent before it had the new pair); used later, it puts the worker's credentials
    # in conflict (primary/fleet/credentials.py). Longer than any request takes to arrive.
    cert_switch_over: float = 60.0
    # Where the built-in worker's job workspaces go (None: see builtin_worker.work_dir).
    builtin_work_dir: Path | None = None
    # The operator's certificate chain and key for the public port's own names
    # (primary/server/public_cert.py); None: the fleet CA's certificate only.
    public_cert: Path | None = None
    public_key: Path | None = None
    # Threads each port runs its Flask app in (primary/server/). A held long poll waits on the
    # event loop, in no thread; past max_held_polls held at once, a poll is answered at once
    # and told when to poll again.
    public_threads: int = 16
    # Web UI live logs (primary/ui/log_stream.py): each open stream holds a public-port
    # thread, so at most log_streams are open (keep it well below public_threads) and each
    # ends after log_stream_seconds (the browser reconnects and resumes where it stopped).
    log_streams: int = 8
    log_stream_seconds: float = 25.0
    agent_threads: int = 64
    max_held_polls: int = 16384
    # An idle agent's poll is held up to this long, when the agent says it waits as long
    # (its `max_hold`): a held poll costs a timer and a socket, and each answer costs a
    # round of TLS, HTTP and the app, so an idle fleet's cost falls with it. While held,
    # the worker counts as heard for as long as its host answers TCP keep-alives
    # (primary/fleet/contacts.py), so the hold may outlast the heartbeat timeout, and the
    # agent ends it early when its load moves (agent/load.py), so the load the scheduler
    # places by is not a hold old.
    idle_poll_hold: float = 300.0
    primary_worker_slots: int = 1
    # Where agents reach this primary, as it tells them (docs/design.md, "Several
    # primaries"); None: its bind address, or its certificate's first name.
    agent_url: str | None = None
    # Failed registrations (wrong secret, bad request) allowed per source address and window.
    registration_failures: int = 10
    registration_window: float = 300.0
    # Refused webhook deliveries (bad signature, unknown repository, ...) per source.
    hook_failures: int = 20
    hook_window: float = 300.0
    # Failed web UI logins allowed per source address and window.
    login_failures: int = 10
    login_window: float = 300.0
    # A notification (outgoing webhook) not delivered is tried again after this long,
    # doubling each time (primary/notifications/delivery.py).
    notify_retry_seconds: float = 5.0
    max_request_bytes: int = 8 << 20
    max_static_file_bytes: int = 256 << 20
    # A job's artifacts (one tar); the agent's own limit is the same (agent/artifacts.py).
    max_artifact_bytes: int = 64 << 20
    # Seconds between the janitor's passes (the retention policy, primary/runs/janitor.py);
    # 0: none (prune with `cifleet-primary prune` or POST /api/v1/retention/prune).
    retention_interval: float = 3600.0
    extra: dict = field(default_factory=dict)

    @property
    def poll_hold_seconds(self) -> float:
        """Hold polls for at most half the heartbeat timeout, so a held poll is never the
        reason a live worker looks dead."""
        from agent.protocol import POLL_HOLD_SECONDS

        return min(POLL_HOLD_SECONDS, self.heartbeat_timeout / 2)

    def idle_poll_hold_seconds(self, accepted: float | None) -> float:
        """How long to hold an idle agent's poll, given the longest hold it said it waits
        for (None: it said nothing, as agents before `max_hold` did, whose read timeout is
        made for poll_hold_seconds)."""
        if accepted is None:
            return min(self.poll_hold_seconds, self.idle_poll_hold)
        return min(accepted, self.idle_poll_hold)

    @property
    def agent_keepalive_seconds(self) -> int:
        """Seconds between TCP keep-alive probes of an idle agent-port connection: a sixth
        of the heartbeat timeout, so a held poll's host is heard well within it, and a dead
        one's connection closes after four of them (primary/server/tcp.py)."""
        return max(1, int(self.heartbeat_timeout / 6))

    @property
    def busy_poll_hold_seconds(self) -> float:
        """Hold the polls of an agent that holds runs much shorter: they renew the runs'
        leases, and an agent stops its runs (fences) when renewals stop succeeding for half
        the heartbeat timeout. The budget is in agent/fence.py."""
        from agent.fence import busy_poll_hold

        return min(self.poll_hold_seconds, busy_poll_hold(self.heartbeat_timeout))

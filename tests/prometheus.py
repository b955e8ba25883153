"""A real Prometheus server for tests: Debian's `prometheus` binary (tests/run.sh installs
it), started as a process of its own with a generated config and a fresh database in a
temp folder, on a loopback port, stopped as a process group."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from fleet import free_port, wait_for

BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# A port chosen free can be taken before Prometheus binds it: then it exits at once with
# "address already in use", and it is started again on another port.
START_ATTEMPTS = 5


class Prometheus:
    def __init__(self, root: Path, scrape_configs: list[dict], interval: str = "1s") -> None:
        self.root = root
        self.config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": scrape_configs,
        }
        self.log_path = root / "prometheus.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.root / "prometheus.yml"
        config.write_text(json.dumps(self.config, indent=2))  # JSON is YAML
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        BINARY,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={self.root / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            ready = wait_for(self._ready_or_gone, 60, "Prometheus to be ready")
            if ready == "ready":
                return
            if "address already in use" not in self.log_path.read_text():
                raise AssertionError(f"Prometheus exited: {self.log_path.read_text()[-3000:]}")
        raise AssertionError(f"no free port for Prometheus in {START_ATTEMPTS} tries")

    def _ready_or_gone(self) -> str | None:
        if self.proc.poll() is not None:
            return "gone"
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as answer,
        ):
            if answer.status == 200:
                return "ready"
        return None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def api(self, path: str, **params: str) -> dict:
        """GET /api/v1/PATH; the answer's data (AssertionError unless its status is success)."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as answer:
            body = json.loads(answer.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[tuple, float]:
        """An instant query: {sorted label items (without __name__): value}."""
        result = self.api("query", query=expr)["result"]
        return {
            tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(
                r["value"][1]
            )
            for r in result
        }

    def value(self, expr: str) -> float | None:
        """The value of a query that has one series, or None while it has none."""
        found = self.query(expr)
        assert len(found) <= 1, (expr, found)
        return next(iter(found.values()), None)

    def targets(self) -> dict[str, dict]:
        """The active targets by job name."""
        return {t["labels"]["job"]: t for t in self.api("targets")["activeTargets"]}

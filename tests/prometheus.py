"""A real Prometheus server for tests: Debian's `prometheus` binary (tests/run.sh installs
it), started as a process of its own with a generated config and a fresh database in a
temp folder, on a loopback port reserved for it (tests/ports.py), stopped as a process
group."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from fleet import log_tail, wait_for
from ports import reserve_port

BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


class Prometheus:
    def __init__(self, root: Path, scrape_configs: list[dict], interval: str = "1s") -> None:
        self.root = root
        self.config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": scrape_configs,
        }
        self.log_path = root / "prometheus.log"
        self.proc: subprocess.Popen | None = None
        # Held until close(); Prometheus (Go) binds with SO_REUSEADDR, so it listens there.
        self.ports = reserve_port()

    @property
    def port(self) -> int:
        return self.ports.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait until it is ready; one that exits or does not get ready is
        stopped, and the error quotes its log."""
        config = self.root / "prometheus.yml"
        config.write_text(json.dumps(self.config, indent=2))  # JSON is YAML
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
        try:
            wait_for(self._ready, 60, "Prometheus to be ready")
        except BaseException as exc:
            self.stop()
            raise AssertionError(
                f"Prometheus did not come up ({exc}); {self.log_path}:\n{log_tail(self.log_path)}"
            ) from exc

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as answer,
        ):
            return answer.status == 200
        return False

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

    def close(self) -> None:
        """Stop it and give its port back."""
        self.stop()
        self.ports.close()

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

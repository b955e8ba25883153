"""The example alert rules in docs/ are valid (`promtool check rules`) and fire when they
should (`promtool test rules` with tests/ops/alerts_test.yml)."""

import subprocess
from pathlib import Path

import pytest
from prometheus import PROMTOOL

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[1] / "docs" / "prometheus-alerts.yml"

pytestmark = pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="promtool is not installed (tests/run.sh: prometheus)"
)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=HERE, capture_output=True, text=True, timeout=120)


def test_the_rules_are_valid():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_the_alerts_fire_on_the_series_that_should_set_them_off():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout

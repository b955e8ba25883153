"""pytest imports test modules by their file name (rootdir-relative, no packages), so two
test files of one name in different folders stop the whole run at collection: caught here,
in the unit tests, instead of in CI's full run."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_file_name():
    names = Counter(p.name for p in TESTS.rglob("test_*.py") if ".venv" not in p.parts)
    assert [name for name, n in names.items() if n > 1] == []

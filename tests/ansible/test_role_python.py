"""The role's own Python, as pure functions: the wheel tags a host can install, the
wheelhouse cache key and archive, and the layout plan (what would change, then made so)."""

import importlib.util
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

ROLE = Path(__file__).resolve().parents[2] / "roles" / "cifleet_worker"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheelhouse = _load("wheelhouse", ROLE / "files" / "wheelhouse.py")
layout = _load("cifleet_worker_layout", ROLE / "module_utils" / "cifleet_worker_layout.py")


def test_platform_tags_cover_every_manylinux_the_glibc_can_run():
    tags = wheelhouse.platform_tags("x86_64", "2.36")
    assert tags[0] == "manylinux_2_36_x86_64"
    assert tags[31] == "manylinux_2_5_x86_64"
    assert tags[32:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    assert "manylinux_2_37_x86_64" not in tags
    # An older glibc cannot take the newer legacy names.
    assert wheelhouse.platform_tags("aarch64", "2.12")[-2:] == [
        "manylinux2010_aarch64",
        "manylinux1_aarch64",
    ]
    with pytest.raises(ValueError, match="glibc 3.0"):
        wheelhouse.platform_tags("x86_64", "3.0")


def test_the_cache_key_names_version_interpreter_platform_and_dependencies():
    key = wheelhouse.cache_key("0.1.0", b"deps = []", "3.13", "x86_64", "2.41")
    assert key.startswith("cifleet-0.1.0-cp313-manylinux_2_41_x86_64-")
    assert key.endswith(f"-f{wheelhouse.ARCHIVE_FORMAT}")
    assert key != wheelhouse.cache_key("0.1.0", b"deps = ['x']", "3.13", "x86_64", "2.41")
    assert key != wheelhouse.cache_key("0.1.0", b"deps = []", "3.12", "x86_64", "2.41")
    assert wheelhouse.python_tag("3.11") == "cp311"


def test_the_archive_of_the_same_wheels_is_the_same_bytes(tmp_path):
    for name in ("b-1-py3-none-any.whl", "a-1-py3-none-any.whl"):
        (tmp_path / name).write_bytes(name.encode() * 100)
    pip = tmp_path / "pip-9-py3-none-any.zip"
    with zipfile.ZipFile(pip, "w") as z:
        z.writestr("pip/__main__.py", "print('pip')\n")
        z.writestr("pip/__init__.py", "")
    first, second = tmp_path / "1.tar", tmp_path / "2.tar"
    wheelhouse.write_archive(sorted(tmp_path.glob("*.whl")), first, pip)
    os.utime(tmp_path / "a-1-py3-none-any.whl", (1, 1))  # mtimes do not count
    wheelhouse.write_archive(list(tmp_path.glob("*.whl"))[::-1], second, pip)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert tar.getnames() == [
            "a-1-py3-none-any.whl",
            "b-1-py3-none-any.whl",
            "_pip/pip/__init__.py",
            "_pip/pip/__main__.py",
        ]
        assert tar.extractfile("_pip/pip/__main__.py").read() == b"print('pip')\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="owners other than one's own need root")
def test_layout_plan_says_what_apply_changes_and_then_nothing(tmp_path):
    spec = {
        "user": None,
        "dirs": [
            {"path": str(tmp_path / "home"), "owner": "root", "group": "root", "mode": "0750"}
        ],
        "files": [
            {
                "path": str(tmp_path / "home" / "unit"),
                "content": "[Unit]\n",
                "owner": "root",
                "group": "root",
                "mode": "0644",
            }
        ],
    }
    assert layout.plan(spec) == [f"{tmp_path}/home: missing", f"{tmp_path}/home/unit: missing"]
    assert (tmp_path / "home").exists() is False  # plan changes nothing
    assert layout.apply(spec) == [f"{tmp_path}/home: missing", f"{tmp_path}/home/unit: missing"]
    assert (tmp_path / "home" / "unit").read_text() == "[Unit]\n"
    assert oct((tmp_path / "home").stat().st_mode & 0o777) == "0o750"
    assert layout.plan(spec) == []

    (tmp_path / "home" / "unit").write_text("changed\n")
    (tmp_path / "home").chmod(0o755)
    os.chown(tmp_path / "home" / "unit", 65534, 65534)
    assert layout.plan(spec) == [
        f"{tmp_path}/home: mode",
        f"{tmp_path}/home/unit: content",
        f"{tmp_path}/home/unit: owner",
    ]
    layout.apply(spec)
    assert layout.plan(spec) == []
    assert (tmp_path / "home" / "unit").stat().st_uid == 0

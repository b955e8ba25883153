"""The git source and parameters of a definition, and a trigger's values (pure)."""

import pytest

from primary.pipelines.source_spec import (
    parameter_values,
    url_kind,
    valid_ref,
    validate_parameters,
    validate_source,
)


def fail(field, message):
    return ValueError(f"{field}: {message}")


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://example.com/a.git", "https"),
        ("git://127.0.0.1:9418/a.git", "git"),
        ("ssh://git@example.com:22/a.git", "ssh"),
        ("git@example.com:team/a.git", "ssh"),
        ("file:///srv/git/a.git", "file"),
        ("ext::sh -c id", None),
        ("https://user:pass@example.com/a.git", None),
        ("https://user@example.com/a.git", None),
        ("-uhttps://example.com", None),
        ("file://host/a.git", None),
        ("ftp://example.com/a.git", None),
    ],
)
def test_url_kinds(url, kind):
    assert url_kind(url) == kind


def test_refs():
    assert all(valid_ref(r) for r in ("main", "release/1.2", "refs/tags/v1", "a+b_c-d"))
    assert not any(valid_ref(r) for r in ("-x", "a..b", "a/", "a.lock", "a b", "a@{1}", "/a"))


def test_defaults_and_credentials():
    source = validate_source({"git": "https://h/a.git", "token": "T"}, fail)
    assert source == {
        "git": "https://h/a.git",
        "ref": "main",
        "token": "T",
        "username": "x-access-token",
        "branches": ["main"],
        "tags": [],
        "clean": False,
    }
    tagged = validate_source({"git": "https://h/a.git", "ref": "refs/tags/v1"}, fail)
    assert tagged["branches"] == []
    with pytest.raises(ValueError, match="source: give token"):
        validate_source({"git": "ssh://h/a", "token": "T", "ssh_key": "K"}, fail)


def test_parameter_values():
    declared = validate_parameters(
        {
            "N": {"type": "integer", "default": 2, "min": 1, "max": 3},
            "B": {"type": "boolean", "default": True},
            "S": {"default": "a", "choices": ["a", "b"]},
        },
        {},
        fail,
    )
    assert parameter_values(declared, None) == {"N": "2", "B": "true", "S": "a"}
    assert parameter_values(declared, {"N": "3", "B": "false", "S": "b"}) == {
        "N": "3",
        "B": "false",
        "S": "b",
    }
    for given, message in [
        ({"N": 4}, "env.N: must be a whole number from 1 to 3"),
        ({"N": True}, "env.N: must be a whole number from 1 to 3"),
        ({"B": 1}, "env.B: must be true or false"),
        ({"S": "c"}, "env.S: must be one of a, b"),
        ({"S": "a\x00"}, "env.S: must be a string"),
        ({"X": 1}, "env.X: not a parameter of this pipeline (declared: B, N, S)"),
    ]:
        with pytest.raises(ValueError) as e:
            parameter_values(declared, given)
        assert str(e.value).startswith(message)
    with pytest.raises(ValueError, match="is also in env"):
        validate_parameters({"A": {"default": "x"}}, {"A": "y"}, fail)

"""The agent's list of primaries (agent/primaries.py): where it goes when one fails."""

import pytest

from agent.primaries import Primaries, valid_url

A, B, C = "https://a:8444", "https://b:8444", "https://c:8444"


def first(options: list[str]) -> str:
    return options[0]


def test_it_stays_with_the_current_primary_until_a_request_to_it_fails():
    primaries = Primaries([A], [A, B, C], rand=first)
    assert primaries.current() == A
    primaries.failed(B)  # not the current one: nothing moves
    assert primaries.current() == A
    primaries.failed(A)
    assert primaries.current() == B
    primaries.failed(A)  # a second request that failed on A moves nothing more
    assert primaries.current() == B
    primaries.failed(B)
    assert primaries.current() == A  # every other, the registered one included


def test_one_primary_alone_is_kept():
    primaries = Primaries([A])
    primaries.failed(A)
    assert primaries.current() == A


def test_the_learned_list_replaces_the_last_one_and_the_fixed_ones_stay():
    primaries = Primaries([A, C + "/"], [B], rand=first)
    assert primaries.urls() == [A, C, B]
    assert not primaries.learn("nonsense") and not primaries.learn([B])
    assert primaries.learn([C, B, "http://plain:80", 7, "https://", "https://d:notaport"])
    assert primaries.learned() == [C, B] and primaries.urls() == [A, C, B]
    assert primaries.learn([])
    assert primaries.urls() == [A, C]


@pytest.mark.parametrize(
    ("url", "ok"),
    [(A, True), ("https://[::1]:9", True), ("http://a:1", False), ("https://", False),
     ("https://a:99999", False), (None, False), ("https://" + "a" * 600, False)],
)  # fmt: skip
def test_valid_url(url, ok):
    assert valid_url(url) is ok


def test_no_valid_url_is_a_value_error():
    with pytest.raises(ValueError):
        Primaries(["http://a:1"])

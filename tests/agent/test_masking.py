import random

import pytest

from agent.masking import Masker


def masked(secrets, chunks) -> bytes:
    m = Masker(secrets)
    return b"".join(m.feed(c) for c in chunks) + m.flush()


@pytest.mark.parametrize(
    ("secrets", "chunks", "expected"),
    [
        ([b"hunter2"], [b"pw=hunter2\n"], b"pw=***\n"),
        ([b"hunter2"], [b"pw=hun", b"ter2\n"], b"pw=***\n"),  # split across reads
        ([b"hunter2"], [b"h", b"u", b"n", b"t", b"e", b"r", b"2"], b"***"),
        ([b"hunter2"], [b"hunter", b"3"], b"hunter3"),  # a prefix that did not complete
        ([b"abc", b"abcdef"], [b"xabcdefy"], b"x***y"),  # the longest wins
        ([b"abc", b"abcdef"], [b"xabc", b"dxx"], b"x***dxx"),
        ([b"s3cr3t"], [b"s3cr3ts3cr3t"], b"******"),
        ([], [b"nothing to hide"], b"nothing to hide"),
        ([b"\xff\x00"], [b"bin\xff", b"\x00ary"], b"bin***ary"),
    ],
)
def test_masking(secrets, chunks, expected):
    assert masked(secrets, chunks) == expected


def test_plain_output_is_not_held_back():
    m = Masker([b"hunter2"])
    assert m.feed(b"line one\n") == b"line one\n"
    assert m.feed(b"ends with h") == b"ends with "  # 'h' might start the secret
    assert m.feed(b"ello\n") == b"hello\n"


def test_any_split_gives_the_same_result():
    rng = random.Random(7)
    secrets = [b"token-123", b"123", b"pass phrase"]
    text = b"a token-123 b 123 c pass phrase d token-12 e pass ph" * 20
    whole = masked(secrets, [text])
    assert b"token-123" not in whole and b"pass phrase" not in whole
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), 15))
        parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert masked(secrets, parts) == whole

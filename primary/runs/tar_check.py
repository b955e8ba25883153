"""What a tar of artifacts holds, read strictly, without tarfile: a worker's upload is not
trusted, and tarfile parses far more than artifacts need (GNU long names chained until the
stack overflows, base-256 sizes that make seek() fail, PAX headers whose parsing is
quadratic in 3.11 before 3.11.10: CVE-2024-6232). Pure.

Accepted: POSIX ustar headers (as agent/artifact_tar.py writes them) of regular files
(typeflag `0` or NUL), each with a valid checksum, an octal size whose data lies within
the file, and a UTF-8 name (prefix/name); the archive ends at a zero block. Anything else
is refused with the reason.
"""

from typing import BinaryIO

BLOCK = 512
MAGIC = b"ustar\x0000"


class BadTar(ValueError):
    pass


def members(f: BinaryIO, total: int, max_members: int) -> list[tuple[str, int, int]]:
    """(name, size, offset of its data) of every member of the tar in `f` (`total` bytes
    long)."""
    found: list[tuple[str, int, int]] = []
    offset = 0
    while True:
        block = f.read(BLOCK)
        if len(block) < BLOCK:
            raise BadTar("it ends before its end-of-archive block")
        offset += BLOCK
        if block == bytes(BLOCK):
            return found
        if len(found) >= max_members:
            raise BadTar(f"it has more than {max_members} files")
        if block[257:265] != MAGIC:
            raise BadTar("a header is not POSIX ustar")
        if _octal(block[148:156], "checksum") != _checksum(block):
            raise BadTar("a header's checksum is wrong")
        name = _name(block)
        if block[156:157] not in (b"0", b"\0"):
            raise BadTar(f"{name!r} is not a regular file")
        size = _octal(block[124:136], "size")
        padded = -(-size // BLOCK) * BLOCK
        if offset + padded > total:
            raise BadTar(f"{name!r} says it is longer than what follows it")
        f.seek(padded, 1)
        found.append((name, size, offset))
        offset += padded


def _checksum(block: bytes) -> int:
    return sum(block[:148]) + 8 * 32 + sum(block[156:])


def _octal(field: bytes, what: str) -> int:
    digits = field.replace(b"\0", b" ").strip()
    if not digits or not all(48 <= c <= 55 for c in digits):
        raise BadTar(f"a header's {what} is not an octal number")
    return int(digits, 8)


def _name(block: bytes) -> str:
    name, prefix = block[0:100].split(b"\0", 1)[0], block[345:500].split(b"\0", 1)[0]
    raw = prefix + b"/" + name if prefix else name
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadTar("a name is not UTF-8") from None

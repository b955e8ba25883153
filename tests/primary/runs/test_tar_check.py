"""The strict reader of artifact tars: ustar regular files only, every header checked."""

import io
import tarfile

import pytest

from primary.runs.tar_check import BadTar, members


def tar(*infos: tarfile.TarInfo, fmt=tarfile.USTAR_FORMAT, data: bytes = b"") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as t:
        for info in infos:
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.size, i.type = size, kind
    return i


def read(data: bytes) -> list[tuple[str, int, int]]:
    return members(io.BytesIO(data), len(data), 100)


def test_regular_files_are_listed_with_their_sizes_and_where_their_bytes_are():
    long_dir = "d" * 120  # past 100 bytes: it goes into the ustar prefix
    data = tar(info("a.txt", 3), info(f"{long_dir}/b.bin", 3), data=b"abc")
    # Each header is a 512-byte block, each file's data padded to one.
    assert read(data) == [("a.txt", 3, 512), (f"{long_dir}/b.bin", 3, 1536)]
    assert data[512:515] == data[1536:1539] == b"abc"
    assert read(tar()) == []


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (tar(info("x", kind=tarfile.SYMTYPE)), "'x' is not a regular file"),
        (tar(info("d", kind=tarfile.DIRTYPE)), "is not a regular file"),
        (tar(info("n" * 300, 1), fmt=tarfile.GNU_FORMAT, data=b"x"), "not POSIX ustar"),
        (tar(info("é" * 60, 1), fmt=tarfile.PAX_FORMAT, data=b"x"), "'././@PaxHeader'"),
        (b"x" * 1024, "not POSIX ustar"),
        (tar(info("a", 3), data=b"abc")[:700], "longer than what follows"),
        (tar(info("a", 3), data=b"abc")[:1024], "ends before its end-of-archive block"),
    ],
)
def test_anything_else_is_refused(data, why):
    with pytest.raises(BadTar) as caught:
        read(data)
    assert why in str(caught.value)


def test_a_lying_size_or_checksum_is_refused():
    good = bytearray(tar(info("a", 3), data=b"abc"))
    base256 = bytearray(good)
    base256[124:136] = b"\x80" + bytes(10) + b"\x03"  # GNU's binary size
    base256[148:156] = b"%06o\0 " % (sum(base256[:148]) + 8 * 32 + sum(base256[156:512]))
    with pytest.raises(BadTar, match="size is not an octal number"):
        read(bytes(base256))
    bad_sum = bytearray(good)
    bad_sum[0:1] = b"b"
    with pytest.raises(BadTar, match="checksum is wrong"):
        read(bytes(bad_sum))


def test_the_member_count_is_bounded():
    data = tar(*[info(f"f{i}", 0) for i in range(101)])
    with pytest.raises(BadTar, match="more than 100 files"):
        read(data)
